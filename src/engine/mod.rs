//! The replication engine: moves record batches from source partitions to target
//! partitions, one flow at a time.
//!
//! Each flow is driven by one task that owns all of the flow's state (an actor): it
//! issues Fetch requests (one in flight per source broker, many partitions each),
//! stages transactional data until its outcome is known ([`txn`]), queues the rest per
//! target partition and sends Produce requests (one batch per partition per request,
//! as the broker demands, up to `max_in_flight_per_partition` requests in flight per
//! partition). Requests run as futures whose completions come back to the driver as
//! events, so no lock guards the partition state.
//!
//! Order and exactly-once within a run rest on Kafka's idempotent producer (KIP-98):
//! the target gives us a producer id; each target partition's batches carry
//! consecutive sequence numbers; a retried batch keeps its sequence, so the broker
//! drops a duplicate (`DUPLICATE_SEQUENCE_NUMBER`) and refuses a gap
//! (`OUT_OF_ORDER_SEQUENCE_NUMBER`). After an error, a partition waits until all of its
//! in-flight requests have answered, then resends from its oldest unacknowledged batch.
//!
//! Memory is bounded by one byte budget shared by every flow: a Fetch is only sent when
//! its `max_bytes` fits in what is left, and bytes return to the budget when the target
//! acknowledges them. A slow target therefore slows fetching.
//!
//! Errors say which side failed (source or target, as in pingora's upstream/downstream)
//! and whether the engine will retry. A partition with a problem that retrying cannot
//! fix (a corrupt batch, a batch larger than the target accepts) is *stopped*: nothing
//! is skipped, the rest of the flow goes on, and the summary keeps reporting it.

mod budget;
mod discovery;
mod fetch;
mod fetch_session;
mod intake;
mod link;
pub mod offsets;
mod partition;
mod produce;
mod routes;
mod stats;
pub mod throttle;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::{FetchResponse, ProduceResponse};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::batch::provenance::Provenance;
use crate::checkpoint::{self, Checkpoint, CheckpointKey};
use crate::cluster::{Cluster, ClusterError, TopicPartition};
use crate::config::{Flow, Tuning};
use crate::net::{Connection, NetError};
use crate::registry::{self, Registry};
pub use budget::{Budget, Charge};
use discovery::{discover, Discovery, Round, TargetTopic};
use fetch_session::{FetchSession, Ticket};
use partition::PartState;
use routes::Routes;

/// Maps on the per-batch path (keyed by partition, broker id or topic): `foldhash`,
/// seeded per process, instead of std's SipHash, which was a visible share of the
/// proxy's CPU at 16 KB batches. The keys come from the clusters' metadata, not from
/// strangers, and the seed is random, so flooding one bucket is not a concern here.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// The set form of [`FastMap`].
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;
pub use stats::{FlowStats, Health, LatencyHistogram, PartitionSnapshot, LATENCY_BUCKETS};

/// Which side of a flow something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

type Task = Pin<Box<dyn Future<Output = Event> + Send>>;

// Each event is moved once, from its task into `handle`; boxing the large variants
// would cost an allocation per request instead.
#[allow(clippy::large_enum_variant)]
enum Event {
    Discovered {
        generation: u64,
        result: Result<Discovery, ClusterError>,
    },
    Fetched {
        broker: i32,
        /// The request's session fields; the partitions the broker reads (with an
        /// incremental session, more than the request names) are the session's.
        ticket: Ticket,
        result: Result<FetchResponse, NetError>,
        charge: Charge,
        /// When it was sent (a round-trip sample, see [`link`]).
        sent: Instant,
    },
    Produced {
        broker: i32,
        /// Per queued batch: partition, id, and records before it in its target
        /// batch (0: it opens the target batch, which holds one request slot).
        sent: Vec<(TopicPartition, u64, i64)>,
        result: Result<ProduceResponse, NetError>,
    },
    TargetConnected {
        broker: i32,
        result: Result<Arc<Connection>, ClusterError>,
    },
    /// A route's producer id, obtained and registered (or why not).
    ProducerReady {
        route: u32,
        result: Result<(i64, i16), String>,
    },
    RegistryRead {
        looked_up: HashSet<i64>,
        result: Result<(Vec<registry::RawRecord>, i64), String>,
    },
    CheckpointWritten {
        written: Vec<(TopicPartition, (i64, i64))>,
        result: Result<(), String>,
    },
    GroupsSynced(Vec<(String, Result<usize, String>)>),
}

