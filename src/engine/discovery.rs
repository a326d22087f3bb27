//! Discovery and topic management: which source topics the flow mirrors, their target
//! topics created or grown to match, and where each new partition starts (a checkpoint,
//! reconciled with what the target holds after it, or the configured start with a
//! first checkpoint written before anything is produced).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::partition::{PartState, Resume, Start};
use super::{Event, FlowDriver, Side};
use crate::checkpoint::{self, Checkpoint, CheckpointKey};
use crate::cluster::{Cluster, ClusterError, ClusterMetadata, TopicPartition};
use crate::config::{Flow, StartAt};

pub(super) struct TargetTopic {
    pub(super) max_message_bytes: Option<usize>,
}

pub(super) struct Discovery {
    pub(super) source: ClusterMetadata,
    pub(super) target: ClusterMetadata,
    /// New partitions and where they start.
    pub(super) new_partitions: Vec<(TopicPartition, Start)>,
    /// Target topic facts for topics seen for the first time.
    pub(super) target_topics: Vec<(String, TargetTopic)>,
    /// Source topics that cannot be mirrored, with why.
    pub(super) refused: Vec<(String, String)>,
}

impl FlowDriver {
    pub(super) fn on_discovered(&mut self, generation: u64, result: Result<Discovery, ClusterError>) {
        self.discovering = false;
        let d = match result {
            Ok(d) => d,
            Err(e) => {
                if e.to_string().contains(&format!("cluster '{}'", self.source.alias())) {
                    self.stats.error(Side::Source, &e.kafka_name());
                    self.source_unreachable(&e.to_string());
                } else {
                    self.stats.error(Side::Target, &e.kafka_name());
                    self.target_unreachable(&e.to_string());
                }
                return;
            }
        };
        self.first_discovery_done = true;
        self.source_ok();
        if generation == self.target_generation {
            // The round read the target's metadata: it answers again, also while no
            // data flows to prove it (readiness must not wait for the next record).
            self.target_ok();
        }
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
                    info!(flow = %self.flow.name, partition = %tp, source_offset, target_offset = r.target_offset, target_batches_after_checkpoint = r.tail.len(), target = %target, "resuming partition from its checkpoint");
                }
                _ => {
                    info!(flow = %self.flow.name, partition = %tp, start_offset = source_offset, target = %target, "mirroring partition");
                }
            }
            self.parts.insert(tp, PartState::new(target, start, &self.tuning, now));
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
}

/// What one discovery round starts from (moved into its task).
pub(super) struct Round {
    /// The flow's target generation when the round started (see `forget_target_leaders`).
    pub(super) generation: u64,
    pub(super) checkpoint_topic: String,
    pub(super) flow: Flow,
    pub(super) source: Arc<Cluster>,
    pub(super) target: Arc<Cluster>,
    /// Partitions already mirrored, and target topics already looked at.
    pub(super) known: HashSet<TopicPartition>,
    pub(super) known_target_topics: HashSet<String>,
    /// The flow's first round: partitions start where the config says.
    pub(super) first: bool,
}

/// One discovery round: lists matching source topics, makes sure their target topics
/// exist with enough partitions, and finds start offsets of partitions not yet known.
pub(super) async fn discover(round: Round) -> Event {
    Event::Discovered { generation: round.generation, result: discover_inner(&round).await }
}

async fn discover_inner(round: &Round) -> Result<Discovery, ClusterError> {
    let Round { flow, known, known_target_topics, first, checkpoint_topic, .. } = round;
    let (source, target, first, checkpoint_topic) = (&*round.source, &*round.target, *first, checkpoint_topic.as_str());
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
                    crate::topicsync::create_target_topic(flow, source, target, name, tname, *partitions as i32, rf)
                        .await
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
                            contiguous: false,
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
    mark_contiguous(source, &mut new_partitions).await;
    Ok(Discovery { source: src, target: tgt, new_partitions, target_topics, refused })
}

/// New partitions of topics that are not compacted hold their logs to having no gaps
/// (a base offset raised by a flip is caught, see [`super::offsets`]). A topic whose
/// configuration cannot be read is treated as compacted: gaps allowed.
async fn mark_contiguous(source: &Cluster, new_partitions: &mut [(TopicPartition, Start)]) {
    let mut compacted: HashMap<Arc<str>, bool> = HashMap::new();
    for (tp, start) in new_partitions.iter_mut() {
        if !compacted.contains_key(&tp.topic) {
            let configs = source.topic_configs(&tp.topic).await;
            let policy = configs.as_ref().ok().map(|c| c.get("cleanup.policy").map_or("delete", String::as_str));
            compacted.insert(tp.topic.clone(), policy.is_none_or(|p| p.contains("compact")));
        }
        start.contiguous = !compacted[&tp.topic];
    }
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
                    contiguous: false,
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
