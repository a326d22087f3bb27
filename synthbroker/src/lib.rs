//! A synthetic Kafka broker: one node, one data topic, configurable behaviour. It is
//! the one broker of mirrorproxy's tests and benchmark where a real broker (tansu)
//! cannot do what is needed:
//!
//! * the benchmark's **source** (`Config::source`): answers Fetch from pre-built batches
//!   at memory speed or at a rate, keeps KIP-227 fetch sessions as Kafka does (tansu
//!   never grants one) and counts what it saw of them ([`SessionStats`]);
//! * the benchmark's **sink** (no source): acknowledges Produce with increasing base
//!   offsets, counts bytes and records and measures latency ([`SinkStats`]), over TLS
//!   when asked ([`tls_acceptor`]);
//! * the bad-input tests' **faulty source** (`Config::fault`): answers Fetch of the data
//!   topic with garbage, a huge array length or a flipped base offset ([`Fault`]);
//! * CreatePartitions (tansu has none), so a target topic can grow, and a log of the
//!   requests seen (`Config::log_requests`) for a test's diagnostics;
//! * topic configs and ACLs as Kafka answers them (`admin.rs`): refused config values,
//!   an ACL store or no authorizer at all, where tansu cannot stand in.
//!
//! Every behaviour above is a field of one [`Config`] on one [`SynthBroker`], so there is
//! one implementation of Metadata, ListOffsets, CreateTopics, Produce and the rest, not
//! one per test file.
//!
//! Why a crate of its own (a path dev-dependency in the workspace) rather than a module
//! of `mirrorproxy` behind a feature: the proxy's library keeps no test apparatus, not
//! even compiled out; the broker's own dependencies (hdrhistogram, the server side of
//! rustls) stay out of the proxy's `[dependencies]`; and `tests/`, `protocol-tests/`,
//! `examples/bench` and any later crate use it the same way. It depends on `mirrorproxy`
//! only for `wire` (framing and response encoding; Cargo allows the dev-dependency
//! cycle) and builds its record batches with kafka-protocol's encoder, so that the
//! proxy's batch code never judges itself.
//!
//! It serves on tokio: inside a caller's runtime ([`SynthBroker::serve`], the bench's
//! sink and `bench synth-source`), or on a runtime of its own for synchronous tests
//! ([`SynthBroker::start`]). Bytes from the network never make it panic: a request it
//! cannot read or does not implement closes that connection.

mod admin;
mod apis;
mod batches;
mod faults;
mod fetch;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use mirrorproxy::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub use admin::Acl;
pub use batches::{encode_batch, scan_batches, value_bytes};
pub use fetch::SessionStats;
pub use kafka_protocol::records::Compression;
pub use source::now_us;

/// The data a source serves: batches of `batch_records` records of `size`-byte values.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub batch_records: i32,
    pub size: usize,
    pub codec: Compression,
    /// Records per second over all partitions; 0: as fast as asked (every partition endless).
    pub rate: f64,
    /// In rate mode, batches made per partition before the source goes idle (0: no end).
    pub batches: i64,
}

impl Source {
    #[must_use]
    pub fn new(batch_records: i32, size: usize, codec: Compression) -> Self {
        Self { batch_records: batch_records.max(1), size, codec, rate: 0.0, batches: 0 }
    }

    #[must_use]
    pub fn rate(mut self, records_per_s: f64) -> Self {
        self.rate = records_per_s;
        self
    }

    #[must_use]
    pub fn batches(mut self, per_partition: i64) -> Self {
        self.batches = per_partition;
        self
    }
}

/// A wrong answer to every Fetch that reads the data topic (other topics, e.g. the
/// proxy's checkpoints, read as empty). With a fault the broker offers Fetch up to v12,
/// the flexible version the proxy uses against Kafka, and the answers are shaped for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A frame with the right correlation id and pseudo-random bytes after it,
    /// different each time.
    RandomGarbage,
    /// A well-formed response header, then a body whose first array claims ~4 billion
    /// elements (a length that no real response can have).
    HugeArrayLength,
    /// A well-formed response with one valid batch (its CRC right) for partition 0 whose
    /// base offset, which the CRC does not cover, has bit 32 flipped: far beyond the
    /// high watermark of 1.
    FlippedBaseOffset,
}

