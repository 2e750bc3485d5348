//! `check`: the probe. Every token file ([`crate::token_files::check`]), then the credentials
//! endpoint's health ([`crate::endpoint::probe_health`]); with `--wait`, retried until it
//! passes or the wait is over.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rolebridge_contract::CREDENTIALS_HOST;

use crate::cli::CheckArgs;
use crate::clock::now_ms;
use crate::endpoint;
use crate::spec::TokenSpec;
use crate::token_files;

use super::{CmdError, runtime};

/// Pause between two passes of `check --wait`.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

pub fn run(args: CheckArgs) -> Result<ExitCode, CmdError> {
    let CheckArgs {
        tokens,
        credentials_port,
        min_remaining,
        health_timeout,
        wait,
    } = args;
    let specs = tokens.resolve(credentials_port.is_some())?;
    let rt = runtime()?;
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        match check_once(&rt, &specs, credentials_port, min_remaining, health_timeout) {
            Ok(report) => {
                println!("{report}");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "check not passing yet; retrying");
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One pass: every token file, then the endpoint's health. Returns the report.
fn check_once(
    rt: &tokio::runtime::Runtime,
    specs: &[TokenSpec],
    credentials_port: Option<u16>,
    min_remaining: Duration,
    health_timeout: Duration,
) -> Result<String, CmdError> {
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
