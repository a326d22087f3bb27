//! Connections to brokers: sockets, ApiVersions negotiation, correlation ids, pipelining.
//!
//! One [`Connection`] is one TCP stream to one broker. Requests are pipelined: any
//! number of tasks may call [`Connection::call`] at once; the request frames are written
//! in the order the calls were made (Kafka answers in request order per connection,
//! which the idempotent producer relies on) and responses are matched by correlation id.
//!
//! A writer task and a reader task own the two halves of the stream, as in rskafka's
//! messenger. When the stream breaks, the connection becomes *poisoned*: every pending
//! and every later request fails at once with the same error, and the owner opens a new
//! connection. A half-broken connection is never reused.
//!
//! [`Transport`] is the byte stream under a connection: plain TCP, or TLS ([`tls`],
//! rustls) for inter-datacenter links; the rest of the layer does not care which one it
//! is. With SASL configured ([`sasl`]), [`Connection::connect_secure`] authenticates
//! right after ApiVersions, before the connection is handed out. A connection whose SASL
//! session has a lifetime (KIP-368) *retires* before it expires: [`Connection::is_poisoned`]
//! then says true so its owner opens a new one, while requests already sent on it are
//! still answered (see [`sasl`]).

pub mod sasl;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ProduceRequest};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::wire::produce::{FrameParts, ProduceFields, TopicRecords};
use crate::wire::{self, WireError};

/// Largest response frame accepted. Fetch responses are bounded by our own max_bytes
/// plus one batch; anything near this is a peer that does not speak Kafka.
pub const MAX_FRAME: usize = 512 << 20;

/// Errors of the network layer. Each names the broker address.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to {addr} broke: {reason}")]
    Broken { addr: String, reason: String },
    #[error("{addr} did not answer {api:?} within {timeout:?}")]
    Timeout { addr: String, api: ApiKey, timeout: Duration },
    #[error("{addr} sent bytes that are not a valid Kafka response: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("{addr} does not support {api:?} in a version we speak (broker {broker_min}..={broker_max}, ours {ours_min}..={ours_max})")]
    UnsupportedVersion { addr: String, api: ApiKey, broker_min: i16, broker_max: i16, ours_min: i16, ours_max: i16 },
    /// A certificate or TLS alert problem; retrying cannot fix it.
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    /// SASL refused (wrong credentials, mechanism not enabled); retrying cannot fix it.
    #[error("SASL authentication with {addr} failed: {reason}")]
    Authentication { addr: String, reason: String },
}

impl NetError {
    /// The Kafka client error this is (`Errors.java` names, as in metrics): a timeout is
    /// REQUEST_TIMED_OUT, a refused version UNSUPPORTED_VERSION, credentials
    /// SASL_AUTHENTICATION_FAILED, anything else on the connection NETWORK_EXCEPTION.
    #[must_use]
    pub fn kafka_name(&self) -> &'static str {
        match self {
            NetError::Timeout { .. } => "REQUEST_TIMED_OUT",
            NetError::UnsupportedVersion { .. } => "UNSUPPORTED_VERSION",
            NetError::Authentication { .. } => "SASL_AUTHENTICATION_FAILED",
            _ => "NETWORK_EXCEPTION",
        }
    }

    /// Network errors are all worth retrying on a new connection, except a version
    /// mismatch, a peer that does not speak Kafka, a certificate problem and refused
    /// credentials: those need an operator.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        !matches!(
            self,
            NetError::UnsupportedVersion { .. }
                | NetError::Protocol { .. }
                | NetError::Tls { .. }
                | NetError::Authentication { .. }
        )
    }
}

/// The byte stream under a connection.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    fn split(self) -> (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>) {
        match self {
            Transport::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Transport::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// TLS and SASL for the connections of one cluster; the default is neither.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<tls::TlsConnector>>,
    pub sasl: Option<Arc<sasl::SaslCredentials>>,
}

/// Fraction of a SASL session lifetime after which a connection retires (the Java
/// client re-authenticates between 85 % and 95 %).
const RETIRE_AT: f64 = 0.85;

/// Highest version of each API this client implements. Fetch and Produce stop at the
/// last versions that name topics (v13 of both switched to topic ids, KIP-516).
#[must_use]
#[allow(clippy::match_same_arms)] // a table: one line per API, whatever its number
pub fn our_max_version(api: ApiKey) -> i16 {
    match api {
        ApiKey::Fetch | ApiKey::Produce => 12,
        ApiKey::Metadata => 12,
        ApiKey::ApiVersions => 3,
        ApiKey::ListOffsets => 8,
        ApiKey::CreateTopics => 7,
        ApiKey::CreatePartitions => 3,
        // v6 names topics in a struct (with ids); v5 lists names.
        ApiKey::DeleteTopics => 5,
        // Group APIs: the last versions with one group per request.
        ApiKey::FindCoordinator => 3,
        ApiKey::OffsetFetch => 7,
        ApiKey::OffsetCommit => 8,
        ApiKey::DescribeGroups => 5,
        ApiKey::ListGroups => 4,
        ApiKey::DescribeConfigs => 4,
        ApiKey::InitProducerId => 4,
        _ => i16::MAX,
    }
}

