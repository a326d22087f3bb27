//! The `mirrorproxy` command line: arguments only; the commands are in [`mirrorproxy::cli`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirrorproxy::cli;
use mirrorproxy::config::Config;

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
        /// (`mirrorproxy bench`'s mirror process) run only this flow ...
        #[arg(long, hide = true, requires = "bench_topic")]
        bench_flow: Option<String>,
        /// ... for only this topic.
        #[arg(long, hide = true, requires = "bench_flow")]
        bench_topic: Option<String>,
    },
    /// Measure a flow's link: write a synthetic load to a new topic on its source, mirror
    /// it, read it on the target; report throughput, latency, the proxy's CPU and memory.
    Bench(cli::BenchArgs),
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

/// Returns every page mimalloc has freed but kept to the kernel now (a forced
/// collection purges the arenas of the whole process, whichever thread asks).
#[allow(unsafe_code)]
fn collect_freed() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
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
    if let Command::Run { config, .. } = &cli.command {
        // A config that does not load is reported by `run` itself, with its reasons.
        if let Ok(c) = Config::load(config) {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            builder.worker_threads(c.tuning.runtime_threads(c.flows.len(), cores));
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
            Command::Run { config, bench_flow, bench_topic } => {
                cli::run(&config, bench_flow.zip(bench_topic), collect_freed).await
            }
            Command::Bench(args) => cli::bench(&args).await,
            Command::Check { config } => cli::check(&config).await,
            Command::Status { config, json } => cli::status(&config, json).await,
            Command::Offsets { command: OffsetsCommand::Translate { config, flow, group, commit, json } } => {
                cli::translate(&config, &flow, &group, commit, json).await
            }
            Command::Offsets { command: OffsetsCommand::At { config, cluster, topic, time, reset_group, json } } => {
                cli::offsets_at(&config, &cluster, &topic, &time, reset_group.as_deref(), json).await
            }
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
