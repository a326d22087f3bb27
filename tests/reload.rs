//! Live reload (SIGHUP) the way an operator does it: the config file is edited while
//! applications keep writing, and the proxy is sent SIGHUP. Two tansu brokers,
//! librdkafka writing and reading. What must hold: added, removed and changed flows
//! apply without a restart of the process; the flows that restart (a changed topics
//! regex, a tuning change, a cluster whose settings changed) lose and duplicate
//! nothing while records keep arriving; a config that does not load, one that needs a
//! restart, and one naming a cluster that is not there each leave the running config
//! in place with one error naming why.
#![allow(clippy::pedantic)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use support::{
    assert_same, consume_all, create_topic, edge_to_cloud, free_port, http, produce, varied_records, wait_for, Broker,
    MirrorProxy, TestRecord,
};

/// The log lines that end a reload, one per SIGHUP.
const OUTCOMES: [&str; 4] =
    ["config reloaded:", "config reload failed", "config reload refused", "config reload: nothing changed"];

/// Rewrites the proxy's config file, sends SIGHUP and returns the reload's outcome line.
fn reload(proxy: &MirrorProxy, config: &str) -> String {
    let outcomes = |log: &str| -> Vec<String> {
        log.lines().filter(|l| OUTCOMES.iter().any(|o| l.contains(o))).map(str::to_owned).collect()
    };
    let before = outcomes(&proxy.log()).len();
    std::fs::write(proxy.config_path(), config).unwrap();
    proxy.signal("HUP");
    wait_for("the reload's outcome", Duration::from_secs(60), proxy, || outcomes(&proxy.log()).len() > before);
    outcomes(&proxy.log()).pop().unwrap()
}

/// An application writing `topic` on `bootstrap` in small rounds until stopped; joins
/// to everything it wrote (acknowledged), in order.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<TestRecord>>,
}

impl Writer {
    fn start(bootstrap: &str, topic: &str, partitions: i32) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (b, t, s) = (bootstrap.to_owned(), topic.to_owned(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut written = Vec::new();
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                let round: Vec<TestRecord> = (0..40)
                    .map(|i| TestRecord::kv((n + i) % partitions, &format!("k{}", n + i), &format!("{t}-{}", n + i)))
                    .collect();
                n += 40;
                let delivered = produce(&b, &t, &round, "lz4", true);
                assert_eq!(delivered.len(), round.len(), "{t}: every record acknowledged");
                written.extend(round);
                std::thread::sleep(Duration::from_millis(30));
            }
            written
        });
        Writer { stop, handle }
    }

    fn finish(self) -> Vec<TestRecord> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

fn count(bootstrap: &str, topic: &str, at_least: usize) -> usize {
    consume_all(bootstrap, topic, at_least, Duration::from_secs(30)).len()
}

