//! Exactly-once across restarts and crashes: checkpoints on the target plus
//! reconciliation of the target's tail. Data produced and verified with librdkafka.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

fn config(source: &str, target: &str) -> String {
    edge_to_cloud(source, target, "orders", "")
}

fn record(i: usize, partitions: i32) -> TestRecord {
    TestRecord {
        partition: (i % partitions as usize) as i32,
        key: Some(format!("k{i}").into_bytes()),
        value: Some(format!("value-{i}").into_bytes()),
        headers: vec![("seq".into(), Some(i.to_string().into_bytes()))],
        timestamp: Some(1_700_000_000_000 + i as i64),
    }
}

/// Asserts the target holds exactly `expected`, per partition, in order.
fn assert_exactly(expected: &[TestRecord], got: &[ReceivedRecord]) {
    let partitions = expected.iter().map(|r| r.partition).max().unwrap_or(0) + 1;
    for p in 0..partitions {
        let want: Vec<&TestRecord> = expected.iter().filter(|r| r.partition == p).collect();
        let have: Vec<&ReceivedRecord> = got.iter().filter(|r| r.partition == p).collect();
        let first_bad = want.iter().zip(&have).position(|(w, h)| !h.matches(w));
        assert!(
            first_bad.is_none() && want.len() == have.len(),
            "partition {p}: {} records on the target, {} produced; first difference at index {first_bad:?}: target {:?} source {:?}",
            have.len(),
            want.len(),
            first_bad.and_then(|i| have.get(i)),
            first_bad.and_then(|i| want.get(i)),
        );
    }
    assert_eq!(got.len(), expected.len());
}

#[test]
fn clean_restart_resumes_where_it_stopped() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 2);
    let first: Vec<TestRecord> = (0..300).map(|i| record(i, 2)).collect();
    produce(&source.bootstrap, "orders", &first, "lz4", true);
    let cfg = config(&source.bootstrap, &target.bootstrap);
    let mut proxy = MirrorProxy::start(&cfg);
    assert_eq!(consume_all(&target.bootstrap, "orders", first.len(), Duration::from_secs(60)).len(), first.len());
    assert!(proxy.stop().success());

    let second: Vec<TestRecord> = (300..600).map(|i| record(i, 2)).collect();
    produce(&source.bootstrap, "orders", &second, "zstd", true);
    let mut proxy = MirrorProxy::start(&cfg);
    assert!(
        proxy.wait_for_log("resuming partition from its checkpoint", Duration::from_secs(30)),
        "{}",
        tail(&proxy.log(), 20)
    );
    let all: Vec<TestRecord> = first.iter().chain(&second).cloned().collect();
    let got = consume_all(&target.bootstrap, "orders", all.len(), Duration::from_secs(60));
    assert_exactly(&all, &got);
    assert!(proxy.stop().success());
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    kill_loop("");
}

