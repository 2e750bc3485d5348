//! Who the agent acts for: the pod's identity (from the downward API variables the webhook
//! sets), as STS session tags and as the role session name.

use std::sync::Mutex;
use std::time::Duration;

use hyper::StatusCode;
use tracing::{debug, info};

use rolebridge_contract::session_name;

use crate::metadata::{self, MetadataHost};

pub const TAG_NAMESPACE: &str = "kubernetes-namespace";
pub const TAG_SERVICE_ACCOUNT: &str = "kubernetes-service-account";
pub const TAG_POD_NAME: &str = "kubernetes-pod-name";
pub const TAG_POD_UID: &str = "kubernetes-pod-uid";
pub const TAG_CLUSTER_NAME: &str = "gke-cluster-name";

const CLUSTER_NAME_PATH: &str = "/computeMetadata/v1/instance/attributes/cluster-name";

/// The pod as the webhook describes it to the agent; any field may be unknown (outside
/// Kubernetes, or an older webhook).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub service_account: Option<String>,
}

impl PodIdentity {
    /// Session tags for this pod (unknown fields are left out), plus the cluster name.
    pub fn tags(&self, cluster_name: Option<&str>) -> Vec<(String, String)> {
        [
            (TAG_NAMESPACE, self.namespace.as_deref()),
            (TAG_SERVICE_ACCOUNT, self.service_account.as_deref()),
            (TAG_POD_NAME, self.name.as_deref()),
            (TAG_POD_UID, self.uid.as_deref()),
            (TAG_CLUSTER_NAME, cluster_name),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            let v = v.map(str::trim).filter(|v| !v.is_empty())?;
            Some((k.to_string(), tag_value(v)))
        })
        .collect()
    }

    /// The role session name: the pod name, else `rolebridge-<hostname>`.
    pub fn session_name(&self) -> String {
        match self
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            Some(n) => session_name::sanitize(n),
            None => default_session_name(),
        }
    }
}

/// A tag value as STS accepts it (`[\p{L}\p{Z}\p{N}_.:/=+\-@]`, at most 256 characters).
fn tag_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

/// A role session name from the host name, as STS allows (`[\w+=,.@-]{2,64}`).
pub fn default_session_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    session_name::sanitize(&format!("rolebridge-{}", host.trim()))
}

/// The cluster name for the `gke-cluster-name` tag: given (the webhook's `--cluster-name`),
/// else asked once from the GKE metadata server. Best effort: a 404 (not on GKE) settles it as
/// unknown; a transport error leaves it open for the next refresh.
#[derive(Debug)]
pub struct ClusterName {
    state: Mutex<Known>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Yes(String),
    No,
    NotYet,
}

impl ClusterName {
    pub fn new(explicit: Option<String>) -> Self {
        let state = match explicit.map(|s| s.trim().to_string()) {
            Some(s) if !s.is_empty() => Known::Yes(s),
            _ => Known::NotYet,
        };
        ClusterName {
            state: Mutex::new(state),
        }
    }

    /// The name, when known; may ask the metadata server.
    pub async fn get(&self, endpoint: &MetadataHost, timeout: Duration) -> Option<String> {
        match self.state.lock().unwrap().clone() {
            Known::Yes(s) => return Some(s),
            Known::No => return None,
            Known::NotYet => {}
        }
        let answer =
            tokio::time::timeout(timeout, metadata::get(endpoint, CLUSTER_NAME_PATH)).await;
        let next = match answer {
            Ok(Ok((StatusCode::OK, body))) => {
                let name = String::from_utf8_lossy(&body).trim().to_string();
                let valid = !name.is_empty()
                    && name.len() <= 256
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if valid {
                    info!(cluster = name, "cluster name from the metadata server");
                    Known::Yes(name)
                } else {
                    Known::No
                }
            }
            Ok(Ok((status, _))) => {
                debug!(
                    status = status.as_u16(),
                    "no cluster name in the metadata server"
                );
                Known::No
            }
            Ok(Err(e)) => {
                debug!(error = %e, "cannot ask the metadata server for the cluster name yet");
                Known::NotYet
            }
            Err(_) => Known::NotYet,
        };
        let mut state = self.state.lock().unwrap();
        *state = next;
        match &*state {
            Known::Yes(s) => Some(s.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_pod_and_leave_out_the_unknown() {
        let pod = PodIdentity {
            name: Some("web-7d9f-abcde".into()),
            namespace: Some("ci".into()),
            uid: Some("0b7c9a2e-1111-4f7e-9c1a-2b3c4d5e6f70".into()),
            service_account: Some("publisher".into()),
        };
        let tags = pod.tags(Some("prod-eu"));
        let keys: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kubernetes-namespace",
                "kubernetes-service-account",
                "kubernetes-pod-name",
                "kubernetes-pod-uid",
                "gke-cluster-name"
            ]
        );
        assert_eq!(tags[2].1, "web-7d9f-abcde");
        let partial = PodIdentity {
            namespace: Some("ci".into()),
            uid: Some(" ".into()),
            ..PodIdentity::default()
        };
        assert_eq!(
            partial.tags(None),
            vec![("kubernetes-namespace".to_string(), "ci".to_string())]
        );
        for (k, v) in pod.tags(Some("weird;name")) {
            crate::sts::check_tag(&k, &v).unwrap();
        }
    }

    #[test]
    fn session_name_is_the_sanitised_pod_name() {
        let pod = PodIdentity {
            name: Some("a".repeat(100)),
            ..PodIdentity::default()
        };
        assert_eq!(pod.session_name().len(), 64);
        assert!(
            PodIdentity::default()
                .session_name()
                .starts_with("rolebridge-")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn explicit_cluster_name_needs_no_metadata_server() {
        let c = ClusterName::new(Some("prod".into()));
        let unreachable = MetadataHost::new(Some("127.0.0.1:1"));
        assert_eq!(
            c.get(&unreachable, Duration::from_millis(100))
                .await
                .as_deref(),
            Some("prod")
        );
        let unknown = ClusterName::new(Some(" ".into()));
        assert_eq!(
            unknown.get(&unreachable, Duration::from_millis(100)).await,
            None
        );
        // Unreachable is not "absent": asked again next time.
        assert_eq!(*unknown.state.lock().unwrap(), Known::NotYet);
    }
}
