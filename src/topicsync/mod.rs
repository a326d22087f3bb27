//! Target topics that are the same topics as their sources: created with the source
//! topic's configs and kept in sync with them; and topics that must never leave their
//! cluster (data residency, `local_only`).
//!
//! Why: a target topic created with the broker's defaults is not the same topic. A
//! compacted source topic arrives with `cleanup.policy=delete` and loses every key not
//! rewritten within the retention; a topic kept forever (`retention.ms=-1`) loses its
//! history; a different `max.message.bytes` refuses records. A failover then lands on
//! a copy that behaves differently. MirrorMaker 2 syncs topic configs
//! (`sync.topic.configs.enabled`, KIP-382; with IncrementalAlterConfigs since KIP-894);
//! this does the same, with the rules in [`configs`].
//!
//! The sync runs as one task per flow beside the engine ([`spawn`]), every
//! `tuning.config_sync_interval_ms`: it lists the flow's topics (the one filter,
//! [`crate::config::Flow::mirrors`]), describes each on both sides and sends the SETs
//! (IncrementalAlterConfigs, KIP-339) that make the target follow. The engine's only
//! part is creating a topic with the source's configs ([`create_target_topic`]).
//!
//! A config the target refuses (a value above a broker limit, a key an older broker
//! does not know) is logged once per topic and key with the broker's message and not
//! sent again while the source value stays the same; the topic's other configs and the
//! mirroring of its data go on.

pub mod acls;
pub mod configs;
pub mod residency;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::acls::{AclBinding, Acls};
use crate::cluster::configs::ConfigEntry;
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Flow, Tuning};

/// Creates target topic `tname` for source topic `name`, with the source's configs
/// when the flow syncs them. The same contract as [`Cluster::create_topic`]: an
/// existing topic is not an error; a retriable error is returned as such. A creation
/// the target refuses because of the configs is retried without them (the periodic
/// sync then names the refused keys): the data is mirrored either way.
pub async fn create_target_topic(
    flow: &Flow,
    source: &Cluster,
    target: &Cluster,
    name: &str,
    tname: &str,
    partitions: i32,
    replication: i16,
) -> Result<(), ClusterError> {
    if !flow.sync_topic_configs {
        return target.create_topic(tname, partitions, replication).await;
    }
    let source_configs = match source.describe_topic_config(name).await {
        Ok(c) => c.unwrap_or_default(),
        Err(e) if e.is_retriable() => return Err(e),
        Err(e) => {
            warn!(flow = %flow.name, "creating '{tname}' without the source's configs: {e}");
            Vec::new()
        }
    };
    // What a new topic would have on the target (CreateTopics validate_only): the
    // configs equal to it need not be sent. A target that does not say: send all.
    let defaults = target.create_topic_with_configs(tname, partitions, replication, &[], true).await;
    let defaults: Option<Vec<ConfigEntry>> = match defaults {
        Ok(d) if !d.is_empty() => Some(d),
        Err(e) if e.is_retriable() => return Err(e),
        // A target that does not say, or an error the real creation below names.
        Ok(_) | Err(_) => None,
    };
    if target.metadata(Some(&[tname.to_owned()])).await?.topics.get(tname).is_some_and(|t| t.error.is_none()) {
        // tansu 0.6.0 creates the topic on a validate_only CreateTopics (pinned in
        // tests/tansu_probe.rs): give it the configs now, before any data is written.
        let current = target.describe_topic_config(tname).await?;
        let set = configs::alterations(&source_configs, current.as_deref(), &flow.config_exclude);
        if !set.is_empty() {
            match target.alter_topic_config(tname, &set).await? {
                Ok(()) => {
                    info!(flow = %flow.name, "target topic '{tname}' created, then given the source's configs: {}", show(&set));
                }
                Err(r) => {
                    warn!(flow = %flow.name, "target topic '{tname}': the source's configs ({}) were refused: {} ({}); the periodic sync names the refused keys", show(&set), r.message, r.error);
                }
            }
        }
        return Ok(());
    }
    let set = configs::alterations(&source_configs, defaults.as_deref(), &flow.config_exclude);
    if set.is_empty() {
        return target.create_topic(tname, partitions, replication).await;
    }
    match target.create_topic_with_configs(tname, partitions, replication, &set, false).await {
        Ok(_) => {
            info!(flow = %flow.name, "target topic '{tname}' created with the source's configs: {}", show(&set));
            Ok(())
        }
        Err(e) if e.is_retriable() => Err(e),
        Err(e) => {
            warn!(flow = %flow.name, "target topic '{tname}': creating it with the source's configs ({}) was refused: {e}; creating it without them", show(&set));
            target.create_topic(tname, partitions, replication).await
        }
    }
}

