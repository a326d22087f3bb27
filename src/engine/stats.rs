//! What a flow shows of itself to the outside: counters, the replication-latency
//! histogram, errors by side and Kafka name, a per-partition snapshot and the flow's
//! health. The flow's actor writes; `status` summaries and the metrics endpoint
//! ([`crate::metrics`]) read.
//!
//! Why a snapshot rather than shared per-partition atomics: the actor owns partition
//! state without locks, and with 10,000 partitions an atomic per partition per
//! acknowledgement would put shared cache lines on the hot path for numbers that are
//! scraped every 15 s. The actor copies its partitions into [`FlowStats::partitions`]
//! once a second ([`PUBLISH_EVERY`]); flow-level counters are atomics updated once per
//! acknowledged Produce, as before.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

use super::Side;

/// How often the flow publishes its partitions and health.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Upper bounds (seconds) of the replication-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A fixed-bucket histogram of seconds (Prometheus' cumulative buckets are made when
/// it is rendered), lock-free.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket of [`LATENCY_BUCKETS`] plus +Inf: observations in it (not cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (cumulative count per bucket including +Inf, sum in seconds, count).
    #[must_use]
    pub fn read(&self) -> (Vec<u64>, f64, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (cumulative, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, self.count.load(Ordering::Relaxed))
    }
}

/// One partition as of the last publish.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    pub records: u64,
    pub bytes: u64,
    /// Source records not yet on the target; never negative.
    pub lag_records: i64,
    /// Age of the newest record on the target while there is lag; 0 when caught up.
    pub lag_seconds: f64,
    pub stopped: bool,
}

/// Whether the flow is mirroring, and why not.
#[derive(Debug, Clone)]
pub struct Health {
    /// When the flow's event loop last published (it does every [`PUBLISH_EVERY`]).
    pub loop_at: Instant,
    /// Ok: mirroring; Err: why not (not started, a cluster failing, no producer).
    pub ready: Result<(), String>,
    /// Source and target reachable (for `mirrorproxy_cluster_up`).
    pub source_up: bool,
    pub target_up: bool,
    /// When the checkpoints were last current: written, or found to have nothing to
    /// write (None: not yet).
    pub checkpoint_at: Option<Instant>,
    /// Requests in flight now: Fetch to the source, Produce to the target.
    pub fetches_in_flight: usize,
    pub produces_in_flight: usize,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            loop_at: Instant::now(),
            ready: Err("starting".into()),
            source_up: false,
            target_up: false,
            checkpoint_at: None,
            fetches_in_flight: 0,
            produces_in_flight: 0,
        }
    }
}

/// Counters of one flow, read by the summary, `status` and the metrics endpoint.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// "source->target".
    pub flow: String,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    pub aborted_records: AtomicU64,
    pub control_batches: AtomicU64,
    pub provenance_skipped_records: AtomicU64,
    /// Source offsets lost to an out-of-range position (retention, truncation).
    pub lost_offsets: AtomicU64,
    /// Whether the flow writes and mirrors heartbeats ([`crate::heartbeat`]).
    pub heartbeats: bool,
    /// Timestamp (ms) of the newest heartbeat the target acknowledged; until one is,
    /// when the flow started (so that its age grows from the start when none arrives).
    pub heartbeat_ms: AtomicI64,
    /// Microseconds fetches waited for the source cluster's link throttle.
    pub throttled_us: AtomicU64,
    /// Group offset sync rounds per group that succeeded and failed.
    pub group_syncs_ok: AtomicU64,
    pub group_syncs_failed: AtomicU64,
    /// Per acknowledgement of a partition's batches: from the newest record's time to it.
    pub latency: LatencyHistogram,
    /// (side, Kafka error name) → how often.
    pub errors: Mutex<BTreeMap<(Side, String), u64>>,
    /// Swapped whole by each publish, so neither side holds the lock for longer than a
    /// pointer copy: a scrape of 10,000 partitions never holds up the flow's loop.
    pub partitions: Mutex<Arc<Vec<PartitionSnapshot>>>,
    pub health: Mutex<Health>,
}

impl FlowStats {
    #[must_use]
    pub fn new(flow: &str, heartbeats: bool) -> Self {
        Self {
            flow: flow.to_owned(),
            heartbeats,
            heartbeat_ms: AtomicI64::new(crate::checkpoint::now_ms()),
            ..Self::default()
        }
    }

    /// The partitions as of the last publish.
    #[must_use]
    pub fn partitions(&self) -> Arc<Vec<PartitionSnapshot>> {
        self.partitions.lock().unwrap().clone()
    }

    /// Counts one error on `side`, by its Kafka name (`NOT_LEADER_OR_FOLLOWER`).
    pub fn error(&self, side: Side, name: &str) {
        *self.errors.lock().unwrap().entry((side, name.to_owned())).or_default() += 1;
    }

    /// Counts a Kafka error code's error.
    pub fn kafka_error(&self, side: Side, e: ResponseError) {
        self.error(side, &crate::cluster::kafka_error_name(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names() {
        use crate::cluster::kafka_error_name;
        assert_eq!(kafka_error_name(ResponseError::NotLeaderOrFollower), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(kafka_error_name(ResponseError::OffsetOutOfRange), "OFFSET_OUT_OF_RANGE");
        assert_eq!(kafka_error_name(ResponseError::CorruptMessage), "CORRUPT_MESSAGE");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(1000));
        let (b, sum, count) = h.read();
        assert_eq!(count, 3);
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(b[0], 1, "0.5 ms <= 1 ms");
        assert_eq!(b[4], 1, "30 ms is above 25 ms");
        assert_eq!(b[5], 2, "30 ms <= 50 ms");
        assert_eq!(b[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(b[LATENCY_BUCKETS.len()], 3, "+Inf holds all");
        assert!((sum - 1000.0305).abs() < 1e-6, "{sum}");
    }
}
