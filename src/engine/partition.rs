//! The per-partition state machine: one mirrored partition's source position, staged
//! transactional data, the queue of batches waiting for or in Produce requests, its
//! checkpoint position and why it stopped.
//!
//! It is plain synchronous state. The flow's driver feeds it events (a fetched
//! response in [`super::intake`], an acknowledgement, a produce or fetch error) and
//! acts on what the methods return (count, refresh metadata, reset a producer); so every
//! decision here is unit-tested without sockets (`partition_tests.rs`).
//!
//! Positions advance only in order: a batch leaves the queue when it and every batch
//! before it are acknowledged, so a checkpoint never claims a batch the target might not
//! hold. A failed batch is resent, with its stamp, from the oldest unacknowledged one
//! once in-flight requests have answered (KIP-98 idempotent sequences let the broker drop
//! duplicates and refuse gaps).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use tracing::{debug, error, warn};

use super::budget::Charge;
use super::fetch_session::PartitionFetch;
use super::routes::Sequences;
use super::Side;
use crate::batch::{ProducerStamp, VerifiedBatch};
use crate::checkpoint::TailBatch;
use crate::cluster::TopicPartition;
use crate::config::{OnDataLoss, Tuning};
use crate::txn::TxnStage;

/// A batch waiting for (or in) a Produce request.
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) batch: VerifiedBatch,
    /// The route (path, producer id) it is written under, see [`super::routes`].
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
#[allow(clippy::struct_excessive_bools)] // independent facts of one partition
pub(super) struct PartState {
    pub(super) target: TopicPartition,
    pub(super) source_leader: Option<i32>,
    pub(super) source_leader_epoch: i32,
    pub(super) target_leader: Option<i32>,
    pub(super) fetch_offset: i64,
    /// True when `fetch_offset` is where a batch read before ended (no batch can
    /// start below it), false for a start position, which may be inside a batch.
    pub(super) fetch_at_batch_end: bool,
    /// The source topic is not compacted, so its log has no gaps (see
    /// [`super::offsets::OffsetCheck::contiguous`]).
    pub(super) contiguous: bool,
    /// The fetch offset at which a corrupt batch (CRC or offsets) was met: fetched once
    /// more, and the partition stops if it is corrupt again there.
    pub(super) corrupt_at: Option<i64>,
    pub(super) high_watermark: i64,
    /// The most this partition asks for in one Fetch: `fetch_partition_max_bytes`, or
    /// more once a batch larger than that was met ([`Self::fetch_grown`]).
    pub(super) partition_max_bytes: i32,
    /// A batch larger than the Fetch size was met: `partition_max_bytes` is asked for
    /// whatever the link (see [`super::link`]).
    pub(super) fetch_grown: bool,
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
    /// Records and bytes acknowledged by the target in this run (for metrics).
    pub(super) acked_records: u64,
    pub(super) acked_bytes: u64,
    /// How much this partition's compressed batches expand, learned from its merges:
    /// coalescing judges a compressed batch by its size uncompressed.
    pub(super) expansion: super::produce::Expansion,
}

/// Where a new partition starts.
pub(super) struct Start {
    pub(super) source_offset: i64,
    /// Why the partition cannot start (it is added stopped, so the summary names it).
    pub(super) stop: Option<String>,
    /// From a checkpoint: the target position, the target's batches after it (to be
    /// reconciled), the newest mirrored timestamp and the mapping history.
    pub(super) resume: Option<Resume>,
    /// The source topic is known not to be compacted.
    pub(super) contiguous: bool,
}

pub(super) struct Resume {
    /// True for a checkpoint written just now, before the partition's first batch.
    pub(super) fresh: bool,
    pub(super) target_offset: i64,
    pub(super) tail: Vec<TailBatch>,
    pub(super) last_timestamp: i64,
    pub(super) points: Vec<(i64, i64)>,
}

/// What an acknowledgement moved: the batches that left the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Acked {
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) batches: u64,
    /// The newest record timestamp of the batches acknowledged (0: none had one), for
    /// the latency histogram and heartbeats.
    pub(super) newest_timestamp: i64,
}

