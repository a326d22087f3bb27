//! The benchmark harness: orchestrator.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) struct Ctx {
    pub(crate) exe: PathBuf,
    pub(crate) proxy_bin: PathBuf,
    pub(crate) tansu: Option<PathBuf>,
    pub(crate) out: PathBuf,
    pub(crate) secs: f64,
    pub(crate) warmup: f64,
    pub(crate) reps: usize,
    pub(crate) partitions: i32,
    pub(crate) batch_records: i32,
    /// extra lines for the proxy's [tuning] (`--proxy-tuning "k = v; k2 = v2"`)
    pub(crate) proxy_tuning: String,
    /// extra lines for the proxy's [[flows]] entry (`--proxy-flow "k = v; k2 = v2"`)
    pub(crate) proxy_flow: String,
    /// extra environment for the proxy (`--proxy-env K=V,K2=V2`)
    pub(crate) proxy_env: Vec<(String, String)>,
    /// when set, the synthetic sink speaks TLS with the certificates in this directory
    /// (from `tls/make-certs.sh`) and the proxy's target cluster is `link = "remote"` + tls
    pub(crate) target_tls: Option<PathBuf>,
    /// when set (rate, RTT ms), the sink is behind a user-space WAN link (remote writes)
    pub(crate) sink_wan: Option<(String, f64)>,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) results: Vec<Value>,
    pub(crate) seq: usize,
}

impl Ctx {
    pub(crate) fn log(&mut self, name: &str) -> PathBuf {
        self.seq += 1;
        self.out.join("logs").join(format!("{:03}-{name}.log", self.seq))
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Peer {
    Proxy,
    RdMirror,
    Relay,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Proxy => "mirrorproxy",
            Peer::RdMirror => "librdkafka-mirror",
            Peer::Relay => "tcp-relay",
        }
    }
}

pub(crate) fn proxy_config(
    dir: &Path,
    source: &str,
    target: &str,
    extra_tuning: &str,
    extra_flow: &str,
    target_tls: Option<&Path>,
) -> PathBuf {
    let path = dir.join(format!("mirror-{}.toml", free_port()));
    let tls = target_tls.map_or(String::new(), |d| {
        format!("link = \"remote\"\n\n[clusters.dst.tls]\nca = \"{}\"\n", d.join("ca.pem").display())
    });
    std::fs::write(
        &path,
        format!(
            "[clusters.src]\nbootstrap = \"{source}\"\n\n[clusters.dst]\nbootstrap = \"{target}\"\n{tls}\n[[flows]]\nsource = \"src\"\ntarget = \"dst\"\ntopics = \"bench\\\\..*\"\nstart = \"earliest\"\n{extra_flow}\n\n[tuning]\nsummary_interval_ms = 2000\nmetadata_refresh_ms = 5000\n{extra_tuning}\n"
        ),
    )
    .unwrap();
    path
}

