//! KIP-227 incremental fetch sessions, end to end. tansu 0.6.0 never grants a session
//! (every other test covers that fallback), so the source here is the benchmark's
//! synthetic broker (`bench synth-source`, examples/bench/synth.rs), which keeps sessions as Kafka
//! does and evicts them on a timer; the target is a real tansu broker and the data is
//! read back with librdkafka.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const PARTITIONS: i32 = 300;
const BATCHES: i64 = 3;
const BATCH_RECORDS: i64 = 4;

/// The synthetic source, killed on drop.
struct SynthSource {
    child: Child,
    log: PathBuf,
}

impl Drop for SynthSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SynthSource {
    fn start(port: u16) -> SynthSource {
        // target/<profile>/deps/<this test> → target/<profile>/examples/bench
        let exe = std::env::current_exe().unwrap();
        let bench = exe.parent().and_then(|d| d.parent()).unwrap().join("examples/bench");
        assert!(
            bench.exists(),
            "{} not found: `cargo test` builds the examples; run `cargo build --release --examples`",
            bench.display()
        );
        let log = std::env::temp_dir().join(format!("synth-source-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let rate = f64::from(PARTITIONS) * BATCH_RECORDS as f64 / 1.5; // one batch per partition every 1.5 s
        let child = Command::new(bench)
            .args(["synth-source", "--listen", &format!("127.0.0.1:{port}"), "--topic", "sess.t"])
            .args(["--partitions", &PARTITIONS.to_string(), "--size", "100"])
            .args(["--batch-records", &BATCH_RECORDS.to_string(), "--batches", &BATCHES.to_string()])
            .args(["--rate", &rate.to_string(), "--evict-sessions-ms", "1200"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start synth-source");
        SynthSource { child, log }
    }

    /// The last `fetch-sessions` statistics line, as (name → count).
    fn stats(&self) -> BTreeMap<String, u64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let line = text.lines().rev().find_map(|l| l.strip_prefix("synth-source fetch-sessions ")).unwrap_or("{}");
        let v: serde_json::Value = serde_json::from_str(line).expect("stats line is JSON");
        v.as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
    }
}

#[test]
fn incremental_sessions_copy_every_record_once_across_evictions() {
    let target = Broker::start();
    let port = free_port();
    let source = SynthSource::start(port);
    let addr = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "synth-source did not start:\n{}",
            tail(&std::fs::read_to_string(&source.log).unwrap_or_default(), 20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mirror = MirrorProxy::start(&edge_to_cloud(&addr, &target.bootstrap, "sess.t", ""));

    let expected = (i64::from(PARTITIONS) * BATCHES * BATCH_RECORDS) as usize;
    let got = consume_all(&target.bootstrap, "sess.t", expected, Duration::from_secs(90));
    assert_eq!(got.len(), expected, "records on the target (mirror log:\n{})", tail(&mirror.log(), 30));
    // Every partition has its batches once, in the order the source made them: each
    // record's key is the microsecond its batch became readable.
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &got {
        let key = r.key.as_deref().expect("synthetic records have keys");
        per_partition.entry(r.partition).or_default().push(i64::from_be_bytes(key.try_into().unwrap()));
    }
    assert_eq!(per_partition.len(), PARTITIONS as usize);
    for (p, keys) in &per_partition {
        assert_eq!(keys.len() as i64, BATCHES * BATCH_RECORDS, "partition {p}");
        let mut batches: Vec<i64> = keys.clone();
        batches.dedup();
        assert_eq!(batches.len() as i64, BATCHES, "partition {p}: batches {batches:?}");
        assert!(batches.windows(2).all(|w| w[0] < w[1]), "partition {p} out of order: {batches:?}");
    }
    // Let the statistics line catch up, then check what the source saw.
    std::thread::sleep(Duration::from_secs(1));
    let stats = source.stats();
    eprintln!("synth-source saw {stats:?}");
    let n = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(n("sessionless"), 0, "the mirror asked for sessions");
    assert!(n("incremental") >= 20, "incremental fetches were used: {stats:?}");
    assert!(n("refused") >= 1 && n("created") >= 2, "evicted sessions were noticed and replaced: {stats:?}");
    assert_eq!(n("reread"), 0, "no fetch re-read data already served (session positions stayed right)");
    // Full fetches name every partition; incremental ones only what moved.
    let named_incrementally = n("named") - n("full") * PARTITIONS as u64;
    assert!(
        named_incrementally <= n("incremental") * (PARTITIONS as u64 / 10),
        "incremental fetches named {named_incrementally} partitions in {} requests",
        n("incremental")
    );
}
