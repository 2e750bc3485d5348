//! `verify` and `trust-policy`: the operator's tools. `verify` walks the same chain `run` and
//! `credential-process` use, hop by hop, and on a failure names the hop, STS's answer, the
//! likely cause and the trust policy that hop's role needs.

use std::io::Write;

use crate::aws;
use crate::clock::now_ms;
use crate::jwt::Claims;
use crate::metadata::{FetchError, MetadataHost};
use crate::sts::{self, Chain, ChainError, HopFailure, Sts};

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("cannot get an ID token from the metadata server: {0}")]
    Token(#[from] FetchError),
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

/// The trust policy hop `hop` (1-based) of `chain` needs.
pub fn policy_for_hop(
    chain: &Chain,
    hop: usize,
    audience: &str,
    gsa_unique_id: &str,
) -> serde_json::Value {
    if hop <= 1 {
        aws::trust_policy(audience, gsa_unique_id)
    } else {
        aws::chained_trust_policy(
            chain.role_of(hop - 1),
            chain.hops[hop - 2].external_id.as_deref(),
        )
    }
}

/// Walk `chain`, reporting to `out`. Ok(true) when every hop succeeded.
pub async fn verify(
    out: &mut impl Write,
    endpoint: &MetadataHost,
    timeout: std::time::Duration,
    audience: &str,
    chain: &Chain,
) -> Result<bool, DoctorError> {
    writeln!(out, "metadata server: {}", endpoint.display())?;
    let token = aws::fetch(endpoint, audience, timeout).await?;
    write_claims(out, &token.claims, now_ms().div_euclid(1000))?;
    let unique_id = aws::unique_id(&token.claims)
        .unwrap_or("<GSA unique ID>")
        .to_string();
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
            write_failure(out, chain, &e, audience, &unique_id)?;
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
    unique_id: &str,
) -> Result<(), DoctorError> {
    writeln!(out, "FAILED: {e}")?;
    let code = match &e.failure {
        HopFailure::Sts { code, .. } => code.as_deref(),
        _ => None,
    };
    writeln!(out, "likely cause: {}", aws::explain_hop_error(e.hop, code))?;
    writeln!(
        out,
        "the trust policy of {} (hop {}) should be:",
        e.role_arn, e.hop
    )?;
    let policy = policy_for_hop(chain, e.hop, audience, unique_id);
    writeln!(out, "{}", serde_json::to_string_pretty(&policy)?)?;
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

/// The Google service account's unique ID, read from a fresh token.
pub async fn unique_id_from_token(
    endpoint: &MetadataHost,
    audience: &str,
    timeout: std::time::Duration,
) -> Result<String, DoctorError> {
    let token = aws::fetch(endpoint, audience, timeout).await?;
    aws::unique_id(&token.claims)
        .map(str::to_string)
        .ok_or(DoctorError::NoUniqueId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sts::Hop;

    #[test]
    fn each_hop_gets_the_policy_trusting_its_predecessor() {
        let chain = Chain {
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
        };
        let p1 = policy_for_hop(&chain, 1, "sts.amazonaws.com", "42");
        assert_eq!(
            p1["Statement"][0]["Principal"]["Federated"],
            "accounts.google.com"
        );
        let p2 = policy_for_hop(&chain, 2, "sts.amazonaws.com", "42");
        assert_eq!(
            p2["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::111111111111:role/id"
        );
        assert!(p2["Statement"][0].get("Condition").is_none());
        let p3 = policy_for_hop(&chain, 3, "sts.amazonaws.com", "42");
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
}
