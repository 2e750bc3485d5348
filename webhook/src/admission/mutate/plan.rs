//! Phase 2: which binding covers which container. The assignment is the same whatever the
//! bindings' deliveries; only "is this variable ours?" asks the delivery what it writes.

use rolebridge_contract::aws_env;

use super::delivery::{self, DeliveryCtx};
use super::gate::Gate;
use super::mesh::is_mesh_container;
use super::{
    ANNOTATION_ROLE, Assignment, Binding, Denial, DenyReason, KUBERNETES_TOKEN_MOUNT_PATH,
    KUBERNETES_TOKEN_VOLUME, TOKEN_MOUNT_PATH, TOKEN_VOLUME, Warnings, containers, is_agent,
};
use crate::domain::binding::Coverage;
use crate::domain::pod::{ContainerView, PodView};

/// Why a container that a binding covers is not planned.
enum LeftAlone {
    /// It sets identity variables of its own (these).
    OwnVars(Vec<&'static str>),
    /// Another volume is mounted at this token directory of rolebridge's.
    OwnMount(&'static str),
}

/// rolebridge's token directories and the volume it mounts at each.
const MOUNTS: [(&str, &str); 2] = [
    (TOKEN_MOUNT_PATH, TOKEN_VOLUME),
    (KUBERNETES_TOKEN_MOUNT_PATH, KUBERNETES_TOKEN_VOLUME),
];

fn left_alone(
    c: &ContainerView<'_>,
    cov: &Coverage<'_>,
    ctx: &DeliveryCtx<'_>,
) -> Option<LeftAlone> {
    let set = delivery::identity_vars_set(c);
    // Variables exactly as a covering binding's delivery writes them are ours (an earlier
    // pass), so an injected container is still recognised.
    if !set.is_empty()
        && !cov
            .candidates
            .iter()
            .any(|b| delivery::written_for(c, b, ctx))
    {
        return Some(LeftAlone::OwnVars(set));
    }
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    MOUNTS.into_iter().find_map(|(path, ours)| {
        mounts
            .iter()
            .any(|m| m.mount_path.as_str().trim_end_matches('/') == path && m.name.as_str() != ours)
            .then_some(LeftAlone::OwnMount(path))
    })
}

fn own_vars_message(container: &str, set: &[&str], not_applied: &str) -> String {
    let web_identity_only = set
        .iter()
        .all(|v| [aws_env::ROLE_ARN, aws_env::WEB_IDENTITY_TOKEN_FILE].contains(v));
    let vars = if web_identity_only {
        format!(
            "{} or {}",
            aws_env::ROLE_ARN,
            aws_env::WEB_IDENTITY_TOKEN_FILE
        )
    } else {
        set.join(" and ")
    };
    format!(
        "container {container:?} sets {vars} itself, so rolebridge left it alone ({not_applied})"
    )
}

fn not_applied(cov: &Coverage<'_>, resolved: Option<&Binding>) -> String {
    match resolved {
        Some(b) => format!("binding {:?} not applied to it", b.name),
        None => {
            let names: Vec<String> = cov.tier.iter().map(|b| format!("{:?}", b.name)).collect();
            format!("bindings {} not applied to it", names.join(" and "))
        }
    }
}

/// Whether container `name` can get a binding at all: not the agent, not skipped by the
/// annotation, and not the mesh's own unless a binding names it (it never calls AWS).
fn considered(name: &str, gate: &Gate<'_>, bindings: &[Binding]) -> bool {
    !is_agent(name)
        && !gate.skip_list.contains(&name)
        && (!is_mesh_container(name) || bindings.iter().any(|b| b.names(name)))
}

/// The containers that get a binding, in pod order; a denial for containers that tie.
pub(super) fn plan<'p>(
    pod: &'p PodView<'_>,
    namespace: &str,
    bindings: &'p [Binding],
    gate: &Gate<'_>,
    ctx: &DeliveryCtx<'_>,
    warnings: &mut Warnings,
) -> Result<Vec<Assignment<'p>>, Denial> {
    let mut planned = Vec::new();
    let mut ties: Vec<String> = Vec::new();
    let mut identities = delivery::Identities::default();
    for (kind, index, c) in containers(pod) {
        let name = c.name.as_str();
        if !considered(name, gate, bindings) {
            continue;
        }
        let cov = Coverage::of(bindings, name);
        if cov.is_empty() {
            continue;
        }
        let resolved = cov.resolve(gate.chosen_role);
        // The user's own configuration is decided before tie resolution: a container that
        // rolebridge leaves alone anyway must not get the pod denied over a tie.
        match left_alone(c, &cov, ctx) {
            Some(LeftAlone::OwnVars(set)) => {
                warnings.push(own_vars_message(name, &set, &not_applied(&cov, resolved)));
                continue;
            }
            Some(LeftAlone::OwnMount(path)) => {
                warnings.push(format!(
                    "container {name:?} already mounts something at {path}, so rolebridge left it alone ({})",
                    not_applied(&cov, resolved)
                ));
                continue;
            }
            None => {}
        }
        let Some(binding) = resolved else {
            let names: Vec<&str> = cov.tier.iter().map(|b| b.name.as_str()).collect();
            ties.push(format!(
                "container {name:?} is covered by bindings {}",
                names.join(" and ")
            ));
            continue;
        };
        let set = delivery::identity_vars_set(c);
        if !set.is_empty() && !delivery::written_for(c, binding, ctx) {
            // Ours, but for another covering binding (the bindings changed since the pod
            // was injected): env cannot be rewritten with `add`, so leave it as it is.
            warnings.push(own_vars_message(name, &set, &not_applied(&cov, resolved)));
            continue;
        }
        if c.env_var(aws_env::ACCESS_KEY_ID).is_some() {
            warnings.push(format!(
                "container {name:?} sets {}; AWS SDKs prefer static keys over {}, so role {} will not be used by it",
                aws_env::ACCESS_KEY_ID,
                delivery::describe(binding.delivery()),
                binding.final_role_arn()
            ));
        }
        planned.push(Assignment {
            kind,
            index,
            container: c,
            binding,
            identity: identities.of(binding, ctx),
        });
    }
    if !ties.is_empty() {
        return Err(Denial::new(
            DenyReason::Tie,
            format!(
                "{} for service account {:?} in namespace {namespace:?}, and nothing chooses between them. Resolve it: annotate the pod (template) with {ANNOTATION_ROLE}: <binding name>, or list the containers each binding is for in its spec.containers, or delete the extra binding.",
                ties.join("; "),
                pod.service_account()
            ),
        ));
    }
    Ok(planned)
}
