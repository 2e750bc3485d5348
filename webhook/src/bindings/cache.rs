//! The binding cache: watches of every `AWSRoleBinding` and every service account (metadata
//! only), kept in a [`Store`] that holds only what admission and status need, plus the set of
//! binding groups whose status may have changed, for the status controller.
//!
//! Bindings are read as [`WatchedBinding`]: metadata reduced to name, namespace, generation and
//! resourceVersion at parse time (no `managedFields`, no annotations), spec and status kept as
//! JSON until converted one by one, so one object whose spec does not parse is logged, counted
//! and reported instead of failing the whole list and stalling the watch (as a typed watcher
//! would).
//!
//! A watch lags the API by a little. A binding applied in the same `kubectl apply` as its pod
//! can therefore be missing from the cache when the pod arrives; the pod would start without
//! credentials and never get them. On a miss the cache does a live, consistent LIST of that
//! namespace's bindings, shared per namespace (concurrent misses wait for one request and reuse
//! its result for `live_read_interval`) and bounded by a global token bucket, so a busy cluster
//! without bindings costs at most a few cheap reads per second, never one per admission.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde::Deserialize;
use tokio::sync::{Notify, OnceCell};

use crate::bindings::store::{Group, Observed, Pass, Store};
use crate::domain::binding::Binding;
use crate::domain::convert::binding_from_json;
use crate::domain::crd::{AWSRoleBinding, AWSRoleBindingStatus};
use crate::domain::status::GSA_ANNOTATION;
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

/// A namespace's bindings as one live read found them, looked up like the cache itself.
type LiveResult = Arc<Store>;
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
    store: Store,
    synced: AtomicBool,
    accounts_synced: AtomicBool,
    live: Option<Live>,
    metrics: Arc<Metrics>,
    work: Mutex<Work>,
    /// Woken (all waiters) when there is status work, or a watch syncs.
    pub changed: Notify,
}

/// Status work: groups a change touched, and a full pass in progress.
#[derive(Default)]
struct Work {
    groups: HashSet<Group>,
    pass: Option<Pass>,
    /// Groups a worker is computing or writing: never handed to a second worker meanwhile
    /// (both would write the same status before either recorded it), but due again once done
    /// if a change or a pass reached them meanwhile (`again`).
    in_flight: HashSet<Group>,
    again: HashSet<Group>,
    relisting: bool,
    accounts_relisting: bool,
}

impl BindingCache {
    /// A cache fed by [`BindingCache::run_watches`]; `live` covers the watch's lag.
    pub fn new(metrics: Arc<Metrics>, live: Option<(LiveSource, LiveReadLimits)>) -> Self {
        BindingCache {
            store: Store::new(),
            synced: AtomicBool::new(false),
            accounts_synced: AtomicBool::new(false),
            live: live.map(|(source, limits)| Live {
                source,
                limits,
                recent: Mutex::new(HashMap::new()),
                bucket: Mutex::new((limits.burst, Instant::now())),
            }),
            metrics,
            work: Mutex::new(Work::default()),
            changed: Notify::new(),
        }
    }

    /// A fixed set of bindings (`serve --bindings-file`, benchmarks): synced from the start.
    pub fn fixed(metrics: Arc<Metrics>, bindings: Vec<(String, Binding)>) -> Self {
        let mut cache = Self::new(metrics, None);
        cache.store = bindings.into_iter().collect();
        cache.update_gauges();
        cache.synced.store(true, Ordering::Release);
        cache
    }

