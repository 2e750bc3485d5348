//! The `AWSRoleBinding` custom resource.
//!
//! The schema is the API server's first line of defence: a malformed role ARN is rejected at
//! `kubectl apply` time, not discovered when a pod fails to start. The same rules are checked
//! again in Rust ([`validate_spec`]) because a binding can reach the cache from a cluster whose
//! CRD was installed without validation, and a binding the webhook does not trust must never be
//! injected.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::domain::binding::TokenSource;

/// Pattern for `spec.roleArn`, enforced by the API server (RE2 syntax) and mirrored by
/// [`validate_role_arn`]. Partition, 12-digit account, optional IAM path, role name.
pub const ROLE_ARN_PATTERN: &str =
    r"^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/([!-.0-~]+/)*[A-Za-z0-9+=,.@_-]{1,64}$";

/// Pattern for `spec.region`: `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$";

/// Pattern for `spec.chain[].externalId`: the characters STS allows (`[\w+=,.@:/-]`, ASCII), with
/// the length in [`EXTERNAL_ID_LENGTH`] (RE2 caps repetition counts at 1000, so the length is
/// `minLength`/`maxLength`, not a `{2,1224}`). Mirrored by [`valid_external_id`].
pub const EXTERNAL_ID_PATTERN: &str = r"^[A-Za-z0-9_+=,.@:/-]+$";
/// STS's limits for an external ID.
pub const EXTERNAL_ID_LENGTH: std::ops::RangeInclusive<usize> = 2..=1224;

/// STS's limits for `DurationSeconds`: 15 minutes to the 12 hours a role's maximum session
/// duration can be raised to.
pub const DURATION_SECONDS: std::ops::RangeInclusive<i64> = 900..=43200;
/// STS caps a role session obtained by role chaining at one hour.
pub(crate) const CHAINED_DURATION_MAX: i64 = 3600;
/// At most this many `sts:AssumeRole` hops after the identity role.
pub const MAX_CHAIN: usize = rolebridge_contract::MAX_CHAIN;

/// The cross-field rule, checked by the API server as a CEL `x-kubernetes-validations` rule on
/// `spec` and mirrored by [`validate_spec`].
pub const CHAINED_DURATION_RULE: &str = "!has(self.chain) || size(self.chain) == 0 || !has(self.durationSeconds) || self.durationSeconds <= 3600";
/// What the API server says when [`CHAINED_DURATION_RULE`] fails.
pub const CHAINED_DURATION_MESSAGE: &str = "durationSeconds must be at most 3600 when chain is set: STS caps a chained role session at one hour";

// Role ARNs share one schema built from ROLE_ARN_PATTERN. The schemas of the new optional fields
// are written out rather than derived from `Option<T>`:
// that would add `nullable: true`, and the API server would then keep an explicit `null` and hand
// it to the CEL rule (an evaluation error), where without it a `null` is pruned like an absent
// field, which is exactly how the Rust side reads it.

fn role_arn_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "maxLength": 2048, "pattern": ROLE_ARN_PATTERN})
}

fn duration_seconds_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "format": "int64",
        "minimum": *DURATION_SECONDS.start(),
        "maximum": *DURATION_SECONDS.end(),
    })
}

/// `spec.tokenSource`: an enum the API server validates, defaulted to `Google` so that every
/// stored binding says which token its pods present (`kubectl get arb -o wide` shows it).
fn token_source_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": [TokenSource::Google.as_str(), TokenSource::Kubernetes.as_str()],
        "default": TokenSource::Google.as_str(),
    })
}

fn session_tags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "boolean"})
}

fn external_id_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": *EXTERNAL_ID_LENGTH.start(),
        "maxLength": *EXTERNAL_ID_LENGTH.end(),
        "pattern": EXTERNAL_ID_PATTERN,
    })
}

/// A `null` chain reads as no chain (the API server prunes it; a file may hold it).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ChainHop>, D::Error> {
    Ok(Option::<Vec<ChainHop>>::deserialize(d)?.unwrap_or_default())
}

