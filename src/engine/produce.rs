//! The produce path: picks the partitions whose next batch can go now, stamps it with
//! its route's producer id and the partition's next sequence (KIP-98), merges runs of
//! small batches (coalescing, on by default; of all batches with re-batching), groups
//! one batch per partition per request, and handles the answers: in-order
//! acknowledgement, resend from the oldest unacknowledged batch after an error, a new
//! producer id when the target lost ours.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ProduceResponse;
use tracing::{info, warn};

use super::partition::{PartState, SendState};
use super::{Event, FastMap, FlowDriver, Side};
use crate::batch::{self, OutgoingBatch, VerifiedBatch};
use crate::cluster::TopicPartition;
use crate::config::Tuning;
use crate::net::NetError;
use crate::registry;
use crate::wire::produce::{PartitionRecords, ProduceFields, TopicRecords};

impl FlowDriver {
    pub(super) fn schedule_produces(&mut self) {
        let now = Instant::now();
        let max_in_flight = self.tuning.max_in_flight_per_partition as usize;
        if self.target_brokers.iter().all(|b| self.producing.get(b).copied().unwrap_or(0) >= max_in_flight) {
            return; // every target broker has as many requests outstanding as allowed
        }
        // Which brokers can take a request now.
        let mut brokers: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        let mut candidates = std::collections::BTreeSet::new();
        let mut unready = HashSet::new();
        let routes = &self.routes;
        let mut consider = |tp: &TopicPartition, p: &PartState| {
            let Some(leader) = p.target_leader else { return };
            if p.stopped.is_some() || p.recovering || p.in_flight >= max_in_flight {
                return; // until an event about this partition (or the next full look)
            }
            let Some(route) = p.next_unsent().map(|i| p.queue[i].route) else { return };
            if p.in_flight > 0 && p.in_flight_route != route {
                return; // another producer's batches in flight: the broker orders only one's
            }
            if routes.get(route).producer.is_none() {
                unready.insert(route);
                return; // its producer's registration wakes it
            }
            candidates.insert(tp.clone());
            if p.produce_not_before <= now {
                brokers.entry(leader).or_default().push(tp.clone());
            }
        };
        if std::mem::take(&mut self.produce_scan_all) {
            // In map order, without a lookup per partition: at 10,000 partitions this
            // runs every poll tick.
            for (tp, p) in &self.parts {
                consider(tp, p);
            }
        } else {
            for tp in std::mem::take(&mut self.produce_candidates) {
                if let Some(p) = self.parts.get(&tp) {
                    consider(&tp, p);
                }
            }
        }
        self.produce_candidates = candidates;
        for route in unready {
            self.request_producer(route, Duration::ZERO);
        }
        for (broker, tps) in brokers {
            if self.producing.get(&broker).copied().unwrap_or(0) >= max_in_flight {
                continue;
            }
            let conn = match self.target_conns.get(&broker) {
                Some(c) if !c.is_poisoned() => c.clone(),
                _ => {
                    self.target_conns.remove(&broker);
                    if self.connecting.insert(broker) {
                        let target = self.target.clone();
                        self.tasks.push(Box::pin(async move {
                            Event::TargetConnected { broker, result: target.broker(broker).await }
                        }));
                    }
                    continue;
                }
            };
            let mut topics: BTreeMap<Arc<str>, Vec<(i32, OutgoingBatch)>> = BTreeMap::new();
            let mut sent = Vec::new();
            let mut request_bytes = 0usize;
            let mut merged_bytes = 0u64; // new memory this request holds (see budget.rs)
            for tp in tps {
                let p = self.parts.get_mut(&tp).expect("partition exists");
                let max_message = self.target_topics.get(&*tp.topic).and_then(|t| t.max_message_bytes);
                let Some(idx) = p.next_unsent() else { continue };
                let route = p.queue[idx].route;
                let r = self.routes.get(route);
                let Some(producer) = r.producer else { continue };
                let generation = r.generation;
                let run = match &self.flow.rebatch {
                    Some(r) => merge_run(p, idx, r, generation, max_message),
                    None => 1,
                };
                let stamp = p.stamp_for_send(idx, generation, producer);
                let source_offset = p.queue[idx].base_offset();
                let mut run = run;
                let mut prepared = None;
                if run > 1 {
                    let r = self.flow.rebatch.expect("runs are longer than 1 only with re-batching");
                    let batches: Vec<&VerifiedBatch> = p.queue.range(idx..idx + run).map(|e| &e.batch).collect();
                    let merged =
                        batch::merge::merge(&batches, stamp, batch::merge::target_codec(batches[0], r.compression));
                    if let Ok(m) = &merged {
                        p.expansion.learn(&batches, m.plain_bytes);
                    }
                    let merged = merged.map(|m| m.batch);
                    if merged.as_ref().is_ok_and(|m| max_message.is_some_and(|max| m.len() > max)) {
                        run = 1; // larger than the target takes (a codec that compresses less): send it alone
                    } else {
                        prepared = Some(merged);
                    }
                }
                let merged = prepared.is_some();
                let prepared = prepared.unwrap_or_else(|| p.queue[idx].batch.clone().into_outgoing(stamp));
                let outgoing = match prepared {
                    Ok(o) => o,
                    Err(e) => {
                        let why =
                            format!("batch at source offset {source_offset} cannot be prepared for the target: {e}");
                        p.stop(&self.flow.name, &tp, Side::Source, why);
                        continue;
                    }
                };
                if let Some(max) = max_message {
                    if outgoing.len() > max {
                        let why = format!(
                            "batch at source offset {source_offset} is {} bytes, larger than max.message.bytes={max} of target topic '{}'; raise it on the target topic",
                            outgoing.len(),
                            p.target.topic
                        );
                        p.stop(&self.flow.name, &tp, Side::Target, why);
                        continue;
                    }
                }
                if request_bytes > 0 && request_bytes + outgoing.len() > self.tuning.produce_max_bytes as usize {
                    // Undo the stamp's sequence only if it was fresh: simpler to keep it (the
                    // batch is sent next time with the same stamp, which is still in order).
                    break;
                }
                request_bytes += outgoing.len();
                if merged {
                    merged_bytes += outgoing.len() as u64;
                }
                for (id, before) in p.mark_sent(idx, run, generation, producer) {
                    sent.push((tp.clone(), id, before));
                }
                topics.entry(p.target.topic.clone()).or_default().push((p.target.partition, outgoing));
            }
            if sent.is_empty() {
                continue;
            }
            let fields = ProduceFields {
                transactional_id: None,
                acks: self.tuning.acks,
                timeout_ms: self.tuning.request_timeout_ms.min(i32::MAX as u64) as i32,
            };
            let topics: Vec<TopicRecords<'_>> = topics
                .iter()
                .map(|(t, ps)| TopicRecords {
                    name: t,
                    partitions: ps
                        .iter()
                        .map(|(partition, b)| PartitionRecords {
                            partition: *partition,
                            head: b.head(),
                            body: b.body().clone(),
                        })
                        .collect(),
                })
                .collect();
            *self.producing.entry(broker).or_default() += 1;
            let charge = (merged_bytes > 0).then(|| self.budget.force(merged_bytes));
            match conn.send_produce(&fields, &topics) {
                Ok(fut) => {
                    self.tasks.push(Box::pin(async move {
                        let result = fut.await;
                        drop(charge); // the merged batches' bytes are freed with the request
                        Event::Produced { broker, sent, result }
                    }));
                }
                Err(e) => self.tasks.push(Box::pin(async move { Event::Produced { broker, sent, result: Err(e) } })),
            }
        }
    }

