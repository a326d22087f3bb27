//! The benchmark harness: WAN (network namespace + netem).
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) const NS: &str = "mpbench";
pub(crate) const NS_HOST_IF: &str = "mpb0";
pub(crate) const NS_PEER_IF: &str = "mpb1";
pub(crate) const NS_HOST_IP: &str = "10.213.7.1";
pub(crate) const NS_PEER_IP: &str = "10.213.7.2";

/// A network namespace holding the source side, reached over a veth pair with netem
/// delay (half the RTT each way) and a rate cap on the source → proxy direction.
/// Removed on drop.
pub(crate) struct Netns {
    pub(crate) rate: String,
    pub(crate) delay_ms: f64,
}

pub(crate) fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    pub(crate) fn create(rate: &str, rtt_ms: f64) -> Result<Netns, String> {
        Self::cleanup();
        let half = rtt_ms / 2.0;
        let steps = [
            format!("ip netns add {NS}"),
            format!("ip link add {NS_HOST_IF} type veth peer name {NS_PEER_IF}"),
            format!("ip link set {NS_PEER_IF} netns {NS}"),
            format!("ip addr add {NS_HOST_IP}/30 dev {NS_HOST_IF}"),
            format!("ip link set {NS_HOST_IF} up"),
            format!("ip netns exec {NS} ip addr add {NS_PEER_IP}/30 dev {NS_PEER_IF}"),
            format!("ip netns exec {NS} ip link set {NS_PEER_IF} up"),
            format!("ip netns exec {NS} ip link set lo up"),
            // source → proxy: delay + rate cap; proxy → source: delay
            format!(
                "ip netns exec {NS} tc qdisc add dev {NS_PEER_IF} root netem delay {half}ms rate {rate} limit 100000"
            ),
            format!("tc qdisc add dev {NS_HOST_IF} root netem delay {half}ms limit 100000"),
        ];
        let ns = Netns { rate: rate.to_owned(), delay_ms: rtt_ms };
        for s in &steps {
            sh(s)?;
        }
        Ok(ns)
    }

    pub(crate) fn cleanup() {
        let _ = sh(&format!("ip link del {NS_HOST_IF} 2>/dev/null"));
        let _ = sh(&format!("ip netns del {NS} 2>/dev/null"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Self::cleanup();
    }
}

pub(crate) fn parse_rate(r: &str) -> f64 {
    let (n, mult) = if let Some(n) = r.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = r.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = r.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        (r.trim_end_matches("bit"), 1.0)
    };
    n.parse::<f64>().unwrap_or(0.0) * mult / 8.0
}

/// How the WAN is made: netem in a network namespace, or the user-space `bench link`.
pub(crate) enum WanLink {
    Netem(Netns),
    UserSpace { rate: String, rtt_ms: f64 },
}

pub(crate) fn wan_run(ctx: &mut Ctx, wan: &WanLink, peer: Peer, size: usize, codec: &str) -> Value {
    let (mut cmd, src_addr, listen, link_addr) = match wan {
        WanLink::Netem(_) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", NS]).arg(&ctx.exe);
            let a = format!("{NS_PEER_IP}:{}", 19092);
            (c, a.clone(), a, None)
        }
        WanLink::UserSpace { .. } => {
            let listen = format!("127.0.0.1:{}", free_port());
            let link = format!("127.0.0.1:{}", free_port());
            (Command::new(&ctx.exe), link.clone(), listen, Some(link))
        }
    };
    let _source = spawn_source(ctx, &mut cmd, "synth-source-wan", &listen, &src_addr, size, codec, 0.0);
    let _link = match (wan, &link_addr) {
        (WanLink::UserSpace { rate, rtt_ms }, Some(link)) => {
            let log = ctx.log("link");
            let p = Proc::spawn(
                "link",
                Command::new(&ctx.exe)
                    .args(["link", "--listen", link, "--upstream", &listen, "--rate", rate])
                    .args(["--rtt-ms", &rtt_ms.to_string()]),
                &log,
            );
            assert!(wait_port(link, Duration::from_secs(10)), "bench link did not start");
            Some(p)
        }
        _ => None,
    };
    let saved = (ctx.secs, ctx.warmup);
    ctx.secs = ctx.secs.max(10.0);
    ctx.warmup = ctx.warmup.max(3.0);
    let mut v = measure(ctx, peer, &src_addr, &src_addr, size, codec, false, 0, "wan");
    (ctx.secs, ctx.warmup) = saved;
    // the link carries fetch responses; the sink counts batches: near-equal byte counts
    let mbps = v["mb_per_s"].as_f64().unwrap_or(0.0);
    let (rate, rtt, how) = match wan {
        WanLink::Netem(ns) => (ns.rate.clone(), ns.delay_ms, "netem"),
        WanLink::UserSpace { rate, rtt_ms } => (rate.clone(), *rtt_ms, "user-space link emulator"),
    };
    let link_bytes_per_s = parse_rate(&rate);
    v["link_mb_per_s"] = json!(link_bytes_per_s / 1e6);
    v["link_utilization"] = json!(mbps * 1e6 / link_bytes_per_s);
    v["link"] = json!(format!("{rate}, {rtt} ms RTT ({how})"));
    v
}
