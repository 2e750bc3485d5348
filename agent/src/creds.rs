//! Credentials held in memory, and the pure state of one binding's credentials.
//!
//! [`Slot`] is the whole decision logic of the credentials endpoint for one binding, as a
//! state machine with the clock and the jitter as inputs: what to answer a request now, when to
//! refresh after a success, when to retry after a failure. The I/O shell
//! ([`crate::sidecar`]) only feeds it results and sleeps as told.
//!
//! Secrets: [`Credentials`] and [`Served`] print only the access key ID (an identifier that
//! CloudTrail shows anyway) in `Debug`; the secret key, the session token and the rendered
//! response body never reach a log or an error.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::schedule::{self, Lifetime, Policy};

/// Temporary AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, UTC, as STS returned it.
    pub expiration: String,
    pub expires_ms: i64,
    pub account_id: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .field("account_id", &self.account_id)
            .finish()
    }
}

/// The container credentials protocol's 200 body.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointBody<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

impl Credentials {
    /// For signing the next hop with the SDK.
    pub fn to_sdk(&self, provider: &'static str) -> aws_sdk_sts_lean::config::Credentials {
        let expiry = std::time::UNIX_EPOCH + Duration::from_millis(self.expires_ms.max(0) as u64);
        aws_sdk_sts_lean::config::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            Some(self.session_token.clone()),
            Some(expiry),
            provider,
        )
    }

    /// Rendered once per refresh: the endpoint answers every request with these bytes.
    pub fn render(&self) -> Served {
        let body = serde_json::to_vec(&EndpointBody {
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
            token: &self.session_token,
            expiration: &self.expiration,
            account_id: self.account_id.as_deref(),
        })
        .expect("strings serialise");
        Served {
            access_key_id: self.access_key_id.clone(),
            expiration: self.expiration.clone(),
            body: Bytes::from(body),
        }
    }
}

/// What the endpoint hands out for one binding: the pre-rendered 200 body.
#[derive(Clone, PartialEq, Eq)]
pub struct Served {
    pub access_key_id: String,
    pub expiration: String,
    pub body: Bytes,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .field(
                "body",
                &format_args!("<{} bytes redacted>", self.body.len()),
            )
            .finish()
    }
}

/// An error as the endpoint reports it: `{"Code": ..., "Message": ...}`, which the SDKs
/// surface (botocore puts the body in its error, the JS SDK and Go v2 read Code/Message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Problem {
    pub code: String,
    pub message: String,
}

impl Problem {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("strings serialise"))
    }
}

/// The last failure since the last success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub attempts: u32,
    pub problem: Problem,
    pub at_ms: i64,
}

/// What to answer a request for this binding at a given moment.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a, C> {
    /// Servable credentials.
    Serve(&'a C),
    /// Nothing servable and no failure yet: the first fetch (or a refresh of credentials that
    /// just became unservable) is under way. Worth a brief wait.
    Pending,
    /// Nothing servable, and the last attempt failed: answer with its problem at once.
    Unavailable(&'a Failure),
}

/// One binding's credentials and the state of their refresh.
#[derive(Debug, Clone)]
pub struct Slot<C> {
    held: Option<(C, Lifetime)>,
    failure: Option<Failure>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot {
            held: None,
            failure: None,
        }
    }
}

impl<C> Slot<C> {
    /// New credentials arrived at `now_ms`; returns the delay until the next refresh.
    pub fn succeeded(
        &mut self,
        value: C,
        expires_ms: i64,
        policy: &Policy,
        now_ms: i64,
        jitter: f64,
    ) -> Duration {
        let lifetime = Lifetime {
            obtained_ms: now_ms,
            expires_ms,
        };
        self.held = Some((value, lifetime));
        self.failure = None;
        schedule::credentials_refresh(policy, lifetime, now_ms, jitter)
    }