/// What the driver must do after a produce failure.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Failure {
    /// The batch went back to unsent: look at the partition's produce side again.
    pub(super) requeued: bool,
    /// It held the request slot: the partition's fetch state changed too.
    pub(super) opened: bool,
    pub(super) refresh_metadata: bool,
    /// The target lost this route's producer state: get a new producer id.
    pub(super) reset_producer: Option<u32>,
}

/// What the driver must do after a partition's Fetch error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FetchFailure {
    /// Retriable: refresh metadata, fetch again after a backoff.
    Retry,
    /// The position was out of range: this many offsets are lost to the mirror (the
    /// partition stopped, or continued where `on_data_loss` allows).
    Lost(u64),
    Stopped,
}

/// Errors on Produce that mean "the target lost or never had our producer state".
pub(super) fn is_producer_state_error(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::UnknownProducerId
            | ResponseError::InvalidProducerEpoch
            | ResponseError::OutOfOrderSequenceNumber
            | ResponseError::ProducerFenced
    )
}

/// Errors that a metadata refresh may fix.
pub(super) fn needs_metadata(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::NotLeaderOrFollower
            | ResponseError::LeaderNotAvailable
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::FencedLeaderEpoch
            | ResponseError::UnknownLeaderEpoch
            | ResponseError::NotController
            | ResponseError::KafkaStorageError
    )
}

impl PartState {
    /// A partition that starts at `start`, mirrored to `target`.
    pub(super) fn new(target: TopicPartition, start: Start, tuning: &Tuning, now: Instant) -> Self {
        let source_offset = start.source_offset;
        let (target_next, last_timestamp, points, checkpointed, reconcile) = match start.resume {
            Some(r) => (
                Some(r.target_offset),
                r.last_timestamp,
                r.points,
                Some((source_offset, r.target_offset)),
                r.tail.into(),
            ),
            None => (None, -1, Vec::new(), None, VecDeque::new()),
        };
        Self {
            target,
            source_leader: None,
            source_leader_epoch: -1,
            target_leader: None,
            fetch_offset: source_offset,
            fetch_at_batch_end: false,
            contiguous: start.contiguous,
            corrupt_at: None,
            high_watermark: source_offset,
            partition_max_bytes: tuning.fetch_partition_max_bytes as i32,
            fetch_grown: false,
            fetch_not_before: now,
            stage: TxnStage::new(tuning.transaction_buffer_bytes as usize),
            queue: VecDeque::new(),
            queue_bytes: 0,
            in_flight: 0,
            recovering: false,
            produce_not_before: now,
            produce_backoff: Tuning::ms(tuning.retry_backoff_ms),
            next_sequence: Sequences::default(),
            in_flight_route: 0,
            registry_wait: false,
            stopped: start.stop.map(|why| format!("{}: {why}", Side::Source)),
            target_next,
            last_timestamp,
            points,
            checkpointed,
            reconcile,
            held: Vec::new(),
            acked_records: 0,
            acked_bytes: 0,
            expansion: super::produce::Expansion::default(),
        }
    }

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

    /// Records on the source not yet on the target (never negative: tansu's high
    /// watermark can trail the end of the batch read last).
    pub(super) fn lag(&self) -> i64 {
        (self.high_watermark - self.mirrored_position()).max(0)
    }

    /// The (source, target) position a checkpoint would record now, if it moved since
    /// the last one written; None before the target position is known.
    pub(super) fn checkpoint_due(&self) -> Option<(i64, i64)> {
        let pos = (self.mirrored_position(), self.target_next?);
        (self.checkpointed != Some(pos)).then_some(pos)
    }

    /// The mapping history to write with a checkpoint: the points so far and the last
    /// position written.
    pub(super) fn checkpoint_points(&self) -> Vec<(i64, i64)> {
        let mut points = self.points.clone();
        if let Some(previous) = self.checkpointed {
            crate::checkpoint::push_point(&mut points, previous);
        }
        points
    }

