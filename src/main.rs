//! The `mirrorproxy` command line: `run` mirrors, `check` validates and probes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, FetchRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest,
};
use mirrorproxy::cluster::{Cluster, ConnectSettings};
use mirrorproxy::config::{Config, Tuning};
use mirrorproxy::engine::Engine;
use mirrorproxy::net::tls::TlsConnector;
use mirrorproxy::net::Security;
use tokio::sync::watch;
use tracing::{error, info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mirrorproxy",
    version,
    about = "Mirrors Kafka topics between clusters, forwarding record batches as bytes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mirror until SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the config and connect to every cluster.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Per flow and partition: source end offset, mirrored position, lag.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Offset tools for failover.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// Where a consumer group resumes on the target of a flow, exactly.
    Translate {
        #[arg(long)]
        config: PathBuf,
        /// The flow, as SOURCE->TARGET.
        #[arg(long)]
        flow: String,
        #[arg(long)]
        group: String,
        /// Commit the translated offsets for the group on the target (only if it has no
        /// active members there; never moves an offset backwards).
        #[arg(long)]
        commit: bool,
        #[arg(long)]
        json: bool,
    },
    /// The first offset at or after a time, per partition (`ListOffsets` by timestamp).
    At {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        topic: String,
        /// RFC 3339, e.g. 2026-11-24T21:30:00Z.
        #[arg(long)]
        time: String,
        /// Commit the result for this group (only if it has no active members).
        #[arg(long)]
        reset_group: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Run { config } = &cli.command {
        // A config that does not load is reported by `run` itself, with its reasons.
        if let Ok(c) = Config::load(config) {
            if c.tuning.worker_threads > 0 {
                builder.worker_threads(c.tuning.worker_threads);
            }
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(&config).await,
            Command::Check { config } => check(&config).await,
            Command::Status { config, json } => status(&config, json).await,
            Command::Offsets { command } => offsets(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The clusters of the config, with their TLS configurations (built once per cluster,
/// reloadable) and SASL credentials (read now from the environment or a file).
struct Clusters {
    clusters: HashMap<String, Arc<Cluster>>,
    tls: Vec<(String, Arc<TlsConnector>)>,
}

fn clusters(config: &Config) -> Result<Clusters, String> {
    let t = &config.tuning;
    let mut out = Clusters { clusters: HashMap::new(), tls: Vec::new() };
    for (alias, c) in &config.clusters {
        if let Some(w) = c.plaintext_warning() {
            warn!("cluster '{alias}': {w}");
        }
        let tls = match c.tls_files() {
            Some(files) => {
                let tls = Arc::new(TlsConnector::new(files).map_err(|e| format!("cluster '{alias}': {e}"))?);
                out.tls.push((alias.clone(), tls.clone()));
                Some(tls)
            }
            None => None,
        };
        let sasl = c.sasl_credentials().map_err(|e| format!("cluster '{alias}': {e}"))?.map(Arc::new);
        let settings = ConnectSettings {
            client_id: c.client_id.clone(),
            connect_timeout: Tuning::ms(t.connect_timeout_ms),
            request_timeout: Tuning::ms(t.request_timeout_ms),
            security: Security { tls, sasl },
        };
        out.clusters.insert(alias.clone(), Arc::new(Cluster::new(alias, c.bootstrap_list(), settings)));
    }
    Ok(out)
}

/// Reloads TLS certificates on SIGHUP and when a certificate file changes (polled).
/// Open connections keep their session; new ones use the new files. A reload that
/// fails is logged and the previous certificates stay in use.
fn spawn_tls_reloader(tls: Vec<(String, Arc<TlsConnector>)>) {
    if tls.is_empty() {
        return;
    }
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(std::time::Duration::from_secs(5));
        poll.tick().await;
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = poll.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let forced = {
                poll.tick().await;
                false
            };
            for (alias, t) in &tls {
                let result = if forced { t.reload().map(|()| true) } else { t.reload_if_changed() };
                match result {
                    Ok(true) => info!("cluster '{alias}': TLS certificates reloaded; new connections use them"),
                    Ok(false) => {}
                    Err(e) => error!("cluster '{alias}': TLS reload failed, keeping the previous certificates: {e}"),
                }
            }
        }
    });
}

async fn run(path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let Clusters { clusters, tls } = clusters(&config)?;
    spawn_tls_reloader(tls);
    // Fail fast on a cluster that is not there at start; outages later are ridden out.
    for (alias, cluster) in &clusters {
        let md = cluster.metadata(Some(&[])).await.map_err(|e| e.to_string())?;
        info!(
            "cluster '{alias}': {} broker(s), cluster id {}",
            md.brokers.len(),
            md.cluster_id.as_deref().unwrap_or("-")
        );
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: stopping");
        let _ = tx.send(true);
        wait_for_signal().await;
        error!("second signal: exiting now");
        std::process::exit(130);
    });
    for flow in &config.flows {
        for t in mirrorproxy::topicsync::residency::literal_local_only(flow) {
            warn!(flow = %flow.name, "topics names '{t}', which is local_only on cluster '{}': it is not mirrored", flow.source);
        }
    }
    let config_syncs = mirrorproxy::topicsync::spawn(&config.flows, &clusters, &config.tuning, &rx);
    Engine::new(&config.flows, &clusters, &config.tuning, &rx).run().await;
    for h in config_syncs {
        let _ = h.await;
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn check(path: &std::path::Path) -> Result<(), String> {
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
                            Ok(v) => line.push_str(&format!(" {name:?} v{v}")),
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
            .filter_map(|(n, t)| mirrorproxy::topicsync::residency::withheld(flow, n, t.is_internal).map(|w| (n, w)))
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
    flow: &mirrorproxy::config::Flow,
    clusters: &HashMap<String, Arc<Cluster>>,
    name: &str,
    problems: &mut Vec<String>,
) {
    use mirrorproxy::topicsync::configs::Verdict;
    match mirrorproxy::topicsync::differences(flow, &clusters[&flow.source], &clusters[&flow.target], name).await {
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

/// Loads the config and connects nothing yet: the clusters for the operator commands.
fn load(path: &std::path::Path) -> Result<(Config, HashMap<String, Arc<Cluster>>), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let clusters = clusters(&config)?.clusters;
    Ok((config, clusters))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    Ok(())
}

async fn status(path: &std::path::Path, json: bool) -> Result<(), String> {
    let (config, clusters) = load(path)?;
    let rows = mirrorproxy::ops::status(&config, &clusters).await?;
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

async fn offsets(command: OffsetsCommand) -> Result<(), String> {
    match command {
        OffsetsCommand::Translate { config, flow, group, commit, json } => {
            let (config, clusters) = load(&config)?;
            let rows = mirrorproxy::ops::translate_group(&config, &clusters, &flow, &group).await?;
            if json {
                print_json(&rows)?;
            } else {
                println!("{:<32} {:>9} {:>14} {:>14}  NOTE", "SOURCE TOPIC", "PARTITION", "COMMITTED", "TARGET OFFSET");
                for r in &rows {
                    let t = r.target_offset.map_or("-".to_owned(), |t| t.to_string());
                    println!(
                        "{:<32} {:>9} {:>14} {:>14}  {}",
                        r.topic, r.partition, r.committed_source_offset, t, r.note
                    );
                }
            }
            if commit {
                let done = mirrorproxy::ops::sync_group(&config, &clusters, &flow, &group).await?;
                eprintln!("committed {} offset(s) for group '{group}' on the target", done.len());
            }
            Ok(())
        }
        OffsetsCommand::At { config, cluster, topic, time, reset_group, json } => {
            let at = mirrorproxy::ops::parse_time(&time)?;
            let (config, clusters) = load(&config)?;
            let Some(c) = clusters.get(&cluster) else {
                let known: Vec<&String> = config.clusters.keys().collect();
                return Err(format!("no cluster '{cluster}' in the config (clusters: {known:?})"));
            };
            let rows = mirrorproxy::ops::offsets_at(c, &topic, at).await?;
            if json {
                print_json(&rows)?;
            } else {
                println!("{:<32} {:>9} {:>14}", "TOPIC", "PARTITION", "OFFSET");
                for r in &rows {
                    println!("{:<32} {:>9} {:>14}", r.topic, r.partition, r.offset);
                }
            }
            if let Some(group) = reset_group {
                let offsets = rows
                    .iter()
                    .map(|r| (mirrorproxy::cluster::TopicPartition::new(&r.topic, r.partition), r.offset))
                    .collect();
                mirrorproxy::groups::commit(c, &group, &offsets).await.map_err(|e| e.to_string())?;
                eprintln!("group '{group}' on cluster '{cluster}' now starts at these offsets");
            }
            Ok(())
        }
    }
}
