//! The credentials endpoint: the AWS container credentials protocol on the pod's loopback.
//!
//! `GET /v1/credentials/<binding>` with `Authorization: <the per-pod token>` answers from
//! memory with the pre-rendered JSON of the binding's current credentials; `GET /healthz`
//! (no authorization, no secret) answers 200 once every binding holds servable credentials.
//!
//! The decisions are pure functions ([`route`], [`authorize`], [`credentials_reply`],
//! [`health_reply`]); [`serve`] is the hyper shell. Every client is assumed hostile (anything
//! in the pod's network namespace can connect):
//! - at most `max_connections` connections at once; at the cap, idle ones are closed to make
//!   room, and further clients wait in the kernel's backlog;
//! - the request head must arrive within `header_read_timeout`, in at most hyper's minimum
//!   read buffer (8 KiB) and 32 headers; bodies are never read (a request with one is answered
//!   400 and the connection closed);
//! - a connection idle for `idle_timeout` is closed;
//! - nothing is allocated on the client's say-so: answers are pre-rendered bytes or small
//!   fixed messages, and a name in the path is only compared with the configured ones.
//!
//! Status codes: 200 credentials; 401 no `Authorization`; 403 a wrong one; 404 unknown path or
//! binding; 405 not GET/HEAD; 424 the last attempt to obtain the binding's credentials failed
//! (Code is STS's error code, Message names the hop, the role and STS's message); 503 the
//! first credentials are still being fetched (transient; the startup probe normally keeps apps
//! from asking before that).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use rolebridge_contract::{CREDENTIALS_HOST, CREDENTIALS_PATH_PREFIX, HEALTH_PATH};

use crate::authtoken::AuthToken;
use crate::creds::{Lookup, Problem, Served, Slot};
use crate::schedule::Policy;

/// Limits of the listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a request may wait for a first fetch that is under way.
    pub pending_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 32,
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            pending_wait: Duration::from_millis(500),
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    Credentials(&'a str),
    Reject(Reply),
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    /// Close the connection after answering.
    pub close: bool,
}

impl Reply {
    fn problem(status: StatusCode, code: &str, message: &str) -> Reply {
        Reply {
            status,
            body: Problem::new(code, message).to_json(),
            close: false,
        }
    }
}

/// Route a request head. `has_body`: the client announced a body (which is never read).
pub fn route<'a>(method: &Method, path: &'a str, has_body: bool) -> Route<'a> {
    if method != Method::GET && method != Method::HEAD {
        return Route::Reject(Reply::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET is served",
        ));
    }
    if has_body {
        let mut r = Reply::problem(
            StatusCode::BAD_REQUEST,
            "BodyNotAllowed",
            "requests to this endpoint carry no body",
        );
        r.close = true;
        return Route::Reject(r);
    }
    if path == HEALTH_PATH {
        return Route::Health;
    }
    match path.strip_prefix(CREDENTIALS_PATH_PREFIX) {
        Some(name) if !name.is_empty() => Route::Credentials(name),
        _ => Route::Reject(Reply::problem(
            StatusCode::NOT_FOUND,
            "NotFound",
            "unknown path; credentials are served at /v1/credentials/<binding>",
        )),
    }
}

/// The message for a request without the token. The usual cause is an SDK too old to read
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
pub const MISSING_AUTHORIZATION: &str = "no Authorization header: the AWS SDK must send the \
    contents of the file named by AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE. SDKs that only read \
    AWS_CONTAINER_AUTHORIZATION_TOKEN (releases before November 2023, e.g. Debian's packaged Go \
    v2 SDK) are not supported by rolebridge's credentials endpoint: upgrade the SDK, or use a \
    binding without chain and durationSeconds (web identity delivery)";

/// 401 without an `Authorization` header, 403 with a wrong one.
pub fn authorize(token: &AuthToken, header: Option<&[u8]>) -> Result<(), Reply> {
    match header {
        None => Err(Reply::problem(
            StatusCode::UNAUTHORIZED,
            "MissingAuthorization",
            MISSING_AUTHORIZATION,
        )),
        Some(h) if token.matches(h) => Ok(()),
        Some(_) => Err(Reply::problem(
            StatusCode::FORBIDDEN,
            "InvalidAuthorization",
            "the Authorization header does not match this pod's token \
             (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
        )),
    }
}

