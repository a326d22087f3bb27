//! Exact offset translation: where, on the target, a consumer group that committed
//! source offset C resumes.
//!
//! The answer is the target offset of the first mirrored record whose source offset is
//! at or above C — also when C falls inside a batch, or inside a range the mirror did
//! not copy (transaction markers, aborted data, records filtered by provenance).
//!
//! Checkpoints keep (source, target) mapping points at batch boundaries (see
//! [`crate::checkpoint`]). From the newest point (S, T) at or below C, the translator
//! replays what the mirror did: it reads the source from S and applies the same
//! decisions (transaction outcomes from the markers, provenance), which gives the
//! sequence of batches the mirror forwarded; it reads the target from T and pairs those
//! batches with the target's, in order (a batch is recognised by its record count and
//! timestamps, so foreign batches in between are passed over). The pair that holds C
//! gives the answer to the record. MirrorMaker 2 keeps sparse pairs and answers with the
//! nearest one below, so its users reprocess after a failover; this does not.

use std::collections::HashSet;

use crate::batch::VerifiedBatch;
use crate::checkpoint::{self, Checkpoint, Fingerprint};
use crate::cluster::{Cluster, ClusterError, TopicPartition};
use crate::config::Flow;
use crate::registry::{self, Registry, Verdict};
use crate::txn::{Outcome, Released, TxnStage};

/// The result for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    /// The exact target offset of the first record the group has not consumed.
    Exact(i64),
    /// The group is ahead of the mirror: its next record is not on the target yet.
    /// The mirror is at this (source, target) position.
    AheadOfMirror { source: i64, target: i64 },
    /// No answer, with why.
    Unknown(String),
}

/// A batch the mirror forwarded: where its records came from.
#[derive(Debug, Clone)]
struct Forwarded {
    fingerprint: Fingerprint,
    /// Source offsets of its records, in order.
    offsets: Vec<i64>,
}

fn forwarded(batch: &VerifiedBatch) -> Result<Forwarded, String> {
    let h = batch.header();
    let offsets = if !batch.needs_renumbering() {
        (h.base_offset..=h.last_offset()).collect()
    } else {
        let (_, spans) = batch.record_spans().map_err(|e| e.to_string())?;
        spans.iter().map(|s| h.base_offset + i64::from(s.offset_delta)).collect()
    };
    Ok(Forwarded { fingerprint: Fingerprint::of(h), offsets })
}

/// Translates one partition's committed offset `committed` for `flow`.
pub async fn translate(
    flow: &Flow,
    source: &Cluster,
    target: &Cluster,
    cp: &Checkpoint,
    tp: &TopicPartition,
    committed: i64,
) -> Result<Translated, ClusterError> {
    if committed == cp.source_offset {
        return Ok(Translated::Exact(cp.target_offset));
    }
    if committed > cp.source_offset {
        return Ok(Translated::AheadOfMirror { source: cp.source_offset, target: cp.target_offset });
    }
    let Some((s, t)) = cp.point_at_or_below(committed) else {
        let oldest = cp.points.first().map_or(cp.source_offset, |p| p.0);
        return Ok(Translated::Unknown(format!(
            "offset {committed} is older than the mirror's history (oldest mapping point: source offset {oldest})"
        )));
    };
    // Replay the mirror's decisions from s until the batch holding `committed`.
    // The source's producer registry as it is now: it holds every registration made
    // before the batches replayed here were written (ids it lacks are applications').
    let mut reg = Registry::new(&flow.registry_topic, flow.source_id.as_str());
    let (records, end) =
        registry::read_since(source, &flow.registry_topic, 0).await.map_err(|e| ClusterError::Other {
            cluster: source.alias().into(),
            what: format!("producer registry '{}': {e}", flow.registry_topic),
        })?;
    reg.apply(records, end, &HashSet::new());
    let guard = flow.loop_guard();
    let mut stage: TxnStage<Forwarded> = TxnStage::new(usize::MAX);
    let mut out: Vec<Forwarded> = Vec::new();
    let mut problem = None;
    let mut first_seen = None;
    let end = cp.source_offset;
    checkpoint::read_partition(source, &tp.topic, tp.partition, s, |batch| {
        let h = *batch.header();
        first_seen.get_or_insert(h.base_offset);
        if h.base_offset >= end {
            return false;
        }
        if h.is_control() {
            match batch.control_type() {
                Ok(Some(crate::batch::ControlType::Commit)) => {
                    stage.marker(h.producer_id, h.base_offset, Outcome::Commit)
                }
                Ok(Some(crate::batch::ControlType::Abort)) => {
                    stage.marker(h.producer_id, h.base_offset, Outcome::Abort)
                }
                Ok(_) => {}
                Err(e) => {
                    problem = Some(e.to_string());
                    return false;
                }
            }
        } else if !batch.is_empty() {
            let batch = match batch.without_records_before(s) {
                Ok(Some(b)) => b,
                Ok(None) => return true,
                Err(e) => {
                    problem = Some(e.to_string());
                    return false;
                }
            };
            match registry::verdict(&reg, &batch, &guard) {
                Verdict::Skip(_) => return true,
                Verdict::ForwardFromOrigin | Verdict::Forward(_) | Verdict::Wait(_) => {}
                Verdict::Stop(why) => {
                    problem = Some(why);
                    return false;
                }
            }
            match forwarded(&batch) {
                Ok(f) => stage.push(h.base_offset.max(s), 0, h.is_transactional().then_some(h.producer_id), f),
                Err(e) => {
                    problem = Some(e);
                    return false;
                }
            }
        }
        for r in stage.release() {
            if let Released::Forward(f) = r {
                out.push(f);
            }
        }
        // Stop once a forwarded batch reaches `committed`.
        !out.last().is_some_and(|f| f.offsets.last().is_some_and(|o| *o >= committed))
    })
    .await
    .map_err(|e| ClusterError::Other { cluster: source.alias().into(), what: e.to_string() })?;
    if let Some(p) = problem {
        return Ok(Translated::Unknown(format!("source data after offset {s} cannot be read: {p}")));
    }
    if first_seen.is_some_and(|f| f > s) {
        // Retention removed part of the range: the replay would be wrong.
        return Ok(Translated::Unknown(format!(
            "the source no longer holds offset {s} (it starts at {})",
            first_seen.unwrap_or(s)
        )));
    }
    let Some(k) = out.iter().position(|f| f.offsets.last().is_some_and(|o| *o >= committed)) else {
        // Everything from `committed` up to the mirror's position was not copied.
        return Ok(Translated::Exact(cp.target_offset));
    };
    let within = out[k].offsets.iter().filter(|o| **o < committed).count() as i64;
    // Pair the forwarded batches with the target's, in order. With re-batching a
    // target batch holds a run of forwarded batches; foreign batches are passed over.
    let wanted: Vec<Fingerprint> = out[..=k].iter().map(|f| f.fingerprint).collect();
    let target_topic = flow.target_topic(&tp.topic);
    let tail = checkpoint::read_batches(target, &target_topic, tp.partition, t, 1 << 20)
        .await
        .map_err(|e| ClusterError::Other { cluster: target.alias().into(), what: e.to_string() })?;
    match pair(&wanted, &tail) {
        Some(base) => Ok(Translated::Exact(base + within)),
        None => Ok(Translated::Unknown(format!(
            "the target partition {target_topic}-{} does not hold the mirrored batches after offset {t}",
            tp.partition
        ))),
    }
}

