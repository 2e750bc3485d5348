//! rolebridge-webhook against a real Kubernetes API server.
//!
//! Given `ROLEBRIDGE_E2E_KUBECONFIG` (a kind cluster, a bare kube-apiserver, any conformant API
//! server), this installs the CRD, runs the webhook binary out of cluster, registers a
//! MutatingWebhookConfiguration by `url` with the test CA as `caBundle`, and checks what the
//! API server stores. Only namespaces labelled with this run's id are intercepted, so the test
//! cannot disturb anything else on the cluster. Pods never need to run: the assertions are on
//! stored objects, so no nodes are required.
//!
//! Two webhook replicas elect a status writer through a Lease in a namespace of their own; a
//! third is started with a `--namespace` that does not exist and must say so (log and metric)
//! instead of stalling silently. Golden cases of the credentials-endpoint and web identity
//! deliveries, both token sources, the Google pin and Istio-injected pods
//! (`webhook/tests/golden/`) are replayed through the API server, and what it stores must be
//! what the golden case says (plus the API server's own defaults). `tokenSource: Kubernetes`
//! is proven end to end: the API server's own token for the pod federates an unmodified boto3
//! against moto (`apiserver/token_sources.rs`).
//!
//! `scripts/apiserver-test.sh` (run by `scripts/test.sh`) starts `../shared/kube`'s
//! kube-apiserver 1.36 for it when no cluster is given.
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
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{Value, json};

#[path = "apiserver/golden.rs"]
mod golden;
#[path = "apiserver/nodes.rs"]
mod nodes;
#[path = "apiserver/token_sources.rs"]
mod token_sources;

const MANAGER: &str = "rolebridge-e2e";

/// A webhook process, killed when dropped.
struct Webhook {
    child: Child,
    admin_port: u16,
    /// Its stderr, for the assertions on what it logs.
    log: std::path::PathBuf,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Captured by the test harness: shown only when the test fails.
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- last lines of {}:", self.log.display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}

impl Webhook {
    /// `/metrics` of its admin port.
    fn metrics(&self) -> Option<String> {
        admin_get(self.admin_port, "/metrics")
    }

