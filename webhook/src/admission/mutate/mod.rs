//! The mutation: a pure, synchronous function from (pod, namespace, matching bindings, what is
//! known of the pod's service account, config) to JSON-patch `add` operations, warnings, or a
//! denial.
//!
//! Everything here is deterministic and free of I/O so it can be tested exhaustively and reused
//! unchanged by `rolebridge-webhook inject`. It runs in phases, each in its own module:
//!
//! 1. `gate`: pods in the webhook's own namespace, pods without a binding, pods that opt out
//!    with `rolebridge.io/inject: "false"` and Windows pods (`spec.os.name`, or a
//!    `kubernetes.io/os` node selector or required node affinity) are left unchanged;
//!    `rolebridge.io/role` may only name a binding of the pod's service account (else: deny);
//!    naming one whose `spec.containers` lists no container of the pod earns a warning.
//! 2. `plan`: which binding covers which container, the same whatever the delivery or token
//!    source. Containers named like the agent are never covered, those in
//!    `rolebridge.io/skip-containers` are skipped, and the mesh's own (`istio-proxy`,
//!    `istio-init`, `istio-validation`) are covered only by a binding that names them. A
//!    container that already chooses its own credentials (one of
//!    [`IDENTITY_VARS`](delivery::IDENTITY_VARS) set to anything but exactly what a covering
//!    binding's delivery writes), or that mounts another volume at one of rolebridge's token
//!    directories, is left alone with a warning: the user's explicit choice wins. This is decided
//!    before tie resolution, so such a container never takes part in a tie. Every other
//!    container (init or app) is covered by the binding that names it in `spec.containers`, else
//!    by the one binding that covers all containers ([`crate::domain::binding::Coverage`]); the
//!    annotation chooses when several tie, and an unresolved tie is a denial.
//! 3. `reserved`: the agent's container names and the token volumes' names are reserved: a pod
//!    that would be injected but already uses one of them without carrying
//!    `rolebridge.io/bindings` (so rolebridge did not inject it) is denied, since its containers
//!    would be pointed at files nobody writes. A pod carrying the annotation is a reinvocation.
//! 4. `render`: the patch for the plan. `delivery` holds every rule that differs between web
//!    identity and the credentials endpoint (variables, what the agent is told, the endpoint's
//!    port); `source` every rule that differs between the token sources (where a container's
//!    token comes from, the projected Kubernetes tokens, the agent's Google pin, the host
//!    network); `mesh` where the agent goes in an Istio pod and which user it runs as; `agent`
//!    renders the agent, or reports what an agent already there lacks. The agent is injected only
//!    when something needs it (Google tokens, or the endpoint): Kubernetes-source web identity
//!    needs only the projected volume. A pod is denied when its bindings cannot work in it:
//!    `hostNetwork` with the endpoint (its loopback is the node's) or with Google tokens (the
//!    metadata server is the node's), a port annotation that is unusable or that a container
//!    declares, in legacy sidecar mode an init container that would need the endpoint, or a new
//!    agent for Google tokens when the service account cannot be read (it could not be pinned).
//!    Every `add` is guarded by an existence check, so mutating an already mutated pod yields no
//!    operations (webhook reinvocation, a second replica, `inject` run twice).

use std::time::Duration;

use crate::domain::pod::{ContainerView, PodView};

mod agent;
mod delivery;
mod gate;
mod mesh;
mod patch;
mod plan;
mod render;
mod reserved;
mod source;

pub use crate::domain::binding::{Binding, Delivery, TokenSource};
pub use crate::domain::status::ServiceAccountState;
pub use patch::Patch;
pub use rolebridge_contract::{
    AGENT_BINARY, AGENT_UID, KUBERNETES_TOKEN_MOUNT_PATH, TOKEN_MOUNT_PATH, kubernetes_token_path,
    token_path,
};

/// The agent's in-memory volume: Google ID tokens and the endpoint's authorization token.
pub const TOKEN_VOLUME: &str = "rolebridge-token";
/// The projected volume of the pod's Kubernetes service account tokens (`tokenSource:
/// Kubernetes`), one file per audience.
pub const KUBERNETES_TOKEN_VOLUME: &str = "rolebridge-kubernetes-token";
/// The least lifetime the API server grants a projected service account token.
pub const MIN_KUBERNETES_TOKEN_EXPIRATION: Duration = Duration::from_secs(600);
pub const AGENT_CONTAINER: &str = "rolebridge-agent";
pub const AGENT_INIT_CONTAINER: &str = "rolebridge-agent-init";
/// Tokens are a few KiB; the limit only guards the node's memory against a runaway writer.
pub(crate) const TOKEN_VOLUME_SIZE_LIMIT: &str = "1Mi";

