//! Topic config and ACL sync against the synthetic broker (`synthbroker/`), for what
//! tansu 0.6.0 cannot be tested with (`tests/tansu_probe.rs`): it never refuses a
//! config value, creates a topic on a `validate_only` CreateTopics, and answers
//! CreateAcls in a form that neither librdkafka nor kafka-protocol can decode. The
//! config sync with real brokers is `tests/topic_configs.rs`.
//!
//! Which is which:
//! * tansu (`topic_configs.rs`): configs on creation, the exclusion list, a source
//!   change within one interval, a target-only config surviving, `local_only`.
//! * synthetic (here): a config value the target refuses (the creation retried without
//!   configs, the refusal named once, retried once the source value changes), `check`
//!   listing differences including target-only configs, and the ACL rules end to end
//!   against an authorizer and against a broker without one.
#![allow(clippy::pedantic)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use support::{wait_for, MirrorProxy};
use synthbroker::{Acl, Compression, Config, Serving, Source, SynthBroker};

const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const PREFIXED: i8 = 4;
const ALL: i8 = 2;
const READ: i8 = 3;
const WRITE: i8 = 4;
const DESCRIBE: i8 = 8;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

/// The flow's sync runs every 300 ms; `extra` goes into the flow.
fn two_clusters(src: &str, dst: &str, extra: &str) -> String {
    format!(
        r#"
[clusters.src]
bootstrap = "{src}"
[clusters.dst]
bootstrap = "{dst}"
[[flows]]
source = "src"
target = "dst"
topics = "orders|payments"
{extra}
[tuning]
config_sync_interval_ms = 300
metadata_refresh_ms = 500
retry_backoff_ms = 50
retry_backoff_max_ms = 500
shutdown_timeout_ms = 3000
"#
    )
}

/// A source whose data topic `orders` has 200 records (50 batches of 4) to mirror.
fn source(config: Config) -> Serving {
    SynthBroker::start(config.source(Source::new(4, 100, Compression::None).rate(2000.0).batches(50)).log_requests())
}

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// `mirrorproxy check` with this config: (exit ok, stdout + stderr).
fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(MirrorProxy::bin()).args(["check", "--config"]).arg(&path).output().expect("run check");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A value the target refuses: the topic is created without the source's configs
/// (the data is mirrored regardless), the sync then sets the others and names the
/// refused one once, with the broker's message, and sends it again only when the
/// source value changes.
#[test]
fn a_config_the_target_refuses_is_named_once_and_the_data_is_mirrored() {
    let src = source(
        Config::new("orders", 1)
            .topic_config("cleanup.policy", "compact")
            .topic_config("retention.ms", "-1")
            .topic_config("max.message.bytes", "2000000"),
    );
    let limit = "max.message.bytes 2000000 is above this broker's message.max.bytes of 1048588";
    let dst = SynthBroker::start(Config::new("unrelated", 1).refuse_config("max.message.bytes", "2000000", limit));
    let config = two_clusters(src.addr(), dst.addr(), "");
    let mut proxy = MirrorProxy::start(&config);

    wait_for("all 200 records on the target", Duration::from_secs(30), &proxy, || dst.log_end("orders", 0) == 200);
    wait_for("the sync to set what the target accepts", Duration::from_secs(10), &proxy, || {
        dst.topic_configs("orders") == Some(map(&[("cleanup.policy", "compact"), ("retention.ms", "-1")]))
    });
    // Several more sync rounds: the refusal is not sent again, nor logged again.
    thread::sleep(Duration::from_millis(1500));
    let log = proxy.log();
    assert_eq!(
        lines_with(&log, "creating it without them"),
        1,
        "the creation with configs was refused, then retried without:\n{log}"
    );
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("refused config max.message.bytes=2000000")).collect();
    assert_eq!(refused.len(), 1, "one line per topic and key:\n{log}");
    assert!(
        refused[0].contains(limit) && refused[0].contains("'orders'"),
        "names the topic and the broker's words: {}",
        refused[0]
    );
    assert!(!log.contains("refused config cleanup.policy") && !log.contains("refused config retention.ms"), "{log}");

    // `check` lists what still differs, with why, and a config only the target has.
    dst.set_topic_config("orders", "segment.ms", "600000");
    let (ok, out) = check(&config);
    assert!(ok, "{out}");
    let line = |name: &str| out.lines().find(|l| l.contains(&format!("config {name}:"))).map(str::to_owned);
    let mmb = line("max.message.bytes").unwrap_or_else(|| panic!("no max.message.bytes line:\n{out}"));
    assert!(mmb.contains("source 2000000") && mmb.contains("target (not described)"), "{mmb}");
    let seg = line("segment.ms").unwrap_or_else(|| panic!("the target-only config is not listed:\n{out}"));
    assert!(seg.contains("source (not described)") && seg.contains("target 600000") && seg.contains("kept"), "{seg}");
    assert!(line("cleanup.policy").is_none() && line("retention.ms").is_none(), "synced configs do not differ:\n{out}");

    // A new source value is tried again, and this one is accepted; the target-only
    // config survives the sync.
    src.set_topic_config("orders", "max.message.bytes", "1000000");
    wait_for("the changed value on the target", Duration::from_secs(10), &proxy, || {
        dst.topic_configs("orders").is_some_and(|c| c.get("max.message.bytes").map(String::as_str) == Some("1000000"))
    });
    assert_eq!(dst.topic_configs("orders").unwrap().get("segment.ms").map(String::as_str), Some("600000"));
    assert!(proxy.stop().success(), "{}", proxy.log());
    assert_eq!(dst.log_end("orders", 0), 200, "every record once");
}

