//! The benchmark harness: the synthetic source. The broker is `synthbroker` (shared
//! with the tests); what is the bench's own is running it as a process of its own,
//! `bench synth-source`, so that its CPU is not the harness's (which runs the sink)
//! and so that the WAN run can start it inside a network namespace.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

/// `bench synth-source ...` (arguments in main.rs): serves until killed, and prints
/// what the fetch-session side saw whenever it changed (`synth-source fetch-sessions
/// {...}`, for whoever sizes a deployment).
pub(crate) fn synth_source_main(args: &[String]) {
    let listen = text(args, "--listen", "127.0.0.1:0");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let local = listener.local_addr().unwrap();
        let adv = text(args, "--advertise", &local.to_string());
        let (h, p) = adv.rsplit_once(':').expect("--advertise H:P");
        let source = Source::new(
            num(args, "--batch-records", 16.0) as i32,
            num(args, "--size", 1000.0) as usize,
            codec_of(&text(args, "--codec", "none")),
        )
        .rate(num(args, "--rate", 0.0))
        .batches(num(args, "--batches", 0.0) as i64);
        let mut config = Config::new(&text(args, "--topic", "bench.t"), num(args, "--partitions", 4.0) as i32)
            .advertise(h, p.parse().expect("--advertise H:P"))
            .source(source)
            .sessions(!args.iter().any(|a| a == "--no-sessions"));
        let evict_ms = num(args, "--evict-sessions-ms", 0.0) as u64;
        if evict_ms > 0 {
            config = config.evict_sessions_every(Duration::from_millis(evict_ms));
        }
        let broker = Arc::new(SynthBroker::new(config));
        println!("synth-source listening on {local} (advertised {adv})");
        let watched = broker.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let line = session_json(&watched.session_stats()).to_string();
                if line != last {
                    println!("synth-source fetch-sessions {line}");
                    last = line;
                }
            }
        });
        broker.serve(listener, None).await;
    });
}

pub(crate) fn session_json(s: &SessionStats) -> Value {
    json!({
        "sessionless": s.sessionless, "full": s.full, "incremental": s.incremental,
        "refused": s.refused, "created": s.created, "named": s.named,
        "answered": s.answered, "reread": s.reread,
    })
}

/// Starts `bench synth-source` through `cmd` (the harness's own executable, or it
/// inside the WAN namespace) with the run's partitions and batch size, listening on
/// `listen` and naming `advertise` in Metadata; returns once it accepts connections.
pub(crate) fn spawn_source(
    ctx: &mut Ctx,
    cmd: &mut Command,
    log: &str,
    listen: &str,
    advertise: &str,
    size: usize,
    codec: &str,
    rate: f64,
) -> Proc {
    let log = ctx.log(log);
    let proc = Proc::spawn(
        "synth-source",
        cmd.args(["synth-source", "--listen", listen, "--advertise", advertise, "--topic", "bench.t"])
            .args(["--partitions", &ctx.partitions.to_string(), "--batch-records", &ctx.batch_records.to_string()])
            .args(["--size", &size.to_string(), "--codec", codec, "--rate", &rate.to_string()]),
        &log,
    );
    assert!(wait_port(listen, Duration::from_secs(10)), "synth-source on {listen} did not start");
    proc
}
