//! `verify` and `trust-policy`: the operator's tools. `verify` walks the same chain `run` and
//! `credential-process` use, hop by hop, and on a failure names the hop, STS's answer, the
//! likely cause and the trust policy that hop's role needs. A web identity policy is printed
//! only for an account that was confirmed: the pinned Google service account, or the issuer
//! and subject of a token file. An unpinned metadata server's token may be the node's
//! ([`crate::pin`]), and a policy trusting the node would let every pod on it in.

use std::io::Write;

use rolebridge_contract::GooglePin;

use crate::aws;
use crate::clock::now_ms;
use crate::jwt::Claims;
use crate::metadata::FetchError;
use crate::pin::Pin;
use crate::sts::{self, Chain, ChainError, HopFailure, Sts};
use crate::token_source::{SourceError, TokenSource};

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Token(#[from] SourceError),
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot render the policy: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "cannot read the Google service account's unique ID: the token has neither azp nor sub; \
         pass --gsa-unique-id"
    )]
    NoUniqueId,
}

impl From<FetchError> for DoctorError {
    fn from(e: FetchError) -> Self {
        DoctorError::Token(SourceError::Metadata(e))
    }
}

/// What the web identity hop's role must trust, as far as the token shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebIdentityTrust {
    /// A Google service account, confirmed by the pin: its unique ID.
    Google { unique_id: String },
    /// Another OIDC issuer's token (a token file): its provider and subject.
    Oidc { provider: String, sub: String },
    /// A Google token whose account nobody confirmed (no pin): no policy is printed.
    Unconfirmed { email: Option<String> },
}

impl WebIdentityTrust {
    /// From the token's claims, the source it came from and the pin it was held to.
    pub fn of(claims: &Claims, source: &TokenSource) -> Self {
        let google_iss = matches!(
            claims.iss.as_deref(),
            None | Some("https://accounts.google.com" | "accounts.google.com")
        );
        let unique_id = || {
            aws::unique_id(claims)
                .unwrap_or("<GSA unique ID>")
                .to_owned()
        };
        match source {
            TokenSource::Metadata { pin, .. } if pinned(pin) => WebIdentityTrust::Google {
                unique_id: unique_id(),
            },
            TokenSource::Metadata { .. } => WebIdentityTrust::Unconfirmed {
                email: claims.email.clone(),
            },
            TokenSource::File(_) if google_iss => WebIdentityTrust::Google {
                unique_id: unique_id(),
            },
            TokenSource::File(_) => WebIdentityTrust::Oidc {
                provider: claims
                    .iss
                    .as_deref()
                    .and_then(|i| aws::oidc_provider(i).ok())
                    .unwrap_or_else(|| "<issuer without https://>".into()),
                sub: claims.sub.clone().unwrap_or_else(|| "<sub>".into()),
            },
        }
    }
}

fn pinned(pin: &Pin) -> bool {
    matches!(pin.google, Some(GooglePin::Email(_)))
}

/// The trust policy hop `hop` (1-based) of `chain` needs; None for an unconfirmed account.
pub fn policy_for_hop(
    chain: &Chain,
    hop: usize,
    audience: &str,
    trust: &WebIdentityTrust,
) -> Option<serde_json::Value> {
    if hop > 1 {
        return Some(aws::chained_trust_policy(
            chain.role_of(hop - 1),
            chain.hops[hop - 2].external_id.as_deref(),
        ));
    }
    match trust {
        WebIdentityTrust::Google { unique_id } => Some(aws::trust_policy(audience, unique_id)),
        WebIdentityTrust::Oidc { provider, sub } => {
            let mut arn = chain.role_arn.split(':');
            let partition = arn.nth(1).filter(|p| !p.is_empty()).unwrap_or("aws");
            let account = sts::account_of_arn(&chain.role_arn).unwrap_or_else(|| "ACCOUNT".into());
            Some(aws::oidc_trust_policy(
                partition, &account, provider, sub, audience,
            ))
        }
        WebIdentityTrust::Unconfirmed { .. } => None,
    }
}

