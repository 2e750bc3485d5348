//! The flags that shape the injected pod, shared by `serve` and `inject`, and the
//! [`Config`] they make.

use std::time::Duration;

use clap::ValueEnum;
use rolebridge_contract::{MIN_CREDENTIALS_PORT, duration};

use crate::admission::mutate::{Config, MIN_KUBERNETES_TOKEN_EXPIRATION, SidecarMode};
use crate::bindings::nodes::{KubeVersion, LowestKubelet};

/// What the operator asked for with `--sidecar-mode`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum SidecarChoice {
    /// Native sidecar when the API server and every node's kubelet are ≥ 1.29, legacy
    /// otherwise (asks the API server, watches the nodes).
    Auto,
    Native,
    Legacy,
}

/// Kubelets run native sidecars by default from this version (`SidecarContainers`, beta; alpha
/// and off in 1.28).
pub const NATIVE_SIDECARS: KubeVersion = KubeVersion {
    major: 1,
    minor: 29,
};

/// What `--sidecar-mode auto` is decided from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterVersions {
    /// The API server's version (`None`: it did not parse, and counts as too old).
    pub server: Option<KubeVersion>,
    /// The lowest kubelet among the nodes, once the node watch has listed them.
    pub nodes: LowestKubelet,
}

impl ClusterVersions {
    /// The lower of the API server's and the lowest kubelet's version (`None`: one did not
    /// parse). Nodes not listed yet, or none at all, leave the API server alone to decide.
    pub fn lowest(&self) -> Option<KubeVersion> {
        match &self.nodes {
            LowestKubelet::Unknown | LowestKubelet::NoNodes => self.server,
            LowestKubelet::Version { version, .. } => self.server.min(*version),
        }
    }
}

impl std::fmt::Display for ClusterVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.server {
            Some(v) => write!(f, "API server {v}, ")?,
            None => f.write_str("API server unparsable, ")?,
        }
        write!(f, "lowest kubelet {}", self.nodes)
    }
}

impl SidecarChoice {
    /// The one place the mode is decided. `cluster` is what the webhook knows of the cluster's
    /// versions; an `auto` choice without it (`inject`, `--bindings-file`) takes native,
    /// today's default.
    ///
    /// `auto` is native only when the API server and every node's kubelet are at least
    /// [`NATIVE_SIDECARS`], as GKE's gcs-fuse CSI webhook decides: a 1.29+ API server stores a
    /// native sidecar whatever the node runs, and an older kubelet starts it as an ordinary init
    /// container that never exits, so the pod would stay in `Init`.
    pub fn resolve(self, cluster: Option<&ClusterVersions>) -> SidecarMode {
        match (self, cluster) {
            (SidecarChoice::Native, _) | (SidecarChoice::Auto, None) => SidecarMode::Native,
            (SidecarChoice::Legacy, _) => SidecarMode::Legacy,
            (SidecarChoice::Auto, Some(c)) if c.lowest() >= Some(NATIVE_SIDECARS) => {
                SidecarMode::Native
            }
            (SidecarChoice::Auto, Some(_)) => SidecarMode::Legacy,
        }
    }
}

/// Why the mutation flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--default-audience must not be empty")]
    EmptyAudience,
    #[error("--cluster-name must not be empty when given")]
    EmptyClusterName,
    #[error(
        "--kubernetes-token-expiration {0:?} is shorter than the 10m the API server grants a projected service account token"
    )]
    KubernetesTokenExpiration(Duration),
}

/// What shapes the injected pod, shared by `serve` and `inject`.
#[derive(clap::Args, Debug, Clone)]
pub struct MutationArgs {
    /// Image of the injected agent container.
    #[arg(long, env = "ROLEBRIDGE_AGENT_IMAGE", default_value = rolebridge_contract::DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// imagePullPolicy of the injected agent container.
    #[arg(long, env = "ROLEBRIDGE_AGENT_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub agent_image_pull_policy: String,
    /// How the agent runs beside the app (`auto` asks the API server; `inject` takes native).
    #[arg(
        long,
        env = "ROLEBRIDGE_SIDECAR_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub sidecar_mode: SidecarChoice,
    /// Token audience for bindings that set none.
    #[arg(
        long,
        env = "ROLEBRIDGE_DEFAULT_AUDIENCE",
        default_value = rolebridge_contract::DEFAULT_AUDIENCE
    )]
    pub default_audience: String,
    /// Loopback port of the in-pod credentials endpoint (bindings with a role chain or a
    /// session duration). A pod can choose another with the annotation
    /// `rolebridge.io/credentials-port`; if one of its containers declares this port, the pod
    /// gets the next free one.
    #[arg(long, env = "ROLEBRIDGE_CREDENTIALS_PORT",
          default_value_t = rolebridge_contract::DEFAULT_CREDENTIALS_PORT,
          value_parser = clap::value_parser!(u16).range(i64::from(MIN_CREDENTIALS_PORT)..))]
    pub credentials_port: u16,
    /// Cluster name for the `gke-cluster-name` session tag. Unset: the agent asks the GKE
    /// metadata server, and omits the tag if it cannot tell.
    #[arg(long, env = "ROLEBRIDGE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Lifetime of the Kubernetes service account tokens projected into pods of
    /// `tokenSource: Kubernetes` bindings (`expirationSeconds`; the kubelet renews a token at 80%
    /// of it). At least 10m, the API server's minimum.
    #[arg(long, env = "ROLEBRIDGE_KUBERNETES_TOKEN_EXPIRATION", default_value = "1h",
          value_parser = duration::parse)]
    pub kubernetes_token_expiration: Duration,
}