    /// The value of the sample `series` (name and labels, as exposed), 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .and_then(|text| metric_value(&text, series))
            .unwrap_or(0.0)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `GET path` on a plain-HTTP admin port: the body of a 200, else `None`.
fn admin_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    if !reply.starts_with("HTTP/1.0 200") && !reply.starts_with("HTTP/1.1 200") {
        return None;
    }
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// How one webhook replica is started.
struct Replica<'a> {
    /// Its HOSTNAME: the Lease holder identity starts with it.
    hostname: &'a str,
    /// `--namespace`: where its status Lease lives.
    namespace: &'a str,
    /// The admission port, or `None` for a replica the API server never calls.
    port: Option<u16>,
}

/// The serving certificate the webhooks share, and the CA the API server trusts.
struct Certs {
    dir: tempfile::TempDir,
    ca_pem: String,
}

fn certificates(host: IpAddr) -> anyhow::Result<Certs> {
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
    Ok(Certs {
        dir,
        ca_pem: ca.pem(),
    })
}

/// Starts a replica with the webhook's default mutation flags (so that golden cases without a
/// `config` describe what it does) and waits until it is ready.
async fn start_webhook(
    replica: Replica<'_>,
    host: IpAddr,
    certs: &Certs,
    kubeconfig: &std::ffi::OsStr,
) -> anyhow::Result<Webhook> {
    let port = match replica.port {
        Some(p) => p,
        None => free_port(host),
    };
    let admin_port = free_port("127.0.0.1".parse()?);
    let listen = if host.is_loopback() {
        host.to_string()
    } else {
        "0.0.0.0".into()
    };
    let log = certs.dir.path().join(format!("{}.log", replica.hostname));
    let stderr = std::fs::File::create(&log)?;
    let child = Command::new(webhook_binary())
        .args(["serve", "--listen", &format!("{listen}:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .arg("--tls-cert")
        .arg(certs.dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.dir.path().join("tls.key"))
        .args(["--namespace", replica.namespace, "--sidecar-mode", "auto"])
        .args(["--log-format", "json"])
        .env("KUBECONFIG", kubeconfig)
        .env("HOSTNAME", replica.hostname)
        .stdout(Stdio::inherit())
        .stderr(stderr)
        .spawn()?;
    let webhook = Webhook {
        child,
        admin_port,
        log,
    };
    wait_for(
        &format!("webhook {} to be ready", replica.hostname),
        Duration::from_secs(60),
        || async { admin_get(admin_port, "/readyz").map(|_| Value::Null) },
    )
    .await;
    Ok(webhook)
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
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("rolebridge-webhook");
    // Always asked for, not only when missing: a binary left from an earlier build would be
    // tested instead of the code at hand (cargo makes this a no-op when it is up to date).
    let mut build = vec!["build", "--locked", "-p", "rolebridge-webhook"];
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.push("--release");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(&build).status().unwrap();
    assert!(status.success(), "building rolebridge-webhook");
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
    for selector in [
        format!("rolebridge-e2e={run}"),
        format!("rolebridge-e2e-run={run}"),
    ] {
        let listed = nss.list(&ListParams::default().labels(&selector)).await;
        for n in listed.map(|l| l.items).unwrap_or_default() {
            let name = n.metadata.name.unwrap_or_default();
            let _ = nss.delete(&name, &DeleteParams::default()).await;
        }
    }
    let node_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let selector = format!("rolebridge-e2e-run={run}");
    if let Ok(listed) = node_api
        .list(&ListParams::default().labels(&selector))
        .await
    {
        for n in listed.items {
            let _ = node_api
                .delete(
                    &n.metadata.name.unwrap_or_default(),
                    &DeleteParams::default(),
                )
                .await;
        }
    }
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

    // 2. Certificates, the webhooks' own namespace and two replicas electing a status writer
    // there; a third replica is told a namespace that does not exist.
    let host: IpAddr = std::env::var("ROLEBRIDGE_E2E_WEBHOOK_HOST")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()?;
    let certs = certificates(host)?;
    let nss: Api<Namespace> = Api::all(client.clone());
    let system_ns = format!("{ns}-system");
    let missing_ns = format!("{ns}-missing");
    nss.patch(
        &system_ns,
        &ssa,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": system_ns, "labels": {"rolebridge-e2e-run": run}}})),
    )
    .await?;
    let port = free_port(host);
    let leader = start_webhook(
        Replica {
            hostname: "replica-a",
            namespace: &system_ns,
            port: Some(port),
        },
        host,
        &certs,
        kubeconfig,
    )
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &system_ns);
    wait_for(
        "replica-a to hold the status Lease",
        Duration::from_secs(30),
        || async {
            let lease = leases.get_opt("rolebridge-webhook").await.ok()??;
            let holder = lease.spec?.holder_identity?;
            holder.starts_with("replica-a_").then_some(Value::Null)
        },
    )
    .await;
    let follower = start_webhook(
        Replica {
            hostname: "replica-b",
            namespace: &system_ns,
            port: None,
        },
        host,
        &certs,
        kubeconfig,
    )
    .await?;
    let stranded = start_webhook(
        Replica {
            hostname: "replica-stranded",
            namespace: &missing_ns,
            port: None,
        },
        host,
        &certs,
        kubeconfig,
    )
    .await?;

    // 3. The test namespace, intercepted by a webhook configuration of this run only.
    nss.patch(
        ns,
        &ssa,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"rolebridge-e2e": run}}})),
    )
    .await?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&certs.ca_pem);
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
            // This run's namespaces: the main one and one per replayed golden case.
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

    // 11. Status was written by the Lease holder only.
    anyhow::ensure!(
        leader.metric("rolebridge_status_leader") == 1.0
            && leader.metric("rolebridge_status_writes_total{result=\"ok\"}") >= 5.0,
        "the leader wrote no status: {:?}",
        leader.metrics()
    );
    anyhow::ensure!(
        follower.metric("rolebridge_status_leader") == 0.0
            && follower
                .metrics()
                .is_some_and(|m| !m.contains("rolebridge_status_writes_total{")),
        "the replica without the Lease wrote status: {:?}",
        follower.metrics()
    );

    // 12. Role chains, session durations and tags (issue 7).
    chained_bindings(client, &bindings, &pods, ns).await?;

    // 13. Token sources and the Google pin (issue 14).
    token_sources::scenario(client, &bindings, &pods, ns).await?;

    // 14. What the API server stores is what the golden cases say.
    golden::replay(client, ns, run).await?;

    // 15. The replica whose --namespace does not exist says so, and heals once it exists.
    stranded_replica(&stranded, &nss, &missing_ns, run).await?;

    // 16. --sidecar-mode auto follows the lowest kubelet among the nodes (last: it flips the
    // layout every other check expects).
    let bound = pod("layout", "app-sa", json!({}));
    nodes::sidecar_mode_follows_nodes(client, &pods, &bound, run).await
}

