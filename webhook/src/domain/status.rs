//! Binding status as a pure function of all bindings and what is known of service accounts.
//!
//! Conflicts are a property of the set, not of one object, so every binding's status is
//! recomputed from the whole picture. The result is deterministic, and `lastTransitionTime` is
//! carried over from the object's current status unless the condition's status flips, so two
//! replicas computing it independently write the same thing and converge.

use std::collections::HashMap;

use crate::domain::binding::{self, Binding, TokenSource};
use crate::domain::crd::{AWSRoleBindingStatus, Condition};

pub(crate) const READY: &str = "Ready";
pub(crate) const GSA_ANNOTATION: &str = "iam.gke.io/gcp-service-account";

/// One binding as the controller sees it.
pub struct BindingState<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: Option<i64>,
    /// The usable binding, or why its spec is invalid.
    pub spec: Result<&'a Binding, &'a str>,
    pub current: Option<&'a AWSRoleBindingStatus>,
}

/// What the cluster says about a service account: for the status, and for admission the
/// Google service account a Google-source pod's agent is pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAccountState {
    /// Not found (or, for an admission, not known: neither in the cache nor by a live read).
    Missing,
    /// Exists without the `iam.gke.io/gcp-service-account` annotation (or with an empty one).
    NoWorkloadIdentity,
    WorkloadIdentity(String),
}

impl ServiceAccountState {
    /// An existing service account with this `iam.gke.io/gcp-service-account` annotation.
    pub fn of_annotation(gsa: Option<&str>) -> Self {
        match gsa {
            Some(g) if !g.is_empty() => ServiceAccountState::WorkloadIdentity(g.to_owned()),
            _ => ServiceAccountState::NoWorkloadIdentity,
        }
    }
}

/// Whose token AWS sees, for a Ready binding's message: the Google service account, or the
/// Kubernetes service account itself (`sub`) and the cluster's issuer when it is known.
fn identity(spec: &Binding, namespace: &str, gsa: Option<&str>, issuer: Option<&str>) -> String {
    match (spec.token_source, gsa) {
        (TokenSource::Google, Some(gsa)) => format!("through Google service account {gsa}"),
        _ => {
            let sub = format!("system:serviceaccount:{namespace}:{}", spec.service_account);
            match issuer {
                Some(iss) => format!(
                    "through their Kubernetes service account token ({sub}, issued by {iss})"
                ),
                None => format!("through their Kubernetes service account token ({sub})"),
            }
        }
    }
}

/// What a Ready binding's pods act as, and how they get there (`through`: [`identity`]).
fn bound_message(spec: &Binding, through: &str) -> String {
    let sa = &spec.service_account;
    let lifetime = spec
        .duration_seconds
        .map(|d| format!(", in sessions of {d} s"))
        .unwrap_or_default();
    if spec.chain.is_empty() {
        return format!(
            "pods of service account {sa} act as {} {through}{lifetime}",
            spec.role_arn
        );
    }
    let via: Vec<&str> = std::iter::once(spec.role_arn.as_str())
        .chain(
            spec.chain[..spec.chain.len() - 1]
                .iter()
                .map(|h| h.role_arn.as_str()),
        )
        .collect();
    let tags = if spec.session_tags {
        "with the pod's session tags"
    } else {
        "without session tags"
    };
    format!(
        "pods of service account {sa} act as {} (assumed from {} {tags}) {through}{lifetime}",
        spec.final_role_arn(),
        via.join(" then ")
    )
}

/// For each binding (index-aligned), the names of the bindings it conflicts with: those of its
/// service account it can tie with.
fn conflicts<'a>(bindings: &[BindingState<'a>]) -> Vec<Vec<&'a str>> {
    let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, b) in bindings.iter().enumerate() {
        if let Ok(spec) = b.spec {
            groups
                .entry((b.namespace, spec.service_account.as_str()))
                .or_default()
                .push(i);
        }
    }
    let mut conflicts: Vec<Vec<&str>> = vec![Vec::new(); bindings.len()];
    for members in groups.values() {
        for (k, &i) in members.iter().enumerate() {
            for &j in &members[k + 1..] {
                let (Ok(a), Ok(b)) = (bindings[i].spec, bindings[j].spec) else {
                    continue;
                };
                // The tie rule admission applies, so a binding reported Ready never gets its
                // pods denied for a tie with another.
                if binding::can_tie(a, b) {
                    conflicts[i].push(bindings[j].name);
                    conflicts[j].push(bindings[i].name);
                }
            }
        }
    }
    conflicts
}