    /// The binding watch has listed everything once (admissions can be answered).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Both watches have listed everything once (statuses can be computed).
    pub fn is_fully_synced(&self) -> bool {
        self.is_synced() && self.accounts_synced.load(Ordering::Acquire)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn work(&self) -> std::sync::MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `limit` groups whose status may have changed: those a change touched first, then
    /// the next part of a full pass. Empty when there is nothing to do. The caller owns them
    /// until it calls [`BindingCache::done`].
    pub fn take_work(&self, limit: usize) -> Vec<Group> {
        let mut work = self.work();
        let Work {
            groups,
            pass,
            in_flight,
            again,
            ..
        } = &mut *work;
        let mut take = Vec::new();
        let mut offer = |g: Group, take: &mut Vec<Group>| {
            if in_flight.contains(&g) {
                again.insert(g);
            } else {
                take.push(g);
            }
        };
        // One walk of the set per call, not one per group taken: after a burst of 100k
        // changes each walk starts past the slots already emptied.
        let first: Vec<Group> = groups.iter().take(limit).cloned().collect();
        for g in first {
            groups.remove(&g);
            offer(g, &mut take);
        }
        // A chunk of the pass may be all in flight: go on to the next, or the pass would
        // stall until the next change.
        while take.is_empty() {
            let Some(p) = pass.as_mut() else { break };
            match self.store.pass_chunk(p, limit) {
                Some(chunk) => chunk.into_iter().for_each(|g| offer(g, &mut take)),
                None => *pass = None,
            }
        }
        in_flight.extend(take.iter().cloned());
        take
    }

    /// A worker is finished with these groups (from [`BindingCache::take_work`]); those that
    /// changed meanwhile are due again.
    pub fn done(&self, finished: &[Group]) {
        let mut work = self.work();
        let mut due = false;
        for g in finished {
            work.in_flight.remove(g);
            if work.again.remove(g) {
                work.groups.insert(g.clone());
                due = true;
            }
        }
        drop(work);
        if due {
            self.changed.notify_waiters();
        }
    }

    /// Every group gets a status check (a new leader, a relist).
    pub fn request_full_pass(&self) {
        self.work().pass = Some(Pass::Start);
        self.changed.notify_waiters();
    }

    /// Forgets all pending work (a replica that does not lead).
    pub fn clear_work(&self) {
        let mut work = self.work();
        work.groups.clear();
        work.again.clear();
        work.pass = None;
    }

    /// Marks groups for a status check.
    pub fn mark(&self, groups: Vec<Group>) {
        if groups.is_empty() {
            return;
        }
        let mut work = self.work();
        // A relist ends with a full pass: marking every group it re-reads would only hold
        // them all in memory until then.
        if work.relisting || work.accounts_relisting {
            return;
        }
        work.groups.extend(groups);
        drop(work);
        self.changed.notify_waiters();
    }

    fn update_gauges(&self) {
        let counts = self.store.counts();
        self.metrics.bindings.set(counts.valid as i64);
        self.metrics.invalid_bindings.set(counts.invalid as i64);
        self.metrics.conflicts.set(counts.conflicts as i64);
    }

    /// The bindings of `service_account` in `namespace`, from the cache or, on a miss, from a
    /// rate-limited live read.
    pub async fn bindings_for(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Option<Arc<[Binding]>> {
        if let Some(hit) = self.store.bindings_for(namespace, service_account) {
            return Some(hit);
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
                        Some(Arc::new(bindings.into_iter().collect()))
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
        let found = result.as_ref()?.bindings_for(namespace, service_account)?;
        tracing::info!(
            namespace,
            service_account,
            "binding found by live read before the watch delivered it"
        );
        Some(found)
    }

    /// Starts the binding and service-account watches; they run until the process ends.
    pub fn run_watches(self: &Arc<Self>, client: kube::Client) {
        let bindings: Api<WatchedBinding> = Api::all(client.clone());
        let this = self.clone();
        tokio::spawn(crate::bindings::watch::run(
            "bindings",
            move || watcher(bindings.clone(), watcher::Config::default()),
            move |event| this.on_binding(event),
        ));
        // Metadata only: the annotation is all status needs.
        let accounts: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client);
        let this = self.clone();
        tokio::spawn(crate::bindings::watch::run(
            "service accounts",
            move || watcher(accounts.clone(), watcher::Config::default()),
            move |event| this.on_account(event),
        ));
    }

    fn on_binding(&self, event: watcher::Event<WatchedBinding>) {
        let groups = match event {
            watcher::Event::Init => {
                self.store.begin_relist();
                self.work().relisting = true;
                return;
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => self.apply(&o),
            watcher::Event::Delete(o) => {
                let (Some(ns), Some(name)) = (&o.metadata.namespace, &o.metadata.name) else {
                    return;
                };
                let sa = o.spec.get("serviceAccountName").and_then(|s| s.as_str());
                self.store.delete(ns, name, sa)
            }
            watcher::Event::InitDone => {
                self.store.end_relist();
                if !self.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!(bindings = self.store.counts().valid, "binding cache synced");
                }
                self.work().relisting = false;
                self.update_gauges();
                // Anything may have changed while the watch was away.
                self.request_full_pass();
                return;
            }
        };
        self.update_gauges();
        self.mark(groups);
    }

    fn apply(&self, o: &WatchedBinding) -> Vec<Group> {
        let (Some(ns), Some(name)) = (&o.metadata.namespace, &o.metadata.name) else {
            return Vec::new();
        };
        let spec = binding_from_json(ns, name, &o.spec).map_err(|error| {
            tracing::warn!(%error, "ignoring AWSRoleBinding");
            error.to_string()
        });
        let status: Option<AWSRoleBindingStatus> = o
            .status
            .as_ref()
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        self.store.apply(Observed {
            namespace: ns,
            name,
            generation: o.metadata.generation.unwrap_or(0),
            spec,
            status: status.as_ref(),
        })
    }

    fn on_account(&self, event: watcher::Event<PartialObjectMeta<ServiceAccount>>) {
        let groups = match event {
            watcher::Event::Init => {
                self.store.begin_accounts_relist();
                self.work().accounts_relisting = true;
                return;
            }
            watcher::Event::InitApply(sa) | watcher::Event::Apply(sa) => {
                let meta = &sa.metadata;
                let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
                    return;
                };
                let gsa = meta
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(GSA_ANNOTATION))
                    .map(String::as_str);
                self.store.apply_account(ns, name, gsa)
            }
            watcher::Event::Delete(sa) => {
                let meta = &sa.metadata;
                let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
                    return;
                };
                self.store.delete_account(ns, name)
            }
            watcher::Event::InitDone => {
                self.store.end_accounts_relist();
                if !self.accounts_synced.swap(true, Ordering::AcqRel) {
                    tracing::info!("service account cache synced");
                }
                self.work().accounts_relisting = false;
                self.request_full_pass();
                return;
            }
        };
        self.mark(groups);
    }
}

