//! Keeps the process's resident memory under `buffer_bytes` plus a fixed headroom by
//! asking the allocator to hand freed pages back to the kernel when it nears that.
//!
//! The budget ([`crate::engine::budget`]) bounds the bytes the engine holds: fetched
//! batches not yet acknowledged, merged batches in flight. It cannot see memory the
//! engine has freed and the allocator keeps: mimalloc holds freed pages for its
//! `purge_delay` (1 s in v3) so that the next Fetch buffer reuses them without page
//! faults. With the budget full and buffers churning (lz4 batches of 600 bytes at 64
//! partitions, 200 MB/s) that kept memory put peak RSS 20-50 MB above
//! `buffer_bytes` + 64 MB (tools/bench/README.md, "Memory at 64 partitions"). Purging
//! on every free (`MIMALLOC_PURGE_DELAY=0`) bounds it but costs 10-45 % of the
//! throughput; this watcher purges only when it matters: it reads the resident size
//! every [`INTERVAL`] and, past the line, asks for a forced collection, which returns
//! every freed page to the kernel at once.
//!
//! A collection cannot return memory that is live outside the budget: per-partition
//! state (about 6 KB a partition, 60 MB at 10,000), connection buffers, the runtime.
//! When what stays resident after a collection is still close to the line, the
//! watcher holds that excess back from the budget ([`Budget::withhold`]), so Fetches
//! lend less and the bound holds; as the process falls well below the line again it
//! gives the bytes back, a little every look. The budget never drops below half its
//! limit this way, so fetching slows but never stops.
//!
//! The allocator call is handed in by the binary (`main.rs` owns the global
//! allocator), so the library stays free of allocator FFI.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::engine::Budget;

/// How often the resident size is read (one `read` of `/proc/self/status`, a few µs).
/// At 200 MB/s of churn the allocator keeps at most ~4 MB more between two looks.
pub const INTERVAL: Duration = Duration::from_millis(10);

/// Where the watcher asks for a collection: `buffer_bytes` plus this. The headroom of
/// the bound is 64 MB (issue #12, 61 MiB); the rest is room for a burst between two
/// looks (up to 17 MB seen at 10,000 partitions with lz4). At 52 MiB the peak was
/// 4-6 MB over the bound there; 44 MiB kept it under at no measured throughput cost.
pub const HEADROOM: u64 = 44 << 20;

/// After a collection, what stays resident above `line - TARGET_GAP` is held back
/// from the budget, so the next fill of the budget stops this far under the line.
const TARGET_GAP: u64 = 24 << 20;

/// Held-back bytes are given back only while the process is this far below the line,
/// [`RELAX_STEP`] per look (25 MB/s): slow enough that the budget refills over
/// seconds, not in one burst that overshoots.
const RELAX_BELOW: u64 = 40 << 20;
const RELAX_STEP: u64 = 256 << 10;

/// After a collection that left the process above the line (its live memory is there,
/// nothing freed to give back), the next one waits this long unless the resident size
/// has grown by [`REGROW`] since.
const BACKOFF: Duration = Duration::from_millis(200);
const REGROW: u64 = 8 << 20;

/// Starts the watcher thread for the life of the process. `collect` returns freed
/// memory to the kernel (mimalloc: `mi_collect(true)`). Where the resident size cannot
/// be read (not Linux), it logs that once at debug level and does nothing.
pub fn spawn(budget: Arc<Budget>, collect: fn()) {
    let line = budget.limit().saturating_add(HEADROOM);
    let spawned = std::thread::Builder::new().name("mp-reclaim".into()).spawn(move || watch(line, &budget, collect));
    if let Err(e) = spawned {
        tracing::warn!("memory watcher not started ({e}): resident memory may exceed buffer_bytes + 64 MB");
    }
}

