//! Fetch as a well-behaved broker answers it: KIP-227 fetch sessions, long polls in rate
//! mode, KIP-74 size limits, and a response encoded by hand (v4..=11, non-flexible) so
//! that batch bytes are copied once, pre-built batch to response buffer, with the base
//! offset patched in place (the CRC does not cover it). That copy is all a source costs
//! per byte, which is what lets the benchmark measure the peer and not the source.
//!
//! The data topic serves the source's batches; a sink's data topic and topics made by
//! CreateTopics (the proxy's checkpoints) read as empty.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::FetchRequest;

use crate::SynthBroker;

const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// One partition a Fetch reads: (partition, fetch offset, partition max bytes).
type ReadPart = (i32, i64, i32);

/// A partition's key: (topic, partition).
type Key = (String, i32);

/// What a Fetch reads: the session id to answer, partitions (grouped by topic), and
/// whether the session is incremental.
type SessionRead = (i32, Vec<(String, ReadPart)>, bool);

/// A partition in an answer: key, high watermark, offsets served `[from, to)`.
type Told = (Key, i64, Option<(i64, i64)>);

/// One Fetch answer before it is sent.
struct Answer {
    frame: Bytes,
    bytes: usize,
    partitions: Vec<Told>,
}

/// The KIP-227 session cache and what it saw.
#[derive(Default)]
pub(crate) struct Sessions {
    next_id: i32,
    pub(crate) map: HashMap<i32, Session>,
    /// Per partition, the end of the data served last: a Fetch from before it re-reads
    /// data already served (the client's and the session's positions disagree).
    served_end: HashMap<Key, i64>,
    pub(crate) stats: SessionStats,
}

pub(crate) struct Session {
    expected_epoch: i32,
    parts: BTreeMap<Key, (i64, i32)>,
    /// High watermark last told per partition (an incremental answer names a partition
    /// only when it changed or there is data).
    sent_hwm: HashMap<Key, i64>,
}

/// What the fetch-session side saw: Fetch requests by kind, partitions named and
/// answered, and re-reads.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStats {
    pub sessionless: u64,
    pub full: u64,
    pub incremental: u64,
    /// Incremental requests refused (unknown session, wrong epoch).
    pub refused: u64,
    pub created: u64,
    /// Partitions named in requests, and in responses.
    pub named: u64,
    pub answered: u64,
    /// Fetches that re-read data already served.
    pub reread: u64,
}

impl SynthBroker {
    pub(crate) fn batch_records(&self) -> i64 {
        self.feed.as_ref().map_or(1, |f| i64::from(f.spec.batch_records))
    }

    /// Batches of the data topic's `partition` readable now (`i64::MAX`: endless).
    pub(crate) fn available(&self, partition: i32) -> i64 {
        self.feed.as_ref().map_or(0, |f| f.available(partition))
    }

