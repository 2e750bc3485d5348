//! The token files: the I/O shell for `run` (keep tokens fresh, deciding through
//! [`TokenState`]), `init` (write once) and `check` (probe).
//!
//! Invariant for every token file: it is either absent or holds a token that passed validation
//! (and, when pinned, is the pinned account's: [`crate::pin`]) and has not expired. A token is
//! replaced only by a newer valid one, and removed only once it has expired (so an outage of the
//! metadata server shorter than the remaining lifetime is invisible to the application).
//!
//! A refusal (the metadata server answered for another account, or the pod has no Google
//! service account) writes no token. It is recorded, without secrets, in a small file beside
//! the token ([`refusal_path`]): `check` runs as a separate process (the kubelet's probe), and
//! reads it so that the failing probe, and so the pod's events, say why. A token written later
//! removes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use crate::clock::{Jitter, now_ms};
use crate::jwt::{self, Claims, JwtError};
use crate::metadata::{self, FetchError, MetadataHost};
use crate::pin::{Pin, Refusal};
use crate::schedule::{self, Policy};
use crate::spec::TokenSpec;
use crate::token_state::{Held, TokenState};
use crate::writer::{self, TOKEN_MODE, WriteError};

/// Shared settings of the token loops.
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoint: MetadataHost,
    pub request_timeout: Duration,
    pub policy: Policy,
    /// The account every Google ID token must be for.
    pub pin: Pin,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl RefreshError {
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            RefreshError::Fetch(e) => e.refusal(),
            RefreshError::Write(_) => None,
        }
    }
}

/// Where the last refusal for the token in `token_path` is recorded: beside it, with a suffix
/// no token path has (the contract's end in `.token`).
pub fn refusal_path(token_path: &Path) -> PathBuf {
    let mut p = token_path.as_os_str().to_owned();
    p.push(".refusal");
    PathBuf::from(p)
}

/// A refusal file larger than this is not one of ours.
const MAX_REFUSAL: u64 = 4096;

/// Record why the token in `token_path` was refused (one line, no secret).
pub fn record_refusal(token_path: &Path, reason: &str) -> Result<(), WriteError> {
    writer::write_atomic(
        &refusal_path(token_path),
        format!("{reason}\n").as_bytes(),
        TOKEN_MODE,
    )
}

/// The recorded refusal for the token in `token_path`, if any (printable characters only).
pub fn read_refusal(token_path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(refusal_path(token_path))
        .ok()?
        .take(MAX_REFUSAL)
        .read_to_string(&mut text)
        .ok()?;
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn now_s() -> i64 {
    now_ms().div_euclid(1000)
}

/// Fetch one token and write it atomically.
pub async fn refresh_once(
    cfg: &Config,
    spec: &TokenSpec,
    timeout: Duration,
) -> Result<Claims, RefreshError> {
    let token =
        metadata::fetch_token(&cfg.endpoint, &spec.audience, &cfg.pin, timeout, now_s).await?;
    writer::write_atomic(&spec.path, token.jwt.as_bytes(), TOKEN_MODE)?;
    Ok(token.claims)
}

/// The token currently in `path`, if it is valid for `audience` at `now` (seconds).
pub fn read_valid(path: &Path, audience: &str, now: i64) -> Result<Option<Claims>, JwtError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            jwt::validate(text.trim(), audience, now).map(Some)
        }
        Err(_) => Ok(None),
    }
}

/// Keep one token file fresh forever (until the runtime is dropped on shutdown). The decisions
/// are [`TokenState`]'s; this fetches, writes, removes, logs and sleeps.
pub async fn keep_fresh(cfg: Arc<Config>, spec: TokenSpec, mut jitter: Jitter) {
    let path = spec.path.display().to_string();
    let found = adopt_existing(&spec, &cfg.pin).map(|c| Held::from(&c));
    let (mut state, mut delay) = TokenState::start(found, &cfg.policy, now_ms(), jitter.sample());
    loop {
        if !delay.is_zero() {
            debug!(path, sleep_ms = delay.as_millis() as u64, "sleeping");
            tokio::time::sleep(delay).await;
        }
        if let Some(gone) = state.take_expired(now_ms()) {
            match writer::remove(&spec.path) {
                Ok(()) => warn!(
                    path,
                    audience = spec.audience,
                    exp = gone.exp,
                    "token expired during outage; file removed"
                ),
                Err(e) => warn!(path, error = %e, "cannot remove expired token file"),
            }
        }
        delay = match refresh_once(&cfg, &spec, cfg.request_timeout).await {
            Ok(claims) => written(&cfg.policy, &spec, &mut state, &claims, jitter.sample()),
            Err(e) => not_written(&cfg.policy, &spec, &mut state, &e, jitter.sample()),
        };
    }
}

