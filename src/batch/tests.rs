//! Unit tests and property tests for the batch layer.

use bytes::Bytes;
use proptest::prelude::*;

use super::testutil::{control_batch, TestBatch, TestRecord};
use super::*;

const STAMP: ProducerStamp = ProducerStamp { producer_id: 99, producer_epoch: 1, base_sequence: 500 };

fn one(bytes: Vec<u8>) -> RawBatch {
    let split = split_batches(Bytes::from(bytes)).expect("split");
    assert!(!split.truncated_tail);
    assert_eq!(split.batches.len(), 1);
    split.batches.into_iter().next().unwrap()
}

fn sample_records() -> Vec<TestRecord> {
    let mut r0 = TestRecord::new(0, Some(b"k0"), Some(b"v0"));
    r0.headers = vec![(b"h1".to_vec(), Some(b"x".to_vec())), (b"h2".to_vec(), None), (Vec::new(), Some(Vec::new()))];
    let r1 = TestRecord::new(1, None, Some(b""));
    let r2 = TestRecord::new(2, Some(b""), None);
    vec![r0, r1, r2]
}

fn all_framings() -> Vec<(Compression, SnappyFraming)> {
    let mut v: Vec<_> = Compression::ALL.iter().map(|&c| (c, SnappyFraming::Xerial)).collect();
    v.push((Compression::Snappy, SnappyFraming::Raw));
    v
}

/// Decodes records out of a batch with our own walker.
fn walked(batch: &[u8]) -> Vec<TestRecord> {
    super::testutil::decode_records(&one(batch.to_vec()).verify().expect("verify"))
}

#[test]
fn header_parses_all_fields() {
    let tb = TestBatch {
        compression: Compression::Lz4,
        log_append_time: true,
        transactional: true,
        ..TestBatch::with_records(sample_records())
    };
    let raw = one(tb.build());
    let h = raw.header();
    assert_eq!(h.base_offset, 1000);
    assert_eq!(h.partition_leader_epoch, 7);
    assert_eq!(h.magic, 2);
    assert_eq!(h.last_offset_delta, 2);
    assert_eq!(h.records_count, 3);
    assert_eq!(h.producer_id, 4242);
    assert_eq!(h.producer_epoch, 3);
    assert_eq!(h.base_sequence, 17);
    assert_eq!(h.compression().unwrap(), Compression::Lz4);
    assert!(h.is_transactional() && h.is_log_append_time() && !h.is_control());
    assert_eq!(h.last_offset(), 1002);
    assert_eq!(h.next_offset(), 1003);
    assert_eq!(h.total_len(), Some(raw.bytes().len()));
    assert_eq!(&h.encode()[..], &raw.bytes()[..HEADER_LEN]);
    assert_eq!(Compression::Zstd.to_string(), "zstd");
}

#[test]
fn records_round_trip_through_walker_for_every_codec() {
    for (compression, snappy_framing) in all_framings() {
        let tb = TestBatch { compression, snappy_framing, ..TestBatch::with_records(sample_records()) };
        assert_eq!(walked(&tb.build()), sample_records(), "{compression} {snappy_framing:?}");
    }
}

#[test]
fn split_is_zero_copy_and_ordered() {
    let a = TestBatch::with_records(sample_records()).build();
    let b =
        TestBatch { base_offset: 1003, compression: Compression::Gzip, ..TestBatch::with_records(sample_records()) }
            .build();
    let input = Bytes::from([a.clone(), b.clone()].concat());
    let split = split_batches(input.clone()).unwrap();
    assert!(!split.truncated_tail);
    assert_eq!(split.batches.len(), 2);
    assert_eq!(&split.batches[0].bytes()[..], &a[..]);
    assert_eq!(&split.batches[1].bytes()[..], &b[..]);
    assert_eq!(split.batches[0].bytes().as_ptr(), input.as_ptr());
    assert_eq!(split.batches[1].header().base_offset, 1003);
    assert!(split_batches(Bytes::new()).unwrap().batches.is_empty());
}

