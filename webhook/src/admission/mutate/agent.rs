//! The agent container(s) of a plan: rendered for a pod that has none, or, for a pod injected
//! earlier (a reinvocation, or a pod made from an injected manifest), what it lacks reported
//! and, in a meshed pod, its user set to the proxy's.

use std::time::Duration;

use rolebridge_contract::{
    AGENT_UID, AgentArgs, KUBERNETES_TOKEN_MOUNT_PATH, TOKEN_MOUNT_PATH, subcommand,
};

use super::delivery;
use super::mesh::{Mesh, RunAs};
use super::patch::PatchOut;
use super::{
    AGENT_CONTAINER, AGENT_INIT_CONTAINER, Config, KUBERNETES_TOKEN_VOLUME, Kind, SidecarMode,
    TOKEN_VOLUME, Warnings,
};
use crate::admission::json::Json;
use crate::admission::json::Tok::{Field, Index};
use crate::domain::pod::{ContainerView, PodView};

/// An agent container already in the pod, where it sits.
pub(super) type Existing<'p> = (Kind, usize, &'p ContainerView<'p>);

/// The user and group the agent runs as: its image's own, or in a pod whose mesh proxy is a
/// regular container, the proxy's (traffic of that user is never redirected to the proxy).
fn run_as(mesh: &Mesh) -> (i64, i64) {
    mesh.proxy_user.unwrap_or((AGENT_UID, AGENT_UID))
}

fn security_context(out: &mut Json, (uid, gid): (i64, i64)) {
    out.object(|o| {
        o.bool("allowPrivilegeEscalation", false)
            .raw("capabilities", r#"{"drop":["ALL"]}"#)
            .bool("readOnlyRootFilesystem", true)
            .int("runAsGroup", gid)
            .bool("runAsNonRoot", true)
            .int("runAsUser", uid)
            .raw("seccompProfile", r#"{"type":"RuntimeDefault"}"#);
    });
}

/// Requests and limits the agent is given. On GKE Autopilot clusters without bursting, limits
/// are set to the requests, so the memory request is what the agent may use: equal to the
/// limit. The ephemeral storage request replaces Autopilot's default of 1 GiB per container
/// (the agent writes nothing to its read-only root; 64 MiB holds its rotated logs).
const RESOURCES: &str = r#"{"limits":{"cpu":"100m","memory":"32Mi"},"requests":{"cpu":"5m","ephemeral-storage":"64Mi","memory":"32Mi"}}"#;

/// What an agent container has besides what every one has.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Extras {
    /// The long-running agent's environment (see [`delivery::agent_env`]).
    env: bool,
    /// A native sidecar: an init container with `restartPolicy: Always`.
    restart_always: bool,
    /// A `postStart` hook that waits until the agent serves what it must.
    wait: bool,
    liveness: bool,
}

/// Everything an agent container is rendered from.
#[derive(Clone, PartialEq)]
struct AgentInputs<'a> {
    name: &'static str,
    sub: &'static str,
    extras: Extras,
    image: &'a str,
    pull_policy: &'a str,
    cluster_name: Option<&'a str>,
    args: &'a AgentArgs,
    run_as: (i64, i64),
}

/// [`AgentInputs`] kept with what they rendered.
struct Rendered {
    name: &'static str,
    sub: &'static str,
    extras: Extras,
    image: String,
    pull_policy: String,
    cluster_name: Option<String>,
    args: AgentArgs,
    run_as: (i64, i64),
    json: Vec<u8>,
}

impl Rendered {
    fn matches(&self, i: &AgentInputs<'_>) -> bool {
        self.name == i.name
            && self.sub == i.sub
            && self.extras == i.extras
            && self.run_as == i.run_as
            && self.image == i.image
            && self.pull_policy == i.pull_policy
            && self.cluster_name.as_deref() == i.cluster_name
            && self.args == *i.args
    }
}

/// How many agent containers each thread keeps rendered: legacy mode renders two per pod.
const RENDERED: usize = 4;

