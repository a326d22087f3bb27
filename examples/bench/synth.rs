//! The benchmark harness: synthetic broker.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

/// What one synthetic broker is: a source (answers Fetch from pre-built batches) and/or
/// a sink (acknowledges Produce and counts).
pub(crate) struct Synth {
    pub(crate) advertise: (String, i32),
    pub(crate) topic: String,
    pub(crate) partitions: i32,
    // source side
    pub(crate) batch_records: i32,
    pub(crate) size: usize,
    pub(crate) codec: Compression,
    pub(crate) template: Bytes,
    /// records/s over all partitions; 0 = as fast as asked
    pub(crate) rate: f64,
    pub(crate) start: Instant,
    pub(crate) start_us: i64,
    /// false for the sink: its topic reads as empty
    pub(crate) serves_data: bool,
    pub(crate) cache: Mutex<BTreeMap<(i32, i64), Bytes>>,
    /// Batches made available per partition in rate mode before the source goes idle
    /// (0: no end).
    pub(crate) batches_limit: i64,
    /// Answer KIP-227 fetch sessions (false: like a broker without them, id 0).
    pub(crate) sessions_enabled: bool,
    pub(crate) sessions: Mutex<SynthSessions>,
    // sink side
    pub(crate) sink: SinkStats,
    /// topics created through CreateTopics (name → partitions), e.g. the proxy's own
    pub(crate) created: Mutex<HashMap<String, i32>>,
    pub(crate) next_offsets: Mutex<HashMap<(String, i32), i64>>,
}

#[derive(Default)]
pub(crate) struct SinkStats {
    pub(crate) bytes: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) latency: Mutex<Option<Histogram<u64>>>,
}