/// Lowest version of each API this client can encode what it needs in.
/// Metadata needs v4: below it, a Metadata request cannot say "do not auto-create".
#[must_use]
pub fn our_min_version(api: ApiKey) -> i16 {
    match api {
        ApiKey::Metadata => 4,
        // Below v3 Produce carries the old message sets, not record batch v2.
        ApiKey::Produce => *wire::produce::PRODUCE_VERSIONS.start(),
        // v0 sends the SASL tokens as raw frames outside Kafka's framing (pre KIP-152).
        ApiKey::SaslHandshake => 1,
        _ => 0,
    }
}

type Reply = oneshot::Sender<Result<Bytes, NetError>>;

struct Shared {
    addr: String,
    /// For a TLS connection: the verified name and whether we have a client certificate,
    /// to explain TLS alerts that arrive after the handshake (TLS 1.3 client auth).
    tls: Option<(String, bool)>,
    pending: Mutex<HashMap<i32, Reply>>,
    poison: Mutex<Option<NetError>>,
}

impl Shared {
    /// A broken stream: a TLS alert or certificate problem is named as such.
    fn io_error(&self, e: &std::io::Error) -> NetError {
        if let (Some((host, has_cert)), Some(err)) = (&self.tls, tls::tls_error(e)) {
            return NetError::Tls { addr: self.addr.clone(), reason: tls::describe(err, host, *has_cert) };
        }
        NetError::Broken { addr: self.addr.clone(), reason: e.to_string() }
    }

