//! Fetch sizes that follow the link to each source broker.
//!
//! One Fetch is outstanding per broker, so over a link of round trip `RTT` a partition
//! moves at most its `partition_max_bytes` per `RTT`: a long link needs large Fetches
//! (the bandwidth-delay product). Near the broker the same size costs: every fetched
//! byte is written by the kernel, read by CRC verification, and read again when it is
//! forwarded, and with 4 MiB per partition (8 MiB queued) the bytes had left the core's
//! cache between those passes. Measured on loopback (`bench run --modes isolation`,
//! 2026-12-05): 512 KiB per partition against 4 MiB, 100 B records merged 700 → 925-966
//! MB/s, 1 KB records passed through 1100 → 1420-1460 MB/s at a quarter less CPU per GB
//! and a fifth of the memory; the same 512 KiB over the bench's 200 Mbit/50 ms link
//! used 61 % of it against 87 % with 4 MiB.
//!
//! So the per-partition size is the configured `fetch_partition_max_bytes` scaled down
//! by the broker's measured round trip: [`PER_PARTITION_BYTES_PER_MS`] for each
//! millisecond, never below [`FLOOR_BYTES`] (nor above the configured size); a
//! partition holds at most twice its Fetch size queued. The round trip is the least of
//! the last [`WINDOW`] Fetches whose answer carried data, as BBR keeps its `min_rtt`: a
//! long poll that waited for data, or an answer handled late by a busy engine, only
//! ever adds to it. It counts the broker's reading too, so a broker slow to read (tansu
//! at 4 partitions of small batches: 512 KiB per partition from round trips of empty
//! answers had it mirror at 131-137 K records/s against 213-234 K) is treated as far
//! and asked for more. Until a first sample the configured size is used.
//!
//! The response size (`fetch_max_bytes`, 32 MiB) is not scaled: at 64 partitions a
//! response scaled the same way (1 MiB per millisecond, at least 4 MiB) moved 1 KB
//! records 44 % faster but at 18 % more CPU per GB, and lz4 batches with 540 against
//! 360 MB peak RSS.
//!
//! Kafka's consumer and replica fetcher use fixed sizes (`max.partition.fetch.bytes`,
//! `replica.fetch.max.bytes`: 1 MiB) and leave the long link to the operator.

use std::time::Duration;

/// Per partition and millisecond of round trip: 256 KiB, i.e. a partition can move
/// 256 MB/s over any link before its Fetch size, not the link, bounds it.
pub(super) const PER_PARTITION_BYTES_PER_MS: u64 = 256 << 10;

/// Smallest per-partition size the scaling gives: 512 KiB, the smallest measured
/// (above); over the 50 ms link 256 KiB used 44 % of it.
pub(super) const FLOOR_BYTES: u64 = 512 << 10;

/// How many recent round trips the link estimate looks at.
const WINDOW: usize = 16;

/// A broker's Fetch round trip: the least of its last [`WINDOW`] Fetches.
#[derive(Debug, Clone, Default)]
pub(super) struct FetchRtt {
    samples: [Duration; WINDOW],
    filled: usize,
    next: usize,
    /// The least of the samples, kept when one comes in (once per Fetch) rather than
    /// found again for every partition the scheduler looks at.
    min: Option<Duration>,
}

impl FetchRtt {
    /// The time one Fetch took, from sending it to its answer being handled.
    pub(super) fn sample(&mut self, rtt: Duration) {
        self.samples[self.next] = rtt;
        self.next = (self.next + 1) % WINDOW;
        self.filled = (self.filled + 1).min(WINDOW);
        self.min = self.samples[..self.filled].iter().min().copied();
    }

    /// The per-partition Fetch size for this broker, with `configured` the most.
    pub(super) fn partition_bytes(&self, configured: u32) -> i32 {
        let configured = u64::from(configured);
        let size = match self.min {
            None => configured,
            Some(rtt) => {
                let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                (PER_PARTITION_BYTES_PER_MS.saturating_mul(us) / 1000).clamp(FLOOR_BYTES.min(configured), configured)
            }
        };
        i32::try_from(size).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOUR_MIB: u32 = 4 << 20;

    #[test]
    fn unmeasured_brokers_get_the_configured_size() {
        assert_eq!(FetchRtt::default().partition_bytes(FOUR_MIB), 4 << 20);
    }

    #[test]
    fn near_brokers_get_the_floor_and_far_ones_the_configured_size() {
        let mut near = FetchRtt::default();
        near.sample(Duration::from_micros(300));
        assert_eq!(near.partition_bytes(FOUR_MIB), 512 << 10);
        let mut mid = FetchRtt::default();
        mid.sample(Duration::from_millis(5));
        assert_eq!(mid.partition_bytes(FOUR_MIB), 5 * (256 << 10));
        let mut far = FetchRtt::default();
        far.sample(Duration::from_millis(50));
        assert_eq!(far.partition_bytes(FOUR_MIB), 4 << 20);
        // A configured size below the floor is kept as it is.
        assert_eq!(near.partition_bytes(100_000), 100_000);
        assert_eq!(far.partition_bytes(100_000), 100_000);
    }

    #[test]
    fn the_least_recent_round_trip_counts() {
        let mut rtt = FetchRtt::default();
        rtt.sample(Duration::from_millis(8));
        // Long polls that waited, or answers handled late, do not raise it...
        rtt.sample(Duration::from_millis(500));
        rtt.sample(Duration::from_millis(80));
        assert_eq!(rtt.partition_bytes(u32::MAX >> 1), 8 * (256 << 10));
        // ...until the quick answer is out of the window: an idle broker whose every
        // Fetch waits is treated as far, which costs nothing while there is no data.
        for _ in 0..WINDOW {
            rtt.sample(Duration::from_millis(500));
        }
        assert_eq!(rtt.partition_bytes(FOUR_MIB), 4 << 20);
        rtt.sample(Duration::from_micros(200));
        assert_eq!(rtt.partition_bytes(FOUR_MIB), 512 << 10);
    }
}
