//! Active-active and multi-hop topologies with identity topic names, deployed as users
//! deploy them: one mirrorproxy per datacenter, each with a config holding only the
//! flows into its own cluster. The producer registry stops loops by default, with
//! compressed batches forwarded as bytes; `provenance = "header"` also stamps a header.
//! Real tansu brokers; data produced and verified with librdkafka.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(90);
const HEADER: &str = "mirrorproxy.provenance";
/// A header of the tests' own on every produced record: where it was produced.
const ORIGIN: &str = "test.origin";

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
        let origin = plain
            .headers
            .iter()
            .find(|(k, _)| k == ORIGIN)
            .map(|(_, v)| String::from_utf8(v.clone().unwrap()).unwrap())
            .expect("every test record carries its origin");
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

/// `varied_records` of one origin, each carrying the origin in a header.
fn records_from(origin: &str, n: usize, partitions: i32, tag: &str) -> Vec<TestRecord> {
    let mut rs = varied_records(n, partitions, tag);
    for r in &mut rs {
        r.headers.push((ORIGIN.to_owned(), Some(origin.as_bytes().to_vec())));
    }
    rs
}

/// One mirrorproxy per flow target, each with a config of only its own flows (as one
/// per datacenter is deployed).
fn proxies_per_target(clusters: &[Cluster], flows: &[(&str, &str, &str, &str)]) -> Vec<MirrorProxy> {
    let mut targets: Vec<&str> = flows.iter().map(|f| f.1).collect();
    targets.dedup();
    targets.sort_unstable();
    targets.dedup();
    targets
        .into_iter()
        .map(|t| {
            let own: Vec<_> = flows.iter().copied().filter(|f| f.1 == t).collect();
            MirrorProxy::start(&config(clusters, &own))
        })
        .collect()
}

/// No cluster's topic grows once the mirrors have settled: nothing circles.
fn assert_settled(clusters: &[Cluster], topic: &str, total: usize) {
    std::thread::sleep(Duration::from_secs(3));
    for c in clusters {
        let n = consume_all(&c.broker.bootstrap, topic, total + 1, Duration::from_secs(5)).len();
        assert_eq!(n, total, "{}/{topic} grew after settling: a loop", c.alias);
    }
}

/// Every topic name on a cluster.
fn topic_names(bootstrap: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = base_config(bootstrap).create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let mut names: Vec<String> = md.topics().iter().map(|t| t.name().to_owned()).collect();
    names.sort();
    names
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
        let e = records_from("east", 60, 2, &format!("east{i}"));
        let w = records_from("west", 40, 2, &format!("west{i}"));
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
    // The registry (the default) stops the loop without stamping anything.
    assert_cluster_has(&cs, "east", "orders", &produced, |_| None);
    assert_cluster_has(&cs, "west", "orders", &produced, |_| None);
    assert_settled(&cs, "orders", at_east.len() + at_west.len());
    assert!(proxy.log().contains("skipped by provenance"), "{}", tail(&proxy.log(), 10));
    assert!(proxy.stop().success());
}

/// A ring a -> b -> c -> a, one mirrorproxy per cluster; `extra` goes into every flow.
fn ring_of_three(extra: &str) {
    let cs = clusters(&["a", "b", "c"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "events", 2);
    }
    let flows = [("a", "b", "events", extra), ("b", "c", "events", extra), ("c", "a", "events", extra)];
    // Many small batches per origin (several produce calls), compressed differently.
    // The flow into b starts last, so it finds on a a backlog where a's own batches and
    // c's (mirrored to a) alternate: two paths queued together, which re-batching must
    // not merge into one batch.
    let mut proxies: Vec<MirrorProxy> =
        [flows[1], flows[2]].iter().map(|f| MirrorProxy::start(&config(&cs, &[*f]))).collect();
    let mut recs: Vec<Vec<TestRecord>> = cs.iter().map(|_| Vec::new()).collect();
    for i in 0..6 {
        let mut jobs = Vec::new();
        // a and c share a codec: without rebatch_compression only batches of one codec merge.
        for ((c, codec), r) in cs.iter().zip(["lz4", "zstd", "lz4"]).zip(&mut recs) {
            let chunk = records_from(c.alias, 10, 2, &format!("{}{i}", c.alias));
            r.extend(chunk.clone());
            jobs.push((c.broker.bootstrap.clone(), "events", vec![(chunk, codec)]));
        }
        produce_concurrently(jobs);
        // c's chunk reaches a before a's next chunk is written
        let want = (i + 1) * 20;
        let deadline = std::time::Instant::now() + WAIT;
        while consume_all(&cs[0].broker.bootstrap, "events", want, Duration::from_secs(2)).len() < want {
            assert!(std::time::Instant::now() < deadline, "c -> a does not mirror");
        }
    }
    proxies.push(MirrorProxy::start(&config(&cs, &[flows[0]])));
    let produced = [("a", &recs[0]), ("b", &recs[1]), ("c", &recs[2])];
    let expected_header = !extra.contains("header");
    for here in ["a", "b", "c"] {
        assert_cluster_has(&cs, here, "events", &produced, |origin| {
            if expected_header || origin == here {
                return None;
            }
            // a -> b -> c -> a: the header lists every hop since the origin
            let ring = ["a", "b", "c"];
            let mut i = ring.iter().position(|r| *r == origin).unwrap();
            let mut p = vec![origin.to_owned()];
            while ring[i] != here {
                i = (i + 1) % 3;
                p.push(ring[i].to_owned());
            }
            Some(format!("v1:{}", p.join(",")))
        });
    }
    assert_settled(&cs, "events", 180);
    for p in &mut proxies {
        assert!(p.stop().success(), "{}", tail(&p.log(), 20));
    }
}

