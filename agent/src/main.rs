//! Command-line shell of rolebridge-agent; see the library crate for the design.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::{error, info};
use tracing_subscriber::filter::LevelFilter;

use rolebridge_agent::agent::{self, Config, Jitter, now_ms};
use rolebridge_agent::aws::{self, DEFAULT_AUDIENCE};
use rolebridge_agent::metadata::Endpoint;
use rolebridge_agent::schedule::Policy;
use rolebridge_agent::spec::{self, TokenSpec};

#[derive(Debug, Parser)]
#[command(
    name = "rolebridge-agent",
    version,
    about = "Keeps Google ID tokens fresh for AWS web identity federation"
)]
struct Cli {
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(
        long,
        env = "ROLEBRIDGE_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    log_level: LevelFilter,
    /// Log format.
    #[arg(long, env = "ROLEBRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// Token file and audience, split at the first '='. Repeat once per audience. Without any
    /// flag, ROLEBRIDGE_TOKENS is read as a comma-separated list of the same.
    #[arg(long = "token", value_name = "PATH=AUDIENCE")]
    tokens: Vec<TokenSpec>,
}

impl TokenArgs {
    fn resolve(self) -> anyhow::Result<Vec<TokenSpec>> {
        let env = std::env::var("ROLEBRIDGE_TOKENS").ok();
        Ok(spec::resolve(self.tokens, env.as_deref())?)
    }
}

#[derive(Debug, Args)]
struct MetadataArgs {
    /// Metadata server as host[:port], no scheme (the variable Google's client libraries use).
    /// Default: 169.254.169.254:80 with Host: metadata.google.internal.
    #[arg(long, env = "GCE_METADATA_HOST", value_name = "HOST[:PORT]")]
    metadata_host: Option<String>,
    /// Timeout of one request to the metadata server (e.g. 500ms, 10s).
    #[arg(long, env = "ROLEBRIDGE_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
}

impl MetadataArgs {
    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.metadata_host.as_deref())
    }
}

#[derive(Debug, Args)]
struct AudienceArg {
    /// Audience of the ID token (what AWS matches as accounts.google.com:oaud).
    #[arg(long, env = "ROLEBRIDGE_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    audience: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sidecar: write every token, then keep each fresh until SIGTERM.
    Run {
        #[command(flatten)]
        tokens: TokenArgs,
        #[command(flatten)]
        metadata: MetadataArgs,
        /// Refresh after this fraction of a token's lifetime (±0.1 jitter).
        #[arg(long, env = "ROLEBRIDGE_REFRESH_FRACTION", default_value_t = 0.5, value_parser = parse_fraction)]
        refresh_fraction: f64,
        /// Longest wait between retries while the metadata server fails.
        #[arg(long, env = "ROLEBRIDGE_MAX_RETRY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
        max_retry_interval: Duration,
    },
    /// One-shot: write every token, retrying until the deadline, then exit.
    Init {
        #[command(flatten)]
        tokens: TokenArgs,
        #[command(flatten)]
        metadata: MetadataArgs,
        /// Give up (exit 1) when the tokens are not written by then.
        #[arg(long, env = "ROLEBRIDGE_INIT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Probe: exit 0 when every token file holds a valid token that is not about to expire.
    Check {
        #[command(flatten)]
        tokens: TokenArgs,
        /// "About to expire": less than this left (capped at a tenth of the token's lifetime).
        #[arg(long, env = "ROLEBRIDGE_MIN_REMAINING", default_value = "5m", value_parser = parse_duration)]
        min_remaining: Duration,
    },
    /// Doctor: fetch a token, show its claims, and try AssumeRoleWithWebIdentity with it.
    Verify {
        /// Role to assume. Defaults to AWS_ROLE_ARN when that is set.
        #[arg(long, env = "ROLEBRIDGE_ROLE_ARN")]
        role_arn: Option<String>,
        #[command(flatten)]
        audience: AudienceArg,
        /// Role session name (default rolebridge-<hostname>).
        #[arg(long, env = "ROLEBRIDGE_SESSION_NAME")]
        session_name: Option<String>,
        #[command(flatten)]
        metadata: MetadataArgs,
    },
    /// Print the IAM trust policy a role needs for this Google service account.
    TrustPolicy {
        #[command(flatten)]
        audience: AudienceArg,
        /// The Google service account's unique ID (numeric). Without it, it is read from a
        /// token fetched from the metadata server.
        #[arg(long, env = "ROLEBRIDGE_GSA_UNIQUE_ID")]
        gsa_unique_id: Option<String>,
        #[command(flatten)]
        metadata: MetadataArgs,
    },
    /// AWS credential_process helper: print Version 1 credentials JSON, cached until shortly
    /// before they expire.
    CredentialProcess {
        #[arg(long, env = "ROLEBRIDGE_ROLE_ARN")]
        role_arn: String,
        #[command(flatten)]
        audience: AudienceArg,
        /// Role session name (default rolebridge-<hostname>).
        #[arg(long, env = "ROLEBRIDGE_SESSION_NAME")]
        session_name: Option<String>,
        /// Cache directory (default $XDG_CACHE_HOME/rolebridge or ~/.cache/rolebridge).
        #[arg(long, env = "ROLEBRIDGE_CACHE_DIR")]
        cache_dir: Option<std::path::PathBuf>,
        /// Do not read or write the credential cache.
        #[arg(long, env = "ROLEBRIDGE_NO_CACHE")]
        no_cache: bool,
        /// Fetch new credentials when the cached ones expire within this.
        #[arg(long, env = "ROLEBRIDGE_REFRESH_BEFORE", default_value = "5m", value_parser = parse_duration)]
        refresh_before: Duration,
        #[command(flatten)]
        metadata: MetadataArgs,
    },
}

/// `250ms`, `10s`, `5m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.1..=0.9).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0.1 and 0.9")),
    }
}