    /// A checkpoint at `pos` is on the target.
    pub(super) fn checkpoint_written(&mut self, pos: (i64, i64)) {
        if let Some(previous) = self.checkpointed {
            crate::checkpoint::push_point(&mut self.points, previous);
        }
        self.checkpointed = Some(pos);
    }

    /// What the partition asks of its source broker now (None: nothing), and whether
    /// that can change by time alone (a backoff after an error), so it must be looked at
    /// again. `link_bytes` is the Fetch size for its broker's link ([`super::link`]); the
    /// partition holds at most twice what it asks for queued.
    pub(super) fn fetch_state(&self, now: Instant, link_bytes: i32) -> (Option<PartitionFetch>, bool) {
        if self.stopped.is_some() || self.registry_wait {
            return (None, false); // a registry read marks it when done
        }
        if self.fetch_not_before > now {
            return (None, true);
        }
        let size = if self.fetch_grown { self.partition_max_bytes } else { link_bytes.min(self.partition_max_bytes) };
        let cap = usize::try_from(size).unwrap_or(0).saturating_mul(2);
        if !self.stage.scanning() && self.queued_bytes() >= cap {
            return (None, false); // the target is behind on this partition; acknowledgements wake it
        }
        let f = PartitionFetch {
            fetch_offset: self.fetch_offset,
            partition_max_bytes: size,
            current_leader_epoch: self.source_leader_epoch,
        };
        (Some(f), false)
    }

    /// Stops the partition (the first reason wins): nothing is skipped, the rest of the
    /// flow goes on, and the summary keeps naming it.
    pub(super) fn stop(&mut self, flow: &str, tp: &TopicPartition, side: Side, why: impl fmt::Display) {
        if self.stopped.is_none() {
            error!(flow = %flow, side = %side, partition = %tp, retrying = false, "partition stopped: {why}");
            self.stopped = Some(format!("{side}: {why}"));
        }
    }

    /// A batch failed its CRC or offset checks: fetch it once more (a flip on the wire is
    /// gone the second time); corrupt again at the same position, stop the partition.
    /// Nothing from the batch is used either way, so no position is taken from it.
    pub(super) fn corrupt(&mut self, flow: &str, tp: &TopicPartition, why: &str) {
        if self.corrupt_at == Some(self.fetch_offset) {
            self.stop(flow, tp, Side::Source, format_args!("{why} (again when fetched a second time)"));
        } else {
            warn!(flow = %flow, side = "source", partition = %tp, retrying = true, "{why}; fetching it once more");
            self.corrupt_at = Some(self.fetch_offset);
        }
    }

    /// The Fetch for this partition failed with `e` (with the log start and high
    /// watermark of the same answer). An out-of-range position is data loss: it stops
    /// the partition, or continues past the loss where `on_data_loss` allows, logged as
    /// an error either way.
    pub(super) fn fetch_failed(
        &mut self,
        flow: &str,
        tp: &TopicPartition,
        e: ResponseError,
        (log_start, hwm): (i64, i64),
        on_data_loss: OnDataLoss,
        backoff_until: Instant,
    ) -> FetchFailure {
        if e == ResponseError::OffsetOutOfRange {
            let at = self.fetch_offset;
            let (to, what, lost) = if log_start >= 0 && at < log_start {
                (
                    log_start,
                    "the source deleted records the mirror had not copied yet (retention overtook it)",
                    log_start - at,
                )
            } else if hwm >= 0 && at > hwm {
                (hwm, "the source log is now shorter than the mirror's position (truncated, e.g. by an unclean leader election); the target may hold records the source no longer has", at - hwm)
            } else {
                let why = format!("fetch offset {at} is out of range and the broker gave no valid position (log start {log_start}, high watermark {hwm})");
                self.stop(flow, tp, Side::Source, why);
                return FetchFailure::Stopped;
            };
            match on_data_loss {
                OnDataLoss::Stop => {
                    let why = format!("fetch offset {at} is out of range: {what}; {lost} offsets are lost to the mirror (log start {log_start}, high watermark {hwm}); to accept the loss and continue at {to}, set on_data_loss = \"continue\" on the flow");
                    self.stop(flow, tp, Side::Source, why);
                }
                OnDataLoss::Continue => {
                    error!(flow = %flow, side = "source", partition = %tp, from = at, to, lost_offsets = lost, "DATA LOSS: fetch offset {at} is out of range: {what}; {lost} offsets lost; continuing at {to} (on_data_loss = \"continue\")");
                    self.fetch_offset = to;
                    self.fetch_at_batch_end = false;
                    drop(self.stage.clear());
                }
            }
            return FetchFailure::Lost(lost as u64);
        }
        if needs_metadata(e) || e.is_retriable() {
            debug!(flow = %flow, partition = %tp, "fetch error {e}, refreshing metadata");
            self.fetch_not_before = backoff_until;
            return FetchFailure::Retry;
        }
        self.stop(flow, tp, Side::Source, format!("Fetch failed with {e} (not retriable)"));
        FetchFailure::Stopped
    }

