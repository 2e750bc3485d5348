//! Live reads cover the watches' lag. A watch lags the API by a little: a binding applied in
//! the same `kubectl apply` as its pod can be missing from the cache when the pod arrives, and
//! the pod would start without credentials and never get them; a service account created a
//! moment before its pod can be missing too, and a Google-source pod cannot be pinned without
//! it. On a miss the cache does a live, consistent LIST of that namespace's bindings (or of
//! that one service account), shared per key (concurrent misses wait for one request and reuse
//! its result for `live_read_interval`) and bounded by one global token bucket, so a busy
//! cluster without bindings costs at most a few cheap reads per second, never one per
//! admission. A read's bindings are looked up the one way, in a [`Store`] of their own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use tokio::sync::OnceCell;

use super::ApiAccess;
use super::store::Store;
use crate::domain::binding::Binding;
use crate::domain::convert::binding_from_json;
use crate::domain::crd::AWSRoleBinding;
use crate::domain::status::{GSA_ANNOTATION, ServiceAccountState};
use crate::metrics::Metrics;

const LIVE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What a live read calls: a list of one namespace's bindings.
pub(crate) const LIVE_READ: ApiAccess = ApiAccess {
    group: "rolebridge.io",
    resource: "awsrolebindings",
    verbs: &["list"],
    own_namespace: false,
};

/// What a live read of a service account calls: a list of one namespace's service accounts,
/// selected by name (the watch's verb: no `get` to grant).
pub(crate) const LIVE_ACCOUNT_READ: ApiAccess = ApiAccess {
    group: "",
    resource: "serviceaccounts",
    verbs: &["list"],
    own_namespace: false,
};

fn api_resource() -> ApiResource {
    ApiResource::erase::<AWSRoleBinding>(&())
}

/// Reads all bindings of one namespace straight from the API server.
pub type BindingsSource =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Vec<(String, Binding)>, String>> + Send + Sync>;

/// Reads one service account (namespace, name) straight from the API server: `Missing` when
/// it does not exist.
pub type AccountSource = Arc<
    dyn Fn(String, String) -> BoxFuture<'static, Result<ServiceAccountState, String>> + Send + Sync,
>;

/// Where live reads go.
#[derive(Clone)]
pub struct LiveSource {
    pub bindings: BindingsSource,
    pub account: AccountSource,
}

/// A live source backed by the API server.
pub fn api_live_source(client: kube::Client) -> LiveSource {
    let ar = api_resource();
    let bindings_client = client.clone();
    let bindings: BindingsSource = Arc::new(move |namespace: String| {
        let api: Api<DynamicObject> =
            Api::namespaced_with(bindings_client.clone(), &namespace, &ar);
        Box::pin(async move {
            // No resourceVersion: a consistent read, not the API server's possibly stale cache.
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(bindings_from_list(list.items.iter()).0)
        })
    });
    let account: AccountSource = Arc::new(move |namespace: String, name: String| {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
        Box::pin(async move {
            let selector = format!("metadata.name={name}");
            let list = api
                .list_metadata(&ListParams::default().fields(&selector))
                .await
                .map_err(|e| e.to_string())?;
            let found = list
                .items
                .iter()
                .find(|sa| sa.metadata.name.as_deref() == Some(name.as_str()));
            Ok(match found {
                None => ServiceAccountState::Missing,
                Some(sa) => ServiceAccountState::of_annotation(
                    sa.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(GSA_ANNOTATION))
                        .map(String::as_str),
                ),
            })
        })
    });
    LiveSource { bindings, account }
}

/// Limits for live reads.
#[derive(Debug, Clone, Copy)]
pub struct LiveReadLimits {
    /// How long one namespace's (or service account's) live result is reused, and the least
    /// time between two live reads of the same one.
    pub interval: Duration,
    /// Sustained live reads per second across all namespaces.
    pub per_second: f64,
    pub burst: f64,
}

impl Default for LiveReadLimits {
    fn default() -> Self {
        LiveReadLimits {
            interval: Duration::from_secs(10),
            per_second: 5.0,
            burst: 20.0,
        }
    }
}

/// When a key was read, and the (possibly still pending) result shared by its misses.
type LiveEntry<T> = (Instant, Arc<OnceCell<Option<Arc<T>>>>);
type Recent<T> = Mutex<HashMap<String, LiveEntry<T>>>;

/// Live reads on cache misses: shared per key, bounded by one token bucket.
pub(crate) struct LiveReads {
    source: LiveSource,
    limits: LiveReadLimits,
    /// A namespace's bindings as one live read found them, looked up like the cache itself.
    bindings: Recent<Store>,
    /// Service accounts by `namespace/name`.
    accounts: Recent<ServiceAccountState>,
    bucket: Mutex<(f64, Instant)>,
}