impl Synth {
    pub(crate) fn new(
        advertise: (String, i32),
        topic: &str,
        partitions: i32,
        size: usize,
        codec: Compression,
        batch_records: i32,
        rate: f64,
    ) -> Self {
        Self {
            advertise,
            topic: topic.to_owned(),
            partitions,
            batch_records,
            size,
            codec,
            template: encode_batch(batch_records, size, codec, 0),
            rate,
            start: Instant::now(),
            start_us: now_us(),
            serves_data: true,
            cache: Mutex::new(BTreeMap::new()),
            batches_limit: 0,
            sessions_enabled: true,
            sessions: Mutex::new(SynthSessions::default()),
            sink: SinkStats::default(),
            created: Mutex::new(HashMap::new()),
            next_offsets: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds between two batches of one partition in rate mode.
    pub(crate) fn interval(&self) -> f64 {
        f64::from(self.batch_records) * f64::from(self.partitions) / self.rate
    }

    /// Offset (in intervals) of `partition`'s batches: partitions take turns, so that at
    /// many partitions the data arrives evenly rather than in one burst per interval.
    pub(crate) fn phase(&self, partition: i32) -> f64 {
        f64::from(partition.max(0)) / f64::from(self.partitions.max(1))
    }

    /// Batches of `partition` readable now (rate mode), or unbounded.
    pub(crate) fn available(&self, partition: i32) -> i64 {
        if !self.serves_data {
            return 0;
        }
        if self.rate <= 0.0 {
            return i64::MAX;
        }
        let made = (self.start.elapsed().as_secs_f64() / self.interval() - self.phase(partition)).max(0.0) as i64;
        if self.batches_limit > 0 {
            made.min(self.batches_limit)
        } else {
            made
        }
    }

    /// When the next batch of any partition becomes readable (rate mode).
    pub(crate) fn next_batch_at(&self) -> Instant {
        let turns = self.start.elapsed().as_secs_f64() / self.interval() * f64::from(self.partitions.max(1));
        let next = (turns.floor() + 1.0) / f64::from(self.partitions.max(1));
        self.start + Duration::from_secs_f64(next * self.interval())
    }

    pub(crate) fn batch(&self, partition: i32, k: i64) -> Bytes {
        if self.rate <= 0.0 {
            return self.template.clone();
        }
        let mut cache = self.cache.lock().unwrap();
        if let Some(b) = cache.get(&(partition, k)) {
            return b.clone();
        }
        let ready_us = self.start_us + ((k as f64 + 1.0 + self.phase(partition)) * self.interval() * 1e6) as i64;
        let b = encode_batch(self.batch_records, self.size, self.codec, ready_us);
        cache.insert((partition, k), b.clone());
        while cache.len() > 4096 {
            let first = *cache.keys().next().unwrap();
            cache.remove(&first);
        }
        b
    }

    pub(crate) fn versions() -> Vec<(ApiKey, i16, i16)> {
        vec![
            (ApiKey::Produce, 3, 9),
            (ApiKey::Fetch, 4, 11),
            (ApiKey::ListOffsets, 1, 7),
            (ApiKey::Metadata, 1, 12),
            (ApiKey::ApiVersions, 0, 3),
            (ApiKey::CreateTopics, 2, 7),
            (ApiKey::InitProducerId, 0, 4),
            (ApiKey::DescribeConfigs, 1, 4),
        ]
    }

    /// Answers one request frame (length prefix removed); None = no answer (acks=0).
    pub(crate) async fn handle(&self, mut body: Bytes) -> Result<Option<Bytes>, String> {
        let header: RequestHeader =
            kafka_protocol::protocol::decode_request_header_from_buffer(&mut body).map_err(|e| e.to_string())?;
        let key = ApiKey::try_from(header.request_api_key).map_err(|()| "unknown api key".to_string())?;
        let v = header.request_api_version;
        let corr = header.correlation_id;
        let range = Self::versions().into_iter().find(|(k, ..)| *k == key).map(|(_, a, b)| (a, b));
        let e = |e: wire::WireError| e.to_string();
        if key == ApiKey::ApiVersions {
            let keys = Self::versions()
                .into_iter()
                .map(|(k, min, max)| {
                    ApiVersion::default().with_api_key(k as i16).with_min_version(min).with_max_version(max)
                })
                .collect();
            let (err, ver) = if (0..=3).contains(&v) { (0, v) } else { (35, 0) };
            let resp = ApiVersionsResponse::default().with_error_code(err).with_api_keys(keys);
            return Ok(Some(wire::encode_response::<ApiVersionsRequest>(&resp, ver, corr).map_err(e)?));
        }
        match range {
            Some((min, max)) if (min..=max).contains(&v) => {}
            _ => return Err(format!("{key:?} v{v} is not supported by the synthetic broker")),
        }
        let dec = |e: anyhow::Error| format!("{key:?} v{v}: {e}");
        Ok(Some(match key {
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut body, v).map_err(dec)?;
                let wanted: Option<Vec<String>> =
                    req.topics.map(|ts| ts.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect());
                let created = self.created.lock().unwrap().clone();
                let names = wanted
                    .unwrap_or_else(|| std::iter::once(self.topic.clone()).chain(created.keys().cloned()).collect());
                let topics = names
                    .into_iter()
                    .map(|n| {
                        let count = if n == self.topic { Some(self.partitions) } else { created.get(&n).copied() };
                        if let Some(count) = count {
                            MetadataResponseTopic::default()
                                .with_name(Some(TopicName(StrBytes::from_string(n))))
                                .with_partitions(
                                    (0..count)
                                        .map(|i| {
                                            MetadataResponsePartition::default()
                                                .with_partition_index(i)
                                                .with_leader_id(BrokerId(1))
                                                .with_leader_epoch(-1)
                                                .with_replica_nodes(vec![BrokerId(1)])
                                                .with_isr_nodes(vec![BrokerId(1)])
                                        })
                                        .collect(),
                                )
                        } else {
                            MetadataResponseTopic::default()
                                .with_name(Some(TopicName(StrBytes::from_string(n))))
                                .with_error_code(3)
                        }
                    })
                    .collect();
                let resp = MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host(StrBytes::from_string(self.advertise.0.clone()))
                        .with_port(self.advertise.1)])
                    .with_cluster_id(Some(StrBytes::from_static_str("synthetic")))
                    .with_controller_id(BrokerId(1))
                    .with_topics(topics);
                wire::encode_response::<MetadataRequest>(&resp, v, corr).map_err(e)?
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut body, v).map_err(dec)?;
                let topics = req
                    .topics
                    .into_iter()
                    .map(|t| {
                        let parts = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let avail = self.available(p.partition_index);
                                let offset = if p.timestamp == -1 && avail != i64::MAX {
                                    avail * i64::from(self.batch_records)
                                } else {
                                    0
                                };
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p.partition_index)
                                    .with_timestamp(-1)
                                    .with_offset(offset)
                                    .with_leader_epoch(-1)
                            })
                            .collect();
                        ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(parts)
                    })
                    .collect();
                wire::encode_response::<ListOffsetsRequest>(
                    &ListOffsetsResponse::default().with_topics(topics),
                    v,
                    corr,
                )
                .map_err(e)?
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut body, v).map_err(dec)?;
                self.fetch(&req, v, corr).await
            }
            ApiKey::DescribeConfigs => {
                let req = DescribeConfigsRequest::decode(&mut body, v).map_err(dec)?;
                let results = req
                    .resources
                    .iter()
                    .map(|r| {
                        DescribeConfigsResult::default()
                            .with_resource_type(r.resource_type)
                            .with_resource_name(r.resource_name.clone())
                    })
                    .collect();
                wire::encode_response::<DescribeConfigsRequest>(
                    &DescribeConfigsResponse::default().with_results(results),
                    v,
                    corr,
                )
                .map_err(e)?
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut body, v).map_err(dec)?;
                for t in &req.topics {
                    if t.name.0.as_str() != self.topic {
                        self.created.lock().unwrap().entry(t.name.0.to_string()).or_insert(t.num_partitions.max(1));
                    }
                }
                let topics = req
                    .topics
                    .iter()
                    .map(|t| {
                        CreatableTopicResult::default()
                            .with_name(t.name.clone())
                            .with_num_partitions(t.num_partitions)
                            .with_replication_factor(t.replication_factor)
                            .with_error_code(if t.name.0.as_str() == self.topic { 36 } else { 0 })
                    })
                    .collect();
                wire::encode_response::<CreateTopicsRequest>(
                    &CreateTopicsResponse::default().with_topics(topics),
                    v,
                    corr,
                )
                .map_err(e)?
            }
            ApiKey::InitProducerId => {
                let _ = InitProducerIdRequest::decode(&mut body, v).map_err(dec)?;
                let resp = InitProducerIdResponse::default().with_producer_id(ProducerId(4242)).with_producer_epoch(0);
                wire::encode_response::<InitProducerIdRequest>(&resp, v, corr).map_err(e)?
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut body, v).map_err(dec)?;
                let now = now_us();
                let mut lat = Vec::new();
                let mut responses = Vec::new();
                for t in &req.topic_data {
                    let mut parts = Vec::new();
                    for p in &t.partition_data {
                        let (b, n) = match &p.records {
                            Some(r) => scan_batches(r, |us| lat.push((now - us).max(0) as u64)),
                            None => (0, 0),
                        };
                        if t.name.0.as_str() == self.topic {
                            self.sink.bytes.fetch_add(b, Ordering::Relaxed);
                            self.sink.records.fetch_add(n, Ordering::Relaxed);
                        }
                        let base = {
                            let mut offs = self.next_offsets.lock().unwrap();
                            let o = offs.entry((t.name.0.to_string(), p.index)).or_insert(0);
                            let base = *o;
                            *o += n as i64;
                            base
                        };
                        parts.push(
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_base_offset(base)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(0),
                        );
                    }
                    responses.push(
                        TopicProduceResponse::default().with_name(t.name.clone()).with_partition_responses(parts),
                    );
                }
                if !lat.is_empty() {
                    if let Some(h) = self.sink.latency.lock().unwrap().as_mut() {
                        for l in lat {
                            let _ = h.record(l.min(h.high()));
                        }
                    }
                }
                if req.acks == 0 {
                    return Ok(None);
                }
                wire::encode_response::<ProduceRequest>(&ProduceResponse::default().with_responses(responses), v, corr)
                    .map_err(e)?
            }
            other => return Err(format!("{other:?} is not implemented by the synthetic broker")),
        }))
    }

    /// Which partitions a Fetch reads, per KIP-227: a sessionless request reads what it
    /// names; a full request (epoch 0) also starts a session holding them; an
    /// incremental one updates the session (forgotten, then named partitions) and reads
    /// all of it. Err: the top-level error to answer (unknown session, wrong epoch).
    pub(crate) fn session_for(&self, req: &FetchRequest) -> Result<SessionRead, i16> {
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
            s.next_id += 1;
            let id = s.next_id;
            let parts = named.iter().map(|(t, (p, o, m))| ((t.clone(), *p), (*o, *m))).collect();
            s.map.insert(id, SynthSession { expected_epoch: 1, parts, sent_hwm: HashMap::new() });
            s.stats.full += 1;
            s.stats.created += 1;
            return Ok((id, named, false));
        }
        let Some(session) = s.map.get_mut(&req.session_id) else {
            s.stats.refused += 1;
            return Err(70); // FETCH_SESSION_ID_NOT_FOUND
        };
        if session.expected_epoch != req.session_epoch {
            s.stats.refused += 1;
            return Err(71); // INVALID_FETCH_SESSION_EPOCH
        }
        for f in &req.forgotten_topics_data {
            for p in &f.partitions {
                session.parts.remove(&(f.topic.0.to_string(), *p));
                session.sent_hwm.remove(&(f.topic.0.to_string(), *p));
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

    /// Fetch v4..=11 response, encoded by hand so that batch bytes are copied once
    /// (pre-built batch → response buffer, base offset patched in place).
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
        let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
        loop {
            let answer = self.fetch_once(&reads, req.max_bytes, v, corr, session_id, sent_hwm.as_ref());
            if answer.bytes > 0 || Instant::now() >= deadline || self.rate <= 0.0 {
                let mut guard = self.sessions.lock().unwrap();
                let SynthSessions { map, served_end, stats, .. } = &mut *guard;
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
                return answer.frame;
            }
            // Long poll: wait for the next batch (or the deadline).
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.next_batch_at().min(deadline))).await;
        }
    }

    /// One Fetch response over `reads`. With `sent_hwm` (an incremental session) a
    /// partition is answered only when it has data or its high watermark moved since
    /// the session last told it.
    pub(crate) fn fetch_once(
        &self,
        reads: &[(String, ReadPart)],
        max_bytes: i32,
        v: i16,
        corr: i32,
        session_id: i32,
        sent_hwm: Option<&HashMap<(String, i32), i64>>,
    ) -> FetchAnswer {
        let b = i64::from(self.batch_records);
        let mut remaining = max_bytes.max(0) as usize;
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
            let topic_start = out.len();
            out.put_i16(name.len() as i16);
            out.put_slice(name.as_bytes());
            let parts_at = out.len();
            out.put_i32(0); // partition count, patched
            let mut part_count = 0i32;
            while i < reads.len() && reads[i].0 == name {
                let (partition, fetch_offset, partition_max_bytes) = reads[i].1;
                i += 1;
                let known = self.serves_data && name == self.topic && partition >= 0 && partition < self.partitions;
                // a sink's topics (and topics created on it, e.g. the proxy's checkpoints) read as empty
                let exists = known || name == self.topic || self.created.lock().unwrap().contains_key(name);
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
                let avail = self.available(partition);
                let mut k = fetch_offset.max(0) / b;
                let mut part_bytes = 0usize;
                let limit = (partition_max_bytes.max(0) as usize).min(remaining);
                if known {
                    while k < avail {
                        let batch = self.batch(partition, k);
                        // KIP-74: the first batch of the response goes out even if larger
                        if part_bytes + batch.len() > limit && !(total == 0 && part_bytes == 0) {
                            break;
                        }
                        let at = out.len();
                        out.put_slice(&batch);
                        out[at..at + 8].copy_from_slice(&(k * b).to_be_bytes());
                        part_bytes += batch.len();
                        k += 1;
                    }
                }
                let hwm = if avail == i64::MAX { k * b } else { avail * b };
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
                out[len_at..len_at + 4].copy_from_slice(&(part_bytes as i32).to_be_bytes());
                let served = (part_bytes > 0).then(|| ((fetch_offset.max(0) / b) * b, k * b));
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
        let len = (out.len() - 4) as i32;
        out[0..4].copy_from_slice(&len.to_be_bytes());
        FetchAnswer { frame: out.freeze(), bytes: total, partitions: answered }
    }

    pub(crate) fn estimate(&self, reads: &[(String, ReadPart)], max_bytes: i32) -> usize {
        let parts: usize = reads.iter().map(|(_, (_, _, m))| (*m).max(0) as usize).sum();
        let avail = if self.rate > 0.0 { 1 << 20 } else { usize::MAX };
        parts.min(max_bytes.max(0) as usize).min(avail) + self.template.len() + reads.len() * 64
    }
}

