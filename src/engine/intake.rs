//! A partition's fetched bytes taken apart: the source-side half of the partition state
//! machine ([`super::partition`]).
//!
//! Every batch of a Fetch answer is checked before anything of it is used: its offsets
//! against the request, the high watermark and the batch before it
//! ([`super::offsets`]), then its CRC-32C. A batch that fails is fetched once more and
//! stops the partition when it fails again; no position is ever taken from it. A
//! verified batch then meets loop prevention (the producer registry,
//! [`crate::registry::verdict`]), is stamped with provenance where the flow asks for it,
//! and is staged until its transaction's outcome is known ([`crate::txn`]). Released
//! batches are matched against what the target holds after a checkpoint (the crash
//! window) before they are queued for the produce path.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::budget::Charge;
use super::fetch_session::PartitionFetch;
use super::partition::{PartState, Pending, SendState};
use super::routes::Routes;
use super::{FlowStats, Side};
use crate::batch::provenance::Hop;
use crate::batch::{self, ControlType};
use crate::checkpoint::Fingerprint;
use crate::cluster::TopicPartition;
use crate::registry::{self, LoopGuard, Registry, Seen, Verdict};
use crate::txn::{Outcome, Released};

/// What the flow lends a partition while it takes a Fetch answer apart.
pub(super) struct Intake<'a> {
    pub(super) flow: &'a str,
    pub(super) registry: &'a Registry,
    pub(super) guard: LoopGuard<'a>,
    /// With `provenance = "header"`: the hop stamped on every forwarded batch.
    pub(super) provenance: Option<&'a Hop>,
    pub(super) routes: &'a mut Routes,
    /// The route of batches written by applications on the source.
    pub(super) origin_route: u32,
    /// Source of [`Pending::id`]s, unique within the flow.
    pub(super) next_id: &'a mut u64,
    /// Producer ids to look up with the next registry read.
    pub(super) lookups: &'a mut HashSet<i64>,
    pub(super) stats: &'a FlowStats,
    /// The budget share of the whole response the bytes came from.
    pub(super) charge: &'a Arc<Charge>,
}

