//! The benchmark harness: record batches.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

/// Semi-compressible value bytes (lz4 gets roughly 2:1 on them).
pub(crate) fn value_bytes(size: usize, seed: u64) -> Bytes {
    Bytes::from(
        (0..size as u64).map(|i| ((i.wrapping_mul(31).wrapping_add(seed)) % 251) as u8 / 4).collect::<Vec<u8>>(),
    )
}

/// One record batch of `n` records of `size`-byte values, base offset 0, each record's
/// key the 8-byte big-endian `key_us`, timestamps `key_us / 1000`.
pub(crate) fn encode_batch(n: i32, size: usize, codec: Compression, key_us: i64) -> Bytes {
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
            value: Some(value_bytes(size, i as u64)),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: codec })
        .expect("encode batch");
    buf.freeze()
}

pub(crate) fn read_varint(b: &[u8], pos: &mut usize) -> Option<i64> {
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

/// Walks the record batches in `records`: (bytes, records, keys of uncompressed records
/// that are 8-byte microsecond stamps).
pub(crate) fn scan_batches(records: &[u8], mut on_key_us: impl FnMut(i64)) -> (u64, u64) {
    let mut pos = 0usize;
    let mut n = 0u64;
    while pos + 61 <= records.len() {
        let len = i32::from_be_bytes(records[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let end = (pos + 12 + len).min(records.len());
        let attributes = i16::from_be_bytes(records[pos + 21..pos + 23].try_into().unwrap());
        let count = i32::from_be_bytes(records[pos + 57..pos + 61].try_into().unwrap());
        n += count.max(0) as u64;
        if attributes & 0x07 == 0 {
            let body = &records[pos + 61..end];
            let mut p = 0usize;
            for _ in 0..count {
                let Some(rlen) = read_varint(body, &mut p) else { break };
                let start = p;
                p += 1; // attributes
                let _ = read_varint(body, &mut p); // timestamp delta
                let _ = read_varint(body, &mut p); // offset delta
                let klen = read_varint(body, &mut p).unwrap_or(-1);
                if klen == 8 && p + 8 <= body.len() {
                    on_key_us(i64::from_be_bytes(body[p..p + 8].try_into().unwrap()));
                }
                p = start + rlen.max(0) as usize;
                if p > body.len() {
                    break;
                }
            }
        }
        pos = end;
    }
    (records.len() as u64, n)
}