    fn poison(&self, err: NetError) {
        let mut p = self.poison.lock().unwrap();
        if p.is_none() {
            *p = Some(err.clone());
        }
        drop(p);
        let drained: Vec<Reply> = self.pending.lock().unwrap().drain().map(|(_, r)| r).collect();
        for reply in drained {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

/// A pipelined connection to one broker.
pub struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<FrameParts>,
    next_correlation: AtomicI32,
    versions: HashMap<i16, (i16, i16)>,
    client_id: String,
    request_timeout: Duration,
    /// When the SASL session is near its end (KIP-368): the connection retires then.
    retire_at: Option<Instant>,
}

impl Connection {
    /// Connects (plain TCP, no SASL) and negotiates API versions.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, NetError> {
        Self::connect_secure(addr, client_id, connect_timeout, request_timeout, &Security::default()).await
    }

    /// Connects, does the TLS handshake if configured, negotiates API versions and
    /// authenticates with SASL if configured.
    pub async fn connect_secure(
        addr: &str,
        client_id: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        security: &Security,
    ) -> Result<Self, NetError> {
        let cerr = |reason: String| NetError::Connect { addr: addr.to_owned(), reason };
        let started = Instant::now();
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| cerr(format!("no answer within {connect_timeout:?}")))?
            .map_err(|e| cerr(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| cerr(e.to_string()))?;
        let (transport, tls_ctx) = match &security.tls {
            None => (Transport::Plain(stream), None),
            Some(tls) => {
                let left = connect_timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
                let s = tls.handshake(stream, addr, left).await?;
                (Transport::Tls(Box::new(s)), Some((tls.verified_name(addr).to_owned(), tls.has_client_cert())))
            }
        };
        let mut conn = Self::start(transport, addr, client_id, request_timeout, tls_ctx);
        conn.negotiate().await?;
        if let Some(creds) = &security.sasl {
            if let Some(lifetime) = sasl::authenticate(&conn, creds).await? {
                conn.retire_at = Some(Instant::now() + lifetime.mul_f64(RETIRE_AT));
            }
        }
        Ok(conn)
    }

    fn start(
        transport: Transport,
        addr: &str,
        client_id: &str,
        request_timeout: Duration,
        tls: Option<(String, bool)>,
    ) -> Self {
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            tls,
            pending: Mutex::new(HashMap::new()),
            poison: Mutex::new(None),
        });
        let (reader, writer) = transport.split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, rx, shared.clone()));
        tokio::spawn(read_loop(reader, shared.clone()));
        Self {
            shared,
            tx,
            next_correlation: AtomicI32::new(1),
            versions: HashMap::new(),
            client_id: client_id.to_owned(),
            request_timeout,
            retire_at: None,
        }
    }

    async fn negotiate(&mut self) -> Result<(), NetError> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("mirrorproxy"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        // v3 first; a broker that does not know it answers in v0 with UNSUPPORTED_VERSION
        // and its own version list (KIP-511), so decoding it at v0 works as well.
        let frame = self.raw_call::<ApiVersionsRequest>(&req, 3).await?;
        let resp = match wire::decode_response::<ApiVersionsRequest>(frame.clone(), 3) {
            Ok(r) if r.error_code == 0 => r,
            _ => wire::decode_response::<ApiVersionsRequest>(frame, 0).map_err(|e| self.protocol_error(&e))?,
        };
        if resp.error_code != 0 && resp.api_keys.is_empty() {
            return Err(NetError::Protocol {
                addr: self.addr().to_owned(),
                reason: format!("ApiVersions failed with error code {}", resp.error_code),
            });
        }
        self.versions = resp.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(())
    }

    /// The broker address this connection goes to.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// True once the stream broke, or once the SASL session is near its end (KIP-368);
    /// either way the owner should open a new connection.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.is_retired() || self.shared.poison.lock().unwrap().is_some()
    }

    /// Requests sent and not yet answered (for the per-broker metrics).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shared.pending.lock().unwrap().len()
    }

    /// True once the SASL session lifetime is 85 % over.
    #[must_use]
    pub fn is_retired(&self) -> bool {
        self.retire_at.is_some_and(|t| Instant::now() >= t)
    }

    /// When this connection retires (SASL session lifetime), if it does.
    #[must_use]
    pub fn retire_at(&self) -> Option<Instant> {
        self.retire_at
    }

    /// The version used for request type `R`: the highest one both sides support.
    pub fn version_for<R: Request>(&self) -> Result<i16, NetError> {
        let api = wire::api_key::<R>();
        let ours_min = R::VERSIONS.min.max(our_min_version(api));
        let ours_max = R::VERSIONS.max.min(our_max_version(api));
        let (broker_min, broker_max) = self.versions.get(&R::KEY).copied().unwrap_or((-1, -1));
        let v = ours_max.min(broker_max);
        if broker_max < 0 || v < ours_min.max(broker_min) {
            return Err(NetError::UnsupportedVersion {
                addr: self.addr().to_owned(),
                api,
                broker_min,
                broker_max,
                ours_min,
                ours_max,
            });
        }
        Ok(v)
    }

    /// Sends a request and waits for its response, at the negotiated version.
    pub async fn call<R: Request>(&self, request: &R) -> Result<R::Response, NetError> {
        let version = self.version_for::<R>()?;
        self.call_at(request, version).await
    }

    /// Sends a request at an explicit version and waits for its response.
    pub async fn call_at<R: Request>(&self, request: &R, version: i16) -> Result<R::Response, NetError> {
        self.send_at(request, version)?.await
    }

    /// Queues a request *now* and returns a future for its response.
    ///
    /// Requests queued by successive `send` calls are written in that order, which is
    /// what keeps an idempotent producer's batches in sequence order on the wire, even
    /// though their responses are awaited elsewhere.
    pub fn send<R: Request>(
        &self,
        request: &R,
    ) -> Result<impl std::future::Future<Output = Result<R::Response, NetError>> + Send + 'static, NetError> {
        let version = self.version_for::<R>()?;
        self.send_at(request, version)
    }

    /// Queues a Produce request *now* (like [`Connection::send`]), encoded so that the
    /// records sections of the batches are written from where they are, not copied
    /// ([`wire::produce`]).
    pub fn send_produce(
        &self,
        fields: &ProduceFields<'_>,
        topics: &[TopicRecords<'_>],
    ) -> Result<
        impl std::future::Future<Output = Result<<ProduceRequest as Request>::Response, NetError>> + Send + 'static,
        NetError,
    > {
        let version = self.version_for::<ProduceRequest>()?;
        let reply = self.enqueue_parts(|correlation_id| {
            wire::produce::encode_produce(version, correlation_id, &self.client_id, fields, topics)
        })?;
        Ok(self.awaiting::<ProduceRequest>(reply, version))
    }

    fn send_at<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<impl std::future::Future<Output = Result<R::Response, NetError>> + Send + 'static, NetError> {
        let reply = self.enqueue(request, version)?;
        Ok(self.awaiting::<R>(reply, version))
    }

    /// The future of a queued request's decoded response.
    fn awaiting<R: Request>(
        &self,
        reply: oneshot::Receiver<Result<Bytes, NetError>>,
        version: i16,
    ) -> impl std::future::Future<Output = Result<R::Response, NetError>> + Send + 'static {
        let shared = self.shared.clone();
        let timeout = self.request_timeout;
        async move {
            let api = wire::api_key::<R>();
            let frame = match tokio::time::timeout(timeout, reply).await {
                Ok(Ok(result)) => result?,
                Ok(Err(_)) => {
                    return Err(NetError::Broken { addr: shared.addr.clone(), reason: "connection closed".into() })
                }
                Err(_) => {
                    let err = NetError::Timeout { addr: shared.addr.clone(), api, timeout };
                    // The stream's state is unknown now: start over on a new connection.
                    shared.poison(err.clone());
                    return Err(err);
                }
            };
            wire::decode_response::<R>(frame, version).map_err(|e| {
                let err = NetError::Protocol { addr: shared.addr.clone(), reason: e.to_string() };
                // We disagree with the broker about the message layout: fail everything on it.
                shared.poison(err.clone());
                err
            })
        }
    }

    fn protocol_error(&self, e: &WireError) -> NetError {
        NetError::Protocol { addr: self.addr().to_owned(), reason: e.to_string() }
    }

    async fn raw_call<R: Request>(&self, request: &R, version: i16) -> Result<Bytes, NetError> {
        let reply = self.enqueue(request, version)?;
        match tokio::time::timeout(self.request_timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Broken { addr: self.addr().to_owned(), reason: "connection closed".into() }),
            Err(_) => {
                let err = NetError::Timeout {
                    addr: self.addr().to_owned(),
                    api: wire::api_key::<R>(),
                    timeout: self.request_timeout,
                };
                self.shared.poison(err.clone());
                Err(err)
            }
        }
    }

    /// Registers a correlation id and hands the frame to the writer task.
    fn enqueue<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<oneshot::Receiver<Result<Bytes, NetError>>, NetError> {
        self.enqueue_parts(|correlation_id| {
            wire::encode_request(request, version, correlation_id, &self.client_id).map(|f| vec![f])
        })
    }

    /// Registers a correlation id, encodes the frame with it and hands it to the writer.
    fn enqueue_parts(
        &self,
        encode: impl FnOnce(i32) -> Result<FrameParts, WireError>,
    ) -> Result<oneshot::Receiver<Result<Bytes, NetError>>, NetError> {
        if let Some(err) = self.shared.poison.lock().unwrap().clone() {
            return Err(err);
        }
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let frame = encode(correlation_id).map_err(|e| self.protocol_error(&e))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(correlation_id, reply_tx);
        // Re-check: the reader may have poisoned the connection between the two locks.
        if let Some(err) = self.shared.poison.lock().unwrap().clone() {
            self.shared.pending.lock().unwrap().remove(&correlation_id);
            return Err(err);
        }
        if self.tx.send(frame).is_err() {
            self.shared.pending.lock().unwrap().remove(&correlation_id);
            return Err(NetError::Broken { addr: self.addr().to_owned(), reason: "writer stopped".into() });
        }
        Ok(reply_rx)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let closed = NetError::Broken { addr: self.shared.addr.clone(), reason: "connection closed by us".into() };
        // A retired connection still owes answers to requests sent before it retired:
        // keep the writer open and wait for them (at most one request timeout) before
        // closing, so that nothing in flight is lost to the session rotation.
        let owes = !self.shared.pending.lock().unwrap().is_empty() && self.shared.poison.lock().unwrap().is_none();
        if self.is_retired() && owes {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (dummy, _) = mpsc::unbounded_channel();
                let tx = std::mem::replace(&mut self.tx, dummy);
                let shared = self.shared.clone();
                let deadline = Instant::now() + self.request_timeout;
                handle.spawn(async move {
                    while !shared.pending.lock().unwrap().is_empty() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    shared.poison(closed);
                    drop(tx);
                });
                return;
            }
        }
        self.shared.poison(closed);
    }
}

