//! Phase 4: the JSON patch for a plan, written as JSON text as it is decided (see
//! [`crate::admission::json`]).
//!
//! JSON-patch ops are applied in order, so per-container ops (which use the original indexes)
//! come before the insertions of new containers, which shift them.

use super::agent::{self, Existing};
use super::delivery::{self, DeliveryCtx};
use super::mesh::Mesh;
use super::patch::{self, Patch, PatchOut};
use super::source;
use super::{
    ANNOTATION_APPLIED, ANNOTATION_CREDENTIALS_PORT, ANNOTATION_SKIP_CONTAINERS, Assignment,
    Delivery, Denial, DenyReason, KUBERNETES_TOKEN_VOLUME, Kind, ServiceAccountState, SidecarMode,
    TOKEN_VOLUME, TOKEN_VOLUME_SIZE_LIMIT, Warnings, containers, is_agent, reserved,
};
use crate::admission::json::Json;
use crate::admission::json::Tok::{Field, Index, Key};
use crate::domain::pod::PodView;

/// The whole patch: covered containers, the token volumes, the agent, the bindings annotation.
pub(super) fn render(
    pod: &PodView<'_>,
    namespace: &str,
    planned: &[Assignment<'_>],
    account: &ServiceAccountState,
    ctx: &DeliveryCtx<'_>,
    warnings: &mut Warnings,
) -> Result<Patch, Denial> {
    let mut args = delivery::agent_args(planned, ctx);
    let endpoint = !args.credentials.is_empty();
    if endpoint {
        endpoint_checks(pod, planned, ctx)?;
    }
    source::host_network(pod, planned)?;
    let existing: Vec<Existing<'_>> = containers(pod)
        .filter(|(_, _, c)| is_agent(c.name.as_str()))
        .collect();
    if planned.iter().any(|p| source::is_google(p.binding)) {
        args.google_service_account = match (existing.is_empty(), account) {
            (true, _) => Some(source::pin(account, namespace, pod, planned, warnings)?),
            // An agent already there is held to the pin when the account is known; what it
            // lacks was told when it was injected.
            (false, ServiceAccountState::Missing) => None,
            (false, _) => {
                let mut told = Warnings::default();
                Some(source::pin(account, namespace, pod, planned, &mut told)?)
            }
        };
    }
    if endpoint && let Some(moved) = &ctx.port.moved {
        warnings.push(moved);
    }
    let mesh = Mesh::of(pod);
    let needs_agent = !args.tokens.is_empty() || endpoint;
    let mut patch = PatchOut::new(planned.len());
    for p in planned {
        container_ops(&mut patch, p, ctx);
    }
    if existing.is_empty() {
        volume_ops(&mut patch, pod, planned, ctx, needs_agent, warnings);
        if needs_agent {
            agent::agent_ops(&mut patch, warnings, pod, ctx.cfg, &args, &mesh);
        }
    } else {
        // Ops on the agent's own containers use their indexes: before any insertion.
        agent::existing_agent_ops(&mut patch, warnings, &existing, &args, &mesh);
        volume_ops(&mut patch, pod, planned, ctx, needs_agent, warnings);
    }
    let port = (endpoint && !ctx.port.annotated).then_some(ctx.port.number);
    annotation_ops(&mut patch, pod, planned, port);
    Ok(patch.finish())
}

/// The in-memory volume when the pod has an agent, the projected Kubernetes tokens when a
/// Kubernetes-source binding is planned; what an earlier injection's projected volume lacks
/// cannot be added to it by an `add` and is reported.
fn volume_ops(
    patch: &mut PatchOut,
    pod: &PodView<'_>,
    planned: &[Assignment<'_>],
    ctx: &DeliveryCtx<'_>,
    needs_agent: bool,
    warnings: &mut Warnings,
) {
    let mut exists = pod.spec.volumes.is_some();
    let mut push = |patch: &mut PatchOut, volume: &dyn Fn(&mut Json)| {
        patch.append(exists, &[Field("spec"), Field("volumes")], volume);
        exists = true;
    };
    if needs_agent && reserved::volume_named(pod, TOKEN_VOLUME).is_none() {
        push(patch, &|out| {
            out.object(|o| {
                o.field("emptyDir", |out| {
                    out.object(|o| {
                        o.fixed("medium", "Memory")
                            .fixed("sizeLimit", TOKEN_VOLUME_SIZE_LIMIT);
                    });
                })
                .fixed("name", TOKEN_VOLUME);
            });
        });
    }
    let tokens = source::projected_tokens(planned, ctx);
    if tokens.is_empty() {
        return;
    }
    let Some(earlier) = reserved::volume_named(pod, KUBERNETES_TOKEN_VOLUME) else {
        push(patch, &|out| source::projected_volume(out, &tokens, ctx));
        return;
    };
    let have = earlier
        .projected
        .map(source::projected_paths)
        .unwrap_or_default();
    for (path, audience) in &tokens {
        if !have.contains(path) {
            warnings.push(format!(
                "the volume {KUBERNETES_TOKEN_VOLUME:?} already in this pod does not project the token for audience {audience:?}; recreate the pod from its un-injected spec"
            ));
        }
    }
}

/// What makes the credentials endpoint unusable in this pod, as a denial.
fn endpoint_checks(
    pod: &PodView<'_>,
    planned: &[Assignment<'_>],
    ctx: &DeliveryCtx<'_>,
) -> Result<(), Denial> {
    let endpoint_bindings = || {
        let mut names: Vec<String> = planned
            .iter()
            .filter(|p| p.binding.delivery() == Delivery::CredentialsEndpoint)
            .map(|p| format!("{:?}", p.binding.name))
            .collect();
        names.dedup();
        names.join(", ")
    };
    if pod.spec.host_network == Some(true) {
        return Err(Denial::new(
            DenyReason::HostNetwork,
            format!(
                "this pod uses hostNetwork: true, and binding {} needs the in-pod credentials endpoint (it sets chain or durationSeconds), which would listen on the node's loopback where every host-network pod of the node could reach it. Run the pod without hostNetwork, or give its service account a binding without chain and durationSeconds (web identity needs no endpoint).",
                endpoint_bindings()
            ),
        ));
    }
    if let Some(problem) = &ctx.port.problem {
        return Err(Denial::new(
            DenyReason::CredentialsPort,
            format!(
                "{problem} (binding {} needs the credentials endpoint).",
                endpoint_bindings()
            ),
        ));
    }
    if ctx.cfg.sidecar_mode == SidecarMode::Legacy
        && let Some(p) = planned
            .iter()
            .find(|p| p.kind == Kind::Init && p.binding.delivery() == Delivery::CredentialsEndpoint)
    {
        return Err(Denial::new(
            DenyReason::LegacyInitContainer,
            format!(
                "init container {:?} is covered by binding {:?}, whose credentials the agent serves from its endpoint, but in legacy sidecar mode (clusters before Kubernetes 1.29) the agent runs beside the app containers only, after every init container has finished. Exclude the container with {ANNOTATION_SKIP_CONTAINERS}, cover it with a binding without chain and durationSeconds, or use native sidecars (--sidecar-mode native, Kubernetes 1.29 or later).",
                p.container.name.as_str(),
                p.binding.name
            ),
        ));
    }
    Ok(())
}

fn container_ops(patch: &mut PatchOut, p: &Assignment<'_>, ctx: &DeliveryCtx<'_>) {
    let c = p.container;
    let base = [Field("spec"), Field(p.kind.field()), Index(p.index)];
    let mut env = delivery::container_env(p, ctx);
    // A variable the container already defines is the user's (or ours from an earlier pass).
    env.retain(|e| c.env_var(e.name).is_none());
    if !env.is_empty() {
        if c.env.is_some() {
            let end = patch::pointer(&[base[0], base[1], base[2], Field("env"), Field("-")]);
            for e in &env {
                patch.add_at(&end, |out| e.write(out));
            }
        } else {
            patch.add(&[base[0], base[1], base[2], Field("env")], |out| {
                out.array(&env, |out, e| e.write(out));
            });
        }
    }
    let (volume, path) = source::mount(p.binding);
    let mounted = c
        .volume_mounts
        .as_deref()
        .is_some_and(|m| m.iter().any(|m| m.name.as_str() == volume));
    if !mounted {
        patch.append(
            c.volume_mounts.is_some(),
            &[base[0], base[1], base[2], Field("volumeMounts")],
            |out| {
                out.object(|o| {
                    o.fixed("mountPath", path)
                        .fixed("name", volume)
                        .bool("readOnly", true);
                });
            },
        );
    }
}

/// `rolebridge.io/bindings` always, and the endpoint's port when rolebridge chose it.
fn annotation_ops(
    patch: &mut PatchOut,
    pod: &PodView<'_>,
    planned: &[Assignment<'_>],
    port: Option<u16>,
) {
    let mut applied = String::with_capacity(64 * planned.len());
    for (i, p) in planned.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        for part in [sep, p.container.name.as_str(), "=", &p.binding.name] {
            applied.push_str(part);
        }
    }
    let port = port.map(|p| p.to_string());
    let ours = [
        (ANNOTATION_APPLIED, Some(applied.as_str())),
        (ANNOTATION_CREDENTIALS_PORT, port.as_deref()),
    ];
    let ours = ours.iter().filter_map(|(k, v)| Some((*k, (*v)?)));
    let new_map = |out: &mut Json| {
        out.object(|o| {
            for (k, v) in ours.clone() {
                o.str(k, v);
            }
        });
    };
    match &pod.metadata.annotations {
        // A JSON patch cannot add below a missing parent: no metadata at all gets the whole map.
        None if !pod.metadata.present => patch.add(&[Field("metadata")], |out| {
            out.object(|o| {
                o.field("annotations", new_map);
            });
        }),
        None => patch.add(&[Field("metadata"), Field("annotations")], new_map),
        Some(a) => {
            let mut wrote = false;
            for (k, v) in ours.clone() {
                if a.get(k) != Some(v) {
                    patch.add(&[Field("metadata"), Field("annotations"), Key(k)], |out| {
                        out.str(v);
                    });
                    wrote |= k == ANNOTATION_APPLIED;
                }
            }
            if !wrote {
                return;
            }
        }
    }
    patch.applies(applied);
}
