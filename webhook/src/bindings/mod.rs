//! The bindings state: what the cluster holds, kept in memory, and the status written back.
//!
//! - [`store`]: bindings and service accounts, packed; the one lookup by (namespace, service
//!   account).
//! - [`cache`]: the watches that feed the store; what admissions and the status controller ask.
//! - [`live`]: rate-limited live reads on a cache miss (bindings, or the service account a
//!   Google-source pod is pinned to), covering the watches' lag.
//! - [`work`]: the queue of binding groups whose status may have changed.
//! - [`watch`]: watches that relist at once on `410 Gone` and back off briefly otherwise.
//! - [`status_controller`]: recomputes and writes the status of the bindings a change touched.
//! - [`issuer`]: the cluster's service account issuer (flag, or discovered), for the status of
//!   `tokenSource: Kubernetes` bindings.
//! - [`lease`]: the election of the one replica that writes status.
//! - [`nodes`]: the lowest kubelet version among the nodes, for `--sidecar-mode auto`.

pub mod cache;
pub(crate) mod issuer;
pub mod lease;
pub mod live;
pub mod nodes;
pub mod status_controller;
pub mod store;
pub(crate) mod watch;
pub(crate) mod work;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// A resource the webhook calls the API server about, and the RBAC verbs those calls need.
/// Each module declares its own next to its calls; the stub API server's test
/// (`tests/api_access.rs`) holds the calls the code makes to these declarations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiAccess {
    pub group: &'static str,
    /// The plural, with `/subresource` where one is called.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Only in the webhook's own namespace (a Role), not in every namespace (a ClusterRole).
    pub own_namespace: bool,
}

/// A non-resource URL the webhook calls on the API server, and the verbs it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NonResourceAccess {
    pub url: &'static str,
    pub verbs: &'static [&'static str],
    /// The default ClusterRole (bound by Kubernetes itself) that already grants it, if any.
    pub granted_by: Option<&'static str>,
}

/// The non-resource URLs the webhook calls, as `rbac --json` prints them (`nonResourceURLs`).
pub fn rbac_non_resource() -> Vec<NonResourceAccess> {
    vec![issuer::DISCOVERY]
}

/// One RBAC rule the webhook needs, as `rolebridge-webhook rbac --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RbacRule {
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: BTreeSet<&'static str>,
    pub own_namespace: bool,
    /// The flag setting under which the webhook makes these calls (e.g. `--sidecar-mode auto`);
    /// absent: always.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_with: Option<&'static str>,
}

/// Everything the webhook calls on the API server, merged by resource, scope and condition, in
/// a stable order: the RBAC it must be granted, no more and no less.
pub fn rbac_rules() -> Vec<RbacRule> {
    let always = cache::WATCHES
        .iter()
        .chain([
            &live::LIVE_READ,
            &live::LIVE_ACCOUNT_READ,
            &status_controller::STATUS_WRITE,
            &lease::LEASE_ACCESS,
        ])
        .map(|a| (a, None));
    let declared = always.chain([(&nodes::NODE_WATCH, Some(nodes::NODE_WATCH_ONLY_WITH))]);
    type Key<'a> = (bool, &'a str, &'a str, Option<&'a str>);
    let mut merged: BTreeMap<Key<'static>, BTreeSet<&str>> = BTreeMap::new();
    for (a, only_with) in declared {
        merged
            .entry((a.own_namespace, a.group, a.resource, only_with))
            .or_default()
            .extend(a.verbs);
    }
    merged
        .into_iter()
        .map(
            |((own_namespace, api_group, resource, only_with), verbs)| RbacRule {
                api_group,
                resource,
                verbs,
                own_namespace,
                only_with,
            },
        )
        .collect()
}