/// The status writer of a replica told a namespace that does not exist: one error naming the
/// flag and the namespace, repeated with backoff (not every retry period), the
/// `status_leader_blocked` gauge, and healing without a restart once the namespace exists.
async fn stranded_replica(
    stranded: &Webhook,
    nss: &Api<Namespace>,
    missing_ns: &str,
    run: &str,
) -> anyhow::Result<()> {
    let series = "rolebridge_status_leader_blocked{reason=\"namespace_missing\"}";
    wait_for(
        "the stranded replica's blocked gauge",
        Duration::from_secs(30),
        || async { (stranded.metric(series) == 1.0).then_some(Value::Null) },
    )
    .await;
    let errors = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("status Lease"))
            .map(str::to_owned)
            .collect()
    };
    let first = errors(&stranded.log_text());
    anyhow::ensure!(
        !first.is_empty(),
        "no error logged: {}",
        stranded.log_text()
    );
    anyhow::ensure!(
        first[0].contains("--namespace") && first[0].contains(missing_ns),
        "the error must name the flag and the namespace: {}",
        first[0]
    );
    // At a 2 s retry period, 7 s would bring 3 more lines; the backoff (4 s, 8 s...) one at most.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let later = errors(&stranded.log_text());
    anyhow::ensure!(
        later.len() <= first.len() + 1,
        "the error repeats without backoff: {later:#?}"
    );
    anyhow::ensure!(
        stranded.metric("rolebridge_status_leader") == 0.0,
        "a stranded replica cannot lead"
    );

    nss.patch(
        missing_ns,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": missing_ns, "labels": {"rolebridge-e2e-run": run}}})),
    )
    .await?;
    wait_for(
        "the stranded replica to heal once its namespace exists",
        Duration::from_secs(40),
        || async {
            (stranded.metric(series) == 0.0 && stranded.metric("rolebridge_status_leader") == 1.0)
                .then_some(Value::Null)
        },
    )
    .await;
    Ok(())
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
        (
            "bad-tags",
            json!({"chain": [hop.clone()], "sessionTags": "yes"}),
            "sessionTags",
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
    create(
        "untagged",
        json!({"chain": [hop.clone()], "sessionTags": false, "containers": ["quiet"]}),
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
    // sessionTags: false reaches the agent.
    let mut p = pod("quiet", "chain-sa", json!({}));
    p.spec.as_mut().unwrap().containers[0].name = "quiet".into();
    let stored = serde_json::to_value(pods.create(&PostParams::default(), &p).await?)?;
    let args = stored["spec"]["initContainers"][0]["args"].to_string();
    anyhow::ensure!(
        args.contains(r#"\"sessionTags\":false"#),
        "agent args lack sessionTags false: {args}"
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
