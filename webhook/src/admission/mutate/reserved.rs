//! Phase 3: names rolebridge reserves for what it injects.

use super::{
    ANNOTATION_APPLIED, ANNOTATION_INJECT, Denial, DenyReason, KUBERNETES_TOKEN_VOLUME,
    TOKEN_VOLUME, containers, is_agent,
};
use crate::domain::pod::{NamedView, PodView};

/// A pod that uses the agent's container names or a token volume's name without having been
/// injected by rolebridge (no `rolebridge.io/bindings`) is denied: injecting it would point its
/// containers at files that nothing writes. A pod carrying the annotation is a reinvocation, and
/// what is there is reused.
pub(super) fn check(pod: &PodView<'_>) -> Result<(), Denial> {
    if pod.annotation(ANNOTATION_APPLIED).is_some() {
        return Ok(());
    }
    let mut taken: Vec<String> = containers(pod)
        .filter(|(_, _, c)| is_agent(c.name.as_str()))
        .map(|(_, _, c)| format!("container {:?}", c.name.as_str()))
        .collect();
    for volume in [TOKEN_VOLUME, KUBERNETES_TOKEN_VOLUME] {
        if volume_named(pod, volume).is_some() {
            taken.push(format!("volume {volume:?}"));
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    let one = taken.len() == 1;
    Err(Denial::new(
        DenyReason::ReservedName,
        format!(
            "this pod has {}, but {} reserved by rolebridge for the token agent it injects, and the pod was not injected by rolebridge (it has no {ANNOTATION_APPLIED} annotation); injecting it would point its containers at a token file that nothing writes. Rename {}, or opt the pod out with the annotation {ANNOTATION_INJECT}: \"false\" if it should not get AWS credentials from rolebridge.",
            taken.join(" and "),
            if one {
                "that name is"
            } else {
                "those names are"
            },
            if one { "it" } else { "them" },
        ),
    ))
}

/// The pod's volume called `name`.
pub(super) fn volume_named<'p>(pod: &'p PodView<'_>, name: &str) -> Option<&'p NamedView<'p>> {
    pod.spec
        .volumes
        .as_deref()?
        .iter()
        .find(|v| v.name.as_str() == name)
}
