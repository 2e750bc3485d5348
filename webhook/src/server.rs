//! The HTTPS admission endpoint: warp routes behind our own tokio-rustls accept loop.
//!
//! warp 0.4 has no TLS support, so connections are accepted here, handshaken with a
//! `TlsAcceptor` whose certificate resolver reads the hot-reloaded [`CertStore`], and handed to
//! hyper-util's connection builder (HTTP/1.1 or h2, as ALPN chose) running
//! `warp::service(routes)`. Shutdown stops accepting, then lets open connections finish their
//! in-flight requests.
//!
//! The port is open to every pod in the cluster, so each connection is hostile until proven
//! otherwise ([`crate::limits`]): connections are capped ([`ConnectionLimiter`]), hyper's, h2's
//! and rustls' own buffers are small, a per-connection watchdog enforces the header and idle
//! deadlines, and bodies are read under a deadline into buffers paid for from the shared
//! [`BodyBudget`]. What is answered when:
//! - a body larger than `--max-body-size` (by its Content-Length, before reading, or as it
//!   arrives): an `invalid` review, as for any malformed review;
//! - a body not complete within `--request-read-timeout`: HTTP 408 (a client that slow is not
//!   the API server, which sends a review from memory);
//! - a body cut or refused for lack of budget: HTTP 503 with `Retry-After: 1`. The review was
//!   never read, so no AdmissionReview answer could carry its uid; the API server applies the
//!   webhook's failurePolicy, exactly as when no replica is reachable.
//!
//! On HTTP/1.1 all three close the connection, since the rest of the body was not read.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Buf;
use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use warp::Filter;
use warp::http::{Request, Response, StatusCode, Version};

use crate::bodybuf::{BodyBuf, HEAP_MAX};
use crate::budget::{BodyBudget, BodyLease, Shed};
use crate::cache::BindingCache;
use crate::connections::{ConnState, ConnectionLimiter, Expiry};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::mutate::Config;
use crate::review::{self, AdmissionOutcome, Parsed};
use crate::tls::CertStore;

/// Bodies grow by this much (beyond the first [`HEAP_MAX`] bytes, allocated at once when the
/// first bytes arrive: real reviews are about 10 KB).
const GROW_STEP: usize = 64 << 10;
/// HTTP/1.1 read buffer (request heads must fit; hyper's default grows to ~400 KiB).
const H1_MAX_BUF: usize = 16 << 10;
const H1_MAX_HEADERS: usize = 64;
/// HTTP/2 flow-control windows: what a client can make h2 buffer before we read it.
const H2_STREAM_WINDOW: u32 = 64 << 10;
const H2_CONN_WINDOW: u32 = 128 << 10;
const H2_MAX_STREAMS: u32 = 16;
const H2_MAX_HEADER_LIST: u32 = 16 << 10;

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

/// What [`serve_tls`] gives each request: its deadline and the body limits. Carried as a
/// request extension, so the routes must be served by [`serve_tls`].
#[derive(Clone)]
pub struct RequestCtx {
    /// When head and body must have arrived.
    pub deadline: Instant,
    pub http1: bool,
    bodies: Arc<Bodies>,
}

struct Bodies {
    budget: Arc<BodyBudget>,
    max_size: usize,
    metrics: Arc<Metrics>,
}

