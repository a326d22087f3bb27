//! Operator commands beside `run`: `status`, `offsets translate`, `offsets at`.
//! Each returns rows that the CLI prints as a table for people or JSON for machines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::checkpoint::{self, CheckpointKey};
use crate::cluster::{Cluster, ClusterError, TopicPartition};
use crate::config::{Config, Flow};
use crate::groups;
use crate::translate::{translate, Translated};

/// One line of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub flow: String,
    pub topic: String,
    pub partition: i32,
    /// End offset of the source partition (its high watermark), -1 if unknown.
    pub source_end: i64,
    /// First source offset not yet on the target (from the checkpoint), -1 if none.
    pub mirrored: i64,
    pub lag_records: i64,
    /// Age of the newest mirrored record while there is lag, 0 when caught up.
    pub lag_seconds: f64,
}

fn find_flow<'a>(config: &'a Config, name: &str) -> Result<&'a Flow, String> {
    config.flows.iter().find(|f| f.name == name).ok_or_else(|| {
        let known: Vec<&str> = config.flows.iter().map(|f| f.name.as_str()).collect();
        format!("no flow '{name}' in the config (flows: {})", known.join(", "))
    })
}

/// End offsets of every partition of `topics` on `cluster`.
async fn end_offsets(cluster: &Cluster, topics: &[String]) -> Result<BTreeMap<TopicPartition, i64>, ClusterError> {
    let md = cluster.metadata(Some(topics)).await?;
    let mut by_leader: BTreeMap<(i32, String), Vec<i32>> = BTreeMap::new();
    for (name, t) in &md.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            if p.leader >= 0 {
                by_leader.entry((p.leader, name.clone())).or_default().push(i as i32);
            }
        }
    }
    let mut out = BTreeMap::new();
    for ((leader, topic), parts) in by_leader {
        for (partition, r) in cluster.list_offsets(leader, &topic, &parts, -1).await? {
            out.insert(TopicPartition::new(&topic, partition), r.unwrap_or(-1));
        }
    }
    Ok(out)
}

/// `mirrorproxy status`: per flow and partition, where the mirror stands.
pub async fn status(config: &Config, clusters: &HashMap<String, Arc<Cluster>>) -> Result<Vec<StatusRow>, String> {
    let now = checkpoint::now_ms();
    let mut rows = Vec::new();
    for flow in &config.flows {
        let source = &clusters[&flow.source];
        let target = &clusters[&flow.target];
        let log = checkpoint::read_log(target, &config.tuning.checkpoint_topic).await.map_err(|e| e.to_string())?;
        let md = source.metadata(None).await.map_err(|e| e.to_string())?;
        let topics: Vec<String> =
            md.topics.iter().filter(|(n, t)| flow.mirrors(n, t.is_internal)).map(|(n, _)| n.clone()).collect();
        let ends = if topics.is_empty() {
            BTreeMap::new()
        } else {
            end_offsets(source, &topics).await.map_err(|e| e.to_string())?
        };
        for (tp, end) in ends {
            let key = CheckpointKey {
                source: flow.source.clone(),
                target: flow.target.clone(),
                topic: tp.topic.to_string(),
                partition: tp.partition,
            };
            let (mirrored, last_ts) = match log.entries.get(&key) {
                Some(Ok(cp)) => (cp.source_offset, cp.last_timestamp),
                Some(Err(why)) => return Err(format!("{}: checkpoint of {tp} cannot be read: {why}", flow.name)),
                None => (-1, -1),
            };
            let lag = if mirrored < 0 { end.max(0) } else { (end - mirrored).max(0) };
            let lag_seconds = if lag > 0 && last_ts > 0 { (now - last_ts).max(0) as f64 / 1000.0 } else { 0.0 };
            rows.push(StatusRow {
                flow: flow.name.clone(),
                topic: tp.topic.to_string(),
                partition: tp.partition,
                source_end: end,
                mirrored,
                lag_records: lag,
                lag_seconds,
            });
        }
    }
    Ok(rows)
}

/// One line of `offsets translate`.
#[derive(Debug, Clone, Serialize)]
pub struct TranslationRow {
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    pub committed_source_offset: i64,
    /// The exact target offset of the first record not consumed; null when unknown.
    pub target_offset: Option<i64>,
    pub note: String,
}

/// Translates every committed offset of `group` for the flow's topics.
pub async fn translate_group(
    config: &Config,
    clusters: &HashMap<String, Arc<Cluster>>,
    flow_name: &str,
    group: &str,
) -> Result<Vec<TranslationRow>, String> {
    let flow = find_flow(config, flow_name)?;
    translate_flow_group(flow, &clusters[&flow.source], &clusters[&flow.target], &config.tuning.checkpoint_topic, group)
        .await
}

