//! The lowest kubelet version among the nodes, which `--sidecar-mode auto` decides from.
//!
//! Why the nodes and not only the API server: a native sidecar (an init container with
//! `restartPolicy: Always`) needs the kubelet that runs the pod to know it, which kubelets do by
//! default from 1.29 (`SidecarContainers`). A 1.29+ API server stores such a pod whatever its
//! node runs, and a 1.28 kubelet starts that init container as an ordinary one, which never
//! exits: the pod stays in `Init` for ever. GKE upgrades the control plane before the node
//! pools, so a 1.28 pool under a 1.29+ control plane is a normal state of every upgrade. GKE's
//! own gcs-fuse CSI webhook decides the same way (`supportsNativeSidecar`: the API server and
//! every node's kubelet at 1.29 or newer; no nodes: the API server alone). The rule itself is
//! `SidecarChoice::resolve`; this module only says what the nodes run.
//!
//! What is kept: each node's name and its kubelet's major.minor, nothing else. Node objects are
//! tens of KiB (images, conditions, managed fields): they are parsed past, never held, and
//! listed [`PAGE_SIZE`] at a time. A count of nodes per version makes the lowest the first key,
//! so a node's status heartbeat, which changes none of it, costs a map lookup; the lowest is
//! published only when its version changes, so nodes that come and go in an autoscaled pool
//! wake no one.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::api::Api;
use kube::runtime::watcher;
use serde::Deserialize;
use tokio::sync::watch;

use super::ApiAccess;
use super::watch::{Retry, slim_resource};

/// What the node watch calls: list and watch of every node (cluster-scoped, read-only). Only
/// `--sidecar-mode auto` starts it ([`NODE_WATCH_ONLY_WITH`]).
pub(crate) const NODE_WATCH: ApiAccess = ApiAccess {
    group: "",
    resource: "nodes",
    verbs: &["list", "watch"],
    own_namespace: false,
};

/// The flag setting under which the webhook makes the [`NODE_WATCH`] calls.
pub(crate) const NODE_WATCH_ONLY_WITH: &str = "--sidecar-mode auto";

/// Nodes per list page: a GKE node object is 10-40 KiB of JSON (its image list, managed fields),
/// so kube's default of 500 would buffer up to 20 MiB at once in a webhook with a 128 MiB limit.
const PAGE_SIZE: u32 = 100;

/// A Kubernetes version as far as features go: major.minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

/// The number at the start of `text` (digits only, at least one) and what follows it.
fn leading_number(text: &str) -> Option<(u32, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, rest) = text.split_at(end);
    Some((digits.parse().ok()?, rest))
}

impl KubeVersion {
    /// A kubelet's or an API server's `gitVersion`: `v1.28.15-gke.1020000`, `v1.30.5`, `1.29`.
    /// Anything else is `None`.
    pub fn parse(text: &str) -> Option<KubeVersion> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let (major, rest) = leading_number(text)?;
        let (minor, tail) = leading_number(rest.strip_prefix('.')?)?;
        if !(tail.is_empty() || tail.starts_with(['.', '-', '+'])) {
            return None;
        }
        Some(KubeVersion { major, minor })
    }

    /// The API server's `/version`: `major` and `minor` (GKE and EKS write `"29+"`), else its
    /// `gitVersion`.
    pub fn of_server(info: &Info) -> Option<KubeVersion> {
        match (leading_number(&info.major), leading_number(&info.minor)) {
            (Some((major, _)), Some((minor, _))) => Some(KubeVersion { major, minor }),
            _ => KubeVersion::parse(&info.git_version),
        }
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the node watch knows of the nodes' kubelets, as [`watch_lowest_kubelet`] publishes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LowestKubelet {
    /// The nodes have not been listed yet (or may not be: RBAC). Decide without them.
    #[default]
    Unknown,
    /// Listed, and there are no nodes.
    NoNodes,
    /// The lowest kubelet version among the nodes (`None`: one that does not parse, which
    /// counts as older than any), and one node that runs it (the first by name).
    Version {
        version: Option<KubeVersion>,
        node: String,
    },
}

/// [`LowestKubelet`] without the node's name: a change worth publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Floor {
    Unknown,
    NoNodes,
    Version(Option<KubeVersion>),
}

impl LowestKubelet {
    fn floor(&self) -> Floor {
        match self {
            LowestKubelet::Unknown => Floor::Unknown,
            LowestKubelet::NoNodes => Floor::NoNodes,
            LowestKubelet::Version { version, .. } => Floor::Version(*version),
        }
    }
}