/// Pairs forwarded batches (`wanted`, in order) with the target's batches (`tail`, in
/// order) and returns the target offset of the last wanted batch's first record. A
/// target batch pairs with a run of one or more wanted batches (re-batching merges
/// runs); the last run may go on past `wanted` (its batches were not replayed).
fn pair(wanted: &[Fingerprint], tail: &[checkpoint::TailBatch]) -> Option<i64> {
    let mut tail = tail.iter();
    let mut i = 0;
    let mut last = None;
    while i < wanted.len() {
        let (batch, end) = tail.find_map(|b| {
            let on_target = Fingerprint::of(&b.header);
            let mut run = wanted[i];
            for j in i + 1..=wanted.len() {
                if j > i + 1 {
                    run = Fingerprint::merged(&[run, wanted[j - 1]])?;
                }
                if on_target.matches(&run) || (j == wanted.len() && on_target.begins_with(&run)) {
                    return Some((b, j));
                }
                if run.records >= on_target.records {
                    return None; // this target batch is not (the start of) the run
                }
            }
            None
        })?;
        let before: i64 = wanted[i..end - 1].iter().map(|f| i64::from(f.records)).sum();
        last = Some(batch.base_offset + before);
        i = end;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchHeader;
    use crate::checkpoint::TailBatch;

    fn fp(records: i32, first: i64, max: i64) -> Fingerprint {
        Fingerprint { records, first_timestamp: first, max_timestamp: Some(max) }
    }

    fn tail(base_offset: i64, records: i32, first: i64, max: i64) -> TailBatch {
        let header = BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: first,
            max_timestamp: max,
            producer_id: 1,
            producer_epoch: 0,
            base_sequence: 0,
            records_count: records,
        };
        TailBatch { base_offset, header }
    }

    #[test]
    fn pairs_batch_for_batch_and_skips_foreign_batches() {
        let wanted = [fp(2, 10, 11), fp(3, 20, 22)];
        let on_target = [tail(100, 2, 10, 11), tail(102, 5, 15, 15), tail(107, 3, 20, 22)];
        assert_eq!(pair(&wanted, &on_target), Some(107));
    }

    #[test]
    fn pairs_runs_merged_into_one_target_batch() {
        let wanted = [fp(2, 10, 11), fp(3, 20, 22), fp(1, 30, 30), fp(4, 40, 43)];
        // [0,1] merged, a foreign batch, [2,3] merged
        let on_target = [tail(100, 5, 10, 22), tail(105, 1, 99, 99), tail(106, 5, 30, 43)];
        assert_eq!(pair(&wanted, &on_target), Some(107), "the 4th batch starts after the 3rd's one record");
        assert_eq!(pair(&wanted[..2], &on_target), Some(102));
        // The last run goes on past what was replayed.
        assert_eq!(pair(&wanted[..3], &on_target), Some(106));
        // A target batch that only looks like a run's start but does not add up.
        assert_eq!(pair(&wanted, &[tail(100, 4, 10, 22)]), None);
    }
}
