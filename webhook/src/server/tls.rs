//! Serving certificate with hot reload.
//!
//! The certificate and key are re-read by path on a short interval rather than watched with
//! inotify: Kubernetes updates a mounted Secret by swapping the `..data` symlink, which an
//! inotify watch on the files themselves never sees, while re-reading the paths always follows
//! the current link. The pair is swapped in atomically; new handshakes pick it up, open
//! connections keep theirs, so a rotation fails no request. A new pair that does not parse, or
//! whose key does not match the certificate (e.g. caught between writing the two files), is
//! rejected and the last good pair stays in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: bad PEM: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("the private key does not fit the certificate or is unsupported: {0}")]
    Key(#[from] rustls::Error),
}

/// The current serving pair, shared by the TLS acceptor and the reload task.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<CertifiedKey>,
    last_seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertStore {
    pub fn new(cert_path: PathBuf, key_path: PathBuf, provider: Arc<CryptoProvider>) -> Self {
        CertStore {
            cert_path,
            key_path,
            provider,
            current: ArcSwapOption::empty(),
            last_seen: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Re-reads both files; returns `Ok(true)` when a new pair went into service, `Ok(false)`
    /// when nothing changed, and an error (keeping the previous pair) when the new one is bad.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_loaded() && last.0 == cert_pem && last.1 == key_pem {
            return Ok(false);
        }
        let key = certified_key(
            &cert_pem,
            &key_pem,
            &self.cert_path,
            &self.key_path,
            &self.provider,
        );
        // Remember the bytes even when they are bad, so a broken pair is reported once per
        // change instead of on every poll.
        *last = (cert_pem, key_pem);
        self.current.store(Some(Arc::new(key?)));
        Ok(true)
    }

    /// Polls for changes until the process ends.
    pub async fn watch(self: Arc<Self>, every: Duration, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                    Metrics::result(&metrics.tls_reloads, true);
                }
                Err(error) => {
                    tracing::error!(%error, "serving certificate not reloaded; keeping the last good one");
                    Metrics::result(&metrics.tls_reloads, false);
                }
            }
        }
    }

    pub(crate) fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: key_path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(CertifiedKey::from_der(certs, key, provider)?)
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current.load_full()
    }
}

/// TLS 1.2 and 1.3 with ALPN for HTTP/2 and HTTP/1.1 (the API server speaks both).
pub fn server_config(
    store: &Arc<CertStore>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store.resolver());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
