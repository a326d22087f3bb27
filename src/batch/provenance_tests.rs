//! Tests of provenance deciding and stamping. Batches are built with the
//! test-only encoder in `testutil` and stamped output is decoded both with
//! our walker (which keeps duplicate header keys) and with `kafka_protocol`'s
//! independent `RecordBatchDecoder`.

use bytes::Bytes;
use proptest::prelude::*;

use super::super::testutil::{control_batch, TestBatch, TestRecord};
use super::super::{
    compress, compress_snappy, decompress, split_batches, BatchError, Compression, ProducerStamp, SnappyFraming,
    VerifiedBatch, HEADER_LEN,
};
use super::*;

const KEY: &[u8] = PROVENANCE_HEADER.as_bytes();

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn hop(s: &str, t: &str) -> Hop {
    Hop::new(id(s), id(t))
}

fn verified(bytes: Vec<u8>) -> VerifiedBatch {
    let split = split_batches(Bytes::from(bytes)).expect("split");
    assert!(!split.truncated_tail);
    assert_eq!(split.batches.len(), 1);
    split.batches.into_iter().next().unwrap().verify().expect("verify")
}

/// Sets batchLength and the CRC after a hand edit.
fn reseal(b: &mut [u8]) {
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn all_framings() -> Vec<(Compression, SnappyFraming)> {
    let mut v: Vec<_> = Compression::ALL.iter().map(|&c| (c, SnappyFraming::Xerial)).collect();
    v.push((Compression::Snappy, SnappyFraming::Raw));
    v
}

fn prov(value: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    (KEY.to_vec(), Some(value.as_bytes().to_vec()))
}

/// Records with and without headers, duplicate keys, null header values,
/// null keys and values.
fn app_records() -> Vec<TestRecord> {
    let mut r0 = TestRecord::new(0, Some(b"k0"), Some(b"v0"));
    r0.headers = vec![
        (b"dup".to_vec(), Some(b"1".to_vec())),
        (b"nul".to_vec(), None),
        (b"dup".to_vec(), Some(b"2".to_vec())),
        (Vec::new(), Some(Vec::new())),
    ];
    let r1 = TestRecord::new(1, None, Some(b""));
    let r2 = TestRecord::new(2, Some(b""), None);
    let mut r3 = TestRecord::new(3, None, None);
    r3.headers = vec![(b"only".to_vec(), None)];
    vec![r0, r1, r2, r3]
}

/// Records decoded with our walker, every header kept.
fn records_of(v: &VerifiedBatch) -> Vec<TestRecord> {
    super::super::testutil::decode_records(v)
}

/// `want` with a provenance header appended to every record.
fn with_appended(want: &[TestRecord], value: &str) -> Vec<TestRecord> {
    want.iter()
        .map(|r| {
            let mut r = r.clone();
            r.headers.push(prov(value));
            r
        })
        .collect()
}

/// Everything but batchLength and the CRC is kept.
fn assert_header_kept(before: &VerifiedBatch, after: &VerifiedBatch) {
    let (a, b) = (before.header(), after.header());
    assert_eq!(BatchHeader { batch_length: 0, crc: 0, ..*a }, BatchHeader { batch_length: 0, crc: 0, ..*b });
    assert_eq!(&before.bytes()[12..17], &after.bytes()[12..17]);
    assert_eq!(&before.bytes()[21..HEADER_LEN], &after.bytes()[21..HEADER_LEN]);
    assert_eq!(b.total_len(), Some(after.bytes().len()));
    // The output is a batch of its own with a valid CRC.
    assert_eq!(&verified(after.bytes().to_vec()), after);
}

#[test]
fn cluster_ids_are_validated() {
    for good in ["a", "east-1", "dc_2.prod", "MkU3OEVBNTcwNTJENDM2Qk", &"x".repeat(255)] {
        assert_eq!(ClusterId::new(good).unwrap().as_str(), good);
    }
    for bad in ["", "a,b", "a:b", "a b", "é", "a\n", &"x".repeat(256)] {
        assert!(matches!(ClusterId::new(bad), Err(ProvenanceError::InvalidClusterId { .. })), "{bad:?}");
    }
    assert_eq!("east".parse::<ClusterId>().unwrap(), id("east"));
}

#[test]
fn value_encoding_round_trips_and_is_strict() {
    let p = Provenance::from_origin(id("east")).with_hop(&id("west"));
    assert_eq!(p.encode(), b"v1:east,west");
    assert_eq!(Provenance::decode(b"v1:east,west").unwrap(), p);
    assert_eq!(p.origin().as_str(), "east");
    assert_eq!(p.last().as_str(), "west");
    assert!(p.contains("west") && p.contains("east") && !p.contains("wes"));
    assert_eq!(p.to_string(), "east,west");
    let three = p.with_hop(&id("c"));
    assert_eq!(three.encode(), b"v1:east,west,c");
    assert_eq!(three.clusters().len(), 3);
    assert_eq!(Provenance::decode(b"v1:solo").unwrap().clusters(), [id("solo")]);
    for bad in [
        &b""[..],
        b"v1:",
        b"v1",
        b"v2:a,b",
        b"V1:a",
        b"a,b",
        b"v1:a,",
        b"v1:,a",
        b"v1:a,,b",
        b"v1:a b",
        b"v1:a\xff",
        b" v1:a",
    ] {
        assert!(matches!(Provenance::decode(bad), Err(ProvenanceError::Malformed { .. })), "{bad:?}");
    }
    assert!(Provenance::new(vec![]).is_err());
}

#[test]
fn fresh_records_get_source_and_target_after_their_own_headers() {
    for (codec, framing) in all_framings() {
        let tb = TestBatch {
            compression: codec,
            snappy_framing: framing,
            transactional: true,
            log_append_time: true,
            ..TestBatch::with_records(app_records())
        };
        let v = verified(tb.build());
        assert_eq!(first_record_provenance(&v).unwrap(), None);
        let h = hop("east", "west");
        assert_eq!(h.decide(&v).unwrap(), Decision::Forward { provenance: None });
        let out = h.stamp(v.clone()).unwrap();
        assert_header_kept(&v, &out);
        assert_eq!(records_of(&out), with_appended(&app_records(), "v1:east,west"), "{codec} {framing:?}");
        if codec == Compression::Snappy {
            assert_eq!(snappy_framing(out.records_data()), framing);
        }
        assert_eq!(first_record_provenance(&out).unwrap().unwrap().encode(), b"v1:east,west");
    }
}

#[test]
fn second_hop_extends_the_value_in_place() {
    for (codec, framing) in all_framings() {
        let tb = TestBatch { compression: codec, snappy_framing: framing, ..TestBatch::with_records(app_records()) };
        let once = hop("a", "b").stamp(verified(tb.build())).unwrap();
        let twice = hop("b", "c").stamp(once.clone()).unwrap();
        assert_header_kept(&once, &twice);
        assert_eq!(records_of(&twice), with_appended(&app_records(), "v1:a,b,c"));
        // Not written back to a, nor to b.
        for back in ["a", "b"] {
            let d = hop("c", back).decide(&twice).unwrap();
            assert_eq!(d, Decision::Skip { provenance: Provenance::decode(b"v1:a,b,c").unwrap() }, "{codec}");
            assert!(d.is_skip());
            assert!(matches!(
                hop("c", back).stamp(twice.clone()),
                Err(BatchError::NotForwardable { base_offset: 1000, .. })
            ));
        }
        // A source that is not the list's last still only appends the target.
        let d = hop("x", "d").decide(&twice).unwrap();
        assert!(!d.is_skip());
        let fourth = hop("x", "d").stamp(twice).unwrap();
        assert_eq!(records_of(&fourth), with_appended(&app_records(), "v1:a,b,c,d"));
    }
}

#[test]
fn existing_header_keeps_its_position() {
    let mut recs = app_records();
    for r in &mut recs {
        r.headers.insert(0, prov("v1:a,b"));
        r.headers.push((b"after".to_vec(), Some(b"z".to_vec())));
    }
    for (codec, framing) in all_framings() {
        let tb = TestBatch { compression: codec, snappy_framing: framing, ..TestBatch::with_records(recs.clone()) };
        let out = hop("b", "c").stamp(verified(tb.build())).unwrap();
        let mut want = recs.clone();
        for r in &mut want {
            r.headers[0] = prov("v1:a,b,c");
        }
        assert_eq!(records_of(&out), want, "{codec}");
    }
}

#[test]
fn refusals_are_typed() {
    let h = hop("a", "b");
    // Control batches.
    let ctl = verified(control_batch(1).build());
    assert!(matches!(h.decide(&ctl), Err(BatchError::NotForwardable { .. })));
    assert!(matches!(h.stamp(ctl), Err(BatchError::NotForwardable { .. })));

    let malformed = |recs: Vec<TestRecord>, want_index: usize| {
        for (codec, framing) in all_framings() {
            let tb = TestBatch { compression: codec, snappy_framing: framing, ..TestBatch::with_records(recs.clone()) };
            let err = h.stamp(verified(tb.build())).unwrap_err();
            assert!(
                matches!(err, BatchError::MalformedRecord { base_offset: Some(1000), index, .. } if index == want_index),
                "{codec}: {err}"
            );
        }
    };
    let rec =
        |headers: Vec<(Vec<u8>, Option<Vec<u8>>)>| TestRecord { headers, ..TestRecord::new(0, Some(b"k"), Some(b"v")) };
    let second = |headers| TestRecord { offset_delta: 1, ..rec(headers) };
    // Duplicate, null and malformed provenance headers.
    malformed(vec![rec(vec![prov("v1:x"), prov("v1:x")])], 0);
    malformed(vec![rec(vec![(KEY.to_vec(), None)])], 0);
    malformed(vec![rec(vec![prov("v2:x")])], 0);
    malformed(vec![rec(vec![prov("v1:x,")])], 0);
    // Records that disagree with the first one.
    malformed(vec![rec(vec![]), second(vec![prov("v1:x")])], 1);
    malformed(vec![rec(vec![prov("v1:x")]), second(vec![])], 1);
    malformed(vec![rec(vec![prov("v1:x")]), second(vec![prov("v1:y")])], 1);
    // The decision only looks at the first record, but reports a bad one.
    let v = verified(TestBatch::with_records(vec![rec(vec![prov("v1:x:y")])]).build());
    assert!(matches!(first_record_provenance(&v), Err(BatchError::MalformedRecord { index: 0, .. })));
    // Target already in the list.
    let v = verified(TestBatch::with_records(vec![rec(vec![prov("v1:b,a")])]).build());
    assert!(matches!(h.stamp(v), Err(BatchError::NotForwardable { .. })));
}

#[test]
fn empty_batch_is_left_alone() {
    let v = verified(TestBatch::default().build());
    let h = hop("a", "b");
    assert_eq!(first_record_provenance(&v).unwrap(), None);
    assert_eq!(h.decide(&v).unwrap(), Decision::Forward { provenance: None });
    assert_eq!(h.stamp(v.clone()).unwrap(), v);
}

#[test]
fn varints_grow_across_their_boundaries() {
    // 63 headers: the count varint goes from 1 to 2 bytes (zigzag 126 → 128).
    let mut many = TestRecord::new(0, Some(b"k"), None);
    many.headers = (0..63).map(|i| (format!("h{i}").into_bytes(), None)).collect();
    // A record body of 60 bytes: + the fresh header crosses 63 (1-byte zigzag).
    let small = TestRecord::new(1, Some(&[7; 20]), Some(&[9; 30]));
    // A body just under 8191 (2-byte) that needs 3 bytes after stamping.
    let big = TestRecord::new(2, None, Some(&[1; 8180]));
    let recs = vec![many, small, big];
    let out = hop("a", "b").stamp(verified(TestBatch::with_records(recs.clone()).build())).unwrap();
    assert_eq!(records_of(&out), with_appended(&recs, "v1:a,b"));
    let out = hop("b", "c").stamp(out).unwrap();
    assert_eq!(records_of(&out), with_appended(&recs, "v1:a,b,c"));
    // A value growing across 63 bytes (value length varint 1 → 2 bytes).
    let long = format!("v1:{}", "q".repeat(59));
    let mut r = TestRecord::new(0, None, None);
    r.headers = vec![prov(&long)];
    let out = hop("q", "zz").stamp(verified(TestBatch::with_records(vec![r.clone()]).build())).unwrap();
    r.headers = vec![prov(&format!("{long},zz"))];
    assert_eq!(records_of(&out), vec![r]);
}

#[test]
fn stamped_compacted_batch_goes_through_into_outgoing() {
    let stamp = ProducerStamp { producer_id: 9, producer_epoch: 1, base_sequence: 3 };
    for (codec, framing) in all_framings() {
        let mut recs = app_records();
        recs[1].offset_delta = 4;
        recs[2].offset_delta = 6;
        recs[3].offset_delta = 7;
        let tb = TestBatch {
            compression: codec,
            snappy_framing: framing,
            transactional: true,
            last_offset_delta: Some(9),
            ..TestBatch::with_records(recs.clone())
        };
        let stamped = hop("a", "b").stamp(verified(tb.build())).unwrap();
        assert_eq!(stamped.header().last_offset_delta, 9, "offsets untouched");
        assert_eq!(records_of(&stamped), with_appended(&recs, "v1:a,b"));
        let out = stamped.into_outgoing(stamp).unwrap();
        let mut buf = out.to_bytes().clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 4, "{codec}");
        for (i, r) in set.records.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            let prov = r.headers.iter().find(|(k, _)| k.as_bytes() == KEY).and_then(|(_, v)| v.clone());
            assert_eq!(prov.as_deref(), Some(&b"v1:a,b"[..]));
        }
    }
}