/// Starts the proxy under test from `source` to `target` with the run's tuning.
pub(crate) fn spawn_proxy(ctx: &Ctx, source: &str, target: &str, target_tls: Option<&Path>, log: &Path) -> Proc {
    let cfg = proxy_config(&ctx.out.join("logs"), source, target, &ctx.proxy_tuning, &ctx.proxy_flow, target_tls);
    Proc::spawn(
        "mirrorproxy",
        Command::new(&ctx.proxy_bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .envs(ctx.proxy_env.clone()),
        log,
    )
}

pub(crate) fn run(args: &[String]) {
    let out = PathBuf::from(text(args, "--out", "target/bench"));
    std::fs::create_dir_all(out.join("logs")).unwrap();
    let modes = text(args, "--modes", "isolation,latency,wan,real");
    let mut ctx = Ctx {
        exe: std::env::current_exe().unwrap(),
        proxy_bin: PathBuf::from(text(args, "--proxy-bin", "target/release/mirrorproxy")),
        tansu: arg(args, "--tansu").map(PathBuf::from),
        out: out.clone(),
        secs: num(args, "--secs", 8.0),
        warmup: num(args, "--warmup", 2.0),
        reps: num(args, "--reps", 3.0) as usize,
        partitions: num(args, "--partitions", 4.0) as i32,
        batch_records: num(args, "--batch-records", 16.0) as i32,
        proxy_tuning: text(args, "--proxy-tuning", "").replace(';', "\n"),
        proxy_flow: text(args, "--proxy-flow", "").replace(';', "\n"),
        proxy_env: text(args, "--proxy-env", "")
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
            .collect(),
        target_tls: None,
        sink_wan: None,
        rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
        results: Vec::new(),
        seq: 0,
    };
    assert!(ctx.proxy_bin.exists(), "{} not found: cargo build --release first", ctx.proxy_bin.display());
    let sizes: Vec<usize> = text(args, "--sizes", "100,1000,10000").split(',').map(|s| s.parse().unwrap()).collect();
    let peers_arg = text(args, "--peers", "mirrorproxy,librdkafka-mirror,tcp-relay");
    let peers: Vec<Peer> =
        [Peer::Proxy, Peer::RdMirror, Peer::Relay].into_iter().filter(|p| peers_arg.contains(p.name())).collect();
    let started = Instant::now();
    if modes.contains("isolation") {
        let mut configs: Vec<(usize, &str)> = sizes.iter().map(|s| (*s, "none")).collect();
        configs.push((1000, "lz4"));
        for (size, codec) in configs {
            for &peer in &peers {
                let mut reps = Vec::new();
                for rep in 0..ctx.reps {
                    let r = isolation_run(&mut ctx, peer, size, codec, None, rep);
                    eprintln!("  {r}");
                    reps.push(r);
                }
                ctx.results.push(summarize("isolation", peer, size, codec, &reps));
            }
        }
    }
    if modes.contains("tls") {
        // The same isolation run with the target link plaintext and TLS, interleaved
        // rep by rep so both see the same machine; the proxy's CPU per GB includes its
        // side of TLS (encryption), the sink's decryption runs in this process.
        let dir = out.join("certs");
        let made = Command::new("bash").arg("tls/make-certs.sh").arg(&dir).stdout(Stdio::null()).status();
        assert!(matches!(made, Ok(s) if s.success()), "tls/make-certs.sh {} failed (needs openssl)", dir.display());
        // the proxy resolves relative paths against its config file's directory
        let dir = dir.canonicalize().unwrap();
        for size in &sizes {
            let (mut plain, mut tls) = (Vec::new(), Vec::new());
            for rep in 0..ctx.reps {
                ctx.target_tls = None;
                let r = isolation_run(&mut ctx, Peer::Proxy, *size, "none", None, rep);
                eprintln!("  plain {r}");
                plain.push(r);
                ctx.target_tls = Some(dir.clone());
                let mut r = isolation_run(&mut ctx, Peer::Proxy, *size, "none", None, rep);
                r["mode"] = json!("tls-target");
                eprintln!("  tls   {r}");
                tls.push(r);
            }
            ctx.target_tls = None;
            ctx.results.push(summarize("plain-target", Peer::Proxy, *size, "none", &plain));
            ctx.results.push(summarize("tls-target", Peer::Proxy, *size, "none", &tls));
        }
    }
    if modes.contains("latency") {
        let rate = num(args, "--latency-rate", 10_000.0);
        for &peer in peers.iter().filter(|p| **p != Peer::Relay) {
            let r = isolation_run(&mut ctx, peer, 1000, "none", Some(LatencyRun { rate }), 0);
            eprintln!("  {r}");
            ctx.results.push(summarize("latency", peer, 1000, "none", &[r]));
        }
    }
    if modes.contains("wan") {
        let link = text(args, "--wan-rate", "200mbit");
        let delay = num(args, "--wan-delay-ms", 50.0);
        // netem in a network namespace where the kernel has it, else the user-space link.
        let wan = if text(args, "--wan-link", "auto") == "userspace" {
            WanLink::UserSpace { rate: link.clone(), rtt_ms: delay }
        } else {
            match Netns::create(&link, delay) {
                Ok(ns) => WanLink::Netem(ns),
                Err(e) => {
                    eprintln!("netem unavailable ({e}); emulating the link in user space (bench link)");
                    WanLink::UserSpace { rate: link.clone(), rtt_ms: delay }
                }
            }
        };
        for &peer in &peers {
            let r = wan_run(&mut ctx, &wan, peer, 1000, "none");
            eprintln!("  {r}");
            ctx.results.push(summarize("wan", peer, 1000, "none", &[r]));
        }
    }
    if modes.contains("remote-write") {
        // Not the recommended deployment: the mirror next to the source, writing over the
        // WAN. Kafka allows one batch per partition per Produce request and at most 5
        // requests in flight per partition, so the source's batch size bounds this.
        let rate = text(args, "--wan-rate", "200mbit");
        let delay = num(args, "--wan-delay-ms", 50.0);
        ctx.sink_wan = Some((rate.clone(), delay));
        let rebatch = text(args, "--rebatch", "rebatch_max_bytes = 1048576; rebatch_compression = \"zstd\"");
        let mut runs: Vec<(Peer, String)> =
            peers.iter().filter(|p| **p != Peer::Relay).map(|p| (*p, String::new())).collect();
        if peers.contains(&Peer::Proxy) {
            runs.insert(1, (Peer::Proxy, rebatch.replace(';', "\n")));
        }
        for (peer, flow_extra) in runs {
            let saved_flow = std::mem::replace(&mut ctx.proxy_flow, flow_extra.clone());
            let saved = (ctx.secs, ctx.warmup);
            ctx.secs = ctx.secs.max(10.0);
            ctx.warmup = ctx.warmup.max(3.0);
            let src_addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(&ctx.exe);
            let _source = spawn_source(&mut ctx, &mut cmd, "synth-source", &src_addr, &src_addr, 1000, "none", 0.0);
            let mode = if flow_extra.is_empty() { "remote-write" } else { "remote-write, rebatch" };
            let mut v = measure(&mut ctx, peer, &src_addr, &src_addr, 1000, "none", false, 0, mode);
            (ctx.secs, ctx.warmup) = saved;
            ctx.proxy_flow = saved_flow;
            if !flow_extra.is_empty() {
                v["rebatch"] = json!(flow_extra);
            }
            let link_bytes_per_s = parse_rate(&rate);
            let mbps = v["mb_per_s"].as_f64().unwrap_or(0.0);
            v["link_mb_per_s"] = json!(link_bytes_per_s / 1e6);
            v["link_utilization"] = json!(mbps * 1e6 / link_bytes_per_s);
            v["link"] = json!(format!("{rate}, {delay} ms RTT (user-space link emulator), target side"));
            eprintln!("  {v}");
            ctx.results.push(summarize(mode, peer, 1000, "none", &[v]));
        }
        ctx.sink_wan = None;
    }
    if modes.contains("real") {
        match ctx.tansu.clone() {
            Some(t) => {
                // Rounds interleave the peers (proxy, naive mirror, proxy, ...) so that
                // each ratio compares runs taken minutes apart at most on a shared host.
                let rounds = num(args, "--real-rounds", 1.0).max(1.0) as usize;
                for round in 1..=rounds {
                    for &peer in peers.iter().filter(|p| **p != Peer::Relay) {
                        let mut r = real_run(&mut ctx, &t, peer, args);
                        r["round"] = json!(round);
                        eprintln!("  {r}");
                        ctx.results.push(r);
                    }
                }
            }
            None => eprintln!("real-broker mode skipped: pass --tansu PATH"),
        }
    }
    let doc = json!({
        "machine": machine_info(),
        "settings": {"proxy_tuning": ctx.proxy_tuning, "proxy_env": format!("{:?}", ctx.proxy_env), "secs": ctx.secs, "warmup": ctx.warmup, "reps": ctx.reps, "partitions": ctx.partitions, "batch_records": ctx.batch_records},
        "elapsed_s": started.elapsed().as_secs_f64(),
        "results": ctx.results,
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    print_table(&ctx.results);
    if let Err(e) = plots(&out, &ctx.results) {
        eprintln!("plots: {e}");
    }
    println!("\nresults: {}  (plots: {}/*.png, logs: {}/logs/)", json_path.display(), out.display(), out.display());
}

pub(crate) fn machine_info() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
}

pub(crate) struct LatencyRun {
    pub(crate) rate: f64,
}

/// One measurement: a synthetic source (child process), a synthetic sink (in-process),
/// the peer between them (child process); counters sampled after the warm-up and
/// `secs` later.
pub(crate) fn isolation_run(
    ctx: &mut Ctx,
    peer: Peer,
    size: usize,
    codec: &str,
    lat: Option<LatencyRun>,
    rep: usize,
) -> Value {
    let src_port = free_port();
    let src_addr = format!("127.0.0.1:{src_port}");
    let rate = lat.as_ref().map_or(0.0, |l| l.rate);
    let mut cmd = Command::new(&ctx.exe);
    let _source = spawn_source(ctx, &mut cmd, "synth-source", &src_addr, &src_addr, size, codec, rate);
    measure(ctx, peer, &src_addr, &src_addr, size, codec, lat.is_some(), rep, "isolation")
}

/// Starts the sink and the peer, samples, tears down. `src_connect` is where peers
/// connect (equal to `src_addr` except across the WAN namespace).
pub(crate) fn measure(
    ctx: &mut Ctx,
    peer: Peer,
    src_addr: &str,
    _src_connect: &str,
    size: usize,
    codec: &str,
    latency: bool,
    rep: usize,
    mode: &str,
) -> Value {
    let topic = "bench.t";
    let sink_port = free_port();
    let sink_listen = format!("127.0.0.1:{sink_port}");
    // With `sink_wan` the sink is reached through a WAN link emulator (remote writes):
    // it advertises the link's address, which relays to where it listens.
    let (sink_addr, advertised_port, _sink_link) = match ctx.sink_wan.clone() {
        Some((rate, rtt_ms)) => {
            let link_port = free_port();
            let link_addr = format!("127.0.0.1:{link_port}");
            let log = ctx.log("link");
            let p = Proc::spawn(
                "link",
                Command::new(&ctx.exe)
                    .args(["link", "--listen", &link_addr, "--upstream", &sink_listen, "--rate", &rate])
                    .args(["--rtt-ms", &rtt_ms.to_string()]),
                &log,
            );
            assert!(wait_port(&link_addr, Duration::from_secs(10)), "bench link did not start");
            (link_addr, link_port, Some(p))
        }
        None => (sink_listen.clone(), sink_port, None),
    };
    // The sink: the data topic reads as empty, Produce is acknowledged and counted.
    let sink = Arc::new(SynthBroker::new(
        Config::new(topic, ctx.partitions).advertise("127.0.0.1", i32::from(advertised_port)),
    ));
    if latency {
        *sink.sink().latency.lock().unwrap() = Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap());
    }
    let listener = ctx.rt.block_on(TcpListener::bind(&sink_listen)).unwrap();
    let acceptor = ctx.target_tls.as_deref().map(tls_acceptor);
    let sink_task = ctx.rt.spawn(sink.clone().serve(listener, acceptor));
    let relay_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log = ctx.log(peer.name());
    let mut proc = match peer {
        Peer::Proxy => spawn_proxy(ctx, src_addr, &sink_addr, ctx.target_tls.as_deref(), &log),
        Peer::RdMirror => Proc::spawn(
            "rdmirror",
            Command::new(&ctx.exe)
                .args(["rdmirror", "--source", src_addr, "--target", &sink_addr, "--topic", topic])
                .args(["--partitions", &ctx.partitions.to_string(), "--codec", codec]),
            &log,
        ),
        Peer::Relay => {
            let relay_addr = format!("127.0.0.1:{}", free_port());
            let p = Proc::spawn(
                "relay",
                Command::new(&ctx.exe).args(["relay", "--listen", &relay_addr, "--upstream", src_addr]),
                &log,
            );
            assert!(wait_port(&relay_addr, Duration::from_secs(10)), "relay did not start");
            ctx.rt.spawn(raw_fetch_reader(relay_addr, topic.into(), ctx.partitions, relay_bytes.clone(), stop.clone()));
            p
        }
    };
    let counters = |s: &SynthBroker| -> (u64, u64) {
        if peer == Peer::Relay {
            (relay_bytes.load(Ordering::Relaxed), 0)
        } else {
            (s.sink().bytes.load(Ordering::Relaxed), s.sink().records.load(Ordering::Relaxed))
        }
    };
    // Warm-up: wait for data to flow, then `warmup` seconds more.
    let t_wait = Instant::now();
    while counters(&sink).0 == 0 && t_wait.elapsed() < Duration::from_secs(30) && proc.alive() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs_f64(ctx.warmup));
    if latency {
        if let Some(h) = sink.sink().latency.lock().unwrap().as_mut() {
            h.reset();
        }
    }
    let (b0, r0) = counters(&sink);
    let (c0, _) = proc_stats(proc.pid());
    let (h0, m0) = (proc_stats(std::process::id()).0, machine_ticks());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(ctx.secs));
    let (b1, r1) = counters(&sink);
    let (c1, hwm) = proc_stats(proc.pid());
    let (h1, m1) = (proc_stats(std::process::id()).0, machine_ticks());
    let dt = t0.elapsed().as_secs_f64();
    let alive = proc.alive();
    stop.store(true, Ordering::Relaxed);
    drop(proc);
    sink_task.abort();
    let bytes = (b1 - b0) as f64;
    let cpu = c1 - c0;
    // the relay moves Fetch responses: count records as bytes / (bytes per record of the batch)
    let records = if peer == Peer::Relay {
        let per = encode_batch(ctx.batch_records, size, codec_of(codec), 0).len() as f64 / f64::from(ctx.batch_records);
        bytes / per
    } else {
        (r1 - r0) as f64
    };
    let mut v = json!({
        "mode": mode, "peer": peer.name(), "size": size, "codec": codec, "rep": rep,
        "secs": dt, "mb_per_s": bytes / dt / 1e6, "records_per_s": records / dt,
        "cpu_s": cpu, "cpu_s_per_gb": if bytes > 0.0 { cpu / (bytes / 1e9) } else { f64::NAN },
        "cpu_util": cpu / dt, "peak_rss_mb": hwm as f64 / 1e6, "alive": alive,
        // This process: the sink (and, for the relay, the reader), e.g. TLS decryption.
        "harness_cpu_s_per_gb": if bytes > 0.0 { (h1 - h0) / (bytes / 1e9) } else { f64::NAN },
        "machine_busy": m1.0.saturating_sub(m0.0) as f64 / (m1.1.saturating_sub(m0.1) as f64).max(1.0),
    });
    if latency {
        if let Some(h) = sink.sink().latency.lock().unwrap().as_ref() {
            v["latency_us"] = hist_json(h);
        }
    }
    v
}

