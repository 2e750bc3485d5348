//! `rolebridge-webhook serve`: builds the binding cache, the status controller, the TLS and
//! admin listeners from the flags, and runs them until SIGTERM.
//!
//! Wiring only: every decision is made in the modules it calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::args::{self, ClusterVersions, MutationArgs, SidecarChoice};
use crate::admission::mutate::SidecarMode;
use crate::bindings::cache::BindingCache;
use crate::bindings::lease::{self, LeaderArgs};
use crate::bindings::live::{LiveReadLimits, api_live_source};
use crate::bindings::nodes::{self, KubeVersion, LowestKubelet};
use crate::bindings::status_controller;
use crate::bindings::status_controller::StatusArgs;
use crate::domain::convert;
use crate::metrics::Metrics;
use crate::server::limits::{Limits, LimitsError};
use crate::server::tls::{CertStore, server_config};
use crate::server::{self, admin};
use crate::server::{AppState, serve_tls};
use rolebridge_contract::duration;

/// How often `--sidecar-mode auto` asks the API server's version again, so a control-plane
/// upgrade to 1.29+ switches new pods to native sidecars without a restart (node changes are
/// followed as the node watch sees them).
const SIDECAR_RECHECK: Duration = Duration::from_secs(600);

/// How long `serve` waits for the node watch's first list before deciding `--sidecar-mode auto`
/// from the API server alone (until the list arrives). The binding cache lists meanwhile, and
/// the webhook is not ready before it has, so this rarely delays readiness.
const NODE_LIST_WAIT: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct ServeArgs {
    /// HTTPS address for admission reviews. GKE private clusters only let the control plane
    /// reach nodes on 443 and 10250.
    #[arg(long, env = "ROLEBRIDGE_LISTEN", default_value = "0.0.0.0:10250")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "ROLEBRIDGE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain; re-read when it changes.
    #[arg(
        long,
        env = "ROLEBRIDGE_TLS_CERT",
        default_value = "/etc/rolebridge/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// PEM private key; re-read when it changes.
    #[arg(
        long,
        env = "ROLEBRIDGE_TLS_KEY",
        default_value = "/etc/rolebridge/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// How often to check the certificate files for a rotation (e.g. `2s`; plain numbers are
    /// seconds). At least one second.
    #[arg(long, env = "ROLEBRIDGE_TLS_RELOAD_INTERVAL", default_value = "2s", value_parser = duration::parse)]
    pub tls_reload_interval: Duration,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// The webhook's own namespace, whose pods are never mutated. Defaults to the namespace of
    /// the pod's service account when running in a cluster.
    #[arg(long, env = "ROLEBRIDGE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Serve these AWSRoleBindings (a YAML file) instead of watching the API server: for local
    /// runs, demos and benchmarks. Its ServiceAccounts say which Google service account
    /// Google-source pods are pinned to (a pod whose one is missing is denied). Status is not
    /// written in this mode.
    #[arg(long, env = "ROLEBRIDGE_BINDINGS_FILE")]
    pub bindings_file: Option<PathBuf>,
    /// How long a namespace's live binding read is reused; 0 disables live reads on cache
    /// misses.
    #[arg(long, env = "ROLEBRIDGE_LIVE_READ_INTERVAL", default_value = "10s", value_parser = duration::parse)]
    pub live_read_interval: Duration,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub status: StatusArgs,
    /// How long to keep serving after SIGTERM while reporting not-ready, so endpoints drop this
    /// replica before it stops accepting.
    #[arg(long, env = "ROLEBRIDGE_SHUTDOWN_DELAY", default_value = "5s", value_parser = duration::parse)]
    pub shutdown_delay: Duration,
    /// How long to let in-flight admissions finish after the listener closes.
    #[arg(long, env = "ROLEBRIDGE_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    pub drain_timeout: Duration,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `rolebridge_webhook=debug`.
    #[arg(long, env = "ROLEBRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(
        long,
        env = "ROLEBRIDGE_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,
    /// Worker threads for the runtime (0: one per CPU).
    #[arg(long, env = "ROLEBRIDGE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Flags(#[from] args::FlagError),
    #[error("reading --bindings-file {path}: {source}")]
    ReadBindings {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--bindings-file {path}: {source}")]
    Bindings {
        path: String,
        #[source]
        source: convert::BindingError,
    },
    #[error("connecting to the Kubernetes API (in-cluster or KUBECONFIG): {0}")]
    Connect(#[source] kube::Error),
    #[error("reading the API server version for --sidecar-mode auto: {0}")]
    Version(#[source] kube::Error),
    #[error("binding {flag} {addr}: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error(transparent)]
    Limits(#[from] LimitsError),
}

fn in_cluster_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The binding cache: fixed from a file, or fed by a watch (plus the status controller).
async fn bindings(
    args: &ServeArgs,
    metrics: &Arc<Metrics>,
    own_namespace: Option<&str>,
    stop: &watch::Receiver<bool>,
) -> Result<(Arc<BindingCache>, Option<kube::Client>), ServeError> {
    if let Some(path) = &args.bindings_file {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::ReadBindings {
            path: shown.clone(),
            source,
        })?;
        let err = |source| ServeError::Bindings {
            path: shown.clone(),
            source,
        };
        let bindings = convert::bindings_from_yaml(&text, "default").map_err(err)?;
        // Its ServiceAccounts are what Google-source pods are pinned to.
        let accounts = convert::service_accounts_from_yaml(&text, "default").map_err(err)?;
        tracing::info!(bindings = bindings.len(), service_accounts = accounts.len(), file = %shown,
            "serving fixed bindings");
        return Ok((
            Arc::new(BindingCache::fixed(metrics.clone(), bindings, &accounts)),
            None,
        ));
    }
    let client = kube::Client::try_default()
        .await
        .map_err(ServeError::Connect)?;
    let live = (!args.live_read_interval.is_zero()).then(|| {
        let limits = LiveReadLimits {
            interval: args.live_read_interval,
            ..LiveReadLimits::default()
        };
        (api_live_source(client.clone()), limits)
    });
    let cache = Arc::new(BindingCache::new(metrics.clone(), live));
    cache.run_watches(client.clone());
    let lease_namespace = own_namespace.unwrap_or(client.default_namespace());
    let leadership = lease::start(
        &client,
        &args.leader,
        lease_namespace,
        lease::Report::of(metrics),
        stop.clone(),
    );
    tokio::spawn(status_controller::run(
        client.clone(),
        cache.clone(),
        metrics.clone(),
        leadership,
        args.status.clone(),
    ));
    Ok((cache, Some(client)))
}

/// What `--sidecar-mode auto` follows once serving: the versions it was decided from, the
/// node watch's lowest kubelet, and a client to ask the API server's version again.
struct AutoSidecar {
    client: kube::Client,
    cluster: ClusterVersions,
    nodes: watch::Receiver<LowestKubelet>,
}

/// Re-decides `--sidecar-mode auto` when the lowest kubelet changes (node pools upgraded, added
/// or removed) and every [`SIDECAR_RECHECK`], asking the API server's version again each time.
/// The config is swapped, and the change logged, only when the mode changes.
fn follow_sidecar_mode(state: Arc<AppState>, choice: SidecarChoice, auto: AutoSidecar) {
    let AutoSidecar {
        client,
        mut cluster,
        mut nodes,
    } = auto;
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + SIDECAR_RECHECK;
        let mut recheck = tokio::time::interval_at(start, SIDECAR_RECHECK);
        let mut watching = true;
        loop {
            tokio::select! {
                changed = nodes.changed(), if watching => {
                    watching = changed.is_ok();
                    cluster.nodes = nodes.borrow_and_update().clone();
                }
                _ = recheck.tick() => {}
            }
            // Node pools follow their control plane: ask it too, or a stale API-server version
            // would hold legacy after the last node's upgrade.
            if let Ok(info) = client.apiserver_version().await {
                cluster.server = KubeVersion::of_server(&info);
            }
            let mode = choice.resolve(Some(&cluster));
            let current = state.config.load();
            if current.sidecar_mode != mode {
                tracing::info!(?mode, versions = %cluster, "sidecar mode changed");
                let mut c = (**current).clone();
                c.sidecar_mode = mode;
                state.config.store(Arc::new(c));
            }
        }
    });
}

/// Runs the webhook until SIGTERM (then drains).
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    args.limits.validate()?;
    let metrics = Arc::new(Metrics::new());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = Arc::new(CertStore::new(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        provider.clone(),
    ));
    if let Err(error) = certs.reload() {
        // Not fatal: the Secret may still be on its way (cert-manager). /readyz says so.
        tracing::error!(%error, "serving certificate not loaded yet; retrying");
    }
    tokio::spawn(certs.clone().watch(
        args.tls_reload_interval.max(Duration::from_secs(1)),
        metrics.clone(),
    ));

    let mut config = args
        .mutation
        .config(args.namespace.clone().or_else(in_cluster_namespace))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cache, client) =
        bindings(&args, &metrics, config.own_namespace.as_deref(), &stop_rx).await?;
    let choice = args.mutation.sidecar_mode;
    let auto_sidecar;
    (config.sidecar_mode, auto_sidecar) = sidecar_mode(choice, client.as_ref()).await?;
    tracing::info!(mode = ?config.sidecar_mode, agent_image = %config.agent_image,
        own_namespace = ?config.own_namespace, credentials_port = config.credentials_port,
        "mutation config");

    let state = Arc::new(AppState {
        cache,
        config: ArcSwap::from_pointee(config),
        metrics,
        certs: certs.clone(),
        shutting_down: Default::default(),
    });
    if let Some(auto) = auto_sidecar {
        follow_sidecar_mode(state.clone(), choice, auto);
    }

    let bind = |flag, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { flag, addr, source })
    };
    let listener = bind("--listen", args.listen).await?;
    let admin_listener = bind("--admin-listen", args.admin_listen).await?;
    tracing::info!(listen = ?listener.local_addr().ok(), admin = ?admin_listener.local_addr().ok(), "serving");

    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(
        warp::serve(admin::routes(state.clone()))
            .incoming(admin_listener)
            .graceful(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .run(),
    );
    stop_on_signal(state.clone(), args.shutdown_delay, stop_tx);

    let tls = Arc::new(server_config(&certs, provider).map_err(ServeError::Tls)?);
    let metrics = state.metrics.clone();
    serve_tls(
        listener,
        tls,
        server::routes(state),
        args.limits,
        metrics,
        stop_rx,
        args.drain_timeout,
    )
    .await;
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// `--sidecar-mode` as the cluster's versions decide it (asked for `auto` only): the API
/// server's, and the lowest kubelet's once the node watch has listed the nodes, which start-up
/// waits for up to [`NODE_LIST_WAIT`]. Until then the API server alone decides, as before the
/// node watch existed: the window is the first list's duration, or for ever where RBAC does
/// not allow listing nodes, which the watch keeps reporting.
async fn sidecar_mode(
    choice: SidecarChoice,
    client: Option<&kube::Client>,
) -> Result<(SidecarMode, Option<AutoSidecar>), ServeError> {
    let (Some(client), SidecarChoice::Auto) = (client, choice) else {
        return Ok((choice.resolve(None), None));
    };
    let mut nodes = nodes::watch_lowest_kubelet(client.clone());
    let info = client
        .apiserver_version()
        .await
        .map_err(ServeError::Version)?;
    tracing::info!(version = %info.git_version, "API server version");
    let first_list = tokio::time::timeout(
        NODE_LIST_WAIT,
        nodes.wait_for(|n| *n != LowestKubelet::Unknown),
    );
    if !matches!(first_list.await, Ok(Ok(_))) {
        tracing::warn!(waited = ?NODE_LIST_WAIT,
            "nodes not listed yet: --sidecar-mode auto follows the API server's version until they are (needs list and watch on nodes)");
    }
    let cluster = ClusterVersions {
        server: KubeVersion::of_server(&info),
        nodes: nodes.borrow_and_update().clone(),
    };
    let mode = choice.resolve(Some(&cluster));
    tracing::info!(?mode, versions = %cluster, "sidecar mode");
    let auto = AutoSidecar {
        client: client.clone(),
        cluster,
        nodes,
    };
    Ok((mode, Some(auto)))
}

/// On SIGTERM: report not ready, keep serving for `delay` so endpoints drop this replica, then
/// tell everything to stop.
fn stop_on_signal(state: Arc<AppState>, delay: Duration, stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(delay = ?delay, "shutdown requested; reporting not ready before closing");
        state.shutting_down.store(true, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        let _ = stop.send(true);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
