//! Identity pinning: the Google ID tokens the agent takes from the metadata server must be for
//! the Google service account the pod is meant to act as ([`GooglePin`], told by the webhook).
//!
//! Why: GKE does not apply Workload Identity to `hostNetwork: true` pods, nor to pods on node
//! pools without `--workload-metadata=GKE_METADATA`. Their metadata requests reach the Compute
//! Engine metadata server, which answers `…/service-accounts/default/identity` with an ID token
//! of the *node's* service account. Written as if it were the pod's, that token would let the
//! pod (and, through a trust policy printed from it, every pod on those nodes) act as the node.
//!
//! So the agent asks for a full-format token (`format=full`, which carries the `email` claim)
//! and [`Pin::judge`]s it: a token for any other account, or for no confirmed account, is a
//! [`Refusal`]. The same goes, before any request, for a pod whose service account names no
//! Google service account ([`GooglePin::NotConfigured`]), and for the GKE metadata server's own
//! 404 for such a service account ([`not_annotated`]). A refusal is permanent for the pod: the
//! callers write nothing, back off to a long interval and say what to fix.
//!
//! Pure: no I/O, no clock. A refusal names accounts (emails, not secrets), never token contents.

use rolebridge_contract::GooglePin;

use crate::jwt::Claims;

/// What a token must be for, and whom to name in advice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pin {
    /// The webhook's pin (`--google-service-account`); None: not pinned (older webhooks, pods
    /// without Google-source bindings, tools run by hand without the flag).
    pub google: Option<GooglePin>,
    /// The pod's Kubernetes service account as `NAMESPACE/NAME`, when known (downward API), so
    /// that the advice can be pasted as it is.
    pub service_account: Option<String>,
}

/// Why a token (or the attempt to get one) is refused. Permanent for the pod: retrying soon
/// cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the metadata server answered for {got} (the node's account?), not {expected}: Workload \
         Identity does not apply to this pod (hostNetwork: true, or a node pool without \
         --workload-metadata=GKE_METADATA); use tokenSource: Kubernetes, or move the pod off the \
         host network to a node pool with GKE_METADATA"
    )]
    OtherAccount { expected: String, got: String },
    #[error(
        "the metadata server's token names no verified account (no email claim), so it cannot be \
         confirmed to be {expected}: Workload Identity may not apply to this pod (hostNetwork: \
         true, or a node pool without --workload-metadata=GKE_METADATA); use tokenSource: \
         Kubernetes, or move the pod off the host network to a node pool with GKE_METADATA"
    )]
    NoEmail { expected: String },
    #[error(
        "the Kubernetes service account {} names no Google service account (annotation \
         iam.gke.io/gcp-service-account), so the GKE metadata server has no ID token for this \
         pod: {}",
        show(.service_account),
        advice(.service_account)
    )]
    NotConfigured { service_account: Option<String> },
    #[error(
        "the GKE metadata server answered 404: the Kubernetes service account {} is not annotated \
         with a Google service account: {}",
        show(.service_account),
        advice(.service_account)
    )]
    NotAnnotated { service_account: Option<String> },
}

fn show(service_account: &Option<String>) -> &str {
    service_account.as_deref().unwrap_or("of this pod")
}

/// What to do about a service account without a Google service account, with its namespace
/// and name filled in when known.
fn advice(service_account: &Option<String>) -> String {
    let (ns, ksa) = service_account
        .as_deref()
        .and_then(|s| s.split_once('/'))
        .unwrap_or(("NAMESPACE", "KSA"));
    format!(
        "annotate it (kubectl annotate serviceaccount -n {ns} {ksa} \
         iam.gke.io/gcp-service-account=GSA_EMAIL), let it act as that account (gcloud iam \
         service-accounts add-iam-policy-binding GSA_EMAIL --role roles/iam.workloadIdentityUser \
         --member \"serviceAccount:PROJECT_ID.svc.id.goog[{ns}/{ksa}]\") and recreate the pod; \
         or use tokenSource: Kubernetes, which needs no Google service account"
    )
}

impl Pin {
    /// A pin without a service account to name.
    pub fn new(google: Option<GooglePin>) -> Self {
        Pin {
            google,
            service_account: None,
        }
    }

