//! KIP-227 incremental fetch sessions, end to end. tansu 0.6.0 never grants a session
//! (every other test covers that fallback), so the source here is the shared synthetic
//! broker (`synthbroker/`, the benchmark's source), in this process: it keeps sessions as
//! Kafka does, evicts them on a timer and counts what it saw of them. The target is a
//! real tansu broker and the data is read back with librdkafka.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use synthbroker::{Compression, Config, Source, SynthBroker};

const PARTITIONS: i32 = 300;
const BATCHES: i64 = 3;
const BATCH_RECORDS: i64 = 4;

#[test]
fn incremental_sessions_copy_every_record_once_across_evictions() {
    let target = Broker::start();
    let rate = f64::from(PARTITIONS) * BATCH_RECORDS as f64 / 1.5; // one batch per partition every 1.5 s
    let source = SynthBroker::start(
        Config::new("sess.t", PARTITIONS)
            .source(Source::new(BATCH_RECORDS as i32, 100, Compression::None).rate(rate).batches(BATCHES))
            .evict_sessions_every(Duration::from_millis(1200)),
    );
    let addr = source.addr().to_owned();
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
    // What the source saw.
    let stats = source.session_stats();
    eprintln!("the synthetic source saw {stats:?}");
    assert_eq!(stats.sessionless, 0, "the mirror asked for sessions");
    assert!(stats.incremental >= 20, "incremental fetches were used: {stats:?}");
    assert!(stats.refused >= 1 && stats.created >= 2, "evicted sessions were noticed and replaced: {stats:?}");
    assert_eq!(stats.reread, 0, "no fetch re-read data already served (session positions stayed right)");
    // Full fetches name every partition; incremental ones only what moved.
    let named_incrementally = stats.named - stats.full * PARTITIONS as u64;
    assert!(
        named_incrementally <= stats.incremental * (PARTITIONS as u64 / 10),
        "incremental fetches named {named_incrementally} partitions in {} requests",
        stats.incremental
    );
}
