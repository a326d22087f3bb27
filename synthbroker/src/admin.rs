//! The admin APIs a synthetic broker answers as Kafka does, for what tansu 0.6.0 cannot
//! be tested with (`tests/tansu_probe.rs` pins why):
//!
//! * **topic configs**: DescribeConfigs of what was set on a topic (source
//!   `DYNAMIC_TOPIC_CONFIG`, not tansu's `is_default` marking), IncrementalAlterConfigs
//!   SET/DELETE, CreateTopics with configs and with `validate_only` (which, unlike
//!   tansu, creates nothing). A broker can be told to refuse a config value
//!   ([`crate::Config::refuse_config`]) with INVALID_CONFIG and a message of its own,
//!   as Kafka refuses a value above a broker limit.
//! * **ACLs**: DescribeAcls and CreateAcls (KIP-140 filters, exact and ANY) against an
//!   ACL store, or, without one ([`crate::Config::authorizer`] not called), the answer
//!   of a Kafka broker without `authorizer.class.name`: SECURITY_DISABLED. tansu's
//!   CreateAcls answer cannot be decoded by kafka-protocol or librdkafka.

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    create_acls_response::AclCreationResult,
    create_topics_response::CreatableTopicResult,
    describe_acls_response::{AclDescription, DescribeAclsResource},
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
    incremental_alter_configs_response::AlterConfigsResourceResponse,
    CreateAclsRequest, CreateAclsResponse, CreateTopicsRequest, CreateTopicsResponse, DescribeAclsRequest,
    DescribeAclsResponse, DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::SynthBroker;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const SECURITY_DISABLED: i16 = 54;

/// Resource type TOPIC of the config APIs.
const TOPIC: i8 = 2;
/// `ANY` of the ACL filters (resource type, pattern type, operation, permission).
const ANY: i8 = 1;

/// One ACL binding as the broker keeps it (KIP-140 resource pattern + entry); codes as
/// on the wire (resource 2 topic, 3 group; pattern 3 literal, 4 prefixed; operation
/// 2 ALL, 3 READ, 4 WRITE; permission 2 DENY, 3 ALLOW).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Acl {
    pub resource_type: i8,
    pub name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

impl Acl {
    /// A literal binding for `principal` from any host.
    #[must_use]
    pub fn literal(resource_type: i8, name: &str, principal: &str, operation: i8, permission: i8) -> Self {
        Self {
            resource_type,
            name: name.to_owned(),
            pattern_type: 3,
            principal: principal.to_owned(),
            host: "*".to_owned(),
            operation,
            permission,
        }
    }

    fn matches(&self, f: &DescribeAclsRequest) -> bool {
        let code = |filter: i8, v: i8| filter == ANY || filter == v;
        let text = |filter: &Option<StrBytes>, v: &str| filter.as_ref().is_none_or(|f| f.as_str() == v);
        code(f.resource_type_filter, self.resource_type)
            && text(&f.resource_name_filter, &self.name)
            && code(f.pattern_type_filter, self.pattern_type)
            && text(&f.principal_filter, &self.principal)
            && text(&f.host_filter, &self.host)
            && code(f.operation, self.operation)
            && code(f.permission_type, self.permission)
    }
}

