//! Phase 4: the JSON patch for a plan.
//!
//! JSON-patch ops are applied in order, so per-container ops (which use the original indexes)
//! come before the insertions at index 0, which shift them.

use std::fmt::Write as _;
use std::time::Duration;

use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use rolebridge_contract::{AGENT_UID, AgentArgs, TOKEN_MOUNT_PATH, subcommand};
use serde_json::{Value, json};

use super::delivery::{self, DeliveryCtx};
use super::{
    AGENT_CONTAINER, AGENT_INIT_CONTAINER, ANNOTATION_APPLIED, ANNOTATION_CREDENTIALS_PORT,
    ANNOTATION_SKIP_CONTAINERS, Assignment, Config, Delivery, Denial, DenyReason, Kind,
    SidecarMode, TOKEN_VOLUME, TOKEN_VOLUME_SIZE_LIMIT, Warnings, containers, is_agent, reserved,
};
use crate::domain::pod::{ContainerView, PodView};

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
    planned: &[Assignment<'_>],
    ctx: &DeliveryCtx<'_>,
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
    let endpoint = !args.credentials.is_empty();
    if endpoint {
        endpoint_checks(pod, planned, ctx)?;
        if let Some(moved) = &ctx.port.moved {
            warnings.push(moved);
        }
    }
    agent_ops(&mut patch, warnings, pod, ctx.cfg, &args);
    let port = (endpoint && !ctx.port.annotated).then_some(ctx.port.number);
    annotation_ops(&mut patch, pod, planned, port);
    Ok(patch)
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

fn container_ops(patch: &mut Vec<PatchOperation>, p: &Assignment<'_>, ctx: &DeliveryCtx<'_>) {
    let c = p.container;
    let idx = p.index.to_string();
    let base = ["spec", p.kind.field(), idx.as_str()];
    let mut env = delivery::container_env(p, ctx);
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
    let existing: Vec<&ContainerView<'_>> = containers(pod)
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
            // i.e. once every token file holds a valid token and the endpoint has credentials.
            agent["startupProbe"] = check_probe(args, 1, STARTUP_BUDGET_SECONDS);
            agent["livenessProbe"] = check_probe(args, 30, 4);
            patch.push(insert_first(has_init, "initContainers", agent));
        }
        SidecarMode::Legacy => legacy_agent_ops(patch, pod, cfg, args, has_init),
    }
    let owned_by_job = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.kind.as_str() == "Job");
    if cfg.sidecar_mode == SidecarMode::Legacy && owned_by_job {
        warnings.push(
            "legacy sidecar mode: the agent container keeps running, so this Job's pod will not complete on its own; use a cluster ≥ 1.29 with --sidecar-mode native",
        );
    }
}

/// How long the agent may take to get every token and credential before the app starts anyway
/// (native: the startup probe's budget; legacy: the `postStart` hook's wait).
const STARTUP_BUDGET_SECONDS: u32 = 120;

/// Clusters without native sidecars: a one-shot init container writes the tokens before any
/// other container starts, and a regular sidecar keeps them fresh. With a credentials endpoint
/// the sidecar goes first in `spec.containers` with a `postStart` hook that waits for it: the
/// kubelet starts containers in order and runs the next one only after this hook returns, so
/// the app containers start once the endpoint has credentials.
fn legacy_agent_ops(
    patch: &mut Vec<PatchOperation>,
    pod: &PodView<'_>,
    cfg: &Config,
    args: &AgentArgs,
    has_init: bool,
) {
    let has_app = pod.spec.containers.is_some();
    let mut agent = sidecar(cfg, args);
    agent["livenessProbe"] = check_probe(args, 30, 4);
    let init_args = AgentArgs {
        tokens: args.tokens.clone(),
        ..AgentArgs::default()
    };
    if args.credentials.is_empty() {
        patch.push(append(has_app, &["spec", "containers"], agent));
    } else {
        let wait = args.wait_command(Duration::from_secs(STARTUP_BUDGET_SECONDS.into()));
        agent["lifecycle"] = json!({"postStart": {"exec": {"command": wait}}});
        patch.push(insert_first(has_app, "containers", agent));
    }
    if !init_args.tokens.is_empty() {
        let first = agent_container(AGENT_INIT_CONTAINER, cfg, init_args.args(subcommand::INIT));
        patch.push(insert_first(has_init, "initContainers", first));
    }
}

/// The `container=binding` pairs a patch writes into `rolebridge.io/bindings`, wherever
/// [`annotation_ops`] put them; `None` when the patch leaves the pod's annotation as it was.
pub(super) fn applied_by(patch: &[PatchOperation]) -> Option<&str> {
    patch.iter().rev().find_map(|op| {
        let PatchOperation::Add(a) = op else {
            return None;
        };
        match a.path.as_str() {
            "/metadata" => a.value["annotations"][ANNOTATION_APPLIED].as_str(),
            "/metadata/annotations" => a.value[ANNOTATION_APPLIED].as_str(),
            p if p.starts_with("/metadata/annotations/")
                && a.path.count() == 3
                && a.path
                    .last()
                    .is_some_and(|t| t.decoded() == ANNOTATION_APPLIED) =>
            {
                a.value.as_str()
            }
            _ => None,
        }
    })
}

/// `rolebridge.io/bindings` always, and the endpoint's port when rolebridge chose it.
fn annotation_ops(
    patch: &mut Vec<PatchOperation>,
    pod: &PodView<'_>,
    planned: &[Assignment<'_>],
    port: Option<u16>,
) {
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
    let mut ours = vec![(ANNOTATION_APPLIED, applied)];
    if let Some(port) = port {
        ours.push((ANNOTATION_CREDENTIALS_PORT, port.to_string()));
    }
    let new_map = |ours: Vec<(&str, String)>| {
        let map: serde_json::Map<String, Value> = ours
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        Value::Object(map)
    };
    match &pod.metadata.annotations {
        // A JSON patch cannot add below a missing parent: no metadata at all gets the whole map.
        None if !pod.metadata.present => {
            patch.push(add(&["metadata"], json!({"annotations": new_map(ours)})))
        }
        None => patch.push(add(&["metadata", "annotations"], new_map(ours))),
        Some(a) => {
            for (k, v) in ours {
                if a.get(k) != Some(v.as_str()) {
                    patch.push(add(&["metadata", "annotations", k], Value::String(v)));
                }
            }
        }
    }
}
