//! One Kafka cluster as the mirror sees it: bootstrap, metadata, one pipelined
//! connection per broker, and the administrative calls the mirror needs (create topics,
//! read topic configs, list offsets, obtain an idempotent producer id).
//!
//! Connections are opened lazily and replaced when poisoned (see [`crate::net`]).
//! Every error names the cluster alias from the configuration, so an operator with
//! several clusters knows which one failed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::CreatableTopic,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
    BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, InitProducerIdRequest,
    ListOffsetsRequest, MetadataRequest, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Mutex;

use crate::net::{Connection, NetError, Security};

pub mod acls;
pub mod configs;
mod data;
pub use data::FetchedPartition;

/// A topic and a partition of it: Kafka's own unit of order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    #[must_use]
    pub fn new(topic: &str, partition: i32) -> Self {
        Self { topic: Arc::from(topic), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Errors of the cluster layer; each names the cluster.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster '{cluster}': {source}")]
    Net { cluster: String, source: NetError },
    #[error("cluster '{cluster}': no bootstrap broker answered ({tried})")]
    NoBroker { cluster: String, tried: String },
    #[error("cluster '{cluster}': broker {broker} is not in the metadata")]
    UnknownBroker { cluster: String, broker: i32 },
    #[error("cluster '{cluster}': {what}")]
    Other { cluster: String, what: String },
    #[error("cluster '{cluster}': {what} failed: {error}{message}")]
    Kafka { cluster: String, what: String, error: ResponseError, message: String },
}

/// Kafka's own name of an error (`Errors.java`: `NOT_LEADER_OR_FOLLOWER`), from
/// kafka-protocol's CamelCase variant name; metrics label errors with it.
#[must_use]
pub fn kafka_error_name(e: ResponseError) -> String {
    let camel = format!("{e:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl ClusterError {
    /// The Kafka error this is, by name (see [`NetError::kafka_name`]).
    #[must_use]
    pub fn kafka_name(&self) -> String {
        match self {
            ClusterError::Net { source, .. } => source.kafka_name().to_owned(),
            ClusterError::NoBroker { .. } => "NETWORK_EXCEPTION".to_owned(),
            ClusterError::UnknownBroker { .. } => "LEADER_NOT_AVAILABLE".to_owned(),
            ClusterError::Other { .. } => "UNKNOWN_SERVER_ERROR".to_owned(),
            ClusterError::Kafka { error, .. } => kafka_error_name(*error),
        }
    }

    /// Whether trying again later may succeed.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            ClusterError::Net { source, .. } => source.is_retriable(),
            ClusterError::NoBroker { .. } | ClusterError::UnknownBroker { .. } | ClusterError::Other { .. } => true,
            ClusterError::Kafka { error, .. } => error.is_retriable(),
        }
    }
}

/// Settings for connections of one cluster.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub client_id: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// TLS (one rustls config per cluster, reloadable) and SASL credentials.
    pub security: Security,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        Self {
            client_id: "mirrorproxy".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            security: Security::default(),
        }
    }
}

/// What Metadata said about one partition.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: usize,
    pub error: Option<ResponseError>,
}

/// What Metadata said about one topic.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub error: Option<ResponseError>,
    pub is_internal: bool,
    pub partitions: Vec<PartitionInfo>,
}

/// A snapshot of cluster metadata.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub brokers: HashMap<i32, String>,
    pub topics: HashMap<String, TopicInfo>,
}

/// A client for one cluster.
pub struct Cluster {
    alias: String,
    bootstrap: Vec<String>,
    settings: ConnectSettings,
    brokers: std::sync::Mutex<HashMap<i32, String>>,
    conns: Mutex<HashMap<String, Arc<Connection>>>,
    /// The connections of `conns`, readable without waiting: `conns` is held while a
    /// connection is being opened, which can take the connect timeout.
    seen: std::sync::Mutex<HashMap<String, std::sync::Weak<Connection>>>,
}

