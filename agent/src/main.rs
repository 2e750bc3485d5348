//! Command-line shell of rolebridge-agent: parses ([`rolebridge_agent::cli`]), sets up logging
//! and the runtime, and hands each subcommand to its module. See the library crate for the
//! design.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use tracing::{error, info};
use tracing_subscriber::filter::LevelFilter;

use rolebridge_contract::{CREDENTIALS_HOST, aws_env, session_name};

use rolebridge_agent::cli::{Cli, Command, LogFormat};
use rolebridge_agent::clock::now_ms;
use rolebridge_agent::identity::{self, PodIdentity};
use rolebridge_agent::schedule::Policy;
use rolebridge_agent::sidecar::{self, Sidecar};
use rolebridge_agent::sts::Chain;
use rolebridge_agent::token_files;
use rolebridge_agent::{aws, doctor, endpoint, process};

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
    // One thread: the work is a few HTTP requests per hour plus loopback answers from memory;
    // worker threads would only add RSS.
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

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One pass of `check`: every token file, then the endpoint's health. Returns the report.
fn check_once(
    rt: &tokio::runtime::Runtime,
    specs: &[rolebridge_agent::spec::TokenSpec],
    credentials_port: Option<u16>,
    min_remaining: Duration,
    health_timeout: Duration,
) -> anyhow::Result<String> {
    let now = now_ms();
    let exps = token_files::check(specs, min_remaining, now)?;
    let mut report: Vec<String> = specs
        .iter()
        .zip(exps)
        .map(|(s, exp)| {
            format!(
                "ok {} expires in {}s",
                s.path.display(),
                exp - now.div_euclid(1000)
            )
        })
        .collect();
    if let Some(port) = credentials_port {
        rt.block_on(endpoint::probe_health(port, health_timeout))?;
        report.push(format!(
            "ok credentials endpoint {CREDENTIALS_HOST}:{port} holds every binding's credentials"
        ));
    }
    Ok(report.join("\n"))
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            tokens,
            credentials,
            auth_token_file,
            pod,
            listener,
            metadata,
            refresh_fraction,
            max_retry_interval,
            credentials_margin,
        } => {
            let policy = Policy {
                refresh_fraction,
                backoff_cap: max_retry_interval.max(Duration::from_secs(1)),
                safety_margin: credentials_margin,
                ..Policy::default()
            };
            let sidecar = Sidecar {
                tokens: tokens.resolve(!credentials.credentials.is_empty())?,
                credentials: credentials.credentials,
                port: credentials.credentials_port,
                auth_token_file,
                pod: pod.identity(),
                cluster_name: pod.cluster_name,
                limits: listener.limits(),
                config: metadata.config(policy),
            };
            runtime()?.block_on(sidecar::run(sidecar))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            tokens,
            credentials,
            metadata,
            timeout,
        } => {
            let specs = tokens.resolve(!credentials.credentials.is_empty())?;
            if !credentials.credentials.is_empty() {
                info!(
                    bindings = credentials.credentials.len(),
                    "credentials are served by the sidecar (run), not by init"
                );
            }
            if specs.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            let cfg = metadata.config(Policy::default());
            runtime()?.block_on(token_files::init(cfg, specs, timeout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            tokens,
            credentials_port,
            min_remaining,
            health_timeout,
            wait,
        } => {
            let specs = tokens.resolve(credentials_port.is_some())?;
            let rt = runtime()?;
            let deadline = std::time::Instant::now() + wait.unwrap_or_default();
            loop {
                match check_once(&rt, &specs, credentials_port, min_remaining, health_timeout) {
                    Ok(report) => {
                        println!("{report}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::debug!(error = %e, "check not passing yet; retrying");
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Command::Verify {
            role_arn,
            chain,
            audience,
            session_name,
            no_session_tags,
            pod,
            metadata,
        } => {
            let role_arn = role_arn
                .or_else(|| {
                    std::env::var(aws_env::ROLE_ARN)
                        .ok()
                        .filter(|s| !s.is_empty())
                })
                .ok_or_else(|| anyhow!("--role-arn (or {}) is required", aws_env::ROLE_ARN))?;
            let identity = pod.identity();
            let rt = runtime()?;
            let hops = chain.hops();
            let tags = if no_session_tags || hops.is_empty() {
                Vec::new()
            } else {
                let cluster = identity::ClusterName::new(pod.cluster_name.clone());
                let name = rt.block_on(cluster.get(&metadata.endpoint(), metadata.request_timeout));
                identity.tags(name.as_deref())
            };
            let chain = Chain {
                role_arn,
                hops,
                duration_seconds: chain.duration_seconds,
                session_name: session_name
                    .map(|s| session_name::sanitize(&s))
                    .unwrap_or_else(|| identity.session_name()),
                tags,
                region: None,
            };
            let ok = rt.block_on(doctor::verify(
                &mut std::io::stdout().lock(),
                &metadata.endpoint(),
                metadata.request_timeout,
                &audience.audience,
                &chain,
            ))?;
            Ok(exit(ok))
        }
        Command::TrustPolicy {
            audience,
            gsa_unique_id,
            previous_role_arn,
            external_id,
            metadata,
        } => {
            let policy = match previous_role_arn {
                Some(prev) => aws::chained_trust_policy(&prev, external_id.as_deref()),
                None => {
                    let id = match gsa_unique_id {
                        Some(id) => id,
                        None => runtime()?
                            .block_on(doctor::unique_id_from_token(
                                &metadata.endpoint(),
                                &audience.audience,
                                metadata.request_timeout,
                            ))
                            .context(
                                "cannot read the Google service account's unique ID from the metadata server; pass \
                                 --gsa-unique-id (gcloud iam service-accounts describe GSA_EMAIL --format='value(uniqueId)')",
                            )?,
                    };
                    aws::trust_policy(&audience.audience, &id)
                }
            };
            println!("{}", serde_json::to_string_pretty(&policy)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::CredentialProcess {
            role_arn,
            chain,
            audience,
            session_name,
            cache_dir,
            no_cache,
            refresh_before,
            metadata,
        } => {
            let session = session_name::sanitize(
                &session_name.unwrap_or_else(|| PodIdentity::default().session_name()),
            );
            let request = process::Request {
                chain: Chain {
                    role_arn,
                    hops: chain.hops(),
                    duration_seconds: chain.duration_seconds,
                    session_name: session,
                    tags: Vec::new(),
                    region: None,
                },
                audience: audience.audience,
                endpoint: metadata.endpoint(),
                request_timeout: metadata.request_timeout,
                cache_dir: if no_cache {
                    None
                } else {
                    cache_dir.or_else(aws::default_cache_dir)
                },
                refresh_before,
            };
            let creds = runtime()?.block_on(request.obtain())?;
            println!("{}", serde_json::to_string(&creds)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
