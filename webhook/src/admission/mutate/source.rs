//! Every rule that differs between the two token sources (`spec.tokenSource`), in one place:
//! where a covered container's web identity token comes from, the Google identity the agent is
//! pinned to, the projected volume of Kubernetes tokens, and what the host network allows.
//!
//! - **Google**: the agent fetches Google ID tokens from the GKE metadata server into the
//!   in-memory volume. It is told the Google service account the pod's service account names
//!   ([`pin`]) and refuses tokens of any other account: on the host network, or on a node
//!   without the GKE metadata server, the metadata server answers as the node.
//! - **Kubernetes**: the kubelet projects the pod's own service account token for the binding's
//!   audience into [`KUBERNETES_TOKEN_VOLUME`] and rotates it in place. Web identity needs no
//!   agent at all; the credentials endpoint's agent reads the file for every exchange.

use std::collections::BTreeMap;

use rolebridge_contract::{
    GooglePin, KUBERNETES_TOKEN_MOUNT_PATH, TOKEN_MOUNT_PATH, token_file_name,
};
use serde::Deserialize;

use super::delivery::DeliveryCtx;
use super::{
    Assignment, Binding, Delivery, Denial, DenyReason, KUBERNETES_TOKEN_VOLUME, TOKEN_VOLUME,
    Warnings,
};
use crate::admission::json::Json;
use crate::domain::binding::TokenSource;
use crate::domain::pod::PodView;
use crate::domain::status::{GSA_ANNOTATION, ServiceAccountState};

/// The volume and directory a covered container mounts for `b`: the projected Kubernetes
/// tokens for web identity with `tokenSource: Kubernetes`, the in-memory volume (Google tokens,
/// or the endpoint's authorization token) otherwise.
pub(super) fn mount(b: &Binding) -> (&'static str, &'static str) {
    match (b.delivery(), b.token_source) {
        (Delivery::WebIdentity, TokenSource::Kubernetes) => {
            (KUBERNETES_TOKEN_VOLUME, KUBERNETES_TOKEN_MOUNT_PATH)
        }
        _ => (TOKEN_VOLUME, TOKEN_MOUNT_PATH),
    }
}

/// `"a", "b"`: the names of the planned bindings that match, once each, for messages.
fn names(planned: &[Assignment<'_>], which: impl Fn(&Binding) -> bool) -> String {
    let mut names: Vec<String> = Vec::new();
    for p in planned.iter().filter(|p| which(p.binding)) {
        let quoted = format!("{:?}", p.binding.name);
        if !names.contains(&quoted) {
            names.push(quoted);
        }
    }
    names.join(", ")
}

/// A binding whose agent asks the GKE metadata server for Google ID tokens.
pub(super) fn is_google(b: &Binding) -> bool {
    b.token_source == TokenSource::Google
}

/// A host-network pod reaches the node's metadata server, which answers as the node's Google
/// service account: Google-source web identity is denied there (the endpoint's own
/// host-network rule comes first, in `render`), Kubernetes tokens work.
pub(super) fn host_network(pod: &PodView<'_>, planned: &[Assignment<'_>]) -> Result<(), Denial> {
    if pod.spec.host_network != Some(true) || !planned.iter().any(|p| is_google(p.binding)) {
        return Ok(());
    }
    Err(Denial::new(
        DenyReason::HostNetwork,
        format!(
            "this pod uses hostNetwork: true, and binding {} gets its web identity token from the GKE metadata server (tokenSource: Google); on the host network that is the node's metadata server, which answers as the node's Google service account, not as the one of service account {:?} (GKE Workload Identity does not cover host-network pods). Set tokenSource: Kubernetes on the binding: web identity with the pod's own projected service account token works on the host network. Or run the pod without hostNetwork.",
            names(planned, is_google),
            pod.service_account()
        ),
    ))
}

