//! Wire-level conformance tests for mirrorproxy, using only the public API.
//!
//! Batches are produced by an independent encoder (`kafka_protocol`'s
//! `RecordBatchEncoder`) or assembled byte by byte here, and every rewrite
//! is decoded back with `kafka_protocol`'s `RecordBatchDecoder`, so that our
//! reading and writing of the v2 batch format (Kafka's
//! `DefaultRecordBatch.java`) is checked against a second implementation.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as KpCompression, Record, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};
use mirrorproxy::batch::{
    split_batches, BatchError, Compression, ControlType, ProducerStamp, RawBatch, VerifiedBatch,
    HEADER_LEN,
};

// ---------------------------------------------------------------------------
// Record batch conformance
// ---------------------------------------------------------------------------

const STAMP: ProducerStamp = ProducerStamp {
    producer_id: 777,
    producer_epoch: 2,
    base_sequence: 40,
};

const KP_CODECS: [(KpCompression, Compression); 5] = [
    (KpCompression::None, Compression::None),
    (KpCompression::Gzip, Compression::Gzip),
    (KpCompression::Snappy, Compression::Snappy),
    (KpCompression::Lz4, Compression::Lz4),
    (KpCompression::Zstd, Compression::Zstd),
];

fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> Record {
    let mut headers = IndexMap::new();
    headers.insert(
        StrBytes::from_string(format!("trace-{offset}")),
        Some(Bytes::from(format!("t{offset}"))),
    );
    headers.insert(StrBytes::from_static_str("null-header"), None);
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 11,
        producer_id: 5000,
        producer_epoch: 4,
        timestamp_type: TimestampType::Creation,
        offset,
        // The encoder groups records into one batch while offset − sequence
        // stays constant.
        sequence: offset as i32,
        timestamp: 1_700_000_000_000 + offset * 7,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers,
    }
}

fn encode(records: &[Record], compression: KpCompression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("kafka_protocol encodes");
    buf.freeze()
}

fn only_batch(bytes: Bytes) -> RawBatch {
    let split = split_batches(bytes).expect("split");
    assert!(!split.truncated_tail, "no truncated tail expected");
    assert_eq!(split.batches.len(), 1, "exactly one batch expected");
    split.batches.into_iter().next().unwrap()
}

fn verified(bytes: Bytes) -> VerifiedBatch {
    only_batch(bytes).verify().expect("CRC must match")
}

/// Sets the CRC of a hand-edited batch.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A batch with no records at all, as left by compaction of a batch whose
/// records were all removed (kept for producer state).
fn empty_batch(base_offset: i64) -> Bytes {
    let mut b = vec![0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    b[8..12].copy_from_slice(&49i32.to_be_bytes());
    b[12..16].copy_from_slice(&3i32.to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&4i32.to_be_bytes()); // lastOffsetDelta
    b[43..51].copy_from_slice(&5000i64.to_be_bytes());
    b[57..61].copy_from_slice(&0i32.to_be_bytes()); // recordsCount
    fix_crc(&mut b);
    Bytes::from(b)
}

fn control_batch(kind: i16) -> Bytes {
    let mut key = BytesMut::new();
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let marker = Record {
        transactional: true,
        control: true,
        key: Some(key.freeze()),
        // EndTransactionMarker: version i16, coordinatorEpoch i32.
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 9])),
        headers: IndexMap::new(),
        ..record(30, None, None)
    };
    encode(&[marker], KpCompression::None)
}

fn decode_one(bytes: &Bytes) -> Vec<Record> {
    let mut buf = bytes.clone();
    let set = RecordBatchDecoder::decode(&mut buf).expect("kafka_protocol decodes our output");
    assert!(buf.is_empty(), "exactly one batch");
    set.records
}

/// Compares what a client would see, ignoring offsets and producer fields
/// that the rewrite is supposed to change.
fn assert_same_payload(got: &[Record], want: &[Record]) {
    assert_eq!(got.len(), want.len(), "record count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.key, w.key);
        assert_eq!(g.value, w.value);
        assert_eq!(g.headers, w.headers);
        assert_eq!(g.timestamp, w.timestamp);
        assert_eq!(g.timestamp_type, w.timestamp_type);
    }
}

