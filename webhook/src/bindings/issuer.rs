//! The cluster's service account issuer: what AWS sees as the `iss` of a `tokenSource:
//! Kubernetes` pod's token, named in the Ready message of such bindings.
//!
//! `--issuer` sets it; otherwise it is discovered from the API server's OIDC discovery
//! document (`GET /.well-known/openid-configuration`, its `issuer`) before the first status is
//! computed, and again from time to time, so a changed issuer reaches every binding's message
//! (a change marks a full status pass). Discovery failing is not fatal: messages then name no
//! issuer, and the failure is logged once until it succeeds.
//!
//! The call needs no RBAC of the webhook's own: Kubernetes binds the
//! `system:service-account-issuer-discovery` ClusterRole (`get` on this URL) to the group
//! `system:serviceaccounts` by default.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::NonResourceAccess;
use super::cache::BindingCache;

/// The discovery document's path.
pub(crate) const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// What discovery calls.
pub(crate) const DISCOVERY: NonResourceAccess = NonResourceAccess {
    url: DISCOVERY_PATH,
    verbs: &["get"],
    granted_by: Some("system:service-account-issuer-discovery"),
};

/// How often the issuer is discovered again, and sooner while it is not known.
const REDISCOVER: Duration = Duration::from_secs(30 * 60);
const RETRY: Duration = Duration::from_secs(60);
/// How long the first discovery may hold the first status computation.
const FIRST_DISCOVERY: Duration = Duration::from_secs(5);

/// Why discovery did not give an issuer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error("GET {DISCOVERY_PATH}: {0}")]
    Request(#[from] kube::Error),
    #[error("building the request for {DISCOVERY_PATH}: {0}")]
    Build(#[from] hyper::http::Error),
    #[error("{DISCOVERY_PATH} names no issuer")]
    NoIssuer,
}

/// The issuer as far as it is known.
#[derive(Debug, Default)]
pub(crate) struct Issuer {
    /// `--issuer`: never discovered.
    fixed: Option<Arc<str>>,
    discovered: RwLock<Option<Arc<str>>>,
    /// A failure was logged and no success since.
    failing: AtomicBool,
}

impl Issuer {
    pub(crate) fn new(fixed: Option<String>) -> Self {
        Issuer {
            fixed: fixed.filter(|i| !i.trim().is_empty()).map(Arc::from),
            ..Issuer::default()
        }
    }

    pub(crate) fn get(&self) -> Option<Arc<str>> {
        self.fixed.clone().or_else(|| {
            self.discovered
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Discovers the issuer (unless it is fixed); returns whether it changed.
    pub(crate) async fn refresh(&self, client: &kube::Client) -> bool {
        if self.fixed.is_some() {
            return false;
        }
        match discover(client).await {
            Ok(found) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(issuer = %found, "service account issuer discovered");
                }
                let mut current = self.discovered.write().unwrap_or_else(|e| e.into_inner());
                if current.as_deref() == Some(found.as_str()) {
                    return false;
                }
                tracing::info!(issuer = %found, "service account issuer");
                *current = Some(Arc::from(found));
                true
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "cannot discover the service account issuer; Ready messages of tokenSource: Kubernetes bindings name none (set --issuer to name it)");
                }
                false
            }
        }
    }

    /// Discovers the issuer before the first status is computed (for at most a few seconds),
    /// then keeps it current in the background; a change recomputes every status.
    pub(crate) async fn follow(self: &Arc<Self>, client: kube::Client, cache: Arc<BindingCache>) {
        if self.fixed.is_some() {
            return;
        }
        let _ = tokio::time::timeout(FIRST_DISCOVERY, self.refresh(&client)).await;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = if this.get().is_some() {
                    REDISCOVER
                } else {
                    RETRY
                };
                tokio::time::sleep(wait).await;
                if this.refresh(&client).await {
                    cache.work().request_full_pass();
                }
            }
        });
    }
}

async fn discover(client: &kube::Client) -> Result<String, DiscoveryError> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: Option<String>,
    }
    let request = hyper::Request::get(DISCOVERY_PATH).body(Vec::new())?;
    let doc: Discovery = client.request(request).await?;
    doc.issuer
        .filter(|i| !i.is_empty())
        .ok_or(DiscoveryError::NoIssuer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_issuer_wins_and_an_empty_one_is_none() {
        assert_eq!(
            Issuer::new(Some("https://example".into())).get().as_deref(),
            Some("https://example")
        );
        assert_eq!(Issuer::new(Some(" ".into())).get(), None);
        assert_eq!(Issuer::new(None).get(), None);
    }
}