pub const ANNOTATION_INJECT: &str = "rolebridge.io/inject";
pub const ANNOTATION_SKIP_CONTAINERS: &str = "rolebridge.io/skip-containers";
pub const ANNOTATION_ROLE: &str = "rolebridge.io/role";
/// Written by the webhook: `container=binding` pairs that were applied.
pub const ANNOTATION_APPLIED: &str = "rolebridge.io/bindings";
/// The credentials endpoint's port for this pod; written by the webhook when it chose one.
pub const ANNOTATION_CREDENTIALS_PORT: &str = "rolebridge.io/credentials-port";

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
    /// The credentials endpoint's port unless a pod's annotation says otherwise.
    pub credentials_port: u16,
    /// Told to the agent for the `gke-cluster-name` session tag; the agent asks the GKE
    /// metadata server when it is not set.
    pub cluster_name: Option<String>,
    /// `expirationSeconds` of the projected Kubernetes tokens (at least
    /// [`MIN_KUBERNETES_TOKEN_EXPIRATION`]).
    pub kubernetes_token_expiration: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            agent_image: rolebridge_contract::DEFAULT_AGENT_IMAGE.into(),
            agent_image_pull_policy: "IfNotPresent".into(),
            sidecar_mode: SidecarMode::Native,
            default_audience: rolebridge_contract::DEFAULT_AUDIENCE.into(),
            own_namespace: None,
            credentials_port: rolebridge_contract::DEFAULT_CREDENTIALS_PORT,
            cluster_name: None,
            kubernetes_token_expiration: Duration::from_secs(3600),
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
    pub patch: Patch,
    pub warnings: Vec<String>,
}

impl Skip {
    /// The reason in a word, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::OwnNamespace => "own_namespace",
            Skip::NoBinding => "no_binding",
            Skip::OptedOut => "opted_out",
            Skip::Windows => "windows",
            Skip::NoContainerCovered => "no_container_covered",
            Skip::AlreadyInjected => "already_injected",
        }
    }
}

/// A policy violation: the pod must be rejected with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    /// Which rule denied it, for logs and metrics; `message` says it to the user.
    pub reason: DenyReason,
    pub message: String,
}

/// The rule a denial comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// `rolebridge.io/role` names no binding of the service account.
    UnboundRole,
    /// Bindings tie on a container and nothing chooses between them.
    Tie,
    /// The pod uses a name rolebridge reserves without having been injected by it.
    ReservedName,
    /// The credentials endpoint would listen on the node's loopback.
    HostNetwork,
    /// No usable port for the credentials endpoint.
    CredentialsPort,
    /// Legacy sidecar mode cannot serve the endpoint to an init container.
    LegacyInitContainer,
    /// The pod's service account could not be read, so the Google identity cannot be pinned.
    ServiceAccountUnknown,
}

impl DenyReason {
    /// The reason in a word, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::UnboundRole => "unbound_role",
            DenyReason::Tie => "tie",
            DenyReason::ReservedName => "reserved_name",
            DenyReason::HostNetwork => "host_network",
            DenyReason::CredentialsPort => "credentials_port",
            DenyReason::LegacyInitContainer => "legacy_init_container",
            DenyReason::ServiceAccountUnknown => "service_account_unknown",
        }
    }
}

impl Denial {
    fn new(reason: DenyReason, message: String) -> Self {
        Denial {
            reason,
            message: format!("rolebridge: {message}"),
        }
    }
}

/// Admission warnings, each prefixed so `kubectl` users see who is talking.
#[derive(Debug, Default)]
struct Warnings(Vec<String>);

impl Warnings {
    fn push(&mut self, msg: impl std::fmt::Display) {
        self.0.push(format!("rolebridge: {msg}"));
    }
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

/// A container that will get a role: what `plan` decides and `render` (with `delivery`)
/// writes out.
struct Assignment<'p> {
    kind: Kind,
    index: usize,
    container: &'p ContainerView<'p>,
    binding: &'p Binding,
    /// [`delivery::identity_env`] of the binding, computed once.
    identity: std::rc::Rc<delivery::Identity>,
}

