//! Active-active and multi-hop topologies with identity topic names: the provenance
//! header stops loops. Real tansu brokers; data produced and verified with librdkafka.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(90);
const HEADER: &str = "mirrorproxy.provenance";

struct Cluster {
    alias: &'static str,
    broker: Broker,
}

fn clusters(aliases: &[&'static str]) -> Vec<Cluster> {
    aliases.iter().map(|a| Cluster { alias: a, broker: Broker::start() }).collect()
}

fn config(clusters: &[Cluster], flows: &[(&str, &str, &str, &str)]) -> String {
    let mut c = String::new();
    for cl in clusters {
        c += &format!("[clusters.{}]\nbootstrap = \"{}\"\n\n", cl.alias, cl.broker.bootstrap);
    }
    for (source, target, topics, extra) in flows {
        c += &format!("[[flows]]\nsource = \"{source}\"\ntarget = \"{target}\"\ntopics = \"{topics}\"\n{extra}\n\n");
    }
    c + "[tuning]\nsummary_interval_ms = 1000\nmetadata_refresh_ms = 500\nfetch_max_wait_ms = 100\n"
}

fn bootstrap<'a>(clusters: &'a [Cluster], alias: &str) -> &'a str {
    &clusters.iter().find(|c| c.alias == alias).unwrap().broker.bootstrap
}

/// Splits a received record's provenance header off: (record without it, path).
fn strip(r: &ReceivedRecord) -> (ReceivedRecord, Option<String>) {
    let mut r = r.clone();
    let mut path = None;
    if let Some(i) = r.headers.iter().position(|(k, _)| k == HEADER) {
        assert_eq!(i, r.headers.len() - 1, "the provenance header is not last: {r:?}");
        let (_, v) = r.headers.remove(i);
        path = Some(String::from_utf8(v.expect("provenance header value is never null")).unwrap());
        assert!(!r.headers.iter().any(|(k, _)| k == HEADER), "two provenance headers: {r:?}");
    }
    (r, path)
}

/// Checks that `cluster` holds every record of `produced` (origin alias → records)
/// exactly once, per partition in each origin's order, with the expected path.
fn assert_cluster_has(
    clusters: &[Cluster],
    cluster: &str,
    topic: &str,
    produced: &[(&str, &Vec<TestRecord>)],
    path_of: impl Fn(&str) -> Option<String>,
) {
    let total: usize = produced.iter().map(|(_, r)| r.len()).sum();
    let got = consume_all(bootstrap(clusters, cluster), topic, total, WAIT);
    assert_eq!(got.len(), total, "{cluster}/{topic}: {} records, expected {total}", got.len());
    // Group by origin (the first element of the path, or "local" records without one).
    let mut by_origin: HashMap<String, BTreeMap<i32, Vec<ReceivedRecord>>> = HashMap::new();
    for r in &got {
        let (plain, path) = strip(r);
        let origin = path
            .as_deref()
            .map_or(cluster.to_owned(), |p| p.trim_start_matches("v1:").split(',').next().unwrap().to_owned());
        let expected_path = path_of(&origin);
        assert_eq!(path, expected_path, "{cluster}/{topic}: record {plain:?} has path {path:?}");
        by_origin.entry(origin).or_default().entry(plain.partition).or_default().push(plain);
    }
    for (origin, records) in produced {
        let have = by_origin.remove(*origin).unwrap_or_default();
        for (p, want) in group(records) {
            let h = have.get(&p).cloned().unwrap_or_default();
            assert_eq!(h.len(), want.len(), "{cluster}/{topic}-{p}: records from {origin}");
            for (a, b) in h.iter().zip(&want) {
                assert!(a.matches(b), "{cluster}/{topic}-{p} from {origin}:\n got  {a:?}\n want {b:?}");
            }
        }
    }
    assert!(by_origin.is_empty(), "{cluster}/{topic}: records from unexpected origins {:?}", by_origin.keys());
}