/// What a [`SynthBroker`] is; [`Config::new`] is a sink (no data, sessions on).
#[derive(Clone, Debug)]
pub struct Config {
    /// The data topic (it exists from the start) and its partition count.
    pub topic: String,
    pub partitions: i32,
    /// The address Metadata names for node 1; None: where it listens
    /// ([`SynthBroker::start`] only).
    pub advertise: Option<(String, i32)>,
    /// Data to serve; None: the data topic reads as empty.
    pub source: Option<Source>,
    pub fault: Option<Fault>,
    /// Grant KIP-227 fetch sessions (false: like a broker without them, id 0).
    pub sessions: bool,
    /// Forget every fetch session this often, as a broker does when its session cache
    /// is full or it restarts (clients must start over).
    pub evict_sessions_every: Option<Duration>,
    /// Keep "Api vN" of every request, for [`SynthBroker::seen`].
    pub log_requests: bool,
    /// The configs set on the data topic (DescribeConfigs answers them).
    pub topic_configs: Vec<(String, String)>,
    /// Config values refused with INVALID_CONFIG: (key, value, the broker's message).
    pub refuse_configs: Vec<(String, String, String)>,
    /// The ACL store; None: no authorizer (SECURITY_DISABLED).
    pub acls: Option<Vec<Acl>>,
}

impl Config {
    #[must_use]
    pub fn new(topic: &str, partitions: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partitions,
            advertise: None,
            source: None,
            fault: None,
            sessions: true,
            evict_sessions_every: None,
            log_requests: false,
            topic_configs: Vec::new(),
            refuse_configs: Vec::new(),
            acls: None,
        }
    }

    #[must_use]
    pub fn advertise(mut self, host: &str, port: i32) -> Self {
        self.advertise = Some((host.to_owned(), port));
        self
    }

    #[must_use]
    pub fn source(mut self, source: Source) -> Self {
        self.source = Some(source);
        self
    }

    #[must_use]
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    #[must_use]
    pub fn sessions(mut self, on: bool) -> Self {
        self.sessions = on;
        self
    }

    #[must_use]
    pub fn evict_sessions_every(mut self, every: Duration) -> Self {
        self.evict_sessions_every = Some(every);
        self
    }

    #[must_use]
    pub fn log_requests(mut self) -> Self {
        self.log_requests = true;
        self
    }

    /// Sets config `key` on the data topic.
    #[must_use]
    pub fn topic_config(mut self, key: &str, value: &str) -> Self {
        self.topic_configs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Refuses `key=value` (in CreateTopics and IncrementalAlterConfigs) with
    /// INVALID_CONFIG and `message`, as Kafka refuses a value above a broker limit.
    #[must_use]
    pub fn refuse_config(mut self, key: &str, value: &str, message: &str) -> Self {
        self.refuse_configs.push((key.to_owned(), value.to_owned(), message.to_owned()));
        self
    }

    /// An authorizer with these bindings to start with.
    #[must_use]
    pub fn authorizer(mut self, bindings: Vec<Acl>) -> Self {
        self.acls = Some(bindings);
        self
    }
}

/// What a sink received on its data topic.
#[derive(Default)]
pub struct SinkStats {
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    /// When set, each uncompressed record's key (a microsecond stamp from a rated
    /// source) is read back: now minus it, in microseconds.
    pub latency: Mutex<Option<Histogram<u64>>>,
}