/// `POST /mutate`.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response<Vec<u8>>,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let mutate = warp::path("mutate")
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::ext::get::<RequestCtx>())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(move |ctx, length, body| {
            let state = state.clone();
            async move { handle(&state, ctx, length, body).await }
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

/// Why a body was not read.
enum BodyError {
    TooLarge,
    Timeout,
    Shed(Shed),
    Client(String),
}

/// Reads a body into a buffer paid for from the budget, growing only as bytes arrive.
async fn read_body<S, B>(
    ctx: &RequestCtx,
    length: Option<u64>,
    body: S,
) -> Result<(BodyBuf, BodyLease), BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let max = ctx.bodies.max_size;
    let expected = match length {
        Some(n) if n > max as u64 => return Err(BodyError::TooLarge),
        Some(n) => n as usize,
        None => max,
    };
    let mut lease = ctx.bodies.budget.lease();
    let mut buf = BodyBuf::new();
    let mut body = std::pin::pin!(body);
    loop {
        let next = tokio::select! {
            biased;
            next = body.next() => next,
            _ = lease.evicted() => return Err(BodyError::Shed(Shed::Evicted)),
            _ = tokio::time::sleep_until(ctx.deadline) => return Err(BodyError::Timeout),
        };
        let Some(chunk) = next else { break };
        let mut chunk = chunk.map_err(|e| BodyError::Client(e.to_string()))?;
        let needed = buf.len() + chunk.remaining();
        if needed > max {
            return Err(BodyError::TooLarge);
        }
        if needed > buf.capacity() {
            // A small body at once; a large one step by step, never past what the client said
            // it would send.
            let target = if buf.capacity() == 0 {
                needed.max(expected.min(HEAP_MAX))
            } else {
                needed.next_multiple_of(GROW_STEP).min(expected.max(needed))
            };
            let target = BodyBuf::rounded(target);
            lease
                .grow(target - buf.capacity(), ctx.deadline)
                .await
                .map_err(BodyError::Shed)?;
            buf.grow_to(target).map_err(|error| {
                tracing::warn!(%error, "could not map memory for a request body");
                BodyError::Shed(Shed::Overloaded)
            })?;
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    lease.received();
    Ok((buf, lease))
}

fn plain(status: StatusCode, ctx: &RequestCtx, message: String) -> Response<Vec<u8>> {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "text/plain");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response = response.header("retry-after", "1");
    }
    if ctx.http1 {
        response = response.header("connection", "close");
    }
    response.body(message.into_bytes()).expect("static headers")
}

async fn handle<S, B>(
    state: &AppState,
    ctx: RequestCtx,
    length: Option<u64>,
    body: S,
) -> Response<Vec<u8>>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let (bytes, lease) = match read_body(&ctx, length, body).await {
        Ok(read) => read,
        Err(error) => return refusal(state, &ctx, error),
    };
    let started = std::time::Instant::now();
    let (body, outcome) = admit(state, bytes.as_slice()).await;
    drop((bytes, lease));
    state
        .metrics
        .admission(outcome, started.elapsed().as_secs_f64());
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("static headers")
}

/// The answer to a request whose body was not read (see the module docs).
fn refusal(state: &AppState, ctx: &RequestCtx, error: BodyError) -> Response<Vec<u8>> {
    let shed = &ctx.bodies.metrics.requests_shed;
    let message = match error {
        BodyError::Timeout => {
            Metrics::reason(shed, "read_timeout");
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                ctx,
                "rolebridge: the request was not received in time\n".into(),
            );
        }
        BodyError::Shed(cut) => {
            let reason = match cut {
                Shed::Evicted => "evicted",
                Shed::Overloaded => "overloaded",
            };
            Metrics::reason(shed, reason);
            tracing::warn!(
                reason,
                "request body dropped: request bodies in flight exceed --body-budget"
            );
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                ctx,
                "rolebridge: too many request bodies in flight; retry\n".into(),
            );
        }
        BodyError::TooLarge => {
            Metrics::reason(shed, "too_large");
            format!(
                "rolebridge: request body exceeds {} bytes",
                ctx.bodies.max_size
            )
        }
        BodyError::Client(e) => format!("rolebridge: reading the request body: {e}"),
    };
    // Content errors are answered like any malformed review.
    state.metrics.admission(AdmissionOutcome::Error, 0.0);
    let mut response = Response::builder().header("content-type", "application/json");
    if ctx.http1 {
        response = response.header("connection", "close");
    }
    response
        .body(review::invalid("", &message))
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

/// Serves `routes` over TLS on `listener` under `limits` until `shutdown` turns true, then
/// drains open connections for at most `drain`.
pub async fn serve_tls<F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: F,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    F: Filter<Extract = (Response<Vec<u8>>,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let server = Arc::new(Server {
        acceptor: TlsAcceptor::from(tls),
        h1: http1_builder(),
        h2: http2_builder(),
        limiter: Arc::new(ConnectionLimiter::new(
            limits.max_connections,
            limits.max_connections_per_client,
        )),
        bodies: Arc::new(Bodies {
            budget: Arc::new(BodyBudget::new(
                limits.body_budget,
                metrics.body_bytes.clone(),
            )),
            max_size: limits.max_body_size,
            metrics: metrics.clone(),
        }),
        limits,
        metrics,
        drain,
    });
    let mut connections = JoinSet::new();
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
        while connections.try_join_next().is_some() {}
        let state = Arc::new(ConnState::new());
        let permit = match server.limiter.admit(peer.ip(), state.clone()) {
            Ok((permit, evicted)) => {
                if evicted {
                    Metrics::reason(&server.metrics.connections_closed, "evicted");
                }
                permit
            }
            Err(refused) => {
                Metrics::reason(&server.metrics.connections_refused, refused.as_str());
                tracing::debug!(%peer, reason = refused.as_str(), "connection refused");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let routes = routes.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            server.metrics.connections.inc();
            server.connection(tcp, peer, state, routes, shutdown).await;
            server.metrics.connections.dec();
            drop(permit);
            crate::memory::freed();
        });
    }
    tracing::info!(
        open = server.limiter.open(),
        "stopped accepting; draining connections"
    );
    // Each connection enforces the drain deadline itself; this only waits for them.
    while connections.join_next().await.is_some() {}
}

