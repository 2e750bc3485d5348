//! The mutation: a pure, synchronous function from (pod, namespace, matching bindings, config)
//! to JSON-patch `add` operations, warnings, or a denial.
//!
//! Everything here is deterministic and free of I/O so it can be tested exhaustively and reused
//! unchanged by `rolebridge-webhook inject`. Rules, in the order they apply:
//! - pods in the webhook's own namespace, pods without a binding, pods that opt out with
//!   `rolebridge.io/inject: "false"` and Windows pods are left unchanged;
//! - `rolebridge.io/role` may only name a binding of the pod's service account (else: deny);
//!   naming one whose `spec.containers` lists no container of the pod earns a warning, since
//!   the annotation then has no effect;
//! - containers named like the agent are never covered, and containers in
//!   `rolebridge.io/skip-containers` are skipped;
//! - a container that already sets `AWS_ROLE_ARN` or `AWS_WEB_IDENTITY_TOKEN_FILE` itself
//!   (values other than exactly what one of the bindings covering it would write), or that
//!   mounts another volume at the token directory, is left alone with a warning: the user's
//!   explicit choice wins. This is decided before tie resolution, so such a container never
//!   takes part in a tie;
//! - every other container (init or app) is covered by the binding that names it in
//!   `spec.containers`, else by the one binding that covers all containers; the annotation
//!   chooses when several tie, and an unresolved tie is a denial. A container whose variables
//!   are ours for a binding other than the one chosen is left alone with a warning too;
//! - the agent's container names and the token volume's name are reserved: a pod that would
//!   be injected but already uses one of them without carrying `rolebridge.io/bindings` (so
//!   it was not injected by rolebridge) is denied, since its containers would be pointed at a
//!   token file that nobody writes. A pod carrying the annotation is a reinvocation: the
//!   existing agent and volume are reused, with a warning for any token the agent lacks;
//! - every `add` is guarded by an existence check, so mutating an already mutated pod yields
//!   no operations (webhook reinvocation, a second replica, `inject` run twice).
//!
//! JSON-patch ops are applied in order, so per-container ops (which use the original indexes)
//! come before the insertion at `/spec/initContainers/0`, which shifts them.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use serde_json::{Value, json};

use crate::pod::{ContainerView, PodView};

pub const TOKEN_VOLUME: &str = "rolebridge-token";
pub use rolebridge_contract::{AGENT_BINARY, AGENT_UID, TOKEN_MOUNT_PATH, token_path};
pub const AGENT_CONTAINER: &str = "rolebridge-agent";
pub const AGENT_INIT_CONTAINER: &str = "rolebridge-agent-init";
/// Tokens are a few KiB; the limit only guards the node's memory against a runaway writer.
pub const TOKEN_VOLUME_SIZE_LIMIT: &str = "1Mi";

pub const ANNOTATION_INJECT: &str = "rolebridge.io/inject";
pub const ANNOTATION_SKIP_CONTAINERS: &str = "rolebridge.io/skip-containers";
pub const ANNOTATION_ROLE: &str = "rolebridge.io/role";
/// Written by the webhook: `container=binding` pairs that were applied.
pub const ANNOTATION_APPLIED: &str = "rolebridge.io/bindings";

pub const ENV_ROLE_ARN: &str = "AWS_ROLE_ARN";
pub const ENV_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
pub const ENV_SESSION_NAME: &str = "AWS_ROLE_SESSION_NAME";
pub const ENV_REGION: &str = "AWS_REGION";
pub const ENV_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
pub const ENV_STS_REGIONAL: &str = "AWS_STS_REGIONAL_ENDPOINTS";

/// STS limits `RoleSessionName` to 2..=64 characters of `[\w+=,.@-]`.
const SESSION_NAME_MAX: usize = 64;

/// A binding as the mutation sees it: already validated, namespace implied by the lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub service_account: String,
    pub role_arn: String,
    pub audience: Option<String>,
    pub region: Option<String>,
    pub containers: Option<Vec<String>>,
}

impl Binding {
    fn names(&self, container: &str) -> bool {
        self.containers
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c == container))
    }

    fn covers(&self, container: &str) -> bool {
        self.containers.is_none() || self.names(container)
    }
}