fn is_agent(name: &str) -> bool {
    name == AGENT_CONTAINER || name == AGENT_INIT_CONTAINER
}

/// Every container of the pod with where it sits: init containers first, in pod order.
fn containers<'p, 'a>(
    pod: &'p PodView<'a>,
) -> impl Iterator<Item = (Kind, usize, &'p ContainerView<'a>)> + Clone {
    let init = pod.spec.init_containers.as_deref().unwrap_or_default();
    let app = pod.spec.containers.as_deref().unwrap_or_default();
    init.iter()
        .enumerate()
        .map(|(i, c)| (Kind::Init, i, c))
        .chain(app.iter().enumerate().map(|(i, c)| (Kind::App, i, c)))
}

/// Computes the patch for a pod. `bindings` are the bindings of the pod's service account in
/// its namespace (what the cache returns for `(namespace, pod.service_account())`), `account`
/// what is known of that service account: the Google service account the agent is pinned to
/// (only read when a Google-source binding covers a container).
pub fn mutate(
    pod: &PodView<'_>,
    namespace: &str,
    bindings: &[Binding],
    account: &ServiceAccountState,
    cfg: &Config,
) -> Result<Mutation, Denial> {
    let mut warnings = Warnings::default();
    let skip = |why, warnings: Warnings| {
        Ok(Mutation {
            outcome: Outcome::Skipped(why),
            patch: Patch::default(),
            warnings: warnings.0,
        })
    };
    let gate = match gate::gate(pod, namespace, bindings, cfg, &mut warnings)? {
        Ok(gate) => gate,
        Err(why) => return skip(why, warnings),
    };
    let ctx = delivery::DeliveryCtx::new(pod, cfg);
    let planned = plan::plan(pod, namespace, bindings, &gate, &ctx, &mut warnings)?;
    if planned.is_empty() {
        warnings.push(format!(
            "service account {:?} is bound to {}, but no container of this pod is covered, so it gets no AWS credentials from rolebridge",
            pod.service_account(),
            gate::binding_list(bindings)
        ));
        return skip(Skip::NoContainerCovered, warnings);
    }
    reserved::check(pod)?;
    let patch = render::render(pod, namespace, &planned, account, &ctx, &mut warnings)?;
    let outcome = if patch.is_empty() {
        Outcome::Skipped(Skip::AlreadyInjected)
    } else {
        Outcome::Mutated
    };
    Ok(Mutation {
        outcome,
        patch,
        warnings: warnings.0,
    })
}