fn http1_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog enforces head deadlines: hyper's timer would also cut idle keep-alive
        // connections after the (short) header timeout.
        .header_read_timeout(None)
        .max_buf_size(H1_MAX_BUF)
        .max_headers(H1_MAX_HEADERS)
        .keep_alive(true);
    builder
}

fn http2_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .adaptive_window(false)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    builder
}

struct Server {
    acceptor: TlsAcceptor,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    limiter: Arc<ConnectionLimiter>,
    bodies: Arc<Bodies>,
    limits: Limits,
    metrics: Arc<Metrics>,
    drain: Duration,
}

impl Server {
    async fn connection<F>(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        state: Arc<ConnState>,
        routes: F,
        mut shutdown: watch::Receiver<bool>,
    ) where
        F: Filter<Extract = (Response<Vec<u8>>,), Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let tls = tokio::select! {
            tls = tokio::time::timeout(self.limits.tls_handshake_timeout, self.acceptor.accept(tcp)) => match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    Metrics::reason(&self.metrics.connections_closed, "tls_handshake");
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let http1 = tls.get_ref().1.alpn_protocol() != Some(b"h2");
        let io = TokioIo::new(Watched {
            inner: tls,
            state: state.clone(),
            http1,
        });
        let service = Tracked {
            inner: TowerToHyperService::new(warp::service(routes)),
            state: state.clone(),
            request_read_timeout: self.limits.request_read_timeout,
            bodies: self.bodies.clone(),
        };
        let builder = if http1 { &self.h1 } else { &self.h2 };
        let conn = builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut closing: Option<Instant> = None;
        loop {
            let (deadline, expiry) = match closing {
                Some(at) => (at, Expiry::None),
                None => state.deadline(self.limits.header_read_timeout, self.limits.idle_timeout),
            };
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(error) = done {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    return;
                }
                _ = state.wake.notified() => {}
                _ = shutdown.wait_for(|stop| *stop), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + self.drain);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if closing.is_some() {
                        tracing::debug!(%peer, "connection did not close in time; dropping it");
                        return;
                    }
                    // The state may have moved on (a request began) since the deadline was taken.
                    let (now_due, expiry_now) = state.deadline(self.limits.header_read_timeout, self.limits.idle_timeout);
                    if now_due > Instant::now() || expiry_now != expiry {
                        continue;
                    }
                    match expiry {
                        Expiry::None => {}
                        Expiry::HeadTimeout => {
                            Metrics::reason(&self.metrics.connections_closed, "header_timeout");
                            tracing::debug!(%peer, "request head not received in time; closing");
                            return;
                        }
                        Expiry::Idle | Expiry::Evicted => {
                            if expiry == Expiry::Idle {
                                Metrics::reason(&self.metrics.connections_closed, "idle");
                            }
                            conn.as_mut().graceful_shutdown();
                            closing = Some(Instant::now() + self.limits.header_read_timeout);
                        }
                    }
                }
            }
        }
    }
}

/// The TLS stream, telling the connection's state when request bytes arrive.
struct Watched<T> {
    inner: T,
    state: Arc<ConnState>,
    http1: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        // On h2, reads also carry pings and window updates: only HTTP/1.1 reads mean a request.
        if self.http1 && buf.filled().len() > before {
            self.state.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection's service: counts requests in flight and hands each its [`RequestCtx`].
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
    request_read_timeout: Duration,
    bodies: Arc<Bodies>,
}

struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

impl<S, R> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = R>,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<R, S::Error>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let started = self.state.begin_request();
        let guard = InFlight(self.state.clone());
        let http1 = req.version() < Version::HTTP_2;
        req.extensions_mut().insert(RequestCtx {
            deadline: started + self.request_read_timeout,
            http1,
            bodies: self.bodies.clone(),
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await;
            drop(guard);
            response
        })
    }
}
