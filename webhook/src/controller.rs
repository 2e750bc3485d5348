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
//! Writes are server-side applies to the status subresource under one field manager, queued
//! per binding (a newer status replaces a queued one, so a burst writes each binding once) and
//! sent by `--status-concurrency` workers; failures are retried with backoff. Only the replica
//! holding the status Lease writes ([`crate::lease`]); a new leader starts with a full pass.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource as _;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Notify;

use crate::cache::{BindingCache, WatchedBinding};
use crate::crd::{AWSRoleBinding, AWSRoleBindingStatus};
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::status::{self, BindingState};
use crate::store::{GroupState, Seen, fingerprint};

pub const FIELD_MANAGER: &str = "rolebridge-webhook";
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
}

/// A status to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
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

/// The status of every binding of a group, and which of them need a write.
pub fn plan(group: &GroupState, now: &str) -> Vec<Planned> {
    let current: Vec<Option<AWSRoleBindingStatus>> =
        group.members.iter().map(|m| m.seen.as_status()).collect();
    let states: Vec<BindingState> = group
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
    let wanted = status::desired(&states, |_, _| group.account.clone(), now);
    group
        .members
        .iter()
        .zip(wanted.into_iter().zip(current))
        .filter_map(|(m, (want, current))| {
            // `desired` compares with what we know of the current status, which is only its
            // Ready condition: None means exactly that, i.e. nothing else was ever written.
            let status = want.or(current)?;
            let conflict = status.conditions.iter().any(|c| c.reason == "Conflict");
            Some(Planned {
                name: m.name.clone(),
                write: fingerprint(&status) != m.seen.fingerprint,
                status,
                conflict,
            })
        })
        .collect()
}

type Key = (Arc<str>, String);

struct Want {
    status: AWSRoleBindingStatus,
    service_account: Option<String>,
    conflict: bool,
    attempts: u32,
}

/// Statuses waiting to be written, one per binding.
#[derive(Default)]
struct Queue {
    inner: Mutex<(VecDeque<Key>, HashMap<Key, Want>)>,
    ready: Notify,
}

impl Queue {
    fn offer(&self, key: Key, want: Want) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if q.1.insert(key.clone(), want).is_none() {
            q.0.push_back(key);
        }
        drop(q);
        self.ready.notify_one();
    }

    fn clear(&self) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.0.clear();
        q.1.clear();
    }

    async fn next(&self) -> (Key, Want) {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(key) = q.0.pop_front() {
                    if let Some(want) = q.1.remove(&key) {
                        if !q.0.is_empty() {
                            // Let another worker take the next one.
                            self.ready.notify_one();
                        }
                        return (key, want);
                    }
                }
            }
            notified.await;
        }
    }
}

/// Runs until the process ends: computes the statuses of changed groups and writes them while
/// this replica leads.
pub async fn run(
    client: kube::Client,
    cache: Arc<BindingCache>,
    metrics: Arc<Metrics>,
    mut leadership: Leadership,
    args: StatusArgs,
) {
    // A status computed before both watches listed everything would be wrong (a service
    // account not yet seen is "not found") and written only to be corrected.
    while !cache.is_fully_synced() {
        cache.changed.notified().await;
    }
    let queue = Arc::new(Queue::default());
    for _ in 0..args.status_concurrency.max(1) {
        tokio::spawn(writer(
            client.clone(),
            queue.clone(),
            cache.clone(),
            metrics.clone(),
            leadership.clone(),
        ));
    }
    loop {
        leadership.leading().await;
        cache.mark_all_dirty();
        loop {
            let groups = cache.take_dirty();
            let now = now();
            for group in groups {
                let Some(state) = cache.store().group(&group) else {
                    continue;
                };
                let service_account = match &group {
                    crate::store::Group::Account {
                        service_account, ..
                    } => Some(service_account.clone()),
                    crate::store::Group::Invalid { .. } => None,
                };
                for p in plan(&state, &now) {
                    cache.store().record_status(
                        &state.namespace,
                        &p.name,
                        service_account.as_deref(),
                        None,
                        p.conflict,
                    );
                    if p.write {
                        queue.offer(
                            (state.namespace.clone(), p.name),
                            Want {
                                status: p.status,
                                service_account: service_account.clone(),
                                conflict: p.conflict,
                                attempts: 0,
                            },
                        );
                    }
                }
            }
            metrics
                .conflicts
                .set(cache.store().counts().conflicts as i64);
            tokio::select! {
                _ = cache.changed.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = leadership.lost() => {
                    queue.clear();
                    break;
                }
            }
        }
    }
}

async fn writer(
    client: kube::Client,
    queue: Arc<Queue>,
    cache: Arc<BindingCache>,
    metrics: Arc<Metrics>,
    leadership: Leadership,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    loop {
        let ((namespace, name), want) = queue.next().await;
        if !leadership.is_leader() {
            continue;
        }
        let api: Api<WatchedBinding> = Api::namespaced(client.clone(), &namespace);
        let body = serde_json::json!({
            "apiVersion": AWSRoleBinding::api_version(&()),
            "kind": AWSRoleBinding::kind(&()),
            "status": want.status,
        });
        match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            Ok(written) => {
                Metrics::result(&metrics.status_writes, true);
                tracing::info!(namespace = %namespace, binding = %name,
                    reason = %want.status.conditions.first().map_or("", |c| c.reason.as_str()),
                    "binding status updated");
                let held: Option<AWSRoleBindingStatus> =
                    written.status.and_then(|s| serde_json::from_value(s).ok());
                cache.store().record_status(
                    &namespace,
                    &name,
                    want.service_account.as_deref(),
                    Some(Seen::of(held.as_ref())),
                    want.conflict,
                );
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                Metrics::result(&metrics.status_writes, false);
                let delay = Duration::from_secs(1 << want.attempts.min(5)).min(RETRY_MAX);
                tracing::warn!(namespace = %namespace, binding = %name, %error, retry_in = ?delay,
                    "binding status update failed");
                let queue = queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let retry = Want {
                        attempts: want.attempts + 1,
                        ..want
                    };
                    // A newer status for the same binding, queued meanwhile, wins.
                    let mut q = queue.inner.lock().unwrap_or_else(|e| e.into_inner());
                    let key = (namespace, name);
                    if !q.1.contains_key(&key) {
                        q.1.insert(key.clone(), retry);
                        q.0.push_back(key);
                        drop(q);
                        queue.ready.notify_one();
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::Binding;
    use crate::status::ServiceAccountState;
    use crate::store::Member;

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

    #[test]
    fn only_what_differs_from_the_api_server_is_written() {
        let group = GroupState {
            namespace: "ns".into(),
            members: vec![member("a", Seen::default())],
            account: ServiceAccountState::WorkloadIdentity("g@p.iam.gserviceaccount.com".into()),
        };
        let first = plan(&group, "2026-11-22T10:00:00Z");
        assert!(first[0].write);
        assert!(!first[0].conflict);
        // The API server now holds exactly that: nothing to write, even later.
        let held = GroupState {
            members: vec![member("a", Seen::of(Some(&first[0].status)))],
            ..group.clone()
        };
        let again = plan(&held, "2026-11-22T11:00:00Z");
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
        let both = plan(&tie, "2026-11-22T12:00:00Z");
        assert!(both.iter().all(|p| p.write && p.conflict), "{both:?}");
        // The transition time moves with the Ready flip only.
        assert_eq!(
            both[0].status.conditions[0].last_transition_time,
            "2026-11-22T12:00:00Z"
        );
    }
}
