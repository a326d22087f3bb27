//! State of one mirrored partition: its source position, staged transactional data,
//! the queue of batches waiting for or in Produce requests, and why it stopped.
//!
//! Positions advance only in order: a batch leaves the queue when it and every batch
//! before it are acknowledged, so a checkpoint never claims a batch the target might not
//! hold (KIP-98 idempotent sequences make resends safe).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::budget::Charge;
use super::fetch_session::PartitionFetch;
use super::routes::Sequences;
use super::txn::TxnStage;
use super::Side;
use crate::batch::{ProducerStamp, VerifiedBatch};
use crate::checkpoint::{Fingerprint, TailBatch};
use crate::cluster::TopicPartition;

/// A batch waiting for (or in) a Produce request.
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) batch: VerifiedBatch,
    /// The route (path, producer id) it is written under, see [`routes`].
    pub(super) route: u32,
    /// Stamp of the last send and the producer generation it belongs to; reused on
    /// retry so the broker can drop duplicates.
    pub(super) stamp: Option<(u64, ProducerStamp)>,
    pub(super) state: SendState,
    pub(super) first_offset: i64,
    /// With re-batching: how many queued batches, from this one on, went out as one
    /// merged target batch under the current stamps (a retry must resend the same run:
    /// the broker dedups by sequence range); 1 when it went alone. 0: not sent yet, or
    /// sent inside a run that an earlier batch opened.
    pub(super) group: usize,
    /// The budget share of the whole Fetch response this batch came from: the batch
    /// is a view of that response's buffer, which stays allocated until its last batch
    /// is gone, so the budget is returned then too (per-batch shares undercounted by
    /// the retained buffers when thousands of partitions drain unevenly).
    pub(super) _charge: Arc<Charge>,
}

/// Where a queued batch is in its life on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendState {
    Unsent,
    InFlight,
    /// Acknowledged at this target base offset (-1: not told). It leaves the queue
    /// when every batch before it has too: completions of pipelined requests can be
    /// handled out of order, but positions advance in order.
    Acked(i64),
}

impl Pending {
    /// First source offset this batch stands for: its base offset, or the position it
    /// was cut at when a start position fell inside it.
    pub(super) fn base_offset(&self) -> i64 {
        self.first_offset
    }
}

/// State of one mirrored partition (keyed by its source `TopicPartition`).
pub(super) struct PartState {
    pub(super) target: TopicPartition,
    pub(super) source_leader: Option<i32>,
    pub(super) source_leader_epoch: i32,
    pub(super) target_leader: Option<i32>,
    pub(super) fetch_offset: i64,
    /// True when `fetch_offset` is where a batch read before ended (no batch can
    /// start below it), false for a start position, which may be inside a batch.
    pub(super) fetch_at_batch_end: bool,
    /// The fetch offset at which a corrupt batch (CRC or offsets) was met: fetched once
    /// more, and the partition stops if it is corrupt again there.
    pub(super) corrupt_at: Option<i64>,
    pub(super) high_watermark: i64,
    pub(super) partition_max_bytes: i32,
    pub(super) fetch_not_before: Instant,
    pub(super) stage: TxnStage<Pending>,
    pub(super) queue: VecDeque<Pending>,
    /// Bytes of the batches in `queue` (kept, not summed: read on every schedule).
    pub(super) queue_bytes: usize,
    pub(super) in_flight: usize,
    /// Set after a produce error: no sends until in-flight requests drain.
    pub(super) recovering: bool,
    pub(super) produce_not_before: Instant,
    pub(super) produce_backoff: Duration,
    pub(super) next_sequence: Sequences,
    /// Route of the batches in flight: a partition switches routes only when none are.
    pub(super) in_flight_route: u32,
    /// A batch's producer id is being looked up in the source's registry; fetched
    /// again (from that batch) once the registry has been read.
    pub(super) registry_wait: bool,
    pub(super) stopped: Option<String>,
    /// Next target offset after the acknowledged data; None until known.
    pub(super) target_next: Option<i64>,
    /// Timestamp of the newest record on the target.
    pub(super) last_timestamp: i64,
    /// Mapping history written with each checkpoint.
    pub(super) points: Vec<(i64, i64)>,
    /// (source, target) of the last checkpoint written.
    pub(super) checkpointed: Option<(i64, i64)>,
    /// Batches found on the target after the checkpoint: batches the mirror would send
    /// are matched against them first and not sent again (crash window).
    pub(super) reconcile: VecDeque<TailBatch>,
    /// Batches that match the beginning of a merged batch on the target (re-batching)
    /// during reconciliation: known to be on the target once the whole run matched.
    pub(super) held: Vec<Pending>,
}

