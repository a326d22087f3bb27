//! Checkpoints: where each mirrored partition stands, kept on the target cluster.
//!
//! A checkpoint of a mirrored partition is a pair (source offset S, target offset T): every
//! source record below S is either on the target below T or was deliberately not copied
//! (control markers, aborted transactions, records filtered by provenance), and nothing
//! at or above S has been acknowledged on the target beyond T. Checkpoints also carry a
//! bounded, thinned history of older pairs (the *mapping points*), which offset
//! translation starts from.
//!
//! They live in a compacted topic on the **target** cluster (`mirrorproxy.checkpoints` by
//! default, one partition), keyed `mirrorproxy/v1/<source alias>/<target alias>/<topic>/<partition>`,
//! with a JSON value. The target is where a restarted mirror must resume writing, and
//! where failover tools run when the source is gone.
//!
//! A checkpoint is written *after* the data it covers, so a crash leaves a window:
//! batches acknowledged after the last checkpoint. The window is closed on start by
//! reconciling the target partition's tail (see [`Fingerprint`] and the engine): the
//! batches after T are matched, in order, against what the mirror would send from S, and
//! the ones already there are not sent again. That costs one read of the tail since the
//! last checkpoint per partition at start, and nothing while running — unlike Kafka
//! transactions on the target, which would add a commit round trip to every checkpoint
//! interval and need a transaction coordinator on the target.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    CreateTopicsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as KpCompression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::{Deserialize, Serialize};

use crate::batch::{self, BatchHeader};
use crate::cluster::{Cluster, ClusterError};

/// Default name of the checkpoint topic.
pub const DEFAULT_TOPIC: &str = "mirrorproxy.checkpoints";
const KEY_PREFIX: &str = "mirrorproxy/v1/";
/// Mapping points kept per partition; older ones are thinned out first.
pub const MAX_POINTS: usize = 256;

/// Errors of the checkpoint layer.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("checkpoint topic '{topic}' on cluster '{cluster}': {reason}")]
    Topic { cluster: String, topic: String, reason: String },
}

/// Which mirrored partition a checkpoint is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckpointKey {
    pub source: String,
    pub target: String,
    pub topic: String,
    pub partition: i32,
}

impl CheckpointKey {
    #[must_use]
    pub fn encode(&self) -> String {
        format!("{KEY_PREFIX}{}/{}/{}/{}", self.source, self.target, self.topic, self.partition)
    }

    /// `Ok(None)` for a key that is not a mirrorproxy v1 key (a foreign record).
    pub fn decode(key: &str) -> Result<Option<Self>, String> {
        let Some(rest) = key.strip_prefix(KEY_PREFIX) else { return Ok(None) };
        let parts: Vec<&str> = rest.split('/').collect();
        let [source, target, topic, partition] = parts.as_slice() else {
            return Err(format!("key '{key}' does not have 4 parts after '{KEY_PREFIX}'"));
        };
        let partition =
            partition.parse().map_err(|_| format!("key '{key}': partition '{partition}' is not a number"))?;
        Ok(Some(Self { source: (*source).into(), target: (*target).into(), topic: (*topic).into(), partition }))
    }
}

/// The state of one mirrored partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version, 1.
    pub v: u32,
    /// First source offset not yet on the target.
    pub source_offset: i64,
    /// Next target offset after what is on the target for source offsets below `source_offset`.
    pub target_offset: i64,
    /// Timestamp (ms) of the newest record mirrored, -1 if unknown.
    pub last_timestamp: i64,
    /// When this checkpoint was written (ms since the epoch).
    pub updated_ms: i64,
    /// Older (source offset, target offset) pairs, oldest first.
    pub points: Vec<(i64, i64)>,
}

