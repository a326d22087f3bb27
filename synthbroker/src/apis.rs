//! The requests a synthetic broker answers, Fetch aside (`fetch.rs`, `faults.rs`):
//! decoded and encoded with kafka-protocol through `mirrorproxy::wire`, as a broker
//! would. One node (id 1) leads every partition; topics are the data topic and those
//! CreateTopics made.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use kafka_protocol::messages::{
    api_versions_response::ApiVersion,
    create_partitions_response::CreatePartitionsTopicResult,
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateAclsRequest, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, DescribeAclsRequest, DescribeConfigsRequest, FetchRequest,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, ProducerId, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, StrBytes};
use mirrorproxy::wire::{encode_response, WireError};

use crate::batches::scan_batches;
use crate::source::now_us;
use crate::SynthBroker;

/// Kafka error codes it answers with.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_PARTITIONS: i16 = 37;

/// The versions it offers. Fetch stops at v11, the last non-flexible version, because
/// the data answer is encoded by hand (`fetch.rs`); with a [`crate::Fault`] it goes to
/// v12 (see there).
const VERSIONS: [(ApiKey, i16, i16); 12] = [
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 11),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
];

fn topic_name(n: &str) -> TopicName {
    TopicName(StrBytes::from_string(n.to_owned()))
}

