//! The TOML configuration: clusters, flows and tuning knobs.
//!
//! Unknown keys are errors that name the key (serde's `deny_unknown_fields`), because a
//! misspelt knob silently falling back to its default is the worst kind of config bug.
//! Semantic checks (aliases, regexes, ranges) run after parsing and each error names
//! the place in the file (`flows[1].topics`).
//!
//! Security per cluster: `link = "remote"` marks a cluster reached over a network we do
//! not control; such a cluster must have `[clusters.X.tls]` unless `allow_plaintext =
//! true` says otherwise (then a warning is logged at start). `[clusters.X.sasl]` names
//! the mechanism and user; the password comes from an environment variable or a file,
//! never from this file, and is read at start into a [`Secret`] that does not print.
//! Relative paths under `tls` (and `password_file`) are relative to the config file's
//! directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::batch::provenance::{ClusterId, Hop, PROVENANCE_HEADER};
use crate::batch::Compression;
use crate::net::sasl::{Mechanism, SaslCredentials, Secret};
use crate::net::tls::TlsFiles;
use crate::topology::{resolve_provenance, Edge};
pub use crate::topology::{ProvenanceMode, Rename};

/// A configuration problem, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not valid: {reason}")]
    Parse { path: String, reason: String },
    #[error("config file {path}: {at}: {reason}")]
    Invalid { path: String, at: String, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Comma-separated host:port list.
    pub bootstrap: String,
    /// client.id sent to the brokers.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// "local" (default): same datacenter; "remote": needs `tls` or `allow_plaintext`.
    #[serde(default)]
    pub link: Link,
    /// Accept a remote link without TLS (logged as a warning at start).
    #[serde(default)]
    pub allow_plaintext: bool,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// The id written into provenance headers for this cluster; defaults to the alias.
    /// Set it to keep the id when renaming the alias (see the README).
    #[serde(default)]
    pub provenance_id: Option<String>,
    /// Data residency: topics of this cluster matching this regex (whole name) never
    /// leave it, on any flow, whatever the flow's `topics` says (see [`crate::topicsync`]).
    #[serde(default)]
    pub local_only: Option<String>,
    /// Link throttling: the most bytes per second fetched from this cluster, over every
    /// flow reading it (a token bucket in fetch scheduling, see `engine/throttle.rs`),
    /// for WAN links that must not be saturated. None: unlimited.
    #[serde(default)]
    pub max_bytes_per_second: Option<u64>,
}

/// Where a cluster is, as far as the network goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    #[default]
    Local,
    Remote,
}

