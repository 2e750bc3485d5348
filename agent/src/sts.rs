//! The STS role chain: `AssumeRoleWithWebIdentity` with a Google ID token, then
//! `sts:AssumeRole` through each hop. One module used by `run` (the credentials endpoint),
//! `credential-process` and `verify`, so the three cannot disagree on what is sent.
//!
//! What every hop sends, and why:
//! - **Session name**: the same on every hop (the pod name, sanitised), so CloudTrail in every
//!   account traces the pod.
//! - **Duration**: the final hop asks for the requested `durationSeconds` (STS's default, one
//!   hour, when none is set). Intermediate hops ask for 900 s, STS's minimum: their credentials
//!   only sign the next `AssumeRole` call, a moment later, and are dropped right after; a
//!   longer life would only widen the window in which a leaked intermediate session is useful.
//! - **Session tags** (when enabled): the pod's identity on every `AssumeRole` hop, not marked
//!   transitive (STS refuses a tag key that an earlier hop made transitive, and each hop passes
//!   them again anyway). `AssumeRoleWithWebIdentity` takes no tags.
//! - **External ID**: per hop, as configured.
//!
//! The SDK is used without aws-config, with one explicit rustls + ring HTTPS client shared by
//! every STS client of the process (one connection pool), configured from the standard AWS
//! environment variables ([`sts_config_from_env`]).

use std::fmt;

use aws_sdk_sts_lean as aws_sdk_sts;

use aws_sdk_sts::config::SharedHttpClient;
use aws_sdk_sts::error::ProvideErrorMetadata;
use aws_sdk_sts::primitives::DateTimeFormat;
use aws_sdk_sts::types::Tag;

use crate::creds::Credentials;

pub use rolebridge_contract::Hop;
use rolebridge_contract::aws_env;

/// Lifetime asked for on every hop but the last (STS's minimum).
pub const INTERMEDIATE_DURATION_SECONDS: i32 = 900;

/// Where and how to reach STS, from the standard AWS environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsSettings {
    pub region: String,
    pub endpoint_url: Option<String>,
    pub max_attempts: Option<u32>,
}

/// `AWS_REGION` / `AWS_DEFAULT_REGION` (else us-east-1, STS's global region, as the SDKs'
/// web identity providers do), `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL` (unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), `AWS_MAX_ATTEMPTS`.
pub fn sts_config_from_env(get: impl Fn(&str) -> Option<String>) -> StsSettings {
    let get = |k: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let ignore_endpoints = get(aws_env::IGNORE_CONFIGURED_ENDPOINT_URLS)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    StsSettings {
        region: get(aws_env::REGION)
            .or_else(|| get(aws_env::DEFAULT_REGION))
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint_url: if ignore_endpoints {
            None
        } else {
            get(aws_env::ENDPOINT_URL_STS).or_else(|| get(aws_env::ENDPOINT_URL))
        },
        max_attempts: get(aws_env::MAX_ATTEMPTS)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0),
    }
}

/// The process's STS access: one HTTPS client (and so one connection pool) for every client.
#[derive(Clone)]
pub struct Sts {
    settings: StsSettings,
    http: SharedHttpClient,
}

impl fmt::Debug for Sts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sts")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Sts {
    pub fn new(settings: StsSettings) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        Sts { settings, http }
    }

    /// From the process environment.
    pub fn from_env() -> Self {
        Sts::new(sts_config_from_env(|k| std::env::var(k).ok()))
    }

    pub fn settings(&self) -> &StsSettings {
        &self.settings
    }

    /// An unsigned client (for `AssumeRoleWithWebIdentity`) in `region`, or the configured one.
    pub fn client(&self, region: Option<&str>) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::from_conf(self.config(region).build())
    }

    fn config(&self, region: Option<&str>) -> aws_sdk_sts::config::Builder {
        let mut retry = aws_sdk_sts::config::retry::RetryConfig::standard();
        if let Some(n) = self.settings.max_attempts {
            retry = retry.with_max_attempts(n);
        }
        let region = region.unwrap_or(&self.settings.region).to_string();
        let mut b = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(region))
            .http_client(self.http.clone())
            .retry_config(retry);
        if let Some(url) = &self.settings.endpoint_url {
            b = b.endpoint_url(url);
        }
        b
    }
}

