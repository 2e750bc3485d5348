//! `inject` applies exactly the admission mutation to every pod template kind, and leaves
//! everything else byte for byte.

use rolebridge_webhook::admission::inject::{InjectError, inject};
use rolebridge_webhook::admission::mutate::{Config, ServiceAccountState, mutate};
use rolebridge_webhook::bindings::store::Store;
use rolebridge_webhook::domain::convert::{bindings_from_yaml, service_accounts_from_yaml};
use rolebridge_webhook::domain::pod::PodView;
use serde::Deserialize;
use serde_json::{Value, json};

/// A binding and its service account, with the Google service account the agent is pinned to.
const BINDINGS: &str = "
apiVersion: rolebridge.io/v1alpha1
kind: AWSRoleBinding
metadata: {name: reader, namespace: apps}
spec: {serviceAccountName: worker, roleArn: 'arn:aws:iam::123456789012:role/reader'}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: worker
  namespace: apps
  annotations: {iam.gke.io/gcp-service-account: worker@project.iam.gserviceaccount.com}
";

/// The bindings and service accounts of `text`, as `inject --bindings` reads them.
fn store_of(text: &str, namespace: &str) -> Store {
    let store: Store = bindings_from_yaml(text, namespace)
        .unwrap()
        .into_iter()
        .collect();
    for a in service_accounts_from_yaml(text, namespace).unwrap() {
        store.apply_account(&a.namespace, &a.name, a.google_service_account.as_deref());
    }
    store
}

fn store() -> Store {
    store_of(BINDINGS, "apps")
}

fn worker() -> ServiceAccountState {
    ServiceAccountState::WorkloadIdentity("worker@project.iam.gserviceaccount.com".into())
}

fn pod_spec() -> Value {
    json!({"serviceAccountName": "worker", "containers": [{"name": "main", "image": "busybox"}]})
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// What the webhook would do to a pod made from `template`.
fn admitted(template: &Value) -> Value {
    let mut pod = template.clone();
    if pod.get("metadata").is_none() {
        pod["metadata"] = json!({});
    }
    let json = pod.to_string();
    let view = PodView::from_json(&json).unwrap();
    let m = mutate(
        &view,
        "apps",
        &store().bindings_for("apps", "worker").unwrap(),
        &worker(),
        &Config::default(),
    )
    .unwrap();
    json_patch::patch(&mut pod, &m.patch.ops().unwrap()).unwrap();
    pod
}

#[test]
fn every_workload_kind_gets_the_admission_mutation() {
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": pod_spec()});
    let cases: Vec<(Value, &[&str])> = vec![
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "apps"}, "spec": pod_spec()}),
            &[],
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "apps"}, "spec": {"template": template}}),
            &["spec", "template"],
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"}, "spec": {"template": template}}),
            &["spec", "template"],
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds"}, "spec": {"template": template}}),
            &["spec", "template"],
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"}, "spec": {"template": template}}),
            &["spec", "template"],
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": pod_spec()}}}),
            &["spec", "template"],
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}),
            &["spec", "jobTemplate", "spec", "template"],
        ),
    ];
    for (obj, path) in cases {
        let input = serde_norway::to_string(&obj).unwrap();
        let out = inject(&input, &store(), &Config::default(), "apps").unwrap();
        assert_eq!(out.mutated, 1, "{}", obj["kind"]);
        let got = &docs(&out.output)[0];
        let pick = |v: &Value| path.iter().fold(v.clone(), |v, k| v[*k].clone());
        assert_eq!(pick(got), admitted(&pick(&obj)), "{}", obj["kind"]);
        // Everything outside the template is untouched.
        let (mut a, mut b) = (got.clone(), obj.clone());
        if !path.is_empty() {
            let strip = |v: &mut Value| {
                let mut t = v;
                for k in &path[..path.len() - 1] {
                    t = &mut t[*k];
                }
                t.as_object_mut().unwrap().remove(*path.last().unwrap());
            };
            strip(&mut a);
            strip(&mut b);
            assert_eq!(a, b);
        }
        // Injecting the output again changes nothing.
        let again = inject(&out.output, &store(), &Config::default(), "apps").unwrap();
        assert_eq!(again.mutated, 0);
        assert_eq!(again.output, out.output);
    }
}

