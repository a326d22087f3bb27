//! Benchmark harness: mirrorproxy against its alternatives, same machine, same run.
//! `tools/bench/README.md` explains what is measured and how; `tools/bench/run.sh` is
//! the one command. Subcommands:
//!
//! ```text
//! bench run [--modes isolation,latency,wan,real,tls,remote-write] [--secs S] [--reps N]
//!       [--out DIR] [--proxy-tuning "k = v; ..."] [--proxy-flow "k = v; ..."] ...
//! bench synth-source --listen H:P [--advertise H:P] [--topic T] [--partitions P]
//!       [--size BYTES] [--codec none|lz4|...] [--batch-records N] [--rate RECORDS_PER_S]
//!       [--batches N] [--no-sessions] [--evict-sessions-ms MS]
//! bench rdmirror --source H:P --target H:P --topic T [--partitions P] [--codec C]
//! bench relay --listen H:P --upstream H:P
//! bench link --listen H:P --upstream H:P [--rate 200mbit] [--rtt-ms 50]
//! bench produce --bootstrap H:P --topic T [--records N] [--rate R] [--size B]
//!       [--codec C] [--partitions P] [--keys seq|random|none] [--key-space K]
//! ```
//!
//! * `synth-source` is a Kafka broker that has one topic and answers Fetch from a
//!   pre-built record batch (base offset patched per response; the CRC does not cover
//!   it) at memory speed; with `--rate` it makes batches available at that rate, each
//!   record's key carrying the wall-clock microsecond it became readable (partitions
//!   take turns; `--batches` ends each partition after N batches). It keeps KIP-227
//!   fetch sessions like a Kafka broker (`--no-sessions`: like tansu, never) and prints
//!   what it saw of them (`synth-source fetch-sessions {...}`), including fetches that
//!   re-read data it had served already.
//! * the synthetic sink (inside `run`) acknowledges Produce, counts bytes and records,
//!   and, for uncompressed batches, reads each record's key back to measure latency.
//! * `rdmirror` is the decode/re-encode peer (librdkafka consumer + producer per
//!   record: the MirrorMaker model); `relay` is a tokio TCP copy relay (the physical
//!   limit for bytes through one process).
//! * `link` emulates a WAN link in user space where the kernel has no `sch_netem`: a TCP
//!   relay that delivers each chunk half an RTT after it was read, paced at the link
//!   rate, with a bounded queue (about one bandwidth-delay product plus 1 MB) so a fast
//!   sender is held back by TCP flow control as on a real link.
#![allow(clippy::pedantic, clippy::too_many_arguments)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{
    api_versions_response::ApiVersion,
    create_topics_response::CreatableTopicResult,
    describe_configs_response::DescribeConfigsResult,
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, FetchRequest, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use mirrorproxy::wire;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------ arguments

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: f64) -> f64 {
    arg(args, name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, got '{v}'")))
}

fn text(args: &[String], name: &str, default: &str) -> String {
    arg(args, name).unwrap_or_else(|| default.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map_or("", String::as_str) {
        "run" => run(&args),
        "synth-source" => synth_source_main(&args),
        "rdmirror" => rdmirror(&args),
        "relay" => relay_main(&args),
        "link" => link_main(&args),
        "produce" => {
            let p = ProduceSpec::from_args(&args);
            let out = produce(&p, None);
            println!("bench produce: {} records in {:.1}s", out.records, out.secs);
        }
        _ => {
            eprintln!("usage: bench run|synth-source|rdmirror|relay|produce ... (see tools/bench/README.md)");
            std::process::exit(2);
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn codec_of(name: &str) -> Compression {
    match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => panic!("unknown codec '{other}'"),
    }
}

// ------------------------------------------------------------------ record batches

/// Semi-compressible value bytes (lz4 gets roughly 2:1 on them).
fn value_bytes(size: usize, seed: u64) -> Bytes {
    Bytes::from(
        (0..size as u64).map(|i| ((i.wrapping_mul(31).wrapping_add(seed)) % 251) as u8 / 4).collect::<Vec<u8>>(),
    )
}

/// One record batch of `n` records of `size`-byte values, base offset 0, each record's
/// key the 8-byte big-endian `key_us`, timestamps `key_us / 1000`.
fn encode_batch(n: i32, size: usize, codec: Compression, key_us: i64) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            // constant offset - sequence keeps kafka-protocol's encoder to one batch
            sequence: i - 1,
            timestamp: key_us / 1000,
            key: Some(Bytes::copy_from_slice(&key_us.to_be_bytes())),
            value: Some(value_bytes(size, i as u64)),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: codec })
        .expect("encode batch");
    buf.freeze()
}

fn read_varint(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut v: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

/// Walks the record batches in `records`: (bytes, records, keys of uncompressed records
/// that are 8-byte microsecond stamps).
fn scan_batches(records: &[u8], mut on_key_us: impl FnMut(i64)) -> (u64, u64) {
    let mut pos = 0usize;
    let mut n = 0u64;
    while pos + 61 <= records.len() {
        let len = i32::from_be_bytes(records[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let end = (pos + 12 + len).min(records.len());
        let attributes = i16::from_be_bytes(records[pos + 21..pos + 23].try_into().unwrap());
        let count = i32::from_be_bytes(records[pos + 57..pos + 61].try_into().unwrap());
        n += count.max(0) as u64;
        if attributes & 0x07 == 0 {
            let body = &records[pos + 61..end];
            let mut p = 0usize;
            for _ in 0..count {
                let Some(rlen) = read_varint(body, &mut p) else { break };
                let start = p;
                p += 1; // attributes
                let _ = read_varint(body, &mut p); // timestamp delta
                let _ = read_varint(body, &mut p); // offset delta
                let klen = read_varint(body, &mut p).unwrap_or(-1);
                if klen == 8 && p + 8 <= body.len() {
                    on_key_us(i64::from_be_bytes(body[p..p + 8].try_into().unwrap()));
                }
                p = start + rlen.max(0) as usize;
                if p > body.len() {
                    break;
                }
            }
        }
        pos = end;
    }
    (records.len() as u64, n)
}

// ------------------------------------------------------------------ synthetic broker

/// What one synthetic broker is: a source (answers Fetch from pre-built batches) and/or
/// a sink (acknowledges Produce and counts).
struct Synth {
    advertise: (String, i32),
    topic: String,
    partitions: i32,
    // source side
    batch_records: i32,
    size: usize,
    codec: Compression,
    template: Bytes,
    /// records/s over all partitions; 0 = as fast as asked
    rate: f64,
    start: Instant,
    start_us: i64,
    /// false for the sink: its topic reads as empty
    serves_data: bool,
    cache: Mutex<BTreeMap<(i32, i64), Bytes>>,
    /// Batches made available per partition in rate mode before the source goes idle
    /// (0: no end).
    batches_limit: i64,
    /// Answer KIP-227 fetch sessions (false: like a broker without them, id 0).
    sessions_enabled: bool,
    sessions: Mutex<SynthSessions>,
    // sink side
    sink: SinkStats,
    /// topics created through CreateTopics (name → partitions), e.g. the proxy's own
    created: Mutex<HashMap<String, i32>>,
    next_offsets: Mutex<HashMap<(String, i32), i64>>,
}

#[derive(Default)]
struct SinkStats {
    bytes: AtomicU64,
    records: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

impl Synth {
    fn new(
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
    fn interval(&self) -> f64 {
        f64::from(self.batch_records) * f64::from(self.partitions) / self.rate
    }

    /// Offset (in intervals) of `partition`'s batches: partitions take turns, so that at
    /// many partitions the data arrives evenly rather than in one burst per interval.
    fn phase(&self, partition: i32) -> f64 {
        f64::from(partition.max(0)) / f64::from(self.partitions.max(1))
    }

    /// Batches of `partition` readable now (rate mode), or unbounded.
    fn available(&self, partition: i32) -> i64 {
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
    fn next_batch_at(&self) -> Instant {
        let turns = self.start.elapsed().as_secs_f64() / self.interval() * f64::from(self.partitions.max(1));
        let next = (turns.floor() + 1.0) / f64::from(self.partitions.max(1));
        self.start + Duration::from_secs_f64(next * self.interval())
    }

    fn batch(&self, partition: i32, k: i64) -> Bytes {
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

    fn versions() -> Vec<(ApiKey, i16, i16)> {
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
    async fn handle(&self, mut body: Bytes) -> Result<Option<Bytes>, String> {
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
    async fn fetch(&self, req: &FetchRequest, v: i16, corr: i32) -> Bytes {
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
    fn fetch_once(
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

    fn estimate(&self, reads: &[(String, ReadPart)], max_bytes: i32) -> usize {
        let parts: usize = reads.iter().map(|(_, (_, _, m))| (*m).max(0) as usize).sum();
        let avail = if self.rate > 0.0 { 1 << 20 } else { usize::MAX };
        parts.min(max_bytes.max(0) as usize).min(avail) + self.template.len() + reads.len() * 64
    }
}

/// One partition a Fetch reads: (partition, fetch offset, partition max bytes).
type ReadPart = (i32, i64, i32);

/// What a Fetch reads: session id to answer, partitions (by topic), incremental or not.
type SessionRead = (i32, Vec<(String, ReadPart)>, bool);

struct FetchAnswer {
    frame: Bytes,
    bytes: usize,
    /// Partitions in the answer: key, high watermark, offsets served `[from, to)`.
    partitions: Vec<((String, i32), i64, Option<(i64, i64)>)>,
}

/// The synthetic source's KIP-227 session cache and what it saw.
#[derive(Default)]
struct SynthSessions {
    next_id: i32,
    map: HashMap<i32, SynthSession>,
    /// Per partition, the end of the data served last: a Fetch from before it re-reads
    /// data already served (the client's and the session's positions disagree).
    served_end: HashMap<(String, i32), i64>,
    stats: SessionStats,
}

struct SynthSession {
    expected_epoch: i32,
    parts: BTreeMap<(String, i32), (i64, i32)>,
    /// High watermark last told per partition (an incremental answer names a partition
    /// only when it changed or there is data).
    sent_hwm: HashMap<(String, i32), i64>,
}

#[derive(Default, Clone, Copy)]
struct SessionStats {
    sessionless: u64,
    full: u64,
    incremental: u64,
    refused: u64,
    created: u64,
    /// Partitions named in requests, and in responses.
    named: u64,
    answered: u64,
    /// Fetches that re-read data already served.
    reread: u64,
}

impl SessionStats {
    fn json(&self) -> Value {
        json!({
            "sessionless": self.sessionless, "full": self.full, "incremental": self.incremental,
            "refused": self.refused, "created": self.created, "named": self.named,
            "answered": self.answered, "reread": self.reread,
        })
    }
}

async fn serve(listener: TcpListener, synth: Arc<Synth>) {
    serve_maybe_tls(listener, synth, None).await;
}

/// Accepts connections, over TLS when `tls` is given (the sink of the TLS runs: the
/// broker side of the handshake and decryption run here, as on a real broker).
async fn serve_maybe_tls(listener: TcpListener, synth: Arc<Synth>, tls: Option<tokio_rustls::TlsAcceptor>) {
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
fn tls_acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
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

async fn serve_conn<S>(sock: S, synth: &Synth) -> Result<(), String>
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

fn synth_source_main(args: &[String]) {
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

// ------------------------------------------------------------------ WAN link emulator

fn link_main(args: &[String]) {
    let listen = text(args, "--listen", "127.0.0.1:0");
    let upstream = arg(args, "--upstream").expect("--upstream H:P");
    let bytes_per_s = parse_rate(&text(args, "--rate", "200mbit"));
    let one_way = Duration::from_secs_f64(num(args, "--rtt-ms", 50.0) / 2000.0);
    let queue_limit = (bytes_per_s * one_way.as_secs_f64() * 2.0) as usize + (1 << 20);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        println!("link {listen} -> {upstream}: {bytes_per_s} B/s, {one_way:?} each way, queue {queue_limit} B");
        loop {
            let Ok((down, _)) = listener.accept().await else { return };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(&upstream).await else { return };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(link_direction(dr, uw, one_way, bytes_per_s, queue_limit));
                link_direction(ur, dw, one_way, bytes_per_s, queue_limit).await;
            });
        }
    });
}

/// One direction of the emulated link: what is read at t leaves the queue when the
/// link has serialised it (rate) and arrives `one_way` later.
async fn link_direction(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    one_way: Duration,
    bytes_per_s: f64,
    queue_limit: usize,
) {
    const CHUNK: usize = 16 << 10;
    let queued = Arc::new(tokio::sync::Semaphore::new(queue_limit));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Bytes, u32)>();
    let q = queued.clone();
    let reader = tokio::spawn(async move {
        let mut serialised_until = tokio::time::Instant::now();
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let permit = q.clone().acquire_many_owned(n as u32).await.unwrap();
                    permit.forget();
                    let now = tokio::time::Instant::now();
                    serialised_until = serialised_until.max(now) + Duration::from_secs_f64(n as f64 / bytes_per_s);
                    if tx.send((serialised_until + one_way, buf.freeze(), n as u32)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((at, chunk, n)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if w.write_all(&chunk).await.is_err() {
            break;
        }
        queued.add_permits(n as usize);
    }
    reader.abort();
}

// ------------------------------------------------------------------ relay

fn relay_main(args: &[String]) {
    let listen = text(args, "--listen", "127.0.0.1:0");
    let upstream = arg(args, "--upstream").expect("--upstream H:P");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let l = TcpListener::bind(&listen).await.unwrap();
        loop {
            let (mut a, _) = l.accept().await.unwrap();
            let up = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(&up).await else { return };
                let _ = a.set_nodelay(true);
                let _ = b.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 256 << 10, 256 << 10).await;
            });
        }
    });
}

/// Reads Fetch responses through `addr` as fast as they come (2 requests in flight),
/// discarding them; counts bytes into `counter` until `stop`.
async fn raw_fetch_reader(
    addr: String,
    topic: String,
    partitions: i32,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let Ok(sock) = TcpStream::connect(&addr).await else { return };
    let _ = sock.set_nodelay(true);
    let (mut r, mut w) = sock.into_split();
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(32 << 20)
        .with_topics(vec![FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic))).with_partitions(
            (0..partitions)
                .map(|i| {
                    FetchPartition::default().with_partition(i).with_fetch_offset(0).with_partition_max_bytes(4 << 20)
                })
                .collect(),
        )]);
    let frame = wire::encode_request(&req, 11, 1, "raw-reader").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(2);
    let stop2 = stop.clone();
    tokio::spawn(async move {
        while !stop2.load(Ordering::Relaxed) {
            if tx.send(()).await.is_err() || w.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut pending: usize = 0; // bytes left of the current frame
    let mut header = Vec::with_capacity(4);
    while !stop.load(Ordering::Relaxed) {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        let mut i = 0;
        while i < n {
            if pending == 0 {
                header.push(buf[i]);
                i += 1;
                if header.len() == 4 {
                    pending = i32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
                    header.clear();
                }
            } else {
                let take = pending.min(n - i);
                pending -= take;
                i += take;
                if pending == 0 {
                    let _ = rx.recv().await; // one response done: allow the next request
                }
            }
        }
    }
}

// ------------------------------------------------------------------ librdkafka mirror

fn rdmirror(args: &[String]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord};
    use rdkafka::{Offset, TopicPartitionList};
    let source = arg(args, "--source").expect("--source");
    let target = arg(args, "--target").expect("--target");
    let topic = text(args, "--topic", "bench.t");
    let partitions = num(args, "--partitions", 4.0) as i32;
    let codec = text(args, "--codec", "none");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &source)
        .set("group.id", "bench-rdmirror")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &target)
        .set("compression.type", &codec)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "262144")
        .set("log_level", "3")
        .create()
        .expect("producer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut rec = BaseRecord::<[u8], [u8]>::to(&topic).partition(m.partition());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(v) = m.payload() {
                    rec = rec.payload(v);
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    rec = rec.timestamp(ts);
                }
                if let Some(h) = m.headers() {
                    rec = rec.headers(h.detach());
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            rec = r;
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
                producer.poll(Duration::ZERO);
            }
            Some(Err(e)) => eprintln!("rdmirror: {e}"),
            None => {
                producer.poll(Duration::ZERO);
            }
        }
    }
}

// ------------------------------------------------------------------ load generator (real brokers)

struct ProduceSpec {
    bootstrap: String,
    topic: String,
    records: u64,
    rate: f64,
    size: usize,
    codec: String,
    partitions: i32,
    keys: String,
    key_space: u64,
    linger_ms: u32,
}

impl ProduceSpec {
    fn from_args(args: &[String]) -> Self {
        Self {
            bootstrap: arg(args, "--bootstrap").expect("--bootstrap"),
            topic: text(args, "--topic", "bench.t"),
            records: num(args, "--records", 100_000.0) as u64,
            rate: num(args, "--rate", 0.0),
            size: num(args, "--size", 1000.0) as usize,
            codec: text(args, "--codec", "lz4"),
            partitions: num(args, "--partitions", 4.0) as i32,
            keys: text(args, "--keys", "seq"),
            key_space: num(args, "--key-space", 10_000.0) as u64,
            linger_ms: num(args, "--linger-ms", 20.0) as u32,
        }
    }
}

struct ProduceOut {
    records: u64,
    secs: f64,
}

/// Produces records with rdkafka: the value starts with the send time (8-byte BE µs)
/// followed by semi-compressible padding. Keys: `seq` ("k<i>", partition i % P),
/// `random` (uniform over `key_space`, partitioned by key hash), `none`.
fn produce(p: &ProduceSpec, stop: Option<&AtomicBool>) -> ProduceOut {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &p.bootstrap).create().expect("admin");
    let spec = NewTopic::new(&p.topic, p.partitions, TopicReplication::Fixed(1));
    let _ = futures::executor::block_on(admin.create_topics([&spec], &AdminOptions::new()));
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &p.bootstrap)
        .set("compression.type", &p.codec)
        .set("enable.idempotence", "true")
        .set("linger.ms", p.linger_ms.to_string())
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .expect("producer");
    let padding = value_bytes(p.size.saturating_sub(8), 7);
    let start = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut value = Vec::with_capacity(p.size.max(8));
    let mut sent = 0u64;
    for i in 0..p.records {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        if p.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / p.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        value.clear();
        value.extend_from_slice(&now_us().to_be_bytes());
        value.extend_from_slice(&padding);
        let key = match p.keys.as_str() {
            "random" => {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                Some(format!("k{}", rng % p.key_space.max(1)))
            }
            "none" => None,
            _ => Some(format!("k{i}")),
        };
        let mut rec = BaseRecord::<str, [u8]>::to(&p.topic).payload(&value[..]);
        if let Some(k) = &key {
            rec = rec.key(k.as_str());
        }
        if p.keys != "random" {
            rec = rec.partition((i % p.partitions as u64) as i32);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        sent += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    ProduceOut { records: sent, secs: start.elapsed().as_secs_f64() }
}

/// Consumes `topic` from the end and records (now − send time in the value) in µs.
fn latency_consumer(
    bootstrap: String,
    topic: String,
    partitions: i32,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> Histogram<u64> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "bench-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::End).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    // let the consumer resolve its positions before data flows
    let _ = consumer.poll(Duration::from_millis(1000));
    ready.store(true, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            if let Some(v) = m.payload() {
                if v.len() >= 8 {
                    let sent = i64::from_be_bytes(v[..8].try_into().unwrap());
                    let _ = h.record(((now_us() - sent).max(1) as u64).min(h.high()));
                }
            }
        }
    }
    h
}