/// What to do with a credentials request, given the binding's state.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Reply(Reply),
    /// Nothing servable yet, nothing failed yet: wait briefly for the fetch under way.
    Wait,
}

pub fn credentials_reply(name: &str, lookup: Lookup<'_, Served>, may_wait: bool) -> Decision {
    match lookup {
        Lookup::Serve(s) => Decision::Reply(Reply {
            status: StatusCode::OK,
            body: s.body.clone(),
            close: false,
        }),
        Lookup::Unavailable(f) => Decision::Reply(Reply {
            status: StatusCode::FAILED_DEPENDENCY,
            body: f.problem.to_json(),
            close: false,
        }),
        Lookup::Pending if may_wait => Decision::Wait,
        Lookup::Pending => Decision::Reply(Reply::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "CredentialsNotReady",
            &format!(
                "rolebridge-agent is still obtaining the credentials of binding {name}; retry shortly"
            ),
        )),
    }
}

/// 200 when every binding holds servable credentials; else 503 naming the ones that do not
/// (with their last problem, which names a hop and STS's message, never a secret).
pub fn health_reply<'a>(states: impl IntoIterator<Item = (&'a str, Lookup<'a, Served>)>) -> Reply {
    let mut waiting = Vec::new();
    for (name, lookup) in states {
        match lookup {
            Lookup::Serve(_) => {}
            Lookup::Pending => waiting.push(format!("{name}: no credentials yet")),
            Lookup::Unavailable(f) => waiting.push(format!("{name}: {}", f.problem.message)),
        }
    }
    if waiting.is_empty() {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(b"{\"Status\":\"ok\"}"),
            close: false,
        }
    } else {
        Reply::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            &waiting.join("; "),
        )
    }
}

/// One binding as the server sees it.
#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    pub slot: watch::Receiver<Slot<Served>>,
}

/// Shared state of the server.
#[derive(Debug)]
pub struct State {
    pub bindings: Vec<Binding>,
    pub token: AuthToken,
    pub policy: Policy,
    pub limits: Limits,
    pub now_ms: fn() -> i64,
}

