//! Property tests for the mutation, on generated pods and bindings.
//!
//! Pods get random init and app containers (unique names, rarely one under the agent's reserved
//! names), optional / `null` / present env (role/token variables that are the user's own, or
//! exactly what a binding writes), volumeMounts, volumes (rarely one named `rolebridge-token`)
//! and annotations, annotation keys with `/` and `~`, rolebridge's own annotations with valid and
//! invalid values, unknown fields at several levels, sometimes `hostNetwork`, a
//! `kubernetes.io/os` node selector, and Istio's containers as its injector places them (native
//! sidecar proxy after `istio-init`/`istio-validation`, or a regular proxy container). Bindings
//! of the pod's service account get random `containers`, audiences and regions, either delivery
//! (a session duration and/or a role chain selects the credentials endpoint) and either token
//! source, so pods mix them; the service account has a Google service account, none, or cannot
//! be read. Containers sometimes set the endpoint's variables, the user's own or exactly
//! rolebridge's. `PROPTEST_CASES=N` runs more cases.
//!
//! Properties: the patch only adds and always applies; the result is a fixed point; removing
//! exactly what rolebridge owns from the result gives back the input (so no user field is
//! changed, every pre-existing env var keeps its value, and nothing is duplicated); env names
//! stay unique per container; and an independent model of the rules predicts the outcome:
//! which container gets which binding, every skip, the warning for a `rolebridge.io/role` whose
//! binding covers no container, and a denial (and which rule caused it) exactly when there is a
//! `rolebridge.io/role` that names no binding of the service account, an unresolved tie on a
//! container that is not the user's own, a reserved name in a pod rolebridge did not inject, a
//! `hostNetwork` pod that needs the endpoint or a Google token, (legacy mode) an init container
//! that needs the endpoint, or a new agent for Google tokens of a service account that cannot be
//! read. Each covered container gets exactly its delivery's variables (the token file of its
//! binding's source) and mount, never the other's; there is an agent exactly when a Google token
//! or the endpoint needs one, placed after a native-sidecar proxy and running as a regular
//! proxy's user; it serves every Google token and every endpoint binding (reading the projected
//! file for Kubernetes ones) and is pinned to the service account's Google service account
//! exactly when a Google-source binding is planned; the projected volume holds one token per
//! Kubernetes audience; the endpoint's port is recorded exactly when the endpoint is used.

use std::collections::BTreeSet;

use json_patch::PatchOperation;
use proptest::prelude::*;
use proptest::sample::subsequence;
use rolebridge_contract::aws_env::{
    CONTAINER_AUTHORIZATION_TOKEN as ENV_AUTHORIZATION_TOKEN,
    CONTAINER_AUTHORIZATION_TOKEN_FILE as ENV_AUTHORIZATION_TOKEN_FILE,
    CONTAINER_CREDENTIALS_FULL_URI as ENV_CREDENTIALS_FULL_URI,
    CONTAINER_CREDENTIALS_RELATIVE_URI as ENV_CREDENTIALS_RELATIVE_URI,
    DEFAULT_REGION as ENV_DEFAULT_REGION, REGION as ENV_REGION, ROLE_ARN as ENV_ROLE_ARN,
    ROLE_SESSION_NAME as ENV_SESSION_NAME, STS_REGIONAL_ENDPOINTS as ENV_STS_REGIONAL,
    WEB_IDENTITY_TOKEN_FILE as ENV_TOKEN_FILE,
};
use rolebridge_contract::{
    AUTH_TOKEN_PATH, CredentialsSpec, DEFAULT_CREDENTIALS_PORT, credentials_uri,
};
use rolebridge_webhook::admission::mutate::{
    self, AGENT_CONTAINER, AGENT_INIT_CONTAINER, ANNOTATION_APPLIED, ANNOTATION_CREDENTIALS_PORT,
    ANNOTATION_INJECT, ANNOTATION_ROLE, ANNOTATION_SKIP_CONTAINERS, Binding, Config, Delivery,
    KUBERNETES_TOKEN_MOUNT_PATH, KUBERNETES_TOKEN_VOLUME, Outcome, ServiceAccountState,
    SidecarMode, Skip, TOKEN_MOUNT_PATH, TOKEN_VOLUME, TokenSource, kubernetes_token_path,
    token_path,
};
use rolebridge_webhook::domain::binding::{Hop, can_tie};
use rolebridge_webhook::domain::pod::PodView;
use rolebridge_webhook::domain::status;
use serde_json::{Map, Value, json};

const SA: &str = "app-sa";
const GSA: &str = "app@project.iam.gserviceaccount.com";

fn wi() -> ServiceAccountState {
    ServiceAccountState::WorkloadIdentity(GSA.into())
}

/// The operations of a patch, read back from the JSON text the API server gets.
fn ops_of(patch: &mutate::Patch) -> Result<Vec<PatchOperation>, TestCaseError> {
    patch
        .ops()
        .map_err(|e| TestCaseError::fail(format!("the patch is not a JSON patch: {e}; {patch:?}")))
}
const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
const NS: &str = "default";
const CONTAINER_NAMES: &[&str] = &["app", "web", "worker", "proxy", "migrate", "seed", "logs"];
const BINDING_NAMES: &[&str] = &["b0", "b1", "b2", "b3"];
const ENV_NAMES: &[&str] = &[
    "FOO",
    "BAR",
    ENV_REGION,
    ENV_DEFAULT_REGION,
    ENV_STS_REGIONAL,
    ENV_SESSION_NAME,
    "AWS_ACCESS_KEY_ID",
    ENV_ROLE_ARN,
    ENV_TOKEN_FILE,
    ENV_CREDENTIALS_FULL_URI,
    ENV_CREDENTIALS_RELATIVE_URI,
    ENV_AUTHORIZATION_TOKEN,
    ENV_AUTHORIZATION_TOKEN_FILE,
];
/// The variables that say where a container's credentials come from.
const IDENTITY: &[&str] = &[
    ENV_ROLE_ARN,
    ENV_TOKEN_FILE,
    ENV_CREDENTIALS_FULL_URI,
    ENV_CREDENTIALS_RELATIVE_URI,
    ENV_AUTHORIZATION_TOKEN,
    ENV_AUTHORIZATION_TOKEN_FILE,
];
const OWNED_ENV: &[&str] = &[
    ENV_ROLE_ARN,
    ENV_TOKEN_FILE,
    ENV_CREDENTIALS_FULL_URI,
    ENV_AUTHORIZATION_TOKEN_FILE,
    ENV_SESSION_NAME,
    ENV_REGION,
    ENV_DEFAULT_REGION,
    ENV_STS_REGIONAL,
];

// ---------------------------------------------------------------------------------------------
// Generators

/// An array-valued field: missing, explicitly `null`, or present (possibly empty).
#[derive(Debug, Clone)]
enum Field {
    Absent,
    Null,
    Present(Value),
}

fn field(inner: impl Strategy<Value = Value>) -> impl Strategy<Value = Field> {
    prop_oneof![
        1 => Just(Field::Absent),
        1 => Just(Field::Null),
        4 => inner.prop_map(Field::Present),
    ]
}

fn put(obj: &mut Map<String, Value>, key: &str, f: Field) {
    match f {
        Field::Absent => {}
        Field::Null => {
            obj.insert(key.into(), Value::Null);
        }
        Field::Present(v) => {
            obj.insert(key.into(), v);
        }
    }
}

/// Arbitrary JSON for unknown fields, with keys and strings that need pointer escaping.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|i| json!(i)),
        "[a-z~/ ]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z~/]{1,5}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Zero or one unknown field (the key never collides with a field the code reads).
fn extra() -> impl Strategy<Value = Option<(String, Value)>> {
    prop::option::weighted(0.5, ("future[A-Z][a-z~/]{0,4}", any_json()))
}

fn with_extra(mut v: Value, e: Option<(String, Value)>) -> Value {
    if let (Some((k, x)), Some(obj)) = (e, v.as_object_mut()) {
        obj.insert(k, x);
    }
    v
}

