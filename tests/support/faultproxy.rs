//! A fault-injecting TCP proxy for the fault suite (`tests/faults.rs`).
//!
//! It sits between mirrorproxy and one tansu broker (which advertises the proxy's
//! address in Metadata, see `Broker::start_advertising`), relays whole Kafka frames
//! and, on the broker->client direction, hurts them:
//!
//! - a connection reset (RST, `SO_LINGER` 0) after a random part of a response;
//! - a stall of a few seconds in the middle of a response;
//! - 1–7-byte fragmentation of the first few hundred bytes of a response (length
//!   prefix, header and the first batch headers arrive in pieces);
//! - a delay before a response;
//! - bit flips in Fetch responses: in a batch's records (covered by the CRC-32C) or in
//!   its base offset (bytes 0..8, not covered by the CRC: brokers assign offsets after
//!   the producer computed it, KIP-98).
//!
//! To flip in the right place it reads the client->broker direction too: each
//! request's api key and version by correlation id, so a Fetch response is decoded
//! with `kafka_protocol` at the version asked for; the decoded records are views of
//! the frame, which gives each partition's position in it, and the bits are flipped
//! there (everything else stays as the broker sent it).
//!
//! Connections whose client id starts with `rdkafka` (librdkafka, the test's own
//! producer and checker) are relayed untouched: only the mirror is hurt. Every
//! decision comes from a seeded RNG ([`Rng`]); the counters in [`Stats`] let a test
//! show that the faults it relies on did happen.
#![allow(dead_code, clippy::pedantic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{FetchResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, HeaderVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// splitmix64: small, seedable, good enough to pick faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` if `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next_u64() % 1000 < u64::from(per_mille)
    }
}

/// Where in a batch a flip goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlipKind {
    /// One bit in the records section (after the 61-byte header): CRC-covered.
    RecordData,
    /// Bit `n` (0 = least significant) of the base offset: not CRC-covered.
    BaseOffset(u32),
    /// The lowest bit at or above `n` that is 0 in the base offset: the base goes up
    /// by a little, staying below the high watermark, so no single check of the
    /// batch can tell.
    BaseOffsetRaise(u32),
}

/// Flip a bit in one batch of `topic`/`partition`: the first batch met whose base
/// offset is at least `from_offset`. `persistent`: every later response that holds
/// that batch is flipped the same way (as if it were corrupt on the broker's disk);
/// otherwise only the first one (a flip on the wire).
#[derive(Debug, Clone)]
pub struct FlipRule {
    pub topic: String,
    pub partition: i32,
    pub from_offset: i64,
    pub kind: FlipKind,
    pub persistent: bool,
}

/// A flip that was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flipped {
    pub rule: usize,
    pub topic: String,
    pub partition: i32,
    /// The batch's true base and last offsets.
    pub base_offset: i64,
    pub last_offset: i64,
    /// Byte of the batch and bit in it.
    pub byte: usize,
    pub bit: u32,
}

/// What to do to responses on hurt connections. Probabilities are per response frame.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub reset_per_mille: u32,
    pub stall_per_mille: u32,
    /// Stall length range, ms.
    pub stall_ms: (u64, u64),
    pub fragment_per_mille: u32,
    pub delay_per_mille: u32,
    /// Delay range, ms.
    pub delay_ms: (u64, u64),
    /// Each kind with a non-zero rate also happens for sure once, at a hurt response
    /// drawn from `3..=force_within` (counted over the whole proxy), so that a short
    /// run meets every kind it asks for. 0: rates only.
    pub force_within: u64,
    pub flips: Vec<FlipRule>,
}

impl Faults {
    /// Resets, 2–5 s stalls, fragmentation and delays, at rates a mirror that fetches
    /// every ~50 ms meets many times a minute.
    pub fn chaos() -> Faults {
        Faults {
            reset_per_mille: 10,
            stall_per_mille: 4,
            stall_ms: (2_000, 5_000),
            fragment_per_mille: 150,
            delay_per_mille: 200,
            delay_ms: (1, 40),
            force_within: 40,
            flips: Vec::new(),
        }
    }