/// One chain to walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Hop 1: the role trusted by `accounts.google.com`.
    pub role_arn: String,
    /// Hops 2…: `sts:AssumeRole`, in order.
    pub hops: Vec<Hop>,
    /// Lifetime of the final credentials (STS's default when absent).
    pub duration_seconds: Option<u32>,
    pub session_name: String,
    /// Session tags for every `AssumeRole` hop (empty: none sent).
    pub tags: Vec<(String, String)>,
    /// STS region for this chain; the environment's when absent.
    pub region: Option<String>,
}

impl Chain {
    /// Number of hops, the web identity one included.
    pub fn len(&self) -> usize {
        1 + self.hops.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Role of hop `n` (1-based).
    pub fn role_of(&self, n: usize) -> &str {
        if n <= 1 {
            &self.role_arn
        } else {
            &self.hops[n - 2].role_arn
        }
    }

    /// DurationSeconds sent on hop `n` (1-based); None lets STS choose (one hour).
    pub fn duration_of(&self, n: usize) -> Option<i32> {
        if n == self.len() {
            self.duration_seconds
                .map(|d| i32::try_from(d).unwrap_or(i32::MAX))
        } else {
            Some(INTERMEDIATE_DURATION_SECONDS)
        }
    }

    /// The role whose credentials the chain ends with.
    pub fn final_role_arn(&self) -> &str {
        self.role_of(self.len())
    }
}

/// What went wrong on one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopFailure {
    /// STS answered with an error (`code` is STS's, e.g. `AccessDenied`), or was not reached
    /// (`code` None, `message` says why).
    Sts {
        code: Option<String>,
        message: String,
    },
    /// STS answered without credentials.
    NoCredentials,
    /// A session tag STS would reject (checked before sending).
    InvalidTag(String),
}

impl fmt::Display for HopFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HopFailure::Sts { message, .. } => f.write_str(message),
            HopFailure::NoCredentials => f.write_str("STS answered without credentials"),
            HopFailure::InvalidTag(t) => write!(f, "invalid session tag: {t}"),
        }
    }
}

/// A failed chain: which hop, into which role, and STS's answer. Carries no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hop {hop} of {hops} ({action} {role_arn}) failed: {failure}")]
pub struct ChainError {
    /// 1-based; hop 1 is `AssumeRoleWithWebIdentity`.
    pub hop: usize,
    pub hops: usize,
    pub action: &'static str,
    pub role_arn: String,
    pub failure: HopFailure,
}