impl PartState {
    /// Takes the bytes fetched for this partition at `requested_offset` apart (with the
    /// high watermark of the same answer) and stages them. Returns true when batches
    /// were queued for the target.
    pub(super) fn accept(
        &mut self,
        tp: &TopicPartition,
        records: Bytes,
        PartitionFetch { fetch_offset: requested_offset, partition_max_bytes: asked_bytes, .. }: PartitionFetch,
        high_watermark: i64,
        cx: &mut Intake<'_>,
    ) -> bool {
        let flow = cx.flow;
        let split = match batch::split_batches(records) {
            Ok(s) => s,
            Err(e) => {
                self.stop(flow, tp, Side::Source, format!("unreadable data at offset {requested_offset}: {e}"));
                return false;
            }
        };
        if split.batches.is_empty() && split.truncated_tail {
            // Not even one whole batch fits: ask for more next time. A Fetch scaled down
            // for its link (`super::link`) first grows to the configured size.
            let grown = if asked_bytes < self.partition_max_bytes {
                self.partition_max_bytes
            } else {
                asked_bytes.saturating_mul(2).min(1 << 30)
            };
            warn!(flow = %flow, partition = %tp, "a batch at offset {} is larger than the {asked_bytes} bytes asked for; retrying with {grown} bytes", self.fetch_offset);
            self.partition_max_bytes = grown;
            self.fetch_grown = true;
            return false;
        }
        let mut placement = super::offsets::OffsetCheck::new(requested_offset, self.fetch_at_batch_end, high_watermark)
            .contiguous(self.contiguous);
        for raw in split.batches {
            let h = *raw.header();
            if self.registry_wait {
                // Waiting from an earlier batch on: only collect the other new producer
                // ids of this response, so that one registry read answers for all of them
                // (a backlog written by many producers would otherwise trickle in).
                if let Ok(Seen::Unknown(id)) = cx.registry.seen(&h) {
                    cx.lookups.insert(id);
                }
                continue;
            }
            let checked = placement
                .check(&h)
                .map_err(|e| format!("corrupt batch (offsets), fetched at offset {requested_offset}: {e}"))
                .and_then(|()| raw.verify().map_err(|e| format!("corrupt batch at offset {}: {e}", h.base_offset)));
            let verified = match checked {
                Ok(v) => v,
                Err(why) => {
                    cx.stats.error(Side::Source, "CORRUPT_MESSAGE");
                    self.corrupt(flow, tp, &why);
                    break;
                }
            };
            let verified = if h.base_offset < self.fetch_offset && !h.is_control() {
                // A position inside a batch (a start offset; tansu's "latest" points
                // there): the records before it were not asked for.
                match verified.without_records_before(self.fetch_offset) {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        self.fetch_offset = h.next_offset();
                        self.fetch_at_batch_end = true;
                        continue;
                    }
                    Err(e) => {
                        let why = format!(
                            "cannot cut batch at offset {} at position {}: {e}",
                            h.base_offset, self.fetch_offset
                        );
                        self.stop(flow, tp, Side::Source, why);
                        return false;
                    }
                }
            } else {
                verified
            };
            let size = verified.bytes().len();
            if h.is_control() {
                cx.stats.control_batches.fetch_add(1, Ordering::Relaxed);
                match verified.control_type() {
                    Ok(Some(ControlType::Commit)) => self.stage.marker(h.producer_id, h.base_offset, Outcome::Commit),
                    Ok(Some(ControlType::Abort)) => self.stage.marker(h.producer_id, h.base_offset, Outcome::Abort),
                    Ok(_) => {}
                    Err(e) => {
                        let why = format!("unreadable control batch at offset {}: {e}", h.base_offset);
                        self.stop(flow, tp, Side::Source, why);
                        return false;
                    }
                }
            } else if !verified.is_empty() {
                // Loop prevention: skip what has been on the target cluster already.
                let route = match registry::verdict(cx.registry, &verified, &cx.guard) {
                    Verdict::ForwardFromOrigin => cx.origin_route,
                    Verdict::Forward(path) => cx.routes.intern(path),
                    Verdict::Skip(path) => {
                        debug!(flow = %flow, partition = %tp, offset = h.base_offset, path = %path, "batch has been on the target already: skipped");
                        cx.stats
                            .provenance_skipped_records
                            .fetch_add(u64::try_from(h.records_count).unwrap_or(0), Ordering::Relaxed);
                        self.fetch_offset = h.next_offset();
                        self.fetch_at_batch_end = true;
                        continue;
                    }
                    Verdict::Wait(id) => {
                        // Fetched again from this batch once the registry has been read.
                        cx.lookups.insert(id);
                        self.registry_wait = true;
                        continue;
                    }
                    Verdict::Stop(why) => {
                        let why = format!("batch at offset {}: {why}", h.base_offset);
                        if cx.registry.poisoned().is_some() {
                            // An unreadable registry was logged once, for the whole flow,
                            // when it was read (`on_registry_read`); a partition met later
                            // (a new topic, the heartbeats) stops without another error.
                            self.stopped.get_or_insert_with(|| format!("{}: {why}", Side::Source));
                        } else {
                            self.stop(flow, tp, Side::Source, why);
                        }
                        return false;
                    }
                };
                let verified = match cx.provenance {
                    None => verified,
                    Some(hop) => match hop.stamp(verified) {
                        Ok(v) => v,
                        Err(e) => {
                            let why = format!("cannot stamp provenance on the batch at offset {}: {e}", h.base_offset);
                            self.stop(flow, tp, Side::Source, why);
                            return false;
                        }
                    },
                };
                let first_offset = h.base_offset.max(self.fetch_offset);
                let pending = Pending {
                    id: *cx.next_id,
                    batch: verified,
                    route,
                    stamp: None,
                    state: SendState::Unsent,
                    first_offset,
                    group: 0,
                    _charge: cx.charge.clone(),
                };
                *cx.next_id += 1;
                self.stage.push(first_offset, size, h.is_transactional().then_some(h.producer_id), pending);
            }
            self.fetch_offset = h.next_offset();
            self.fetch_at_batch_end = true;
        }
        let mut queued = false;
        for released in self.stage.release() {
            match released {
                Released::Forward(pending) => {
                    let to_send =
                        if self.reconcile.is_empty() { vec![pending] } else { self.reconcile(flow, tp, pending) };
                    queued |= !to_send.is_empty();
                    for pending in to_send {
                        self.queue_bytes += pending.batch.bytes().len();
                        self.queue.push_back(pending);
                    }
                }
                Released::Drop(pending) => {
                    cx.stats
                        .aborted_records
                        .fetch_add(u64::try_from(pending.batch.header().records_count).unwrap_or(0), Ordering::Relaxed);
                }
            }
        }
        let (dropped, rewind) = self.stage.after_fetch();
        if !dropped.is_empty() {
            warn!(flow = %flow, partition = %tp, "open transaction holds more than transaction_buffer_bytes; scanning ahead for its end, then re-fetching");
        }
        if let Some(offset) = rewind {
            info!(flow = %flow, partition = %tp, "transaction outcomes known; re-fetching from {offset}");
            self.fetch_offset = offset;
            self.fetch_at_batch_end = false;
        }
        self.stage.prune(self.fetch_offset);
        queued
    }

    /// Crash window after a restart: is `pending` one of the batches found on the target
    /// after the checkpoint? Batches arrive in source order and ours appear on the target
    /// in the same order, so the first match (foreign batches in between are passed
    /// over) is the one. The first batch with no match ends the reconciliation.
    ///
    /// Returns what must still be sent: nothing when the batch (or, with re-batching, the
    /// run of batches merged into one target batch it belongs to) is on the target
    /// already; the batch, and any held before it, once the target holds something else
    /// from here on (reconciliation then ends).
    fn reconcile(&mut self, flow: &str, tp: &TopicPartition, pending: Pending) -> Vec<Pending> {
        let sent = Fingerprint::of(pending.batch.header());
        if self.held.is_empty() {
            let Some(i) = self.reconcile.iter().position(|t| {
                let on_target = Fingerprint::of(&t.header);
                on_target.matches(&sent) || on_target.begins_with(&sent)
            }) else {
                info!(flow = %flow, partition = %tp, "reconciled with the target: the rest of what follows the checkpoint was not on the target yet");
                self.reconcile.clear();
                return vec![pending];
            };
            self.reconcile.drain(..i); // batches of other writers in between
        }
        self.held.push(pending);
        let found = self.reconcile.front().expect("a matching batch").clone();
        let run: Vec<Fingerprint> = self.held.iter().map(|e| Fingerprint::of(e.batch.header())).collect();
        let on_target = Fingerprint::of(&found.header);
        match Fingerprint::merged(&run) {
            Some(m) if on_target.matches(&m) => {
                debug!(flow = %flow, partition = %tp, source_offset = self.held[0].base_offset(), target_offset = found.base_offset, batches = run.len(), "already on the target");
                self.reconcile.pop_front();
                self.target_next = Some(found.base_offset + i64::from(found.header.records_count));
                self.last_timestamp = self.last_timestamp.max(m.max_timestamp.unwrap_or(found.header.max_timestamp));
                self.held.clear();
                Vec::new()
            }
            Some(m) if on_target.begins_with(&m) => Vec::new(), // inside a merged batch: hold on
            _ => {
                info!(flow = %flow, partition = %tp, "reconciled with the target: the rest of what follows the checkpoint was not on the target yet");
                self.reconcile.clear();
                std::mem::take(&mut self.held)
            }
        }
    }
}
