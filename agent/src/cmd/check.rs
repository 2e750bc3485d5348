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

/// Pause between two passes of `check --wait`, `elapsed` into the wait. The native sidecar's
/// `postStart` hook runs this, and the kubelet starts the app containers the moment it returns:
/// a short pause while the first token is normally on its way (tens of milliseconds after the
/// agent starts) keeps the app's start within a few milliseconds of it; a longer one after
/// that keeps a stuck start from spinning.
fn pause_after(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(5) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(250)
    }
}

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
    let started = Instant::now();
    let deadline = started + wait.unwrap_or_default();
    loop {
        match check_once(&rt, &specs, credentials_port, min_remaining, health_timeout) {
            Ok(report) => {
                println!("{report}");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "check not passing yet; retrying");
                std::thread::sleep(pause_after(started.elapsed()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_fast_while_the_first_token_is_expected_then_slowly() {
        assert_eq!(pause_after(Duration::ZERO), Duration::from_millis(10));
        assert_eq!(
            pause_after(Duration::from_millis(4999)),
            Duration::from_millis(10)
        );
        assert_eq!(
            pause_after(Duration::from_secs(5)),
            Duration::from_millis(250)
        );
        assert_eq!(
            pause_after(Duration::from_secs(119)),
            Duration::from_millis(250)
        );
    }
}
