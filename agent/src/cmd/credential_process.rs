//! `credential-process`: the AWS `credential_process` helper ([`crate::process`]); prints the
//! Version 1 JSON on stdout. The web identity token comes from `--token-file` when given, else
//! from the metadata server (held to `--google-service-account` when given).

use std::process::ExitCode;

use rolebridge_contract::session_name;

use crate::aws;
use crate::cli::{CredentialProcessArgs, PodArgs};
use crate::identity::PodIdentity;
use crate::process;
use crate::sts::Chain;

use super::{CmdError, runtime};

pub fn run(args: CredentialProcessArgs) -> Result<ExitCode, CmdError> {
    let CredentialProcessArgs {
        role_arn,
        chain,
        session_name,
        cache_dir,
        no_cache,
        refresh_before,
        metadata,
        pin,
        token_file,
    } = args;
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
        audience: chain.audience.audience,
        source: token_file.source(&metadata, pin.pin(&PodArgs::default())),
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
