//! `trust-policy`: the IAM trust policy of the web identity role (for this Google service
//! account) or of a chained role ([`crate::aws`]), as JSON on stdout.

use std::process::ExitCode;

use crate::aws;
use crate::cli::TrustPolicyArgs;
use crate::doctor;

use super::{CmdError, runtime};

pub fn run(args: TrustPolicyArgs) -> Result<ExitCode, CmdError> {
    let TrustPolicyArgs {
        audience,
        gsa_unique_id,
        previous_role_arn,
        external_id,
        metadata,
    } = args;
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
                    .map_err(CmdError::UniqueId)?,
            };
            aws::trust_policy(&audience.audience, &id)
        }
    };
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(ExitCode::SUCCESS)
}