#[test]
fn sighup_applies_added_removed_and_changed_flows_without_loss_or_duplicates() {
    let edge = Broker::start();
    let cloud = Broker::start();
    let (e, c) = (edge.bootstrap.clone(), cloud.bootstrap.clone());
    create_topic(&e, "orders", 3);
    create_topic(&e, "payments", 2);
    create_topic(&c, "back", 1);
    let payments = varied_records(100, 2, "pay");
    produce(&e, "payments", &payments, "none", false);
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("\n[metrics]\nlisten = \"{listen}\"\n");
    let back_flow = "\n[[flows]]\nsource = \"cloud\"\ntarget = \"edge\"\ntopics = \"^back$\"\n";

    // v1: orders only.
    let v1 = format!("{}{metrics}", edge_to_cloud(&e, &c, "^orders$", ""));
    let proxy = MirrorProxy::start(&v1);
    let orders = Writer::start(&e, "orders", 3);
    assert!(count(&c, "orders", 40) >= 40, "orders flowing before any reload");
    assert_eq!(support::topic_partitions(&c, "payments"), None, "payments not mirrored by v1");

    // v2: the regex grows to payments, and a flow back from cloud to edge is added.
    let v2 = format!("{}{back_flow}{metrics}", edge_to_cloud(&e, &c, "^(orders|payments)$", ""));
    let outcome = reload(&proxy, &v2);
    assert!(outcome.contains("config reloaded: 2 flow(s) running (1 stopped, 2 started)"), "{outcome}");
    let log = proxy.log();
    assert!(log.contains("config reload: flow edge->cloud: restarted (topics)"), "{}", support::tail(&log, 30));
    assert!(log.contains("config reload: flow cloud->edge: added"), "{}", support::tail(&log, 30));
    let got = consume_all(&c, "payments", payments.len(), Duration::from_secs(30));
    assert_same("payments", &payments, &got);
    let back = varied_records(50, 1, "back");
    produce(&c, "back", &back, "gzip", false);
    assert_same("back", &back, &consume_all(&e, "back", back.len(), Duration::from_secs(30)));
    wait_for("the added flow in /metrics and /ready", Duration::from_secs(30), &proxy, || {
        let (_, m) = http(&listen, "GET", "/metrics");
        m.contains("mirrorproxy_partitions{flow=\"cloud->edge\"}") && http(&listen, "GET", "/ready").0 == 200
    });

    // A file that does not parse: one error naming it; the running flows go on.
    let outcome = reload(&proxy, "[[flows]\nsource = ");
    assert!(outcome.contains("config reload failed, the running config stays"), "{outcome}");
    assert!(outcome.contains(&proxy.config_path().display().to_string()), "names the file: {outcome}");
    let more_back = varied_records(10, 1, "back2");
    produce(&c, "back", &more_back, "none", false);
    assert_eq!(count(&e, "back", 60), 60, "the back flow still runs after a failed reload");

    // A key that needs a restart: refused as a whole, naming the key; nothing stops.
    let bigger = v2.replace("[tuning]\n", "[tuning]\nbuffer_bytes = 536870912\n");
    let outcome = reload(&proxy, &bigger.replace("^(orders|payments)$", "^orders$"));
    assert!(outcome.contains("config reload refused, the running config stays"), "{outcome}");
    assert!(outcome.contains("tuning.buffer_bytes (268435456 -> 536870912)"), "{outcome}");
    // The refused file also dropped payments from the regex: still mirrored.
    let more_payments = varied_records(10, 2, "pay2");
    produce(&e, "payments", &more_payments, "none", false);
    assert_eq!(count(&c, "payments", 110), 110, "the refused config was not applied in part");

    // A new cluster that cannot be reached: the reload fails before anything stops.
    let gone = format!(
        "{v2}\n[clusters.gone]\nbootstrap = \"127.0.0.1:{}\"\n[[flows]]\nsource = \"edge\"\ntarget = \"gone\"\ntopics = \"^orders$\"\n",
        free_port()
    );
    let outcome = reload(&proxy, &gone);
    assert!(outcome.contains("config reload failed, the running config stays: cluster 'gone'"), "{outcome}");

    // Nothing changed: nothing restarts.
    assert!(reload(&proxy, &v2).contains("config reload: nothing changed"));

    // v3: the back flow removed, a tuning key and edge's client id changed: the
    // remaining flow restarts (again, under load); nothing is mirrored back any more.
    let v3 = format!("{}{metrics}", edge_to_cloud(&e, &c, "^(orders|payments)$", ""))
        .replace("fetch_max_wait_ms = 50", "fetch_max_wait_ms = 60")
        .replace(&format!("bootstrap = \"{e}\"\n"), &format!("bootstrap = \"{e}\"\nclient_id = \"reloaded\"\n"));
    let outcome = reload(&proxy, &v3);
    assert!(outcome.contains("config reloaded: 1 flow(s) running (2 stopped, 1 started)"), "{outcome}");
    let log = proxy.log();
    assert!(log.contains("config reload: flow cloud->edge: removed"), "{}", support::tail(&log, 30));
    assert!(
        log.contains("config reload: flow edge->cloud: restarted (cluster 'edge' rebuilt, tuning)"),
        "{}",
        support::tail(&log, 30)
    );
    assert!(log.contains("tuning changed (fetch_max_wait_ms)"), "{}", support::tail(&log, 30));
    produce(&c, "back", &varied_records(20, 1, "after"), "none", false);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(consume_all(&e, "back", usize::MAX, Duration::from_secs(3)).len(), 60, "a removed flow mirrors nothing");

    // Every order written across three restarts of its flow arrived once, in order.
    std::thread::sleep(Duration::from_millis(500));
    let written = orders.finish();
    assert!(written.len() >= 200, "the writer kept writing through the reloads ({})", written.len());
    let got = consume_all(&c, "orders", written.len(), Duration::from_secs(60));
    assert_same("orders", &written, &got);
    let mut proxy = proxy;
    assert!(proxy.stop().success(), "{}", support::tail(&proxy.log(), 30));
}