/// One partition a Fetch reads: (partition, fetch offset, partition max bytes).
pub(crate) type ReadPart = (i32, i64, i32);

/// What a Fetch reads: session id to answer, partitions (by topic), incremental or not.
pub(crate) type SessionRead = (i32, Vec<(String, ReadPart)>, bool);

pub(crate) struct FetchAnswer {
    pub(crate) frame: Bytes,
    pub(crate) bytes: usize,
    /// Partitions in the answer: key, high watermark, offsets served `[from, to)`.
    pub(crate) partitions: Vec<((String, i32), i64, Option<(i64, i64)>)>,
}

/// The synthetic source's KIP-227 session cache and what it saw.
#[derive(Default)]
pub(crate) struct SynthSessions {
    pub(crate) next_id: i32,
    pub(crate) map: HashMap<i32, SynthSession>,
    /// Per partition, the end of the data served last: a Fetch from before it re-reads
    /// data already served (the client's and the session's positions disagree).
    pub(crate) served_end: HashMap<(String, i32), i64>,
    pub(crate) stats: SessionStats,
}

pub(crate) struct SynthSession {
    pub(crate) expected_epoch: i32,
    pub(crate) parts: BTreeMap<(String, i32), (i64, i32)>,
    /// High watermark last told per partition (an incremental answer names a partition
    /// only when it changed or there is data).
    pub(crate) sent_hwm: HashMap<(String, i32), i64>,
}