#[test]
fn ring_of_three_with_a_config_per_cluster_reaches_everyone_once() {
    ring_of_three("");
}

#[test]
fn ring_of_three_with_rebatching_merges_only_batches_of_one_path() {
    // Each flow sees two paths per partition on its source (the source's own records
    // and those that came round the ring): merged batches must never mix them, or the
    // next hop skips records it must copy or copies records it must skip.
    ring_of_three("rebatch_max_bytes = 1048576");
}

#[test]
fn ring_of_three_with_header_stamping() {
    ring_of_three("provenance = \"header\"");
}

#[test]
fn hub_and_spoke_with_a_config_per_cluster_aggregates_and_shares_without_loops() {
    let cs = clusters(&["hub", "s1", "s2"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "shared", 1);
    }
    for s in ["s1", "s2"] {
        create_topic(bootstrap(&cs, s), "agg", 1);
    }
    // The hub's proxy reads both spokes; each spoke's proxy reads the hub.
    let flows = [
        ("s1", "hub", "agg|shared", ""),
        ("s2", "hub", "agg|shared", ""),
        ("hub", "s1", "shared", ""),
        ("hub", "s2", "shared", ""),
    ];
    let mut proxies = proxies_per_target(&cs, &flows);
    assert_eq!(proxies.len(), 3);
    let agg1 = records_from("s1", 40, 1, "agg-s1");
    let agg2 = records_from("s2", 30, 1, "agg-s2");
    let sh: HashMap<&str, Vec<TestRecord>> =
        ["hub", "s1", "s2"].into_iter().map(|c| (c, records_from(c, 25, 1, &format!("shared-{c}")))).collect();
    let mut jobs = vec![
        (bootstrap(&cs, "s1").to_owned(), "agg", vec![(agg1.clone(), "zstd")]),
        (bootstrap(&cs, "s2").to_owned(), "agg", vec![(agg2.clone(), "snappy")]),
    ];
    for (c, r) in &sh {
        jobs.push((bootstrap(&cs, c).to_owned(), "shared", vec![(r.clone(), "gzip")]));
    }
    produce_concurrently(jobs);
    // aggregation: the hub has both spokes' records; the spokes only their own
    assert_cluster_has(&cs, "hub", "agg", &[("s1", &agg1), ("s2", &agg2)], |_| None);
    // sharing: every cluster has every shared record once (s1's reach s2 via the hub)
    let produced = [("hub", &sh["hub"]), ("s1", &sh["s1"]), ("s2", &sh["s2"])];
    for c in ["hub", "s1", "s2"] {
        assert_cluster_has(&cs, c, "shared", &produced, |_| None);
    }
    assert_settled(&cs, "shared", 75);
    for p in &mut proxies {
        assert!(p.stop().success(), "{}", tail(&p.log(), 20));
    }
}