impl Checkpoint {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint serialises")
    }

    pub fn from_json(value: &[u8]) -> Result<Self, String> {
        let c: Checkpoint = serde_json::from_slice(value).map_err(|e| format!("not a checkpoint: {e}"))?;
        if c.v != 1 {
            return Err(format!("checkpoint format version {} is not supported (this build reads 1)", c.v));
        }
        if c.source_offset < 0 || c.target_offset < 0 {
            return Err("negative offsets".into());
        }
        Ok(c)
    }

    /// The newest mapping point at or below `source_offset`: (S, T) with S <= offset.
    #[must_use]
    pub fn point_at_or_below(&self, offset: i64) -> Option<(i64, i64)> {
        self.points
            .iter()
            .copied()
            .chain(std::iter::once((self.source_offset, self.target_offset)))
            .filter(|(s, _)| *s <= offset)
            .max_by_key(|(s, _)| *s)
    }
}

/// Adds a mapping point, keeping at most [`MAX_POINTS`]: when full, every other point of
/// the older half goes, so the history reaches far back at coarser resolution.
pub fn push_point(points: &mut Vec<(i64, i64)>, point: (i64, i64)) {
    if points.last().is_some_and(|last| last.0 >= point.0) {
        return;
    }
    if points.len() >= MAX_POINTS {
        let half = points.len() / 2;
        let mut i = 0;
        points.retain(|_| {
            i += 1;
            i == 1 || i > half || i % 2 == 0
        });
    }
    points.push(point);
}

/// What identifies a mirrored batch on the target, whatever the target did to its
/// bytes: record count and first timestamp (kept through recompression and
/// renumbering), and the max timestamp unless the target stamped log-append time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub records: i32,
    pub first_timestamp: i64,
    pub max_timestamp: Option<i64>,
}

impl Fingerprint {
    #[must_use]
    pub fn of(h: &BatchHeader) -> Self {
        Self {
            records: h.records_count,
            first_timestamp: h.base_timestamp,
            max_timestamp: (!h.is_log_append_time()).then_some(h.max_timestamp),
        }
    }

    /// Whether a batch on the target (`self`) is the mirror of `sent`.
    #[must_use]
    pub fn matches(&self, sent: &Fingerprint) -> bool {
        self.records == sent.records
            && self.first_timestamp == sent.first_timestamp
            && (self.max_timestamp.is_none() || self.max_timestamp == sent.max_timestamp)
    }

    /// Whether a batch on the target (`self`) may be a merged batch (re-batching) that
    /// begins with `sent` and holds more after it.
    #[must_use]
    pub fn begins_with(&self, sent: &Fingerprint) -> bool {
        self.records > sent.records
            && self.first_timestamp == sent.first_timestamp
            && self.max_timestamp.is_none_or(|m| sent.max_timestamp.is_none_or(|s| s <= m))
    }

    /// The fingerprint of a run of batches merged into one (see `batch::merge`).
    #[must_use]
    pub fn merged(run: &[Fingerprint]) -> Option<Fingerprint> {
        let first = run.first()?;
        let records = run.iter().try_fold(0i32, |n, f| n.checked_add(f.records))?;
        let max_timestamp = run.iter().map(|f| f.max_timestamp).try_fold(i64::MIN, |m, t| t.map(|t| m.max(t)));
        Some(Fingerprint { records, first_timestamp: first.first_timestamp, max_timestamp })
    }
}

/// A data batch read back from a partition: its header and where it is.
#[derive(Debug, Clone)]
pub struct TailBatch {
    pub base_offset: i64,
    pub header: BatchHeader,
}

/// Reads the data batches of a partition from `from` to its end (control batches left
/// out). Used for the target's tail at start and by offset translation.
pub async fn read_batches(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    from: i64,
    max_batches: usize,
) -> Result<Vec<TailBatch>, CheckpointError> {
    let mut out = Vec::new();
    read_partition(cluster, topic, partition, from, |raw| {
        let h = *raw.header();
        if !h.is_control() && h.records_count > 0 {
            out.push(TailBatch { base_offset: h.base_offset, header: h });
        }
        out.len() < max_batches
    })
    .await?;
    Ok(out)
}

