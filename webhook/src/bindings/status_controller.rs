//! Writes `AWSRoleBinding` status.
//!
//! Work is per change, not per pass: the cache marks the group of bindings a watch event
//! touched (one service account's bindings, among which conflicts are decided, or one invalid
//! binding), and only those groups are recomputed with [`status::desired`], the pure function.
//! A status is written only when its fingerprint differs from what the API server holds, so
//! the watch event of our own write (and a relist) costs one cheap recomputation and no write;
//! a steady cluster costs nothing at all (there is no periodic resync: every input of a status
//! is watched).
//!
//! Writes are server-side applies to the status subresource under one field manager, made by
//! `--status-concurrency` workers that take changed groups (deduplicated, so a burst computes
//! and writes each binding once) and, after a relist or a change of leader, walk every group
//! with a cursor (a full pass never holds 100,000 keys at once). A status is computed when a
//! worker gets to it, from what the store holds then; failures mark the group again after a
//! backoff. Only the replica holding the status Lease writes ([`crate::bindings::lease`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource as _;
use kube::api::{Api, Patch, PatchParams};

use super::ApiAccess;
use crate::bindings::cache::{BindingCache, WatchedBinding};
use crate::bindings::issuer::Issuer;
use crate::bindings::lease::Leadership;
use crate::bindings::store::{Group, GroupState, Seen, fingerprint};
use crate::domain::crd::{AWSRoleBinding, AWSRoleBindingStatus};
use crate::domain::status::{self, BindingState};
use crate::metrics::Metrics;

const FIELD_MANAGER: &str = "rolebridge-webhook";
/// What the status writes call: a server-side apply to the status subresource.
pub(crate) const STATUS_WRITE: ApiAccess = ApiAccess {
    group: "rolebridge.io",
    resource: "awsrolebindings/status",
    verbs: &["patch"],
    own_namespace: false,
};
/// Lets the watches deliver the rest of a burst (a binding and its service account) before
/// the groups are computed.
const DEBOUNCE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Status flags of `serve`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    /// Binding status writes in flight at once.
    #[arg(long, env = "ROLEBRIDGE_STATUS_CONCURRENCY", default_value_t = 8)]
    pub status_concurrency: usize,
    /// The cluster's service account issuer (the `iss` AWS sees from `tokenSource: Kubernetes`
    /// pods), named in those bindings' Ready message. Unset: discovered from the API server's
    /// `/.well-known/openid-configuration`.
    #[arg(long, env = "ROLEBRIDGE_ISSUER")]
    pub issuer: Option<String>,
}

/// A status to write.
#[derive(Debug, Clone, PartialEq)]
struct StatusWrite {
    pub name: String,
    pub status: AWSRoleBindingStatus,
    pub conflict: bool,
    /// Differs from what the API server holds.
    pub write: bool,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// What a status computation takes besides the group: the time of a transition, and the
/// cluster's service account issuer when it is known.
#[derive(Debug, Clone, Copy)]
struct Inputs<'a> {
    now: &'a str,
    issuer: Option<&'a str>,
}

/// The status of every binding of a group, and which of them need a write.
fn status_writes(group: &GroupState, inputs: Inputs<'_>) -> Vec<StatusWrite> {
    let current: Vec<Option<AWSRoleBindingStatus>> =
        group.members.iter().map(|m| m.seen.as_status()).collect();
    let states: Vec<BindingState<'_>> = group
        .members
        .iter()
        .zip(&current)
        .map(|(m, c)| BindingState {
            namespace: &group.namespace,
            name: &m.name,
            generation: (m.generation != 0).then_some(m.generation),
            spec: m.spec.as_ref().map_err(String::as_str),
            current: c.as_ref(),
        })
        .collect();
    let wanted = status::desired(
        &states,
        |_, _| group.account.clone(),
        inputs.issuer,
        inputs.now,
    );
    group
        .members
        .iter()
        .zip(wanted.into_iter().zip(current))
        .filter_map(|(m, (want, current))| {
            // `desired` compares with what we know of the current status, which is only its
            // Ready condition: None means exactly that, i.e. nothing else was ever written.
            let status = want.or(current)?;
            let conflict = status.conditions.iter().any(|c| c.reason == "Conflict");
            Some(StatusWrite {
                name: m.name.clone(),
                write: fingerprint(&status) != m.seen.fingerprint,
                status,
                conflict,
            })
        })
        .collect()
}

