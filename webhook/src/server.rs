//! The HTTPS admission endpoint: warp routes behind our own tokio-rustls accept loop.
//!
//! warp 0.4 has no TLS support, so connections are accepted here, handshaken with a
//! `TlsAcceptor` whose certificate resolver reads the hot-reloaded [`CertStore`], and handed to
//! hyper-util's auto (HTTP/1.1 + h2) connection builder running `warp::service(routes)`.
//! Shutdown stops accepting, then lets open connections finish their in-flight requests.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use warp::Filter;
use warp::http::{Response, StatusCode};

use crate::cache::BindingCache;
use crate::metrics::Metrics;
use crate::mutate::Config;
use crate::review::{self, AdmissionOutcome, Parsed};
use crate::tls::CertStore;

/// Kubernetes objects are at most ~1.5 MiB in etcd; a review carries at most two of them.
pub const MAX_BODY: usize = 4 << 20;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything an admission needs, shared by all connections.
pub struct AppState {
    pub cache: Arc<BindingCache>,
    pub config: ArcSwap<Config>,
    pub metrics: Arc<Metrics>,
    pub certs: Arc<CertStore>,
    pub shutting_down: AtomicBool,
}

impl AppState {
    /// Ready means this replica can answer admissions correctly right now.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Err("shutting down")
        } else if !self.certs.is_loaded() {
            Err("serving certificate not loaded")
        } else if !self.cache.is_synced() {
            Err("binding cache not synced")
        } else {
            Ok(())
        }
    }
}

/// `POST /mutate`.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response<Vec<u8>>,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let mutate = warp::path("mutate")
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::body::stream())
        .then(move |body| {
            let state = state.clone();
            async move { handle(&state, body).await }
        });
    mutate
        .recover(|_rejection| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(b"not found: admission reviews go to POST /mutate\n".to_vec())
                    .expect("static response"),
            )
        })
        .unify()
}

async fn read_body<S, B>(mut body: S) -> Result<Bytes, String>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| format!("reading the request body: {e}"))?;
        if buf.len() + chunk.remaining() > MAX_BODY {
            return Err(format!("request body exceeds {MAX_BODY} bytes"));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

async fn handle<S, B>(state: &AppState, body: S) -> Response<Vec<u8>>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let (body, outcome, started) = match read_body(body).await {
        Err(message) => (
            review::invalid("", &format!("rolebridge: {message}")),
            AdmissionOutcome::Error,
            Instant::now(),
        ),
        Ok(bytes) => {
            let started = Instant::now();
            let (body, outcome) = admit(state, &bytes).await;
            (body, outcome, started)
        }
    };
    state
        .metrics
        .admission(outcome, started.elapsed().as_secs_f64());
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("static headers")
}

/// One review body in, one response body out.
pub async fn admit(state: &AppState, body: &[u8]) -> (Vec<u8>, AdmissionOutcome) {
    match review::parse(body) {
        Parsed::Done { body, outcome } => {
            if outcome == AdmissionOutcome::Error {
                tracing::warn!("malformed admission review answered as invalid");
            }
            (body, outcome)
        }
        Parsed::Pod(review) => {
            let sa = review.service_account();
            let bindings = state.cache.bindings_for(&review.namespace, sa).await;
            let config = state.config.load();
            let (body, outcome) = review.respond(bindings.as_deref().unwrap_or_default(), &config);
            let meta = &review.pod.metadata;
            let pod = meta
                .name
                .as_ref()
                .or(meta.generate_name.as_ref())
                .map(|s| s.as_str())
                .unwrap_or_default();
            match outcome {
                AdmissionOutcome::Skipped => tracing::debug!(
                    namespace = %review.namespace, pod, service_account = sa, dry_run = review.dry_run,
                    outcome = outcome.as_str(), "admitted unchanged"),
                _ => tracing::info!(
                    namespace = %review.namespace, pod, service_account = sa, dry_run = review.dry_run,
                    outcome = outcome.as_str(), "admission"),
            }
            (body, outcome)
        }
    }
}

/// Serves `routes` over TLS on `listener` until `shutdown` turns true, then drains open
/// connections for at most `drain`.
pub async fn serve_tls<F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: F,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    F: Filter<Extract = (Response<Vec<u8>>,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let service = warp::service(routes);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                .into_owned();
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    tracing::info!(
        open = graceful.count(),
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}