    /// Which partitions a Fetch reads, per KIP-227: a sessionless request reads what it
    /// names; a full request (epoch 0) also starts a session holding them; an
    /// incremental one updates the session (forgotten, then named partitions) and reads
    /// all of it. Err: the top-level error to answer (unknown session, wrong epoch).
    fn session_for(&self, req: &FetchRequest) -> Result<SessionRead, i16> {
        let named: Vec<(String, ReadPart)> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.0.to_string(), (p.partition, p.fetch_offset, p.partition_max_bytes)))
            })
            .collect();
        let mut s = self.sessions.lock().unwrap();
        s.stats.named += named.len() as u64;
        if !self.sessions_enabled || req.session_epoch < 0 {
            s.stats.sessionless += 1;
            if req.session_id != 0 {
                s.map.remove(&req.session_id);
            }
            return Ok((0, named, false));
        }
        if req.session_epoch == 0 {
            if req.session_id != 0 {
                s.map.remove(&req.session_id);
            }
            s.next_id = s.next_id.checked_add(1).unwrap_or(1);
            let id = s.next_id;
            let parts = named.iter().map(|(t, (p, o, m))| ((t.clone(), *p), (*o, *m))).collect();
            s.map.insert(id, Session { expected_epoch: 1, parts, sent_hwm: HashMap::new() });
            s.stats.full += 1;
            s.stats.created += 1;
            return Ok((id, named, false));
        }
        let Some(session) = s.map.get_mut(&req.session_id) else {
            s.stats.refused += 1;
            return Err(FETCH_SESSION_ID_NOT_FOUND);
        };
        if session.expected_epoch != req.session_epoch {
            s.stats.refused += 1;
            return Err(INVALID_FETCH_SESSION_EPOCH);
        }
        for f in &req.forgotten_topics_data {
            for p in &f.partitions {
                let key = (f.topic.0.to_string(), *p);
                session.parts.remove(&key);
                session.sent_hwm.remove(&key);
            }
        }
        for (t, (p, o, m)) in &named {
            session.parts.insert((t.clone(), *p), (*o, *m));
        }
        session.expected_epoch = if req.session_epoch == i32::MAX { 1 } else { req.session_epoch + 1 };
        let reads = session.parts.iter().map(|((t, p), (o, m))| (t.clone(), (*p, *o, *m))).collect();
        s.stats.incremental += 1;
        Ok((req.session_id, reads, true))
    }

    /// The Fetch response (v4..=11); in rate mode it waits up to the request's
    /// `max_wait_ms` for a batch.
    pub(crate) async fn fetch(&self, req: &FetchRequest, v: i16, corr: i32) -> Bytes {
        let (session_id, reads, incremental) = match self.session_for(req) {
            Ok(x) => x,
            Err(code) => {
                let mut out = BytesMut::new();
                out.put_i32(4 + 4 + 2 + 4 + 4);
                out.put_i32(corr);
                out.put_i32(0); // throttle_time_ms
                out.put_i16(code);
                out.put_i32(0); // session id
                out.put_i32(0); // no topics
                return out.freeze();
            }
        };
        let sent_hwm = if incremental {
            self.sessions.lock().unwrap().map.get(&session_id).map(|s| s.sent_hwm.clone())
        } else {
            None
        };
        let wait = Duration::from_millis(u64::from(req.max_wait_ms.max(0).unsigned_abs()));
        let deadline = Instant::now() + wait;
        let rated = self.feed.as_ref().filter(|f| f.rated());
        loop {
            let answer = self.fetch_once(&reads, req.max_bytes, v, corr, session_id, sent_hwm.as_ref());
            if answer.bytes > 0 || Instant::now() >= deadline || rated.is_none() {
                self.note_answer(session_id, &answer);
                return answer.frame;
            }
            if let Some(feed) = rated {
                // Long poll: wait for the next batch (or the deadline).
                let until = feed.next_batch_at().min(deadline);
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
        }
    }

    /// Counts what `answer` holds and remembers the high watermarks told.
    fn note_answer(&self, session_id: i32, answer: &Answer) {
        let mut guard = self.sessions.lock().unwrap();
        let Sessions { map, served_end, stats, .. } = &mut *guard;
        stats.answered += answer.partitions.len() as u64;
        for (key, hwm, served) in &answer.partitions {
            if let Some((from, to)) = served {
                let end = served_end.entry(key.clone()).or_insert(0);
                if *from < *end {
                    stats.reread += 1;
                }
                *end = (*end).max(*to);
            }
            if session_id != 0 {
                if let Some(session) = map.get_mut(&session_id) {
                    session.sent_hwm.insert(key.clone(), *hwm);
                }
            }
        }
    }

    /// One Fetch response over `reads`. With `sent_hwm` (an incremental session) a
    /// partition is answered only when it has data or its high watermark moved since
    /// the session last told it.
    fn fetch_once(
        &self,
        reads: &[(String, ReadPart)],
        max_bytes: i32,
        v: i16,
        corr: i32,
        session_id: i32,
        sent_hwm: Option<&HashMap<Key, i64>>,
    ) -> Answer {
        let b = self.batch_records();
        let data_partitions = self.partitions();
        let other_topics = self.topics.lock().unwrap().clone();
        let mut remaining = usize::try_from(max_bytes).unwrap_or(0);
        let mut total = 0usize;
        let mut answered = Vec::new();
        let mut out = BytesMut::with_capacity(1024 + self.estimate(reads, max_bytes));
        out.put_i32(0); // length, patched below
        out.put_i32(corr);
        out.put_i32(0); // throttle_time_ms
        if v >= 7 {
            out.put_i16(0);
            out.put_i32(session_id);
        }
        let topics_at = out.len();
        out.put_i32(0); // topic count, patched
        let mut topic_count = 0i32;
        let mut i = 0;
        while i < reads.len() {
            let name = reads[i].0.as_str();
            let is_data = name == self.topic;
            let count = if is_data { Some(data_partitions) } else { other_topics.get(name).copied() };
            let topic_start = out.len();
            let name_len = i16::try_from(name.len()).unwrap_or(i16::MAX);
            out.put_i16(name_len);
            out.put_slice(&name.as_bytes()[..name_len.unsigned_abs() as usize]);
            let parts_at = out.len();
            out.put_i32(0); // partition count, patched
            let mut part_count = 0i32;
            while i < reads.len() && reads[i].0 == name {
                let (partition, fetch_offset, partition_max_bytes) = reads[i].1;
                i += 1;
                let exists = count.is_some_and(|c| (0..c).contains(&partition));
                let feed = self.feed.as_ref().filter(|_| is_data && exists);
                let part_start = out.len();
                out.put_i32(partition);
                out.put_i16(if exists { 0 } else { 3 });
                let hwm_at = out.len();
                out.put_i64(0); // high watermark, patched
                out.put_i64(0); // last stable offset, patched
                if v >= 5 {
                    out.put_i64(0); // log start offset
                }
                out.put_i32(-1); // aborted transactions: null
                if v >= 11 {
                    out.put_i32(-1); // preferred read replica
                }
                let len_at = out.len();
                out.put_i32(0); // records length, patched
                let first = fetch_offset.max(0) / b;
                let mut k = first;
                let mut part_bytes = 0usize;
                let limit = usize::try_from(partition_max_bytes).unwrap_or(0).min(remaining);
                let avail = feed.map_or(0, |f| f.available(partition));
                if let Some(feed) = feed {
                    while k < avail {
                        let batch = feed.batch(partition, k);
                        // KIP-74: the first batch of the response goes out even if larger
                        if part_bytes + batch.len() > limit && !(total == 0 && part_bytes == 0) {
                            break;
                        }
                        let at = out.len();
                        out.put_slice(&batch);
                        out[at..at + 8].copy_from_slice(&k.saturating_mul(b).to_be_bytes());
                        part_bytes += batch.len();
                        k += 1;
                    }
                }
                let hwm = if avail == i64::MAX { k } else { avail }.saturating_mul(b);
                let key = (name.to_owned(), partition);
                if let Some(sent) = sent_hwm {
                    if part_bytes == 0 && exists && sent.get(&key) == Some(&hwm) {
                        out.truncate(part_start); // nothing new: an incremental answer leaves it out
                        continue;
                    }
                }
                total += part_bytes;
                remaining = remaining.saturating_sub(part_bytes);
                out[hwm_at..hwm_at + 8].copy_from_slice(&hwm.to_be_bytes());
                out[hwm_at + 8..hwm_at + 16].copy_from_slice(&hwm.to_be_bytes());
                let records_len = i32::try_from(part_bytes).unwrap_or(i32::MAX);
                out[len_at..len_at + 4].copy_from_slice(&records_len.to_be_bytes());
                let served = (part_bytes > 0).then(|| (first.saturating_mul(b), k.saturating_mul(b)));
                answered.push((key, hwm, served));
                part_count += 1;
            }
            if part_count == 0 && sent_hwm.is_some() {
                out.truncate(topic_start);
            } else {
                out[parts_at..parts_at + 4].copy_from_slice(&part_count.to_be_bytes());
                topic_count += 1;
            }
        }
        out[topics_at..topics_at + 4].copy_from_slice(&topic_count.to_be_bytes());
        let len = i32::try_from(out.len() - 4).unwrap_or(i32::MAX);
        out[0..4].copy_from_slice(&len.to_be_bytes());
        Answer { frame: out.freeze(), bytes: total, partitions: answered }
    }

    /// A first guess at the response's size, so that the buffer is allocated once.
    fn estimate(&self, reads: &[(String, ReadPart)], max_bytes: i32) -> usize {
        let Some(feed) = &self.feed else { return reads.len() * 64 };
        let parts: usize = reads.iter().map(|(_, (_, _, m))| usize::try_from(*m).unwrap_or(0)).sum();
        let avail = if feed.rated() { 1 << 20 } else { usize::MAX };
        parts.min(usize::try_from(max_bytes).unwrap_or(0)).min(avail) + feed.template.len() + reads.len() * 64
    }
}