#[test]
fn other_documents_pass_through_byte_for_byte() {
    let input = "# leading comment\napiVersion: v1\nkind: ConfigMap   # odd spacing kept\nmetadata: {name: c}\ndata: {a: '1'}\n---\n# only a comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other, namespace: elsewhere}\nspec: {template: {spec: {serviceAccountName: worker, containers: [{name: m, image: x}]}}}\n";
    let out = inject(input, &store(), &Config::default(), "apps").unwrap();
    assert_eq!(out.mutated, 0);
    assert_eq!(out.output, input);
}

#[test]
fn lists_and_multi_document_streams() {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": pod_spec()},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}},
    ]});
    let input = format!(
        "{}---\n{}",
        serde_norway::to_string(&list).unwrap(),
        serde_norway::to_string(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"}, "spec": pod_spec()})).unwrap()
    );
    let out = inject(&input, &store(), &Config::default(), "apps").unwrap();
    assert_eq!(out.mutated, 2);
    let d = docs(&out.output);
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["items"][1], list["items"][1]);
    assert_eq!(
        d[0]["items"][0]["spec"]["initContainers"][0]["name"],
        "rolebridge-agent"
    );
}

#[test]
fn a_denial_names_the_object() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"rolebridge.io/role": "admin"}}, "spec": pod_spec()});
    let err = inject(
        &serde_norway::to_string(&pod).unwrap(),
        &store(),
        &Config::default(),
        "apps",
    )
    .unwrap_err();
    assert!(matches!(err, InjectError::Denied { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("Pod apps/p") && msg.contains("reader"),
        "{msg}"
    );
}

#[test]
fn bad_yaml_is_an_error_with_its_document_number() {
    let err = inject("a: 1\n---\nkind: [\n", &store(), &Config::default(), "apps").unwrap_err();
    assert!(err.to_string().starts_with("document 2"), "{err}");
}

/// The command around `inject`: bindings files, stdin, the output and the summary on stderr.
#[test]
fn the_command_reads_files_and_stdin() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: rolebridge_webhook::admission::inject::InjectArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let bindings = dir.path().join("bindings.yaml");
    std::fs::write(&bindings, BINDINGS).unwrap();
    let cmd = Cmd::try_parse_from([
        "inject",
        "--bindings",
        bindings.to_str().unwrap(),
        "--namespace",
        "apps",
    ])
    .unwrap();
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec()});
    let input = serde_norway::to_string(&pod).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let injected = rolebridge_webhook::admission::inject::run(
        &cmd.args,
        &mut input.as_bytes(),
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!(injected.mutated, 1);
    assert_eq!(String::from_utf8(out).unwrap(), injected.output);
    assert_eq!(
        String::from_utf8(err).unwrap(),
        "injected 1 pod template(s)\n"
    );

    let missing = Cmd::try_parse_from(["inject", "--bindings", "/nonexistent/b.yaml"]).unwrap();
    let e = rolebridge_webhook::admission::inject::run(
        &missing.args,
        &mut &b""[..],
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("reading --bindings /nonexistent/b.yaml"),
        "{e}"
    );
}