thread_local! {
    /// The agent containers this thread rendered last. Pods of one workload get the same agent,
    /// and rendering it (three command lines, the credentials as JSON inside JSON) was most of
    /// the cost of a patch. What is kept is exactly what the same inputs render.
    static LAST_RENDERED: std::cell::RefCell<Vec<Rendered>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// One agent container (keys in sorted order, as every fragment of the patch).
fn agent_container(
    out: &mut Json,
    name: &'static str,
    sub: &'static str,
    extras: &Extras,
    cfg: &Config,
    args: &AgentArgs,
    mesh: &Mesh,
) {
    let inputs = AgentInputs {
        name,
        sub,
        extras: extras.clone(),
        image: &cfg.agent_image,
        pull_policy: &cfg.agent_image_pull_policy,
        cluster_name: cfg.cluster_name.as_deref(),
        args,
        run_as: run_as(mesh),
    };
    LAST_RENDERED.with_borrow_mut(|kept| {
        if let Some(r) = kept.iter().find(|r| r.matches(&inputs)) {
            out.bytes().extend_from_slice(&r.json);
            return;
        }
        let mut fresh = Json::with_capacity(2048);
        render_agent(&mut fresh, &inputs);
        let json = fresh.into_bytes();
        out.bytes().extend_from_slice(&json);
        if kept.len() == RENDERED {
            kept.remove(0);
        }
        kept.push(Rendered {
            name,
            sub,
            extras: inputs.extras.clone(),
            image: cfg.agent_image.clone(),
            pull_policy: cfg.agent_image_pull_policy.clone(),
            cluster_name: cfg.cluster_name.clone(),
            args: args.clone(),
            run_as: inputs.run_as,
            json,
        });
    });
}

fn render_agent(out: &mut Json, i: &AgentInputs<'_>) {
    let AgentInputs {
        name,
        sub,
        ref extras,
        image,
        pull_policy,
        cluster_name,
        args,
        run_as,
    } = *i;
    out.object(|o| {
        o.field("args", |out| {
            out.strings(args.args(sub));
        });
        if extras.env {
            delivery::agent_env(o, args, cluster_name);
        }
        o.str("image", image).str("imagePullPolicy", pull_policy);
        if extras.wait {
            // See `agent_ops` for why a hook and not a startup probe.
            let wait = args.wait_command(Duration::from_secs(STARTUP_BUDGET_SECONDS.into()));
            o.field("lifecycle", |out| {
                out.object(|o| {
                    o.field("postStart", |out| exec(out, &wait));
                });
            });
        }
        if extras.liveness {
            o.field("livenessProbe", |out| liveness(out, args));
        }
        o.fixed("name", name).raw("resources", RESOURCES);
        if extras.restart_always {
            o.fixed("restartPolicy", "Always");
        }
        o.field("securityContext", |out| security_context(out, run_as))
            .fixed("terminationMessagePolicy", "FallbackToLogsOnError")
            .field("volumeMounts", |out| {
                out.raw("[");
                out.object(|o| {
                    o.fixed("mountPath", TOKEN_MOUNT_PATH)
                        .fixed("name", TOKEN_VOLUME);
                });
                // The credentials endpoint's web identity hop reads the projected Kubernetes
                // tokens.
                if sub == subcommand::RUN && args.credentials.iter().any(|c| c.token_file.is_some())
                {
                    out.raw(",").object(|o| {
                        o.fixed("mountPath", KUBERNETES_TOKEN_MOUNT_PATH)
                            .fixed("name", KUBERNETES_TOKEN_VOLUME)
                            .bool("readOnly", true);
                    });
                }
                out.raw("]");
            });
    });
}

/// `{"exec":{"command":[…]}}`
fn exec(out: &mut Json, command: &[String]) {
    out.object(|o| {
        o.field("exec", |out| {
            out.object(|o| {
                o.field("command", |out| {
                    out.strings(command);
                });
            });
        });
    });
}

/// How long the agent may take to get every token and credential before its `postStart` hook
/// fails (and the kubelet restarts it; the app has not started meanwhile).
const STARTUP_BUDGET_SECONDS: u32 = 120;

/// Restarts an agent that stopped keeping its tokens fresh. Without a startup probe the kubelet
/// probes liveness from the container's start, so the first probe waits out the start-up
/// budget: the `postStart` hook is what judges the start.
fn liveness(out: &mut Json, args: &AgentArgs) {
    out.object(|o| {
        o.field("exec", |out| {
            out.object(|o| {
                o.field("command", |out| {
                    out.strings(args.check_command());
                });
            });
        })
        .int("failureThreshold", 4)
        .int("initialDelaySeconds", STARTUP_BUDGET_SECONDS)
        .int("periodSeconds", 30)
        .int("timeoutSeconds", 5);
    });
}

/// A new agent for a pod that has none.
pub(super) fn agent_ops(
    patch: &mut PatchOut,
    warnings: &mut Warnings,
    pod: &PodView<'_>,
    cfg: &Config,
    args: &AgentArgs,
    mesh: &Mesh,
) {
    let has_init = pod.spec.init_containers.is_some();
    match cfg.sidecar_mode {
        SidecarMode::Native => {
            // The kubelet starts the next init container, and the app, only once a restartable
            // init container's postStart hook has returned (and its startup probe passed, if
            // it had one). The hook returns the moment every token file holds a valid token and
            // the endpoint has credentials; a startup probe would only pass on the kubelet's
            // next one-second tick. A hook that fails after the budget makes the kubelet kill
            // and restart the agent with a FailedPostStartHook event carrying `check`'s reason,
            // so a pod that never gets a token never starts its app, and says why.
            let extras = Extras {
                env: true,
                restart_always: true,
                wait: true,
                liveness: true,
            };
            patch.insert_at(has_init, "initContainers", mesh.init_index(), |out| {
                agent_container(
                    out,
                    AGENT_CONTAINER,
                    subcommand::RUN,
                    &extras,
                    cfg,
                    args,
                    mesh,
                );
            });
        }
        SidecarMode::Legacy => legacy_agent_ops(patch, pod, cfg, args, mesh, has_init),
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

/// Clusters without native sidecars: a one-shot init container writes the tokens before any
/// other container starts, and a regular sidecar keeps them fresh. With a credentials endpoint
/// the sidecar goes first in `spec.containers` with a `postStart` hook that waits for it: the
/// kubelet starts containers in order and runs the next one only after this hook returns, so
/// the app containers start once the endpoint has credentials.
fn legacy_agent_ops(
    patch: &mut PatchOut,
    pod: &PodView<'_>,
    cfg: &Config,
    args: &AgentArgs,
    mesh: &Mesh,
    has_init: bool,
) {
    let has_app = pod.spec.containers.is_some();
    let mut extras = Extras {
        env: true,
        liveness: true,
        ..Extras::default()
    };
    let sidecar = |out: &mut Json, extras: &Extras| {
        agent_container(
            out,
            AGENT_CONTAINER,
            subcommand::RUN,
            extras,
            cfg,
            args,
            mesh,
        );
    };
    if args.credentials.is_empty() {
        patch.append(has_app, &[Field("spec"), Field("containers")], |out| {
            sidecar(out, &extras);
        });
    } else {
        extras.wait = true;
        patch.insert_at(has_app, "containers", 0, |out| sidecar(out, &extras));
    }
    // The one-shot container writes the Google tokens, so it is pinned like the sidecar.
    if !args.tokens.is_empty() {
        let init_args = AgentArgs {
            tokens: args.tokens.clone(),
            google_service_account: args.google_service_account.clone(),
            ..AgentArgs::default()
        };
        patch.insert_at(has_init, "initContainers", mesh.init_index(), |out| {
            agent_container(
                out,
                AGENT_INIT_CONTAINER,
                subcommand::INIT,
                &Extras::default(),
                cfg,
                &init_args,
                mesh,
            );
        });
    }
}

/// The agent injected earlier: its arguments cannot be changed by an `add`, so what it lacks is
/// only reported. In a pod whose mesh proxy (a regular container) was injected after it, it gets
/// the proxy's user: an `add` that replaces a member of rolebridge's own container, and only
/// while it differs, so a second reinvocation adds nothing.
pub(super) fn existing_agent_ops(
    patch: &mut PatchOut,
    warnings: &mut Warnings,
    existing: &[Existing<'_>],
    args: &AgentArgs,
    mesh: &Mesh,
) {
    let containers: Vec<&ContainerView<'_>> = existing.iter().map(|(_, _, c)| *c).collect();
    for what in delivery::missing_from_agent(args, &containers) {
        warnings.push(format!(
            "the agent container already in this pod does not serve {what}; recreate the pod from its un-injected spec"
        ));
    }
    for &(kind, index, c) in existing {
        if mesh.starts_before_proxy(kind, index) {
            warnings.push(format!(
                "the agent container {:?} starts before istio-proxy, so its traffic is sent to a proxy that is not running yet; recreate the pod so that rolebridge places it after the proxy",
                c.name.as_str()
            ));
        }
        let Some((uid, gid)) = mesh.proxy_user else {
            continue;
        };
        let base = [
            Field("spec"),
            Field(kind.field()),
            Index(index),
            Field("securityContext"),
        ];
        let have = RunAs::of(c);
        if c.security_context.is_none() {
            patch.add(&base, |out| {
                out.object(|o| {
                    o.int("runAsGroup", gid).int("runAsUser", uid);
                });
            });
            continue;
        }
        for (field, want, now) in [
            ("runAsUser", uid, have.run_as_user),
            ("runAsGroup", gid, have.run_as_group),
        ] {
            if now != Some(want) {
                patch.add(&[base[0], base[1], base[2], base[3], Field(field)], |out| {
                    out.int(want);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rolebridge_contract::{GooglePin, TokenSpec, token_path};

    use super::*;

    /// Agent containers rendered through the kept renderings are byte for byte what rendering
    /// them afresh writes, however the inputs alternate (more variants than are kept).
    #[test]
    fn kept_renderings_are_what_rendering_afresh_writes() {
        let token = |aud: &str| TokenSpec {
            path: token_path(aud).into(),
            audience: aud.into(),
        };
        let args = |aud: &str, pin: Option<&str>| AgentArgs {
            tokens: vec![token(aud)],
            google_service_account: pin.map(|p| GooglePin::Email(p.into())),
            ..AgentArgs::default()
        };
        let configs = [
            Config::default(),
            Config {
                agent_image: "registry.example/agent:2".into(),
                cluster_name: Some("prod".into()),
                ..Config::default()
            },
        ];
        let variants = [
            args("sts.amazonaws.com", None),
            args("sts.amazonaws.com", Some("a@p.iam.gserviceaccount.com")),
            args("sts.amazonaws.com", Some("b@p.iam.gserviceaccount.com")),
            args("other", None),
        ];
        let meshes = [
            Mesh::default(),
            Mesh {
                proxy_user: Some((1337, 1337)),
                ..Mesh::default()
            },
        ];
        let extras = [
            Extras::default(),
            Extras {
                env: true,
                wait: true,
                restart_always: true,
                liveness: true,
            },
        ];
        for round in 0..2 {
            for cfg in &configs {
                for a in &variants {
                    for mesh in &meshes {
                        for x in &extras {
                            let mut kept = Json::default();
                            let (name, sub) = (AGENT_CONTAINER, subcommand::RUN);
                            agent_container(&mut kept, name, sub, x, cfg, a, mesh);
                            let mut fresh = Json::default();
                            let inputs = AgentInputs {
                                name,
                                sub,
                                extras: x.clone(),
                                image: &cfg.agent_image,
                                pull_policy: &cfg.agent_image_pull_policy,
                                cluster_name: cfg.cluster_name.as_deref(),
                                args: a,
                                run_as: run_as(mesh),
                            };
                            render_agent(&mut fresh, &inputs);
                            assert_eq!(kept.into_bytes(), fresh.into_bytes(), "round {round}");
                        }
                    }
                }
            }
        }
    }
}
