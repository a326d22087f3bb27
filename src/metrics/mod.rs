//! What operators watch a mirror with: Prometheus metrics, liveness and readiness,
//! served over HTTP when the config has a `[metrics]` table ([`http`]).
//!
//! Why: the standby's lag is the data lost at a failover, so it must be on the
//! dashboards and alerts people already have. MirrorMaker 2 publishes
//! `replication-latency-ms`, `record-age-ms`, `byte-rate` and `checkpoint-latency-ms`
//! through JMX; the README maps each of ours to its counterpart.
//!
//! The names below are a contract (README "Metrics"). Labels: `flow` (`src->dst`), and
//! `topic` and `partition` on per-partition series unless `partition_labels = false`,
//! which sums them per flow (10,000 partitions would otherwise be 10,000 series per
//! metric). The text is rendered at scrape time from what the flows publish
//! ([`crate::engine::FlowStats`]): nothing is done on the hot path for a scrape, and
//! a scrape never waits for a flow.

pub mod http;
mod text;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Budget, FlowStats, Side, LATENCY_BUCKETS};
use crate::net::tls::TlsList;
use text::{Family, Labels};

/// A flow whose loop has not published for this long is not healthy.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// The engine's flows and budget, as the endpoint renders them. The flows are
/// replaced when a config reload starts or stops some ([`Metrics::set_flows`]); a
/// restarted flow's counters start again from 0, which `rate()` and `increase()`
/// take as a counter reset.
pub struct Metrics {
    flows: std::sync::RwLock<Vec<Arc<FlowStats>>>,
    budget: Arc<Budget>,
    tls: TlsList,
    clusters: std::sync::RwLock<Vec<Arc<crate::cluster::Cluster>>>,
    partition_labels: bool,
}

impl Metrics {
    #[must_use]
    pub fn new(flows: Vec<Arc<FlowStats>>, budget: Arc<Budget>, tls: TlsList, partition_labels: bool) -> Self {
        Self {
            flows: std::sync::RwLock::new(flows),
            budget,
            tls,
            clusters: std::sync::RwLock::default(),
            partition_labels,
        }
    }

    /// The flows now running.
    pub fn set_flows(&self, flows: Vec<Arc<FlowStats>>) {
        *self.flows.write().unwrap() = flows;
    }

    /// The clusters in use (their broker connections are reported).
    pub fn set_clusters(&self, clusters: Vec<Arc<crate::cluster::Cluster>>) {
        *self.clusters.write().unwrap() = clusters;
    }

    fn flows(&self) -> Vec<Arc<FlowStats>> {
        self.flows.read().unwrap().clone()
    }