async fn answer(state: &State, req: &Request<Incoming>) -> Reply {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let name = match route(req.method(), req.uri().path(), has_body) {
        Route::Reject(r) => return r,
        Route::Health => {
            let now = (state.now_ms)();
            let guards: Vec<_> = state
                .bindings
                .iter()
                .map(|b| (b.name.as_str(), b.slot.borrow()))
                .collect();
            return health_reply(
                guards
                    .iter()
                    .map(|(n, g)| (*n, g.lookup(&state.policy, now))),
            );
        }
        Route::Credentials(name) => name,
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if let Err(r) = authorize(&state.token, auth) {
        return r;
    }
    let Some(binding) = state.bindings.iter().find(|b| b.name == name) else {
        return Reply::problem(
            StatusCode::NOT_FOUND,
            "UnknownBinding",
            "no binding of that name is served by this pod's agent",
        );
    };
    let mut rx = binding.slot.clone();
    let deadline = tokio::time::Instant::now() + state.limits.pending_wait;
    loop {
        let may_wait = tokio::time::Instant::now() < deadline;
        let decision = {
            let slot = rx.borrow_and_update();
            credentials_reply(name, slot.lookup(&state.policy, (state.now_ms)()), may_wait)
        };
        match decision {
            Decision::Reply(r) => return r,
            Decision::Wait => {
                // Woken by the fetch's result, or by the deadline (then answered 503).
                let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
            }
        }
    }
}

fn to_response(r: Reply, head_only: bool) -> Response<Full<Bytes>> {
    let len = r.body.len();
    let mut resp = Response::new(Full::new(if head_only { Bytes::new() } else { r.body }));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if r.close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Why the endpoint's health check failed (the `check` probe prints it; Kubernetes shows it in
/// the pod's events).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("credentials endpoint {host}:{port} not answering: {reason}", host = CREDENTIALS_HOST)]
    Unreachable { port: u16, reason: String },
    #[error("credentials endpoint {host}:{port} not ready: {message}", host = CREDENTIALS_HOST)]
    NotReady { port: u16, message: String },
}

/// `GET /healthz` on the local endpoint.
pub async fn probe_health(port: u16, timeout: Duration) -> Result<(), HealthError> {
    // The metadata client's plain HTTP/1.1 GET, pointed at the endpoint (which ignores its
    // Metadata-Flavor header): no second HTTP client in the binary.
    let endpoint = crate::metadata::MetadataHost::new(Some(&format!("{CREDENTIALS_HOST}:{port}")));
    let unreachable = |reason: String| HealthError::Unreachable { port, reason };
    let (status, body) =
        tokio::time::timeout(timeout, crate::metadata::get(&endpoint, HEALTH_PATH))
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
    if status == StatusCode::OK {
        return Ok(());
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["Message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(HealthError::NotReady { port, message })
}

/// Bind the listener (separately from [`serve`], so a taken port fails startup at once) on the
/// contract's loopback host: an IP literal, so no resolver is asked.
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((CREDENTIALS_HOST, port)).await
}

/// Serve until the task is dropped.
///
/// At the connection cap, a new client asks every connection that has already been served a
/// request to close once it has none in flight (hyper's graceful shutdown: an idle keep-alive
/// connection closes at once) and waits for a slot. So clients that keep connections open for
/// reuse (the Rust SDK's pool) never lock others out, connections that have not sent a request
/// yet are left to the header read timeout (a client that just connected is not cut off before
/// it could speak), and the cap still bounds what a hostile client can hold.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let permits = Arc::new(Semaphore::new(state.limits.max_connections.max(1)));
    let pressure = Arc::new(tokio::sync::Notify::new());
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Keep asking while waiting: a connection that was busy a moment ago may be
                // idle now.
                let acquire = permits.clone().acquire_owned();
                tokio::pin!(acquire);
                loop {
                    pressure.notify_waiters();
                    tokio::select! {
                        p = &mut acquire => match p {
                            Ok(p) => break p,
                            Err(_) => return,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (state, pressure) = (state.clone(), pressure.clone());
        tokio::spawn(async move {
            connection(stream, state, pressure).await;
            drop(permit);
        });
    }
}

async fn connection(stream: TcpStream, state: Arc<State>, pressure: Arc<tokio::sync::Notify>) {
    let _ = stream.set_nodelay(true);
    let epoch = Instant::now();
    let last = Arc::new(AtomicI64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        last: last.clone(),
        epoch,
    });
    let svc_state = state.clone();
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc_served = served.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (state, served) = (svc_state.clone(), svc_served.clone());
        async move {
            let head_only = req.method() == Method::HEAD;
            let reply = answer(&state, &req).await;
            served.store(true, Ordering::Relaxed);
            Ok::<_, Infallible>(to_response(reply, head_only))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout)
        .max_buf_size(8192)
        .max_headers(32)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let idle = state.limits.idle_timeout;
    let drain =
        Duration::from_secs(1) + state.limits.header_read_timeout + state.limits.pending_wait;
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed).max(0) as u64);
        let wake = tokio::time::Instant::from_std(epoch + since + idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "credentials connection ended");
                }
                return;
            }
            // Always listening, deciding inside: a `select!` precondition is read once per
            // turn, so a connection served after the turn began would ignore the pressure
            // until its idle timer fired.
            _ = pressure.notified() => {
                if !served.load(Ordering::Relaxed) {
                    continue;
                }
                debug!("connection cap reached: closing this connection once it is idle");
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(drain, conn.as_mut()).await;
                return;
            }
            _ = tokio::time::sleep_until(wake) => {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(
                    last.load(Ordering::Relaxed).max(0) as u64,
                ));
                if quiet >= idle {
                    debug!("closing idle credentials connection");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// A stream that records when it last moved bytes (milliseconds since `epoch`).
struct Tracked {
    inner: TcpStream,
    last: Arc<AtomicI64>,
    epoch: Instant,
}

impl Tracked {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as i64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::{Credentials, Failure};

    fn served() -> Served {
        Credentials {
            access_key_id: "ASIA".into(),
            secret_access_key: "s".into(),
            session_token: "t".into(),
            expiration: "2030-01-01T00:00:00Z".into(),
            expires_ms: 0,
            account_id: None,
        }
        .render()
    }

    fn body(r: &Reply) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/healthz", false), Route::Health);
        assert_eq!(
            route(&Method::GET, "/v1/credentials/docs", false),
            Route::Credentials("docs")
        );
        assert_eq!(
            route(&Method::HEAD, "/v1/credentials/docs", false),
            Route::Credentials("docs")
        );
        let status = |m: &Method, p: &str, b: bool| match route(m, p, b) {
            Route::Reject(r) => (r.status, r.close),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(&Method::POST, "/v1/credentials/docs", false),
            (StatusCode::METHOD_NOT_ALLOWED, false)
        );
        assert_eq!(
            status(&Method::GET, "/v1/credentials/docs", true),
            (StatusCode::BAD_REQUEST, true)
        );
        assert_eq!(
            status(&Method::GET, "/v1/credentials/", false).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(status(&Method::GET, "/", false).0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn authorization_401_403_and_no_credential_in_either() {
        let t = AuthToken::from_test(&"0f".repeat(32));
        let missing = authorize(&t, None).unwrap_err();
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert_eq!(body(&missing)["Code"], "MissingAuthorization");
        assert!(
            body(&missing)["Message"]
                .as_str()
                .unwrap()
                .contains("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        );
        let wrong = authorize(&t, Some(b"nope")).unwrap_err();
        assert_eq!(wrong.status, StatusCode::FORBIDDEN);
        assert!(authorize(&t, Some("0f".repeat(32).as_bytes())).is_ok());
        for r in [missing, wrong] {
            let b = body(&r);
            assert!(b.get("AccessKeyId").is_none() && b.get("Token").is_none());
        }
    }

    #[test]
    fn credentials_replies() {
        let s = served();
        match credentials_reply("docs", Lookup::Serve(&s), true) {
            Decision::Reply(r) => {
                assert_eq!(r.status, StatusCode::OK);
                assert_eq!(body(&r)["AccessKeyId"], "ASIA");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            credentials_reply("docs", Lookup::Pending, true),
            Decision::Wait
        );
        match credentials_reply("docs", Lookup::Pending, false) {
            Decision::Reply(r) => {
                assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(body(&r)["Code"], "CredentialsNotReady");
            }
            other => panic!("{other:?}"),
        }
        let f = Failure {
            attempts: 1,
            problem: Problem::new(
                "AccessDenied",
                "hop 2 of 2 (sts:AssumeRole arn:x) failed: denied",
            ),
            at_ms: 0,
        };
        // A failure is answered at once, waiting or not.
        for may_wait in [true, false] {
            match credentials_reply("docs", Lookup::Unavailable(&f), may_wait) {
                Decision::Reply(r) => {
                    assert_eq!(r.status, StatusCode::FAILED_DEPENDENCY);
                    assert!(r.status.is_client_error());
                    assert_eq!(body(&r)["Code"], "AccessDenied");
                    assert!(body(&r)["Message"].as_str().unwrap().contains("hop 2"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn health_is_ok_only_when_every_binding_is() {
        let s = served();
        let f = Failure {
            attempts: 3,
            problem: Problem::new("AccessDenied", "hop 2 failed"),
            at_ms: 0,
        };
        let ok = health_reply([("a", Lookup::Serve(&s)), ("b", Lookup::Serve(&s))]);
        assert_eq!(ok.status, StatusCode::OK);
        let not = health_reply([
            ("a", Lookup::Serve(&s)),
            ("b", Lookup::Pending),
            ("c", Lookup::Unavailable(&f)),
        ]);
        assert_eq!(not.status, StatusCode::SERVICE_UNAVAILABLE);
        let msg = body(&not)["Message"].as_str().unwrap().to_string();
        assert_eq!(msg, "b: no credentials yet; c: hop 2 failed");
        assert!(!String::from_utf8_lossy(&not.body).contains("ASIA"));
    }
}