/// After a token was written: log, clear a recorded refusal, and the delay to the next fetch.
fn written(
    policy: &Policy,
    spec: &TokenSpec,
    state: &mut TokenState,
    claims: &Claims,
    jitter: f64,
) -> Duration {
    let path = spec.path.display().to_string();
    let f = state.succeeded(Held::from(claims), policy, now_ms(), jitter);
    if f.same_token() {
        debug!(
            path,
            repeats = f.repeats,
            retry_in_ms = f.delay.as_millis() as u64,
            "metadata server returned the same token"
        );
    } else {
        info!(
            path,
            audience = spec.audience,
            exp = claims.exp,
            refresh_in_s = f.delay.as_secs(),
            after_failures = f.after_failures,
            "token written"
        );
    }
    if let Err(e) = writer::remove(&refusal_path(&spec.path)) {
        warn!(path, error = %e, "cannot remove the recorded refusal");
    }
    f.delay
}

/// After a failed or refused fetch: log, record a refusal for `check`, and the delay to the
/// next attempt (minutes after a refusal: it is no outage).
fn not_written(
    policy: &Policy,
    spec: &TokenSpec,
    state: &mut TokenState,
    e: &RefreshError,
    jitter: f64,
) -> Duration {
    let path = spec.path.display().to_string();
    let Some(refusal) = e.refusal() else {
        let f = state.failed(policy, now_ms(), jitter);
        warn!(
            path,
            audience = spec.audience,
            attempt = f.attempt,
            retry_in_ms = f.delay.as_millis() as u64,
            current_token_exp = f.held_exp,
            error = %e,
            "token refresh failed; the previous token (if any) stays until it expires"
        );
        return f.delay;
    };
    let f = state.failed(&policy.after_refusal(), now_ms(), jitter);
    if let Err(w) = record_refusal(&spec.path, &refusal.to_string()) {
        warn!(path, error = %w, "cannot record the refusal for the probe");
    }
    error!(
        path,
        error = %e,
        audience = spec.audience,
        retry_in_ms = f.delay.as_millis() as u64,
        attempt = f.attempt,
        "token refused, nothing written; retrying rarely, since waiting does not fix this"
    );
    f.delay
}

/// A restarted sidecar finds the emptyDir as it left it: reuse a still-valid token rather than
/// racing to replace it, and clear out anything that is not valid, or not the pinned
/// account's (a token an older, unpinned agent wrote).
fn adopt_existing(spec: &TokenSpec, pin: &Pin) -> Option<Claims> {
    let path = spec.path.display().to_string();
    let aud = spec.audience.as_str();
    let remove = |why: &dyn std::fmt::Display| {
        warn!(path, audience = aud, error = %why, "removing a token file left on disk");
        if let Err(e) = writer::remove(&spec.path) {
            warn!(path, error = %e, "cannot remove the token file");
        }
        None
    };
    match read_valid(&spec.path, aud, now_s()) {
        Ok(Some(c)) => match pin.judge(&c) {
            Ok(()) => {
                info!(
                    path,
                    audience = aud,
                    exp = c.exp,
                    "reusing valid token already on disk"
                );
                Some(c)
            }
            Err(refusal) => remove(&refusal),
        },
        Ok(None) => None,
        Err(e) => remove(&e),
    }
}

/// A token that could not be written by `init`, with its last error.
#[derive(Debug)]
pub struct InitFailure {
    pub spec: TokenSpec,
    pub error: RefreshError,
}

#[derive(Debug, thiserror::Error)]
#[error("{}", format_failures(.0))]
pub struct InitError(pub Vec<InitFailure>);