#[derive(Default, Clone, Copy)]
pub(crate) struct SessionStats {
    pub(crate) sessionless: u64,
    pub(crate) full: u64,
    pub(crate) incremental: u64,
    pub(crate) refused: u64,
    pub(crate) created: u64,
    /// Partitions named in requests, and in responses.
    pub(crate) named: u64,
    pub(crate) answered: u64,
    /// Fetches that re-read data already served.
    pub(crate) reread: u64,
}

impl SessionStats {
    pub(crate) fn json(&self) -> Value {
        json!({
            "sessionless": self.sessionless, "full": self.full, "incremental": self.incremental,
            "refused": self.refused, "created": self.created, "named": self.named,
            "answered": self.answered, "reread": self.reread,
        })
    }
}

pub(crate) async fn serve(listener: TcpListener, synth: Arc<Synth>) {
    serve_maybe_tls(listener, synth, None).await;
}

/// Accepts connections, over TLS when `tls` is given (the sink of the TLS runs: the
/// broker side of the handshake and decryption run here, as on a real broker).
pub(crate) async fn serve_maybe_tls(listener: TcpListener, synth: Arc<Synth>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { return };
        let _ = sock.set_nodelay(true);
        let synth = synth.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => match acceptor.accept(sock).await {
                    Ok(s) => serve_conn(s, &synth).await,
                    Err(e) => Err(format!("TLS handshake: {e}")),
                },
                None => serve_conn(sock, &synth).await,
            };
            if let Err(e) = result {
                if !e.contains("early eof") && !e.contains("reset") && !e.contains("close_notify") {
                    eprintln!("synthetic broker: {e}");
                }
            }
        });
    }
}

