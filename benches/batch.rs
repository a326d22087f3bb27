//! Benchmarks of the batch layer's hot paths: splitting a fetch response,
//! CRC verification, the pass-through rewrite and the renumbering slow path.
//!
//! Inputs are encoded with `kafka_protocol`'s independent encoder: a 1 MiB
//! fetch blob made of ~16 KB batches, as a broker would return for a busy
//! partition.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression as KpCompression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use mirrorproxy::batch::{split_batches, ProducerStamp};

const STAMP: ProducerStamp = ProducerStamp { producer_id: 1, producer_epoch: 0, base_sequence: 0 };

fn record(offset: i64) -> Record {
    // Semi-compressible 1000-byte values.
    let value: Vec<u8> =
        (0..1000u32).map(|i| (i.wrapping_mul(31).wrapping_add(offset as u32) % 251) as u8 / 4).collect();
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 5,
        producer_id: 77,
        producer_epoch: 1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: offset as i32,
        timestamp: 1_700_000_000_000 + offset,
        key: Some(Bytes::from(format!("key-{offset}"))),
        value: Some(Bytes::from(value)),
        headers: IndexMap::new(),
    }
}

/// One batch of `n` records whose offsets step by `stride` from `base`
/// (stride > 1 simulates compaction).
fn batch(base: i64, n: i64, stride: i64, compression: KpCompression) -> Bytes {
    let records: Vec<Record> = (0..n).map(|i| record(base + i * stride)).collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression }).expect("encode");
    buf.freeze()
}

/// ~1 MiB of ~16 KB uncompressed batches.
fn fetch_blob() -> Bytes {
    let mut blob = BytesMut::new();
    let mut base = 0;
    while blob.len() < (1 << 20) {
        blob.extend_from_slice(&batch(base, 16, 1, KpCompression::None));
        base += 16;
    }
    blob.freeze()
}

fn benches(c: &mut Criterion) {
    let blob = fetch_blob();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(blob.len() as u64));

    g.bench_function("split_1MiB_of_16KB_batches", |b| {
        b.iter(|| split_batches(black_box(blob.clone())).unwrap());
    });

    let raw = split_batches(blob.clone()).unwrap().batches;
    g.bench_function("verify_crc_1MiB", |b| {
        b.iter_batched(
            || raw.clone(),
            |batches| {
                for r in batches {
                    black_box(r.verify().unwrap());
                }
            },
            BatchSize::SmallInput,
        );
    });

    let verified: Vec<_> = raw.iter().cloned().map(|r| r.verify().unwrap()).collect();
    g.bench_function("into_outgoing_pass_through_1MiB", |b| {
        b.iter_batched(
            || verified.clone(),
            |batches| {
                for v in batches {
                    black_box(v.into_outgoing(STAMP).unwrap());
                }
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();

    let mut g = c.benchmark_group("renumber");
    for (name, codec) in [("uncompressed", KpCompression::None), ("zstd", KpCompression::Zstd)] {
        let compacted = batch(0, 16, 2, codec);
        g.throughput(Throughput::Bytes(compacted.len() as u64));
        let v = split_batches(compacted).unwrap().batches[0].clone().verify().unwrap();
        assert!(v.needs_renumbering());
        g.bench_function(name, |b| {
            b.iter_batched(|| v.clone(), |v| black_box(v.into_outgoing(STAMP).unwrap()), BatchSize::SmallInput);
        });
    }
    g.finish();
}

criterion_group!(batch_benches, benches, provenance_benches);
criterion_main!(batch_benches);

// ---------------------------------------------------------------------------
// Provenance: stamping (rewrites the records section) and deciding (reads the
// first record only, so its cost must not grow with the batch).
// ---------------------------------------------------------------------------

fn verified_one(bytes: Bytes) -> mirrorproxy::batch::VerifiedBatch {
    split_batches(bytes).unwrap().batches[0].clone().verify().unwrap()
}

fn provenance_benches(c: &mut Criterion) {
    use mirrorproxy::batch::{ClusterId, Hop};

    let hop = Hop::new(ClusterId::new("east").unwrap(), ClusterId::new("west").unwrap());
    let next = Hop::new(ClusterId::new("west").unwrap(), ClusterId::new("central").unwrap());
    let back = Hop::new(ClusterId::new("west").unwrap(), ClusterId::new("east").unwrap());
    let codecs = [
        ("uncompressed", KpCompression::None),
        ("gzip", KpCompression::Gzip),
        ("snappy", KpCompression::Snappy),
        ("lz4", KpCompression::Lz4),
        ("zstd", KpCompression::Zstd),
    ];

    // Stamping 1 KB records; throughput counts the uncompressed batch size
    // (the records bytes that are spliced), whatever the codec.
    let mut g = c.benchmark_group("provenance_stamp");
    for (name, codec) in codecs {
        for (size, n) in [("16KB", 16), ("1MiB", 1024)] {
            let v = verified_one(batch(0, n, 1, codec));
            let plain_len = batch(0, n, 1, KpCompression::None).len();
            g.throughput(Throughput::Bytes(plain_len as u64));
            g.bench_function(format!("{name}_{size}_fresh"), |b| {
                b.iter(|| black_box(hop.stamp(black_box(v.clone())).unwrap()));
            });
            if codec == KpCompression::None {
                // Second hop: the value of an existing header is extended.
                let once = hop.stamp(v.clone()).unwrap();
                g.bench_function(format!("{name}_{size}_second_hop"), |b| {
                    b.iter(|| black_box(next.stamp(black_box(once.clone())).unwrap()));
                });
            }
        }
    }
    g.finish();

    // Deciding: the same work for a 16 KB and a 1 MiB batch.
    let mut g = c.benchmark_group("provenance_decide");
    for (name, codec) in codecs {
        for (size, n) in [("16KB", 16), ("1MiB", 1024)] {
            let stamped = hop.stamp(verified_one(batch(0, n, 1, codec))).unwrap();
            let fetched = verified_one(stamped.bytes().clone());
            assert!(back.decide(&fetched).unwrap().is_skip());
            g.bench_function(format!("{name}_{size}"), |b| {
                b.iter(|| black_box(back.decide(black_box(&fetched)).unwrap()));
            });
        }
    }
    g.finish();

    // For comparison: what a decision would cost if it decompressed the
    // whole 1 MiB batch.
    let mut g = c.benchmark_group("provenance_decide_baseline_full_decompress");
    for (name, codec) in codecs.into_iter().skip(1) {
        let v = verified_one(batch(0, 1024, 1, codec));
        g.bench_function(format!("{name}_1MiB"), |b| {
            b.iter(|| black_box(v.decompressed_records().unwrap().len()));
        });
    }
    g.finish();
}
