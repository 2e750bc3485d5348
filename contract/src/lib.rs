//! rolebridge-contract: the one definition of what the webhook tells the agent.
//!
//! The webhook renders an agent container (its arguments, its probe, the files and variables it
//! shares with the app containers); the agent parses those arguments. Both sides used to hold
//! their own copy of the strings involved (`PATH=AUDIENCE`, the token directory, the default
//! audience, the agent image version) and a test promised they agreed. Now both sides build
//! and read them through the types here, so they cannot drift, and the agent's tests parse
//! exactly what [`AgentArgs`] renders (a round trip through its real command line).
//!
//! Two deliveries exist, and this crate is where their shared facts live:
//! - **web identity**: the agent keeps a Google ID token in a file per audience
//!   ([`TokenSpec`], [`token_path`]); the app's own AWS SDK calls
//!   `AssumeRoleWithWebIdentity` with it (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`).
//! - **credentials endpoint**: for a binding with a role chain or a session duration, the agent
//!   obtains the credentials itself ([`CredentialsSpec`]) and serves them on loopback
//!   ([`credentials_uri`]) with the AWS container credentials protocol, guarded by a per-pod
//!   authorization token in [`AUTH_TOKEN_PATH`].
//!
//! Deliberately small: std, serde, serde_json and clap (which both binaries link anyway, for
//! [`introspect`]), because the agent is linked into every bound pod.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The version of this build; webhook and agent are released together.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent image the webhook injects unless told otherwise: the same version as the webhook.
pub const DEFAULT_AGENT_IMAGE: &str = concat!(
    "ghcr.io/rolebridge/rolebridge-agent:",
    env!("CARGO_PKG_VERSION")
);

/// The audience AWS documents for web identity federation.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";

/// Where the agent binary sits in its image (the probes exec it).
pub const AGENT_BINARY: &str = "/rolebridge-agent";

/// The agent runs as this user and group (the image's `nonroot`).
pub const AGENT_UID: i64 = 65532;

/// The shared in-memory volume, as mounted in the agent and in every covered container.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/rolebridge.io";

/// Where a pod's kubelet-projected service-account tokens (`tokenSource: Kubernetes`) are
/// mounted, one file per audience ([`kubernetes_token_path`]). Beside the in-memory volume, not
/// inside it: covered containers mount that one read-only, and a mount point cannot be created
/// inside a read-only mount.
pub const KUBERNETES_TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.rolebridge.io";

/// The per-pod authorization token of the credentials endpoint
/// (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`). It never ends in `.token`, so no audience's
/// [`token_path`] can be this file.
pub const AUTH_TOKEN_PATH: &str = "/var/run/secrets/rolebridge.io/credentials.auth";

/// Loopback address the credentials endpoint listens on inside the pod's network namespace.
/// An IP literal: every SDK accepts plain HTTP to loopback, and no resolver is involved.
pub const CREDENTIALS_HOST: &str = "127.0.0.1";

/// The webhook's default port for the credentials endpoint (overridable per pod). Below the
/// Linux ephemeral range (32768+), so an outgoing connection of the app cannot be holding it
/// when the agent restarts, and away from the 8xxx/9xxx ports that apps and exporters favour.
pub const DEFAULT_CREDENTIALS_PORT: u16 = 24118;

/// Credentials of a binding are served at `CREDENTIALS_PATH_PREFIX + <binding name>`.
pub const CREDENTIALS_PATH_PREFIX: &str = "/v1/credentials/";

/// Unauthenticated readiness of the endpoint: 200 once every role's credentials are held. It
/// carries no secret; the agent's `check` probe asks it.
pub const HEALTH_PATH: &str = "/healthz";

/// Environment variables the webhook sets on the agent container (downward API or values).
pub mod env {
    /// `metadata.name`: the role session name, and the `kubernetes-pod-name` tag.
    pub const POD_NAME: &str = "ROLEBRIDGE_POD_NAME";
    /// `metadata.namespace`: the `kubernetes-namespace` tag.
    pub const POD_NAMESPACE: &str = "ROLEBRIDGE_POD_NAMESPACE";
    /// `metadata.uid`: the `kubernetes-pod-uid` tag (not known yet at admission time).
    pub const POD_UID: &str = "ROLEBRIDGE_POD_UID";
    /// `spec.serviceAccountName`: the `kubernetes-service-account` tag.
    pub const SERVICE_ACCOUNT: &str = "ROLEBRIDGE_SERVICE_ACCOUNT";
    /// The cluster name, when the webhook is told it; otherwise the agent asks the GKE
    /// metadata server (`instance/attributes/cluster-name`).
    pub const CLUSTER_NAME: &str = "ROLEBRIDGE_CLUSTER_NAME";
}