/// The `container=binding` pairs a mutation's patch records in `rolebridge.io/bindings`, or the
/// pod's own annotation where the patch leaves it as it was: what an admission applied.
pub(crate) fn applied_bindings<'p>(patch: &'p Patch, pod: &'p PodView<'_>) -> Option<&'p str> {
    patch
        .applied()
        .or_else(|| pod.annotation(ANNOTATION_APPLIED))
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
            ..Binding::default()
        }
    }

    /// A service account set up for Workload Identity.
    fn wi() -> ServiceAccountState {
        ServiceAccountState::WorkloadIdentity("app@project.iam.gserviceaccount.com".into())
    }

    fn applied(m: &Mutation) -> Option<&str> {
        m.patch.applied()
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
        let m = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app=app-only,side=writer"));

        // Two bindings name the container: the annotation chooses among them...
        let bindings = [
            binding("a", Some(&["app", "side"])),
            binding("writer", Some(&["app"])),
        ];
        let m = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app=writer,side=a"));
        // ...but an all-containers binding does not rank with them.
        let bindings = [
            binding("a", Some(&["app"])),
            binding("b", Some(&["app"])),
            binding("writer", None),
        ];
        let err = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap_err();
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
        let m = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap();
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
        let err = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap_err();
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
        let m = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap();
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
            let err = mutate(&pod, "ns", &bindings, &wi(), &cfg).unwrap_err();
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
            let m = mutate(&pod, "ns", &bindings, &wi(), &cfg).unwrap();
            assert_eq!(m.outcome, Outcome::Skipped(Skip::OptedOut));
            let windows = json.replace(r#""spec":{"#, r#""spec":{"os":{"name":"windows"},"#);
            let pod = PodView::from_json(&windows).unwrap();
            let m = mutate(&pod, "ns", &bindings, &wi(), &cfg).unwrap();
            assert_eq!(m.outcome, Outcome::Skipped(Skip::Windows));
            let pod = PodView::from_json(&json).unwrap();
            let m = mutate(&pod, "ns", &[binding("b", Some(&["worker"]))], &wi(), &cfg).unwrap();
            assert_eq!(m.outcome, Outcome::Skipped(Skip::NoContainerCovered));

            // ...and a pod rolebridge injected (the annotation is there) is a reinvocation.
            let injected = json.replace(
                r#""name":"p"}"#,
                r#""name":"p","annotations":{"rolebridge.io/bindings":"app=b"}}"#,
            );
            let pod = PodView::from_json(&injected).unwrap();
            assert!(mutate(&pod, "ns", &bindings, &wi(), &cfg).is_ok());
        }
    }

    /// What an earlier injection cannot be given by an `add` is reported: a projected volume
    /// without a new audience, an agent without the Google pin, an agent placed before a native
    /// sidecar proxy that Istio did not move to the front.
    #[test]
    fn what_an_earlier_injection_lacks_is_reported() {
        let mut k8s = binding("k8s", Some(&["late"]));
        k8s.token_source = TokenSource::Kubernetes;
        k8s.audience = Some("other".into());
        let injected = r#"{"metadata":{"name":"p","annotations":{"rolebridge.io/bindings":"app=b"}},
            "spec":{"serviceAccountName":"sa",
            "volumes":[{"name":"rolebridge-kubernetes-token","projected":{"sources":[
                {"serviceAccountToken":{"audience":"sts.amazonaws.com","expirationSeconds":3600,"path":"sts.amazonaws.com.token"}}]}}],
            "containers":[{"name":"app"},{"name":"late"}]}}"#;
        let pod = PodView::from_json(injected).unwrap();
        let m = mutate(&pod, "ns", &[k8s], &wi(), &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("late=k8s"));
        assert!(
            m.warnings.iter().any(|w| w.contains(
                r#"volume "rolebridge-kubernetes-token" already in this pod does not project the token for audience "other""#
            )),
            "{:?}",
            m.warnings
        );

        let unpinned = r#"{"metadata":{"name":"p","annotations":{"rolebridge.io/bindings":"app=b"}},
            "spec":{"serviceAccountName":"sa","initContainers":[
                {"name":"istio-init"},{"name":"rolebridge-agent","restartPolicy":"Always","args":["run","--token","/var/run/secrets/rolebridge.io/sts.amazonaws.com.token=sts.amazonaws.com"]},
                {"name":"istio-proxy","restartPolicy":"Always"}],
            "containers":[{"name":"app"}]}}"#;
        let pod = PodView::from_json(unpinned).unwrap();
        let m = mutate(&pod, "ns", &[binding("b", None)], &wi(), &Config::default()).unwrap();
        let joined = m.warnings.join("\n");
        assert!(
            joined.contains("does not serve the Google service account pin `--google-service-account app@project.iam.gserviceaccount.com`"),
            "{joined}"
        );
        assert!(
            joined.contains(r#"the agent container "rolebridge-agent" starts before istio-proxy"#),
            "{joined}"
        );
        // A service account that cannot be read denies a new agent, not one already there.
        let m = mutate(
            &pod,
            "ns",
            &[binding("b", None)],
            &ServiceAccountState::Missing,
            &Config::default(),
        )
        .unwrap();
        assert!(!m.warnings.join("").contains("pin"), "{:?}", m.warnings);
    }

    #[test]
    fn role_annotation_naming_a_binding_that_covers_no_container_warns() {
        let json = r#"{"metadata":{"name":"p","annotations":{"rolebridge.io/role":"worker"}},
            "spec":{"serviceAccountName":"sa","containers":[{"name":"app"}]}}"#;
        let pod = PodView::from_json(json).unwrap();
        let bindings = [binding("base", None), binding("worker", Some(&["worker"]))];
        let m = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap();
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
        let m = mutate(&pod, "ns", &bindings, &wi(), &Config::default()).unwrap();
        assert_eq!(applied(&m), Some("app=worker"));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }
}
