//! The fetch path: builds Fetch requests per source broker (full, or incremental within
//! a KIP-227 fetch session), and takes each partition's answer apart: offsets checked
//! ([`super::offsets`]), CRC verified, loop-prevention verdicts ([`crate::registry`]),
//! transactional data staged ([`super::txn`]) and what may go to the target queued.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
    BrokerId, FetchRequest, FetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, error, info, warn};

use super::budget::Charge;
use super::fetch_session::{self, FetchSession, PartitionFetch, SessionOutcome, Ticket};
use super::offsets::OffsetCheck;
use super::partition::{corrupt_batch, fetch_state, reconcile, stop_partition, Pending, SendState};
use super::produce::needs_metadata;
use super::txn::{Outcome, Released};
use super::{Event, FlowDriver, Side};
use crate::batch::{self, ControlType};
use crate::cluster::{ClusterError, TopicPartition};
use crate::config::{OnDataLoss, Tuning};
use crate::net::NetError;
use crate::registry::{self, Seen, Verdict};

impl FlowDriver {
    /// Starts a Fetch on every source broker that has none outstanding. A broker with an
    /// established fetch session gets the changes of the partitions marked in
    /// `fetch_dirty` only; any other gets a full request, built by looking at every
    /// partition (as large as the request it builds).
    pub(super) fn schedule_fetches(&mut self) {
        if self.source_brokers.iter().all(|b| self.fetching.contains(b)) {
            return; // every source broker has a Fetch outstanding
        }
        let now = Instant::now();
        let cap = self.tuning.fetch_partition_max_bytes as usize * 2;
        let idle: Vec<i32> = self.source_brokers.iter().copied().filter(|b| !self.fetching.contains(b)).collect();
        let (incremental, full): (Vec<i32>, Vec<i32>) =
            idle.into_iter().partition(|b| self.fetch_sessions.get(b).is_some_and(FetchSession::is_established));
        let mut wanted: BTreeMap<i32, Vec<(TopicPartition, PartitionFetch)>> = BTreeMap::new();
        if !full.is_empty() {
            for (tp, p) in &self.parts {
                let Some(leader) = p.source_leader else { continue };
                if !full.contains(&leader) {
                    continue;
                }
                if let (Some(f), _) = fetch_state(p, now, cap) {
                    wanted.entry(leader).or_default().push((tp.clone(), f));
                }
            }
        }
        let mut changes: BTreeMap<i32, Vec<(TopicPartition, Option<PartitionFetch>)>> =
            incremental.iter().map(|b| (*b, Vec::new())).collect();
        if !incremental.is_empty() {
            let mut keep = Vec::new();
            for tp in std::mem::take(&mut self.fetch_dirty) {
                let Some(p) = self.parts.get(&tp) else { continue };
                let leader = p.source_leader;
                // Its leader moved: the broker that had it forgets it with its next request.
                for (b, session) in &mut self.fetch_sessions {
                    if Some(*b) != leader {
                        session.forget_later(&tp);
                    }
                }
                let Some(leader) = leader else { continue };
                let Some(list) = changes.get_mut(&leader) else {
                    if !full.contains(&leader) {
                        keep.push(tp); // its broker has a Fetch outstanding: next time
                    }
                    continue;
                };
                let (f, later) = fetch_state(p, now, cap);
                if later {
                    keep.push(tp.clone()); // held back for a while (after an error): look again
                }
                list.push((tp, f));
            }
            self.fetch_dirty.extend(keep);
        }
        let requests = wanted
            .into_iter()
            .map(|(b, w)| (b, Request::Full(w)))
            .chain(changes.into_iter().map(|(b, c)| (b, Request::Changes(c))));
        for (broker, request) in requests {
            let Some(charge) = self.budget.reserve(u64::from(self.tuning.fetch_max_bytes), 64 * 1024) else {
                if let Request::Changes(c) = request {
                    self.fetch_dirty.extend(c.into_iter().map(|(tp, _)| tp)); // not lost: next time
                }
                continue; // budget spent: wait for acknowledgements
            };
            let max_bytes = charge.bytes as i32;
            let enabled = self.tuning.fetch_sessions;
            let session = self.fetch_sessions.entry(broker).or_insert_with(|| FetchSession::new(enabled));
            let next = match request {
                Request::Full(w) => session.build(w),
                Request::Changes(c) => match session.build_incremental(c) {
                    Some(next) => next,
                    None => continue, // nothing to read there now
                },
            };
            let mut topics: BTreeMap<Arc<str>, Vec<FetchPartition>> = BTreeMap::new();
            for (tp, f) in &next.send {
                topics.entry(tp.topic.clone()).or_default().push(
                    FetchPartition::default()
                        .with_partition(tp.partition)
                        .with_current_leader_epoch(f.current_leader_epoch)
                        .with_fetch_offset(f.fetch_offset)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(f.partition_max_bytes),
                );
            }
            let mut forgotten: BTreeMap<Arc<str>, Vec<i32>> = BTreeMap::new();
            for tp in &next.forget {
                forgotten.entry(tp.topic.clone()).or_default().push(tp.partition);
            }
            let topic_name = |t: &Arc<str>| TopicName(StrBytes::from_string(t.to_string()));
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(self.tuning.fetch_max_wait_ms as i32)
                .with_min_bytes(1)
                .with_max_bytes(max_bytes)
                .with_isolation_level(0) // read_uncommitted: markers decide (see txn.rs)
                .with_session_id(next.ticket.session_id)
                .with_session_epoch(next.ticket.session_epoch)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| FetchTopic::default().with_topic(topic_name(&t)).with_partitions(ps))
                        .collect(),
                )
                .with_forgotten_topics_data(
                    forgotten
                        .into_iter()
                        .map(|(t, ps)| ForgottenTopic::default().with_topic(topic_name(&t)).with_partitions(ps))
                        .collect(),
                );
            let ticket = next.ticket;
            let source = self.source.clone();
            self.fetching.insert(broker);
            self.tasks.push(Box::pin(async move {
                let result = match source.broker(broker).await {
                    Ok(conn) => conn.call(&req).await,
                    Err(ClusterError::Net { source, .. }) => Err(source),
                    Err(e) => Err(NetError::Broken { addr: format!("broker {broker}"), reason: e.to_string() }),
                };
                Event::Fetched { broker, ticket, result, charge }
            }));
        }
    }

    pub(super) fn on_fetched(
        &mut self,
        broker: i32,
        ticket: Ticket,
        result: Result<FetchResponse, NetError>,
        mut charge: Charge,
    ) {
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                let until = Instant::now() + Tuning::ms(self.tuning.retry_backoff_max_ms.min(1000));
                if let Some(session) = self.fetch_sessions.get_mut(&broker) {
                    session.transport_failed();
                    for tp in session.partitions() {
                        if let Some(p) = self.parts.get_mut(tp) {
                            p.fetch_not_before = until;
                        }
                    }
                }
                self.source_unreachable(&e.to_string());
                self.discover_now = true;
                return;
            }
        };
        self.source_ok();
        let session = self.fetch_sessions.entry(broker).or_insert_with(|| FetchSession::new(false));
        if session.on_response(ticket, resp.error_code, resp.session_id) == SessionOutcome::Restart
            && matches!(resp.error_code, fetch_session::SESSION_NOT_FOUND | fetch_session::INVALID_EPOCH)
        {
            // The broker evicted or restarted the session: the next request is full.
            debug!(flow = %self.flow.name, side = "source", broker, "fetch session ended by the broker (error {}); next fetch is full", resp.error_code);
            return;
        }
        if let Some(e) = ResponseError::try_from_code(resp.error_code) {
            warn!(flow = %self.flow.name, side = "source", broker, retrying = true, "Fetch failed as a whole: {e}");
            self.discover_now = true;
            return;
        }
        let mut fetched_bytes = 0u64;
        let mut holds: Vec<(TopicPartition, Bytes, i64, i64)> = Vec::new();
        for topic in resp.responses {
            let name = topic.topic.0.as_str().to_owned();
            for pd in topic.partitions {
                let tp = TopicPartition::new(&name, pd.partition_index);
                let Some(offset) = self.fetch_sessions.get(&broker).and_then(|s| s.fetch_offset(&tp)) else {
                    // Not read for this request: the broker's session holds something
                    // else than ours. Start a new one; the data is not used.
                    if let Some(session) = self.fetch_sessions.get_mut(&broker) {
                        session.diverged();
                    }
                    warn!(flow = %self.flow.name, side = "source", broker, partition = %tp, "Fetch response names a partition that was not asked for; starting a new fetch session");
                    continue;
                };
                self.fetch_dirty.insert(tp.clone()); // its position, queue or backoff may change now
                let Some(p) = self.parts.get_mut(&tp) else { continue };
                if p.fetch_offset != offset || p.stopped.is_some() {
                    continue; // moved since the request was sent
                }
                if pd.high_watermark >= 0 {
                    p.high_watermark = pd.high_watermark;
                }
                if let Some(e) = ResponseError::try_from_code(pd.error_code) {
                    self.on_fetch_partition_error(&tp, e, pd.log_start_offset, pd.high_watermark);
                    continue;
                }
                if let Some(records) = pd.records {
                    if !records.is_empty() {
                        fetched_bytes += records.len() as u64;
                        holds.push((tp, records, offset, pd.high_watermark));
                    }
                }
            }
        }
        // The response may exceed max_bytes by one batch (KIP-74): account for all of it.
        if fetched_bytes > charge.bytes {
            charge.grow(fetched_bytes - charge.bytes);
        }
        // What the response did not use goes back now; the rest stays charged until
        // the last batch of this response is acknowledged (see `Pending::_charge`).
        charge.shrink_to(fetched_bytes);
        let charge = Arc::new(charge);
        for (tp, records, offset, hwm) in holds {
            self.accept_records(&tp, records, offset, hwm, &charge);
        }
    }

    pub(super) fn on_fetch_partition_error(&mut self, tp: &TopicPartition, e: ResponseError, log_start: i64, hwm: i64) {
        let flow = self.flow.name.clone();
        let Some(p) = self.parts.get_mut(tp) else { return };
        if e == ResponseError::OffsetOutOfRange {
            let at = p.fetch_offset;
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
                stop_partition(&flow, tp, p, Side::Source, why);
                return;
            };
            self.stats.lost_offsets.fetch_add(lost as u64, Ordering::Relaxed);
            match self.flow.on_data_loss {
                OnDataLoss::Stop => {
                    let why = format!("fetch offset {at} is out of range: {what}; {lost} offsets are lost to the mirror (log start {log_start}, high watermark {hwm}); to accept the loss and continue at {to}, set on_data_loss = \"continue\" on the flow");
                    stop_partition(&flow, tp, p, Side::Source, why);
                }
                OnDataLoss::Continue => {
                    error!(flow = %flow, side = "source", partition = %tp, from = at, to, lost_offsets = lost, "DATA LOSS: fetch offset {at} is out of range: {what}; {lost} offsets lost; continuing at {to} (on_data_loss = \"continue\")");
                    p.fetch_offset = to;
                    p.fetch_at_batch_end = false;
                    drop(p.stage.clear());
                }
            }
            return;
        }
        if needs_metadata(e) || e.is_retriable() {
            debug!(flow = %flow, partition = %tp, "fetch error {e}, refreshing metadata");
            p.fetch_not_before = Instant::now() + Tuning::ms(self.tuning.retry_backoff_ms);
            self.discover_now = true;
            return;
        }
        stop_partition(&flow, tp, p, Side::Source, format!("Fetch failed with {e} (not retriable)"));
    }

    /// Takes a partition's fetched bytes apart and stages them.
    pub(super) fn accept_records(
        &mut self,
        tp: &TopicPartition,
        records: Bytes,
        requested_offset: i64,
        high_watermark: i64,
        charge: &Arc<Charge>,
    ) {
        let flow = self.flow.name.clone();
        let stats = self.stats.clone();
        let Some(p) = self.parts.get_mut(tp) else { return };
        let split = match batch::split_batches(records) {
            Ok(s) => s,
            Err(e) => {
                stop_partition(
                    &flow,
                    tp,
                    p,
                    Side::Source,
                    format!("unreadable data at offset {requested_offset}: {e}"),
                );
                return;
            }
        };
        if split.batches.is_empty() && split.truncated_tail {
            // Not even one whole batch fits: ask for more next time.
            let grown = p.partition_max_bytes.saturating_mul(2).min(1 << 30);
            warn!(flow = %flow, partition = %tp, "a batch at offset {} is larger than the fetch size {}; retrying with {grown} bytes", p.fetch_offset, p.partition_max_bytes);
            p.partition_max_bytes = grown;
            return;
        }
        let mut placement = OffsetCheck::new(requested_offset, p.fetch_at_batch_end, high_watermark);
        for raw in split.batches {
            let h = *raw.header();
            if p.registry_wait {
                // Waiting from an earlier batch on: only collect the other new producer
                // ids of this response, so that one registry read answers for all of them
                // (a backlog written by many producers would otherwise trickle in).
                if let Ok(Seen::Unknown(id)) = self.registry.seen(&h) {
                    self.registry_lookups.insert(id);
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
                    corrupt_batch(&flow, tp, p, &why);
                    break;
                }
            };
            let verified = if h.base_offset < p.fetch_offset && !h.is_control() {
                // A position inside a batch (a start offset; tansu's "latest" points
                // there): the records before it were not asked for.
                match verified.without_records_before(p.fetch_offset) {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        p.fetch_offset = h.next_offset();
                        p.fetch_at_batch_end = true;
                        continue;
                    }
                    Err(e) => {
                        stop_partition(
                            &flow,
                            tp,
                            p,
                            Side::Source,
                            format!("cannot cut batch at offset {} at position {}: {e}", h.base_offset, p.fetch_offset),
                        );
                        return;
                    }
                }
            } else {
                verified
            };
            let size = verified.bytes().len();
            if h.is_control() {
                stats.control_batches.fetch_add(1, Ordering::Relaxed);
                match verified.control_type() {
                    Ok(Some(ControlType::Commit)) => p.stage.marker(h.producer_id, h.base_offset, Outcome::Commit),
                    Ok(Some(ControlType::Abort)) => p.stage.marker(h.producer_id, h.base_offset, Outcome::Abort),
                    Ok(_) => {}
                    Err(e) => {
                        stop_partition(
                            &flow,
                            tp,
                            p,
                            Side::Source,
                            format!("unreadable control batch at offset {}: {e}", h.base_offset),
                        );
                        return;
                    }
                }
            } else if !verified.is_empty() {
                // Loop prevention: skip what has been on the target cluster already.
                let route = match registry::verdict(&self.registry, &verified, &self.flow.loop_guard()) {
                    Verdict::ForwardFromOrigin => self.origin_route,
                    Verdict::Forward(path) => self.routes.intern(path),
                    Verdict::Skip(path) => {
                        debug!(flow = %flow, partition = %tp, offset = h.base_offset, path = %path, "batch has been on the target already: skipped");
                        stats
                            .provenance_skipped_records
                            .fetch_add(u64::try_from(h.records_count).unwrap_or(0), Ordering::Relaxed);
                        p.fetch_offset = h.next_offset();
                        p.fetch_at_batch_end = true;
                        continue;
                    }
                    Verdict::Wait(id) => {
                        // Fetched again from this batch once the registry has been read.
                        self.registry_lookups.insert(id);
                        p.registry_wait = true;
                        continue;
                    }
                    Verdict::Stop(why) => {
                        stop_partition(&flow, tp, p, Side::Source, format!("batch at offset {}: {why}", h.base_offset));
                        return;
                    }
                };
                let verified = match &self.flow.provenance {
                    None => verified,
                    Some(hop) => match hop.stamp(verified) {
                        Ok(v) => v,
                        Err(e) => {
                            let why = format!("cannot stamp provenance on the batch at offset {}: {e}", h.base_offset);
                            stop_partition(&flow, tp, p, Side::Source, why);
                            return;
                        }
                    },
                };
                let first_offset = h.base_offset.max(p.fetch_offset);
                let pending = Pending {
                    id: self.next_pending_id,
                    batch: verified,
                    route,
                    stamp: None,
                    state: SendState::Unsent,
                    first_offset,
                    group: 0,
                    _charge: charge.clone(),
                };
                self.next_pending_id += 1;
                p.stage.push(first_offset, size, h.is_transactional().then_some(h.producer_id), pending);
            }
            p.fetch_offset = h.next_offset();
            p.fetch_at_batch_end = true;
        }
        for released in p.stage.release() {
            match released {
                Released::Forward(pending) => {
                    let to_send = if p.reconcile.is_empty() { vec![pending] } else { reconcile(&flow, tp, p, pending) };
                    if !to_send.is_empty() {
                        self.produce_candidates.insert(tp.clone());
                    }
                    for pending in to_send {
                        p.queue_bytes += pending.batch.bytes().len();
                        p.queue.push_back(pending);
                    }
                }
                Released::Drop(pending) => {
                    stats
                        .aborted_records
                        .fetch_add(u64::try_from(pending.batch.header().records_count).unwrap_or(0), Ordering::Relaxed);
                }
            }
        }
        let (dropped, rewind) = p.stage.after_fetch();
        if !dropped.is_empty() {
            warn!(flow = %flow, partition = %tp, "open transaction holds more than transaction_buffer_bytes; scanning ahead for its end, then re-fetching");
        }
        if let Some(offset) = rewind {
            info!(flow = %flow, partition = %tp, "transaction outcomes known; re-fetching from {offset}");
            p.fetch_offset = offset;
            p.fetch_at_batch_end = false;
        }
        p.stage.prune(p.fetch_offset);
    }

    pub(super) fn on_registry_read(
        &mut self,
        looked_up: &HashSet<i64>,
        result: Result<(Vec<registry::RawRecord>, i64), String>,
    ) {
        self.registry_reading = false;
        match result {
            Ok((records, end)) => {
                self.registry.apply(records, end, looked_up);
                if let Some(why) = self.registry.poisoned() {
                    // Fail closed: one error, every partition of the flow stopped.
                    error!(flow = %self.flow.name, side = "source", retrying = false, "{why}");
                    for p in self.parts.values_mut() {
                        p.stopped.get_or_insert_with(|| format!("{}: {why}", Side::Source));
                    }
                    return;
                }
                for (tp, p) in &mut self.parts {
                    if std::mem::take(&mut p.registry_wait) {
                        self.fetch_dirty.insert(tp.clone());
                    }
                }
            }
            Err(e) => {
                warn!(flow = %self.flow.name, side = "source", retrying = true, "cannot read the producer registry of cluster '{}' (partitions whose batches need it wait): {e}", self.source.alias());
                self.registry_lookups.extend(looked_up);
                self.registry_not_before = Instant::now() + Tuning::ms(self.tuning.retry_backoff_max_ms.min(1000));
            }
        }
    }
}

/// A Fetch to build: every wanted partition, or the changes to an established session.
pub(super) enum Request {
    Full(Vec<(TopicPartition, PartitionFetch)>),
    Changes(Vec<(TopicPartition, Option<PartitionFetch>)>),
}