/// Command-line flags of the agent that the webhook renders: `flag::TOKEN` (`--token`) as the
/// webhook writes it into arguments, `flag::name::TOKEN` (`token`) as clap's `long = …` wants
/// it. Both are spelled once, in the list below.
pub mod flag {
    macro_rules! flags {
        ($($(#[$doc:meta])* $id:ident = $name:literal;)*) => {
            /// The flags' names without the leading `--`, for the agent's parser.
            pub mod name {
                $($(#[$doc])* pub const $id: &str = $name;)*
            }
            $($(#[$doc])* pub const $id: &str = concat!("--", $name);)*
        };
    }

    flags! {
        /// A token file and its audience, `PATH=AUDIENCE` ([`crate::TokenSpec`]). Repeated.
        TOKEN = "token";
        /// A binding whose credentials are served, as JSON ([`crate::CredentialsSpec`]).
        /// Repeated.
        CREDENTIALS = "credentials";
        /// The credentials endpoint's port (at least [`crate::MIN_CREDENTIALS_PORT`]).
        CREDENTIALS_PORT = "credentials-port";
        /// `check` only: keep retrying until the check passes, for at most this duration, then
        /// fail. Legacy sidecar mode's `postStart` hook holds the app containers with it.
        WAIT = "wait";
        /// `run` and `init`: the Google service account every Google ID token must be for
        /// ([`crate::GooglePin`]); a token for any other account is refused.
        GOOGLE_SERVICE_ACCOUNT = "google-service-account";
    }
}

/// The AWS SDKs' environment variables: the webhook sets them on app containers (and leaves a
/// container alone when its user set them), the agent reads them outside Kubernetes. One
/// spelling for both.
pub mod aws_env {
    pub const ROLE_ARN: &str = "AWS_ROLE_ARN";
    pub const WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
    pub const ROLE_SESSION_NAME: &str = "AWS_ROLE_SESSION_NAME";
    pub const REGION: &str = "AWS_REGION";
    pub const DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
    pub const STS_REGIONAL_ENDPOINTS: &str = "AWS_STS_REGIONAL_ENDPOINTS";
    pub const CONTAINER_CREDENTIALS_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    pub const CONTAINER_CREDENTIALS_RELATIVE_URI: &str = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
    pub const CONTAINER_AUTHORIZATION_TOKEN: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
    pub const CONTAINER_AUTHORIZATION_TOKEN_FILE: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";
    /// A static key: the webhook warns when a bound container still carries one.
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
    pub const ENDPOINT_URL_STS: &str = "AWS_ENDPOINT_URL_STS";
    pub const IGNORE_CONFIGURED_ENDPOINT_URLS: &str = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS";
    pub const MAX_ATTEMPTS: &str = "AWS_MAX_ATTEMPTS";
}

/// The lowest port the credentials endpoint may use: below it the agent (non-root, no
/// capabilities) could not bind.
pub const MIN_CREDENTIALS_PORT: u16 = 1024;

/// STS's rules for a role session name (`RoleSessionName`: `[\w+=,.@-]{2,64}`), which the
/// webhook renders into `AWS_ROLE_SESSION_NAME` and the agent sends itself.
pub mod session_name {
    /// Fewest characters STS accepts.
    pub const MIN_LEN: usize = 2;
    /// Most characters STS accepts.
    pub const MAX_LEN: usize = 64;

    /// Whether STS accepts `c` in a session name.
    pub fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
    }

    /// Whether STS accepts `s` as a session name as it is.
    pub fn is_valid(s: &str) -> bool {
        (MIN_LEN..=MAX_LEN).contains(&s.len()) && s.chars().all(allowed)
    }

    /// `s` made acceptable: other characters become `-`, cut to [`MAX_LEN`], padded with `-`
    /// to [`MIN_LEN`].
    pub fn sanitize(s: &str) -> String {
        let mut out: String = s
            .chars()
            .map(|c| if allowed(c) { c } else { '-' })
            .take(MAX_LEN)
            .collect();
        while out.len() < MIN_LEN {
            out.push('-');
        }
        out
    }
}

/// What a binary's command line is, as data: every subcommand and flag with its environment
/// variable and default, read from clap itself. The binaries print it with a hidden
/// `flags --json` so that checks (the Helm chart's) compare against the parser, not against a
/// scrape of the source.
pub mod introspect {
    use serde_json::{Value, json};

    /// The hidden subcommand that prints [`flags_json`]: `<binary> flags --json`.
    pub const SUBCOMMAND: &str = "flags";
    /// Its flag (without the leading `--`) asking for JSON, the only format.
    pub const JSON: &str = "json";

    /// `{"name", "flags": [{"long", "env", "default", "help"}], "subcommands": [...]}` for `cmd`
    /// and, recursively, its subcommands (hidden ones included: they are part of the contract).
    pub fn flags_json(cmd: &clap::Command) -> Value {
        let mut cmd = cmd.clone();
        cmd.build();
        describe(&cmd)
    }

    fn describe(cmd: &clap::Command) -> Value {
        let flags: Vec<Value> = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "help" && a.get_id() != "version")
            .map(|a| {
                let defaults: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                json!({
                    "id": a.get_id().as_str(),
                    "long": a.get_long(),
                    "env": a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    "default": match defaults.len() {
                        0 => Value::Null,
                        1 => Value::String(defaults[0].clone()),
                        _ => json!(defaults),
                    },
                    "global": a.is_global_set(),
                    "positional": a.is_positional(),
                })
            })
            .collect();
        let subcommands: Vec<Value> = cmd.get_subcommands().map(describe).collect();
        json!({"name": cmd.get_name(), "flags": flags, "subcommands": subcommands})
    }
}

/// Agent subcommands the webhook renders.
pub mod subcommand {
    /// The sidecar: keeps tokens fresh and serves credentials until SIGTERM.
    pub const RUN: &str = "run";
    /// Legacy mode's one-shot init container: writes every token once.
    pub const INIT: &str = "init";
    /// The startup and liveness probe.
    pub const CHECK: &str = "check";
}

/// The token file for an audience. Readable names for ordinary audiences; anything that is not
/// a safe file name gets sanitised plus a hash, so two audiences can never share a file and a
/// path never contains `=` (a [`TokenSpec`] splits on the first `=`).
pub fn token_path(audience: &str) -> String {
    in_dir(TOKEN_MOUNT_PATH, audience)
}

/// The kubelet-projected token for an audience (`tokenSource: Kubernetes`), named like
/// [`token_path`] in [`KUBERNETES_TOKEN_MOUNT_PATH`].
pub fn kubernetes_token_path(audience: &str) -> String {
    in_dir(KUBERNETES_TOKEN_MOUNT_PATH, audience)
}

/// `dir/<token file name>`, built by concatenation: the webhook works these out on every
/// admission, where `format!` cost more than the rest of the variable.
fn in_dir(dir: &str, audience: &str) -> String {
    let name = token_file_name(audience);
    let mut path = String::with_capacity(dir.len() + 1 + name.len());
    path.push_str(dir);
    path.push('/');
    path.push_str(&name);
    path
}

/// The file name of an audience's token, relative to its volume (a projected volume's `path`).
pub fn token_file_name(audience: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    let mut name = String::with_capacity(audience.len().min(100) + 9 + TOKEN_SUFFIX.len());
    if audience.len() <= 100 && !audience.starts_with('.') && audience.bytes().all(safe) {
        name.push_str(audience);
    } else {
        // Sanitised (each character that is not safe becomes one `_`), cut to 100 characters,
        // and told apart by a hash of the whole audience.
        name.extend(audience.chars().take(100).map(|c| {
            if u8::try_from(c).is_ok_and(safe) {
                c
            } else {
                '_'
            }
        }));
        name.push('-');
        let hash = fnv1a(audience);
        name.extend(
            (0..8)
                .rev()
                .map(|nibble| char::from_digit((hash >> (nibble * 4)) & 0xf, 16).unwrap_or('0')),
        );
    }
    name.push_str(TOKEN_SUFFIX);
    name
}

const TOKEN_SUFFIX: &str = ".token";

/// FNV-1a: stable across releases and platforms (unlike `DefaultHasher`), which matters
/// because the path is baked into pods and must be the same on every replica and version.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` for the binding `name` served on `port`.
pub fn credentials_uri(port: u16, name: &str) -> String {
    // Concatenated rather than `format!`ted: the webhook writes it for every admission.
    let port = port.to_string();
    let mut uri = String::with_capacity(
        "http://:".len()
            + CREDENTIALS_HOST.len()
            + port.len()
            + CREDENTIALS_PATH_PREFIX.len()
            + name.len(),
    );
    for part in [
        "http://",
        CREDENTIALS_HOST,
        ":",
        &port,
        CREDENTIALS_PATH_PREFIX,
        name,
    ] {
        uri.push_str(part);
    }
    uri
}

/// Durations on rolebridge's command lines (webhook and agent flags).
pub mod duration {
    use std::time::Duration;

    /// Why a duration flag does not parse.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum DurationError {
        #[error("invalid duration {0:?} (want e.g. 500ms, 2s, 1m30s, 1h, or plain seconds)")]
        Syntax(String),
        #[error("invalid duration unit in {0:?} (use ns, us, ms, s, m or h)")]
        Unit(String),
        #[error("duration {0:?} is out of range")]
        Range(String),
    }

    /// Go's notation, as Kubernetes users write it in manifests: `500ms`, `2s`, `1.5s`, `1m30s`,
    /// `1h` (units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, fractions allowed), or a bare number of
    /// seconds (`10`, `1.5`), so flags that always took seconds keep accepting what they did.
    pub fn parse(text: &str) -> Result<Duration, DurationError> {
        let s = text.trim();
        let syntax = || DurationError::Syntax(s.into());
        let number = |n: &str| -> Result<f64, DurationError> {
            let plain = !n.is_empty()
                && !n.starts_with('.')
                && !n.ends_with('.')
                && n.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if !plain {
                return Err(syntax());
            }
            n.parse().map_err(|_| syntax())
        };
        let seconds = if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            number(s)?
        } else {
            let mut rest = s;
            let mut total = 0.0;
            while !rest.is_empty() {
                let unit_at = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .ok_or_else(syntax)?;
                let (n, tail) = rest.split_at(unit_at);
                let unit_len = tail
                    .find(|c: char| c.is_ascii_digit() || c == '.')
                    .unwrap_or(tail.len());
                let (unit, next) = tail.split_at(unit_len);
                let scale = match unit {
                    "ns" => 1e-9,
                    "us" | "µs" => 1e-6,
                    "ms" => 1e-3,
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    _ => return Err(DurationError::Unit(s.into())),
                };
                total += number(n)? * scale;
                rest = next;
            }
            total
        };
        Duration::try_from_secs_f64(seconds).map_err(|_| DurationError::Range(s.into()))
    }
}

/// Why an agent argument does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("token mapping {0:?} is not PATH=AUDIENCE")]
    TokenSyntax(String),
    #[error("token path {0:?} must be absolute")]
    TokenRelative(String),
    #[error("credentials spec is not valid JSON of the expected shape: {0}")]
    CredentialsSyntax(String),
    #[error("credentials spec: {0}")]
    Credentials(String),
    #[error("google service account {0:?} is neither an email nor \"none\"")]
    Pin(String),
}

/// One token file and the audience its token is minted for: `PATH=AUDIENCE` on the agent's
/// command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenSpec {
    pub path: PathBuf,
    pub audience: String,
}

