//! The command line. It lives in the library (not in `main`) so that tests can parse exactly
//! what the webhook renders ([`rolebridge_contract::AgentArgs`]) through the real parser.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::LevelFilter;

use rolebridge_contract::{
    AUTH_TOKEN_PATH, CredentialsSpec, DEFAULT_CREDENTIALS_PORT, GooglePin, MIN_CREDENTIALS_PORT,
    env, flag, introspect, subcommand,
};

use crate::aws::DEFAULT_AUDIENCE;
use crate::endpoint::Limits;
use crate::identity::PodIdentity;
use crate::metadata::MetadataHost;
use crate::pin::Pin;
use crate::schedule::Policy;
use crate::spec::{self, SpecError, TokenSpec};
use crate::sts::Hop;
use crate::token_files::Config;
use crate::token_source::TokenSource;

#[derive(Debug, Parser)]
#[command(
    name = "rolebridge-agent",
    version,
    about = "Keeps Google ID tokens fresh for AWS web identity federation, and serves AWS \
             credentials obtained through a role chain"
)]
pub struct Cli {
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(
        long,
        env = "ROLEBRIDGE_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: LevelFilter,
    /// Log format.
    #[arg(long, env = "ROLEBRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Token file and audience, split at the first '='. Repeat once per audience. Without any
    /// flag, ROLEBRIDGE_TOKENS is read as a comma-separated list of the same.
    #[arg(long = flag::name::TOKEN, value_name = "PATH=AUDIENCE")]
    pub tokens: Vec<TokenSpec>,
}

impl TokenArgs {
    /// The token mapping; may be empty only when `allow_empty` (credentials are served).
    pub fn resolve(self, allow_empty: bool) -> Result<Vec<TokenSpec>, SpecError> {
        let env = std::env::var("ROLEBRIDGE_TOKENS").ok();
        match spec::resolve(self.tokens, env.as_deref()) {
            Err(SpecError::Empty) if allow_empty => Ok(Vec::new()),
            other => other,
        }
    }
}

#[derive(Debug, Args)]
pub struct MetadataArgs {
    /// Metadata server as host[:port], no scheme (the variable Google's client libraries use).
    /// Default: 169.254.169.254:80 with Host: metadata.google.internal.
    #[arg(long, env = "GCE_METADATA_HOST", value_name = "HOST[:PORT]")]
    pub metadata_host: Option<String>,
    /// Timeout of one request to the metadata server (e.g. 500ms, 10s).
    #[arg(long, env = "ROLEBRIDGE_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

impl MetadataArgs {
    pub fn endpoint(&self) -> MetadataHost {
        MetadataHost::new(self.metadata_host.as_deref())
    }

    pub fn config(&self, policy: Policy, pin: Pin) -> Arc<Config> {
        Arc::new(Config {
            endpoint: self.endpoint(),
            request_timeout: self.request_timeout,
            policy,
            pin,
        })
    }

