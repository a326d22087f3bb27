//! Which topic configs to copy from a source topic to its target topic: sans-I/O,
//! from two DescribeConfigs answers (or, for a topic not yet created, the target's
//! CreateTopics `validate_only` answer) to a list of SET operations.
//!
//! The rule decides by value, not by Kafka's `is_default` flag: a source config is
//! copied when the target's effective value differs from it. Kafka's usual rule ("copy
//! only what is not a default") copies nothing from tansu 0.6.0, which reports the
//! configs that were set on a topic with source DEFAULT_CONFIG (pinned in
//! `tests/tansu_probe.rs`). Deciding by value is right for both: from a Kafka source the
//! built-in defaults equal the target's and produce nothing; from tansu only the set
//! configs are reported, and they are copied.
//!
//! Never copied:
//! - read-only and sensitive configs (a sensitive value is not even described);
//! - values that come from the source's broker configuration (dynamic or static broker
//!   config): that is the source operator's cluster policy, the target has its own;
//! - a source built-in default where the target's value comes from the target's
//!   broker configuration: again the target operator's policy wins over a default;
//! - names matching `config_exclude` (default [`DEFAULT_EXCLUDE`]).
//!
//! Only SET is ever sent, never DELETE: a config that is set only on the target
//! (excluded, or never on the source) stays as it is. MirrorMaker 2 since KIP-894 also
//! uses IncrementalAlterConfigs; with its `use.defaults.from = target` it DELETEs
//! target values of configs that are defaults on the source, which needs an
//! `is_default` that tansu does not give.

use std::collections::HashMap;

use regex::Regex;

use crate::cluster::configs::{ConfigEntry, ConfigSource};

/// MirrorMaker 2's default `config.properties.exclude` (`DefaultConfigPropertyFilter`),
/// as one regex. Why each:
/// - `follower.replication.throttled.replicas`, `leader.replication.throttled.replicas`:
///   lists of `partition:broker` pairs of the source cluster's replica reassignment
///   throttling; the target's broker ids are others, and throttles are a temporary
///   operation of that cluster.
/// - `message.timestamp.difference.max.ms`: the target broker would refuse mirrored
///   records whose (source) timestamp is further from the target's clock than this,
///   which is every record of an old backlog: mirroring would stop.
/// - `message.timestamp.type`: `LogAppendTime` on the target would overwrite the
///   source's timestamps with the mirror's write time (and rewrite every batch), so
///   time-based offset lookup on the standby would no longer match the source.
/// - `unclean.leader.election.enable`: a durability-versus-availability choice for the
///   target cluster's own replicas, made by its operator.
/// - `min.insync.replicas`: depends on the target's brokers and replication factor; a
///   value of 2 copied onto a one-broker standby makes every `acks=all` write fail
///   with NOT_ENOUGH_REPLICAS, and the mirror stops.
pub const DEFAULT_EXCLUDE: &str = r"follower\.replication\.throttled\.replicas|leader\.replication\.throttled\.replicas|message\.timestamp\.difference\.max\.ms|message\.timestamp\.type|unclean\.leader\.election\.enable|min\.insync\.replicas";

/// How a source config stands against the target, for `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The sync sets the target to the source value.
    Copy,
    /// Not copied, and why.
    Kept(&'static str),
}

/// One config whose value differs between source and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub name: String,
    /// None: not described on that side (tansu describes only configs that were set;
    /// a sensitive value is never described).
    pub source: Option<String>,
    pub target: Option<String>,
    pub verdict: Verdict,
}

fn index(entries: &[ConfigEntry]) -> HashMap<&str, &ConfigEntry> {
    entries.iter().map(|e| (e.name.as_str(), e)).collect()
}

/// Whether (and why not) source entry `s` is copied over target entry `t`.
fn verdict(s: &ConfigEntry, t: Option<&ConfigEntry>, exclude: &Regex) -> Verdict {
    if exclude.is_match(&s.name) {
        return Verdict::Kept("excluded by config_exclude");
    }
    if s.read_only {
        return Verdict::Kept("read-only");
    }
    if s.sensitive || s.value.is_none() {
        return Verdict::Kept("sensitive or without a value");
    }
    if s.source == ConfigSource::Broker {
        return Verdict::Kept("source value comes from the source's broker config");
    }
    match t {
        Some(t) if t.read_only => Verdict::Kept("read-only on the target"),
        Some(t) if s.source == ConfigSource::Default && t.source == ConfigSource::Broker => {
            Verdict::Kept("source default; the target's broker config sets this")
        }
        _ => Verdict::Copy,
    }
}

/// The SET operations that make `target` follow `source`, sorted by name. `target`
/// None: the target told nothing (a topic about to be created on a broker that does
/// not answer with configs): every copyable source config is set.
#[must_use]
pub fn alterations(source: &[ConfigEntry], target: Option<&[ConfigEntry]>, exclude: &Regex) -> Vec<(String, String)> {
    differences(source, target, exclude)
        .into_iter()
        .filter(|d| d.verdict == Verdict::Copy)
        .filter_map(|d| Some((d.name, d.source?)))
        .collect()
}

