//! `run`: mirror until SIGINT/SIGTERM (a second signal exits at once).

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{clusters, spawn_tls_reloader, Clusters};
use crate::config::Config;
use crate::engine::Engine;

/// Metadata attempts per cluster at start before `run` gives up.
const STARTUP_ATTEMPTS: u32 = 3;

pub async fn run(path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    // Bound first: a port in use is the one error, before any cluster is asked.
    let metrics: crate::metrics::http::Shared = std::sync::Arc::default();
    let endpoint = match &config.metrics {
        Some(m) => Some(crate::metrics::http::spawn(crate::metrics::http::bind(&m.listen).await?, metrics.clone())),
        None => None,
    };
    let Clusters { clusters, tls } = clusters(&config)?;
    spawn_tls_reloader(tls);
    // Fail fast on a cluster that is not there at start; outages later are ridden out.
    // A connection that breaks once (a reset on a flaky link) is not "not there": a few
    // quick retries, then the error.
    for (alias, cluster) in &clusters {
        let mut attempt = 1;
        let md = loop {
            match cluster.metadata(Some(&[])).await {
                Ok(md) => break md,
                Err(e) if e.is_retriable() && attempt < STARTUP_ATTEMPTS => {
                    warn!("cluster '{alias}': {e}; retrying ({attempt} of {STARTUP_ATTEMPTS})");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
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
        for t in crate::topicsync::residency::literal_local_only(flow) {
            warn!(flow = %flow.name, "topics names '{t}', which is local_only on cluster '{}': it is not mirrored", flow.source);
        }
    }
    let mut config_syncs = crate::topicsync::spawn(&config.flows, &clusters, &config.tuning, &rx);
    config_syncs.extend(crate::heartbeat::spawn(&config.flows, &clusters, &config.tuning, &rx));
    let rates = config.clusters.iter().filter_map(|(a, c)| Some((a.clone(), c.max_bytes_per_second?))).collect();
    let engine = Engine::new(&config.flows, &clusters, &rates, &config.tuning, &rx);
    if let Some(m) = &config.metrics {
        let _ = metrics.set(crate::metrics::Metrics::new(engine.stats(), engine.budget(), m.partition_labels));
    }
    engine.run().await;
    if let Some(h) = endpoint {
        h.abort();
    }
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