impl fmt::Display for LowestKubelet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LowestKubelet::Unknown => f.write_str("unknown (nodes not listed)"),
            LowestKubelet::NoNodes => f.write_str("none (no nodes)"),
            LowestKubelet::Version {
                version: Some(v),
                node,
            } => write!(f, "{v} (node {node})"),
            LowestKubelet::Version {
                version: None,
                node,
            } => write!(f, "unparsable (node {node})"),
        }
    }
}

/// Every node's kubelet version, and how many nodes run each.
#[derive(Debug, Default)]
pub(crate) struct NodeVersions {
    /// By node name; `None`: the version did not parse.
    by_node: HashMap<Box<str>, Option<KubeVersion>>,
    /// Nodes per version; the first key is the lowest (`None` sorts first).
    counts: BTreeMap<Option<KubeVersion>, usize>,
    /// The nodes of a list in progress. They replace `by_node` when it ends, which drops the
    /// nodes deleted while the watch was away.
    relist: Option<HashMap<Box<str>, Option<KubeVersion>>>,
    listed: bool,
}

impl NodeVersions {
    /// Records a node's version; says whether it is new (a new node, or another version).
    pub(crate) fn apply(&mut self, node: &str, version: Option<KubeVersion>) -> bool {
        let new = self.by_node.get(node) != Some(&version);
        if let Some(relist) = &mut self.relist {
            relist.insert(node.into(), version);
        } else if new {
            if let Some(old) = self.by_node.insert(node.into(), version) {
                self.uncount(old);
            }
            *self.counts.entry(version).or_default() += 1;
        }
        new
    }

    pub(crate) fn delete(&mut self, node: &str) {
        if let Some(relist) = &mut self.relist {
            relist.remove(node);
        }
        if let Some(old) = self.by_node.remove(node) {
            self.uncount(old);
        }
    }

    fn uncount(&mut self, version: Option<KubeVersion>) {
        if let Entry::Occupied(mut count) = self.counts.entry(version) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }

    pub(crate) fn begin_relist(&mut self) {
        self.relist = Some(HashMap::new());
    }

    pub(crate) fn end_relist(&mut self) {
        if let Some(nodes) = self.relist.take() {
            self.counts.clear();
            for version in nodes.values() {
                *self.counts.entry(*version).or_default() += 1;
            }
            self.by_node = nodes;
        }
        self.listed = true;
    }

    /// The lowest version, from the counts alone (during a relist: the previous list's).
    fn floor(&self) -> Floor {
        match (self.listed, self.counts.keys().next()) {
            (false, _) => Floor::Unknown,
            (true, None) => Floor::NoNodes,
            (true, Some(version)) => Floor::Version(*version),
        }
    }

    /// The lowest version and the first node by name that runs it: a scan, so only called when
    /// the lowest version changed.
    pub(crate) fn lowest(&self) -> LowestKubelet {
        match self.floor() {
            Floor::Unknown => LowestKubelet::Unknown,
            Floor::NoNodes => LowestKubelet::NoNodes,
            Floor::Version(version) => {
                let node = self
                    .by_node
                    .iter()
                    .filter(|(_, v)| **v == version)
                    .map(|(name, _)| name)
                    .min()
                    .map_or_else(String::new, |name| name.to_string());
                LowestKubelet::Version { version, node }
            }
        }
    }
}

/// The watch's side: the versions, and where their lowest is published.
struct NodeFeed {
    versions: NodeVersions,
    lowest: watch::Sender<LowestKubelet>,
}

impl NodeFeed {
    fn on_event(&mut self, event: watcher::Event<WatchedNode>) {
        match event {
            watcher::Event::Init => self.versions.begin_relist(),
            watcher::Event::InitApply(node) | watcher::Event::Apply(node) => self.apply(&node),
            watcher::Event::Delete(node) => {
                if let Some(name) = &node.metadata.name {
                    self.versions.delete(name);
                }
            }
            watcher::Event::InitDone => self.versions.end_relist(),
        }
        self.publish();
    }