/// Binds a Kubernetes service account to an AWS IAM role.
///
/// Pods in this namespace that run as `serviceAccountName` get a web identity token file (a
/// Google ID token an injected agent keeps fresh, or with `tokenSource: Kubernetes` their own
/// projected service account token), plus `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`, so
/// AWS SDKs assume `roleArn` through STS AssumeRoleWithWebIdentity without any static key. With a `chain` or a
/// `durationSeconds` the agent obtains the credentials itself (web identity into `roleArn`,
/// then `sts:AssumeRole` through each hop) and serves them on the pod's loopback through the
/// AWS container credentials protocol (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "rolebridge.io",
    version = "v1alpha1",
    kind = "AWSRoleBinding",
    plural = "awsrolebindings",
    singular = "awsrolebinding",
    shortname = "arb",
    namespaced,
    doc = "AWSRoleBinding lets the pods of one Kubernetes service account assume an AWS IAM role with a Google ID token from GKE Workload Identity or their Kubernetes service account token, without static AWS keys.",
    status = "AWSRoleBindingStatus",
    printcolumn = r#"{"name":"ServiceAccount","type":"string","jsonPath":".spec.serviceAccountName"}"#,
    printcolumn = r#"{"name":"Role","type":"string","description":"The role pods act as (the chain's last role, else roleArn)","jsonPath":".status.roleArn"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"IdentityRole","type":"string","priority":1,"description":"The role assumed with the pod's web identity token","jsonPath":".spec.roleArn"}"#,
    printcolumn = r#"{"name":"Source","type":"string","priority":1,"description":"The web identity token pods present: Google or Kubernetes","jsonPath":".spec.tokenSource"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": CHAINED_DURATION_RULE,
    "message": CHAINED_DURATION_MESSAGE,
}]))]
pub struct AWSRoleBindingSpec {
    /// Name of the Kubernetes service account (in this binding's namespace) whose pods may
    /// assume the role. With `tokenSource: Google` the service account must carry the GKE
    /// Workload Identity annotation `iam.gke.io/gcp-service-account`; the Google service account
    /// it names is the identity AWS trusts. With `tokenSource: Kubernetes` AWS trusts
    /// `system:serviceaccount:<namespace>:<serviceAccountName>` itself.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: String,

    /// ARN of the AWS IAM role to assume, e.g. `arn:aws:iam::123456789012:role/s3-reader`.
    /// Partitions aws, aws-cn and aws-us-gov. The role's trust policy must trust
    /// `accounts.google.com` for this Google service account (`rolebridge-agent trust-policy`
    /// prints one), or with `tokenSource: Kubernetes` the cluster's service account issuer.
    #[schemars(schema_with = "role_arn_schema")]
    pub role_arn: String,

    /// Audience (`aud`) of the web identity token (the Google ID token the agent requests, or the
    /// projected Kubernetes token); it must match the audience condition of the role's trust
    /// policy (`accounts.google.com:oaud`, or `<issuer>:aud`). Defaults to the webhook's
    /// `--default-audience` (itself `sts.amazonaws.com` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,

    /// AWS region for the SDKs: sets `AWS_REGION`, `AWS_DEFAULT_REGION` and
    /// `AWS_STS_REGIONAL_ENDPOINTS=regional` in the covered containers, so STS is called in
    /// that region instead of the global endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"))]
    pub region: Option<String>,

    /// Names of the containers (app or init) that get this role. Omit to cover every container
    /// of the pod. A binding that names a container wins over one that covers all containers;
    /// this is how one pod uses several roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub containers: Option<Vec<ContainerName>>,

    /// Roles to assume after `roleArn`, in order, each with `sts:AssumeRole` using the previous
    /// role's credentials: how pods reach a role in another AWS account whose trust policy names
    /// `roleArn`. Pods act as the last one. Each role's trust policy must allow
    /// `sts:AssumeRole` (and `sts:TagSession` while `sessionTags` is on) for the role before it.
    /// At most 5 hops.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    #[schemars(length(max = 5), extend("x-kubernetes-list-type" = "atomic"))]
    pub chain: Vec<ChainHop>,

    /// Lifetime of the credentials pods get, in seconds: 900 (STS's minimum) to 43200, and at
    /// most 3600 with a `chain` (STS caps chained sessions at one hour). The role's maximum
    /// session duration must allow it. Omit for STS's default of one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_seconds_schema")]
    pub duration_seconds: Option<i64>,

    /// Pass the pod's identity (`kubernetes-namespace`, `kubernetes-service-account`,
    /// `kubernetes-pod-name`, `kubernetes-pod-uid`, and `gke-cluster-name` when known) as session
    /// tags on every `sts:AssumeRole` hop of the `chain`, for tag-based policies. Defaults to true
    /// when a `chain` is set; the web identity hop cannot take tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "session_tags_schema")]
    pub session_tags: Option<bool>,

    /// Which web identity token pods present to STS `AssumeRoleWithWebIdentity`:
    ///
    /// - `Google` (the default): a Google ID token of the Google service account that the
    ///   service account's `iam.gke.io/gcp-service-account` annotation names, from the GKE
    ///   metadata server (GKE Workload Identity). The injected agent keeps it fresh and refuses a
    ///   token of any other account. The role's trust policy trusts `accounts.google.com`.
    ///   Pods on the host network are denied (they would reach the node's identity).
    /// - `Kubernetes`: the pod's own Kubernetes service account token for `audience`
    ///   (`sub` = `system:serviceaccount:<namespace>:<serviceAccountName>`), projected and
    ///   rotated by the kubelet. No Google service account is involved; the role's trust policy
    ///   trusts the cluster's service account issuer as an IAM OIDC provider. Without `chain`
    ///   and `durationSeconds` no agent is injected at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "token_source_schema")]
    pub token_source: Option<TokenSource>,
}