/// One broker connection's state, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionState {
    pub addr: String,
    /// Open and usable (not broken, not retiring).
    pub connected: bool,
    pub in_flight: usize,
}

impl Cluster {
    #[must_use]
    pub fn new(alias: &str, bootstrap: Vec<String>, settings: ConnectSettings) -> Self {
        Self {
            alias: alias.to_owned(),
            bootstrap,
            settings,
            brokers: std::sync::Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            seen: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Per broker address this cluster has connected to: whether the connection is up
    /// and how many requests wait on it; sorted by address.
    #[must_use]
    pub fn connection_states(&self) -> Vec<ConnectionState> {
        let mut out: Vec<ConnectionState> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(addr, weak)| match weak.upgrade() {
                Some(c) => {
                    ConnectionState { addr: addr.clone(), connected: !c.is_poisoned(), in_flight: c.in_flight() }
                }
                None => ConnectionState { addr: addr.clone(), connected: false, in_flight: 0 },
            })
            .collect();
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        out
    }

    #[must_use]
    pub fn alias(&self) -> &str {
        &self.alias
    }

    fn net(&self, source: NetError) -> ClusterError {
        ClusterError::Net { cluster: self.alias.clone(), source }
    }

    fn kafka(&self, what: impl Into<String>, code: i16, message: Option<&StrBytes>) -> Option<ClusterError> {
        let error = ResponseError::try_from_code(code)?;
        Some(ClusterError::Kafka {
            cluster: self.alias.clone(),
            what: what.into(),
            error,
            message: message.map(|m| format!(" ({})", m.as_str())).unwrap_or_default(),
        })
    }

    /// A live connection to `addr`, opening one if needed.
    pub async fn connection_to(&self, addr: &str) -> Result<Arc<Connection>, ClusterError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(addr) {
            if !c.is_poisoned() {
                return Ok(c.clone());
            }
        }
        let s = &self.settings;
        let conn = Arc::new(
            Connection::connect_secure(addr, &s.client_id, s.connect_timeout, s.request_timeout, &s.security)
                .await
                .map_err(|e| self.net(e))?,
        );
        conns.insert(addr.to_owned(), conn.clone());
        self.seen.lock().unwrap().insert(addr.to_owned(), Arc::downgrade(&conn));
        Ok(conn)
    }

    /// A live connection to broker `id` (as named by the last metadata).
    pub async fn broker(&self, id: i32) -> Result<Arc<Connection>, ClusterError> {
        let addr = self.brokers.lock().unwrap().get(&id).cloned();
        match addr {
            Some(addr) => self.connection_to(&addr).await,
            None => Err(ClusterError::UnknownBroker { cluster: self.alias.clone(), broker: id }),
        }
    }

    /// A connection to any broker: known brokers first, then the bootstrap list.
    pub async fn any_broker(&self) -> Result<Arc<Connection>, ClusterError> {
        let mut candidates: Vec<String> = self.brokers.lock().unwrap().values().cloned().collect();
        candidates.sort();
        for b in &self.bootstrap {
            if !candidates.contains(b) {
                candidates.push(b.clone());
            }
        }
        let mut errors = Vec::new();
        for addr in &candidates {
            match self.connection_to(addr).await {
                Ok(c) => return Ok(c),
                Err(ClusterError::Net { source, .. }) if !source.is_retriable() => {
                    return Err(self.net(source));
                }
                Err(e) => errors.push(match e {
                    ClusterError::Net { source, .. } => source.to_string(),
                    other => other.to_string(),
                }),
            }
        }
        Err(ClusterError::NoBroker { cluster: self.alias.clone(), tried: errors.join("; ") })
    }