/// [`translate_group`] for one flow whose clusters are at hand.
pub async fn translate_flow_group(
    flow: &Flow,
    source: &Cluster,
    target: &Cluster,
    checkpoint_topic: &str,
    group: &str,
) -> Result<Vec<TranslationRow>, String> {
    let md = source.metadata(None).await.map_err(|e| e.to_string())?;
    let topics: BTreeMap<String, i32> = md
        .topics
        .iter()
        .filter(|(n, t)| flow.mirrors(n, t.is_internal))
        .map(|(n, t)| (n.clone(), t.partitions.len() as i32))
        .collect();
    let committed: Vec<(TopicPartition, i64)> =
        groups::committed(source, group, &topics).await.map_err(|e| e.to_string())?.into_iter().collect();
    if committed.is_empty() {
        return Err(format!(
            "group '{group}' has no committed offsets on cluster '{}' for topics of flow {}",
            flow.source, flow.name
        ));
    }
    let log = checkpoint::read_log(target, checkpoint_topic).await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (tp, c) in committed {
        let key = CheckpointKey {
            source: flow.source.clone(),
            target: flow.target.clone(),
            topic: tp.topic.to_string(),
            partition: tp.partition,
        };
        let (target_offset, note) = match log.entries.get(&key) {
            None => (None, "not mirrored yet (no checkpoint)".to_owned()),
            Some(Err(why)) => (None, format!("checkpoint unreadable: {why}")),
            Some(Ok(cp)) => match translate(flow, source, target, cp, &tp, c).await.map_err(|e| e.to_string())? {
                Translated::Exact(t) => (Some(t), "exact".to_owned()),
                Translated::AheadOfMirror { source, target } => (
                    None,
                    format!("ahead of the mirror (mirrored up to source offset {source}, target offset {target})"),
                ),
                Translated::Unknown(why) => (None, why),
            },
        };
        rows.push(TranslationRow {
            topic: tp.topic.to_string(),
            partition: tp.partition,
            target_topic: flow.target_topic(&tp.topic),
            committed_source_offset: c,
            target_offset,
            note,
        });
    }
    Ok(rows)
}

/// One line of `offsets at`.
#[derive(Debug, Clone, Serialize)]
pub struct OffsetAtRow {
    pub topic: String,
    pub partition: i32,
    /// First offset whose timestamp is at or after the time; the end offset when none is.
    pub offset: i64,
}

/// Parses an RFC 3339 time into milliseconds since the epoch; refuses the future.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("--time '{text}' is not an RFC 3339 time like 2026-11-24T21:30:00Z: {e}"))?;
    let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
    if ms > checkpoint::now_ms() {
        return Err(format!("--time '{text}' is in the future"));
    }
    Ok(ms)
}

/// `offsets at`: ListOffsets by timestamp for every partition of `topic` on `cluster`.
pub async fn offsets_at(cluster: &Cluster, topic: &str, at_ms: i64) -> Result<Vec<OffsetAtRow>, String> {
    let md = cluster.metadata(Some(&[topic.to_owned()])).await.map_err(|e| e.to_string())?;
    let info = md
        .topics
        .get(topic)
        .filter(|t| t.error.is_none() && !t.partitions.is_empty())
        .ok_or_else(|| format!("topic '{topic}' does not exist on cluster '{}'", cluster.alias()))?;
    let mut rows = Vec::new();
    for (i, p) in info.partitions.iter().enumerate() {
        let partition = i as i32;
        let mut offset = -1;
        for (_, r) in cluster.list_offsets(p.leader, topic, &[partition], at_ms).await.map_err(|e| e.to_string())? {
            offset = r.map_err(|e| format!("ListOffsets for {topic}-{partition} failed: {e}"))?;
        }
        let mut end = -1;
        for (_, r) in cluster.list_offsets(p.leader, topic, &[partition], -1).await.map_err(|e| e.to_string())? {
            end = r.map_err(|e| format!("ListOffsets for {topic}-{partition} failed: {e}"))?;
        }
        if offset < 0 {
            offset = end; // no record at or after the time: the end of the partition
        }
        // Check the broker's answer against the data: the record at `offset` must be at
        // or after the time and the one before it earlier (tansu 0.6.0 answers 0 to
        // every timestamp). When it is not, find the offset by reading the partition.
        if !answer_holds(cluster, topic, partition, offset, at_ms).await? {
            tracing::warn!("{topic}-{partition}: the broker answered offset {offset} for the time, which the data contradicts; scanning the partition instead");
            offset = scan_for_time(cluster, topic, partition, at_ms).await?.unwrap_or(offset.max(end));
        }
        rows.push(OffsetAtRow { topic: topic.to_owned(), partition, offset });
    }
    Ok(rows)
}

