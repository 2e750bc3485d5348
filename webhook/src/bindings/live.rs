//! Live reads cover the watches' lag. A watch lags the API by a little: a binding applied in
//! the same `kubectl apply` as its pod can be missing from the cache when the pod arrives, and
//! the pod would start without credentials and never get them. On a miss the cache does a
//! live, consistent LIST of that namespace's bindings, shared per namespace (concurrent misses
//! wait for one request and reuse its result for `live_read_interval`) and bounded by a global
//! token bucket, so a busy cluster without bindings costs at most a few cheap reads per second,
//! never one per admission. A read's bindings are looked up the one way, in a [`Store`] of
//! their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use tokio::sync::OnceCell;

use super::ApiAccess;
use super::store::Store;
use crate::domain::binding::Binding;
use crate::domain::convert::binding_from_json;
use crate::domain::crd::AWSRoleBinding;
use crate::metrics::Metrics;

const LIVE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What a live read calls: a list of one namespace's bindings.
pub(crate) const LIVE_READ: ApiAccess = ApiAccess {
    group: "rolebridge.io",
    resource: "awsrolebindings",
    verbs: &["list"],
    own_namespace: false,
};

fn api_resource() -> ApiResource {
    ApiResource::erase::<AWSRoleBinding>(&())
}

/// Reads all bindings of one namespace straight from the API server.
pub type LiveSource =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Vec<(String, Binding)>, String>> + Send + Sync>;

/// A live source backed by the API server.
pub fn api_live_source(client: kube::Client) -> LiveSource {
    let ar = api_resource();
    Arc::new(move |namespace: String| {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
        Box::pin(async move {
            // No resourceVersion: a consistent read, not the API server's possibly stale cache.
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(bindings_from_list(list.items.iter()).0)
        })
    })
}

/// Limits for live reads.
#[derive(Debug, Clone, Copy)]
pub struct LiveReadLimits {
    /// How long one namespace's live result is reused, and the least time between two live
    /// reads of the same namespace.
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

/// A namespace's bindings as one live read found them, looked up like the cache itself.
type LiveResult = Arc<Store>;
/// When a namespace was read, and the (possibly still pending) result shared by its misses.
type LiveEntry = (Instant, Arc<OnceCell<Option<LiveResult>>>);

/// Live reads on cache misses: shared per namespace, bounded by a token bucket.
pub(crate) struct LiveReads {
    source: LiveSource,
    limits: LiveReadLimits,
    recent: Mutex<HashMap<String, LiveEntry>>,
    bucket: Mutex<(f64, Instant)>,
}

impl LiveReads {
    pub(crate) fn new(source: LiveSource, limits: LiveReadLimits) -> Self {
        LiveReads {
            source,
            limits,
            recent: Mutex::new(HashMap::new()),
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
        let cell = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match recent.get(namespace) {
                Some((at, cell)) if now.duration_since(*at) < self.limits.interval => cell.clone(),
                _ => {
                    if !self.take_token() {
                        Metrics::result(&metrics.live_reads, false);
                        return None;
                    }
                    recent.retain(|_, (at, _)| now.duration_since(*at) < self.limits.interval);
                    let cell = Arc::new(OnceCell::new());
                    recent.insert(namespace.to_owned(), (now, cell.clone()));
                    cell
                }
            }
        };
        let result = cell
            .get_or_init(|| async {
                let read = (self.source)(namespace.to_owned());
                match tokio::time::timeout(LIVE_READ_TIMEOUT, read).await {
                    Ok(Ok(bindings)) => {
                        Metrics::result(&metrics.live_reads, true);
                        Some(Arc::new(bindings.into_iter().collect()))
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(namespace, %error, "live read of bindings failed");
                        Metrics::result(&metrics.live_reads, false);
                        None
                    }
                    Err(_) => {
                        tracing::warn!(namespace, "live read of bindings timed out");
                        Metrics::result(&metrics.live_reads, false);
                        None
                    }
                }
            })
            .await;
        let found = result.as_ref()?.bindings_for(namespace, service_account)?;
        tracing::info!(
            namespace,
            service_account,
            "binding found by live read before the watch delivered it"
        );
        Some(found)
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