/// An `AWSRoleBinding` as the watch keeps it: the metadata fields the webhook uses (parsed
/// without allocating for `managedFields` or annotations), spec and status as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct WatchedBinding {
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
}

fn slim_metadata<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        generation: m.generation,
        ..ObjectMeta::default()
    })
}

impl kube::Resource for WatchedBinding {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        AWSRoleBinding::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        AWSRoleBinding::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        AWSRoleBinding::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        AWSRoleBinding::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
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
        let b = binding("b", "app");
        cache.store.apply(Observed {
            namespace: "ns",
            name: "b",
            generation: 1,
            spec: Ok(b),
            status: None,
        });
        assert_eq!(cache.bindings_for("ns", "app").await.unwrap()[0].name, "b");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn watched_bindings_keep_only_what_is_used() {
        let object = serde_json::json!({
            "apiVersion": "rolebridge.io/v1alpha1", "kind": "AWSRoleBinding",
            "metadata": {"name": "b", "namespace": "ns", "generation": 2, "resourceVersion": "7",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"serviceAccountName": "app", "roleArn": "arn:aws:iam::123456789012:role/x"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Bound",
                "message": "", "lastTransitionTime": "2026-11-22T10:00:00Z"}]}
        });
        // Real API servers write "type" first; a parser must not depend on it.
        for event in [
            format!(r#"{{"type":"ADDED","object":{object}}}"#),
            format!(r#"{{"object":{object},"type":"ADDED"}}"#),
        ] {
            let parsed: kube::core::WatchEvent<WatchedBinding> =
                serde_json::from_str(&event).unwrap();
            let kube::core::WatchEvent::Added(o) = parsed else {
                panic!("an added event")
            };
            assert_eq!(o.metadata.name.as_deref(), Some("b"));
            assert_eq!(o.metadata.generation, Some(2));
            assert_eq!(o.metadata.resource_version.as_deref(), Some("7"));
            assert!(o.metadata.managed_fields.is_none() && o.metadata.annotations.is_none());
            assert_eq!(o.spec["serviceAccountName"], "app");
        }
    }

    #[test]
    fn watch_events_keep_the_store_and_the_changed_groups() {
        let cache = BindingCache::new(Arc::new(Metrics::new()), None);
        let watched = |name: &str, sa: &str| WatchedBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: serde_json::json!({"serviceAccountName": sa, "roleArn": "arn:aws:iam::123456789012:role/x"}),
            status: None,
        };
        cache.on_binding(watcher::Event::Init);
        cache.on_binding(watcher::Event::InitApply(watched("a", "app")));
        cache.on_binding(watcher::Event::InitApply(watched("b", "other")));
        cache.on_binding(watcher::Event::InitDone);
        assert!(cache.is_synced() && !cache.is_fully_synced());
        // The list ends in a full pass over both groups, walked in chunks.
        let first = cache.take_work(1);
        assert_eq!(first.len(), 1);
        let second = cache.take_work(10);
        assert_eq!(second.len(), 1);
        assert!(cache.take_work(10).is_empty());
        cache.done(&first);
        cache.done(&second);
        // A change touches its own group only.
        cache.on_binding(watcher::Event::Apply(watched("a2", "app")));
        let app = Group::Account {
            namespace: "ns".into(),
            service_account: "app".into(),
        };
        assert_eq!(cache.take_work(10), vec![app.clone()]);
        // Changed again while a worker holds it: not handed to a second worker, due once done.
        cache.on_binding(watcher::Event::Apply(watched("a3", "app")));
        assert!(cache.take_work(10).is_empty());
        cache.done(std::slice::from_ref(&app));
        assert_eq!(cache.take_work(10), vec![app.clone()]);
        cache.done(std::slice::from_ref(&app));
        // A relist after an outage that no longer sees "b" nor "a2": they are gone; the full
        // pass that follows covers what is left.
        cache.on_binding(watcher::Event::Init);
        cache.on_binding(watcher::Event::InitApply(watched("a", "app")));
        cache.on_binding(watcher::Event::InitDone);
        assert!(cache.store.bindings_for("ns", "other").is_none());
        assert_eq!(cache.take_work(10), vec![app.clone()]);
        cache.done(&[app]);
        // An invalid spec is counted and kept for its status.
        let mut bad = watched("c", "app");
        bad.spec = serde_json::json!({"serviceAccountName": "app", "roleArn": "nope"});
        cache.on_binding(watcher::Event::Apply(bad));
        assert_eq!(cache.store.counts().invalid, 1);
        assert_eq!(cache.metrics.invalid_bindings.get(), 1);
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
