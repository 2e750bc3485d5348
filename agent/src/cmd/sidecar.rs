//! `run`: the sidecar ([`crate::sidecar`]) with the policy and limits from the command line.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::RunArgs;
use crate::schedule::Policy;
use crate::sidecar::{self, Sidecar};

use super::{CmdError, runtime};

pub fn run(args: RunArgs) -> Result<ExitCode, CmdError> {
    let RunArgs {
        tokens,
        credentials,
        auth_token_file,
        pod,
        listener,
        metadata,
        pin,
        refresh_fraction,
        max_retry_interval,
        refusal_retry_interval,
        credentials_margin,
    } = args;
    let policy = Policy {
        refresh_fraction,
        backoff_cap: max_retry_interval.max(Duration::from_secs(1)),
        refusal_retry: refusal_retry_interval.max(Duration::from_secs(1)),
        safety_margin: credentials_margin,
        ..Policy::default()
    };
    let config = metadata.config(policy, pin.pin(&pod));
    let sidecar = Sidecar {
        tokens: tokens.resolve(!credentials.credentials.is_empty())?,
        credentials: credentials.credentials,
        port: credentials.credentials_port,
        auth_token_file,
        pod: pod.identity(),
        cluster_name: pod.cluster_name,
        limits: listener.limits(),
        config,
    };
    runtime()?.block_on(sidecar::run(sidecar))?;
    Ok(ExitCode::SUCCESS)
}
