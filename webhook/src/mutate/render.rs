//! Phase 4: the JSON patch for a plan.
//!
//! JSON-patch ops are applied in order, so per-container ops (which use the original indexes)
//! come before the insertions at index 0, which shift them.

use std::fmt::Write as _;

use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use rolebridge_contract::{AGENT_UID, AgentArgs, TOKEN_MOUNT_PATH, subcommand};
use serde_json::{Value, json};

use super::delivery::{self, Ctx};
use super::plan::Planned;
use super::{
    AGENT_CONTAINER, AGENT_INIT_CONTAINER, ANNOTATION_APPLIED, Config, Denial, SidecarMode,
    TOKEN_VOLUME, TOKEN_VOLUME_SIZE_LIMIT, Warnings, containers, is_agent, reserved,
};
use crate::pod::{ContainerView, PodView};

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// `add` to the end of an array, or create the array when the pod has none (JSON patch cannot
/// append to a missing array).
fn append(exists: bool, tokens: &[&str], item: Value) -> PatchOperation {
    if exists {
        let mut t = tokens.to_vec();
        t.push("-");
        add(&t, item)
    } else {
        add(tokens, Value::Array(vec![item]))
    }
}

fn insert_first(exists: bool, field: &str, item: Value) -> PatchOperation {
    if exists {
        add(&["spec", field, "0"], item)
    } else {
        add(&["spec", field], Value::Array(vec![item]))
    }
}

/// The whole patch: covered containers, the token volume, the agent, the bindings annotation.
pub(super) fn render(
    pod: &PodView<'_>,
    planned: &[Planned],
    ctx: &Ctx,
    warnings: &mut Warnings,
) -> Result<Vec<PatchOperation>, Denial> {
    let mut patch = Vec::new();
    for p in planned {
        container_ops(&mut patch, p, ctx);
    }
    if !reserved::has_token_volume(pod) {
        let volume = json!({
            "name": TOKEN_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": TOKEN_VOLUME_SIZE_LIMIT},
        });
        patch.push(append(
            pod.spec.volumes.is_some(),
            &["spec", "volumes"],
            volume,
        ));
    }
    let args = delivery::agent_args(planned, ctx);
    agent_ops(&mut patch, warnings, pod, ctx.cfg, &args);
    annotation_ops(&mut patch, pod, planned);
    Ok(patch)
}

fn container_ops(patch: &mut Vec<PatchOperation>, p: &Planned, ctx: &Ctx) {
    let c = p.container;
    let idx = p.index.to_string();
    let base = ["spec", p.kind.field(), idx.as_str()];
    let mut env = delivery::container_env(p.binding, ctx);
    // A variable the container already defines is the user's (or ours from an earlier pass).
    env.retain(|e| c.env_var(e["name"].as_str().unwrap_or_default()).is_none());
    if !env.is_empty() {
        if c.env.is_some() {
            for e in env {
                patch.push(add(&[base[0], base[1], base[2], "env", "-"], e));
            }
        } else {
            patch.push(add(&[base[0], base[1], base[2], "env"], Value::Array(env)));
        }
    }
    let mounted = c
        .volume_mounts
        .as_deref()
        .is_some_and(|m| m.iter().any(|m| m.name.as_str() == TOKEN_VOLUME));
    if !mounted {
        let mount = json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true});
        patch.push(append(
            c.volume_mounts.is_some(),
            &[base[0], base[1], base[2], "volumeMounts"],
            mount,
        ));
    }
}

fn security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn agent_container(name: &str, cfg: &Config, args: Vec<String>) -> Value {
    json!({
        "name": name,
        "image": cfg.agent_image,
        "imagePullPolicy": cfg.agent_image_pull_policy,
        "args": args,
        "resources": {
            "requests": {"cpu": "5m", "memory": "8Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        "securityContext": security_context(),
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The long-running agent: `run` with everything it serves, and its environment.
fn sidecar(cfg: &Config, args: &AgentArgs) -> Value {
    let mut agent = agent_container(AGENT_CONTAINER, cfg, args.args(subcommand::RUN));
    if let Some(env) = delivery::agent_env(args, cfg) {
        agent["env"] = env;
    }
    agent
}

fn check_probe(args: &AgentArgs, period: u32, failures: u32) -> Value {
    json!({
        "exec": {"command": args.check_command()},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    })
}

fn agent_ops(
    patch: &mut Vec<PatchOperation>,
    warnings: &mut Warnings,
    pod: &PodView<'_>,
    cfg: &Config,
    args: &AgentArgs,
) {
    let existing: Vec<&ContainerView> = containers(pod)
        .map(|(_, _, c)| c)
        .filter(|c| is_agent(c.name.as_str()))
        .collect();
    if !existing.is_empty() {
        // Injected earlier (reinvocation, or a pod built from an injected manifest). Its
        // arguments cannot be changed by an `add`, so only report what it is missing.
        for what in delivery::missing_from_agent(args, &existing) {
            warnings.push(format!(
                "the agent container already in this pod does not serve {what}; recreate the pod from its un-injected spec"
            ));
        }
        return;
    }
    let has_init = pod.spec.init_containers.is_some();
    match cfg.sidecar_mode {
        SidecarMode::Native => {
            let mut agent = sidecar(cfg, args);
            agent["restartPolicy"] = json!("Always");
            // The kubelet starts the next init container and the app only once this succeeds,
            // i.e. once every token file holds a valid token.
            agent["startupProbe"] = check_probe(args, 1, 120);
            agent["livenessProbe"] = check_probe(args, 30, 4);
            patch.push(insert_first(has_init, "initContainers", agent));
        }
        SidecarMode::Legacy => {
            let first = agent_container(AGENT_INIT_CONTAINER, cfg, args.args(subcommand::INIT));
            let mut agent = sidecar(cfg, args);
            agent["livenessProbe"] = check_probe(args, 30, 4);
            patch.push(append(
                pod.spec.containers.is_some(),
                &["spec", "containers"],
                agent,
            ));
            patch.push(insert_first(has_init, "initContainers", first));
            let owned_by_job = pod
                .metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o.kind.as_str() == "Job");
            if owned_by_job {
                warnings.push(
                    "legacy sidecar mode: the agent container keeps running, so this Job's pod will not complete on its own; use a cluster ≥ 1.29 with --sidecar-mode native",
                );
            }
        }
    }
}

fn annotation_ops(patch: &mut Vec<PatchOperation>, pod: &PodView<'_>, planned: &[Planned]) {
    let mut applied = String::new();
    for (i, p) in planned.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            applied,
            "{sep}{}={}",
            p.container.name.as_str(),
            p.binding.name
        );
    }
    match &pod.metadata.annotations {
        None => patch.push(add(
            &["metadata", "annotations"],
            json!({ ANNOTATION_APPLIED: applied }),
        )),
        Some(a) if a.get(ANNOTATION_APPLIED) != Some(applied.as_str()) => patch.push(add(
            &["metadata", "annotations", ANNOTATION_APPLIED],
            Value::String(applied),
        )),
        Some(_) => {}
    }
}