/// What the broker refuses: (key, value) → its message.
pub(crate) type Refusals = BTreeMap<(String, String), String>;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl SynthBroker {
    /// The message a config (key, value) is refused with, if it is.
    fn refusal(&self, key: &str, value: Option<&str>) -> Option<String> {
        self.refuse.get(&(key.to_owned(), value.unwrap_or_default().to_owned())).cloned()
    }

    pub(crate) fn describe_configs(&self, req: &DescribeConfigsRequest) -> DescribeConfigsResponse {
        let configs = self.configs.lock().unwrap();
        let results = req
            .resources
            .iter()
            .map(|r| {
                let result = DescribeConfigsResult::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone());
                let name = r.resource_name.as_str();
                if r.resource_type != TOPIC {
                    return result; // brokers: nothing set
                }
                if self.partitions_of(name).is_none() {
                    return result
                        .with_error_code(UNKNOWN_TOPIC_OR_PARTITION)
                        .with_error_message(Some(text(&format!("topic '{name}' does not exist"))));
                }
                let set = configs.get(name).into_iter().flatten().filter(|(k, _)| {
                    r.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|x| x.as_str() == k.as_str()))
                });
                result.with_configs(
                    set.map(|(k, v)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(text(k))
                            .with_value(Some(text(v)))
                            .with_config_source(1) // DYNAMIC_TOPIC_CONFIG
                    })
                    .collect(),
                )
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    pub(crate) fn alter_configs(&self, req: &IncrementalAlterConfigsRequest) -> IncrementalAlterConfigsResponse {
        let responses = req
            .resources
            .iter()
            .map(|r| {
                let name = r.resource_name.as_str();
                let answer = |code: i16, msg: Option<String>| {
                    AlterConfigsResourceResponse::default()
                        .with_resource_type(r.resource_type)
                        .with_resource_name(r.resource_name.clone())
                        .with_error_code(code)
                        .with_error_message(msg.map(|m| text(&m)))
                };
                if r.resource_type != TOPIC {
                    return answer(INVALID_REQUEST, Some("only topic configs can be altered here".into()));
                }
                if self.partitions_of(name).is_none() {
                    return answer(UNKNOWN_TOPIC_OR_PARTITION, Some(format!("topic '{name}' does not exist")));
                }
                // Kafka validates the whole resource first: one bad config, none applied.
                for c in &r.configs {
                    if c.config_operation > 1 {
                        return answer(INVALID_REQUEST, Some("only SET and DELETE are implemented".into()));
                    }
                    if c.config_operation == 0 {
                        if let Some(m) = self.refusal(c.name.as_str(), c.value.as_ref().map(StrBytes::as_str)) {
                            return answer(INVALID_CONFIG, Some(m));
                        }
                    }
                }
                if !req.validate_only {
                    let mut configs = self.configs.lock().unwrap();
                    let topic = configs.entry(name.to_owned()).or_default();
                    for c in &r.configs {
                        match (c.config_operation, &c.value) {
                            (0, Some(v)) => {
                                topic.insert(c.name.to_string(), v.to_string());
                            }
                            _ => {
                                topic.remove(c.name.as_str());
                            }
                        }
                    }
                }
                answer(0, None)
            })
            .collect();
        IncrementalAlterConfigsResponse::default().with_responses(responses)
    }

    /// New topics are made with their configs unless one is refused (INVALID_CONFIG,
    /// nothing made); one that exists is TOPIC_ALREADY_EXISTS; `validate_only` makes
    /// nothing and, like a broker that does not list them, tells no configs.
    pub(crate) fn create_topics(&self, req: &CreateTopicsRequest) -> CreateTopicsResponse {
        let topics = req
            .topics
            .iter()
            .map(|t| {
                let name = t.name.0.as_str();
                let result = CreatableTopicResult::default()
                    .with_name(t.name.clone())
                    .with_num_partitions(t.num_partitions)
                    .with_replication_factor(t.replication_factor);
                if self.partitions_of(name).is_some() {
                    return result.with_error_code(TOPIC_ALREADY_EXISTS);
                }
                let refused = t.configs.iter().find_map(|c| {
                    self.refusal(c.name.as_str(), c.value.as_ref().map(StrBytes::as_str)).map(|m| (c.name.clone(), m))
                });
                if let Some((key, message)) = refused {
                    return result
                        .with_error_code(INVALID_CONFIG)
                        .with_error_message(Some(text(&format!("{key}: {message}"))));
                }
                if req.validate_only {
                    return result;
                }
                let mut topics = self.topics.lock().unwrap();
                if topics.contains_key(name) {
                    return result.with_error_code(TOPIC_ALREADY_EXISTS);
                }
                topics.insert(name.to_owned(), t.num_partitions.max(1));
                let set = t.configs.iter().filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())));
                self.configs.lock().unwrap().insert(name.to_owned(), set.collect());
                result
            })
            .collect();
        CreateTopicsResponse::default().with_topics(topics)
    }

    pub(crate) fn describe_acls(&self, req: &DescribeAclsRequest) -> DescribeAclsResponse {
        let Some(store) = &self.acls else {
            return DescribeAclsResponse::default()
                .with_error_code(SECURITY_DISABLED)
                .with_error_message(Some(StrBytes::from_static_str("No Authorizer is configured on the broker")));
        };
        let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
        for a in store.lock().unwrap().iter().filter(|a| a.matches(req)) {
            by_resource.entry((a.resource_type, a.name.clone(), a.pattern_type)).or_default().push(
                AclDescription::default()
                    .with_principal(text(&a.principal))
                    .with_host(text(&a.host))
                    .with_operation(a.operation)
                    .with_permission_type(a.permission),
            );
        }
        let resources = by_resource
            .into_iter()
            .map(|((resource_type, name, pattern_type), acls)| {
                DescribeAclsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(text(&name))
                    .with_pattern_type(pattern_type)
                    .with_acls(acls)
            })
            .collect();
        DescribeAclsResponse::default().with_resources(resources)
    }

    pub(crate) fn create_acls(&self, req: &CreateAclsRequest) -> CreateAclsResponse {
        let results = req
            .creations
            .iter()
            .map(|c| {
                let Some(store) = &self.acls else {
                    return AclCreationResult::default().with_error_code(SECURITY_DISABLED).with_error_message(Some(
                        StrBytes::from_static_str("No Authorizer is configured on the broker"),
                    ));
                };
                let acl = Acl {
                    resource_type: c.resource_type,
                    name: c.resource_name.to_string(),
                    pattern_type: c.resource_pattern_type,
                    principal: c.principal.to_string(),
                    host: c.host.to_string(),
                    operation: c.operation,
                    permission: c.permission_type,
                };
                if [c.resource_type, c.resource_pattern_type, c.operation, c.permission_type].contains(&ANY) {
                    return AclCreationResult::default()
                        .with_error_code(INVALID_REQUEST)
                        .with_error_message(Some(StrBytes::from_static_str("a binding cannot be created with ANY")));
                }
                let mut store = store.lock().unwrap();
                if !store.contains(&acl) {
                    store.push(acl);
                }
                AclCreationResult::default()
            })
            .collect();
        CreateAclsResponse::default().with_results(results)
    }
}
