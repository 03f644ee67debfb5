//! The node's kubelet port: HTTPS on the Node's `InternalIP` (127.0.0.1),
//! at the port the Node advertises in `status.daemonEndpoints`, serving
//! what metrics-server reads of a kubelet:
//!
//! - `GET /metrics/resource`: the resource metrics of the node's pods and
//!   of the node ([`crate::resource_metrics`], read by [`crate::usage`] at
//!   each request, as the kubelet does);
//! - `GET /healthz`: `ok`.
//!
//! Clients authenticate with a certificate signed by the client CA
//! (`--client-ca-file`, the cluster CA in the local stack); a connection
//! without one is refused in the TLS handshake. Any such client may read
//! these two paths: the cluster CA signs only the stack's own components,
//! so there is no per-user authorization (the kubelet's `Webhook` mode
//! would ask the API server for `nodes/metrics`). Bearer tokens are not
//! accepted. HTTP/1.1 only.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::cgroup::UsageDirs;
use crate::resource_metrics;
use crate::usage::{self, Running};

/// The address the port is served on: the Node's `InternalIP`.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the port's certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The serving certificate (PEM, the chain from the leaf up).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates must be signed by (PEM).
    pub client_ca: PathBuf,
}

/// Why the port could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("reading the {what} {path}: {message}")]
    Pem {
        /// Which file (`--tls-cert-file`, ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The certificates do not make a TLS configuration.
    #[error("setting up TLS with {cert} and {key}: {message}")]
    Tls {
        /// The serving certificate.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
    /// The port could not be bound.
    #[error("binding the kubelet port {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The system's answer.
        source: std::io::Error,
    },
}

impl ServeError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Pem { .. } => "pem",
            Self::Tls { .. } => "tls",
            Self::Bind { .. } => "bind",
        }
    }
}

/// The bound port, ready to serve.
pub struct KubeletServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<Scrape>,
}

impl std::fmt::Debug for KubeletServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletServer")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// What a scrape reads.
#[derive(Debug)]
struct Scrape {
    running: Running,
    node_dirs: UsageDirs,
}

fn pem_error(what: &'static str, path: &Path, message: impl ToString) -> ServeError {
    ServeError::Pem {
        what,
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no CERTIFICATE block in it"));
    }
    Ok(certs)
}

/// The server's TLS settings: its certificate, and client certificates
/// required and checked against the client CA.
fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServeError> {
    let certs = certificates("--tls-cert-file", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| pem_error("--tls-private-key-file", &files.key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates("--client-ca-file", &files.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| pem_error("--client-ca-file", &files.client_ca, e))?;
    }
    let tls = |message: String| ServeError::Tls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl KubeletServer {
    /// Reads the certificates and binds `ADDRESS:port`.
    ///
    /// # Errors
    ///
    /// [`ServeError`] naming the file or the address that cannot be used.
    pub async fn bind(
        port: u16,
        files: &TlsFiles,
        running: Running,
        node_dirs: UsageDirs,
    ) -> Result<Self, ServeError> {
        let acceptor = TlsAcceptor::from(Arc::new(tls_config(files)?));
        let address = SocketAddr::from((ADDRESS, port));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        Ok(Self {
            listener,
            acceptor,
            state: Arc::new(Scrape { running, node_dirs }),
        })
    }

    /// The port bound (the one asked for, or the one the system chose for 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let local = self
            .listener
            .local_addr()
            .unwrap_or(SocketAddr::from((ADDRESS, 0)));
        let (tx, rx) = mpsc::channel(16);
        let handshakes = tokio::spawn(accept_loop(self.listener, self.acceptor, tx));
        let app = Router::new()
            .route("/metrics/resource", get(metrics_resource))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.state);
        tracing::info!(address = %local, "serving the kubelet port (/metrics/resource, /healthz)");
        let served = axum::serve(TlsListener { rx, local }, app)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the kubelet port stopped");
        }
        handshakes.abort();
    }
}

async fn metrics_resource(State(scrape): State<Arc<Scrape>>) -> impl IntoResponse {
    let stats = usage::collect(&scrape.running, &scrape.node_dirs).await;
    (
        [(header::CONTENT_TYPE, resource_metrics::CONTENT_TYPE)],
        resource_metrics::render(&stats),
    )
}

/// Accepts connections and runs each TLS handshake in a task of its own, so
/// a slow client holds up no other; finished ones go to the HTTP server.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection on the kubelet port failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake on the kubelet port failed")
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake on the kubelet port timed out")
                }
            }
        });
    }
}

/// Connections whose handshake is done, as axum takes them.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop is gone only when the server stops.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let files = TlsFiles {
            cert: PathBuf::from("/nonexistent/kubelet.crt"),
            key: PathBuf::from("/nonexistent/kubelet.key"),
            client_ca: PathBuf::from("/nonexistent/ca.crt"),
        };
        let err = tls_config(&files).expect_err("no files");
        assert_eq!(err.label(), "pem");
        let text = err.to_string();
        assert!(
            text.starts_with("reading the --tls-cert-file /nonexistent/kubelet.crt: "),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("rtc-kubelet-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = certificates("--client-ca-file", &empty).expect_err("empty");
        assert!(
            err.to_string().ends_with("no CERTIFICATE block in it"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
