//! rolebridge-webhook against a real Kubernetes API server.
//!
//! Given `ROLEBRIDGE_E2E_KUBECONFIG` (a kind cluster, a bare kube-apiserver, any conformant API
//! server), this installs the CRD, runs the webhook binary out of cluster, registers a
//! MutatingWebhookConfiguration by `url` with the test CA as `caBundle`, and checks what the
//! API server stores. Only namespaces labelled with this run's id are intercepted, so the test
//! cannot disturb anything else on the cluster. Pods never need to run: the assertions are on
//! stored objects, so no nodes are required.
//!
//! The API server must reach the webhook: `ROLEBRIDGE_E2E_WEBHOOK_HOST` (default 127.0.0.1,
//! right for an API server on this host) is the address it is registered under, e.g. the
//! docker bridge gateway for a kind cluster.
//!
//!   ROLEBRIDGE_E2E_KUBECONFIG=~/.kube/disposable cargo test -p rolebridge-e2e --test apiserver -- --ignored

use std::net::{IpAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{Value, json};

const MANAGER: &str = "rolebridge-e2e";

struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(host: IpAddr) -> u16 {
    StdListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn webhook_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ROLEBRIDGE_WEBHOOK_BIN") {
        return p.into();
    }
    // target/<profile>/deps/apiserver-… → target/<profile>/rolebridge-webhook
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("rolebridge-webhook");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "rolebridge-webhook"])
            .status()
            .unwrap();
        assert!(status.success(), "building rolebridge-webhook");
    }
    bin
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn binding(name: &str, sa: &str, arn: &str, extra: Value) -> Value {
    let mut spec = json!({"serviceAccountName": sa, "roleArn": arn});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    json!({"apiVersion": "rolebridge.io/v1alpha1", "kind": "AWSRoleBinding",
           "metadata": {"name": name}, "spec": spec})
}

/// The names of a stored container's environment variables.
fn env_names(container: &Value) -> Vec<&str> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

fn pod(name: &str, sa: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "serviceAccountName": sa,
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        }
    }))
    .unwrap()
}

