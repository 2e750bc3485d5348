//! The binding as admission and status see it, and the one coverage rule both apply.
//!
//! Which binding covers which container decides what a pod is injected with ([`crate::admission::mutate`])
//! and whether a binding is reported as a `Conflict` ([`crate::domain::status`]). Both read it from
//! here, so a binding shown as Ready can never get its pods denied for a tie, and the other way
//! round: [`can_tie`] is derived from [`Binding::rank`], the very function admission ranks with.

pub use rolebridge_contract::Hop;

/// Which web identity token the pods of a binding present to STS (`spec.tokenSource`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum TokenSource {
    /// A Google ID token of the service account's Google service account, from the GKE metadata
    /// server (GKE Workload Identity), kept fresh by the injected agent.
    #[default]
    Google,
    /// The pod's own Kubernetes service account token, projected by the kubelet (which rotates
    /// it) with the binding's audience; AWS trusts the cluster's service account issuer.
    Kubernetes,
}

impl TokenSource {
    /// As `spec.tokenSource` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Google => "Google",
            TokenSource::Kubernetes => "Kubernetes",
        }
    }
}

/// A binding as the mutation sees it: already validated, namespace implied by the lookup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Binding {
    pub name: String,
    pub service_account: String,
    /// The identity role: `AssumeRoleWithWebIdentity` with the pod's web identity token.
    pub role_arn: String,
    pub audience: Option<String>,
    pub region: Option<String>,
    pub containers: Option<Vec<String>>,
    /// `sts:AssumeRole` hops after the identity role, in order.
    pub chain: Vec<Hop>,
    /// Lifetime of the final credentials (STS's default when absent).
    pub duration_seconds: Option<u32>,
    /// Pod identity as session tags on every `AssumeRole` hop (resolved: the spec's default is
    /// "on when a chain is set").
    pub session_tags: bool,
    /// Which token the web identity hop presents.
    pub token_source: TokenSource,
}

/// How a binding's credentials reach the app containers. Closed on purpose: every rule that
/// differs between deliveries matches on it, so adding one is a compile error everywhere it
/// matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Delivery {
    /// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`: the app's SDK calls STS itself with a
    /// token file the agent keeps fresh (Google), or the kubelet projects (Kubernetes).
    WebIdentity,
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: the agent
    /// obtains the credentials (role chain, session duration, tags) and serves them on loopback.
    CredentialsEndpoint,
}

/// How strongly a binding claims a container. Higher wins; only equals can tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Rank {
    /// The binding lists no containers, so it covers every one.
    AllContainers,
    /// The binding lists this container in `spec.containers`.
    Named,
}

impl Binding {
    /// The binding lists `container` in `spec.containers`.
    pub(crate) fn names(&self, container: &str) -> bool {
        self.containers
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c == container))
    }

    /// How this binding claims `container`, or `None` when it does not cover it.
    pub(crate) fn rank(&self, container: &str) -> Option<Rank> {
        match &self.containers {
            None => Some(Rank::AllContainers),
            Some(_) if self.names(container) => Some(Rank::Named),
            Some(_) => None,
        }
    }

    pub(crate) fn covers(&self, container: &str) -> bool {
        self.rank(container).is_some()
    }

    /// Web identity unless the SDKs cannot do what the binding asks by themselves: a role
    /// chain or a session duration needs the agent to obtain the credentials.
    pub fn delivery(&self) -> Delivery {
        if self.chain.is_empty() && self.duration_seconds.is_none() {
            Delivery::WebIdentity
        } else {
            Delivery::CredentialsEndpoint
        }
    }

    /// The role pods act as: the chain's last hop, else the identity role.
    pub(crate) fn final_role_arn(&self) -> &str {
        self.chain
            .last()
            .map_or(self.role_arn.as_str(), |h| h.role_arn.as_str())
    }

    /// The token audience, given the webhook's default for bindings that set none.
    pub(crate) fn audience_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(default)
    }
}

/// The bindings that cover one container, and those of the winning rank among them.
#[derive(Debug)]
pub(crate) struct Coverage<'b> {
    /// Every binding that covers the container.
    pub candidates: Vec<&'b Binding>,
    /// The candidates of the highest rank: a binding that names the container outranks one that
    /// covers all containers, so a binding written for a container is never taken away from it.
    pub tier: Vec<&'b Binding>,
}