impl FromStr for TokenSpec {
    type Err = ContractError;

    /// Split at the first `=`: paths never contain one, audiences (URLs) may.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, audience) = s
            .split_once('=')
            .ok_or_else(|| ContractError::TokenSyntax(s.into()))?;
        let (path, audience) = (path.trim(), audience.trim());
        if path.is_empty() || audience.is_empty() {
            return Err(ContractError::TokenSyntax(s.into()));
        }
        if !path.starts_with('/') {
            return Err(ContractError::TokenRelative(path.into()));
        }
        Ok(TokenSpec {
            path: PathBuf::from(path),
            audience: audience.into(),
        })
    }
}

impl fmt::Display for TokenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths built by `token_path` are UTF-8; `display()` would re-validate them lossily on
        // every render (the webhook renders these on every admission).
        match self.path.to_str() {
            Some(path) => write!(f, "{path}={}", self.audience),
            None => write!(f, "{}={}", self.path.display(), self.audience),
        }
    }
}

/// One `sts:AssumeRole` hop after the web identity hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hop {
    pub role_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// STS allows at most this many chained hops in a binding (the CRD's limit).
pub const MAX_CHAIN: usize = 5;

/// What the agent must do to serve one binding's credentials: `AssumeRoleWithWebIdentity`
/// into `role_arn` with a Google ID token for `audience`, then `AssumeRole` through each hop
/// of `chain` in order. Rendered as compact JSON after `--credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsSpec {
    /// The binding's name: the endpoint path, and how logs and errors name it.
    pub name: String,
    pub audience: String,
    pub role_arn: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Hop>,
    /// Lifetime of the final credentials; STS's default (one hour) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u32>,
    /// Pass the pod's identity as session tags on every `AssumeRole` hop.
    #[serde(default)]
    pub session_tags: bool,
    /// STS region (regional endpoint); the global endpoint's region when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `tokenSource: Kubernetes`: the web identity token is this file (kubelet-projected,
    /// rotated in place, so re-read for every exchange) instead of a Google ID token from the
    /// metadata server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

