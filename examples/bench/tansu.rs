//! The benchmark harness: real brokers (tansu).
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) fn start_tansu(ctx: &mut Ctx, tansu: &Path) -> (Proc, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = ctx.log("tansu");
    let p = Proc::spawn(
        "tansu",
        Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", "warn"),
        &log,
    );
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_port(&addr, Duration::from_secs(30)), "tansu did not start");
    (p, addr)
}

pub(crate) fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Option<Vec<i64>> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("log_level", "2").create().ok()?;
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).ok().map(|(_, h)| h)).collect()
}

/// The true log end of each partition, given its high watermarks: tansu 0.6.0 reports
/// the last batch's base offset + 1 as the high watermark, so the last batch is read
/// (from there) and its last offset taken. Batch boundaries differ between source and
/// target when a mirror re-batches, so only these ends can be compared.
pub(crate) fn log_ends(bootstrap: &str, topic: &str, hwms: &[i64]) -> Option<Vec<i64>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let c = mirrorproxy::cluster::Cluster::new("bench", vec![bootstrap.to_owned()], Default::default());
    rt.block_on(async {
        let mut leaders = Vec::new();
        for p in 0..hwms.len() as i32 {
            leaders.push(c.leader_of(topic, p).await.ok()?);
        }
        ends_after(&c, topic, &leaders, hwms).await
    })
}

async fn ends_after(c: &mirrorproxy::cluster::Cluster, topic: &str, leaders: &[i32], hwms: &[i64]) -> Option<Vec<i64>> {
    // With mirrorproxy's own one-shot Fetch: librdkafka, asked to start at the last
    // batch of a long tansu log, reads nothing there (seen with 50,000 offsets).
    let mut ends = hwms.to_vec();
    for (p, &h) in hwms.iter().enumerate() {
        if h <= 0 {
            continue;
        }
        let got = c.fetch_once(leaders[p], topic, p as i32, h - 1, 8 << 20).await.ok()??;
        let split = mirrorproxy::batch::split_batches(got.records).ok()?;
        if let Some(end) = split.batches.iter().map(|b| b.header().next_offset()).max() {
            ends[p] = ends[p].max(end);
        }
    }
    Some(ends)
}

/// The drain clock's eye on the target: one connection kept open, high watermarks by
/// ListOffsets and the true ends as in [`log_ends`], a look every 5 ms; `drain_look_ms`
/// in the results says how long a look took (about 2 ms). It once opened a librdkafka
/// client and a connection per look and slept 100 ms between looks, so a drain was
/// seen up to a quarter of a second late, whatever the peer.
pub(crate) struct EndsWatch {
    rt: tokio::runtime::Runtime,
    cluster: mirrorproxy::cluster::Cluster,
    topic: String,
    leaders: Vec<i32>,
}

impl EndsWatch {
    pub(crate) fn new(bootstrap: &str, topic: &str, partitions: i32) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let cluster = mirrorproxy::cluster::Cluster::new("bench", vec![bootstrap.to_owned()], Default::default());
        let leaders = rt.block_on(async {
            let mut leaders = Vec::new();
            for p in 0..partitions {
                leaders.push(cluster.leader_of(topic, p).await.expect("the target topic exists (created before)"));
            }
            leaders
        });
        Self { rt, cluster, topic: topic.to_owned(), leaders }
    }

    /// The true log end of every partition now (None while any cannot be read).
    pub(crate) fn ends(&self) -> Option<Vec<i64>> {
        let (c, topic) = (&self.cluster, self.topic.as_str());
        self.rt.block_on(async {
            let mut hwms = Vec::new();
            for (p, &leader) in (0..).zip(&self.leaders) {
                let listed = c.list_offsets(leader, topic, &[p], -1).await.ok()?;
                hwms.push(listed.into_iter().find(|(q, _)| *q == p)?.1.ok()?);
            }
            ends_after(c, topic, &self.leaders, &hwms).await
        })
    }
}