    /// An attempt failed at `now_ms`; returns the delay until the next attempt. Servable
    /// credentials are kept (an outage shorter than their remaining life is invisible to the
    /// app); unservable ones are dropped from memory. After a refusal
    /// ([`crate::pin::Refusal`]) the caller passes [`Policy::after_refusal`]: the problem is
    /// reported alike, the next attempt backs off to minutes.
    pub fn failed(
        &mut self,
        problem: Problem,
        policy: &Policy,
        now_ms: i64,
        jitter: f64,
    ) -> Duration {
        if self
            .held
            .as_ref()
            .is_some_and(|(_, l)| !l.servable(policy, now_ms))
        {
            self.held = None;
        }
        let attempts = self.failure.as_ref().map_or(0, |f| f.attempts) + 1;
        self.failure = Some(Failure {
            attempts,
            problem,
            at_ms: now_ms,
        });
        schedule::credentials_retry(
            policy,
            attempts,
            jitter,
            self.held.as_ref().map(|(_, l)| *l),
            now_ms,
        )
    }

    pub fn lookup(&self, policy: &Policy, now_ms: i64) -> Lookup<'_, C> {
        match (&self.held, &self.failure) {
            (Some((c, l)), _) if l.servable(policy, now_ms) => Lookup::Serve(c),
            (_, Some(f)) => Lookup::Unavailable(f),
            _ => Lookup::Pending,
        }
    }

    /// Ready for the health check: servable credentials are held.
    pub fn ready(&self, policy: &Policy, now_ms: i64) -> bool {
        matches!(self.lookup(policy, now_ms), Lookup::Serve(_))
    }

    /// The held credentials' lifetime, servable or not.
    pub fn lifetime(&self) -> Option<Lifetime> {
        self.held.as_ref().map(|(_, l)| *l)
    }

    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000; // ms

    fn p() -> Policy {
        Policy::default()
    }

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            session_token: "session-token-secret".into(),
            expiration: "2027-01-15T10:00:00Z".into(),
            expires_ms: T0 + 900_000,
            account_id: Some("222222222222".into()),
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = creds();
        let shown = format!("{c:?} {:?}", c.render());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains("session-token-secret"), "{shown}");
        assert!(shown.contains("ASIAEXAMPLE"));
    }

    #[test]
    fn body_has_the_fields_every_sdk_reads() {
        let v: serde_json::Value = serde_json::from_slice(&creds().render().body).unwrap();
        assert_eq!(v["AccessKeyId"], "ASIAEXAMPLE");
        assert_eq!(v["SecretAccessKey"], "very-secret");
        assert_eq!(v["Token"], "session-token-secret");
        assert_eq!(v["Expiration"], "2027-01-15T10:00:00Z");
        assert_eq!(v["AccountId"], "222222222222");
        let mut no_account = creds();
        no_account.account_id = None;
        let v: serde_json::Value = serde_json::from_slice(&no_account.render().body).unwrap();
        assert!(v.get("AccountId").is_none());
        let problem: serde_json::Value =
            serde_json::from_slice(&Problem::new("AccessDenied", "no").to_json()).unwrap();
        assert_eq!(
            problem,
            serde_json::json!({"Code": "AccessDenied", "Message": "no"})
        );
    }

    #[test]
    fn first_fetch_is_pending_then_served() {
        let policy = p();
        let mut slot = Slot::<&str>::default();
        assert_eq!(slot.lookup(&policy, T0), Lookup::Pending);
        assert!(!slot.ready(&policy, T0));
        let next = slot.succeeded("c1", T0 + 900_000, &policy, T0, 0.5);
        assert_eq!(next, Duration::from_secs(450));
        assert_eq!(slot.lookup(&policy, T0), Lookup::Serve(&"c1"));
        assert!(slot.ready(&policy, T0 + 839_999));
        // Never past the margin, even if nothing replaced them (the loop was stuck).
        assert_eq!(slot.lookup(&policy, T0 + 840_000), Lookup::Pending);
    }

    #[test]
    fn first_fetch_failing_reports_the_problem_at_once() {
        let policy = p();
        let mut slot = Slot::<&str>::default();
        let d1 = slot.failed(Problem::new("AccessDenied", "hop 2"), &policy, T0, 1.0);
        let d2 = slot.failed(
            Problem::new("AccessDenied", "hop 2"),
            &policy,
            T0 + 1000,
            1.0,
        );
        assert_eq!((d1, d2), (Duration::from_secs(1), Duration::from_secs(2)));
        match slot.lookup(&policy, T0 + 1000) {
            Lookup::Unavailable(f) => {
                assert_eq!(f.attempts, 2);
                assert_eq!(f.problem.message, "hop 2");
            }
            other => panic!("{other:?}"),
        }
        assert!(!slot.ready(&policy, T0));
    }

    #[test]
    fn an_outage_keeps_servable_credentials_and_retries_before_the_margin() {
        let policy = p();
        let mut slot = Slot::<&str>::default();
        slot.succeeded("c1", T0 + 900_000, &policy, T0, 0.5);
        // Refresh at T0 + 450 s fails, repeatedly: the app keeps getting c1.
        let mut now = T0 + 450_000;
        let mut attempts = 0;
        while now < T0 + 840_000 {
            let d = slot.failed(Problem::new("Throttling", "slow down"), &policy, now, 1.0);
            attempts += 1;
            assert!(now + d.as_millis() as i64 <= T0 + 840_000 || now >= T0 + 840_000);
            if now + (d.as_millis() as i64) < T0 + 840_000 {
                assert_eq!(slot.lookup(&policy, now), Lookup::Serve(&"c1"));
            }
            now += d.as_millis() as i64;
        }
        assert!(attempts > 5, "{attempts}");
        // At the margin, the next failure drops them and reports the problem.
        slot.failed(Problem::new("Throttling", "slow down"), &policy, now, 1.0);
        assert!(
            slot.lifetime().is_none(),
            "unservable credentials are dropped"
        );
        assert!(matches!(slot.lookup(&policy, now), Lookup::Unavailable(_)));
        // Recovery replaces everything.
        slot.succeeded("c2", now + 900_000, &policy, now, 0.5);
        assert_eq!(slot.lookup(&policy, now), Lookup::Serve(&"c2"));
        assert!(slot.failure().is_none());
    }

    #[test]
    fn a_failure_while_servable_does_not_hide_the_credentials() {
        let policy = p();
        let mut slot = Slot::<&str>::default();
        slot.succeeded("c1", T0 + 900_000, &policy, T0, 0.5);
        slot.failed(Problem::new("X", "y"), &policy, T0 + 450_000, 0.5);
        assert_eq!(slot.lookup(&policy, T0 + 450_000), Lookup::Serve(&"c1"));
        assert!(slot.ready(&policy, T0 + 450_000));
        // Past the margin with the failure recorded: the problem, not stale credentials.
        assert!(matches!(
            slot.lookup(&policy, T0 + 850_000),
            Lookup::Unavailable(_)
        ));
    }

    #[test]
    fn a_refusal_is_reported_at_once_and_retried_rarely() {
        let policy = p();
        let refusals = policy.after_refusal();
        let mut slot = Slot::<&str>::default();
        let delays: Vec<u64> = (0..12)
            .map(|i| {
                slot.failed(
                    Problem::new("IdentityTokenRefused", "node"),
                    &refusals,
                    T0 + i,
                    1.0,
                )
                .as_secs()
            })
            .collect();
        assert_eq!(delays[9..], [300, 300, 300]);
        match slot.lookup(&policy, T0) {
            Lookup::Unavailable(f) => assert_eq!(f.problem.code, "IdentityTokenRefused"),
            other => panic!("{other:?}"),
        }
        // Servable credentials are still served, and retried before they stop being servable.
        slot.succeeded("c1", T0 + 900_000, &policy, T0, 0.5);
        let d = (0..12)
            .map(|_| slot.failed(Problem::new("X", "y"), &refusals, T0 + 800_000, 1.0))
            .last();
        assert_eq!(d, Some(Duration::from_secs(40)));
        assert_eq!(slot.lookup(&policy, T0 + 800_000), Lookup::Serve(&"c1"));
    }

    #[test]
    fn short_lifetimes_scale_the_margin() {
        let policy = p();
        let mut slot = Slot::<&str>::default();
        slot.succeeded("c1", T0 + 30_000, &policy, T0, 0.5);
        assert_eq!(slot.lookup(&policy, T0 + 26_999), Lookup::Serve(&"c1"));
        assert_eq!(slot.lookup(&policy, T0 + 27_000), Lookup::Pending);
    }
}
