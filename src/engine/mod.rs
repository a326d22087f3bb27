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

mod fetch_session;
pub mod offsets;
mod routes;
pub mod txn;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic, ForgottenTopic},
    BrokerId, FetchRequest, FetchResponse, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::batch::provenance::Provenance;
use crate::batch::{self, ControlType, OutgoingBatch, ProducerStamp, VerifiedBatch};
use crate::checkpoint::{self, Checkpoint, CheckpointKey, Fingerprint, TailBatch};
use crate::cluster::{Cluster, ClusterError, ClusterMetadata, TopicPartition};
use crate::config::{Flow, OnDataLoss, StartAt, Tuning};
use crate::net::{Connection, NetError};
use crate::registry::{self, Registry, Seen, Verdict};
use crate::wire::produce::{PartitionRecords, ProduceFields, TopicRecords};
use fetch_session::{FetchSession, PartitionFetch, SessionOutcome, Ticket};
use offsets::OffsetCheck;
use routes::{Routes, Sequences};
use txn::{Outcome, Released, TxnStage};

/// Which side of a flow something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Bytes of fetched data not yet acknowledged by a target, shared by all flows.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    #[must_use]
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicU64::new(0) })
    }

    /// Reserves up to `want` bytes (at least `min`), or nothing.
    fn reserve(self: &Arc<Self>, want: u64, min: u64) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let free = self.limit.saturating_sub(used);
            let take = want.min(free);
            if take < min {
                return None;
            }
            match self.used.compare_exchange(used, used + take, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Charge { budget: self.clone(), bytes: take }),
                Err(now) => used = now,
            }
        }
    }

    /// Bytes in use now.
    #[must_use]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// A share of the budget; returned when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Charge {
    /// Returns what exceeds `bytes` to the budget now.
    fn shrink_to(&mut self, bytes: u64) {
        let back = self.bytes.saturating_sub(bytes);
        self.budget.used.fetch_sub(back, Ordering::AcqRel);
        self.bytes -= back;
    }

    /// Takes more bytes from the budget even beyond its limit: a broker may return one
    /// batch larger than the requested `max_bytes` (KIP-74), and that batch must be held.
    fn grow(&mut self, bytes: u64) {
        self.budget.used.fetch_add(bytes, Ordering::AcqRel);
        self.bytes += bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Counters of one flow, read by the summary and by `status`.
#[derive(Debug, Default)]
pub struct FlowStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    pub aborted_records: AtomicU64,
    pub control_batches: AtomicU64,
    pub provenance_skipped_records: AtomicU64,
    /// Source offsets lost to an out-of-range position (retention, truncation).
    pub lost_offsets: AtomicU64,
}

/// A batch waiting for (or in) a Produce request.
struct Pending {
    id: u64,
    batch: VerifiedBatch,
    /// The route (path, producer id) it is written under, see [`routes`].
    route: u32,
    /// Stamp of the last send and the producer generation it belongs to; reused on
    /// retry so the broker can drop duplicates.
    stamp: Option<(u64, ProducerStamp)>,
    state: SendState,
    first_offset: i64,
    /// With re-batching: how many queued batches, from this one on, went out as one
    /// merged target batch under the current stamps (a retry must resend the same run:
    /// the broker dedups by sequence range); 1 when it went alone. 0: not sent yet, or
    /// sent inside a run that an earlier batch opened.
    group: usize,
    /// The budget share of the whole Fetch response this batch came from: the batch
    /// is a view of that response's buffer, which stays allocated until its last batch
    /// is gone, so the budget is returned then too (per-batch shares undercounted by
    /// the retained buffers when thousands of partitions drain unevenly).
    _charge: Arc<Charge>,
}

/// Where a queued batch is in its life on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
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
    fn base_offset(&self) -> i64 {
        self.first_offset
    }
}

struct TargetTopic {
    max_message_bytes: Option<usize>,
}

