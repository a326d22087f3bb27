//! Re-batching for remote writes: consecutive source batches of one partition become
//! one target batch.
//!
//! Kafka takes one batch per partition per Produce request (`LogValidator`), and an
//! idempotent producer keeps at most five requests in flight per partition, so a mirror
//! that writes over a long link moves at most 5 × batch size per partition per round
//! trip. Sources written with small batches (low `linger.ms`, many producers) leave
//! most of such a link idle. Merging their batches on the way out lifts that bound;
//! it costs what pass-through avoids: every record is re-encoded (new offset and
//! timestamp deltas), and compressed batches are decompressed and compressed again.
//!
//! What stays exact: records keep their order, keys, values, headers, attributes and
//! timestamps; the target assigns consecutive offsets, as it does for separate batches,
//! so the source → target offset mapping is the same record for record. The merged
//! batch's first timestamp is its first source batch's and its max timestamp the
//! largest of theirs, so the checkpoint fingerprint of a merged batch is that of its
//! run of source batches taken together ([`crate::checkpoint::Fingerprint::merged`]).

use std::borrow::Cow;

use bytes::Bytes;

use super::header::{COMPRESSION_MASK, HEADER_LEN, TIMESTAMP_TYPE_FLAG};
use super::records::{varint_len, varlong_len, write_varint, write_varlong};
use super::verified::{assemble, assemble_in_place};
use super::{
    compress, compress_snappy, snappy_framing, BatchError, BatchHeader, Compression, OutgoingBatch, ProducerStamp,
    VerifiedBatch, MAGIC_V2,
};

/// May `batch` be part of a merged batch? Control and empty batches are never
/// produced; log-append-time batches carry no usable record timestamps; batches with a
/// delete horizon (compacted tombstones, KIP-534) keep it only as a batch of their own.
#[must_use]
pub fn mergeable(batch: &VerifiedBatch) -> bool {
    let h = batch.header();
    !h.is_control() && !batch.is_empty() && !h.is_log_append_time() && !h.has_delete_horizon()
}

/// The codec a merged batch gets: `to`, or with `None` the source codec (then only
/// batches of one codec are merged, see [`same_codec`]).
#[must_use]
pub fn target_codec(first: &VerifiedBatch, to: Option<Compression>) -> Compression {
    to.unwrap_or_else(|| first.header().compression().unwrap_or(Compression::None))
}

/// Whether two batches have the same codec.
#[must_use]
pub fn same_codec(a: &VerifiedBatch, b: &VerifiedBatch) -> bool {
    (a.header().attributes & COMPRESSION_MASK) == (b.header().attributes & COMPRESSION_MASK)
}

/// A merged batch, and the size of its records before compression.
#[derive(Debug)]
pub struct Merged {
    pub batch: OutgoingBatch,
    /// Bytes of the records uncompressed: with the source batches' compressed record
    /// bytes, how much they expand (the coalescing decision of the engine learns it).
    pub plain_bytes: usize,
}