#[test]
fn truncated_fetch_tail_is_dropped_not_an_error() {
    let first = encode(&[record(0, Some("a"), Some("1"))], KpCompression::None);
    let second = encode(&[record(1, Some("b"), Some("2"))], KpCompression::Zstd);
    let mut fetch = BytesMut::new();
    fetch.extend_from_slice(&first);
    fetch.extend_from_slice(&second[..second.len() - 3]);
    let split = split_batches(fetch.freeze()).expect("a cut-short tail is not an error");
    assert!(split.truncated_tail);
    assert_eq!(split.batches.len(), 1);
    assert_eq!(
        split.batches[0].header().next_offset(),
        1,
        "refetch from offset 1"
    );
}

#[test]
fn truncated_header_is_dropped_not_an_error() {
    let batch = encode(&[record(0, Some("a"), Some("1"))], KpCompression::None);
    for cut in [1, 11, 12, 16, 17, 40, HEADER_LEN - 1, HEADER_LEN] {
        let split = split_batches(batch.slice(..cut)).expect("no error");
        assert!(split.truncated_tail, "cut at {cut}");
        assert!(split.batches.is_empty(), "cut at {cut}");
    }
}

#[test]
fn batch_with_bad_crc_is_rejected() {
    let mut b = encode(&[record(0, Some("k"), Some("v"))], KpCompression::Gzip).to_vec();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    let err = only_batch(Bytes::from(b)).verify().unwrap_err();
    assert!(
        matches!(err, BatchError::CrcMismatch { base_offset: 0, stored, computed } if stored != computed),
        "{err}"
    );
}

#[test]
fn batch_with_legacy_magic_is_rejected() {
    let mut b = encode(&[record(0, Some("k"), Some("v"))], KpCompression::None).to_vec();
    b[16] = 1;
    assert_eq!(
        split_batches(Bytes::from(b)).unwrap_err(),
        BatchError::UnsupportedMagic {
            base_offset: 0,
            magic: 1
        }
    );
}

#[test]
fn batch_with_impossible_length_is_corrupt() {
    let mut b = encode(&[record(0, Some("k"), Some("v"))], KpCompression::None).to_vec();
    b[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    let err = split_batches(Bytes::from(b)).unwrap_err();
    assert!(
        matches!(err, BatchError::Corrupt { base_offset: 0, .. }),
        "{err}"
    );
}

#[test]
fn compacted_batch_is_renumbered_for_every_codec() {
    for (kp, ours) in KP_CODECS {
        // Compaction left offsets 0, 2, 5 of a batch spanning 0..=5.
        let input = [
            record(0, Some("a"), Some("1")),
            record(2, Some("b"), None),
            record(5, None, Some("3")),
        ];
        let v = verified(encode(&input, kp));
        assert_eq!(v.header().last_offset_delta, 5);
        assert_eq!(v.header().records_count, 3);
        assert!(v.needs_renumbering());
        let out = v.into_outgoing(STAMP).expect("rewrite");
        assert_eq!(out.header().last_offset_delta, 2, "{ours}");
        assert_eq!(out.header().compression().unwrap(), ours);
        let decoded = decode_one(out.bytes());
        let offsets: Vec<i64> = decoded.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 2], "{ours}");
        assert_same_payload(&decoded, &input);
    }
}

#[test]
fn empty_batch_is_reported_and_not_forwarded() {
    let v = verified(empty_batch(120));
    assert!(v.is_empty());
    assert!(!v.needs_renumbering());
    assert_eq!(v.header().next_offset(), 125);
    assert!(matches!(
        v.into_outgoing(STAMP),
        Err(BatchError::NotForwardable {
            base_offset: 120,
            ..
        })
    ));
}

#[test]
fn commit_marker_is_recognised() {
    let v = verified(control_batch(1));
    assert!(v.header().is_control());
    assert_eq!(v.control_type().unwrap(), Some(ControlType::Commit));
}

#[test]
fn abort_marker_is_recognised() {
    let v = verified(control_batch(0));
    assert_eq!(v.control_type().unwrap(), Some(ControlType::Abort));
}