    /// Fetches metadata for `topics` (all topics when `None`) and remembers the brokers.
    pub async fn metadata(&self, topics: Option<&[String]>) -> Result<ClusterMetadata, ClusterError> {
        let conn = self.any_broker().await?;
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        let brokers: HashMap<i32, String> =
            resp.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
        self.brokers.lock().unwrap().clone_from(&brokers);
        let mut out = ClusterMetadata {
            cluster_id: resp.cluster_id.as_ref().map(|c| c.as_str().to_owned()),
            brokers,
            topics: HashMap::new(),
        };
        for t in resp.topics {
            let Some(name) = t.name else { continue };
            let mut partitions: Vec<(i32, PartitionInfo)> = t
                .partitions
                .iter()
                .map(|p| {
                    (
                        p.partition_index,
                        PartitionInfo {
                            leader: p.leader_id.0,
                            leader_epoch: p.leader_epoch,
                            replicas: p.replica_nodes.len(),
                            error: ResponseError::try_from_code(p.error_code),
                        },
                    )
                })
                .collect();
            partitions.sort_by_key(|(i, _)| *i);
            out.topics.insert(
                name.0.as_str().to_owned(),
                TopicInfo {
                    error: ResponseError::try_from_code(t.error_code),
                    is_internal: t.is_internal,
                    partitions: partitions.into_iter().map(|(_, p)| p).collect(),
                },
            );
        }
        Ok(out)
    }

    /// Creates a topic. An already existing topic is not an error.
    pub async fn create_topic(&self, name: &str, partitions: i32, replication: i16) -> Result<(), ClusterError> {
        let conn = self.any_broker().await?;
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                .with_num_partitions(partitions)
                .with_replication_factor(replication)])
            .with_timeout_ms(30_000);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        for t in &resp.topics {
            if t.error_code == ResponseError::TopicAlreadyExists.code() {
                continue;
            }
            if let Some(e) = self.kafka(format!("creating topic '{name}'"), t.error_code, t.error_message.as_ref()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes a topic. A topic that is not there is not an error.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClusterError> {
        let conn = self.any_broker().await?;
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_string(name.to_owned()))])
            .with_timeout_ms(30_000);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        for t in &resp.responses {
            if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
                continue;
            }
            if let Some(e) = self.kafka(format!("deleting topic '{name}'"), t.error_code, t.error_message.as_ref()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Grows a topic to `count` partitions (CreatePartitions).
    pub async fn create_partitions(&self, name: &str, count: i32) -> Result<(), ClusterError> {
        let conn = self.any_broker().await?;
        let req = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                .with_count(count)
                .with_assignments(None)])
            .with_timeout_ms(30_000);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        for r in &resp.results {
            if let Some(e) = self.kafka(
                format!("growing topic '{name}' to {count} partitions"),
                r.error_code,
                r.error_message.as_ref(),
            ) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reads a topic's configuration (name → value; see
    /// [`Cluster::describe_topic_config`] for where each value comes from). Brokers that
    /// do not implement DescribeConfigs give an empty map: the caller then uses Kafka's
    /// defaults.
    pub async fn topic_configs(&self, name: &str) -> Result<HashMap<String, String>, ClusterError> {
        let entries = self.describe_topic_config(name).await?.unwrap_or_default();
        Ok(entries.into_iter().filter_map(|c| Some((c.name, c.value?))).collect())
    }

    /// Obtains a producer id and epoch for an idempotent (not transactional) producer.
    pub async fn init_producer_id(&self) -> Result<(i64, i16), ClusterError> {
        let conn = self.any_broker().await?;
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        if let Some(e) = self.kafka("InitProducerId", resp.error_code, None) {
            return Err(e);
        }
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// ListOffsets on `leader` for partitions of one topic: returns (partition, offset or error).
    pub async fn list_offsets(
        &self,
        leader: i32,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<(i32, Result<i64, ResponseError>)>, ClusterError> {
        let conn = self.broker(leader).await?;
        let req =
            ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_isolation_level(0).with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    ),
            ]);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                out.push((
                    p.partition_index,
                    match ResponseError::try_from_code(p.error_code) {
                        None => Ok(p.offset),
                        Some(e) => Err(e),
                    },
                ));
            }
        }
        Ok(out)
    }
}