    /// The producer stamp of the queued batch `idx` for a send under `producer` of
    /// route generation `generation`: the one it was sent with before in this generation
    /// (a resend keeps its sequences), else the partition's next sequences.
    pub(super) fn stamp_for_send(&mut self, idx: usize, generation: u64, producer: (i64, i16)) -> ProducerStamp {
        let entry = &mut self.queue[idx];
        match entry.stamp {
            Some((g, s)) if g == generation => s,
            _ => {
                let s = next_stamp(self.next_sequence.of(entry.route), producer, &entry.batch);
                entry.stamp = Some((generation, s));
                s
            }
        }
    }

    /// The run of `run` queued batches from `idx` on goes out as one target batch (the
    /// first already stamped by [`Self::stamp_for_send`]): stamps the rest in queue
    /// order, marks them in flight, and returns per batch its id and the records before
    /// it in the target batch.
    pub(super) fn mark_sent(
        &mut self,
        idx: usize,
        run: usize,
        generation: u64,
        producer: (i64, i16),
    ) -> Vec<(u64, i64)> {
        let route = self.queue[idx].route;
        self.in_flight += 1;
        self.in_flight_route = route;
        let mut sent = Vec::with_capacity(run);
        let mut before = 0i64;
        for (k, entry) in self.queue.range_mut(idx..idx + run).enumerate() {
            if k > 0 && !matches!(entry.stamp, Some((g, _)) if g == generation) {
                // Its sequences follow the run's first batch (stamped in queue order).
                let s = next_stamp(self.next_sequence.of(route), producer, &entry.batch);
                entry.stamp = Some((generation, s));
            }
            entry.group = if k == 0 { run } else { 0 };
            entry.state = SendState::InFlight;
            sent.push((entry.id, before));
            before += i64::from(entry.batch.header().records_count);
        }
        sent
    }

    /// The target acknowledged batch `id` at `target_base_offset` (-1: not told).
    /// `opens`: the batch opened its target batch, which held the request slot. None when
    /// the batch is not in flight (answered twice).
    pub(super) fn acked(
        &mut self,
        flow: &str,
        tp: &TopicPartition,
        id: u64,
        target_base_offset: i64,
        opens: bool,
        base_backoff: Duration,
    ) -> Option<Acked> {
        let pos = self.queue.iter().position(|e| e.id == id)?;
        if self.queue[pos].state != SendState::InFlight {
            return None;
        }
        if opens {
            self.in_flight -= 1;
        }
        if self.queue.iter().take(pos).any(|e| e.state == SendState::Unsent) {
            // An earlier batch failed and waits to be resent, yet this later one was
            // written: a broker enforcing idempotent sequences refuses that.
            error!(flow = %flow, partition = %tp, "target acknowledged a batch ahead of a failed one: the target broker does not enforce idempotent sequences, order on the target may differ from the source");
        }
        self.queue[pos].state = SendState::Acked(target_base_offset);
        let mut acked = Acked::default();
        // Positions advance in order: pop every acknowledged batch at the front.
        while let Some(SendState::Acked(base)) = self.queue.front().map(|e| e.state) {
            let entry = self.queue.pop_front().expect("front exists");
            self.queue_bytes -= entry.batch.bytes().len();
            let h = entry.batch.header();
            if base >= 0 {
                self.target_next = Some(base + i64::from(h.records_count));
            } else {
                // DUPLICATE_SEQUENCE_NUMBER may come without an offset: count on from the last.
                self.target_next = self.target_next.map(|t| t + i64::from(h.records_count));
            }
            self.last_timestamp = self.last_timestamp.max(h.max_timestamp);
            acked.newest_timestamp = acked.newest_timestamp.max(h.max_timestamp);
            acked.records += u64::try_from(h.records_count).unwrap_or(0);
            acked.bytes += entry.batch.bytes().len() as u64;
            acked.batches += 1;
        }
        if self.queue.is_empty() && self.queue.capacity() > 4096 {
            // A backlog of small batches grew it; the budget charged its entries only
            // while they were queued (fetch.rs, PENDING_ENTRY_BYTES).
            self.queue.shrink_to(256);
        }
        self.acked_records += acked.records;
        self.acked_bytes += acked.bytes;
        self.produce_backoff = base_backoff;
        if self.recovering && self.in_flight == 0 {
            self.recovering = false;
        }
        Some(acked)
    }

