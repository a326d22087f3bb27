//! End-to-end mirroring between two real tansu brokers, with data produced and read
//! back by librdkafka. mirrorproxy's own protocol code is never the judge here, except
//! for reading the compression bits of target batches, which no client exposes.

mod support;

use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn config(source: &str, target: &str, topics: &str, extra_flow: &str) -> String {
    edge_to_cloud(source, target, topics, extra_flow)
}

#[test]
fn mixed_topics_arrive_identical_in_order_exactly_once() {
    let source = Broker::start();
    let target = Broker::start();
    let mut expected: Vec<(String, Vec<TestRecord>, &str)> = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("mix.{codec}");
        create_topic(&source.bootstrap, &topic, 3);
        let recs = varied_records(300, 3, codec);
        produce(&source.bootstrap, &topic, &recs, codec, false);
        expected.push((topic, recs, codec));
    }
    // an idempotent producer (producer id and sequences the target does not know)
    create_topic(&source.bootstrap, "mix.idempotent", 2);
    let recs = varied_records(200, 2, "idem");
    produce(&source.bootstrap, "mix.idempotent", &recs, "lz4", true);
    expected.push(("mix.idempotent".into(), recs, "lz4"));
    // 500 KB values
    create_topic(&source.bootstrap, "mix.large", 1);
    let large: Vec<TestRecord> = (0..4)
        .map(|i| TestRecord {
            partition: 0,
            key: Some(format!("big{i}").into_bytes()),
            value: Some(vec![b'a' + i as u8; 500 * 1024]),
            headers: vec![],
            timestamp: Some(1_700_000_000_000 + i),
        })
        .collect();
    produce(&source.bootstrap, "mix.large", &large, "none", false);
    expected.push(("mix.large".into(), large, "none"));
    // transactions: plain, committed, aborted, plain — only committed data may arrive
    create_topic(&source.bootstrap, "mix.txn", 1);
    let before = vec![TestRecord::kv(0, "plain-1", "before")];
    let committed: Vec<TestRecord> = (0..5).map(|i| TestRecord::kv(0, &format!("c{i}"), "committed")).collect();
    let aborted: Vec<TestRecord> = (0..5).map(|i| TestRecord::kv(0, &format!("a{i}"), "aborted")).collect();
    let after = vec![TestRecord::kv(0, "plain-2", "after")];
    produce(&source.bootstrap, "mix.txn", &before, "none", false);
    produce_transaction(&source.bootstrap, "mix.txn", &committed, true, "tx-commit");
    produce_transaction(&source.bootstrap, "mix.txn", &aborted, false, "tx-abort");
    produce(&source.bootstrap, "mix.txn", &after, "none", false);
    let txn_expected: Vec<TestRecord> = before.iter().chain(&committed).chain(&after).cloned().collect();
    // a topic the flow must not touch
    create_topic(&source.bootstrap, "other.topic", 1);
    produce(&source.bootstrap, "other.topic", &[TestRecord::kv(0, "k", "v")], "none", false);

    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap, "mix\\\\..*", ""));
    for (topic, recs, _) in &expected {
        let got = consume_all(&target.bootstrap, topic, recs.len(), WAIT);
        assert_same(topic, recs, &got);
    }
    let got = consume_all(&target.bootstrap, "mix.txn", txn_expected.len(), WAIT);
    assert_same("mix.txn", &txn_expected, &got);
    assert!(
        got.iter().all(|r| r.value.as_deref() != Some(b"aborted".as_slice())),
        "aborted records reached the target"
    );

    // every target batch keeps the source codec
    for (topic, recs, codec) in &expected {
        let id = match *codec {
            "none" => 0,
            "gzip" => 1,
            "snappy" => 2,
            "lz4" => 3,
            "zstd" => 4,
            _ => unreachable!(),
        };
        let partitions = recs.iter().map(|r| r.partition).max().unwrap() + 1;
        for p in 0..partitions {
            let codecs = batch_codecs(&target.bootstrap, topic, p);
            assert!(!codecs.is_empty(), "{topic}-{p}: no batches read back");
            assert!(codecs.iter().all(|c| *c == id), "{topic}-{p}: codecs {codecs:?}, want all {id} ({codec})");
        }
    }

    // a topic created after the start is picked up without a restart
    create_topic(&source.bootstrap, "mix.late", 2);
    let late = varied_records(100, 2, "late");
    produce(&source.bootstrap, "mix.late", &late, "zstd", true);
    let got = consume_all(&target.bootstrap, "mix.late", late.len(), WAIT);
    assert_same("mix.late", &late, &got);

    assert_eq!(
        topic_partitions(&target.bootstrap, "other.topic"),
        None,
        "a topic outside the regex was created on the target"
    );
    // nothing more arrives later: counts are stable (no duplicates from retries)
    std::thread::sleep(Duration::from_secs(2));
    let got = consume_all(&target.bootstrap, "mix.none", 10_000, Duration::from_secs(5));
    assert_eq!(got.len(), 300, "mix.none grew after the mirror caught up");

    let status = proxy.stop();
    assert!(status.success(), "mirrorproxy exit status {status:?}; log:\n{}", tail(&proxy.log(), 40));
    let log = proxy.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("flow stopped cleanly"), "{}", tail(&log, 20));
}