fn group(records: &[TestRecord]) -> BTreeMap<i32, Vec<TestRecord>> {
    let mut m: BTreeMap<i32, Vec<TestRecord>> = BTreeMap::new();
    for r in records {
        m.entry(r.partition).or_default().push(r.clone());
    }
    m
}

/// Produces each job's chunks in order; jobs run concurrently (one per cluster, so
/// each cluster's order is defined and the clusters write at the same time).
fn produce_concurrently(jobs: Vec<(String, &'static str, Vec<(Vec<TestRecord>, &'static str)>)>) {
    std::thread::scope(|s| {
        for (bootstrap, topic, chunks) in &jobs {
            s.spawn(move || {
                for (records, codec) in chunks {
                    produce(bootstrap, topic, records, codec, true);
                }
            });
        }
    });
}

#[test]
fn active_active_with_identity_names_copies_each_record_once_each_way() {
    let cs = clusters(&["east", "west"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "orders", 2);
    }
    let mut proxy = MirrorProxy::start(&config(&cs, &[("east", "west", "orders", ""), ("west", "east", "orders", "")]));
    let mut at_east = Vec::new();
    let mut at_west = Vec::new();
    let (mut east_chunks, mut west_chunks) = (Vec::new(), Vec::new());
    for (i, codec) in ["none", "gzip", "snappy", "lz4", "zstd"].into_iter().enumerate() {
        let e = varied_records(60, 2, &format!("east{i}"));
        let w = varied_records(40, 2, &format!("west{i}"));
        east_chunks.push((e.clone(), codec));
        west_chunks.push((w.clone(), codec));
        at_east.extend(e);
        at_west.extend(w);
    }
    // Order is defined per origin; how the two origins interleave is free.
    produce_concurrently(vec![
        (cs[0].broker.bootstrap.clone(), "orders", east_chunks),
        (cs[1].broker.bootstrap.clone(), "orders", west_chunks),
    ]);
    let produced = [("east", &at_east), ("west", &at_west)];
    let path = |here: &'static str| move |origin: &str| (origin != here).then(|| format!("v1:{origin},{here}"));
    assert_cluster_has(&cs, "east", "orders", &produced, path("east"));
    assert_cluster_has(&cs, "west", "orders", &produced, path("west"));
    // settle: nothing keeps circling
    std::thread::sleep(Duration::from_secs(3));
    let total = at_east.len() + at_west.len();
    for c in ["east", "west"] {
        let n = consume_all(bootstrap(&cs, c), "orders", total + 1, Duration::from_secs(5)).len();
        assert_eq!(n, total, "{c} grew after settling: a loop");
    }
    assert!(proxy.log().contains("skipped by provenance"), "{}", tail(&proxy.log(), 10));
    assert!(proxy.stop().success());
}

#[test]
fn ring_of_three_reaches_everyone_once() {
    let cs = clusters(&["a", "b", "c"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "events", 1);
    }
    let mut proxy = MirrorProxy::start(&config(
        &cs,
        &[("a", "b", "events", ""), ("b", "c", "events", ""), ("c", "a", "events", "")],
    ));
    let recs: Vec<Vec<TestRecord>> = ["a", "b", "c"].iter().map(|o| varied_records(50, 1, o)).collect();
    produce_concurrently(
        cs.iter().zip(&recs).map(|(c, r)| (c.broker.bootstrap.clone(), "events", vec![(r.clone(), "lz4")])).collect(),
    );
    let produced = [("a", &recs[0]), ("b", &recs[1]), ("c", &recs[2])];
    // the ring's order: a -> b -> c -> a
    let ring = ["a", "b", "c"];
    for here in ring {
        let path = |origin: &str| {
            if origin == here {
                return None;
            }
            let start = ring.iter().position(|r| *r == origin).unwrap();
            let mut p = vec![origin.to_owned()];
            let mut i = start;
            loop {
                i = (i + 1) % 3;
                p.push(ring[i].to_owned());
                if ring[i] == here {
                    break;
                }
            }
            Some(format!("v1:{}", p.join(",")))
        };
        assert_cluster_has(&cs, here, "events", &produced, path);
    }
    std::thread::sleep(Duration::from_secs(3));
    for here in ring {
        assert_eq!(
            consume_all(bootstrap(&cs, here), "events", 151, Duration::from_secs(5)).len(),
            150,
            "{here} grew: a loop"
        );
    }
    assert!(proxy.stop().success());
}