// Ignored, not passed, where no API server is given: cargo's summary then shows it as not run.
// scripts/test.sh runs it with `--ignored` when ROLEBRIDGE_E2E_KUBECONFIG is set.
#[tokio::test]
#[ignore = "needs a real Kubernetes API server: set ROLEBRIDGE_E2E_KUBECONFIG to a disposable cluster's kubeconfig and run with --ignored"]
async fn webhook_against_a_real_api_server() {
    let kubeconfig = std::env::var_os("ROLEBRIDGE_E2E_KUBECONFIG").expect(
        "ROLEBRIDGE_E2E_KUBECONFIG must name a kubeconfig of a disposable cluster for this suite",
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("reading the kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    let client = Client::try_from(config).expect("client");
    let run = format!(
        "{:x}",
        std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
    );
    let ns = format!("rolebridge-e2e-{run}");
    let mwc_name = format!("rolebridge-e2e-{run}");

    let result = scenario(&client, &kubeconfig, &ns, &mwc_name, &run).await;

    // Best-effort cleanup, whatever happened.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = mwcs.delete(&mwc_name, &DeleteParams::default()).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

async fn scenario(
    client: &Client,
    kubeconfig: &std::ffi::OsStr,
    ns: &str,
    mwc_name: &str,
    run: &str,
) -> anyhow::Result<()> {
    let ssa = PatchParams::apply(MANAGER).force();

    // 1. The CRD, exactly as committed.
    let crd_yaml = include_str!("../../crds/awsrolebinding.yaml");
    let crd: CustomResourceDefinition = serde_norway::from_str(crd_yaml)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("awsrolebindings.rolebridge.io", &ssa, &Patch::Apply(&crd))
        .await?;
    wait_for(
        "the CRD to be established",
        Duration::from_secs(30),
        || async {
            let crd = crds.get("awsrolebindings.rolebridge.io").await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(Value::Null)
        },
    )
    .await;

    // 2. Certificates and the webhook process.
    let host: IpAddr = std::env::var("ROLEBRIDGE_E2E_WEBHOOK_HOST")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rolebridge e2e CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(host)];
    let cert = params.signed_by(&key, &issuer)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("tls.crt"), cert.pem())?;
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem())?;

    let port = free_port(host);
    let admin_port = free_port("127.0.0.1".parse()?);
    let listen = if host.is_loopback() {
        host.to_string()
    } else {
        "0.0.0.0".into()
    };
    let _webhook = Webhook(
        Command::new(webhook_binary())
            .args(["serve", "--listen", &format!("{listen}:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .args(["--namespace", "rolebridge-system", "--sidecar-mode", "auto"])
            .args(["--agent-image", "example.com/rolebridge-agent:e2e"])
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    wait_for(
        "the webhook to be ready",
        Duration::from_secs(60),
        || async {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", admin_port)).ok()?;
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).ok()?;
            reply.starts_with("HTTP/1.0 200").then_some(Value::Null)
        },
    )
    .await;

    // 3. The test namespace, intercepted by a webhook configuration of this run only.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.patch(
        ns,
        &ssa,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"rolebridge-e2e": run}}})),
    )
    .await?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca.pem());
    let mwc = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": mwc_name},
        "webhooks": [{
            "name": "pods.rolebridge.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://{host}:{port}/mutate"), "caBundle": ca_bundle},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"rolebridge-e2e": run}},
        }],
    });
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    mwcs.patch(mwc_name, &ssa, &Patch::Apply(&mwc)).await?;

    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    for (name, gsa) in [
        ("app-sa", true),
        ("plain-sa", false),
        ("conflict-sa", true),
        ("chain-sa", true),
        ("default", false),
    ] {
        let mut sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        if gsa {
            sa["metadata"]["annotations"] =
                json!({"iam.gke.io/gcp-service-account": "app@project.iam.gserviceaccount.com"});
        }
        sas.patch(name, &ssa, &Patch::Apply(&sa)).await?;
    }

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rolebridge.io", "v1alpha1", "AWSRoleBinding"),
        "awsrolebindings",
    );
    let bindings: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let create = |v: Value| {
        let bindings = bindings.clone();
        async move {
            let obj: DynamicObject = serde_json::from_value(v).expect("a DynamicObject");
            bindings.create(&PostParams::default(), &obj).await
        }
    };

    // 4. The API server itself rejects a malformed ARN.
    let err = create(binding(
        "bad-arn",
        "app-sa",
        "arn:aws:iam::123:role/x",
        json!({}),
    ))
    .await
    .expect_err("a malformed roleArn must be rejected by the API server");
    anyhow::ensure!(
        format!("{err}").contains("roleArn"),
        "unexpected rejection: {err}"
    );

    // 5. A binding created a moment before its pod is honoured.
    create(binding(
        "s3-reader",
        "app-sa",
        "arn:aws:iam::123456789012:role/s3-reader",
        json!({"region": "eu-west-1"}),
    ))
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let stored = pods
        .create(
            &PostParams::default(),
            &pod("injected", "app-sa", json!({})),
        )
        .await?;
    let stored = serde_json::to_value(&stored)?;
    let spec = &stored["spec"];
    anyhow::ensure!(
        spec["initContainers"][0]["name"] == "rolebridge-agent",
        "no agent: {spec:#}"
    );
    let app = &spec["containers"][0];
    let env = env_names(app);
    for want in [
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_SESSION_NAME",
        "AWS_REGION",
    ] {
        anyhow::ensure!(env.contains(&want), "{want} missing from {env:?}");
    }
    anyhow::ensure!(
        spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == "rolebridge-token"),
        "token volume missing"
    );
    anyhow::ensure!(
        stored["metadata"]["annotations"]["rolebridge.io/bindings"] == "app=s3-reader",
        "annotation: {}",
        stored["metadata"]["annotations"]
    );

    // 6. A dry-run create is mutated the same way and stores nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let preview = pods.create(&dry, &pod("dry", "app-sa", json!({}))).await?;
    anyhow::ensure!(
        preview
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some(),
        "dry run not mutated"
    );
    anyhow::ensure!(pods.get_opt("dry").await?.is_none(), "dry run stored a pod");

    // 7. Unbound service account: unchanged.
    let plain = pods
        .create(
            &PostParams::default(),
            &pod("unbound", "default", json!({})),
        )
        .await?;
    anyhow::ensure!(
        plain.spec.unwrap().init_containers.is_none(),
        "unbound pod was mutated"
    );

    // 8. An annotation cannot select a role that is not bound.
    let err = pods
        .create(
            &PostParams::default(),
            &pod("sneaky", "app-sa", json!({"rolebridge.io/role": "admin"})),
        )
        .await
        .expect_err("an unbound role annotation must be denied");
    anyhow::ensure!(
        format!("{err}").contains("s3-reader"),
        "denial should name the allowed binding: {err}"
    );

    // 9. Conflicts: both bindings get a Conflict condition and pods are denied.
    for name in ["conflict-a", "conflict-b"] {
        create(binding(
            name,
            "conflict-sa",
            "arn:aws:iam::123456789012:role/c",
            json!({}),
        ))
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = pods
        .create(
            &PostParams::default(),
            &pod("conflicted", "conflict-sa", json!({})),
        )
        .await
        .expect_err("a conflict must deny the pod");
    anyhow::ensure!(
        format!("{err}").contains("conflict-a") && format!("{err}").contains("conflict-b"),
        "{err}"
    );

    // 10. Status conditions.
    create(binding(
        "no-wi",
        "plain-sa",
        "arn:aws:iam::123456789012:role/p",
        json!({}),
    ))
    .await?;
    create(binding(
        "no-sa",
        "missing-sa",
        "arn:aws:iam::123456789012:role/m",
        json!({}),
    ))
    .await?;
    for (name, status, reason) in [
        ("s3-reader", "True", "Bound"),
        ("conflict-a", "False", "Conflict"),
        ("conflict-b", "False", "Conflict"),
        ("no-wi", "False", "WorkloadIdentityNotConfigured"),
        ("no-sa", "False", "ServiceAccountNotFound"),
    ] {
        wait_for(
            &format!("status of {name}"),
            Duration::from_secs(30),
            || async {
                let obj = bindings.get(name).await.ok()?;
                let ready = obj.data["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?
                    .clone();
                (ready["status"] == status && ready["reason"] == reason).then_some(ready)
            },
        )
        .await;
    }

    // 11. Role chains, session durations and tags (issue 7).
    chained_bindings(client, &bindings, &pods, ns).await
}

const CHAINED_RULE_MESSAGE: &str = "durationSeconds must be at most 3600 when chain is set: STS caps a chained role session at one hour";

/// The API server validates the new fields as documented (schema and CEL rule), a chained
/// binding's pods get the credentials endpoint, and `kubectl get arb` shows the final role.
async fn chained_bindings(
    client: &Client,
    bindings: &Api<DynamicObject>,
    pods: &Api<Pod>,
    ns: &str,
) -> anyhow::Result<()> {
    let identity = "arn:aws:iam::111111111111:role/ci-identity";
    let target = "arn:aws:iam::222222222222:role/docs-writer";
    let create = |name: &str, extra: Value| {
        let obj: DynamicObject =
            serde_json::from_value(binding(name, "chain-sa", identity, extra)).expect("an object");
        let bindings = bindings.clone();
        async move { bindings.create(&PostParams::default(), &obj).await }
    };
    let hop = json!({"roleArn": target});
    for (name, extra, why) in [
        ("too-long", json!({"chain": vec![hop.clone(); 6]}), "chain"),
        (
            "chained-2h",
            json!({"chain": [hop.clone()], "durationSeconds": 7200}),
            CHAINED_RULE_MESSAGE,
        ),
        (
            "too-short",
            json!({"durationSeconds": 899}),
            "durationSeconds",
        ),
        (
            "too-long-session",
            json!({"durationSeconds": 43201}),
            "durationSeconds",
        ),
        (
            "bad-hop",
            json!({"chain": [{"roleArn": "arn:aws:iam::1:role/x"}]}),
            "roleArn",
        ),
        (
            "bad-ext",
            json!({"chain": [{"roleArn": target, "externalId": "a"}]}),
            "externalId",
        ),
        (
            "bad-ext-chars",
            json!({"chain": [{"roleArn": target, "externalId": "has space"}]}),
            "externalId",
        ),
    ] {
        let err = create(name, extra).await.expect_err(&format!(
            "binding {name} must be rejected by the API server"
        ));
        anyhow::ensure!(
            format!("{err}").contains(why),
            "{name}: {err} does not mention {why:?}"
        );
    }
    // Accepted: a chain with an external ID and a session of 15 minutes; a duration alone.
    create(
        "docs",
        json!({"chain": [{"roleArn": target, "externalId": "docs-ext-4711"}],
               "durationSeconds": 900, "containers": ["publish"]}),
    )
    .await?;
    create(
        "long-session",
        json!({"durationSeconds": 43200, "containers": ["other"]}),
    )
    .await?;

    // Status: the final role in status.roleArn and in the Ready message (also: the watch has
    // delivered the binding, so the pod below is admitted from the cache).
    let ready = wait_for("status of docs", Duration::from_secs(30), || async {
        let obj = bindings.get("docs").await.ok()?;
        (obj.data["status"]["roleArn"] == target).then(|| obj.data["status"].clone())
    })
    .await;
    anyhow::ensure!(
        ready["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("act as {target}"))),
        "{ready:#}"
    );
    // A pod gets the endpoint variables, never the web identity ones, and the agent its spec.
    let mut p = pod("publisher", "chain-sa", json!({}));
    p.spec.as_mut().unwrap().containers[0].name = "publish".into();
    let stored = serde_json::to_value(pods.create(&PostParams::default(), &p).await?)?;
    let app = &stored["spec"]["containers"][0];
    let env = env_names(app);
    anyhow::ensure!(
        env.contains(&"AWS_CONTAINER_CREDENTIALS_FULL_URI")
            && env.contains(&"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
            && !env.contains(&"AWS_ROLE_ARN")
            && !env.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE"),
        "endpoint env: {env:?}"
    );
    let agent = &stored["spec"]["initContainers"][0];
    anyhow::ensure!(
        agent["args"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a.as_str().is_some_and(|a| a.contains(target))),
        "agent args lack the chain: {agent:#}"
    );
    anyhow::ensure!(
        stored["metadata"]["annotations"]["rolebridge.io/credentials-port"] == "24118",
        "port annotation: {}",
        stored["metadata"]["annotations"]
    );
    // Its loopback would be the node's: a host-network pod is denied.
    let mut host = pod("host", "chain-sa", json!({}));
    host.spec.as_mut().unwrap().host_network = Some(true);
    host.spec.as_mut().unwrap().containers[0].name = "publish".into();
    let err = pods
        .create(&PostParams::default(), &host)
        .await
        .expect_err("a hostNetwork pod with an endpoint binding must be denied");
    anyhow::ensure!(format!("{err}").contains("hostNetwork"), "{err}");

    // `kubectl get arb`: the Role column shows the final role, IdentityRole (-o wide) roleArn.
    let table = client
        .request_text(
            hyper::Request::get(format!(
                "/apis/rolebridge.io/v1alpha1/namespaces/{ns}/awsrolebindings/docs"
            ))
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(Vec::new())?,
        )
        .await?;
    let table: Value = serde_json::from_str(&table)?;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let role_at = columns
        .iter()
        .position(|c| *c == "Role")
        .ok_or_else(|| anyhow::anyhow!("no Role column: {columns:?}"))?;
    let identity_at = columns
        .iter()
        .position(|c| *c == "IdentityRole")
        .ok_or_else(|| anyhow::anyhow!("no IdentityRole column: {columns:?}"))?;
    let cells = &table["rows"][0]["cells"];
    anyhow::ensure!(
        cells[role_at] == target && cells[identity_at] == identity,
        "table: {table:#}"
    );
    Ok(())
}