/// State of one mirrored partition (keyed by its source `TopicPartition`).
struct PartState {
    target: TopicPartition,
    source_leader: Option<i32>,
    source_leader_epoch: i32,
    target_leader: Option<i32>,
    fetch_offset: i64,
    /// True when `fetch_offset` is where a batch read before ended (no batch can
    /// start below it), false for a start position, which may be inside a batch.
    fetch_at_batch_end: bool,
    /// The fetch offset at which a corrupt batch (CRC or offsets) was met: fetched once
    /// more, and the partition stops if it is corrupt again there.
    corrupt_at: Option<i64>,
    high_watermark: i64,
    partition_max_bytes: i32,
    fetch_not_before: Instant,
    stage: TxnStage<Pending>,
    queue: VecDeque<Pending>,
    /// Bytes of the batches in `queue` (kept, not summed: read on every schedule).
    queue_bytes: usize,
    in_flight: usize,
    /// Set after a produce error: no sends until in-flight requests drain.
    recovering: bool,
    produce_not_before: Instant,
    produce_backoff: Duration,
    next_sequence: Sequences,
    /// Route of the batches in flight: a partition switches routes only when none are.
    in_flight_route: u32,
    /// A batch's producer id is being looked up in the source's registry; fetched
    /// again (from that batch) once the registry has been read.
    registry_wait: bool,
    stopped: Option<String>,
    /// Next target offset after the acknowledged data; None until known.
    target_next: Option<i64>,
    /// Timestamp of the newest record on the target.
    last_timestamp: i64,
    /// Mapping history written with each checkpoint.
    points: Vec<(i64, i64)>,
    /// (source, target) of the last checkpoint written.
    checkpointed: Option<(i64, i64)>,
    /// Batches found on the target after the checkpoint: batches the mirror would send
    /// are matched against them first and not sent again (crash window).
    reconcile: VecDeque<TailBatch>,
    /// Batches that match the beginning of a merged batch on the target (re-batching)
    /// during reconciliation: known to be on the target once the whole run matched.
    held: Vec<Pending>,
}

impl PartState {
    /// Index of the first batch not sent yet (after a failure, the failed one: batches
    /// are resent in order).
    fn next_unsent(&self) -> Option<usize> {
        self.queue.iter().position(|e| e.state == SendState::Unsent)
    }

    fn queued_bytes(&self) -> usize {
        self.queue_bytes
    }

