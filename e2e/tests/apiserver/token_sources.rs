//! Issue 14 on a real API server: `spec.tokenSource` and the Google pin.
//!
//! - The CRD takes `tokenSource: Kubernetes`, refuses any other value, and defaults to Google.
//! - A Kubernetes-source pod gets the projected token volume and no agent; a token the API
//!   server itself issues for that service account and audience (TokenRequest, bound to the
//!   pod, as the kubelet asks for it) federates an unmodified boto3 that has only the pod's
//!   injected environment, against moto; `iss`, `sub` and `aud` are read from what STS received.
//!   The binding's Ready message names `system:serviceaccount:…` and the issuer the API server
//!   publishes.
//! - A Google-source pod is pinned to its service account's Google service account (also one
//!   created a moment before the pod); one without the annotation is admitted with the advice
//!   and pinned to `none`.
//! - Host network: Google is denied (pointing to tokenSource: Kubernetes), Kubernetes allowed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use rolebridge_e2e::support::{
    BUCKET, CleanAwsHome, Moto, OBJECT_BODY, OBJECT_KEY, Peers, ROLE_ARN, assumed_role_arn, claims,
    expect_success, run_with_timeout, sdk_file,
};
use serde_json::{Value, json};

use super::{MANAGER, binding, env_names, pod, wait_for};

const PROJECTED: &str = "rolebridge-kubernetes-token";
const TOKEN_FILE: &str = "/var/run/secrets/kubernetes.rolebridge.io/sts.amazonaws.com.token";
const GSA: &str = "app@project.iam.gserviceaccount.com";

pub(super) async fn scenario(
    client: &Client,
    bindings: &Api<DynamicObject>,
    pods: &Api<Pod>,
    ns: &str,
) -> anyhow::Result<()> {
    crd_takes_token_source(bindings).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let ssa = PatchParams::apply(MANAGER).force();
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "k8s-sa"}});
    sas.patch("k8s-sa", &ssa, &Patch::Apply(&sa)).await?;
    let create = |v: Value| {
        let bindings = bindings.clone();
        async move {
            let obj: DynamicObject = serde_json::from_value(v)?;
            bindings.create(&PostParams::default(), &obj).await?;
            anyhow::Ok(())
        }
    };
    create(binding(
        "k8s-reader",
        "k8s-sa",
        ROLE_ARN,
        json!({"tokenSource": "Kubernetes", "region": "us-east-1"}),
    ))
    .await?;
    kubernetes_status(client, bindings, ns).await?;
    let stored = kubernetes_pod(pods).await?;
    federate_boto3(client, &stored, ns).await?;
    google_pin(client, &sas, pods, ns, create).await?;
    host_network(pods).await
}

/// The API server validates and defaults the field.
async fn crd_takes_token_source(bindings: &Api<DynamicObject>) -> anyhow::Result<()> {
    let nope: DynamicObject = serde_json::from_value(binding(
        "bad-source",
        "app-sa",
        "arn:aws:iam::123456789012:role/x",
        json!({"tokenSource": "Nope"}),
    ))?;
    let err = bindings
        .create(&PostParams::default(), &nope)
        .await
        .expect_err("tokenSource: Nope must be rejected by the API server");
    anyhow::ensure!(
        format!("{err}").contains("tokenSource") && format!("{err}").contains("Nope"),
        "unexpected rejection: {err}"
    );
    let defaulted = bindings.get("s3-reader").await?;
    anyhow::ensure!(
        defaulted.data["spec"]["tokenSource"] == "Google",
        "tokenSource not defaulted: {}",
        defaulted.data["spec"]
    );
    Ok(())
}

