//! Live reload (SIGHUP): what a new config changes against the running one, as a plan
//! the supervisor ([`crate::cli`] `run`) carries out. Pure: no I/O here.
//!
//! Why this shape: a flow's exactly-once state (positions, producer sequences,
//! staged transactions) lives in its actor, and the only safe way to hand it to a new
//! configuration is the way a restart does: the flow drains (every in-flight Produce
//! answered), writes its final checkpoint, and a new flow resumes from the checkpoints
//! with tail reconciliation. So a changed flow is stopped and started again, and every
//! other flow runs on untouched. Nothing is lost or written twice, for the same reasons
//! that hold across a restart of the process (README "Exactly once").
//!
//! What needs a process restart is refused as a whole, naming the keys, and the
//! running config stays: `tuning.buffer_bytes` (the budget every flow holds bytes of),
//! `tuning.worker_threads` (the runtime), `tuning.checkpoint_topic` and
//! `tuning.registry_topic` (moving them live would leave flows without their
//! positions and loop-prevention records) and the `[metrics]` table (the listener).
//! Applying half of a config would leave the file and the running process telling
//! different stories.
//!
//! A change of `max_bytes_per_second` from one rate to another applies in place; adding
//! or removing the limit restarts the flows that read the cluster. Any other change to
//! a cluster's table (bootstrap, TLS, SASL, client id, provenance id) rebuilds its
//! connections and restarts the flows that use it. Any other tuning change restarts
//! every flow. MirrorMaker 2 on Kafka Connect does the same at the granularity of a
//! connector: a changed connector config restarts that connector's tasks.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use crate::config::{ClusterConfig, Config, Flow, Tuning};

/// What a reload does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Flows to stop: removed, or changed (started again from `start`).
    pub stop: Vec<String>,
    /// Flows to start: added or changed, in config order.
    pub start: Vec<String>,
    /// Clusters to (re)build: new, or with changed connection settings.
    pub clusters: Vec<String>,
    /// One line per change, for the log ("flow a->b: topics changed").
    pub changes: Vec<String>,
}

impl Plan {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty() && self.clusters.is_empty() && self.changes.is_empty()
    }
}

/// `max_bytes_per_second` of the clusters that have one, by alias.
#[must_use]
pub fn rates(config: &Config) -> HashMap<String, u64> {
    config.clusters.iter().filter_map(|(a, c)| Some((a.clone(), c.max_bytes_per_second?))).collect()
}

/// The plan from `old` (running) to `new`; Err names what needs a restart.
pub fn plan(old: &Config, new: &Config) -> Result<Plan, String> {
    refuse_restart_only(old, new)?;
    let mut plan = Plan::default();
    // Clusters: rebuilt when their connection settings changed; rates apply in place.
    let mut restart_readers: Vec<(String, String)> = Vec::new();
    for (alias, c) in &new.clusters {
        match old.clusters.get(alias) {
            None => plan.clusters.push(alias.clone()),
            Some(o) if fingerprint(&connection(o)) != fingerprint(&connection(c)) => {
                plan.clusters.push(alias.clone());
                plan.changes.push(format!("cluster '{alias}': connection settings changed"));
            }
            Some(o) => match (o.max_bytes_per_second, c.max_bytes_per_second) {
                (Some(a), Some(b)) if a != b => {
                    plan.changes.push(format!("cluster '{alias}': max_bytes_per_second {a} -> {b}, applied in place"));
                }
                (None, Some(_)) => restart_readers.push((alias.clone(), "max_bytes_per_second added".into())),
                (Some(_), None) => restart_readers.push((alias.clone(), "max_bytes_per_second removed".into())),
                _ => {}
            },
        }
    }
    for alias in old.clusters.keys().filter(|a| !new.clusters.contains_key(*a)) {
        plan.changes.push(format!("cluster '{alias}': removed"));
    }
    let tuning_changed = fingerprint(&old.tuning) != fingerprint(&new.tuning);
    if tuning_changed {
        plan.changes.push(format!("tuning changed ({}): every flow restarts", tuning_keys(&old.tuning, &new.tuning)));
    }
    let old_flows: BTreeMap<&str, &Flow> = old.flows.iter().map(|f| (f.name.as_str(), f)).collect();
    let new_names: Vec<&str> = new.flows.iter().map(|f| f.name.as_str()).collect();
    for f in &old.flows {
        if !new_names.contains(&f.name.as_str()) {
            plan.stop.push(f.name.clone());
            plan.changes.push(format!("flow {}: removed", f.name));
        }
    }
    for f in &new.flows {
        let Some(o) = old_flows.get(f.name.as_str()) else {
            plan.start.push(f.name.clone());
            plan.changes.push(format!("flow {}: added", f.name));
            continue;
        };
        let mut why = flow_changes(o, f);
        for alias in [&f.source, &f.target] {
            if plan.clusters.contains(alias) {
                why.push(format!("cluster '{alias}' rebuilt"));
            }
        }
        if let Some((_, w)) = restart_readers.iter().find(|(a, _)| *a == f.source) {
            why.push(w.clone());
        }
        if tuning_changed {
            why.push("tuning".into());
        }
        if !why.is_empty() {
            plan.stop.push(f.name.clone());
            plan.start.push(f.name.clone());
            plan.changes.push(format!("flow {}: restarted ({})", f.name, why.join(", ")));
        }
    }
    Ok(plan)
}

