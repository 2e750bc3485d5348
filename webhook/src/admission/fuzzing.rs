//! The property the admission fuzz target checks, kept in the library so that a normal
//! `cargo test` replays the committed corpus (`webhook/fuzz/corpus/`) on stable Rust, and the
//! fuzzer (`webhook/fuzz`, cargo-fuzz) explores new inputs with the very same check.
//!
//! One input is raw bytes: the first byte says how many of the following bytes describe the
//! bindings and the config ([`Scenario`]); the rest is the request body, exactly as the
//! admission port would receive it. For every input:
//! - reading the review and answering it never panics, and the answer is an AdmissionReview
//!   whose `response.uid` is the request's;
//! - a patch is only ever `add` operations, and it applies to the pod;
//! - running the patched pod through the webhook again (a reinvocation) adds nothing and is
//!   not denied.
//!
//! Bindings are drawn from the input bytes: service accounts from the pod's own and a few
//! others, containers from the pod's container names and a few others, with or without
//! audience, region, a role chain (with external IDs), a session duration, session tags and
//! either token source, what is known of the service account (a Google service account, none,
//! a malformed one, or nothing), and the config's sidecar mode, own namespace, credentials port
//! and cluster name, so that the fuzzer reaches every branch of coverage, ties, both
//! deliveries and both token sources.
#![doc(hidden)]

use base64::Engine as _;
use serde_json::Value;

use crate::admission::mutate::{Config, ServiceAccountState, SidecarMode};
use crate::admission::review::{self, Parsed};
use crate::bindings::store::Store;
use crate::domain::binding::{Binding, Hop, TokenSource};

/// Bindings, what is known of the service account, and config decoded from the first bytes
/// of an input.
#[derive(Debug)]
struct Scenario {
    pub bindings: Vec<Binding>,
    pub account: ServiceAccountState,
    pub config: Config,
}

const ROLES: [&str; 3] = [
    "arn:aws:iam::123456789012:role/app",
    "arn:aws:iam::210987654321:role/other",
    "arn:aws-cn:iam::123456789012:role/path/cn",
];
const ACCOUNTS: [&str; 3] = ["default", "app-sa", "other"];
const CONTAINERS: [&str; 3] = ["app", "rolebridge-agent", "sidecar"];

/// Reads bytes as a sequence of small choices; runs out gracefully.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[usize::from(self.byte()) % from.len()]
    }
}

impl Scenario {
    /// Decodes `spec`; `pod_sa` and `pod_containers` (read from the review when it parses)
    /// make most bindings relevant to the pod.
    pub(crate) fn decode(spec: &[u8], pod_sa: &str, pod_containers: &[String]) -> Scenario {
        let mut c = Choices(spec);
        let flags = c.byte();
        let config = Config {
            sidecar_mode: if flags & 1 == 0 {
                SidecarMode::Native
            } else {
                SidecarMode::Legacy
            },
            own_namespace: (flags & 2 != 0).then(|| "rolebridge-system".to_owned()),
            // 8080 is a port pods commonly declare: the endpoint has to move or deny.
            credentials_port: if flags & 4 == 0 { 24118 } else { 8080 },
            cluster_name: (flags & 8 != 0).then(|| "prod-eu".to_owned()),
            ..Config::default()
        };
        let mut accounts: Vec<&str> = ACCOUNTS.to_vec();
        accounts.push(pod_sa);
        let mut containers: Vec<&str> = CONTAINERS.to_vec();
        containers.extend(pod_containers.iter().map(String::as_str));
        let count = usize::from(c.byte() % 5);
        let bindings = (0..count)
            .map(|i| binding(&mut c, i, flags, pod_sa, &accounts, &containers))
            .collect();
        // Config bits 64 and 128: the service account names no Google service account, or could
        // not be read (a Google-source pod is then denied).
        let account = match flags >> 6 {
            0 => {
                ServiceAccountState::WorkloadIdentity("app@project.iam.gserviceaccount.com".into())
            }
            1 => ServiceAccountState::NoWorkloadIdentity,
            2 => ServiceAccountState::WorkloadIdentity("not-an-email".into()),
            _ => ServiceAccountState::Missing,
        };
        Scenario {
            bindings,
            account,
            config,
        }
    }
}

/// Binding `i` of a scenario, drawn from the next bytes.
fn binding(
    c: &mut Choices<'_>,
    i: usize,
    flags: u8,
    pod_sa: &str,
    accounts: &[&str],
    containers: &[&str],
) -> Binding {
    let shape = c.byte();
    let listed = (shape & 1 != 0).then(|| {
        let mask = c.byte();
        containers
            .iter()
            .enumerate()
            .filter(|(j, _)| mask & (1 << (j % 8)) != 0)
            .map(|(_, n)| (*n).to_owned())
            .collect()
    });
    let service_account = if shape & 2 != 0 {
        pod_sa.to_owned()
    } else {
        c.pick(accounts).to_owned()
    };
    let role_arn = c.pick(&ROLES).to_owned();
    let hops = usize::from(shape >> 4 & 3);
    let chain = (0..hops)
        .map(|h| Hop {
            role_arn: c.pick(&ROLES).to_owned(),
            external_id: (c.byte() & 1 != 0).then(|| format!("ext-{h}")),
        })
        .collect::<Vec<_>>();
    let duration_seconds = match shape >> 6 {
        0 | 1 => None,
        2 => Some(900),
        _ => Some(3600),
    };
    Binding {
        name: format!("b{i}"),
        service_account,
        role_arn,
        audience: (shape & 4 != 0).then(|| "sts.example.com".to_owned()),
        region: (shape & 8 != 0).then(|| "eu-west-1".to_owned()),
        containers: listed,
        session_tags: !chain.is_empty() && shape >> 6 != 1,
        chain,
        duration_seconds,
        // Config bit 16 turns the even-numbered bindings and bit 32 the odd ones to Kubernetes
        // tokens, so inputs written before the field existed decode as they did.
        token_source: if flags & (16 << (i % 2)) != 0 {
            TokenSource::Kubernetes
        } else {
            TokenSource::Google
        },
    }
}