#[test]
fn hub_and_spoke_aggregates_and_shares_without_loops() {
    let cs = clusters(&["hub", "s1", "s2"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "shared", 1);
    }
    for s in ["s1", "s2"] {
        create_topic(bootstrap(&cs, s), "agg", 1);
    }
    let flows = [
        ("s1", "hub", "agg|shared", ""),
        ("s2", "hub", "agg|shared", ""),
        ("hub", "s1", "shared", ""),
        ("hub", "s2", "shared", ""),
    ];
    let mut proxy = MirrorProxy::start(&config(&cs, &flows));
    let agg1 = varied_records(40, 1, "agg-s1");
    let agg2 = varied_records(30, 1, "agg-s2");
    let sh: HashMap<&str, Vec<TestRecord>> =
        ["hub", "s1", "s2"].into_iter().map(|c| (c, varied_records(25, 1, &format!("shared-{c}")))).collect();
    let mut jobs = vec![
        (bootstrap(&cs, "s1").to_owned(), "agg", vec![(agg1.clone(), "zstd")]),
        (bootstrap(&cs, "s2").to_owned(), "agg", vec![(agg2.clone(), "snappy")]),
    ];
    for (c, r) in &sh {
        jobs.push((bootstrap(&cs, c).to_owned(), "shared", vec![(r.clone(), "gzip")]));
    }
    produce_concurrently(jobs);
    // aggregation: the hub has both spokes' records; the spokes only their own
    assert_cluster_has(&cs, "hub", "agg", &[("s1", &agg1), ("s2", &agg2)], |o| Some(format!("v1:{o},hub")));
    // sharing: every cluster has every shared record once
    let produced = [("hub", &sh["hub"]), ("s1", &sh["s1"]), ("s2", &sh["s2"])];
    assert_cluster_has(&cs, "hub", "shared", &produced, |o| (o != "hub").then(|| format!("v1:{o},hub")));
    for spoke in ["s1", "s2"] {
        let path = move |o: &str| match o {
            o if o == spoke => None,
            "hub" => Some(format!("v1:hub,{spoke}")),
            other => Some(format!("v1:{other},hub,{spoke}")),
        };
        assert_cluster_has(&cs, spoke, "shared", &produced, path);
    }
    std::thread::sleep(Duration::from_secs(3));
    for c in ["hub", "s1", "s2"] {
        assert_eq!(consume_all(bootstrap(&cs, c), "shared", 76, Duration::from_secs(5)).len(), 75, "{c} grew: a loop");
    }
    assert!(proxy.stop().success());
}

#[test]
fn an_identity_cycle_without_provenance_is_refused_with_the_loop_named() {
    let toml = r#"
[clusters.east]
bootstrap = "127.0.0.1:1"
[clusters.west]
bootstrap = "127.0.0.1:2"
[[flows]]
source = "east"
target = "west"
topics = "orders"
[[flows]]
source = "west"
target = "east"
topics = "orders"
provenance = "off"
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.toml");
    std::fs::write(&path, toml).unwrap();
    for cmd in ["check", "run"] {
        let out = std::process::Command::new(MirrorProxy::bin()).args([cmd, "--config"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted a loop");
        assert!(stderr.contains("flows[1].provenance") && stderr.contains("west -> east -> west"), "{cmd}: {stderr}");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
    }
}