    /// The metadata server as a token source, held to `pin`.
    pub fn source(&self, pin: Pin) -> TokenSource {
        TokenSource::Metadata {
            host: self.endpoint(),
            pin,
            timeout: self.request_timeout,
        }
    }
}

/// The Google service account every Google ID token must be for (see [`crate::pin`]).
#[derive(Debug, Args, Default)]
pub struct PinArg {
    /// The Google service account every Google ID token must be for; a token for any other
    /// account (the node's, in a hostNetwork pod or on a node pool without GKE_METADATA) is
    /// refused. "none": the pod's service account names no Google service account, so every
    /// token is refused with advice.
    #[arg(long = flag::name::GOOGLE_SERVICE_ACCOUNT, value_name = "EMAIL|none")]
    #[arg(env = "ROLEBRIDGE_GOOGLE_SERVICE_ACCOUNT")]
    pub google_service_account: Option<GooglePin>,
}

impl PinArg {
    /// The pin, naming the pod's service account (from `pod`) in advice.
    pub fn pin(&self, pod: &PodArgs) -> Pin {
        let service_account = match (&pod.pod_namespace, &pod.service_account) {
            (Some(ns), Some(sa)) if !ns.is_empty() && !sa.is_empty() => Some(format!("{ns}/{sa}")),
            _ => None,
        };
        Pin {
            google: self.google_service_account.clone(),
            service_account,
        }
    }
}

/// A token file instead of the metadata server (`credential-process`, `verify`).
#[derive(Debug, Args)]
pub struct TokenFileArg {
    /// Use the OIDC token in this file for the web identity hop instead of a Google ID token
    /// from the metadata server: a Kubernetes projected service account token, or a CI
    /// system's ID token (GitLab id_tokens, GitHub Actions' OIDC token). Read at every use.
    // Not in conflict with --metadata-host: GCE_METADATA_HOST may be set in the environment,
    // and verify still asks the metadata server for the gke-cluster-name tag.
    #[arg(long, env = "ROLEBRIDGE_TOKEN_FILE", value_name = "PATH")]
    #[arg(conflicts_with = "google_service_account")]
    pub token_file: Option<PathBuf>,
}

impl TokenFileArg {
    /// The token file if given, else the metadata server held to `pin`.
    pub fn source(&self, metadata: &MetadataArgs, pin: Pin) -> TokenSource {
        match &self.token_file {
            Some(path) => TokenSource::File(path.clone()),
            None => metadata.source(pin),
        }
    }
}

#[derive(Debug, Args)]
pub struct AudienceArg {
    /// Audience of the ID token (what AWS matches as accounts.google.com:oaud for a Google
    /// token, as ISSUER:aud for another issuer's).
    #[arg(long, env = "ROLEBRIDGE_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
}

/// The pod's identity, from the downward API variables the webhook sets.
#[derive(Debug, Args, Default)]
pub struct PodArgs {
    /// The pod's name: the role session name and the kubernetes-pod-name session tag.
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
    /// The kubernetes-namespace session tag.
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// The kubernetes-pod-uid session tag.
    #[arg(long, env = env::POD_UID)]
    pub pod_uid: Option<String>,
    /// The kubernetes-service-account session tag.
    #[arg(long, env = env::SERVICE_ACCOUNT)]
    pub service_account: Option<String>,
    /// The gke-cluster-name session tag; asked from the metadata server when unset.
    #[arg(long, env = env::CLUSTER_NAME)]
    pub cluster_name: Option<String>,
}

impl PodArgs {
    pub fn identity(&self) -> PodIdentity {
        PodIdentity {
            name: self.pod_name.clone(),
            namespace: self.pod_namespace.clone(),
            uid: self.pod_uid.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

/// A role chain given as flags (`credential-process`, `verify`): the hops after the web
/// identity hop, and the audience of the ID token that starts it.
#[derive(Debug, Args)]
pub struct ChainArgs {
    /// After the web identity hop, sts:AssumeRole into this role. Repeat for more hops, in
    /// order; the last one is the role whose credentials you get.
    #[arg(
        long = "chain-role-arn",
        env = "ROLEBRIDGE_CHAIN_ROLE_ARN",
        value_name = "ARN",
        value_delimiter = ','
    )]
    pub chain_role_arns: Vec<String>,
    /// External ID for the last --chain-role-arn hop.
    #[arg(
        long,
        env = "ROLEBRIDGE_CHAIN_EXTERNAL_ID",
        value_name = "ID",
        requires = "chain_role_arns"
    )]
    pub chain_external_id: Option<String>,
    /// Lifetime of the final credentials, in seconds (900-43200; at most 3600 with a chain).
    #[arg(long, env = "ROLEBRIDGE_DURATION_SECONDS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub duration_seconds: Option<u32>,
    #[command(flatten)]
    pub audience: AudienceArg,
}

impl ChainArgs {
    pub fn hops(&self) -> Vec<Hop> {
        let n = self.chain_role_arns.len();
        self.chain_role_arns
            .iter()
            .enumerate()
            .map(|(i, arn)| Hop {
                role_arn: arn.clone(),
                external_id: if i + 1 == n {
                    self.chain_external_id.clone()
                } else {
                    None
                },
            })
            .collect()
    }
}

/// Limits of the credentials endpoint's listener.
#[derive(Debug, Args)]
pub struct ListenerArgs {
    /// Most connections to the credentials endpoint at once; further ones wait.
    #[arg(long, env = "ROLEBRIDGE_MAX_CONNECTIONS", default_value_t = 32)]
    pub max_connections: usize,
    /// A request head must arrive within this.
    #[arg(long, env = "ROLEBRIDGE_HEADER_READ_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Close a keep-alive connection idle for this long.
    #[arg(long, env = "ROLEBRIDGE_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long a request may wait for the first credentials being fetched (keep well under
    /// the SDKs' 1 s timeout).
    #[arg(long, env = "ROLEBRIDGE_PENDING_WAIT", default_value = "500ms", value_parser = parse_duration)]
    pub pending_wait: Duration,
}

impl ListenerArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: self.header_read_timeout.max(Duration::from_millis(100)),
            idle_timeout: self.idle_timeout.max(Duration::from_millis(100)),
            pending_wait: self.pending_wait,
        }
    }
}

