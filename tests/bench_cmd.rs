//! `mirrorproxy bench` against two tansu brokers, the way an operator runs it: next to
//! the production mirror of the same flow, whose `topics = ".*"` would match the bench
//! topic. What must hold: the report has every record and plausible numbers; the
//! production mirror does not mirror the bench topic a second time (librdkafka counts
//! the target topic); the topics are deleted afterwards; bad flags are one error each.
#![allow(clippy::pedantic)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{consume_all, edge_to_cloud, tail, topic_partitions, Broker, MirrorProxy};

fn bench(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(MirrorProxy::bin())
        .args(["bench", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mirrorproxy bench");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn bench_measures_a_flow_beside_the_production_mirror_and_cleans_up() {
    let edge = Broker::start();
    let cloud = Broker::start();
    let config = edge_to_cloud(&edge.bootstrap, &cloud.bootstrap, ".*", "");
    // The production mirror of the same flow, running all along.
    let production = MirrorProxy::start(&config);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let out_s = out.display().to_string();
    let (ok, stdout, stderr) = bench(
        production.config_path(),
        &[
            "--flow",
            "edge->cloud",
            "--records",
            "20000",
            "--record-size",
            "100",
            "--codec",
            "lz4",
            "--batch-records",
            "20",
            "--rate",
            "8000",
            "--partitions",
            "3",
            "--out",
            &out_s,
            "--keep-topics",
        ],
    );
    assert!(ok, "bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("latency (create time to arrival on the target), ms: p50"), "{stdout}");
    assert!(stderr.contains("mirrored)"), "a progress line every second:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    assert_eq!(report["records"], 20000, "{report}");
    let topic = report["topic"].as_str().unwrap().to_owned();
    assert!(topic.starts_with("mirrorproxy.bench."), "{topic}");
    let l = &report["latency_ms"];
    let (p50, p99, p999, max) = (
        l["p50"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["p99.9"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max && max < 30_000.0, "{l}");
    // Paced at 8000 records/s: about 2.5 s, so the rate is near the pace.
    let rate = report["records_per_s"].as_f64().unwrap();
    assert!((4000.0..=8800.0).contains(&rate), "records/s {rate}");
    let proxy = &report["proxy"];
    assert!(proxy["cpu_seconds"].as_f64().unwrap() > 0.0, "{proxy}");
    assert!(proxy["peak_rss_mb"].as_f64().unwrap() > 1.0, "{proxy}");
    assert!(report["timeline"].as_array().unwrap().len() >= 2, "{report}");
    let png = std::fs::read(out.join("bench.png")).expect("bench.png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Exactly once on the target, with the production `.*` mirror running beside it.
    std::thread::sleep(Duration::from_secs(2));
    let got = consume_all(&cloud.bootstrap, &topic, usize::MAX, Duration::from_secs(5));
    assert_eq!(got.len(), 20000, "the bench topic on the target holds each record once");
    assert!(
        !production.log().contains(&topic),
        "the production mirror left it alone:\n{}",
        tail(&production.log(), 20)
    );

    // Without --keep-topics both topics are gone afterwards.
    let (ok, stdout, stderr) = bench(
        production.config_path(),
        &["--flow", "edge->cloud", "--records", "2000", "--record-size", "10", "--out", &out_s],
    );
    assert!(ok, "bench failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let topic = report["topic"].as_str().unwrap();
    assert_eq!(topic_partitions(&edge.bootstrap, topic), None, "deleted on the source:\n{stderr}");
    assert_eq!(topic_partitions(&cloud.bootstrap, topic), None, "deleted on the target:\n{stderr}");
}

#[test]
fn bench_flags_are_checked_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    // Clusters nobody listens on: a flag error must come before any connection.
    std::fs::write(&config, edge_to_cloud("127.0.0.1:1", "127.0.0.1:2", ".*", "")).unwrap();
    for (args, want) in [
        (&["--flow", "nope->x"][..], "--flow nope->x: the config has no such flow (it has: edge->cloud)"),
        (
            &["--flow", "edge->cloud", "--codec", "brotli"][..],
            "--codec brotli: not one of none, gzip, snappy, lz4, zstd",
        ),
        (&["--flow", "edge->cloud", "--records", "0"][..], "--records: must be at least 1"),
        (&["--flow", "edge->cloud", "--partitions", "0"][..], "--partitions: must be at least 1"),
    ] {
        let (ok, _, stderr) = bench(&config, args);
        assert!(!ok, "{args:?} accepted");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: one error line:\n{stderr}");
        assert!(errors[0].contains(want), "{args:?}:\n{stderr}");
    }
}