impl CredentialsSpec {
    /// Structural checks only: the CRD and the webhook validate ARNs and ranges; this guards
    /// the agent against a hand-written or truncated argument.
    fn check(&self) -> Result<(), ContractError> {
        let bad = |m: String| Err(ContractError::Credentials(m));
        let url_safe = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !url_safe(&self.name) {
            return bad(format!(
                "name {:?} must be a Kubernetes object name ([a-z0-9.-], at most 253)",
                self.name
            ));
        }
        if self.audience.is_empty() {
            return bad("audience must not be empty".into());
        }
        if !self.role_arn.starts_with("arn:") {
            return bad(format!("roleArn {:?} is not an ARN", self.role_arn));
        }
        if self.chain.len() > MAX_CHAIN {
            return bad(format!(
                "chain has {} hops; at most {MAX_CHAIN}",
                self.chain.len()
            ));
        }
        for hop in &self.chain {
            if !hop.role_arn.starts_with("arn:") {
                return bad(format!("chain roleArn {:?} is not an ARN", hop.role_arn));
            }
        }
        if self.duration_seconds == Some(0) {
            return bad("durationSeconds must be positive".into());
        }
        if let Some(f) = &self.token_file
            && !f.starts_with('/')
        {
            return bad(format!("tokenFile {f:?} must be an absolute path"));
        }
        Ok(())
    }

