//! Every call the webhook makes on the API server is one that its RBAC declaration
//! (`bindings::rbac_rules` and `bindings::rbac_non_resource`, which `rolebridge-webhook rbac
//! --json` prints for the Helm chart's check) lists, and every verb it declares is one it calls:
//! the watches, live reads (of bindings and of a service account), the issuer discovery, the
//! status writes, the Lease election and the node watch of `--sidecar-mode auto` run against
//! the stub API server as `serve` runs them.

mod support;

use std::time::{Duration, Instant};

use tokio::sync::watch;

use rolebridge_webhook::bindings::lease::{self, LeaderArgs};
use rolebridge_webhook::bindings::live::{LiveReadLimits, api_live_source};
use rolebridge_webhook::bindings::nodes::{self, LowestKubelet};
use rolebridge_webhook::bindings::{rbac_non_resource, rbac_rules};
use rolebridge_webhook::domain::status::ServiceAccountState;
use support::apiserver::{Calls, ISSUER, Kind, StubApi};

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(20), "not {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_made_are_exactly_the_declared_rbac() {
    let stub = StubApi::start().await;
    stub.populate(20, 2);
    stub.put_node("gke-pool-1", "v1.30.5-gke.1014001");
    // A Kubernetes-source binding: its Ready message names the discovered issuer.
    stub.create_binding(
        "team-000",
        "k8s",
        serde_json::json!({"serviceAccountName": "app-000000", "tokenSource": "Kubernetes",
            "roleArn": "arn:aws:iam::123456789012:role/k8s", "containers": ["k8s"]}),
    );
    let client = stub.client();
    let (stop_tx, stop) = watch::channel(false);
    let leader = LeaderArgs {
        leader_election: true,
        lease_name: "rolebridge-webhook".into(),
    };
    let leadership = lease::start(
        &client,
        &leader,
        "rolebridge",
        lease::Report::default(),
        stop,
    );
    let live = (api_live_source(client.clone()), LiveReadLimits::default());
    let cache = support::run_bindings(client.clone(), Some(live), leadership.clone(), 2);
    let lowest = nodes::watch_lowest_kubelet(client);
    eventually("every status written", || stub.stats().converged == 21).await;
    let message = stub.status_of("team-000", "k8s").unwrap()["conditions"][0]["message"].clone();
    assert!(
        message.as_str().unwrap().contains(&format!(
            "system:serviceaccount:team-000:app-000000, issued by {ISSUER}"
        )),
        "{message}"
    );
    eventually("the nodes listed, then watched", || {
        *lowest.borrow() != LowestKubelet::Unknown
            && stub
                .calls()
                .get(&(String::new(), "nodes".to_owned()))
                .is_some_and(|verbs| verbs.contains("watch"))
    })
    .await;
    // Cache misses: a live read of the namespace's bindings, and of a service account.
    assert!(cache.bindings_for("team-000", "nobody").await.is_none());
    assert_eq!(
        cache.account_for("team-000", "nobody").await,
        ServiceAccountState::Missing
    );
    // A stop releases the Lease it holds.
    assert!(leadership.is_leader());
    stop_tx.send_replace(true);
    eventually("the Lease released", || {
        stub.get(Kind::Lease, "rolebridge", "rolebridge-webhook")
            .is_some_and(|l| l["spec"]["holderIdentity"].is_null())
    })
    .await;

    let declared: Calls = rbac_rules()
        .into_iter()
        .map(|r| {
            let verbs = r.verbs.iter().map(|v| (*v).to_owned()).collect();
            ((r.api_group.to_owned(), r.resource.to_owned()), verbs)
        })
        .collect();
    assert_eq!(stub.calls(), declared);
    let declared: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        rbac_non_resource()
            .into_iter()
            .map(|r| {
                let verbs = r.verbs.iter().map(|v| (*v).to_owned()).collect();
                (r.url.to_owned(), verbs)
            })
            .collect();
    assert_eq!(stub.non_resource_calls(), declared);
}
