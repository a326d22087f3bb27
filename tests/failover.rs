//! Failover tools against real brokers: exact offset translation, group offset sync,
//! offsets by time, status, and bad input. Data and groups via librdkafka.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn config(source: &str, target: &str) -> String {
    edge_to_cloud(source, target, "orders", "")
}

fn cli(config_path: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(MirrorProxy::bin()).args(args).arg("--config").arg(config_path).output().expect("run mirrorproxy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Source layout per partition: 10 plain records (one batch), a committed transaction
/// of 5, an aborted transaction of 5, 10 plain records. Each transaction ends with a
/// marker that takes an offset, so source offsets have gaps the target does not.
fn produce_layout(bootstrap: &str) -> Vec<TestRecord> {
    let mut keep = Vec::new();
    let plain1: Vec<TestRecord> = (0..10).map(|i| TestRecord::kv(0, &format!("p1-{i}"), "plain")).collect();
    produce(bootstrap, "orders", &plain1, "lz4", false);
    let committed: Vec<TestRecord> = (0..5).map(|i| TestRecord::kv(0, &format!("c-{i}"), "committed")).collect();
    produce_transaction(bootstrap, "orders", &committed, true, "tx-c");
    let aborted: Vec<TestRecord> = (0..5).map(|i| TestRecord::kv(0, &format!("a-{i}"), "aborted")).collect();
    produce_transaction(bootstrap, "orders", &aborted, false, "tx-a");
    let plain2: Vec<TestRecord> = (0..10).map(|i| TestRecord::kv(0, &format!("p2-{i}"), "plain")).collect();
    produce(bootstrap, "orders", &plain2, "zstd", false);
    keep.extend(plain1);
    keep.extend(committed);
    keep.extend(plain2);
    keep
}

#[test]
fn translation_is_exact_mid_batch_and_across_transaction_markers_and_sync_commits_it() {
    translation_case("", 3);
}

/// The same with re-batching: the three forwarded source batches (plain, committed
/// transaction, plain) reach the target as one merged batch.
#[test]
fn translation_is_exact_through_merged_batches() {
    translation_case("rebatch_max_bytes = 65536\nrebatch_compression = \"zstd\"", 1);
}

fn translation_case(flow_extra: &str, target_batches: usize) {
    let config = |source: &str, target: &str| edge_to_cloud(source, target, "orders", flow_extra);
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 1);
    let kept = produce_layout(&source.bootstrap);
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap));
    let on_target = consume_all(&target.bootstrap, "orders", kept.len(), WAIT);
    assert_eq!(on_target.len(), kept.len());
    assert!(proxy.stop().success());
    let codecs = batch_codecs(&target.bootstrap, "orders", 0);
    assert_eq!(codecs.len(), target_batches, "target batches (codecs {codecs:?})");
    if !flow_extra.is_empty() {
        assert!(codecs.iter().all(|c| *c == 4), "merged batches are zstd: {codecs:?}");
    }
    // Every source offset, read back uncommitted (tansu's read_committed shows aborted
    // records too; we know which keys were aborted because we wrote them).
    let on_source = consume_all_isolation(&source.bootstrap, "orders", 30, WAIT, false);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), config(&source.bootstrap, &target.bootstrap)).unwrap();
    let last = on_source.iter().map(|r| r.offset).max().unwrap();
    // Committed offsets: start, inside the first batch, inside the committed
    // transaction, on its marker, inside the aborted transaction, on its marker, the end.
    // Every interesting position (the layout above): start, inside the first batch, its
    // last record, inside the committed transaction, its marker, inside the aborted
    // transaction, its marker, the plain records after, the end.
    let mut positions = vec![0, 4, 9, 10, 12, 15, 17, 21, 22, 25, last, last + 1];
    positions.dedup();
    for committed in positions {
        let group = format!("g{committed}");
        commit_offset(&source.bootstrap, &group, "orders", 0, committed);
        let (ok, stdout, stderr) = cli(
            cfg.path(),
            &["offsets", "translate", "--flow", "edge->cloud", "--group", &group, "--json", "--commit"],
        );
        assert!(ok, "translate {committed}: {stderr}");
        let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let got =
            rows[0]["target_offset"].as_i64().unwrap_or_else(|| panic!("no target offset for {committed}: {stdout}"));
        // Independent expectation: the first source record at or after `committed`
        // that was not aborted, found on the target by its key.
        let next = on_source
            .iter()
            .filter(|r| r.offset >= committed && r.value.as_deref() != Some(b"aborted".as_slice()))
            .min_by_key(|r| r.offset);
        let want = match next {
            Some(r) => on_target.iter().find(|t| t.key == r.key).expect("record on the target").offset,
            None => on_target.iter().map(|r| r.offset).max().unwrap() + 1,
        };
        assert_eq!(got, want, "committed source offset {committed}");
        // A consumer of the same group on the target resumes at exactly that record.
        assert_eq!(committed_offset(&target.bootstrap, &group, "orders", 0), Some(want), "sync of {group}");
        if let Some(r) = next {
            let first = first_record_for_group(&target.bootstrap, &group, "orders", 0, Duration::from_secs(5))
                .expect("a record");
            assert_eq!(first.key, r.key, "group {group} resumes at the wrong record");
        }
    }
}

