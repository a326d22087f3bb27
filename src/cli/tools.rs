//! The operator tools: `status`, `offsets translate`, `offsets at`.

use std::path::Path;

use super::{load, print_json};

pub async fn status(path: &std::path::Path, json: bool) -> Result<(), String> {
    let (config, clusters) = load(path)?;
    let rows = crate::ops::status(&config, &clusters).await?;
    if json {
        return print_json(&rows);
    }
    println!(
        "{:<16} {:<32} {:>9} {:>12} {:>12} {:>10} {:>9}",
        "FLOW", "TOPIC", "PARTITION", "SOURCE END", "MIRRORED", "LAG", "LAG (s)"
    );
    for r in rows {
        let mirrored = if r.mirrored < 0 { "-".to_owned() } else { r.mirrored.to_string() };
        println!(
            "{:<16} {:<32} {:>9} {:>12} {:>12} {:>10} {:>9.1}",
            r.flow, r.topic, r.partition, r.source_end, mirrored, r.lag_records, r.lag_seconds
        );
    }
    Ok(())
}

/// `offsets translate`: where a consumer group resumes on the target of a flow.
pub async fn translate(path: &Path, flow: &str, group: &str, commit: bool, json: bool) -> Result<(), String> {
    let (config, clusters) = load(path)?;
    let rows = crate::ops::translate_group(&config, &clusters, flow, group).await?;
    if json {
        print_json(&rows)?;
    } else {
        println!("{:<32} {:>9} {:>14} {:>14}  NOTE", "SOURCE TOPIC", "PARTITION", "COMMITTED", "TARGET OFFSET");
        for r in &rows {
            let t = r.target_offset.map_or("-".to_owned(), |t| t.to_string());
            println!("{:<32} {:>9} {:>14} {:>14}  {}", r.topic, r.partition, r.committed_source_offset, t, r.note);
        }
    }
    if commit {
        let done = crate::ops::sync_group(&config, &clusters, flow, group).await?;
        eprintln!("committed {} offset(s) for group '{group}' on the target", done.len());
    }
    Ok(())
}

/// `offsets at`: the first offset at or after a time, per partition.
pub async fn offsets_at(
    path: &Path,
    cluster: &str,
    topic: &str,
    time: &str,
    reset_group: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let at = crate::ops::parse_time(time)?;
    let (config, clusters) = load(path)?;
    let Some(c) = clusters.get(cluster) else {
        let known: Vec<&String> = config.clusters.keys().collect();
        return Err(format!("no cluster '{cluster}' in the config (clusters: {known:?})"));
    };
    let rows = crate::ops::offsets_at(c, topic, at).await?;
    if json {
        print_json(&rows)?;
    } else {
        println!("{:<32} {:>9} {:>14}", "TOPIC", "PARTITION", "OFFSET");
        for r in &rows {
            println!("{:<32} {:>9} {:>14}", r.topic, r.partition, r.offset);
        }
    }
    if let Some(group) = reset_group {
        let offsets =
            rows.iter().map(|r| (crate::cluster::TopicPartition::new(&r.topic, r.partition), r.offset)).collect();
        crate::groups::commit(c, group, &offsets).await.map_err(|e| e.to_string())?;
        eprintln!("group '{group}' on cluster '{cluster}' now starts at these offsets");
    }
    Ok(())
}
