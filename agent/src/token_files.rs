//! The token files: the I/O shell for `run` (keep tokens fresh, deciding through
//! [`TokenState`]), `init` (write once) and `check` (probe).
//!
//! Invariant for every token file: it is either absent or holds a token that passed validation
//! and has not expired. A token is replaced only by a newer valid one, and removed only once it
//! has expired (so an outage of the metadata server shorter than the remaining lifetime is
//! invisible to the application).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::clock::{Jitter, now_ms};
use crate::jwt::{self, Claims, JwtError};
use crate::metadata::{self, FetchError, MetadataHost};
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
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Write(#[from] WriteError),
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
    let token = metadata::fetch_token(&cfg.endpoint, &spec.audience, timeout, now_s).await?;
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
    let aud = spec.audience.as_str();
    let found = adopt_existing(&spec).map(|c| Held::from(&c));
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
                    audience = aud,
                    exp = gone.exp,
                    "token expired during outage; file removed"
                ),
                Err(e) => warn!(path, error = %e, "cannot remove expired token file"),
            }
        }
        delay = match refresh_once(&cfg, &spec, cfg.request_timeout).await {
            Ok(claims) => {
                let f =
                    state.succeeded(Held::from(&claims), &cfg.policy, now_ms(), jitter.sample());
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
                        audience = aud,
                        exp = claims.exp,
                        refresh_in_s = f.delay.as_secs(),
                        after_failures = f.after_failures,
                        "token written"
                    );
                }
                f.delay
            }
            Err(e) => {
                let f = state.failed(&cfg.policy, now_ms(), jitter.sample());
                warn!(
                    path,
                    audience = aud,
                    attempt = f.attempt,
                    retry_in_ms = f.delay.as_millis() as u64,
                    current_token_exp = f.held_exp,
                    error = %e,
                    "token refresh failed; the previous token (if any) stays until it expires"
                );
                f.delay
            }
        };
    }
}

/// A restarted sidecar finds the emptyDir as it left it: reuse a still-valid token rather than
/// racing to replace it, and clear out anything that is not valid.
fn adopt_existing(spec: &TokenSpec) -> Option<Claims> {
    let path = spec.path.display().to_string();
    let aud = spec.audience.as_str();
    match read_valid(&spec.path, aud, now_s()) {
        Ok(Some(c)) => {
            info!(
                path,
                audience = aud,
                exp = c.exp,
                "reusing valid token already on disk"
            );
            Some(c)
        }
        Ok(None) => None,
        Err(e) => {
            warn!(path, audience = aud, error = %e, "removing invalid token file left on disk");
            if let Err(e) = writer::remove(&spec.path) {
                warn!(path, error = %e, "cannot remove invalid token file");
            }
            None
        }
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
                        if left.is_zero() {
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
}

/// Probe: every token file must hold a valid token that is not about to expire.
/// Returns the expiry of each token on success.
pub fn check(
    specs: &[TokenSpec],
    min_remaining: Duration,
    now_ms: i64,
) -> Result<Vec<i64>, CheckError> {
    specs
        .iter()
        .map(|spec| {
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
        })
        .collect()
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
