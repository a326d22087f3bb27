//! The running process: starts every flow with its side tasks (config sync,
//! heartbeats), and on SIGHUP re-reads the config and carries out the plan
//! [`crate::reload::plan`] makes of it: removed and changed flows drain and stop, new
//! clusters are built and reached, then added and changed flows start. The other flows
//! never notice. A config that does not load, needs a restart, or names a cluster that
//! cannot be reached is logged with its error, and the running config stays.
//!
//! Each flow has its own stop signal; the process's shutdown (SIGINT/SIGTERM) reaches
//! every flow through it, so a reload in progress and a shutdown cannot leave a flow
//! running.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::build_cluster;
use crate::cluster::Cluster;
use crate::config::{Config, Flow};
use crate::engine::{Engine, FlowStats};
use crate::metrics::http::Shared;
use crate::net::tls::TlsList;
use crate::reload;

/// Metadata attempts per cluster before it counts as not there (at start and for a
/// cluster a reload adds).
const REACH_ATTEMPTS: u32 = 3;

pub struct Supervisor {
    path: PathBuf,
    bench: super::run::BenchScope,
    config: Config,
    clusters: HashMap<String, Arc<Cluster>>,
    tls: TlsList,
    engine: Engine,
    running: BTreeMap<String, Running>,
    metrics: Shared,
    shutdown: watch::Receiver<bool>,
}

struct Running {
    stop: Arc<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<FlowStats>,
}

