//! The binding cache: watches of every `AWSRoleBinding` and every service account (metadata
//! only), kept in a [`Store`] that holds only what admission and status need, with
//! [`LiveReads`] covering the watch's lag, and the [`WorkQueue`] of binding groups whose status
//! may have changed, for the status controller.
//!
//! Bindings are read as [`WatchedBinding`]: metadata reduced to name, namespace, generation and
//! resourceVersion at parse time (no `managedFields`, no annotations), spec and status kept as
//! JSON until converted one by one, so one object whose spec does not parse is logged, counted
//! and reported instead of failing the whole list and stalling the watch (as a typed watcher
//! would).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde::Deserialize;

use super::ApiAccess;
use super::live::{LiveReadLimits, LiveReads, LiveSource};
use super::store::{Group, Observed, Store};
use super::watch::slim_resource;
use super::work::{Feed, WorkQueue};
use crate::domain::binding::Binding;
use crate::domain::convert::{AccountDoc, binding_from_json};
use crate::domain::crd::{AWSRoleBinding, AWSRoleBindingStatus};
use crate::domain::status::{GSA_ANNOTATION, ServiceAccountState};
use crate::metrics::Metrics;

/// What the watches call: list and watch of every binding and (metadata only) every service
/// account, in all namespaces.
pub(crate) const WATCHES: [ApiAccess; 2] = [
    ApiAccess {
        group: "rolebridge.io",
        resource: "awsrolebindings",
        verbs: &["list", "watch"],
        own_namespace: false,
    },
    ApiAccess {
        group: "",
        resource: "serviceaccounts",
        verbs: &["list", "watch"],
        own_namespace: false,
    },
];

pub struct BindingCache {
    store: Store,
    synced: AtomicBool,
    accounts_synced: AtomicBool,
    live: Option<LiveReads>,
    metrics: Arc<Metrics>,
    work: WorkQueue,
}

impl BindingCache {
    /// A cache fed by [`BindingCache::run_watches`]; `live` covers the watch's lag.
    pub fn new(metrics: Arc<Metrics>, live: Option<(LiveSource, LiveReadLimits)>) -> Self {
        BindingCache {
            store: Store::new(),
            synced: AtomicBool::new(false),
            accounts_synced: AtomicBool::new(false),
            live: live.map(|(source, limits)| LiveReads::new(source, limits)),
            metrics,
            work: WorkQueue::default(),
        }
    }

    /// A fixed set of bindings and service accounts (`serve --bindings-file`, benchmarks):
    /// synced from the start.
    pub fn fixed(
        metrics: Arc<Metrics>,
        bindings: Vec<(String, Binding)>,
        accounts: &[AccountDoc],
    ) -> Self {
        let mut cache = Self::new(metrics, None);
        cache.store = bindings.into_iter().collect();
        for a in accounts {
            cache
                .store
                .apply_account(&a.namespace, &a.name, a.google_service_account.as_deref());
        }
        cache.update_gauges();
        cache.synced.store(true, Ordering::Release);
        cache
    }

    /// The binding watch has listed everything once (admissions can be answered).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Both watches have listed everything once (statuses can be computed).
    pub(crate) fn is_fully_synced(&self) -> bool {
        self.is_synced() && self.accounts_synced.load(Ordering::Acquire)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The status work the watches marked, woken on every change and sync.
    pub(crate) fn work(&self) -> &WorkQueue {
        &self.work
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
        live.bindings_for(namespace, service_account, &self.metrics)
            .await
    }

    /// What is known of a service account: the store's copy or, on a miss, a rate-limited live
    /// read (it may have been created a moment before its pod); `Missing` if neither knows it.
    pub async fn account_for(&self, namespace: &str, name: &str) -> ServiceAccountState {
        let known = self.store.service_account(namespace, name);
        if known != ServiceAccountState::Missing {
            return known;
        }
        let Some(live) = &self.live else {
            return known;
        };
        live.account(namespace, name, &self.metrics)
            .await
            .unwrap_or(known)
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
                self.work.relisting(Feed::Bindings, true);
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
                self.work.relisting(Feed::Bindings, false);
                self.update_gauges();
                // Anything may have changed while the watch was away.
                self.work.request_full_pass();
                return;
            }
        };
        self.update_gauges();
        self.work.mark(groups);
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
                self.work.relisting(Feed::Accounts, true);
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
                self.work.relisting(Feed::Accounts, false);
                self.work.request_full_pass();
                return;
            }
        };
        self.work.mark(groups);
    }
}