#[test]
fn truncated_tail_at_every_cut_point() {
    let a = TestBatch::with_records(sample_records()).build();
    let b = TestBatch { compression: Compression::Zstd, ..TestBatch::with_records(sample_records()) }.build();
    let all = [a.clone(), b.clone()].concat();
    for cut in 0..=all.len() {
        let split = split_batches(Bytes::copy_from_slice(&all[..cut])).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let expect = usize::from(cut >= a.len()) + usize::from(cut == all.len());
        assert_eq!(split.batches.len(), expect, "cut {cut}");
        let at_boundary = cut == 0 || cut == a.len() || cut == all.len();
        assert_eq!(split.truncated_tail, !at_boundary, "cut {cut}");
    }
}

#[test]
fn unsupported_magic_is_an_error() {
    let mut a = TestBatch::with_records(sample_records()).build();
    a[16] = 1;
    assert_eq!(
        split_batches(Bytes::from(a)).unwrap_err(),
        BatchError::UnsupportedMagic { base_offset: 1000, magic: 1 }
    );
}

#[test]
fn bad_batch_length_is_corrupt() {
    for len in [-1i32, 0, 48, i32::MIN] {
        let mut a = TestBatch::with_records(sample_records()).build();
        a[8..12].copy_from_slice(&len.to_be_bytes());
        let err = split_batches(Bytes::from(a)).unwrap_err();
        assert!(matches!(err, BatchError::Corrupt { base_offset: 1000, .. }), "{len}: {err}");
        assert!(err.to_string().contains("offset 1000"), "{err}");
    }
    // Exactly 49 is a legal (empty) batch.
    let empty = TestBatch::default().build();
    assert_eq!(empty.len(), HEADER_LEN);
    let v = one(empty).verify().unwrap();
    assert!(v.is_empty() && !v.needs_renumbering());
}