/// One `sts:AssumeRole` hop of a role chain.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainHop {
    /// ARN of the role to assume, as for `spec.roleArn`.
    #[schemars(schema_with = "role_arn_schema")]
    pub role_arn: String,

    /// External ID the role's trust policy requires (`sts:ExternalId`), as a third party's
    /// role usually does: 2 to 1224 characters of letters, digits and `_+=,.@:/-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "external_id_schema")]
    pub external_id: Option<String>,
}

/// A container name (DNS label).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct ContainerName(
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub String,
);

/// Observed state, written by the webhook's status controller.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AWSRoleBindingStatus {
    /// `Ready` is True when the binding is valid, unambiguous and its service account exists
    /// (and, for `tokenSource: Google`, is set up for GKE Workload Identity); its message says
    /// which identity AWS sees. Reasons when False: `Conflict`, `InvalidSpec`,
    /// `ServiceAccountNotFound`, `WorkloadIdentityNotConfigured`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` the conditions were computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The role pods of this binding act as: the last role of `spec.chain`, else
    /// `spec.roleArn` (unset while the spec is invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(regex(pattern = "^(True|False|Unknown)$"))]
    pub status: String,
    /// Machine-readable reason in CamelCase.
    pub reason: String,
    /// What is wrong and what to do about it.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Why a binding's spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "roleArn {0:?} is not an IAM role ARN (want arn:aws|aws-cn|aws-us-gov:iam::<12-digit account>:role/[path/]name)"
    )]
    RoleArn(String),
    #[error("region {0:?} is not an AWS region name such as us-east-1")]
    Region(String),
    #[error(
        "serviceAccountName {0:?} is not a Kubernetes object name (1 to 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
    )]
    ServiceAccount(String),
    #[error("audience must be 1 to 512 characters")]
    Audience,
    #[error("containers must list at least one container name")]
    Containers,
    #[error(
        "containers: {0:?} is not a container name (1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
    )]
    ContainerName(String),
    #[error("containers lists {0:?} twice")]
    DuplicateContainer(String),
    #[error("chain has {0} hops; at most {MAX_CHAIN} are allowed")]
    ChainTooLong(usize),
    #[error("chain[{hop}].{source}")]
    ChainRoleArn {
        hop: usize,
        #[source]
        source: Box<SpecError>,
    },
    #[error(
        "chain[{hop}].externalId must be 2 to 1224 characters of letters, digits and _+=,.@:/- (as STS requires)"
    )]
    ExternalId { hop: usize },
    #[error("durationSeconds {0} is outside 900..=43200 (STS's limits)")]
    Duration(i64),
    #[error("durationSeconds {0}: {CHAINED_DURATION_MESSAGE}")]
    ChainedDuration(i64),
}

/// Checks a spec with the same rules as the CRD schema.
pub fn validate_spec(spec: &AWSRoleBindingSpec) -> Result<(), SpecError> {
    if !dns_name(&spec.service_account_name, 253, true) {
        return Err(SpecError::ServiceAccount(spec.service_account_name.clone()));
    }
    validate_role_arn(&spec.role_arn)?;
    if let Some(region) = &spec.region {
        validate_region(region)?;
    }
    if spec
        .audience
        .as_deref()
        .is_some_and(|a| !(1..=512).contains(&a.chars().count()))
    {
        return Err(SpecError::Audience);
    }
    if let Some(cs) = &spec.containers {
        if cs.is_empty() {
            return Err(SpecError::Containers);
        }
        // `x-kubernetes-list-type: set`: the API server rejects duplicates.
        for (i, c) in cs.iter().enumerate() {
            if !dns_name(&c.0, 63, false) {
                return Err(SpecError::ContainerName(c.0.clone()));
            }
            if cs[..i].contains(c) {
                return Err(SpecError::DuplicateContainer(c.0.clone()));
            }
        }
    }
    validate_chain(&spec.chain)?;
    if let Some(d) = spec.duration_seconds {
        if !DURATION_SECONDS.contains(&d) {
            return Err(SpecError::Duration(d));
        }
        // The twin of CHAINED_DURATION_RULE.
        if !spec.chain.is_empty() && d > CHAINED_DURATION_MAX {
            return Err(SpecError::ChainedDuration(d));
        }
    }
    Ok(())
}

/// Hand-written twin of the name patterns: `^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$` (with dots) or
/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most `max` long.
fn dns_name(s: &str, max: usize, dots: bool) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= max
                && alnum(first)
                && alnum(last)
                && bytes
                    .iter()
                    .all(|&b| alnum(b) || b == b'-' || (dots && b == b'.'))
        }
        _ => false,
    }
}