/// The credentials delivery (`run`, and accepted by `init` so that it parses what the webhook
/// renders for both).
#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// A binding whose credentials are served (JSON, as the webhook renders it). Repeatable.
    #[arg(
        long = flag::name::CREDENTIALS,
        env = "ROLEBRIDGE_CREDENTIALS",
        value_name = "JSON"
    )]
    pub credentials: Vec<CredentialsSpec>,
    /// Port of the credentials endpoint on the pod's loopback address.
    #[arg(
        long = flag::name::CREDENTIALS_PORT,
        env = "ROLEBRIDGE_CREDENTIALS_PORT",
        default_value_t = DEFAULT_CREDENTIALS_PORT,
        value_parser = credentials_port()
    )]
    pub credentials_port: u16,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sidecar: write every token, then keep each fresh; serve the credentials of every
    /// --credentials binding on loopback; until SIGTERM.
    #[command(name = subcommand::RUN)]
    Run(RunArgs),
    /// One-shot: write every token, retrying until the deadline, then exit. (--credentials
    /// are accepted and left to the sidecar, which serves them.)
    #[command(name = subcommand::INIT)]
    Init(InitArgs),
    /// Probe: exit 0 when every token file holds a valid token that is not about to expire,
    /// and (with --credentials-port) the credentials endpoint holds every binding's credentials.
    #[command(name = subcommand::CHECK)]
    Check(CheckArgs),
    /// Doctor: fetch a token, show its claims, and walk the role chain hop by hop.
    Verify(VerifyArgs),
    /// Print the IAM trust policy a role needs: for the web identity role (trusting a Google
    /// service account, or with --token-source kubernetes a Kubernetes service account), or
    /// with --previous-role-arn for a chained role.
    TrustPolicy(TrustPolicyArgs),
    /// AWS credential_process helper: print Version 1 credentials JSON (through the role
    /// chain, if any), cached until shortly before they expire.
    CredentialProcess(CredentialProcessArgs),
    /// Print this command line as JSON: every subcommand and flag with its variable and
    /// default (for checks that compare against the parser itself).
    #[command(name = introspect::SUBCOMMAND, hide = true)]
    Flags(FlagsArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub credentials: CredentialsArgs,
    /// The endpoint's authorization token is written here (and reused if well formed).
    #[arg(long, env = "ROLEBRIDGE_AUTH_TOKEN_FILE", default_value = AUTH_TOKEN_PATH)]
    pub auth_token_file: PathBuf,
    #[command(flatten)]
    pub pod: PodArgs,
    #[command(flatten)]
    pub listener: ListenerArgs,
    #[command(flatten)]
    pub metadata: MetadataArgs,
    #[command(flatten)]
    pub pin: PinArg,
    /// Refresh after this fraction of a token's or credentials' lifetime (±0.1 jitter).
    #[arg(long, env = "ROLEBRIDGE_REFRESH_FRACTION", default_value_t = 0.5, value_parser = parse_fraction)]
    pub refresh_fraction: f64,
    /// Longest wait between retries while the metadata server or STS fails.
    #[arg(long, env = "ROLEBRIDGE_MAX_RETRY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub max_retry_interval: Duration,
    /// Longest wait between attempts after a refusal (the metadata server answered for another
    /// account, or the service account has no Google service account): no outage, so the
    /// agent asks rarely.
    #[arg(long, env = "ROLEBRIDGE_REFUSAL_RETRY_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub refusal_retry_interval: Duration,
    /// Never hand out credentials with less than this left (capped at a tenth of their
    /// lifetime).
    #[arg(long, env = "ROLEBRIDGE_CREDENTIALS_MARGIN", default_value = "60s", value_parser = parse_duration)]
    pub credentials_margin: Duration,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub credentials: CredentialsArgs,
    #[command(flatten)]
    pub metadata: MetadataArgs,
    #[command(flatten)]
    pub pin: PinArg,
    /// Named in the advice of a refusal (the pod's namespace and service account).
    #[command(flatten)]
    pub pod: PodArgs,
    /// Give up (exit 1) when the tokens are not written by then (at once after a refusal).
    #[arg(long, env = "ROLEBRIDGE_INIT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub tokens: TokenArgs,
    /// Also ask the credentials endpoint's /healthz on this port.
    #[arg(
        long = flag::name::CREDENTIALS_PORT,
        env = "ROLEBRIDGE_CHECK_CREDENTIALS_PORT",
        value_name = "PORT",
        value_parser = credentials_port()
    )]
    pub credentials_port: Option<u16>,
    /// "About to expire": less than this left (capped at a tenth of the token's lifetime).
    #[arg(long, env = "ROLEBRIDGE_MIN_REMAINING", default_value = "5m", value_parser = parse_duration)]
    pub min_remaining: Duration,
    /// Timeout of the health request.
    #[arg(long, env = "ROLEBRIDGE_HEALTH_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub health_timeout: Duration,
    /// Retry the whole check until it passes, for at most this long, then fail with the
    /// last reason (legacy mode's postStart hook holds the app containers with it).
    #[arg(long = flag::name::WAIT, env = "ROLEBRIDGE_CHECK_WAIT", value_parser = parse_duration)]
    pub wait: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Role to assume with the ID token (hop 1). Defaults to AWS_ROLE_ARN when that is set.
    #[arg(long, env = "ROLEBRIDGE_ROLE_ARN")]
    pub role_arn: Option<String>,
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Role session name (default: the pod name, else rolebridge-<hostname>).
    #[arg(long, env = "ROLEBRIDGE_SESSION_NAME")]
    pub session_name: Option<String>,
    /// Do not send the pod's identity as session tags on the AssumeRole hops.
    #[arg(long, env = "ROLEBRIDGE_NO_SESSION_TAGS")]
    pub no_session_tags: bool,
    #[command(flatten)]
    pub pod: PodArgs,
    #[command(flatten)]
    pub metadata: MetadataArgs,
    #[command(flatten)]
    pub pin: PinArg,
    #[command(flatten)]
    pub token_file: TokenFileArg,
}

