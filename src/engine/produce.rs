//! The produce path: picks the partitions whose next batch can go now, stamps it with
//! its route's producer id and the partition's next sequence (KIP-98), merges runs of
//! small batches where re-batching is on, groups one batch per partition per request,
//! and handles the answers: in-order acknowledgement, resend from the oldest
//! unacknowledged batch after an error, a new producer id when the target lost ours.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ProduceResponse;
use tracing::{debug, error, info, warn};

use super::partition::{stop_partition, PartState, SendState};
use super::{Event, FlowDriver, Side};
use crate::batch::{self, OutgoingBatch, ProducerStamp, VerifiedBatch};
use crate::cluster::TopicPartition;
use crate::config::Tuning;
use crate::net::NetError;
use crate::registry;
use crate::wire::produce::{PartitionRecords, ProduceFields, TopicRecords};

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
            for tp in tps {
                let p = self.parts.get_mut(&tp).expect("partition exists");
                let max_message = self.target_topics.get(&*tp.topic).and_then(|t| t.max_message_bytes);
                let Some(idx) = p.next_unsent() else { continue };
                let route = p.queue[idx].route;
                let r = self.routes.get(route);
                let Some((producer_id, producer_epoch)) = r.producer else { continue };
                let generation = r.generation;
                let run = match &self.flow.rebatch {
                    Some(r) => merge_run(p, idx, r, generation, max_message),
                    None => 1,
                };
                let entry = &mut p.queue[idx];
                let stamp = match entry.stamp {
                    Some((g, s)) if g == generation => s,
                    _ => {
                        let s = next_stamp(p.next_sequence.of(route), producer_id, producer_epoch, &entry.batch);
                        entry.stamp = Some((generation, s));
                        s
                    }
                };
                let source_offset = entry.base_offset();
                let mut run = run;
                let mut prepared = None;
                if run > 1 {
                    let r = self.flow.rebatch.expect("runs are longer than 1 only with re-batching");
                    let batches: Vec<&VerifiedBatch> = p.queue.range(idx..idx + run).map(|e| &e.batch).collect();
                    let merged =
                        batch::merge::merge(&batches, stamp, batch::merge::target_codec(batches[0], r.compression));
                    if merged.as_ref().is_ok_and(|m| max_message.is_some_and(|max| m.len() > max)) {
                        run = 1; // larger than the target takes (a codec that compresses less): send it alone
                    } else {
                        prepared = Some(merged);
                    }
                }
                let prepared = prepared.unwrap_or_else(|| p.queue[idx].batch.clone().into_outgoing(stamp));
                let outgoing = match prepared {
                    Ok(o) => o,
                    Err(e) => {
                        let why =
                            format!("batch at source offset {source_offset} cannot be prepared for the target: {e}");
                        stop_partition(&self.flow.name, &tp, p, Side::Source, why);
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
                        stop_partition(&self.flow.name, &tp, p, Side::Target, why);
                        continue;
                    }
                }
                if request_bytes > 0 && request_bytes + outgoing.len() > self.tuning.produce_max_bytes as usize {
                    // Undo the stamp's sequence only if it was fresh: simpler to keep it (the
                    // batch is sent next time with the same stamp, which is still in order).
                    break;
                }
                request_bytes += outgoing.len();
                p.in_flight += 1;
                p.in_flight_route = route;
                let mut before = 0i64;
                for (k, entry) in p.queue.range_mut(idx..idx + run).enumerate() {
                    if k > 0 && !matches!(entry.stamp, Some((g, _)) if g == generation) {
                        // Its sequences follow the run's first batch (stamped in queue order).
                        let s = next_stamp(p.next_sequence.of(route), producer_id, producer_epoch, &entry.batch);
                        entry.stamp = Some((generation, s));
                    }
                    entry.group = if k == 0 { run } else { 0 };
                    entry.state = SendState::InFlight;
                    sent.push((tp.clone(), entry.id, before));
                    before += i64::from(entry.batch.header().records_count);
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
            match conn.send_produce(&fields, &topics) {
                Ok(fut) => {
                    self.tasks.push(Box::pin(async move { Event::Produced { broker, sent, result: fut.await } }));
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
                let (id, epoch) =
                    target.init_producer_id().await.map_err(|e| format!("cannot get a producer id: {e}"))?;
                registry::register(&target, &topic, id, &path, &flow)
                    .await
                    .map_err(|e| format!("cannot register producer id {id} in the producer registry: {e}"))?;
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

    pub(super) fn on_produced(
        &mut self,
        broker: i32,
        sent: Vec<(TopicPartition, u64, i64)>,
        result: Result<ProduceResponse, NetError>,
    ) {
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.target_unreachable(&e.to_string());
                self.target_conns.remove(&broker);
                self.discover_now = true;
                for (tp, id, before) in sent {
                    self.produce_failed(&tp, id, before == 0, None);
                }
                return;
            }
        };
        let mut errors: HashMap<(String, i32), (ResponseError, Option<String>)> = HashMap::new();
        let mut answered: HashSet<(String, i32)> = HashSet::new();
        let mut base_offsets: HashMap<(String, i32), i64> = HashMap::new();
        for t in &resp.responses {
            for pr in &t.partition_responses {
                let key = (t.name.0.as_str().to_owned(), pr.index);
                answered.insert(key.clone());
                base_offsets.insert(key.clone(), pr.base_offset);
                if let Some(e) = ResponseError::try_from_code(pr.error_code) {
                    if e != ResponseError::DuplicateSequenceNumber {
                        errors.insert(key, (e, pr.error_message.as_ref().map(|m| m.as_str().to_owned())));
                    }
                }
            }
        }
        let mut any_ok = false;
        for (tp, id, before) in sent {
            let Some(p) = self.parts.get(&tp) else { continue };
            let key = (p.target.topic.to_string(), p.target.partition);
            let opens = before == 0;
            if !answered.contains(&key) {
                if opens {
                    let flow = self.flow.name.clone();
                    warn!(flow = %flow, partition = %tp, "target did not answer for partition {}; retrying", p.target);
                }
                self.produce_failed(&tp, id, opens, None);
            } else if let Some((e, msg)) = errors.get(&key) {
                self.produce_failed(&tp, id, opens, Some((*e, msg.as_deref())));
            } else {
                any_ok = true;
                let base = base_offsets.get(&key).copied().unwrap_or(-1);
                self.produce_acked(&tp, id, if base >= 0 { base + before } else { -1 }, opens);
            }
        }
        if any_ok {
            self.target_ok();
        }
    }

    /// `opens`: the batch opened its target batch, which held the request slot.
    pub(super) fn produce_acked(&mut self, tp: &TopicPartition, id: u64, target_base_offset: i64, opens: bool) {
        let flow = self.flow.name.clone();
        let Some(p) = self.parts.get_mut(tp) else { return };
        let Some(pos) = p.queue.iter().position(|e| e.id == id) else { return };
        if p.queue[pos].state != SendState::InFlight {
            return; // answered twice: ignore
        }
        if opens {
            p.in_flight -= 1;
        }
        self.produce_candidates.insert(tp.clone());
        self.fetch_dirty.insert(tp.clone()); // its queue shrinks: it may fetch again
        if p.queue.iter().take(pos).any(|e| e.state == SendState::Unsent) {
            // An earlier batch failed and waits to be resent, yet this later one was
            // written: a broker enforcing idempotent sequences refuses that.
            error!(flow = %flow, partition = %tp, "target acknowledged a batch ahead of a failed one: the target broker does not enforce idempotent sequences, order on the target may differ from the source");
        }
        p.queue[pos].state = SendState::Acked(target_base_offset);
        // Positions advance in order: pop every acknowledged batch at the front.
        while let Some(SendState::Acked(base)) = p.queue.front().map(|e| e.state) {
            let entry = p.queue.pop_front().expect("front exists");
            p.queue_bytes -= entry.batch.bytes().len();
            let h = entry.batch.header();
            if base >= 0 {
                p.target_next = Some(base + i64::from(h.records_count));
            } else {
                // DUPLICATE_SEQUENCE_NUMBER may come without an offset: count on from the last.
                p.target_next = p.target_next.map(|t| t + i64::from(h.records_count));
            }
            p.last_timestamp = p.last_timestamp.max(h.max_timestamp);
            self.stats.records.fetch_add(u64::try_from(h.records_count).unwrap_or(0), Ordering::Relaxed);
            self.stats.bytes.fetch_add(entry.batch.bytes().len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        p.produce_backoff = Tuning::ms(self.tuning.retry_backoff_ms);
        if p.recovering && p.in_flight == 0 {
            p.recovering = false;
        }
    }

    /// `opens`: the batch opened its target batch; the error is handled once, there
    /// (the others of a merged run only go back to unsent, to be resent with it).
    pub(super) fn produce_failed(
        &mut self,
        tp: &TopicPartition,
        id: u64,
        opens: bool,
        error: Option<(ResponseError, Option<&str>)>,
    ) {
        let flow = self.flow.name.clone();
        let max_backoff = Tuning::ms(self.tuning.retry_backoff_max_ms);
        let Some(p) = self.parts.get_mut(tp) else { return };
        let Some(entry) = p.queue.iter_mut().find(|e| e.id == id) else { return };
        if entry.state != SendState::InFlight {
            return;
        }
        entry.state = SendState::Unsent; // resent, in order, once in-flight requests drain
        let offset = entry.base_offset();
        let route = entry.route;
        self.produce_candidates.insert(tp.clone());
        if !opens {
            return;
        }
        p.in_flight -= 1;
        self.fetch_dirty.insert(tp.clone());
        let mut reset_producer = false;
        if let Some((e, msg)) = &error {
            let detail = msg.map(|m| format!(" ({m})")).unwrap_or_default();
            let front = p.queue.front().is_some_and(|f| f.id == id);
            if is_producer_state_error(*e) {
                if front && !p.recovering {
                    warn!(flow = %flow, partition = %p.target, "target lost our producer state ({e}{detail}); getting a new producer id and resending from source offset {offset}");
                    reset_producer = true;
                }
            } else if needs_metadata(*e) {
                debug!(flow = %flow, partition = %p.target, "produce error {e}; refreshing metadata");
                self.discover_now = true;
            } else if !e.is_retriable() {
                let why = format!("target refused the batch at source offset {offset}: {e}{detail}");
                stop_partition(&flow, tp, p, Side::Target, why);
                return;
            } else {
                debug!(flow = %flow, partition = %p.target, "retriable produce error {e}{detail}");
            }
        }
        p.recovering = p.in_flight > 0;
        p.produce_not_before = Instant::now() + p.produce_backoff;
        p.produce_backoff = (p.produce_backoff * 2).min(max_backoff);
        if reset_producer {
            self.reset_producer(route);
        }
    }

    /// Drops a route's producer id; a new one is requested and every unacknowledged
    /// batch of the route gets a new stamp from sequence 0 when it is sent again.
    pub(super) fn reset_producer(&mut self, route: u32) {
        if !self.routes.reset(route) {
            return;
        }
        self.produce_scan_all = true;
        for p in self.parts.values_mut() {
            p.next_sequence.reset(route);
            if p.in_flight > 0 {
                p.recovering = true;
            }
        }
    }
}

/// The producer stamp for the next batch of a partition: its records take the
/// sequence numbers from `next_sequence` on (wrapping at `i32::MAX`, as Kafka's do).
pub(super) fn next_stamp(
    next_sequence: &mut i32,
    producer_id: i64,
    producer_epoch: i16,
    batch: &VerifiedBatch,
) -> ProducerStamp {
    let stamp = ProducerStamp { producer_id, producer_epoch, base_sequence: *next_sequence };
    *next_sequence = next_sequence.wrapping_add(batch.header().records_count.max(1)) & i32::MAX;
    stamp
}

/// How many queued batches, from `idx` on, go out as one target batch (re-batching). A
/// run already sent under the current producer stamps is resent as it was; otherwise
/// consecutive unsent batches are taken while they can merge and stay within the size
/// limits (source bytes; the target's max.message.bytes is checked on the result).
pub(super) fn merge_run(
    p: &PartState,
    idx: usize,
    r: &crate::config::Rebatch,
    generation: u64,
    max_message: Option<usize>,
) -> usize {
    let first = &p.queue[idx];
    if matches!(first.stamp, Some((g, _)) if g == generation) && first.group > 0 {
        return first.group;
    }
    if !batch::merge::mergeable(&first.batch) {
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
