//! The AWS side: `verify`, `trust-policy` and `credential-process`.
//!
//! Only these subcommands run aws-sdk-sts; the sidecar path never touches this module, so the
//! SDK's code stays on disk and out of the resident set. To keep the binary small the SDK is
//! used without aws-config and with an explicit rustls + ring HTTPS client (ring is what the
//! rest of rolebridge uses); the standard environment variables are read here instead (see
//! [`sts_config_from_env`]). AssumeRoleWithWebIdentity is an unsigned call, so no credential
//! provider chain is needed at all.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_sts_lean as aws_sdk_sts;

use aws_sdk_sts::error::ProvideErrorMetadata;
use aws_sdk_sts::primitives::{DateTime, DateTimeFormat};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agent::now_ms;
use crate::jwt::Claims;
use crate::metadata::{self, Endpoint, FetchError, Token};
use crate::writer;

/// The audience AWS documents for web identity federation, and what the webhook uses.
pub use rolebridge_contract::DEFAULT_AUDIENCE;

/// The hardened trust policy for a Google service account with unique ID `gsa_unique_id`.
///
/// AWS matches `accounts.google.com:aud` against the token's `azp` (the service account's
/// unique ID) and `:oaud` against the token's `aud`. Pinning `oaud` is what stops any other ID
/// token of the same account (minted for some unrelated audience) from assuming the role.
pub fn trust_policy(audience: &str, gsa_unique_id: &str) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Federated": "accounts.google.com" },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    "accounts.google.com:aud": gsa_unique_id,
                    "accounts.google.com:oaud": audience,
                    "accounts.google.com:sub": gsa_unique_id,
                }
            }
        }]
    })
}

/// The Google service account's unique ID as AWS sees it in `accounts.google.com:aud`.
pub fn unique_id(claims: &Claims) -> Option<&str> {
    claims.azp.as_deref().or(claims.sub.as_deref())
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("cannot get an ID token from the metadata server: {0}")]
    Token(#[from] FetchError),
    #[error("STS AssumeRoleWithWebIdentity failed: {message}")]
    Sts {
        code: Option<String>,
        message: String,
    },
    #[error("STS answered without credentials")]
    NoCredentials,
    #[error("credential cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Temporary credentials in the `credential_process` output format (Version 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessCredentials {
    pub version: u8,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, UTC.
    pub expiration: String,
}

impl ProcessCredentials {
    fn expires_at_ms(&self) -> Option<i64> {
        DateTime::from_str(&self.expiration, DateTimeFormat::DateTime)
            .ok()
            .and_then(|d| d.to_millis().ok())
    }
}

/// Result of a successful AssumeRoleWithWebIdentity.
#[derive(Debug, Clone)]
pub struct Assumed {
    pub assumed_role_arn: Option<String>,
    pub credentials: ProcessCredentials,
}

/// Fetch an ID token for `audience` from the metadata server.
pub async fn fetch(
    endpoint: &Endpoint,
    audience: &str,
    timeout: Duration,
) -> Result<Token, FetchError> {
    metadata::fetch_token(endpoint, audience, timeout, || now_ms().div_euclid(1000)).await
}

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
    let ignore_endpoints =
        get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    StsSettings {
        region: get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint_url: if ignore_endpoints {
            None
        } else {
            get("AWS_ENDPOINT_URL_STS").or_else(|| get("AWS_ENDPOINT_URL"))
        },
        max_attempts: get("AWS_MAX_ATTEMPTS")
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0),
    }
}

/// Call STS AssumeRoleWithWebIdentity as configured by the environment ([`sts_config_from_env`]).
pub async fn assume_role(
    role_arn: &str,
    session_name: &str,
    web_identity_token: &str,
) -> Result<Assumed, AwsError> {
    let settings = sts_config_from_env(|k| std::env::var(k).ok());
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut retry = aws_sdk_sts::config::retry::RetryConfig::standard();
    if let Some(n) = settings.max_attempts {
        retry = retry.with_max_attempts(n);
    }
    let mut sts = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(settings.region))
        .http_client(http)
        .retry_config(retry);
    if let Some(url) = settings.endpoint_url {
        sts = sts.endpoint_url(url);
    }
    let client = aws_sdk_sts::Client::from_conf(sts.build());
    let out = client
        .assume_role_with_web_identity()
        .role_arn(role_arn)
        .role_session_name(session_name)
        .web_identity_token(web_identity_token)
        .send()
        .await
        .map_err(|e| {
            let code = e.code().map(str::to_string);
            let message = match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => format!("{}", aws_sdk_sts::error::DisplayErrorContext(&e)),
            };
            AwsError::Sts { code, message }
        })?;
    let c = out.credentials().ok_or(AwsError::NoCredentials)?;
    Ok(Assumed {
        assumed_role_arn: out.assumed_role_user().map(|u| u.arn().to_string()),
        credentials: ProcessCredentials {
            version: 1,
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: c.session_token().to_string(),
            expiration: c
                .expiration()
                .fmt(DateTimeFormat::DateTime)
                .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into()),
        },
    })
}