/// A batch of `n` ~1 KB records; its compressed form is cut after `keep`
/// bytes, with a valid CRC. Only the first record can be read.
fn cut_batch(codec: Compression, framing: SnappyFraming, keep_fraction: f64) -> Vec<u8> {
    let recs: Vec<_> = (0..300)
        .map(|i| {
            let value: Vec<u8> =
                (0..1000u32).map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i * 7919) >> 13) as u8).collect();
            let mut r = TestRecord::new(i as i32, Some(b"key"), Some(&value));
            r.headers = vec![(b"app".to_vec(), None), prov("v1:a,b")];
            r
        })
        .collect();
    let tb = TestBatch { compression: codec, snappy_framing: framing, ..TestBatch::with_records(recs) };
    let mut b = tb.build();
    let body = b.len() - HEADER_LEN;
    b.truncate(HEADER_LEN + (body as f64 * keep_fraction) as usize);
    reseal(&mut b);
    b
}

#[test]
fn compressed_decision_reads_only_the_first_record() {
    for (codec, framing) in all_framings() {
        if codec == Compression::None {
            continue;
        }
        let v = verified(cut_batch(codec, framing, 0.5));
        // The whole stream is broken, so a full decompression fails...
        assert!(v.decompressed_records().is_err() || v.record_spans().is_err(), "{codec}");
        // ...but the first record is there and is all the decision needs.
        assert_eq!(
            first_record_provenance(&v).unwrap(),
            Some(Provenance::decode(b"v1:a,b").unwrap()),
            "{codec} {framing:?}"
        );
        assert!(hop("b", "a").decide(&v).unwrap().is_skip());
        assert!(!hop("b", "c").decide(&v).unwrap().is_skip());
        assert!(hop("b", "c").stamp(v).is_err());
    }
    // Uncompressed: O(1), the data after the first record is not looked at.
    let v = verified(cut_batch(Compression::None, SnappyFraming::Xerial, 0.01));
    assert!(hop("b", "a").decide(&v).unwrap().is_skip());
}