/// How the agent runs next to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// Kubernetes ≥ 1.29 native sidecar: an init container with `restartPolicy: Always`.
    Native,
    /// Older clusters: a one-shot init container plus a regular sidecar container.
    Legacy,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub agent_image: String,
    pub agent_image_pull_policy: String,
    pub sidecar_mode: SidecarMode,
    pub default_audience: String,
    /// Pods in this namespace (the webhook's own) are never mutated, so the webhook can always
    /// start even when it is broken.
    pub own_namespace: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            agent_image: rolebridge_contract::DEFAULT_AGENT_IMAGE.into(),
            agent_image_pull_policy: "IfNotPresent".into(),
            sidecar_mode: SidecarMode::Native,
            default_audience: rolebridge_contract::DEFAULT_AUDIENCE.into(),
            own_namespace: None,
        }
    }
}

/// Why a pod was passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    OwnNamespace,
    NoBinding,
    OptedOut,
    Windows,
    NoContainerCovered,
    AlreadyInjected,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Mutated,
    Skipped(Skip),
}

/// The result for an admitted pod. `patch` is empty unless `outcome` is `Mutated`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub outcome: Outcome,
    pub patch: Vec<PatchOperation>,
    pub warnings: Vec<String>,
}

/// A policy violation: the pod must be rejected with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub message: String,
}

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: ptr(tokens),
        value,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Init,
    App,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::Init => "initContainers",
            Kind::App => "containers",
        }
    }
}

/// A container that will get a role.
struct Planned<'p, 'b> {
    kind: Kind,
    index: usize,
    container: &'p ContainerView<'p>,
    binding: &'b Binding,
    token_path: String,
}

fn is_agent(name: &str) -> bool {
    name == AGENT_CONTAINER || name == AGENT_INIT_CONTAINER
}

fn sets_own_vars(container: &str, not_applied: &str) -> String {
    format!(
        "container {container:?} sets {ENV_ROLE_ARN} or {ENV_TOKEN_FILE} itself, so rolebridge left it alone ({not_applied})"
    )
}

fn warn(warnings: &mut Vec<String>, msg: String) {
    warnings.push(format!("rolebridge: {msg}"));
}