/// `[clusters.X.tls]`: certificates are always verified; nothing here turns that off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of trusted CAs; absent: the platform's root certificates.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name verified in the broker certificates and sent as SNI, instead of the host dialled.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// `[clusters.X.sasl]`. Holds where the password is, never the password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512".
    pub mechanism: Mechanism,
    pub username: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (one trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_client_id() -> String {
    "mirrorproxy".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub source: String,
    pub target: String,
    /// Regex that must match the whole topic name.
    pub topics: String,
    #[serde(default)]
    pub exclude: Option<String>,
    #[serde(default = "default_rename")]
    pub rename: Rename,
    #[serde(default = "default_start")]
    pub start: StartAt,
    /// "registry" (default), "header" or "off": how the flow keeps records from
    /// returning to a cluster they have been on (see `crate::registry`).
    #[serde(default)]
    pub provenance: Option<ProvenanceMode>,
    /// Consumer groups whose offsets are synced to the target (regex, whole name).
    #[serde(default)]
    pub groups: Option<String>,
    #[serde(default)]
    pub groups_exclude: Option<String>,
    /// Re-batching for remote writes: consecutive source batches of a partition are
    /// merged into target batches of up to this many bytes. 0 (default): off, batches
    /// pass through as they are.
    #[serde(default)]
    pub rebatch_max_bytes: u32,
    /// Codec of merged batches (none, gzip, snappy, lz4, zstd); absent: the source
    /// codec, and only batches of one codec are merged.
    #[serde(default)]
    pub rebatch_compression: Option<String>,
    /// Coalescing (on by default, where `rebatch_max_bytes` is off): a run of queued
    /// source batches each smaller than this many bytes is merged into one target batch,
    /// in the source codec; larger batches pass through as bytes. 0: never merge.
    #[serde(default = "default_coalesce_below")]
    pub coalesce_below_bytes: u32,
    /// Largest batch that coalescing makes, in source bytes.
    #[serde(default = "default_coalesce_max")]
    pub coalesce_max_bytes: u32,
    /// "stop" (default) or "continue": when the source no longer has records the
    /// mirror has not copied (retention overtook it, or the log was truncated).
    #[serde(default)]
    pub on_data_loss: OnDataLoss,
    /// Create target topics with the source topic's configs and keep them in sync
    /// every `tuning.config_sync_interval_ms` (default true; see [`crate::topicsync`]).
    #[serde(default = "default_true")]
    pub sync_topic_configs: bool,
    /// Config names (regex, whole name) never copied; absent: MirrorMaker 2's list
    /// ([`crate::topicsync::configs::DEFAULT_EXCLUDE`]).
    #[serde(default)]
    pub config_exclude: Option<String>,
    /// Copy ACL bindings of the mirrored topics and synced groups (default false).
    #[serde(default)]
    pub sync_acls: bool,
    /// Write a heartbeat record to `tuning.heartbeat_topic` on the source every
    /// `tuning.heartbeat_interval_ms` and mirror it like data (default true; see
    /// [`crate::heartbeat`]).
    #[serde(default = "default_true")]
    pub heartbeats: bool,
}

fn default_true() -> bool {
    true
}

/// Below 12 KiB a batch's fixed cost (its Produce entry, its header, its broker-side
/// append) outweighs copying its records into a merged batch; measured in
/// `tools/bench/README.md` ("coalescing"): 1 KB records, 12 to a batch, 651 MB/s merged
/// against 427 whole; 16 to a batch (16.2 KB), 506-696 merged against 753-778 whole.
pub const DEFAULT_COALESCE_BELOW: u32 = 12 * 1024;
/// Merged batches of 256 KiB: large enough that per-batch costs vanish, small enough
/// that one batch's recompression does not hold a partition back.
pub const DEFAULT_COALESCE_MAX: u32 = 256 * 1024;

fn default_coalesce_below() -> u32 {
    DEFAULT_COALESCE_BELOW
}
fn default_coalesce_max() -> u32 {
    DEFAULT_COALESCE_MAX
}

/// What to do when a fetch position is out of range because the source deleted
/// records the mirror had not copied yet (retention overtook it) or the log is now
/// shorter than the position (an unclean leader election truncated it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDataLoss {
    /// Stop the partition with an error that says how many offsets are gone (default:
    /// losing data is a decision for an operator, not a default).
    #[default]
    Stop,
    /// Log the loss as an error, count it, and continue at the log start (retention)
    /// or the log end (truncation).
    Continue,
}

/// The re-batching settings of flow `i`, checked.
fn rebatch(i: usize, f: &FlowConfig, tuning: &Tuning) -> Result<Option<Rebatch>, (String, String)> {
    let compression = match f.rebatch_compression.as_deref() {
        None => None,
        Some(name) => Some(
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
                .into_iter()
                .find(|c| c.name() == name)
                .ok_or_else(|| {
                    (
                        format!("flows[{i}].rebatch_compression"),
                        format!("unknown codec '{name}' (one of none, gzip, snappy, lz4, zstd)"),
                    )
                })?,
        ),
    };
    if f.rebatch_max_bytes == 0 {
        if compression.is_some() {
            return Err((
                format!("flows[{i}].rebatch_compression"),
                "only applies with rebatch_max_bytes (re-batching is off)".into(),
            ));
        }
        if f.coalesce_below_bytes == 0 {
            return Ok(None);
        }
        if f.coalesce_max_bytes < f.coalesce_below_bytes || f.coalesce_max_bytes > tuning.produce_max_bytes {
            return Err((
                format!("flows[{i}].coalesce_max_bytes"),
                format!(
                    "must be between coalesce_below_bytes ({}) and tuning.produce_max_bytes ({})",
                    f.coalesce_below_bytes, tuning.produce_max_bytes
                ),
            ));
        }
        return Ok(Some(Rebatch {
            max_bytes: f.coalesce_max_bytes as usize,
            compression: None,
            small_below: Some(f.coalesce_below_bytes as usize),
        }));
    }
    if f.rebatch_max_bytes < 1024 || f.rebatch_max_bytes > tuning.produce_max_bytes {
        return Err((
            format!("flows[{i}].rebatch_max_bytes"),
            format!("must be between 1024 and tuning.produce_max_bytes ({})", tuning.produce_max_bytes),
        ));
    }
    Ok(Some(Rebatch { max_bytes: f.rebatch_max_bytes as usize, compression, small_below: None }))
}