/// `k=v, k=v` for logs.
fn show(set: &[(String, String)]) -> String {
    set.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// Starts the config (and ACL) sync of every flow that has it; each task ends when
/// `shutdown` turns true.
#[must_use]
pub fn spawn<S: std::hash::BuildHasher>(
    flows: &[Flow],
    clusters: &HashMap<String, Arc<Cluster>, S>,
    tuning: &Tuning,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    flows
        .iter()
        .filter(|f| f.sync_topic_configs || f.sync_acls)
        .map(|f| {
            let sync = ConfigSync::new(f.clone(), clusters[&f.source].clone(), clusters[&f.target].clone());
            crate::periodic::spawn_every(Tuning::ms(tuning.config_sync_interval_ms), shutdown, sync)
        })
        .collect()
}

impl crate::periodic::Tick for ConfigSync {
    async fn tick(&mut self) {
        self.round().await;
    }
}

/// The periodic config sync of one flow, with what it has already reported.
pub struct ConfigSync {
    flow: Flow,
    source: Arc<Cluster>,
    target: Arc<Cluster>,
    /// (target topic, key) → the value the target refused: logged once, not resent
    /// while the source value stays the same.
    refused: HashMap<(String, String), String>,
    /// The last round's failure, logged when it changes.
    last_error: Option<String>,
    /// Target topics whose configs match the source (logged once when reached).
    in_sync: HashSet<String>,
    /// ACL bindings the target refused, and whether "no ACLs" was already reported.
    acl_refused: HashSet<AclBinding>,
    acl_unavailable: bool,
    last_acl_error: Option<String>,
}

/// What one round did (for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// (target topic, key, value) set.
    pub set: Vec<(String, String, String)>,
    /// (target topic, key, broker's message) refused this round.
    pub refused: Vec<(String, String, String)>,
    /// ACL bindings created on the target.
    pub acls_created: Vec<AclBinding>,
}

impl ConfigSync {
    #[must_use]
    pub fn new(flow: Flow, source: Arc<Cluster>, target: Arc<Cluster>) -> Self {
        Self {
            flow,
            source,
            target,
            refused: HashMap::new(),
            last_error: None,
            in_sync: HashSet::new(),
            acl_refused: HashSet::new(),
            acl_unavailable: false,
            last_acl_error: None,
        }
    }