    /// The role whose credentials the app ends up with.
    pub fn final_role_arn(&self) -> &str {
        self.chain
            .last()
            .map_or(self.role_arn.as_str(), |h| h.role_arn.as_str())
    }
}

impl FromStr for CredentialsSpec {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec: CredentialsSpec =
            serde_json::from_str(s).map_err(|e| ContractError::CredentialsSyntax(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }
}

impl fmt::Display for CredentialsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}

/// Everything one agent container is told: the token files it keeps fresh and the credentials
/// it serves. The webhook builds one per pod; [`AgentArgs::args`] and [`AgentArgs::check_command`]
/// render it, and the agent's command line parses it back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentArgs {
    pub tokens: Vec<TokenSpec>,
    pub credentials: Vec<CredentialsSpec>,
    /// The endpoint's port; only rendered when `credentials` is not empty.
    pub credentials_port: u16,
    /// Which Google service account the Google ID tokens must belong to (`run` and `init`).
    /// `None`: not pinned (a pod without Google-source bindings, or a manifest rendered offline
    /// without its ServiceAccount).
    pub google_service_account: Option<GooglePin>,
}

/// The identity the agent must act as when it asks the metadata server for a Google ID token:
/// the Google service account the pod's Kubernetes service account names
/// (`iam.gke.io/gcp-service-account`), as the webhook saw it at admission.
///
/// Why: a pod on the host network, or on a node pool without the GKE metadata server, reaches
/// the Compute Engine metadata server, which answers with the *node's* account. The agent asks
/// for a full-format token and refuses one whose `email` claim is any other account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GooglePin {
    /// Tokens must have this `email`.
    Email(String),
    /// The service account names no Google service account: every token is refused, with
    /// the advice to annotate it (or to use `tokenSource: Kubernetes`).
    NotConfigured,
}

impl GooglePin {
    /// How [`GooglePin::NotConfigured`] is spelled on the command line (no email is `none`).
    pub const NOT_CONFIGURED: &str = "none";
}

impl fmt::Display for GooglePin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GooglePin::Email(e) => f.write_str(e),
            GooglePin::NotConfigured => f.write_str(GooglePin::NOT_CONFIGURED),
        }
    }
}

impl FromStr for GooglePin {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == GooglePin::NOT_CONFIGURED {
            return Ok(GooglePin::NotConfigured);
        }
        let valid = s.len() <= 254
            && s.split_once('@').is_some_and(|(user, domain)| {
                !user.is_empty() && domain.contains('.') && !domain.contains('@')
            })
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if valid {
            Ok(GooglePin::Email(s.to_owned()))
        } else {
            Err(ContractError::Pin(s.to_owned()))
        }
    }
}

impl AgentArgs {
    /// Arguments of the agent container for `subcommand` (`run` or `init`).
    pub fn args(&self, subcommand: &str) -> Vec<String> {
        let mut args = vec![subcommand.to_owned()];
        self.push_common(&mut args, true);
        args
    }

    /// The probe's command: `check` over every token file and, when credentials are served,
    /// the endpoint's health.
    pub fn check_command(&self) -> Vec<String> {
        let mut cmd = vec![AGENT_BINARY.to_owned(), subcommand::CHECK.to_owned()];
        self.push_common(&mut cmd, false);
        cmd
    }