/// The deployment the README recommends: each datacenter's proxy next to its target,
/// each config holding one flow (with `extra`). Small compressed batches from an lz4
/// producer on a and a zstd producer on b, some idempotent, some not. Checks that
/// nothing loops and every record arrives once; returns, over the batches the proxies
/// wrote, (compressed batches, those whose records section is a source batch's byte for
/// byte, records in them, source batches they stand for).
fn split_active_active(extra: &str) -> (usize, usize, usize, usize) {
    let cs = clusters(&["a", "b"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "orders", 3);
    }
    let mut proxies = proxies_per_target(&cs, &[("a", "b", "orders", extra), ("b", "a", "orders", extra)]);
    assert_eq!(proxies.len(), 2);
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    std::thread::scope(|s| {
        for (c, codec, out) in [(&cs[0], "lz4", &mut at_a), (&cs[1], "zstd", &mut at_b)] {
            s.spawn(move || {
                for i in 0..12 {
                    let rs = records_from(c.alias, 30, 3, &format!("{}{i}", c.alias));
                    // Small batches, as producers with linger.ms=0 make them.
                    let extra = [("linger.ms", "0"), ("batch.num.messages", "4")];
                    let opts = ProduceOpts { codec, idempotent: i % 3 != 0, extra: &extra };
                    produce_with(&c.broker.bootstrap, "orders", &rs, &opts);
                    out.extend(rs);
                }
            });
        }
    });
    let produced = [("a", &at_a), ("b", &at_b)];
    for c in ["a", "b"] {
        assert_cluster_has(&cs, c, "orders", &produced, |_| None);
    }
    assert_settled(&cs, "orders", at_a.len() + at_b.len());
    // The proxy's batches are the ones whose producer id is registered on the cluster
    // they are on.
    let (mut mirrored, mut identical, mut records, mut source_batches) = (0usize, 0usize, 0usize, 0usize);
    for (from, to) in [(&cs[0], &cs[1]), (&cs[1], &cs[0])] {
        let registered: std::collections::HashSet<i64> =
            consume_all(&to.broker.bootstrap, "mirrorproxy.producers", 100, Duration::from_secs(5))
                .into_iter()
                .map(|r| {
                    let key = String::from_utf8(r.key.unwrap()).unwrap();
                    key.strip_prefix("mirrorproxy/v1/producer/").expect("registry key").parse().unwrap()
                })
                .collect();
        assert!(!registered.is_empty(), "{}: no producer registered", to.alias);
        for p in 0..3 {
            let from_apps: Vec<_> = raw_batches(&from.broker.bootstrap, "orders", p)
                .into_iter()
                .filter(|b| b.attributes & 0x20 == 0 && !registered.contains(&b.producer_id))
                .collect();
            source_batches += from_apps.len();
            let source: std::collections::HashSet<Vec<u8>> = from_apps.into_iter().map(|b| b.records).collect();
            for b in raw_batches(&to.broker.bootstrap, "orders", p) {
                if b.attributes & 7 == 0 || b.attributes & 0x20 != 0 || !registered.contains(&b.producer_id) {
                    continue;
                }
                mirrored += 1;
                records += b.records_count as usize;
                if source.contains(&b.records) {
                    identical += 1;
                }
            }
        }
    }
    eprintln!("mirrored compressed batches: {mirrored} ({records} records) for {source_batches} source batches, records bytes identical to their source batch: {identical}");
    for p in &mut proxies {
        assert!(p.log().contains("skipped by provenance"), "{}", tail(&p.log(), 10));
        assert!(p.stop().success(), "{}", tail(&p.log(), 20));
    }
    (mirrored, identical, records, source_batches)
}

#[test]
fn split_active_active_passes_through_when_asked_and_never_loops() {
    // Pass-through asked for: a mirrored compressed batch's records section is its
    // source batch's, byte for byte (only the 61-byte header is patched).
    let (mirrored, identical, _, _) = split_active_active("coalesce_below_bytes = 0");
    assert!(mirrored >= 50, "only {mirrored} mirrored compressed batches: were the batches small?");
    assert!(
        identical * 100 >= mirrored * 99,
        "only {identical} of {mirrored} mirrored compressed batches kept their records bytes"
    );
}

#[test]
fn split_active_active_coalesces_small_batches_by_default_and_never_loops() {
    // Defaults: the small batches are merged (each direction's records in far fewer
    // batches), and loop prevention still recognises the merged batches as mirrored.
    let (mirrored, _, records, source_batches) = split_active_active("");
    assert_eq!(records, 2 * 12 * 30, "every record mirrored once, in the proxies' batches");
    assert!(source_batches >= 100, "only {source_batches} source batches: were they small?");
    assert!(
        mirrored * 2 <= source_batches, // seen: 77 for 216 (the producers write 12 rounds of 30)
        "{mirrored} mirrored batches for {source_batches} small source batches: not coalesced"
    );
}

#[test]
fn mixed_header_and_registry_flows_never_loop() {
    // a -> b stamps headers (an application on b wants to see origins); b -> a does not.
    let cs = clusters(&["a", "b"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "orders", 2);
    }
    let mut proxies =
        proxies_per_target(&cs, &[("a", "b", "orders", "provenance = \"header\""), ("b", "a", "orders", "")]);
    let ra = records_from("a", 80, 2, "a");
    let rb = records_from("b", 70, 2, "b");
    produce_concurrently(vec![
        (cs[0].broker.bootstrap.clone(), "orders", vec![(ra[..40].to_vec(), "lz4"), (ra[40..].to_vec(), "gzip")]),
        (cs[1].broker.bootstrap.clone(), "orders", vec![(rb[..35].to_vec(), "zstd"), (rb[35..].to_vec(), "none")]),
    ]);
    let produced = [("a", &ra), ("b", &rb)];
    assert_cluster_has(&cs, "b", "orders", &produced, |o| (o == "a").then(|| "v1:a,b".to_owned()));
    assert_cluster_has(&cs, "a", "orders", &produced, |_| None);
    assert_settled(&cs, "orders", 150);
    for p in &mut proxies {
        assert!(p.stop().success(), "{}", tail(&p.log(), 20));
    }
}