impl ChainError {
    /// STS's error code, if STS answered.
    pub fn code(&self) -> Option<&str> {
        match &self.failure {
            HopFailure::Sts { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// The name of the STS action of hop `n`.
pub fn action_of(n: usize) -> &'static str {
    if n <= 1 {
        "sts:AssumeRoleWithWebIdentity"
    } else {
        "sts:AssumeRole"
    }
}

/// What one successful hop yielded (for `verify`'s report).
#[derive(Debug, Clone)]
pub struct HopOk {
    pub hop: usize,
    pub assumed_role_arn: Option<String>,
    pub expiration: String,
}

/// The chain's result.
#[derive(Debug, Clone)]
pub struct Assumed {
    pub assumed_role_arn: Option<String>,
    pub credentials: Credentials,
}

/// Walk `chain` with `web_identity_token`, reporting each successful hop to `observe`.
pub async fn assume(
    sts: &Sts,
    chain: &Chain,
    web_identity_token: &str,
    mut observe: impl FnMut(&HopOk),
) -> Result<Assumed, ChainError> {
    let fail = |hop: usize, failure: HopFailure| ChainError {
        hop,
        hops: chain.len(),
        action: action_of(hop),
        role_arn: chain.role_of(hop).to_string(),
        failure,
    };
    let tags = chain
        .tags
        .iter()
        .filter(|_| !chain.hops.is_empty())
        .map(|(k, v)| check_tag(k, v).map(|()| Tag::builder().key(k).value(v).build()))
        .collect::<Result<Result<Vec<Tag>, _>, String>>();
    let tags = match tags {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(fail(2, HopFailure::InvalidTag(e.to_string()))),
        Err(e) => return Err(fail(2, HopFailure::InvalidTag(e))),
    };

    let client = sts.client(chain.region.as_deref());
    let mut req = client
        .assume_role_with_web_identity()
        .role_arn(&chain.role_arn)
        .role_session_name(&chain.session_name)
        .web_identity_token(web_identity_token);
    if let Some(d) = chain.duration_of(1) {
        req = req.duration_seconds(d);
    }
    let out = req.send().await.map_err(|e| fail(1, sts_failure(&e)))?;
    let mut assumed = outcome(
        1,
        out.assumed_role_user().map(|u| u.arn().to_string()),
        out.credentials(),
    )
    .ok_or_else(|| fail(1, HopFailure::NoCredentials))?;
    observe(&assumed.0);

    for (i, hop) in chain.hops.iter().enumerate() {
        let n = i + 2;
        let signer = aws_sdk_sts::Client::from_conf(
            sts.config(chain.region.as_deref())
                .credentials_provider(assumed.1.credentials.to_sdk("rolebridge-chain"))
                .build(),
        );
        let mut req = signer
            .assume_role()
            .role_arn(&hop.role_arn)
            .role_session_name(&chain.session_name)
            .set_tags((!tags.is_empty()).then(|| tags.clone()));
        if let Some(id) = &hop.external_id {
            req = req.external_id(id);
        }
        if let Some(d) = chain.duration_of(n) {
            req = req.duration_seconds(d);
        }
        let out = req.send().await.map_err(|e| fail(n, sts_failure(&e)))?;
        assumed = outcome(
            n,
            out.assumed_role_user().map(|u| u.arn().to_string()),
            out.credentials(),
        )
        .ok_or_else(|| fail(n, HopFailure::NoCredentials))?;
        observe(&assumed.0);
    }
    Ok(assumed.1)
}

fn outcome(
    hop: usize,
    assumed_role_arn: Option<String>,
    c: Option<&aws_sdk_sts::types::Credentials>,
) -> Option<(HopOk, Assumed)> {
    let c = c?;
    let expires_ms = c.expiration().to_millis().ok()?;
    let expiration = c
        .expiration()
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    let account_id = assumed_role_arn.as_deref().and_then(account_of_arn);
    let credentials = Credentials {
        access_key_id: c.access_key_id().to_string(),
        secret_access_key: c.secret_access_key().to_string(),
        session_token: c.session_token().to_string(),
        expiration: expiration.clone(),
        expires_ms,
        account_id,
    };
    Some((
        HopOk {
            hop,
            assumed_role_arn: assumed_role_arn.clone(),
            expiration,
        },
        Assumed {
            assumed_role_arn,
            credentials,
        },
    ))
}

/// The account of an ARN (`arn:PARTITION:SERVICE:REGION:ACCOUNT:…`).
pub fn account_of_arn(arn: &str) -> Option<String> {
    let account = arn.split(':').nth(4)?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.into())
}

fn sts_failure<E, R>(e: &aws_sdk_sts::error::SdkError<E, R>) -> HopFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let code = e.code().map(str::to_string);
    let message = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => format!("{}", aws_sdk_sts::error::DisplayErrorContext(e)),
    };
    HopFailure::Sts { code, message }
}

