//! Golden cases (`webhook/tests/golden/`) replayed through the real API server: each case gets
//! a namespace of its own with its service accounts and bindings, its pod is created through
//! the webhook, and what the API server stores must be the case's expected pod. The API server
//! adds defaults (`imagePullPolicy`, probe timings, `terminationMessagePath`…) and metadata, so
//! the comparison is "expected within stored": every object key of the expected pod with the
//! same value, every array with the same length and order. A denied case must be denied by the
//! API server with the case's message.
//!
//! Only cases without a `config` block are replayed: the webhook under test runs with the
//! default mutation flags, which is what such a case describes. A case's `serviceAccounts` are
//! created as it lists them; without the key, every service account it names gets the Google
//! service account the golden harness assumes.

use std::path::PathBuf;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The credentials-endpoint cases, then web identity ones for contrast, then denials; then
/// issue 14's: both token sources, the Google pin, host network, Windows, Istio pods.
const CASES: &[&str] = &[
    "56-endpoint-chain-native",
    "58-mixed-deliveries",
    "64-endpoint-port-moved",
    "70-endpoint-user-container-vars-win",
    "72-endpoint-access-key-warning",
    "74-endpoint-reinvocation-new-container",
    "01-native-minimal-pod",
    "12-region",
    "14-two-audiences",
    "16-containers-selection",
    "62-endpoint-host-network-denied",
    "67-endpoint-port-annotation-clash-denied",
    "63-host-network-google-denied",
    "77-host-network-kubernetes-web-identity-ok",
    "78-kubernetes-web-identity-native",
    "79-kubernetes-endpoint-agent-reads-the-file",
    "80-mixed-sources-two-audiences",
    "81-kubernetes-endpoint-host-network-denied",
    "82-google-without-annotation-pinned-to-none",
    "84-google-annotation-not-an-email",
    "86-windows-node-selector",
    "87-windows-required-node-affinity",
    "88-istio-native-first",
    "89-istio-native-cni-first",
    "90-istio-legacy-first",
    "91-istio-legacy-cni-first",
    "92-rolebridge-first-then-istio-native",
    "93-rolebridge-first-then-istio-legacy",
    "95-binding-names-istio-proxy",
];

/// The Google service account of every service account of a case that lists none (the golden
/// harness assumes the same).
const DEFAULT_GSA: &str = "app@project.iam.gserviceaccount.com";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../webhook/tests/golden")
}

pub async fn replay(client: &Client, ns: &str, run: &str) -> anyhow::Result<()> {
    for (i, name) in CASES.iter().enumerate() {
        let path = golden_dir().join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let case: Value = serde_norway::from_str(&text)?;
        anyhow::ensure!(
            case.get("config").is_none(),
            "{name}: a case with a config block cannot be replayed against default flags"
        );
        let case_ns = format!("{ns}-g{i}");
        replay_case(client, &case, &case_ns, run)
            .await
            .map_err(|e| anyhow::anyhow!("golden case {name} (namespace {case_ns}): {e:#}"))?;
    }
    Ok(())
}

async fn replay_case(client: &Client, case: &Value, ns: &str, run: &str) -> anyhow::Result<()> {
    let ssa = PatchParams::apply("rolebridge-e2e").force();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"rolebridge-e2e": run}}})),
        )
        .await?;
    let mut pod = case["pod"].clone();
    anyhow::ensure!(pod.is_object(), "only inline pods are replayed");
    set_namespace(&mut pod, ns);

    let bindings = case["bindings"].as_array().cloned().unwrap_or_default();
    create_service_accounts(client, case, &bindings, &pod, ns).await?;
    let arbs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &resource(
            "rolebridge.io",
            "v1alpha1",
            "AWSRoleBinding",
            "awsrolebindings",
        ),
    );
    for mut binding in bindings {
        set_namespace(&mut binding, ns);
        arbs.create(&PostParams::default(), &serde_json::from_value(binding)?)
            .await?;
    }

    let pods: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &resource("", "v1", "Pod", "pods"));
    let created = pods
        .create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await;
    let expect = &case["expect"];
    match (expect["outcome"].as_str(), created) {
        (Some("denied"), Err(e)) => {
            let message = e.to_string();
            for want in expect["denial"].as_array().into_iter().flatten() {
                let want = want.as_str().unwrap_or_default();
                anyhow::ensure!(message.contains(want), "denial {message:?} lacks {want:?}");
            }
            Ok(())
        }
        (Some("denied"), Ok(_)) => anyhow::bail!("the API server stored a pod the case denies"),
        (_, Err(e)) => Err(e.into()),
        (outcome, Ok(stored)) => {
            let stored = serde_json::to_value(stored)?;
            let mut want = if outcome == Some("mutated") {
                expect["pod"].clone()
            } else {
                case["pod"].clone()
            };
            set_namespace(&mut want, ns);
            let mut diff = Vec::new();
            within("", &want, &stored, &mut diff);
            anyhow::ensure!(
                diff.is_empty(),
                "stored pod differs from the golden case:\n{}",
                diff.join("\n")
            );
            Ok(())
        }
    }
}

/// The case's service accounts: without automounted API tokens, so the API server adds no
/// volume the case does not expect; as the case lists them, else every one it names with the
/// Google service account a bound service account has.
async fn create_service_accounts(
    client: &Client,
    case: &Value,
    bindings: &[Value],
    pod: &Value,
    ns: &str,
) -> anyhow::Result<()> {
    let ssa = PatchParams::apply("rolebridge-e2e").force();
    let service_accounts: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &resource("", "v1", "ServiceAccount", "serviceaccounts"),
    );
    let accounts: Vec<(String, Option<String>)> = match case.get("serviceAccounts") {
        Some(listed) => listed
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, gsa)| (name.clone(), gsa.as_str().map(str::to_owned)))
            .collect(),
        None => {
            let mut names: Vec<String> = bindings
                .iter()
                .filter_map(|b| b["spec"]["serviceAccountName"].as_str().map(str::to_owned))
                .collect();
            names.push(pod_service_account(pod));
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|n| (n, Some(DEFAULT_GSA.to_owned())))
                .collect()
        }
    };
    for (sa, gsa) in accounts {
        let mut object = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa}, "automountServiceAccountToken": false});
        if let Some(gsa) = gsa {
            object["metadata"]["annotations"] = json!({"iam.gke.io/gcp-service-account": gsa});
        }
        service_accounts
            .patch(&sa, &ssa, &Patch::Apply(&object))
            .await?;
    }
    Ok(())
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn set_namespace(object: &mut Value, ns: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(ns.into()));
    }
}

fn pod_service_account(pod: &Value) -> String {
    let spec = &pod["spec"];
    [&spec["serviceAccountName"], &spec["serviceAccount"]]
        .into_iter()
        .filter_map(Value::as_str)
        .find(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned()
}

/// Records where `want` is not within `got`: objects may have more keys in `got` (the API
/// server's defaults), arrays and scalars must match exactly in length, order and value.
fn within(path: &str, want: &Value, got: &Value, diff: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}/{k}");
                match g.get(k) {
                    Some(gv) => within(&p, wv, gv, diff),
                    None => diff.push(format!("  {p}: missing (want {wv})")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                within(&format!("{path}/{i}"), wv, gv, diff);
            }
        }
        _ if want == got => {}
        _ => diff.push(format!("  {path}: want {want}, stored {got}")),
    }
}