fn default_rename() -> Rename {
    Rename::Identity
}
fn default_start() -> StartAt {
    StartAt::Earliest
}

/// Tuning knobs; every one has a default (see the README's config reference).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Bytes of fetched but not yet acknowledged data, over all flows.
    pub buffer_bytes: u64,
    /// max_bytes of one Fetch request.
    pub fetch_max_bytes: u32,
    /// Per-partition max_bytes of a Fetch request.
    pub fetch_partition_max_bytes: u32,
    /// How long a broker may hold a Fetch when there is no new data.
    pub fetch_max_wait_ms: u32,
    /// Use incremental fetch sessions (KIP-227) where the source broker offers them:
    /// requests then name only partitions whose position changed, and responses only
    /// partitions with news. Off: every Fetch names every partition (sessionless).
    pub fetch_sessions: bool,
    /// Produce requests in flight per target partition (1..=5; 5 is Kafka's limit for idempotent producers).
    pub max_in_flight_per_partition: u32,
    /// Largest Produce request (bytes of batches in one request).
    pub produce_max_bytes: u32,
    /// acks for Produce: -1 (all) or 1.
    pub acks: i16,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// How often source topics are re-listed (new topics, new partitions).
    pub metadata_refresh_ms: u64,
    /// How often the progress summary is logged.
    pub summary_interval_ms: u64,
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// How long `run` waits for in-flight produces after SIGINT/SIGTERM.
    pub shutdown_timeout_ms: u64,
    /// Bytes one partition may hold while waiting for the end of an open source transaction.
    pub transaction_buffer_bytes: u64,
    /// How often each partition's position is written to the checkpoint topic.
    pub checkpoint_interval_ms: u64,
    /// Compacted topic on each target cluster holding the checkpoints.
    pub checkpoint_topic: String,
    /// Compacted topic on each cluster mirrorproxy writes to, registering the producer
    /// ids of its batches with their paths (loop prevention); the same name in every
    /// mirrorproxy of a topology.
    pub registry_topic: String,
    /// How often consumer group offsets are synced for flows with `groups`.
    pub group_sync_interval_ms: u64,
    /// How often topic configs are synced for flows with `sync_topic_configs`.
    pub config_sync_interval_ms: u64,
    /// Topic on each source cluster that flows write heartbeats to (compacted, one
    /// partition, keyed by flow), and how often.
    pub heartbeat_topic: String,
    pub heartbeat_interval_ms: u64,
    /// Threads of the async runtime; 0 (the default) = one per flow, at most one per
    /// core ([`Tuning::runtime_threads`]). Each flow is one task with its connections, so
    /// a single flow gains little from a second thread while every extra thread costs
    /// wake-ups: on one flow, 1 thread used up to 13 % less CPU per GB than 2 (never more)
    /// in the isolation benchmark, TLS and the tansu small-batch workload, at throughput
    /// from -10 % (1 KB batches) to +10 % (`tools/bench/README.md`). Takes effect at start.
    pub worker_threads: usize,
}

impl Tuning {
    /// The async runtime's threads for `flows` flows on `cores` cores: `worker_threads`
    /// when set, else one per flow, at most one per core, at least one.
    #[must_use]
    pub fn runtime_threads(&self, flows: usize, cores: usize) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        flows.min(cores).max(1)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            buffer_bytes: 256 << 20,
            fetch_max_bytes: 32 << 20,
            fetch_partition_max_bytes: 4 << 20,
            fetch_max_wait_ms: 500,
            fetch_sessions: true,
            max_in_flight_per_partition: 5,
            produce_max_bytes: 16 << 20,
            acks: -1,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            metadata_refresh_ms: 5_000,
            summary_interval_ms: 10_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 5_000,
            shutdown_timeout_ms: 30_000,
            transaction_buffer_bytes: 64 << 20,
            checkpoint_interval_ms: 1_000,
            checkpoint_topic: crate::checkpoint::DEFAULT_TOPIC.to_owned(),
            registry_topic: crate::registry::DEFAULT_TOPIC.to_owned(),
            group_sync_interval_ms: 10_000,
            config_sync_interval_ms: 30_000,
            heartbeat_topic: crate::heartbeat::DEFAULT_TOPIC.to_owned(),
            heartbeat_interval_ms: 1_000,
            worker_threads: 0,
        }
    }
}

