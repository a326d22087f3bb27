//! The metrics endpoint with the real parts an operator runs it with: two tansu
//! brokers, librdkafka writing the data, Prometheus (Debian's package) scraping the
//! proxy and answering PromQL, and `promtool` judging the exposition and the shipped
//! alert rules.
#![allow(clippy::pedantic)]

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{create_topic, edge_to_cloud, free_port, http, produce, varied_records, wait_for, Broker, MirrorProxy};

/// Sum of a metric's samples in an exposition (None: no sample).
fn sum_of(exposition: &str, name: &str) -> Option<f64> {
    sum_where(exposition, name, "")
}

/// Sum of a metric's samples whose labels contain `label` (e.g. `topic="orders"`).
fn sum_where(exposition: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let metric = series.split('{').next().unwrap();
        if metric == name && series.contains(label) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

const ORDERS: &str = "topic=\"orders\"";

fn with_metrics(config: &str, listen: &str, extra: &str) -> String {
    format!("{config}\n[metrics]\nlisten = \"{listen}\"\n{extra}\n")
}

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's prometheus package (bash tools/install-deps.sh)");
}

/// Prometheus scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mirrorproxy\n    static_configs:\n      - targets: ['{target}']\n"),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        Self { child, addr, _dir: dir }
    }

    /// The single value of an instant PromQL query, if it has one.
    fn query(&self, promql: &str) -> Option<f64> {
        let q: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (status, body) = http(&self.addr, "GET", &format!("/api/v1/query?query={q}"));
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let value = v["data"]["result"].get(0)?["value"][1].as_str()?.to_owned();
        value.parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The counters and lag reach Prometheus; the exposition passes `promtool check
/// metrics`; the shipped alert rules pass `promtool check rules`; wrong methods and
/// paths are refused without disturbing the mirror.
#[test]
fn prometheus_scrapes_records_and_lag_and_promtool_accepts_the_exposition() {
    let src = Broker::start();
    let dst = Broker::start();
    create_topic(&src.bootstrap, "orders", 3);
    let first = varied_records(300, 3, "m1");
    produce(&src.bootstrap, "orders", &first, "lz4", true);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut proxy =
        MirrorProxy::start(&with_metrics(&edge_to_cloud(&src.bootstrap, &dst.bootstrap, "orders", ""), &listen, ""));
    let prom = Prometheus::start(&listen);

    wait_for("/ready 200", Duration::from_secs(30), &proxy, || http(&listen, "GET", "/ready").0 == 200);
    // Heartbeats are records too (mirrored like data): the application's are counted by topic.
    wait_for("300 records in /metrics", Duration::from_secs(30), &proxy, || {
        sum_where(&http(&listen, "GET", "/metrics").1, "mirrorproxy_records_total", ORDERS) == Some(300.0)
    });
    let (status, body) = http(&listen, "GET", "/metrics");
    assert_eq!(status, 200);
    for name in [
        "mirrorproxy_bytes_total",
        "mirrorproxy_lag_records",
        "mirrorproxy_lag_seconds",
        "mirrorproxy_replication_latency_seconds_count",
        "mirrorproxy_partitions_stopped",
        "mirrorproxy_cluster_up",
        "mirrorproxy_budget_bytes_in_use",
        "mirrorproxy_budget_bytes_withheld",
    ] {
        assert!(sum_of(&body, name).is_some(), "{name} missing:\n{body}");
    }
    assert_eq!(sum_of(&body, "mirrorproxy_partitions_stopped"), Some(0.0));
    // A few records never bring the process near buffer_bytes + 44 MiB: nothing held back.
    assert_eq!(sum_of(&body, "mirrorproxy_budget_bytes_withheld"), Some(0.0));
    let observed = sum_of(&body, "mirrorproxy_replication_latency_seconds_count").unwrap();
    assert!(observed >= 3.0, "a latency per acknowledgement (3 partitions, at least one each): {observed}");
    assert!(
        body.contains("mirrorproxy_records_total{flow=\"edge->cloud\",topic=\"orders\",partition=\"2\"}"),
        "{body}"
    );
    // Each broker connection, by cluster and address, up; the requests waiting on it.
    for (cluster, broker) in [("edge", &src.bootstrap), ("cloud", &dst.bootstrap)] {
        let series = format!("mirrorproxy_broker_connected{{cluster=\"{cluster}\",broker=\"{broker}\"}} 1\n");
        assert!(body.contains(&series), "{series}in:\n{body}");
        let waiting = format!("mirrorproxy_broker_requests_in_flight{{cluster=\"{cluster}\",broker=\"{broker}\"}} ");
        assert!(body.contains(&waiting), "{waiting}in:\n{body}");
    }
    let check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .expect("run promtool");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Prometheus sees the counter and the lag; more data moves the counter.
    let second = varied_records(200, 3, "m2");
    produce(&src.bootstrap, "orders", &second, "zstd", true);
    wait_for("Prometheus: 500 records", Duration::from_secs(40), &proxy, || {
        prom.query("sum(mirrorproxy_records_total{topic=\"orders\"})") == Some(500.0)
    });
    wait_for("Prometheus: lag 0", Duration::from_secs(20), &proxy, || {
        prom.query("max(mirrorproxy_lag_records)") == Some(0.0)
    });
    assert_eq!(
        prom.query("count(mirrorproxy_lag_records{topic=\"orders\"})"),
        Some(3.0),
        "one lag series per partition\n{}",
        prom.log()
    );

    // Heartbeats: written to the source every second and mirrored (the flow's `topics`
    // names only "orders"), so the path shows as alive while "orders" is idle.
    wait_for("heartbeats on the target", Duration::from_secs(30), &proxy, || {
        support::topic_partitions(&dst.bootstrap, "mirrorproxy.heartbeats") == Some(1)
            && support::watermarks(&dst.bootstrap, "mirrorproxy.heartbeats", 0).1 >= 3
    });
    let age = sum_of(&http(&listen, "GET", "/metrics").1, "mirrorproxy_heartbeat_age_seconds").unwrap();
    assert!(age < 5.0, "the newest heartbeat on the target is {age} s old");
    let beats = support::consume_all(&dst.bootstrap, "mirrorproxy.heartbeats", 1, Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_slice(beats[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(v["flow"], "edge->cloud", "{v}");
    assert_eq!(beats[0].key.as_deref(), Some(&b"edge->cloud"[..]));

    // Refused requests, and the mirror goes on.
    assert_eq!(http(&listen, "POST", "/metrics").0, 405);
    assert_eq!(http(&listen, "GET", "/nope").0, 404);
    assert_eq!(http(&listen, "GET", "/health").0, 200);
    let third = varied_records(100, 3, "m3");
    produce(&src.bootstrap, "orders", &third, "none", true);
    wait_for("600 records", Duration::from_secs(30), &proxy, || {
        sum_where(&http(&listen, "GET", "/metrics").1, "mirrorproxy_records_total", ORDERS) == Some(600.0)
    });

    let rules = Command::new(tool("promtool"))
        .args(["check", "rules", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/alerts.yml")])
        .output()
        .expect("run promtool");
    assert!(
        rules.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&rules.stdout),
        String::from_utf8_lossy(&rules.stderr)
    );
    check_dashboard(&http(&listen, "GET", "/metrics").1);
    assert!(proxy.stop().success(), "{}", proxy.log());
}

/// The shipped Grafana dashboard: every query parses as PromQL (promtool, as recording
/// rules, with Grafana's variables filled in) and every metric it reads is in the
/// exposition.
fn check_dashboard(exposition: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").replace("$flow", ".*").replace("$__rate_interval", "1m"));
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("dashboard-queries.yml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        text.push_str(&format!("      - record: dashboard:q{i}\n        expr: '{}'\n", e.replace('\'', "''")));
    }
    std::fs::write(&rules, &text).unwrap();
    let out = Command::new(tool("promtool")).args(["check", "rules"]).arg(&rules).output().expect("run promtool");
    assert!(
        out.status.success(),
        "dashboard queries: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for e in &exprs {
        for name in
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("mirrorproxy_"))
        {
            let family = name.trim_end_matches("_bucket");
            assert!(
                exposition.contains(&format!("# TYPE {family} ")),
                "the dashboard reads {name}, which the proxy does not export"
            );
        }
    }
}

/// `/ready` follows the target: 200, 503 naming the cluster while it does not answer,
/// 200 again once it does, with no data flowing to prove it. `/health` stays 200 (the
/// process is alive). `partition_labels = false` gives one series per flow.
#[test]
fn ready_turns_503_while_the_target_is_down_and_200_when_it_is_back() {
    let src = Broker::start();
    let dst = Broker::start();
    create_topic(&src.bootstrap, "orders", 2);
    produce(&src.bootstrap, "orders", &varied_records(50, 2, "r"), "none", true);
    let listen = format!("127.0.0.1:{}", free_port());
    let config = edge_to_cloud(&src.bootstrap, &dst.bootstrap, "orders", "")
        .replace("[tuning]", "[tuning]\nrequest_timeout_ms = 2000\nconnect_timeout_ms = 1000");
    let config = config.replace("topics = \"orders\"", "topics = \"orders\"\nheartbeats = false");
    let mut proxy = MirrorProxy::start(&with_metrics(&config, &listen, "partition_labels = false"));
    wait_for("/ready 200", Duration::from_secs(30), &proxy, || http(&listen, "GET", "/ready").0 == 200);
    wait_for("50 records", Duration::from_secs(30), &proxy, || {
        sum_of(&http(&listen, "GET", "/metrics").1, "mirrorproxy_records_total") == Some(50.0)
    });
    let body = http(&listen, "GET", "/metrics").1;
    let series = body.lines().filter(|l| l.starts_with("mirrorproxy_records_total")).count();
    assert_eq!(series, 1, "one series per flow without partition labels:\n{body}");
    assert!(!body.contains("partition=\""), "{body}");

    dst.pause();
    wait_for("/ready 503", Duration::from_secs(30), &proxy, || http(&listen, "GET", "/ready").0 == 503);
    let (_, why) = http(&listen, "GET", "/ready");
    assert!(why.contains("target cluster 'cloud' is failing"), "{why:?} {:?}", http(&listen, "GET", "/ready"));
    assert_eq!(http(&listen, "GET", "/health").0, 200, "alive while the target is down");
    let body = http(&listen, "GET", "/metrics").1;
    assert!(body.contains("mirrorproxy_cluster_up{flow=\"edge->cloud\",side=\"target\"} 0"), "{body}");
    assert!(body.contains("mirrorproxy_flow_ready{flow=\"edge->cloud\"} 0"), "{body}");
    assert!(sum_of(&body, "mirrorproxy_errors_total").is_some_and(|n| n >= 1.0), "{body}");

    dst.resume();
    wait_for("/ready 200 again", Duration::from_secs(30), &proxy, || http(&listen, "GET", "/ready").0 == 200);
    let body = http(&listen, "GET", "/metrics").1;
    assert!(!body.lines().any(|l| l.starts_with("mirrorproxy_heartbeat_age_seconds{")), "heartbeats = false: {body}");
    assert_eq!(support::topic_partitions(&src.bootstrap, "mirrorproxy.heartbeats"), None, "no heartbeat topic written");
    assert!(proxy.stop().success(), "{}", proxy.log());
}