/// Which token a role's trust policy admits (`trust-policy --token-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenSourceKind {
    /// A Google service account's ID token (from the GKE metadata server).
    Google,
    /// The cluster's Kubernetes service account tokens, through an IAM OIDC provider.
    Kubernetes,
}

#[derive(Debug, Args)]
pub struct TrustPolicyArgs {
    /// Whose tokens the role trusts: google (a Google service account) or kubernetes (a
    /// Kubernetes service account of the cluster, through an IAM OIDC provider for its issuer).
    #[arg(
        long,
        env = "ROLEBRIDGE_TOKEN_SOURCE",
        value_enum,
        default_value_t = TokenSourceKind::Google,
        requires_ifs = [
            ("kubernetes", "issuer"),
            ("kubernetes", "namespace"),
            ("kubernetes", "service_account"),
            ("kubernetes", "account"),
        ]
    )]
    pub token_source: TokenSourceKind,
    #[command(flatten)]
    pub audience: AudienceArg,
    /// The Google service account's unique ID (numeric). Without it, it is read from a
    /// token fetched from the metadata server, which then needs --google-service-account.
    #[arg(long, env = "ROLEBRIDGE_GSA_UNIQUE_ID")]
    pub gsa_unique_id: Option<String>,
    #[command(flatten)]
    pub pin: PinArg,
    /// kubernetes: the cluster's OIDC issuer, the iss of its service account tokens (on GKE
    /// https://container.googleapis.com/v1/projects/PROJECT/locations/LOCATION/clusters/NAME).
    #[arg(long, env = "ROLEBRIDGE_OIDC_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// kubernetes: the namespace of the service account the role trusts.
    #[arg(long, env = env::POD_NAMESPACE, value_name = "NS")]
    pub namespace: Option<String>,
    /// kubernetes: the service account the role trusts (its tokens' sub is
    /// system:serviceaccount:NS:SA).
    #[arg(long, env = env::SERVICE_ACCOUNT, value_name = "SA")]
    pub service_account: Option<String>,
    /// kubernetes: the AWS account (12 digits) of the role and of its OIDC provider.
    #[arg(long, env = "ROLEBRIDGE_AWS_ACCOUNT_ID", value_name = "ACCOUNT")]
    pub account: Option<String>,
    /// Print the policy of a chained role instead: trusting this role (the previous hop)
    /// with sts:AssumeRole and sts:TagSession.
    #[arg(long, env = "ROLEBRIDGE_PREVIOUS_ROLE_ARN", value_name = "ARN")]
    pub previous_role_arn: Option<String>,
    /// With --previous-role-arn: require this external ID.
    #[arg(long, env = "ROLEBRIDGE_EXTERNAL_ID", requires = "previous_role_arn")]
    pub external_id: Option<String>,
    #[command(flatten)]
    pub metadata: MetadataArgs,
}