    /// First source offset not yet on the target.
    fn mirrored_position(&self) -> i64 {
        self.held
            .first()
            .or_else(|| self.queue.front())
            .map(Pending::base_offset)
            .or_else(|| self.stage.first_offset())
            .unwrap_or(self.fetch_offset)
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

/// Result of one discovery round.
struct Discovery {
    source: ClusterMetadata,
    target: ClusterMetadata,
    /// New partitions and where they start.
    new_partitions: Vec<(TopicPartition, Start)>,
    /// Target topic facts for topics seen for the first time.
    target_topics: Vec<(String, TargetTopic)>,
    /// Source topics that cannot be mirrored, with why.
    refused: Vec<(String, String)>,
}

/// Where a new partition starts.
struct Start {
    source_offset: i64,
    /// Why the partition cannot start (it is added stopped, so the summary names it).
    stop: Option<String>,
    /// From a checkpoint: the target position, the target's batches after it (to be
    /// reconciled), the newest mirrored timestamp and the mapping history.
    resume: Option<Resume>,
}

struct Resume {
    /// True for a checkpoint written just now, before the partition's first batch.
    fresh: bool,
    target_offset: i64,
    tail: Vec<TailBatch>,
    last_timestamp: i64,
    points: Vec<(i64, i64)>,
}

/// Runs all flows of a configuration until `shutdown` turns true.
pub struct Engine {
    flows: Vec<FlowDriver>,
}

impl Engine {
    #[must_use]
    pub fn new(
        flows: &[Flow],
        clusters: &HashMap<String, Arc<Cluster>>,
        tuning: &Tuning,
        shutdown: &watch::Receiver<bool>,
    ) -> Self {
        let budget = Budget::new(tuning.buffer_bytes);
        let flows = flows
            .iter()
            .map(|f| {
                FlowDriver::new(
                    f.clone(),
                    clusters[&f.source].clone(),
                    clusters[&f.target].clone(),
                    tuning.clone(),
                    budget.clone(),
                    shutdown.clone(),
                )
            })
            .collect();
        Self { flows }
    }

    /// Drives every flow; returns when all have drained after shutdown.
    pub async fn run(self) {
        let handles: Vec<_> = self.flows.into_iter().map(|f| tokio::spawn(f.run())).collect();
        for h in handles {
            if let Err(e) = h.await {
                error!("a flow task failed: {e}");
            }
        }
    }
}

#[allow(clippy::struct_excessive_bools)] // independent flags of one actor
struct FlowDriver {
    flow: Flow,
    source: Arc<Cluster>,
    target: Arc<Cluster>,
    tuning: Tuning,
    budget: Arc<Budget>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<FlowStats>,
    parts: BTreeMap<TopicPartition, PartState>,
    target_topics: HashMap<String, TargetTopic>,
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
    target_conns: HashMap<i32, Arc<Connection>>,
    connecting: HashSet<i32>,
    fetching: HashSet<i32>,
    /// KIP-227 fetch session per source broker.
    fetch_sessions: HashMap<i32, FetchSession>,
    /// Partitions whose fetch state may have changed since their broker's session was
    /// last told (marked where their position, queue, leader or backoff change).
    fetch_dirty: HashSet<TopicPartition>,
    /// Leaders of the partitions on each side, as of the last discovery (the only place
    /// leaders are set). With them, `schedule` skips scanning every partition after every
    /// event when no broker could take a request anyway: with 10,000 partitions that scan
    /// was half of the proxy's CPU.
    source_brokers: HashSet<i32>,
    target_brokers: HashSet<i32>,
    /// Partitions that may have a batch to produce: a superset, so `schedule_produces`
    /// looks at these instead of every partition. A partition is added by whatever can
    /// make it ready (batches queued, an answer to its Produce); dropped when looked at
    /// and found waiting for such an event. Every poll tick (and discovery, producer
    /// changes, reconnects) looks at all partitions again, so a missed case costs at
    /// most one tick, never a stall.
    produce_candidates: std::collections::BTreeSet<TopicPartition>,
    produce_scan_all: bool,
    producing: HashMap<i32, usize>,
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

/// Errors on Produce that mean "the target lost or never had our producer state".
fn is_producer_state_error(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::UnknownProducerId
            | ResponseError::InvalidProducerEpoch
            | ResponseError::OutOfOrderSequenceNumber
            | ResponseError::ProducerFenced
    )
}

/// Errors that a metadata refresh may fix.
fn needs_metadata(e: ResponseError) -> bool {
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
        Self {
            flow,
            source,
            target,
            tuning,
            budget,
            shutdown,
            stats: Arc::new(FlowStats::default()),
            parts: BTreeMap::new(),
            target_topics: HashMap::new(),
            refused_topics: HashMap::new(),
            registry,
            routes,
            origin_route,
            registry_lookups: HashSet::new(),
            registry_reading: false,
            registry_not_before: Instant::now(),
            target_conns: HashMap::new(),
            connecting: HashSet::new(),
            fetching: HashSet::new(),
            fetch_sessions: HashMap::new(),
            fetch_dirty: HashSet::new(),
            source_brokers: HashSet::new(),
            target_brokers: HashSet::new(),
            produce_candidates: std::collections::BTreeSet::new(),
            produce_scan_all: true,
            producing: HashMap::new(),
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
        let mut metadata_tick = tokio::time::interval(Tuning::ms(self.tuning.metadata_refresh_ms));
        let mut summary_tick = tokio::time::interval(Tuning::ms(self.tuning.summary_interval_ms));
        summary_tick.tick().await;
        let mut poll_tick = tokio::time::interval(Duration::from_millis(50));
        let mut checkpoint_tick = tokio::time::interval(Tuning::ms(self.tuning.checkpoint_interval_ms));
        let mut group_tick = tokio::time::interval(Tuning::ms(self.tuning.group_sync_interval_ms));
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
                let target = p.target_next?;
                let pos = (p.mirrored_position(), target);
                if p.checkpointed == Some(pos) {
                    return None;
                }
                let key = CheckpointKey {
                    source: self.flow.source.clone(),
                    target: self.flow.target.clone(),
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                };
                let mut points = p.points.clone();
                if let Some(previous) = p.checkpointed {
                    checkpoint::push_point(&mut points, previous);
                }
                let cp = Checkpoint {
                    v: 1,
                    source_offset: pos.0,
                    target_offset: pos.1,
                    last_timestamp: p.last_timestamp,
                    updated_ms: now,
                    points,
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
                        if let Some(previous) = p.checkpointed {
                            checkpoint::push_point(&mut p.points, previous);
                        }
                        p.checkpointed = Some(pos);
                    }
                }
            }
            Err(e) => {
                warn!(flow = %self.flow.name, side = "target", retrying = true, "writing checkpoints failed: {e}")
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
                    debug!(flow = %self.flow.name, group = %group, partitions = n, "group offsets synced to the target")
                }
                _ => {}
            }
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
                warn!(flow = %self.flow.name, "final checkpoint not written: {e}; the next start reconciles from the previous one")
            }
            Err(_) => {
                warn!(flow = %self.flow.name, "final checkpoint timed out; the next start reconciles from the previous one")
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
            self.tasks.push(Box::pin(discover(
                generation,
                self.tuning.checkpoint_topic.clone(),
                self.flow.clone(),
                self.source.clone(),
                self.target.clone(),
                self.parts.keys().cloned().collect(),
                self.target_topics.keys().cloned().collect(),
                !self.first_discovery_done,
            )));
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

    /// Starts a Fetch on every source broker that has none outstanding. A broker with an
    /// established fetch session gets the changes of the partitions marked in
    /// `fetch_dirty` only; any other gets a full request, built by looking at every
    /// partition (as large as the request it builds).
    fn schedule_fetches(&mut self) {
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

    fn schedule_produces(&mut self) {
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

    fn handle(&mut self, event: Event) {
        match event {
            Event::Discovered { generation, result } => self.on_discovered(generation, result),
            Event::Fetched { broker, ticket, result, charge } => {
                self.fetching.remove(&broker);
                self.on_fetched(broker, ticket, result, charge);
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

    /// Obtains a producer id for `route` and registers it with the route's path on the
    /// target before anything is written with it; after `delay` (a retry).
    fn request_producer(&mut self, route: u32, delay: Duration) {
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

    fn on_producer_ready(&mut self, route: u32, result: Result<(i64, i16), String>) {
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

    fn on_registry_read(&mut self, looked_up: &HashSet<i64>, result: Result<(Vec<registry::RawRecord>, i64), String>) {
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

    fn on_discovered(&mut self, generation: u64, result: Result<Discovery, ClusterError>) {
        self.discovering = false;
        let d = match result {
            Ok(d) => d,
            Err(e) => {
                if e.to_string().contains(&format!("cluster '{}'", self.source.alias())) {
                    self.source_unreachable(&e.to_string());
                } else {
                    self.target_unreachable(&e.to_string());
                }
                return;
            }
        };
        self.first_discovery_done = true;
        self.source_ok();
        for (topic, why) in d.refused {
            if self.refused_topics.get(&topic) != Some(&why) {
                error!(flow = %self.flow.name, topic = %topic, "topic not mirrored: {why}");
                self.refused_topics.insert(topic, why);
            }
        }
        for (topic, t) in d.target_topics {
            self.target_topics.insert(topic, t);
        }
        let now = Instant::now();
        for (tp, start) in d.new_partitions {
            let target =
                TopicPartition { topic: Arc::from(self.flow.target_topic(&tp.topic)), partition: tp.partition };
            let source_offset = start.source_offset;
            if let Some(why) = &start.stop {
                error!(flow = %self.flow.name, side = "source", partition = %tp, retrying = false, "partition stopped: {why}");
            }
            match &start.resume {
                Some(r) if !r.fresh => {
                    info!(flow = %self.flow.name, partition = %tp, source_offset, target_offset = r.target_offset, target_batches_after_checkpoint = r.tail.len(), target = %target, "resuming partition from its checkpoint")
                }
                _ => {
                    info!(flow = %self.flow.name, partition = %tp, start_offset = source_offset, target = %target, "mirroring partition")
                }
            }
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
            self.parts.insert(
                tp,
                PartState {
                    target,
                    source_leader: None,
                    source_leader_epoch: -1,
                    target_leader: None,
                    fetch_offset: source_offset,
                    fetch_at_batch_end: false,
                    corrupt_at: None,
                    high_watermark: source_offset,
                    partition_max_bytes: self.tuning.fetch_partition_max_bytes as i32,
                    fetch_not_before: now,
                    stage: TxnStage::new(self.tuning.transaction_buffer_bytes as usize),
                    queue: VecDeque::new(),
                    queue_bytes: 0,
                    in_flight: 0,
                    recovering: false,
                    produce_not_before: now,
                    produce_backoff: Tuning::ms(self.tuning.retry_backoff_ms),
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
                },
            );
        }
        // Leaders on both sides.
        for (tp, p) in &mut self.parts {
            if let Some(info) = d.source.topics.get(&*tp.topic).and_then(|t| t.partitions.get(tp.partition as usize)) {
                p.source_leader = (info.leader >= 0).then_some(info.leader);
                p.source_leader_epoch = info.leader_epoch;
            }
            if generation != self.target_generation {
                continue; // the target failed while this round ran: wait for a fresh one
            }
            if let Some(info) =
                d.target.topics.get(&*p.target.topic).and_then(|t| t.partitions.get(p.target.partition as usize))
            {
                let leader = (info.leader >= 0).then_some(info.leader);
                if leader != p.target_leader {
                    debug!(partition = %p.target, ?leader, "target leader");
                }
                p.target_leader = leader;
            } else {
                p.target_leader = None;
            }
        }
        self.source_brokers = self.parts.values().filter_map(|p| p.source_leader).collect();
        self.target_brokers = self.parts.values().filter_map(|p| p.target_leader).collect();
        self.produce_scan_all = true;
        // Leaders, epochs and new partitions: every partition's fetch state is news.
        self.fetch_dirty.extend(self.parts.keys().cloned());
    }

    fn on_fetched(&mut self, broker: i32, ticket: Ticket, result: Result<FetchResponse, NetError>, mut charge: Charge) {
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

    fn on_fetch_partition_error(&mut self, tp: &TopicPartition, e: ResponseError, log_start: i64, hwm: i64) {
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
    fn accept_records(
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

    fn on_produced(
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
    fn produce_acked(&mut self, tp: &TopicPartition, id: u64, target_base_offset: i64, opens: bool) {
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
    fn produce_failed(
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
    fn reset_producer(&mut self, route: u32) {
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

    fn summary(&mut self, last: &mut (Instant, u64, u64)) {
        let now = Instant::now();
        let records = self.stats.records.load(Ordering::Relaxed);
        let bytes = self.stats.bytes.load(Ordering::Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let rps = (records - last.1) as f64 / secs;
        let mbps = (bytes - last.2) as f64 / secs / 1e6;
        *last = (now, records, bytes);
        let lag: i64 = self.parts.values().map(|p| (p.high_watermark - p.mirrored_position()).max(0)).sum();
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

/// Crash window after a restart: is `pending` one of the batches found on the target
/// after the checkpoint? Batches arrive in source order and ours appear on the target in
/// the same order, so the first match (foreign batches in between are passed over) is
/// the one. The first batch with no match ends the reconciliation.
/// The producer stamp for the next batch of a partition: its records take the
/// sequence numbers from `next_sequence` on (wrapping at `i32::MAX`, as Kafka's do).
fn next_stamp(next_sequence: &mut i32, producer_id: i64, producer_epoch: i16, batch: &VerifiedBatch) -> ProducerStamp {
    let stamp = ProducerStamp { producer_id, producer_epoch, base_sequence: *next_sequence };
    *next_sequence = next_sequence.wrapping_add(batch.header().records_count.max(1)) & i32::MAX;
    stamp
}

/// How many queued batches, from `idx` on, go out as one target batch (re-batching). A
/// run already sent under the current producer stamps is resent as it was; otherwise
/// consecutive unsent batches are taken while they can merge and stay within the size
/// limits (source bytes; the target's max.message.bytes is checked on the result).
fn merge_run(
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

/// Matches a batch the mirror is about to send against the target's batches after the
/// checkpoint (crash window). Returns what must still be sent: nothing when the batch
/// (or, with re-batching, the run of batches merged into one target batch it belongs
/// to) is on the target already; the batch, and any held before it, once the target
/// holds something else from here on (reconciliation then ends).
fn reconcile(flow: &str, tp: &TopicPartition, p: &mut PartState, pending: Pending) -> Vec<Pending> {
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

/// A Fetch to build: every wanted partition, or the changes to an established session.
enum Request {
    Full(Vec<(TopicPartition, PartitionFetch)>),
    Changes(Vec<(TopicPartition, Option<PartitionFetch>)>),
}

/// What a partition asks of its source broker now (None: nothing), and whether that
/// can change by time alone (a backoff after an error), so it must be looked at again.
fn fetch_state(p: &PartState, now: Instant, per_partition_cap: usize) -> (Option<PartitionFetch>, bool) {
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
fn corrupt_batch(flow: &str, tp: &TopicPartition, p: &mut PartState, why: &str) {
    if p.corrupt_at == Some(p.fetch_offset) {
        stop_partition(flow, tp, p, Side::Source, format_args!("{why} (again when fetched a second time)"));
    } else {
        warn!(flow = %flow, side = "source", partition = %tp, retrying = true, "{why}; fetching it once more");
        p.corrupt_at = Some(p.fetch_offset);
    }
}

fn stop_partition(flow: &str, tp: &TopicPartition, p: &mut PartState, side: Side, why: impl fmt::Display) {
    if p.stopped.is_none() {
        error!(flow = %flow, side = %side, partition = %tp, retrying = false, "partition stopped: {why}");
        p.stopped = Some(format!("{side}: {why}"));
    }
}

/// One discovery round: lists matching source topics, makes sure their target topics
/// exist with enough partitions, and finds start offsets of partitions not yet known.
async fn discover(
    generation: u64,
    checkpoint_topic: String,
    flow: Flow,
    source: Arc<Cluster>,
    target: Arc<Cluster>,
    known: HashSet<TopicPartition>,
    known_target_topics: HashSet<String>,
    first: bool,
) -> Event {
    Event::Discovered {
        generation,
        result: discover_inner(&flow, &source, &target, &known, &known_target_topics, first, &checkpoint_topic).await,
    }
}

async fn discover_inner(
    flow: &Flow,
    source: &Cluster,
    target: &Cluster,
    known: &HashSet<TopicPartition>,
    known_target_topics: &HashSet<String>,
    first: bool,
    checkpoint_topic: &str,
) -> Result<Discovery, ClusterError> {
    let src = source.metadata(None).await?;
    let mut matching: Vec<(&String, usize, usize)> = src
        .topics
        .iter()
        .filter(|(name, t)| t.error.is_none() && flow.mirrors(name, t.is_internal))
        .map(|(name, t)| (name, t.partitions.len(), t.partitions.iter().map(|p| p.replicas).max().unwrap_or(1)))
        .collect();
    matching.sort();
    let target_names: Vec<String> = matching.iter().map(|(n, ..)| flow.target_topic(n)).collect();
    let mut tgt =
        if target_names.is_empty() { ClusterMetadata::default() } else { target.metadata(Some(&target_names)).await? };
    let mut refused = Vec::new();
    let mut changed = false;
    let mut usable = Vec::new();
    for ((name, partitions, replicas), tname) in matching.iter().zip(&target_names) {
        let existing = tgt.topics.get(tname).filter(|t| t.error.is_none()).map(|t| t.partitions.len());
        match existing {
            None => {
                let rf = (*replicas).clamp(1, tgt.brokers.len().max(1)) as i16;
                info!(flow = %flow.name, "creating target topic '{tname}' on '{}' with {partitions} partitions, replication factor {rf}", target.alias());
                if let Err(e) =
                    crate::topicsync::create_target_topic(flow, source, target, name, tname, *partitions as i32, rf).await
                {
                    if e.is_retriable() {
                        return Err(e);
                    }
                    refused.push(((*name).clone(), format!("cannot create target topic '{tname}': {e}")));
                    continue;
                }
                changed = true;
            }
            Some(n) if n < *partitions => {
                if known.iter().any(|tp| &*tp.topic == name.as_str()) {
                    // The source grew while we mirror: grow the target the same way.
                    info!(flow = %flow.name, "source topic '{name}' grew to {partitions} partitions; growing target topic '{tname}'");
                    if let Err(e) = target.create_partitions(tname, *partitions as i32).await {
                        refused.push((
                            (*name).clone(),
                            format!("cannot grow target topic '{tname}' to {partitions} partitions: {e}"),
                        ));
                        continue;
                    }
                    changed = true;
                } else {
                    refused.push((
                        (*name).clone(),
                        format!("target topic '{tname}' has {n} partitions but the source has {partitions}; partition i is mirrored to partition i, so the target needs at least as many"),
                    ));
                    continue;
                }
            }
            Some(_) => {}
        }
        usable.push(((*name).clone(), *partitions, tname.clone()));
    }
    if changed {
        // Newly created topics: wait for their leaders.
        for _ in 0..20 {
            tgt = target.metadata(Some(&target_names)).await?;
            let ready = usable.iter().all(|(_, n, t)| {
                tgt.topics.get(t).is_some_and(|ti| {
                    ti.error.is_none() && ti.partitions.len() >= *n && ti.partitions.iter().all(|p| p.leader >= 0)
                })
            });
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mut target_topics = Vec::new();
    for (_, _, tname) in &usable {
        if known_target_topics.contains(tname) {
            continue;
        }
        let configs = target.topic_configs(tname).await.unwrap_or_default();
        if let Some(c) = configs.get("compression.type") {
            if c != "producer" {
                warn!(flow = %flow.name, "target topic '{tname}' has compression.type={c}: the target broker will recompress every batch (set it to 'producer' to keep batches as mirrored)");
            }
        }
        let max_message_bytes = configs.get("max.message.bytes").and_then(|v| v.parse::<usize>().ok());
        target_topics.push((tname.clone(), TargetTopic { max_message_bytes }));
    }
    // Start offsets for partitions not yet mirrored.
    let mut new_partitions = Vec::new();
    let mut by_leader: BTreeMap<(i32, String), Vec<i32>> = BTreeMap::new();
    for (name, partitions, _) in &usable {
        let info = &src.topics[name];
        for i in 0..*partitions {
            let tp = TopicPartition::new(name, i as i32);
            if known.contains(&tp) {
                continue;
            }
            let leader = info.partitions[i].leader;
            if leader < 0 {
                continue; // no leader yet: next round
            }
            by_leader.entry((leader, name.clone())).or_default().push(i as i32);
        }
    }
    // Partitions present at the first round start where the config says; partitions that
    // appear later are new data in full and start at the beginning.
    // Partitions with a checkpoint resume from it instead.
    let timestamp = if first && flow.start == StartAt::Latest { -1 } else { -2 };
    let log = if by_leader.is_empty() {
        checkpoint::CheckpointLog::default()
    } else {
        checkpoint::ensure_topic(target, checkpoint_topic).await.map_err(checkpoint_cluster_error)?;
        checkpoint::read_log(target, checkpoint_topic).await.map_err(checkpoint_cluster_error)?
    };
    if log.foreign > 0 {
        warn!(flow = %flow.name, "checkpoint topic '{checkpoint_topic}' on '{}' holds {} records that are not mirrorproxy checkpoints; they are ignored and left alone", target.alias(), log.foreign);
    }
    let mut starting = Vec::new();
    for ((leader, topic), parts) in by_leader {
        let mut fresh = Vec::new();
        for partition in parts {
            let key = CheckpointKey {
                source: flow.source.clone(),
                target: flow.target.clone(),
                topic: topic.clone(),
                partition,
            };
            match log.entries.get(&key) {
                None => fresh.push(partition),
                Some(Err(why)) => refused.push((
                    format!("{topic}-{partition}"),
                    format!("its checkpoint in '{checkpoint_topic}' on '{}' cannot be read ({why}); not mirrored, and the record is left as it is — delete or fix it to start over", target.alias()),
                )),
                Some(Ok(cp)) => {
                    let stop = checkpoint_beyond_log_end(source, leader, &topic, partition, cp.source_offset).await?;
                    let target_topic = flow.target_topic(&topic);
                    let tail = checkpoint::read_batches(target, &target_topic, partition, cp.target_offset, 1 << 20)
                        .await
                        .map_err(checkpoint_cluster_error)?;
                    new_partitions.push((
                        TopicPartition::new(&topic, partition),
                        Start {
                            source_offset: cp.source_offset,
                            stop,
                            resume: Some(Resume { fresh: false, target_offset: cp.target_offset, tail, last_timestamp: cp.last_timestamp, points: cp.points.clone() }),
                        },
                    ));
                }
            }
        }
        if fresh.is_empty() {
            continue;
        }
        for (partition, result) in source.list_offsets(leader, &topic, &fresh, timestamp).await? {
            match result {
                Ok(offset) => starting.push((TopicPartition::new(&topic, partition), offset)),
                Err(e) => debug!("ListOffsets {topic}-{partition}: {e}; next round"),
            }
        }
    }
    new_partitions.extend(first_checkpoints(flow, target, &tgt, checkpoint_topic, starting).await?);
    Ok(Discovery { source: src, target: tgt, new_partitions, target_topics, refused })
}

/// Partitions without a checkpoint get one *before* anything is produced for them: the
/// start offset paired with the target partition's current end. Without it, a crash
/// before the first periodic checkpoint would leave batches on the target that no
/// checkpoint covers, and the restart would copy them again.
async fn first_checkpoints(
    flow: &Flow,
    target: &Cluster,
    tgt: &ClusterMetadata,
    checkpoint_topic: &str,
    starting: Vec<(TopicPartition, i64)>,
) -> Result<Vec<(TopicPartition, Start)>, ClusterError> {
    let mut by_leader: BTreeMap<(i32, String), Vec<(TopicPartition, i64)>> = BTreeMap::new();
    for (tp, offset) in starting {
        let tname = flow.target_topic(&tp.topic);
        let Some(leader) =
            tgt.topics.get(&tname).and_then(|t| t.partitions.get(tp.partition as usize)).map(|p| p.leader)
        else {
            continue; // target partition not there yet: next round
        };
        if leader >= 0 {
            by_leader.entry((leader, tname)).or_default().push((tp, offset));
        }
    }
    let mut out = Vec::new();
    let mut records = Vec::new();
    let now = checkpoint::now_ms();
    for ((leader, tname), parts) in by_leader {
        let ids: Vec<i32> = parts.iter().map(|(tp, _)| tp.partition).collect();
        let ends: HashMap<i32, i64> = target
            .list_offsets(leader, &tname, &ids, -1)
            .await?
            .into_iter()
            .filter_map(|(p, r)| r.ok().map(|o| (p, o)))
            .collect();
        for (tp, source_offset) in parts {
            let Some(&target_offset) = ends.get(&tp.partition) else { continue };
            let key = CheckpointKey {
                source: flow.source.clone(),
                target: flow.target.clone(),
                topic: tp.topic.to_string(),
                partition: tp.partition,
            };
            records.push((
                key.encode(),
                Checkpoint {
                    v: 1,
                    source_offset,
                    target_offset,
                    last_timestamp: -1,
                    updated_ms: now,
                    points: Vec::new(),
                },
            ));
            out.push((
                tp,
                Start {
                    source_offset,
                    stop: None,
                    resume: Some(Resume {
                        fresh: true,
                        target_offset,
                        tail: Vec::new(),
                        last_timestamp: -1,
                        points: Vec::new(),
                    }),
                },
            ));
        }
    }
    checkpoint::write(target, checkpoint_topic, &records).await.map_err(checkpoint_cluster_error)?;
    Ok(out)
}

/// A checkpoint whose source position is beyond the source partition's log end: the
/// source lost data or is not the cluster the checkpoint was written for. Never
/// "continued" silently: the partition starts stopped with this reason.
/// tansu 0.6.0 reports the log end as the last batch's base offset + 1, so a position
/// beyond the reported end is checked against the end of the last batch itself.
async fn checkpoint_beyond_log_end(
    source: &Cluster,
    leader: i32,
    topic: &str,
    partition: i32,
    position: i64,
) -> Result<Option<String>, ClusterError> {
    let reported = source.list_offsets(leader, topic, &[partition], -1).await?;
    let Some(Ok(end)) = reported.into_iter().find(|(p, _)| *p == partition).map(|(_, r)| r) else {
        return Ok(None); // no answer: the fetch position is checked by the broker anyway
    };
    if position <= end {
        return Ok(None);
    }
    let mut true_end = end;
    checkpoint::read_partition(source, topic, partition, (end - 1).max(0), |b| {
        true_end = true_end.max(b.header().next_offset());
        true
    })
    .await
    .map_err(checkpoint_cluster_error)?;
    Ok((position > true_end).then(|| {
        format!("its checkpoint position {position} is beyond the end of the source log ({true_end}): the source lost data or is not the cluster the checkpoint was written for; delete the checkpoint record to start this partition over")
    }))
}

fn checkpoint_cluster_error(e: checkpoint::CheckpointError) -> ClusterError {
    match e {
        checkpoint::CheckpointError::Cluster(c) => c,
        checkpoint::CheckpointError::Topic { cluster, topic, reason } => {
            ClusterError::Other { cluster, what: format!("checkpoint topic '{topic}': {reason}") }
        }
    }
}