/// The bindings of the source as the target should have them (MirrorMaker 2's rules
/// with the rename, plus READ on synced groups), created once, next to the target's
/// own bindings, which stay.
#[test]
fn acls_are_synced_with_mirrormaker_2_rules_and_the_targets_own_bindings_stay() {
    let alice = "User:alice";
    let src = source(Config::new("orders", 1).authorizer(vec![
        Acl::literal(TOPIC, "orders", alice, WRITE, ALLOW), // dropped: no writes into a mirror
        Acl::literal(TOPIC, "orders", alice, ALL, ALLOW),   // downgraded to READ
        Acl::literal(TOPIC, "orders", "User:mallory", WRITE, DENY), // kept
        Acl::literal(TOPIC, "orders", alice, DESCRIBE, ALLOW), // kept
        Acl { pattern_type: PREFIXED, ..Acl::literal(TOPIC, "ord", alice, READ, ALLOW) }, // not literal
        Acl::literal(TOPIC, "payments", alice, READ, ALLOW), // not a topic of the source
        Acl::literal(TOPIC, "audit", alice, READ, ALLOW),   // not mirrored
        Acl::literal(GROUP, "app-billing", alice, ALL, ALLOW), // synced group: READ
        Acl::literal(GROUP, "app-billing", "User:mallory", READ, DENY), // kept
        Acl::literal(GROUP, "batch-jobs", alice, READ, ALLOW), // group not synced
    ]));
    let own = Acl::literal(TOPIC, "src.orders", "User:standby-writer", WRITE, ALLOW);
    let dst = SynthBroker::start(Config::new("src.orders", 1).authorizer(vec![own.clone()]).log_requests());
    let mut proxy = MirrorProxy::start(&two_clusters(
        src.addr(),
        dst.addr(),
        "rename = \"prefix\"\ngroups = \"app-.*\"\nsync_acls = true",
    ));
    let mut want = vec![
        own,
        Acl::literal(TOPIC, "src.orders", alice, READ, ALLOW),
        Acl::literal(TOPIC, "src.orders", "User:mallory", WRITE, DENY),
        Acl::literal(TOPIC, "src.orders", alice, DESCRIBE, ALLOW),
        Acl::literal(GROUP, "app-billing", alice, READ, ALLOW),
        Acl::literal(GROUP, "app-billing", "User:mallory", READ, DENY),
    ];
    want.sort();
    wait_for("the bindings on the target", Duration::from_secs(20), &proxy, || dst.acls().unwrap().len() >= want.len());
    // More rounds: nothing else is created, nothing sent twice, data flows meanwhile.
    wait_for("all 200 records on the target", Duration::from_secs(30), &proxy, || {
        dst.sink().records.load(std::sync::atomic::Ordering::Relaxed) == 200
    });
    let rounds = dst.requests(ApiKey::DescribeAcls);
    wait_for("three more sync rounds", Duration::from_secs(10), &proxy, || {
        dst.requests(ApiKey::DescribeAcls) >= rounds + 3
    });
    assert_eq!(dst.acls().unwrap(), want);
    assert_eq!(
        dst.requests(ApiKey::CreateAcls),
        1,
        "one CreateAcls with the five missing bindings; requests: {:?}",
        dst.seen()
    );
    let log = proxy.log();
    assert_eq!(lines_with(&log, "ACL binding created on the target"), 5, "{log}");
    assert!(log.contains("ALLOW DESCRIBE on topic 'src.orders' for User:alice"), "operations are named: {log}");
    assert!(proxy.stop().success(), "{log}");
}

/// A target without an authorizer (SECURITY_DISABLED) is one warning, not a failure
/// and not a warning per round; the data is mirrored and nothing is created.
#[test]
fn acl_sync_to_a_target_without_an_authorizer_warns_once_and_mirrors() {
    let src =
        source(Config::new("orders", 1).authorizer(vec![Acl::literal(TOPIC, "orders", "User:alice", READ, ALLOW)]));
    let dst = SynthBroker::start(Config::new("orders", 1).log_requests());
    let mut proxy = MirrorProxy::start(&two_clusters(src.addr(), dst.addr(), "sync_acls = true"));
    wait_for("all 200 records on the target", Duration::from_secs(30), &proxy, || {
        dst.sink().records.load(std::sync::atomic::Ordering::Relaxed) == 200
    });
    wait_for("five sync rounds", Duration::from_secs(10), &proxy, || dst.requests(ApiKey::DescribeAcls) >= 5);
    let log = proxy.log();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("ACLs cannot be synced")).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("No Authorizer is configured"), "the broker's words: {}", warned[0]);
    assert_eq!(dst.requests(ApiKey::CreateAcls), 0, "{:?}", dst.seen());
    assert!(proxy.stop().success(), "{log}");
}
