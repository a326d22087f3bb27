//! Consumer-group calls the failover tools need: find a group's coordinator, read and
//! commit its offsets, and tell whether it has live members.
//!
//! Offsets are committed the way a "simple consumer" (`assign`, no group membership)
//! commits them: generation -1 and an empty member id. Kafka accepts that only while
//! the group has no members, which is exactly the rule for syncing a group on the
//! standby: never move a group that is consuming there.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::{Cluster, ClusterError, TopicPartition};
use crate::net::Connection;

fn other(cluster: &Cluster, what: String) -> ClusterError {
    ClusterError::Other { cluster: cluster.alias().to_owned(), what }
}

/// The coordinator of `group`.
pub async fn coordinator(cluster: &Cluster, group: &str) -> Result<Arc<Connection>, ClusterError> {
    let conn = cluster.any_broker().await?;
    let req = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_owned())).with_key_type(0);
    let resp = conn.call(&req).await.map_err(|e| ClusterError::Net { cluster: cluster.alias().into(), source: e })?;
    if let Some(e) = ResponseError::try_from_code(resp.error_code) {
        return Err(other(cluster, format!("finding the coordinator of group '{group}' failed: {e}")));
    }
    cluster.connection_to(&format!("{}:{}", resp.host.as_str(), resp.port)).await
}

/// Committed offsets of `group` for `topics` (name → partition count), without entries
/// that have none. Topics are named explicitly: not every broker answers the
/// "all topics" form (tansu 0.6.0 sends a null array the protocol does not allow).
pub async fn committed(
    cluster: &Cluster,
    group: &str,
    topics: &BTreeMap<String, i32>,
) -> Result<BTreeMap<TopicPartition, i64>, ClusterError> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let conn = coordinator(cluster, group).await?;
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_topics(Some(
            topics
                .iter()
                .map(|(t, n)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.clone())))
                        .with_partition_indexes((0..*n).collect())
                })
                .collect(),
        ));
    let resp = conn.call(&req).await.map_err(|e| ClusterError::Net { cluster: cluster.alias().into(), source: e })?;
    if let Some(e) = ResponseError::try_from_code(resp.error_code) {
        return Err(other(cluster, format!("reading the offsets of group '{group}' failed: {e}")));
    }
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.insert(TopicPartition::new(t.name.0.as_str(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// Whether a group is consuming: it has members, or its state says it has (some brokers,
/// tansu 0.6.0 among them, describe a Stable group with an empty member list).
#[must_use]
pub fn is_live(members: usize, state: &str) -> bool {
    members > 0 || !matches!(state, "Empty" | "Dead" | "")
}

/// Number of live members of `group`, and its state ("Empty", "Stable", "Dead", ...).
pub async fn members(cluster: &Cluster, group: &str) -> Result<(usize, String), ClusterError> {
    let conn = coordinator(cluster, group).await?;
    let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let resp = conn.call(&req).await.map_err(|e| ClusterError::Net { cluster: cluster.alias().into(), source: e })?;
    let g =
        resp.groups.into_iter().next().ok_or_else(|| other(cluster, format!("group '{group}' was not described")))?;
    if let Some(e) = ResponseError::try_from_code(g.error_code) {
        return Err(other(cluster, format!("describing group '{group}' failed: {e}")));
    }
    Ok((g.members.len(), g.group_state.as_str().to_owned()))
}

/// Every group id the cluster knows (asks every broker).
pub async fn list(cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    let md = cluster.metadata(Some(&[])).await?;
    let mut out = Vec::new();
    for id in md.brokers.keys() {
        let conn = cluster.broker(*id).await?;
        let resp = conn
            .call(&ListGroupsRequest::default())
            .await
            .map_err(|e| ClusterError::Net { cluster: cluster.alias().into(), source: e })?;
        if let Some(e) = ResponseError::try_from_code(resp.error_code) {
            return Err(other(cluster, format!("listing groups failed: {e}")));
        }
        out.extend(resp.groups.into_iter().map(|g| g.group_id.0.as_str().to_owned()));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Commits `offsets` for `group` as a member-less commit. Fails if the group has live
/// members (the broker refuses too, but the message here is clearer).
pub async fn commit(
    cluster: &Cluster,
    group: &str,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<(), ClusterError> {
    let (n, state) = members(cluster, group).await?;
    if is_live(n, &state) {
        return Err(other(cluster, format!("group '{group}' has {n} active member(s) (state {state}): its offsets are not changed while it consumes")));
    }
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (tp, offset) in offsets {
        topics.entry(&tp.topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1),
        );
    }
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_owned())))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let conn = coordinator(cluster, group).await?;
    let resp = conn.call(&req).await.map_err(|e| ClusterError::Net { cluster: cluster.alias().into(), source: e })?;
    for t in resp.topics {
        for p in t.partitions {
            if let Some(e) = ResponseError::try_from_code(p.error_code) {
                return Err(other(
                    cluster,
                    format!(
                        "committing group '{group}' offset for {}-{} failed: {e}",
                        t.name.0.as_str(),
                        p.partition_index
                    ),
                ));
            }
        }
    }
    Ok(())
}