/// A rustls server configuration from `dir/broker.pem` and `dir/broker.key`
/// (as made by `tls/make-certs.sh`).
pub(crate) fn tls_acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("broker.pem"))
        .expect("broker.pem")
        .collect::<Result<_, _>>()
        .expect("broker.pem");
    let key = PrivateKeyDer::from_pem_file(dir.join("broker.key")).expect("broker.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("broker certificate");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub(crate) async fn serve_conn<S>(sock: S, synth: &Synth) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut r, mut w) = tokio::io::split(sock);
    let mut buf = BytesMut::with_capacity(1 << 20);
    loop {
        while let Some(total) = wire::check_frame(&buf, 1 << 30).map_err(|e| e.to_string())? {
            let frame = buf.split_to(total).freeze().slice(4..);
            if let Some(resp) = synth.handle(frame).await? {
                w.write_all(&resp).await.map_err(|e| e.to_string())?;
            }
        }
        if buf.len() >= 4 {
            let need = 4 + i32::from_be_bytes(buf[0..4].try_into().unwrap()).max(0) as usize;
            buf.reserve(need.saturating_sub(buf.len()));
        } else {
            buf.reserve(64 << 10);
        }
        if r.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
    }
}

pub(crate) fn synth_source_main(args: &[String]) {
    let listen = text(args, "--listen", "127.0.0.1:0");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let local = listener.local_addr().unwrap();
        let adv = text(args, "--advertise", &local.to_string());
        let (h, p) = adv.rsplit_once(':').expect("--advertise H:P");
        let mut synth = Synth::new(
            (h.to_owned(), p.parse().unwrap()),
            &text(args, "--topic", "bench.t"),
            num(args, "--partitions", 4.0) as i32,
            num(args, "--size", 1000.0) as usize,
            codec_of(&text(args, "--codec", "none")),
            num(args, "--batch-records", 16.0) as i32,
            num(args, "--rate", 0.0),
        );
        synth.batches_limit = num(args, "--batches", 0.0) as i64;
        synth.sessions_enabled = !args.iter().any(|a| a == "--no-sessions");
        let synth = Arc::new(synth);
        println!("synth-source listening on {local} (advertised {adv})");
        // `--evict-sessions-ms`: forget every fetch session that often, as a broker does
        // when its session cache is full or it restarts (clients must start over).
        let evict_ms = num(args, "--evict-sessions-ms", 0.0) as u64;
        if evict_ms > 0 {
            let evicted = synth.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(evict_ms)).await;
                    evicted.sessions.lock().unwrap().map.clear();
                }
            });
        }
        // What the fetch-session side saw, once a second when it changed (read by
        // tests/fetch_sessions.rs and by whoever sizes a deployment).
        let watched = synth.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let line = watched.sessions.lock().unwrap().stats.json().to_string();
                if line != last {
                    println!("synth-source fetch-sessions {line}");
                    last = line;
                }
            }
        });
        serve(listener, synth).await;
    });
}
