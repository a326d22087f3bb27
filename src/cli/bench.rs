//! `mirrorproxy bench`: measures the user's own replication link through one of their
//! flows, with their clusters, TLS, SASL and tuning.
//!
//! It creates a topic `mirrorproxy.bench.<ms>` on the flow's source, starts a mirror
//! process for that flow and topic only (this binary's `run`, so the CPU and memory
//! measured are the proxy's alone, not the load generator's), writes a synthetic load
//! (record size, count, codec, batch size, and a rate or as fast as the link takes it),
//! and reads the target topic back. Each record's end-to-end latency is its arrival on
//! the target minus its create time, both taken on this machine's clock, so no clock
//! sync between datacenters is needed. A progress line shows records/s, MB/s, lag and
//! p99 so far; the end prints and writes (`--out`) throughput, latency percentiles
//! (hdrhistogram: p50, p99, p99.9, max), the proxy's CPU seconds per GB and peak RSS,
//! as `bench.json` and `bench.png` (latency CDF, throughput over time). Its topics
//! are deleted afterwards (`--keep-topics` keeps them).
//!
//! No flow of `run` mirrors `mirrorproxy.bench.*` topics ([`BENCH_TOPIC_PREFIX`]), so a
//! bench next to a production `.*` mirror does not write twice. The comparisons with
//! other mirrors are `tools/bench`'s job; this measures one link as it is.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression as KpCompression;

use super::bench_report::{self, Report, Sample};
use super::supervisor::reach;
use crate::batch::split_batches;
use crate::checkpoint::{encode_plain_batch, now_ms};
use crate::cluster::Cluster;
use crate::config::{Config, BENCH_TOPIC_PREFIX};

/// What to run: the command's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The flow, as SOURCE->TARGET.
    #[arg(long)]
    pub flow: String,
    /// Records to write.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub codec: String,
    /// Records per batch (one batch per Produce).
    #[arg(long, default_value_t = 100)]
    pub batch_records: usize,
    /// Records per second over all partitions; 0: as fast as the link takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Of the bench topic on the source; -1: the broker's default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i16,
    /// Where bench.json, bench.png and the mirror's log go.
    #[arg(long, default_value = "mirrorproxy-bench")]
    pub out: PathBuf,
    /// Keep the bench topics instead of deleting them.
    #[arg(long)]
    pub keep_topics: bool,
}

/// What the load generator and the readers share.
struct Progress {
    produced: AtomicU64,
    mirrored: AtomicU64,
    mirrored_bytes: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    stop: AtomicBool,
}

/// Narrows a loaded config to what the bench's mirror process runs: the one flow,
/// mirroring only the bench topic, without its side tasks (config and ACL sync, group
/// sync, heartbeats) or the metrics endpoint (the production proxy may hold its port).
pub fn narrow(config: &mut Config, flow: &str, topic: &str) -> Result<(), String> {
    config.flows.retain(|f| f.name == flow);
    let f = config.flows.first_mut().ok_or_else(|| format!("--bench-flow {flow}: no such flow"))?;
    f.topics = regex::Regex::new(&format!("^{}$", regex::escape(topic))).map_err(|e| e.to_string())?;
    f.exclude = None;
    f.groups = None;
    f.heartbeat_topic = None;
    f.sync_topic_configs = false;
    f.sync_acls = false;
    f.bench = true;
    config.metrics = None;
    Ok(())
}

fn codec(name: &str) -> Result<KpCompression, String> {
    Ok(match name {
        "none" => KpCompression::None,
        "gzip" => KpCompression::Gzip,
        "snappy" => KpCompression::Snappy,
        "lz4" => KpCompression::Lz4,
        "zstd" => KpCompression::Zstd,
        other => return Err(format!("--codec {other}: not one of none, gzip, snappy, lz4, zstd")),
    })
}

fn check_args(a: &BenchArgs) -> Result<(), String> {
    let bad = |flag: &str, why: &str| Err(format!("--{flag}: {why}"));
    if a.records == 0 {
        return bad("records", "must be at least 1");
    }
    if a.record_size == 0 || a.record_size > 1 << 20 {
        return bad("record-size", "must be 1 to 1048576 bytes");
    }
    if a.batch_records == 0 || a.batch_records > 100_000 {
        return bad("batch-records", "must be 1 to 100000");
    }
    if a.partitions < 1 {
        return bad("partitions", "must be at least 1");
    }
    if (a.batch_records * a.record_size) as u64 > 64 << 20 {
        return bad("batch-records", "times --record-size is over 64 MiB per batch");
    }
    codec(&a.codec).map(|_| ())
}