// ------------------------------------------------------------------ processes

/// A child process killed (and reaped) on drop.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name: name.to_owned() }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

/// utime + stime of a process in seconds, and its peak RSS (VmHWM) in bytes.
fn proc_stats(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // fields after ")": state(3) ... utime(14) stime(15) → indices 11, 12
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (t(11) + t(12)) as f64 / clk_tck()
        })
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, hwm)
}

fn clk_tck() -> f64 {
    static T: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// ------------------------------------------------------------------ orchestrator

struct Ctx {
    exe: PathBuf,
    proxy_bin: PathBuf,
    tansu: Option<PathBuf>,
    out: PathBuf,
    secs: f64,
    warmup: f64,
    reps: usize,
    partitions: i32,
    batch_records: i32,
    /// extra lines for the proxy's [tuning] (`--proxy-tuning "k = v; k2 = v2"`)
    proxy_tuning: String,
    /// extra lines for the proxy's [[flows]] entry (`--proxy-flow "k = v; k2 = v2"`)
    proxy_flow: String,
    /// extra environment for the proxy (`--proxy-env K=V,K2=V2`)
    proxy_env: Vec<(String, String)>,
    /// when set, the synthetic sink speaks TLS with the certificates in this directory
    /// (from `tls/make-certs.sh`) and the proxy's target cluster is `link = "remote"` + tls
    target_tls: Option<PathBuf>,
    /// when set (rate, RTT ms), the sink is behind a user-space WAN link (remote writes)
    sink_wan: Option<(String, f64)>,
    rt: tokio::runtime::Runtime,
    results: Vec<Value>,
    seq: usize,
}

impl Ctx {
    fn log(&mut self, name: &str) -> PathBuf {
        self.seq += 1;
        self.out.join("logs").join(format!("{:03}-{name}.log", self.seq))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Proxy,
    RdMirror,
    Relay,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Proxy => "mirrorproxy",
            Peer::RdMirror => "librdkafka-mirror",
            Peer::Relay => "tcp-relay",
        }
    }
}

