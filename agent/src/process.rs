//! `credential-process`: the AWS `credential_process` helper for VMs, Cloud Run and CI runners.
//! One web identity token (from the metadata server, or a token file such as a CI system's ID
//! token), the STS chain, the Version 1 JSON on stdout, and an owner-only cache keyed by
//! everything that changes the answer.

use std::path::PathBuf;
use std::time::Duration;

use crate::aws::{self, ProcessCredentials};
use crate::clock::now_ms;
use crate::jwt::Claims;
use crate::metadata::Token;
use crate::sts::{self, Chain, ChainError, Sts};
use crate::token_source::{SourceError, TokenSource};

/// One `credential-process` invocation.
#[derive(Debug)]
pub struct Request {
    pub chain: Chain,
    pub audience: String,
    pub source: TokenSource,
    /// None: no cache.
    pub cache_dir: Option<PathBuf>,
    pub refresh_before: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Token(#[from] SourceError),
    #[error("{error}; {}", aws::explain_hop_error(.error.hop, .error.code()))]
    Chain { error: ChainError },
}

impl Request {
    /// The cache file: one per (chain, external IDs, duration, audience, session, token
    /// source), so changing any of them never returns someone else's credentials. The token
    /// source is the metadata server with its pin, or a token file with the identity its token
    /// names (`file_claims`: issuer, subject, audience): CI jobs sharing a runner's cache with
    /// different subjects never share credentials.
    pub fn cache_file(&self, file_claims: Option<&Claims>) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let source = match (&self.source, file_claims) {
            (TokenSource::Metadata { host, pin, .. }, _) => format!(
                "metadata={}|pin={}",
                host.display(),
                pin.google.as_ref().map_or("-".into(), ToString::to_string)
            ),
            (TokenSource::File(path), claims) => format!(
                "token-file={}|iss={}|sub={}|aud={}",
                path.display(),
                claims.and_then(|c| c.iss.as_deref()).unwrap_or("-"),
                claims.and_then(|c| c.sub.as_deref()).unwrap_or("-"),
                claims.map_or(String::new(), |c| c.aud.to_string()),
            ),
        };
        let mut parts: Vec<String> = vec![
            self.chain.role_arn.clone(),
            self.audience.clone(),
            self.chain.session_name.clone(),
            source,
        ];
        for hop in &self.chain.hops {
            parts.push(format!(
                "hop={}|{}",
                hop.role_arn,
                hop.external_id.as_deref().unwrap_or("")
            ));
        }
        if let Some(d) = self.chain.duration_seconds {
            parts.push(format!("duration={d}"));
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        Some(aws::cache_file(dir, &refs))
    }

    /// Cached credentials if fresh enough, else new ones (cached when possible).
    pub async fn obtain(&self) -> Result<ProcessCredentials, ProcessError> {
        let now_s = now_ms().div_euclid(1000);
        // A token file is read first: the identity it names is part of the cache key, and a
        // missing or expired file must mean no credentials, cached or not.
        let token: Option<Token> = match self.source {
            TokenSource::File(_) => Some(self.source.token(&self.audience, now_s).await?),
            TokenSource::Metadata { .. } => None,
        };
        let cache = self.cache_file(token.as_ref().map(|t| &t.claims));
        if let Some(path) = &cache
            && let Some(creds) = aws::read_cache(path, self.refresh_before, now_ms())
        {
            return Ok(creds);
        }
        let token = match token {
            Some(t) => t,
            None => self.source.token(&self.audience, now_s).await?,
        };
        let assumed = sts::assume(&Sts::from_env(), &self.chain, &token.jwt, |_| {})
            .await
            .map_err(|error| ProcessError::Chain { error })?;
        let creds = ProcessCredentials::from(&assumed.credentials);
        if let Some(path) = &cache
            && let Err(e) = aws::write_cache(path, &creds)
        {
            // Caching is an optimisation: the credentials are still good.
            tracing::warn!(error = %e, "cannot cache credentials");
        }
        Ok(creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Audience;
    use crate::metadata::MetadataHost;
    use crate::pin::Pin;
    use crate::sts::Hop;
    use rolebridge_contract::GooglePin;

    fn request(hops: Vec<Hop>, duration: Option<u32>) -> Request {
        Request {
            chain: Chain {
                role_arn: "arn:aws:iam::1:role/id".into(),
                hops,
                duration_seconds: duration,
                session_name: "s".into(),
                tags: vec![],
                region: None,
            },
            audience: "sts.amazonaws.com".into(),
            source: metadata(None),
            cache_dir: Some(PathBuf::from("/c")),
            refresh_before: Duration::from_secs(300),
        }
    }

    fn metadata(pin: Option<GooglePin>) -> TokenSource {
        TokenSource::Metadata {
            host: MetadataHost::new(None),
            pin: Pin::new(pin),
            timeout: Duration::from_secs(1),
        }
    }

    fn assert_distinct(keys: &[Option<PathBuf>]) {
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn cache_key_includes_chain_external_id_and_duration() {
        let hop = |ext: Option<&str>| Hop {
            role_arn: "arn:aws:iam::2:role/t".into(),
            external_id: ext.map(str::to_string),
        };
        assert_distinct(&[
            request(vec![], None).cache_file(None),
            request(vec![hop(None)], None).cache_file(None),
            request(vec![hop(Some("a"))], None).cache_file(None),
            request(vec![hop(Some("b"))], None).cache_file(None),
            request(vec![hop(Some("b"))], Some(900)).cache_file(None),
            request(vec![], Some(900)).cache_file(None),
        ]);
        assert_eq!(
            request(vec![hop(Some("a"))], Some(900)).cache_file(None),
            request(vec![hop(Some("a"))], Some(900)).cache_file(None)
        );
        let mut none = request(vec![], None);
        none.cache_dir = None;
        assert_eq!(none.cache_file(None), None);
    }

    #[test]
    fn cache_key_separates_token_sources_pins_and_subjects() {
        let claims = |sub: &str| Claims {
            iss: Some("https://gitlab.com".into()),
            aud: Audience::One("sts.amazonaws.com".into()),
            azp: None,
            sub: Some(sub.into()),
            email: None,
            email_verified: None,
            iat: Some(1),
            exp: 2,
        };
        let with = |source: TokenSource| Request {
            source,
            ..request(vec![], None)
        };
        let file = with(TokenSource::File("/ci/id_token".into()));
        let main = claims("project_path:g/p:ref_type:branch:ref:main");
        let other = claims("project_path:g/p:ref_type:branch:ref:feature");
        assert_distinct(&[
            request(vec![], None).cache_file(None),
            with(metadata(Some(GooglePin::Email(
                "a@p.iam.gserviceaccount.com".into(),
            ))))
            .cache_file(None),
            file.cache_file(Some(&main)),
            file.cache_file(Some(&other)),
            with(TokenSource::File("/ci/other".into())).cache_file(Some(&main)),
        ]);
        // The same identity in a new token (rotated, or the next command of the job) hits.
        let mut rotated = main.clone();
        rotated.iat = Some(100);
        rotated.exp = 200;
        assert_eq!(
            file.cache_file(Some(&main)),
            file.cache_file(Some(&rotated))
        );
    }
}
