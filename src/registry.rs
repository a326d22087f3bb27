//! The producer registry: loop prevention that is a property of the clusters, not of
//! one config file, and that never opens a batch.
//!
//! # Why
//! Active-active is usually deployed as one mirrorproxy per datacenter, each with a
//! config holding only the flows into its own cluster. No config sees the cycle, so a
//! rule that depends on the flow graph (stamp headers on flows in a cycle) leaves both
//! halves of the cycle unprotected, and records loop forever. Stamping a header on every
//! flow would fix that, but only by decompressing and re-compressing every compressed
//! batch, the cost this product exists to avoid.
//!
//! # The rule
//! Every batch mirrorproxy writes carries a producer id the target cluster gave it
//! (InitProducerId, KIP-98), in the batch header that is patched anyway. Before a flow
//! writes its first batch with an id, it registers the id in a compacted topic on that
//! cluster (`mirrorproxy.producers`, one partition), together with the *path* of the
//! batches it will carry: the clusters they have been on, origin first, this cluster
//! last. A flow uses one producer id per distinct path. A flow `S → T` reading `S` then
//! knows each batch's path from the producer id in its header:
//! - an id registered on `S` with path `P`: the batch has been on every cluster in `P`;
//!   it is skipped when `P` holds `T`, else written to `T` with path `P + [T]`;
//! - no producer id (-1), a transactional batch (mirrorproxy never writes those), or an
//!   id that is not registered: written by an application on `S`, path `[S]`.
//!
//! An id the flow has not seen is looked up again in the registry before the batch is
//! used: its registration was acknowledged before the batch was written, so a read of
//! the registry that starts after the batch was fetched finds it if it exists. Only
//! then is the id taken for an application's. Cost: one registry read per new producer
//! id (an application producer's, once), nothing per batch.
//!
//! # Failing closed
//! A registry record that cannot be read (foreign key, bad value, a deletion, a path
//! that does not end at the cluster it is on) makes the registry *poisoned*: every
//! partition of a flow reading it stops with one error naming the topic, key and
//! offset. A registry that cannot be reached stops nothing and copies nothing: the
//! partition waits. A batch is never copied on a guess.
//!
//! # Limits
//! - A third-party mirror (MirrorMaker 2, Replicator) in the chain writes with its own
//!   producer ids: to the next mirrorproxy its copies look like an application's, with
//!   the cluster it wrote to as origin. Such a chain needs `provenance = "header"`
//!   (MirrorMaker 2 copies record headers) or prefix renaming.
//! - Cluster ids (aliases or `provenance_id`) must be the same in every mirrorproxy of
//!   the topology, as for the header.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::batch::provenance::{ClusterId, Decision, Hop, Provenance};
use crate::batch::{BatchError, BatchHeader, VerifiedBatch};
use crate::checkpoint::{self, CheckpointError};
use crate::cluster::Cluster;

/// Default name of the registry topic.
pub const DEFAULT_TOPIC: &str = "mirrorproxy.producers";
const KEY_PREFIX: &str = "mirrorproxy/v1/producer/";

/// Registry key of a producer id.
#[must_use]
pub fn key(producer_id: i64) -> String {
    format!("{KEY_PREFIX}{producer_id}")
}

/// The value of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    v: u32,
    /// The path in the provenance header's format, `v1:A,B`.
    path: String,
    /// The flow that registered it (for operators reading the topic).
    flow: String,
    registered_ms: i64,
}

/// A registration record, ready to write.
#[must_use]
pub fn record(producer_id: i64, path: &Provenance, flow: &str) -> (String, Vec<u8>) {
    let value = Registration {
        v: 1,
        path: String::from_utf8_lossy(&path.encode()).into_owned(),
        flow: flow.to_owned(),
        registered_ms: checkpoint::now_ms(),
    };
    (key(producer_id), serde_json::to_vec(&value).expect("a registration serializes"))
}

/// Where a fetched batch has been, as far as the registry knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Written by an application on the source cluster.
    Origin,
    /// Written by mirrorproxy with this path (ends with the source cluster).
    Path(&'a Provenance),
    /// A producer id not seen yet: read the registry again before deciding.
    Unknown(i64),
}