    pub fn flips(flips: Vec<FlipRule>) -> Faults {
        Faults { flips, ..Faults::default() }
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub hurt_connections: AtomicU64,
    pub responses: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
    pub fragmented: AtomicU64,
    pub delayed: AtomicU64,
    flipped: Mutex<Vec<Flipped>>,
}

impl Stats {
    pub fn flipped(&self) -> Vec<Flipped> {
        self.flipped.lock().unwrap().clone()
    }

    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} connections ({} hurt), {} responses: {} resets, {} stalls, {} fragmented, {} delayed, {} flips",
            g(&self.connections),
            g(&self.hurt_connections),
            g(&self.responses),
            g(&self.resets),
            g(&self.stalls),
            g(&self.fragmented),
            g(&self.delayed),
            self.flipped.lock().unwrap().len()
        )
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct FlipState {
    /// True base offset of the chosen batch, and the byte/bit flipped in it.
    chosen: Option<(i64, usize, u32)>,
    times: u64,
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    flip_state: Mutex<Vec<FlipState>>,
    stats: Stats,
    seed: u64,
    next_conn: AtomicU64,
    /// Hurt responses so far, and the indices at which [reset, stall, fragment, delay]
    /// are forced (0: none).
    hurt_responses: AtomicU64,
    forced: Mutex<[u64; 4]>,
}

/// The proxy; stopped (with its connections) on drop.
pub struct FaultProxy {
    pub port: u16,
    /// `127.0.0.1:port`, to advertise and to use as a bootstrap.
    pub addr: String,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

const SPARED_CLIENT_PREFIX: &[u8] = b"rdkafka";
const MAX_FRAME: usize = 256 << 20;

impl FaultProxy {
    /// Listens on a free loopback port and relays to `upstream` (connected per client
    /// connection, so the broker may start later). No faults until [`set_faults`].
    pub fn start(upstream: SocketAddr, seed: u64) -> FaultProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("faultproxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("fault proxy bind");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(Faults::default()),
            flip_state: Mutex::new(Vec::new()),
            stats: Stats::default(),
            seed,
            next_conn: AtomicU64::new(0),
            hurt_responses: AtomicU64::new(0),
            forced: Mutex::new([0; 4]),
        });
        let s = shared.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(s.clone(), client));
            }
        });
        FaultProxy { port, addr: format!("127.0.0.1:{port}"), shared, rt: Some(rt) }
    }

    /// Replaces the faults (flip rules start afresh).
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.flip_state.lock().unwrap() = vec![FlipState::default(); faults.flips.len()];
        let mut rng = Rng::new(self.shared.seed ^ 0x5EED);
        let base = self.shared.hurt_responses.load(Ordering::Relaxed);
        let rates = [faults.reset_per_mille, faults.stall_per_mille, faults.fragment_per_mille, faults.delay_per_mille];
        *self.shared.forced.lock().unwrap() =
            rates.map(|r| if r > 0 && faults.force_within >= 3 { base + rng.range(3, faults.force_within) } else { 0 });
        *self.shared.faults.lock().unwrap() = faults;
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// 0: client id not seen yet, 1: hurt, 2: spared.
type Mode = AtomicU8;