fn proxy_config(
    dir: &Path,
    source: &str,
    target: &str,
    extra_tuning: &str,
    extra_flow: &str,
    target_tls: Option<&Path>,
) -> PathBuf {
    let path = dir.join(format!("mirror-{}.toml", free_port()));
    let tls = target_tls.map_or(String::new(), |d| {
        format!("link = \"remote\"\n\n[clusters.dst.tls]\nca = \"{}\"\n", d.join("ca.pem").display())
    });
    std::fs::write(
        &path,
        format!(
            "[clusters.src]\nbootstrap = \"{source}\"\n\n[clusters.dst]\nbootstrap = \"{target}\"\n{tls}\n[[flows]]\nsource = \"src\"\ntarget = \"dst\"\ntopics = \"bench\\\\..*\"\nstart = \"earliest\"\n{extra_flow}\n\n[tuning]\nsummary_interval_ms = 2000\nmetadata_refresh_ms = 5000\n{extra_tuning}\n"
        ),
    )
    .unwrap();
    path
}

fn run(args: &[String]) {
    let out = PathBuf::from(text(args, "--out", "target/bench"));
    std::fs::create_dir_all(out.join("logs")).unwrap();
    let modes = text(args, "--modes", "isolation,latency,wan,real");
    let mut ctx = Ctx {
        exe: std::env::current_exe().unwrap(),
        proxy_bin: PathBuf::from(text(args, "--proxy-bin", "target/release/mirrorproxy")),
        tansu: arg(args, "--tansu").map(PathBuf::from),
        out: out.clone(),
        secs: num(args, "--secs", 8.0),
        warmup: num(args, "--warmup", 2.0),
        reps: num(args, "--reps", 3.0) as usize,
        partitions: num(args, "--partitions", 4.0) as i32,
        batch_records: num(args, "--batch-records", 16.0) as i32,
        proxy_tuning: text(args, "--proxy-tuning", "").replace(';', "\n"),
        proxy_flow: text(args, "--proxy-flow", "").replace(';', "\n"),
        proxy_env: text(args, "--proxy-env", "")
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
            .collect(),
        target_tls: None,
        sink_wan: None,
        rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
        results: Vec::new(),
        seq: 0,
    };
    assert!(ctx.proxy_bin.exists(), "{} not found: cargo build --release first", ctx.proxy_bin.display());
    let sizes: Vec<usize> = text(args, "--sizes", "100,1000,10000").split(',').map(|s| s.parse().unwrap()).collect();
    let peers_arg = text(args, "--peers", "mirrorproxy,librdkafka-mirror,tcp-relay");
    let peers: Vec<Peer> =
        [Peer::Proxy, Peer::RdMirror, Peer::Relay].into_iter().filter(|p| peers_arg.contains(p.name())).collect();
    let started = Instant::now();
    if modes.contains("isolation") {
        let mut configs: Vec<(usize, &str)> = sizes.iter().map(|s| (*s, "none")).collect();
        configs.push((1000, "lz4"));
        for (size, codec) in configs {
            for &peer in &peers {
                let mut reps = Vec::new();
                for rep in 0..ctx.reps {
                    let r = isolation_run(&mut ctx, peer, size, codec, None, rep);
                    eprintln!("  {r}");
                    reps.push(r);
                }
                ctx.results.push(summarize("isolation", peer, size, codec, &reps));
            }
        }
    }
    if modes.contains("tls") {
        // The same isolation run with the target link plaintext and TLS, interleaved
        // rep by rep so both see the same machine; the proxy's CPU per GB includes its
        // side of TLS (encryption), the sink's decryption runs in this process.
        let dir = out.join("certs");
        let made = Command::new("bash").arg("tls/make-certs.sh").arg(&dir).stdout(Stdio::null()).status();
        assert!(matches!(made, Ok(s) if s.success()), "tls/make-certs.sh {} failed (needs openssl)", dir.display());
        // the proxy resolves relative paths against its config file's directory
        let dir = dir.canonicalize().unwrap();
        for size in &sizes {
            let (mut plain, mut tls) = (Vec::new(), Vec::new());
            for rep in 0..ctx.reps {
                ctx.target_tls = None;
                let r = isolation_run(&mut ctx, Peer::Proxy, *size, "none", None, rep);
                eprintln!("  plain {r}");
                plain.push(r);
                ctx.target_tls = Some(dir.clone());
                let mut r = isolation_run(&mut ctx, Peer::Proxy, *size, "none", None, rep);
                r["mode"] = json!("tls-target");
                eprintln!("  tls   {r}");
                tls.push(r);
            }
            ctx.target_tls = None;
            ctx.results.push(summarize("plain-target", Peer::Proxy, *size, "none", &plain));
            ctx.results.push(summarize("tls-target", Peer::Proxy, *size, "none", &tls));
        }
    }
    if modes.contains("latency") {
        let rate = num(args, "--latency-rate", 10_000.0);
        for &peer in peers.iter().filter(|p| **p != Peer::Relay) {
            let r = isolation_run(&mut ctx, peer, 1000, "none", Some(LatencyRun { rate }), 0);
            eprintln!("  {r}");
            ctx.results.push(summarize("latency", peer, 1000, "none", &[r]));
        }
    }
    if modes.contains("wan") {
        let link = text(args, "--wan-rate", "200mbit");
        let delay = num(args, "--wan-delay-ms", 50.0);
        // netem in a network namespace where the kernel has it, else the user-space link.
        let wan = if text(args, "--wan-link", "auto") == "userspace" {
            WanLink::UserSpace { rate: link.clone(), rtt_ms: delay }
        } else {
            match Netns::create(&link, delay) {
                Ok(ns) => WanLink::Netem(ns),
                Err(e) => {
                    eprintln!("netem unavailable ({e}); emulating the link in user space (bench link)");
                    WanLink::UserSpace { rate: link.clone(), rtt_ms: delay }
                }
            }
        };
        for &peer in &peers {
            let r = wan_run(&mut ctx, &wan, peer, 1000, "none");
            eprintln!("  {r}");
            ctx.results.push(summarize("wan", peer, 1000, "none", &[r]));
        }
    }
    if modes.contains("remote-write") {
        // Not the recommended deployment: the mirror next to the source, writing over the
        // WAN. Kafka allows one batch per partition per Produce request and at most 5
        // requests in flight per partition, so the source's batch size bounds this.
        let rate = text(args, "--wan-rate", "200mbit");
        let delay = num(args, "--wan-delay-ms", 50.0);
        ctx.sink_wan = Some((rate.clone(), delay));
        let rebatch = text(args, "--rebatch", "rebatch_max_bytes = 1048576; rebatch_compression = \"zstd\"");
        let mut runs: Vec<(Peer, String)> =
            peers.iter().filter(|p| **p != Peer::Relay).map(|p| (*p, String::new())).collect();
        if peers.contains(&Peer::Proxy) {
            runs.insert(1, (Peer::Proxy, rebatch.replace(';', "\n")));
        }
        for (peer, flow_extra) in runs {
            let saved_flow = std::mem::replace(&mut ctx.proxy_flow, flow_extra.clone());
            let saved = (ctx.secs, ctx.warmup);
            ctx.secs = ctx.secs.max(10.0);
            ctx.warmup = ctx.warmup.max(3.0);
            let src_addr = format!("127.0.0.1:{}", free_port());
            let log = ctx.log("synth-source");
            let _source = Proc::spawn(
                "synth-source",
                Command::new(&ctx.exe).args(["synth-source", "--listen", &src_addr, "--topic", "bench.t"]).args([
                    "--partitions",
                    &ctx.partitions.to_string(),
                    "--size",
                    "1000",
                    "--batch-records",
                    &ctx.batch_records.to_string(),
                ]),
                &log,
            );
            assert!(wait_port(&src_addr, Duration::from_secs(10)), "synth-source did not start");
            let mode = if flow_extra.is_empty() { "remote-write" } else { "remote-write, rebatch" };
            let mut v = measure(&mut ctx, peer, &src_addr, &src_addr, 1000, "none", false, 0, mode);
            (ctx.secs, ctx.warmup) = saved;
            ctx.proxy_flow = saved_flow;
            if !flow_extra.is_empty() {
                v["rebatch"] = json!(flow_extra);
            }
            let link_bytes_per_s = parse_rate(&rate);
            let mbps = v["mb_per_s"].as_f64().unwrap_or(0.0);
            v["link_mb_per_s"] = json!(link_bytes_per_s / 1e6);
            v["link_utilization"] = json!(mbps * 1e6 / link_bytes_per_s);
            v["link"] = json!(format!("{rate}, {delay} ms RTT (user-space link emulator), target side"));
            eprintln!("  {v}");
            ctx.results.push(summarize(mode, peer, 1000, "none", &[v]));
        }
        ctx.sink_wan = None;
    }
    if modes.contains("real") {
        match ctx.tansu.clone() {
            Some(t) => {
                for &peer in peers.iter().filter(|p| **p != Peer::Relay) {
                    let r = real_run(&mut ctx, &t, peer, args);
                    eprintln!("  {r}");
                    ctx.results.push(r);
                }
            }
            None => eprintln!("real-broker mode skipped: pass --tansu PATH"),
        }
    }
    let doc = json!({
        "machine": machine_info(),
        "settings": {"proxy_tuning": ctx.proxy_tuning, "proxy_env": format!("{:?}", ctx.proxy_env), "secs": ctx.secs, "warmup": ctx.warmup, "reps": ctx.reps, "partitions": ctx.partitions, "batch_records": ctx.batch_records},
        "elapsed_s": started.elapsed().as_secs_f64(),
        "results": ctx.results,
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    print_table(&ctx.results);
    if let Err(e) = plots(&out, &ctx.results) {
        eprintln!("plots: {e}");
    }
    println!("\nresults: {}  (plots: {}/*.png, logs: {}/logs/)", json_path.display(), out.display(), out.display());
}

fn machine_info() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
}

struct LatencyRun {
    rate: f64,
}

/// One measurement: a synthetic source (child process), a synthetic sink (in-process),
/// the peer between them (child process); counters sampled after the warm-up and
/// `secs` later.
fn isolation_run(ctx: &mut Ctx, peer: Peer, size: usize, codec: &str, lat: Option<LatencyRun>, rep: usize) -> Value {
    let topic = "bench.t";
    let src_port = free_port();
    let src_addr = format!("127.0.0.1:{src_port}");
    let rate = lat.as_ref().map_or(0.0, |l| l.rate);
    let log = ctx.log("synth-source");
    let _source = Proc::spawn(
        "synth-source",
        Command::new(&ctx.exe).args(["synth-source", "--listen", &src_addr, "--topic", topic]).args([
            "--partitions",
            &ctx.partitions.to_string(),
            "--size",
            &size.to_string(),
            "--codec",
            codec,
            "--batch-records",
            &ctx.batch_records.to_string(),
            "--rate",
            &rate.to_string(),
        ]),
        &log,
    );
    assert!(wait_port(&src_addr, Duration::from_secs(10)), "synth-source did not start");
    measure(ctx, peer, &src_addr, &src_addr, size, codec, lat.is_some(), rep, "isolation")
}

/// Starts the sink and the peer, samples, tears down. `src_connect` is where peers
/// connect (equal to `src_addr` except across the WAN namespace).
fn measure(
    ctx: &mut Ctx,
    peer: Peer,
    src_addr: &str,
    _src_connect: &str,
    size: usize,
    codec: &str,
    latency: bool,
    rep: usize,
    mode: &str,
) -> Value {
    let topic = "bench.t";
    let sink_port = free_port();
    let sink_listen = format!("127.0.0.1:{sink_port}");
    // With `sink_wan` the sink is reached through a WAN link emulator (remote writes):
    // it advertises the link's address, which relays to where it listens.
    let (sink_addr, advertised_port, _sink_link) = match ctx.sink_wan.clone() {
        Some((rate, rtt_ms)) => {
            let link_port = free_port();
            let link_addr = format!("127.0.0.1:{link_port}");
            let log = ctx.log("link");
            let p = Proc::spawn(
                "link",
                Command::new(&ctx.exe)
                    .args(["link", "--listen", &link_addr, "--upstream", &sink_listen, "--rate", &rate])
                    .args(["--rtt-ms", &rtt_ms.to_string()]),
                &log,
            );
            assert!(wait_port(&link_addr, Duration::from_secs(10)), "bench link did not start");
            (link_addr, link_port, Some(p))
        }
        None => (sink_listen.clone(), sink_port, None),
    };
    let mut sink = Synth::new(
        ("127.0.0.1".into(), i32::from(advertised_port)),
        topic,
        ctx.partitions,
        10,
        Compression::None,
        1,
        0.0,
    );
    sink.serves_data = false;
    let sink = Arc::new(sink);
    if latency {
        *sink.sink.latency.lock().unwrap() = Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap());
    }
    let listener = ctx.rt.block_on(TcpListener::bind(&sink_listen)).unwrap();
    let acceptor = ctx.target_tls.as_deref().map(tls_acceptor);
    let sink_task = ctx.rt.spawn(serve_maybe_tls(listener, sink.clone(), acceptor));
    let relay_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log = ctx.log(peer.name());
    let mut proc = match peer {
        Peer::Proxy => {
            let cfg = proxy_config(
                &ctx.out.join("logs"),
                src_addr,
                &sink_addr,
                &ctx.proxy_tuning,
                &ctx.proxy_flow,
                ctx.target_tls.as_deref(),
            );
            Proc::spawn(
                "mirrorproxy",
                Command::new(&ctx.proxy_bin)
                    .args(["run", "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", "info")
                    .envs(ctx.proxy_env.clone()),
                &log,
            )
        }
        Peer::RdMirror => Proc::spawn(
            "rdmirror",
            Command::new(&ctx.exe)
                .args(["rdmirror", "--source", src_addr, "--target", &sink_addr, "--topic", topic])
                .args(["--partitions", &ctx.partitions.to_string(), "--codec", codec]),
            &log,
        ),
        Peer::Relay => {
            let relay_addr = format!("127.0.0.1:{}", free_port());
            let p = Proc::spawn(
                "relay",
                Command::new(&ctx.exe).args(["relay", "--listen", &relay_addr, "--upstream", src_addr]),
                &log,
            );
            assert!(wait_port(&relay_addr, Duration::from_secs(10)), "relay did not start");
            ctx.rt.spawn(raw_fetch_reader(relay_addr, topic.into(), ctx.partitions, relay_bytes.clone(), stop.clone()));
            p
        }
    };
    let counters = |s: &Synth| -> (u64, u64) {
        if peer == Peer::Relay {
            (relay_bytes.load(Ordering::Relaxed), 0)
        } else {
            (s.sink.bytes.load(Ordering::Relaxed), s.sink.records.load(Ordering::Relaxed))
        }
    };
    // Warm-up: wait for data to flow, then `warmup` seconds more.
    let t_wait = Instant::now();
    while counters(&sink).0 == 0 && t_wait.elapsed() < Duration::from_secs(30) && proc.alive() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs_f64(ctx.warmup));
    if latency {
        if let Some(h) = sink.sink.latency.lock().unwrap().as_mut() {
            h.reset();
        }
    }
    let (b0, r0) = counters(&sink);
    let (c0, _) = proc_stats(proc.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(ctx.secs));
    let (b1, r1) = counters(&sink);
    let (c1, hwm) = proc_stats(proc.pid());
    let dt = t0.elapsed().as_secs_f64();
    let alive = proc.alive();
    stop.store(true, Ordering::Relaxed);
    drop(proc);
    sink_task.abort();
    let bytes = (b1 - b0) as f64;
    let cpu = c1 - c0;
    // the relay moves Fetch responses: count records as bytes / (bytes per record of the batch)
    let records = if peer == Peer::Relay {
        let per = encode_batch(ctx.batch_records, size, codec_of(codec), 0).len() as f64 / f64::from(ctx.batch_records);
        bytes / per
    } else {
        (r1 - r0) as f64
    };
    let mut v = json!({
        "mode": mode, "peer": peer.name(), "size": size, "codec": codec, "rep": rep,
        "secs": dt, "mb_per_s": bytes / dt / 1e6, "records_per_s": records / dt,
        "cpu_s": cpu, "cpu_s_per_gb": if bytes > 0.0 { cpu / (bytes / 1e9) } else { f64::NAN },
        "cpu_util": cpu / dt, "peak_rss_mb": hwm as f64 / 1e6, "alive": alive,
    });
    if latency {
        if let Some(h) = sink.sink.latency.lock().unwrap().as_ref() {
            v["latency_us"] = hist_json(h);
        }
    }
    v
}