pub async fn bench(args: &BenchArgs) -> Result<(), String> {
    check_args(args)?;
    let (config, clusters) = super::load(&args.config)?;
    let names: Vec<&str> = config.flows.iter().map(|f| f.name.as_str()).collect();
    let flow =
        config.flows.iter().find(|f| f.name == args.flow).ok_or_else(|| {
            format!("--flow {}: the config has no such flow (it has: {})", args.flow, names.join(", "))
        })?;
    let (source, target) = (clusters[&flow.source].clone(), clusters[&flow.target].clone());
    reach(&flow.source, &source).await?;
    reach(&flow.target, &target).await?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;
    let topic = format!("{BENCH_TOPIC_PREFIX}{}", now_ms());
    let target_topic = flow.target_topic(&topic);
    source.create_topic(&topic, args.partitions, args.replication_factor).await.map_err(|e| e.to_string())?;
    eprintln!(
        "bench: topic '{topic}' on '{}' ({} partitions), mirrored to '{target_topic}' on '{}'",
        flow.source, args.partitions, flow.target
    );
    let result = measure(args, &source, &target, &topic, &target_topic).await;
    if args.keep_topics {
        eprintln!("bench: --keep-topics: '{topic}' and '{target_topic}' stay");
    } else {
        for (cluster, t) in [(&source, &topic), (&target, &target_topic)] {
            match cluster.delete_topic(t).await {
                Ok(()) => eprintln!("bench: deleted '{t}' on '{}'", cluster.alias()),
                Err(e) => eprintln!("bench: could not delete '{t}': {e} (delete it by hand)"),
            }
        }
    }
    let report = result?;
    bench_report::write(&args.out, &report)
}

async fn measure(
    args: &BenchArgs,
    source: &Arc<Cluster>,
    target: &Arc<Cluster>,
    topic: &str,
    target_topic: &str,
) -> Result<Report, String> {
    let mut proxy = MirrorProcess::start(&args.config, &args.flow, topic, &args.out)?;
    // The proxy discovers the topic and creates it on the target: wait for that, so the
    // latency measured is the link's, not the proxy's start.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let md = target.metadata(Some(&[target_topic.to_owned()])).await.map_err(|e| e.to_string())?;
        if md
            .topics
            .get(target_topic)
            .is_some_and(|t| t.error.is_none() && t.partitions.len() == args.partitions as usize)
        {
            break;
        }
        proxy.alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "the mirror did not create '{target_topic}' within 60 s; its log: {}",
                proxy.log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let progress = Arc::new(Progress {
        produced: AtomicU64::new(0),
        mirrored: AtomicU64::new(0),
        mirrored_bytes: AtomicU64::new(0),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let cpu_before = proxy.cpu_seconds();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.partitions {
        let n = args.records / args.partitions as u64 + u64::from((p as u64) < args.records % args.partitions as u64);
        let (s, t, prog, a) = (source.clone(), topic.to_owned(), progress.clone(), args.clone());
        tasks.spawn(async move { produce_partition(&s, &t, p, n, &a, &prog).await });
        let (s, t, prog) = (target.clone(), target_topic.to_owned(), progress.clone());
        tasks.spawn(async move { read_partition(&s, &t, p, n, &prog).await });
    }
    let mut timeline = Vec::new();
    let mut last = (started, 0u64, 0u64);
    let mut last_progress = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let outcome: Result<(), String> = loop {
        tokio::select! {
            _ = tick.tick() => {}
            done = tasks.join_next() => match done {
                None => break Ok(()),
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(format!("a bench task failed: {e}")),
            },
        }
        let now = Instant::now();
        let (produced, mirrored, bytes) = (
            progress.produced.load(Ordering::Relaxed),
            progress.mirrored.load(Ordering::Relaxed),
            progress.mirrored_bytes.load(Ordering::Relaxed),
        );
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let sample = Sample {
            t: now.duration_since(started).as_secs_f64(),
            records_per_s: (mirrored - last.1) as f64 / dt,
            mb_per_s: (bytes - last.2) as f64 / dt / 1e6,
            lag: produced.saturating_sub(mirrored),
        };
        let p99 = progress.latency_us.lock().unwrap().value_at_quantile(0.99) as f64 / 1000.0;
        let line = format!(
            "{:6.1} s  {:>10.0} rec/s  {:>8.1} MB/s  lag {:>9}  p99 {:>8.1} ms  ({mirrored} of {} mirrored)",
            sample.t, sample.records_per_s, sample.mb_per_s, sample.lag, p99, args.records
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
        timeline.push(sample);
        if mirrored > last.1 {
            last_progress = now;
        }
        last = (now, mirrored, bytes);
        if let Err(e) = proxy.alive() {
            break Err(e);
        }
        if now.duration_since(last_progress) > Duration::from_secs(60) {
            break Err(format!(
                "nothing arrived on the target for 60 s ({mirrored} of {} records); the mirror's log: {}",
                args.records,
                proxy.log.display()
            ));
        }
    };
    if tty {
        eprintln!();
    }
    progress.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = proxy.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let peak_rss = proxy.peak_rss_bytes();
    proxy.stop().await;
    outcome?;
    let hist = progress.latency_us.lock().unwrap().clone();
    Ok(Report::new(args, topic, elapsed, &progress.mirrored_bytes, hist, cpu, peak_rss, timeline))
}

/// Writes `n` records to one partition, one batch per Produce (acks=all), paced to
/// this partition's share of `--rate`.
async fn produce_partition(
    source: &Cluster,
    topic: &str,
    partition: i32,
    n: u64,
    a: &BenchArgs,
    progress: &Progress,
) -> Result<(), String> {
    let leader = source.leader_of(topic, partition).await.map_err(|e| e.to_string())?;
    let conn = source.broker(leader).await.map_err(|e| e.to_string())?;
    let compression = codec(&a.codec)?;
    // Values are pseudo-random letters: compressible, unlike random bytes, and not as
    // trivially as one repeated byte.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (partition as u64 + 1);
    let pool: Vec<u8> = (0..a.record_size + 4096)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            b'a' + (rng % 16) as u8
        })
        .collect();
    let pool = Bytes::from(pool);
    let interval = (a.rate > 0).then(|| {
        let per_partition = (a.rate as f64 / f64::from(a.partitions)).max(1e-3);
        Duration::from_secs_f64(a.batch_records as f64 / per_partition)
    });
    let mut next = tokio::time::Instant::now();
    let mut sent = 0u64;
    while sent < n && !progress.stop.load(Ordering::Relaxed) {
        let k = (a.batch_records as u64).min(n - sent);
        let values = (0..k).map(|i| {
            let at = ((sent + i) as usize * 31) % 4096;
            (None, Some(pool.slice(at..at + a.record_size)))
        });
        let batch = encode_plain_batch(values, now_ms(), compression)
            .map_err(|e| format!("encoding a {} batch: {e}", a.codec))?;
        let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))]),
        ]);
        let resp =
            conn.call(&req).await.map_err(|e| format!("writing the load to '{topic}' partition {partition}: {e}"))?;
        for p in resp.responses.iter().flat_map(|t| &t.partition_responses) {
            if let Some(e) = kafka_protocol::error::ResponseError::try_from_code(p.error_code) {
                return Err(format!("writing the load to '{topic}' partition {partition}: the source answered {e:?}"));
            }
        }
        sent += k;
        progress.produced.fetch_add(k, Ordering::Relaxed);
        if let Some(iv) = interval {
            next += iv;
            tokio::time::sleep_until(next).await;
        }
    }
    Ok(())
}

