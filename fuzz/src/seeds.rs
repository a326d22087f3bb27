//! Seed inputs for the fuzz targets, written into `<dir>/<target>/` by
//! [`write_all`]. The `batch` target calls it when `FUZZ_WRITE_SEEDS=<dir>` is set
//! (`FUZZ_WRITE_SEEDS=corpus cargo fuzz run -s none -a batch -- -runs=0` from `fuzz/`),
//! so that the seeds are made by the very build that fuzzes, with no second build. The batches are real: encoded by
//! `kafka-protocol`'s `RecordBatchEncoder` (an encoder independent of the code under
//! test) with every codec, by mirrorproxy's own checkpoint/registry writers, and
//! after provenance stamping; the Fetch responses are encoded by `kafka-protocol`.
//! Each seed starts with the target's selector byte (see each target).

use std::fs;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use mirrorproxy::batch::provenance::{ClusterId, Hop, Provenance};
use mirrorproxy::batch::{compress, split_batches, Compression as Codec};
use mirrorproxy::checkpoint::{encode_batch, encode_records, Checkpoint, CheckpointKey};

fn records(n: usize, producer_id: i64, offset_gap: i64, with_header: bool) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            if with_header {
                headers.insert(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"v")));
            }
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id,
                producer_epoch: if producer_id < 0 { -1 } else { 1 },
                timestamp_type: TimestampType::Creation,
                offset: 100 + i as i64 * offset_gap,
                sequence: if producer_id < 0 { -1 } else { i as i32 },
                timestamp: 1_700_000_000_000 + i as i64,
                key: (i % 2 == 0).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(format!("value {i} {}", "x".repeat(i * 3)))),
                headers,
            }
        })
        .collect()
}

fn encode(recs: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, recs, &RecordEncodeOptions { version: 2, compression }).unwrap();
    buf.freeze()
}

fn write(root: &Path, dir: &str, name: &str, sel: u8, body: &[u8]) {
    let d = root.join(dir);
    fs::create_dir_all(&d).unwrap();
    let mut v = vec![sel];
    v.extend_from_slice(body);
    fs::write(d.join(name), v).unwrap();
}

/// Writes every seed under `root`.
pub fn write_all(root: &Path) {
    let codecs = [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    let hop = Hop::new(ClusterId::new("a").unwrap(), ClusterId::new("b").unwrap());
    let mut all_batches = Vec::new();
    for (name, c) in codecs {
        let plain = encode(&records(3, 77, 1, true), c);
        // a compacted-looking batch: offsets with gaps (renumbering path)
        let gaps = encode(&records(3, -1, 2, false), c);
        // a provenance-stamped batch (records carry the provenance header)
        let v = split_batches(plain.clone()).unwrap().batches.remove(0).verify().unwrap();
        let stamped = hop.stamp(v).unwrap().bytes().clone();
        for (kind, b) in [("plain", &plain), ("gaps", &gaps), ("stamped", &stamped)] {
            write(root, "batch", &format!("{name}-{kind}"), 0, b);
            write(root, "provenance", &format!("{name}-{kind}"), 1, b);
            write(root, "registry", &format!("{name}-{kind}"), 0, b);
        }
        all_batches.extend_from_slice(&plain);
        all_batches.extend_from_slice(&stamped);

        // decompress: the records blob after the 61-byte header
        write(root, "decompress", name, mirrorproxy_fuzz_codec(name), &plain[61..]);
    }
    write(root, "batch", "several", 0, &all_batches);
    // records walker: uncompressed records section, count 3
    let plain = encode(&records(3, 77, 1, true), Compression::None);
    write(root, "records", "three", 3, &[0]);
    let mut rec = vec![3u8, 0];
    rec.extend_from_slice(&plain[61..]);
    fs::write(root.join("records/three"), rec).unwrap();
    // a hand-compressed snappy blob in raw framing too
    let raw_snappy = mirrorproxy::batch::compress_snappy(&plain[61..], mirrorproxy::batch::SnappyFraming::Raw).unwrap();
    write(root, "decompress", "snappy-raw", 2, &raw_snappy);
    write(root, "decompress", "gzip-own", 1, &compress(Codec::Gzip, &plain[61..]).unwrap());

    // provenance values
    for (i, v) in ["v1:a", "v1:a,b,c", "v1:", "v2:a", "v1:a,,b"].iter().enumerate() {
        write(root, "provenance", &format!("value-{i}"), 0, v.as_bytes());
    }
    let _ = Provenance::decode(b"v1:a,b").unwrap();

    // checkpoint: key 0xff JSON, and whole batches as written by the checkpoint writer
    let cp = Checkpoint {
        v: 1,
        source_offset: 10,
        target_offset: 20,
        last_timestamp: -1,
        updated_ms: 1_700_000_000_000,
        points: vec![(1, 2), (5, 9)],
    };
    let key = CheckpointKey { source: "east".into(), target: "west".into(), topic: "t".into(), partition: 0 }.encode();
    let mut kv = key.clone().into_bytes();
    kv.push(0xff);
    kv.extend_from_slice(&cp.to_json());
    write(root, "checkpoint", "key-value", 0, &kv);
    write(root, "checkpoint", "batch", 1, &encode_batch(&[(key.clone(), cp.clone())]));
    write(root, "checkpoint", "foreign", 1, &encode_records(&[("other".into(), b"{}".to_vec()), (key, b"{\"v\":2}".to_vec())]));

    // registry: batches as the registry writer makes them
    let path = Provenance::decode(b"v1:west,east").unwrap();
    let regs = [mirrorproxy::registry::record(77, &path, "flow"), mirrorproxy::registry::record(78, &path, "f2")];
    write(root, "registry", "registrations", 1, &encode_records(&regs));

    // Fetch responses, every version, carrying real batches
    for version in 0..=12i16 {
        let resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(200)
                .with_records(Some(Bytes::from(all_batches.clone())))])]);
        if let Ok(frame) = mirrorproxy::wire::encode_response::<FetchRequest>(&resp, version, 9) {
            write(root, "fetch_response", &format!("v{version}"), version as u8, &frame[4..]);
        }
    }

    // frames: two frames back to back and a cut-short one
    write(root, "frame", "two", 0, &[0, 0, 0, 6, 0, 0, 0, 1, 9, 9, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 1]);
    write(root, "frame", "http", 1, b"HTTP/1.1 400 Bad Request\r\n");
    eprintln!("seeds written under {}", root.display());
}

fn mirrorproxy_fuzz_codec(name: &str) -> u8 {
    match name {
        "none" => 0,
        "gzip" => 1,
        "snappy" => 2,
        "lz4" => 3,
        _ => 4,
    }
}
