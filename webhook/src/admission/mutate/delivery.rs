//! Every rule that differs between the two deliveries, in one place: which variables say "these
//! are the container's credentials" (and so which ones rolebridge owns), what a covered container
//! gets, and what the agent is told.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::{
    ANNOTATION_CREDENTIALS_PORT, Assignment, Binding, Config, Delivery, TokenSource, containers,
    is_agent,
};
use crate::admission::json::{Json, Object};
use crate::domain::pod::{ContainerView, EnvView, PodView, Str};
use rolebridge_contract::{
    AUTH_TOKEN_PATH, AgentArgs, CredentialsSpec, MIN_CREDENTIALS_PORT, TokenSpec, aws_env,
    credentials_uri, kubernetes_token_path, session_name, token_path,
};

/// The variables that choose where an AWS SDK gets its credentials from. A container that sets
/// any of them to anything but exactly what a covering binding's delivery writes has made its
/// own choice, and rolebridge leaves it alone.
pub(crate) const IDENTITY_VARS: [&str; 6] = [
    aws_env::ROLE_ARN,
    aws_env::WEB_IDENTITY_TOKEN_FILE,
    aws_env::CONTAINER_CREDENTIALS_FULL_URI,
    aws_env::CONTAINER_CREDENTIALS_RELATIVE_URI,
    aws_env::CONTAINER_AUTHORIZATION_TOKEN,
    aws_env::CONTAINER_AUTHORIZATION_TOKEN_FILE,
];

/// What every delivery rule needs to know about this pod and the webhook.
pub(super) struct DeliveryCtx<'c> {
    pub cfg: &'c Config,
    /// Where this pod's credentials endpoint listens.
    pub port: Port,
    /// `AWS_ROLE_SESSION_NAME` for web identity.
    session_name: EnvValue<'static>,
}

/// A variable's value: literal, or the pod field the downward API reads at container start.
#[derive(Debug, Clone)]
pub(super) enum EnvValue<'a> {
    Text(std::borrow::Cow<'a, str>),
    Field(&'static str),
}

/// A variable rolebridge sets.
#[derive(Debug, Clone)]
pub(super) struct EnvVar<'a> {
    pub name: &'static str,
    pub value: EnvValue<'a>,
}

