//! Pods of an Istio (or Cloud Service Mesh) namespace: where the agent goes so that its own
//! traffic to the GKE metadata server and to STS is not sent to a proxy that is not running yet.
//!
//! Istio redirects a pod's outbound traffic to its proxy with iptables rules, set up by the
//! `istio-init` init container, or (with the Istio CNI plugin) before any container starts,
//! checked by `istio-validation`. Traffic of the proxy's own user is never redirected. So:
//! - **native sidecar proxy** (`istio-proxy` is an init container with `restartPolicy: Always`):
//!   the agent goes right after it, so the proxy is up and the agent is meshed like the app.
//!   When Istio injects after rolebridge, it moves its own init containers (`istio-init` or
//!   `istio-validation`, then `istio-proxy`) to the front, which ends in the same order.
//! - **regular proxy container**: it only starts after every init container, the agent
//!   included, so the agent runs as the proxy's user (Istio's documented answer for init
//!   containers that need the network) and its traffic bypasses the redirection. When Istio
//!   injects after rolebridge, the reinvocation gives the agent already there that user.
//!
//! Istio's own containers are not covered by a binding that covers all containers: they never
//! call AWS, and an `istio-init` covered by an endpoint binding would deny legacy-mode pods.
//! A binding may still name them.

use serde::Deserialize;

use super::Kind;
use crate::domain::pod::{ContainerView, PodView};

/// Istio's proxy container, as a native sidecar (init container) or a regular container.
pub(super) const PROXY: &str = "istio-proxy";
/// The user Istio's proxy runs as unless its container says otherwise (`ProxyUID`).
pub(super) const DEFAULT_PROXY_UID: i64 = 1337;

/// Containers Istio injects: the proxy, and the init containers that set up (`istio-init`) or
/// check (`istio-validation`, with the CNI plugin) the traffic redirection.
pub(super) fn is_mesh_container(name: &str) -> bool {
    matches!(name, PROXY | "istio-init" | "istio-validation")
}

/// What the pod's mesh asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Mesh {
    /// Index of the native-sidecar proxy among the init containers: the agent goes after it.
    pub native_proxy: Option<usize>,
    /// The regular proxy container's user and group: the agent runs as them.
    pub proxy_user: Option<(i64, i64)>,
}

/// The two fields of a `securityContext` this reads.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct RunAs {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
}

impl RunAs {
    /// A container's `securityContext` user and group; nothing for one without, or unreadable.
    pub(super) fn of(c: &ContainerView<'_>) -> RunAs {
        c.security_context
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default()
    }
}

impl Mesh {
    pub(super) fn of(pod: &PodView<'_>) -> Mesh {
        let init = pod.spec.init_containers.as_deref().unwrap_or_default();
        let native_proxy = init.iter().position(|c| {
            c.name.as_str() == PROXY
                && c.restart_policy
                    .as_ref()
                    .is_some_and(|p| p.as_str() == "Always")
        });
        let proxy_user = pod
            .spec
            .containers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|c| c.name.as_str() == PROXY)
            .map(|c| {
                // Istio's proxy never runs as root in REDIRECT mode; a root or missing user
                // means Istio's default one.
                let run_as = RunAs::of(c);
                let uid = run_as
                    .run_as_user
                    .filter(|u| *u > 0)
                    .unwrap_or(DEFAULT_PROXY_UID);
                (uid, run_as.run_as_group.filter(|g| *g > 0).unwrap_or(uid))
            });
        Mesh {
            native_proxy,
            proxy_user,
        }
    }

    /// Where a new init container of rolebridge goes: right after the native proxy, else first.
    pub(super) fn init_index(&self) -> usize {
        self.native_proxy.map_or(0, |i| i + 1)
    }

    /// The agent container at (`kind`, `index`) starts before the native proxy: it was injected
    /// before Istio by an Istio that does not move its own containers to the front.
    pub(super) fn starts_before_proxy(&self, kind: Kind, index: usize) -> bool {
        kind == Kind::Init && self.native_proxy.is_some_and(|p| index < p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_is_found_as_a_native_sidecar_or_a_regular_container() {
        let mesh = |json: &str| Mesh::of(&PodView::from_json(json).unwrap());
        let native = mesh(
            r#"{"spec":{"initContainers":[{"name":"istio-init"},{"name":"istio-proxy","restartPolicy":"Always"}],"containers":[{"name":"app"}]}}"#,
        );
        assert_eq!(native.native_proxy, Some(1));
        assert_eq!(native.init_index(), 2);
        assert_eq!(native.proxy_user, None);
        let legacy = mesh(
            r#"{"spec":{"containers":[{"name":"app"},{"name":"istio-proxy","securityContext":{"runAsUser":1400,"runAsGroup":1401}}]}}"#,
        );
        assert_eq!(legacy.native_proxy, None);
        assert_eq!(legacy.init_index(), 0);
        assert_eq!(legacy.proxy_user, Some((1400, 1401)));
        for sc in [
            "",
            r#","securityContext":{}"#,
            r#","securityContext":{"runAsUser":0}"#,
        ] {
            let json = format!(r#"{{"spec":{{"containers":[{{"name":"istio-proxy"{sc}}}]}}}}"#);
            assert_eq!(mesh(&json).proxy_user, Some((1337, 1337)), "{sc}");
        }
        // An init container named istio-proxy that is not a sidecar is not the proxy.
        let odd = mesh(r#"{"spec":{"initContainers":[{"name":"istio-proxy"}]}}"#);
        assert_eq!(odd, Mesh::default());
    }
}