/// One synthetic broker: node id 1, the data topic led by itself, and whatever topics
/// CreateTopics made.
pub struct SynthBroker {
    topic: String,
    advertise: (String, i32),
    fault: Option<Fault>,
    feed: Option<source::Feed>,
    /// Partitions of the data topic (CreatePartitions grows it).
    partitions: AtomicI32,
    /// Other topics, made by CreateTopics: name → partitions.
    topics: Mutex<BTreeMap<String, i32>>,
    sessions_enabled: bool,
    evict_every: Option<Duration>,
    sessions: Mutex<fetch::Sessions>,
    sink: SinkStats,
    next_offsets: Mutex<HashMap<(String, i32), i64>>,
    fetches: AtomicU64,
    grown: Mutex<Vec<(String, i32)>>,
    log: Option<Mutex<Vec<String>>>,
    /// Configs set per topic.
    configs: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    refuse: admin::Refusals,
    acls: Option<Mutex<Vec<Acl>>>,
}

impl SynthBroker {
    /// A broker as `config` says; `config.advertise` must be set (see [`Self::start`]).
    #[must_use]
    pub fn new(config: Config) -> Self {
        let advertise = config.advertise.expect("SynthBroker::new needs Config::advertise");
        let data_configs = config.topic_configs.into_iter().collect();
        Self {
            configs: Mutex::new(BTreeMap::from([(config.topic.clone(), data_configs)])),
            refuse: config.refuse_configs.into_iter().map(|(k, v, m)| ((k, v), m)).collect(),
            acls: config.acls.map(Mutex::new),
            feed: config.source.map(|s| source::Feed::new(s, config.partitions)),
            topic: config.topic,
            advertise,
            fault: config.fault,
            partitions: AtomicI32::new(config.partitions),
            topics: Mutex::new(BTreeMap::new()),
            sessions_enabled: config.sessions,
            evict_every: config.evict_sessions_every,
            sessions: Mutex::new(fetch::Sessions::default()),
            sink: SinkStats::default(),
            next_offsets: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            grown: Mutex::new(Vec::new()),
            log: config.log_requests.then(|| Mutex::new(Vec::new())),
        }
    }

    /// Binds 127.0.0.1 on a free port and serves there on a runtime of its own (two
    /// worker threads) until the handle is dropped: for synchronous tests.
    #[must_use]
    pub fn start(mut config: Config) -> Serving {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        config.advertise.get_or_insert_with(|| (addr.ip().to_string(), i32::from(addr.port())));
        let broker = Arc::new(Self::new(config));
        rt.spawn(broker.clone().serve(listener, None));
        Serving { broker, addr: addr.to_string(), rt: Some(rt) }
    }

    /// The data topic's name.
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The data topic's partition count now.
    #[must_use]
    pub fn partitions(&self) -> i32 {
        self.partitions.load(Ordering::Relaxed)
    }

    /// Grows (or shrinks) the data topic, as when its cluster's admin adds partitions.
    pub fn set_partitions(&self, n: i32) {
        self.partitions.store(n, Ordering::Relaxed);
    }

    /// Every CreatePartitions topic request: (topic, count asked for).
    #[must_use]
    pub fn grown(&self) -> Vec<(String, i32)> {
        self.grown.lock().unwrap().clone()
    }

    /// The configs set on `topic` now (None: no such topic).
    #[must_use]
    pub fn topic_configs(&self, topic: &str) -> Option<BTreeMap<String, String>> {
        self.partitions_of(topic)?;
        Some(self.configs.lock().unwrap().get(topic).cloned().unwrap_or_default())
    }

    /// Sets config `key` of `topic`, as its cluster's admin would.
    pub fn set_topic_config(&self, topic: &str, key: &str, value: &str) {
        self.configs.lock().unwrap().entry(topic.to_owned()).or_default().insert(key.to_owned(), value.to_owned());
    }

    /// The ACL bindings now, sorted (None: no authorizer).
    #[must_use]
    pub fn acls(&self) -> Option<Vec<Acl>> {
        let mut v = self.acls.as_ref()?.lock().unwrap().clone();
        v.sort();
        Some(v)
    }