/// Most buffers handed to one vectored write (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 256;
/// Most bytes gathered for one write: frames queued together go out together.
const MAX_GATHER: usize = 4 << 20;

/// Writes queued frames in order. Frames queued while a write was in progress are
/// gathered into the next write (fewer system calls under load). A plain TCP stream
/// takes the parts as one vectored write, so record batches are written from the
/// fetched buffers; a TLS stream gets them joined, since it copies into TLS records
/// anyway and a record per part would waste bytes on the wire.
async fn write_loop(
    mut w: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::UnboundedReceiver<FrameParts>,
    shared: Arc<Shared>,
) {
    let vectored = w.is_write_vectored();
    let mut parts: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    while let Some(frame) = rx.recv().await {
        parts.extend(frame);
        let mut gathered: usize = parts.iter().map(Bytes::len).sum();
        while parts.len() < MAX_IOV && gathered < MAX_GATHER {
            let Ok(frame) = rx.try_recv() else { break };
            gathered += frame.iter().map(Bytes::len).sum::<usize>();
            parts.extend(frame);
        }
        let written = match write_parts(&mut w, &mut parts, vectored).await {
            Ok(()) => w.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            shared.poison(shared.io_error(&e));
            return;
        }
        if shared.poison.lock().unwrap().is_some() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop(mut r: Box<dyn AsyncRead + Send + Unpin>, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        // Drain every complete frame already buffered.
        loop {
            match wire::check_frame(&buf, MAX_FRAME) {
                Ok(Some(total)) => {
                    let mut frame = buf.split_to(total).freeze();
                    let body = frame.split_off(wire::LENGTH_PREFIX);
                    let id = match wire::peek_correlation_id(&body) {
                        Ok(id) => id,
                        Err(e) => {
                            shared.poison(NetError::Protocol { addr: shared.addr.clone(), reason: e.to_string() });
                            return;
                        }
                    };
                    let reply = shared.pending.lock().unwrap().remove(&id);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(body));
                    } else {
                        shared.poison(NetError::Protocol {
                            addr: shared.addr.clone(),
                            reason: format!("response with unknown correlation id {id}"),
                        });
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.poison(NetError::Protocol { addr: shared.addr.clone(), reason: e.to_string() });
                    return;
                }
            }
        }
        if shared.poison.lock().unwrap().is_some() {
            return;
        }
        if let Some(total) = needed(&buf) {
            // (check_frame above has bounded `total` by MAX_FRAME.)
            if buf.capacity() < total {
                // One allocation of exactly this frame. A Fetch response's batches are
                // views of it and keep it whole until the last one is acknowledged, and
                // the memory budget charges the response's size: `reserve` could double
                // the buffer and read the next frame's bytes into the same allocation
                // (measured: peak RSS 500 MB for a 256 MiB budget, 1 KB lz4 records at
                // 64 partitions).
                let mut exact = BytesMut::with_capacity(total);
                exact.extend_from_slice(&buf);
                buf = exact;
            }
        } else {
            buf.reserve(64 * 1024);
        }
        match r.read_buf(&mut buf).await {
            Ok(0) => {
                shared.poison(NetError::Broken { addr: shared.addr.clone(), reason: "closed by the broker".into() });
                return;
            }
            Ok(_) => {}
            Err(e) => {
                shared.poison(shared.io_error(&e));
                return;
            }
        }
    }
}