/// Computes the patch for a pod. `bindings` are the bindings of the pod's service account in
/// its namespace (what the cache returns for `(namespace, pod.service_account())`).
pub fn mutate(
    pod: &PodView<'_>,
    namespace: &str,
    bindings: &[Binding],
    cfg: &Config,
) -> Result<Mutation, Denial> {
    let mut warnings = Vec::new();
    let skip = |why, warnings| {
        Ok(Mutation {
            outcome: Outcome::Skipped(why),
            patch: Vec::new(),
            warnings,
        })
    };
    if cfg.own_namespace.as_deref() == Some(namespace) {
        return skip(Skip::OwnNamespace, warnings);
    }
    if bindings.is_empty() {
        return skip(Skip::NoBinding, warnings);
    }
    let sa = pod.service_account();
    let binding_list = || {
        let mut s = String::new();
        for (i, b) in bindings.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(s, "{sep}{} ({})", b.name, b.role_arn);
        }
        s
    };

    match pod.annotation(ANNOTATION_INJECT).map(str::trim) {
        Some("false" | "False" | "disabled") => {
            warn(
                &mut warnings,
                format!(
                    "injection disabled by annotation {ANNOTATION_INJECT}; service account {sa:?} is bound to {}, but this pod gets no AWS credentials from rolebridge",
                    binding_list()
                ),
            );
            return skip(Skip::OptedOut, warnings);
        }
        None | Some("true" | "True" | "enabled" | "") => {}
        Some(other) => warn(
            &mut warnings,
            format!(
                "annotation {ANNOTATION_INJECT}={other:?} is not understood (use \"false\" to opt out); injecting as usual"
            ),
        ),
    }

    if pod
        .spec
        .os
        .as_ref()
        .is_some_and(|os| os.name.as_str() == "windows")
    {
        warn(
            &mut warnings,
            "Windows pods are not supported (the agent is a Linux container); this pod gets no AWS credentials from rolebridge".into(),
        );
        return skip(Skip::Windows, warnings);
    }

    let chosen_role = pod
        .annotation(ANNOTATION_ROLE)
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if let Some(role) = chosen_role
        && !bindings.iter().any(|b| b.name == role)
    {
        return Err(Denial {
            message: format!(
                "rolebridge: annotation {ANNOTATION_ROLE}={role:?} names no AWSRoleBinding of service account {sa:?} in namespace {namespace:?}; an annotation cannot grant a role that is not bound. Bindings of this service account: {}. Set the annotation to one of these names or remove it.",
                binding_list()
            ),
        });
    }

    let skip_list: Vec<&str> = pod
        .annotation(ANNOTATION_SKIP_CONTAINERS)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();

    let init = pod.spec.init_containers.as_deref().unwrap_or_default();
    let app = pod.spec.containers.as_deref().unwrap_or_default();
    let all = || {
        init.iter()
            .enumerate()
            .map(|(i, c)| (Kind::Init, i, c))
            .chain(app.iter().enumerate().map(|(i, c)| (Kind::App, i, c)))
    };

    for s in &skip_list {
        if !all().any(|(_, _, c)| c.name.as_str() == *s) {
            warn(
                &mut warnings,
                format!(
                    "{ANNOTATION_SKIP_CONTAINERS} names {s:?}, which is not a container of this pod"
                ),
            );
        }
    }

    if let Some(role) = chosen_role
        && let Some(b) = bindings.iter().find(|b| b.name == role)
        && !all().any(|(_, _, c)| !is_agent(c.name.as_str()) && b.covers(c.name.as_str()))
    {
        warn(
            &mut warnings,
            format!(
                "annotation {ANNOTATION_ROLE}={role:?} names binding {:?}, whose spec.containers ({}) lists no container of this pod, so the annotation has no effect",
                b.name,
                b.containers.as_deref().unwrap_or_default().join(", ")
            ),
        );
    }

    let default_audience = cfg.default_audience.as_str();
    let path_of = |b: &Binding| token_path(b.audience.as_deref().unwrap_or(default_audience));
    let mut planned: Vec<Planned> = Vec::new();
    let mut conflicts: Vec<String> = Vec::new();
    for (kind, index, c) in all() {
        let name = c.name.as_str();
        if is_agent(name) || skip_list.contains(&name) {
            continue;
        }
        let candidates: Vec<&Binding> = bindings.iter().filter(|b| b.covers(name)).collect();
        if candidates.is_empty() {
            continue;
        }
        // A binding that names the container outranks one that covers all containers; the
        // annotation only chooses within the winning tier (it must not take a container away
        // from the binding written for it).
        let specific: Vec<&Binding> = candidates
            .iter()
            .copied()
            .filter(|b| b.names(name))
            .collect();
        let tier = if specific.is_empty() {
            &candidates
        } else {
            &specific
        };
        let resolved: Option<&Binding> = match tier.as_slice() {
            [only] => Some(*only),
            _ => chosen_role.and_then(|r| tier.iter().copied().find(|b| b.name == r)),
        };
        let not_applied = || match resolved {
            Some(b) => format!("binding {:?} not applied to it", b.name),
            None => {
                let names: Vec<String> = tier.iter().map(|b| format!("{:?}", b.name)).collect();
                format!("bindings {} not applied to it", names.join(" and "))
            }
        };

        // The user's own configuration is decided before tie resolution: a container that
        // rolebridge leaves alone anyway must not get the pod denied over a tie. Variables
        // that are exactly what one of the covering bindings writes are ours (an earlier
        // pass), so an injected container is still recognised.
        let role_var = c.env_var(ENV_ROLE_ARN);
        let file_var = c.env_var(ENV_TOKEN_FILE);
        let ours = |v: Option<&crate::pod::EnvView>, want: &str| {
            v.is_some_and(|e| {
                e.value_from.is_none() && e.value.as_ref().is_some_and(|x| x.as_str() == want)
            })
        };
        let ours_for = |b: &Binding| ours(role_var, &b.role_arn) && ours(file_var, &path_of(b));
        let has_vars = role_var.is_some() || file_var.is_some();
        if has_vars && !candidates.iter().any(|b| ours_for(b)) {
            warn(&mut warnings, sets_own_vars(name, &not_applied()));
            continue;
        }
        if c.volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|m| {
                m.mount_path.as_str().trim_end_matches('/') == TOKEN_MOUNT_PATH
                    && m.name.as_str() != TOKEN_VOLUME
            })
        {
            warn(
                &mut warnings,
                format!(
                    "container {name:?} already mounts something at {TOKEN_MOUNT_PATH}, so rolebridge left it alone ({})",
                    not_applied()
                ),
            );
            continue;
        }

        let Some(binding) = resolved else {
            let names: Vec<&str> = tier.iter().map(|b| b.name.as_str()).collect();
            conflicts.push(format!(
                "container {name:?} is covered by bindings {}",
                names.join(" and ")
            ));
            continue;
        };
        let path = path_of(binding);
        if has_vars && !ours_for(binding) {
            // Ours, but for another covering binding (the bindings changed since the pod
            // was injected): env cannot be rewritten with `add`, so leave it as it is.
            warn(&mut warnings, sets_own_vars(name, &not_applied()));
            continue;
        }
        if c.env_var("AWS_ACCESS_KEY_ID").is_some() {
            warn(
                &mut warnings,
                format!(
                    "container {name:?} sets AWS_ACCESS_KEY_ID; AWS SDKs prefer static keys over web identity, so role {} will not be used by it",
                    binding.role_arn
                ),
            );
        }
        planned.push(Planned {
            kind,
            index,
            container: c,
            binding,
            token_path: path,
        });
    }

    if !conflicts.is_empty() {
        return Err(Denial {
            message: format!(
                "rolebridge: {} for service account {sa:?} in namespace {namespace:?}, and nothing chooses between them. Resolve it: annotate the pod (template) with {ANNOTATION_ROLE}: <binding name>, or list the containers each binding is for in its spec.containers, or delete the extra binding.",
                conflicts.join("; ")
            ),
        });
    }

    if planned.is_empty() {
        warn(
            &mut warnings,
            format!(
                "service account {sa:?} is bound to {}, but no container of this pod is covered, so it gets no AWS credentials from rolebridge",
                binding_list()
            ),
        );
        return skip(Skip::NoContainerCovered, warnings);
    }

    if pod.annotation(ANNOTATION_APPLIED).is_none() {
        let mut taken: Vec<String> = all()
            .filter(|(_, _, c)| is_agent(c.name.as_str()))
            .map(|(_, _, c)| format!("container {:?}", c.name.as_str()))
            .collect();
        if pod
            .spec
            .volumes
            .as_deref()
            .is_some_and(|v| v.iter().any(|v| v.name.as_str() == TOKEN_VOLUME))
        {
            taken.push(format!("volume {TOKEN_VOLUME:?}"));
        }
        if !taken.is_empty() {
            return Err(Denial {
                message: format!(
                    "rolebridge: this pod has {}, but {} reserved by rolebridge for the token agent it injects, and the pod was not injected by rolebridge (it has no {ANNOTATION_APPLIED} annotation); injecting it would point its containers at a token file that nothing writes. Rename {}, or opt the pod out with the annotation {ANNOTATION_INJECT}: \"false\" if it should not get AWS credentials from rolebridge.",
                    taken.join(" and "),
                    if taken.len() == 1 {
                        "that name is"
                    } else {
                        "those names are"
                    },
                    if taken.len() == 1 { "it" } else { "them" },
                ),
            });
        }
    }

    let mut patch = Vec::new();
    let session_name = session_name_env(pod);
    for p in &planned {
        container_ops(&mut patch, p, &session_name);
    }

    let audiences: BTreeSet<(&str, &str)> = planned
        .iter()
        .map(|p| {
            (
                p.token_path.as_str(),
                p.binding.audience.as_deref().unwrap_or(default_audience),
            )
        })
        .collect();
    let tokens: Vec<String> = audiences
        .iter()
        .map(|(path, aud)| format!("{path}={aud}"))
        .collect();

    let has_volume = pod
        .spec
        .volumes
        .as_deref()
        .is_some_and(|v| v.iter().any(|v| v.name.as_str() == TOKEN_VOLUME));
    if !has_volume {
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

    agent_ops(&mut patch, &mut warnings, pod, cfg, &tokens);

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

    let outcome = if patch.is_empty() {
        Outcome::Skipped(Skip::AlreadyInjected)
    } else {
        Outcome::Mutated
    };
    Ok(Mutation {
        outcome,
        patch,
        warnings,
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

/// `AWS_ROLE_SESSION_NAME` shows in CloudTrail which pod acted. The downward API resolves the
/// final name at container start (a `generateName` pod has no name yet at admission; generated
/// names are at most 63 characters). An explicit name outside STS's 2..=64 would make every
/// AssumeRoleWithWebIdentity fail, so such pods get a fixed, valid session name instead.
fn session_name_env(pod: &PodView<'_>) -> Value {
    match pod.metadata.name.as_ref().map(|n| n.as_str()) {
        Some(n) if !n.is_empty() && !(2..=SESSION_NAME_MAX).contains(&n.len()) => {
            let mut v: String = n.chars().take(SESSION_NAME_MAX).collect();
            if v.len() < 2 {
                v.push_str("-pod");
            }
            json!({"name": ENV_SESSION_NAME, "value": v})
        }
        _ => json!({
            "name": ENV_SESSION_NAME,
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        }),
    }
}

fn container_ops(patch: &mut Vec<PatchOperation>, p: &Planned, session_name: &Value) {
    let c = p.container;
    let idx = p.index.to_string();
    let base = ["spec", p.kind.field(), idx.as_str()];
    let b = p.binding;

    let mut env: Vec<Value> = vec![
        json!({"name": ENV_ROLE_ARN, "value": b.role_arn}),
        json!({"name": ENV_TOKEN_FILE, "value": p.token_path}),
        session_name.clone(),
    ];
    if let Some(region) = &b.region {
        env.push(json!({"name": ENV_REGION, "value": region}));
        env.push(json!({"name": ENV_DEFAULT_REGION, "value": region}));
        env.push(json!({"name": ENV_STS_REGIONAL, "value": "regional"}));
    }
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

fn agent_container(name: &str, cfg: &Config, subcommand: &str, tokens: &[String]) -> Value {
    let mut args = vec![subcommand.to_owned()];
    for t in tokens {
        args.push("--token".into());
        args.push(t.clone());
    }
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

fn check_probe(tokens: &[String], period: u32, failures: u32) -> Value {
    let mut command = vec![AGENT_BINARY.to_owned(), "check".to_owned()];
    for t in tokens {
        command.push("--token".into());
        command.push(t.clone());
    }
    json!({
        "exec": {"command": command},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    })
}

fn agent_ops(
    patch: &mut Vec<PatchOperation>,
    warnings: &mut Vec<String>,
    pod: &PodView<'_>,
    cfg: &Config,
    tokens: &[String],
) {
    let init = pod.spec.init_containers.as_deref();
    let app = pod.spec.containers.as_deref();
    let existing: Vec<&ContainerView> = init
        .unwrap_or_default()
        .iter()
        .chain(app.unwrap_or_default())
        .filter(|c| is_agent(c.name.as_str()))
        .collect();
    if !existing.is_empty() {
        // Injected earlier (reinvocation, or a pod built from an injected manifest). Its
        // arguments cannot be changed by an `add`, so only report what it is missing.
        for t in tokens {
            let served = existing.iter().any(|c| {
                c.args
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|a| a.as_str() == t)
            });
            if !served {
                warn(
                    warnings,
                    format!(
                        "the agent container already in this pod does not serve token {t}; recreate the pod from its un-injected spec"
                    ),
                );
            }
        }
        return;
    }

    match cfg.sidecar_mode {
        SidecarMode::Native => {
            let mut agent = agent_container(AGENT_CONTAINER, cfg, "run", tokens);
            agent["restartPolicy"] = json!("Always");
            // The kubelet starts the next init container and the app only once this succeeds,
            // i.e. once every token file holds a valid token.
            agent["startupProbe"] = check_probe(tokens, 1, 120);
            agent["livenessProbe"] = check_probe(tokens, 30, 4);
            patch.push(insert_first(init.is_some(), agent));
        }
        SidecarMode::Legacy => {
            let first = agent_container(AGENT_INIT_CONTAINER, cfg, "init", tokens);
            let mut sidecar = agent_container(AGENT_CONTAINER, cfg, "run", tokens);
            sidecar["livenessProbe"] = check_probe(tokens, 30, 4);
            patch.push(append(app.is_some(), &["spec", "containers"], sidecar));
            patch.push(insert_first(init.is_some(), first));
            let owned_by_job = pod
                .metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o.kind.as_str() == "Job");
            if owned_by_job {
                warn(
                    warnings,
                    "legacy sidecar mode: the agent container keeps running, so this Job's pod will not complete on its own; use a cluster ≥ 1.29 with --sidecar-mode native".into(),
                );
            }
        }
    }
}

fn insert_first(exists: bool, item: Value) -> PatchOperation {
    if exists {
        add(&["spec", "initContainers", "0"], item)
    } else {
        add(&["spec", "initContainers"], Value::Array(vec![item]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: &str, containers: Option<&[&str]>) -> Binding {
        Binding {
            name: name.into(),
            service_account: "sa".into(),
            role_arn: format!("arn:aws:iam::123456789012:role/{name}"),
            audience: None,
            region: None,
            containers: containers.map(|cs| cs.iter().map(|c| (*c).to_owned()).collect()),
        }
    }

    fn applied(m: &Mutation) -> Option<&str> {
        m.patch.iter().find_map(|op| match op {
            PatchOperation::Add(a) if a.path.to_string().starts_with("/metadata/annotations") => a
                .value
                .as_str()
                .or_else(|| a.value[ANNOTATION_APPLIED].as_str()),
            _ => None,
        })
    }

    /// The role annotation breaks ties only: it must not take a container away from the
    /// binding that names it (regression: it used to override `spec.containers`).
    #[test]
    fn role_annotation_does_not_override_a_binding_that_names_the_container() {
        let json = r#"{"metadata":{"name":"p","annotations":{"rolebridge.io/role":"writer"}},
            "spec":{"serviceAccountName":"sa","containers":[{"name":"app"},{"name":"side"}]}}"#;
        let pod = PodView::from_json(json).unwrap();
        let bindings = [
            binding("app-only", Some(&["app"])),
            binding("reader", None),
            binding("writer", None),
        ];
        let m = mutate(&pod, "ns", &bindings, &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app=app-only,side=writer"));

        // Two bindings name the container: the annotation chooses among them...
        let bindings = [
            binding("a", Some(&["app", "side"])),
            binding("writer", Some(&["app"])),
        ];
        let m = mutate(&pod, "ns", &bindings, &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app=writer,side=a"));
        // ...but an all-containers binding does not rank with them.
        let bindings = [
            binding("a", Some(&["app"])),
            binding("b", Some(&["app"])),
            binding("writer", None),
        ];
        let err = mutate(&pod, "ns", &bindings, &Config::default()).unwrap_err();
        assert!(
            err.message
                .contains(r#"container "app" is covered by bindings a and b"#),
            "{err}"
        );
    }

    /// A container rolebridge leaves alone anyway (the user's own role variables, or another
    /// volume at the token directory) must not get the pod denied over a tie; a container whose
    /// variables are exactly ours for a covering binding is still ours and still ties.
    #[test]
    fn tie_on_a_user_owned_container_does_not_deny() {
        let bindings = [
            binding("reader", None),
            binding("writer", None),
            binding("app-role", Some(&["app"])),
        ];
        let json = r#"{"metadata":{"name":"p"},"spec":{"serviceAccountName":"sa","containers":[
            {"name":"own","env":[{"name":"AWS_ROLE_ARN","value":"arn:aws:iam::999999999999:role/x"}]},
            {"name":"mounted","volumeMounts":[{"name":"v","mountPath":"/var/run/secrets/rolebridge.io/"}]},
            {"name":"app"}]}}"#;
        let pod = PodView::from_json(json).unwrap();
        let m = mutate(&pod, "ns", &bindings, &Config::default()).unwrap();
        assert_eq!(m.outcome, Outcome::Mutated);
        assert_eq!(applied(&m), Some("app=app-role"));
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
        assert!(m.warnings[0].contains(r#"container "own" sets AWS_ROLE_ARN"#));
        assert!(m.warnings[1].contains(r#"container "mounted" already mounts"#));
        for w in &m.warnings {
            assert!(
                w.contains(r#"bindings "reader" and "writer" not applied to it"#),
                "{w}"
            );
        }

        // Exactly what `reader` writes: recognised as an earlier injection, so it still ties.
        let path = token_path("sts.amazonaws.com");
        let json = format!(
            r#"{{"metadata":{{"name":"p"}},"spec":{{"serviceAccountName":"sa","containers":[
            {{"name":"app2","env":[{{"name":"AWS_ROLE_ARN","value":"arn:aws:iam::123456789012:role/reader"}},
            {{"name":"AWS_WEB_IDENTITY_TOKEN_FILE","value":"{path}"}}]}}]}}}}"#
        );
        let pod = PodView::from_json(&json).unwrap();
        let err = mutate(&pod, "ns", &bindings, &Config::default()).unwrap_err();
        assert!(
            err.message
                .contains(r#"container "app2" is covered by bindings reader and writer"#),
            "{err}"
        );
        // ...and with the tie resolved for it, it is already injected: nothing left to add
        // but the bindings annotation.
        let json = json.replace(
            r#"{"metadata":{"name":"p"}"#,
            r#"{"metadata":{"name":"p","annotations":{"rolebridge.io/role":"reader"}}"#,
        );
        let pod = PodView::from_json(&json).unwrap();
        let m = mutate(&pod, "ns", &bindings, &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app2=reader"));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn reserved_names_deny_a_pod_rolebridge_did_not_inject() {
        let bindings = [binding("b", None)];
        let cfg = Config::default();
        for (extra, what) in [
            (
                r#""containers":[{"name":"app"}],"initContainers":[{"name":"rolebridge-agent-init"}]"#,
                r#"container "rolebridge-agent-init""#,
            ),
            (
                r#""containers":[{"name":"app"},{"name":"rolebridge-agent"}]"#,
                r#"container "rolebridge-agent""#,
            ),
            (
                r#""containers":[{"name":"app"}],"volumes":[{"name":"rolebridge-token","emptyDir":{}}]"#,
                r#"volume "rolebridge-token""#,
            ),
        ] {
            let json = format!(
                r#"{{"metadata":{{"name":"p"}},"spec":{{"serviceAccountName":"sa",{extra}}}}}"#
            );
            let pod = PodView::from_json(&json).unwrap();
            let err = mutate(&pod, "ns", &bindings, &cfg).unwrap_err();
            for want in [
                what,
                "reserved by rolebridge",
                "Rename it",
                r#"rolebridge.io/inject: "false""#,
            ] {
                assert!(err.message.contains(want), "{want:?} not in {err}");
            }

            // Opt-out, Windows and "nothing covered" still come first...
            let opted = json.replace(
                r#""name":"p"}"#,
                r#""name":"p","annotations":{"rolebridge.io/inject":"false"}}"#,
            );
            let pod = PodView::from_json(&opted).unwrap();
            let m = mutate(&pod, "ns", &bindings, &cfg).unwrap();
            assert_eq!(m.outcome, Outcome::Skipped(Skip::OptedOut));
            let windows = json.replace(r#""spec":{"#, r#""spec":{"os":{"name":"windows"},"#);
            let pod = PodView::from_json(&windows).unwrap();
            let m = mutate(&pod, "ns", &bindings, &cfg).unwrap();
            assert_eq!(m.outcome, Outcome::Skipped(Skip::Windows));
            let pod = PodView::from_json(&json).unwrap();
            let m = mutate(&pod, "ns", &[binding("b", Some(&["worker"]))], &cfg).unwrap();
            assert_eq!(m.outcome, Outcome::Skipped(Skip::NoContainerCovered));

            // ...and a pod rolebridge injected (the annotation is there) is a reinvocation.
            let injected = json.replace(
                r#""name":"p"}"#,
                r#""name":"p","annotations":{"rolebridge.io/bindings":"app=b"}}"#,
            );
            let pod = PodView::from_json(&injected).unwrap();
            assert!(mutate(&pod, "ns", &bindings, &cfg).is_ok());
        }
    }

    #[test]
    fn role_annotation_naming_a_binding_that_covers_no_container_warns() {
        let json = r#"{"metadata":{"name":"p","annotations":{"rolebridge.io/role":"worker"}},
            "spec":{"serviceAccountName":"sa","containers":[{"name":"app"}]}}"#;
        let pod = PodView::from_json(json).unwrap();
        let bindings = [binding("base", None), binding("worker", Some(&["worker"]))];
        let m = mutate(&pod, "ns", &bindings, &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app=base"));
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert!(
            m.warnings[0].contains(
                r#"annotation rolebridge.io/role="worker" names binding "worker", whose spec.containers (worker) lists no container of this pod"#
            ),
            "{:?}",
            m.warnings
        );
        // A binding that covers a container of the pod, even one it does not win, is no news.
        let bindings = [binding("base", None), binding("worker", Some(&["app"]))];
        let json = json.replace(r#""worker"}"#, r#""base"}"#);
        let pod = PodView::from_json(&json).unwrap();
        let m = mutate(&pod, "ns", &bindings, &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app=worker"));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }
}