/// What the flows of one process share: the byte budget and one link throttle per
/// source cluster that has `max_bytes_per_second`. Flows are started one at a time
/// ([`Engine::spawn_flow`]), so that a config reload can stop and start single flows
/// while the others run on ([`crate::supervisor`]).
pub struct Engine {
    budget: Arc<Budget>,
    throttles: std::sync::Mutex<HashMap<String, Arc<throttle::Throttle>>>,
}

/// A started flow: its task (ends when its `shutdown` turns true and it has drained)
/// and its counters (for metrics).
pub struct StartedFlow {
    pub task: tokio::task::JoinHandle<()>,
    pub stats: Arc<FlowStats>,
}

impl Engine {
    /// `rates`: `max_bytes_per_second` of the clusters that have one (by alias).
    #[must_use]
    pub fn new(buffer_bytes: u64, rates: &HashMap<String, u64>) -> Self {
        let engine = Self { budget: Budget::new(buffer_bytes), throttles: std::sync::Mutex::default() };
        engine.set_rates(rates);
        engine
    }

    /// Sets each cluster's link rate: an existing bucket changes in place, a new one is
    /// made, and clusters no longer in `rates` lose theirs (for flows started after).
    pub fn set_rates(&self, rates: &HashMap<String, u64>) {
        let mut throttles = self.throttles.lock().unwrap();
        throttles.retain(|alias, _| rates.contains_key(alias));
        for (alias, rate) in rates {
            match throttles.get(alias) {
                Some(t) => t.set_rate(*rate),
                None => {
                    throttles.insert(alias.clone(), Arc::new(throttle::Throttle::new(*rate)));
                }
            }
        }
    }

    /// Starts one flow; it runs until `shutdown` turns true, then drains (in-flight
    /// produces answered, final checkpoint written) and ends.
    #[must_use]
    pub fn spawn_flow(
        &self,
        flow: &Flow,
        source: Arc<Cluster>,
        target: Arc<Cluster>,
        tuning: &Tuning,
        shutdown: watch::Receiver<bool>,
    ) -> StartedFlow {
        let mut d = FlowDriver::new(flow.clone(), source, target, tuning.clone(), self.budget.clone(), shutdown);
        d.throttle = self.throttles.lock().unwrap().get(&flow.source).cloned();
        let stats = d.stats.clone();
        StartedFlow { task: tokio::spawn(d.run()), stats }
    }

    /// The byte budget every flow shares.
    #[must_use]
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }
}

