//! The memory budget: bytes fetched from sources and not yet acknowledged by a target,
//! shared by every flow of the process.
//!
//! A Fetch is sent only when its `max_bytes` fits in what is left, so a slow target
//! slows fetching instead of growing memory. A [`Charge`] is the share of one Fetch
//! response; it goes back when the last batch that is a view of that response's buffer
//! is gone (acknowledged, skipped or dropped). A merged batch is new memory beside the
//! fetched batches it was made from (they stay queued until acknowledged): it is
//! charged with [`Budget::force`] for as long as its Produce request is outstanding.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
    /// Bytes of `limit` held back for memory the process holds outside the budget
    /// (per-partition state, connection buffers, what the allocator cannot give
    /// back), as the memory watcher (`cli::reclaim`) measures it; at most half the
    /// limit, so fetching slows but never stops on it.
    withheld: AtomicU64,
}

impl Budget {
    #[must_use]
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicU64::new(0), withheld: AtomicU64::new(0) })
    }

    /// Reserves up to `want` bytes (at least `min`), or nothing.
    pub(super) fn reserve(self: &Arc<Self>, want: u64, min: u64) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let free = self.lendable().saturating_sub(used);
            let take = want.min(free);
            if take < min {
                return None;
            }
            match self.used.compare_exchange(used, used + take, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Charge { budget: self.clone(), bytes: AtomicU64::new(take) }),
                Err(now) => used = now,
            }
        }
    }

    /// Charges `bytes` even beyond the limit: memory the engine has already allocated
    /// (a merged batch, built when it is sent) and holds until its Produce is answered.
    /// Counting it makes the next Fetch wait instead of memory growing past the budget.
    pub(super) fn force(self: &Arc<Self>, bytes: u64) -> Charge {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Charge { budget: self.clone(), bytes: AtomicU64::new(bytes) }
    }

    /// The most bytes it lends (`buffer_bytes`).
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Holds back `bytes` of the limit (at most half of it) for memory outside the
    /// budget; replaces what was held back before.
    pub fn withhold(&self, bytes: u64) {
        self.withheld.store(bytes.min(self.limit / 2), Ordering::Release);
    }

    /// Bytes of the limit held back now ([`Self::withhold`]).
    #[must_use]
    pub fn withheld(&self) -> u64 {
        self.withheld.load(Ordering::Acquire)
    }

    /// What Fetches may hold: the limit less what is held back.
    fn lendable(&self) -> u64 {
        self.limit - self.withheld()
    }

    /// Bytes in use now.
    #[must_use]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// A share of the budget; returned when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: AtomicU64,
}

impl Charge {
    /// Bytes it holds.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Returns what exceeds `bytes` to the budget now.
    pub(super) fn shrink_to(&mut self, bytes: u64) {
        let held = self.bytes.get_mut();
        let back = held.saturating_sub(bytes);
        self.budget.used.fetch_sub(back, Ordering::AcqRel);
        *held -= back;
    }

    /// Takes more bytes from the budget even beyond its limit: a broker may return one
    /// batch larger than the requested `max_bytes` (KIP-74), and that batch must be
    /// held; the queue entries made from a response are charged to it once they are
    /// known (shared by then, hence `&self`).
    pub(super) fn grow(&self, bytes: u64) {
        self.budget.used.fetch_add(bytes, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(*self.bytes.get_mut(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;
    use std::sync::Arc;

    #[test]
    fn every_charge_returns_what_it_took_including_growth_while_shared_and_forced_bytes() {
        let budget = Budget::new(1000);
        let mut c = budget.reserve(600, 100).unwrap();
        assert!(budget.reserve(500, 500).is_none(), "400 left");
        c.shrink_to(200);
        let shared = Arc::new(c);
        shared.grow(300); // queue entries, counted once the response is taken apart
        assert_eq!(budget.used(), 500);
        let merged = budget.force(900); // beyond the limit: already allocated
        assert_eq!(budget.used(), 1400);
        assert!(budget.reserve(1, 1).is_none(), "over the limit: no Fetch");
        drop(merged);
        let view = shared.clone();
        drop(shared);
        assert_eq!(budget.used(), 500, "a batch still holds the response");
        drop(view);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn withheld_bytes_are_not_lent_and_at_most_half_the_limit_is_withheld() {
        let budget = Budget::new(1000);
        budget.withhold(300);
        assert!(budget.reserve(800, 800).is_none(), "700 lendable");
        let c = budget.reserve(800, 100).unwrap();
        assert_eq!(c.bytes(), 700);
        drop(c);
        budget.withhold(10_000);
        assert_eq!(budget.withheld(), 500);
        assert_eq!(budget.reserve(800, 1).unwrap().bytes(), 500);
        budget.withhold(0);
        assert_eq!(budget.reserve(800, 1).unwrap().bytes(), 800);
    }
}