    /// One round; failures are logged (once while they stay the same) and retried
    /// next round.
    pub async fn round(&mut self) {
        match self.try_round().await {
            Ok(_) => self.last_error = None,
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_ref() != Some(&e) {
                    warn!(flow = %self.flow.name, "topic config sync: {e}; retrying every interval");
                    self.last_error = Some(e);
                }
            }
        }
    }

    /// One round: every mirrored topic that exists on the target is brought in line.
    pub async fn try_round(&mut self) -> Result<RoundReport, ClusterError> {
        let mut report = RoundReport::default();
        let src = self.source.metadata(None).await?;
        let mut topics: Vec<&String> = src
            .topics
            .iter()
            .filter(|(n, t)| t.error.is_none() && self.flow.mirrors(n, t.is_internal))
            .map(|(n, _)| n)
            .collect();
        topics.sort();
        if self.flow.sync_acls {
            let mirrored = topics.iter().map(|t| (*t).clone()).collect();
            // ACL trouble is reported on its own and never holds up the config sync.
            match self.acl_round(&mirrored, &mut report).await {
                Ok(()) => self.last_acl_error = None,
                Err(e) => {
                    let e = e.to_string();
                    if self.last_acl_error.as_ref() != Some(&e) {
                        warn!(flow = %self.flow.name, "ACL sync: {e}; retrying every interval");
                        self.last_acl_error = Some(e);
                    }
                }
            }
        }
        if topics.is_empty() || !self.flow.sync_topic_configs {
            return Ok(report);
        }
        let names: Vec<String> = topics.iter().map(|n| self.flow.target_topic(n)).collect();
        let tgt = self.target.metadata(Some(&names)).await?;
        for (name, tname) in topics.into_iter().zip(names) {
            if tgt.topics.get(&tname).is_none_or(|t| t.error.is_some()) {
                continue; // not created yet: the engine creates it with the configs
            }
            let Some(s) = self.source.describe_topic_config(name).await? else { return Ok(report) };
            let t = self.target.describe_topic_config(&tname).await?;
            let mut set = configs::alterations(&s, t.as_deref(), &self.flow.config_exclude);
            set.retain(|(k, v)| self.refused.get(&(tname.clone(), k.clone())) != Some(v));
            if set.is_empty() {
                if self.in_sync.insert(tname.clone()) {
                    info!(flow = %self.flow.name, "target topic '{tname}': configs follow source topic '{name}'");
                }
                continue;
            }
            self.in_sync.remove(&tname);
            self.apply(&tname, set, &mut report).await?;
        }
        Ok(report)
    }

    /// Creates the ACL bindings the target lacks ([`acls`]).
    async fn acl_round(&mut self, mirrored: &HashSet<String>, report: &mut RoundReport) -> Result<(), ClusterError> {
        let (source, target) = match (self.source.describe_acls().await?, self.target.describe_acls().await?) {
            (Acls::Bindings(s), Acls::Bindings(t)) => (s, t),
            (Acls::Unavailable(why), _) | (_, Acls::Unavailable(why)) => {
                if !self.acl_unavailable {
                    warn!(flow = %self.flow.name, "sync_acls: ACLs cannot be synced ({why}); topic data and configs are mirrored regardless");
                    self.acl_unavailable = true;
                }
                return Ok(());
            }
        };
        self.acl_unavailable = false;
        let mut create = acls::missing(acls::wanted(&self.flow, &source, mirrored), &target);
        create.retain(|b| !self.acl_refused.contains(b));
        if create.is_empty() {
            return Ok(());
        }
        let results = self.target.create_acls(&create).await?;
        for (b, r) in create.into_iter().zip(results) {
            match r {
                None => {
                    info!(flow = %self.flow.name, "ACL binding created on the target: {b}");
                    report.acls_created.push(b);
                }
                Some(why) => {
                    warn!(flow = %self.flow.name, "the target refused ACL binding {b}: {why}; not retried");
                    self.acl_refused.insert(b);
                }
            }
        }
        Ok(())
    }

    /// Sets `set` on `tname`; when the target refuses the whole, each key alone, to
    /// find and report the refused ones.
    async fn apply(
        &mut self,
        tname: &str,
        set: Vec<(String, String)>,
        report: &mut RoundReport,
    ) -> Result<(), ClusterError> {
        let flow = self.flow.name.clone();
        if self.target.alter_topic_config(tname, &set).await?.is_ok() {
            info!(flow = %flow, "target topic '{tname}': configs synced from the source: {}", show(&set));
            report.set.extend(set.into_iter().map(|(k, v)| (tname.to_owned(), k, v)));
            return Ok(());
        }
        for (k, v) in set {
            match self.target.alter_topic_config(tname, &[(k.clone(), v.clone())]).await? {
                Ok(()) => {
                    info!(flow = %flow, "target topic '{tname}': config synced from the source: {k}={v}");
                    report.set.push((tname.to_owned(), k, v));
                }
                Err(refusal) => {
                    warn!(flow = %flow, "target topic '{tname}': the target refused config {k}={v}: {} ({}); not retried until the source value changes, mirroring goes on", refusal.message, refusal.error);
                    report.refused.push((tname.to_owned(), k.clone(), refusal.message));
                    self.refused.insert((tname.to_owned(), k), v);
                }
            }
        }
        Ok(())
    }
}

/// For `check`: every config of the flow's topic `name` that differs between source
/// and target, with whether the sync copies it.
pub async fn differences(
    flow: &Flow,
    source: &Cluster,
    target: &Cluster,
    name: &str,
) -> Result<Vec<configs::Difference>, ClusterError> {
    let s = source.describe_topic_config(name).await?.unwrap_or_default();
    let t = target.describe_topic_config(&flow.target_topic(name)).await?;
    Ok(configs::differences(&s, t.as_deref(), &flow.config_exclude))
}