/// One record as read from the registry topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// A flow's view of its source cluster's registry (sans I/O: the engine reads, this
/// decides).
#[derive(Debug)]
pub struct Registry {
    topic: String,
    /// The provenance id of the cluster the registry is on.
    cluster: String,
    known: HashMap<i64, Provenance>,
    /// Ids looked up after their batch was fetched and not registered: applications'.
    applications: HashSet<i64>,
    /// Next offset to read.
    next_offset: i64,
    poisoned: Option<String>,
}

impl Registry {
    #[must_use]
    pub fn new(topic: &str, cluster: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            cluster: cluster.to_owned(),
            known: HashMap::new(),
            applications: HashSet::new(),
            next_offset: 0,
            poisoned: None,
        }
    }

    /// Where to read on from.
    #[must_use]
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Why the registry cannot be trusted, if it cannot.
    #[must_use]
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The path of a fetched data batch. Errs when the registry is poisoned.
    pub fn seen(&self, h: &BatchHeader) -> Result<Seen<'_>, &str> {
        if let Some(why) = &self.poisoned {
            return Err(why);
        }
        let id = h.producer_id;
        if id < 0 || h.is_transactional() || self.applications.contains(&id) {
            return Ok(Seen::Origin);
        }
        Ok(self.known.get(&id).map_or(Seen::Unknown(id), Seen::Path))
    }

    /// Applies records read from `next_offset` on; `end` is where the read stopped.
    /// `looked_up` are the ids that were unknown when the read started: those still
    /// unregistered now are applications' (see the module docs).
    pub fn apply(&mut self, records: Vec<RawRecord>, end: i64, looked_up: &HashSet<i64>) {
        for r in records {
            if self.poisoned.is_some() {
                break;
            }
            if let Err(why) = self.apply_one(&r) {
                let key =
                    r.key.as_deref().map_or_else(|| "(null)".to_owned(), |k| String::from_utf8_lossy(k).into_owned());
                self.poisoned = Some(format!(
                    "producer registry '{}' on cluster '{}' has an unreadable record at offset {} with key {key:?}: {why}; nothing is copied from this cluster until it is fixed (loop prevention cannot be checked)",
                    self.topic, self.cluster, r.offset
                ));
            }
        }
        self.next_offset = self.next_offset.max(end);
        for id in looked_up {
            if !self.known.contains_key(id) {
                self.applications.insert(*id);
            }
        }
    }

    fn apply_one(&mut self, r: &RawRecord) -> Result<(), String> {
        let key = r.key.as_deref().ok_or("no key")?;
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8")?;
        let id: i64 = key
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| format!("not a mirrorproxy registry key (expected {KEY_PREFIX}<producer id>)"))?
            .parse()
            .map_err(|_| "the producer id in the key is not a number")?;
        let value = r.value.as_deref().ok_or("a deletion (null value): a registration must never be removed")?;
        let reg: Registration = serde_json::from_slice(value).map_err(|e| format!("bad value: {e}"))?;
        if reg.v != 1 {
            return Err(format!("unknown registration version {}", reg.v));
        }
        let path = Provenance::decode(reg.path.as_bytes()).map_err(|e| e.to_string())?;
        if path.last().as_str() != self.cluster {
            return Err(format!(
                "its path {path} does not end at this cluster ('{}'); are the cluster ids (aliases, provenance_id) the same in every mirrorproxy?",
                self.cluster
            ));
        }
        if let Some(old) = self.known.get(&id) {
            if *old != path {
                return Err(format!("producer id {id} registered again with another path ({old} before, {path} now)"));
            }
        }
        self.applications.remove(&id);
        self.known.insert(id, path);
        Ok(())
    }
}

/// One flow's loop prevention settings.
#[derive(Debug, Clone, Copy)]
pub struct LoopGuard<'a> {
    pub source: &'a ClusterId,
    pub target: &'a ClusterId,
    /// With `provenance = "header"`: the hop that stamps (and reads) the header.
    pub header: Option<&'a Hop>,
    /// False with `provenance = "off"`: nothing is skipped.
    pub skip: bool,
}

/// What loop prevention makes of a data batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written by an application on the source: write it with path `[source, target]`
    /// (the common case, told apart so that it costs no allocation per batch).
    ForwardFromOrigin,
    /// Write it under the route of this path (its path once written to the target).
    Forward(Provenance),
    /// It has been on the target already (its path).
    Skip(Provenance),
    /// Its producer id must be looked up in the registry first.
    Wait(i64),
    /// It cannot be decided (poisoned registry, unreadable header): stop.
    Stop(String),
}