/// Groups one worker takes at a time.
const CHUNK: usize = 64;
/// A worker that has written this many statuses since the queue was last empty lets the
/// allocator give the burst's memory back once it is idle.
const BURST: usize = 1000;

/// Runs until the process ends: `--status-concurrency` workers compute the statuses of the
/// groups that changed and write what differs, while this replica leads.
pub async fn run(
    client: kube::Client,
    cache: Arc<BindingCache>,
    metrics: Arc<Metrics>,
    mut leadership: Leadership,
    args: StatusArgs,
) {
    // A status computed before both watches listed everything would be wrong (a service
    // account not yet seen is "not found") and written only to be corrected.
    loop {
        let mut changed = std::pin::pin!(cache.work().notified());
        changed.as_mut().enable();
        if cache.is_fully_synced() {
            break;
        }
        changed.await;
    }
    let issuer = Arc::new(Issuer::new(args.issuer.clone()));
    issuer.follow(client.clone(), cache.clone()).await;
    let retries = Arc::new(Mutex::new(HashMap::new()));
    for _ in 0..args.status_concurrency.max(1) {
        tokio::spawn(worker(
            client.clone(),
            cache.clone(),
            metrics.clone(),
            leadership.clone(),
            retries.clone(),
            issuer.clone(),
        ));
    }
    loop {
        // A replica that does not lead keeps no work: it starts over with a full pass when
        // it becomes the leader.
        loop {
            let mut changed = std::pin::pin!(cache.work().notified());
            changed.as_mut().enable();
            if leadership.is_leader() {
                break;
            }
            cache.work().clear();
            tokio::select! {
                _ = changed => {}
                _ = leadership.leading() => {}
            }
        }
        cache.work().request_full_pass();
        leadership.lost().await;
        cache.work().clear();
    }
}

type Retries = Arc<Mutex<HashMap<Group, u32>>>;

async fn worker(
    client: kube::Client,
    cache: Arc<BindingCache>,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    retries: Retries,
    issuer: Arc<Issuer>,
) {
    let mut written = 0;
    loop {
        let mut changed = std::pin::pin!(cache.work().notified());
        changed.as_mut().enable();
        let groups = if leadership.is_leader() {
            cache.work().take(cache.store(), CHUNK)
        } else {
            Vec::new()
        };
        if groups.is_empty() {
            if written >= BURST {
                crate::memory::freed();
            }
            written = 0;
            changed.await;
            // Let the watches deliver the rest of a burst (a binding and its service account)
            // before computing.
            tokio::time::sleep(DEBOUNCE).await;
            continue;
        }
        let now = now();
        let issuer = issuer.get();
        let inputs = Inputs {
            now: &now,
            issuer: issuer.as_deref(),
        };
        for group in &groups {
            written += process(
                &client,
                &cache,
                &metrics,
                &leadership,
                &retries,
                group.clone(),
                inputs,
            )
            .await;
        }
        cache.work().done(&groups);
        metrics
            .conflicts
            .set(cache.store().counts().conflicts as i64);
    }
}