/// Walk `chain` with a token from `source`, reporting to `out`. Ok(true) when every hop
/// succeeded.
pub async fn verify(
    out: &mut impl Write,
    source: &TokenSource,
    audience: &str,
    chain: &Chain,
) -> Result<bool, DoctorError> {
    writeln!(out, "web identity token from the {}", source.describe())?;
    let token = source.token(audience, now_ms().div_euclid(1000)).await?;
    write_claims(out, &token.claims, now_ms().div_euclid(1000))?;
    let trust = WebIdentityTrust::of(&token.claims, source);
    write_plan(out, chain)?;
    let mut report = Vec::new();
    let result = sts::assume(&Sts::from_env(), chain, &token.jwt, |ok| {
        report.push(format!(
            "OK: hop {}: assumed {} (credentials expire at {})",
            ok.hop,
            ok.assumed_role_arn
                .as_deref()
                .unwrap_or("(no ARN returned)"),
            ok.expiration
        ));
    })
    .await;
    for line in &report {
        writeln!(out, "{line}")?;
    }
    match result {
        Ok(a) => {
            writeln!(
                out,
                "OK: the chain ends as {} (expires at {})",
                a.assumed_role_arn.as_deref().unwrap_or("(no ARN returned)"),
                a.credentials.expiration
            )?;
            Ok(true)
        }
        Err(e) => {
            write_failure(out, chain, &e, audience, &trust)?;
            Ok(false)
        }
    }
}

/// The token's claims (never the token itself); `now` in Unix seconds.
fn write_claims(out: &mut impl Write, c: &Claims, now: i64) -> Result<(), DoctorError> {
    let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    writeln!(out, "ID token claims (the token itself is not printed):")?;
    writeln!(out, "  iss:   {}", show(&c.iss))?;
    writeln!(out, "  sub:   {}", show(&c.sub))?;
    writeln!(out, "  azp:   {}", show(&c.azp))?;
    writeln!(out, "  aud:   {}", c.aud)?;
    writeln!(out, "  email: {}", show(&c.email))?;
    writeln!(out, "  exp:   {} (in {}s)", c.exp, c.exp - now)?;
    Ok(())
}