/// `[metrics]`: the HTTP endpoint with `/metrics` (Prometheus text format), `/health`
/// and `/ready` (see [`crate::metrics`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT` to listen on.
    pub listen: String,
    /// Per-partition series (`topic` and `partition` labels); false sums them per flow,
    /// for installations with thousands of partitions.
    #[serde(default = "yes")]
    pub partition_labels: bool,
}

fn yes() -> bool {
    true
}

/// `HOST:PORT` split, or None when it is not one (empty host, port not a u16).
fn host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    Some((host, port.parse().ok()?)).filter(|(h, _)| !h.is_empty())
}

impl Tuning {
    #[must_use]
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    clusters: BTreeMap<String, ClusterConfig>,
    #[serde(default)]
    flows: Vec<FlowConfig>,
    #[serde(default)]
    tuning: Tuning,
    metrics: Option<MetricsConfig>,
}

/// A validated flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// "source->target".
    pub name: String,
    pub source: String,
    pub target: String,
    pub topics: Regex,
    pub exclude: Option<Regex>,
    pub rename: Rename,
    pub start: StartAt,
    /// The provenance hop of this flow with `provenance = "header"` (stamping).
    pub provenance: Option<Hop>,
    /// How loops are prevented (see [`ProvenanceMode`]).
    pub loop_guard: ProvenanceMode,
    /// Provenance ids of the source and target clusters.
    pub source_id: ClusterId,
    pub target_id: ClusterId,
    /// mirrorproxy's own topics (checkpoints, producer registry): never mirrored.
    pub own_topics: Vec<String>,
    /// The producer registry topic (`tuning.registry_topic`), read on the source.
    pub registry_topic: String,
    /// Consumer groups to sync to the target, and those excluded.
    pub groups: Option<Regex>,
    pub groups_exclude: Option<Regex>,
    /// Re-batching for remote writes, or coalescing of small batches; None:
    /// pass-through.
    pub rebatch: Option<Rebatch>,
    /// What an out-of-range fetch position that means lost records does.
    pub on_data_loss: OnDataLoss,
    /// Whether target topic configs follow the source's, and the names never copied.
    pub sync_topic_configs: bool,
    pub config_exclude: Regex,
    /// Whether ACL bindings are copied ([`crate::topicsync::acls`]).
    pub sync_acls: bool,
    /// The source cluster's `local_only`: its topics that never leave it.
    pub local_only: Option<Regex>,
    /// The heartbeat topic the flow writes to on its source and mirrors whatever
    /// `topics` says; None with `heartbeats = false`.
    pub heartbeat_topic: Option<String>,
    /// Set only in the process `mirrorproxy bench` starts: the one flow that may mirror
    /// a [`BENCH_TOPIC_PREFIX`] topic.
    pub bench: bool,
}

/// Topics `mirrorproxy bench` creates; no flow of `run` mirrors them, whatever its
/// `topics` says, so a bench next to a running `.*` mirror is not mirrored twice.
pub const BENCH_TOPIC_PREFIX: &str = "mirrorproxy.bench.";

/// How a flow merges source batches (see [`crate::batch::merge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebatch {
    /// Largest merged batch, in source bytes.
    pub max_bytes: usize,
    /// Codec of merged batches; None: the source codec.
    pub compression: Option<Compression>,
    /// Coalescing: only batches smaller than this are merged (the others pass through
    /// as bytes). None: every mergeable batch is (`rebatch_max_bytes`).
    pub small_below: Option<usize>,
}