#[test]
fn prefix_renamed_cycle_with_all_topics_never_chains_prefixes_or_copies_own_topics() {
    let cs = clusters(&["a", "b"]);
    for c in &cs {
        create_topic(&c.broker.bootstrap, "orders", 1);
    }
    let prefix = "rename = \"prefix\"";
    let mut proxies = proxies_per_target(&cs, &[("a", "b", ".*", prefix), ("b", "a", ".*", prefix)]);
    let ra = records_from("a", 30, 1, "a");
    let rb = records_from("b", 20, 1, "b");
    produce(&cs[0].broker.bootstrap, "orders", &ra, "lz4", true);
    produce(&cs[1].broker.bootstrap, "orders", &rb, "zstd", true);
    assert_cluster_has(&cs, "b", "a.orders", &[("a", &ra)], |_| None);
    assert_cluster_has(&cs, "a", "b.orders", &[("b", &rb)], |_| None);
    // Several metadata rounds (500 ms each) for anything that would chain.
    std::thread::sleep(Duration::from_secs(4));
    for (c, other) in [(&cs[0], "b"), (&cs[1], "a")] {
        let names = topic_names(&c.broker.bootstrap);
        let ours: Vec<&String> = names.iter().filter(|n| !n.starts_with("__")).collect();
        let want_mirror = format!("{other}.orders");
        for n in &ours {
            assert!(
                n.as_str() == "orders"
                    || *n == &want_mirror
                    || n.starts_with("mirrorproxy.")
                    || **n == format!("{other}.mirrorproxy.heartbeats"),
                "{}: unexpected topic '{n}' (all: {ours:?})",
                c.alias
            );
        }
        assert!(ours.iter().any(|n| n.as_str() == "mirrorproxy.checkpoints"), "{}: {ours:?}", c.alias);
    }
    for (c, topic, n) in
        [(&cs[0], "orders", 30), (&cs[0], "b.orders", 20), (&cs[1], "orders", 20), (&cs[1], "a.orders", 30)]
    {
        let got = consume_all(&c.broker.bootstrap, topic, n + 1, Duration::from_secs(5)).len();
        assert_eq!(got, n, "{}/{topic} after settling", c.alias);
    }
    for p in &mut proxies {
        assert!(p.stop().success(), "{}", tail(&p.log(), 20));
    }
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

#[test]
fn a_foreign_registry_record_stops_the_flow_and_copies_nothing() {
    // Fail closed: a record in the source's producer registry that is not a
    // registration means loops cannot be ruled out, so nothing is copied.
    let cs = clusters(&["a", "b"]);
    create_topic(&cs[0].broker.bootstrap, "orders", 2);
    create_topic(&cs[0].broker.bootstrap, "mirrorproxy.producers", 1);
    produce(
        &cs[0].broker.bootstrap,
        "mirrorproxy.producers",
        &[TestRecord::kv(0, "someone-else", "{}")],
        "none",
        false,
    );
    produce(&cs[0].broker.bootstrap, "orders", &records_from("a", 20, 2, "a"), "lz4", true);
    let mut proxy = MirrorProxy::start(&config(&cs, &[("a", "b", "orders", "")]));
    let needle = "producer registry 'mirrorproxy.producers' on cluster 'a' has an unreadable record at offset 0 with key \"someone-else\"";
    assert!(proxy.wait_for_log(needle, WAIT), "{}", tail(&proxy.log(), 20));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(consume_all(&cs[1].broker.bootstrap, "orders", 1, Duration::from_secs(3)).len(), 0, "copied blindly");
    let log = proxy.log();
    // One error; the summaries then repeat the stopped partitions (as for any stop).
    let errors = log.lines().filter(|l| l.contains(" ERROR ") && l.contains(needle)).count();
    assert_eq!(errors, 1, "one error, not one per partition: {}", tail(&log, 20));
    // Both partitions of "orders", and the flow's heartbeat partition when it is met.
    assert!(log.contains("(2 stopped)") || log.contains("(3 stopped)"), "all partitions stopped: {}", tail(&log, 20));
    assert!(proxy.stop().success());
}
