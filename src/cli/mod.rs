//! The commands behind the CLI, one module each; `main.rs` only parses arguments.
//! Each returns `Err` with one message that names what failed and where.

mod bench;
mod bench_report;
mod check;
pub mod reclaim;
mod run;
mod supervisor;
mod tools;

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{error, info, warn};

pub use bench::{bench, narrow as narrow_for_bench, BenchArgs};
pub use check::check;
pub use run::run;
pub use tools::{offsets_at, status, translate};

use crate::cluster::{Cluster, ConnectSettings};
use crate::config::{Config, Tuning};
use crate::net::tls::{TlsConnector, TlsList};
use crate::net::Security;

/// The clusters of the config, with their TLS configurations (built once per cluster,
/// reloadable) and SASL credentials (read now from the environment or a file).
pub struct Clusters {
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub tls: Vec<(String, Arc<TlsConnector>)>,
}

pub fn clusters(config: &Config) -> Result<Clusters, String> {
    let mut out = Clusters { clusters: HashMap::new(), tls: Vec::new() };
    for alias in config.clusters.keys() {
        let (cluster, tls) = build_cluster(config, alias)?;
        out.clusters.insert(alias.clone(), cluster);
        out.tls.extend(tls.map(|t| (alias.clone(), t)));
    }
    Ok(out)
}

/// One cluster of the config: its TLS files are read and its SASL credentials looked up
/// now; nothing is connected yet.
pub fn build_cluster(config: &Config, alias: &str) -> Result<(Arc<Cluster>, Option<Arc<TlsConnector>>), String> {
    let t = &config.tuning;
    let c = &config.clusters[alias];
    if let Some(w) = c.plaintext_warning() {
        warn!("cluster '{alias}': {w}");
    }
    let tls = match c.tls_files() {
        Some(files) => Some(Arc::new(TlsConnector::new(files).map_err(|e| format!("cluster '{alias}': {e}"))?)),
        None => None,
    };
    let sasl = c.sasl_credentials().map_err(|e| format!("cluster '{alias}': {e}"))?.map(Arc::new);
    let settings = ConnectSettings {
        client_id: c.client_id.clone(),
        connect_timeout: Tuning::ms(t.connect_timeout_ms),
        request_timeout: Tuning::ms(t.request_timeout_ms),
        security: Security { tls: tls.clone(), sasl },
    };
    Ok((Arc::new(Cluster::new(alias, c.bootstrap_list(), settings)), tls))
}

/// Reloads TLS certificates on SIGHUP and when a certificate file changes (polled).
/// Open connections keep their session; new ones use the new files. A reload that
/// fails is logged and the previous certificates stay in use.
pub fn spawn_tls_reloader(tls: TlsList) {
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
            let list = tls.lock().unwrap().clone();
            for (alias, t) in &list {
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

/// Loads the config and connects nothing yet: the clusters for the operator commands.
pub fn load(path: &std::path::Path) -> Result<(Config, HashMap<String, Arc<Cluster>>), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let clusters = clusters(&config)?.clusters;
    Ok((config, clusters))
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    Ok(())
}
