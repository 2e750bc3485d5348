//! AWS facts shared by `verify`, `trust-policy` and `credential-process`: the trust policies
//! each hop of a chain needs, what an STS error code most likely means, and the
//! `credential_process` output and its owner-only cache. The STS calls themselves are in
//! [`crate::sts`].

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_sts_lean::primitives::{DateTime, DateTimeFormat};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::creds::Credentials;
use crate::jwt::Claims;
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

/// The trust policy of a chained role: the previous role of the chain may `sts:AssumeRole`
/// into it (with the external ID, when one is set) and `sts:TagSession` (the agent passes the
/// pod's identity as session tags on every `AssumeRole` hop; without this statement STS denies
/// the whole call). The two actions are separate statements, so the external ID condition
/// applies to the `AssumeRole` request as AWS documents it.
pub fn chained_trust_policy(
    previous_role_arn: &str,
    external_id: Option<&str>,
) -> serde_json::Value {
    let mut assume = json!({
        "Sid": "RolebridgeChain",
        "Effect": "Allow",
        "Principal": { "AWS": previous_role_arn },
        "Action": "sts:AssumeRole",
    });
    if let Some(id) = external_id {
        assume["Condition"] = json!({ "StringEquals": { "sts:ExternalId": id } });
    }
    json!({
        "Version": "2012-10-17",
        "Statement": [
            assume,
            {
                "Sid": "RolebridgeSessionTags",
                "Effect": "Allow",
                "Principal": { "AWS": previous_role_arn },
                "Action": "sts:TagSession",
            }
        ]
    })
}

/// Why a trust policy cannot be rendered from what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "issuer {0:?} must be an https:// URL without query or fragment (IAM trusts OIDC \
         providers over HTTPS only; on GKE: https://container.googleapis.com/v1/projects/\
         PROJECT/locations/LOCATION/clusters/CLUSTER)"
    )]
    Issuer(String),
    #[error("account {0:?} is not an AWS account ID (12 digits)")]
    Account(String),
    #[error("namespace {0:?} is not a Kubernetes namespace name")]
    Namespace(String),
    #[error("service account {0:?} is not a Kubernetes service account name")]
    ServiceAccount(String),
    #[error("the audience must not be empty")]
    Audience,
}

/// An OIDC issuer as IAM names its provider: the `https://` URL without the scheme and
/// without trailing slashes (`container.googleapis.com/v1/projects/p/locations/l/clusters/c`).
pub fn oidc_provider(issuer: &str) -> Result<String, PolicyError> {
    let bad = || PolicyError::Issuer(issuer.to_owned());
    let rest = issuer.trim().strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let host = rest.split('/').next().unwrap_or("");
    let clean = !rest.contains(['?', '#', '@']) && !rest.chars().any(char::is_whitespace);
    if host.is_empty() || host.starts_with('.') || !clean {
        return Err(bad());
    }
    Ok(rest.to_owned())
}

/// The trust policy of a role assumed with an OIDC provider's token (`sts:AssumeRoleWithWebIdentity`):
/// the provider `arn:PARTITION:iam::ACCOUNT:oidc-provider/PROVIDER` as principal, and
/// StringEquals on `PROVIDER:sub` and `PROVIDER:aud` (which AWS compares with the token's `sub`
/// and `aud`). Both pinned: without `:sub`, any identity of the issuer with that audience,
/// every service account of the cluster, could assume the role.
pub fn oidc_trust_policy(
    partition: &str,
    account: &str,
    provider: &str,
    sub: &str,
    audience: &str,
) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {
                "Federated": format!("arn:{partition}:iam::{account}:oidc-provider/{provider}")
            },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    format!("{provider}:sub"): sub,
                    format!("{provider}:aud"): audience,
                }
            }
        }]
    })
}

/// A role trusted by one Kubernetes service account of a cluster (`tokenSource: Kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesTrust<'a> {
    pub issuer: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub audience: &'a str,
    pub account: &'a str,
}