impl<'b> Coverage<'b> {
    pub(crate) fn of(bindings: &'b [Binding], container: &str) -> Self {
        let candidates: Vec<&Binding> = bindings.iter().filter(|b| b.covers(container)).collect();
        let top = candidates.iter().filter_map(|b| b.rank(container)).max();
        let tier = candidates
            .iter()
            .copied()
            .filter(|b| b.rank(container) == top)
            .collect();
        Coverage { candidates, tier }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The binding that gets the container: the only one of its tier, else the one `chosen`
    /// (the `rolebridge.io/role` annotation) names within the tier. `None` is a tie.
    pub(crate) fn resolve(&self, chosen: Option<&str>) -> Option<&'b Binding> {
        match self.tier.as_slice() {
            [only] => Some(*only),
            _ => chosen.and_then(|r| self.tier.iter().copied().find(|b| b.name == r)),
        }
    }
}

/// Whether two bindings of one service account can tie on some container of some pod: both
/// claim it with the same [`Binding::rank`]. The containers worth trying are the ones either
/// binding lists, plus one that neither lists (standing for every other container).
pub fn can_tie(a: &Binding, b: &Binding) -> bool {
    let listed: Vec<&str> = [&a.containers, &b.containers]
        .into_iter()
        .flatten()
        .flatten()
        .map(String::as_str)
        .collect();
    let unlisted = (0..)
        .map(|i| format!("unlisted-{i}"))
        .find(|n| !listed.contains(&n.as_str()))
        .expect("an unbounded range always has a fresh name");
    listed
        .iter()
        .copied()
        .chain(std::iter::once(unlisted.as_str()))
        .any(|c| a.rank(c).is_some() && a.rank(c) == b.rank(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, containers: Option<&[&str]>) -> Binding {
        Binding {
            name: name.into(),
            containers: containers.map(|cs| cs.iter().map(|c| (*c).to_owned()).collect()),
            ..Binding::default()
        }
    }

    #[test]
    fn named_outranks_all_containers_and_the_annotation_only_chooses_within_a_tier() {
        let bindings = [
            b("all", None),
            b("x", Some(&["app"])),
            b("y", Some(&["app", "side"])),
        ];
        let app = Coverage::of(&bindings, "app");
        assert_eq!(app.candidates.len(), 3);
        let tier: Vec<&str> = app.tier.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(tier, ["x", "y"]);
        assert_eq!(app.resolve(None), None);
        assert_eq!(app.resolve(Some("y")).map(|b| b.name.as_str()), Some("y"));
        assert_eq!(app.resolve(Some("all")), None);
        let other = Coverage::of(&bindings, "other");
        assert_eq!(other.resolve(None).map(|b| b.name.as_str()), Some("all"));
        assert!(Coverage::of(&bindings[1..], "other").is_empty());
    }

    #[test]
    fn ties_follow_the_rank() {
        let all = b("all", None);
        let all2 = b("all2", None);
        let x = b("x", Some(&["app"]));
        let y = b("y", Some(&["sidecar"]));
        let z = b("z", Some(&["sidecar", "other"]));
        assert!(can_tie(&all, &all2));
        assert!(!can_tie(&all, &x));
        assert!(!can_tie(&x, &y));
        assert!(can_tie(&y, &z));
        // A binding listing a container called like the probe name is still handled.
        let odd = b("odd", Some(&["unlisted-0"]));
        assert!(!can_tie(&odd, &all));
        assert!(can_tie(&odd, &b("odd2", Some(&["unlisted-0"]))));
    }

    #[test]
    fn delivery_and_final_role() {
        let mut web = b("w", None);
        web.role_arn = "arn:aws:iam::111111111111:role/id".into();
        assert_eq!(web.delivery(), Delivery::WebIdentity);
        assert_eq!(web.final_role_arn(), "arn:aws:iam::111111111111:role/id");
        let mut timed = web.clone();
        timed.duration_seconds = Some(900);
        assert_eq!(timed.delivery(), Delivery::CredentialsEndpoint);
        assert_eq!(timed.final_role_arn(), web.role_arn);
        let mut chained = web.clone();
        chained.chain = vec![Hop {
            role_arn: "arn:aws:iam::222222222222:role/target".into(),
            external_id: None,
        }];
        assert_eq!(chained.delivery(), Delivery::CredentialsEndpoint);
        assert_eq!(
            chained.final_role_arn(),
            "arn:aws:iam::222222222222:role/target"
        );
    }
}