/// The Google service account the agent must act as, from what the webhook knows of the pod's
/// service account: its annotation, or a pin that refuses every token (with a warning) when it
/// names none. A service account the webhook could not read denies the pod: an unpinned agent
/// could act as the node.
pub(super) fn pin(
    account: &ServiceAccountState,
    namespace: &str,
    pod: &PodView<'_>,
    planned: &[Assignment<'_>],
    warnings: &mut Warnings,
) -> Result<GooglePin, Denial> {
    let sa = pod.service_account();
    let google = || names(planned, is_google);
    let gsa = match account {
        ServiceAccountState::WorkloadIdentity(gsa) => gsa.as_str(),
        ServiceAccountState::NoWorkloadIdentity => {
            warnings.push(not_configured(namespace, sa, &google(), None));
            return Ok(GooglePin::NotConfigured);
        }
        ServiceAccountState::Missing => {
            return Err(Denial::new(
                DenyReason::ServiceAccountUnknown,
                format!(
                    "rolebridge could not read ServiceAccount {namespace}/{sa}, so it cannot pin the Google service account the agent must act as (binding {} uses tokenSource: Google), and an agent without the pin could act as the node's identity. Retry the pod: controllers (Deployments, Jobs, ...) retry pod creation by themselves.",
                    google()
                ),
            ));
        }
    };
    match gsa.parse::<GooglePin>() {
        Ok(pin @ GooglePin::Email(_)) => Ok(pin),
        _ => {
            warnings.push(not_configured(namespace, sa, &google(), Some(gsa)));
            Ok(GooglePin::NotConfigured)
        }
    }
}

/// The warning for a Google-source pod whose service account names no (usable) Google service
/// account: what to run to set it up, and the alternative.
fn not_configured(namespace: &str, sa: &str, bindings: &str, value: Option<&str>) -> String {
    let what = match value {
        None => format!("has no {GSA_ANNOTATION} annotation"),
        Some(v) => {
            format!("has {GSA_ANNOTATION}={v:?}, which is not a Google service account email")
        }
    };
    format!(
        "service account {namespace}/{sa} {what}, so binding {bindings} (tokenSource: Google) gets no Google ID token: the agent refuses every token and fails with this advice until it is set up. Allow it: `gcloud iam service-accounts add-iam-policy-binding GSA_NAME@PROJECT_ID.iam.gserviceaccount.com --role roles/iam.workloadIdentityUser --member \"serviceAccount:PROJECT_ID.svc.id.goog[{namespace}/{sa}]\"`, then `kubectl annotate serviceaccount {sa} --namespace {namespace} {GSA_ANNOTATION}=GSA_NAME@PROJECT_ID.iam.gserviceaccount.com` and recreate the pod. Or set tokenSource: Kubernetes on the binding to present the pod's own Kubernetes service account token instead."
    )
}

/// The projected token file of each audience of the planned Kubernetes-source bindings, by
/// file name (so every replica renders the same volume).
pub(super) fn projected_tokens<'p>(
    planned: &'p [Assignment<'_>],
    ctx: &'p DeliveryCtx<'_>,
) -> BTreeMap<String, &'p str> {
    planned
        .iter()
        .filter(|p| p.binding.token_source == TokenSource::Kubernetes)
        .map(|p| {
            let audience = p.binding.audience_or(&ctx.cfg.default_audience);
            (token_file_name(audience), audience)
        })
        .collect()
}

/// The projected volume of the pod's Kubernetes tokens: one `serviceAccountToken` source per
/// audience, with the configured lifetime (the kubelet renews a token at 80% of it).
pub(super) fn projected_volume(
    out: &mut Json,
    tokens: &BTreeMap<String, &str>,
    ctx: &DeliveryCtx<'_>,
) {
    let expiration = ctx.cfg.kubernetes_token_expiration.as_secs();
    out.object(|o| {
        o.fixed("name", KUBERNETES_TOKEN_VOLUME)
            .field("projected", |out| {
                out.object(|o| {
                    o.field("sources", |out| {
                        out.array(tokens, |out, (path, audience)| {
                            out.object(|o| {
                                o.field("serviceAccountToken", |out| {
                                    out.object(|o| {
                                        o.str("audience", audience)
                                            .int("expirationSeconds", expiration)
                                            .str("path", path);
                                    });
                                });
                            });
                        });
                    });
                });
            });
    });
}

/// The file names an existing projected volume (an earlier injection) holds.
pub(super) fn projected_paths(raw: &serde_json::value::RawValue) -> Vec<String> {
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Projected {
        sources: Vec<Source>,
    }
    #[derive(Default, Deserialize)]
    #[serde(default, rename_all = "camelCase")]
    struct Source {
        service_account_token: Option<Token>,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Token {
        path: String,
    }
    let projected: Projected = serde_json::from_str(raw.get()).unwrap_or_default();
    projected
        .sources
        .into_iter()
        .filter_map(|s| s.service_account_token.map(|t| t.path))
        .collect()
}
