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
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 3);
    let cfg = config(&source.bootstrap, &target.bootstrap);

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
}