fn init_logging(level: LevelFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Plain => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: the work is a few HTTP requests per hour; worker threads would only add RSS.
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = cli.log_level != LevelFilter::OFF;
    init_logging(cli.log_level, cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if logging {
                error!("{e:#}");
            } else {
                eprintln!("rolebridge-agent: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            tokens,
            metadata,
            refresh_fraction,
            max_retry_interval,
        } => {
            let specs = tokens.resolve()?;
            let policy = Policy {
                refresh_fraction,
                backoff_cap: max_retry_interval.max(Duration::from_secs(1)),
                ..Policy::default()
            };
            let cfg = Arc::new(Config {
                endpoint: metadata.endpoint(),
                request_timeout: metadata.request_timeout,
                policy,
            });
            runtime()?.block_on(run(cfg, specs))
        }
        Command::Init {
            tokens,
            metadata,
            timeout,
        } => {
            let specs = tokens.resolve()?;
            let cfg = Arc::new(Config {
                endpoint: metadata.endpoint(),
                request_timeout: metadata.request_timeout,
                policy: Policy::default(),
            });
            runtime()?.block_on(agent::init(cfg, specs, timeout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            tokens,
            min_remaining,
        } => {
            let specs = tokens.resolve()?;
            let now = now_ms();
            let exps = agent::check(&specs, min_remaining, now)?;
            for (s, exp) in specs.iter().zip(exps) {
                println!(
                    "ok {} expires in {}s",
                    s.path.display(),
                    exp - now.div_euclid(1000)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            role_arn,
            audience,
            session_name,
            metadata,
        } => {
            let role_arn = role_arn
                .or_else(|| std::env::var("AWS_ROLE_ARN").ok().filter(|s| !s.is_empty()))
                .ok_or_else(|| anyhow!("--role-arn (or AWS_ROLE_ARN) is required"))?;
            let session = session_name.unwrap_or_else(aws::default_session_name);
            runtime()?.block_on(verify(&metadata, &audience.audience, &role_arn, &session))
        }
        Command::TrustPolicy {
            audience,
            gsa_unique_id,
            metadata,
        } => {
            let id = match gsa_unique_id {
                Some(id) => id,
                None => {
                    let token = runtime()?
                        .block_on(aws::fetch(&metadata.endpoint(), &audience.audience, metadata.request_timeout))
                        .context(
                            "cannot read the Google service account's unique ID from the metadata server; pass \
                             --gsa-unique-id (gcloud iam service-accounts describe GSA_EMAIL --format='value(uniqueId)')",
                        )?;
                    aws::unique_id(&token.claims)
                        .ok_or_else(|| {
                            anyhow!("the token has neither azp nor sub; pass --gsa-unique-id")
                        })?
                        .to_string()
                }
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&aws::trust_policy(&audience.audience, &id))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CredentialProcess {
            role_arn,
            audience,
            session_name,
            cache_dir,
            no_cache,
            refresh_before,
            metadata,
        } => {
            let session =
                aws::sanitize_session_name(&session_name.unwrap_or_else(aws::default_session_name));
            let endpoint = metadata.endpoint();
            let cache = if no_cache {
                None
            } else {
                cache_dir.or_else(aws::default_cache_dir).map(|dir| {
                    aws::cache_file(
                        &dir,
                        &[&role_arn, &audience.audience, &session, &endpoint.display()],
                    )
                })
            };
            if let Some(path) = &cache
                && let Some(creds) = aws::read_cache(path, refresh_before, now_ms())
            {
                println!("{}", serde_json::to_string(&creds)?);
                return Ok(ExitCode::SUCCESS);
            }
            let assumed = runtime()?.block_on(async {
                let token =
                    aws::fetch(&endpoint, &audience.audience, metadata.request_timeout).await?;
                aws::assume_role(&role_arn, &session, &token.jwt).await
            });
            let assumed = match assumed {
                Ok(a) => a,
                Err(aws::AwsError::Sts { code, message }) => {
                    bail!(
                        "STS AssumeRoleWithWebIdentity failed: {message}; {}",
                        aws::explain_sts_error(code.as_deref())
                    )
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(path) = &cache
                && let Err(e) = aws::write_cache(path, &assumed.credentials)
            {
                // Caching is an optimisation: the credentials are still good.
                tracing::warn!(error = %e, "cannot cache credentials");
            }
            println!("{}", serde_json::to_string(&assumed.credentials)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(cfg: Arc<Config>, specs: Vec<TokenSpec>) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    info!(
        tokens = specs.len(),
        metadata = %cfg.endpoint.display(),
        version = env!("CARGO_PKG_VERSION"),
        "starting"
    );
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        set.spawn(agent::keep_fresh(
            cfg.clone(),
            spec,
            Jitter::seeded(i as u64),
        ));
    }
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: exiting"),
        _ = int.recv() => info!("SIGINT: exiting"),
        r = set.join_next() => bail!("token loop ended unexpectedly: {r:?}"),
    }
    // Token loops hold no state worth flushing: writes are synchronous and atomic, and the
    // tokens stay valid on disk for the containers still shutting down.
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    metadata: &MetadataArgs,
    audience: &str,
    role_arn: &str,
    session: &str,
) -> anyhow::Result<ExitCode> {
    let endpoint = metadata.endpoint();
    println!("metadata server: {}", endpoint.display());
    let token = aws::fetch(&endpoint, audience, metadata.request_timeout).await?;
    let c = &token.claims;
    let now = now_ms().div_euclid(1000);
    let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    println!("ID token claims (the token itself is not printed):");
    println!("  iss:   {}", show(&c.iss));
    println!("  sub:   {}", show(&c.sub));
    println!("  azp:   {}", show(&c.azp));
    println!("  aud:   {}", c.aud);
    println!("  email: {}", show(&c.email));
    println!("  exp:   {} (in {}s)", c.exp, c.exp - now);
    println!("AssumeRoleWithWebIdentity {role_arn} as session {session} ...");
    let unique_id = aws::unique_id(c).unwrap_or("<GSA unique ID>").to_string();
    match aws::assume_role(role_arn, session, &token.jwt).await {
        Ok(a) => {
            println!(
                "OK: assumed {}",
                a.assumed_role_arn.as_deref().unwrap_or("(no ARN returned)")
            );
            println!("  credentials expire at {}", a.credentials.expiration);
            Ok(ExitCode::SUCCESS)
        }
        Err(aws::AwsError::Sts { code, message }) => {
            println!("FAILED: {message}");
            println!("likely cause: {}", aws::explain_sts_error(code.as_deref()));
            println!("the role's trust policy should be:");
            println!(
                "{}",
                serde_json::to_string_pretty(&aws::trust_policy(audience, &unique_id))?
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn webhook_contract_parses() {
        let cli = Cli::try_parse_from([
            "rolebridge-agent",
            "run",
            "--token",
            "/var/run/secrets/rolebridge.io/sts.amazonaws.com.token=sts.amazonaws.com",
            "--token",
            "/var/run/secrets/rolebridge.io/b.token=https://x/y?z=1",
        ])
        .unwrap();
        match cli.command {
            Command::Run { tokens, .. } => {
                assert_eq!(tokens.tokens.len(), 2);
                assert_eq!(tokens.tokens[1].audience, "https://x/y?z=1");
            }
            other => panic!("{other:?}"),
        }
        for sub in ["init", "check"] {
            assert!(Cli::try_parse_from(["rolebridge-agent", sub, "--token", "/p=a"]).is_ok());
        }
        assert!(Cli::try_parse_from(["rolebridge-agent", "run", "--token", "relative=a"]).is_err());
        assert!(
            Cli::try_parse_from(["rolebridge-agent", "run", "--refresh-fraction", "1.5"]).is_err()
        );
    }
}