impl EnvVar<'_> {
    /// `{"name":…,"value":…}` or `{"name":…,"valueFrom":{"fieldRef":…}}`, in few pieces: the
    /// patch has dozens of these.
    pub(super) fn write(&self, out: &mut Json) {
        // Names and field paths are rolebridge's own constants: nothing in them needs escaping.
        debug_assert!(!self.name.contains(['"', '\\']), "{:?}", self.name);
        out.raw(r#"{"name":""#).raw(self.name);
        match &self.value {
            EnvValue::Text(text) => {
                out.raw(r#"","value":"#).str(text);
            }
            EnvValue::Field(path) => {
                out.raw(r#"","valueFrom":{"fieldRef":{"apiVersion":"v1","fieldPath":""#)
                    .raw(path)
                    .raw(r#""}}"#);
            }
        }
        out.raw("}");
    }

    fn text<'a>(name: &'static str, value: &'a str) -> EnvVar<'a> {
        EnvVar {
            name,
            value: EnvValue::Text(value.into()),
        }
    }
}

/// The credentials endpoint's port for a pod: decided for every pod (variables from an earlier
/// pass are recognised by it), acted on only when a binding needs the endpoint.
pub(super) struct Port {
    pub number: u16,
    /// The pod's `rolebridge.io/credentials-port` chose it (or an earlier pass recorded it).
    pub annotated: bool,
    /// Why the default moved, for a warning.
    pub moved: Option<String>,
    /// Why no port can be used, for a denial.
    pub problem: Option<String>,
}

impl Port {
    fn choose(pod: &PodView<'_>, cfg: &Config) -> Port {
        let declared_by = |port: u16| {
            containers(pod)
                .map(|(_, _, c)| c)
                .find(|c| !is_agent(c.name.as_str()) && c.declares_tcp_port(port))
                .map(|c| c.name.as_str().to_owned())
        };
        let fail = |number, problem: String| Port {
            number,
            annotated: true,
            moved: None,
            problem: Some(problem),
        };
        if let Some(text) = pod.annotation(ANNOTATION_CREDENTIALS_PORT) {
            let Some(number) = text
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p >= MIN_CREDENTIALS_PORT)
            else {
                return fail(
                    cfg.credentials_port,
                    format!(
                        "annotation {ANNOTATION_CREDENTIALS_PORT}={text:?} is not a port number from {MIN_CREDENTIALS_PORT} to 65535; set it to a port no container of the pod uses, or remove it to let rolebridge choose one"
                    ),
                );
            };
            if let Some(c) = declared_by(number) {
                return fail(
                    number,
                    format!(
                        "annotation {ANNOTATION_CREDENTIALS_PORT}={text:?} asks for port {number} for the credentials endpoint, but container {c:?} declares that port (ports[].containerPort); the endpoint needs it free on the pod's loopback. Choose another port in the annotation, or remove it to let rolebridge choose a free one"
                    ),
                );
            }
            return Port {
                number,
                annotated: true,
                moved: None,
                problem: None,
            };
        }
        let wanted = cfg.credentials_port;
        let Some(c) = declared_by(wanted) else {
            return Port {
                number: wanted,
                annotated: false,
                moved: None,
                problem: None,
            };
        };
        // The next free port above, wrapping around to the lowest the agent may bind.
        let free = (wanted..=u16::MAX)
            .chain(MIN_CREDENTIALS_PORT..wanted)
            .find(|p| declared_by(*p).is_none());
        match free {
            Some(number) => Port {
                number,
                annotated: false,
                moved: Some(format!(
                    "container {c:?} declares port {wanted}, so this pod's credentials endpoint listens on port {number} instead (recorded in annotation {ANNOTATION_CREDENTIALS_PORT})"
                )),
                problem: None,
            },
            None => fail(
                wanted,
                format!(
                    "the containers of this pod declare every port from {MIN_CREDENTIALS_PORT} to 65535, so the credentials endpoint has none left"
                ),
            ),
        }
    }
}

impl<'c> DeliveryCtx<'c> {
    pub(super) fn new(pod: &PodView<'_>, cfg: &'c Config) -> Self {
        DeliveryCtx {
            cfg,
            port: Port::choose(pod, cfg),
            session_name: session_name_env(pod),
        }
    }

    fn audience<'b>(&'b self, b: &'b Binding) -> &'b str {
        b.audience_or(&self.cfg.default_audience)
    }
}

/// The web identity token file of `b`: the agent's Google ID token, or the kubelet-projected
/// Kubernetes token (`tokenSource: Kubernetes`).
fn token_file(b: &Binding, ctx: &DeliveryCtx<'_>) -> String {
    match b.token_source {
        TokenSource::Google => token_path(ctx.audience(b)),
        TokenSource::Kubernetes => kubernetes_token_path(ctx.audience(b)),
    }
}

/// The two variables (name, value) that say where a container's credentials come from.
pub(super) type Identity = [(&'static str, String); 2];

/// [`identity_env`] of each binding, worked out once per admission: the containers a binding
/// covers share it.
#[derive(Default)]
pub(super) struct Identities<'b>(Vec<(&'b Binding, Rc<Identity>)>);

impl<'b> Identities<'b> {
    pub(super) fn of(&mut self, b: &'b Binding, ctx: &DeliveryCtx<'_>) -> Rc<Identity> {
        if let Some((_, known)) = self.0.iter().find(|(k, _)| std::ptr::eq(*k, b)) {
            return known.clone();
        }
        let identity = Rc::new(identity_env(b, ctx));
        self.0.push((b, identity.clone()));
        identity
    }
}

/// What `b`'s delivery sets to say where the credentials come from (exactly these two; every
/// other variable of [`IDENTITY_VARS`] stays unset).
pub(super) fn identity_env(b: &Binding, ctx: &DeliveryCtx<'_>) -> Identity {
    match b.delivery() {
        Delivery::WebIdentity => [
            (aws_env::ROLE_ARN, b.role_arn.clone()),
            (aws_env::WEB_IDENTITY_TOKEN_FILE, token_file(b, ctx)),
        ],
        Delivery::CredentialsEndpoint => [
            (
                aws_env::CONTAINER_CREDENTIALS_FULL_URI,
                credentials_uri(ctx.port.number, &b.name),
            ),
            (
                aws_env::CONTAINER_AUTHORIZATION_TOKEN_FILE,
                AUTH_TOKEN_PATH.to_owned(),
            ),
        ],
    }
}

/// The [`IDENTITY_VARS`] the container sets itself, in that order.
pub(super) fn identity_vars_set(c: &ContainerView<'_>) -> Vec<&'static str> {
    // One pass over the container's variables (often dozens), not one per identity variable.
    let mut found = [false; IDENTITY_VARS.len()];
    for e in c.env.as_deref().unwrap_or_default() {
        let name = e.name.as_str();
        if let Some(i) = IDENTITY_VARS.iter().position(|v| *v == name) {
            found[i] = true;
        }
    }
    IDENTITY_VARS
        .iter()
        .zip(found)
        .filter_map(|(v, set)| set.then_some(*v))
        .collect()
}

/// The container's identity variables are exactly what `b`'s delivery writes: an earlier pass
/// of rolebridge for this binding, not the user's own choice.
pub(super) fn written_for(c: &ContainerView<'_>, b: &Binding, ctx: &DeliveryCtx<'_>) -> bool {
    let ours = identity_env(b, ctx);
    let literal = |e: &EnvView<'_>, want: &str| {
        e.value_from.is_none() && e.value.as_ref().is_some_and(|x| x.as_str() == want)
    };
    IDENTITY_VARS.iter().all(
        |v| match (c.env_var(v), ours.iter().find(|(n, _)| n == v)) {
            (None, None) => true,
            (Some(e), Some((_, want))) => literal(e, want),
            _ => false,
        },
    )
}

/// How the app's SDK gets credentials with this delivery, for messages.
pub(super) fn describe(d: Delivery) -> &'static str {
    match d {
        Delivery::WebIdentity => "web identity",
        Delivery::CredentialsEndpoint => "the container credentials endpoint",
    }
}

/// Every variable a covered container gets (before dropping those it already defines).
pub(super) fn container_env<'p>(
    p: &'p Assignment<'_>,
    ctx: &'p DeliveryCtx<'_>,
) -> Vec<EnvVar<'p>> {
    let b = p.binding;
    let mut env: Vec<EnvVar<'p>> = Vec::with_capacity(6);
    env.extend(
        p.identity
            .iter()
            .map(|(name, value)| EnvVar::text(name, value)),
    );
    if b.delivery() == Delivery::WebIdentity {
        env.push(EnvVar {
            name: aws_env::ROLE_SESSION_NAME,
            value: ctx.session_name.clone(),
        });
    }
    if let Some(region) = &b.region {
        env.push(EnvVar::text(aws_env::REGION, region));
        env.push(EnvVar::text(aws_env::DEFAULT_REGION, region));
        env.push(EnvVar::text(aws_env::STS_REGIONAL_ENDPOINTS, "regional"));
    }
    env
}