fn refuse_restart_only(old: &Config, new: &Config) -> Result<(), String> {
    let (o, n) = (&old.tuning, &new.tuning);
    let mut keys = Vec::new();
    let mut check = |key: &str, a: String, b: String| {
        if a != b {
            keys.push(format!("{key} ({a} -> {b})"));
        }
    };
    check("tuning.buffer_bytes", o.buffer_bytes.to_string(), n.buffer_bytes.to_string());
    check("tuning.worker_threads", o.worker_threads.to_string(), n.worker_threads.to_string());
    check("tuning.checkpoint_topic", o.checkpoint_topic.clone(), n.checkpoint_topic.clone());
    check("tuning.registry_topic", o.registry_topic.clone(), n.registry_topic.clone());
    check("[metrics]", fingerprint(&old.metrics), fingerprint(&new.metrics));
    if keys.is_empty() {
        Ok(())
    } else {
        Err(format!("{} cannot change while running (restart the process to apply)", keys.join(", ")))
    }
}

/// A cluster's settings that its connections are built from: everything but the rate.
fn connection(c: &ClusterConfig) -> ClusterConfig {
    ClusterConfig { max_bytes_per_second: None, ..c.clone() }
}

/// Values compared by their full `Debug` text: a field added to a config struct is
/// compared without being listed here (regexes have no `PartialEq`; their `Debug` is
/// their pattern).
fn fingerprint(v: &impl Debug) -> String {
    format!("{v:?}")
}

/// Names of the flow's settings that differ; "settings" when only a field not named
/// here did (so a change is never missed).
fn flow_changes(a: &Flow, b: &Flow) -> Vec<String> {
    let mut why = Vec::new();
    macro_rules! fields {
        ($($f:ident),*) => { $( if fingerprint(&a.$f) != fingerprint(&b.$f) { why.push(stringify!($f).to_owned()); } )* };
    }
    fields!(topics, exclude, rename, start, provenance, loop_guard, source_id, target_id, groups, groups_exclude);
    fields!(rebatch, on_data_loss, sync_topic_configs, config_exclude, sync_acls, local_only, heartbeat_topic);
    if why.is_empty() && fingerprint(a) != fingerprint(b) {
        why.push("settings".into());
    }
    why
}

