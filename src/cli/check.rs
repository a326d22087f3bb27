//! `check`: validates the config, connects to every cluster, and shows per flow what
//! would be mirrored, how loops are prevented, which configs differ and which topics
//! are withheld.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, FetchRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest,
};

use super::clusters;
use crate::cluster::Cluster;
use crate::config::Config;

pub async fn check(path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    println!("config {}: OK ({} clusters, {} flows)", path.display(), config.clusters.len(), config.flows.len());
    let clusters = clusters(&config)?.clusters;
    let mut problems = Vec::new();
    let mut metadata = HashMap::new();
    for (alias, cluster) in &clusters {
        match cluster.metadata(None).await {
            Ok(md) => {
                let mut brokers: Vec<_> = md.brokers.iter().collect();
                brokers.sort();
                println!("cluster '{alias}': cluster id {}", md.cluster_id.as_deref().unwrap_or("-"));
                for (id, addr) in brokers {
                    println!("  broker {id} at {addr}");
                }
                if let Ok(conn) = cluster.any_broker().await {
                    let mut line = String::from("  API versions used:");
                    for (name, v) in [
                        (ApiKey::Metadata, conn.version_for::<MetadataRequest>()),
                        (ApiKey::Fetch, conn.version_for::<FetchRequest>()),
                        (ApiKey::Produce, conn.version_for::<ProduceRequest>()),
                        (ApiKey::ListOffsets, conn.version_for::<ListOffsetsRequest>()),
                        (ApiKey::CreateTopics, conn.version_for::<CreateTopicsRequest>()),
                        (ApiKey::InitProducerId, conn.version_for::<InitProducerIdRequest>()),
                    ] {
                        match v {
                            Ok(v) => {
                                use std::fmt::Write as _;
                                let _ = write!(line, " {name:?} v{v}");
                            }
                            Err(e) => problems.push(e.to_string()),
                        }
                    }
                    println!("{line}");
                }
                metadata.insert(alias.clone(), md);
            }
            Err(e) => {
                println!("cluster '{alias}': FAILED");
                problems.push(e.to_string());
            }
        }
    }
    for flow in &config.flows {
        let Some(src) = metadata.get(&flow.source) else { continue };
        let mut topics: Vec<_> = src.topics.iter().filter(|(n, t)| flow.mirrors(n, t.is_internal)).collect();
        topics.sort_by_key(|(n, _)| n.as_str());
        println!("flow {}: {} matching source topic(s)", flow.name, topics.len());
        println!("  loops prevented by: {}", flow.loop_prevention());
        for (name, t) in topics {
            let target_name = flow.target_topic(name);
            let target_state = match metadata.get(&flow.target).and_then(|m| m.topics.get(&target_name)) {
                None => "will be created".to_string(),
                Some(tt) if tt.partitions.len() < t.partitions.len() => {
                    problems.push(format!(
                        "flow {}: target topic '{target_name}' has {} partitions, source '{name}' has {}",
                        flow.name,
                        tt.partitions.len(),
                        t.partitions.len()
                    ));
                    format!("has only {} partitions (PROBLEM)", tt.partitions.len())
                }
                Some(tt) => format!("exists with {} partitions", tt.partitions.len()),
            };
            println!("  {name} ({} partitions) -> {target_name}: {target_state}", t.partitions.len());
            if target_state.starts_with("exists") {
                check_configs(flow, &clusters, name, &mut problems).await;
            }
        }
        let mut withheld: Vec<(&String, String)> = src
            .topics
            .iter()
            .filter_map(|(n, t)| crate::topicsync::residency::withheld(flow, n, t.is_internal).map(|w| (n, w)))
            .collect();
        withheld.sort();
        for (name, why) in withheld {
            println!("  {name}: withheld, {why}");
        }
    }
    if problems.is_empty() {
        println!("check passed");
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// `check`: the configs of a mirrored topic that differ between source and target.
async fn check_configs(
    flow: &crate::config::Flow,
    clusters: &HashMap<String, Arc<Cluster>>,
    name: &str,
    problems: &mut Vec<String>,
) {
    use crate::topicsync::configs::Verdict;
    match crate::topicsync::differences(flow, &clusters[&flow.source], &clusters[&flow.target], name).await {
        Ok(diffs) => {
            for d in diffs {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not described)".into());
                let what = match d.verdict {
                    Verdict::Copy if flow.sync_topic_configs => "synced to the source value".to_owned(),
                    Verdict::Copy => "not synced (sync_topic_configs = false)".to_owned(),
                    Verdict::Kept(why) => format!("kept: {why}"),
                };
                println!("    config {}: source {} target {} ({what})", d.name, show(&d.source), show(&d.target));
            }
        }
        Err(e) => problems.push(format!("flow {}: comparing the configs of '{name}': {e}", flow.name)),
    }
}