/// What each hop will send, before any is tried.
fn write_plan(out: &mut impl Write, chain: &Chain) -> Result<(), DoctorError> {
    writeln!(
        out,
        "chain of {} hop(s), session name {}:",
        chain.len(),
        chain.session_name
    )?;
    for n in 1..=chain.len() {
        let mut line = format!("  hop {n}: {} {}", sts::action_of(n), chain.role_of(n));
        if n > 1 {
            if chain.hops[n - 2].external_id.is_some() {
                line.push_str(", with external ID");
            }
            if !chain.tags.is_empty() {
                let keys: Vec<&str> = chain.tags.iter().map(|(k, _)| k.as_str()).collect();
                line.push_str(&format!(", session tags {}", keys.join(",")));
            }
        }
        match chain.duration_of(n) {
            Some(d) => line.push_str(&format!(", DurationSeconds {d}")),
            None => line.push_str(", STS's default duration"),
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The failed hop, its likely cause, and the policies that would let it pass.
fn write_failure(
    out: &mut impl Write,
    chain: &Chain,
    e: &ChainError,
    audience: &str,
    trust: &WebIdentityTrust,
) -> Result<(), DoctorError> {
    writeln!(out, "FAILED: {e}")?;
    let code = match &e.failure {
        HopFailure::Sts { code, .. } => code.as_deref(),
        _ => None,
    };
    writeln!(out, "likely cause: {}", aws::explain_hop_error(e.hop, code))?;
    match policy_for_hop(chain, e.hop, audience, trust) {
        Some(policy) => {
            writeln!(
                out,
                "the trust policy of {} (hop {}) should be:",
                e.role_arn, e.hop
            )?;
            writeln!(out, "{}", serde_json::to_string_pretty(&policy)?)?;
        }
        None => {
            let email = match trust {
                WebIdentityTrust::Unconfirmed { email: Some(e) } => e.as_str(),
                _ => "GSA_EMAIL",
            };
            writeln!(
                out,
                "no trust policy printed: the token's account ({email}) is not confirmed to be \
                 the pod's (on the host network, or a node pool without GKE_METADATA, it is the \
                 node's). Pass --google-service-account GSA_EMAIL, or run `rolebridge-agent \
                 trust-policy --google-service-account GSA_EMAIL`"
            )?;
        }
    }
    if e.hop > 1 {
        writeln!(
            out,
            "and the permissions policy of {} must allow sts:AssumeRole and sts:TagSession on {}",
            chain.role_of(e.hop - 1),
            e.role_arn
        )?;
    }
    Ok(())
}

/// The Google service account's unique ID, read from a fresh token of the metadata server
/// held to `pin` (so never another account's).
pub async fn unique_id_from_token(
    source: &TokenSource,
    audience: &str,
) -> Result<String, DoctorError> {
    let token = source.token(audience, now_ms().div_euclid(1000)).await?;
    aws::unique_id(&token.claims)
        .map(str::to_string)
        .ok_or(DoctorError::NoUniqueId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Audience;
    use crate::metadata::MetadataHost;
    use crate::sts::Hop;

    fn chain() -> Chain {
        Chain {
            role_arn: "arn:aws:iam::111111111111:role/id".into(),
            hops: vec![
                Hop {
                    role_arn: "arn:aws:iam::222222222222:role/a".into(),
                    external_id: None,
                },
                Hop {
                    role_arn: "arn:aws:iam::333333333333:role/b".into(),
                    external_id: Some("ext".into()),
                },
            ],
            duration_seconds: None,
            session_name: "s".into(),
            tags: vec![],
            region: None,
        }
    }

    fn google() -> WebIdentityTrust {
        WebIdentityTrust::Google {
            unique_id: "42".into(),
        }
    }

    #[test]
    fn each_hop_gets_the_policy_trusting_its_predecessor() {
        let chain = chain();
        let p1 = policy_for_hop(&chain, 1, "sts.amazonaws.com", &google()).unwrap();
        assert_eq!(
            p1["Statement"][0]["Principal"]["Federated"],
            "accounts.google.com"
        );
        let p2 = policy_for_hop(&chain, 2, "sts.amazonaws.com", &google()).unwrap();
        assert_eq!(
            p2["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::111111111111:role/id"
        );
        assert!(p2["Statement"][0].get("Condition").is_none());
        let p3 = policy_for_hop(&chain, 3, "sts.amazonaws.com", &google()).unwrap();
        assert_eq!(
            p3["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::222222222222:role/a"
        );
        assert_eq!(
            p3["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
            "ext"
        );
        assert_eq!(p3["Statement"][1]["Action"], "sts:TagSession");
    }

    fn claims(iss: &str, sub: &str, email: Option<&str>) -> Claims {
        Claims {
            iss: Some(iss.into()),
            aud: Audience::Many(vec!["sts.amazonaws.com".into()]),
            azp: None,
            sub: Some(sub.into()),
            email: email.map(str::to_owned),
            email_verified: None,
            iat: None,
            exp: 1,
        }
    }

    fn metadata(pin: Option<GooglePin>) -> TokenSource {
        TokenSource::Metadata {
            host: MetadataHost::new(None),
            pin: Pin::new(pin),
            timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn the_web_identity_policy_is_only_for_a_confirmed_account() {
        let node = claims(
            "https://accounts.google.com",
            "9",
            Some("n@developer.gserviceaccount.com"),
        );
        let unpinned = WebIdentityTrust::of(&node, &metadata(None));
        assert_eq!(
            unpinned,
            WebIdentityTrust::Unconfirmed {
                email: Some("n@developer.gserviceaccount.com".into())
            }
        );
        assert_eq!(policy_for_hop(&chain(), 1, "a", &unpinned), None);
        // Hop 2's policy trusts a role, not a token: still printed.
        assert!(policy_for_hop(&chain(), 2, "a", &unpinned).is_some());
        let pin = GooglePin::Email("n@developer.gserviceaccount.com".into());
        assert_eq!(
            WebIdentityTrust::of(&node, &metadata(Some(pin))),
            WebIdentityTrust::Google {
                unique_id: "9".into()
            }
        );
    }

    #[test]
    fn a_token_file_gets_its_issuers_oidc_policy() {
        let k8s = claims(
            "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c",
            "system:serviceaccount:ci:publisher",
            None,
        );
        let trust = WebIdentityTrust::of(&k8s, &TokenSource::File("/t".into()));
        let p = policy_for_hop(&chain(), 1, "sts.amazonaws.com", &trust).unwrap();
        let provider = "container.googleapis.com/v1/projects/p/locations/l/clusters/c";
        assert_eq!(
            p["Statement"][0]["Principal"]["Federated"],
            format!("arn:aws:iam::111111111111:oidc-provider/{provider}")
        );
        assert_eq!(
            p["Statement"][0]["Condition"]["StringEquals"][format!("{provider}:sub")],
            "system:serviceaccount:ci:publisher"
        );
        // A Google token saved to a file is still Google's.
        let g = claims("https://accounts.google.com", "7", None);
        assert!(matches!(
            WebIdentityTrust::of(&g, &TokenSource::File("/t".into())),
            WebIdentityTrust::Google { .. }
        ));
    }
}