fn env_entry(name: &'static str) -> impl Strategy<Value = Value> {
    // Role/token values are mostly the user's own, and sometimes exactly what binding b0 or b1
    // (with the default audience) writes, as after an earlier injection.
    let values = match name {
        ENV_ROLE_ARN => vec![
            "arn:aws:iam::999999999999:role/users-own".to_owned(),
            "arn:aws:iam::999999999999:role/users-own".to_owned(),
            "arn:aws:iam::123456789012:role/b0".to_owned(),
            "arn:aws:iam::123456789012:role/b1".to_owned(),
        ],
        ENV_TOKEN_FILE => vec![
            "/users/own/token".to_owned(),
            token_path("sts.amazonaws.com"),
            kubernetes_token_path("sts.amazonaws.com"),
        ],
        ENV_CREDENTIALS_FULL_URI => vec![
            "http://127.0.0.1:9911/users-own".to_owned(),
            credentials_uri(DEFAULT_CREDENTIALS_PORT, "b0"),
            credentials_uri(DEFAULT_CREDENTIALS_PORT, "b1"),
        ],
        ENV_AUTHORIZATION_TOKEN_FILE => {
            vec!["/users/own/auth".to_owned(), AUTH_TOKEN_PATH.to_owned()]
        }
        _ => vec![format!("user-{}", name.to_lowercase())],
    };
    (0..3u8, prop::sample::select(values), extra()).prop_map(move |(kind, value, e)| {
        let v = match kind {
            0 | 1 => json!({"name": name, "value": value}),
            _ => json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}),
        };
        with_extra(v, e)
    })
}

fn env_list() -> impl Strategy<Value = Value> {
    // Role/token variables are rarer, so most containers stay coverable.
    let names = prop_oneof![
        4 => subsequence(&ENV_NAMES[..7], 0..=4),
        1 => subsequence(ENV_NAMES, 0..=5),
    ];
    let plain = names
        .prop_shuffle()
        .prop_flat_map(|names| names.into_iter().map(env_entry).collect::<Vec<_>>())
        .prop_map(Value::Array);
    // Sometimes exactly the pair binding b0 or b1 writes with either delivery (an earlier
    // injection), plus others.
    let injected = (
        prop::sample::select(vec!["b0", "b1"]),
        any::<bool>(),
        subsequence(&ENV_NAMES[..7], 0..=3)
            .prop_flat_map(|names| names.into_iter().map(env_entry).collect::<Vec<_>>()),
    )
        .prop_map(|(b, endpoint, mut env)| {
            if endpoint {
                env.push(json!({"name": ENV_CREDENTIALS_FULL_URI, "value": credentials_uri(DEFAULT_CREDENTIALS_PORT, b)}));
                env.push(json!({"name": ENV_AUTHORIZATION_TOKEN_FILE, "value": AUTH_TOKEN_PATH}));
            } else {
                env.push(json!({"name": ENV_ROLE_ARN, "value": format!("arn:aws:iam::123456789012:role/{b}")}));
                env.push(json!({"name": ENV_TOKEN_FILE, "value": token_path(DEFAULT_AUDIENCE)}));
            }
            Value::Array(env)
        });
    prop_oneof![9 => plain, 1 => injected]
}

fn mounts() -> impl Strategy<Value = Value> {
    let pool = vec![
        json!({"name": "data", "mountPath": "/data"}),
        json!({"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true, "futureMount": 1}),
        json!({"name": "kube-api", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}),
    ];
    let clash = prop_oneof![
        6 => Just(None),
        1 => Just(Some(json!({"name": "own", "mountPath": TOKEN_MOUNT_PATH}))),
        1 => Just(Some(json!({"name": "own", "mountPath": format!("{TOKEN_MOUNT_PATH}/")}))),
        1 => Just(Some(json!({"name": "own", "mountPath": KUBERNETES_TOKEN_MOUNT_PATH}))),
    ];
    (subsequence(pool, 0..=3), clash).prop_map(|(mut m, c)| {
        m.extend(c);
        Value::Array(m)
    })
}

fn container(name: &'static str) -> impl Strategy<Value = Value> {
    (field(env_list()), field(mounts()), extra(), any::<bool>()).prop_map(
        move |(env, mounts, e, native_sidecar)| {
            let mut c = Map::new();
            c.insert("name".into(), json!(name));
            c.insert(
                "image".into(),
                json!(format!("registry.example.com/{name}:1")),
            );
            put(&mut c, "env", env);
            put(&mut c, "volumeMounts", mounts);
            if native_sidecar {
                // In init containers this is a user's native sidecar; harmless elsewhere here.
                c.insert(
                    "resizePolicy".into(),
                    json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"}]),
                );
            }
            with_extra(Value::Object(c), e)
        },
    )
}

fn containers(names: Vec<&'static str>) -> impl Strategy<Value = Value> {
    names
        .into_iter()
        .map(container)
        .collect::<Vec<_>>()
        .prop_map(Value::Array)
}

fn volumes() -> impl Strategy<Value = Value> {
    let pool = vec![
        json!({"name": "data", "emptyDir": {}}),
        json!({"name": "cfg", "configMap": {"name": "cfg"}}),
        json!({"name": "own", "secret": {"secretName": "own"}, "futureVolume": [1]}),
    ];
    // Rarely, the user's own volume under rolebridge's reserved name.
    let reserved = prop::option::weighted(
        0.1,
        prop::sample::select(vec![
            json!({"name": TOKEN_VOLUME, "configMap": {"name": "mine"}}),
            json!({"name": KUBERNETES_TOKEN_VOLUME, "configMap": {"name": "mine"}}),
        ]),
    );
    (subsequence(pool, 0..=3), reserved).prop_map(|(mut v, r)| {
        v.extend(r);
        Value::Array(v)
    })
}

fn annotations() -> impl Strategy<Value = Value> {
    let other = prop::collection::btree_map("[a-z.~/]{1,10}", "[a-z~/]{0,5}", 0..4);
    let inject = prop::option::weighted(
        0.3,
        prop::sample::select(vec![
            "true", "false", " false ", "False", "disabled", "maybe", "",
        ]),
    );
    let role = prop::option::weighted(
        0.4,
        prop::sample::select(vec!["b0", "b1", "b2", "b3", " b1 ", "nope", ""]),
    );
    let skip = prop::option::weighted(
        0.3,
        subsequence(
            vec![
                "app", "web", "worker", "proxy", "migrate", " logs", "ghost", "",
            ],
            0..=3,
        )
        .prop_map(|s| s.join(",")),
    );
    let applied = prop::option::weighted(0.25, Just("stale=value"));
    (other, inject, role, skip, applied).prop_map(|(other, inject, role, skip, applied)| {
        let mut m: Map<String, Value> = other.into_iter().map(|(k, v)| (k, json!(v))).collect();
        let ours = [
            (ANNOTATION_INJECT, inject.map(str::to_owned)),
            (ANNOTATION_ROLE, role.map(str::to_owned)),
            (ANNOTATION_SKIP_CONTAINERS, skip),
            (ANNOTATION_APPLIED, applied.map(str::to_owned)),
        ];
        for (k, v) in ours {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    })
}

fn pod_name() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop_oneof![
        2 => Just((None, Some("gen-".to_owned()))),
        1 => Just((Some("p".to_owned()), None)),
        3 => "[a-z][a-z0-9-]{1,20}".prop_map(|n| (Some(n), None)),
        1 => "[a-z]{65,80}".prop_map(|n| (Some(n), None)),
    ]
}

fn pod() -> impl Strategy<Value = Value> {
    // Unique names across init and app containers, at least one app container.
    // Rarely, a user's container under one of the agent's reserved names.
    let reserved = prop::option::weighted(
        0.12,
        prop::sample::select(vec![AGENT_CONTAINER, AGENT_INIT_CONTAINER]),
    );
    let split = (subsequence(CONTAINER_NAMES, 1..=5), reserved)
        .prop_map(|(mut names, r)| {
            names.extend(r);
            names
        })
        .prop_shuffle()
        .prop_flat_map(|names| {
            let n = names.len();
            (Just(names), 0..n)
        });
    split
        .prop_flat_map(|(names, n_init)| {
            let (init, app) = names.split_at(n_init);
            let init_field = if init.is_empty() {
                prop_oneof![
                    Just(Field::Absent),
                    Just(Field::Null),
                    Just(Field::Present(json!([])))
                ]
                .boxed()
            } else {
                containers(init.to_vec()).prop_map(Field::Present).boxed()
            };
            (
                init_field,
                containers(app.to_vec()),
                field(volumes()),
                field(annotations()),
                pod_name(),
                (extra(), extra(), extra()),
                prop_oneof![8 => Just(None), 1 => Just(Some("linux")), 1 => Just(Some("windows"))],
                (
                    prop_oneof![Just("serviceAccountName"), Just("serviceAccount")],
                    prop_oneof![16 => Just(None), 1 => Just(Some(false)), 1 => Just(Some(true))],
                    // Rarely, no metadata map at all (a fuzzer finding: the patch must add it).
                    prop::bool::weighted(0.03),
                    mesh(),
                    prop_oneof![60 => Just(None), 1 => Just(Some("linux")), 1 => Just(Some("windows"))],
                ),
            )
        })
        .prop_map(
            |(
                init,
                app,
                vols,
                annotations,
                (name, gen_name),
                (e_top, e_meta, e_spec),
                os,
                (sa_field, host_network, no_metadata, mesh, selector),
            )| {
                let mut meta = Map::new();
                if let Some(n) = name {
                    meta.insert("name".into(), json!(n));
                }
                if let Some(g) = gen_name {
                    meta.insert("generateName".into(), json!(g));
                }
                meta.insert("namespace".into(), json!(NS));
                put(&mut meta, "annotations", annotations);
                let mut spec = Map::new();
                spec.insert(sa_field.into(), json!(SA));
                put(&mut spec, "initContainers", init);
                spec.insert("containers".into(), app);
                put(&mut spec, "volumes", vols);
                if let Some(os) = os {
                    spec.insert("os".into(), json!({"name": os}));
                }
                if let Some(h) = host_network {
                    spec.insert("hostNetwork".into(), json!(h));
                }
                if let Some(os) = selector {
                    spec.insert(
                        "nodeSelector".into(),
                        json!({"pool": "default", "kubernetes.io/os": os}),
                    );
                }
                add_mesh(&mut spec, mesh);
                let mut pod = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": with_extra(Value::Object(meta), e_meta),
                    "spec": with_extra(Value::Object(spec), e_spec),
                });
                if no_metadata {
                    pod.as_object_mut().unwrap().remove("metadata");
                }
                with_extra(pod, e_top)
            },
        )
}

