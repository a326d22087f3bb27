//! The fetch path: builds Fetch requests per source broker (full, or incremental within
//! a KIP-227 fetch session), and takes each partition's answer apart: offsets checked
//! ([`super::offsets`]), CRC verified, loop-prevention verdicts ([`crate::registry`]),
//! transactional data staged ([`crate::txn`]) and what may go to the target queued.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
    BrokerId, FetchRequest, FetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, error, warn};

use super::budget::Charge;
use super::fetch_session::{self, FetchSession, PartitionFetch, SessionOutcome, Ticket};
use super::intake::Intake;
use super::link::FetchRtt;
use super::partition::FetchFailure;
use super::{Event, FastMap, FlowDriver, Side};
use crate::cluster::{ClusterError, TopicPartition};
use crate::config::Tuning;
use crate::net::NetError;
use crate::registry::{self};

/// What one queued batch costs beside its bytes: its entry, twice over for the
/// queue's spare capacity (a `VecDeque` grows by doubling).
pub(super) const PENDING_ENTRY_BYTES: u64 = 2 * std::mem::size_of::<super::partition::Pending>() as u64;

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
        let configured = self.tuning.fetch_partition_max_bytes;
        let link_bytes = |rtt: &FastMap<i32, FetchRtt>, broker: i32| {
            rtt.get(&broker)
                .map_or_else(|| FetchRtt::default().partition_bytes(configured), |r| r.partition_bytes(configured))
        };
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
                if let (Some(f), _) = p.fetch_state(now, link_bytes(&self.fetch_rtt, leader)) {
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
                let (f, later) = p.fetch_state(now, link_bytes(&self.fetch_rtt, leader));
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
        let mut want = u64::from(self.tuning.fetch_max_bytes);
        if let Some(t) = &self.throttle {
            if t.check(now).is_some() {
                // Out of tokens: nothing goes out; the poll tick looks again (50 ms).
                self.throttled_since.get_or_insert(now);
                for (_, request) in requests {
                    if let Request::Changes(c) = request {
                        self.fetch_dirty.extend(c.into_iter().map(|(tp, _)| tp));
                    }
                }
                return;
            }
            if let Some(since) = self.throttled_since.take() {
                let waited_us = u64::try_from(now.duration_since(since).as_micros()).unwrap_or(u64::MAX);
                self.stats.throttled_us.fetch_add(waited_us, Ordering::Relaxed);
            }
            want = want.min(t.max_fetch_bytes());
        }
        for (broker, request) in requests {
            let Some(charge) = self.budget.reserve(want, want.min(64 * 1024)) else {
                if let Request::Changes(c) = request {
                    self.fetch_dirty.extend(c.into_iter().map(|(tp, _)| tp)); // not lost: next time
                }
                continue; // budget spent: wait for acknowledgements
            };
            let max_bytes = charge.bytes() as i32;
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
            // Catching up: no long-poll wait, the data is there. At the tail, Kafka's long
            // poll. A broker not answered yet counts as behind: the start is a backlog
            // more often than not, and one empty answer later it long-polls. (tansu 0.6.0
            // answers a wait of 0 with no topics, so there a backlog alternates one empty
            // answer and one long poll answered at once; measured faster than 1 ms or the
            // long poll throughout: tests/tansu_probe.rs `fetch_max_wait_zero_...`.)
            let max_wait = if self.fetch_at_tail.contains(&broker) { self.tuning.fetch_max_wait_ms as i32 } else { 0 };
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(max_wait)
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
            let sent = Instant::now();
            self.fetching.insert(broker);
            self.tasks.push(Box::pin(async move {
                let result = match source.broker(broker).await {
                    Ok(conn) => conn.call(&req).await,
                    Err(ClusterError::Net { source, .. }) => Err(source),
                    Err(e) => Err(NetError::Broken { addr: format!("broker {broker}"), reason: e.to_string() }),
                };
                Event::Fetched { broker, ticket, result, charge, sent }
            }));
        }
    }

    /// `took`: from sending the Fetch to handling its answer.
    pub(super) fn on_fetched(
        &mut self,
        broker: i32,
        ticket: Ticket,
        result: Result<FetchResponse, NetError>,
        mut charge: Charge,
        took: Duration,
    ) {
        self.fetch_at_tail.insert(broker); // until this answer shows a partition behind
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
                self.stats.error(Side::Source, e.kafka_name());
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
            self.stats.kafka_error(Side::Source, e);
            warn!(flow = %self.flow.name, side = "source", broker, retrying = true, "Fetch failed as a whole: {e}");
            self.discover_now = true;
            return;
        }
        let mut fetched_bytes = 0u64;
        let mut holds: Vec<(TopicPartition, Bytes, PartitionFetch, i64)> = Vec::new();
        for topic in resp.responses {
            let name = topic.topic.0.as_str().to_owned();
            for pd in topic.partitions {
                let tp = TopicPartition::new(&name, pd.partition_index);
                let Some(asked) = self.fetch_sessions.get(&broker).and_then(|s| s.asked(&tp)) else {
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
                if p.fetch_offset != asked.fetch_offset || p.stopped.is_some() {
                    continue; // moved since the request was sent
                }
                if pd.high_watermark >= 0 {
                    p.high_watermark = pd.high_watermark;
                }
                if let Some(e) = ResponseError::try_from_code(pd.error_code) {
                    self.stats.kafka_error(Side::Source, e);
                    self.on_fetch_partition_error(&tp, e, pd.log_start_offset, pd.high_watermark);
                    continue;
                }
                if let Some(records) = pd.records {
                    if !records.is_empty() {
                        fetched_bytes += records.len() as u64;
                        holds.push((tp, records, asked, pd.high_watermark));
                    }
                }
            }
        }
        if let Some(t) = &self.throttle {
            t.consume(fetched_bytes);
        }
        if fetched_bytes > 0 {
            // Only answers that carried data: their time is the link and the broker's
            // reading together (an empty answer says nothing of what data costs).
            self.fetch_rtt.entry(broker).or_default().sample(took);
        }
        // The response may exceed max_bytes by one batch (KIP-74): account for all of it.
        if fetched_bytes > charge.bytes() {
            charge.grow(fetched_bytes - charge.bytes());
        }
        // What the response did not use goes back now; the rest stays charged until
        // the last batch of this response is acknowledged (see `Pending::_charge`).
        charge.shrink_to(fetched_bytes);
        let charge = Arc::new(charge);
        let mut behind = false;
        let first_id = self.next_pending_id;
        for (tp, records, asked, hwm) in holds {
            self.accept_records(&tp, records, asked, hwm, &charge);
            behind |= self.parts.get(&tp).is_some_and(|p| p.stopped.is_none() && p.fetch_offset < p.high_watermark);
        }
        // Each batch queued from this response also costs its queue entry: at 1 KB lz4
        // records a batch is ~650 bytes and its entry a third of that again (peak RSS
        // was twice the budget before these were counted).
        charge.grow((self.next_pending_id - first_id) * PENDING_ENTRY_BYTES);
        if behind {
            self.fetch_at_tail.remove(&broker);
        }
    }

    /// A partition's error in a Fetch answer (with the answer's log start and high
    /// watermark).
    pub(super) fn on_fetch_partition_error(&mut self, tp: &TopicPartition, e: ResponseError, log_start: i64, hwm: i64) {
        let Some(p) = self.parts.get_mut(tp) else { return };
        let backoff_until = Instant::now() + Tuning::ms(self.tuning.retry_backoff_ms);
        match p.fetch_failed(&self.flow.name, tp, e, (log_start, hwm), self.flow.on_data_loss, backoff_until) {
            FetchFailure::Lost(n) => {
                self.stats.lost_offsets.fetch_add(n, Ordering::Relaxed);
            }
            FetchFailure::Retry => self.discover_now = true,
            FetchFailure::Stopped => {}
        }
    }

    /// Takes a partition's fetched bytes apart and stages them ([`PartState::accept`]).
    pub(super) fn accept_records(
        &mut self,
        tp: &TopicPartition,
        records: Bytes,
        asked: PartitionFetch,
        high_watermark: i64,
        charge: &Arc<Charge>,
    ) {
        let Some(p) = self.parts.get_mut(tp) else { return };
        let mut cx = Intake {
            flow: &self.flow.name,
            registry: &self.registry,
            guard: self.flow.loop_guard(),
            provenance: self.flow.provenance.as_ref(),
            routes: &mut self.routes,
            origin_route: self.origin_route,
            next_id: &mut self.next_pending_id,
            lookups: &mut self.registry_lookups,
            stats: &self.stats,
            charge,
        };
        if p.accept(tp, records, asked, high_watermark, &mut cx) {
            self.produce_candidates.insert(tp.clone());
        }
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