    /// Obtains a producer id for `route` and registers it with the route's path on the
    /// target before anything is written with it; after `delay` (a retry).
    pub(super) fn request_producer(&mut self, route: u32, delay: Duration) {
        let r = self.routes.get_mut(route);
        if r.requested || r.producer.is_some() {
            return;
        }
        r.requested = true;
        let (target, topic, path, flow) =
            (self.target.clone(), self.tuning.registry_topic.clone(), r.path.clone(), self.flow.name.clone());
        self.tasks.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            let result = async {
                let asked = Instant::now();
                let (id, epoch) =
                    target.init_producer_id().await.map_err(|e| format!("cannot get a producer id: {e}"))?;
                let got = asked.elapsed();
                registry::register(&target, &topic, id, &path, &flow)
                    .await
                    .map_err(|e| format!("cannot register producer id {id} in the producer registry: {e}"))?;
                tracing::debug!(flow = %flow, producer_id = id, "producer id in {got:?}, registered in {:?}", asked.elapsed().saturating_sub(got));
                Ok((id, epoch))
            }
            .await;
            Event::ProducerReady { route, result }
        }));
    }

    pub(super) fn on_producer_ready(&mut self, route: u32, result: Result<(i64, i16), String>) {
        self.produce_scan_all = true;
        match result {
            Ok((id, epoch)) => {
                info!(flow = %self.flow.name, producer_id = id, producer_epoch = epoch, path = %self.routes.get(route).path, "idempotent producer registered and ready on target cluster '{}'", self.target.alias());
                self.routes.ready(route, (id, epoch));
                for p in self.parts.values_mut() {
                    p.next_sequence.reset(route);
                }
            }
            Err(e) => {
                self.target_unreachable(&e);
                self.routes.get_mut(route).requested = false;
                self.request_producer(route, Tuning::ms(self.tuning.retry_backoff_max_ms));
            }
        }
    }

    /// `opens`: the batch opened its target batch, which held the request slot.
    fn produce_acked(&mut self, tp: &TopicPartition, id: u64, target_base_offset: i64, opens: bool) {
        let Some(p) = self.parts.get_mut(tp) else { return };
        let base_backoff = Tuning::ms(self.tuning.retry_backoff_ms);
        let Some(acked) = p.acked(&self.flow.name, tp, id, target_base_offset, opens, base_backoff) else { return };
        self.produce_candidates.insert(tp.clone());
        self.fetch_dirty.insert(tp.clone()); // its queue shrinks: it may fetch again
        self.stats.records.fetch_add(acked.records, Ordering::Relaxed);
        self.stats.bytes.fetch_add(acked.bytes, Ordering::Relaxed);
        self.stats.batches.fetch_add(acked.batches, Ordering::Relaxed);
        if acked.newest_timestamp > 0 {
            if self.flow.heartbeat_topic.as_deref() == Some(&*tp.topic) {
                self.stats.heartbeat_ms.fetch_max(acked.newest_timestamp, Ordering::Relaxed);
            }
            // One observation per acknowledgement: from the newest record's time (create
            // or log-append) to now. Per batch would cost an allocation per ack on the
            // hot path for little more (a Produce answer covers a run of small batches).
            let now_ms = crate::checkpoint::now_ms();
            let ms = u64::try_from(now_ms - acked.newest_timestamp).unwrap_or(0);
            self.stats.latency.observe(Duration::from_millis(ms));
        }
    }

    fn produce_failed(
        &mut self,
        tp: &TopicPartition,
        id: u64,
        opens: bool,
        error: Option<(ResponseError, Option<&str>)>,
    ) {
        let Some(p) = self.parts.get_mut(tp) else { return };
        let backoff = (Instant::now(), Tuning::ms(self.tuning.retry_backoff_max_ms));
        let failure = p.failed(&self.flow.name, tp, id, opens, error, backoff);
        if failure.requeued {
            self.produce_candidates.insert(tp.clone());
        }
        if failure.opened {
            self.fetch_dirty.insert(tp.clone());
        }
        if failure.refresh_metadata {
            self.discover_now = true;
        }
        if let Some(route) = failure.reset_producer {
            self.reset_producer(route);
        }
    }

    /// Drops a route's producer id; a new one is requested and every unacknowledged
    /// batch of the route gets a new stamp from sequence 0 when it is sent again.
    fn reset_producer(&mut self, route: u32) {
        if !self.routes.reset(route) {
            return;
        }
        self.produce_scan_all = true;
        for p in self.parts.values_mut() {
            p.producer_reset(route);
        }
    }

    pub(super) fn on_produced(
        &mut self,
        broker: i32,
        sent: Vec<(TopicPartition, u64, i64)>,
        result: Result<ProduceResponse, NetError>,
    ) {
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.stats.error(Side::Target, e.kafka_name());
                self.target_unreachable(&e.to_string());
                self.target_conns.remove(&broker);
                self.discover_now = true;
                for (tp, id, before) in sent {
                    self.produce_failed(&tp, id, before == 0, None);
                }
                return;
            }
        };
        // One entry per answered partition, borrowed from the response: this runs for
        // every Produce answer, and owned String keys (four allocations and six SipHash
        // passes per batch) were 8 % of the proxy's CPU at 16 KB batches.
        let mut answers: FastMap<(&str, i32), Answer<'_>> =
            FastMap::with_capacity_and_hasher(sent.len(), foldhash::fast::RandomState::default());
        for t in &resp.responses {
            for pr in &t.partition_responses {
                let error = ResponseError::try_from_code(pr.error_code)
                    .filter(|e| *e != ResponseError::DuplicateSequenceNumber);
                if let Some(e) = error {
                    self.stats.kafka_error(Side::Target, e);
                }
                let a = answers.entry((t.name.0.as_str(), pr.index)).or_default();
                a.base_offset = pr.base_offset; // a partition answered twice: the last base, any error
                if let Some(e) = error {
                    a.error = Some((e, pr.error_message.as_deref()));
                }
            }
        }
        let mut any_ok = false;
        for (tp, id, before) in sent {
            let Some(p) = self.parts.get(&tp) else { continue };
            let answer = answers.get(&(&*p.target.topic, p.target.partition)).copied();
            let opens = before == 0;
            match answer {
                None => {
                    if opens {
                        let flow = self.flow.name.clone();
                        warn!(flow = %flow, partition = %tp, "target did not answer for partition {}; retrying", p.target);
                    }
                    self.produce_failed(&tp, id, opens, None);
                }
                Some(Answer { error: Some(error), .. }) => self.produce_failed(&tp, id, opens, Some(error)),
                Some(Answer { error: None, base_offset }) => {
                    any_ok = true;
                    let base = base_offset;
                    self.produce_acked(&tp, id, if base >= 0 { base + before } else { -1 }, opens);
                }
            }
        }
        if any_ok {
            self.target_ok();
        }
    }
}