/// Commits translated offsets to `group` on the flow's target, never moving one backwards
/// and never touching a group with live members. Returns what was committed.
pub async fn sync_group(
    config: &Config,
    clusters: &HashMap<String, Arc<Cluster>>,
    flow_name: &str,
    group: &str,
) -> Result<BTreeMap<TopicPartition, i64>, String> {
    let flow = find_flow(config, flow_name)?;
    sync_flow_group(flow, &clusters[&flow.source], &clusters[&flow.target], &config.tuning.checkpoint_topic, group)
        .await
}

/// [`sync_group`] for one flow whose clusters are at hand.
pub async fn sync_flow_group(
    flow: &Flow,
    source: &Cluster,
    target: &Cluster,
    checkpoint_topic: &str,
    group: &str,
) -> Result<BTreeMap<TopicPartition, i64>, String> {
    let rows = translate_flow_group(flow, source, target, checkpoint_topic, group).await?;
    let (members, state) = groups::members(target, group).await.map_err(|e| e.to_string())?;
    if groups::is_live(members, &state) {
        return Err(format!(
            "group '{group}' has {members} active member(s) on cluster '{}' (state {state}): not moved",
            flow.target
        ));
    }
    let mut target_topics: BTreeMap<String, i32> = BTreeMap::new();
    for r in &rows {
        let n = target_topics.entry(r.target_topic.clone()).or_default();
        *n = (*n).max(r.partition + 1);
    }
    let current = groups::committed(target, group, &target_topics).await.map_err(|e| e.to_string())?;
    let mut commit = BTreeMap::new();
    for r in rows {
        let Some(t) = r.target_offset else { continue };
        let tp = TopicPartition::new(&r.target_topic, r.partition);
        if current.get(&tp).is_some_and(|c| *c >= t) {
            continue; // never backwards
        }
        commit.insert(tp, t);
    }
    if !commit.is_empty() {
        groups::commit(target, group, &commit).await.map_err(|e| e.to_string())?;
    }
    Ok(commit)
}

/// Timestamps of the records of a batch, with their offsets.
fn record_times(batch: &crate::batch::VerifiedBatch) -> Result<Vec<(i64, i64)>, String> {
    let h = batch.header();
    let (_, spans) = batch.record_spans().map_err(|e| e.to_string())?;
    Ok(spans
        .iter()
        .map(|s| {
            let ts = if h.is_log_append_time() { h.max_timestamp } else { h.base_timestamp + s.timestamp_delta };
            (h.base_offset + i64::from(s.offset_delta), ts)
        })
        .collect())
}

/// Timestamp of the record at `offset` (None if there is none).
async fn time_at(cluster: &Cluster, topic: &str, partition: i32, offset: i64) -> Result<Option<i64>, String> {
    let mut found = None;
    let mut problem = None;
    checkpoint::read_partition(cluster, topic, partition, offset, |batch| {
        if batch.header().is_control() || batch.is_empty() {
            return true;
        }
        match record_times(&batch) {
            Ok(times) => {
                if let Some((_, ts)) = times.into_iter().find(|(o, _)| *o >= offset) {
                    found = Some(ts);
                    return false;
                }
                true
            }
            Err(e) => {
                problem = Some(e);
                false
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    match problem {
        Some(p) => Err(p),
        None => Ok(found),
    }
}

async fn answer_holds(cluster: &Cluster, topic: &str, partition: i32, offset: i64, at_ms: i64) -> Result<bool, String> {
    if let Some(ts) = time_at(cluster, topic, partition, offset).await? {
        if ts < at_ms {
            return Ok(false);
        }
    }
    if offset > 0 {
        // The last record before `offset` must be earlier than the time.
        let mut before = None;
        checkpoint::read_partition(cluster, topic, partition, offset - 1, |batch| {
            if let Ok(times) = record_times(&batch) {
                before = times.into_iter().filter(|(o, _)| *o < offset).map(|(_, t)| t).max().or(before);
            }
            batch.header().next_offset() < offset
        })
        .await
        .map_err(|e| e.to_string())?;
        if before.is_some_and(|t| t >= at_ms) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Kafka's rule, by reading: the first record at or after the time in the first batch
/// whose max timestamp reaches it.
async fn scan_for_time(cluster: &Cluster, topic: &str, partition: i32, at_ms: i64) -> Result<Option<i64>, String> {
    let mut found = None;
    checkpoint::read_partition(cluster, topic, partition, 0, |batch| {
        let h = *batch.header();
        if h.is_control() || batch.is_empty() || h.max_timestamp < at_ms {
            return true;
        }
        found = record_times(&batch).ok().and_then(|t| t.into_iter().find(|(_, ts)| *ts >= at_ms).map(|(o, _)| o));
        found.is_none()
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(found)
}