/// The issuer the API server publishes, as the webhook discovers it.
async fn published_issuer(client: &Client) -> anyhow::Result<String> {
    let doc = client
        .request_text(hyper::Request::get("/.well-known/openid-configuration").body(Vec::new())?)
        .await?;
    let doc: Value = serde_json::from_str(&doc)?;
    doc["issuer"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no issuer in {doc}"))
}

/// Ready, naming the identity AWS sees: no Google service account is needed.
async fn kubernetes_status(
    client: &Client,
    bindings: &Api<DynamicObject>,
    ns: &str,
) -> anyhow::Result<()> {
    let issuer = published_issuer(client).await?;
    let want = format!("system:serviceaccount:{ns}:k8s-sa, issued by {issuer}");
    let ready = wait_for("status of k8s-reader", Duration::from_secs(30), || async {
        let obj = bindings.get("k8s-reader").await.ok()?;
        let ready = obj.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (ready["status"] == "True").then_some(ready)
    })
    .await;
    anyhow::ensure!(
        ready["reason"] == "Bound" && ready["message"].as_str().is_some_and(|m| m.contains(&want)),
        "Ready of k8s-reader should name {want:?}: {ready:#}"
    );
    Ok(())
}

/// No agent, the projected token volume, the web identity variables pointing into it.
async fn kubernetes_pod(pods: &Api<Pod>) -> anyhow::Result<Value> {
    let stored = serde_json::to_value(
        pods.create(&PostParams::default(), &pod("k8s-pod", "k8s-sa", json!({})))
            .await?,
    )?;
    let spec = &stored["spec"];
    anyhow::ensure!(spec.get("initContainers").is_none(), "an agent: {spec:#}");
    let volume = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == PROJECTED)
        .ok_or_else(|| anyhow::anyhow!("no projected volume: {spec:#}"))?;
    let source = &volume["projected"]["sources"][0]["serviceAccountToken"];
    anyhow::ensure!(
        source["audience"] == "sts.amazonaws.com"
            && source["expirationSeconds"] == 3600
            && source["path"] == "sts.amazonaws.com.token",
        "projected source: {volume:#}"
    );
    let app = &spec["containers"][0];
    anyhow::ensure!(
        app["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == PROJECTED && m["readOnly"] == true),
        "mount: {app:#}"
    );
    anyhow::ensure!(
        app["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == "AWS_WEB_IDENTITY_TOKEN_FILE" && e["value"] == TOKEN_FILE),
        "env: {app:#}"
    );
    Ok(stored)
}

/// The app container's environment as the kubelet resolves it (values, and the downward API
/// fields the webhook uses).
fn resolved_env(stored: &Value) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in stored["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = e["name"].as_str().unwrap_or_default().to_owned();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(path)) if path == "metadata.name" => stored["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => anyhow::bail!("cannot resolve {e}"),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// A token the API server issues for the pod's service account, audience and lifetime (bound
/// to the pod, as the kubelet requests the projected one).
async fn token_for(client: &Client, stored: &Value, ns: &str) -> anyhow::Result<String> {
    let source = &stored["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == PROJECTED)
        .map(|v| v["projected"]["sources"][0]["serviceAccountToken"].clone())
        .unwrap_or_default();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![source["audience"].as_str().unwrap_or_default().to_owned()],
            expiration_seconds: source["expirationSeconds"].as_i64(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: stored["metadata"]["name"].as_str().map(str::to_owned),
                uid: stored["metadata"]["uid"].as_str().map(str::to_owned),
            }),
        },
        ..TokenRequest::default()
    };
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = stored["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or_default();
    let issued = sas
        .create_token_request(sa, &PostParams::default(), &request)
        .await?;
    Ok(issued.status.map(|s| s.token).unwrap_or_default())
}

/// `unshare`: a private mount namespace in which the token file sits at the very path the pod's
/// environment names (a tmpfs over the nearest existing ancestor), so the environment is used
/// unchanged while this host is left alone.
fn in_private_mount(home: &CleanAwsHome, env: &[(&str, &str)], token: &Path) -> Command {
    let dir = Path::new(TOKEN_FILE).parent().expect("an absolute path");
    let mut base = dir;
    while !base.exists() {
        base = base.parent().expect("/ exists");
    }
    let base = base.canonicalize().expect("an existing path");
    let mut cmd = home.command(Path::new("unshare"), env);
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs rolebridge-e2e "$1" && mkdir -p "$2" && cp "$3" "$4" && shift 4 && exec "$@""#,
        )
        .arg("sh")
        .arg(&base)
        .arg(dir)
        .arg(token)
        .arg(TOKEN_FILE);
    cmd
}

/// An unmodified boto3 with exactly the injected environment (plus moto's endpoint) assumes the
/// role with the API server's token; STS saw the pod's Kubernetes identity.
async fn federate_boto3(client: &Client, stored: &Value, ns: &str) -> anyhow::Result<()> {
    let Some(peers) = Peers::get("apiserver: a Kubernetes token federates boto3") else {
        return Ok(());
    };
    let token = token_for(client, stored, ns).await?;
    let dir = tempfile::tempdir()?;
    let moto = Moto::start_recording(&peers, &dir.path().join("moto-recording"));
    moto.put_test_object(&peers);
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, &token)?;
    let mut env = resolved_env(stored)?;
    env.push(("AWS_ENDPOINT_URL".into(), moto.endpoint.clone()));
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let home = CleanAwsHome::new();
    let mut cmd = in_private_mount(&home, &vars, &token_path);
    cmd.arg(&peers.python)
        .arg(sdk_file("boto3_read.py"))
        .args([BUCKET, OBJECT_KEY]);
    let out = expect_success("boto3", &run_with_timeout(cmd, Duration::from_secs(120)));
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or_default())?;
    let session = stored["metadata"]["name"].as_str().unwrap_or_default();
    anyhow::ensure!(
        v["body"] == OBJECT_BODY
            && v["arn"] == assumed_role_arn(session)
            && v["method"] == "assume-role-with-web-identity",
        "boto3: {v}"
    );
    let calls = moto.recorded(&["AssumeRoleWithWebIdentity"]);
    let call = calls
        .first()
        .ok_or_else(|| anyhow::anyhow!("STS saw no AssumeRoleWithWebIdentity"))?;
    anyhow::ensure!(
        call.get("RoleArn").map(String::as_str) == Some(ROLE_ARN),
        "{call:?}"
    );
    let c = claims(call.get("WebIdentityToken").map_or("", String::as_str))
        .ok_or_else(|| anyhow::anyhow!("not a JWT: {call:?}"))?;
    let issuer = published_issuer(client).await?;
    let sub = format!("system:serviceaccount:{ns}:k8s-sa");
    let aud_ok = c["aud"] == "sts.amazonaws.com"
        || c["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "sts.amazonaws.com"));
    eprintln!(
        "STS received a token of iss {}, sub {}, aud {}",
        c["iss"], c["sub"], c["aud"]
    );
    anyhow::ensure!(
        c["iss"] == issuer.as_str() && c["sub"] == sub.as_str() && aud_ok,
        "STS received iss {}, sub {}, aud {} (want {issuer}, {sub}, sts.amazonaws.com)",
        c["iss"],
        c["sub"],
        c["aud"]
    );
    Ok(())
}