/// The tuning keys that differ, by their TOML names (from the `Debug` text, which
/// names every field).
fn tuning_keys(a: &Tuning, b: &Tuning) -> String {
    let fields = |t: &Tuning| -> Vec<String> {
        let text = format!("{t:?}");
        let inner = text.trim_start_matches("Tuning {").trim_end_matches('}');
        inner.split(", ").map(str::trim).map(str::to_owned).collect()
    };
    let (fa, fb) = (fields(a), fields(b));
    let changed: Vec<String> =
        fb.iter().filter(|f| !fa.contains(f)).filter_map(|f| f.split_once(": ").map(|(k, _)| k.to_owned())).collect();
    if changed.is_empty() {
        "settings".into()
    } else {
        changed.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_tuning: &str, flows: &str, edge_extra: &str) -> Config {
        let text = format!(
            "[clusters.edge]\nbootstrap = \"127.0.0.1:9092\"\n{edge_extra}\n\
             [clusters.cloud]\nbootstrap = \"127.0.0.1:9093\"\n\
             {flows}\n[tuning]\n{extra_tuning}\n"
        );
        Config::parse(&text, "test.toml").unwrap()
    }

    const ONE: &str = "[[flows]]\nsource = \"edge\"\ntarget = \"cloud\"\ntopics = \"^orders$\"\n";
    const TWO: &str = "[[flows]]\nsource = \"edge\"\ntarget = \"cloud\"\ntopics = \"^orders$\"\n\
                       [[flows]]\nsource = \"cloud\"\ntarget = \"edge\"\ntopics = \"^back$\"\n";

    #[test]
    fn same_config_is_an_empty_plan() {
        let c = config("", TWO, "");
        assert!(plan(&c, &c.clone()).unwrap().is_empty());
    }

    #[test]
    fn added_removed_and_changed_flows() {
        let one = config("", ONE, "");
        let two = config("", TWO, "");
        let p = plan(&one, &two).unwrap();
        assert_eq!((p.stop.as_slice(), p.start.as_slice()), (&[][..], &["cloud->edge".to_owned()][..]));
        let p = plan(&two, &one).unwrap();
        assert_eq!((p.stop.as_slice(), p.start.as_slice()), (&["cloud->edge".to_owned()][..], &[][..]));
        let regex = config("", &ONE.replace("^orders$", "^(orders|pay)$"), "");
        let p = plan(&one, &regex).unwrap();
        assert_eq!(p.stop, ["edge->cloud"]);
        assert_eq!(p.start, ["edge->cloud"]);
        assert_eq!(p.changes, ["flow edge->cloud: restarted (topics)"]);
    }

    #[test]
    fn cluster_changes_restart_only_their_flows() {
        let a = config("", TWO, "");
        let b = config("", TWO, "client_id = \"other\"");
        let p = plan(&a, &b).unwrap();
        assert_eq!(p.clusters, ["edge"]);
        assert_eq!(p.stop, ["edge->cloud", "cloud->edge"], "both flows use edge");
        // A rate change is in place; adding a limit restarts the flows reading the cluster.
        let r1 = config("", TWO, "max_bytes_per_second = 1000000");
        let r2 = config("", TWO, "max_bytes_per_second = 2000000");
        let p = plan(&r1, &r2).unwrap();
        assert!(p.stop.is_empty() && p.clusters.is_empty(), "{p:?}");
        assert_eq!(p.changes, ["cluster 'edge': max_bytes_per_second 1000000 -> 2000000, applied in place"]);
        let p = plan(&a, &r1).unwrap();
        assert_eq!(p.stop, ["edge->cloud"], "only the flow that reads edge");
    }

    #[test]
    fn tuning_restarts_every_flow_and_names_the_keys() {
        let a = config("", TWO, "");
        let b = config("fetch_max_wait_ms = 77", TWO, "");
        let p = plan(&a, &b).unwrap();
        assert_eq!(p.stop.len(), 2);
        assert_eq!(p.changes[0], "tuning changed (fetch_max_wait_ms): every flow restarts");
    }

    #[test]
    fn restart_only_keys_refuse_the_whole_reload() {
        let a = config("", ONE, "");
        let b = config("buffer_bytes = 536870912\ncheckpoint_topic = \"elsewhere\"", TWO, "");
        let e = plan(&a, &b).unwrap_err();
        assert!(e.contains("tuning.buffer_bytes (268435456 -> 536870912)"), "{e}");
        assert!(e.contains("tuning.checkpoint_topic (mirrorproxy.checkpoints -> elsewhere)"), "{e}");
        assert!(e.contains("restart the process"), "{e}");
    }
}
