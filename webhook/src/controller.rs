//! Writes `AWSRoleBinding` status.
//!
//! A deliberately small level-triggered loop instead of a per-object controller: conflicts
//! span objects, so any change to any binding or service account re-evaluates all of them
//! (cheap: bindings number in the hundreds, the computation is [`status::desired`], a pure
//! function). Writes are server-side applies to the status subresource under one field
//! manager, made only when the computed status differs from the stored one, and only by the
//! replica holding the status Lease ([`crate::lease`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::cache::{BindingCache, api_resource};
use crate::crd::AWSRoleBindingStatus;
use crate::index::binding_from_json;
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::status::{self, BindingState, GSA_ANNOTATION, ServiceAccountState};

pub const FIELD_MANAGER: &str = "rolebridge-webhook";
const DEBOUNCE: Duration = Duration::from_millis(500);
const RESYNC: Duration = Duration::from_secs(300);

/// Runs until the process ends.
pub async fn run(
    client: kube::Client,
    bindings: Store<DynamicObject>,
    cache: Arc<BindingCache>,
    metrics: Arc<Metrics>,
    mut leadership: Leadership,
) {
    let sa_changed = Arc::new(Notify::new());
    let writer = reflector::store::Writer::<PartialObjectMeta<ServiceAccount>>::default();
    let accounts = writer.as_reader();
    // Metadata only: annotations are all we need, and full objects would cost memory.
    let api = Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone());
    let notify = sa_changed.clone();
    let mut writer = writer;
    tokio::spawn(crate::watch::run(
        "service accounts",
        move || watcher(api.clone(), watcher::Config::default()),
        move |event| {
            writer.apply_watcher_event(&event);
            notify.notify_one();
        },
    ));

    if bindings.wait_until_ready().await.is_err() || accounts.wait_until_ready().await.is_err() {
        tracing::error!("status controller stopped: its watches ended");
        return;
    }
    let ar = api_resource();
    loop {
        // Only the leader writes; a new leader starts with a full pass.
        leadership.leading().await;
        reconcile_all(&client, &ar, &bindings, &accounts, &metrics, &leadership).await;
        tokio::select! {
            _ = cache.changed.notified() => {}
            _ = sa_changed.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
            _ = leadership.lost() => {}
        }
        // Coalesce a burst (a relist, `kubectl apply -f dir/`) into one pass.
        tokio::time::sleep(DEBOUNCE).await;
    }
}

async fn reconcile_all(
    client: &kube::Client,
    ar: &kube::api::ApiResource,
    bindings: &Store<DynamicObject>,
    accounts: &Store<PartialObjectMeta<ServiceAccount>>,
    metrics: &Metrics,
    leadership: &Leadership,
) {
    let objects = bindings.state();
    struct Parsed {
        namespace: String,
        name: String,
        generation: Option<i64>,
        spec: Result<crate::binding::Binding, String>,
        current: Option<AWSRoleBindingStatus>,
    }
    let parsed: Vec<Parsed> = objects
        .iter()
        .filter_map(|o| {
            let namespace = o.metadata.namespace.clone()?;
            let name = o.metadata.name.clone()?;
            let spec =
                binding_from_json(&namespace, &name, &o.data["spec"]).map_err(|e| e.to_string());
            let current = serde_json::from_value(o.data["status"].clone()).ok();
            Some(Parsed {
                generation: o.metadata.generation,
                namespace,
                name,
                spec,
                current,
            })
        })
        .collect();
    let states: Vec<BindingState> = parsed
        .iter()
        .map(|p| BindingState {
            namespace: &p.namespace,
            name: &p.name,
            generation: p.generation,
            spec: p.spec.as_ref().map_err(String::as_str),
            current: p.current.as_ref(),
        })
        .collect();
    let sa_state = |ns: &str, name: &str| match accounts.get(&ObjectRef::new(name).within(ns)) {
        None => ServiceAccountState::Missing,
        Some(sa) => match sa
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GSA_ANNOTATION))
        {
            Some(gsa) if !gsa.is_empty() => ServiceAccountState::WorkloadIdentity(gsa.clone()),
            _ => ServiceAccountState::NoWorkloadIdentity,
        },
    };
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let desired = status::desired(&states, sa_state, &now);

    let mut conflicts = 0;
    for (p, want) in parsed.iter().zip(desired) {
        let effective = want.as_ref().or(p.current.as_ref());
        if effective.is_some_and(|s| s.conditions.iter().any(|c| c.reason == "Conflict")) {
            conflicts += 1;
        }
        let Some(want) = want else { continue };
        if !leadership.is_leader() {
            break;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &p.namespace, ar);
        let body = serde_json::json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "status": want,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&p.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                Metrics::result(&metrics.status_writes, true);
                tracing::info!(namespace = %p.namespace, binding = %p.name,
                    reason = %want.conditions[0].reason, "binding status updated");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                Metrics::result(&metrics.status_writes, false);
                tracing::warn!(namespace = %p.namespace, binding = %p.name, %error, "binding status update failed");
            }
        }
    }
    metrics.conflicts.set(conflicts);
}
