//! Topic configuration calls: DescribeConfigs with where each value comes from,
//! IncrementalAlterConfigs (KIP-339) and CreateTopics with configs, including the
//! `validate_only` form that tells a new topic's effective configs on this cluster
//! (KIP-525: CreateTopics v5+ answers with the topic's configs).
//!
//! What to copy is decided elsewhere ([`crate::topicsync::configs`], sans-I/O); this
//! file only speaks the protocol and names the cluster in every error.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    describe_configs_request::DescribeConfigsResource,
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
    CreateTopicsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{Cluster, ClusterError};

/// Resource type TOPIC of the config APIs.
const TOPIC: i8 = 2;

/// Where a config value comes from (`ConfigSource` of DescribeConfigs v1+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Unknown,
    /// Set on the topic itself.
    Topic,
    /// Broker-level (dynamic per broker, dynamic cluster default, static server.properties,
    /// logger): the cluster operator's policy, not the topic's.
    Broker,
    /// Kafka's built-in default. tansu 0.6.0 reports configs that were set on the topic
    /// with this source too (see `tests/tansu_probe.rs`).
    Default,
}

impl ConfigSource {
    #[must_use]
    pub fn from_code(code: i8) -> Self {
        match code {
            1 => ConfigSource::Topic,
            2 | 3 | 4 | 6 => ConfigSource::Broker,
            5 => ConfigSource::Default,
            _ => ConfigSource::Unknown,
        }
    }
}

/// One config of a topic as a broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// None for sensitive configs and configs without a value.
    pub value: Option<String>,
    pub read_only: bool,
    pub sensitive: bool,
    pub source: ConfigSource,
}

impl ConfigEntry {
    /// A topic-level entry with a value (for tests and synthetic answers).
    #[must_use]
    pub fn topic(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            read_only: false,
            sensitive: false,
            source: ConfigSource::Topic,
        }
    }
}

/// A config the broker refused, with its own words.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub error: ResponseError,
    pub message: String,
}

impl Cluster {
    /// Every config of topic `name` with its source. `Ok(None)`: the broker does not
    /// implement DescribeConfigs.
    pub async fn describe_topic_config(&self, name: &str) -> Result<Option<Vec<ConfigEntry>>, ClusterError> {
        let conn = self.any_broker().await?;
        if conn.version_for::<DescribeConfigsRequest>().is_err() {
            return Ok(None);
        }
        let req = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(StrBytes::from_string(name.to_owned()))
            .with_configuration_keys(None)]);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        let mut out = Vec::new();
        for r in resp.results {
            if let Some(e) =
                self.kafka(format!("reading the config of topic '{name}'"), r.error_code, r.error_message.as_ref())
            {
                return Err(e);
            }
            out.extend(r.configs.into_iter().map(|c| ConfigEntry {
                name: c.name.as_str().to_owned(),
                value: c.value.map(|v| v.as_str().to_owned()),
                read_only: c.read_only,
                sensitive: c.is_sensitive,
                source: ConfigSource::from_code(c.config_source),
            }));
        }
        Ok(Some(out))
    }

    /// Sets configs of topic `name` (IncrementalAlterConfigs SET; nothing else on the
    /// topic changes). `Ok(Err(refusal))`: the broker refused the change (one refused
    /// key refuses the whole request: the resource is altered atomically).
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: &[(String, String)],
    ) -> Result<Result<(), Refusal>, ClusterError> {
        let conn = self.any_broker().await?;
        if conn.version_for::<IncrementalAlterConfigsRequest>().is_err() {
            return Err(ClusterError::Other {
                cluster: self.alias.clone(),
                what: "the broker does not implement IncrementalAlterConfigs (KIP-339): topic configs cannot be synced"
                    .into(),
            });
        }
        let req = IncrementalAlterConfigsRequest::default().with_validate_only(false).with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(TOPIC)
                .with_resource_name(StrBytes::from_string(name.to_owned()))
                .with_configs(
                    set.iter()
                        .map(|(k, v)| {
                            AlterableConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_config_operation(0) // SET
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                ),
        ]);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        for r in &resp.responses {
            if let Some(error) = ResponseError::try_from_code(r.error_code) {
                if error.is_retriable() {
                    let what = format!("altering the config of topic '{name}'");
                    if let Some(e) = self.kafka(what, r.error_code, r.error_message.as_ref()) {
                        return Err(e);
                    }
                }
                let message = r.error_message.as_ref().map_or_else(|| error.to_string(), |m| m.as_str().to_owned());
                return Ok(Err(Refusal { error, message }));
            }
        }
        Ok(Ok(()))
    }

    /// Creates a topic with configs. An already existing topic is not an error. With
    /// `validate_only`, nothing is created and the answer holds the configs the topic
    /// would have (empty when the broker does not say: CreateTopics before v5, or a
    /// broker that leaves them out).
    pub async fn create_topic_with_configs(
        &self,
        name: &str,
        partitions: i32,
        replication: i16,
        configs: &[(String, String)],
        validate_only: bool,
    ) -> Result<Vec<ConfigEntry>, ClusterError> {
        let conn = self.any_broker().await?;
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                .with_num_partitions(partitions)
                .with_replication_factor(replication)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                )])
            .with_timeout_ms(30_000)
            .with_validate_only(validate_only);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        let mut out = Vec::new();
        for t in resp.topics {
            if t.error_code == ResponseError::TopicAlreadyExists.code() {
                continue;
            }
            if let Some(e) = self.kafka(format!("creating topic '{name}'"), t.error_code, t.error_message.as_ref()) {
                return Err(e);
            }
            out.extend(t.configs.unwrap_or_default().into_iter().map(|c| ConfigEntry {
                name: c.name.as_str().to_owned(),
                value: c.value.map(|v| v.as_str().to_owned()),
                read_only: c.read_only,
                sensitive: c.is_sensitive,
                source: ConfigSource::from_code(c.config_source),
            }));
        }
        Ok(out)
    }
}
