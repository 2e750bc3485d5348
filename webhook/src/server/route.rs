//! `POST /mutate`: a request body in, read under the limits, and an AdmissionReview out.
//!
//! Bodies are read under a deadline into buffers paid for from the shared [`BodyBudget`]. What
//! is answered when:
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Buf;
use futures::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tracing::field::Empty;
use warp::Filter;
use warp::http::{Response, StatusCode};

use super::bodybuf::{BodyBuf, HEAP_MAX};
use super::budget::{BodyBudget, BodyLease, Shed};
use super::tls::CertStore;
use crate::admission::mutate::Config;
use crate::admission::mutate::{self, Patch, ServiceAccountState, Skip, TokenSource};
use crate::admission::review::{self, Decision, Parsed, PodReview};
use crate::bindings::cache::BindingCache;
use crate::domain::pod::PodView;
use crate::metrics::{AdmissionOutcome, Metrics};

/// Bodies grow by this much (beyond the first [`HEAP_MAX`] bytes, allocated at once when the
/// first bytes arrive: real reviews are about 10 KB).
const GROW_STEP: usize = 64 << 10;

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

/// What [`serve_tls`](super::serve_tls) gives each request: its deadline and the body limits. Carried as a
/// request extension, so the routes must be served by
/// [`serve_tls`](super::serve_tls).
#[derive(Clone)]
pub(super) struct RequestCtx {
    /// When head and body must have arrived.
    pub deadline: Instant,
    pub http1: bool,
    pub(super) bodies: Arc<Bodies>,
}

/// The body limits every request shares.
pub(super) struct Bodies {
    pub(super) budget: Arc<BodyBudget>,
    pub(super) max_size: usize,
    pub(super) metrics: Arc<Metrics>,
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
        // What has arrived is taken without arming a timer: a review usually comes whole with
        // its head, and registering a deadline with tokio's timer (often waking the worker
        // parked in the driver to move its wake-up time) cost more than reading the body. Only
        // a body still on its way is waited for under the deadline and the budget.
        let next = match body.next().now_or_never() {
            Some(next) => next,
            None => tokio::select! {
                biased;
                next = body.next() => next,
                _ = lease.evicted() => return Err(BodyError::Shed(Shed::Evicted)),
                _ = tokio::time::sleep_until(ctx.deadline) => return Err(BodyError::Timeout),
            },
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

/// One review body in, one response body out, and one log line that says what happened.
pub(crate) async fn admit(state: &AppState, body: &[u8]) -> (Vec<u8>, AdmissionOutcome) {
    let review = match review::parse(body) {
        Parsed::Pod(review) => review,
        Parsed::Done {
            body,
            outcome,
            uid,
            invalid,
        } => {
            if let Some(reason) = invalid {
                tracing::warn!(
                    uid = %uid.as_str(),
                    %reason,
                    "admission invalid"
                );
            }
            return (body, outcome);
        }
    };
    let bindings = state
        .cache
        .bindings_for(&review.namespace, review.service_account())
        .await;
    // A pod without bindings (most of a cluster's pods) is only told of at debug level, so at
    // the default level its admission costs no span and no line.
    let span = match bindings {
        None => tracing::debug_span!(
            "admission",
            uid = %review.uid.as_str(),
            namespace = %review.namespace,
            pod = %review.pod_name(),
            decision = Empty
        ),
        Some(_) => tracing::info_span!(
            "admission",
            uid = %review.uid.as_str(),
            namespace = %review.namespace,
            pod = %review.pod_name(),
            decision = Empty
        ),
    };
    let _entered = span.enter();
    // The Google service account the agent is pinned to: only Google-source pods need it.
    let account = match bindings.as_deref() {
        Some(b) if b.iter().any(|b| b.token_source == TokenSource::Google) => {
            state
                .cache
                .account_for(&review.namespace, review.service_account())
                .await
        }
        _ => ServiceAccountState::Missing,
    };
    let config = state.config.load();
    let (body, decision) =
        review.respond(bindings.as_deref().unwrap_or_default(), &account, &config);
    span.record("decision", tracing::field::display(decision.as_str()));
    log_decision(&review, &decision);
    (body, decision.outcome())
}

/// The `container=binding` pairs a patch applied, looked up only when the line is written.
struct Applied<'p>(&'p Patch, &'p PodView<'p>);

impl std::fmt::Display for Applied<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(mutate::applied_bindings(self.0, self.1).unwrap_or_default())
    }
}