impl LiveReads {
    pub(crate) fn new(source: LiveSource, limits: LiveReadLimits) -> Self {
        LiveReads {
            source,
            limits,
            bindings: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
            bucket: Mutex::new((limits.burst, Instant::now())),
        }
    }

    /// The bindings of `service_account` in `namespace` as a live read finds them: the
    /// namespace's read in progress or still fresh, or a new one if the bucket allows.
    pub(crate) async fn bindings_for(
        &self,
        namespace: &str,
        service_account: &str,
        metrics: &Metrics,
    ) -> Option<Arc<[Binding]>> {
        let source = &self.source.bindings;
        let result = self
            .shared(&self.bindings, namespace, metrics, || async move {
                let bindings = source(namespace.to_owned()).await?;
                Ok(bindings.into_iter().collect::<Store>())
            })
            .await?;
        let found = result.bindings_for(namespace, service_account)?;
        tracing::info!(
            namespace,
            service_account,
            "binding found by live read before the watch delivered it"
        );
        Some(found)
    }

    /// A service account as a live read finds it; `None` when no read could be made.
    pub(crate) async fn account(
        &self,
        namespace: &str,
        name: &str,
        metrics: &Metrics,
    ) -> Option<ServiceAccountState> {
        let key = format!("{namespace}/{name}");
        let read = || (self.source.account)(namespace.to_owned(), name.to_owned());
        let state = self.shared(&self.accounts, &key, metrics, read).await?;
        if *state != ServiceAccountState::Missing {
            tracing::info!(
                namespace,
                service_account = name,
                "service account found by live read before the watch delivered it"
            );
        }
        Some((*state).clone())
    }

    /// The result for `key`: a read in progress or still fresh, or a new `read` if the bucket
    /// allows (only then is it called).
    async fn shared<T, F>(
        &self,
        recent: &Recent<T>,
        key: &str,
        metrics: &Metrics,
        read: impl FnOnce() -> F,
    ) -> Option<Arc<T>>
    where
        F: Future<Output = Result<T, String>>,
    {
        let cell = {
            let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match recent.get(key) {
                Some((at, cell)) if now.duration_since(*at) < self.limits.interval => cell.clone(),
                _ => {
                    if !self.take_token() {
                        Metrics::result(&metrics.live_reads, false);
                        return None;
                    }
                    recent.retain(|_, (at, _)| now.duration_since(*at) < self.limits.interval);
                    let cell = Arc::new(OnceCell::new());
                    recent.insert(key.to_owned(), (now, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| async {
            match tokio::time::timeout(LIVE_READ_TIMEOUT, read()).await {
                Ok(Ok(found)) => {
                    Metrics::result(&metrics.live_reads, true);
                    Some(Arc::new(found))
                }
                Ok(Err(error)) => {
                    tracing::warn!(key, %error, "live read failed");
                    Metrics::result(&metrics.live_reads, false);
                    None
                }
                Err(_) => {
                    tracing::warn!(key, "live read timed out");
                    Metrics::result(&metrics.live_reads, false);
                    None
                }
            }
        })
        .await
        .clone()
    }

    fn take_token(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.limits.per_second;
        b.0 = (b.0 + refill).min(self.limits.burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Converts objects one by one; invalid ones are logged and counted, never fatal.
fn bindings_from_list<'a>(
    objects: impl Iterator<Item = &'a DynamicObject>,
) -> (Vec<(String, Binding)>, usize) {
    let mut out = Vec::new();
    let mut invalid = 0;
    for obj in objects {
        let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) else {
            continue;
        };
        match binding_from_json(ns, name, &obj.data["spec"]) {
            Ok(b) => out.push((ns.clone(), b)),
            Err(error) => {
                invalid += 1;
                tracing::warn!(%error, "ignoring AWSRoleBinding");
            }
        }
    }
    (out, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_malformed_object_does_not_poison_the_rest() {
        let obj = |name: &str, spec: serde_json::Value| {
            let mut o = DynamicObject::new(name, &api_resource()).within("ns");
            o.data = serde_json::json!({ "spec": spec });
            o
        };
        let objects = [
            obj(
                "good",
                serde_json::json!({"serviceAccountName": "app", "roleArn": "arn:aws:iam::123456789012:role/x"}),
            ),
            obj(
                "bad",
                serde_json::json!({"serviceAccountName": ["not", "a", "string"]}),
            ),
            obj(
                "badarn",
                serde_json::json!({"serviceAccountName": "app", "roleArn": "nope"}),
            ),
        ];
        let (bindings, invalid) = bindings_from_list(objects.iter());
        assert_eq!(invalid, 2);
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].1.name, "good");
    }
}