/// The role's trust policy for a Kubernetes service account, and the one-time command that
/// registers the cluster's issuer as an IAM OIDC provider of the account.
pub fn kubernetes_trust_policy(
    t: &KubernetesTrust<'_>,
) -> Result<(serde_json::Value, String), PolicyError> {
    let provider = oidc_provider(t.issuer)?;
    if t.account.len() != 12 || !t.account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError::Account(t.account.to_owned()));
    }
    if !is_dns_name(t.namespace, 63, false) {
        return Err(PolicyError::Namespace(t.namespace.to_owned()));
    }
    if !is_dns_name(t.service_account, 253, true) {
        return Err(PolicyError::ServiceAccount(t.service_account.to_owned()));
    }
    if t.audience.trim().is_empty() {
        return Err(PolicyError::Audience);
    }
    let sub = format!(
        "system:serviceaccount:{}:{}",
        t.namespace, t.service_account
    );
    let policy = oidc_trust_policy("aws", t.account, &provider, &sub, t.audience);
    let command = format!(
        "aws iam create-open-id-connect-provider --url https://{provider} --client-id-list {}",
        t.audience
    );
    Ok((policy, command))
}

/// A Kubernetes object name: lowercase alphanumerics and `-` (and `.` when `dots`), starting
/// and ending with an alphanumeric, at most `max` characters.
fn is_dns_name(s: &str, max: usize, dots: bool) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= max
        && edge(s.bytes().next())
        && edge(s.bytes().last())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
        })
}