/// The admission's one line (in its span, which carries uid, namespace, pod and decision).
fn log_decision(review: &PodReview<'_>, decision: &Decision) {
    let (service_account, dry_run) = (review.service_account(), review.dry_run);
    match decision {
        Decision::Applied(patch) => {
            let bindings = Applied(patch, &review.pod);
            tracing::info!(%bindings, %service_account, dry_run, "admission applied");
        }
        Decision::Skipped(skip) => {
            let reason = skip.as_str();
            // A pod without bindings, or in the webhook's own namespace, is no news.
            if matches!(skip, Skip::NoBinding | Skip::OwnNamespace) {
                tracing::debug!(%reason, %service_account, dry_run, "admission skipped");
            } else {
                tracing::info!(%reason, %service_account, dry_run, "admission skipped");
            }
        }
        Decision::Denied(denial) => {
            let reason = denial.reason.as_str();
            tracing::info!(%reason, %service_account, dry_run, "admission denied");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::convert::{bindings_from_yaml, service_accounts_from_yaml};

    const REVIEW: &str =
        include_str!("../../tests/fixtures/admissionreview-v1-pod-from-apiserver.json");

    /// What the subscriber writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    fn state(bindings: &str) -> AppState {
        let metrics = Arc::new(Metrics::new());
        let accounts = service_accounts_from_yaml(bindings, "default").unwrap();
        let bindings = bindings_from_yaml(bindings, "default").unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        AppState {
            cache: Arc::new(BindingCache::fixed(metrics.clone(), bindings, &accounts)),
            config: ArcSwap::from_pointee(Config::default()),
            metrics,
            certs: Arc::new(CertStore::new("-".into(), "-".into(), provider)),
            shutting_down: AtomicBool::new(false),
        }
    }

    #[tokio::test]
    async fn one_line_per_admission_says_what_it_decided() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let binding = "kind: AWSRoleBinding\nmetadata: {name: checkout}\n\
             spec: {serviceAccountName: app-sa, roleArn: 'arn:aws:iam::123456789012:role/c'}\n";
        let bound = state(&format!(
            "{binding}---\nkind: ServiceAccount\nmetadata: {{name: app-sa, annotations: \
             {{iam.gke.io/gcp-service-account: app@p.iam.gserviceaccount.com}}}}\n"
        ));

        admit(&bound, REVIEW.as_bytes()).await;
        let line = lines.take();
        assert_eq!(line.lines().count(), 1, "{line}");
        for want in [
            "admission{uid=16410c61-1d7a-4935-9a8c-8800db65e129 namespace=default \
             pod=checkout-api-7d9c8b6f5- decision=applied}",
            "admission applied bindings=",
            "=checkout",
            "service_account=app-sa",
        ] {
            assert!(line.contains(want), "{want:?} not in {line}");
        }

        let tie = state(
            "kind: AWSRoleBinding\nmetadata: {name: a}\n\
             spec: {serviceAccountName: app-sa, roleArn: 'arn:aws:iam::123456789012:role/a'}\n\
             ---\nkind: AWSRoleBinding\nmetadata: {name: b}\n\
             spec: {serviceAccountName: app-sa, roleArn: 'arn:aws:iam::123456789012:role/b'}\n",
        );
        admit(&tie, REVIEW.as_bytes()).await;
        let line = lines.take();
        assert!(line.contains("decision=denied}"), "{line}");
        assert!(line.contains("admission denied reason=tie"), "{line}");

        // A Google-source pod whose service account nobody knows: not pinned, denied.
        admit(&state(binding), REVIEW.as_bytes()).await;
        let line = lines.take();
        assert!(
            line.contains("admission denied reason=service_account_unknown"),
            "{line}"
        );

        // A pod without bindings: nothing at the default level.
        admit(&state("[]"), REVIEW.as_bytes()).await;
        assert_eq!(lines.take(), "");

        admit(&bound, b"{").await;
        let line = lines.take();
        assert!(line.contains("admission invalid"), "{line}");
        assert!(line.contains("not an AdmissionReview"), "{line}");
    }
}