fn hist_json(h: &Histogram<u64>) -> Value {
    let cdf: Vec<(f64, f64)> = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0]
        .iter()
        .map(|q| (*q, h.value_at_quantile(q / 100.0) as f64))
        .collect();
    json!({
        "count": h.len(), "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max(), "mean": h.mean(),
        "cdf": cdf,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn summarize(mode: &str, peer: Peer, size: usize, codec: &str, reps: &[Value]) -> Value {
    let m = |k: &str| median(reps.iter().filter_map(|r| r[k].as_f64()).collect());
    let mut v = json!({
        "mode": mode, "peer": peer.name(), "size": size, "codec": codec, "reps": reps.len(),
        "mb_per_s": m("mb_per_s"), "records_per_s": m("records_per_s"), "cpu_s_per_gb": m("cpu_s_per_gb"),
        "cpu_util": m("cpu_util"), "peak_rss_mb": reps.iter().filter_map(|r| r["peak_rss_mb"].as_f64()).fold(0.0, f64::max),
        "runs": reps,
    });
    if reps.iter().any(|r| r["alive"] == false) {
        v["peer_exited"] = json!(true);
    }
    if let Some(l) = reps.first().and_then(|r| r.get("latency_us")) {
        v["latency_us"] = l.clone();
    }
    if let Some(l) = reps.first().and_then(|r| r.get("link_utilization")) {
        v["link_utilization"] = l.clone();
        v["link_mb_per_s"] = reps[0]["link_mb_per_s"].clone();
    }
    v
}

// ------------------------------------------------------------------ WAN (network namespace + netem)

const NS: &str = "mpbench";
const NS_HOST_IF: &str = "mpb0";
const NS_PEER_IF: &str = "mpb1";
const NS_HOST_IP: &str = "10.213.7.1";
const NS_PEER_IP: &str = "10.213.7.2";

/// A network namespace holding the source side, reached over a veth pair with netem
/// delay (half the RTT each way) and a rate cap on the source → proxy direction.
/// Removed on drop.
struct Netns {
    rate: String,
    delay_ms: f64,
}

fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    fn create(rate: &str, rtt_ms: f64) -> Result<Netns, String> {
        Self::cleanup();
        let half = rtt_ms / 2.0;
        let steps = [
            format!("ip netns add {NS}"),
            format!("ip link add {NS_HOST_IF} type veth peer name {NS_PEER_IF}"),
            format!("ip link set {NS_PEER_IF} netns {NS}"),
            format!("ip addr add {NS_HOST_IP}/30 dev {NS_HOST_IF}"),
            format!("ip link set {NS_HOST_IF} up"),
            format!("ip netns exec {NS} ip addr add {NS_PEER_IP}/30 dev {NS_PEER_IF}"),
            format!("ip netns exec {NS} ip link set {NS_PEER_IF} up"),
            format!("ip netns exec {NS} ip link set lo up"),
            // source → proxy: delay + rate cap; proxy → source: delay
            format!(
                "ip netns exec {NS} tc qdisc add dev {NS_PEER_IF} root netem delay {half}ms rate {rate} limit 100000"
            ),
            format!("tc qdisc add dev {NS_HOST_IF} root netem delay {half}ms limit 100000"),
        ];
        let ns = Netns { rate: rate.to_owned(), delay_ms: rtt_ms };
        for s in &steps {
            sh(s)?;
        }
        Ok(ns)
    }

    fn cleanup() {
        let _ = sh(&format!("ip link del {NS_HOST_IF} 2>/dev/null"));
        let _ = sh(&format!("ip netns del {NS} 2>/dev/null"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Self::cleanup();
    }
}

fn parse_rate(r: &str) -> f64 {
    let (n, mult) = if let Some(n) = r.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = r.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = r.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        (r.trim_end_matches("bit"), 1.0)
    };
    n.parse::<f64>().unwrap_or(0.0) * mult / 8.0
}

/// How the WAN is made: netem in a network namespace, or the user-space `bench link`.
enum WanLink {
    Netem(Netns),
    UserSpace { rate: String, rtt_ms: f64 },
}

fn wan_run(ctx: &mut Ctx, wan: &WanLink, peer: Peer, size: usize, codec: &str) -> Value {
    let topic = "bench.t";
    let log = ctx.log("synth-source-wan");
    let (mut cmd, src_addr, listen, link_addr) = match wan {
        WanLink::Netem(_) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", NS]).arg(&ctx.exe);
            let a = format!("{NS_PEER_IP}:{}", 19092);
            (c, a.clone(), a, None)
        }
        WanLink::UserSpace { .. } => {
            let listen = format!("127.0.0.1:{}", free_port());
            let link = format!("127.0.0.1:{}", free_port());
            (Command::new(&ctx.exe), link.clone(), listen, Some(link))
        }
    };
    let _source = Proc::spawn(
        "synth-source",
        cmd.args(["synth-source", "--listen", &listen, "--advertise", &src_addr, "--topic", topic]).args([
            "--partitions",
            &ctx.partitions.to_string(),
            "--size",
            &size.to_string(),
            "--codec",
            codec,
            "--batch-records",
            &ctx.batch_records.to_string(),
        ]),
        &log,
    );
    assert!(wait_port(&listen, Duration::from_secs(10)), "synth-source for the WAN run did not start");
    let _link = match (wan, &link_addr) {
        (WanLink::UserSpace { rate, rtt_ms }, Some(link)) => {
            let log = ctx.log("link");
            let p = Proc::spawn(
                "link",
                Command::new(&ctx.exe)
                    .args(["link", "--listen", link, "--upstream", &listen, "--rate", rate])
                    .args(["--rtt-ms", &rtt_ms.to_string()]),
                &log,
            );
            assert!(wait_port(link, Duration::from_secs(10)), "bench link did not start");
            Some(p)
        }
        _ => None,
    };
    let saved = (ctx.secs, ctx.warmup);
    ctx.secs = ctx.secs.max(10.0);
    ctx.warmup = ctx.warmup.max(3.0);
    let mut v = measure(ctx, peer, &src_addr, &src_addr, size, codec, false, 0, "wan");
    (ctx.secs, ctx.warmup) = saved;
    // the link carries fetch responses; the sink counts batches: near-equal byte counts
    let mbps = v["mb_per_s"].as_f64().unwrap_or(0.0);
    let (rate, rtt, how) = match wan {
        WanLink::Netem(ns) => (ns.rate.clone(), ns.delay_ms, "netem"),
        WanLink::UserSpace { rate, rtt_ms } => (rate.clone(), *rtt_ms, "user-space link emulator"),
    };
    let link_bytes_per_s = parse_rate(&rate);
    v["link_mb_per_s"] = json!(link_bytes_per_s / 1e6);
    v["link_utilization"] = json!(mbps * 1e6 / link_bytes_per_s);
    v["link"] = json!(format!("{rate}, {rtt} ms RTT ({how})"));
    v
}

// ------------------------------------------------------------------ real brokers (tansu)

fn start_tansu(ctx: &mut Ctx, tansu: &Path) -> (Proc, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = ctx.log("tansu");
    let p = Proc::spawn(
        "tansu",
        Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", "warn"),
        &log,
    );
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_port(&addr, Duration::from_secs(30)), "tansu did not start");
    (p, addr)
}

fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Option<Vec<i64>> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("log_level", "2").create().ok()?;
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).ok().map(|(_, h)| h)).collect()
}

/// Real brokers: pre-load the source, start the peer, time the backlog drain (target
/// high watermarks equal to the source's), then a latency phase at a moderate rate
/// with consumers on both clusters (the difference is what the mirror adds).
fn real_run(ctx: &mut Ctx, tansu: &Path, peer: Peer, args: &[String]) -> Value {
    let records = num(args, "--real-records", 100_000.0) as u64;
    let size = num(args, "--real-size", 1000.0) as usize;
    let codec = text(args, "--real-codec", "lz4");
    let lat_rate = num(args, "--real-latency-rate", 1000.0);
    let topic = "bench.t".to_owned();
    let parts = ctx.partitions;
    let (_src, src) = start_tansu(ctx, tansu);
    let (_dst, dst) = start_tansu(ctx, tansu);
    // Pre-create the target topic (the proxy would; librdkafka's mirror would not).
    let _ = produce(
        &ProduceSpec {
            bootstrap: dst.clone(),
            topic: topic.clone(),
            records: 0,
            rate: 0.0,
            size,
            codec: codec.clone(),
            partitions: parts,
            keys: "seq".into(),
            key_space: 1,
            linger_ms: 5,
        },
        None,
    );
    let load = produce(
        &ProduceSpec {
            bootstrap: src.clone(),
            topic: topic.clone(),
            records,
            rate: 0.0,
            size,
            codec: codec.clone(),
            partitions: parts,
            keys: text(args, "--keys", "seq"),
            key_space: 10_000,
            linger_ms: 20,
        },
        None,
    );
    eprintln!("  real: loaded {} records of {size} B ({codec}) into tansu in {:.1}s", load.records, load.secs);
    let src_hwm = watermarks(&src, &topic, parts).unwrap_or_default();
    let log = ctx.log(peer.name());
    let t0 = Instant::now();
    let mut proc = match peer {
        Peer::Proxy => {
            let cfg = proxy_config(&ctx.out.join("logs"), &src, &dst, &ctx.proxy_tuning, &ctx.proxy_flow, None);
            Proc::spawn(
                "mirrorproxy",
                Command::new(&ctx.proxy_bin)
                    .args(["run", "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", "info")
                    .envs(ctx.proxy_env.clone()),
                &log,
            )
        }
        _ => Proc::spawn(
            "rdmirror",
            Command::new(&ctx.exe).args([
                "rdmirror",
                "--source",
                &src,
                "--target",
                &dst,
                "--topic",
                &topic,
                "--partitions",
                &parts.to_string(),
                "--codec",
                &codec,
            ]),
            &log,
        ),
    };
    let timeout = Duration::from_secs_f64(num(args, "--real-timeout", 120.0));
    let mut drained = false;
    while t0.elapsed() < timeout && proc.alive() {
        if let Some(h) = watermarks(&dst, &topic, parts) {
            if h == src_hwm {
                drained = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_s = t0.elapsed().as_secs_f64();
    let (cpu_drain, _) = proc_stats(proc.pid());
    let bytes = (records * size as u64) as f64; // payload bytes (values)
                                                // Latency phase.
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for b in [src.clone(), dst.clone()] {
        let (t, s, r) = (topic.clone(), stop.clone(), Arc::new(AtomicBool::new(false)));
        let r2 = r.clone();
        consumers.push((std::thread::spawn(move || latency_consumer(b, t, parts, s, r2)), r));
    }
    while !consumers.iter().all(|(_, r)| r.load(Ordering::Relaxed)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lat_records = (lat_rate * ctx.secs) as u64;
    let _ = produce(
        &ProduceSpec {
            bootstrap: src.clone(),
            topic: topic.clone(),
            records: lat_records,
            rate: lat_rate,
            size,
            codec: codec.clone(),
            partitions: parts,
            keys: "seq".into(),
            key_space: 1,
            linger_ms: 0,
        },
        None,
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let hs: Vec<Histogram<u64>> = consumers.into_iter().map(|(j, _)| j.join().unwrap()).collect();
    let (_, hwm) = proc_stats(proc.pid());
    let alive = proc.alive();
    drop(proc);
    json!({
        "mode": "real", "peer": peer.name(), "size": size, "codec": codec, "records": records, "drained": drained,
        "drain_s": drain_s, "mb_per_s": bytes / drain_s / 1e6, "records_per_s": records as f64 / drain_s,
        "cpu_s_per_gb": cpu_drain / (bytes / 1e9), "peak_rss_mb": hwm as f64 / 1e6, "alive": alive,
        "latency_rate": lat_rate, "latency_us_source": hist_json(&hs[0]), "latency_us": hist_json(&hs[1]),
    })
}

// ------------------------------------------------------------------ output

fn print_table(results: &[Value]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{:<12} {:<18} {:>6} {:<5} {:>9} {:>11} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "mode", "peer", "size", "codec", "MB/s", "records/s", "CPU-s/GB", "CPU %", "RSS MB", "p50 ms", "p99 ms"
    );
    for r in results {
        if let Some(e) = r.get("error") {
            let _ = writeln!(out, "{:<10} error: {e}", r["mode"].as_str().unwrap_or(""));
            continue;
        }
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let lat = |q: &str| {
            r.get("latency_us").and_then(|l| l[q].as_f64()).map_or("-".to_string(), |v| format!("{:.2}", v / 1000.0))
        };
        let mut line = format!(
            "{:<12} {:<18} {:>6} {:<5} {:>9.1} {:>11.0} {:>9.3} {:>8.0} {:>8.1} {:>9} {:>9}",
            r["mode"].as_str().unwrap_or(""),
            r["peer"].as_str().unwrap_or(""),
            r["size"],
            r["codec"].as_str().unwrap_or(""),
            f("mb_per_s"),
            f("records_per_s"),
            f("cpu_s_per_gb"),
            f("cpu_util") * 100.0,
            f("peak_rss_mb"),
            lat("p50"),
            lat("p99")
        );
        if let Some(u) = r.get("link_utilization").and_then(Value::as_f64) {
            line += &format!("  link {:.0}% of {:.1} MB/s", u * 100.0, f("link_mb_per_s"));
        }
        if let Some(s) = r.get("latency_us_source") {
            line += &format!(
                "  (source-only p50 {:.2} / p99 {:.2} ms)",
                s["p50"].as_f64().unwrap_or(0.0) / 1000.0,
                s["p99"].as_f64().unwrap_or(0.0) / 1000.0
            );
        }
        if r.get("peer_exited").and_then(Value::as_bool) == Some(true) {
            line += "  PEER EXITED during a run (see logs/)";
        }
        if r.get("drained").and_then(Value::as_bool) == Some(false) {
            line += "  NOT DRAINED";
        }
        let _ = writeln!(out, "{line}");
    }
    // Ratios for the targets (isolation, 1 KB uncompressed).
    let find = |mode: &str, peer: &str, size: u64, codec: &str| {
        results
            .iter()
            .find(|r| r["mode"] == mode && r["peer"] == peer && r["size"].as_u64() == Some(size) && r["codec"] == codec)
    };
    if let (Some(p), Some(rd), Some(rel)) = (
        find("isolation", "mirrorproxy", 1000, "none"),
        find("isolation", "librdkafka-mirror", 1000, "none"),
        find("isolation", "tcp-relay", 1000, "none"),
    ) {
        let g = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(out, "\ntargets (isolation, 1 KB, uncompressed, medians):");
        let _ = writeln!(
            out,
            "  records/s vs librdkafka mirror: {:.1}x (target >= 5x)",
            g(p, "records_per_s") / g(rd, "records_per_s")
        );
        let _ = writeln!(
            out,
            "  bytes/s vs raw TCP relay:       {:.0}% (target >= 50%)",
            100.0 * g(p, "mb_per_s") / g(rel, "mb_per_s")
        );
        let _ = writeln!(out, "  CPU-s per GB:                   {:.3} (target <= 0.25)", g(p, "cpu_s_per_gb"));
        let _ = writeln!(
            out,
            "  peak RSS:                       {:.1} MB (target <= 64 MB + buffer_bytes 268 MB)",
            g(p, "peak_rss_mb")
        );
    }
    let sizes: std::collections::BTreeSet<u64> =
        results.iter().filter(|r| r["mode"] == "tls-target").filter_map(|r| r["size"].as_u64()).collect();
    for size in sizes {
        if let (Some(p), Some(t)) =
            (find("plain-target", "mirrorproxy", size, "none"), find("tls-target", "mirrorproxy", size, "none"))
        {
            let g = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "\nTLS on the target link ({size} B records, medians): throughput {:.0}% of plaintext \
                 ({:.1} vs {:.1} MB/s); proxy CPU-s per GB {:.3} vs {:.3} (+{:.3})",
                100.0 * g(t, "mb_per_s") / g(p, "mb_per_s"),
                g(t, "mb_per_s"),
                g(p, "mb_per_s"),
                g(t, "cpu_s_per_gb"),
                g(p, "cpu_s_per_gb"),
                g(t, "cpu_s_per_gb") - g(p, "cpu_s_per_gb")
            );
        }
    }
}

fn plots(out: &Path, results: &[Value]) -> Result<(), String> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "cannot load font")?;
    let colors = [RED, BLUE, RGBColor(0, 150, 0), MAGENTA];
    let peers = ["mirrorproxy", "librdkafka-mirror", "tcp-relay"];
    // Throughput vs record size.
    let series: Vec<(&str, Vec<(f64, f64)>)> = peers
        .iter()
        .map(|p| {
            let mut pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r["mode"] == "isolation" && r["peer"] == *p && r["codec"] == "none")
                .filter_map(|r| Some((r["size"].as_f64()?, r["mb_per_s"].as_f64()?)))
                .collect();
            pts.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            (*p, pts)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if !series.is_empty() {
        let path = out.join("throughput_vs_size.png");
        let root = BitMapBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let xmin = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(f64::MAX, f64::min);
        let xmax = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.0, f64::max);
        let ymax = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(0.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption("Isolation mode: throughput vs record size (uncompressed)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), 0.0..ymax.max(1.0))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("record value size (bytes, log)")
            .y_desc("MB/s through the process")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, c.filled()))).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    // Latency CDFs.
    let cdfs: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .filter_map(|r| {
            let l = r.get("latency_us")?;
            let pts = l["cdf"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p[1].as_f64()? / 1000.0, p[0].as_f64()? / 100.0)))
                .collect();
            Some((format!("{} {}", r["mode"].as_str()?, r["peer"].as_str()?), pts))
        })
        .collect();
    if !cdfs.is_empty() {
        let path = out.join("latency_cdf.png");
        let root = BitMapBackend::new(&path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let xmax = cdfs.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.0, f64::max).max(1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption("End-to-end replication latency (CDF)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d((0.05..xmax * 1.2).log_scale(), 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log)")
            .y_desc("fraction of records")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in cdfs.iter().enumerate() {
            let c = colors[i % colors.len()];
            let pts: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (x.max(0.05), *y)).collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(3)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[allow(dead_code)]
fn _unused(_: &mut dyn Buf) {}