    /// Records acknowledged on `topic`'s partition so far (its log end offset).
    #[must_use]
    pub fn log_end(&self, topic: &str, partition: i32) -> i64 {
        self.next_offsets.lock().unwrap().get(&(topic.to_owned(), partition)).copied().unwrap_or(0)
    }

    /// Fetch requests that named the data topic.
    #[must_use]
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// "Api vN" of every request so far, in order (empty without `Config::log_requests`).
    #[must_use]
    pub fn seen(&self) -> Vec<String> {
        self.log.as_ref().map(|l| l.lock().unwrap().clone()).unwrap_or_default()
    }

    /// How many requests of `api` were seen (needs `Config::log_requests`).
    #[must_use]
    pub fn requests(&self, api: kafka_protocol::messages::ApiKey) -> usize {
        let name = format!("{api:?} ");
        self.log.as_ref().map_or(0, |l| l.lock().unwrap().iter().filter(|s| s.starts_with(&name)).count())
    }

    /// What the sink side received.
    #[must_use]
    pub fn sink(&self) -> &SinkStats {
        &self.sink
    }

    /// What the fetch-session side saw so far.
    #[must_use]
    pub fn session_stats(&self) -> SessionStats {
        self.sessions.lock().unwrap().stats
    }

    /// Forgets every fetch session (their next incremental Fetch is refused).
    pub fn evict_sessions(&self) {
        self.sessions.lock().unwrap().map.clear();
    }

    /// Accepts connections on `listener`, over TLS when `tls` is given (the broker side
    /// of the handshake and decryption run here, as on a real broker), until accepting
    /// fails or the future is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let _evictor = self.evict_every.map(|every| {
            let broker = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    broker.evict_sessions();
                }
            }))
        });
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let _ = sock.set_nodelay(true);
            let broker = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let result = match tls {
                    Some(acceptor) => match acceptor.accept(sock).await {
                        Ok(s) => broker.serve_conn(s).await,
                        Err(e) => Err(format!("TLS handshake: {e}")),
                    },
                    None => broker.serve_conn(sock).await,
                };
                if let Err(e) = result {
                    if !e.contains("early eof") && !e.contains("reset") && !e.contains("close_notify") {
                        eprintln!("synthetic broker: {e}");
                    }
                }
            });
        }
    }

    /// Answers the requests of one connection in order; Err ends it.
    async fn serve_conn<S>(&self, sock: S) -> Result<(), String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    {
        const MAX_FRAME: usize = 1 << 30;
        let (mut r, mut w) = tokio::io::split(sock);
        let mut buf = BytesMut::with_capacity(1 << 20);
        loop {
            while let Some(total) = wire::check_frame(&buf, MAX_FRAME).map_err(|e| e.to_string())? {
                let frame = buf.split_to(total).freeze().slice(wire::LENGTH_PREFIX..);
                if let Some(resp) = self.handle(frame).await? {
                    w.write_all(&resp).await.map_err(|e| e.to_string())?;
                }
            }
            // check_frame has bounded the length when 4 bytes are there
            let need = buf.get(..4).map_or(64 << 10, |l| 4 + u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
            buf.reserve(need.saturating_sub(buf.len()));
            if r.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Ok(());
            }
        }
    }
}

/// A broker serving on a runtime of its own ([`SynthBroker::start`]); dropping it stops
/// the broker.
pub struct Serving {
    broker: Arc<SynthBroker>,
    addr: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl Serving {
    /// `127.0.0.1:port`, where it listens.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl std::ops::Deref for Serving {
    type Target = SynthBroker;
    fn deref(&self) -> &SynthBroker {
        &self.broker
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A rustls server configuration from `dir/broker.pem` and `dir/broker.key` (as made
/// by `tls/make-certs.sh`).
#[must_use]
pub fn tls_acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("broker.pem"))
        .expect("broker.pem")
        .collect::<Result<_, _>>()
        .expect("broker.pem");
    let key = PrivateKeyDer::from_pem_file(dir.join("broker.key")).expect("broker.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("broker certificate");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