/// Writes all of `parts` (emptying it).
async fn write_parts(
    w: &mut Box<dyn AsyncWrite + Send + Unpin>,
    parts: &mut std::collections::VecDeque<Bytes>,
    vectored: bool,
) -> std::io::Result<()> {
    if !vectored && parts.len() == 1 {
        let only = parts.pop_front().expect("one part");
        return w.write_all(&only).await; // nothing to join
    }
    if !vectored {
        let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
        for p in parts.drain(..) {
            joined.extend_from_slice(&p);
        }
        return w.write_all(&joined).await;
    }
    while !parts.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> = parts.iter().take(MAX_IOV).map(|p| std::io::IoSlice::new(p)).collect();
        let mut n = w.write_vectored(&slices).await?;
        drop(slices);
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let first = parts.front_mut().expect("wrote no more than was queued");
            if n >= first.len() {
                n -= first.len();
                parts.pop_front();
            } else {
                bytes::Buf::advance(first, n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Total bytes of the frame being received, when its length prefix is known.
fn needed(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| 4 + i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]).max(0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn http_server_is_refused_with_a_clear_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
        });
        let Err(err) = Connection::connect(&addr, "t", Duration::from_secs(2), Duration::from_secs(2)).await else {
            panic!("an HTTP server was accepted as a broker")
        };
        let msg = err.to_string();
        assert!(msg.contains("HTTP") && msg.contains(&addr), "{msg}");
    }

    #[tokio::test]
    async fn unreachable_address_names_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = Connection::connect(&addr, "t", Duration::from_secs(2), Duration::from_secs(2)).await.err().unwrap();
        assert!(matches!(err, NetError::Connect { .. }));
        assert!(err.to_string().contains(&addr));
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_poisons() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let err =
            Connection::connect(&addr, "t", Duration::from_secs(2), Duration::from_millis(300)).await.err().unwrap();
        assert!(matches!(err, NetError::Timeout { .. }), "{err}");
    }
}
