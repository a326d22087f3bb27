//! Holding back transactional data until its fate is known.
//!
//! Only committed data may reach the target. Kafka marks the end of a transaction with
//! a control batch (COMMIT or ABORT) written after the data (KIP-98). A Fetch response
//! is supposed to list aborted transactions when asked for `read_committed`, but not
//! every broker does (tansu 0.6.0 never lists them), so this module relies on the
//! markers alone, which every broker writes.
//!
//! A partition's batches enter a stage in offset order. Non-transactional batches are
//! decided at once; a transactional batch waits for the marker of its producer id. Only
//! the decided prefix leaves the stage, so the target sees batches in source order —
//! the same order a `read_committed` consumer sees.
//!
//! Memory stays bounded: when undecided data exceeds the configured limit, the stage
//! drops what it holds, remembers where to rewind to, and the partition *scans* ahead
//! reading only control markers; once every open transaction has a known outcome, the
//! partition re-fetches from the rewind point and decides each batch from the recorded
//! outcomes. Slower, but neither loses nor duplicates data.
//!
//! Sans I/O and outside the engine because `offsets translate` replays the same
//! decisions over the source log to map offsets exactly (see [`crate::translate`]).

use std::collections::{HashMap, HashSet, VecDeque};

/// The outcome of a transaction, as told by its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Commit,
    Abort,
}

/// What the stage says about a batch that left it.
#[derive(Debug)]
pub enum Released<T> {
    Forward(T),
    Drop(T),
}

#[derive(Debug)]
enum Slot {
    Decided(Outcome),
    Waiting(i64),
}

/// Per-partition transaction stage. `T` is the batch type (kept generic for tests).
#[derive(Debug)]
pub struct TxnStage<T> {
    staged: VecDeque<(i64, usize, Slot, T)>,
    waiting_bytes: usize,
    limit: usize,
    /// Known outcomes: producer id → markers (offset, outcome), in offset order.
    outcomes: HashMap<i64, VecDeque<(i64, Outcome)>>,
    /// Set while scanning ahead for markers: where to rewind to.
    scan: Option<Scan>,
}

#[derive(Debug)]
struct Scan {
    rewind_to: i64,
    open: HashSet<i64>,
}