#[test]
fn sync_never_moves_a_group_backwards() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 1);
    let recs: Vec<TestRecord> = (0..40).map(|i| TestRecord::kv(0, &format!("k{i}"), "v")).collect();
    produce(&source.bootstrap, "orders", &recs, "none", false);
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap));
    assert_eq!(consume_all(&target.bootstrap, "orders", 40, WAIT).len(), 40);
    assert!(proxy.stop().success());
    commit_offset(&source.bootstrap, "app", "orders", 0, 10);
    commit_offset(&target.bootstrap, "app", "orders", 0, 30); // already further on the target
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), config(&source.bootstrap, &target.bootstrap)).unwrap();
    let (ok, _, stderr) =
        cli(cfg.path(), &["offsets", "translate", "--flow", "edge->cloud", "--group", "app", "--commit"]);
    assert!(ok, "{stderr}");
    assert_eq!(committed_offset(&target.bootstrap, "app", "orders", 0), Some(30), "moved backwards");
    commit_offset(&source.bootstrap, "app", "orders", 0, 35);
    let (ok, _, stderr) =
        cli(cfg.path(), &["offsets", "translate", "--flow", "edge->cloud", "--group", "app", "--commit"]);
    assert!(ok, "{stderr}");
    assert_eq!(committed_offset(&target.bootstrap, "app", "orders", 0), Some(35), "not moved forwards");
}

#[test]
fn status_and_offsets_at_report_positions() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 2);
    let before: Vec<TestRecord> = (0..20)
        .map(|i| TestRecord {
            timestamp: Some(1_600_000_000_000 + i),
            ..TestRecord::kv((i % 2) as i32, &format!("old{i}"), "v")
        })
        .collect();
    produce(&source.bootstrap, "orders", &before, "none", false);
    let after: Vec<TestRecord> = (0..20)
        .map(|i| TestRecord {
            timestamp: Some(1_700_000_000_000 + i),
            ..TestRecord::kv((i % 2) as i32, &format!("new{i}"), "v")
        })
        .collect();
    produce(&source.bootstrap, "orders", &after, "none", false);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), config(&source.bootstrap, &target.bootstrap)).unwrap();
    // before mirroring: everything is lag
    let (ok, stdout, stderr) = cli(cfg.path(), &["status", "--json"]);
    assert!(ok, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(
        rows.as_array().unwrap().iter().all(|r| r["mirrored"] == -1 && r["lag_records"].as_i64().unwrap() > 0),
        "{stdout}"
    );
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap));
    assert_eq!(consume_all(&target.bootstrap, "orders", 40, WAIT).len(), 40);
    std::thread::sleep(Duration::from_millis(600)); // a checkpoint interval
    let (ok, stdout, stderr) = cli(cfg.path(), &["status", "--json"]);
    assert!(ok, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The flow's heartbeat topic has rows of its own; the data topic's two partitions:
    let orders: Vec<&serde_json::Value> = rows.as_array().unwrap().iter().filter(|r| r["topic"] == "orders").collect();
    assert_eq!(orders.len(), 2, "{stdout}");
    for r in orders {
        assert_eq!(r["lag_records"], 0, "{stdout}");
        assert_eq!(r["mirrored"], 20, "{stdout}");
    }
    assert!(rows.as_array().unwrap().iter().any(|r| r["topic"] == "mirrorproxy.heartbeats"), "{stdout}");
    let (ok, table, _) = cli(cfg.path(), &["status"]);
    assert!(ok && table.contains("edge->cloud") && table.contains("LAG"), "{table}");
    assert!(proxy.stop().success());
    // offsets at a time between the two halves: the first "new" record per partition
    let (ok, stdout, stderr) = cli(
        cfg.path(),
        &[
            "offsets",
            "at",
            "--cluster",
            "cloud",
            "--topic",
            "orders",
            "--time",
            "2022-01-01T00:00:00Z",
            "--json",
            "--reset-group",
            "dr",
        ],
    );
    assert!(ok, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["offset"], 10, "{stdout}");
        let p = r["partition"].as_i64().unwrap() as i32;
        let first =
            first_record_for_group(&target.bootstrap, "dr", "orders", p, Duration::from_secs(5)).expect("record");
        assert!(String::from_utf8_lossy(first.key.as_deref().unwrap()).starts_with("new"), "{first:?}");
    }
}