#[test]
fn prefix_rename_writes_to_alias_prefixed_topics() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 2);
    let recs = varied_records(100, 2, "p");
    produce(&source.bootstrap, "orders", &recs, "snappy", false);
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap, "orders", "rename = \"prefix\""));
    let got = consume_all(&target.bootstrap, "edge.orders", recs.len(), WAIT);
    assert_same("edge.orders", &recs, &got);
    assert_eq!(
        topic_partitions(&target.bootstrap, "orders"),
        None,
        "identity-named topic created despite rename = prefix"
    );
    assert!(proxy.stop().success());
}

#[test]
fn start_latest_begins_at_the_reported_end() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 1);
    let old: Vec<TestRecord> = (0..50).map(|i| TestRecord::kv(0, &format!("old{i}"), "old")).collect();
    produce(&source.bootstrap, "orders", &old, "none", false);
    // The end offset as librdkafka sees it. On a real Kafka it is 50. tansu reports the
    // last batch's base offset + 1 (here 1, inside the batch of 50), so the records from
    // there on count as "new" to any client; mirrorproxy must cut the batch there.
    let (_, end) = watermarks(&source.bootstrap, "orders", 0);
    assert!((1..=50).contains(&end), "unexpected end offset {end}");
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap, "orders", "start = \"latest\""));
    assert!(proxy.wait_for_log("mirroring partition", WAIT), "{}", tail(&proxy.log(), 30));
    let new: Vec<TestRecord> = (0..20).map(|i| TestRecord::kv(0, &format!("new{i}"), "new")).collect();
    produce(&source.bootstrap, "orders", &new, "none", false);
    let expected: Vec<TestRecord> = old[end as usize..].iter().chain(&new).cloned().collect();
    let got = consume_all(&target.bootstrap, "orders", expected.len(), WAIT);
    assert_same("orders", &expected, &got);
    assert!(proxy.stop().success());
}

