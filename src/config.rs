//! The TOML configuration: clusters, flows and tuning knobs.
//!
//! Unknown keys are errors that name the key (serde's `deny_unknown_fields`), because a
//! misspelt knob silently falling back to its default is the worst kind of config bug.
//! Semantic checks (aliases, regexes, ranges) run after parsing and each error names
//! the place in the file (`flows[1].topics`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

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
}

fn default_client_id() -> String {
    "mirrorproxy".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rename {
    /// Target topic has the source topic's name.
    Identity,
    /// Target topic is "<source alias>.<topic>" (MirrorMaker 2's DefaultReplicationPolicy).
    Prefix,
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
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            buffer_bytes: 256 << 20,
            fetch_max_bytes: 32 << 20,
            fetch_partition_max_bytes: 4 << 20,
            fetch_max_wait_ms: 500,
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
        }
    }
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
}

impl Flow {
    /// Whether a source topic belongs to this flow.
    #[must_use]
    pub fn matches(&self, topic: &str) -> bool {
        self.topics.is_match(topic) && !self.exclude.as_ref().is_some_and(|e| e.is_match(topic))
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

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub flows: Vec<Flow>,
    pub tuning: Tuning,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: p.clone(), reason: e.to_string() })?;
        Self::parse(&text, &p)
    }

    /// Parses and validates; `path` is used in messages only.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), reason: e.to_string().trim_end().replace('\n', " | ") })?;
        let invalid = |at: String, reason: String| ConfigError::Invalid { path: path.to_owned(), at, reason };
        if raw.clusters.is_empty() {
            return Err(invalid("clusters".into(), "at least one [clusters.NAME] table is needed".into()));
        }
        for (alias, c) in &raw.clusters {
            if alias.is_empty() || !alias.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch)) {
                return Err(invalid(format!("clusters.{alias}"), "a cluster alias may hold only letters, digits, '-' and '_'".into()));
            }
            if c.bootstrap_list().is_empty() {
                return Err(invalid(format!("clusters.{alias}.bootstrap"), "is empty".into()));
            }
            for b in c.bootstrap_list() {
                let ok = b.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(invalid(format!("clusters.{alias}.bootstrap"), format!("'{b}' is not host:port")));
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
                    return Err(invalid(format!("flows[{i}].{field}"), format!("unknown cluster '{alias}' (defined: {known})")));
                }
            }
            if f.source == f.target {
                return Err(invalid(format!("flows[{i}]"), format!("source and target are both '{}'", f.source)));
            }
            let anchored = |field: &str, re: &str| {
                Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| invalid(format!("flows[{i}].{field}"), format!("invalid regex '{re}': {}", e.to_string().replace('\n', " "))))
            };
            let topics = anchored("topics", &f.topics)?;
            let exclude = f.exclude.as_deref().map(|e| anchored("exclude", e)).transpose()?;
            flows.push(Flow {
                name: format!("{}->{}", f.source, f.target),
                source: f.source.clone(),
                target: f.target.clone(),
                topics,
                exclude,
                rename: f.rename,
                start: f.start,
            });
        }
        for (i, a) in flows.iter().enumerate() {
            for b in &flows[i + 1..] {
                if a.name == b.name {
                    return Err(invalid(format!("flows[{i}]"), format!("two flows go {}: merge their topic patterns into one flow", a.name)));
                }
            }
        }
        let t = &raw.tuning;
        let check = |ok: bool, key: &str, why: &str| if ok { Ok(()) } else { Err(invalid(format!("tuning.{key}"), why.into())) };
        check(t.buffer_bytes >= 1 << 20, "buffer_bytes", "must be at least 1 MiB")?;
        check(u64::from(t.fetch_max_bytes) <= t.buffer_bytes, "fetch_max_bytes", "must not exceed buffer_bytes")?;
        check(t.fetch_partition_max_bytes > 0 && t.fetch_partition_max_bytes <= t.fetch_max_bytes, "fetch_partition_max_bytes", "must be between 1 and fetch_max_bytes")?;
        check((1..=5).contains(&t.max_in_flight_per_partition), "max_in_flight_per_partition", "must be 1..=5 (Kafka's limit for idempotent producers)")?;
        check(t.acks == -1 || t.acks == 1, "acks", "must be -1 (all) or 1; 0 would lose data silently")?;
        check(t.produce_max_bytes >= 1 << 20, "produce_max_bytes", "must be at least 1 MiB")?;
        check(t.request_timeout_ms >= 1000, "request_timeout_ms", "must be at least 1000")?;
        check(t.summary_interval_ms >= 100, "summary_interval_ms", "must be at least 100")?;
        check(t.metadata_refresh_ms >= 100, "metadata_refresh_ms", "must be at least 100")?;
        check(t.retry_backoff_ms > 0 && t.retry_backoff_ms <= t.retry_backoff_max_ms, "retry_backoff_ms", "must be > 0 and <= retry_backoff_max_ms")?;
        Ok(Config { clusters: raw.clusters, flows, tuning: raw.tuning })
    }
}

impl ClusterConfig {
    #[must_use]
    pub fn bootstrap_list(&self) -> Vec<String> {
        self.bootstrap.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[clusters.edge]
bootstrap = "127.0.0.1:9092,127.0.0.1:9093"
[clusters.cloud]
bootstrap = "127.0.0.1:9192"
[[flows]]
source = "edge"
target = "cloud"
topics = "orders\\..*"
exclude = ".*\\.internal"
rename = "prefix"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, "m.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_schema() {
        let c = Config::parse(GOOD, "m.toml").unwrap();
        let f = &c.flows[0];
        assert!(f.matches("orders.eu"));
        assert!(!f.matches("orders.eu.internal"));
        assert!(!f.matches("xorders.eu"), "regex must match the whole name");
        assert_eq!(f.target_topic("orders.eu"), "edge.orders.eu");
        assert_eq!(f.start, StartAt::Earliest);
        assert_eq!(c.clusters["edge"].bootstrap_list().len(), 2);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&GOOD.replace("rename = \"prefix\"", "renam = \"prefix\""));
        assert!(e.contains("renam"), "{e}");
        let e = err(&format!("{GOOD}\n[tuning]\nbufer_bytes = 5\n"));
        assert!(e.contains("bufer_bytes"), "{e}");
    }

    #[test]
    fn unknown_alias_invalid_regex_and_bad_toml() {
        let e = err(&GOOD.replace("target = \"cloud\"", "target = \"clod\""));
        assert!(e.contains("flows[0].target") && e.contains("clod"), "{e}");
        let e = err(&GOOD.replace("orders\\\\..*", "orders(["));
        assert!(e.contains("flows[0].topics") && e.contains("invalid regex"), "{e}");
        let e = err("[clusters.a\nbootstrap=1");
        assert!(e.contains("m.toml") && e.contains("not valid"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:9192", "localhost"));
        assert!(e.contains("clusters.cloud.bootstrap"), "{e}");
        let e = err(&format!("{GOOD}\n[tuning]\nacks = 0\n"));
        assert!(e.contains("tuning.acks"), "{e}");
    }
}