#[derive(Debug, Args)]
pub struct CredentialProcessArgs {
    #[arg(long, env = "ROLEBRIDGE_ROLE_ARN")]
    pub role_arn: String,
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Role session name (default rolebridge-<hostname>).
    #[arg(long, env = "ROLEBRIDGE_SESSION_NAME")]
    pub session_name: Option<String>,
    /// Cache directory (default $XDG_CACHE_HOME/rolebridge or ~/.cache/rolebridge).
    #[arg(long, env = "ROLEBRIDGE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the credential cache.
    #[arg(long, env = "ROLEBRIDGE_NO_CACHE")]
    pub no_cache: bool,
    /// Fetch new credentials when the cached ones expire within this.
    #[arg(long, env = "ROLEBRIDGE_REFRESH_BEFORE", default_value = "5m", value_parser = parse_duration)]
    pub refresh_before: Duration,
    #[command(flatten)]
    pub metadata: MetadataArgs,
    #[command(flatten)]
    pub pin: PinArg,
    #[command(flatten)]
    pub token_file: TokenFileArg,
}

#[derive(Debug, Args)]
pub struct FlagsArgs {
    /// Print JSON, the only format (required, so that a human format can be added later).
    // No `env`: this asks what the parser is, it configures nothing.
    #[arg(long = introspect::JSON, required = true)]
    pub json: bool,
}

/// Durations on the command line: the contract's parser (Go notation such as `500ms`, `1m30s`,
/// or plain seconds), the same one the webhook's flags use.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    rolebridge_contract::duration::parse(s).map_err(|e| e.to_string())
}

