//! The record batches the synthetic broker serves and reads: made with kafka-protocol's
//! encoder (not mirrorproxy's, so that the proxy's batch code never judges itself), and
//! walked by a reader that takes whatever a Produce carries without panicking.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// Semi-compressible value bytes (lz4 gets roughly 2:1 on them), different per `seed`.
#[must_use]
pub fn value_bytes(size: usize, seed: u64) -> Bytes {
    Bytes::from(
        (0..size as u64).map(|i| ((i.wrapping_mul(31).wrapping_add(seed)) % 251) as u8 / 4).collect::<Vec<u8>>(),
    )
}

/// One record batch of `n` records of `size`-byte values, base offset 0, each record's
/// key the 8-byte big-endian `key_us`, timestamps `key_us / 1000`.
#[must_use]
pub fn encode_batch(n: i32, size: usize, codec: Compression, key_us: i64) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            // constant offset - sequence keeps kafka-protocol's encoder to one batch
            sequence: i - 1,
            timestamp: key_us / 1000,
            key: Some(Bytes::copy_from_slice(&key_us.to_be_bytes())),
            value: Some(value_bytes(size, u64::from(i.unsigned_abs()))),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: codec })
        .expect("encode batch");
    buf.freeze()
}

/// A zigzag varint at `*pos`, moving `*pos` past it; None when `b` ends first or the
/// varint is longer than 64 bits.
fn read_varint(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut v: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, i32::from_be_bytes)
}

/// The attribute bits that name a batch's codec.
const CODEC_BITS: i16 = 0x07;

/// Size of a record batch header, up to and including the record count.
const BATCH_HEADER: usize = 61;

/// Walks the record batches in `records`: returns (bytes, records), and calls
/// `on_key_us` with every key of an uncompressed record that is 8 bytes long (the
/// microsecond stamp [`encode_batch`] puts there). Bytes that are not batches end the
/// walk; nothing here panics on them.
pub fn scan_batches(records: &[u8], mut on_key_us: impl FnMut(i64)) -> (u64, u64) {
    let mut pos = 0usize;
    let mut n = 0u64;
    while pos + BATCH_HEADER <= records.len() {
        let len = usize::try_from(be_i32(records, pos + 8)).unwrap_or(0);
        let end = (pos + 12).saturating_add(len).clamp(pos + BATCH_HEADER, records.len());
        let attributes = i16::from_be_bytes([records[pos + 21], records[pos + 22]]);
        let count = be_i32(records, pos + 57);
        n += u64::from(count.max(0).unsigned_abs());
        if attributes & CODEC_BITS == 0 {
            let body = &records[pos + BATCH_HEADER..end];
            let mut p = 0usize;
            for _ in 0..count {
                let Some(rlen) = read_varint(body, &mut p).and_then(|l| usize::try_from(l).ok()).filter(|l| *l > 0)
                else {
                    break;
                };
                let start = p;
                p += 1; // attributes
                let _ = read_varint(body, &mut p); // timestamp delta
                let _ = read_varint(body, &mut p); // offset delta
                let klen = read_varint(body, &mut p).unwrap_or(-1);
                if klen == 8 {
                    if let Some(key) = body.get(p..p + 8) {
                        on_key_us(i64::from_be_bytes(key.try_into().unwrap_or_default()));
                    }
                }
                p = start.saturating_add(rlen);
                if p > body.len() {
                    break;
                }
            }
        }
        pos = end;
    }
    (records.len() as u64, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_scans_back_to_its_records_and_keys() {
        let batch = encode_batch(5, 20, Compression::None, 1_234_567);
        let mut keys = Vec::new();
        assert_eq!(scan_batches(&batch, |k| keys.push(k)), (batch.len() as u64, 5));
        assert_eq!(keys, [1_234_567; 5]);
        let lz4 = encode_batch(5, 20, Compression::Lz4, 1);
        assert_eq!(scan_batches(&lz4, |_| panic!("compressed keys are not read")).1, 5);
    }

    #[test]
    fn garbage_scans_without_panicking() {
        let batch = encode_batch(3, 10, Compression::None, 7);
        for cut in 0..batch.len() {
            let _ = scan_batches(&batch[..cut], |_| {});
        }
        for len in [[0xff; 4], [0x7f, 0xff, 0xff, 0xff], [0; 4], [0, 0, 0, 1]] {
            let mut b = batch.to_vec();
            b[8..12].copy_from_slice(&len);
            let _ = scan_batches(&b, |_| {});
        }
        let _ = scan_batches(&[0xff; 200], |_| {});
    }
}