#[test]
fn every_bit_flip_after_byte_17_is_detected() {
    for (compression, framing) in all_framings() {
        let good =
            TestBatch { compression, snappy_framing: framing, ..TestBatch::with_records(sample_records()) }.build();
        for byte in 17..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                match split_batches(Bytes::from(bad)) {
                    // Not reachable for bytes >= 17, kept for clarity.
                    Err(_) => {}
                    Ok(split) => {
                        let raw = split.batches.into_iter().next().expect("complete batch");
                        let err = raw.verify().expect_err("flip must be detected");
                        assert!(
                            matches!(err, BatchError::CrcMismatch { base_offset: 1000, .. }),
                            "{compression} byte {byte} bit {bit}: {err}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn pass_through_does_not_copy_the_records() {
    let input = Bytes::from(TestBatch::with_records(sample_records()).build());
    let split = split_batches(input.clone()).expect("split");
    let v = split.batches.into_iter().next().unwrap().verify().unwrap();
    let out = v.into_outgoing(STAMP).unwrap();
    assert_eq!(out.body().as_ptr(), input[HEADER_LEN..].as_ptr(), "a view of the fetched bytes");
    assert_eq!(out.len(), input.len());
    assert_eq!(&out.head()[..], &out.to_bytes()[..HEADER_LEN]);
}

#[test]
fn pass_through_patches_header_only() {
    let tb = TestBatch {
        compression: Compression::Snappy,
        log_append_time: true,
        transactional: true,
        delete_horizon: true,
        ..TestBatch::with_records(sample_records())
    };
    let input = tb.build();
    let v = one(input.clone()).verify().unwrap();
    assert!(!v.needs_renumbering());
    let out = v.into_outgoing(STAMP).unwrap();
    let b = out.to_bytes();
    assert_eq!(b.len(), input.len());
    assert_eq!(&b[HEADER_LEN..], &input[HEADER_LEN..], "records untouched");
    let h = out.header();
    assert_eq!(BatchHeader::parse(&b).unwrap(), h);
    assert_eq!(h.base_offset, 0);
    assert_eq!(h.partition_leader_epoch, 7);
    assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (99, 1, 500));
    assert!(!h.is_transactional());
    assert!(h.is_log_append_time() && h.has_delete_horizon());
    assert_eq!(h.compression().unwrap(), Compression::Snappy);
    assert_eq!(h.attributes, tb.attributes() & !(1 << 4));
    assert_eq!(out.record_count(), 3);
    assert_eq!(h.crc, crc32c::crc32c(&b[21..]));
    // The output verifies as a batch of its own.
    one(b.to_vec()).verify().unwrap();
}

#[test]
fn unchanged_crc_covered_bytes_keep_the_crc() {
    let tb = TestBatch {
        producer_id: STAMP.producer_id,
        producer_epoch: STAMP.producer_epoch,
        base_sequence: STAMP.base_sequence,
        ..TestBatch::with_records(sample_records())
    };
    let input = tb.build();
    let out = one(input.clone()).verify().unwrap().into_outgoing(STAMP).unwrap();
    assert_eq!(&out.to_bytes()[8..], &input[8..], "only the base offset differs");
    assert_eq!(&out.to_bytes()[..8], &[0; 8]);
}

#[test]
fn renumbers_compacted_batch_for_every_codec() {
    for (compression, framing) in all_framings() {
        let mut recs = sample_records();
        recs[1].offset_delta = 2;
        recs[2].offset_delta = 5;
        let tb = TestBatch {
            compression,
            snappy_framing: framing,
            transactional: true,
            log_append_time: true,
            ..TestBatch::with_records(recs.clone())
        };
        let v = one(tb.build()).verify().unwrap();
        assert_eq!(v.header().last_offset_delta, 5);
        assert!(v.needs_renumbering());
        let out = v.into_outgoing(STAMP).unwrap();
        let h = out.header();
        assert_eq!(h.last_offset_delta, 2, "{compression}");
        assert_eq!(h.records_count, 3);
        assert_eq!(h.compression().unwrap(), compression);
        assert!(!h.is_transactional() && h.is_log_append_time());
        assert_eq!(h.base_timestamp, tb.base_timestamp);
        if compression == Compression::Snappy {
            assert_eq!(snappy_framing(&out.to_bytes()[HEADER_LEN..]), framing);
        }
        let got = walked(&out.to_bytes());
        let want: Vec<_> =
            recs.into_iter().enumerate().map(|(i, r)| TestRecord { offset_delta: i as i32, ..r }).collect();
        assert_eq!(got, want, "{compression} {framing:?}");
        let re = one(out.to_bytes().to_vec()).verify().unwrap();
        assert!(!re.needs_renumbering());
    }
}

#[test]
fn renumbering_shrinks_multibyte_offset_deltas() {
    let recs: Vec<_> =
        [0, 200, 70_000, 20_000_000].iter().map(|&d| TestRecord::new(d, Some(b"key"), Some(b"value"))).collect();
    let input = TestBatch::with_records(recs.clone()).build();
    let out = one(input.clone()).verify().unwrap().into_outgoing(STAMP).unwrap();
    // Deltas 200, 70000 and 20M take 2, 3 and 4 bytes; 1, 2, 3 take one.
    assert_eq!(out.to_bytes().len(), input.len() - 1 - 2 - 3);
    let got = walked(&out.to_bytes());
    for (i, (g, r)) in got.iter().zip(&recs).enumerate() {
        assert_eq!(g.offset_delta, i as i32);
        assert_eq!((&g.key, &g.value, g.timestamp_delta), (&r.key, &r.value, r.timestamp_delta));
    }
}

#[test]
fn trailing_compaction_only_fixes_the_header() {
    let tb = TestBatch {
        compression: Compression::Gzip,
        last_offset_delta: Some(5),
        ..TestBatch::with_records(sample_records())
    };
    let input = tb.build();
    let out = one(input.clone()).verify().unwrap().into_outgoing(STAMP).unwrap();
    assert_eq!(out.header().last_offset_delta, 2);
    assert_eq!(&out.to_bytes()[HEADER_LEN..], &input[HEADER_LEN..], "not re-compressed");
    one(out.to_bytes().to_vec()).verify().unwrap();
}

#[test]
fn control_batches_are_typed_and_not_forwardable() {
    for (kind, want) in [(0, ControlType::Abort), (1, ControlType::Commit), (5, ControlType::Other(5))] {
        let v = one(control_batch(kind).build()).verify().unwrap();
        assert!(v.header().is_control() && v.header().is_transactional());
        assert_eq!(v.control_type().unwrap(), Some(want));
        assert!(matches!(v.into_outgoing(STAMP), Err(BatchError::NotForwardable { base_offset: 1000, .. })));
    }
    let data = one(TestBatch::with_records(sample_records()).build()).verify().unwrap();
    assert_eq!(data.control_type().unwrap(), None);
    // A control record with a short key is corrupt, not a panic.
    let mut tb = control_batch(0);
    tb.records[0].key = Some(vec![0, 0, 1]);
    let v = one(tb.build()).verify().unwrap();
    assert!(matches!(v.control_type(), Err(BatchError::Corrupt { .. })));
}

#[test]
fn empty_batch_is_not_forwardable() {
    let v = one(TestBatch::default().build()).verify().unwrap();
    assert!(v.is_empty());
    let err = v.into_outgoing(STAMP).unwrap_err();
    assert!(matches!(err, BatchError::NotForwardable { .. }), "{err}");
}

#[test]
fn verify_rejects_unknown_codec_and_negative_counts() {
    for (at, value, what) in [
        (21usize, &[0u8, 5][..], "codec"),
        (57, &(-1i32).to_be_bytes()[..], "count"),
        (23, &(-2i32).to_be_bytes()[..], "delta"),
    ] {
        let mut b = TestBatch::with_records(sample_records()).build();
        b[at..at + value.len()].copy_from_slice(value);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let err = one(b).verify().unwrap_err();
        assert_eq!(err.base_offset(), Some(1000), "{what}: {err}");
    }
}

#[test]
fn wrong_record_count_with_valid_crc_fails_rewrite_cleanly() {
    // A broker bug: count says 4, data holds 3, CRC is valid.
    let mut b = TestBatch { last_offset_delta: Some(9), ..TestBatch::with_records(sample_records()) }.build();
    b[57..61].copy_from_slice(&4i32.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    let err = one(b).verify().unwrap().into_outgoing(STAMP).unwrap_err();
    assert!(matches!(err, BatchError::MalformedRecord { base_offset: Some(1000), index: 3, .. }), "{err}");
}

#[test]
fn decompression_is_bounded() {
    let zeros = vec![0u8; 1 << 20];
    for c in Compression::ALL {
        let packed = compress(c, &zeros).unwrap();
        let err = decompress_with_limit(c, &packed, 1000).unwrap_err();
        assert!(matches!(err, BatchError::DecompressedTooLarge { limit: 1000, .. }), "{c}: {err}");
        assert_eq!(decompress(c, &packed).unwrap(), zeros, "{c}");
    }
    let raw = compress_snappy(&zeros, SnappyFraming::Raw).unwrap();
    assert!(decompress_with_limit(Compression::Snappy, &raw, 1000).is_err());
    // Raw snappy claiming an absurd length is refused before allocating.
    let lie = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
    assert!(decompress(Compression::Snappy, &lie).is_err());
}

#[test]
fn concatenated_xerial_streams_decode() {
    let a = compress_snappy(b"hello ", SnappyFraming::Xerial).unwrap();
    let b = compress_snappy(b"world", SnappyFraming::Xerial).unwrap();
    let both = [a, b].concat();
    assert_eq!(decompress(Compression::Snappy, &both).unwrap(), b"hello world");
}

#[test]
fn xerial_large_input_uses_multiple_blocks() {
    let data: Vec<u8> = (0..100_000u32).flat_map(u32::to_le_bytes).collect();
    let packed = compress_snappy(&data, SnappyFraming::Xerial).unwrap();
    assert_eq!(decompress(Compression::Snappy, &packed).unwrap(), data);
}

// ---------------------------------------------------------------------------
// Property tests, cross-checked with kafka_protocol's independent decoder.
// ---------------------------------------------------------------------------

fn arb_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Some),
    ]
}

/// (timestamp delta, key, value, header values, offset gap before the record)
type ArbRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<Option<Vec<u8>>>, u8);