/// An `AWSRoleBinding` as the watch keeps it: the metadata fields the webhook uses (parsed
/// without allocating for `managedFields` or annotations), spec and status as JSON.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WatchedBinding {
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

pub(super) fn slim_metadata<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        generation: m.generation,
        ..ObjectMeta::default()
    })
}

slim_resource!(WatchedBinding, AWSRoleBinding);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

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

    /// A fake API server: the namespace "fresh" has a binding and a service account "app" the
    /// watches have not delivered. Every read (of either kind) counts.
    fn source(calls: Arc<AtomicUsize>) -> LiveSource {
        let account_calls = calls.clone();
        LiveSource {
            bindings: Arc::new(move |ns: String| {
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
            }),
            account: Arc::new(move |ns: String, name: String| {
                let calls = account_calls.clone();
                Box::pin(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(if ns == "fresh" && name == "app" {
                        ServiceAccountState::WorkloadIdentity(
                            "app@p.iam.gserviceaccount.com".into(),
                        )
                    } else {
                        ServiceAccountState::Missing
                    })
                })
            }),
        }
    }

    /// A cache whose live reads go to [`source`], counted in `calls`.
    fn live_cache(calls: &Arc<AtomicUsize>) -> Arc<BindingCache> {
        Arc::new(BindingCache::new(
            Arc::new(Metrics::new()),
            Some((source(calls.clone()), LiveReadLimits::default())),
        ))
    }

    #[tokio::test]
    async fn a_service_account_created_just_before_its_pod_is_read_live_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = live_cache(&calls);
        let want = ServiceAccountState::WorkloadIdentity("app@p.iam.gserviceaccount.com".into());
        // A burst of pods shares one live read.
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let cache = cache.clone();
            burst.spawn(async move { cache.account_for("fresh", "app").await });
        }
        for found in burst.join_all().await {
            assert_eq!(found, want);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            cache.account_for("fresh", "other").await,
            ServiceAccountState::Missing
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The watch's copy wins and costs no read.
        cache.store.apply_account("ns", "known", None);
        assert_eq!(
            cache.account_for("ns", "known").await,
            ServiceAccountState::NoWorkloadIdentity
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Without live reads a miss is Missing.
        let fixed = BindingCache::new(Arc::new(Metrics::new()), None);
        assert_eq!(
            fixed.account_for("fresh", "app").await,
            ServiceAccountState::Missing
        );
    }

    #[tokio::test]
    async fn binding_created_just_before_its_pod_is_honoured() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = live_cache(&calls);
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
        let first = cache.work.take(&cache.store, 1);
        assert_eq!(first.len(), 1);
        let second = cache.work.take(&cache.store, 10);
        assert_eq!(second.len(), 1);
        assert!(cache.work.take(&cache.store, 10).is_empty());
        cache.work.done(&first);
        cache.work.done(&second);
        // A change touches its own group only.
        cache.on_binding(watcher::Event::Apply(watched("a2", "app")));
        let app = Group::Account {
            namespace: "ns".into(),
            service_account: "app".into(),
        };
        assert_eq!(cache.work.take(&cache.store, 10), vec![app.clone()]);
        // Changed again while a worker holds it: not handed to a second worker, due once done.
        cache.on_binding(watcher::Event::Apply(watched("a3", "app")));
        assert!(cache.work.take(&cache.store, 10).is_empty());
        cache.work.done(std::slice::from_ref(&app));
        assert_eq!(cache.work.take(&cache.store, 10), vec![app.clone()]);
        cache.work.done(std::slice::from_ref(&app));
        // A relist after an outage that no longer sees "b" nor "a2": they are gone; the full
        // pass that follows covers what is left.
        cache.on_binding(watcher::Event::Init);
        cache.on_binding(watcher::Event::InitApply(watched("a", "app")));
        cache.on_binding(watcher::Event::InitDone);
        assert!(cache.store.bindings_for("ns", "other").is_none());
        assert_eq!(cache.work.take(&cache.store, 10), vec![app.clone()]);
        cache.work.done(&[app]);
        // An invalid spec is counted and kept for its status.
        let mut bad = watched("c", "app");
        bad.spec = serde_json::json!({"serviceAccountName": "app", "roleArn": "nope"});
        cache.on_binding(watcher::Event::Apply(bad));
        assert_eq!(cache.store.counts().invalid, 1);
        assert_eq!(cache.metrics.invalid_bindings.get(), 1);
    }
}