#[test]
fn control_batch_is_not_forwarded() {
    let err = verified(control_batch(1)).into_outgoing(STAMP).unwrap_err();
    assert!(
        matches!(
            err,
            BatchError::NotForwardable {
                base_offset: 30,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn data_batch_has_no_control_type() {
    let v = verified(encode(
        &[record(0, Some("k"), Some("v"))],
        KpCompression::None,
    ));
    assert_eq!(v.control_type().unwrap(), None);
}

#[test]
fn transactional_batch_is_forwarded_as_idempotent() {
    let input: Vec<Record> = (0..3)
        .map(|o| Record {
            transactional: true,
            ..record(o, Some("k"), Some("v"))
        })
        .collect();
    for (kp, ours) in KP_CODECS {
        let v = verified(encode(&input, kp));
        assert!(v.header().is_transactional());
        let out = v.into_outgoing(STAMP).unwrap();
        let h = out.header();
        assert!(!h.is_transactional(), "{ours}");
        assert_eq!(h.compression().unwrap(), ours);
        assert_eq!(
            (
                h.base_offset,
                h.producer_id,
                h.producer_epoch,
                h.base_sequence
            ),
            (0, 777, 2, 40)
        );
        let decoded = decode_one(out.bytes());
        assert!(decoded
            .iter()
            .all(|r| !r.transactional && r.producer_id == 777));
        assert_eq!(decoded[2].sequence, 42);
        assert_same_payload(&decoded, &input);
    }
}

#[test]
fn kafka_protocol_batches_round_trip_for_every_codec() {
    let input: Vec<Record> = (100..110)
        .map(|o| {
            let key = (o % 3 != 0).then(|| format!("key-{o}"));
            let value = (o % 4 != 0).then(|| "v".repeat(o as usize));
            record(o, key.as_deref(), value.as_deref())
        })
        .collect();
    for (kp, ours) in KP_CODECS {
        let bytes = encode(&input, kp);
        let raw = only_batch(bytes.clone());
        assert_eq!(raw.header().base_offset, 100);
        assert_eq!(raw.header().records_count, 10);
        assert_eq!(raw.header().partition_leader_epoch, 11);
        let v = raw.verify().expect("CRC of kafka_protocol's batch");
        assert!(!v.needs_renumbering());
        let (_, spans) = v.record_spans().expect("walk");
        assert_eq!(spans.len(), 10);
        let out = v.into_outgoing(STAMP).unwrap();
        assert_eq!(out.record_count(), 10);
        assert_eq!(out.header().partition_leader_epoch, 11, "not touched");
        assert_eq!(
            &out.bytes()[HEADER_LEN..],
            &bytes[HEADER_LEN..],
            "{ours}: records untouched"
        );
        let decoded = decode_one(out.bytes());
        assert_same_payload(&decoded, &input);
        assert_eq!(decoded[0].offset, 0);
        assert_eq!(decoded[9].offset, 9);
    }
}

#[test]
fn rewrite_is_idempotent() {
    let input = [
        record(0, Some("a"), Some("1")),
        record(3, Some("b"), Some("2")),
    ];
    for (kp, ours) in KP_CODECS {
        let once = verified(encode(&input, kp)).into_outgoing(STAMP).unwrap();
        let twice = verified(once.bytes().clone()).into_outgoing(STAMP).unwrap();
        assert_eq!(once.bytes(), twice.bytes(), "{ours}");
    }
}

#[test]
fn fetch_with_mixed_batches_splits_in_order() {
    let mut fetch = BytesMut::new();
    fetch.extend_from_slice(&encode(
        &[record(0, Some("a"), Some("1"))],
        KpCompression::Lz4,
    ));
    fetch.extend_from_slice(&empty_batch(1));
    fetch.extend_from_slice(&control_batch(1));
    fetch.extend_from_slice(&encode(
        &[record(31, Some("b"), Some("2"))],
        KpCompression::Snappy,
    ));
    let split = split_batches(fetch.freeze()).unwrap();
    assert!(!split.truncated_tail);
    let bases: Vec<i64> = split
        .batches
        .iter()
        .map(|b| b.header().base_offset)
        .collect();
    assert_eq!(bases, [0, 1, 30, 31]);
    let forwardable = split
        .batches
        .into_iter()
        .map(|b| b.verify().unwrap())
        .filter(|v| !v.is_empty() && !v.header().is_control())
        .count();
    assert_eq!(forwardable, 2);
}

// ===========================================================================
// Request/response round trips
//
// (Reserved for the lead: wire-level request/response round-trip cases go
// below this marker.)
// ===========================================================================