#[allow(clippy::struct_excessive_bools)] // independent flags of one actor
struct FlowDriver {
    flow: Flow,
    source: Arc<Cluster>,
    target: Arc<Cluster>,
    tuning: Tuning,
    budget: Arc<Budget>,
    /// The source cluster's link throttle, if it has one.
    throttle: Option<Arc<throttle::Throttle>>,
    /// Since when fetches wait for the throttle (for the throttled-time metric).
    throttled_since: Option<Instant>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<FlowStats>,
    parts: BTreeMap<TopicPartition, PartState>,
    target_topics: FastMap<String, TargetTopic>,
    refused_topics: HashMap<String, String>,
    /// One registered producer per path (see [`routes`]).
    routes: Routes,
    /// The route of batches written by applications on the source: `[source, target]`.
    origin_route: u32,
    /// The source cluster's producer registry (loop prevention, [`crate::registry`]).
    registry: Registry,
    /// Producer ids to look up with the next read of the registry.
    registry_lookups: HashSet<i64>,
    registry_reading: bool,
    registry_not_before: Instant,
    target_conns: FastMap<i32, Arc<Connection>>,
    connecting: FastSet<i32>,
    fetching: FastSet<i32>,
    /// Source brokers whose last answer left no partition behind its high watermark:
    /// their next Fetch long-polls; the others' does not wait (catching up).
    fetch_at_tail: FastSet<i32>,
    /// Recent Fetch round trips per source broker: the Fetch size follows them.
    fetch_rtt: FastMap<i32, link::FetchRtt>,
    /// KIP-227 fetch session per source broker.
    fetch_sessions: FastMap<i32, FetchSession>,
    /// Partitions whose fetch state may have changed since their broker's session was
    /// last told (marked where their position, queue, leader or backoff change).
    fetch_dirty: FastSet<TopicPartition>,
    /// Leaders of the partitions on each side, as of the last discovery (the only place
    /// leaders are set). With them, `schedule` skips scanning every partition after every
    /// event when no broker could take a request anyway: with 10,000 partitions that scan
    /// was half of the proxy's CPU.
    source_brokers: FastSet<i32>,
    target_brokers: FastSet<i32>,
    /// Partitions that may have a batch to produce: a superset, so `schedule_produces`
    /// looks at these instead of every partition. A partition is added by whatever can
    /// make it ready (batches queued, an answer to its Produce); dropped when looked at
    /// and found waiting for such an event. Every poll tick (and discovery, producer
    /// changes, reconnects) looks at all partitions again, so a missed case costs at
    /// most one tick, never a stall.
    produce_candidates: std::collections::BTreeSet<TopicPartition>,
    produce_scan_all: bool,
    producing: FastMap<i32, usize>,
    discovering: bool,
    first_discovery_done: bool,
    discover_now: bool,
    next_pending_id: u64,
    target_down: Option<(Instant, String)>,
    /// Bumped on every target failure; a discovery that started before the bump cannot
    /// vouch for target topics (see `forget_target_leaders`).
    target_generation: u64,
    source_down: Option<(Instant, String)>,
    tasks: FuturesUnordered<Task>,
    checkpoint_in_flight: bool,
    group_sync_in_flight: bool,
    /// Last outcome per group, so that only changes are logged.
    group_sync_state: HashMap<String, Result<(), String>>,
}

