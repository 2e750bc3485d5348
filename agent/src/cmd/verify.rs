//! `verify`: the doctor ([`crate::doctor::verify`]) on the chain given as flags, with the pod's
//! session name and tags as `run` would send them, and the web identity token from
//! `--token-file` or the metadata server (held to `--google-service-account`).

use std::process::ExitCode;

use rolebridge_contract::{aws_env, session_name};

use crate::cli::VerifyArgs;
use crate::doctor;
use crate::identity::ClusterName;
use crate::sts::Chain;

use super::{CmdError, exit, runtime};

pub fn run(args: VerifyArgs) -> Result<ExitCode, CmdError> {
    let VerifyArgs {
        role_arn,
        chain: flags,
        session_name,
        no_session_tags,
        pod,
        metadata,
        pin,
        token_file,
    } = args;
    let role_arn = role_arn
        .or_else(|| {
            std::env::var(aws_env::ROLE_ARN)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .ok_or(CmdError::MissingRoleArn)?;
    let identity = pod.identity();
    let rt = runtime()?;
    let hops = flags.hops();
    let tags = if no_session_tags || hops.is_empty() {
        Vec::new()
    } else {
        let cluster = ClusterName::new(pod.cluster_name.clone());
        let name = rt.block_on(cluster.get(&metadata.endpoint(), metadata.request_timeout));
        identity.tags(name.as_deref())
    };
    let chain = Chain {
        role_arn,
        hops,
        duration_seconds: flags.duration_seconds,
        session_name: session_name
            .map(|s| session_name::sanitize(&s))
            .unwrap_or_else(|| identity.session_name()),
        tags,
        region: None,
    };
    let source = token_file.source(&metadata, pin.pin(&pod));
    let ok = rt.block_on(doctor::verify(
        &mut std::io::stdout().lock(),
        &source,
        &flags.audience.audience,
        &chain,
    ))?;
    Ok(exit(ok))
}
