//! TLS for connections to a cluster, with rustls.
//!
//! Certificates are always verified: the chain up to a trusted CA and the broker's
//! name (RFC 5280 path validation and RFC 6125 name matching, done by rustls' webpki
//! verifier). There is deliberately no switch to turn this off; a mirror link is where
//! data leaves the datacenter. The trusted CAs are the `ca` PEM bundle, or, without
//! one, the platform's root store (rustls-native-certs: `/etc/ssl/certs` on Debian,
//! `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured).
//!
//! The name checked is `server_name` when set, else the host of the address being
//! dialled (bootstrap entry or the host:port a broker advertises in Metadata). It is
//! also sent as SNI.
//!
//! One [`TlsConnector`] per cluster holds the `rustls::ClientConfig`, built once and
//! shared by all its connections. [`TlsConnector::reload`] rebuilds it from the files
//! (on SIGHUP, or when [`TlsConnector::reload_if_changed`] sees a file's modification
//! time change): new connections use the new certificates, open ones keep theirs, so
//! nothing in flight is dropped. A reload that fails keeps the old configuration.
//!
//! When the certificates in use expire is kept for the metrics
//! (`mirrorproxy_tls_certificate_expiry_seconds`, [`Expiry`]): the client certificate
//! chain and the `ca` bundle as loaded (earliest `notAfter` of each), and the broker
//! certificates seen in handshakes (earliest leaf). An expired certificate stops a
//! mirror link outright, so operators alert on it weeks ahead.
//!
//! Failures are classified for the operator: an expired certificate, an unknown CA, a
//! name mismatch and a missing or refused client certificate each get their own
//! sentence (see [`describe`]). They are not retriable: trying again cannot fix them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::NetError;

/// Where a cluster's TLS material is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of trusted CAs; `None`: the platform's roots.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain for mutual TLS (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `cert`.
    pub key: Option<PathBuf>,
    /// Name to verify (and send as SNI) instead of the dialled host.
    pub server_name: Option<String>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        [&self.ca, &self.cert, &self.key].into_iter().flatten().map(PathBuf::as_path).collect()
    }
}

/// Builds a rustls client configuration from the files. Errors name the file.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &files.ca {
        let certs = read_certs(ca, "ca")?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("tls.ca {}: no usable CA certificate in it", ca.display()));
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
            return Err(format!("no tls.ca given and the platform has no root certificates{why}"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "cert")?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("tls.key {}: {}", key.display(), pem_error(&e)))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("tls.cert/tls.key {}: {e}", cert.display()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("tls.cert and tls.key go together".into()),
    }
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("tls.{field} {}: {}", path.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.{field} {}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("tls.{field} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the right kind in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// The TLS connectors in use, by cluster alias; a config reload replaces a rebuilt
/// cluster's entry.
pub type TlsList = Arc<Mutex<Vec<(String, Arc<TlsConnector>)>>>;

/// When a cluster's certificates expire (`notAfter`); None where there is none (no
/// client certificate, the platform's roots, no handshake yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Earliest in the client certificate chain (`tls.cert`).
    pub client: Option<SystemTime>,
    /// Earliest in the `tls.ca` bundle.
    pub ca: Option<SystemTime>,
    /// Earliest leaf certificate a broker of the cluster presented.
    pub broker: Option<SystemTime>,
}

/// `notAfter` of a DER certificate; None if it does not parse (it was verified or
/// loaded by rustls already; this is for the metric only).
#[must_use]
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)),
        Err(_) => SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs())),
    }
}

fn earliest<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> Option<SystemTime> {
    certs.into_iter().filter_map(|c| not_after(c.as_ref())).min()
}

/// The files' expiry (client chain, CA bundle); unreadable files count as none (their
/// error is the configuration's, reported where it is loaded).
fn file_expiry(files: &TlsFiles) -> Expiry {
    let of =
        |p: &Option<PathBuf>, field| p.as_deref().and_then(|p| read_certs(p, field).ok()).and_then(|c| earliest(&c));
    Expiry { client: of(&files.cert, "cert"), ca: of(&files.ca, "ca"), broker: None }
}

/// The TLS side of one cluster: configuration (reloadable) and handshakes.
pub struct TlsConnector {
    files: TlsFiles,
    config: RwLock<Arc<ClientConfig>>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
    /// The files' expiry, and each broker's leaf certificate's by address.
    expiry: Mutex<(Expiry, std::collections::HashMap<String, SystemTime>)>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").field("files", &self.files).finish_non_exhaustive()
    }
}