    /// Before asking the metadata server: a pod whose service account names no Google service
    /// account is refused without a request (the GKE metadata server would answer 404, the
    /// Compute Engine one the node's token).
    pub fn before_fetch(&self) -> Result<(), Refusal> {
        match self.google {
            Some(GooglePin::NotConfigured) => Err(Refusal::NotConfigured {
                service_account: self.service_account.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A token's claims against the pin: its `email` must be the pinned account (emails compare
    /// case-insensitively, as Google treats them) and not explicitly unverified.
    pub fn judge(&self, claims: &Claims) -> Result<(), Refusal> {
        self.before_fetch()?;
        let Some(GooglePin::Email(expected)) = &self.google else {
            return Ok(());
        };
        match claims.email.as_deref() {
            Some(got) if claims.email_verified == Some(false) => Err(Refusal::OtherAccount {
                expected: expected.clone(),
                got: format!("{got} (unverified)"),
            }),
            Some(got) if got.eq_ignore_ascii_case(expected) => Ok(()),
            Some(got) => Err(Refusal::OtherAccount {
                expected: expected.clone(),
                got: got.to_owned(),
            }),
            None => Err(Refusal::NoEmail {
                expected: expected.clone(),
            }),
        }
    }
}

/// What the GKE metadata server says (404) when the pod's Kubernetes service account has no
/// `iam.gke.io/gcp-service-account` annotation: "Your Kubernetes service account (NS/NAME) is
/// not annotated with a target Google service account, which is a requirement for retrieving
/// Identity Tokens using Workload Identity. …". Matched on this phrase only.
pub const GKE_NOT_ANNOTATED: &str = "is not annotated with a target google service account";

/// A 404 body that is the GKE metadata server's "not annotated" answer, as a refusal naming
/// the service account it quotes (`(NS/NAME)`), else `pinned_sa`.
pub fn not_annotated(status: u16, body: &str, pinned_sa: Option<&str>) -> Option<Refusal> {
    if status != 404 || !body.to_ascii_lowercase().contains(GKE_NOT_ANNOTATED) {
        return None;
    }
    let quoted = body
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside.trim())
        .filter(|s| {
            s.split_once('/').is_some_and(|(ns, name)| {
                !ns.is_empty()
                    && !name.is_empty()
                    && s.len() <= 317
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-./".contains(&b))
            })
        });
    Some(Refusal::NotAnnotated {
        service_account: quoted.or(pinned_sa).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Audience;

    const APP: &str = "app@proj.iam.gserviceaccount.com";
    const NODE: &str = "123456789-compute@developer.gserviceaccount.com";

    fn claims(email: Option<&str>, verified: Option<bool>) -> Claims {
        Claims {
            iss: Some("https://accounts.google.com".into()),
            aud: Audience::One("sts.amazonaws.com".into()),
            azp: Some("1".into()),
            sub: Some("1".into()),
            email: email.map(str::to_owned),
            email_verified: verified,
            iat: Some(1),
            exp: 2,
        }
    }

    fn pinned(email: &str) -> Pin {
        Pin::new(Some(GooglePin::Email(email.into())))
    }

    #[test]
    fn the_pinned_account_passes_whatever_the_case() {
        assert_eq!(pinned(APP).judge(&claims(Some(APP), Some(true))), Ok(()));
        let upper = APP.to_ascii_uppercase();
        assert_eq!(pinned(&upper).judge(&claims(Some(APP), None)), Ok(()));
    }

    #[test]
    fn another_account_is_refused_naming_both_and_the_causes() {
        let r = pinned(APP)
            .judge(&claims(Some(NODE), Some(true)))
            .unwrap_err();
        assert_eq!(
            r,
            Refusal::OtherAccount {
                expected: APP.into(),
                got: NODE.into()
            }
        );
        let text = r.to_string();
        for part in [
            NODE,
            APP,
            "hostNetwork: true",
            "--workload-metadata=GKE_METADATA",
            "tokenSource: Kubernetes",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }

    #[test]
    fn a_token_without_a_confirmed_email_is_refused() {
        assert_eq!(
            pinned(APP).judge(&claims(None, None)),
            Err(Refusal::NoEmail {
                expected: APP.into()
            })
        );
        assert!(matches!(
            pinned(APP).judge(&claims(Some(APP), Some(false))),
            Err(Refusal::OtherAccount { .. })
        ));
    }

    #[test]
    fn without_a_pin_any_token_passes() {
        let none = Pin::default();
        assert_eq!(none.before_fetch(), Ok(()));
        assert_eq!(none.judge(&claims(Some(NODE), None)), Ok(()));
        assert_eq!(none.judge(&claims(None, None)), Ok(()));
    }

    #[test]
    fn not_configured_is_refused_before_asking_with_pasteable_advice() {
        let pin = Pin {
            google: Some(GooglePin::NotConfigured),
            service_account: Some("ci/publisher".into()),
        };
        let r = pin.before_fetch().unwrap_err();
        assert_eq!(pin.judge(&claims(Some(APP), None)), Err(r.clone()));
        let text = r.to_string();
        for part in [
            "ci/publisher",
            "kubectl annotate serviceaccount -n ci publisher iam.gke.io/gcp-service-account=GSA_EMAIL",
            "roles/iam.workloadIdentityUser",
            "serviceAccount:PROJECT_ID.svc.id.goog[ci/publisher]",
            "recreate the pod",
            "tokenSource: Kubernetes",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let unknown = Pin::new(Some(GooglePin::NotConfigured))
            .before_fetch()
            .unwrap_err();
        assert!(unknown.to_string().contains("svc.id.goog[NAMESPACE/KSA]"));
    }

    #[test]
    fn gke_not_annotated_404_is_recognised_and_names_the_quoted_account() {
        let body = "Your Kubernetes service account (ci/publisher) is not annotated with a target \
                    Google service account, which is a requirement for retrieving Identity Tokens \
                    using Workload Identity.\nPlease add the iam.gke.io/gcp-service-account=[GSA_NAME]@[PROJECT_ID] \
                    annotation to your Kubernetes service account.\n";
        assert_eq!(
            not_annotated(404, body, Some("x/y")),
            Some(Refusal::NotAnnotated {
                service_account: Some("ci/publisher".into())
            })
        );
        // Another status or another 404 is not this answer.
        assert_eq!(not_annotated(403, body, None), None);
        assert_eq!(not_annotated(404, "Not Found\n", None), None);
        // An unquotable name falls back to what the agent knows.
        let odd = "Your Kubernetes service account (a b) is not annotated with a target Google service account";
        assert_eq!(
            not_annotated(404, odd, Some("ci/x")),
            Some(Refusal::NotAnnotated {
                service_account: Some("ci/x".into())
            })
        );
    }
}