    /// Batch `id` was not written: `error` is the broker's (None: no answer). `opens`:
    /// the batch opened its target batch; the error is handled once, there (the others
    /// of a merged run only go back to unsent, to be resent with it).
    pub(super) fn failed(
        &mut self,
        flow: &str,
        tp: &TopicPartition,
        id: u64,
        opens: bool,
        error: Option<(ResponseError, Option<&str>)>,
        (now, max_backoff): (Instant, Duration),
    ) -> Failure {
        let mut out = Failure::default();
        let Some(entry) = self.queue.iter_mut().find(|e| e.id == id) else { return out };
        if entry.state != SendState::InFlight {
            return out;
        }
        entry.state = SendState::Unsent; // resent, in order, once in-flight requests drain
        let offset = entry.base_offset();
        let route = entry.route;
        out.requeued = true;
        if !opens {
            return out;
        }
        self.in_flight -= 1;
        out.opened = true;
        if let Some((e, msg)) = &error {
            let detail = msg.map(|m| format!(" ({m})")).unwrap_or_default();
            let front = self.queue.front().is_some_and(|f| f.id == id);
            if is_producer_state_error(*e) {
                if front && !self.recovering {
                    warn!(flow = %flow, partition = %self.target, "target lost our producer state ({e}{detail}); getting a new producer id and resending from source offset {offset}");
                    out.reset_producer = Some(route);
                }
            } else if needs_metadata(*e) {
                debug!(flow = %flow, partition = %self.target, "produce error {e}; refreshing metadata");
                out.refresh_metadata = true;
            } else if !e.is_retriable() {
                let why = format!("target refused the batch at source offset {offset}: {e}{detail}");
                self.stop(flow, tp, Side::Target, why);
                return out;
            } else {
                debug!(flow = %flow, partition = %self.target, "retriable produce error {e}{detail}");
            }
        }
        self.recovering = self.in_flight > 0;
        self.produce_not_before = now + self.produce_backoff;
        self.produce_backoff = (self.produce_backoff * 2).min(max_backoff);
        out
    }

    /// The route's producer was replaced: its batches get new stamps from sequence 0,
    /// after what is in flight has answered.
    pub(super) fn producer_reset(&mut self, route: u32) {
        self.next_sequence.reset(route);
        if self.in_flight > 0 {
            self.recovering = true;
        }
    }
}

/// The producer stamp for the next batch of a partition: its records take the
/// sequence numbers from `next_sequence` on (wrapping at `i32::MAX`, as Kafka's do).
pub(super) fn next_stamp(
    next_sequence: &mut i32,
    (producer_id, producer_epoch): (i64, i16),
    batch: &VerifiedBatch,
) -> ProducerStamp {
    let stamp = ProducerStamp { producer_id, producer_epoch, base_sequence: *next_sequence };
    *next_sequence = next_sequence.wrapping_add(batch.header().records_count.max(1)) & i32::MAX;
    stamp
}

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;