/// A partition's entry in a Produce answer.
#[derive(Debug, Clone, Copy)]
struct Answer<'a> {
    /// Where the batch landed (`-1` when the target does not say).
    base_offset: i64,
    /// The error and the broker's message, if the write failed (a duplicate sequence
    /// is not one: the batch was already written).
    error: Option<(ResponseError, Option<&'a str>)>,
}

impl Default for Answer<'_> {
    fn default() -> Self {
        Self { base_offset: -1, error: None }
    }
}

/// How many queued batches, from `idx` on, go out as one target batch (re-batching, or
/// coalescing, which takes only batches below its size and keeps their codec). A
/// run already sent under the current producer stamps is resent as it was; otherwise
/// consecutive unsent batches are taken while they can merge and stay within the size
/// limits (source bytes; the target's max.message.bytes is checked on the result).
pub(super) fn merge_run(
    p: &mut PartState,
    idx: usize,
    r: &crate::config::Rebatch,
    generation: u64,
    max_message: Option<usize>,
) -> usize {
    let first = &p.queue[idx];
    if matches!(first.stamp, Some((g, _)) if g == generation) && first.group > 0 {
        return first.group;
    }
    let expansion = &p.expansion;
    let small = |b: &VerifiedBatch| r.small_below.is_none_or(|below| expansion.is_small(b, below));
    if !batch::merge::mergeable(&first.batch) || !small(&first.batch) {
        if r.small_below.is_some() && batch::merge::mergeable(&first.batch) {
            p.expansion.passed_whole();
        }
        return 1;
    }
    let limit = max_message.map_or(r.max_bytes, |m| r.max_bytes.min(m.saturating_sub(1024)));
    let mut bytes = first.batch.bytes().len();
    let mut run = 1;
    for next in p.queue.range(idx + 1..) {
        let fresh = !matches!(next.stamp, Some((g, _)) if g == generation);
        if next.state != SendState::Unsent
            || !fresh
            || next.route != first.route
            || !batch::merge::mergeable(&next.batch)
            || !small(&next.batch)
            || (r.compression.is_none() && !batch::merge::same_codec(&first.batch, &next.batch))
            || bytes + next.batch.bytes().len() > limit
        {
            break;
        }
        bytes += next.batch.bytes().len();
        run += 1;
    }
    run
}