    /// `/health`: Err names a flow whose event loop stopped turning.
    pub fn health(&self) -> Result<(), String> {
        let stalled: Vec<String> = self
            .flows()
            .iter()
            .filter_map(|f| {
                let at = f.health.lock().unwrap().loop_at;
                let idle = at.elapsed();
                (idle > STALL_AFTER)
                    .then(|| format!("flow {}: event loop idle for {:.0} s", f.flow, idle.as_secs_f64()))
            })
            .collect();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled.join("\n"))
        }
    }

    /// `/ready`: every flow mirroring; Err says, per flow, why not.
    pub fn ready(&self) -> Result<(), String> {
        let not: Vec<String> = self
            .flows()
            .iter()
            .filter_map(|f| f.health.lock().unwrap().ready.clone().err().map(|why| format!("flow {}: {why}", f.flow)))
            .collect();
        if not.is_empty() {
            Ok(())
        } else {
            Err(not.join("\n"))
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_partitions(&mut out);
        self.render_flows(&mut out);
        Family::write_gauge(
            &mut out,
            "mirrorproxy_budget_bytes_in_use",
            "Fetched bytes not yet acknowledged by a target (the memory budget in use).",
            self.budget.used() as f64,
        );
        Family::write_gauge(
            &mut out,
            "mirrorproxy_budget_bytes",
            "The memory budget, tuning.buffer_bytes.",
            self.budget.limit() as f64,
        );
        Family::write_gauge(
            &mut out,
            "mirrorproxy_budget_bytes_withheld",
            "Bytes of the budget not lent to Fetches because memory outside it is resident (the memory watcher).",
            self.budget.withheld() as f64,
        );
        self.render_tls(&mut out);
        self.render_brokers(&mut out);
        out
    }

    /// Per cluster and broker address connected to: up or not, requests waiting.
    fn render_brokers(&self, out: &mut String) {
        let mut up = Family::new(
            "mirrorproxy_broker_connected",
            "gauge",
            "1 while the connection to the broker is open and usable, 0 once it broke (until reopened).",
        );
        let mut waiting = Family::new(
            "mirrorproxy_broker_requests_in_flight",
            "gauge",
            "Requests sent to the broker and not yet answered, over every flow.",
        );
        for c in self.clusters.read().unwrap().iter() {
            for s in c.connection_states() {
                let l = Labels::new().with("cluster", c.alias()).with("broker", &s.addr);
                up.sample(&l, if s.connected { 1.0 } else { 0.0 });
                waiting.sample(&l, s.in_flight as f64);
            }
        }
        up.write(out);
        waiting.write(out);
    }

    /// Per cluster with TLS: seconds until its client certificate, CA bundle and the
    /// brokers' certificates expire (negative once expired).
    fn render_tls(&self, out: &mut String) {
        let mut f = Family::new(
            "mirrorproxy_tls_certificate_expiry_seconds",
            "gauge",
            "Seconds until a certificate in use expires (negative: expired), by cluster and certificate (client, ca, broker).",
        );
        let now = std::time::SystemTime::now();
        let until = |t: std::time::SystemTime| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        for (alias, t) in self.tls.lock().unwrap().iter() {
            let e = t.expiry();
            for (which, at) in [("client", e.client), ("ca", e.ca), ("broker", e.broker)] {
                if let Some(at) = at {
                    f.sample(&Labels::new().with("cluster", alias).with("certificate", which), until(at).round());
                }
            }
        }
        f.write(out);
    }

    fn render_partitions(&self, out: &mut String) {
        let mut records = Family::new("mirrorproxy_records_total", "counter", "Data records written to the target.");
        let mut bytes = Family::new("mirrorproxy_bytes_total", "counter", "Record batch bytes written to the target.");
        let mut lag = Family::new(
            "mirrorproxy_lag_records",
            "gauge",
            "Records on the source not yet on the target (never negative).",
        );
        let mut lag_s = Family::new(
            "mirrorproxy_lag_seconds",
            "gauge",
            "Age of the newest record on the target while there is lag; 0 when caught up.",
        );
        for flow in &self.flows() {
            let parts = flow.partitions();
            let base = Labels::new().with("flow", &flow.flow);
            if self.partition_labels {
                for p in parts.iter() {
                    let l = base.clone().with("topic", &p.topic).with("partition", &p.partition.to_string());
                    records.sample(&l, p.records as f64);
                    bytes.sample(&l, p.bytes as f64);
                    lag.sample(&l, p.lag_records as f64);
                    lag_s.sample(&l, p.lag_seconds);
                }
            } else {
                // The flow's own counters are live; the partition snapshot is a second old.
                records.sample(&base, flow.records.load(Ordering::Relaxed) as f64);
                bytes.sample(&base, flow.bytes.load(Ordering::Relaxed) as f64);
                lag.sample(&base, parts.iter().map(|p| p.lag_records).sum::<i64>() as f64);
                lag_s.sample(&base, parts.iter().map(|p| p.lag_seconds).fold(0.0, f64::max));
            }
        }
        for f in [records, bytes, lag, lag_s] {
            f.write(out);
        }
    }

    fn render_flows(&self, out: &mut String) {
        let mut stopped = Family::new(
            "mirrorproxy_partitions_stopped",
            "gauge",
            "Partitions stopped by a problem retrying cannot fix.",
        );
        let mut partitions = Family::new("mirrorproxy_partitions", "gauge", "Partitions the flow mirrors.");
        let mut errors =
            Family::new("mirrorproxy_errors_total", "counter", "Errors by side (source/target) and Kafka error name.");
        let mut skipped = Family::new("mirrorproxy_skipped_records_total", "counter", "Source records not written, by reason: provenance (already on the target's path) or aborted (transaction).");
        let mut throttled = Family::new(
            "mirrorproxy_throttled_seconds_total",
            "counter",
            "Seconds fetches waited for the source cluster's max_bytes_per_second.",
        );
        let mut heartbeat = Family::new(
            "mirrorproxy_heartbeat_age_seconds",
            "gauge",
            "Age of the newest heartbeat on the target (since the flow started while none arrived).",
        );
        let mut lost = Family::new(
            "mirrorproxy_lost_offsets_total",
            "counter",
            "Source offsets lost before they were mirrored (retention overtook the mirror).",
        );
        let mut checkpoint = Family::new(
            "mirrorproxy_checkpoint_age_seconds",
            "gauge",
            "Seconds since the checkpoints were last current (written, or nothing to write).",
        );
        let mut groups = Family::new(
            "mirrorproxy_group_syncs_total",
            "counter",
            "Group offset syncs per group and round, by result.",
        );
        let mut in_flight = Family::new(
            "mirrorproxy_requests_in_flight",
            "gauge",
            "Requests in flight: Fetch to the source, Produce to the target.",
        );
        let mut up = Family::new(
            "mirrorproxy_cluster_up",
            "gauge",
            "1 while the cluster on that side answers, 0 while it is failing.",
        );
        let mut ready =
            Family::new("mirrorproxy_flow_ready", "gauge", "1 while the flow is mirroring (what /ready reports).");
        let mut latency = Family::new(
            "mirrorproxy_replication_latency_seconds",
            "histogram",
            "Per target acknowledgement: from the newest acknowledged record's timestamp to the acknowledgement.",
        );
        for flow in &self.flows() {
            let base = Labels::new().with("flow", &flow.flow);
            {
                let parts = flow.partitions();
                stopped.sample(&base, parts.iter().filter(|p| p.stopped).count() as f64);
                partitions.sample(&base, parts.len() as f64);
            }
            for ((side, name), n) in flow.errors.lock().unwrap().iter() {
                errors.sample(&base.clone().with("side", side_name(*side)).with("error", name), *n as f64);
            }
            skipped.sample(&base.clone().with("reason", "provenance"), load(&flow.provenance_skipped_records));
            skipped.sample(&base.clone().with("reason", "aborted"), load(&flow.aborted_records));
            lost.sample(&base, load(&flow.lost_offsets));
            if flow.heartbeats {
                let newest = flow.heartbeat_ms.load(Ordering::Relaxed);
                heartbeat.sample(&base, (crate::checkpoint::now_ms() - newest).max(0) as f64 / 1e3);
            }
            throttled.sample(&base, load(&flow.throttled_us) / 1e6);
            groups.sample(&base.clone().with("result", "ok"), load(&flow.group_syncs_ok));
            groups.sample(&base.clone().with("result", "error"), load(&flow.group_syncs_failed));
            let h = flow.health.lock().unwrap().clone();
            if let Some(at) = h.checkpoint_at {
                checkpoint.sample(&base, Instant::now().duration_since(at).as_secs_f64());
            }
            in_flight.sample(&base.clone().with("side", "source"), h.fetches_in_flight as f64);
            in_flight.sample(&base.clone().with("side", "target"), h.produces_in_flight as f64);
            up.sample(&base.clone().with("side", "source"), f64::from(u8::from(h.source_up)));
            up.sample(&base.clone().with("side", "target"), f64::from(u8::from(h.target_up)));
            ready.sample(&base, f64::from(u8::from(h.ready.is_ok())));
            let (cumulative, sum, count) = flow.latency.read();
            for (i, n) in cumulative.iter().enumerate() {
                let le = LATENCY_BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), ToString::to_string);
                latency.sample_suffixed("_bucket", &base.clone().with("le", &le), *n as f64);
            }
            latency.sample_suffixed("_sum", &base, sum);
            latency.sample_suffixed("_count", &base, count as f64);
        }
        for f in [
            stopped, partitions, errors, skipped, heartbeat, lost, throttled, checkpoint, groups, in_flight, up, ready,
            latency,
        ] {
            f.write(out);
        }
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::Source => "source",
        Side::Target => "target",
    }
}
