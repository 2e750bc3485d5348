//! `--sidecar-mode auto` follows the nodes, not only the API server: a node whose kubelet
//! predates native sidecars (1.29) turns new pods to the legacy layout, and its removal turns
//! them back. There is no kubelet here: a Node object created through the API server carries
//! the `status.nodeInfo.kubeletVersion` the webhook reads, exactly as a registered node would.
//! Runs last in the suite: every other check expects native sidecars.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

/// Where the agent sits in what the API server would store for a bound pod: `"native"` (an init
/// container with `restartPolicy: Always`) or `"legacy"` (a regular container).
async fn layout(pods: &Api<Pod>, pod: &Pod) -> Option<&'static str> {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let stored = serde_json::to_value(pods.create(&dry, pod).await.ok()?).ok()?;
    let spec = &stored["spec"];
    let named = |list: &Value| {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "rolebridge-agent")
            .cloned()
    };
    if let Some(agent) = named(&spec["initContainers"]) {
        return (agent["restartPolicy"] == "Always").then_some("native");
    }
    named(&spec["containers"]).map(|_| "legacy")
}

pub async fn sidecar_mode_follows_nodes(
    client: &kube::Client,
    pods: &Api<Pod>,
    bound: &Pod,
    run: &str,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = format!("rolebridge-e2e-old-{run}");
    anyhow::ensure!(
        layout(pods, bound).await == Some("native"),
        "a bound pod must get a native sidecar while every node is new enough"
    );
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"rolebridge-e2e-run": run}},
        "status": {"nodeInfo": {
            "kubeletVersion": "v1.28.15-gke.1020000",
            "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://1.7.0",
            "kernelVersion": "6.1.0", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "linux",
            "osImage": "Container-Optimized OS", "systemUUID": ""}},
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let result = follow(pods, bound, &nodes, &name).await;
    let _ = nodes.delete(&name, &DeleteParams::default()).await;
    result
}

async fn follow(pods: &Api<Pod>, bound: &Pod, nodes: &Api<Node>, name: &str) -> anyhow::Result<()> {
    super::wait_for(
        "a 1.28 node to turn new pods to the legacy layout",
        Duration::from_secs(30),
        || async { (layout(pods, bound).await == Some("legacy")).then_some(Value::Null) },
    )
    .await;
    nodes.delete(name, &DeleteParams::default()).await?;
    super::wait_for(
        "the node's removal to turn new pods back to native sidecars",
        Duration::from_secs(30),
        || async { (layout(pods, bound).await == Some("native")).then_some(Value::Null) },
    )
    .await;
    Ok(())
}
