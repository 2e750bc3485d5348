//! `trust-policy`: the IAM trust policy of the web identity role, as JSON on stdout: for a
//! Google service account ([`crate::aws::trust_policy`]), for a Kubernetes service account of
//! the cluster (`--token-source kubernetes`, [`crate::aws::kubernetes_trust_policy`], with the
//! one-time OIDC provider command on stderr, so that `> policy.json` keeps only the policy), or
//! of a chained role (`--previous-role-arn`).
//!
//! Never for an account other than the expected one: without `--gsa-unique-id`, the unique ID
//! is read from a metadata server token only when `--google-service-account` names the account
//! and the token is that account's ([`crate::pin`]); on the host network, or a node pool
//! without GKE_METADATA, the token would be the node's.

use std::process::ExitCode;

use crate::aws::{self, KubernetesTrust};
use crate::cli::{PodArgs, TokenSourceKind, TrustPolicyArgs};
use crate::doctor;

use super::{CmdError, runtime};

pub fn run(args: TrustPolicyArgs) -> Result<ExitCode, CmdError> {
    let policy = match (&args.previous_role_arn, args.token_source) {
        (Some(prev), _) => aws::chained_trust_policy(prev, args.external_id.as_deref()),
        (None, TokenSourceKind::Kubernetes) => {
            let (policy, command) = kubernetes(&args)?;
            eprintln!(
                "# Once per AWS account, if the cluster's issuer is not an IAM OIDC provider \
                 there yet:\n{command}"
            );
            policy
        }
        (None, TokenSourceKind::Google) => google(&args)?,
    };
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(ExitCode::SUCCESS)
}

/// `--token-source kubernetes`: the policy and the provider command (clap requires the flags).
fn kubernetes(args: &TrustPolicyArgs) -> Result<(serde_json::Value, String), CmdError> {
    let given = |v: &Option<String>| v.clone().unwrap_or_default();
    let (issuer, namespace) = (given(&args.issuer), given(&args.namespace));
    let (service_account, account) = (given(&args.service_account), given(&args.account));
    Ok(aws::kubernetes_trust_policy(&KubernetesTrust {
        issuer: &issuer,
        namespace: &namespace,
        service_account: &service_account,
        audience: &args.audience.audience,
        account: &account,
    })?)
}

/// The Google service account's policy: the unique ID given, or read from a token of the
/// pinned account.
fn google(args: &TrustPolicyArgs) -> Result<serde_json::Value, CmdError> {
    let audience = &args.audience.audience;
    let id = match (&args.gsa_unique_id, &args.pin.google_service_account) {
        (Some(id), _) => id.clone(),
        (None, None) => return Err(CmdError::PinRequired),
        (None, Some(_)) => {
            let pin = args.pin.pin(&PodArgs::default());
            let source = args.metadata.source(pin);
            runtime()?
                .block_on(doctor::unique_id_from_token(&source, audience))
                .map_err(|e| match &e {
                    // A refusal says what to fix; a hint at --gsa-unique-id would invite
                    // pasting the other account's ID.
                    doctor::DoctorError::Token(t) if t.is_refusal() => CmdError::Doctor(e),
                    _ => CmdError::UniqueId(e),
                })?
        }
    };
    Ok(aws::trust_policy(audience, &id))
}