impl PartState {
    /// Index of the first batch not sent yet (after a failure, the failed one: batches
    /// are resent in order).
    pub(super) fn next_unsent(&self) -> Option<usize> {
        self.queue.iter().position(|e| e.state == SendState::Unsent)
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.queue_bytes
    }

    /// First source offset not yet on the target.
    pub(super) fn mirrored_position(&self) -> i64 {
        self.held
            .first()
            .or_else(|| self.queue.front())
            .map(Pending::base_offset)
            .or_else(|| self.stage.first_offset())
            .unwrap_or(self.fetch_offset)
    }
}

/// Crash window after a restart: is `pending` one of the batches found on the target
/// after the checkpoint? Batches arrive in source order and ours appear on the target in
/// the same order, so the first match (foreign batches in between are passed over) is
/// the one. The first batch with no match ends the reconciliation.
///
/// Matches a batch the mirror is about to send against the target's batches after the
/// checkpoint (crash window). Returns what must still be sent: nothing when the batch
/// (or, with re-batching, the run of batches merged into one target batch it belongs
/// to) is on the target already; the batch, and any held before it, once the target
/// holds something else from here on (reconciliation then ends).
pub(super) fn reconcile(flow: &str, tp: &TopicPartition, p: &mut PartState, pending: Pending) -> Vec<Pending> {
    let sent = Fingerprint::of(pending.batch.header());
    if p.held.is_empty() {
        let Some(i) = p.reconcile.iter().position(|t| {
            let on_target = Fingerprint::of(&t.header);
            on_target.matches(&sent) || on_target.begins_with(&sent)
        }) else {
            info!(flow = %flow, partition = %tp, "reconciled with the target: the rest of what follows the checkpoint was not on the target yet");
            p.reconcile.clear();
            return vec![pending];
        };
        p.reconcile.drain(..i); // batches of other writers in between
    }
    p.held.push(pending);
    let found = p.reconcile.front().expect("a matching batch").clone();
    let run: Vec<Fingerprint> = p.held.iter().map(|e| Fingerprint::of(e.batch.header())).collect();
    let on_target = Fingerprint::of(&found.header);
    match Fingerprint::merged(&run) {
        Some(m) if on_target.matches(&m) => {
            debug!(flow = %flow, partition = %tp, source_offset = p.held[0].base_offset(), target_offset = found.base_offset, batches = run.len(), "already on the target");
            p.reconcile.pop_front();
            p.target_next = Some(found.base_offset + i64::from(found.header.records_count));
            p.last_timestamp = p.last_timestamp.max(m.max_timestamp.unwrap_or(found.header.max_timestamp));
            p.held.clear();
            Vec::new()
        }
        Some(m) if on_target.begins_with(&m) => Vec::new(), // inside a merged batch: hold on
        _ => {
            info!(flow = %flow, partition = %tp, "reconciled with the target: the rest of what follows the checkpoint was not on the target yet");
            p.reconcile.clear();
            std::mem::take(&mut p.held)
        }
    }
}

/// What a partition asks of its source broker now (None: nothing), and whether that
/// can change by time alone (a backoff after an error), so it must be looked at again.
pub(super) fn fetch_state(p: &PartState, now: Instant, per_partition_cap: usize) -> (Option<PartitionFetch>, bool) {
    if p.stopped.is_some() || p.registry_wait {
        return (None, false); // a registry read marks it when done
    }
    if p.fetch_not_before > now {
        return (None, true);
    }
    if !p.stage.scanning() && p.queued_bytes() >= per_partition_cap {
        return (None, false); // the target is behind on this partition; acknowledgements wake it
    }
    let f = PartitionFetch {
        fetch_offset: p.fetch_offset,
        partition_max_bytes: p.partition_max_bytes,
        current_leader_epoch: p.source_leader_epoch,
    };
    (Some(f), false)
}

/// A batch failed its CRC or offset checks: fetch it once more (a flip on the wire is
/// gone the second time); corrupt again at the same position, stop the partition.
/// Nothing from the batch is used either way, so no position is taken from it.
pub(super) fn corrupt_batch(flow: &str, tp: &TopicPartition, p: &mut PartState, why: &str) {
    if p.corrupt_at == Some(p.fetch_offset) {
        stop_partition(flow, tp, p, Side::Source, format_args!("{why} (again when fetched a second time)"));
    } else {
        warn!(flow = %flow, side = "source", partition = %tp, retrying = true, "{why}; fetching it once more");
        p.corrupt_at = Some(p.fetch_offset);
    }
}

pub(super) fn stop_partition(flow: &str, tp: &TopicPartition, p: &mut PartState, side: Side, why: impl fmt::Display) {
    if p.stopped.is_none() {
        error!(flow = %flow, side = %side, partition = %tp, retrying = false, "partition stopped: {why}");
        p.stopped = Some(format!("{side}: {why}"));
    }
}