/// What most likely went wrong, given STS's error code.
pub fn explain_sts_error(code: Option<&str>) -> &'static str {
    match code {
        Some("AccessDenied") => {
            "the role's trust policy does not admit this token: it must trust the federated \
             principal accounts.google.com, and its conditions must match the token's claims \
             (accounts.google.com:aud = the token's azp, :oaud = the token's aud, :sub = the token's sub)"
        }
        Some("InvalidIdentityToken") => {
            "STS could not validate the token: it must be a Google-signed ID token \
             (issuer https://accounts.google.com) that has not expired"
        }
        Some("IDPRejectedClaim") => {
            "STS rejected a claim of the token; check the audience (oaud) the role expects"
        }
        Some("ExpiredTokenException") | Some("ExpiredToken") => {
            "the token expired before STS saw it; check the node's clock"
        }
        Some("ValidationError") => {
            "the request is malformed: check the role ARN and the session name (2-64 of [\\w+=,.@-])"
        }
        Some(_) => "see STS's message above",
        None => {
            "STS was not reached or did not answer; check network access to STS \
             (AWS_ENDPOINT_URL_STS / AWS_ENDPOINT_URL if set) and AWS_REGION"
        }
    }
}

/// A role session name from the host name, as STS allows (`[\w+=,.@-]{2,64}`).
pub fn default_session_name() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitize_session_name(&format!("rolebridge-{}", host.trim()))
}

pub fn sanitize_session_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while out.len() < 2 {
        out.push('-');
    }
    out
}

/// The cache directory: `$XDG_CACHE_HOME/rolebridge`, else `$HOME/.cache/rolebridge`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("rolebridge"))
}

/// Cache file for one (role, audience, session, metadata server) combination.
pub fn cache_file(dir: &Path, key_parts: &[&str]) -> PathBuf {
    // FNV-1a: a stable file name, not a security boundary (the directory is owner-only).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in key_parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    dir.join(format!("credentials-{h:016x}.json"))
}

/// Cached credentials that are owner-only and valid for more than `margin` from `now_ms`.
pub fn read_cache(path: &Path, margin: Duration, now_ms: i64) -> Option<ProcessCredentials> {
    let meta = fs::metadata(path).ok()?;
    // A cache file others could have written is not trusted.
    if meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let creds: ProcessCredentials = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    let exp = creds.expires_at_ms()?;
    (creds.version == 1 && exp - now_ms > margin.as_millis() as i64).then_some(creds)
}

pub fn write_cache(path: &Path, creds: &ProcessCredentials) -> Result<(), AwsError> {
    let err = |source| AwsError::Cache {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let json = serde_json::to_vec(creds).map_err(|e| err(e.into()))?;
    writer::write_atomic(path, &json, 0o600).map_err(|e| match e {
        writer::WriteError::Io { source, .. } => err(source),
        other => err(io::Error::other(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(expiration: &str) -> ProcessCredentials {
        ProcessCredentials {
            version: 1,
            access_key_id: "AKIA".into(),
            secret_access_key: "s".into(),
            session_token: "t".into(),
            expiration: expiration.into(),
        }
    }

    #[test]
    fn trust_policy_pins_aud_oaud_sub() {
        let p = trust_policy("sts.amazonaws.com", "1234567890");
        let st = &p["Statement"][0];
        assert_eq!(st["Principal"]["Federated"], "accounts.google.com");
        assert_eq!(st["Action"], "sts:AssumeRoleWithWebIdentity");
        let c = &st["Condition"]["StringEquals"];
        assert_eq!(c["accounts.google.com:aud"], "1234567890");
        assert_eq!(c["accounts.google.com:oaud"], "sts.amazonaws.com");
        assert_eq!(c["accounts.google.com:sub"], "1234567890");
    }

    #[test]
    fn process_credentials_format() {
        let v = serde_json::to_value(creds("2030-01-01T00:00:00Z")).unwrap();
        for k in [
            "Version",
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["Version"], 1);
    }

    #[test]
    fn cache_roundtrip_margin_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_file(&dir.path().join("rb"), &["arn", "aud", "s"]);
        let c = creds("2030-01-01T00:00:00Z");
        write_cache(&path, &c).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let exp = c.expires_at_ms().unwrap();
        let margin = Duration::from_secs(300);
        assert_eq!(read_cache(&path, margin, exp - 301_000), Some(c.clone()));
        assert_eq!(read_cache(&path, margin, exp - 299_000), None);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_cache(&path, margin, 0), None);
        assert_eq!(read_cache(&dir.path().join("missing"), margin, 0), None);
    }

    #[test]
    fn cache_key_separates_roles() {
        let d = Path::new("/c");
        assert_ne!(cache_file(d, &["a", "bc"]), cache_file(d, &["ab", "c"]));
        assert_eq!(cache_file(d, &["a"]), cache_file(d, &["a"]));
    }

    #[test]
    fn session_names_are_sanitized() {
        assert_eq!(
            sanitize_session_name("rolebridge-my host/1"),
            "rolebridge-my-host-1"
        );
        assert_eq!(sanitize_session_name("x"), "x-");
        assert_eq!(sanitize_session_name(&"a".repeat(100)).len(), 64);
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

    #[test]
    fn explanations_cover_trust_policy_failures() {
        assert!(explain_sts_error(Some("AccessDenied")).contains("trust policy"));
        assert!(explain_sts_error(None).contains("AWS_ENDPOINT_URL"));
    }
}