/// Splits an input into its scenario bytes and the request body.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n).min(rest.len())),
        None => (&[], &[]),
    }
}

/// Checks one input; panics (with what went wrong) if a property does not hold.
pub fn check(data: &[u8]) {
    let (spec, body) = split(data);
    // The raw bytes, as the admission port gets them.
    let (sa, containers) = pod_identity(body);
    let scenario = Scenario::decode(spec, &sa, &containers);
    let Some(first) = answer(body, &scenario) else {
        return;
    };
    // Reinvocation works on what the API server re-serialises, not on our raw bytes.
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let Some(patch) = patch_of(&first) else {
        return;
    };
    let pod = &mut review["request"]["object"];
    if let Err(e) = json_patch::patch(pod, &patch) {
        panic!("the patch does not apply to the pod: {e}\npatch: {patch:?}");
    }
    let again = serde_json::to_vec(&review).expect("a Value serialises");
    let second = answer(&again, &scenario).expect("the patched pod is still a pod review");
    assert_eq!(
        second["response"]["allowed"], true,
        "the reinvocation was denied: {second}"
    );
    if let Some(more) = patch_of(&second) {
        assert!(
            more.0.is_empty(),
            "the reinvocation added {more:?}\nto {}",
            review["request"]["object"]
        );
    }
}

/// The pod's service account and container names, if the body is a pod review at all.
fn pod_identity(body: &[u8]) -> (String, Vec<String>) {
    match review::parse(body) {
        Parsed::Pod(r) => {
            let spec = &r.pod.spec;
            let names = [&spec.containers, &spec.init_containers]
                .into_iter()
                .flatten()
                .flatten()
                .map(|c| c.name.as_str().to_owned())
                .collect();
            (r.service_account().to_owned(), names)
        }
        Parsed::Done { .. } => (String::new(), Vec::new()),
    }
}

/// Answers `body` as the webhook would, with the scenario's bindings of the pod's service
/// account, and checks the answer's shape. `None` for answers with nothing more to check.
fn answer(body: &[u8], scenario: &Scenario) -> Option<Value> {
    let (bytes, uid) = match review::parse(body) {
        Parsed::Done { body, .. } => (body, None),
        Parsed::Pod(r) => {
            // Selected as every admission selects them: through the store.
            let store: Store = scenario
                .bindings
                .iter()
                .map(|b| (r.namespace.clone(), b.clone()))
                .collect();
            let bindings = store.bindings_for(&r.namespace, r.service_account());
            let (bytes, _) = r.respond(
                bindings.as_deref().unwrap_or_default(),
                &scenario.account,
                &scenario.config,
            );
            (bytes, Some(r.uid.as_str().to_owned()))
        }
    };
    let out: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "the answer is not JSON: {e}: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(out["kind"], "AdmissionReview", "{out}");
    assert!(out["response"]["allowed"].is_boolean(), "{out}");
    let uid = uid?;
    assert_eq!(out["response"]["uid"], uid.as_str(), "{out}");
    Some(out)
}

fn patch_of(answer: &Value) -> Option<json_patch::Patch> {
    let encoded = answer["response"]["patch"].as_str()?;
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("the patch is JSON");
    for op in &patch.0 {
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)),
            "only add operations: {op:?}"
        );
    }
    Some(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEW: &[u8] =
        include_bytes!("../../tests/fixtures/admissionreview-v1-pod-from-apiserver.json");

    fn input(spec: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = vec![spec.len() as u8];
        v.extend_from_slice(spec);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn the_captured_review_holds_the_properties_with_and_without_bindings() {
        check(&input(&[], REVIEW));
        // One binding of the pod's service account covering all containers: mutated.
        let one = input(&[0, 1, 2, 0], REVIEW);
        check(&one);
        let (spec, body) = split(&one);
        let scenario = Scenario::decode(spec, "app-sa", &[]);
        assert_eq!(scenario.bindings.len(), 1);
        assert!(patch_of(&answer(body, &scenario).unwrap()).is_some());
        // A chained binding with a duration: the credentials-endpoint delivery.
        let chained = input(&[0, 1, 0x92, 0, 1, 1], REVIEW);
        check(&chained);
        let (spec, body) = split(&chained);
        let scenario = Scenario::decode(spec, "app-sa", &[]);
        assert_eq!(scenario.bindings[0].chain.len(), 1);
        assert_eq!(scenario.bindings[0].duration_seconds, Some(900));
        let patch = patch_of(&answer(body, &scenario).unwrap()).unwrap();
        let text = serde_json::to_string(&patch).unwrap();
        assert!(
            text.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            "{text}"
        );
        // Two covering all containers: a tie, denied (nothing more to check).
        check(&input(&[1, 2, 2, 0, 2, 1], REVIEW));
        check(&[]);
        check(b"\x00not json");
    }

    #[test]
    #[should_panic(expected = "only add operations")]
    fn a_patch_that_removes_is_caught() {
        let answer = serde_json::json!({"response": {"patchType": "JSONPatch", "patch":
            base64::engine::general_purpose::STANDARD.encode(br#"[{"op":"remove","path":"/x"}]"#)}});
        patch_of(&answer);
    }
}