/// `AWS_ROLE_SESSION_NAME` shows in CloudTrail which pod acted. The downward API resolves the
/// final name at container start (a `generateName` pod has no name yet at admission; generated
/// names are at most 63 characters). An explicit name outside STS's length limits would make
/// every AssumeRoleWithWebIdentity fail, so such pods get a fixed, valid session name instead
/// (cut or padded, not `session_name::sanitize`d: the value pods have always been given).
fn session_name_env(pod: &PodView<'_>) -> EnvValue<'static> {
    match pod.metadata.name.as_ref().map(|n| n.as_str()) {
        Some(n)
            if !n.is_empty()
                && !(session_name::MIN_LEN..=session_name::MAX_LEN).contains(&n.len()) =>
        {
            let mut v: String = n.chars().take(session_name::MAX_LEN).collect();
            if v.len() < session_name::MIN_LEN {
                v.push_str("-pod");
            }
            EnvValue::Text(v.into())
        }
        _ => EnvValue::Field("metadata.name"),
    }
}

/// What the agent of this pod must serve: a Google ID token file per audience of the Google
/// web identity bindings (Kubernetes tokens are the kubelet's), the credentials of every
/// endpoint binding. Sorted, so every replica renders the same arguments. Empty when nothing in
/// the pod needs an agent; the Google pin is the caller's.
pub(super) fn agent_args(planned: &[Assignment<'_>], ctx: &DeliveryCtx<'_>) -> AgentArgs {
    // Token path → audience; the path comes from the planned variables (one per audience), and
    // (path, audience) order is the order the agent's arguments have always had.
    let mut tokens: BTreeMap<&str, &str> = BTreeMap::new();
    let mut credentials: BTreeMap<&str, CredentialsSpec> = BTreeMap::new();
    for p in planned {
        let b = p.binding;
        match b.delivery() {
            Delivery::WebIdentity if b.token_source == TokenSource::Kubernetes => {}
            Delivery::WebIdentity => {
                if let Some((_, path)) = p
                    .identity
                    .iter()
                    .find(|(n, _)| *n == aws_env::WEB_IDENTITY_TOKEN_FILE)
                {
                    tokens.insert(path, ctx.audience(b));
                }
            }
            Delivery::CredentialsEndpoint => {
                credentials
                    .entry(&b.name)
                    .or_insert_with(|| CredentialsSpec {
                        name: b.name.clone(),
                        audience: ctx.audience(b).to_owned(),
                        role_arn: b.role_arn.clone(),
                        chain: b.chain.clone(),
                        duration_seconds: b.duration_seconds,
                        session_tags: b.session_tags,
                        region: b.region.clone(),
                        token_file: (b.token_source == TokenSource::Kubernetes)
                            .then(|| token_file(b, ctx)),
                    });
            }
        }
    }
    AgentArgs {
        tokens: tokens
            .into_iter()
            .map(|(path, audience)| TokenSpec {
                path: path.into(),
                audience: audience.to_owned(),
            })
            .collect(),
        credentials: credentials.into_values().collect(),
        credentials_port: ctx.port.number,
        google_service_account: None,
    }
}

/// The agent's own environment: the pod's identity (downward API) for session names and tags,
/// needed only when it obtains credentials itself; written as the container's `env` member.
pub(super) fn agent_env(o: &mut Object<'_>, args: &AgentArgs, cluster_name: Option<&str>) {
    use rolebridge_contract::env;
    if args.credentials.is_empty() {
        return;
    }
    let field = |name, path| EnvVar {
        name,
        value: EnvValue::Field(path),
    };
    let mut vars = vec![
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
        field(env::POD_UID, "metadata.uid"),
        field(env::SERVICE_ACCOUNT, "spec.serviceAccountName"),
    ];
    if let Some(cluster) = cluster_name {
        vars.push(EnvVar::text(env::CLUSTER_NAME, cluster));
    }
    o.field("env", |out| {
        out.array(&vars, |out, v| v.write(out));
    });
}

/// What an agent already in the pod (an earlier injection) lacks, as `(what, value)`: its
/// arguments cannot be changed by an `add`, so the caller can only report it.
pub(super) fn missing_from_agent(args: &AgentArgs, existing: &[&ContainerView<'_>]) -> Vec<String> {
    let existing_args: Vec<Vec<Str<'_>>> = existing.iter().map(|c| c.args()).collect();
    let has = |value: &str| {
        existing_args
            .iter()
            .any(|a| a.iter().any(|a| a.as_str() == value))
    };
    // `--google-service-account PIN`, as one pair of arguments of one container.
    let pinned = |pin: &str| {
        existing_args.iter().any(|a| {
            a.windows(2).any(|w| {
                w[0].as_str() == rolebridge_contract::flag::GOOGLE_SERVICE_ACCOUNT
                    && w[1].as_str() == pin
            })
        })
    };
    let mut missing = Vec::new();
    for t in &args.tokens {
        let t = t.to_string();
        if !has(&t) {
            missing.push(format!("token {t}"));
        }
    }
    for c in &args.credentials {
        if !has(&c.to_string()) {
            missing.push(format!("the credentials of binding {:?}", c.name));
        }
    }
    if let Some(pin) = &args.google_service_account
        && !pinned(&pin.to_string())
    {
        missing.push(format!(
            "the Google service account pin `{} {pin}` (without it, it takes a token of any account)",
            rolebridge_contract::flag::GOOGLE_SERVICE_ACCOUNT
        ));
    }
    missing
}
