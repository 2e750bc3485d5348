//! The HTTPS admission port: warp routes behind our own tokio-rustls accept loop.
//!
//! warp 0.4 has no TLS support, so connections are accepted here, handshaken with a
//! `TlsAcceptor` whose certificate resolver reads the hot-reloaded
//! [`CertStore`](super::tls::CertStore), and handed to
//! hyper-util's connection builder (HTTP/1.1 or h2, as ALPN chose) running
//! `warp::service(routes)`. Shutdown stops accepting, then lets open connections finish their
//! in-flight requests.
//!
//! The port is open to every pod in the cluster, so each connection is hostile until proven
//! otherwise ([`super::limits`]): connections are capped ([`ConnectionLimiter`]), hyper's, h2's
//! and rustls' own buffers are small, and a per-connection watchdog enforces the header and idle
//! deadlines. Each request gets its [`RequestCtx`] (deadline and body budget) for the route.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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
use warp::http::{Request, Response, Version};

use super::budget::BodyBudget;
use super::connections::{ConnState, ConnectionLimiter, Expiry};
use super::limits::Limits;
use super::route::{Bodies, RequestCtx};
use crate::metrics::Metrics;

/// HTTP/1.1 read buffer (request heads must fit; hyper's default grows to ~400 KiB).
const H1_MAX_BUF: usize = 16 << 10;
const H1_MAX_HEADERS: usize = 64;
/// HTTP/2 flow-control windows: what a client can make h2 buffer before we read it.
const H2_STREAM_WINDOW: u32 = 64 << 10;
const H2_CONN_WINDOW: u32 = 128 << 10;
const H2_MAX_STREAMS: u32 = 16;
const H2_MAX_HEADER_LIST: u32 = 16 << 10;

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
    /// One connection from handshake to close. Long because it is one `select!` loop over the
    /// connection's life (serving, the head and idle deadlines, draining): split, the
    /// deadlines would be decided in two places.
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