/// STS's rules for session tags: keys 1–128, values 0–256 characters of
/// `[\p{L}\p{Z}\p{N}_.:/=+\-@]`, and keys must not start with `aws:`.
pub fn check_tag(key: &str, value: &str) -> Result<(), String> {
    let ok = |c: char| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c);
    if key.is_empty() || key.chars().count() > 128 || !key.chars().all(ok) {
        return Err(format!("key {key:?}"));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(format!("key {key:?} uses the reserved aws: prefix"));
    }
    if value.chars().count() > 256 || !value.chars().all(ok) {
        return Err(format!("value of {key:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(hops: usize, duration: Option<u32>) -> Chain {
        Chain {
            role_arn: "arn:aws:iam::111111111111:role/id".into(),
            hops: (0..hops)
                .map(|i| Hop {
                    role_arn: format!("arn:aws:iam::22222222222{i}:role/h{i}"),
                    external_id: None,
                })
                .collect(),
            duration_seconds: duration,
            session_name: "pod".into(),
            tags: vec![],
            region: None,
        }
    }

    #[test]
    fn only_the_final_hop_gets_the_requested_duration() {
        let c = chain(2, Some(1200));
        assert_eq!(c.len(), 3);
        assert_eq!(c.duration_of(1), Some(900));
        assert_eq!(c.duration_of(2), Some(900));
        assert_eq!(c.duration_of(3), Some(1200));
        assert_eq!(c.final_role_arn(), "arn:aws:iam::222222222221:role/h1");
        // No chain: the web identity hop is the final one.
        let single = chain(0, Some(900));
        assert_eq!(single.duration_of(1), Some(900));
        assert_eq!(chain(0, None).duration_of(1), None);
        assert_eq!(chain(1, None).duration_of(2), None);
        assert_eq!(chain(1, None).duration_of(1), Some(900));
    }

    #[test]
    fn hops_are_named_by_role_and_action() {
        let c = chain(1, None);
        assert_eq!(c.role_of(1), "arn:aws:iam::111111111111:role/id");
        assert_eq!(c.role_of(2), "arn:aws:iam::222222222220:role/h0");
        assert_eq!(action_of(1), "sts:AssumeRoleWithWebIdentity");
        assert_eq!(action_of(2), "sts:AssumeRole");
        let e = ChainError {
            hop: 2,
            hops: 2,
            action: action_of(2),
            role_arn: c.role_of(2).into(),
            failure: HopFailure::Sts {
                code: Some("AccessDenied".into()),
                message: "AccessDenied: not authorized".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "hop 2 of 2 (sts:AssumeRole arn:aws:iam::222222222220:role/h0) failed: AccessDenied: not authorized"
        );
        assert_eq!(e.code(), Some("AccessDenied"));
    }

    #[test]
    fn account_ids_come_from_arns() {
        assert_eq!(
            account_of_arn("arn:aws:sts::222222222222:assumed-role/r/s").as_deref(),
            Some("222222222222")
        );
        assert_eq!(account_of_arn("arn:aws:sts::x:assumed-role/r/s"), None);
        assert_eq!(account_of_arn("nope"), None);
    }

    #[test]
    fn tags_follow_sts_rules() {
        assert!(check_tag("kubernetes-pod-name", "web-7d9f-abcde").is_ok());
        assert!(check_tag("kubernetes-pod-uid", "0b7c9a2e-1111-4f7e-9c1a-2b3c4d5e6f70").is_ok());
        assert!(check_tag("k", "").is_ok());
        assert!(check_tag("", "v").is_err());
        assert!(check_tag("aws:x", "v").is_err());
        assert!(check_tag("k", "semi;colon").is_err());
        assert!(check_tag("k", &"v".repeat(257)).is_err());
        assert!(check_tag(&"k".repeat(129), "v").is_err());
    }

    #[test]
    fn sts_settings_follow_the_sdk_environment_conventions() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = sts_config_from_env(env(&[]));
        assert_eq!(none.region, "us-east-1");
        assert_eq!(none.endpoint_url, None);
        let s = sts_config_from_env(env(&[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://generic"),
            ("AWS_ENDPOINT_URL_STS", "http://sts-specific"),
            ("AWS_MAX_ATTEMPTS", "2"),
        ]));
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.endpoint_url.as_deref(), Some("http://sts-specific"));
        assert_eq!(s.max_attempts, Some(2));
        let s = sts_config_from_env(env(&[
            ("AWS_REGION", "ap-south-1"),
            ("AWS_DEFAULT_REGION", "x"),
            ("AWS_ENDPOINT_URL", "http://g"),
        ]));
        assert_eq!(s.region, "ap-south-1");
        assert_eq!(s.endpoint_url.as_deref(), Some("http://g"));
        let s = sts_config_from_env(env(&[
            ("AWS_ENDPOINT_URL", "http://g"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]));
        assert_eq!(s.endpoint_url, None);
    }
}