/// What a partition has learned about how much its compressed batches expand.
///
/// Coalescing pays where a batch's fixed costs (a header, a CRC, one Produce
/// partition entry, the broker's per-batch work) are large beside its records. A
/// compressed batch's bytes hide how many records it holds: 600 bytes of lz4 can be
/// 16 KiB of records, and merging those means decompressing and compressing 16 KiB
/// again to save one header (measured: 1 KB lz4 records, 16 to a batch, fell from 2.2 M
/// to 1.0 M records/s when merged by their compressed size). So a compressed batch is
/// judged by its estimated size uncompressed: its bytes times the expansion of the
/// partition's last merge. Until a merge has taught it (and again after
/// [`Self::RELEARN_AFTER`] batches passed through whole, in case the data changed) the
/// estimate is the compressed size, so one run is merged to learn from.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Expansion {
    /// Uncompressed bytes per compressed record byte, from the last merge of
    /// compressed batches.
    ratio: Option<f64>,
    /// Compressed batches sent whole since that merge.
    passed: u32,
}

impl Expansion {
    pub(super) const RELEARN_AFTER: u32 = 4096;

    /// The batch's size with its records uncompressed, as far as known.
    pub(super) fn plain_size(&self, b: &VerifiedBatch) -> usize {
        let len = b.bytes().len();
        match (b.header().compression(), self.ratio) {
            (Ok(batch::Compression::None) | Err(_), _) | (_, None) => len,
            (Ok(_), Some(ratio)) => {
                let records = b.records_data().len();
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
                let plain = (records as f64 * ratio) as usize;
                len - records + plain
            }
        }
    }