/// Re-batching and the crash window: every merged batch is written after the last
/// checkpoint, the mirror is killed, more data arrives, and the restart must recognise
/// each merged target batch as a run of source batches (not send them again) while
/// forming its own, different runs for the rest.
#[test]
fn crash_after_merged_batches_reconciles_runs_of_source_batches() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 2);
    let mut expected = Vec::new();
    let mut chunk = |from: usize, codec: &str| {
        let recs: Vec<TestRecord> = (from..from + 40).map(|i| record(i, 2)).collect();
        produce(&source.bootstrap, "orders", &recs, codec, true);
        expected.extend(recs);
    };
    for c in 0..8 {
        chunk(c * 40, ["none", "lz4", "zstd", "snappy", "gzip"][c % 5]);
    }
    // No checkpoint after the first (written before the first batch): everything the
    // mirror writes is in the crash window.
    let cfg = edge_to_cloud(
        &source.bootstrap,
        &target.bootstrap,
        "orders",
        "rebatch_max_bytes = 65536\nrebatch_compression = \"zstd\"",
    )
    .replace("checkpoint_interval_ms = 150", "checkpoint_interval_ms = 3600000");
    let mut proxy = MirrorProxy::start(&cfg);
    assert_eq!(consume_all(&target.bootstrap, "orders", 320, Duration::from_secs(60)).len(), 320);
    let before: Vec<Vec<i16>> = (0..2).map(|p| batch_codecs(&target.bootstrap, "orders", p)).collect();
    assert!(before.iter().all(|b| b.len() < 8), "8 source batches per partition were merged: {before:?}");
    proxy.signal("KILL");
    assert!(proxy.stop_timeout(Duration::from_secs(5)).is_some_and(|s| !s.success()));
    for c in 8..11 {
        chunk(c * 40, "lz4");
    }
    let mut proxy = MirrorProxy::start(&cfg);
    let got = consume_all(&target.bootstrap, "orders", expected.len(), Duration::from_secs(60));
    assert_exactly(&expected, &got);
    assert!(proxy.log().contains("resuming partition from its checkpoint"), "{}", tail(&proxy.log(), 20));
    let after: Vec<Vec<i16>> = (0..2).map(|p| batch_codecs(&target.bootstrap, "orders", p)).collect();
    for p in 0..2 {
        assert!(
            after[p].starts_with(&before[p]),
            "partition {p}: the merged batches were written again: {before:?} then {after:?}"
        );
        assert!(after[p].iter().all(|c| *c == 4), "merged batches are zstd: {after:?}");
    }
    assert!(proxy.stop().success());
}

/// Kills and restarts the mirror 6 times under continuous production; returns the
/// codec of every target batch per partition.
fn kill_loop(flow_extra: &str) -> Vec<Vec<i16>> {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 3);
    let mut cfg = edge_to_cloud(&source.bootstrap, &target.bootstrap, "orders", flow_extra);
    if !flow_extra.is_empty() {
        cfg = cfg.replace("[tuning]\n", "[tuning]\nmax_in_flight_per_partition = 1\n");
    }

    // A producer writing continuously while the mirror is killed and restarted.
    let produced: Arc<Mutex<Vec<TestRecord>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let produced = produced.clone();
        let done = done.clone();
        let bootstrap = source.bootstrap.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(14) {
                let chunk: Vec<TestRecord> = (i..i + 150).map(|j| record(j, 3)).collect();
                let codec = ["none", "lz4", "zstd", "snappy", "gzip"][(i / 150) % 5];
                produce(&bootstrap, "orders", &chunk, codec, true);
                produced.lock().unwrap().extend(chunk);
                i += 150;
                std::thread::sleep(Duration::from_millis(40));
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut kills = 0;
    let mut proxy = MirrorProxy::start(&cfg);
    while kills < 6 {
        std::thread::sleep(Duration::from_millis(300 + next() % 1700));
        proxy.signal("KILL");
        let status = proxy.stop_timeout(Duration::from_secs(5));
        assert!(status.is_some_and(|s| !s.success()), "the proxy was not killed");
        kills += 1;
        proxy = MirrorProxy::start(&cfg);
    }
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    let expected = produced.lock().unwrap().clone();
    let got = consume_all(&target.bootstrap, "orders", expected.len(), Duration::from_secs(90));
    eprintln!("{kills} kills; {} records produced, {} on the target", expected.len(), got.len());
    assert_exactly(&expected, &got);
    assert!(proxy.stop().success());
    let target_batches: Vec<Vec<i16>> = (0..3).map(|p| batch_codecs(&target.bootstrap, "orders", p)).collect();
    let source_batches: usize = (0..3).map(|p| batch_codecs(&source.bootstrap, "orders", p).len()).sum();
    let merged = target_batches.iter().map(Vec::len).sum::<usize>();
    eprintln!("{source_batches} source batches, {merged} target batches");
    if !flow_extra.is_empty() {
        assert!(merged < source_batches, "re-batching merged nothing: {merged} target batches for {source_batches}");
    }
    target_batches
}