/// Istio's containers, as its injector renders them.
const ISTIO_PROXY: &str = "istio-proxy";
const MESH_NAMES: &[&str] = &[ISTIO_PROXY, "istio-init", "istio-validation"];

/// Whether and how Istio injected the pod before rolebridge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mesh {
    None,
    /// `istio-proxy` is a native sidecar after `istio-init` (or `istio-validation`, CNI).
    Native {
        cni: bool,
    },
    /// `istio-proxy` is a regular container; `istio-init` runs last of the init containers
    /// (or `istio-validation` first, CNI).
    Legacy {
        cni: bool,
    },
}

fn mesh() -> impl Strategy<Value = Mesh> {
    prop_oneof![
        6 => Just(Mesh::None),
        1 => any::<bool>().prop_map(|cni| Mesh::Native { cni }),
        1 => any::<bool>().prop_map(|cni| Mesh::Legacy { cni }),
    ]
}

fn istio_iptables(cni: bool) -> Value {
    if cni {
        json!({"name": "istio-validation", "image": "istio/proxyv2:1.27",
               "args": ["istio-iptables", "-u", "1337", "--run-validation", "--skip-rule-apply"],
               "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true}})
    } else {
        json!({"name": "istio-init", "image": "istio/proxyv2:1.27",
               "args": ["istio-iptables", "-p", "15001", "-u", "1337", "-m", "REDIRECT"],
               "securityContext": {"runAsUser": 0, "runAsGroup": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}})
    }
}

fn istio_proxy(native: bool) -> Value {
    let mut c = json!({"name": ISTIO_PROXY, "image": "istio/proxyv2:1.27", "args": ["proxy", "sidecar"],
        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true}});
    if native {
        c["restartPolicy"] = json!("Always");
    }
    c
}

/// Istio's containers where its injector puts them (`reorderPod`).
fn add_mesh(spec: &mut Map<String, Value>, mesh: Mesh) {
    let init: Vec<Value> = arr(spec.get("initContainers").unwrap_or(&Value::Null)).to_vec();
    let (init, proxy_container) = match mesh {
        Mesh::None => return,
        Mesh::Native { cni } => {
            let mut all = vec![istio_iptables(cni), istio_proxy(true)];
            all.extend(init);
            (all, None)
        }
        Mesh::Legacy { cni } => {
            let mut all = Vec::new();
            if cni {
                all.push(istio_iptables(true));
            }
            all.extend(init);
            if !cni {
                all.push(istio_iptables(false));
            }
            (all, Some(istio_proxy(false)))
        }
    };
    spec.insert("initContainers".into(), Value::Array(init));
    if let (Some(p), Some(Value::Array(cs))) = (proxy_container, spec.get_mut("containers")) {
        cs.push(p);
    }
}

fn account() -> impl Strategy<Value = ServiceAccountState> {
    prop_oneof![
        32 => Just(wi()),
        4 => Just(ServiceAccountState::NoWorkloadIdentity),
        1 => Just(ServiceAccountState::Missing),
    ]
}

fn bindings() -> impl Strategy<Value = Vec<Binding>> {
    let one = (
        prop::option::weighted(
            0.5,
            subsequence(
                vec![
                    "app", "web", "worker", "proxy", "migrate", "seed", "logs", "ghost",
                ],
                1..=3,
            ),
        ),
        prop::option::weighted(
            0.4,
            prop::sample::select(vec![
                "sts.amazonaws.com",
                "aud-a",
                "https://x.example/y?z=1",
            ]),
        ),
        prop::option::weighted(0.3, prop::sample::select(vec!["us-east-1", "eu-west-1"])),
        // Mostly web identity; sometimes a session duration, a chain, or both.
        prop_oneof![8 => Just((false, false)), 1 => Just((true, false)), 1 => Just((false, true)), 1 => Just((true, true))],
        prop::bool::weighted(0.3),
    );
    let names = prop_oneof![1 => Just(Vec::new()), 10 => subsequence(BINDING_NAMES, 1..=3)];
    names
        .prop_flat_map(move |names| {
            let n = names.len();
            (Just(names), prop::collection::vec(one.clone(), n))
        })
        .prop_map(|(names, specs)| {
            names
                .into_iter()
                .zip(specs)
                .map(
                    |(name, (containers, audience, region, (timed, chained), kubernetes))| {
                        Binding {
                            name: name.to_owned(),
                            service_account: SA.to_owned(),
                            role_arn: format!("arn:aws:iam::123456789012:role/{name}"),
                            audience: audience.map(str::to_owned),
                            region: region.map(str::to_owned),
                            containers: containers
                                .map(|cs| cs.into_iter().map(str::to_owned).collect()),
                            chain: if chained {
                                vec![Hop {
                                    role_arn: format!(
                                        "arn:aws:iam::210987654321:role/{name}-target"
                                    ),
                                    external_id: Some(format!("ext-{name}")),
                                }]
                            } else {
                                Vec::new()
                            },
                            duration_seconds: timed.then_some(900),
                            session_tags: chained,
                            token_source: if kubernetes {
                                TokenSource::Kubernetes
                            } else {
                                TokenSource::Google
                            },
                        }
                    },
                )
                .collect()
        })
}

// ---------------------------------------------------------------------------------------------
// The model: the rules of issue 2, written independently of `mutate.rs`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DenyReason {
    /// `rolebridge.io/role` names no binding of the service account.
    UnboundRole,
    /// Several bindings of the same rank cover a container and nothing chooses.
    Tie,
    /// A reserved agent container / token volume name in a pod rolebridge did not inject.
    ReservedName,
    /// A `hostNetwork` pod with a binding that needs the credentials endpoint.
    HostNetwork,
    /// Legacy sidecar mode and an init container covered by an endpoint binding.
    LegacyInit,
    /// A new agent would take Google tokens, and the service account could not be read.
    PinUnknown,
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Deny(DenyReason),
    Skip(Skip),
    /// (container name, binding name) in pod order: init containers first.
    Mutate(Vec<(String, String)>),
}

