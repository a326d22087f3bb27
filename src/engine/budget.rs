//! The memory budget: bytes fetched from sources and not yet acknowledged by a target,
//! shared by every flow of the process.
//!
//! A Fetch is sent only when its `max_bytes` fits in what is left, so a slow target
//! slows fetching instead of growing memory. A [`Charge`] is the share of one Fetch
//! response; it goes back when the last batch that is a view of that response's buffer
//! is gone (acknowledged, skipped or dropped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    #[must_use]
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicU64::new(0) })
    }

    /// Reserves up to `want` bytes (at least `min`), or nothing.
    pub(super) fn reserve(self: &Arc<Self>, want: u64, min: u64) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let free = self.limit.saturating_sub(used);
            let take = want.min(free);
            if take < min {
                return None;
            }
            match self.used.compare_exchange(used, used + take, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Charge { budget: self.clone(), bytes: take }),
                Err(now) => used = now,
            }
        }
    }

    /// The most bytes it lends (`buffer_bytes`).
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.limit
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
    pub(super) bytes: u64,
}

impl Charge {
    /// Returns what exceeds `bytes` to the budget now.
    pub(super) fn shrink_to(&mut self, bytes: u64) {
        let back = self.bytes.saturating_sub(bytes);
        self.budget.used.fetch_sub(back, Ordering::AcqRel);
        self.bytes -= back;
    }

    /// Takes more bytes from the budget even beyond its limit: a broker may return one
    /// batch larger than the requested `max_bytes` (KIP-74), and that batch must be held.
    pub(super) fn grow(&mut self, bytes: u64) {
        self.budget.used.fetch_add(bytes, Ordering::AcqRel);
        self.bytes += bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