/// Fails fast on a cluster that is not there; a connection that breaks once (a reset
/// on a flaky link) is not "not there": a few quick retries, then the error.
pub async fn reach(alias: &str, cluster: &Cluster) -> Result<(), String> {
    let mut attempt = 1;
    let md = loop {
        match cluster.metadata(Some(&[])).await {
            Ok(md) => break md,
            Err(e) if e.is_retriable() && attempt < REACH_ATTEMPTS => {
                warn!("cluster '{alias}': {e}; retrying ({attempt} of {REACH_ATTEMPTS})");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    info!("cluster '{alias}': {} broker(s), cluster id {}", md.brokers.len(), md.cluster_id.as_deref().unwrap_or("-"));
    Ok(())
}

impl Supervisor {
    /// `clusters` reached already; nothing runs until [`Supervisor::run`].
    pub fn new(
        path: PathBuf,
        bench: super::run::BenchScope,
        config: Config,
        clusters: HashMap<String, Arc<Cluster>>,
        tls: TlsList,
        metrics: Shared,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let engine = Engine::new(config.tuning.buffer_bytes, &reload::rates(&config));
        if let Some(m) = &config.metrics {
            let _ =
                metrics.set(crate::metrics::Metrics::new(Vec::new(), engine.budget(), tls.clone(), m.partition_labels));
        }
        Self { path, bench, config, clusters, tls, engine, running: BTreeMap::new(), metrics, shutdown }
    }

    /// The byte budget every flow shares.
    pub fn budget(&self) -> Arc<crate::engine::Budget> {
        self.engine.budget()
    }

    /// Runs every flow until shutdown, reloading the config on SIGHUP; returns when
    /// every flow has drained.
    pub async fn run(mut self) {
        let flows = self.config.flows.clone();
        for f in &flows {
            self.start_flow(f);
        }
        self.publish();
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut shutdown = self.shutdown.clone();
        while !*shutdown.borrow() {
            #[cfg(unix)]
            tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload().await;
                }
                r = shutdown.changed() => if r.is_err() { break },
            }
            #[cfg(not(unix))]
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let names: Vec<String> = self.running.keys().cloned().collect();
        self.stop_flows(&names).await;
    }

    fn start_flow(&mut self, flow: &Flow) {
        for t in crate::topicsync::residency::literal_local_only(flow) {
            warn!(flow = %flow.name, "topics names '{t}', which is local_only on cluster '{}': it is not mirrored", flow.source);
        }
        let (stop, rx) = watch::channel(*self.shutdown.borrow());
        let stop = Arc::new(stop);
        // The process's shutdown reaches the flow; the forwarder ends with the flow.
        let (tx, mut global) = (stop.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            loop {
                if *global.borrow_and_update() {
                    let _ = tx.send(true);
                    return;
                }
                tokio::select! {
                    r = global.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        let (source, target) = (self.clusters[&flow.source].clone(), self.clusters[&flow.target].clone());
        let tuning = &self.config.tuning;
        let started = self.engine.spawn_flow(flow, source, target, tuning, rx.clone());
        let mut tasks = vec![started.task];
        tasks.extend(crate::topicsync::spawn(std::slice::from_ref(flow), &self.clusters, tuning, &rx));
        tasks.extend(crate::heartbeat::spawn(std::slice::from_ref(flow), &self.clusters, tuning, &rx));
        self.running.insert(flow.name.clone(), Running { stop, tasks, stats: started.stats });
    }

    /// Tells the flows to stop, then waits until each has drained and its side tasks
    /// have ended.
    async fn stop_flows(&mut self, names: &[String]) {
        let stopping: Vec<Running> = names.iter().filter_map(|n| self.running.remove(n)).collect();
        for r in &stopping {
            let _ = r.stop.send(true);
        }
        for r in stopping {
            for t in r.tasks {
                if let Err(e) = t.await {
                    error!("a flow task failed: {e}");
                }
            }
        }
    }

    fn publish(&self) {
        if let Some(m) = self.metrics.get() {
            m.set_flows(self.running.values().map(|r| r.stats.clone()).collect());
            let mut clusters: Vec<(&String, &Arc<Cluster>)> = self.clusters.iter().collect();
            clusters.sort_by_key(|(alias, _)| *alias);
            m.set_clusters(clusters.into_iter().map(|(_, c)| c.clone()).collect());
        }
    }

    async fn reload(&mut self) {
        let path = self.path.display().to_string();
        info!("SIGHUP: reloading the config from {path}");
        let loaded = Config::load(&self.path).map_err(|e| e.to_string()).and_then(|mut c| match &self.bench {
            Some((flow, topic)) => super::bench::narrow(&mut c, flow, topic).map(|()| c),
            None => Ok(c),
        });
        let new = match loaded {
            Ok(c) => c,
            Err(e) => return error!("config reload failed, the running config stays: {e}"),
        };
        let plan = match reload::plan(&self.config, &new) {
            Ok(p) => p,
            Err(e) => return error!("config reload refused, the running config stays: {path}: {e}"),
        };
        if plan.is_empty() {
            return info!("config reload: nothing changed");
        }
        // Everything that can fail is done before anything stops.
        let mut built = Vec::new();
        for alias in &plan.clusters {
            let step = match build_cluster(&new, alias) {
                Ok((cluster, tls)) => reach(alias, &cluster).await.map(|()| (alias.clone(), cluster, tls)),
                Err(e) => Err(e),
            };
            match step {
                Ok(b) => built.push(b),
                Err(e) => return error!("config reload failed, the running config stays: cluster '{alias}': {e}"),
            }
        }
        for change in &plan.changes {
            info!("config reload: {change}");
        }
        self.stop_flows(&plan.stop).await;
        let mut tls = self.tls.lock().unwrap();
        for (alias, cluster, t) in built {
            tls.retain(|(a, _)| *a != alias);
            tls.extend(t.map(|t| (alias.clone(), t)));
            self.clusters.insert(alias, cluster);
        }
        self.clusters.retain(|alias, _| new.clusters.contains_key(alias));
        tls.retain(|(alias, _)| new.clusters.contains_key(alias));
        drop(tls);
        self.engine.set_rates(&reload::rates(&new));
        self.config = new;
        if !*self.shutdown.borrow() {
            let flows: Vec<Flow> = self.config.flows.iter().filter(|f| plan.start.contains(&f.name)).cloned().collect();
            for f in &flows {
                self.start_flow(f);
            }
        }
        self.publish();
        info!(
            "config reloaded: {} flow(s) running ({} stopped, {} started)",
            self.running.len(),
            plan.stop.len(),
            plan.start.len()
        );
    }
}