/// Every config whose value differs between source and target, sorted by name, with
/// whether the sync copies it. Configs described only on the target are listed too
/// (kept: the sync never removes a target config).
#[must_use]
pub fn differences(source: &[ConfigEntry], target: Option<&[ConfigEntry]>, exclude: &Regex) -> Vec<Difference> {
    let t = index(target.unwrap_or_default());
    let s = index(source);
    let mut out = Vec::new();
    for (name, se) in &s {
        let te = t.get(name).copied();
        let tv = te.and_then(|e| e.value.clone());
        if se.value.is_some() && se.value == tv {
            continue;
        }
        if se.value.is_none() && te.is_some_and(|e| e.value.is_none()) {
            continue; // both sensitive or empty: nothing to compare
        }
        out.push(Difference {
            name: (*name).to_owned(),
            source: se.value.clone(),
            target: tv,
            verdict: verdict(se, te, exclude),
        });
    }
    for (name, te) in &t {
        if !s.contains_key(name) && te.value.is_some() && te.source == ConfigSource::Topic {
            out.push(Difference {
                name: (*name).to_owned(),
                source: None,
                target: te.value.clone(),
                verdict: Verdict::Kept("set only on the target"),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exclude() -> Regex {
        Regex::new(&format!("^(?:{DEFAULT_EXCLUDE})$")).unwrap()
    }

    fn entry(name: &str, value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry { source, ..ConfigEntry::topic(name, value) }
    }

    fn names(a: &[(String, String)]) -> Vec<&str> {
        a.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn tansu_source_reports_set_configs_as_defaults_and_they_are_copied() {
        // tansu 0.6.0: only the configs set on the topic, each with DEFAULT_CONFIG.
        let source = vec![
            entry("cleanup.policy", "compact", ConfigSource::Default),
            entry("retention.ms", "-1", ConfigSource::Default),
            entry("min.insync.replicas", "2", ConfigSource::Default),
            entry("message.timestamp.type", "LogAppendTime", ConfigSource::Default),
        ];
        let a = alterations(&source, Some(&[]), &exclude());
        assert_eq!(names(&a), ["cleanup.policy", "retention.ms"]);
        assert_eq!(a[1].1, "-1");
        // nothing to do once the target has them
        let target = vec![
            entry("cleanup.policy", "compact", ConfigSource::Default),
            entry("retention.ms", "-1", ConfigSource::Default),
        ];
        assert!(alterations(&source, Some(&target), &exclude()).is_empty());
    }

    #[test]
    fn kafka_defaults_equal_on_both_sides_produce_nothing() {
        let source = vec![
            entry("cleanup.policy", "delete", ConfigSource::Default),
            entry("retention.ms", "604800000", ConfigSource::Default),
            entry("max.message.bytes", "2000000", ConfigSource::Topic),
        ];
        let target = vec![
            entry("cleanup.policy", "delete", ConfigSource::Default),
            entry("retention.ms", "604800000", ConfigSource::Default),
            entry("max.message.bytes", "1048588", ConfigSource::Default),
        ];
        let a = alterations(&source, Some(&target), &exclude());
        assert_eq!(a, vec![("max.message.bytes".to_owned(), "2000000".to_owned())]);
    }

    #[test]
    fn broker_level_read_only_and_sensitive_are_never_copied() {
        let mut ro = ConfigEntry::topic("segment.ms", "1");
        ro.read_only = true;
        let mut secret = ConfigEntry::topic("some.password", "x");
        secret.sensitive = true;
        secret.value = None;
        let source = vec![entry("retention.ms", "1000", ConfigSource::Broker), ro, secret];
        assert!(alterations(&source, Some(&[]), &exclude()).is_empty());
        // a source default does not override the target's broker policy
        let source = vec![entry("retention.ms", "604800000", ConfigSource::Default)];
        let target = vec![entry("retention.ms", "86400000", ConfigSource::Broker)];
        assert!(alterations(&source, Some(&target), &exclude()).is_empty());
        let d = differences(&source, Some(&target), &exclude());
        assert_eq!(d.len(), 1);
        assert!(matches!(d[0].verdict, Verdict::Kept(why) if why.contains("broker")), "{d:?}");
        // but a value set on the source topic does
        let source = vec![entry("retention.ms", "-1", ConfigSource::Topic)];
        assert_eq!(names(&alterations(&source, Some(&target), &exclude())), ["retention.ms"]);
    }

    #[test]
    fn the_exclusion_list_is_mirrormaker_2s() {
        let e = exclude();
        for n in [
            "follower.replication.throttled.replicas",
            "leader.replication.throttled.replicas",
            "message.timestamp.difference.max.ms",
            "message.timestamp.type",
            "unclean.leader.election.enable",
            "min.insync.replicas",
        ] {
            assert!(e.is_match(n), "{n}");
        }
        for n in ["retention.ms", "cleanup.policy", "max.message.bytes", "min.insync.replicas.x"] {
            assert!(!e.is_match(n), "{n}");
        }
    }

    #[test]
    fn target_only_configs_are_listed_but_never_touched() {
        let source = vec![entry("retention.ms", "-1", ConfigSource::Topic)];
        let target = vec![
            entry("retention.ms", "5", ConfigSource::Topic),
            entry("segment.bytes", "1048576", ConfigSource::Topic),
            entry("flush.ms", "100", ConfigSource::Default),
        ];
        let a = alterations(&source, Some(&target), &exclude());
        assert_eq!(a, vec![("retention.ms".to_owned(), "-1".to_owned())], "only SETs of source configs");
        let d = differences(&source, Some(&target), &exclude());
        assert_eq!(d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["retention.ms", "segment.bytes"]);
        assert_eq!(d[1].verdict, Verdict::Kept("set only on the target"));
        assert_eq!(d[1].source, None);
    }

    #[test]
    fn no_target_answer_copies_everything_copyable() {
        let source = vec![
            entry("retention.ms", "-1", ConfigSource::Default),
            entry("min.insync.replicas", "2", ConfigSource::Topic),
        ];
        assert_eq!(names(&alterations(&source, None, &exclude())), ["retention.ms"]);
        let own = Regex::new("^(?:retention\\..*)$").unwrap();
        assert_eq!(
            names(&alterations(&source, None, &own)),
            ["min.insync.replicas"],
            "config_exclude replaces the list"
        );
    }
}
