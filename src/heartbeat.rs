//! Heartbeats: every flow writes a small record to a heartbeat topic on its source
//! every `tuning.heartbeat_interval_ms` (1 s) and mirrors that topic like data, whatever
//! its `topics` says (`heartbeats = false` opts out).
//!
//! Why: when application topics are idle, nothing shows that the path still works: a
//! broken target, a stuck flow or a partitioned network look like "no data". A heartbeat
//! arriving on the target proves fetch, produce and both clusters end to end, and its
//! age on arrival is the latency of an empty path (`mirrorproxy_heartbeat_age_seconds`,
//! set where the engine sees the target acknowledge heartbeat batches). MirrorMaker 2
//! does the same with its `heartbeats` topic (MirrorHeartbeatConnector, KIP-382).
//!
//! The topic is compacted with one partition, keyed by flow (`source->target`), so it
//! stays small; its records carry the flow and the time (JSON). Downstream flows mirror
//! it on like any topic, so in a chain A→B→C the heartbeats of A→B reach C as well, and
//! in active-active the provenance rules stop them from coming back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::checkpoint;
use crate::cluster::Cluster;
use crate::config::{Flow, Tuning};

/// Default `tuning.heartbeat_topic`.
pub const DEFAULT_TOPIC: &str = "mirrorproxy.heartbeats";

/// The heartbeat record's value.
#[must_use]
pub fn value(flow: &Flow, ts_ms: i64) -> Vec<u8> {
    serde_json::json!({ "flow": flow.name, "source": flow.source, "target": flow.target, "ts_ms": ts_ms })
        .to_string()
        .into_bytes()
}

/// Starts the heartbeat writer of every flow that has one; each ends when `shutdown`
/// turns true.
#[must_use]
pub fn spawn<S: std::hash::BuildHasher>(
    flows: &[Flow],
    clusters: &HashMap<String, Arc<Cluster>, S>,
    tuning: &Tuning,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    flows
        .iter()
        .filter_map(|f| Some((f.clone(), f.heartbeat_topic.clone()?)))
        .map(|(flow, topic)| {
            let source = clusters[&flow.source].clone();
            let writer = Writer { flow, topic, source, last_error: None, created: false };
            crate::periodic::spawn_every(Tuning::ms(tuning.heartbeat_interval_ms), shutdown, writer)
        })
        .collect()
}

impl crate::periodic::Tick for Writer {
    async fn tick(&mut self) {
        self.beat().await;
    }
}

struct Writer {
    flow: Flow,
    topic: String,
    source: Arc<Cluster>,
    /// The last failure, logged when it changes (a source that refuses writes is one
    /// warning, not one a second).
    last_error: Option<String>,
    created: bool,
}

impl Writer {
    async fn beat(&mut self) {
        let result = async {
            if !self.created {
                checkpoint::ensure_topic(&self.source, &self.topic).await.map_err(|e| e.to_string())?;
                self.created = true;
            }
            let record = (self.flow.name.clone(), value(&self.flow, checkpoint::now_ms()));
            // Bounded: a source that does not answer must not pile up heartbeats.
            match tokio::time::timeout(
                Duration::from_secs(10),
                checkpoint::write_records(&self.source, &self.topic, &[record]),
            )
            .await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("no answer within 10 s".to_owned()),
            }
        }
        .await;
        match result {
            Ok(()) => {
                if self.last_error.take().is_some() {
                    info!(flow = %self.flow.name, "heartbeats are written to '{}' again", self.topic);
                }
            }
            Err(e) => {
                if self.last_error.as_ref() != Some(&e) {
                    warn!(flow = %self.flow.name, side = "source", retrying = true, "cannot write a heartbeat to '{}' on cluster '{}': {e}; mirroring goes on", self.topic, self.source.alias());
                    self.last_error = Some(e);
                }
            }
        }
    }
}