    /// Whether `b` is small enough to coalesce under `coalesce_below_bytes = below`. A
    /// compressed batch is held to two thirds of it (8 KiB at the default 12 KiB), by
    /// its estimated size uncompressed: merging it means decompressing and compressing
    /// its records again, which costs per uncompressed byte what passing it whole costs
    /// per batch. Measured (isolation, 1 KB lz4 records, 2026-12-03, records/s merged
    /// vs whole): 2 to a batch 751 K vs 285 K, 4: 1.26 M vs 556 K, 8: 1.49 M vs 1.13 M
    /// (again: 773 K vs 632 K), 16 (16 KiB uncompressed): 1.20 M vs 1.93 M.
    pub(super) fn is_small(&self, b: &VerifiedBatch, below: usize) -> bool {
        match b.header().compression() {
            Ok(batch::Compression::None) | Err(_) => b.bytes().len() < below,
            Ok(_) => self.plain_size(b) < below / 3 * 2,
        }
    }

    /// Learns from a merge of `batches` whose records were `plain_bytes` uncompressed.
    pub(super) fn learn(&mut self, batches: &[&VerifiedBatch], plain_bytes: usize) {
        let compressed = batches.iter().all(|b| b.header().compression().is_ok_and(|c| c != batch::Compression::None));
        let records: usize = batches.iter().map(|b| b.records_data().len()).sum();
        if compressed && records > 0 {
            #[allow(clippy::cast_precision_loss)]
            let ratio = plain_bytes as f64 / records as f64;
            self.ratio = Some(ratio);
            self.passed = 0;
        }
    }

    /// A mergeable batch went out alone because it was not small.
    pub(super) fn passed_whole(&mut self) {
        if self.ratio.is_some() {
            self.passed += 1;
            if self.passed >= Self::RELEARN_AFTER {
                *self = Self::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Expansion;
    use crate::batch::testutil::{TestBatch, TestRecord};
    use crate::batch::{split_batches, Compression, VerifiedBatch};
    use bytes::Bytes;

    /// `n` records of 1000 equal bytes (very compressible), in one batch.
    fn batch(n: i32, compression: Compression) -> VerifiedBatch {
        let value = vec![b'x'; 1000];
        let records = (0..n).map(|i| TestRecord::new(i, None, Some(&value))).collect();
        let b = TestBatch { compression, ..TestBatch::with_records(records) };
        split_batches(Bytes::from(b.build())).unwrap().batches.remove(0).verify().unwrap()
    }

    #[test]
    fn compressed_batches_are_judged_by_their_learnt_size_uncompressed_against_two_thirds_of_the_threshold() {
        let below = crate::config::DEFAULT_COALESCE_BELOW as usize;
        let mut e = Expansion::default();
        // Uncompressed: by their bytes, against the whole threshold.
        assert!(e.is_small(&batch(11, Compression::None), below));
        assert!(!e.is_small(&batch(13, Compression::None), below));
        // Compressed, nothing learnt yet: the compressed size stands in (small: merged once).
        let (lz4_4, lz4_16) = (batch(4, Compression::Lz4), batch(16, Compression::Lz4));
        assert!(lz4_16.bytes().len() < 1024, "the test data compresses");
        assert!(e.is_small(&lz4_16, below));
        // Learnt from a merge of two 16-record batches: 32,000+ bytes of records.
        let plain = 2 * (16 * 1000 + 16 * 8);
        e.learn(&[&lz4_16, &lz4_16], plain);
        let estimate = e.plain_size(&lz4_16);
        assert!((16_000..17_500).contains(&estimate), "estimate {estimate}");
        assert!(!e.is_small(&lz4_16, below), "16 KB of records recompressed cost more than they save");
        assert!(e.is_small(&lz4_4, below), "4 KB of records merge");
        // After enough batches sent whole the ratio is forgotten and learnt again.
        for _ in 0..Expansion::RELEARN_AFTER {
            e.passed_whole();
        }
        assert!(e.is_small(&lz4_16, below));
    }
}