fn validate_chain(chain: &[ChainHop]) -> Result<(), SpecError> {
    if chain.len() > MAX_CHAIN {
        return Err(SpecError::ChainTooLong(chain.len()));
    }
    for (hop, h) in chain.iter().enumerate() {
        validate_role_arn(&h.role_arn).map_err(|e| SpecError::ChainRoleArn {
            hop,
            source: Box::new(e),
        })?;
        if let Some(id) = &h.external_id
            && !valid_external_id(id)
        {
            return Err(SpecError::ExternalId { hop });
        }
    }
    Ok(())
}

/// Hand-written twin of [`EXTERNAL_ID_PATTERN`] with [`EXTERNAL_ID_LENGTH`] (in characters, as
/// the API server counts `maxLength`).
pub fn valid_external_id(id: &str) -> bool {
    EXTERNAL_ID_LENGTH.contains(&id.chars().count())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b))
}

/// Hand-written twin of [`ROLE_ARN_PATTERN`] (a regex engine is not worth its weight here;
/// `tests/crd_drift.rs` checks that both accept exactly the same strings).
pub fn validate_role_arn(arn: &str) -> Result<(), SpecError> {
    let err = || SpecError::RoleArn(arn.to_owned());
    if arn.len() > 2048 {
        return Err(err());
    }
    let rest = ["arn:aws:", "arn:aws-cn:", "arn:aws-us-gov:"]
        .iter()
        .find_map(|p| arn.strip_prefix(p))
        .ok_or_else(err)?;
    let rest = rest.strip_prefix("iam::").ok_or_else(err)?;
    let (account, rest) = rest.split_at_checked(12).ok_or_else(err)?;
    if !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let resource = rest.strip_prefix(":role/").ok_or_else(err)?;
    let (path, name) = match resource.rfind('/') {
        Some(i) => (&resource[..=i], &resource[i + 1..]),
        None => ("", resource),
    };
    let path_ok = path
        .split_terminator('/')
        .all(|seg| !seg.is_empty() && seg.bytes().all(|b| (b'!'..=b'~').contains(&b)));
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if path_ok && name_ok {
        Ok(())
    } else {
        Err(err())
    }
}

/// Hand-written twin of [`REGION_PATTERN`].
pub fn validate_region(region: &str) -> Result<(), SpecError> {
    let err = || SpecError::Region(region.to_owned());
    let parts: Vec<&str> = region.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return Err(err());
    };
    let lower = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    let ok = first.len() == 2
        && lower(first)
        && !middle.is_empty()
        && middle.iter().all(|m| lower(m))
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit());
    if ok { Ok(()) } else { Err(err()) }
}

/// The CRD as YAML, exactly as committed in `crds/awsrolebinding.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = AWSRoleBinding::crd();
    let body = serde_norway::to_string(&crd).expect("a CRD always serialises");
    format!(
        "# Generated by `rolebridge-webhook crd`; do not edit. A test fails when this file drifts.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns() {
        for ok in [
            "arn:aws:iam::123456789012:role/s3-reader",
            "arn:aws-cn:iam::123456789012:role/a",
            "arn:aws-us-gov:iam::123456789012:role/team/app/role+=,.@_-x",
            "arn:aws:iam::000000000000:role/service-role/x",
        ] {
            assert_eq!(validate_role_arn(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "arn:aws:iam::12345678901:role/x",
            "arn:aws:iam::1234567890123:role/x",
            "arn:aws:iam::12345678901a:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a//b",
            "arn:aws:iam::123456789012:role/a b",
            "arn:aws-iso:iam::123456789012:role/x",
            "arn:aws:sts::123456789012:role/x",
            "arn:aws:iam:us-east-1:123456789012:role/x",
            "arn:aws:iam::123456789012:role/path/",
            &format!("arn:aws:iam::123456789012:role/{}", "a".repeat(65)),
        ] {
            assert!(validate_role_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions() {
        for ok in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-10",
        ] {
            assert_eq!(validate_region(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "us",
            "us-east",
            "US-east-1",
            "us-east-123",
            "useast-1",
            "us--1",
            "u-east-1",
        ] {
            assert!(validate_region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn none_fields_are_omitted() {
        let spec = AWSRoleBindingSpec {
            service_account_name: "sa".into(),
            role_arn: "arn:aws:iam::123456789012:role/x".into(),
            audience: None,
            region: None,
            containers: None,
            chain: Vec::new(),
            duration_seconds: None,
            session_tags: None,
            token_source: None,
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"serviceAccountName": "sa", "roleArn": "arn:aws:iam::123456789012:role/x"})
        );
    }
}