    fn apply(&mut self, node: &WatchedNode) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        let raw = node.kubelet_version();
        let version = KubeVersion::parse(raw);
        // Logged when first seen (or changed), not on every status heartbeat or relist.
        if self.versions.apply(name, version) && version.is_none() {
            tracing::warn!(
                node = name,
                kubelet_version = raw,
                "kubelet version does not parse; counting the node as too old for native sidecars"
            );
        }
    }

    /// Publishes the lowest version when it changed, not when only the nodes running it did.
    fn publish(&self) {
        let floor = self.versions.floor();
        self.lowest.send_if_modified(|current| {
            if current.floor() == floor {
                return false;
            }
            *current = self.versions.lowest();
            tracing::info!(lowest = %current, nodes = self.versions.by_node.len(),
                "lowest kubelet version among the nodes");
            true
        });
    }
}

/// Starts the node watch, which runs until the process ends, and returns where it publishes the
/// lowest kubelet version: [`LowestKubelet::Unknown`] until the first list has ended.
pub fn watch_lowest_kubelet(client: kube::Client) -> watch::Receiver<LowestKubelet> {
    let (tx, rx) = watch::channel(LowestKubelet::Unknown);
    let nodes: Api<WatchedNode> = Api::all(client);
    let mut feed = NodeFeed {
        versions: NodeVersions::default(),
        lowest: tx,
    };
    // Slower than the binding watches' retry: node versions change over hours, and a webhook
    // not allowed to list nodes (RBAC without them) should say so every 30 s, not every 3.
    let retry = Retry::new(Duration::from_secs(1), Duration::from_secs(30));
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    tokio::spawn(super::watch::run_with(
        "nodes",
        retry,
        move || watcher(nodes.clone(), config.clone()),
        move |event| feed.on_event(event),
    ));
    rx
}