/// `inject` renders the credentials-endpoint delivery exactly as admission does.
#[test]
fn inject_renders_the_credentials_endpoint() {
    let bindings = "
apiVersion: rolebridge.io/v1alpha1
kind: AWSRoleBinding
metadata: {name: docs, namespace: ci}
spec:
  serviceAccountName: publisher
  roleArn: arn:aws:iam::111111111111:role/ci-identity
  chain: [{roleArn: 'arn:aws:iam::222222222222:role/docs-writer', externalId: docs-ext-4711}]
  durationSeconds: 900
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: publisher, annotations: {iam.gke.io/gcp-service-account: ci@project.iam.gserviceaccount.com}}
";
    let store = store_of(bindings, "ci");
    let cfg = Config {
        cluster_name: Some("prod".into()),
        ..Config::default()
    };
    let spec = json!({"serviceAccountName": "publisher", "containers": [{"name": "publish", "image": "p"}]});
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "docs", "namespace": "ci"},
        "spec": {"template": {"spec": spec}}});
    let out = inject(&serde_norway::to_string(&job).unwrap(), &store, &cfg, "ci").unwrap();
    assert_eq!(out.mutated, 1);
    let template = docs(&out.output)[0]["spec"]["template"].clone();

    let mut pod = job["spec"]["template"].clone();
    pod["metadata"] = json!({});
    let text = pod.to_string();
    let view = PodView::from_json(&text).unwrap();
    let m = mutate(
        &view,
        "ci",
        &store.bindings_for("ci", "publisher").unwrap(),
        &store.service_account("ci", "publisher"),
        &cfg,
    )
    .unwrap();
    json_patch::patch(&mut pod, &m.patch.ops().unwrap()).unwrap();
    assert_eq!(template, pod);

    let env = &template["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["name"], "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    assert_eq!(
        env[0]["value"],
        "http://127.0.0.1:24118/v1/credentials/docs"
    );
    let agent = &template["spec"]["initContainers"][0];
    assert!(
        agent["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--credentials")
    );
    assert!(
        agent["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "ROLEBRIDGE_CLUSTER_NAME" && e["value"] == "prod")
    );
    // Injecting the output again changes nothing.
    let again = inject(&out.output, &store, &cfg, "ci").unwrap();
    assert_eq!(again.mutated, 0);
}

/// Google-source pods are pinned to the Google service account of their ServiceAccount: from
/// the manifests themselves (which win), else from a --bindings file; a pod whose
/// ServiceAccount is in neither is an error naming it, never an unpinned agent.
#[test]
fn the_pin_comes_from_the_manifests_or_the_bindings_files() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "apps"}, "spec": pod_spec()});
    let pod_yaml = serde_norway::to_string(&pod).unwrap();
    let pin_of = |out: &str| {
        let d = docs(out);
        let pod = d.iter().find(|d| d["kind"] == "Pod").unwrap();
        let args: Vec<String> = pod["spec"]["initContainers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let at = args
            .iter()
            .position(|a| a == "--google-service-account")
            .expect("pinned");
        args[at + 1].clone()
    };
    let out = inject(&pod_yaml, &store(), &Config::default(), "apps").unwrap();
    assert_eq!(
        pin_of(&out.output),
        "worker@project.iam.gserviceaccount.com"
    );

    // The manifests' own ServiceAccount (listed after the pod) wins over the bindings file's.
    let with_sa = format!(
        "{pod_yaml}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: worker, namespace: apps, annotations: {{iam.gke.io/gcp-service-account: other@project.iam.gserviceaccount.com}}}}\n"
    );
    let out = inject(&with_sa, &store(), &Config::default(), "apps").unwrap();
    assert_eq!(pin_of(&out.output), "other@project.iam.gserviceaccount.com");
    // One without the annotation: pinned to nothing, with the advice.
    let bare = format!(
        "{pod_yaml}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: worker, namespace: apps}}\n"
    );
    let out = inject(&bare, &store(), &Config::default(), "apps").unwrap();
    assert_eq!(pin_of(&out.output), "none");
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("iam.gke.io/gcp-service-account")
                && w.contains("gcloud iam service-accounts add-iam-policy-binding")),
        "{:?}",
        out.warnings
    );

    // Neither: an error naming the ServiceAccount, and nothing rendered.
    let unknown = store_of(BINDINGS.split("---").next().unwrap(), "apps");
    let err = inject(&pod_yaml, &unknown, &Config::default(), "apps").unwrap_err();
    assert!(matches!(err, InjectError::Denied { .. }), "{err}");
    let msg = err.to_string();
    for want in ["ServiceAccount apps/worker", "--bindings", "Pod apps/p"] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
}

/// A Kubernetes-source binding renders no agent and no Google pin: the projected token only,
/// exactly as admission does, and needs no ServiceAccount document.
#[test]
fn kubernetes_source_needs_no_agent_and_no_service_account() {
    // BINDINGS' binding with tokenSource: Kubernetes, and without its ServiceAccount.
    let bindings = BINDINGS
        .split("---")
        .next()
        .unwrap()
        .replace("role/reader'}", "role/reader', tokenSource: Kubernetes}");
    assert!(bindings.contains("tokenSource"));
    let store = store_of(&bindings, "apps");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "apps"}, "spec": pod_spec()});
    let out = inject(
        &serde_norway::to_string(&pod).unwrap(),
        &store,
        &Config::default(),
        "apps",
    )
    .unwrap();
    assert_eq!(out.mutated, 1);
    let got = &docs(&out.output)[0];
    assert!(got["spec"].get("initContainers").is_none(), "{got:#}");
    assert_eq!(
        got["spec"]["volumes"],
        json!([{"name": "rolebridge-kubernetes-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 3600,
                "path": "sts.amazonaws.com.token"}}]}}])
    );
    assert_eq!(
        got["spec"]["containers"][0]["env"][1],
        json!({"name": "AWS_WEB_IDENTITY_TOKEN_FILE",
            "value": "/var/run/secrets/kubernetes.rolebridge.io/sts.amazonaws.com.token"})
    );
    let again = inject(&out.output, &store, &Config::default(), "apps").unwrap();
    assert_eq!(again.mutated, 0);
}
