//! The node watch of `--sidecar-mode auto` against the stub API server: it lists the nodes in
//! pages, follows node pools joining, upgrading and leaving, publishes the lowest kubelet only
//! when it changes, and relists after an outage that hid a deletion.

mod support;

use std::time::{Duration, Instant};

use tokio::sync::watch;

use rolebridge_webhook::bindings::nodes::{KubeVersion, LowestKubelet, watch_lowest_kubelet};
use support::apiserver::StubApi;

fn lowest(major: u32, minor: u32, node: &str) -> LowestKubelet {
    LowestKubelet::Version {
        version: Some(KubeVersion { major, minor }),
        node: node.into(),
    }
}

/// Waits until the published value is `want`.
async fn published(rx: &mut watch::Receiver<LowestKubelet>, want: LowestKubelet) {
    let started = Instant::now();
    loop {
        if *rx.borrow_and_update() == want {
            return;
        }
        let left = Duration::from_secs(20).saturating_sub(started.elapsed());
        let changed = tokio::time::timeout(left, rx.changed()).await;
        assert!(
            matches!(changed, Ok(Ok(()))),
            "not published: {want:?}, still {:?}",
            *rx.borrow()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lowest_kubelet_follows_the_node_pools() {
    let stub = StubApi::start().await;
    // More nodes than one list page.
    for i in 0..250 {
        stub.put_node(&format!("gke-new-{i:03}"), "v1.30.5-gke.1014001");
    }
    stub.compact();
    let mut rx = watch_lowest_kubelet(stub.client());
    published(&mut rx, lowest(1, 30, "gke-new-000")).await;
    assert!(stub.stats().lists >= 3, "250 nodes take three pages");

    // An old pool joins: it decides, whichever node of it is reported.
    stub.put_node("gke-old-1", "v1.28.15-gke.1020000");
    stub.put_node("gke-old-2", "v1.28.15-gke.1020000");
    published(&mut rx, lowest(1, 28, "gke-old-1")).await;
    // Heartbeats and the first old node leaving change nothing worth publishing.
    for i in 0..50 {
        stub.put_node(&format!("gke-new-{i:03}"), "v1.30.5-gke.1014001");
    }
    stub.delete_node("gke-old-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rx.has_changed().unwrap(), "{:?}", *rx.borrow());

    // The last old node is deleted while the watch is away and its history compacted: the
    // relist that follows the 410 finds it gone.
    stub.outage();
    stub.delete_node("gke-old-2");
    stub.restore().await;
    published(&mut rx, lowest(1, 30, "gke-new-000")).await;

    // A kubelet whose version does not parse counts as the oldest.
    stub.put_node("virtual-node", "v-unknown");
    published(
        &mut rx,
        LowestKubelet::Version {
            version: None,
            node: "virtual-node".into(),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_nodes_is_listed_not_unknown() {
    let stub = StubApi::start().await;
    let mut rx = watch_lowest_kubelet(stub.client());
    published(&mut rx, LowestKubelet::NoNodes).await;
    stub.put_node("gke-first", "v1.33.0");
    published(&mut rx, lowest(1, 33, "gke-first")).await;
}