#[test]
fn decision_on_a_record_cut_short_is_an_error_not_a_panic() {
    for (codec, framing) in all_framings() {
        for keep in [0.0, 0.0005, 0.001, 0.002] {
            let v = verified(cut_batch(codec, framing, keep));
            assert!(first_record_provenance(&v).is_err(), "{codec} {keep}");
        }
    }
}

#[test]
fn raw_snappy_reader_matches_snap() {
    let mut data = Vec::new();
    for i in 0..20_000u32 {
        data.extend_from_slice(&(i / 7).to_le_bytes());
        if i % 100 == 0 {
            data.extend_from_slice(b"abcabcabcabcabcabcabcabc");
        }
    }
    let packed = compress_snappy(&data, SnappyFraming::Raw).unwrap();
    let mut got = Vec::new();
    RawSnappyReader::new(&packed, 1 << 30).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, data);
    assert!(RawSnappyReader::new(&packed, 1000).is_err());
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

fn arb_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => proptest::collection::vec(any::<u8>(), 1..200).prop_map(Some),
    ]
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

/// (timestamp delta, key, value, header values, offset gap)
type ArbRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<Option<Vec<u8>>>, u8);

fn arb_record() -> impl Strategy<Value = ArbRecord> {
    (-1_000_000i64..1_000_000, arb_bytes(), arb_bytes(), proptest::collection::vec(arb_bytes(), 0..5), 0u8..3)
}