/// Reads one target partition from offset 0 until `n` records arrived, recording each
/// record's latency (arrival minus create time).
async fn read_partition(
    target: &Cluster,
    topic: &str,
    partition: i32,
    n: u64,
    progress: &Progress,
) -> Result<(), String> {
    let leader = target.leader_of(topic, partition).await.map_err(|e| e.to_string())?;
    let (mut offset, mut got) = (0i64, 0u64);
    while got < n && !progress.stop.load(Ordering::Relaxed) {
        let fetched = target.fetch_once(leader, topic, partition, offset, 8 << 20).await.map_err(|e| e.to_string())?;
        let Some(f) = fetched else { continue };
        if let Some(e) = f.error {
            return Err(format!("reading '{topic}' partition {partition} on the target: {e:?}"));
        }
        let arrived_us = now_ms() * 1000;
        let split = split_batches(f.records).map_err(|e| format!("'{topic}' partition {partition}: {e}"))?;
        let mut hist = Vec::new();
        for raw in split.batches {
            let batch = raw.verify().map_err(|e| format!("'{topic}' partition {partition} on the target: {e}"))?;
            let h = *batch.header();
            offset = h.next_offset();
            if h.is_control() {
                continue;
            }
            let (_, spans) = batch.record_spans().map_err(|e| format!("'{topic}' partition {partition}: {e}"))?;
            for s in &spans {
                let created_us = (h.base_timestamp + s.timestamp_delta) * 1000;
                hist.push((arrived_us - created_us).max(1) as u64);
            }
            got += spans.len() as u64;
            progress.mirrored.fetch_add(spans.len() as u64, Ordering::Relaxed);
            progress.mirrored_bytes.fetch_add(batch.bytes().len() as u64, Ordering::Relaxed);
        }
        let mut l = progress.latency_us.lock().unwrap();
        for v in hist {
            l.saturating_record(v);
        }
    }
    Ok(())
}

/// The mirror process for the bench flow: this binary's `run`, narrowed to the flow
/// and topic; its log goes to `<out>/mirror.log`.
struct MirrorProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl MirrorProcess {
    fn start(config: &Path, flow: &str, topic: &str, out: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let log = out.join("mirror.log");
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .args(["--bench-flow", flow, "--bench-topic", topic])
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting the mirror process: {e}"))?;
        Ok(Self { child, log })
    }

    fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("the mirror process exited ({st}); its log: {}", self.log.display())),
            Err(e) => Err(format!("the mirror process: {e}")),
        }
    }

    /// User + system CPU seconds so far (Linux `/proc`; clock ticks of 1/100 s).
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()?)).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    }

    /// Peak resident memory (`VmHWM`).
    fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    /// SIGINT (a clean drain), then SIGKILL after 15 s.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