/// The engine's and `offsets translate`'s decision for a data batch read from the
/// source. Its path comes from its producer id in the source's registry; with
/// `provenance = "header"`, a batch whose producer is not registered (an application's,
/// or one written before the registry existed) is also read for the header.
#[must_use]
pub fn verdict(registry: &Registry, batch: &VerifiedBatch, guard: &LoopGuard<'_>) -> Verdict {
    let mut path = match registry.seen(batch.header()) {
        Err(why) => return Verdict::Stop(why.to_owned()),
        Ok(Seen::Unknown(id)) => return Verdict::Wait(id),
        Ok(Seen::Origin) => None,
        Ok(Seen::Path(p)) => Some(p.clone()),
    };
    if let (None, Some(hop)) = (&path, guard.header) {
        path = match hop.decide(batch) {
            Ok(Decision::Skip { provenance }) => Some(provenance),
            Ok(Decision::Forward { provenance }) => provenance,
            Err(e) => return Verdict::Stop(format!("unreadable provenance header: {e}")),
        };
    }
    let Some(path) = path else { return Verdict::ForwardFromOrigin };
    if guard.skip && path.contains(guard.target.as_str()) {
        return Verdict::Skip(path);
    }
    Verdict::Forward(path.with_hop(guard.target))
}

/// The records of a data batch read from the registry topic (sans I/O: what
/// [`read_since`] makes of each batch, tested and fuzzed without a broker).
pub fn raw_records(batch: &VerifiedBatch) -> Result<Vec<RawRecord>, BatchError> {
    let base_offset = batch.header().base_offset;
    let (data, spans) = batch.record_spans()?;
    Ok(spans
        .into_iter()
        .map(|s| RawRecord {
            offset: base_offset.saturating_add(i64::from(s.offset_delta)),
            key: s.key.map(|r| data[r].to_vec()),
            value: s.value.map(|r| data[r].to_vec()),
        })
        .collect())
}

/// Reads the registry topic from `from` to its end: the records and where the read
/// stopped. A missing topic has no records.
pub async fn read_since(cluster: &Cluster, topic: &str, from: i64) -> Result<(Vec<RawRecord>, i64), CheckpointError> {
    let md = cluster.metadata(Some(&[topic.to_owned()])).await?;
    if !md.topics.get(topic).is_some_and(|t| t.error.is_none() && !t.partitions.is_empty()) {
        return Ok((Vec::new(), from));
    }
    let mut out = Vec::new();
    let mut end = from;
    let mut problem = None;
    checkpoint::read_partition(cluster, topic, 0, from, |batch| {
        let h = *batch.header();
        end = end.max(h.next_offset());
        if h.is_control() {
            return true;
        }
        match raw_records(&batch) {
            Ok(records) => {
                out.extend(records);
                true
            }
            Err(e) => {
                problem = Some(format!("unreadable batch at offset {}: {e}", h.base_offset));
                false
            }
        }
    })
    .await?;
    if let Some(reason) = problem {
        return Err(CheckpointError::Topic { cluster: cluster.alias().into(), topic: topic.into(), reason });
    }
    Ok((out, end))
}