#[test]
fn target_outage_is_reported_and_mirroring_resumes() {
    let source = Broker::start();
    let mut target = Broker::start();
    create_topic(&source.bootstrap, "orders", 2);
    let first = varied_records(100, 2, "first");
    produce(&source.bootstrap, "orders", &first, "lz4", false);
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap, "orders", ""));
    assert_same("orders", &first, &consume_all(&target.bootstrap, "orders", first.len(), WAIT));

    target.stop(); // waits for the process to exit: its memory storage is gone
    let during = varied_records(100, 2, "during");
    produce(&source.bootstrap, "orders", &during, "lz4", false);
    assert!(
        proxy.wait_for_log("target cluster 'cloud' is failing", WAIT),
        "outage not reported:\n{}",
        tail(&proxy.log(), 30)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(proxy.is_running(), "mirrorproxy exited during the outage:\n{}", tail(&proxy.log(), 30));

    target.restart_same_port();
    assert!(proxy.wait_for_log("is back after", WAIT), "recovery not reported:\n{}", tail(&proxy.log(), 30));
    let after = varied_records(100, 2, "after");
    produce(&source.bootstrap, "orders", &after, "lz4", false);
    // What the test expects: the restarted target is empty (memory storage), so "first"
    // is gone with it; everything produced from the outage on arrives exactly once, in order.
    let expected: Vec<TestRecord> = during.iter().chain(&after).cloned().collect();
    let got = consume_all(&target.bootstrap, "orders", expected.len(), WAIT);
    assert_same("orders", &expected, &got);
    let t0 = Instant::now();
    assert!(proxy.stop().success(), "unclean exit");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn target_topic_problems_stop_only_what_they_concern() {
    let source = Broker::start();
    let target = Broker::start();
    // target topic with fewer partitions than the source: refused, that topic only
    create_topic(&source.bootstrap, "t.narrow", 3);
    create_topic(&target.bootstrap, "t.narrow", 1);
    produce(&source.bootstrap, "t.narrow", &varied_records(30, 3, "n"), "none", false);
    // target topic that accepts smaller messages than a source batch: that partition stops
    create_topic(&source.bootstrap, "t.big", 2);
    create_topic_with_config(&target.bootstrap, "t.big", 2, &[("max.message.bytes", "100000")]);
    let small = vec![TestRecord::kv(0, "small", "fits")];
    produce(&source.bootstrap, "t.big", &small, "none", false);
    let big = vec![TestRecord {
        partition: 1,
        key: Some(b"big".to_vec()),
        value: Some(vec![7u8; 300 * 1024]),
        headers: vec![],
        timestamp: None,
    }];
    produce(&source.bootstrap, "t.big", &big, "none", false);
    // target topic that recompresses: works, with a warning
    create_topic(&source.bootstrap, "t.recompress", 1);
    create_topic_with_config(&target.bootstrap, "t.recompress", 1, &[("compression.type", "gzip")]);
    let plain = varied_records(20, 1, "r");
    produce(&source.bootstrap, "t.recompress", &plain, "none", false);
    // and a healthy topic next to them
    create_topic(&source.bootstrap, "t.ok", 2);
    let ok = varied_records(60, 2, "ok");
    produce(&source.bootstrap, "t.ok", &ok, "gzip", false);

    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap, "t\\\\..*", ""));
    assert_same("t.ok", &ok, &consume_all(&target.bootstrap, "t.ok", ok.len(), WAIT));
    assert!(
        proxy.wait_for_log("target topic 't.narrow' has 1 partitions but the source has 3", WAIT),
        "narrow target not reported:\n{}",
        tail(&proxy.log(), 30)
    );
    assert!(
        proxy.wait_for_log("larger than max.message.bytes=100000 of target topic 't.big'", WAIT),
        "{}",
        tail(&proxy.log(), 30)
    );
    assert!(
        proxy.log().contains("partition=t.big-1"),
        "the stopped partition is not named:\n{}",
        tail(&proxy.log(), 30)
    );
    // partition 0 of the same topic was not held back by partition 1
    let got = consume_all(&target.bootstrap, "t.big", 1, WAIT);
    assert_same("t.big", &small, &got);
    assert!(
        proxy.log().contains("target topic 't.recompress' has compression.type=gzip"),
        "{}",
        tail(&proxy.log(), 30)
    );
    assert_same("t.recompress", &plain, &consume_all(&target.bootstrap, "t.recompress", plain.len(), WAIT));
    // the narrow topic received nothing
    assert!(consume_all(&target.bootstrap, "t.narrow", 30, Duration::from_secs(3)).is_empty());
    assert!(proxy.is_running());
    assert!(proxy.stop().success());
}

/// Peak resident memory of a process, from /proc (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc status");
    kb * 1024
}

#[test]
fn memory_stays_within_the_budget_while_mirroring_more_than_it() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "bulk", 4);
    // 4 x 20 MiB of incompressible-ish data, far more than the 8 MiB buffer budget
    let value: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let recs: Vec<TestRecord> = (0..10_240)
        .map(|i| TestRecord {
            partition: i % 4,
            key: Some(format!("b{i}").into_bytes()),
            value: Some(value.clone()),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    produce(&source.bootstrap, "bulk", &recs, "none", false);
    let cfg = config(&source.bootstrap, &target.bootstrap, "bulk", "")
        + "buffer_bytes = 8388608\nfetch_max_bytes = 2097152\nfetch_partition_max_bytes = 1048576\n";
    let mut proxy = MirrorProxy::start(&cfg);
    let got = consume_all(&target.bootstrap, "bulk", recs.len(), Duration::from_secs(120));
    assert_eq!(got.len(), recs.len());
    let rss = peak_rss(proxy.pid().expect("running"));
    // 80 MiB went through; the budget is 8 MiB. Allow the runtime, allocator and
    // copies in flight, but nothing proportional to the data.
    assert!(rss < 64 << 20, "peak RSS {} MiB for an 8 MiB budget", rss >> 20);
    eprintln!("peak RSS {:.1} MiB while mirroring 80 MiB with an 8 MiB budget", rss as f64 / 1_048_576.0);
    assert!(proxy.stop().success());
}
