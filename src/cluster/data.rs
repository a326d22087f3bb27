//! Reading and writing one partition outside the engine's pipelined paths: the
//! proxy's own topics (checkpoints, the producer registry), a target's tail at start,
//! and the operator tools. One plain Fetch or Produce at a time; the engine's data path
//! (sessions, one batch per partition per request, pipelining) is in `engine/`.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic},
    produce_request::{PartitionProduceData, TopicProduceData},
    BrokerId, FetchRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{Cluster, ClusterError};

/// One partition's part of a Fetch answer.
#[derive(Debug, Default)]
pub struct FetchedPartition {
    pub error: Option<ResponseError>,
    pub high_watermark: i64,
    pub records: Bytes,
}

impl Cluster {
    /// The leader of `topic`'s `partition`, as Metadata says now.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Result<i32, ClusterError> {
        let md = self.metadata(Some(&[topic.to_owned()])).await?;
        md.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
            .map(|p| p.leader)
            .filter(|l| *l >= 0)
            .ok_or_else(|| ClusterError::Other {
                cluster: self.alias.clone(),
                what: format!("topic '{topic}' partition {partition} has no leader"),
            })
    }

    /// One Fetch (read_uncommitted, no session) of `partition` at `offset` from
    /// `leader`. None: the broker left the partition out of its answer (tansu does when
    /// it has no data there).
    pub async fn fetch_once(
        &self,
        leader: i32,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> Result<Option<FetchedPartition>, ClusterError> {
        let conn = self.broker(leader).await?;
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(50)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(max_bytes)])]);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        if let Some(e) = self.kafka(format!("Fetch of '{topic}' partition {partition}"), resp.error_code, None) {
            return Err(e);
        }
        Ok(resp.responses.into_iter().flat_map(|t| t.partitions).find(|p| p.partition_index == partition).map(|pd| {
            FetchedPartition {
                error: ResponseError::try_from_code(pd.error_code),
                high_watermark: pd.high_watermark,
                records: pd.records.unwrap_or_default(),
            }
        }))
    }

    /// Writes one encoded batch to `topic`'s `partition` with acks=all.
    pub async fn produce_batch(&self, topic: &str, partition: i32, batch: Bytes) -> Result<(), ClusterError> {
        let leader = self.leader_of(topic, partition).await?;
        let conn = self.broker(leader).await?;
        let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))]),
        ]);
        let resp = conn.call(&req).await.map_err(|e| self.net(e))?;
        for t in resp.responses {
            for p in t.partition_responses {
                let what = format!("writing to '{topic}' partition {partition}");
                if let Some(e) = self.kafka(what, p.error_code, p.error_message.as_ref()) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