impl FlowDriver {
    fn new(
        flow: Flow,
        source: Arc<Cluster>,
        target: Arc<Cluster>,
        tuning: Tuning,
        budget: Arc<Budget>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let registry = Registry::new(&flow.registry_topic, flow.source_id.as_str());
        let mut routes = Routes::default();
        let origin_route = routes.intern(Provenance::from_origin(flow.source_id.clone()).with_hop(&flow.target_id));
        let stats = Arc::new(FlowStats::new(&flow.name, flow.heartbeat_topic.is_some()));
        Self {
            flow,
            source,
            target,
            tuning,
            budget,
            throttle: None,
            throttled_since: None,
            shutdown,
            stats,
            parts: BTreeMap::new(),
            target_topics: FastMap::default(),
            refused_topics: HashMap::new(),
            registry,
            routes,
            origin_route,
            registry_lookups: HashSet::new(),
            registry_reading: false,
            registry_not_before: Instant::now(),
            target_conns: FastMap::default(),
            connecting: FastSet::default(),
            fetching: FastSet::default(),
            fetch_at_tail: FastSet::default(),
            fetch_rtt: FastMap::default(),
            fetch_sessions: FastMap::default(),
            fetch_dirty: FastSet::default(),
            source_brokers: FastSet::default(),
            target_brokers: FastSet::default(),
            produce_candidates: std::collections::BTreeSet::new(),
            produce_scan_all: true,
            producing: FastMap::default(),
            discovering: false,
            first_discovery_done: false,
            discover_now: true,
            next_pending_id: 0,
            target_down: None,
            target_generation: 0,
            source_down: None,
            tasks: FuturesUnordered::new(),
            checkpoint_in_flight: false,
            group_sync_in_flight: false,
            group_sync_state: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let name = self.flow.name.clone();
        info!(flow = %name, "flow starting");
        // The producer id of the flow's own route is needed for the first batch: ask for
        // it (and register it) while discovery and the first fetch run.
        self.request_producer(self.origin_route, Duration::ZERO);
        let mut metadata_tick = tokio::time::interval(Tuning::ms(self.tuning.metadata_refresh_ms));
        let mut summary_tick = tokio::time::interval(Tuning::ms(self.tuning.summary_interval_ms));
        summary_tick.tick().await;
        let mut poll_tick = tokio::time::interval(Duration::from_millis(50));
        let mut checkpoint_tick = tokio::time::interval(Tuning::ms(self.tuning.checkpoint_interval_ms));
        let mut group_tick = tokio::time::interval(Tuning::ms(self.tuning.group_sync_interval_ms));
        let mut publish_tick = tokio::time::interval(stats::PUBLISH_EVERY);
        let mut last_summary = (Instant::now(), 0u64, 0u64);
        let mut shutdown_deadline: Option<Instant> = None;
        let mut shutdown = self.shutdown.clone();
        loop {
            if shutdown_deadline.is_none() && *shutdown.borrow() {
                info!(flow = %name, "stopping: no new fetches; finishing in-flight produces");
                shutdown_deadline = Some(Instant::now() + Tuning::ms(self.tuning.shutdown_timeout_ms));
            }
            if let Some(deadline) = shutdown_deadline {
                if self.drained() {
                    self.final_checkpoint().await;
                    info!(flow = %name, "flow stopped cleanly");
                    break;
                }
                if Instant::now() >= deadline {
                    warn!(flow = %name, unacknowledged_batches = self.unacknowledged(), "shutdown timeout reached with batches not yet acknowledged by the target");
                    self.final_checkpoint().await;
                    break;
                }
            }
            let stopping = shutdown_deadline.is_some();
            self.schedule(stopping);
            tokio::select! {
                Some(event) = self.tasks.next() => self.handle(event),
                _ = metadata_tick.tick() => { if !stopping { self.discover_now = true; } }
                _ = summary_tick.tick() => self.summary(&mut last_summary),
                _ = checkpoint_tick.tick() => self.start_checkpoint(),
                _ = group_tick.tick(), if self.flow.groups.is_some() && !stopping => self.start_group_sync(),
                _ = poll_tick.tick() => self.produce_scan_all = true,
                _ = publish_tick.tick() => self.publish(),
                _ = shutdown.changed(), if shutdown_deadline.is_none() => {}
            }
        }
        self.summary(&mut last_summary);
    }

    /// Checkpoints due: partitions whose (source, target) position moved.
    fn due_checkpoints(&self) -> Vec<(TopicPartition, String, Checkpoint)> {
        let now = checkpoint::now_ms();
        self.parts
            .iter()
            .filter_map(|(tp, p)| {
                let pos = p.checkpoint_due()?;
                let key = CheckpointKey {
                    source: self.flow.source.clone(),
                    target: self.flow.target.clone(),
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                };
                let cp = Checkpoint {
                    v: 1,
                    source_offset: pos.0,
                    target_offset: pos.1,
                    last_timestamp: p.last_timestamp,
                    updated_ms: now,
                    points: p.checkpoint_points(),
                };
                Some((tp.clone(), key.encode(), cp))
            })
            .collect()
    }

    fn start_checkpoint(&mut self) {
        if self.checkpoint_in_flight {
            return;
        }
        let due = self.due_checkpoints();
        if due.is_empty() {
            // Every position is in the checkpoints already: they are current.
            self.stats.health.lock().unwrap().checkpoint_at = Some(Instant::now());
            return;
        }
        self.checkpoint_in_flight = true;
        let written = due.iter().map(|(tp, _, cp)| (tp.clone(), (cp.source_offset, cp.target_offset))).collect();
        let records: Vec<(String, Checkpoint)> = due.into_iter().map(|(_, k, cp)| (k, cp)).collect();
        let target = self.target.clone();
        let topic = self.tuning.checkpoint_topic.clone();
        self.tasks.push(Box::pin(async move {
            let result = checkpoint::write(&target, &topic, &records).await.map_err(|e| e.to_string());
            Event::CheckpointWritten { written, result }
        }));
    }

    fn on_checkpoint_written(&mut self, written: Vec<(TopicPartition, (i64, i64))>, result: Result<(), String>) {
        self.checkpoint_in_flight = false;
        match result {
            Ok(()) => {
                for (tp, pos) in written {
                    if let Some(p) = self.parts.get_mut(&tp) {
                        p.checkpoint_written(pos);
                    }
                }
                self.stats.health.lock().unwrap().checkpoint_at = Some(Instant::now());
            }
            Err(e) => {
                warn!(flow = %self.flow.name, side = "target", retrying = true, "writing checkpoints failed: {e}");
            }
        }
    }

    /// Group offset sync (MirrorMaker 2's sync.group.offsets): translate the committed
    /// offsets of matching source groups and commit them on the target, for groups with
    /// no live members there, never backwards (see [`crate::ops::sync_flow_group`]).
    fn start_group_sync(&mut self) {
        if self.group_sync_in_flight {
            return;
        }
        self.group_sync_in_flight = true;
        let (flow, source, target, topic) =
            (self.flow.clone(), self.source.clone(), self.target.clone(), self.tuning.checkpoint_topic.clone());
        self.tasks.push(Box::pin(async move {
            let groups = match crate::groups::list(&source).await {
                Ok(g) => g,
                Err(e) => {
                    return Event::GroupsSynced(vec![(String::new(), Err(format!("listing groups failed: {e}")))])
                }
            };
            let mut out = Vec::new();
            for group in groups.into_iter().filter(|g| flow.syncs_group(g)) {
                let r = crate::ops::sync_flow_group(&flow, &source, &target, &topic, &group).await.map(|c| c.len());
                out.push((group, r));
            }
            Event::GroupsSynced(out)
        }));
    }

    fn on_groups_synced(&mut self, results: Vec<(String, Result<usize, String>)>) {
        self.group_sync_in_flight = false;
        for (group, r) in results {
            match &r {
                Ok(n) if *n > 0 => {
                    debug!(flow = %self.flow.name, group = %group, partitions = n, "group offsets synced to the target");
                }
                _ => {}
            }
            let counter = if r.is_ok() { &self.stats.group_syncs_ok } else { &self.stats.group_syncs_failed };
            counter.fetch_add(1, Ordering::Relaxed);
            let state = r.map(|_| ());
            if self.group_sync_state.get(&group) != Some(&state) {
                match &state {
                    Ok(()) => info!(flow = %self.flow.name, group = %group, "syncing group offsets to the target"),
                    Err(e) => warn!(flow = %self.flow.name, group = %group, "group offsets not synced: {e}"),
                }
                self.group_sync_state.insert(group, state);
            }
        }
    }

    /// At shutdown: one last checkpoint, so a restart resumes exactly here.
    async fn final_checkpoint(&mut self) {
        // A write still in flight covers older positions; the final one supersedes it.
        let due = self.due_checkpoints();
        if due.is_empty() {
            return;
        }
        let records: Vec<(String, Checkpoint)> = due.into_iter().map(|(_, k, cp)| (k, cp)).collect();
        let write = checkpoint::write(&self.target, &self.tuning.checkpoint_topic, &records);
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok(())) => info!(flow = %self.flow.name, partitions = records.len(), "final checkpoint written"),
            Ok(Err(e)) => {
                warn!(flow = %self.flow.name, "final checkpoint not written: {e}; the next start reconciles from the previous one");
            }
            Err(_) => {
                warn!(flow = %self.flow.name, "final checkpoint timed out; the next start reconciles from the previous one");
            }
        }
    }

    fn drained(&self) -> bool {
        self.parts.values().all(|p| p.queue.is_empty() || p.stopped.is_some())
            || (self.routes.none_ready() && self.producing.values().all(|n| *n == 0) && self.target_down.is_some())
    }

    fn unacknowledged(&self) -> usize {
        self.parts.values().map(|p| p.queue.len()).sum()
    }

    /// Starts whatever work can start now.
    fn schedule(&mut self, stopping: bool) {
        if self.discover_now && !self.discovering && !stopping {
            self.discover_now = false;
            self.discovering = true;
            let generation = self.target_generation;
            self.tasks.push(Box::pin(discover(Round {
                generation,
                checkpoint_topic: self.tuning.checkpoint_topic.clone(),
                flow: self.flow.clone(),
                source: self.source.clone(),
                target: self.target.clone(),
                known: self.parts.keys().cloned().collect(),
                known_target_topics: self.target_topics.keys().cloned().collect(),
                first: !self.first_discovery_done,
            })));
        }
        if !self.registry_lookups.is_empty() && !self.registry_reading && self.registry_not_before <= Instant::now() {
            self.registry_reading = true;
            let looked_up = std::mem::take(&mut self.registry_lookups);
            let (source, topic, from) =
                (self.source.clone(), self.tuning.registry_topic.clone(), self.registry.next_offset());
            self.tasks.push(Box::pin(async move {
                let result = registry::read_since(&source, &topic, from).await.map_err(|e| e.to_string());
                Event::RegistryRead { looked_up, result }
            }));
        }
        if !stopping {
            self.schedule_fetches();
        }
        self.schedule_produces();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Discovered { generation, result } => self.on_discovered(generation, result),
            Event::Fetched { broker, ticket, result, charge, sent } => {
                self.fetching.remove(&broker);
                self.on_fetched(broker, ticket, result, charge, sent.elapsed());
            }
            Event::Produced { broker, sent, result } => {
                if let Some(n) = self.producing.get_mut(&broker) {
                    *n = n.saturating_sub(1);
                }
                self.on_produced(broker, sent, result);
            }
            Event::TargetConnected { broker, result } => {
                self.connecting.remove(&broker);
                match result {
                    Ok(c) => {
                        self.target_conns.insert(broker, c);
                        self.produce_scan_all = true;
                    }
                    Err(e) => {
                        self.stats.error(Side::Target, "NETWORK_EXCEPTION");
                        self.target_unreachable(&e.to_string());
                        self.discover_now = true;
                        self.delay_target_broker(broker);
                    }
                }
            }
            Event::CheckpointWritten { written, result } => self.on_checkpoint_written(written, result),
            Event::GroupsSynced(results) => self.on_groups_synced(results),
            Event::ProducerReady { route, result } => self.on_producer_ready(route, result),
            Event::RegistryRead { looked_up, result } => self.on_registry_read(&looked_up, result),
        }
    }

    fn delay_target_broker(&mut self, broker: i32) {
        let until = Instant::now() + Tuning::ms(self.tuning.retry_backoff_max_ms.min(1000));
        for p in self.parts.values_mut() {
            if p.target_leader == Some(broker) {
                p.produce_not_before = until;
            }
        }
    }

    fn target_unreachable(&mut self, why: &str) {
        self.forget_target_leaders();
        if self.target_down.is_none() {
            error!(flow = %self.flow.name, side = "target", retrying = true, "target cluster '{}' is failing: {why}", self.target.alias());
            self.target_down = Some((Instant::now(), why.to_owned()));
        } else {
            debug!(flow = %self.flow.name, "target still failing: {why}");
        }
    }

    /// After a target failure, nothing is produced until a discovery round that started
    /// afterwards has confirmed (or re-created) each target topic. A broker that came back
    /// empty may otherwise acknowledge batches for topics it no longer has (tansu 0.6.0
    /// answers Produce to an unknown topic with success and keeps nothing).
    fn forget_target_leaders(&mut self) {
        self.target_generation += 1;
        self.discover_now = true;
        for p in self.parts.values_mut() {
            p.target_leader = None;
        }
    }

    fn target_ok(&mut self) {
        if let Some((since, _)) = self.target_down.take() {
            info!(flow = %self.flow.name, side = "target", "target cluster '{}' is back after {:.1}s; resuming", self.target.alias(), since.elapsed().as_secs_f64());
        }
    }

    fn source_unreachable(&mut self, why: &str) {
        if self.source_down.is_none() {
            error!(flow = %self.flow.name, side = "source", retrying = true, "source cluster '{}' is failing: {why}", self.source.alias());
            self.source_down = Some((Instant::now(), why.to_owned()));
        }
    }

    fn source_ok(&mut self) {
        if let Some((since, _)) = self.source_down.take() {
            info!(flow = %self.flow.name, side = "source", "source cluster '{}' is back after {:.1}s", self.source.alias(), since.elapsed().as_secs_f64());
        }
    }

    /// Copies the partitions and the flow's health where metrics read them
    /// ([`stats`]); every [`stats::PUBLISH_EVERY`].
    fn publish(&mut self) {
        let now_ms = checkpoint::now_ms();
        let snap: Vec<PartitionSnapshot> = self
            .parts
            .iter()
            .map(|(tp, p)| {
                let lag = p.lag();
                PartitionSnapshot {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    records: p.acked_records,
                    bytes: p.acked_bytes,
                    lag_records: lag,
                    lag_seconds: if lag > 0 && p.last_timestamp > 0 {
                        (now_ms - p.last_timestamp).max(0) as f64 / 1e3
                    } else {
                        0.0
                    },
                    stopped: p.stopped.is_some(),
                }
            })
            .collect();
        *self.stats.partitions.lock().unwrap() = Arc::new(snap);
        let ready = if let Some((_, why)) = &self.target_down {
            Err(format!("target cluster '{}' is failing: {why}", self.target.alias()))
        } else if let Some((_, why)) = &self.source_down {
            Err(format!("source cluster '{}' is failing: {why}", self.source.alias()))
        } else if !self.first_discovery_done {
            Err("discovering topics".to_owned())
        } else if !self.routes.is_ready(self.origin_route) {
            Err("waiting for a producer id on the target".to_owned())
        } else {
            Ok(())
        };
        let mut h = self.stats.health.lock().unwrap();
        h.loop_at = Instant::now();
        h.ready = ready;
        h.source_up = self.source_down.is_none();
        h.target_up = self.target_down.is_none();
        h.fetches_in_flight = self.fetching.len();
        h.produces_in_flight = self.producing.values().sum();
    }

    fn summary(&mut self, last: &mut (Instant, u64, u64)) {
        let now = Instant::now();
        let records = self.stats.records.load(Ordering::Relaxed);
        let bytes = self.stats.bytes.load(Ordering::Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let rps = (records - last.1) as f64 / secs;
        let mbps = (bytes - last.2) as f64 / secs / 1e6;
        *last = (now, records, bytes);
        let lag: i64 = self.parts.values().map(PartState::lag).sum();
        let stopped = self.parts.values().filter(|p| p.stopped.is_some()).count();
        info!(
            flow = %self.flow.name,
            "{rps:.0} records/s, {mbps:.2} MB/s, lag {lag} records, {} partitions ({stopped} stopped), {} records mirrored, {} aborted skipped, {} skipped by provenance, budget in use {:.1} MB",
            self.parts.len(),
            records,
            self.stats.aborted_records.load(Ordering::Relaxed),
            self.stats.provenance_skipped_records.load(Ordering::Relaxed),
            self.budget.used() as f64 / 1e6
        );
        for (tp, p) in &self.parts {
            if let Some(why) = &p.stopped {
                warn!(flow = %self.flow.name, partition = %tp, "partition stopped: {why}");
            }
        }
    }
}
