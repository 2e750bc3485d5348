//! `credential-process`: the AWS `credential_process` helper for VMs, Cloud Run and CI runners.
//! One ID token from the metadata server, the STS chain, the Version 1 JSON on stdout, and an
//! owner-only cache keyed by everything that changes the answer.

use std::path::PathBuf;
use std::time::Duration;

use crate::aws::{self, ProcessCredentials};
use crate::clock::now_ms;
use crate::metadata::{FetchError, MetadataHost};
use crate::sts::{self, Chain, ChainError, Sts};

/// One `credential-process` invocation.
#[derive(Debug)]
pub struct Request {
    pub chain: Chain,
    pub audience: String,
    pub endpoint: MetadataHost,
    pub request_timeout: Duration,
    /// None: no cache.
    pub cache_dir: Option<PathBuf>,
    pub refresh_before: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot get an ID token from the metadata server: {0}")]
    Token(#[from] FetchError),
    #[error("{error}; {}", aws::explain_hop_error(.error.hop, .error.code()))]
    Chain { error: ChainError },
}

impl Request {
    /// The cache file: one per (chain, external IDs, duration, audience, session, metadata
    /// server), so changing any of them never returns someone else's credentials.
    pub fn cache_file(&self) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut parts: Vec<String> = vec![
            self.chain.role_arn.clone(),
            self.audience.clone(),
            self.chain.session_name.clone(),
            self.endpoint.display(),
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
        let cache = self.cache_file();
        if let Some(path) = &cache
            && let Some(creds) = aws::read_cache(path, self.refresh_before, now_ms())
        {
            return Ok(creds);
        }
        let token = aws::fetch(&self.endpoint, &self.audience, self.request_timeout).await?;
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
    use crate::sts::Hop;

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
            endpoint: MetadataHost::new(None),
            request_timeout: Duration::from_secs(1),
            cache_dir: Some(PathBuf::from("/c")),
            refresh_before: Duration::from_secs(300),
        }
    }

    #[test]
    fn cache_key_includes_chain_external_id_and_duration() {
        let hop = |ext: Option<&str>| Hop {
            role_arn: "arn:aws:iam::2:role/t".into(),
            external_id: ext.map(str::to_string),
        };
        let keys = [
            request(vec![], None).cache_file(),
            request(vec![hop(None)], None).cache_file(),
            request(vec![hop(Some("a"))], None).cache_file(),
            request(vec![hop(Some("b"))], None).cache_file(),
            request(vec![hop(Some("b"))], Some(900)).cache_file(),
            request(vec![], Some(900)).cache_file(),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            request(vec![hop(Some("a"))], Some(900)).cache_file(),
            request(vec![hop(Some("a"))], Some(900)).cache_file()
        );
        let mut none = request(vec![], None);
        none.cache_dir = None;
        assert_eq!(none.cache_file(), None);
    }
}