/// What the model predicts, plus what the coverage test wants to see reached.
#[derive(Debug)]
struct Prediction {
    expected: Expected,
    /// A warning that `rolebridge.io/role` names a binding covering no container of the pod.
    role_warning: bool,
    /// A container with an unresolved tie was the user's own, so it was skipped, not a denial.
    owned_tie: bool,
    /// The pod uses a reserved name but carries the bindings annotation (reinvocation).
    reserved_annotated: bool,
    /// A container's role/token variables were recognised as rolebridge's own.
    ours_recognised: bool,
    /// Containers got each delivery (for the coverage test: mixed pods).
    web_identity: bool,
    endpoint: bool,
    /// A container got a Kubernetes-source binding; nothing in the pod needs an agent.
    kubernetes: bool,
    no_agent: bool,
    /// A mesh proxy decided where the agent goes, or which user it runs as.
    mesh: bool,
}

/// The model's own statement of what each delivery writes to say where credentials come from.
fn identity_of(b: &Binding) -> [(&'static str, String); 2] {
    if b.chain.is_empty() && b.duration_seconds.is_none() {
        let aud = b.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE);
        let file = if is_google(b) {
            token_path(aud)
        } else {
            kubernetes_token_path(aud)
        };
        [(ENV_ROLE_ARN, b.role_arn.clone()), (ENV_TOKEN_FILE, file)]
    } else {
        [
            (
                ENV_CREDENTIALS_FULL_URI,
                credentials_uri(DEFAULT_CREDENTIALS_PORT, &b.name),
            ),
            (ENV_AUTHORIZATION_TOKEN_FILE, AUTH_TOKEN_PATH.to_owned()),
        ]
    }
}

fn is_endpoint(b: &Binding) -> bool {
    !b.chain.is_empty() || b.duration_seconds.is_some()
}

fn is_google(b: &Binding) -> bool {
    b.token_source == TokenSource::Google
}

/// The volume and directory a covered container mounts for `b`.
fn mount_of(b: &Binding) -> Value {
    if is_google(b) || is_endpoint(b) {
        json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true})
    } else {
        json!({"name": KUBERNETES_TOKEN_VOLUME, "mountPath": KUBERNETES_TOKEN_MOUNT_PATH, "readOnly": true})
    }
}

/// Where a new init container of rolebridge goes: after a native-sidecar istio-proxy.
fn agent_init_index(pod: &Value) -> usize {
    arr(&pod["spec"]["initContainers"])
        .iter()
        .position(|c| c["name"] == ISTIO_PROXY && c["restartPolicy"] == "Always")
        .map_or(0, |i| i + 1)
}

/// The pod's proxy is a regular container: the agent runs as its user.
fn legacy_mesh(pod: &Value) -> bool {
    arr(&pod["spec"]["containers"])
        .iter()
        .any(|c| c["name"] == ISTIO_PROXY)
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn env_has(c: &Value, name: &str) -> bool {
    arr(&c["env"]).iter().any(|e| e["name"] == name)
}

/// The variable is set to exactly this literal value (not `valueFrom`).
fn env_is(c: &Value, name: &str, want: &str) -> bool {
    arr(&c["env"])
        .iter()
        .any(|e| e["name"] == name && e.get("valueFrom").is_none() && e["value"] == want)
}

fn is_agent_name(name: &str) -> bool {
    name == AGENT_CONTAINER || name == AGENT_INIT_CONTAINER
}

fn predict(
    pod: &Value,
    bindings: &[Binding],
    account: &ServiceAccountState,
    legacy: bool,
) -> Prediction {
    let mut p = Prediction {
        expected: Expected::Skip(Skip::NoBinding),
        role_warning: false,
        owned_tie: false,
        reserved_annotated: false,
        ours_recognised: false,
        web_identity: false,
        endpoint: false,
        kubernetes: false,
        no_agent: false,
        mesh: false,
    };
    let done = |mut p: Prediction, e: Expected| {
        p.expected = e;
        p
    };
    if bindings.is_empty() {
        return done(p, Expected::Skip(Skip::NoBinding));
    }
    let ann = |k: &str| pod["metadata"]["annotations"][k].as_str();
    if matches!(
        ann(ANNOTATION_INJECT).map(str::trim),
        Some("false" | "False" | "disabled")
    ) {
        return done(p, Expected::Skip(Skip::OptedOut));
    }
    if pod["spec"]["os"]["name"] == "windows"
        || pod["spec"]["nodeSelector"]["kubernetes.io/os"] == "windows"
    {
        return done(p, Expected::Skip(Skip::Windows));
    }
    let role = ann(ANNOTATION_ROLE)
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if role.is_some_and(|r| !bindings.iter().any(|b| b.name == r)) {
        return done(p, Expected::Deny(DenyReason::UnboundRole));
    }
    let containers: Vec<&Value> = arr(&pod["spec"]["initContainers"])
        .iter()
        .chain(arr(&pod["spec"]["containers"]))
        .collect();
    let names = |b: &Binding, name: &str| {
        b.containers
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|x| x == name))
    };
    if let Some(b) = role.and_then(|r| bindings.iter().find(|b| b.name == r)) {
        p.role_warning = !containers.iter().any(|c| {
            let n = c["name"].as_str().unwrap();
            !is_agent_name(n) && (b.containers.is_none() || names(b, n))
        });
    }
    let skip: Vec<&str> = ann(ANNOTATION_SKIP_CONTAINERS)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let mut tie = false;
    let mut planned = Vec::new();
    for c in &containers {
        let name = c["name"].as_str().unwrap();
        if is_agent_name(name) || skip.contains(&name) {
            continue;
        }
        let named: Vec<&Binding> = bindings.iter().filter(|b| names(b, name)).collect();
        // Istio's containers are covered only by a binding that names them.
        if MESH_NAMES.contains(&name) && named.is_empty() {
            continue;
        }
        let all: Vec<&Binding> = bindings.iter().filter(|b| b.containers.is_none()).collect();
        let covering: Vec<&Binding> = named.iter().chain(&all).copied().collect();
        let tier = if named.is_empty() { all } else { named };
        let chosen = match tier.as_slice() {
            [] => continue,
            [one] => Some(*one),
            _ => tier.iter().copied().find(|b| Some(b.name.as_str()) == role),
        };
        // The user's own variables or mount: left alone before any tie is looked at.
        // Variables exactly as a covering binding's delivery writes them (and no other
        // identity variable) are rolebridge's own.
        let ours = |b: &Binding| {
            let mine = identity_of(b);
            IDENTITY
                .iter()
                .all(|v| match mine.iter().find(|(n, _)| n == v) {
                    Some((_, want)) => env_is(c, v, want),
                    None => !env_has(c, v),
                })
        };
        let has_vars = IDENTITY.iter().any(|v| env_has(c, v));
        let own_vars = has_vars && !covering.iter().any(|b| ours(b));
        let clash = arr(&c["volumeMounts"]).iter().any(|m| {
            let path = m["mountPath"].as_str().unwrap().trim_end_matches('/');
            (path == TOKEN_MOUNT_PATH && m["name"] != TOKEN_VOLUME)
                || (path == KUBERNETES_TOKEN_MOUNT_PATH && m["name"] != KUBERNETES_TOKEN_VOLUME)
        });
        if own_vars || clash {
            p.owned_tie |= chosen.is_none();
            continue;
        }
        p.ours_recognised |= has_vars;
        let Some(chosen) = chosen else {
            tie = true;
            continue;
        };
        // Ours, but for another covering binding: left alone too.
        if has_vars && !ours(chosen) {
            continue;
        }
        planned.push((name.to_owned(), chosen.name.clone()));
    }
    let agents = containers
        .iter()
        .any(|c| is_agent_name(c["name"].as_str().unwrap()));
    let reserved = agents
        || arr(&pod["spec"]["volumes"])
            .iter()
            .any(|v| v["name"] == TOKEN_VOLUME || v["name"] == KUBERNETES_TOKEN_VOLUME);
    let annotated = ann(ANNOTATION_APPLIED).is_some();
    let binding = |name: &str| bindings.iter().find(|b| b.name == name).unwrap();
    let init_names: Vec<&str> = arr(&pod["spec"]["initContainers"])
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let endpoint = planned.iter().any(|(_, b)| is_endpoint(binding(b)));
    let endpoint_init = planned
        .iter()
        .any(|(c, b)| is_endpoint(binding(b)) && init_names.contains(&c.as_str()));
    let google = planned.iter().any(|(_, b)| is_google(binding(b)));
    let host_network = pod["spec"]["hostNetwork"] == true;
    let e = if tie {
        Expected::Deny(DenyReason::Tie)
    } else if planned.is_empty() {
        Expected::Skip(Skip::NoContainerCovered)
    } else if reserved && !annotated {
        Expected::Deny(DenyReason::ReservedName)
    } else if endpoint && host_network {
        Expected::Deny(DenyReason::HostNetwork)
    } else if endpoint_init && legacy {
        Expected::Deny(DenyReason::LegacyInit)
    } else if google && host_network {
        Expected::Deny(DenyReason::HostNetwork)
    } else if google && !agents && *account == ServiceAccountState::Missing {
        Expected::Deny(DenyReason::PinUnknown)
    } else {
        p.reserved_annotated = reserved;
        p.endpoint = endpoint;
        p.web_identity = planned.iter().any(|(_, b)| !is_endpoint(binding(b)));
        p.kubernetes = planned.iter().any(|(_, b)| !is_google(binding(b)));
        p.no_agent = !google && !endpoint;
        p.mesh = !p.no_agent && (agent_init_index(pod) > 0 || legacy_mesh(pod));
        Expected::Mutate(planned)
    };
    done(p, e)
}

