//! Phase 1: whether the pod is a candidate at all, and what its annotations ask for.

use std::fmt::Write as _;

use super::{
    ANNOTATION_INJECT, ANNOTATION_ROLE, ANNOTATION_SKIP_CONTAINERS, Binding, Config, Denial,
    DenyReason, Skip, Warnings, containers, is_agent,
};
use crate::domain::pod::PodView;

/// What the pod's annotations ask of the plan.
pub(super) struct Gate<'p> {
    /// `rolebridge.io/role`, trimmed; always names one of the bindings.
    pub chosen_role: Option<&'p str>,
    /// `rolebridge.io/skip-containers`.
    pub skip_list: Vec<&'p str>,
}

/// `name (roleArn), …` for messages.
pub(super) fn binding_list(bindings: &[Binding]) -> String {
    let mut s = String::new();
    for (i, b) in bindings.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(s, "{sep}{} ({})", b.name, b.role_arn);
    }
    s
}

/// `Err(Skip)` passes the pod unchanged, an outer `Err` denies it.
pub(super) fn gate<'p>(
    pod: &'p PodView<'_>,
    namespace: &str,
    bindings: &[Binding],
    cfg: &Config,
    warnings: &mut Warnings,
) -> Result<Result<Gate<'p>, Skip>, Denial> {
    if cfg.own_namespace.as_deref() == Some(namespace) {
        return Ok(Err(Skip::OwnNamespace));
    }
    if bindings.is_empty() {
        return Ok(Err(Skip::NoBinding));
    }
    if let Some(skip) = left_out(pod, bindings, warnings) {
        return Ok(Err(skip));
    }
    asked(pod, namespace, bindings, warnings).map(Ok)
}

/// A bound pod that opted out, or that the agent cannot serve (Windows).
fn left_out(pod: &PodView<'_>, bindings: &[Binding], warnings: &mut Warnings) -> Option<Skip> {
    let sa = pod.service_account();
    match pod.annotation(ANNOTATION_INJECT).map(str::trim) {
        Some("false" | "False" | "disabled") => {
            warnings.push(format!(
                "injection disabled by annotation {ANNOTATION_INJECT}; service account {sa:?} is bound to {}, but this pod gets no AWS credentials from rolebridge",
                binding_list(bindings)
            ));
            return Some(Skip::OptedOut);
        }
        None | Some("true" | "True" | "enabled" | "") => {}
        Some(other) => warnings.push(format!(
            "annotation {ANNOTATION_INJECT}={other:?} is not understood (use \"false\" to opt out); injecting as usual"
        )),
    }
    if pod.is_windows() {
        warnings.push(
            "Windows pods (spec.os.name, or a kubernetes.io/os: windows node selector or required node affinity) are not supported; this pod gets no AWS credentials from rolebridge",
        );
        return Some(Skip::Windows);
    }
    None
}

/// What the pod's `rolebridge.io/role` and `rolebridge.io/skip-containers` ask for; a role
/// that names no binding of the service account denies the pod.
fn asked<'p>(
    pod: &'p PodView<'_>,
    namespace: &str,
    bindings: &[Binding],
    warnings: &mut Warnings,
) -> Result<Gate<'p>, Denial> {
    let chosen_role = pod
        .annotation(ANNOTATION_ROLE)
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if let Some(role) = chosen_role
        && !bindings.iter().any(|b| b.name == role)
    {
        return Err(Denial::new(
            DenyReason::UnboundRole,
            format!(
                "annotation {ANNOTATION_ROLE}={role:?} names no AWSRoleBinding of service account {:?} in namespace {namespace:?}; an annotation cannot grant a role that is not bound. Bindings of this service account: {}. Set the annotation to one of these names or remove it.",
                pod.service_account(),
                binding_list(bindings)
            ),
        ));
    }

    let skip_list: Vec<&str> = pod
        .annotation(ANNOTATION_SKIP_CONTAINERS)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for s in &skip_list {
        if !containers(pod).any(|(_, _, c)| c.name.as_str() == *s) {
            warnings.push(format!(
                "{ANNOTATION_SKIP_CONTAINERS} names {s:?}, which is not a container of this pod"
            ));
        }
    }

    if let Some(role) = chosen_role
        && let Some(b) = bindings.iter().find(|b| b.name == role)
        && !containers(pod).any(|(_, _, c)| !is_agent(c.name.as_str()) && b.covers(c.name.as_str()))
    {
        warnings.push(format!(
            "annotation {ANNOTATION_ROLE}={role:?} names binding {:?}, whose spec.containers ({}) lists no container of this pod, so the annotation has no effect",
            b.name,
            b.containers.as_deref().unwrap_or_default().join(", ")
        ));
    }
    Ok(Gate {
        chosen_role,
        skip_list,
    })
}