#[test]
fn bad_input_to_the_offset_tools_is_named() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 1);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), config(&source.bootstrap, &target.bootstrap)).unwrap();
    for (args, needle) in [
        (vec!["offsets", "translate", "--flow", "edge->nowhere", "--group", "g"], "no flow 'edge->nowhere'"),
        (vec!["offsets", "translate", "--flow", "edge->cloud", "--group", "nobody"], "no committed offsets"),
        (
            vec!["offsets", "at", "--cluster", "edge", "--topic", "orders", "--time", "2999-01-01T00:00:00Z"],
            "in the future",
        ),
        (
            vec!["offsets", "at", "--cluster", "edge", "--topic", "orders", "--time", "last tuesday"],
            "not an RFC 3339 time",
        ),
        (
            vec!["offsets", "at", "--cluster", "moon", "--topic", "orders", "--time", "2020-01-01T00:00:00Z"],
            "no cluster 'moon'",
        ),
        (
            vec!["offsets", "at", "--cluster", "edge", "--topic", "nope", "--time", "2020-01-01T00:00:00Z"],
            "topic 'nope' does not exist",
        ),
    ] {
        let (ok, _, stderr) = cli(cfg.path(), &args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn foreign_and_corrupt_checkpoint_records_are_reported_and_left_alone() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 2);
    let recs: Vec<TestRecord> = (0..20).map(|i| TestRecord::kv(i % 2, &format!("k{i}"), "v")).collect();
    produce(&source.bootstrap, "orders", &recs, "none", false);
    create_topic(&target.bootstrap, "mirrorproxy.checkpoints", 1);
    let foreign = TestRecord {
        partition: 0,
        key: Some(b"someone-else".to_vec()),
        value: Some(b"hello".to_vec()),
        headers: vec![],
        timestamp: None,
    };
    let corrupt = TestRecord {
        partition: 0,
        key: Some(b"mirrorproxy/v1/edge/cloud/orders/1".to_vec()),
        value: Some(b"{not json".to_vec()),
        headers: vec![],
        timestamp: None,
    };
    produce(&target.bootstrap, "mirrorproxy.checkpoints", &[foreign, corrupt], "none", false);
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap));
    // partition 0 is mirrored; partition 1 is held back with a clear error
    assert!(proxy.wait_for_log("orders-1", WAIT));
    assert!(proxy.wait_for_log("cannot be read", WAIT), "{}", tail(&proxy.log(), 20));
    assert!(proxy.log().contains("not mirrorproxy checkpoints"), "{}", tail(&proxy.log(), 20));
    let got = consume_all(&target.bootstrap, "orders", 10, WAIT);
    assert!(got.iter().all(|r| r.partition == 0) && got.len() == 10, "{got:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(proxy.stop().success());
    assert!(!proxy.log().contains("panicked"));
    // nothing overwritten: the corrupt record is still the latest for its key
    let cps = consume_all(&target.bootstrap, "mirrorproxy.checkpoints", 3, Duration::from_secs(5));
    let latest_p1 = cps
        .iter()
        .filter(|r| r.key.as_deref() == Some(b"mirrorproxy/v1/edge/cloud/orders/1".as_slice()))
        .next_back()
        .unwrap();
    assert_eq!(latest_p1.value.as_deref(), Some(b"{not json".as_slice()));
    assert!(cps.iter().any(|r| r.key.as_deref() == Some(b"someone-else".as_slice())));
}