pub(crate) fn hist_json(h: &Histogram<u64>) -> Value {
    let cdf: Vec<(f64, f64)> = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0]
        .iter()
        .map(|q| (*q, h.value_at_quantile(q / 100.0) as f64))
        .collect();
    json!({
        "count": h.len(), "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max(), "mean": h.mean(),
        "cdf": cdf,
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub(crate) fn summarize(mode: &str, peer: Peer, size: usize, codec: &str, reps: &[Value]) -> Value {
    let m = |k: &str| median(reps.iter().filter_map(|r| r[k].as_f64()).collect());
    let mut v = json!({
        "mode": mode, "peer": peer.name(), "size": size, "codec": codec, "reps": reps.len(),
        "mb_per_s": m("mb_per_s"), "records_per_s": m("records_per_s"), "cpu_s_per_gb": m("cpu_s_per_gb"),
        "cpu_util": m("cpu_util"), "harness_cpu_s_per_gb": m("harness_cpu_s_per_gb"), "machine_busy": m("machine_busy"), "peak_rss_mb": reps.iter().filter_map(|r| r["peak_rss_mb"].as_f64()).fold(0.0, f64::max),
        "runs": reps,
    });
    if reps.iter().any(|r| r["alive"] == false) {
        v["peer_exited"] = json!(true);
    }
    if let Some(l) = reps.first().and_then(|r| r.get("latency_us")) {
        v["latency_us"] = l.clone();
    }
    if let Some(l) = reps.first().and_then(|r| r.get("link_utilization")) {
        v["link_utilization"] = l.clone();
        v["link_mb_per_s"] = reps[0]["link_mb_per_s"].clone();
    }
    v
}
