//! The binding cache: a kube-runtime reflector over every `AWSRoleBinding`, projected into a
//! [`BindingIndex`] that admissions read without an API call.
//!
//! Objects are watched untyped (`DynamicObject`) and converted one by one, so one object whose
//! spec does not parse is logged, counted and skipped instead of failing the whole list and
//! stalling the watch (which a typed watcher would do).
//!
//! A watch lags the API by a little. A binding applied in the same `kubectl apply` as its pod
//! can therefore be missing from the cache when the pod arrives; the pod would start without
//! credentials and never get them. On a miss the cache does a live, consistent LIST of that
//! namespace's bindings, shared per namespace (concurrent misses wait for one request and reuse
//! its result for `live_read_interval`) and bounded by a global token bucket, so a busy cluster
//! without bindings costs at most a few cheap reads per second, never one per admission.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::{Notify, OnceCell};

use crate::binding::Binding;
use crate::crd::AWSRoleBinding;
use crate::index::{BindingIndex, binding_from_json};
use crate::metrics::Metrics;

const LIVE_READ_TIMEOUT: Duration = Duration::from_secs(2);

pub fn api_resource() -> ApiResource {
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
            Ok(convert(list.items.iter()).0)
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

type LiveResult = Arc<BindingIndex>;
/// When a namespace was read, and the (possibly still pending) result shared by its misses.
type LiveEntry = (Instant, Arc<OnceCell<Option<LiveResult>>>);

struct Live {
    source: LiveSource,
    limits: LiveReadLimits,
    recent: Mutex<HashMap<String, LiveEntry>>,
    bucket: Mutex<(f64, Instant)>,
}

impl Live {
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

pub struct BindingCache {
    index: ArcSwap<BindingIndex>,
    synced: AtomicBool,
    live: Option<Live>,
    metrics: Arc<Metrics>,
    /// Woken on every change, for the status controller.
    pub changed: Notify,
}

impl BindingCache {
    /// A cache fed by [`BindingCache::run_watch`]; `live` covers the watch's lag.
    pub fn new(metrics: Arc<Metrics>, live: Option<(LiveSource, LiveReadLimits)>) -> Self {
        BindingCache {
            index: ArcSwap::from_pointee(BindingIndex::default()),
            synced: AtomicBool::new(false),
            live: live.map(|(source, limits)| Live {
                source,
                limits,
                recent: Mutex::new(HashMap::new()),
                bucket: Mutex::new((limits.burst, Instant::now())),
            }),
            metrics,
            changed: Notify::new(),
        }
    }

    /// A fixed set of bindings (`serve --bindings-file`, benchmarks): synced from the start.
    pub fn fixed(metrics: Arc<Metrics>, bindings: Vec<(String, Binding)>) -> Self {
        let cache = Self::new(metrics, None);
        cache.replace(BindingIndex::new(bindings), 0);
        cache.synced.store(true, Ordering::Release);
        cache
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<BindingIndex> {
        self.index.load_full()
    }

    fn replace(&self, index: BindingIndex, invalid: usize) {
        self.metrics.bindings.set(index.len() as i64);
        self.metrics.invalid_bindings.set(invalid as i64);
        self.index.store(Arc::new(index));
        self.changed.notify_one();
    }

    /// The bindings of `service_account` in `namespace`, from the cache or, on a miss, from a
    /// rate-limited live read.
    pub async fn bindings_for(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Option<Arc<[Binding]>> {
        if let Some(hit) = self.index.load().lookup(namespace, service_account) {
            return Some(hit.clone());
        }
        let live = self.live.as_ref()?;
        let cell = {
            let mut recent = live.recent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match recent.get(namespace) {
                Some((at, cell)) if now.duration_since(*at) < live.limits.interval => cell.clone(),
                _ => {
                    if !live.take_token() {
                        Metrics::result(&self.metrics.live_reads, false);
                        return None;
                    }
                    recent.retain(|_, (at, _)| now.duration_since(*at) < live.limits.interval);
                    let cell = Arc::new(OnceCell::new());
                    recent.insert(namespace.to_owned(), (now, cell.clone()));
                    cell
                }
            }
        };
        let result = cell
            .get_or_init(|| async {
                let read = (live.source)(namespace.to_owned());
                match tokio::time::timeout(LIVE_READ_TIMEOUT, read).await {
                    Ok(Ok(bindings)) => {
                        Metrics::result(&self.metrics.live_reads, true);
                        Some(Arc::new(BindingIndex::new(bindings)))
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(namespace, %error, "live read of bindings failed");
                        Metrics::result(&self.metrics.live_reads, false);
                        None
                    }
                    Err(_) => {
                        tracing::warn!(namespace, "live read of bindings timed out");
                        Metrics::result(&self.metrics.live_reads, false);
                        None
                    }
                }
            })
            .await;
        let found = result.as_ref()?.lookup(namespace, service_account)?.clone();
        tracing::info!(
            namespace,
            service_account,
            "binding found by live read before the watch delivered it"
        );
        Some(found)
    }

    /// Runs the watch until the process ends, keeping the index (and `store`) current.
    pub async fn run_watch(self: Arc<Self>, client: kube::Client) -> Store<DynamicObject> {
        let ar = api_resource();
        let api: Api<DynamicObject> = Api::all_with(client, &ar);
        let mut writer = reflector::store::Writer::new(ar);
        let store = writer.as_reader();
        let this = self.clone();
        let reader = store.clone();
        tokio::spawn(crate::watch::run(
            "bindings",
            move || watcher(api.clone(), watcher::Config::default()),
            move |event| {
                writer.apply_watcher_event(&event);
                match event {
                    watcher::Event::Init | watcher::Event::InitApply(_) => {}
                    watcher::Event::InitDone
                    | watcher::Event::Apply(_)
                    | watcher::Event::Delete(_) => {
                        let state = reader.state();
                        let (bindings, invalid) = convert(state.iter().map(|o| o.as_ref()));
                        this.replace(BindingIndex::new(bindings), invalid);
                        if !this.synced.swap(true, Ordering::AcqRel) {
                            tracing::info!(bindings = state.len(), "binding cache synced");
                        }
                    }
                }
            },
        ));
        store
    }
}

/// Converts objects one by one; invalid ones are logged and counted, never fatal.
pub fn convert<'a>(
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
    use std::sync::atomic::AtomicUsize;

    fn binding(name: &str, sa: &str) -> Binding {
        Binding {
            name: name.into(),
            service_account: sa.into(),
            role_arn: "arn:aws:iam::123456789012:role/x".into(),
            audience: None,
            region: None,
            containers: None,
            ..Binding::default()
        }
    }

    /// A fake API server: the namespace "fresh" has a binding the watch has not delivered.
    fn source(calls: Arc<AtomicUsize>) -> LiveSource {
        Arc::new(move |ns: String| {
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(if ns == "fresh" {
                    vec![(ns, binding("new", "app"))]
                } else {
                    vec![]
                })
            })
        })
    }

    #[tokio::test]
    async fn binding_created_just_before_its_pod_is_honoured() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = Arc::new(BindingCache::new(
            Arc::new(Metrics::new()),
            Some((source(calls.clone()), LiveReadLimits::default())),
        ));
        // A burst of pods (a Deployment scaling up) shares one live read.
        let lookups = (0..8).map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.bindings_for("fresh", "app").await })
        });
        for found in futures::future::join_all(lookups).await {
            assert_eq!(found.unwrap().unwrap()[0].name, "new");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another SA in the same namespace reuses the result: a miss without a new read.
        assert!(cache.bindings_for("fresh", "other").await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn live_reads_are_rate_limited() {
        let calls = Arc::new(AtomicUsize::new(0));
        let limits = LiveReadLimits {
            interval: Duration::from_secs(60),
            per_second: 0.001,
            burst: 3.0,
        };
        let cache = BindingCache::new(
            Arc::new(Metrics::new()),
            Some((source(calls.clone()), limits)),
        );
        for i in 0..20 {
            assert!(cache.bindings_for(&format!("ns{i}"), "app").await.is_none());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn cache_hits_never_read_live() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = BindingCache::new(
            Arc::new(Metrics::new()),
            Some((source(calls.clone()), LiveReadLimits::default())),
        );
        cache.replace(
            BindingIndex::new([("ns".to_string(), binding("b", "app"))]),
            0,
        );
        assert_eq!(cache.bindings_for("ns", "app").await.unwrap()[0].name, "b");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

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
        let (bindings, invalid) = convert(objects.iter());
        assert_eq!(invalid, 2);
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].1.name, "good");
    }
}