#[test]
fn the_running_mirror_syncs_matching_groups() {
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 1);
    let kept = produce_layout(&source.bootstrap);
    let cfg = config(&source.bootstrap, &target.bootstrap)
        .replace("topics = \"orders\"", "topics = \"orders\"\ngroups = \"app-.*\"\ngroups_exclude = \"app-private\"")
        + "group_sync_interval_ms = 300\n";
    commit_offset(&source.bootstrap, "app-billing", "orders", 0, 17); // inside the aborted transaction
    commit_offset(&source.bootstrap, "app-private", "orders", 0, 3);
    commit_offset(&source.bootstrap, "other", "orders", 0, 3);
    let mut proxy = MirrorProxy::start(&cfg);
    let on_target = consume_all(&target.bootstrap, "orders", kept.len(), WAIT);
    assert_eq!(on_target.len(), kept.len());
    // 17 is inside the aborted transaction: the next record the group has not consumed
    // is the first of the second plain batch, the 16th record on the target.
    let deadline = std::time::Instant::now() + WAIT;
    while committed_offset(&target.bootstrap, "app-billing", "orders", 0) != Some(15) {
        assert!(
            std::time::Instant::now() < deadline,
            "app-billing not synced: {:?}\n{}",
            committed_offset(&target.bootstrap, "app-billing", "orders", 0),
            tail(&proxy.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // the group moves on at the source: the target follows
    commit_offset(&source.bootstrap, "app-billing", "orders", 0, 25);
    let deadline = std::time::Instant::now() + WAIT;
    while committed_offset(&target.bootstrap, "app-billing", "orders", 0) != Some(18) {
        assert!(std::time::Instant::now() < deadline, "app-billing did not follow");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(committed_offset(&target.bootstrap, "app-private", "orders", 0), None, "an excluded group was synced");
    assert_eq!(committed_offset(&target.bootstrap, "other", "orders", 0), None, "a group outside the regex was synced");
    assert!(proxy.stop().success());
}

/// The whole drill: the primary drops off the network, consumers and producers move to
/// the standby at translated offsets, the primary returns, and a reverse flow catches it
/// up with what was written during the outage, without copying back what it had.
#[test]
fn disaster_recovery_drill_end_to_end() {
    let primary = Broker::start();
    let standby = Broker::start();
    create_topic(&primary.bootstrap, "orders", 2);
    let forward = format!(
        r#"
[clusters.primary]
bootstrap = "{}"
[clusters.standby]
bootstrap = "{}"
[[flows]]
source = "primary"
target = "standby"
topics = "orders"
provenance = "header"
groups = "app"
[tuning]
metadata_refresh_ms = 500
fetch_max_wait_ms = 50
checkpoint_interval_ms = 200
group_sync_interval_ms = 300
request_timeout_ms = 3000
shutdown_timeout_ms = 2000
"#,
        primary.bootstrap, standby.bootstrap
    );
    let before: Vec<TestRecord> = (0..200).map(|i| TestRecord::kv(i % 2, &format!("before-{i}"), "v")).collect();
    produce(&primary.bootstrap, "orders", &before, "lz4", true);
    // the application consumed part of each partition at the primary
    commit_offset(&primary.bootstrap, "app", "orders", 0, 37);
    commit_offset(&primary.bootstrap, "app", "orders", 1, 64);
    let mut mirror = MirrorProxy::start(&forward);
    assert_eq!(consume_all(&standby.bootstrap, "orders", 200, WAIT).len(), 200);
    let deadline = std::time::Instant::now() + WAIT;
    while committed_offset(&standby.bootstrap, "app", "orders", 1) != Some(64) {
        assert!(std::time::Instant::now() < deadline, "group not synced:\n{}", tail(&mirror.log(), 20));
        std::thread::sleep(Duration::from_millis(200));
    }
    // more writes, then the primary drops off the network mid-stream
    let burst: Vec<TestRecord> = (0..400).map(|i| TestRecord::kv(i % 2, &format!("burst-{i}"), "v")).collect();
    produce(&primary.bootstrap, "orders", &burst, "zstd", true);
    primary.pause();
    std::thread::sleep(Duration::from_secs(2));
    let status = mirror.stop_timeout(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "forward mirror did not stop cleanly:\n{}", tail(&mirror.log(), 20));
    // records lost = what the mirror had not copied; the standby holds a prefix of
    // every primary partition, with no gap and no duplicate
    let on_standby = consume_all(&standby.bootstrap, "orders", 600, Duration::from_secs(10));
    let written: Vec<TestRecord> = before.iter().chain(&burst).cloned().collect();
    for p in 0..2 {
        let want: Vec<&TestRecord> = written.iter().filter(|r| r.partition == p).collect();
        let have: Vec<&ReceivedRecord> = on_standby.iter().filter(|r| r.partition == p).collect();
        assert!(have.len() <= want.len());
        for (h, w) in have.iter().zip(&want) {
            assert_eq!(h.key, w.key, "standby partition {p} is not a prefix of the primary's");
        }
    }
    let lost = written.len() - on_standby.len();
    eprintln!("DR drill: {lost} records lost (not yet mirrored when the primary failed), 0 duplicates");
    // consumers move: the group resumes on the standby exactly after what it consumed
    for (p, consumed) in [(0, 37usize), (1, 64)] {
        let next = written.iter().filter(|r| r.partition == p).nth(consumed).unwrap();
        let first =
            first_record_for_group(&standby.bootstrap, "app", "orders", p, Duration::from_secs(5)).expect("record");
        assert_eq!(first.key, next.key, "partition {p}");
    }
    // producers move to the standby
    let during: Vec<TestRecord> = (0..150).map(|i| TestRecord::kv(i % 2, &format!("during-{i}"), "v")).collect();
    produce(&standby.bootstrap, "orders", &during, "snappy", true);
    // the primary returns; the reverse flow copies only what was written on the standby
    primary.resume();
    let reverse =
        forward.replace("source = \"primary\"\ntarget = \"standby\"", "source = \"standby\"\ntarget = \"primary\"");
    let mut failback = MirrorProxy::start(&reverse);
    let expected: Vec<TestRecord> = written.iter().chain(&during).cloned().collect();
    let on_primary = consume_all(&primary.bootstrap, "orders", expected.len(), WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let on_primary_later = consume_all(&primary.bootstrap, "orders", expected.len() + 1, Duration::from_secs(5));
    assert_eq!(on_primary_later.len(), on_primary.len(), "the primary kept growing");
    let dups = on_primary.len() as i64 - expected.len() as i64;
    eprintln!("DR drill: failback copied {} records, {dups} duplicates", on_primary.len() - written.len());
    assert_eq!(dups, 0, "duplicates on the primary");
    for r in &during {
        assert_eq!(on_primary.iter().filter(|x| x.key == r.key).count(), 1, "{r:?} not exactly once on the primary");
    }
    assert!(failback.stop().success());
}

#[test]
fn a_live_group_on_the_target_is_never_moved() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let source = Broker::start();
    let target = Broker::start();
    create_topic(&source.bootstrap, "orders", 1);
    let recs: Vec<TestRecord> = (0..30).map(|i| TestRecord::kv(0, &format!("k{i}"), "v")).collect();
    produce(&source.bootstrap, "orders", &recs, "none", false);
    let mut proxy = MirrorProxy::start(&config(&source.bootstrap, &target.bootstrap));
    assert_eq!(consume_all(&target.bootstrap, "orders", 30, WAIT).len(), 30);
    assert!(proxy.stop().success());
    commit_offset(&source.bootstrap, "live", "orders", 0, 20);
    // a consumer of the same group is running on the target
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &target.bootstrap)
        .set("group.id", "live")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(std::time::Instant::now() < deadline, "the consumer never joined its group on tansu");
        let _ = consumer.poll(Duration::from_millis(200));
    }
    let before = committed_offset(&target.bootstrap, "live", "orders", 0);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), config(&source.bootstrap, &target.bootstrap)).unwrap();
    let (ok, _, stderr) =
        cli(cfg.path(), &["offsets", "translate", "--flow", "edge->cloud", "--group", "live", "--commit"]);
    let _ = consumer.poll(Duration::from_millis(10));
    assert!(!ok, "a live group was moved");
    assert!(stderr.contains("active") && stderr.contains("not moved"), "{stderr}");
    assert_eq!(committed_offset(&target.bootstrap, "live", "orders", 0), before, "offset changed under a live group");
}