/// The agent's `run` arguments after `--google-service-account`.
fn pin_of(stored: &Value) -> Option<String> {
    let agent = stored["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "rolebridge-agent")?;
    let args = agent["args"].as_array()?;
    let at = args.iter().position(|a| a == "--google-service-account")?;
    args.get(at + 1)?.as_str().map(str::to_owned)
}

/// Creates a pod with a raw request, for the `Warning` headers the API server relays.
async fn create_with_warnings(
    client: &Client,
    ns: &str,
    pod: &Pod,
) -> anyhow::Result<(Value, Vec<String>)> {
    let request = hyper::Request::post(format!("/api/v1/namespaces/{ns}/pods"))
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(pod)?))?;
    let response = client.send(request).await?;
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|h| h.to_str().ok().map(str::to_owned))
        .collect();
    let status = response.status();
    let body = response.into_body().collect_bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((serde_json::from_slice(&body)?, warnings))
}

async fn google_pin<F, Fut>(
    client: &Client,
    sas: &Api<ServiceAccount>,
    pods: &Api<Pod>,
    ns: &str,
    create: F,
) -> anyhow::Result<()>
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // Pinned to the annotation of the service account (step 5's pod).
    let injected = serde_json::to_value(pods.get("injected").await?)?;
    anyhow::ensure!(
        pin_of(&injected).as_deref() == Some(GSA),
        "{:#}",
        injected["spec"]["initContainers"][0]["args"]
    );
    // A service account and binding created a moment before the pod: still pinned.
    let gsa = "fresh@project.iam.gserviceaccount.com";
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "fresh-sa",
        "annotations": {"iam.gke.io/gcp-service-account": gsa}}});
    sas.patch(
        "fresh-sa",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&sa),
    )
    .await?;
    create(binding(
        "fresh",
        "fresh-sa",
        "arn:aws:iam::123456789012:role/fresh",
        json!({}),
    ))
    .await?;
    let fresh = serde_json::to_value(
        pods.create(&PostParams::default(), &pod("fresh", "fresh-sa", json!({})))
            .await?,
    )?;
    anyhow::ensure!(pin_of(&fresh).as_deref() == Some(gsa), "{fresh:#}");
    // No annotation (plain-sa, bound by no-wi): admitted, pinned to none, with the advice.
    let (unpinned, warnings) =
        create_with_warnings(client, ns, &pod("unpinned", "plain-sa", json!({}))).await?;
    anyhow::ensure!(pin_of(&unpinned).as_deref() == Some("none"), "{unpinned:#}");
    anyhow::ensure!(
        warnings
            .iter()
            .any(|w| w.contains("iam.gke.io/gcp-service-account")
                && w.contains("gcloud iam service-accounts add-iam-policy-binding")
                && w.contains("tokenSource: Kubernetes")),
        "warnings: {warnings:#?}"
    );
    Ok(())
}

async fn host_network(pods: &Api<Pod>) -> anyhow::Result<()> {
    let mut google = pod("host-google", "app-sa", json!({}));
    google.spec.as_mut().unwrap().host_network = Some(true);
    let err = pods
        .create(&PostParams::default(), &google)
        .await
        .expect_err("a hostNetwork pod with a Google-source binding must be denied");
    anyhow::ensure!(
        format!("{err}").contains("hostNetwork")
            && format!("{err}").contains("tokenSource: Kubernetes"),
        "{err}"
    );
    let mut k8s = pod("host-k8s", "k8s-sa", json!({}));
    k8s.spec.as_mut().unwrap().host_network = Some(true);
    let stored = serde_json::to_value(pods.create(&PostParams::default(), &k8s).await?)?;
    let env = env_names(&stored["spec"]["containers"][0]);
    anyhow::ensure!(
        stored["spec"].get("initContainers").is_none()
            && env.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{stored:#}"
    );
    Ok(())
}