impl Flow {
    /// The flow's loop prevention, as the registry's verdict takes it.
    #[must_use]
    pub fn loop_guard(&self) -> crate::registry::LoopGuard<'_> {
        crate::registry::LoopGuard {
            source: &self.source_id,
            target: &self.target_id,
            header: self.provenance.as_ref(),
            skip: self.loop_guard != ProvenanceMode::Off,
        }
    }

    /// How this flow keeps records from looping, in words (for `check`).
    #[must_use]
    pub fn loop_prevention(&self) -> String {
        let registry = format!(
            "producer registry ('{}': batches whose producer id is registered on '{}' with a path through '{}' are skipped; zero-copy)",
            self.registry_topic, self.source, self.target
        );
        let mut how = match self.loop_guard {
            ProvenanceMode::Registry => registry,
            ProvenanceMode::Header => format!("{registry}, and the header {PROVENANCE_HEADER} stamped on every record"),
            ProvenanceMode::Off => {
                "nothing skipped (provenance = \"off\"); written batches are still registered".into()
            }
        };
        if self.rename == Rename::Prefix {
            how.push_str("; prefix rule: topics named '");
            how.push_str(&self.target);
            how.push_str(".*' (from the target) are not mirrored");
        }
        how
    }

    /// Whether a consumer group's offsets are synced by this flow.
    #[must_use]
    pub fn syncs_group(&self, group: &str) -> bool {
        self.groups.as_ref().is_some_and(|g| g.is_match(group))
            && !self.groups_exclude.as_ref().is_some_and(|e| e.is_match(group))
    }

    /// Whether a source topic belongs to this flow: the one topic filter, used by the
    /// engine and every command. Never the cluster's internal topics or mirrorproxy's
    /// own; never, with prefix renaming, a topic whose name says it came from the
    /// target (MirrorMaker 2's `DefaultReplicationPolicy`: `B.orders` is not mirrored
    /// back to `B`, nor `C.B.orders`, which went through `B` before `C`).
    /// Topics matching the source cluster's `local_only` never pass, whatever `topics`
    /// says: deny wins.
    #[must_use]
    pub fn mirrors(&self, topic: &str, is_internal: bool) -> bool {
        !is_internal
            && !self.own_topics.iter().any(|t| t == topic)
            && (self.bench || !topic.starts_with(BENCH_TOPIC_PREFIX))
            && (self.rename != Rename::Prefix || !came_from(topic, &self.target))
            && (self.topics.is_match(topic) || self.heartbeat_topic.as_deref() == Some(topic))
            && !self.exclude.as_ref().is_some_and(|e| e.is_match(topic))
            && !self.local_only.as_ref().is_some_and(|l| l.is_match(topic))
    }

    /// The target topic for a source topic.
    #[must_use]
    pub fn target_topic(&self, topic: &str) -> String {
        match self.rename {
            Rename::Identity => topic.to_owned(),
            Rename::Prefix => format!("{}.{topic}", self.source),
        }
    }
}

/// `re` compiled to match whole names; the error says what is wrong with it.
fn anchored_regex(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| format!("invalid regex '{re}': {}", e.to_string().replace('\n', " ")))
}