// ---------------------------------------------------------------------------------------------
// Ownership: remove exactly what rolebridge may add, and nothing else.

/// Restores an array/map field that rolebridge created (from absent or `null`) and that is
/// empty once rolebridge's entries are removed.
fn restore_missing(out: &mut Map<String, Value>, input: &Value, key: &str) {
    let empty = match out.get(key) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if !empty {
        return;
    }
    match input.get(key) {
        None => {
            out.remove(key);
        }
        Some(Value::Null) => {
            out.insert(key.into(), Value::Null);
        }
        Some(_) => {}
    }
}

/// Removes appended entries from `out[key]` (an array whose first entries must be exactly the
/// input's), checking each appended entry with `ok`.
fn strip_appended(
    out: &mut Map<String, Value>,
    input: &Value,
    key: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<(), String> {
    let before = arr(&input[key]).len();
    if let Some(Value::Array(a)) = out.get_mut(key) {
        if a.len() < before {
            return Err(format!("{what}: {key} lost entries"));
        }
        for added in a.drain(before..) {
            if !ok(&added) {
                return Err(format!("{what}: {key} gained a foreign entry {added}"));
            }
        }
    }
    restore_missing(out, input, key);
    Ok(())
}

/// Puts back the `runAsUser`/`runAsGroup` of an agent container that was there before, after
/// checking that they were changed to the proxy's user only.
fn restore_run_as(c: &mut Map<String, Value>, input: &Value) -> Result<(), String> {
    let sc = c
        .get_mut("securityContext")
        .and_then(Value::as_object_mut)
        .ok_or("the agent lost its securityContext")?;
    for field in ["runAsUser", "runAsGroup"] {
        if sc.get(field) != Some(&json!(1337)) {
            return Err(format!(
                "agent {field} is not the proxy's: {:?}",
                sc.get(field)
            ));
        }
        match input["securityContext"].get(field) {
            Some(v) => sc.insert(field.into(), v.clone()),
            None => sc.remove(field),
        };
    }
    if sc.is_empty() && input.get("securityContext").is_none() {
        c.remove("securityContext");
    }
    Ok(())
}

fn strip(out: &Value, input: &Value, covered: &BTreeSet<String>) -> Result<Value, String> {
    let proxy_user = legacy_mesh(input);
    let mut out = out.clone();
    let agent_names = [AGENT_CONTAINER, AGENT_INIT_CONTAINER];

    let meta = out["metadata"]
        .as_object_mut()
        .ok_or("metadata is not an object")?;
    if let Some(Value::Object(a)) = meta.get_mut("annotations") {
        for key in [ANNOTATION_APPLIED, ANNOTATION_CREDENTIALS_PORT] {
            match input["metadata"]["annotations"].get(key) {
                Some(v) => {
                    a.insert(key.into(), v.clone());
                }
                None => {
                    a.remove(key);
                }
            }
        }
    }
    restore_missing(meta, &input["metadata"], "annotations");
    if input.get("metadata").is_none() && meta.is_empty() {
        out.as_object_mut().unwrap().remove("metadata");
    }

    let spec = out["spec"].as_object_mut().ok_or("spec is not an object")?;
    let in_spec = &input["spec"];
    let had = |name: &str| arr(&in_spec["volumes"]).iter().any(|v| v["name"] == name);
    let (had_memory, had_projected) = (had(TOKEN_VOLUME), had(KUBERNETES_TOKEN_VOLUME));
    let memory =
        json!({"name": TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}});
    // The projected volume's sources are checked on their own.
    strip_appended(spec, in_spec, "volumes", "pod", |v| {
        (!had_memory && *v == memory)
            || (!had_projected
                && v["name"] == KUBERNETES_TOKEN_VOLUME
                && v["projected"]["sources"].is_array())
    })?;
    for field in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(field) {
            let ins = arr(&in_spec[field]);
            let is_agent = |c: &Value| agent_names.iter().any(|a| c["name"] == *a);
            if !ins.iter().any(is_agent) {
                cs.retain(|c| !is_agent(c));
            }
            if cs.len() != ins.len() {
                return Err(format!("{field}: containers added or removed"));
            }
            for (c, ic) in cs.iter_mut().zip(ins) {
                let name = ic["name"].as_str().unwrap_or_default().to_owned();
                let c = c.as_object_mut().ok_or("container is not an object")?;
                if is_agent(ic) && proxy_user {
                    // An agent injected before the mesh's regular proxy gets the proxy's user.
                    restore_run_as(c, ic)?;
                }
                if !covered.contains(&name) {
                    continue; // must be byte-for-byte unchanged: the final comparison checks it
                }
                let in_env: BTreeSet<&str> = arr(&ic["env"])
                    .iter()
                    .filter_map(|e| e["name"].as_str())
                    .collect();
                strip_appended(c, ic, "env", &name, |e| {
                    let n = e["name"].as_str().unwrap_or_default();
                    OWNED_ENV.contains(&n) && !in_env.contains(n)
                })?;
                let mounts = [
                    json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true}),
                    json!({"name": KUBERNETES_TOKEN_VOLUME, "mountPath": KUBERNETES_TOKEN_MOUNT_PATH, "readOnly": true}),
                ];
                strip_appended(c, ic, "volumeMounts", &name, |m| mounts.contains(m))?;
            }
        }
        restore_missing(spec, in_spec, field);
    }
    Ok(out)
}

fn find_container<'v>(pod: &'v Value, name: &str) -> Option<&'v Value> {
    arr(&pod["spec"]["initContainers"])
        .iter()
        .chain(arr(&pod["spec"]["containers"]))
        .find(|c| c["name"] == name)
}

fn env_value<'v>(c: &'v Value, name: &str) -> Option<&'v Value> {
    arr(&c["env"]).iter().find(|e| e["name"] == name)
}

