//! ACL calls: DescribeAcls and CreateAcls (KIP-140 filters). Never DeleteAcls: the
//! mirror only adds bindings (see [`crate::topicsync::acls`]).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{create_acls_request::AclCreation, CreateAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use super::{Cluster, ClusterError};

/// `ResourceType` codes.
pub const RESOURCE_ANY: i8 = 1;
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_GROUP: i8 = 3;
/// `PatternType` codes.
pub const PATTERN_ANY: i8 = 1;
pub const PATTERN_LITERAL: i8 = 3;
/// `AclOperation` codes.
pub const OP_ANY: i8 = 1;
pub const OP_ALL: i8 = 2;
pub const OP_READ: i8 = 3;
pub const OP_WRITE: i8 = 4;
/// `AclPermissionType` codes.
pub const PERMISSION_ANY: i8 = 1;
pub const DENY: i8 = 2;
pub const ALLOW: i8 = 3;

/// One ACL binding: a resource pattern and an access control entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclBinding {
    pub resource_type: i8,
    pub name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

impl std::fmt::Display for AclBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = match self.resource_type {
            RESOURCE_TOPIC => "topic",
            RESOURCE_GROUP => "group",
            _ => "resource",
        };
        // `AclOperation` codes 2..=14 (Kafka's `AclOperation.java`).
        const OPS: [&str; 13] = [
            "ALL",
            "READ",
            "WRITE",
            "CREATE",
            "DELETE",
            "ALTER",
            "DESCRIBE",
            "CLUSTER_ACTION",
            "DESCRIBE_CONFIGS",
            "ALTER_CONFIGS",
            "IDEMPOTENT_WRITE",
            "CREATE_TOKENS",
            "DESCRIBE_TOKENS",
        ];
        let op = usize::try_from(self.operation - OP_ALL)
            .ok()
            .and_then(|i| OPS.get(i))
            .map_or_else(|| format!("operation {}", self.operation), |s| (*s).to_owned());
        let perm = if self.permission == DENY {
            "DENY"
        } else if self.permission == ALLOW {
            "ALLOW"
        } else {
            "?"
        };
        write!(f, "{perm} {op} on {resource} '{}' for {} from {}", self.name, self.principal, self.host)
    }
}

/// What a cluster says about ACLs.
#[derive(Debug, Clone)]
pub enum Acls {
    Bindings(Vec<AclBinding>),
    /// No authorizer configured (SECURITY_DISABLED), or ACL APIs not implemented.
    Unavailable(String),
}

impl Cluster {
    /// Every ACL binding of the cluster.
    pub async fn describe_acls(&self) -> Result<Acls, ClusterError> {
        let conn = self.any_broker().await?;
        if conn.version_for::<DescribeAclsRequest>().is_err() {
            return Ok(Acls::Unavailable("the broker does not implement DescribeAcls".into()));
        }
        let req = DescribeAclsRequest::default()
            .with_resource_type_filter(RESOURCE_ANY)
            .with_resource_name_filter(None)
            .with_pattern_type_filter(PATTERN_ANY)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(OP_ANY)
            .with_permission_type(PERMISSION_ANY);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        if resp.error_code == ResponseError::SecurityDisabled.code() {
            return Ok(Acls::Unavailable(
                resp.error_message.map_or_else(|| "no authorizer is configured".into(), |m| m.as_str().to_owned()),
            ));
        }
        if let Some(e) = self.kafka("DescribeAcls", resp.error_code, resp.error_message.as_ref()) {
            return Err(e);
        }
        let mut out = Vec::new();
        for r in resp.resources {
            for a in r.acls {
                out.push(AclBinding {
                    resource_type: r.resource_type,
                    name: r.resource_name.as_str().to_owned(),
                    pattern_type: r.pattern_type,
                    principal: a.principal.as_str().to_owned(),
                    host: a.host.as_str().to_owned(),
                    operation: a.operation,
                    permission: a.permission_type,
                });
            }
        }
        Ok(Acls::Bindings(out))
    }

    /// Creates bindings; per binding the broker's refusal, if any.
    pub async fn create_acls(&self, bindings: &[AclBinding]) -> Result<Vec<Option<String>>, ClusterError> {
        let conn = self.any_broker().await?;
        let req = CreateAclsRequest::default().with_creations(
            bindings
                .iter()
                .map(|b| {
                    AclCreation::default()
                        .with_resource_type(b.resource_type)
                        .with_resource_name(StrBytes::from_string(b.name.clone()))
                        .with_resource_pattern_type(b.pattern_type)
                        .with_principal(StrBytes::from_string(b.principal.clone()))
                        .with_host(StrBytes::from_string(b.host.clone()))
                        .with_operation(b.operation)
                        .with_permission_type(b.permission)
                })
                .collect(),
        );
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        Ok(resp
            .results
            .iter()
            .map(|r| {
                ResponseError::try_from_code(r.error_code)
                    .map(|e| r.error_message.as_ref().map_or_else(|| e.to_string(), |m| format!("{e}: {}", m.as_str())))
            })
            .collect())
    }
}