fn arb_record() -> impl Strategy<Value = ArbRecord> {
    (
        -1_000_000i64..1_000_000,
        arb_bytes(),
        arb_bytes(),
        proptest::collection::vec(arb_bytes(), 0..4),
        0u8..4, // gap before this record (compaction)
    )
}

fn arb_codec() -> impl Strategy<Value = (Compression, SnappyFraming)> {
    prop_oneof![
        Just((Compression::None, SnappyFraming::Xerial)),
        Just((Compression::Gzip, SnappyFraming::Xerial)),
        Just((Compression::Snappy, SnappyFraming::Xerial)),
        Just((Compression::Snappy, SnappyFraming::Raw)),
        Just((Compression::Lz4, SnappyFraming::Xerial)),
        Just((Compression::Zstd, SnappyFraming::Xerial)),
    ]
}

fn build_from(
    recs: &[ArbRecord],
    codec: (Compression, SnappyFraming),
    transactional: bool,
    trailing_gap: u8,
) -> TestBatch {
    let mut delta = -1i32;
    let records = recs
        .iter()
        .map(|(ts, k, v, hs, gap)| {
            delta += 1 + i32::from(*gap);
            TestRecord {
                offset_delta: delta,
                timestamp_delta: *ts,
                key: k.clone(),
                value: v.clone(),
                // Unique, ASCII keys: kafka_protocol keeps headers in a map.
                headers: hs.iter().enumerate().map(|(i, hv)| (format!("h{i}").into_bytes(), hv.clone())).collect(),
            }
        })
        .collect();
    TestBatch {
        compression: codec.0,
        snappy_framing: codec.1,
        transactional,
        last_offset_delta: Some(delta + i32::from(trailing_gap)),
        base_timestamp: 1_600_000_000_000,
        ..TestBatch::with_records(records)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rewrite_is_decoded_identically_by_kafka_protocol(
        recs in proptest::collection::vec(arb_record(), 1..20),
        codec in arb_codec(),
        transactional in any::<bool>(),
        trailing_gap in 0u8..3,
        stamp in (any::<i64>(), any::<i16>(), any::<i32>()),
    ) {
        let tb = build_from(&recs, codec, transactional, trailing_gap);
        let input = tb.build();
        let raw = one(input);
        let v = raw.verify().unwrap();
        let stamp = ProducerStamp { producer_id: stamp.0, producer_epoch: stamp.1, base_sequence: stamp.2 };
        let out = v.into_outgoing(stamp).unwrap();
        prop_assert_eq!(out.header().last_offset_delta, out.record_count() - 1);
        prop_assert_eq!(out.header().crc, crc32c::crc32c(&out.to_bytes()[21..]));

        let mut buf = out.to_bytes().clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(set.compression as i16, codec.0.id());
        prop_assert_eq!(set.records.len(), recs.len());
        for (i, (got, want)) in set.records.iter().zip(&tb.records).enumerate() {
            prop_assert_eq!(got.offset, i as i64);
            prop_assert_eq!(got.timestamp, tb.base_timestamp + want.timestamp_delta);
            prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
            prop_assert_eq!(got.value.as_deref(), want.value.as_deref());
            prop_assert_eq!(got.producer_id, stamp.producer_id);
            prop_assert_eq!(got.producer_epoch, stamp.producer_epoch);
            prop_assert!(!got.transactional);
            prop_assert_eq!(got.partition_leader_epoch, 7);
            let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = got
                .headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_ref().map(|v| v.to_vec())))
                .collect();
            prop_assert_eq!(&headers, &want.headers);
        }
    }

    #[test]
    fn byte_flips_never_panic_and_never_launder_corruption(
        recs in proptest::collection::vec(arb_record(), 1..6),
        codec in arb_codec(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let good = build_from(&recs, codec, false, 1).build();
        let mut bad = good.clone();
        for (at, x) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= x;
        }
        if do_cut {
            bad.truncate(cut.index(bad.len() + 1));
        }
        if let Ok(split) = split_batches(Bytes::from(bad)) {
            for raw in split.batches {
                if let Ok(v) = raw.verify() {
                    // Whatever verifies must be the original CRC-covered
                    // content: flips there are always caught.
                    prop_assert_eq!(&v.bytes()[17..], &good[17..]);
                    let _ = v.control_type();
                    let _ = v.into_outgoing(STAMP);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), count in -2i32..50) {
        let _ = walk_records(&data, count);
        for c in Compression::ALL {
            let _ = decompress_with_limit(c, &data, 1 << 16);
        }
        let mut framed = TestBatch::default().build();
        framed.extend_from_slice(&data);
        let len = (framed.len() - 12) as i32;
        framed[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&framed[21..]);
        framed[17..21].copy_from_slice(&crc.to_be_bytes());
        // Random records data behind a valid header and CRC.
        for c in [0i16, 1, 2, 3, 4] {
            for n in [count, 1] {
                let mut b = framed.clone();
                b[21..23].copy_from_slice(&c.to_be_bytes());
                b[57..61].copy_from_slice(&n.to_be_bytes());
                let crc = crc32c::crc32c(&b[21..]);
                b[17..21].copy_from_slice(&crc.to_be_bytes());
                if let Ok(split) = split_batches(Bytes::from(b)) {
                    for raw in split.batches {
                        if let Ok(v) = raw.verify() {
                            let _ = v.control_type();
                            let _ = v.into_outgoing(STAMP);
                        }
                    }
                }
            }
        }
        let _ = split_batches(Bytes::from(data));
    }
}

#[test]
fn trimming_a_batch_keeps_only_records_at_or_after_the_position() {
    for (codec, framing) in all_framings() {
        let tb = TestBatch {
            compression: codec,
            snappy_framing: framing,
            base_offset: 100,
            ..TestBatch::with_records(sample_records())
        };
        let verified = one(tb.build()).verify().unwrap();
        // before the batch: unchanged; past it: nothing
        assert_eq!(verified.clone().without_records_before(100).unwrap().unwrap(), verified);
        assert!(verified.clone().without_records_before(103).unwrap().is_none());
        let trimmed = verified.without_records_before(101).unwrap().expect("two records left");
        assert_eq!(trimmed.header().records_count, 2, "{codec}");
        assert_eq!(trimmed.header().base_offset, 100);
        // the trimmed batch is itself valid (its CRC verifies) and keeps the codec
        let again = one(trimmed.bytes().to_vec()).verify().expect("trimmed batch verifies");
        assert_eq!(again.header().compression().unwrap(), codec);
        let out = trimmed.into_outgoing(STAMP).unwrap();
        let records = walked(&out.to_bytes());
        let want = &sample_records()[1..];
        assert_eq!(records.len(), 2);
        for (i, (got, w)) in records.iter().zip(want).enumerate() {
            assert_eq!(got.offset_delta, i as i32, "{codec}: renumbered");
            assert_eq!((&got.key, &got.value, &got.headers), (&w.key, &w.value, &w.headers), "{codec}");
        }
    }
}