    /// [`AgentArgs::check_command`] that waits up to `timeout` for the check to pass (the
    /// value rendered in whole seconds, at least one, as `--wait <N>s`).
    pub fn wait_command(&self, timeout: std::time::Duration) -> Vec<String> {
        let mut cmd = self.check_command();
        cmd.push(flag::WAIT.into());
        cmd.push(format!("{}s", timeout.as_secs().max(1)));
        cmd
    }

    fn push_common(&self, out: &mut Vec<String>, with_credentials: bool) {
        for t in &self.tokens {
            out.push(flag::TOKEN.into());
            out.push(t.to_string());
        }
        if with_credentials {
            for c in &self.credentials {
                out.push(flag::CREDENTIALS.into());
                out.push(c.to_string());
            }
        }
        if !self.credentials.is_empty() {
            out.push(flag::CREDENTIALS_PORT.into());
            out.push(self.credentials_port.to_string());
        }
        if with_credentials && let Some(pin) = &self.google_service_account {
            out.push(flag::GOOGLE_SERVICE_ACCOUNT.into());
            out.push(pin.to_string());
        }
    }
}

#[cfg(test)]
mod contract_tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_reject_non_emails() {
        for pin in [
            GooglePin::Email("app@project.iam.gserviceaccount.com".into()),
            GooglePin::NotConfigured,
        ] {
            assert_eq!(pin.to_string().parse::<GooglePin>().unwrap(), pin);
        }
        for bad in ["", "app", "@x.com", "a@b", "a b@c.d", "a@b@c.d"] {
            assert!(bad.parse::<GooglePin>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_pin_is_told_to_run_and_init_not_to_the_probe() {
        let args = AgentArgs {
            tokens: vec![TokenSpec {
                path: token_path(DEFAULT_AUDIENCE).into(),
                audience: DEFAULT_AUDIENCE.into(),
            }],
            google_service_account: Some(GooglePin::Email("a@p.iam.gserviceaccount.com".into())),
            ..AgentArgs::default()
        };
        for sub in [subcommand::RUN, subcommand::INIT] {
            let rendered = args.args(sub);
            let at = rendered
                .iter()
                .position(|a| a == flag::GOOGLE_SERVICE_ACCOUNT)
                .expect("pin rendered");
            assert_eq!(rendered[at + 1], "a@p.iam.gserviceaccount.com");
        }
        assert!(
            !args
                .check_command()
                .iter()
                .any(|a| a == flag::GOOGLE_SERVICE_ACCOUNT)
        );
    }

    #[test]
    fn kubernetes_tokens_live_beside_the_in_memory_volume() {
        let path = kubernetes_token_path(DEFAULT_AUDIENCE);
        assert_eq!(
            path,
            format!("{KUBERNETES_TOKEN_MOUNT_PATH}/sts.amazonaws.com.token")
        );
        assert!(!path.starts_with(&format!("{TOKEN_MOUNT_PATH}/")));
        assert_eq!(
            token_path("https://x/y").rsplit('/').next().unwrap(),
            token_file_name("https://x/y")
        );
    }

    #[test]
    fn session_names_follow_sts() {
        assert!(session_name::is_valid("ab"));
        assert!(!session_name::is_valid("a"));
        assert!(!session_name::is_valid(&"a".repeat(65)));
        assert!(!session_name::is_valid("a b"));
        for s in ["", "x", "rolebridge-my host/1", &"é".repeat(100)] {
            let clean = session_name::sanitize(s);
            assert!(session_name::is_valid(&clean), "{s:?} -> {clean:?}");
        }
        assert_eq!(session_name::sanitize("x"), "x-");
        assert_eq!(session_name::sanitize("a.b@c"), "a.b@c");
        assert_eq!(
            session_name::sanitize("rolebridge-my host/1"),
            "rolebridge-my-host-1"
        );
        assert_eq!(
            session_name::sanitize(&"a".repeat(100)).len(),
            session_name::MAX_LEN
        );
    }

    #[test]
    fn introspection_sees_names_envs_and_defaults() {
        let cmd = clap::Command::new("bin").subcommand(
            clap::Command::new("run").arg(
                clap::Arg::new("port")
                    .long("port")
                    .env("BIN_PORT")
                    .default_value("24118"),
            ),
        );
        let v = introspect::flags_json(&cmd);
        let flag = &v["subcommands"][0]["flags"][0];
        assert_eq!(v["subcommands"][0]["name"], "run");
        assert_eq!(flag["long"], "port");
        assert_eq!(flag["env"], "BIN_PORT");
        assert_eq!(flag["default"], "24118");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The token of `audience` at its [`token_path`], as the webhook builds it.
    fn token_for(audience: &str) -> TokenSpec {
        TokenSpec {
            path: PathBuf::from(token_path(audience)),
            audience: audience.to_owned(),
        }
    }

    #[test]
    fn token_paths_are_readable_distinct_and_have_no_equals_sign() {
        assert_eq!(
            token_path("sts.amazonaws.com"),
            "/var/run/secrets/rolebridge.io/sts.amazonaws.com.token"
        );
        let a = token_path("https://example.com/aws?x=1");
        let b = token_path("https___example.com_aws_x_1");
        assert_ne!(a, b);
        assert!(!a.contains('='), "{a}");
        assert!(token_path(&"x".repeat(500)).len() < 160);
        assert_ne!(token_path(".."), format!("{TOKEN_MOUNT_PATH}/...token"));
        assert!(!token_path("../etc").contains("/../"));
        assert!(!AUTH_TOKEN_PATH.ends_with(".token"));
    }

    proptest::proptest! {
        /// The fast path names every audience exactly as the character-by-character rule does
        /// (the names are baked into pods: they must never change).
        #[test]
        fn token_file_names_follow_one_rule(audience in "[a-z._/:~é→-]{0,3}[a-zA-Z0-9._-]{0,110}") {
            let sanitized: String = audience
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
                .take(100)
                .collect();
            let want = if sanitized == audience && !audience.starts_with('.') {
                format!("{audience}.token")
            } else {
                format!("{sanitized}-{:08x}.token", fnv1a(&audience))
            };
            proptest::prop_assert_eq!(token_file_name(&audience), want);
        }
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(""), 0x811c_9dc5);
        assert_eq!(fnv1a("a"), 0xe40c_292c);
    }

    #[test]
    fn token_spec_splits_at_first_equals_and_rejects_malformed() {
        let s: TokenSpec = "/var/run/secrets/rolebridge.io/x.token=https://a.b/c?d=e:f"
            .parse()
            .unwrap();
        assert_eq!(
            s.path,
            PathBuf::from("/var/run/secrets/rolebridge.io/x.token")
        );
        assert_eq!(s.audience, "https://a.b/c?d=e:f");
        for bad in ["nope", "=aud", "/p="] {
            assert!(matches!(
                bad.parse::<TokenSpec>(),
                Err(ContractError::TokenSyntax(_))
            ));
        }
        assert!(matches!(
            "rel/p=a".parse::<TokenSpec>(),
            Err(ContractError::TokenRelative(_))
        ));
    }

    fn spec() -> CredentialsSpec {
        CredentialsSpec {
            name: "docs".into(),
            audience: DEFAULT_AUDIENCE.into(),
            role_arn: "arn:aws:iam::111111111111:role/ci-identity".into(),
            chain: vec![Hop {
                role_arn: "arn:aws:iam::222222222222:role/docs-writer".into(),
                external_id: Some("docs-ext-4711".into()),
            }],
            duration_seconds: Some(900),
            session_tags: true,
            region: Some("eu-west-1".into()),
            token_file: None,
        }
    }

    #[test]
    fn credentials_spec_round_trips_and_is_checked() {
        let s = spec();
        let text = s.to_string();
        assert!(!text.contains('\n'));
        assert_eq!(text.parse::<CredentialsSpec>().unwrap(), s);
        assert_eq!(
            s.final_role_arn(),
            "arn:aws:iam::222222222222:role/docs-writer"
        );
        let mut long = s.clone();
        long.chain = vec![s.chain[0].clone(); MAX_CHAIN + 1];
        assert!(long.to_string().parse::<CredentialsSpec>().is_err());
        let mut bad = s.clone();
        bad.name = "Has/Slash".into();
        assert!(bad.to_string().parse::<CredentialsSpec>().is_err());
        assert!(
            r#"{"name":"a","audience":"x","roleArn":"arn:x","surprise":1}"#
                .parse::<CredentialsSpec>()
                .is_err()
        );
        let minimal: CredentialsSpec =
            r#"{"name":"a","audience":"x","roleArn":"arn:x"}"#.parse().unwrap();
        assert!(minimal.chain.is_empty() && !minimal.session_tags);
    }

    #[test]
    fn a_kubernetes_token_file_round_trips_and_must_be_absolute() {
        let mut s = spec();
        s.token_file = Some(kubernetes_token_path(DEFAULT_AUDIENCE));
        let text = s.to_string();
        assert!(
            text.contains(
                r#""tokenFile":"/var/run/secrets/kubernetes.rolebridge.io/sts.amazonaws.com.token""#
            ),
            "{text}"
        );
        assert_eq!(text.parse::<CredentialsSpec>().unwrap(), s);
        s.token_file = Some("relative.token".into());
        assert!(s.to_string().parse::<CredentialsSpec>().is_err());
    }

    #[test]
    fn agent_args_render_flags_in_a_stable_order() {
        let args = AgentArgs {
            tokens: vec![token_for("sts.amazonaws.com")],
            credentials: vec![spec()],
            credentials_port: 24118,
            google_service_account: None,
        };
        let run = args.args(subcommand::RUN);
        assert_eq!(run[0], "run");
        assert_eq!(
            run[1..3],
            [
                "--token".to_string(),
                "/var/run/secrets/rolebridge.io/sts.amazonaws.com.token=sts.amazonaws.com".into()
            ]
        );
        assert_eq!(run[3], "--credentials");
        assert_eq!(run[4].parse::<CredentialsSpec>().unwrap(), spec());
        assert_eq!(run[5..], ["--credentials-port".to_string(), "24118".into()]);
        let check = args.check_command();
        assert_eq!(check[..2], [AGENT_BINARY.to_string(), "check".into()]);
        let wait = args.wait_command(std::time::Duration::from_secs(120));
        assert_eq!(wait[..check.len()], check[..]);
        assert_eq!(wait[check.len()..], ["--wait".to_string(), "120s".into()]);
        assert_eq!(
            duration::parse(wait.last().unwrap()),
            Ok(std::time::Duration::from_secs(120))
        );
        assert!(!check.contains(&"--credentials".to_string()));
        assert!(check.contains(&"--credentials-port".to_string()));
        let tokens_only = AgentArgs {
            tokens: args.tokens.clone(),
            ..AgentArgs::default()
        };
        assert!(
            !tokens_only
                .args("run")
                .iter()
                .any(|a| a.starts_with("--cred"))
        );
    }

    #[test]
    fn flag_names_are_the_rendered_flags_without_dashes() {
        for (rendered, name) in [
            (flag::TOKEN, flag::name::TOKEN),
            (flag::CREDENTIALS, flag::name::CREDENTIALS),
            (flag::CREDENTIALS_PORT, flag::name::CREDENTIALS_PORT),
            (flag::WAIT, flag::name::WAIT),
        ] {
            assert_eq!(rendered.strip_prefix("--"), Some(name));
        }
        assert_eq!(flag::CREDENTIALS_PORT, "--credentials-port");
    }

    #[test]
    fn credentials_host_is_a_loopback_ip_literal() {
        // The agent binds it without a resolver, and SDKs accept plain HTTP only to loopback.
        let ip: std::net::IpAddr = CREDENTIALS_HOST.parse().unwrap();
        assert!(ip.is_loopback());
    }

    #[test]
    fn credentials_uri_is_loopback_http() {
        assert_eq!(
            credentials_uri(24118, "docs"),
            "http://127.0.0.1:24118/v1/credentials/docs"
        );
    }

    #[test]
    fn durations_take_units_and_plain_seconds() {
        use std::time::Duration;
        for (s, want) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("10", Duration::from_secs(10)),
            (" 1.5s ", Duration::from_millis(1500)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("0", Duration::ZERO),
            ("1.5", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h2m3s4ms", Duration::from_millis(3_723_004)),
            ("250us", Duration::from_micros(250)),
            ("7µs", Duration::from_micros(7)),
            ("100ns", Duration::from_nanos(100)),
        ] {
            assert_eq!(duration::parse(s), Ok(want), "{s}");
        }
        for bad in [
            "", "s", "-1", "1.", ".5s", "1..2s", "1d", "1 s", "1e3", "m1", "1m 30s", "5x",
        ] {
            assert!(duration::parse(bad).is_err(), "{bad}");
        }
        // Far beyond u64 seconds: an error, not a panic.
        assert!(matches!(
            duration::parse("99999999999999999999999h"),
            Err(duration::DurationError::Range(_))
        ));
    }

    proptest! {
        #[test]
        fn token_spec_display_parses_back(aud in "[ -~]{1,80}") {
            let aud = aud.trim().to_string();
            prop_assume!(!aud.is_empty());
            let spec = token_for(&aud);
            prop_assert!(!spec.path.display().to_string().contains('='));
            prop_assert_eq!(spec.to_string().parse::<TokenSpec>().unwrap(), spec);
        }
    }
}