/// The projected volume holds the Kubernetes token of every audience the planned
/// Kubernetes-source bindings use; a new agent is pinned exactly when a Google-source binding is
/// planned, to the service account's Google service account (or to none, with the advice).
fn check_tokens_and_pin(
    input: &Value,
    out: &Value,
    bindings: &[Binding],
    planned: &[(String, String)],
    account: &ServiceAccountState,
    warnings: &[String],
) -> Result<(), TestCaseError> {
    let planned: Vec<&Binding> = planned
        .iter()
        .map(|(_, b)| bindings.iter().find(|x| &x.name == b).unwrap())
        .collect();
    check_projected(input, out, &planned)?;
    let user_agents = arr(&input["spec"]["initContainers"])
        .iter()
        .chain(arr(&input["spec"]["containers"]))
        .any(|c| is_agent_name(c["name"].as_str().unwrap_or_default()));
    if user_agents {
        return Ok(());
    }
    let pin: Vec<&Value> = arr(&out["spec"]["initContainers"])
        .iter()
        .chain(arr(&out["spec"]["containers"]))
        .filter(|c| is_agent_name(c["name"].as_str().unwrap_or_default()))
        .filter_map(|c| {
            let args = arr(&c["args"]);
            let at = args.iter().position(|a| a == "--google-service-account")?;
            args.get(at + 1)
        })
        .collect();
    let google = planned.iter().any(|b| is_google(b));
    let advice = warnings
        .iter()
        .any(|w| w.contains("iam.gke.io/gcp-service-account") && w.contains("gcloud iam"));
    match (google, account) {
        (false, _) => prop_assert!(pin.is_empty(), "pinned without a Google binding"),
        (true, ServiceAccountState::WorkloadIdentity(g)) => {
            prop_assert!(
                !pin.is_empty() && pin.iter().all(|p| *p == g),
                "pin {:?}",
                pin
            );
            prop_assert!(!advice);
        }
        (true, _) => {
            prop_assert!(
                !pin.is_empty() && pin.iter().all(|p| *p == "none"),
                "pin {:?}",
                pin
            );
            prop_assert!(advice, "no advice in {:?}", warnings);
        }
    }
    Ok(())
}