/// The status each binding should have (index-aligned with `bindings`), or `None` where the
/// current status is already right. `issuer` is the cluster's service account issuer, when the
/// webhook knows it (named in the Ready message of Kubernetes-source bindings).
pub fn desired(
    bindings: &[BindingState<'_>],
    service_account: impl Fn(&str, &str) -> ServiceAccountState,
    issuer: Option<&str>,
    now: &str,
) -> Vec<Option<AWSRoleBindingStatus>> {
    bindings
        .iter()
        .zip(conflicts(bindings))
        .map(|(b, mut conflicts)| {
            conflicts.sort_unstable();
            let (status, reason, message) = match b.spec {
                Err(why) => ("False", "InvalidSpec", format!("{why}; pods of this service account are not injected by this binding")),
                Ok(_) if !conflicts.is_empty() => (
                    "False",
                    "Conflict",
                    format!(
                        "conflicts with {} (same service account, overlapping containers): new pods are denied until you list distinct spec.containers, delete one binding, or annotate pods with rolebridge.io/role",
                        conflicts.join(", ")
                    ),
                ),
                Ok(spec) => match service_account(b.namespace, &spec.service_account) {
                    ServiceAccountState::Missing => (
                        "False",
                        "ServiceAccountNotFound",
                        format!("service account {}/{} does not exist", b.namespace, spec.service_account),
                    ),
                    // No Google service account is involved.
                    _ if spec.token_source == TokenSource::Kubernetes => (
                        "True",
                        "Bound",
                        bound_message(spec, &identity(spec, b.namespace, None, issuer)),
                    ),
                    ServiceAccountState::NoWorkloadIdentity => (
                        "False",
                        "WorkloadIdentityNotConfigured",
                        format!(
                            "service account {}/{} has no {GSA_ANNOTATION} annotation, so GKE Workload Identity cannot issue it a Google ID token: annotate it with the Google service account and grant that account roles/iam.workloadIdentityUser for this Kubernetes service account, or set tokenSource: Kubernetes to use the pod's Kubernetes service account token",
                            b.namespace, spec.service_account
                        ),
                    ),
                    ServiceAccountState::WorkloadIdentity(gsa) => (
                        "True",
                        "Bound",
                        bound_message(spec, &identity(spec, b.namespace, Some(&gsa), issuer)),
                    ),
                },
            };
            let previous = b
                .current
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.to_owned(),
            };
            let want = AWSRoleBindingStatus {
                conditions: vec![Condition {
                    type_: READY.into(),
                    status: status.into(),
                    reason: reason.into(),
                    message,
                    last_transition_time,
                    observed_generation: b.generation,
                }],
                observed_generation: b.generation,
                role_arn: b.spec.ok().map(|spec| spec.final_role_arn().to_owned()),
            };
            (b.current != Some(&want)).then_some(want)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: &str, sa: &str, containers: Option<&[&str]>) -> Binding {
        Binding {
            name: name.into(),
            service_account: sa.into(),
            role_arn: "arn:aws:iam::123456789012:role/x".into(),
            audience: None,
            region: None,
            containers: containers.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..Binding::default()
        }
    }

    fn state<'a>(name: &'a str, b: &'a Binding) -> BindingState<'a> {
        BindingState {
            namespace: "ns",
            name,
            generation: Some(1),
            spec: Ok(b),
            current: None,
        }
    }

    fn reason(s: &Option<AWSRoleBindingStatus>) -> &str {
        &s.as_ref().unwrap().conditions[0].reason
    }

    #[test]
    fn conflicts_are_reported_on_both_sides() {
        let a = binding("a", "sa", None);
        let b = binding("b", "sa", None);
        let c = binding("c", "other", None);
        let states = [state("a", &a), state("b", &b), state("c", &c)];
        let out = desired(
            &states,
            |_, _| ServiceAccountState::WorkloadIdentity("g@p.iam.gserviceaccount.com".into()),
            None,
            "t0",
        );
        assert_eq!(reason(&out[0]), "Conflict");
        assert!(
            out[0].as_ref().unwrap().conditions[0]
                .message
                .contains("conflicts with b")
        );
        assert_eq!(reason(&out[1]), "Conflict");
        assert_eq!(reason(&out[2]), "Bound");
    }

    #[test]
    fn specific_beats_catch_all_and_disjoint_lists_do_not_conflict() {
        let all = binding("all", "sa", None);
        let x = binding("x", "sa", Some(&["app"]));
        let y = binding("y", "sa", Some(&["sidecar"]));
        let z = binding("z", "sa", Some(&["sidecar", "other"]));
        let states = [
            state("all", &all),
            state("x", &x),
            state("y", &y),
            state("z", &z),
        ];
        let out = desired(
            &states,
            |_, _| ServiceAccountState::WorkloadIdentity("g@p.iam.gserviceaccount.com".into()),
            None,
            "t0",
        );
        let reasons: Vec<&str> = out.iter().map(reason).collect();
        assert_eq!(reasons, ["Bound", "Bound", "Conflict", "Conflict"]);
        assert!(
            out[2].as_ref().unwrap().conditions[0]
                .message
                .contains("conflicts with z")
        );
    }

    #[test]
    fn service_account_problems_and_stable_transition_time() {
        let a = binding("a", "sa", None);
        let out = desired(
            &[state("a", &a)],
            |_, _| ServiceAccountState::Missing,
            None,
            "t0",
        );
        assert_eq!(reason(&out[0]), "ServiceAccountNotFound");
        let out = desired(
            &[state("a", &a)],
            |_, _| ServiceAccountState::NoWorkloadIdentity,
            None,
            "t0",
        );
        assert_eq!(reason(&out[0]), "WorkloadIdentityNotConfigured");
        let current = out[0].clone().unwrap();
        // Same inputs later: nothing to write.
        let mut s = state("a", &a);
        s.current = Some(&current);
        let again = desired(
            &[s],
            |_, _| ServiceAccountState::NoWorkloadIdentity,
            None,
            "t1",
        );
        assert_eq!(again, vec![None]);
        // A change of reason with the same status keeps the transition time.
        let mut s = state("a", &a);
        s.current = Some(&current);
        let moved = desired(&[s], |_, _| ServiceAccountState::Missing, None, "t2");
        assert_eq!(
            moved[0].as_ref().unwrap().conditions[0].last_transition_time,
            "t0"
        );
    }

    #[test]
    fn a_chained_binding_says_what_pods_act_as() {
        let mut b = binding("docs", "sa", None);
        b.role_arn = "arn:aws:iam::111111111111:role/ci-identity".into();
        b.chain = vec![crate::domain::binding::Hop {
            role_arn: "arn:aws:iam::222222222222:role/docs-writer".into(),
            external_id: Some("docs-ext-4711".into()),
        }];
        b.duration_seconds = Some(900);
        b.session_tags = true;
        let out = desired(
            &[state("docs", &b)],
            |_, _| ServiceAccountState::WorkloadIdentity("ci@p.iam.gserviceaccount.com".into()),
            None,
            "t0",
        );
        let s = out[0].as_ref().unwrap();
        assert_eq!(
            s.role_arn.as_deref(),
            Some("arn:aws:iam::222222222222:role/docs-writer")
        );
        assert_eq!(
            s.conditions[0].message,
            "pods of service account sa act as arn:aws:iam::222222222222:role/docs-writer (assumed from arn:aws:iam::111111111111:role/ci-identity with the pod's session tags) through Google service account ci@p.iam.gserviceaccount.com, in sessions of 900 s"
        );
        assert!(!s.conditions[0].message.contains("docs-ext-4711"));
        // Without a chain the identity role is what pods act as.
        let plain = binding("plain", "sa", None);
        let out = desired(
            &[state("plain", &plain)],
            |_, _| ServiceAccountState::Missing,
            None,
            "t0",
        );
        assert_eq!(
            out[0].as_ref().unwrap().role_arn.as_deref(),
            Some(plain.role_arn.as_str())
        );
    }

    #[test]
    fn a_kubernetes_source_binding_needs_no_google_service_account() {
        let mut b = binding("k8s", "sa", None);
        b.token_source = TokenSource::Kubernetes;
        let issuer = Some("https://kubernetes.default.svc.cluster.local");
        // One binding's Ready condition, as (reason, message).
        let ready = |b: &Binding, account: ServiceAccountState, issuer: Option<&str>| {
            let out = desired(&[state("b", b)], move |_, _| account.clone(), issuer, "t0");
            let c = out[0].as_ref().unwrap().conditions[0].clone();
            (c.reason, c.message)
        };
        for account in [
            ServiceAccountState::NoWorkloadIdentity,
            ServiceAccountState::WorkloadIdentity("g@p.iam.gserviceaccount.com".into()),
        ] {
            let (reason, message) = ready(&b, account, issuer);
            assert_eq!(reason, "Bound");
            assert_eq!(
                message,
                "pods of service account sa act as arn:aws:iam::123456789012:role/x through their Kubernetes service account token (system:serviceaccount:ns:sa, issued by https://kubernetes.default.svc.cluster.local)"
            );
        }
        // The issuer is named only when it is known.
        let (_, message) = ready(&b, ServiceAccountState::NoWorkloadIdentity, None);
        assert!(
            message.ends_with("token (system:serviceaccount:ns:sa)"),
            "{message}"
        );
        // Pods of a service account that does not exist are still not created.
        let (reason, _) = ready(&b, ServiceAccountState::Missing, issuer);
        assert_eq!(reason, "ServiceAccountNotFound");
        // A Google one without the annotation says what to do, including the alternative.
        let google = binding("g", "sa", None);
        let (reason, message) = ready(&google, ServiceAccountState::NoWorkloadIdentity, issuer);
        assert_eq!(reason, "WorkloadIdentityNotConfigured");
        assert!(message.contains("tokenSource: Kubernetes"));
    }

    #[test]
    fn invalid_spec() {
        let states = [BindingState {
            namespace: "ns",
            name: "bad",
            generation: Some(3),
            spec: Err("roleArn \"x\" is not an IAM role ARN"),
            current: None,
        }];
        let out = desired(&states, |_, _| ServiceAccountState::Missing, None, "t0");
        assert_eq!(reason(&out[0]), "InvalidSpec");
        assert_eq!(out[0].as_ref().unwrap().role_arn, None);
        assert_eq!(out[0].as_ref().unwrap().observed_generation, Some(3));
    }
}
