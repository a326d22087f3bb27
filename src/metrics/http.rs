//! The HTTP endpoint (hyper 1, HTTP/1.1): `GET /metrics` (Prometheus text format),
//! `GET /health` (200 while every flow's event loop turns) and `GET /ready` (200 once
//! every flow is mirroring, 503 with the reasons while a cluster is failing or a flow
//! cannot run). Any other path is 404, any other method 405; neither touches the
//! flows.
//!
//! The listener is bound before anything else starts, so that a port in use is the
//! one error at start; until the engine exists `/health` is 200 and `/ready` 503.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::Metrics;

/// What the endpoint serves; set once the engine exists.
pub type Shared = Arc<OnceLock<Metrics>>;

/// Binds `listen` (`metrics.listen`); the error names the key and the address.
pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    TcpListener::bind(listen).await.map_err(|e| format!("metrics.listen: cannot listen on {listen}: {e}"))
}

/// Serves on `listener` until the task is dropped or aborted.
pub fn spawn(listener: TcpListener, shared: Shared) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        info!("metrics on http://{addr}/metrics (also /health, /ready)");
    }
    tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&req, shared.get())) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(sock), service);
                if let Err(e) = conn.await {
                    debug!("metrics connection from {peer}: {e}");
                }
            });
        }
    })
}

fn answer(req: &Request<Incoming>, metrics: Option<&Metrics>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/health" | "/ready") {
        return text(StatusCode::NOT_FOUND, "not found: the paths are /metrics, /health and /ready\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("{path} answers GET only\n"));
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match (path, metrics) {
        ("/metrics", Some(m)) => {
            let mut r = Response::new(Full::new(Bytes::from(m.render())));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        ("/metrics", None) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        ("/health", m) => match m.map_or(Ok(()), Metrics::health) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        (_, m) => match m.map_or_else(|| Err("starting: clusters are being checked".to_owned()), Metrics::ready) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