/// Computes one group's statuses and writes those that differ; returns the writes made.
async fn process(
    client: &kube::Client,
    cache: &Arc<BindingCache>,
    metrics: &Metrics,
    leadership: &Leadership,
    retries: &Retries,
    group: Group,
    inputs: Inputs<'_>,
) -> usize {
    let Some(state) = cache.store().group(&group) else {
        return 0;
    };
    let service_account = match &group {
        Group::Account {
            service_account, ..
        } => Some(service_account.as_str()),
        Group::Invalid { .. } => None,
    };
    let api: Api<WatchedBinding> = Api::namespaced(client.clone(), &state.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut written = 0;
    for p in status_writes(&state, inputs) {
        cache
            .store()
            .record_status(&state.namespace, &p.name, service_account, None, p.conflict);
        if !p.write || !leadership.is_leader() {
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": AWSRoleBinding::api_version(&()),
            "kind": AWSRoleBinding::kind(&()),
            "status": p.status,
        });
        match api
            .patch_status(&p.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(updated) => {
                written += 1;
                Metrics::result(&metrics.status_writes, true);
                tracing::info!(namespace = %state.namespace, binding = %p.name,
                    reason = %p.status.conditions.first().map_or("", |c| c.reason.as_str()),
                    "binding status updated");
                let held: Option<AWSRoleBindingStatus> =
                    updated.status.and_then(|s| serde_json::from_value(s).ok());
                cache.store().record_status(
                    &state.namespace,
                    &p.name,
                    service_account,
                    Some(Seen::of(held.as_ref())),
                    p.conflict,
                );
            }
            // Deleted meanwhile: the watch will tell.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                Metrics::result(&metrics.status_writes, false);
                let delay = retry_later(cache, retries, group);
                tracing::warn!(namespace = %state.namespace, binding = %p.name, %error,
                    retry_in = ?delay, "binding status update failed");
                return written;
            }
        }
    }
    retries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&group);
    written
}

/// Marks `group` for another pass after a backoff that doubles with its consecutive failures
/// (up to [`RETRY_MAX`]); returns the backoff.
fn retry_later(cache: &Arc<BindingCache>, retries: &Retries, group: Group) -> Duration {
    let attempt = {
        let mut r = retries.lock().unwrap_or_else(|e| e.into_inner());
        let n = r.entry(group.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let delay = Duration::from_secs(1 << attempt.min(5)).min(RETRY_MAX);
    let cache = cache.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        cache.work().mark(vec![group]);
    });
    delay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::store::Member;
    use crate::domain::binding::Binding;
    use crate::domain::status::ServiceAccountState;

    fn member(name: &str, seen: Seen) -> Member {
        Member {
            name: name.into(),
            generation: 1,
            spec: Ok(Binding {
                name: name.into(),
                service_account: "sa".into(),
                role_arn: "arn:aws:iam::123456789012:role/x".into(),
                ..Binding::default()
            }),
            seen,
        }
    }

    fn at(now: &str) -> Inputs<'_> {
        Inputs { now, issuer: None }
    }

    #[test]
    fn only_what_differs_from_the_api_server_is_written() {
        let group = GroupState {
            namespace: "ns".into(),
            members: vec![member("a", Seen::default())],
            account: ServiceAccountState::WorkloadIdentity("g@p.iam.gserviceaccount.com".into()),
        };
        let first = status_writes(&group, at("2026-11-22T10:00:00Z"));
        assert!(first[0].write);
        assert!(!first[0].conflict);
        // The API server now holds exactly that: nothing to write, even later.
        let held = GroupState {
            members: vec![member("a", Seen::of(Some(&first[0].status)))],
            ..group.clone()
        };
        let again = status_writes(&held, at("2026-11-22T11:00:00Z"));
        assert!(!again[0].write, "{again:?}");
        assert_eq!(again[0].status, first[0].status);
        // A second binding of the same service account: both conflict, both are written.
        let tie = GroupState {
            members: vec![
                member("a", Seen::of(Some(&first[0].status))),
                member("b", Seen::default()),
            ],
            ..group
        };
        let both = status_writes(&tie, at("2026-11-22T12:00:00Z"));
        assert!(both.iter().all(|p| p.write && p.conflict), "{both:?}");
        // The transition time moves with the Ready flip only.
        assert_eq!(
            both[0].status.conditions[0].last_transition_time,
            "2026-11-22T12:00:00Z"
        );
    }
}