async fn serve(shared: Arc<Shared>, client: TcpStream) {
    let n = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let inflight: Arc<Mutex<HashMap<i32, (i16, i16)>>> = Arc::default();
    let mode: Arc<Mode> = Arc::default();
    let up = tokio::spawn(requests(cr, uw, inflight.clone(), mode.clone(), shared.clone()));
    let rng = Rng::new(shared.seed ^ (n.wrapping_add(1)).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    responses(ur, cw, inflight, mode, shared, rng).await;
    up.abort();
}

async fn read_frame(r: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let n = i32::from_be_bytes(len);
    if n < 0 || n as usize > MAX_FRAME {
        return None;
    }
    let mut frame = vec![0u8; 4 + n as usize];
    frame[..4].copy_from_slice(&len);
    r.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// Client -> broker: relayed as is; api key/version noted by correlation id.
async fn requests(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    inflight: Arc<Mutex<HashMap<i32, (i16, i16)>>>,
    mode: Arc<Mode>,
    shared: Arc<Shared>,
) {
    while let Some(frame) = read_frame(&mut r).await {
        if frame.len() >= 12 {
            let key = i16::from_be_bytes([frame[4], frame[5]]);
            let version = i16::from_be_bytes([frame[6], frame[7]]);
            let corr = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            inflight.lock().unwrap().insert(corr, (key, version));
            if mode.load(Ordering::Acquire) == 0 {
                let id = client_id(&frame[12..]);
                let spared = id.is_some_and(|id| id.starts_with(SPARED_CLIENT_PREFIX));
                if !spared {
                    shared.stats.hurt_connections.fetch_add(1, Ordering::Relaxed);
                }
                mode.store(if spared { 2 } else { 1 }, Ordering::Release);
            }
        }
        if w.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// The (nullable, non-compact) client id at the start of `rest`.
fn client_id(rest: &[u8]) -> Option<&[u8]> {
    let len = i16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let len = usize::try_from(len).ok()?;
    rest.get(2..2 + len)
}

/// Broker -> client: the faults.
async fn responses(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    inflight: Arc<Mutex<HashMap<i32, (i16, i16)>>>,
    mode: Arc<Mode>,
    shared: Arc<Shared>,
    mut rng: Rng,
) {
    while let Some(mut frame) = read_frame(&mut r).await {
        shared.stats.responses.fetch_add(1, Ordering::Relaxed);
        let hurt = mode.load(Ordering::Acquire) == 1;
        let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let asked = inflight.lock().unwrap().remove(&corr);
        if !hurt {
            if w.write_all(&frame).await.is_err() {
                return;
            }
            continue;
        }
        let faults = shared.faults.lock().unwrap().clone();
        let index = shared.hurt_responses.fetch_add(1, Ordering::Relaxed) + 1;
        // A forced fault is due from its index on until it was done (a reset may
        // have taken the response it was drawn for).
        let [force_reset, force_stall, force_fragment, force_delay] =
            shared.forced.lock().unwrap().map(|at| at != 0 && index >= at);
        let done = |kind: usize| shared.forced.lock().unwrap()[kind] = 0;
        if let Some((1, version)) = asked {
            if !faults.flips.is_empty() {
                if let Some(f) = flip_fetch(&frame, version, &faults.flips, &shared, &mut rng) {
                    frame = f;
                }
            }
        }
        let len = frame.len();
        if len > 8 && (force_reset || rng.chance(faults.reset_per_mille)) {
            let cut = rng.range(1, len as u64 - 1) as usize;
            let _ = w.write_all(&frame[..cut]).await;
            // Linger 0 makes the close an RST; with 0 the close does not block.
            #[allow(deprecated)]
            let _ = w.as_ref().set_linger(Some(Duration::ZERO));
            shared.stats.resets.fetch_add(1, Ordering::Relaxed);
            done(0);
            return; // both sockets close: RST to the client, FIN to the broker
        }
        if force_delay || rng.chance(faults.delay_per_mille) {
            shared.stats.delayed.fetch_add(1, Ordering::Relaxed);
            done(3);
            tokio::time::sleep(Duration::from_millis(rng.range(faults.delay_ms.0, faults.delay_ms.1))).await;
        }
        let mut at = 0;
        if force_fragment || rng.chance(faults.fragment_per_mille) {
            shared.stats.fragmented.fetch_add(1, Ordering::Relaxed);
            done(2);
            let end = len.min(rng.range(16, 600) as usize);
            while at < end {
                let piece = (rng.range(1, 7) as usize).min(end - at);
                if w.write_all(&frame[at..at + piece]).await.is_err() {
                    return;
                }
                at += piece;
                tokio::task::yield_now().await;
            }
        }
        if len - at > 1 && (force_stall || rng.chance(faults.stall_per_mille)) {
            shared.stats.stalls.fetch_add(1, Ordering::Relaxed);
            done(1);
            let mid = at + rng.range(1, (len - at - 1) as u64) as usize;
            if w.write_all(&frame[at..mid]).await.is_err() {
                return;
            }
            at = mid;
            tokio::time::sleep(Duration::from_millis(rng.range(faults.stall_ms.0, faults.stall_ms.1))).await;
        }
        if w.write_all(&frame[at..]).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Applies the flip rules to a Fetch response frame; None if nothing was flipped (or
/// the frame does not decode, which is then relayed as it is). The response is
/// decoded to find each partition's records; the bits are flipped in place in the
/// original frame (the decoded records are views of it), so everything else stays
/// byte for byte as the broker sent it.
fn flip_fetch(frame: &[u8], version: i16, rules: &[FlipRule], shared: &Shared, rng: &mut Rng) -> Option<Vec<u8>> {
    let body = Bytes::copy_from_slice(&frame[4..]);
    let start = body.as_ptr() as usize;
    let mut cursor = body.clone();
    let header_version = <FetchResponse as HeaderVersion>::header_version(version);
    ResponseHeader::decode(&mut cursor, header_version).ok()?;
    let resp = FetchResponse::decode(&mut cursor, version).ok()?;
    let mut out: Option<Vec<u8>> = None;
    for topic in &resp.responses {
        for part in &topic.partitions {
            let Some(records) = part.records.as_ref() else { continue };
            let at = (records.as_ptr() as usize).wrapping_sub(start);
            if records.is_empty() || at.checked_add(records.len()).is_none_or(|end| end > body.len()) {
                continue; // not a view of this frame (cannot happen with kafka-protocol 0.18)
            }
            for (i, rule) in rules.iter().enumerate() {
                if topic.topic.0.as_str() != rule.topic || part.partition_index != rule.partition {
                    continue;
                }
                let mut state = shared.flip_state.lock().unwrap();
                let Some(st) = state.get_mut(i) else { continue };
                if st.times > 0 && !rule.persistent {
                    continue;
                }
                let frame_out = out.get_or_insert_with(|| frame.to_vec());
                let region = &mut frame_out[4 + at..4 + at + records.len()];
                if let Some(done) = flip_in(region, i, rule, st, rng) {
                    st.times += 1;
                    shared.stats.flipped.lock().unwrap().push(Flipped {
                        topic: rule.topic.clone(),
                        partition: rule.partition,
                        ..done
                    });
                }
            }
        }
    }
    out
}

/// Flips the bit of `rule` in the chosen batch of `records`, choosing it first if
/// needed. Returns what was flipped (topic and partition left for the caller).
fn flip_in(
    records: &mut [u8],
    rule_index: usize,
    rule: &FlipRule,
    st: &mut FlipState,
    rng: &mut Rng,
) -> Option<Flipped> {
    let mut at = 0usize;
    while records.len() - at >= 61 {
        let b = &records[at..];
        let base = i64::from_be_bytes(b[0..8].try_into().unwrap());
        let len = i32::from_be_bytes(b[8..12].try_into().unwrap());
        let total = 12 + usize::try_from(len).ok()?;
        if total > b.len() {
            return None; // a partial batch at the end of the response
        }
        let attributes = i16::from_be_bytes([b[21], b[22]]);
        let last_delta = i32::from_be_bytes(b[23..27].try_into().unwrap());
        let control = attributes & 0x20 != 0;
        let pick = match st.chosen {
            Some((chosen, _, _)) => base == chosen,
            None => base >= rule.from_offset && !control && total > 61,
        };
        if pick {
            let (byte, bit) = match st.chosen {
                Some((_, byte, bit)) => (byte, bit),
                None => match rule.kind {
                    FlipKind::RecordData => (rng.range(61, total as u64 - 1) as usize, rng.range(0, 7) as u32),
                    FlipKind::BaseOffset(n) => (7 - (n / 8) as usize, n % 8),
                    FlipKind::BaseOffsetRaise(n) => {
                        let n = (n..63).find(|k| base & (1 << k) == 0).unwrap_or(62);
                        (7 - (n / 8) as usize, n % 8)
                    }
                },
            };
            st.chosen = Some((base, byte, bit));
            records[at + byte] ^= 1 << bit;
            return Some(Flipped {
                rule: rule_index,
                topic: String::new(),
                partition: 0,
                base_offset: base,
                last_offset: base + i64::from(last_delta),
                byte,
                bit,
            });
        }
        at += total;
    }
    None
}