impl SynthBroker {
    fn versions(&self) -> impl Iterator<Item = (ApiKey, i16, i16)> + '_ {
        VERSIONS.into_iter().map(|(k, min, max)| match k {
            ApiKey::Fetch if self.fault.is_some() => (k, min, 12),
            _ => (k, min, max),
        })
    }

    /// Partitions of `name` if it exists.
    pub(crate) fn partitions_of(&self, name: &str) -> Option<i32> {
        if name == self.topic {
            Some(self.partitions())
        } else {
            self.topics.lock().unwrap().get(name).copied()
        }
    }

    /// Answers one request frame (length prefix removed); None: no answer (acks=0);
    /// Err: the connection ends (with what went wrong).
    pub(crate) async fn handle(&self, mut body: Bytes) -> Result<Option<Bytes>, String> {
        let header: RequestHeader = decode_request_header_from_buffer(&mut body).map_err(|e| e.to_string())?;
        let key = ApiKey::try_from(header.request_api_key).map_err(|()| "unknown api key".to_string())?;
        let v = header.request_api_version;
        let corr = header.correlation_id;
        if let Some(log) = &self.log {
            log.lock().unwrap().push(format!("{key:?} v{v}"));
        }
        let e = |e: WireError| e.to_string();
        if key == ApiKey::ApiVersions {
            let keys = self
                .versions()
                .map(|(k, min, max)| {
                    ApiVersion::default().with_api_key(k as i16).with_min_version(min).with_max_version(max)
                })
                .collect();
            // KIP-511: a version it does not know is answered in v0 with UNSUPPORTED_VERSION
            let (err, ver) = if (0..=3).contains(&v) { (0, v) } else { (UNSUPPORTED_VERSION, 0) };
            let resp = ApiVersionsResponse::default().with_error_code(err).with_api_keys(keys);
            return Ok(Some(encode_response::<ApiVersionsRequest>(&resp, ver, corr).map_err(e)?));
        }
        if !self.versions().any(|(k, min, max)| k == key && (min..=max).contains(&v)) {
            return Err(format!("{key:?} v{v} is not supported by the synthetic broker"));
        }
        let dec = |e: anyhow::Error| format!("{key:?} v{v}: {e}");
        Ok(Some(match key {
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<MetadataRequest>(&self.metadata(req), v, corr).map_err(e)?
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<ListOffsetsRequest>(&self.list_offsets(&req), v, corr).map_err(e)?
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut body, v).map_err(dec)?;
                if req.topics.iter().any(|t| t.topic.0.as_str() == self.topic) {
                    self.fetches.fetch_add(1, Ordering::Relaxed);
                }
                match self.fault {
                    Some(fault) => self.fault_answer(fault, &req, v, corr).map_err(e)?,
                    None => self.fetch(&req, v, corr).await,
                }
            }
            ApiKey::DescribeConfigs => {
                let req = DescribeConfigsRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<DescribeConfigsRequest>(&self.describe_configs(&req), v, corr).map_err(e)?
            }
            ApiKey::IncrementalAlterConfigs => {
                let req = IncrementalAlterConfigsRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<IncrementalAlterConfigsRequest>(&self.alter_configs(&req), v, corr).map_err(e)?
            }
            ApiKey::DescribeAcls => {
                let req = DescribeAclsRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<DescribeAclsRequest>(&self.describe_acls(&req), v, corr).map_err(e)?
            }
            ApiKey::CreateAcls => {
                let req = CreateAclsRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<CreateAclsRequest>(&self.create_acls(&req), v, corr).map_err(e)?
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<CreateTopicsRequest>(&self.create_topics(&req), v, corr).map_err(e)?
            }
            ApiKey::CreatePartitions => {
                let req = CreatePartitionsRequest::decode(&mut body, v).map_err(dec)?;
                encode_response::<CreatePartitionsRequest>(&self.create_partitions(&req), v, corr).map_err(e)?
            }
            ApiKey::InitProducerId => {
                let _ = InitProducerIdRequest::decode(&mut body, v).map_err(dec)?;
                let resp = InitProducerIdResponse::default().with_producer_id(ProducerId(4242)).with_producer_epoch(0);
                encode_response::<InitProducerIdRequest>(&resp, v, corr).map_err(e)?
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut body, v).map_err(dec)?;
                let resp = self.produce(&req);
                if req.acks == 0 {
                    return Ok(None);
                }
                encode_response::<ProduceRequest>(&resp, v, corr).map_err(e)?
            }
            other => return Err(format!("{other:?} is not implemented by the synthetic broker")),
        }))
    }

    /// Named topics (all when none are named) with their partitions, or
    /// UNKNOWN_TOPIC_OR_PARTITION.
    fn metadata(&self, req: MetadataRequest) -> MetadataResponse {
        let names: Vec<String> = match req.topics {
            Some(ts) => ts.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect(),
            None => std::iter::once(self.topic.clone()).chain(self.topics.lock().unwrap().keys().cloned()).collect(),
        };
        let topics = names
            .into_iter()
            .map(|n| {
                let topic = MetadataResponseTopic::default().with_name(Some(topic_name(&n)));
                match self.partitions_of(&n) {
                    Some(count) => topic.with_partitions(
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
                    ),
                    None => topic.with_error_code(UNKNOWN_TOPIC_OR_PARTITION),
                }
            })
            .collect();
        MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_string(self.advertise.0.clone()))
                .with_port(self.advertise.1)])
            .with_cluster_id(Some(StrBytes::from_static_str("synthetic")))
            .with_controller_id(BrokerId(1))
            .with_topics(topics)
    }

    /// The end (-1) of a rated source's partition is what it has made; every other
    /// offset asked for is 0.
    fn list_offsets(&self, req: &ListOffsetsRequest) -> ListOffsetsResponse {
        let topics = req
            .topics
            .iter()
            .map(|t| {
                let data = t.name.0.as_str() == self.topic;
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let avail = if data { self.available(p.partition_index) } else { 0 };
                        let offset = if p.timestamp == -1 && avail != i64::MAX {
                            avail.saturating_mul(self.batch_records())
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
                ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(parts)
            })
            .collect();
        ListOffsetsResponse::default().with_topics(topics)
    }

    /// A topic grows to a larger count; a smaller or equal one is INVALID_PARTITIONS.
    fn create_partitions(&self, req: &CreatePartitionsRequest) -> CreatePartitionsResponse {
        let results = req
            .topics
            .iter()
            .map(|t| {
                let name = t.name.0.as_str();
                self.grown.lock().unwrap().push((name.to_owned(), t.count));
                let code = match self.partitions_of(name) {
                    None => UNKNOWN_TOPIC_OR_PARTITION,
                    Some(now) if t.count <= now => INVALID_PARTITIONS,
                    Some(_) if name == self.topic => {
                        self.set_partitions(t.count);
                        0
                    }
                    Some(_) => {
                        self.topics.lock().unwrap().insert(name.to_owned(), t.count);
                        0
                    }
                };
                CreatePartitionsTopicResult::default().with_name(t.name.clone()).with_error_code(code)
            })
            .collect();
        CreatePartitionsResponse::default().with_results(results)
    }

    /// Acknowledges with increasing base offsets per partition; counts what reached the
    /// data topic and, with a latency histogram, how long its records took.
    fn produce(&self, req: &ProduceRequest) -> ProduceResponse {
        let now = now_us();
        let mut lat = Vec::new();
        let mut responses = Vec::new();
        for t in &req.topic_data {
            let mut parts = Vec::new();
            for p in &t.partition_data {
                let (b, n) = match &p.records {
                    Some(r) => scan_batches(r, |us| lat.push((now - us).max(0).unsigned_abs())),
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
                    *o = o.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
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
            responses.push(TopicProduceResponse::default().with_name(t.name.clone()).with_partition_responses(parts));
        }
        if !lat.is_empty() {
            if let Some(h) = self.sink.latency.lock().unwrap().as_mut() {
                for l in lat {
                    let _ = h.record(l.min(h.high()));
                }
            }
        }
        ProduceResponse::default().with_responses(responses)
    }
}