fn watch(line: u64, budget: &Budget, collect: fn()) {
    let mut last: Option<(Instant, u64)> = None;
    loop {
        std::thread::sleep(INTERVAL);
        let Some(rss) = resident_bytes() else {
            debug!("memory watcher: no VmRSS in /proc/self/status; not watching");
            return;
        };
        let withheld = budget.withheld();
        if !should_collect(rss, line, last, Instant::now()) {
            let relaxed = relax(rss, line, withheld);
            if relaxed != withheld {
                budget.withhold(relaxed);
            }
            continue;
        }
        collect();
        let after = resident_bytes().unwrap_or(rss);
        budget.withhold(withhold_after(after, line, withheld));
        debug!(before = rss, after, withheld = budget.withheld(), "memory watcher: freed pages returned to the kernel");
        last = (after > line).then(|| (Instant::now(), after));
    }
}

/// Above the line, collect, unless the last collection could not get under it, was
/// less than [`BACKOFF`] ago, and the process has not grown by [`REGROW`] since.
fn should_collect(rss: u64, line: u64, last_stuck: Option<(Instant, u64)>, now: Instant) -> bool {
    if rss <= line {
        return false;
    }
    match last_stuck {
        Some((at, after)) => now.duration_since(at) >= BACKOFF || rss >= after.saturating_add(REGROW),
        None => true,
    }
}

/// What to hold back after a collection left `after` resident: more by what is above
/// `line - TARGET_GAP` (live memory the budget does not count), else unchanged.
fn withhold_after(after: u64, line: u64, withheld: u64) -> u64 {
    withheld.saturating_add(after.saturating_sub(line.saturating_sub(TARGET_GAP)))
}

/// What to hold back on a look that needed no collection: [`RELAX_STEP`] less while
/// the process is [`RELAX_BELOW`] under the line, else unchanged.
fn relax(rss: u64, line: u64, withheld: u64) -> u64 {
    if rss.saturating_add(RELAX_BELOW) < line {
        withheld.saturating_sub(RELAX_STEP)
    } else {
        withheld
    }
}

/// The resident set size (`VmRSS` of `/proc/self/status`, in kB there).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss(&status)
}

fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_above_the_line_only() {
        let now = Instant::now();
        assert!(!should_collect(100, 100, None, now));
        assert!(should_collect(101, 100, None, now));
    }

    #[test]
    fn a_collection_that_could_not_get_under_backs_off_unless_memory_grows() {
        let t0 = Instant::now();
        let stuck = Some((t0, 150 << 20));
        let line = 100 << 20;
        assert!(!should_collect(151 << 20, line, stuck, t0 + Duration::from_millis(20)));
        assert!(should_collect(151 << 20, line, stuck, t0 + BACKOFF));
        assert!(should_collect((150 << 20) + REGROW, line, stuck, t0 + Duration::from_millis(20)));
    }

    #[test]
    fn live_memory_left_after_a_collection_is_held_back_from_the_budget() {
        let line = 300 << 20;
        // Under the target after collecting: nothing more held back.
        assert_eq!(withhold_after(line - TARGET_GAP - 1, line, 0), 0);
        assert_eq!(withhold_after(line - TARGET_GAP, line, 5), 5);
        // 20 MiB above the line after collecting: that and the gap more.
        assert_eq!(withhold_after(line + (20 << 20), line, 1 << 20), (1 << 20) + (20 << 20) + TARGET_GAP);
    }

    #[test]
    fn held_back_bytes_return_slowly_and_only_well_below_the_line() {
        let line = 300 << 20;
        let withheld = 10 << 20;
        assert_eq!(relax(line - RELAX_BELOW, line, withheld), withheld, "not far enough below");
        assert_eq!(relax(line - RELAX_BELOW - 1, line, withheld), withheld - RELAX_STEP);
        assert_eq!(relax(0, line, RELAX_STEP / 2), 0);
    }

    #[test]
    fn vm_rss_is_read_in_kilobytes() {
        let status = "Name:\tmirrorproxy\nVmHWM:\t  350000 kB\nVmRSS:\t  123456 kB\nThreads:\t3\n";
        assert_eq!(vm_rss(status), Some(123_456 * 1024));
        assert_eq!(vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn the_resident_size_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().expect("VmRSS in /proc/self/status") > 0);
        }
    }
}