/// Whether a prefix-renamed topic name (`<alias>.<alias>...<topic>`) holds `alias` in
/// one of its prefixes. Aliases have no dots, so every dot-separated part but the last
/// may be one; like MirrorMaker 2, each is taken as an alias.
fn came_from(topic: &str, alias: &str) -> bool {
    let mut parts: Vec<&str> = topic.split('.').collect();
    parts.pop();
    parts.contains(&alias)
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub flows: Vec<Flow>,
    pub tuning: Tuning,
    pub metrics: Option<MetricsConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: p.clone(), reason: e.to_string() })?;
        Self::parse(&text, &p)
    }

    /// Parses and validates; `path` is used in messages only.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let invalid = |at: String, reason: String| ConfigError::Invalid { path: path.to_owned(), at, reason };
        // Relative TLS and password files are relative to the config file's directory.
        let base = Path::new(path).parent().unwrap_or_else(|| Path::new(""));
        for c in raw.clusters.values_mut() {
            c.resolve_paths(base);
        }
        if raw.clusters.is_empty() {
            return Err(invalid("clusters".into(), "at least one [clusters.NAME] table is needed".into()));
        }
        for (alias, c) in &raw.clusters {
            if alias.is_empty() || !alias.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch)) {
                return Err(invalid(
                    format!("clusters.{alias}"),
                    "a cluster alias may hold only letters, digits, '-' and '_'".into(),
                ));
            }
            if let Some(re) = &c.local_only {
                anchored_regex(re).map_err(|why| invalid(format!("clusters.{alias}.local_only"), why))?;
            }
            if c.max_bytes_per_second.is_some_and(|r| r < 1024) {
                return Err(invalid(
                    format!("clusters.{alias}.max_bytes_per_second"),
                    "must be at least 1024 (one batch per second would be slower still)".into(),
                ));
            }
            if c.bootstrap_list().is_empty() {
                return Err(invalid(format!("clusters.{alias}.bootstrap"), "is empty".into()));
            }
            for b in c.bootstrap_list() {
                if host_port(&b).is_none_or(|(_, port)| port == 0) {
                    return Err(invalid(format!("clusters.{alias}.bootstrap"), format!("'{b}' is not host:port")));
                }
            }
            if c.link == Link::Remote && c.tls.is_none() && !c.allow_plaintext {
                return Err(invalid(
                    format!("clusters.{alias}"),
                    "link = \"remote\" without a [tls] table would send data (and credentials) unencrypted; \
                     add [clusters.NAME.tls], or set allow_plaintext = true to accept that"
                        .replace("NAME", alias),
                ));
            }
            if let Some(t) = &c.tls {
                if t.cert.is_some() != t.key.is_some() {
                    return Err(invalid(
                        format!("clusters.{alias}.tls"),
                        "cert and key go together (mutual TLS needs both)".into(),
                    ));
                }
                if t.server_name.as_deref().is_some_and(str::is_empty) {
                    return Err(invalid(format!("clusters.{alias}.tls.server_name"), "is empty".into()));
                }
            }
            if let Some(s) = &c.sasl {
                if s.username.is_empty() {
                    return Err(invalid(format!("clusters.{alias}.sasl.username"), "is empty".into()));
                }
                match (&s.password_env, &s.password_file) {
                    (Some(_), None) | (None, Some(_)) => {}
                    _ => {
                        return Err(invalid(
                            format!("clusters.{alias}.sasl"),
                            "give exactly one of password_env and password_file".into(),
                        ))
                    }
                }
            }
        }
        if raw.flows.is_empty() {
            return Err(invalid("flows".into(), "at least one [[flows]] entry is needed".into()));
        }
        let known = raw.clusters.keys().cloned().collect::<Vec<_>>().join(", ");
        let mut flows = Vec::new();
        for (i, f) in raw.flows.iter().enumerate() {
            for (field, alias) in [("source", &f.source), ("target", &f.target)] {
                if !raw.clusters.contains_key(alias) {
                    return Err(invalid(
                        format!("flows[{i}].{field}"),
                        format!("unknown cluster '{alias}' (defined: {known})"),
                    ));
                }
            }
            if f.source == f.target {
                return Err(invalid(format!("flows[{i}]"), format!("source and target are both '{}'", f.source)));
            }
            let anchored = |field: &str, re: &str| {
                Regex::new(&format!("^(?:{re})$")).map_err(|e| {
                    invalid(
                        format!("flows[{i}].{field}"),
                        format!("invalid regex '{re}': {}", e.to_string().replace('\n', " ")),
                    )
                })
            };
            let topics = anchored("topics", &f.topics)?;
            let local_only = raw.clusters[&f.source]
                .local_only
                .as_deref()
                .map(|re| anchored_regex(re).map_err(|why| invalid(format!("clusters.{}.local_only", f.source), why)))
                .transpose()?;
            let config_exclude =
                anchored_regex(f.config_exclude.as_deref().unwrap_or(crate::topicsync::configs::DEFAULT_EXCLUDE))
                    .map_err(|why| invalid(format!("flows[{i}].config_exclude"), why))?;
            let exclude = f.exclude.as_deref().map(|e| anchored("exclude", e)).transpose()?;
            flows.push(Flow {
                name: format!("{}->{}", f.source, f.target),
                source: f.source.clone(),
                target: f.target.clone(),
                topics,
                exclude,
                rename: f.rename,
                start: f.start,
                provenance: None,
                loop_guard: ProvenanceMode::Registry,
                source_id: ClusterId::new("unset").expect("valid id"),
                target_id: ClusterId::new("unset").expect("valid id"),
                own_topics: vec![raw.tuning.checkpoint_topic.clone(), raw.tuning.registry_topic.clone()],
                registry_topic: raw.tuning.registry_topic.clone(),
                groups: f.groups.as_deref().map(|g| anchored("groups", g)).transpose()?,
                groups_exclude: f.groups_exclude.as_deref().map(|g| anchored("groups_exclude", g)).transpose()?,
                rebatch: rebatch(i, f, &raw.tuning).map_err(|(at, why)| invalid(at, why))?,
                on_data_loss: f.on_data_loss,
                sync_topic_configs: f.sync_topic_configs,
                config_exclude,
                sync_acls: f.sync_acls,
                local_only,
                heartbeat_topic: f.heartbeats.then(|| raw.tuning.heartbeat_topic.clone()),
                bench: false,
            });
        }
        for (i, a) in flows.iter().enumerate() {
            for b in &flows[i + 1..] {
                if a.name == b.name {
                    return Err(invalid(
                        format!("flows[{i}]"),
                        format!("two flows go {}: merge their topic patterns into one flow", a.name),
                    ));
                }
            }
        }
        let mut provenance_ids = BTreeMap::new();
        for (alias, c) in &raw.clusters {
            let id = c.provenance_id.as_deref().unwrap_or(alias);
            let id =
                ClusterId::new(id).map_err(|e| invalid(format!("clusters.{alias}.provenance_id"), e.to_string()))?;
            if let Some(other) =
                provenance_ids.values().find(|(_, v): &&(String, ClusterId)| *v == id).map(|(a, _)| a.clone())
            {
                return Err(invalid(
                    format!("clusters.{alias}.provenance_id"),
                    format!("'{id}' is also the provenance id of cluster '{other}'"),
                ));
            }
            provenance_ids.insert(alias.clone(), (alias.clone(), id));
        }
        let edges: Vec<Edge<'_>> = raw
            .flows
            .iter()
            .map(|f| Edge { source: &f.source, target: &f.target, rename: f.rename, provenance: f.provenance })
            .collect();
        let modes = resolve_provenance(&edges).map_err(|(i, why)| invalid(format!("flows[{i}].provenance"), why))?;
        for (flow, mode) in flows.iter_mut().zip(modes) {
            flow.source_id = provenance_ids[&flow.source].1.clone();
            flow.target_id = provenance_ids[&flow.target].1.clone();
            flow.loop_guard = mode;
            if mode == ProvenanceMode::Header {
                flow.provenance = Some(Hop::new(flow.source_id.clone(), flow.target_id.clone()));
            }
        }
        let t = &raw.tuning;
        let check = |ok: bool, key: &str, why: &str| {
            if ok {
                Ok(())
            } else {
                Err(invalid(format!("tuning.{key}"), why.into()))
            }
        };
        check(t.buffer_bytes >= 1 << 20, "buffer_bytes", "must be at least 1 MiB")?;
        check(u64::from(t.fetch_max_bytes) <= t.buffer_bytes, "fetch_max_bytes", "must not exceed buffer_bytes")?;
        check(
            t.fetch_partition_max_bytes > 0 && t.fetch_partition_max_bytes <= t.fetch_max_bytes,
            "fetch_partition_max_bytes",
            "must be between 1 and fetch_max_bytes",
        )?;
        check(
            (1..=5).contains(&t.max_in_flight_per_partition),
            "max_in_flight_per_partition",
            "must be 1..=5 (Kafka's limit for idempotent producers)",
        )?;
        check(t.acks == -1 || t.acks == 1, "acks", "must be -1 (all) or 1; 0 would lose data silently")?;
        check(t.produce_max_bytes >= 1 << 20, "produce_max_bytes", "must be at least 1 MiB")?;
        check(t.request_timeout_ms >= 1000, "request_timeout_ms", "must be at least 1000")?;
        check(t.summary_interval_ms >= 100, "summary_interval_ms", "must be at least 100")?;
        check(t.metadata_refresh_ms >= 100, "metadata_refresh_ms", "must be at least 100")?;
        check(t.checkpoint_interval_ms >= 100, "checkpoint_interval_ms", "must be at least 100")?;
        check(t.worker_threads <= 1024, "worker_threads", "must be 0 (one per flow, at most one per core) to 1024")?;
        check(t.group_sync_interval_ms >= 100, "group_sync_interval_ms", "must be at least 100")?;
        check(t.config_sync_interval_ms >= 100, "config_sync_interval_ms", "must be at least 100")?;
        check(t.heartbeat_interval_ms >= 100, "heartbeat_interval_ms", "must be at least 100")?;
        check(
            ![&t.checkpoint_topic, &t.registry_topic].contains(&&t.heartbeat_topic),
            "heartbeat_topic",
            "must differ from checkpoint_topic and registry_topic",
        )?;
        for (key, name) in [("checkpoint_topic", &t.checkpoint_topic), ("registry_topic", &t.registry_topic)] {
            check(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                key,
                "must be a valid topic name",
            )?;
        }
        check(t.registry_topic != t.checkpoint_topic, "registry_topic", "must differ from checkpoint_topic")?;
        check(
            t.retry_backoff_ms > 0 && t.retry_backoff_ms <= t.retry_backoff_max_ms,
            "retry_backoff_ms",
            "must be > 0 and <= retry_backoff_max_ms",
        )?;
        if let Some(m) = &raw.metrics {
            if host_port(&m.listen).is_none() {
                return Err(invalid("metrics.listen".into(), format!("'{}' is not HOST:PORT", m.listen)));
            }
        }
        Ok(Config { clusters: raw.clusters, flows, tuning: raw.tuning, metrics: raw.metrics })
    }
}