fn build_from(recs: &[ArbRecord], codec: (Compression, SnappyFraming)) -> TestBatch {
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
                // Unique ASCII keys: kafka_protocol keeps headers in a map.
                headers: hs.iter().enumerate().map(|(i, hv)| (format!("h{i}").into_bytes(), hv.clone())).collect(),
            }
        })
        .collect();
    TestBatch { compression: codec.0, snappy_framing: codec.1, ..TestBatch::with_records(records) }
}

fn arb_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn stamping_is_decoded_identically_by_kafka_protocol(
        recs in proptest::collection::vec(arb_record(), 1..16),
        codec in arb_codec(),
        ids in proptest::collection::hash_set(arb_id(), 3),
    ) {
        let ids: Vec<String> = ids.into_iter().collect();
        let tb = build_from(&recs, codec);
        let input = verified(tb.build());
        let first = hop(&ids[0], &ids[1]).stamp(input.clone()).unwrap();
        let second = hop(&ids[1], &ids[2]).stamp(first.clone()).unwrap();
        for (stamped, list) in [(&first, &ids[..2]), (&second, &ids[..3])] {
            assert_header_kept(&input, stamped);
            let value = format!("v1:{}", list.join(","));
            let mut buf = stamped.bytes().clone();
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(set.compression as i16, codec.0.id());
            prop_assert_eq!(set.records.len(), tb.records.len());
            for (got, want) in set.records.iter().zip(&tb.records) {
                prop_assert_eq!(got.offset, tb.base_offset + i64::from(want.offset_delta));
                prop_assert_eq!(got.timestamp, tb.base_timestamp + want.timestamp_delta);
                prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
                prop_assert_eq!(got.value.as_deref(), want.value.as_deref());
                let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = got
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_ref().map(|v| v.to_vec())))
                    .collect();
                let mut want_headers = want.headers.clone();
                want_headers.push(prov(&value));
                prop_assert_eq!(headers, want_headers);
            }
            // The decision agrees with a full decode of the first record.
            let full = records_of(stamped);
            let from_full = full[0]
                .headers
                .iter()
                .find(|(k, _)| k == KEY)
                .map(|(_, v)| Provenance::decode(v.as_deref().unwrap()).unwrap());
            let decided = first_record_provenance(stamped).unwrap();
            prop_assert_eq!(&decided, &from_full);
            prop_assert_eq!(decided.unwrap().encode(), value.into_bytes());
            // Skip exactly when the target has been visited.
            prop_assert!(hop(&ids[2], &ids[0]).decide(stamped).unwrap().is_skip());
        }
        prop_assert!(!hop(&ids[1], &ids[2]).decide(&first).unwrap().is_skip());
        prop_assert!(hop(&ids[0], &ids[2]).decide(&second).unwrap().is_skip());
    }

    #[test]
    fn streaming_first_record_equals_full_decode(
        recs in proptest::collection::vec(arb_record(), 1..8),
        codec in arb_codec(),
    ) {
        let tb = build_from(&recs, codec);
        let v = verified(tb.build());
        let data = v.records_data();
        let streamed = first_record_compressed(codec.0, data, MAX_DECOMPRESSED_LEN).unwrap();
        let plain = tb.plain_records();
        prop_assert_eq!(&streamed[..], &plain[..streamed.len()]);
        prop_assert_eq!(walk_records(&streamed, 1).unwrap().len(), 1);
    }

    #[test]
    fn raw_snappy_reader_agrees_with_snap(
        chunks in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), 1usize..50), 0..40),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let data: Vec<u8> = chunks.iter().flat_map(|(c, n)| c.repeat(*n)).collect();
        let packed = compress_snappy(&data, SnappyFraming::Raw).unwrap();
        let mut got = Vec::new();
        RawSnappyReader::new(&packed, 1 << 30).unwrap().read_to_end(&mut got).unwrap();
        prop_assert_eq!(&got, &data);
        // Broken input: an error or a prefix of what snap says, never a panic.
        let mut bad = packed.clone();
        bad.truncate(cut.index(bad.len() + 1));
        if !bad.is_empty() {
            let i = flip.index(bad.len());
            bad[i] ^= 0x5a;
        }
        let mut got = Vec::new();
        if let Ok(mut r) = RawSnappyReader::new(&bad, 1 << 20) {
            let _ = r.read_to_end(&mut got);
        }
        if let Ok(full) = decompress(Compression::Snappy, &bad) {
            prop_assert_eq!(&got[..], &full[..got.len().min(full.len())]);
        }
    }

    #[test]
    fn byte_flips_behind_a_valid_crc_never_panic(
        recs in proptest::collection::vec(arb_record(), 1..6),
        codec in arb_codec(),
        stamped_first in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut good = build_from(&recs, codec).build();
        if stamped_first {
            good = hop("a", "b").stamp(verified(good)).unwrap().bytes().to_vec();
        }
        let mut bad = good.clone();
        for (at, x) in &flips {
            let i = HEADER_LEN + at.index(bad.len() - HEADER_LEN);
            bad[i] ^= x;
        }
        if do_cut {
            bad.truncate(HEADER_LEN + cut.index(bad.len() - HEADER_LEN + 1));
        }
        reseal(&mut bad);
        let v = verified(bad);
        let _ = first_record_provenance(&v);
        let _ = hop("b", "c").decide(&v);
        let _ = hop("b", "a").decide(&v);
        if let Ok(out) = hop("b", "c").stamp(v) {
            // Whatever stamping accepts it writes as a valid batch.
            verified(out.bytes().to_vec());
        }
    }

    #[test]
    fn arbitrary_records_data_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        count in 0i32..4,
        codec in 0i16..5,
        compressed in any::<bool>(),
    ) {
        let c = Compression::from_id(codec).unwrap();
        let body = if compressed { compress(c, &data).unwrap() } else { data };
        let mut b = TestBatch::default().build();
        b.extend_from_slice(&body);
        b[21..23].copy_from_slice(&codec.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        reseal(&mut b);
        let v = verified(b);
        let _ = first_record_provenance(&v);
        let _ = hop("a", "b").stamp(v);
    }
}
