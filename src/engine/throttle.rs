//! Link throttling (`[clusters.X] max_bytes_per_second`): a token bucket in fetch
//! scheduling, shared by every flow that reads the cluster, for WAN links that must
//! not be saturated.
//!
//! Why at the fetch: every byte the proxy sends to a target was fetched first, and a
//! Fetch that is not sent costs nothing, while a Produce held back would hold memory.
//! A Fetch goes out while the bucket has tokens; its answer's bytes are taken out when
//! it arrives (the bucket may go below zero: the next Fetch waits until it refills).
//! Each Fetch asks for at most a tenth of a second's worth, so one answer cannot burst
//! far past the rate. The bucket holds at most a quarter second of tokens, so an idle
//! link does not save up a burst either. The time fetches waited is counted
//! (`mirrorproxy_throttled_seconds_total`). A config reload changes the rate in place
//! ([`Throttle::set_rate`]), so flows keep running.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One cluster's bucket.
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Throttle {
    #[must_use]
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second as f64;
        Self { state: Mutex::new(State { rate, tokens: Self::capacity_of(rate), at: Instant::now() }) }
    }

    /// A new rate from a reloaded config; tokens saved up above the new cap are dropped.
    pub fn set_rate(&self, bytes_per_second: u64) {
        let mut s = self.state.lock().unwrap();
        s.rate = bytes_per_second as f64;
        s.tokens = s.tokens.min(Self::capacity_of(s.rate));
    }

    fn capacity_of(rate: f64) -> f64 {
        rate / 4.0
    }

    /// The largest `max_bytes` a Fetch should ask for: a tenth of a second at the rate,
    /// at least 16 KiB (a batch must fit; a larger one still comes, KIP-74).
    #[must_use]
    pub fn max_fetch_bytes(&self) -> u64 {
        ((self.state.lock().unwrap().rate / 10.0) as u64).max(16 << 10)
    }

    /// Whether a Fetch may go out now; None when it may, else how long until it may.
    pub fn check(&self, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock().unwrap();
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.rate).min(Self::capacity_of(s.rate));
        s.at = now.max(s.at);
        if s.tokens > 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-s.tokens / s.rate))
        }
    }

    /// `bytes` arrived: take them out.
    pub fn consume(&self, bytes: u64) {
        self.state.lock().unwrap().tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate_and_caps_bursts() {
        let t = Throttle::new(1_000_000);
        let t0 = Instant::now();
        assert_eq!(t.check(t0), None, "starts with a quarter second of tokens");
        t.consume(750_000); // 250 KB of tokens, 750 KB taken: 500 KB short
        let wait = t.check(t0).expect("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
        assert!(t.check(t0 + Duration::from_millis(400)).is_some());
        assert_eq!(t.check(t0 + Duration::from_millis(600)), None);
        // A long idle time saves up at most a quarter second.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(t.check(later), None);
        t.consume(250_001);
        assert!(t.check(later).is_some(), "the cap is 250,000 bytes");
        assert_eq!(t.max_fetch_bytes(), 100_000);
        assert_eq!(Throttle::new(2048).max_fetch_bytes(), 16 << 10);
        // A reload halves the rate: the cap and the refill follow.
        t.set_rate(500_000);
        assert_eq!(t.max_fetch_bytes(), 50_000);
        let t1 = later + Duration::from_secs(10);
        assert_eq!(t.check(t1), None);
        t.consume(125_000 + 250_000);
        let wait = t.check(t1).expect("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
    }
}
