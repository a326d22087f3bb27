//! Topic config sync and data residency against real tansu brokers (issue #14):
//! target topics arrive with the source's configs minus MirrorMaker 2's exclusion list,
//! a source change reaches the target within one `config_sync_interval_ms`, a config
//! set only on the target survives, and a `local_only` topic never leaves its cluster
//! while the rest of the flow mirrors. Configs are read back with librdkafka.
//!
//! Run: `cargo test --release --test topic_configs`

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use support::*;

const T: Duration = Duration::from_secs(30);
const INTERVAL_MS: u64 = 1000;

/// The topic's configs as librdkafka's DescribeConfigs sees them (name → value).
fn configs(bootstrap: &str, topic: &str) -> BTreeMap<String, String> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap).create().expect("admin client");
    let res = futures::executor::block_on(admin.describe_configs(
        [&ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap_or_else(|e| panic!("DescribeConfigs({topic}) on {bootstrap}: {e}"));
    let r = res.into_iter().next().expect("one resource").unwrap_or_else(|e| panic!("DescribeConfigs({topic}): {e:?}"));
    r.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect()
}

/// IncrementalAlterConfigs SET through mirrorproxy's client (librdkafka's Rust binding
/// has only the legacy AlterConfigs, which replaces every config of the topic).
fn set_config(bootstrap: &str, topic: &str, key: &str, value: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = mirrorproxy::cluster::Cluster::new("test", vec![bootstrap.to_owned()], Default::default());
        c.alter_topic_config(topic, &[(key.to_owned(), value.to_owned())])
            .await
            .unwrap_or_else(|e| panic!("IncrementalAlterConfigs {topic} {key}={value}: {e}"))
            .unwrap_or_else(|r| panic!("IncrementalAlterConfigs {topic} {key}={value} refused: {r:?}"));
    });
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn configs_arrive_follow_the_source_and_local_only_topics_stay() {
    let src = Broker::start();
    let dst = Broker::start();
    create_topic_with_config(
        &src.bootstrap,
        "compacted",
        2,
        &[("cleanup.policy", "compact"), ("retention.ms", "-1"), ("max.message.bytes", "2000000")],
    );
    create_topic_with_config(
        &src.bootstrap,
        "stamped",
        1,
        &[("message.timestamp.type", "CreateTime"), ("min.insync.replicas", "1"), ("retention.ms", "3600000")],
    );
    create_topic(&src.bootstrap, "pii.emails", 1);
    let records =
        |tag: &str| (0..10).map(|i| TestRecord::kv(0, &format!("k{i}"), &format!("{tag}-{i}"))).collect::<Vec<_>>();
    produce(&src.bootstrap, "compacted", &records("c"), "none", false);
    produce(&src.bootstrap, "stamped", &records("s"), "none", false);
    produce(&src.bootstrap, "pii.emails", &records("p"), "none", false);

    let cfg = edge_to_cloud(&src.bootstrap, &dst.bootstrap, r"compacted|stamped|pii\\.emails", "")
        .replace("[clusters.cloud]", "local_only = 'pii\\..*'\n\n[clusters.cloud]")
        .replace("[tuning]", &format!("[tuning]\nconfig_sync_interval_ms = {INTERVAL_MS}"));
    let mut proxy = MirrorProxy::start(&cfg);
    assert!(
        proxy.wait_for_log("topics names 'pii.emails', which is local_only on cluster 'edge'", T),
        "no warning for the literal local-only topic:\n{}",
        tail(&proxy.log(), 40)
    );
    assert_eq!(consume_all(&dst.bootstrap, "compacted", 10, T).len(), 10, "{}", tail(&proxy.log(), 40));
    assert_eq!(consume_all(&dst.bootstrap, "stamped", 10, T).len(), 10, "{}", tail(&proxy.log(), 40));

    // Created with the source's configs, minus the exclusion list.
    let c = configs(&dst.bootstrap, "compacted");
    println!("target 'compacted' configs: {c:?}");
    assert_eq!(c.get("cleanup.policy").map(String::as_str), Some("compact"), "{c:?}");
    assert_eq!(c.get("retention.ms").map(String::as_str), Some("-1"), "{c:?}");
    assert_eq!(c.get("max.message.bytes").map(String::as_str), Some("2000000"), "{c:?}");
    let s = configs(&dst.bootstrap, "stamped");
    println!("target 'stamped' configs: {s:?}");
    assert_eq!(s.get("retention.ms").map(String::as_str), Some("3600000"), "{s:?}");
    assert!(!s.contains_key("message.timestamp.type") && !s.contains_key("min.insync.replicas"), "excluded: {s:?}");

    // A config set only on the target, then a change on the source.
    set_config(&dst.bootstrap, "compacted", "segment.ms", "3600000");
    set_config(&src.bootstrap, "compacted", "retention.ms", "86400000");
    let took = wait_until("retention.ms=86400000 on the target", T, || {
        configs(&dst.bootstrap, "compacted").get("retention.ms").map(String::as_str) == Some("86400000")
    });
    println!("source change reached the target in {took:?} (interval {INTERVAL_MS} ms)");
    // One interval, plus a round's own time and this loop's DescribeConfigs polling.
    assert!(took < Duration::from_millis(INTERVAL_MS * 2 + 1000), "took {took:?}");
    // Two more rounds: the target-only config is still there.
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * 2 + 200));
    let c = configs(&dst.bootstrap, "compacted");
    assert_eq!(c.get("segment.ms").map(String::as_str), Some("3600000"), "target-only config lost: {c:?}");
    assert_eq!(c.get("cleanup.policy").map(String::as_str), Some("compact"), "{c:?}");

    // The local-only topic never appeared on the target.
    assert_eq!(topic_partitions(&dst.bootstrap, "pii.emails"), None, "{}", tail(&proxy.log(), 40));
    let log = proxy.log();
    assert!(!log.contains("creating target topic 'pii.emails'"), "{}", tail(&log, 40));

    // `check` lists the withheld topic and the configs that differ.
    let out = std::process::Command::new(MirrorProxy::bin())
        .args(["check", "--config"])
        .arg(proxy.config_path())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("check:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pii.emails: withheld, local_only of cluster 'edge'"), "{stdout}");
    assert!(
        stdout
            .contains("config min.insync.replicas: source 1 target (not described) (kept: excluded by config_exclude)"),
        "{stdout}"
    );
    assert!(!stdout.contains("config retention.ms"), "in sync, so not listed: {stdout}");
    proxy.stop();
}