/// The Google service account's unique ID as AWS sees it in `accounts.google.com:aud`.
pub fn unique_id(claims: &Claims) -> Option<&str> {
    claims.azp.as_deref().or(claims.sub.as_deref())
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("credential cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Temporary credentials in the `credential_process` output format (Version 1).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessCredentials {
    pub version: u8,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, UTC.
    pub expiration: String,
}

impl fmt::Debug for ProcessCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl From<&Credentials> for ProcessCredentials {
    fn from(c: &Credentials) -> Self {
        ProcessCredentials {
            version: 1,
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: c.session_token.clone(),
            expiration: c.expiration.clone(),
        }
    }
}

impl ProcessCredentials {
    fn expires_at_ms(&self) -> Option<i64> {
        DateTime::from_str(&self.expiration, DateTimeFormat::DateTime)
            .ok()
            .and_then(|d| d.to_millis().ok())
    }
}

/// What most likely went wrong on hop `hop` (1-based; hop 1 is the web identity hop), given
/// STS's error code.
pub fn explain_hop_error(hop: usize, code: Option<&str>) -> &'static str {
    match (hop, code) {
        (2.., Some("AccessDenied")) => {
            "the role's trust policy does not let the previous role of the chain in: it must allow \
             that role (as principal) sts:AssumeRole, with an sts:ExternalId condition equal to the \
             hop's external ID if one is set, and sts:TagSession (rolebridge passes the pod's \
             identity as session tags); the previous role's permissions policy must also allow \
             sts:AssumeRole (and sts:TagSession) on this role"
        }
        (2.., Some("ValidationError")) => {
            "the request is malformed: check the role ARN, the external ID (2-1224 of \
             [\\w+=,.@:/-]), and DurationSeconds (a chained session lasts at most 3600 s)"
        }
        (2.., Some("RegionDisabledException")) => {
            "STS is not activated in this region for the role's account; use another region"
        }
        _ => explain_sts_error(code),
    }
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
    fn kubernetes_trust_policy_pins_the_service_account_and_audience() {
        let issuer =
            "https://container.googleapis.com/v1/projects/p/locations/europe-west1/clusters/c/";
        let (p, command) = kubernetes_trust_policy(&KubernetesTrust {
            issuer,
            namespace: "ci",
            service_account: "publisher",
            audience: "sts.amazonaws.com",
            account: "111111111111",
        })
        .unwrap();
        let provider = "container.googleapis.com/v1/projects/p/locations/europe-west1/clusters/c";
        let st = &p["Statement"][0];
        assert_eq!(
            st["Principal"]["Federated"],
            format!("arn:aws:iam::111111111111:oidc-provider/{provider}")
        );
        assert_eq!(st["Action"], "sts:AssumeRoleWithWebIdentity");
        let c = st["Condition"]["StringEquals"].as_object().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[&format!("{provider}:sub")],
            "system:serviceaccount:ci:publisher"
        );
        assert_eq!(c[&format!("{provider}:aud")], "sts.amazonaws.com");
        assert!(!p.to_string().contains('*'), "never a wildcard");
        assert_eq!(
            command,
            format!(
                "aws iam create-open-id-connect-provider --url https://{provider} --client-id-list sts.amazonaws.com"
            )
        );
    }

    #[test]
    fn kubernetes_trust_policy_refuses_what_iam_or_kubernetes_would() {
        let ok = KubernetesTrust {
            issuer: "https://issuer.example/x",
            namespace: "ci",
            service_account: "pub.lisher-1",
            audience: "a",
            account: "111111111111",
        };
        assert!(kubernetes_trust_policy(&ok).is_ok());
        use std::mem::discriminant;
        let issuers = [
            "http://issuer.example",
            "issuer.example",
            "https://",
            "https:///x",
            "https://a/b?c",
            "https://a/#f",
            "https://u@a",
        ];
        let any = String::new;
        let cases = (issuers.map(|issuer| KubernetesTrust {
            issuer,
            ..ok.clone()
        }))
        .map(|t| (t, PolicyError::Issuer(any())))
        .into_iter()
        .chain(
            ["11111111111", "1111111111111", "11111111111a", ""].map(|account| {
                (
                    KubernetesTrust {
                        account,
                        ..ok.clone()
                    },
                    PolicyError::Account(any()),
                )
            }),
        )
        .chain(["", "CI", "a.b", "-a", "a-", "*"].map(|namespace| {
            (
                KubernetesTrust {
                    namespace,
                    ..ok.clone()
                },
                PolicyError::Namespace(any()),
            )
        }))
        .chain(["", "A", "*", "a:b"].map(|service_account| {
            let t = KubernetesTrust {
                service_account,
                ..ok.clone()
            };
            (t, PolicyError::ServiceAccount(any()))
        }))
        .chain([(
            KubernetesTrust {
                audience: " ",
                ..ok.clone()
            },
            PolicyError::Audience,
        )]);
        for (t, want) in cases {
            let got = kubernetes_trust_policy(&t).unwrap_err();
            assert_eq!(discriminant(&got), discriminant(&want), "{t:?}: {got}");
        }
        assert_eq!(oidc_provider("https://gitlab.com/").unwrap(), "gitlab.com");
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
    fn explanations_cover_trust_policy_failures() {
        assert!(explain_sts_error(Some("AccessDenied")).contains("trust policy"));
        assert!(explain_sts_error(None).contains("AWS_ENDPOINT_URL"));
        assert!(explain_hop_error(2, Some("AccessDenied")).contains("sts:TagSession"));
        assert!(explain_hop_error(1, Some("AccessDenied")).contains("accounts.google.com"));
    }

    #[test]
    fn chained_trust_policy_trusts_the_previous_role_with_tags_and_external_id() {
        let p = chained_trust_policy("arn:aws:iam::111111111111:role/ci-identity", Some("ext-1"));
        let st = p["Statement"].as_array().unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(
            st[0]["Principal"]["AWS"],
            "arn:aws:iam::111111111111:role/ci-identity"
        );
        assert_eq!(st[0]["Action"], "sts:AssumeRole");
        assert_eq!(
            st[0]["Condition"]["StringEquals"]["sts:ExternalId"],
            "ext-1"
        );
        assert_eq!(st[1]["Action"], "sts:TagSession");
        assert_eq!(st[1]["Principal"], st[0]["Principal"]);
        let no_ext = chained_trust_policy("arn:aws:iam::1:role/a", None);
        assert!(no_ext["Statement"][0].get("Condition").is_none());
    }

    #[test]
    fn process_credentials_debug_is_redacted() {
        let shown = format!("{:?}", creds("2030-01-01T00:00:00Z"));
        assert!(
            !shown.contains("\"s\"") && !shown.contains("\"t\""),
            "{shown}"
        );
    }
}
