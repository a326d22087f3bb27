//! The data side of a synthetic source: which batches each partition has, and when.
//!
//! Unbounded (rate 0), every partition is endless and every read answers with copies of
//! one pre-built batch, so the source costs next to nothing and the peer under test is
//! what the benchmark measures. At a rate, batches appear over time: the partitions take
//! turns, so that at many partitions the data arrives evenly rather than in one burst
//! per interval, and each batch's record keys carry the wall-clock microsecond it became
//! readable, so that the sink can measure end-to-end latency.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::batches::encode_batch;
use crate::Source;

/// Microseconds since the Unix epoch.
#[must_use]
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Batches kept for re-reads in rate mode (each is made once, with its own stamp).
const CACHED_BATCHES: usize = 4096;

pub(crate) struct Feed {
    pub(crate) spec: Source,
    /// Partitions the rate is spread over (the count the source started with).
    partitions: i32,
    pub(crate) template: Bytes,
    start: Instant,
    start_us: i64,
    cache: Mutex<BTreeMap<(i32, i64), Bytes>>,
}

impl Feed {
    pub(crate) fn new(spec: Source, partitions: i32) -> Self {
        Self {
            spec,
            partitions: partitions.max(1),
            template: encode_batch(spec.batch_records, spec.size, spec.codec, 0),
            start: Instant::now(),
            start_us: now_us(),
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn rated(&self) -> bool {
        self.spec.rate > 0.0
    }

    /// Seconds between two batches of one partition in rate mode.
    fn interval(&self) -> f64 {
        f64::from(self.spec.batch_records) * f64::from(self.partitions) / self.spec.rate
    }

    /// Offset (in intervals) of `partition`'s batches.
    fn phase(&self, partition: i32) -> f64 {
        f64::from(partition.max(0)) / f64::from(self.partitions)
    }

    /// Batches of `partition` readable now, or `i64::MAX` when unbounded.
    pub(crate) fn available(&self, partition: i32) -> i64 {
        if !self.rated() {
            return i64::MAX;
        }
        let made = (self.start.elapsed().as_secs_f64() / self.interval() - self.phase(partition)).max(0.0) as i64;
        if self.spec.batches > 0 {
            made.min(self.spec.batches)
        } else {
            made
        }
    }

    /// When the next batch of any partition becomes readable (rate mode).
    pub(crate) fn next_batch_at(&self) -> Instant {
        let turns = self.start.elapsed().as_secs_f64() / self.interval() * f64::from(self.partitions);
        let next = (turns.floor() + 1.0) / f64::from(self.partitions);
        self.start + Duration::try_from_secs_f64(next * self.interval()).unwrap_or(Duration::from_secs(1))
    }

    /// Batch `k` of `partition` (base offset 0: the caller patches it).
    pub(crate) fn batch(&self, partition: i32, k: i64) -> Bytes {
        if !self.rated() {
            return self.template.clone();
        }
        let mut cache = self.cache.lock().unwrap();
        if let Some(b) = cache.get(&(partition, k)) {
            return b.clone();
        }
        let ready_us = self.start_us + ((k as f64 + 1.0 + self.phase(partition)) * self.interval() * 1e6) as i64;
        let b = encode_batch(self.spec.batch_records, self.spec.size, self.spec.codec, ready_us);
        cache.insert((partition, k), b.clone());
        while cache.len() > CACHED_BATCHES {
            cache.pop_first();
        }
        b
    }
}