/// Fetches a partition from `from` to its end, handing every verified batch to `each`
/// (which returns false to stop early).
///
/// The end is the high watermark asked first (ListOffsets): a Fetch at the end would be
/// held for its whole `max_wait` (50 ms) before answering empty, and that wait was paid
/// once per read: at start by the checkpoint log and by every resumed partition's tail.
/// (Asking with `max_wait` 0 instead does not work on tansu 0.6.0, which answers it with
/// no partitions at all: tests/tansu_probe.rs.) tansu reports the last batch's base + 1
/// as the watermark, so a read that starts at or past it still asks for the batch
/// holding the watermark's last offset (there is data, so no wait) and keeps what lies
/// past `from`. Without an answer for the partition, the read goes on until a Fetch
/// brings nothing.
pub async fn read_partition(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    from: i64,
    mut each: impl FnMut(batch::VerifiedBatch) -> bool,
) -> Result<(), CheckpointError> {
    let err = |reason: String| CheckpointError::Topic { cluster: cluster.alias().into(), topic: topic.into(), reason };
    let leader = cluster.leader_of(topic, partition).await?;
    let end = cluster.list_offsets(leader, topic, &[partition], -1).await?.into_iter().find_map(|(p, r)| {
        if p == partition {
            r.ok()
        } else {
            None
        }
    });
    let mut offset = from;
    let mut first = true;
    loop {
        let at = match end {
            None => offset,
            Some(end) if offset < end => offset,
            // At or past the reported end: only the batch holding its last offset can
            // still be there (tansu), and asking for that offset is answered at once.
            Some(end) if first && end > 0 => end - 1,
            Some(_) => return Ok(()),
        };
        first = false;
        let Some(pd) = cluster.fetch_once(leader, topic, partition, at, 16 << 20).await? else {
            // Some brokers (tansu) leave out partitions that have no data.
            return Ok(());
        };
        if let Some(e) = pd.error {
            if e == ResponseError::OffsetOutOfRange {
                return Ok(()); // past the end
            }
            return Err(err(format!("Fetch of partition {partition} at offset {at} failed: {e}")));
        }
        let split = batch::split_batches(pd.records).map_err(|e| err(e.to_string()))?;
        let mut progressed = false;
        for raw in split.batches {
            let h = *raw.header();
            if h.next_offset() <= offset {
                continue;
            }
            let verified = raw.verify().map_err(|e| err(format!("partition {partition}: {e}")))?;
            offset = h.next_offset();
            progressed = true;
            if !each(verified) {
                return Ok(());
            }
        }
        if !progressed {
            return Ok(());
        }
    }
}

/// Everything read from the checkpoint topic.
#[derive(Debug, Default)]
pub struct CheckpointLog {
    /// The latest checkpoint per key, or why it cannot be used.
    pub entries: HashMap<CheckpointKey, Result<Checkpoint, String>>,
    /// Records whose key is not a mirrorproxy key.
    pub foreign: usize,
}

impl CheckpointLog {
    /// Applies the records of one batch read from the checkpoint topic (sans I/O: the
    /// parser of what the topic holds, tested and fuzzed without a broker). Errs, naming
    /// the batch's offset, when its records cannot be walked.
    pub fn apply_batch(&mut self, verified: &batch::VerifiedBatch, topic: &str) -> Result<(), String> {
        let offset = verified.header().base_offset;
        let spans = match verified.record_spans() {
            Ok((data, spans)) => spans
                .into_iter()
                .map(|s| (s.key.map(|r| data[r].to_vec()), s.value.map(|r| data[r].to_vec())))
                .collect::<Vec<_>>(),
            Err(e) => return Err(format!("unreadable batch at offset {offset}: {e}")),
        };
        for (key, value) in spans {
            let Some(key) = key.and_then(|k| String::from_utf8(k).ok()) else {
                self.foreign += 1;
                continue;
            };
            match CheckpointKey::decode(&key) {
                Ok(None) => self.foreign += 1,
                Ok(Some(k)) => match value {
                    None => {
                        self.entries.remove(&k);
                    }
                    Some(v) => {
                        self.entries.insert(
                            k,
                            Checkpoint::from_json(&v).map_err(|e| format!("{e} (record at or after offset {offset})")),
                        );
                    }
                },
                Err(e) => {
                    self.foreign += 1;
                    tracing::warn!("checkpoint topic '{topic}': ignoring record near offset {offset}: {e}");
                }
            }
        }
        Ok(())
    }
}