/// A node as the watch keeps it: name and resourceVersion, and its kubelet's version.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WatchedNode {
    #[serde(deserialize_with = "super::cache::slim_metadata")]
    metadata: ObjectMeta,
    #[serde(default)]
    status: Option<SlimStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimStatus {
    #[serde(default)]
    node_info: Option<SlimNodeInfo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimNodeInfo {
    #[serde(default)]
    kubelet_version: Option<String>,
}

impl WatchedNode {
    /// `status.nodeInfo.kubeletVersion`, empty when absent.
    fn kubelet_version(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .and_then(|i| i.kubelet_version.as_deref())
            .unwrap_or("")
    }
}

slim_resource!(WatchedNode, Node);

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32) -> Option<KubeVersion> {
        Some(KubeVersion { major, minor })
    }

    #[test]
    fn kubelet_versions_parse_to_major_minor() {
        assert_eq!(KubeVersion::parse("v1.28.15-gke.1020000"), v(1, 28));
        assert_eq!(KubeVersion::parse("v1.30.5"), v(1, 30));
        assert_eq!(KubeVersion::parse("1.29"), v(1, 29));
        assert_eq!(KubeVersion::parse("v1.29+k3s1"), v(1, 29));
        assert_eq!(KubeVersion::parse(" v1.33.1-eks-b9c9ed7 "), v(1, 33));
        for bad in [
            "",
            "v",
            "1",
            "v1.",
            "v1.x",
            "v1.28beta",
            "vv1.28",
            "latest",
            "v1.99999999999.0",
        ] {
            assert_eq!(KubeVersion::parse(bad), None, "{bad:?}");
        }
        assert!(v(1, 28) < v(1, 29) && v(1, 29) < v(2, 0) && None < v(0, 0));
    }

    #[test]
    fn the_api_server_version_reads_major_minor_then_git_version() {
        let info = |major: &str, minor: &str, git: &str| Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Info::default()
        };
        assert_eq!(KubeVersion::of_server(&info("1", "29+", "")), v(1, 29));
        assert_eq!(
            KubeVersion::of_server(&info("1", "36", "v1.36.2")),
            v(1, 36)
        );
        assert_eq!(KubeVersion::of_server(&info("", "", "v1.31.0")), v(1, 31));
        assert_eq!(
            KubeVersion::of_server(&info("", "", "v0.0.0-master")),
            v(0, 0)
        );
        assert_eq!(KubeVersion::of_server(&info("", "", "")), None);
    }

    fn node(name: &str, kubelet: &str) -> WatchedNode {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "resourceVersion": "1",
                "labels": {"cloud.google.com/gke-nodepool": "pool"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"nodeInfo": {"kubeletVersion": kubelet, "osImage": "COS"},
                "images": [{"names": ["gcr.io/x@sha256:00"], "sizeBytes": 1}]}
        }))
        .unwrap()
    }

    fn feed() -> (NodeFeed, watch::Receiver<LowestKubelet>) {
        let (tx, rx) = watch::channel(LowestKubelet::Unknown);
        let feed = NodeFeed {
            versions: NodeVersions::default(),
            lowest: tx,
        };
        (feed, rx)
    }

    fn lowest(version: Option<KubeVersion>, node: &str) -> LowestKubelet {
        LowestKubelet::Version {
            version,
            node: node.into(),
        }
    }

    #[test]
    fn a_watched_node_keeps_its_name_and_kubelet_version_only() {
        let n = node("gke-a", "v1.30.5-gke.1");
        assert_eq!(n.metadata.name.as_deref(), Some("gke-a"));
        assert_eq!(n.metadata.resource_version.as_deref(), Some("1"));
        assert!(n.metadata.labels.is_none() && n.metadata.managed_fields.is_none());
        assert_eq!(n.kubelet_version(), "v1.30.5-gke.1");
        let bare: WatchedNode =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(bare.kubelet_version(), "");
    }

    #[test]
    fn the_lowest_version_is_published_only_when_it_changes() {
        use watcher::Event::*;
        let (mut feed, mut rx) = feed();
        feed.on_event(Init);
        feed.on_event(InitApply(node("gke-new-b", "v1.30.5")));
        feed.on_event(InitApply(node("gke-new-a", "v1.30.1")));
        assert!(!rx.has_changed().unwrap(), "nothing is published mid-list");
        feed.on_event(InitDone);
        assert_eq!(*rx.borrow_and_update(), lowest(v(1, 30), "gke-new-a"));
        // A status heartbeat, a node of the same version coming and going: nothing to say.
        feed.on_event(Apply(node("gke-new-a", "v1.30.1")));
        feed.on_event(Apply(node("gke-new-c", "v1.30.9")));
        feed.on_event(Delete(node("gke-new-a", "v1.30.1")));
        assert!(!rx.has_changed().unwrap());
        // An old pool joins: it decides; when its last node leaves, the newer one does again.
        feed.on_event(Apply(node("gke-old-1", "v1.28.15-gke.1020000")));
        assert_eq!(*rx.borrow_and_update(), lowest(v(1, 28), "gke-old-1"));
        feed.on_event(Apply(node("gke-old-2", "v1.28.15-gke.1020000")));
        feed.on_event(Delete(node("gke-old-1", "")));
        assert!(!rx.has_changed().unwrap(), "another 1.28 node still runs");
        feed.on_event(Delete(node("gke-old-2", "")));
        assert_eq!(*rx.borrow_and_update(), lowest(v(1, 30), "gke-new-b"));
        // An unparsable version counts as the oldest.
        feed.on_event(Apply(node("virtual", "unknown")));
        assert_eq!(*rx.borrow_and_update(), lowest(None, "virtual"));
    }

    #[test]
    fn a_relist_replaces_the_nodes_and_an_empty_cluster_is_not_unknown() {
        use watcher::Event::*;
        let (mut feed, mut rx) = feed();
        feed.on_event(Init);
        feed.on_event(InitDone);
        assert_eq!(*rx.borrow_and_update(), LowestKubelet::NoNodes);
        feed.on_event(Apply(node("gke-old", "v1.28.3")));
        feed.on_event(Apply(node("gke-new", "v1.31.0")));
        assert_eq!(*rx.borrow_and_update(), lowest(v(1, 28), "gke-old"));
        // The watch was away while the old node was deleted: the relist drops it, and until
        // the relist ends the previous answer stands.
        feed.on_event(Init);
        assert!(!rx.has_changed().unwrap());
        feed.on_event(InitApply(node("gke-new", "v1.31.0")));
        assert!(!rx.has_changed().unwrap());
        feed.on_event(InitDone);
        assert_eq!(*rx.borrow_and_update(), lowest(v(1, 31), "gke-new"));
        assert_eq!(feed.versions.by_node.len(), 1);
        assert_eq!(feed.versions.counts.len(), 1);
        // Upgraded in place (same name, new kubelet): the old version's count goes.
        feed.on_event(Apply(node("gke-new", "v1.32.0")));
        assert_eq!(*rx.borrow_and_update(), lowest(v(1, 32), "gke-new"));
        assert_eq!(feed.versions.counts.len(), 1);
    }

    #[test]
    fn lowest_kubelet_says_what_decided() {
        assert_eq!(
            lowest(v(1, 28), "gke-old").to_string(),
            "1.28 (node gke-old)"
        );
        assert_eq!(lowest(None, "x").to_string(), "unparsable (node x)");
        assert_eq!(LowestKubelet::NoNodes.to_string(), "none (no nodes)");
    }
}