/// One batch holding the records of `batches`, in order, stamped for the target.
/// Every batch must be [`mergeable`].
pub fn merge(batches: &[&VerifiedBatch], stamp: ProducerStamp, codec: Compression) -> Result<Merged, BatchError> {
    let first = batches.first().ok_or(BatchError::NotForwardable { base_offset: -1, reason: "nothing to merge" })?;
    let base_offset = first.header().base_offset;
    let base_timestamp = first.header().base_timestamp;
    // Records are written after room for the header, so that an uncompressed merged
    // batch is assembled where it was written ([`assemble_in_place`]).
    let mut plain = Vec::with_capacity(batches.iter().map(|b| b.bytes().len()).sum::<usize>() + HEADER_LEN);
    plain.resize(HEADER_LEN, 0);
    let mut index: i32 = 0;
    let mut max_timestamp = i64::MIN;
    for batch in batches {
        let h = batch.header();
        if !mergeable(batch) {
            return Err(BatchError::NotForwardable {
                base_offset: h.base_offset,
                reason: "control, empty, log-append-time and delete-horizon batches are not merged",
            });
        }
        max_timestamp = max_timestamp.max(h.max_timestamp);
        let (data, spans): (Cow<'_, [u8]>, _) = batch.record_spans()?;
        for span in &spans {
            let timestamp = h.base_timestamp.wrapping_add(span.timestamp_delta);
            let delta = timestamp.wrapping_sub(base_timestamp);
            let rest = &data[span.offset_delta_bytes.end..span.body.end];
            let body_len = 1 + varlong_len(delta) + varint_len(index) + rest.len();
            let body_len = i32::try_from(body_len).map_err(|_| BatchError::NotForwardable {
                base_offset: h.base_offset,
                reason: "record larger than 2 GiB",
            })?;
            write_varint(&mut plain, body_len);
            plain.push(span.attributes as u8);
            write_varlong(&mut plain, delta);
            write_varint(&mut plain, index);
            plain.extend_from_slice(rest);
            index = index
                .checked_add(1)
                .ok_or(BatchError::NotForwardable { base_offset, reason: "more than i32::MAX records" })?;
        }
    }
    let plain_bytes = plain.len() - HEADER_LEN;
    let body = match codec {
        Compression::None => None,
        Compression::Snappy => {
            let framing = snappy_framing(first.records_data());
            Some(compress_snappy(&plain[HEADER_LEN..], framing).map_err(|e| e.at_batch(base_offset))?)
        }
        other => Some(compress(other, &plain[HEADER_LEN..]).map_err(|e| e.at_batch(base_offset))?),
    };
    let header = BatchHeader {
        base_offset: 0,
        batch_length: 0, // set by assemble
        partition_leader_epoch: -1,
        magic: MAGIC_V2,
        crc: 0, // set by assemble
        attributes: codec.id() & COMPRESSION_MASK & !TIMESTAMP_TYPE_FLAG,
        last_offset_delta: index - 1,
        base_timestamp,
        max_timestamp,
        producer_id: stamp.producer_id,
        producer_epoch: stamp.producer_epoch,
        base_sequence: stamp.base_sequence,
        records_count: index,
    };
    let too_large = "the merged batch would be larger than 2 GiB";
    let (header, bytes): (BatchHeader, Bytes) = match body {
        None => assemble_in_place(header, plain, too_large),
        Some(body) => assemble(header, &body, too_large),
    }
    .map_err(|e| e.at_batch(base_offset))?;
    Ok(Merged { batch: OutgoingBatch::assembled(header, &bytes), plain_bytes })
}

#[cfg(test)]
mod tests {
    use super::super::split_batches;
    use super::super::testutil::{decode_records, TestBatch, TestRecord};
    use super::*;
    use proptest::prelude::*;

    fn verified(bytes: Vec<u8>) -> VerifiedBatch {
        let split = split_batches(Bytes::from(bytes)).expect("split");
        assert_eq!(split.batches.len(), 1);
        split.batches.into_iter().next().unwrap().verify().expect("valid CRC")
    }

    fn codec() -> impl Strategy<Value = Compression> {
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Gzip),
            Just(Compression::Snappy),
            Just(Compression::Lz4),
            Just(Compression::Zstd),
        ]
    }

    fn record() -> impl Strategy<Value = TestRecord> {
        (
            -5_000i64..5_000,
            prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
            // header keys are strings in Kafka (and in the independent decoder)
            prop::collection::vec(
                ("[a-z]{0,5}".prop_map(String::into_bytes), prop::option::of(prop::collection::vec(any::<u8>(), 0..5))),
                0..3,
            ),
        )
            .prop_map(|(ts, key, value, headers)| TestRecord {
                offset_delta: 0,
                timestamp_delta: ts,
                key,
                value,
                headers,
            })
    }

    /// A source batch: records with gaps in their offset deltas now and then (as
    /// compaction leaves them), base timestamps apart.
    fn batch() -> impl Strategy<Value = (i64, Compression, Vec<TestRecord>, bool)> {
        (0i64..1_000_000, codec(), prop::collection::vec(record(), 1..8), any::<bool>())
    }

    proptest! {
        /// The merged batch is valid (CRC, counts), and holds every record of the
        /// source batches in order with the same key, value, headers and timestamp;
        /// its offsets are consecutive and its fingerprint fields are those of the run.
        #[test]
        fn merged_batch_holds_every_record_in_order(
            parts in prop::collection::vec(batch(), 1..5),
            to in prop::option::of(codec()),
        ) {
            let mut sources = Vec::new();
            let mut expected: Vec<(i64, TestRecord)> = Vec::new();
            for (base_ts, codec, mut records, gaps) in parts {
                for (i, r) in records.iter_mut().enumerate() {
                    r.offset_delta = if gaps { 2 * i as i32 } else { i as i32 };
                }
                let b = TestBatch { base_timestamp: base_ts, compression: codec, records: records.clone(), ..TestBatch::default() };
                let v = verified(b.build());
                for r in &records {
                    expected.push((base_ts + r.timestamp_delta, r.clone()));
                }
                sources.push(v);
            }
            let codec = target_codec(&sources[0], to);
            let stamp = ProducerStamp { producer_id: 42, producer_epoch: 3, base_sequence: 17 };
            let refs: Vec<&VerifiedBatch> = sources.iter().collect();
            let Merged { batch: out, plain_bytes } = merge(&refs, stamp, codec).unwrap();
            // Parse it back as a target broker would: one batch, CRC right.
            let split = split_batches(out.to_bytes()).unwrap();
            prop_assert_eq!(split.batches.len(), 1);
            let merged = split.batches.into_iter().next().unwrap().verify().unwrap();
            let h = *merged.header();
            prop_assert_eq!(h.records_count as usize, expected.len());
            prop_assert_eq!(h.last_offset_delta as usize, expected.len() - 1);
            prop_assert_eq!(h.compression().unwrap(), codec);
            prop_assert_eq!(plain_bytes, merged.decompressed_records().unwrap().len());
            prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (42, 3, 17));
            prop_assert_eq!(h.base_timestamp, sources[0].header().base_timestamp);
            prop_assert_eq!(h.max_timestamp, sources.iter().map(|s| s.header().max_timestamp).max().unwrap());
            let got = decode_records(&merged);
            prop_assert_eq!(got.len(), expected.len());
            for (i, (g, (ts, e))) in got.iter().zip(&expected).enumerate() {
                prop_assert_eq!(g.offset_delta, i as i32);
                prop_assert_eq!(h.base_timestamp + g.timestamp_delta, *ts);
                prop_assert_eq!(&g.key, &e.key);
                prop_assert_eq!(&g.value, &e.value);
                prop_assert_eq!(&g.headers, &e.headers);
            }
            // An independent decoder agrees.
            let mut buf = out.to_bytes();
            let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
            prop_assert_eq!(decoded.records.len(), expected.len());
            for (d, (ts, e)) in decoded.records.iter().zip(&expected) {
                prop_assert_eq!(d.timestamp, *ts);
                prop_assert_eq!(d.key.as_deref(), e.key.as_deref());
                prop_assert_eq!(d.value.as_deref(), e.value.as_deref());
            }
        }
    }

    #[test]
    fn only_plain_create_time_data_batches_merge() {
        let data = || TestBatch { records: vec![TestRecord::new(0, Some(b"k"), Some(b"v"))], ..TestBatch::default() };
        assert!(mergeable(&verified(data().build())));
        assert!(!mergeable(&verified(TestBatch { log_append_time: true, ..data() }.build())));
        assert!(!mergeable(&verified(TestBatch { delete_horizon: true, ..data() }.build())));
        assert!(!mergeable(&verified(super::super::testutil::control_batch(1).build())));
    }
}
