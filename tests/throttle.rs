//! Link throttling (`max_bytes_per_second` on the source cluster): from a source that
//! answers at memory speed (the synthetic broker) the mirror writes at the limit, within
//! ±10%, and reports the time it waited.
#![allow(clippy::pedantic)]

mod support;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use support::{free_port, http, MirrorProxy};
use synthbroker::{Compression, Config, Source, SynthBroker};

const LIMIT: u64 = 3_000_000;

#[test]
fn a_throttled_link_carries_its_limit_within_ten_percent() {
    let src = SynthBroker::start(Config::new("orders", 2).source(Source::new(16, 1000, Compression::None)));
    let dst = SynthBroker::start(Config::new("orders", 2));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut proxy = MirrorProxy::start(&format!(
        r#"
[clusters.src]
bootstrap = "{}"
max_bytes_per_second = {LIMIT}
[clusters.dst]
bootstrap = "{}"
[[flows]]
source = "src"
target = "dst"
topics = "orders"
[tuning]
metadata_refresh_ms = 500
[metrics]
listen = "{listen}"
"#,
        src.addr(),
        dst.addr()
    ));
    let bytes = || dst.sink().bytes.load(Ordering::Relaxed);
    let start = Instant::now();
    while bytes() == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "nothing arrived:\n{}", proxy.log());
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(1500)); // past the start
    let (b0, t0) = (bytes(), Instant::now());
    thread::sleep(Duration::from_secs(4));
    let (b1, t1) = (bytes(), Instant::now());
    let rate = (b1 - b0) as f64 / t1.duration_since(t0).as_secs_f64();
    let ratio = rate / LIMIT as f64;
    println!("throttled to {LIMIT} B/s: measured {rate:.0} B/s ({ratio:.3} of the limit)");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "measured {rate:.0} B/s against a limit of {LIMIT} ({ratio:.3})\n{}",
        proxy.log()
    );

    let (_, body) = http(&listen, "GET", "/metrics");
    let waited: f64 = body
        .lines()
        .find(|l| l.starts_with("mirrorproxy_throttled_seconds_total{"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no throttled-time metric:\n{body}"));
    assert!(waited > 1.0, "an unthrottled source would have sent far more: the mirror waited {waited} s");
    assert!(proxy.stop().success(), "{}", proxy.log());
}
