//! One module per subcommand (`run`'s is [`sidecar`], so that it is not a second `cmd::run`).
//! Each `run(args)` turns its parsed arguments ([`crate::cli`]) into
//! the library's types, starts a runtime when it needs one, does the work through the modules
//! that decide ([`crate::token_files`], [`crate::sidecar`], [`crate::doctor`], …) and prints
//! what the subcommand prints. `main` only parses, sets up logging and calls [`run`].

use std::process::ExitCode;

use rolebridge_contract::aws_env;

use crate::aws::PolicyError;
use crate::cli::Command;
use crate::doctor::DoctorError;
use crate::endpoint::HealthError;
use crate::process::ProcessError;
use crate::sidecar::SidecarError;
use crate::spec::SpecError;
use crate::token_files::{CheckError, InitError};

pub mod check;
pub mod credential_process;
pub mod flags;
pub mod init;
pub mod sidecar;
pub mod trust_policy;
pub mod verify;

/// Why a subcommand failed. Each variant keeps its cause as the error's source, so `main`
/// prints the whole chain (`{:#}`) as one line.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Tokens(#[from] SpecError),
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error("--role-arn (or {}) is required", aws_env::ROLE_ARN)]
    MissingRoleArn,
    #[error(transparent)]
    Doctor(#[from] DoctorError),
    #[error(
        "cannot read the Google service account's unique ID from the metadata server; pass \
         --gsa-unique-id (gcloud iam service-accounts describe GSA_EMAIL --format='value(uniqueId)')"
    )]
    UniqueId(#[source] DoctorError),
    #[error(
        "pass --google-service-account GSA_EMAIL (the account the role must trust) or \
         --gsa-unique-id: the metadata server's token is read only after checking it is that \
         account's (on the host network, or a node pool without GKE_METADATA, it is the node's)"
    )]
    PinRequired,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Run one subcommand to its end.
pub fn run(command: Command) -> Result<ExitCode, CmdError> {
    match command {
        Command::Run(args) => sidecar::run(args),
        Command::Init(args) => init::run(args),
        Command::Check(args) => check::run(args),
        Command::Verify(args) => verify::run(args),
        Command::TrustPolicy(args) => trust_policy::run(args),
        Command::CredentialProcess(args) => credential_process::run(args),
        Command::Flags(args) => flags::run(args),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CmdError> {
    // One thread: the work is a few HTTP requests per hour plus loopback answers from memory;
    // worker threads would only add RSS.
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(CmdError::Runtime)
}