impl MutationArgs {
    /// The mutation config; the sidecar mode as far as it is known without an API server.
    pub fn config(&self, own_namespace: Option<String>) -> Result<Config, FlagError> {
        if self.default_audience.trim().is_empty() {
            return Err(FlagError::EmptyAudience);
        }
        if self
            .cluster_name
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(FlagError::EmptyClusterName);
        }
        if self.kubernetes_token_expiration < MIN_KUBERNETES_TOKEN_EXPIRATION {
            return Err(FlagError::KubernetesTokenExpiration(
                self.kubernetes_token_expiration,
            ));
        }
        Ok(Config {
            agent_image: self.agent_image.clone(),
            agent_image_pull_policy: self.agent_image_pull_policy.clone(),
            sidecar_mode: self.sidecar_mode.resolve(None),
            default_audience: self.default_audience.clone(),
            own_namespace,
            credentials_port: self.credentials_port,
            cluster_name: self.cluster_name.clone(),
            // Whole seconds, as `expirationSeconds` takes them.
            kubernetes_token_expiration: Duration::from_secs(
                self.kubernetes_token_expiration.as_secs(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32) -> Option<KubeVersion> {
        Some(KubeVersion { major, minor })
    }

    fn cluster(server: Option<KubeVersion>, nodes: LowestKubelet) -> ClusterVersions {
        ClusterVersions { server, nodes }
    }

    fn lowest(version: Option<KubeVersion>) -> LowestKubelet {
        LowestKubelet::Version {
            version,
            node: "gke-pool-1".into(),
        }
    }

    #[test]
    fn kubernetes_token_expiration_is_a_duration_of_at_least_ten_minutes() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            m: MutationArgs,
        }
        let cfg = |args: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|c| c.m.config(None))
        };
        let default = cfg(&[]).unwrap().unwrap();
        assert_eq!(
            default.kubernetes_token_expiration,
            Duration::from_secs(3600)
        );
        let ten = cfg(&["--kubernetes-token-expiration", "10m"])
            .unwrap()
            .unwrap();
        assert_eq!(ten.kubernetes_token_expiration, Duration::from_secs(600));
        assert!(matches!(
            cfg(&["--kubernetes-token-expiration", "9m59s"]).unwrap(),
            Err(FlagError::KubernetesTokenExpiration(_))
        ));
        assert!(cfg(&["--kubernetes-token-expiration", "soon"]).is_err());
    }

    #[test]
    fn sidecar_mode_is_resolved_in_one_place() {
        use LowestKubelet::{NoNodes, Unknown};
        use SidecarChoice::*;
        use SidecarMode as M;
        assert_eq!(Auto.resolve(None), M::Native);
        // No nodes, or not listed yet: the API server decides.
        for nodes in [Unknown, NoNodes] {
            assert_eq!(
                Auto.resolve(Some(&cluster(v(1, 28), nodes.clone()))),
                M::Legacy
            );
            assert_eq!(
                Auto.resolve(Some(&cluster(v(1, 29), nodes.clone()))),
                M::Native
            );
            assert_eq!(Auto.resolve(Some(&cluster(None, nodes))), M::Legacy);
        }
        // A 1.28 node pool under a newer control plane keeps pods out of Init.
        let old_pool = cluster(v(1, 30), lowest(v(1, 28)));
        assert_eq!(Auto.resolve(Some(&old_pool)), M::Legacy);
        assert_eq!(
            Auto.resolve(Some(&cluster(v(1, 36), lowest(v(1, 29))))),
            M::Native
        );
        assert_eq!(
            Auto.resolve(Some(&cluster(v(1, 36), lowest(None)))),
            M::Legacy
        );
        // Both must be new enough (a kubelet is never newer than its API server, but a
        // version that did not parse is).
        assert_eq!(
            Auto.resolve(Some(&cluster(v(1, 28), lowest(v(1, 30))))),
            M::Legacy
        );
        assert_eq!(
            Auto.resolve(Some(&cluster(v(2, 0), lowest(v(2, 1))))),
            M::Native
        );
        // An explicit choice is never second-guessed.
        assert_eq!(Native.resolve(Some(&old_pool)), M::Native);
        assert_eq!(Legacy.resolve(Some(&cluster(v(1, 36), NoNodes))), M::Legacy);
        assert_eq!(Legacy.resolve(None), M::Legacy);
    }

    #[test]
    fn cluster_versions_say_what_decided() {
        let c = cluster(
            v(1, 30),
            LowestKubelet::Version {
                version: v(1, 28),
                node: "gke-old-pool-1".into(),
            },
        );
        assert_eq!(c.lowest(), v(1, 28));
        assert_eq!(
            c.to_string(),
            "API server 1.30, lowest kubelet 1.28 (node gke-old-pool-1)"
        );
    }
}