impl<T> TxnStage<T> {
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self { staged: VecDeque::new(), waiting_bytes: 0, limit, outcomes: HashMap::new(), scan: None }
    }

    /// True while the partition only looks for markers.
    #[must_use]
    pub fn scanning(&self) -> bool {
        self.scan.is_some()
    }

    /// Source offset of the oldest batch still held, if any.
    #[must_use]
    pub fn first_offset(&self) -> Option<i64> {
        self.staged.front().map(|(o, ..)| *o)
    }

    /// Number of batches held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    fn known_outcome(&self, producer_id: i64, offset: i64) -> Option<Outcome> {
        self.outcomes.get(&producer_id)?.iter().find(|(m, _)| *m > offset).map(|(_, o)| *o)
    }

    /// Adds a data batch at `offset` of `size` bytes; `producer_id` is `Some` for
    /// transactional batches.
    pub fn push(&mut self, offset: i64, size: usize, producer_id: Option<i64>, batch: T) {
        if let Some(scan) = &mut self.scan {
            if let Some(pid) = producer_id {
                if self.outcomes.get(&pid).is_none_or(|m| m.iter().all(|(mo, _)| *mo < offset)) {
                    scan.open.insert(pid);
                }
            }
            return; // dropped: it will be fetched again after the rewind
        }
        let slot = match producer_id {
            None => Slot::Decided(Outcome::Commit),
            Some(pid) => {
                if let Some(o) = self.known_outcome(pid, offset) {
                    Slot::Decided(o)
                } else {
                    self.waiting_bytes += size;
                    Slot::Waiting(pid)
                }
            }
        };
        self.staged.push_back((offset, size, slot, batch));
    }

    /// Records a transaction marker for `producer_id` at `offset`.
    pub fn marker(&mut self, producer_id: i64, offset: i64, outcome: Outcome) {
        let list = self.outcomes.entry(producer_id).or_default();
        if list.back().is_none_or(|(m, _)| *m < offset) {
            list.push_back((offset, outcome));
        }
        if let Some(scan) = &mut self.scan {
            scan.open.remove(&producer_id);
            return;
        }
        for (_, size, slot, _) in &mut self.staged {
            if matches!(slot, Slot::Waiting(p) if *p == producer_id) {
                *slot = Slot::Decided(outcome);
                self.waiting_bytes -= *size;
            }
        }
    }

    /// Takes the decided prefix out of the stage.
    pub fn release(&mut self) -> Vec<Released<T>> {
        // Sized once: a Fetch of small batches releases thousands at a time.
        let decided = self.staged.iter().take_while(|s| matches!(s.2, Slot::Decided(_))).count();
        let mut out = Vec::with_capacity(decided);
        while let Some((_, _, Slot::Decided(outcome), _)) = self.staged.front() {
            let outcome = *outcome;
            let (_, _, _, batch) = self.staged.pop_front().expect("front exists");
            out.push(match outcome {
                Outcome::Commit => Released::Forward(batch),
                Outcome::Abort => Released::Drop(batch),
            });
        }
        out
    }

    /// After a fetch response was processed: starts a scan when too much undecided data
    /// is held (returns the dropped batches), or ends a scan when every open transaction
    /// is decided (returns the offset to rewind the fetch position to).
    pub fn after_fetch(&mut self) -> (Vec<T>, Option<i64>) {
        if let Some(scan) = &self.scan {
            if scan.open.is_empty() {
                let rewind = scan.rewind_to;
                self.scan = None;
                return (Vec::new(), Some(rewind));
            }
            return (Vec::new(), None);
        }
        if self.waiting_bytes <= self.limit {
            return (Vec::new(), None);
        }
        let rewind_to = self.first_offset().unwrap_or(0);
        let mut open = HashSet::new();
        let mut dropped = Vec::new();
        for (_, _, slot, batch) in self.staged.drain(..) {
            if let Slot::Waiting(pid) = slot {
                open.insert(pid);
            }
            dropped.push(batch);
        }
        self.waiting_bytes = 0;
        self.scan = Some(Scan { rewind_to, open });
        (dropped, None)
    }

    /// Forgets markers that can no longer decide anything: those before `offset` when
    /// nothing older is held and no scan is under way.
    pub fn prune(&mut self, offset: i64) {
        if self.scan.is_some() {
            return;
        }
        let floor = self.first_offset().unwrap_or(offset).min(offset);
        self.outcomes.retain(|_, list| {
            while list.front().is_some_and(|(m, _)| *m < floor) {
                list.pop_front();
            }
            !list.is_empty()
        });
    }

    /// Drops everything (partition reset).
    pub fn clear(&mut self) -> Vec<T> {
        self.waiting_bytes = 0;
        self.scan = None;
        self.outcomes.clear();
        self.staged.drain(..).map(|(.., b)| b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: Vec<Released<u32>>) -> Vec<String> {
        r.into_iter()
            .map(|x| match x {
                Released::Forward(b) => format!("+{b}"),
                Released::Drop(b) => format!("-{b}"),
            })
            .collect()
    }

    #[test]
    fn order_is_kept_behind_an_open_transaction() {
        let mut s = TxnStage::new(1 << 20);
        s.push(0, 10, None, 0);
        s.push(1, 10, Some(7), 1);
        s.push(2, 10, None, 2); // another producer, after the open transaction
        assert_eq!(ids(s.release()), ["+0"]);
        s.marker(7, 3, Outcome::Commit);
        assert_eq!(ids(s.release()), ["+1", "+2"]);
    }

    #[test]
    fn aborted_data_is_dropped_and_interleaved_producers_resolve_separately() {
        let mut s = TxnStage::new(1 << 20);
        s.push(0, 10, Some(1), 0);
        s.push(1, 10, Some(2), 1);
        s.marker(2, 2, Outcome::Commit);
        assert!(s.release().is_empty(), "producer 1 still open at the head");
        s.marker(1, 3, Outcome::Abort);
        assert_eq!(ids(s.release()), ["-0", "+1"]);
    }

    #[test]
    fn overflow_scans_then_rewinds_and_decides_from_markers() {
        let mut s = TxnStage::new(15);
        s.push(10, 10, Some(1), 10);
        s.push(11, 10, Some(1), 11);
        let (dropped, rewind) = s.after_fetch();
        assert_eq!(dropped, vec![10, 11]);
        assert_eq!(rewind, None);
        assert!(s.scanning());
        s.push(12, 10, Some(1), 12);
        s.marker(1, 13, Outcome::Abort);
        let (_, rewind) = s.after_fetch();
        assert_eq!(rewind, Some(10));
        // replay: outcomes known, nothing waits
        for o in 10..=12 {
            s.push(o, 10, Some(1), o as u32);
        }
        assert_eq!(ids(s.release()), ["-10", "-11", "-12"]);
        // a later transaction of the same producer is not decided by the old marker
        s.push(14, 10, Some(1), 14);
        assert!(s.release().is_empty());
        s.marker(1, 15, Outcome::Commit);
        assert_eq!(ids(s.release()), ["+14"]);
        s.prune(16);
        assert!(s.outcomes.is_empty());
    }
}