impl ClusterConfig {
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        if let Some(t) = &mut self.tls {
            fix(&mut t.ca);
            fix(&mut t.cert);
            fix(&mut t.key);
        }
        if let Some(s) = &mut self.sasl {
            fix(&mut s.password_file);
        }
    }

    /// The TLS files for [`crate::net::tls::TlsConnector`], if TLS is configured.
    #[must_use]
    pub fn tls_files(&self) -> Option<TlsFiles> {
        self.tls.as_ref().map(|t| TlsFiles {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
            server_name: t.server_name.clone(),
        })
    }

    /// Reads the SASL password from its environment variable or file. Errors say where
    /// the password was looked for, never what it is.
    pub fn sasl_credentials(&self) -> Result<Option<SaslCredentials>, String> {
        let Some(s) = &self.sasl else { return Ok(None) };
        let password = match (&s.password_env, &s.password_file) {
            (Some(var), _) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => v,
                Ok(_) => return Err(format!("sasl.password_env: environment variable {var} is empty")),
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!("sasl.password_env: environment variable {var} is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("sasl.password_env: environment variable {var} is not UTF-8"))
                }
            },
            (None, Some(file)) => {
                let bytes = std::fs::read(file).map_err(|e| format!("sasl.password_file {}: {e}", file.display()))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("sasl.password_file {}: not UTF-8", file.display()))?;
                let text =
                    text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t)).to_owned();
                if text.is_empty() {
                    return Err(format!("sasl.password_file {}: is empty", file.display()));
                }
                text
            }
            (None, None) => return Err("sasl: no password_env or password_file".into()),
        };
        Ok(Some(SaslCredentials {
            mechanism: s.mechanism,
            username: s.username.clone(),
            password: Secret::new(password),
        }))
    }

    /// Why this cluster's traffic is readable on the network, when it is and the
    /// config accepted that (`allow_plaintext`, or PLAIN passwords without TLS).
    #[must_use]
    pub fn plaintext_warning(&self) -> Option<String> {
        if self.tls.is_some() {
            return None;
        }
        let plain_pw = self.sasl.as_ref().is_some_and(|s| s.mechanism == Mechanism::Plain);
        match (self.link, plain_pw) {
            (Link::Remote, true) => Some("remote link without TLS (allow_plaintext = true): data and the SASL PLAIN password cross the network unencrypted".into()),
            (Link::Remote, false) => Some("remote link without TLS (allow_plaintext = true): data crosses the network unencrypted".into()),
            (Link::Local, true) => Some("SASL PLAIN without TLS: the password crosses the network unencrypted".into()),
            (Link::Local, false) => None,
        }
    }

    #[must_use]
    pub fn bootstrap_list(&self) -> Vec<String> {
        self.bootstrap.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