/// Reads the whole checkpoint topic. A missing topic is an empty log.
pub async fn read_log(cluster: &Cluster, topic: &str) -> Result<CheckpointLog, CheckpointError> {
    let md = cluster.metadata(Some(&[topic.to_owned()])).await?;
    let exists = md.topics.get(topic).is_some_and(|t| t.error.is_none() && !t.partitions.is_empty());
    let mut log = CheckpointLog::default();
    if !exists {
        return Ok(log);
    }
    let mut problem = None;
    read_partition(cluster, topic, 0, 0, |verified| match log.apply_batch(&verified, topic) {
        Ok(()) => true,
        Err(reason) => {
            problem = Some(reason);
            false
        }
    })
    .await?;
    if let Some(reason) = problem {
        return Err(CheckpointError::Topic { cluster: cluster.alias().into(), topic: topic.into(), reason });
    }
    Ok(log)
}

/// Creates the checkpoint topic (compacted, one partition) if it does not exist.
pub async fn ensure_topic(cluster: &Cluster, topic: &str) -> Result<(), CheckpointError> {
    let md = cluster.metadata(Some(&[topic.to_owned()])).await?;
    if md.topics.get(topic).is_some_and(|t| t.error.is_none() && !t.partitions.is_empty()) {
        return Ok(());
    }
    let rf = md.brokers.len().clamp(1, 3) as i16;
    let conn = cluster.any_broker().await?;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_num_partitions(1)
            .with_replication_factor(rf)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("cleanup.policy"))
                .with_value(Some(StrBytes::from_static_str("compact")))])])
        .with_timeout_ms(30_000);
    let resp = conn.call(&req).await.map_err(|e| CheckpointError::Topic {
        cluster: cluster.alias().into(),
        topic: topic.into(),
        reason: e.to_string(),
    })?;
    for t in resp.topics {
        if let Some(e) = ResponseError::try_from_code(t.error_code) {
            if e != ResponseError::TopicAlreadyExists {
                return Err(CheckpointError::Topic {
                    cluster: cluster.alias().into(),
                    topic: topic.into(),
                    reason: format!("cannot create it: {e}"),
                });
            }
        }
    }
    Ok(())
}

/// Encodes checkpoint records as one uncompressed batch.
#[must_use]
pub fn encode_batch(records: &[(String, Checkpoint)]) -> Bytes {
    encode_records(&records.iter().map(|(k, cp)| (k.clone(), cp.to_json())).collect::<Vec<_>>())
}

/// Encodes keyed records as one uncompressed batch without a producer id.
#[must_use]
pub fn encode_records(records: &[(String, Vec<u8>)]) -> Bytes {
    let kv = records.iter().map(|(k, v)| (Some(Bytes::from(k.clone().into_bytes())), Some(Bytes::from(v.clone()))));
    encode_plain_batch(kv, now_ms(), KpCompression::None).expect("encoding an uncompressed batch cannot fail")
}

/// Encodes (key, value) records as one batch without a producer id, all with create
/// time `timestamp` (ms), in `compression` (the checkpoints, the registry, the load of
/// `mirrorproxy bench`).
pub fn encode_plain_batch(
    records: impl Iterator<Item = (Option<Bytes>, Option<Bytes>)>,
    timestamp: i64,
    compression: KpCompression,
) -> Result<Bytes, String> {
    let records: Vec<Record> = records
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol's encoder starts a new batch whenever offset - sequence
            // changes; a Produce request may carry only one batch per partition. With
            // sequence = offset - 1 the difference is constant and the batch's base
            // sequence is -1, as for any producer without an id.
            sequence: i as i32 - 1,
            timestamp,
            key,
            value,
            headers: indexmap::IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression })
        .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Writes checkpoint records (acks=all) to partition 0 of `topic`.
pub async fn write(cluster: &Cluster, topic: &str, records: &[(String, Checkpoint)]) -> Result<(), CheckpointError> {
    write_records(cluster, topic, &records.iter().map(|(k, cp)| (k.clone(), cp.to_json())).collect::<Vec<_>>()).await
}