/// Registers a producer id with its path on `cluster` (acks=all), creating the topic
/// when missing. Must complete before the first batch with the id is written.
pub async fn register(
    cluster: &Cluster,
    topic: &str,
    producer_id: i64,
    path: &Provenance,
    flow: &str,
) -> Result<(), CheckpointError> {
    checkpoint::ensure_topic(cluster, topic).await?;
    checkpoint::write_records(cluster, topic, &[record(producer_id, path, flow)]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base offset near `i64::MAX` (the base offset is not covered by the CRC, so a
    /// broker or the network can send any) gives record offsets that saturate, not an
    /// overflow panic.
    #[test]
    fn record_offsets_of_a_batch_at_the_end_of_the_offset_range_do_not_overflow() {
        let recs = [record(7, &path(&["a", "b"]), "f"), record(8, &path(&["a", "b"]), "f")];
        let mut bytes = checkpoint::encode_records(&recs).to_vec();
        bytes[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        let split = crate::batch::split_batches(bytes.into()).unwrap();
        let v = split.batches.into_iter().next().unwrap().verify().unwrap();
        let raw = raw_records(&v).unwrap();
        assert_eq!(raw.iter().map(|r| r.offset).collect::<Vec<_>>(), [i64::MAX, i64::MAX]);
        assert_eq!(raw[1].key.as_deref(), Some(key(8).as_bytes()));
    }

    fn path(ids: &[&str]) -> Provenance {
        Provenance::new(ids.iter().map(|i| ClusterId::new(i).unwrap()).collect()).unwrap()
    }

    fn header(producer_id: i64, transactional: bool) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: if transactional { 1 << 4 } else { 0 },
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: 0,
            base_sequence: 0,
            records_count: 1,
        }
    }

    fn raw(offset: i64, key: &str, value: Option<Vec<u8>>) -> RawRecord {
        RawRecord { offset, key: Some(key.as_bytes().to_vec()), value }
    }

    #[test]
    fn registered_ids_have_their_path_and_looked_up_ones_become_applications() {
        let mut r = Registry::new(DEFAULT_TOPIC, "a");
        assert_eq!(r.seen(&header(-1, false)), Ok(Seen::Origin));
        assert_eq!(r.seen(&header(7, true)), Ok(Seen::Origin), "mirrorproxy never writes transactions");
        assert_eq!(r.seen(&header(7, false)), Ok(Seen::Unknown(7)));
        assert_eq!(r.seen(&header(8, false)), Ok(Seen::Unknown(8)));
        let (k, v) = record(7, &path(&["b", "a"]), "b->a");
        r.apply(vec![raw(0, &k, Some(v))], 1, &HashSet::from([7, 8]));
        assert_eq!(r.seen(&header(7, false)), Ok(Seen::Path(&path(&["b", "a"]))));
        assert_eq!(r.seen(&header(8, false)), Ok(Seen::Origin), "looked up after its batch: an application's");
        assert_eq!(r.next_offset(), 1);
        // An id unknown when a read started, registered later (not possible for a batch
        // already fetched, but the order of records decides): known wins.
        let (k, v) = record(9, &path(&["c", "b", "a"]), "b->a");
        r.apply(vec![raw(1, &k, Some(v))], 2, &HashSet::new());
        assert_eq!(r.seen(&header(9, false)), Ok(Seen::Path(&path(&["c", "b", "a"]))));
    }

    #[test]
    fn unreadable_records_poison_the_registry_naming_topic_key_and_offset() {
        let cases: Vec<(RawRecord, &str)> = vec![
            (raw(3, "someone/else", Some(b"{}".to_vec())), "not a mirrorproxy registry key"),
            (raw(3, "mirrorproxy/v1/producer/x", Some(b"{}".to_vec())), "not a number"),
            (raw(3, "mirrorproxy/v1/producer/5", None), "deletion"),
            (raw(3, "mirrorproxy/v1/producer/5", Some(b"garbage".to_vec())), "bad value"),
            (
                raw(3, "mirrorproxy/v1/producer/5", Some(record(5, &path(&["a", "b"]), "a->b").1)),
                "does not end at this cluster",
            ),
            (RawRecord { offset: 3, key: None, value: Some(b"{}".to_vec()) }, "no key"),
        ];
        for (rec, needle) in cases {
            let mut r = Registry::new(DEFAULT_TOPIC, "a");
            r.apply(vec![rec], 4, &HashSet::new());
            let why = r.seen(&header(1, false)).unwrap_err();
            assert!(why.contains(needle), "{why}");
            assert!(
                why.contains("'mirrorproxy.producers'") && why.contains("offset 3") && why.contains("key"),
                "{why}"
            );
            // Applications' batches are not copied blindly either.
            assert!(r.seen(&header(-1, false)).is_err());
        }
    }

    #[test]
    fn an_id_registered_twice_with_different_paths_is_refused() {
        let mut r = Registry::new(DEFAULT_TOPIC, "a");
        let (k, v1) = record(5, &path(&["b", "a"]), "b->a");
        let (_, v2) = record(5, &path(&["c", "a"]), "c->a");
        let (_, v3) = record(5, &path(&["b", "a"]), "b->a");
        r.apply(vec![raw(0, &k, Some(v1)), raw(1, &k, Some(v3))], 2, &HashSet::new());
        assert!(r.poisoned().is_none(), "the same registration again is fine");
        r.apply(vec![raw(2, &k, Some(v2))], 3, &HashSet::new());
        assert!(r.poisoned().unwrap().contains("registered again"));
    }
}