/// Ports the agent (non-root, without capabilities) can bind; the webhook refuses lower ones too.
fn credentials_port() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(i64::from(MIN_CREDENTIALS_PORT)..)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.1..=0.9).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0.1 and 0.9")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use rolebridge_contract::{AgentArgs, subcommand};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        // Overflow is an error, not a panic.
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    /// The token of `audience` at its contract path, as the webhook builds it.
    fn token_for(audience: &str) -> TokenSpec {
        TokenSpec {
            path: PathBuf::from(rolebridge_contract::token_path(audience)),
            audience: audience.to_owned(),
        }
    }

    fn contract_examples() -> Vec<AgentArgs> {
        let docs: CredentialsSpec = serde_json::from_value(serde_json::json!({
            "name": "docs",
            "audience": "sts.amazonaws.com",
            "roleArn": "arn:aws:iam::111111111111:role/ci-identity",
            "chain": [
                {"roleArn": "arn:aws:iam::222222222222:role/hop", "externalId": "a,b=c@d:/e"},
                {"roleArn": "arn:aws:iam::333333333333:role/docs-writer"}
            ],
            "durationSeconds": 900,
            "sessionTags": true,
            "region": "eu-west-1"
        }))
        .unwrap();
        let minimal: CredentialsSpec = serde_json::from_value(serde_json::json!({
            "name": "short.lived-1",
            "audience": "https://example.com/aws?x=1",
            "roleArn": "arn:aws:iam::111111111111:role/short",
            "durationSeconds": 43200
        }))
        .unwrap();
        let tokens = vec![
            token_for("sts.amazonaws.com"),
            token_for("https://example.com/aws?x=1"),
        ];
        vec![
            AgentArgs {
                tokens: tokens.clone(),
                ..AgentArgs::default()
            },
            AgentArgs {
                tokens: tokens.clone(),
                credentials: vec![docs.clone(), minimal.clone()],
                credentials_port: 24118,
                google_service_account: None,
            },
            AgentArgs {
                tokens: vec![],
                credentials: vec![docs.clone()],
                // The lowest port the webhook renders (and a non-default one).
                credentials_port: MIN_CREDENTIALS_PORT,
                google_service_account: None,
            },
            AgentArgs {
                tokens: tokens.clone(),
                credentials: vec![docs.clone()],
                credentials_port: 24118,
                google_service_account: Some(GooglePin::Email(
                    "app@project.iam.gserviceaccount.com".into(),
                )),
            },
            AgentArgs {
                tokens,
                credentials: vec![CredentialsSpec {
                    token_file: Some(rolebridge_contract::kubernetes_token_path(
                        "sts.amazonaws.com",
                    )),
                    ..docs
                }],
                credentials_port: 24118,
                google_service_account: Some(GooglePin::NotConfigured),
            },
        ]
    }

    fn parse(args: Vec<String>) -> Command {
        let argv = std::iter::once("rolebridge-agent".to_string()).chain(args);
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("the webhook's rendering does not parse: {e}"))
            .command
    }

    /// What the webhook renders (through the one shared type) is exactly what the agent
    /// parses: the same token specs, credentials specs and port, for `run`, `init` and the
    /// probe.
    #[test]
    fn webhook_rendering_round_trips_through_the_real_parser() {
        for want in contract_examples() {
            match parse(want.args(subcommand::RUN)) {
                Command::Run(RunArgs {
                    tokens,
                    credentials,
                    pin,
                    ..
                }) => {
                    assert_eq!(tokens.tokens, want.tokens);
                    assert_eq!(credentials.credentials, want.credentials);
                    assert_eq!(pin.google_service_account, want.google_service_account);
                    if !want.credentials.is_empty() {
                        assert_eq!(credentials.credentials_port, want.credentials_port);
                    }
                }
                other => panic!("{other:?}"),
            }
            match parse(want.args(subcommand::INIT)) {
                Command::Init(InitArgs {
                    tokens,
                    credentials,
                    pin,
                    ..
                }) => {
                    assert_eq!(tokens.tokens, want.tokens);
                    assert_eq!(credentials.credentials, want.credentials);
                    assert_eq!(pin.google_service_account, want.google_service_account);
                    if !want.credentials.is_empty() {
                        assert_eq!(credentials.credentials_port, want.credentials_port);
                    }
                }
                other => panic!("{other:?}"),
            }
            let probes = [
                (want.check_command(), None),
                (
                    want.wait_command(Duration::from_secs(120)),
                    Some(Duration::from_secs(120)),
                ),
            ];
            for (probe, want_wait) in probes {
                assert_eq!(probe[0], rolebridge_contract::AGENT_BINARY);
                match parse(probe[1..].to_vec()) {
                    Command::Check(CheckArgs {
                        tokens,
                        credentials_port,
                        wait,
                        ..
                    }) => {
                        assert_eq!(tokens.tokens, want.tokens);
                        let expected =
                            (!want.credentials.is_empty()).then_some(want.credentials_port);
                        assert_eq!(credentials_port, expected);
                        assert_eq!(wait, want_wait);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn malformed_arguments_are_rejected_by_the_parser() {
        let bad = |args: &[&str]| {
            let argv = std::iter::once("rolebridge-agent").chain(args.iter().copied());
            Cli::try_parse_from(argv).is_err()
        };
        assert!(bad(&["run", "--token", "relative=a"]));
        assert!(bad(&["run", "--refresh-fraction", "1.5"]));
        assert!(bad(&["run", "--credentials", "{\"name\":\"x\"}"]));
        assert!(bad(&["run", "--credentials", "not json"]));
        assert!(bad(&[
            "credential-process",
            "--role-arn",
            "a",
            "--chain-external-id",
            "x"
        ]));
        assert!(bad(&[
            "credential-process",
            "--role-arn",
            "a",
            "--duration-seconds",
            "0"
        ]));
        assert!(bad(&["trust-policy", "--external-id", "x"]));
        assert!(!bad(&["check", "--credentials-port", "24118"]));
        // Below the contract's lowest port the agent could not bind (the webhook refuses it too).
        let below = (MIN_CREDENTIALS_PORT - 1).to_string();
        assert!(bad(&[
            "run",
            "--token",
            "/t=a",
            "--credentials-port",
            &below
        ]));
        assert!(bad(&[
            "init",
            "--token",
            "/t=a",
            "--credentials-port",
            &below
        ]));
        assert!(bad(&["check", "--credentials-port", &below]));
        assert!(!bad(&[
            "check",
            "--credentials-port",
            &MIN_CREDENTIALS_PORT.to_string()
        ]));
    }

    #[test]
    fn pins_token_files_and_token_sources_are_checked_by_the_parser() {
        let bad = |args: &[&str]| {
            let argv = std::iter::once("rolebridge-agent").chain(args.iter().copied());
            Cli::try_parse_from(argv).is_err()
        };
        assert!(bad(&[
            "run",
            "--token",
            "/t=a",
            "--google-service-account",
            "app"
        ]));
        assert!(!bad(&[
            "run",
            "--token",
            "/t=a",
            "--google-service-account",
            "none"
        ]));
        // A token file is not Google's: a pin for it is a contradiction.
        assert!(bad(&[
            "verify",
            "--token-file",
            "/t",
            "--google-service-account",
            "a@p.iam.gserviceaccount.com"
        ]));
        assert!(!bad(&[
            "verify",
            "--token-file",
            "/t",
            "--metadata-host",
            "x"
        ]));
        assert!(bad(&["trust-policy", "--token-source", "kubernetes"]));
        assert!(!bad(&[
            "trust-policy",
            "--token-source",
            "kubernetes",
            "--issuer",
            "https://i",
            "--namespace",
            "n",
            "--service-account",
            "s",
            "--account",
            "111111111111"
        ]));
    }

    #[test]
    fn chain_flags_put_the_external_id_on_the_last_hop() {
        let argv = [
            "rolebridge-agent",
            "credential-process",
            "--role-arn",
            "arn:aws:iam::1:role/id",
            "--chain-role-arn",
            "arn:aws:iam::2:role/a",
            "--chain-role-arn",
            "arn:aws:iam::3:role/b",
            "--chain-external-id",
            "ext",
            "--duration-seconds",
            "900",
        ];
        match Cli::try_parse_from(argv).unwrap().command {
            Command::CredentialProcess(CredentialProcessArgs { chain, .. }) => {
                let hops = chain.hops();
                assert_eq!(hops.len(), 2);
                assert_eq!(hops[0].external_id, None);
                assert_eq!(hops[1].external_id.as_deref(), Some("ext"));
                assert_eq!(chain.duration_seconds, Some(900));
            }
            other => panic!("{other:?}"),
        }
    }
}