/// A projected volume rolebridge added has one source per audience of the planned
/// Kubernetes-source bindings, with the default lifetime; none is added without one.
fn check_projected(input: &Value, out: &Value, planned: &[&Binding]) -> Result<(), TestCaseError> {
    if arr(&input["spec"]["volumes"])
        .iter()
        .any(|v| v["name"] == KUBERNETES_TOKEN_VOLUME)
    {
        return Ok(());
    }
    let mut paths: Vec<String> = planned
        .iter()
        .filter(|b| !is_google(b))
        .map(|b| {
            let aud = b.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE);
            kubernetes_token_path(aud)
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    paths.sort();
    paths.dedup();
    let projected = arr(&out["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == KUBERNETES_TOKEN_VOLUME);
    let Some(v) = projected else {
        prop_assert!(paths.is_empty(), "no projected volume for {:?}", paths);
        return Ok(());
    };
    let sources = arr(&v["projected"]["sources"]);
    for s in sources {
        prop_assert_eq!(&s["serviceAccountToken"]["expirationSeconds"], &json!(3600));
    }
    let got: Vec<&str> = sources
        .iter()
        .filter_map(|s| s["serviceAccountToken"]["path"].as_str())
        .collect();
    prop_assert_eq!(got, paths.iter().map(String::as_str).collect::<Vec<_>>());
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn check(
    input: &Value,
    bindings: &[Binding],
    account: &ServiceAccountState,
    legacy: bool,
) -> Result<(), TestCaseError> {
    let cfg = Config {
        sidecar_mode: if legacy {
            SidecarMode::Legacy
        } else {
            SidecarMode::Native
        },
        ..Config::default()
    };
    let text = serde_json::to_string(input).unwrap();
    let view = PodView::from_json(&text).map_err(|e| TestCaseError::fail(format!("parse: {e}")))?;
    prop_assert_eq!(view.service_account(), SA);
    let result = mutate::mutate(&view, NS, bindings, account, &cfg);
    let prediction = predict(input, bindings, account, legacy);
    let expected = prediction.expected;

    let m = match (result, &expected) {
        (Err(d), Expected::Deny(why)) => {
            // The message says which rule denied the pod.
            let marker = match why {
                DenyReason::UnboundRole => "names no AWSRoleBinding of service account",
                DenyReason::Tie => "nothing chooses between them",
                DenyReason::ReservedName => "reserved by rolebridge",
                DenyReason::HostNetwork => "hostNetwork: true",
                DenyReason::LegacyInit => "in legacy sidecar mode",
                DenyReason::PinUnknown => "could not read ServiceAccount default/app-sa",
            };
            prop_assert!(
                d.message.contains(marker),
                "model says {:?}, denied with: {}",
                why,
                d
            );
            return Ok(());
        }
        (Err(d), _) => {
            return Err(TestCaseError::fail(format!(
                "denied ({d}), model says {expected:?}"
            )));
        }
        (Ok(m), Expected::Deny(why)) => {
            return Err(TestCaseError::fail(format!(
                "model says deny ({why:?}), got {m:?}"
            )));
        }
        (Ok(m), _) => m,
    };
    prop_assert_eq!(
        m.warnings
            .iter()
            .any(|w| w.contains("so the annotation has no effect")),
        prediction.role_warning,
        "role annotation warning; warnings: {:?}",
        &m.warnings
    );
    let ops = ops_of(&m.patch)?;
    prop_assert!(
        ops.iter().all(|op| matches!(op, PatchOperation::Add(_))),
        "non-add op: {:?}",
        m.patch
    );
    let mut out = input.clone();
    json_patch::patch(&mut out, &ops)
        .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}; {:?}", m.patch)))?;

    let planned = match (&m.outcome, expected) {
        (Outcome::Skipped(s), Expected::Skip(want)) => {
            prop_assert_eq!(*s, want);
            prop_assert!(m.patch.is_empty());
            return Ok(());
        }
        (Outcome::Mutated, Expected::Mutate(p)) => p,
        (got, want) => {
            return Err(TestCaseError::fail(format!(
                "got {got:?}, model says {want:?}"
            )));
        }
    };
    prop_assert!(!m.patch.is_empty());

    // The bindings annotation records the model's assignment, in pod order.
    let applied: Vec<String> = planned.iter().map(|(c, b)| format!("{c}={b}")).collect();
    prop_assert_eq!(
        &out["metadata"]["annotations"][ANNOTATION_APPLIED],
        &json!(applied.join(","))
    );

    // Every covered container has its binding's role, token file and mount; the agent serves
    // every token file. A pod that already has containers under the agent's names (admitted
    // only because it carries the bindings annotation) keeps them, and gets a warning for every
    // token they do not serve.
    let user_agents = arr(&input["spec"]["initContainers"])
        .iter()
        .chain(arr(&input["spec"]["containers"]))
        .any(|c| is_agent_name(c["name"].as_str().unwrap_or_default()));
    let agent_args: Vec<&str> = arr(&out["spec"]["initContainers"])
        .iter()
        .chain(arr(&out["spec"]["containers"]))
        .filter(|c| is_agent_name(c["name"].as_str().unwrap_or_default()))
        .flat_map(|c| arr(&c["args"]))
        .filter_map(Value::as_str)
        .collect();
    // An agent exactly when a binding needs one: Google tokens, or the endpoint.
    prop_assert!(
        user_agents || find_container(&out, AGENT_CONTAINER).is_some() != prediction.no_agent,
        "agent container present: {}, model says none needed: {}",
        find_container(&out, AGENT_CONTAINER).is_some(),
        prediction.no_agent
    );
    let mut endpoint_pod = false;
    let mut google_tokens_pod = false;
    for (c, b) in &planned {
        let b = bindings.iter().find(|x| &x.name == b).unwrap();
        let aud = b.audience.as_deref().unwrap_or(&cfg.default_audience);
        let cv = find_container(&out, c).unwrap();
        // Exactly the delivery's two identity variables, never the other delivery's.
        for v in IDENTITY {
            let want = identity_of(b).into_iter().find(|(n, _)| n == v);
            match want {
                Some((_, value)) => {
                    prop_assert_eq!(
                        &env_value(cv, v).unwrap()["value"],
                        &json!(value),
                        "{} of {}",
                        v,
                        c
                    )
                }
                None => prop_assert!(env_value(cv, v).is_none(), "{} set in {}", v, c),
            }
        }
        prop_assert_eq!(
            b.delivery() == Delivery::CredentialsEndpoint,
            is_endpoint(b)
        );
        if let Some(r) = &b.region {
            // The user's own AWS_REGION wins; otherwise ours.
            let in_c = find_container(input, c).unwrap();
            if env_value(in_c, ENV_REGION).is_none() {
                prop_assert_eq!(&env_value(cv, ENV_REGION).unwrap()["value"], &json!(r));
            }
        }
        let mount = mount_of(b);
        prop_assert!(
            arr(&cv["volumeMounts"])
                .iter()
                .any(|m| m["name"] == mount["name"] && m["mountPath"] == mount["mountPath"]),
            "{} lacks {}",
            c,
            mount
        );
        let (served, missing) = if is_endpoint(b) {
            endpoint_pod = true;
            let served = agent_args
                .iter()
                .filter_map(|a| a.parse::<CredentialsSpec>().ok())
                .any(|spec| {
                    spec.name == b.name
                        && spec.role_arn == b.role_arn
                        && spec.chain == b.chain
                        && spec.duration_seconds == b.duration_seconds
                        && spec.audience == aud
                        && spec.token_file == (!is_google(b)).then(|| kubernetes_token_path(aud))
                });
            (
                served,
                format!("does not serve the credentials of binding {:?}", b.name),
            )
        } else if !is_google(b) {
            // The kubelet's token: nothing for the agent to serve.
            prop_assert!(env_value(cv, ENV_SESSION_NAME).is_some());
            (true, String::new())
        } else {
            google_tokens_pod = true;
            prop_assert!(env_value(cv, ENV_SESSION_NAME).is_some());
            let token_arg = format!("{}={aud}", token_path(aud));
            (
                agent_args.contains(&token_arg.as_str()),
                format!("does not serve token {token_arg}"),
            )
        };
        prop_assert!(
            served || (user_agents && m.warnings.iter().any(|w| w.contains(&missing))),
            "agent: {}",
            missing
        );
    }
    // The endpoint's port is recorded exactly when the endpoint is used.
    let want_port = endpoint_pod.then(|| json!(DEFAULT_CREDENTIALS_PORT.to_string()));
    prop_assert_eq!(
        out["metadata"]["annotations"].get(ANNOTATION_CREDENTIALS_PORT),
        want_port.as_ref()
    );
    check_tokens_and_pin(input, &out, bindings, &planned, account, &m.warnings)?;
    let first_app = &out["spec"]["containers"][0];
    let at = agent_init_index(input);
    if user_agents || prediction.no_agent {
        // Nothing to check about placement: no agent was added.
    } else if legacy {
        // The one-shot init container writes token files; the endpoint needs the sidecar first
        // among the app containers, holding them with its postStart wait.
        prop_assert_eq!(
            out["spec"]["initContainers"][at]["name"] == json!(AGENT_INIT_CONTAINER),
            google_tokens_pod
        );
        if endpoint_pod {
            prop_assert_eq!(&first_app["name"], &json!(AGENT_CONTAINER));
            let hook = &first_app["lifecycle"]["postStart"]["exec"]["command"];
            prop_assert!(arr(hook).iter().any(|a| a == "--wait"), "{}", hook);
        } else {
            prop_assert_eq!(
                arr(&out["spec"]["containers"]).last().unwrap()["name"].clone(),
                json!(AGENT_CONTAINER)
            );
        }
    } else {
        // First, or right after a native-sidecar proxy (so its traffic is meshed).
        prop_assert_eq!(
            &out["spec"]["initContainers"][at]["name"],
            &json!(AGENT_CONTAINER)
        );
        prop_assert_eq!(
            &out["spec"]["initContainers"][at]["restartPolicy"],
            &json!("Always")
        );
    }
    if !user_agents && !prediction.no_agent {
        // The agent learns the pod's identity exactly when it obtains credentials itself.
        let agent = find_container(&out, AGENT_CONTAINER).unwrap();
        prop_assert_eq!(agent.get("env").is_some(), endpoint_pod);
    }
    // Every agent runs as the proxy's user when the proxy is a regular container.
    let want_uid = if legacy_mesh(input) { 1337 } else { 65532 };
    for c in arr(&out["spec"]["initContainers"])
        .iter()
        .chain(arr(&out["spec"]["containers"]))
        .filter(|c| is_agent_name(c["name"].as_str().unwrap_or_default()))
        .filter(|_| !user_agents || legacy_mesh(input))
    {
        prop_assert_eq!(
            &c["securityContext"]["runAsUser"],
            &json!(want_uid),
            "{}",
            c["name"]
        );
        prop_assert_eq!(
            &c["securityContext"]["runAsGroup"],
            &json!(want_uid),
            "{}",
            c["name"]
        );
    }

    // Env names stay unique in every container.
    for c in arr(&out["spec"]["initContainers"])
        .iter()
        .chain(arr(&out["spec"]["containers"]))
    {
        let names: Vec<&str> = arr(&c["env"])
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        prop_assert_eq!(names.len(), unique.len(), "duplicate env in {}", c["name"]);
    }

    // Nothing but rolebridge's own additions changed.
    let covered: BTreeSet<String> = planned.iter().map(|(c, _)| c.clone()).collect();
    let stripped = strip(&out, input, &covered).map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        &stripped,
        input,
        "result differs from the input outside rolebridge's fields"
    );

    // Fixed point: admitting the result again changes nothing.
    let again_text = serde_json::to_string(&out).unwrap();
    let again = PodView::from_json(&again_text).unwrap();
    let m2 = mutate::mutate(&again, NS, bindings, account, &cfg)
        .map_err(|d| TestCaseError::fail(format!("second pass denied: {d}")))?;
    prop_assert_eq!(
        m2.outcome,
        Outcome::Skipped(Skip::AlreadyInjected),
        "second pass: {:?}",
        m2.patch
    );
    prop_assert!(m2.patch.is_empty());

    // Reinvocation after another webhook appended a container: only that container (and the
    // bindings annotation) may change, no second agent or volume appears, and the result is
    // again a fixed point.
    let mut late = out.clone();
    late["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "late", "image": "late", "env": [{"name": "FOO", "value": "1"}]}));
    let late_text = serde_json::to_string(&late).unwrap();
    let late_view = PodView::from_json(&late_text).unwrap();
    let generic: Vec<&Binding> = bindings.iter().filter(|b| b.containers.is_none()).collect();
    let role = input["metadata"]["annotations"][ANNOTATION_ROLE]
        .as_str()
        .map(str::trim);
    let late_tie = generic.len() > 1 && !generic.iter().any(|b| Some(b.name.as_str()) == role);
    // A host-network pod admitted with Kubernetes web identity only cannot take an endpoint or
    // a Google binding later; nor, when the service account cannot be read, a first agent for
    // Google tokens.
    let late_binding = generic
        .iter()
        .find(|b| Some(b.name.as_str()) == role)
        .or(generic.first());
    let late_host = !late_tie
        && late_binding.is_some_and(|b| is_endpoint(b) || is_google(b))
        && input["spec"]["hostNetwork"] == true;
    let late_unknown = !late_tie
        && !late_host
        && late_binding.is_some_and(|b| is_google(b))
        && *account == ServiceAccountState::Missing
        && find_container(&out, AGENT_CONTAINER).is_none()
        && find_container(&out, AGENT_INIT_CONTAINER).is_none();
    match mutate::mutate(&late_view, NS, bindings, account, &cfg) {
        Err(d) => prop_assert!(
            late_tie
                || (late_host && d.message.contains("hostNetwork"))
                || (late_unknown && d.message.contains("could not read ServiceAccount")),
            "late container denied without a tie: {}",
            d
        ),
        Ok(m3) => {
            prop_assert!(
                !late_tie && !late_host && !late_unknown,
                "late container should have been denied"
            );
            let mut late_out = late.clone();
            json_patch::patch(&mut late_out, &ops_of(&m3.patch)?)
                .map_err(|e| TestCaseError::fail(format!("late patch does not apply: {e}")))?;
            let late_covered = !generic.is_empty();
            prop_assert_eq!(
                m3.outcome == Outcome::Mutated,
                late_covered,
                "late: {:?}",
                m3.patch
            );
            let mut expected_annotation = applied.join(",");
            if late_covered {
                let b = generic
                    .iter()
                    .find(|b| Some(b.name.as_str()) == role)
                    .unwrap_or(&generic[0]);
                expected_annotation.push_str(&format!(",late={}", b.name));
            }
            prop_assert_eq!(
                &late_out["metadata"]["annotations"][ANNOTATION_APPLIED],
                &json!(expected_annotation)
            );
            let mut late_in = late.clone();
            late_in["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove(ANNOTATION_APPLIED);
            let mut only_late = BTreeSet::new();
            only_late.insert("late".to_owned());
            let mut stripped =
                strip(&late_out, &late_in, &only_late).map_err(TestCaseError::fail)?;
            stripped["metadata"]["annotations"][ANNOTATION_APPLIED] =
                late["metadata"]["annotations"][ANNOTATION_APPLIED].clone();
            prop_assert_eq!(
                &stripped,
                &late,
                "reinvocation changed more than the new container"
            );
            let text4 = serde_json::to_string(&late_out).unwrap();
            let m4 = mutate::mutate(
                &PodView::from_json(&text4).unwrap(),
                NS,
                bindings,
                account,
                &cfg,
            )
            .map_err(|d| TestCaseError::fail(format!("denied: {d}")))?;
            prop_assert!(
                m4.patch.is_empty(),
                "not a fixed point after reinvocation: {:?}",
                m4.patch
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutation_is_applicable_idempotent_and_owns_only_its_fields(
        input in pod(),
        bindings in bindings(),
        account in account(),
        legacy in any::<bool>(),
    ) {
        check(&input, &bindings, &account, legacy)?;
    }
}

/// A pod of the service account with these containers and no annotations.
fn plain_pod(names: &BTreeSet<String>) -> Value {
    let containers: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "image": "registry.example.com/app:1"}))
        .collect();
    json!({"metadata": {"name": "p", "namespace": NS},
           "spec": {"serviceAccountName": SA, "containers": containers}})
}

fn denied_for_tie(pod: &Value, bindings: &[Binding]) -> bool {
    let text = serde_json::to_string(pod).unwrap();
    let view = PodView::from_json(&text).unwrap();
    matches!(mutate::mutate(&view, NS, bindings, &wi(), &Config::default()),
        Err(d) if d.message.contains("nothing chooses between them"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Status and admission read the tie rule from one place: a binding is reported as a
    /// `Conflict` exactly when some pod of its service account would be denied for a tie
    /// (a pod holding every container any binding lists, plus one that none lists, is such a
    /// pod if any is), and each pair the status calls overlapping is denied on its own.
    #[test]
    fn admission_and_status_agree_on_ties(bindings in bindings()) {
        let mut names: BTreeSet<String> = bindings
            .iter()
            .flat_map(|b| b.containers.iter().flatten().cloned())
            .collect();
        names.insert("unlisted".into());
        let pod = plain_pod(&names);
        let states: Vec<status::BindingState<'_>> = bindings
            .iter()
            .map(|b| status::BindingState {
                namespace: NS,
                name: &b.name,
                generation: Some(1),
                spec: Ok(b),
                current: None,
            })
            .collect();
        let wi = |_: &str, _: &str| status::ServiceAccountState::WorkloadIdentity("g@p.iam.gserviceaccount.com".into());
        let conflicted = status::desired(&states, wi, None, "t0")
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| s.conditions[0].reason == "Conflict"));
        prop_assert_eq!(conflicted, denied_for_tie(&pod, &bindings));
        for (i, a) in bindings.iter().enumerate() {
            for b in &bindings[i + 1..] {
                let pair = [a.clone(), b.clone()];
                prop_assert_eq!(
                    can_tie(a, b),
                    denied_for_tie(&pod, &pair),
                    "{:?} / {:?}", a.containers, b.containers
                );
            }
        }
    }
}

/// The strip-and-compare oracle must notice a change to a user field, or the property above
/// proves nothing.
#[test]
fn ownership_check_detects_foreign_changes() {
    let input = json!({
        "metadata": {"name": "p", "annotations": {"a/b": "1"}},
        "spec": {"containers": [{"name": "app", "env": [{"name": "FOO", "value": "1"}]}]}
    });
    let covered: BTreeSet<String> = ["app".to_owned()].into();
    let mut ok = input.clone();
    ok["metadata"]["annotations"][ANNOTATION_APPLIED] = json!("app=b0");
    ok["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": ENV_ROLE_ARN, "value": "x"}));
    assert_eq!(strip(&ok, &input, &covered).unwrap(), input);

    let mut changed = ok.clone();
    changed["spec"]["containers"][0]["env"][0]["value"] = json!("2");
    assert_ne!(strip(&changed, &input, &covered).unwrap(), input);

    let mut foreign = ok.clone();
    foreign["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "FOO2", "value": "x"}));
    assert!(strip(&foreign, &input, &covered).is_err());

    let mut dup = ok.clone();
    dup["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "FOO", "value": "x"}));
    assert!(strip(&dup, &input, &covered).is_err());

    let uncovered = BTreeSet::new();
    assert_ne!(strip(&ok, &input, &uncovered).unwrap(), input);
}

/// The generators must reach every outcome often enough, or the property is vacuous.
#[test]
fn generators_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = (pod(), bindings(), account(), any::<bool>());
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    let n = 1024;
    for _ in 0..n {
        let (p, b, account, legacy) = strategy.new_tree(&mut runner).unwrap().current();
        let pr = predict(&p, &b, &account, legacy);
        let kind = match &pr.expected {
            Expected::Mutate(_) => "mutate".to_owned(),
            other => format!("{other:?}"),
        };
        *tally.entry(kind).or_default() += 1;
        let admitted = !matches!(pr.expected, Expected::Deny(_));
        for (flag, what) in [
            (
                pr.role_warning && admitted,
                "role covers no container (warned)",
            ),
            (
                pr.owned_tie && admitted,
                "tie on a user-owned container (admitted)",
            ),
            (pr.reserved_annotated, "reserved name, annotated (mutated)"),
            (
                pr.ours_recognised && admitted,
                "our own variables recognised",
            ),
            (pr.endpoint, "endpoint delivery (mutated)"),
            (pr.endpoint && pr.web_identity, "both deliveries in one pod"),
            (pr.endpoint && legacy, "endpoint in legacy mode"),
            (pr.kubernetes, "Kubernetes token source (mutated)"),
            (pr.no_agent, "no agent needed (mutated)"),
            (
                pr.kubernetes && pr.endpoint,
                "Kubernetes source with the endpoint",
            ),
            (pr.mesh, "meshed pod (mutated)"),
            (
                admitted && account == ServiceAccountState::NoWorkloadIdentity && !pr.no_agent,
                "Google pin without a Google service account",
            ),
            (
                p["spec"]["nodeSelector"]["kubernetes.io/os"] == "windows",
                "Windows by node selector",
            ),
        ] {
            if flag {
                *tally.entry(what.to_owned()).or_default() += 1;
            }
        }
    }
    eprintln!("{tally:#?}");
    for kind in [
        "Deny(UnboundRole)",
        "Deny(Tie)",
        "Deny(ReservedName)",
        "Deny(HostNetwork)",
        "Deny(LegacyInit)",
        "Deny(PinUnknown)",
        "endpoint delivery (mutated)",
        "Kubernetes token source (mutated)",
        "no agent needed (mutated)",
        "Kubernetes source with the endpoint",
        "meshed pod (mutated)",
        "Google pin without a Google service account",
        "Windows by node selector",
        "both deliveries in one pod",
        "endpoint in legacy mode",
        "Skip(NoBinding)",
        "Skip(OptedOut)",
        "Skip(Windows)",
        "Skip(NoContainerCovered)",
        "role covers no container (warned)",
        "tie on a user-owned container (admitted)",
        "reserved name, annotated (mutated)",
        "our own variables recognised",
    ] {
        assert!(
            tally.get(kind).is_some_and(|&c| c > 0),
            "{kind} never generated: {tally:?}"
        );
    }
    assert!(
        tally.get("mutate").is_some_and(|&c| c * 4 >= n),
        "too few mutated cases: {tally:?}"
    );
}
