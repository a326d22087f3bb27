//! Benchmark harness: mirrorproxy against its alternatives, same machine, same run.
//! `tools/bench/README.md` explains what is measured and how; `tools/bench/run.sh` is
//! the one command. Subcommands:
//!
//! ```text
//! bench run [--modes isolation,latency,wan,real,tls,remote-write] [--secs S] [--reps N]
//!       [--out DIR] [--proxy-tuning "k = v; ..."] [--proxy-flow "k = v; ..."] ...
//! bench synth-source --listen H:P [--advertise H:P] [--topic T] [--partitions P]
//!       [--size BYTES] [--codec none|lz4|...] [--batch-records N] [--rate RECORDS_PER_S]
//!       [--batches N] [--no-sessions] [--evict-sessions-ms MS]
//! bench log-ends --bootstrap H:P [--topic T] [--partitions P]   (tansu: true ends)
//! bench rdmirror --source H:P --target H:P --topic T [--partitions P] [--codec C]
//! bench relay --listen H:P --upstream H:P
//! bench link --listen H:P --upstream H:P [--rate 200mbit] [--rtt-ms 50]
//! bench produce --bootstrap H:P --topic T [--records N] [--rate R] [--size B]
//!       [--codec C] [--partitions P] [--keys seq|random|none] [--key-space K]
//! ```
//!
//! * `synth-source` runs the synthetic broker of `synthbroker/` (shared with the tests)
//!   as a source, in a process of its own: one topic, Fetch answered from a
//!   pre-built record batch (base offset patched per response; the CRC does not cover
//!   it) at memory speed; with `--rate` it makes batches available at that rate, each
//!   record's key carrying the wall-clock microsecond it became readable (partitions
//!   take turns; `--batches` ends each partition after N batches). It keeps KIP-227
//!   fetch sessions like a Kafka broker (`--no-sessions`: like tansu, never) and prints
//!   what it saw of them (`synth-source fetch-sessions {...}`), including fetches that
//!   re-read data it had served already.
//! * the synthetic sink (the same broker without data, inside `run`) acknowledges
//!   Produce, counts bytes and records, and, for uncompressed batches, reads each
//!   record's key back to measure latency.
//! * `rdmirror` is the decode/re-encode peer (librdkafka consumer + producer per
//!   record: the MirrorMaker model); `relay` is a tokio TCP copy relay (the physical
//!   limit for bytes through one process).
//! * `link` emulates a WAN link in user space where the kernel has no `sch_netem`: a TCP
//!   relay that delivers each chunk half an RTT after it was read, paced at the link
//!   rate, with a bounded queue (about one bandwidth-delay product plus 1 MB) so a fast
//!   sender is held back by TCP flow control as on a real link.
#![allow(clippy::pedantic, clippy::too_many_arguments)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic},
    BrokerId, FetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use mirrorproxy::wire;
use serde_json::{json, Value};
use synthbroker::{
    encode_batch, now_us, tls_acceptor, value_bytes, Compression, Config, SessionStats, Source, SynthBroker,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod link;
mod load;
mod orchestrator;
mod output;
mod procs;
mod rdmirror;
mod relay;
mod source;
mod tansu;
mod wan;
use link::*;
use load::*;
use orchestrator::*;
use output::*;
use procs::*;
use rdmirror::*;
use relay::*;
use source::*;
use tansu::*;
use wan::*;

// ------------------------------------------------------------------ arguments

pub(crate) fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

pub(crate) fn num(args: &[String], name: &str, default: f64) -> f64 {
    arg(args, name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, got '{v}'")))
}

pub(crate) fn text(args: &[String], name: &str, default: &str) -> String {
    arg(args, name).unwrap_or_else(|| default.to_owned())
}

/// The options `bench run` reads (orchestrator, tansu and WAN modes). Anything else is
/// refused before a run starts: a mistyped option would otherwise run every mode at its
/// defaults for minutes.
const RUN_OPTIONS: &[&str] = &[
    "--batch-records",
    "--keys",
    "--latency-rate",
    "--modes",
    "--out",
    "--partitions",
    "--peers",
    "--proxy-bin",
    "--proxy-env",
    "--proxy-flow",
    "--proxy-tuning",
    "--real-batch-records",
    "--real-codec",
    "--real-latency-rate",
    "--real-linger-ms",
    "--real-records",
    "--real-rounds",
    "--real-size",
    "--real-timeout",
    "--rebatch",
    "--reps",
    "--secs",
    "--sizes",
    "--tansu",
    "--wan-delay-ms",
    "--wan-link",
    "--wan-rate",
    "--warmup",
];

fn check_run_options(args: &[String]) {
    for a in args.iter().skip(2).filter(|a| a.starts_with("--")) {
        if !RUN_OPTIONS.contains(&a.as_str()) {
            eprintln!("bench run: unknown option '{a}'; options: {}", RUN_OPTIONS.join(" "));
            eprintln!("(see tools/bench/README.md)");
            std::process::exit(2);
        }
    }
}

pub(crate) fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map_or("", String::as_str) {
        "run" => {
            check_run_options(&args);
            run(&args);
        }
        "synth-source" => synth_source_main(&args),
        "rdmirror" => rdmirror(&args),
        "relay" => relay_main(&args),
        "link" => link_main(&args),
        "produce" => {
            let p = ProduceSpec::from_args(&args);
            let out = produce(&p, None);
            println!("bench produce: {} records in {:.1}s", out.records, out.secs);
        }
        "log-ends" => {
            let (b, t) = (arg(&args, "--bootstrap").expect("--bootstrap"), text(&args, "--topic", "bench.t"));
            let parts = num(&args, "--partitions", 4.0) as i32;
            let h = watermarks(&b, &t, parts).expect("watermarks");
            println!("high watermarks {h:?}, log ends {:?}", log_ends(&b, &t, &h));
            println!("log ends as the drain clock sees them: {:?}", EndsWatch::new(&b, &t, parts).ends());
        }
        _ => {
            eprintln!("usage: bench run|synth-source|rdmirror|relay|produce|log-ends ... (see tools/bench/README.md)");
            std::process::exit(2);
        }
    }
}

pub(crate) fn codec_of(name: &str) -> Compression {
    match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => panic!("unknown codec '{other}'"),
    }
}