impl TlsConnector {
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let stamps = stamps(&files);
        let config = client_config(&files)?;
        let expiry = Mutex::new((file_expiry(&files), std::collections::HashMap::new()));
        Ok(Self { files, config: RwLock::new(Arc::new(config)), stamps: Mutex::new(stamps), expiry })
    }

    /// When the certificates in use expire.
    #[must_use]
    pub fn expiry(&self) -> Expiry {
        let e = self.expiry.lock().unwrap();
        Expiry { broker: e.1.values().min().copied(), ..e.0 }
    }

    #[must_use]
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration new connections use.
    #[must_use]
    pub fn current(&self) -> Arc<ClientConfig> {
        self.config.read().unwrap().clone()
    }

    /// Rebuilds the configuration from the files. On error the old one stays.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = stamps(&self.files);
        let config = client_config(&self.files)?;
        *self.config.write().unwrap() = Arc::new(config);
        *self.stamps.lock().unwrap() = stamps;
        self.expiry.lock().unwrap().0 = file_expiry(&self.files);
        Ok(())
    }

    /// Reloads when a file's modification time changed; `Ok(true)` when it did reload.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamps(&self.files);
        {
            let mut old = self.stamps.lock().unwrap();
            if *old == now {
                return Ok(false);
            }
            // Remember what we saw even if the reload fails: retry on the next change
            // (or SIGHUP), not every poll.
            old.clone_from(&now);
        }
        self.reload().map(|()| true)
    }

    /// TLS handshake on a connected socket to `addr` (host:port).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: &str,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, NetError> {
        let host = match &self.files.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_owned(),
        };
        let name = ServerName::try_from(host.clone()).map_err(|_| NetError::Tls {
            addr: addr.to_owned(),
            reason: format!("'{host}' is not a valid TLS server name (set tls.server_name)"),
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.current());
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Err(_) => Err(NetError::Connect {
                addr: addr.to_owned(),
                reason: format!("TLS handshake did not finish within {timeout:?}"),
            }),
            Ok(Ok(s)) => {
                if let Some(t) = s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| not_after(c)) {
                    self.expiry.lock().unwrap().1.insert(addr.to_owned(), t);
                }
                Ok(s)
            }
            Ok(Err(e)) => Err(self.classify(addr, &e, &host)),
        }
    }

    /// Turns an I/O error of a TLS stream into a [`NetError`]: certificate and alert
    /// problems become [`NetError::Tls`] (not retriable), the rest stays a connect error.
    pub(crate) fn classify(&self, addr: &str, e: &io::Error, host: &str) -> NetError {
        match tls_error(e) {
            Some(err) => {
                NetError::Tls { addr: addr.to_owned(), reason: describe(err, host, self.files.cert.is_some()) }
            }
            None => NetError::Connect { addr: addr.to_owned(), reason: format!("TLS handshake: {e}") },
        }
    }

    /// The name that is verified for `addr`.
    #[must_use]
    pub fn verified_name<'a>(&'a self, addr: &'a str) -> &'a str {
        self.files.server_name.as_deref().unwrap_or_else(|| host_of(addr))
    }

    #[must_use]
    pub fn has_client_cert(&self) -> bool {
        self.files.cert.is_some()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    files.paths().iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

/// The host part of host:port (IPv6 in brackets allowed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The rustls error inside an I/O error, if there is one.
pub(crate) fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// One sentence for the operator about a TLS failure with a broker reached as `host`.
#[must_use]
pub fn describe(e: &rustls::Error, host: &str, have_client_cert: bool) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the broker's certificate has expired ({e})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the broker's certificate is not valid yet; check the clocks ({e})")
            }
            CertificateError::UnknownIssuer => {
                "the broker's certificate is not signed by a trusted CA (unknown issuer: check tls.ca)".to_string()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the broker's certificate is not valid for the name '{host}' ({e}); set tls.server_name if the broker is reached under another name"
            ),
            _ => format!("the broker's certificate was rejected: {e}"),
        },
        E::AlertReceived(alert) => {
            let refused_cert = matches!(
                alert,
                AlertDescription::CertificateRequired
                    | AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::CertificateExpired
                    | AlertDescription::HandshakeFailure
                    | AlertDescription::AccessDenied
            );
            if refused_cert && !have_client_cert {
                format!("the broker requires a client certificate and none is configured (set tls.cert and tls.key); it answered with the alert {alert:?}")
            } else if refused_cert {
                format!("the broker rejected our client certificate (alert {alert:?}): is it signed by a CA the broker trusts, and still valid?")
            } else {
                format!("the broker aborted the TLS handshake with the alert {alert:?}")
            }
        }
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("kafka.example:9093"), "kafka.example");
        assert_eq!(host_of("[::1]:9093"), "::1");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
    }

    #[test]
    fn missing_files_are_named() {
        let e = client_config(&TlsFiles { ca: Some("/nonexistent/ca.pem".into()), ..TlsFiles::default() }).unwrap_err();
        assert!(e.contains("tls.ca") && e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn reasons_are_specific() {
        let expired = describe(&rustls::Error::InvalidCertificate(CertificateError::Expired), "h", false);
        assert!(expired.contains("expired"), "{expired}");
        let ca = describe(&rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer), "h", false);
        assert!(ca.contains("trusted CA"), "{ca}");
        let name =
            describe(&rustls::Error::InvalidCertificate(CertificateError::NotValidForName), "kafka.example", false);
        assert!(name.contains("kafka.example") && name.contains("server_name"), "{name}");
        let client = describe(&rustls::Error::AlertReceived(AlertDescription::CertificateRequired), "h", false);
        assert!(client.contains("client certificate"), "{client}");
    }
}