/// Real brokers: pre-load the source, start the peer, time the backlog drain (target
/// high watermarks equal to the source's), then a latency phase at a moderate rate
/// with consumers on both clusters (the difference is what the mirror adds).
pub(crate) fn real_run(ctx: &mut Ctx, tansu: &Path, peer: Peer, args: &[String]) -> Value {
    let records = num(args, "--real-records", 100_000.0) as u64;
    let size = num(args, "--real-size", 1000.0) as usize;
    let codec = text(args, "--real-codec", "lz4");
    let lat_rate = num(args, "--real-latency-rate", 1000.0);
    let topic = "bench.t".to_owned();
    let parts = ctx.partitions;
    let (_src, src) = start_tansu(ctx, tansu);
    let (_dst, dst) = start_tansu(ctx, tansu);
    // Pre-create the target topic (the proxy would; librdkafka's mirror would not).
    let _ = produce(
        &ProduceSpec {
            bootstrap: dst.clone(),
            topic: topic.clone(),
            records: 0,
            rate: 0.0,
            size,
            codec: codec.clone(),
            partitions: parts,
            keys: "seq".into(),
            key_space: 1,
            linger_ms: 5,
            batch_records: 0,
        },
        None,
    );
    let load = produce(
        &ProduceSpec {
            bootstrap: src.clone(),
            topic: topic.clone(),
            records,
            rate: 0.0,
            size,
            codec: codec.clone(),
            partitions: parts,
            keys: text(args, "--keys", "seq"),
            key_space: 10_000,
            linger_ms: num(args, "--real-linger-ms", 20.0) as u32,
            batch_records: num(args, "--real-batch-records", 0.0) as u32,
        },
        None,
    );
    eprintln!("  real: loaded {} records of {size} B ({codec}) into tansu in {:.1}s", load.records, load.secs);
    let src_hwm = watermarks(&src, &topic, parts).unwrap_or_default();
    let src_ends = log_ends(&src, &topic, &src_hwm).expect("source log ends");
    let log = ctx.log(peer.name());
    let t0 = Instant::now();
    let mut proc = match peer {
        Peer::Proxy => spawn_proxy(ctx, &src, &dst, None, &log),
        _ => Proc::spawn(
            "rdmirror",
            Command::new(&ctx.exe).args([
                "rdmirror",
                "--source",
                &src,
                "--target",
                &dst,
                "--topic",
                &topic,
                "--partitions",
                &parts.to_string(),
                "--codec",
                &codec,
            ]),
            &log,
        ),
    };
    let timeout = Duration::from_secs_f64(num(args, "--real-timeout", 120.0));
    let mut drained = false;
    let watch = EndsWatch::new(&dst, &topic, parts);
    let (mut looks, mut looking) = (0u32, Duration::ZERO);
    while t0.elapsed() < timeout && proc.alive() {
        let look = Instant::now();
        let ends = watch.ends();
        (looks, looking) = (looks + 1, looking + look.elapsed());
        if ends.is_some_and(|e| e == src_ends) {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let drain_s = t0.elapsed().as_secs_f64();
    let (cpu_drain, _) = proc_stats(proc.pid());
    let bytes = (records * size as u64) as f64; // payload bytes (values)
                                                // Latency phase.
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    let since = now_us(); // the backlog was written before this; its records are skipped
    for b in [src.clone(), dst.clone()] {
        let (t, s, r) = (topic.clone(), stop.clone(), Arc::new(AtomicBool::new(false)));
        let r2 = r.clone();
        consumers.push((std::thread::spawn(move || latency_consumer(b, t, parts, s, r2, since)), r));
    }
    while !consumers.iter().all(|(_, r)| r.load(Ordering::Relaxed)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lat_records = (lat_rate * ctx.secs) as u64;
    let _ = produce(
        &ProduceSpec {
            bootstrap: src.clone(),
            topic: topic.clone(),
            records: lat_records,
            rate: lat_rate,
            size,
            codec: codec.clone(),
            partitions: parts,
            keys: "seq".into(),
            key_space: 1,
            linger_ms: 0,
            batch_records: 0,
        },
        None,
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let hs: Vec<Latencies> = consumers.into_iter().map(|(j, _)| j.join().unwrap()).collect();
    let (_, hwm) = proc_stats(proc.pid());
    let alive = proc.alive();
    drop(proc);
    json!({
        "mode": "real", "peer": peer.name(), "size": size, "codec": codec,
        "linger_ms": num(args, "--real-linger-ms", 20.0), "batch_num_messages": num(args, "--real-batch-records", 0.0), "records": records, "drained": drained,
        "drain_s": drain_s, "drain_look_ms": looking.as_secs_f64() * 1e3 / f64::from(looks.max(1)), "mb_per_s": bytes / drain_s / 1e6, "records_per_s": records as f64 / drain_s,
        "cpu_s_per_gb": cpu_drain / (bytes / 1e9), "peak_rss_mb": hwm as f64 / 1e6, "alive": alive,
        "latency_rate": lat_rate, "latency_us_source": hist_json(&hs[0].hist), "latency_us": hist_json(&hs[1].hist),
        "latency_rereads": [hs[0].rereads, hs[1].rereads], "latency_payload_dups": [hs[0].payload_dups, hs[1].payload_dups],
        "latency_older_skipped": [hs[0].older, hs[1].older],
    })
}