/// Writes keyed records (acks=all) to partition 0 of a compacted topic of mirrorproxy's
/// own (checkpoints, the producer registry).
pub async fn write_records(
    cluster: &Cluster,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Result<(), CheckpointError> {
    if records.is_empty() {
        return Ok(());
    }
    cluster.produce_batch(topic, 0, encode_records(records)).await?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_records_go_out_as_one_batch() {
        let cp =
            Checkpoint { v: 1, source_offset: 1, target_offset: 1, last_timestamp: 0, updated_ms: 0, points: vec![] };
        let records: Vec<(String, Checkpoint)> = (0..5).map(|i| (format!("k{i}"), cp.clone())).collect();
        let split = crate::batch::split_batches(encode_batch(&records)).unwrap();
        assert_eq!(split.batches.len(), 1, "one batch per partition per Produce request");
        let h = split.batches[0].header();
        assert_eq!((h.records_count, h.last_offset_delta, h.producer_id, h.base_sequence), (5, 4, -1, -1));
    }

    #[test]
    fn keys_round_trip_and_foreign_keys_are_recognised() {
        let k =
            CheckpointKey { source: "edge".into(), target: "cloud".into(), topic: "orders.eu".into(), partition: 7 };
        assert_eq!(CheckpointKey::decode(&k.encode()).unwrap(), Some(k));
        assert_eq!(CheckpointKey::decode("something-else").unwrap(), None);
        assert!(CheckpointKey::decode("mirrorproxy/v1/a/b").is_err());
        assert!(CheckpointKey::decode("mirrorproxy/v1/a/b/t/x").is_err());
    }

    #[test]
    fn values_are_validated() {
        let c = Checkpoint {
            v: 1,
            source_offset: 10,
            target_offset: 4,
            last_timestamp: 5,
            updated_ms: 6,
            points: vec![(2, 1)],
        };
        assert_eq!(Checkpoint::from_json(&c.to_json()).unwrap(), c);
        assert!(Checkpoint::from_json(b"{}").is_err());
        assert!(Checkpoint::from_json(b"\xff\x00garbage").is_err());
        let mut v2 = c.clone();
        v2.v = 2;
        assert!(Checkpoint::from_json(&v2.to_json()).unwrap_err().contains("version 2"));
        assert!(Checkpoint::from_json(
            br#"{"v":1,"source_offset":-1,"target_offset":0,"last_timestamp":0,"updated_ms":0,"points":[]}"#
        )
        .is_err());
    }

    #[test]
    fn points_are_thinned_but_keep_their_range() {
        let mut points = Vec::new();
        for i in 1..=10_000 {
            push_point(&mut points, (i * 10, i * 7));
        }
        assert!(points.len() <= MAX_POINTS);
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(points.last(), Some(&(100_000, 70_000)));
        assert!(points[0].0 < 10_000, "history should reach far back, oldest {:?}", points[0]);
        let c = Checkpoint {
            v: 1,
            source_offset: 100_010,
            target_offset: 70_007,
            last_timestamp: 0,
            updated_ms: 0,
            points,
        };
        let (s, _) = c.point_at_or_below(55_555).unwrap();
        assert!(s <= 55_555);
        assert_eq!(c.point_at_or_below(200_000), Some((100_010, 70_007)));
        assert_eq!(c.point_at_or_below(0), None);
    }

    #[test]
    fn fingerprints_survive_log_append_time() {
        let mut h = crate::batch::BatchHeader::parse(&[0u8; 61]).unwrap();
        h.records_count = 3;
        h.base_timestamp = 100;
        h.max_timestamp = 120;
        let sent = Fingerprint::of(&h);
        assert!(Fingerprint::of(&h).matches(&sent));
        let mut other = h;
        other.max_timestamp = 999;
        assert!(!Fingerprint::of(&other).matches(&sent));
        other.attributes |= 1 << 3; // log append time on the target
        assert!(Fingerprint::of(&other).matches(&sent));
        other.records_count = 4;
        assert!(!Fingerprint::of(&other).matches(&sent));
    }
}
