//! The flags that shape the injected pod, shared by `serve` and `inject`, and the
//! [`Config`] they make.

use std::time::Duration;

use clap::ValueEnum;
use rolebridge_contract::{MIN_CREDENTIALS_PORT, duration};

use crate::admission::mutate::{Config, MIN_KUBERNETES_TOKEN_EXPIRATION, SidecarMode};

/// What the operator asked for with `--sidecar-mode`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum SidecarChoice {
    /// Native sidecar on Kubernetes ≥ 1.29, legacy before (asks the API server).
    Auto,
    Native,
    Legacy,
}

impl SidecarChoice {
    /// The one place the mode is decided. `server` is the API server's version when known; an
    /// `auto` choice without one (`inject`, `--bindings-file`) takes native, today's default.
    pub fn resolve(
        self,
        server: Option<&k8s_openapi::apimachinery::pkg::version::Info>,
    ) -> SidecarMode {
        match (self, server) {
            (SidecarChoice::Native, _) | (SidecarChoice::Auto, None) => SidecarMode::Native,
            (SidecarChoice::Legacy, _) => SidecarMode::Legacy,
            (SidecarChoice::Auto, Some(info)) => mode_for_version(info),
        }
    }
}

/// Native sidecars are on by default from Kubernetes 1.29.
fn mode_for_version(info: &k8s_openapi::apimachinery::pkg::version::Info) -> SidecarMode {
    let minor: u32 = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    if info.major == "1" && minor < 29 {
        SidecarMode::Legacy
    } else {
        SidecarMode::Native
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
    use k8s_openapi::apimachinery::pkg::version::Info;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            ..Info::default()
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
        use SidecarChoice::*;
        assert_eq!(Auto.resolve(None), SidecarMode::Native);
        assert_eq!(Auto.resolve(Some(&info("1", "28"))), SidecarMode::Legacy);
        assert_eq!(Auto.resolve(Some(&info("1", "29+"))), SidecarMode::Native);
        assert_eq!(Auto.resolve(Some(&info("1", "36"))), SidecarMode::Native);
        assert_eq!(Native.resolve(Some(&info("1", "20"))), SidecarMode::Native);
        assert_eq!(Legacy.resolve(Some(&info("1", "36"))), SidecarMode::Legacy);
        assert_eq!(Legacy.resolve(None), SidecarMode::Legacy);
    }
}
