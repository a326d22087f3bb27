//! `run`: mirror until SIGINT/SIGTERM (a second signal exits at once); SIGHUP reloads
//! the config ([`super::supervisor`]).

use tokio::sync::watch;
use tracing::{error, info};

use super::supervisor::{reach, Supervisor};
use super::{clusters, spawn_tls_reloader, Clusters};
use crate::config::Config;

/// `bench`: (flow, topic) for the mirror process `mirrorproxy bench` starts, which runs
/// that flow for that topic only ([`super::bench::narrow`]), also after a reload.
pub type BenchScope = Option<(String, String)>;

/// `collect` returns the allocator's freed pages to the kernel, for the memory watcher
/// ([`super::reclaim`]).
pub async fn run(path: &std::path::Path, bench: BenchScope, collect: fn()) -> Result<(), String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some((flow, topic)) = &bench {
        super::bench::narrow(&mut config, flow, topic)?;
    }
    // Bound first: a port in use is the one error, before any cluster is asked.
    let metrics: crate::metrics::http::Shared = std::sync::Arc::default();
    let endpoint = match &config.metrics {
        Some(m) => Some(crate::metrics::http::spawn(crate::metrics::http::bind(&m.listen).await?, metrics.clone())),
        None => None,
    };
    let Clusters { clusters, tls } = clusters(&config)?;
    let tls = std::sync::Arc::new(std::sync::Mutex::new(tls));
    spawn_tls_reloader(tls.clone());
    // Fail fast on a cluster that is not there at start; outages later are ridden out.
    for (alias, cluster) in &clusters {
        reach(alias, cluster).await?;
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
    let supervisor = Supervisor::new(path.to_owned(), bench, config, clusters, tls, metrics, rx);
    super::reclaim::spawn(supervisor.budget(), collect);
    supervisor.run().await;
    if let Some(h) = endpoint {
        h.abort();
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