fn format_failures(f: &[InitFailure]) -> String {
    f.iter()
        .map(|f| {
            format!(
                "{} (audience {}): {}",
                f.spec.path.display(),
                f.spec.audience,
                f.error
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Write every token once, retrying each with backoff until `deadline` has passed.
pub async fn init(
    cfg: Arc<Config>,
    specs: Vec<TokenSpec>,
    deadline: Duration,
) -> Result<(), InitError> {
    let until = tokio::time::Instant::now() + deadline;
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let cfg = cfg.clone();
        set.spawn(async move {
            let mut jitter = Jitter::seeded(i as u64);
            let mut attempt = 0u32;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                // The last attempt, at the deadline, still gets a fair chance to connect.
                let timeout = cfg.request_timeout.min(left).max(Duration::from_millis(250));
                match refresh_once(&cfg, &spec, timeout).await {
                    Ok(claims) => {
                        info!(path = %spec.path.display(), audience = spec.audience, exp = claims.exp, "token written");
                        return Ok(());
                    }
                    Err(error) => {
                        attempt += 1;
                        let left = until.saturating_duration_since(tokio::time::Instant::now());
                        // A refusal is no outage: fail now with its advice, not at the deadline.
                        if left.is_zero() || error.refusal().is_some() {
                            return Err(InitFailure { spec, error });
                        }
                        let retry = schedule::backoff(&cfg.policy, attempt, jitter.sample()).min(left);
                        warn!(path = %spec.path.display(), attempt, retry_in_ms = retry.as_millis() as u64, error = %error, "token fetch failed; retrying");
                        tokio::time::sleep(retry).await;
                    }
                }
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(f)) => failures.push(f),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(InitError(failures))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{path}: no token file yet")]
    Missing { path: String },
    #[error("{path}: {source}")]
    Invalid {
        path: String,
        #[source]
        source: JwtError,
    },
    #[error(
        "{path}: token expires at {exp}, in {remaining_s}s: about to expire (refresh is failing?)"
    )]
    Expiring {
        path: String,
        exp: i64,
        remaining_s: i64,
    },
    /// The token file fails the check, and the agent recorded why it writes none.
    #[error("{state}; the agent refuses to write a token: {reason}")]
    Refused {
        state: Box<CheckError>,
        reason: String,
    },
}

/// Probe: every token file must hold a valid token that is not about to expire. A failing
/// file's recorded refusal, if any, says why. Returns the expiry of each token on success.
pub fn check(
    specs: &[TokenSpec],
    min_remaining: Duration,
    now_ms: i64,
) -> Result<Vec<i64>, CheckError> {
    specs
        .iter()
        .map(|spec| {
            check_one(spec, min_remaining, now_ms).map_err(|state| match read_refusal(&spec.path) {
                Some(reason) => CheckError::Refused {
                    state: Box::new(state),
                    reason,
                },
                None => state,
            })
        })
        .collect()
}

fn check_one(spec: &TokenSpec, min_remaining: Duration, now_ms: i64) -> Result<i64, CheckError> {
    let path = spec.path.display().to_string();
    let claims = read_valid(&spec.path, &spec.audience, now_ms.div_euclid(1000))
        .map_err(|source| CheckError::Invalid {
            path: path.clone(),
            source,
        })?
        .ok_or_else(|| CheckError::Missing { path: path.clone() })?;
    if schedule::about_to_expire(claims.iat, claims.exp, now_ms, min_remaining) {
        return Err(CheckError::Expiring {
            path,
            exp: claims.exp,
            remaining_s: claims.exp - now_ms.div_euclid(1000),
        });
    }
    Ok(claims.exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::token;

    fn spec(dir: &Path, name: &str, aud: &str) -> TokenSpec {
        TokenSpec {
            path: dir.join(name),
            audience: aud.into(),
        }
    }

    #[test]
    fn check_reports_each_state() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000i64;
        let s = spec(dir.path(), "t", "sts.amazonaws.com");
        let min = Duration::from_secs(300);
        assert!(matches!(
            check(std::slice::from_ref(&s), min, now * 1000),
            Err(CheckError::Missing { .. })
        ));
        std::fs::write(&s.path, token("sts.amazonaws.com", now - 60, now + 3540)).unwrap();
        assert_eq!(
            check(std::slice::from_ref(&s), min, now * 1000).unwrap(),
            vec![now + 3540]
        );
        std::fs::write(&s.path, token("sts.amazonaws.com", now - 3500, now + 100)).unwrap();
        assert!(matches!(
            check(std::slice::from_ref(&s), min, now * 1000),
            Err(CheckError::Expiring { .. })
        ));
        std::fs::write(&s.path, token("other", now, now + 3600)).unwrap();
        assert!(matches!(
            check(std::slice::from_ref(&s), min, now * 1000),
            Err(CheckError::Invalid {
                source: JwtError::Audience { .. },
                ..
            })
        ));
        std::fs::write(&s.path, "garbage").unwrap();
        assert!(matches!(
            check(&[s], min, now * 1000),
            Err(CheckError::Invalid { .. })
        ));
    }

    #[test]
    fn check_says_why_a_refused_token_is_missing_until_one_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000i64;
        let s = spec(dir.path(), "sts.amazonaws.com.token", "sts.amazonaws.com");
        assert_eq!(
            refusal_path(&s.path),
            dir.path().join("sts.amazonaws.com.token.refusal")
        );
        record_refusal(
            &s.path,
            "the metadata server answered for node@x, not app@y",
        )
        .unwrap();
        assert_eq!(
            read_refusal(&s.path).as_deref(),
            Some("the metadata server answered for node@x, not app@y")
        );
        let min = Duration::from_secs(300);
        let err = check(std::slice::from_ref(&s), min, now * 1000).unwrap_err();
        assert!(
            matches!(&err, CheckError::Refused { state, .. } if matches!(**state, CheckError::Missing { .. }))
        );
        let text = err.to_string();
        assert!(text.contains("no token file yet"), "{text}");
        assert!(text.contains("answered for node@x, not app@y"), "{text}");
        // A held valid token passes: the app still has a token to use.
        std::fs::write(&s.path, token("sts.amazonaws.com", now - 60, now + 3540)).unwrap();
        assert!(check(std::slice::from_ref(&s), min, now * 1000).is_ok());
        writer::remove(&refusal_path(&s.path)).unwrap();
        assert_eq!(read_refusal(&s.path), None);
    }

    #[test]
    fn check_requires_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000i64;
        let a = spec(dir.path(), "a", "A");
        let b = spec(dir.path(), "b", "B");
        std::fs::write(&a.path, token("A", now, now + 3600)).unwrap();
        let err = check(
            &[a.clone(), b.clone()],
            Duration::from_secs(300),
            now * 1000,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/b"), "{err}");
        std::fs::write(&b.path, token("B", now, now + 3600)).unwrap();
        assert_eq!(
            check(&[a, b], Duration::from_secs(300), now * 1000)
                .unwrap()
                .len(),
            2
        );
    }
}
