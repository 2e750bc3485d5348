//! `rolebridge-webhook`: `serve` runs the admission webhook, `crd` prints the CRD.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::watch;

use rolebridge_webhook::cache::{BindingCache, LiveReadLimits, api_live_source};
use rolebridge_webhook::metrics::Metrics;
use rolebridge_webhook::mutate::{Config, SidecarMode};
use rolebridge_webhook::server::{AppState, serve_tls};
use rolebridge_webhook::tls::{CertStore, server_config};
use rolebridge_webhook::{admin, controller, crd, index, server};

#[derive(Parser)]
#[command(
    name = "rolebridge-webhook",
    version,
    about = "Lets GKE pods assume AWS roles with no static keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mutating admission webhook.
    Serve(Box<ServeArgs>),
    /// Print the AWSRoleBinding CustomResourceDefinition as YAML.
    Crd,
    /// Inject the agent into every pod template of YAML manifests, exactly as the webhook
    /// would, for GitOps pipelines and clusters without admission webhooks.
    Inject(InjectArgs),
}

/// What shapes the injected pod, shared by `serve` and `inject`.
#[derive(clap::Args)]
struct MutationArgs {
    /// Image of the injected agent container.
    #[arg(long, env = "ROLEBRIDGE_AGENT_IMAGE", default_value = rolebridge_contract::DEFAULT_AGENT_IMAGE)]
    agent_image: String,
    /// imagePullPolicy of the injected agent container.
    #[arg(long, env = "ROLEBRIDGE_AGENT_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    agent_image_pull_policy: String,
    /// How the agent runs beside the app (`auto` asks the API server; `inject` takes native).
    #[arg(
        long,
        env = "ROLEBRIDGE_SIDECAR_MODE",
        value_enum,
        default_value = "auto"
    )]
    sidecar_mode: ModeArg,
    /// Token audience for bindings that set none.
    #[arg(
        long,
        env = "ROLEBRIDGE_DEFAULT_AUDIENCE",
        default_value = rolebridge_contract::DEFAULT_AUDIENCE
    )]
    default_audience: String,
}

impl MutationArgs {
    fn config(&self, own_namespace: Option<String>) -> anyhow::Result<Config> {
        if self.default_audience.trim().is_empty() {
            bail!("--default-audience must not be empty");
        }
        Ok(Config {
            agent_image: self.agent_image.clone(),
            agent_image_pull_policy: self.agent_image_pull_policy.clone(),
            sidecar_mode: match self.sidecar_mode {
                ModeArg::Legacy => SidecarMode::Legacy,
                ModeArg::Auto | ModeArg::Native => SidecarMode::Native,
            },
            default_audience: self.default_audience.clone(),
            own_namespace,
            ..Config::default()
        })
    }
}

#[derive(clap::Args)]
struct InjectArgs {
    /// Manifests to inject (multi-document YAML); `-` reads standard input.
    #[arg(
        short = 'f',
        long = "filename",
        env = "ROLEBRIDGE_INJECT_FILENAME",
        default_value = "-"
    )]
    filename: PathBuf,
    /// YAML file(s) with the AWSRoleBindings to apply (other kinds in them are ignored).
    #[arg(
        long,
        env = "ROLEBRIDGE_INJECT_BINDINGS",
        required = true,
        value_delimiter = ','
    )]
    bindings: Vec<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(
        long = "namespace",
        env = "ROLEBRIDGE_INJECT_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    #[command(flatten)]
    mutation: MutationArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum ModeArg {
    /// Native sidecar on Kubernetes ≥ 1.29, legacy before (asks the API server).
    Auto,
    Native,
    Legacy,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// HTTPS address for admission reviews. GKE private clusters only let the control plane
    /// reach nodes on 443 and 10250.
    #[arg(long, env = "ROLEBRIDGE_LISTEN", default_value = "0.0.0.0:10250")]
    listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "ROLEBRIDGE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    admin_listen: SocketAddr,
    /// PEM certificate chain; re-read when it changes.
    #[arg(
        long,
        env = "ROLEBRIDGE_TLS_CERT",
        default_value = "/etc/rolebridge/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key; re-read when it changes.
    #[arg(
        long,
        env = "ROLEBRIDGE_TLS_KEY",
        default_value = "/etc/rolebridge/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// How often to check the certificate files for a rotation, in seconds.
    #[arg(long, env = "ROLEBRIDGE_TLS_RELOAD_INTERVAL", default_value_t = 2)]
    tls_reload_interval: u64,
    #[command(flatten)]
    mutation: MutationArgs,
    /// The webhook's own namespace, whose pods are never mutated. Defaults to the namespace of
    /// the pod's service account when running in a cluster.
    #[arg(long, env = "ROLEBRIDGE_NAMESPACE")]
    namespace: Option<String>,
    /// Serve these AWSRoleBindings (a YAML file) instead of watching the API server: for local
    /// runs, demos and benchmarks. Status is not written in this mode.
    #[arg(long, env = "ROLEBRIDGE_BINDINGS_FILE")]
    bindings_file: Option<PathBuf>,
    /// Seconds a namespace's live binding read is reused; 0 disables live reads on cache misses.
    #[arg(long, env = "ROLEBRIDGE_LIVE_READ_INTERVAL", default_value_t = 10)]
    live_read_interval: u64,
    /// Seconds a client may take to send request headers.
    #[arg(long, env = "ROLEBRIDGE_HEADER_READ_TIMEOUT", default_value_t = 10)]
    header_read_timeout: u64,
    /// Seconds to keep serving after SIGTERM while reporting not-ready, so endpoints drop this
    /// replica before it stops accepting.
    #[arg(long, env = "ROLEBRIDGE_SHUTDOWN_DELAY", default_value_t = 5)]
    shutdown_delay: u64,
    /// Seconds to let in-flight admissions finish after the listener closes.
    #[arg(long, env = "ROLEBRIDGE_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `rolebridge_webhook=debug`.
    #[arg(long, env = "ROLEBRIDGE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(
        long,
        env = "ROLEBRIDGE_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    log_format: LogFormat,
    /// Worker threads for the runtime (0: one per CPU).
    #[arg(long, env = "ROLEBRIDGE_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // kube and rustls are built with ring; another crate in the build graph may enable
    // aws-lc-rs too, and rustls then refuses to guess. Choose explicitly, first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(())
        }
        Command::Inject(args) => inject(args),
        Command::Serve(args) => {
            init_tracing(&args.log_level, args.log_format)?;
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if args.worker_threads > 0 {
                rt.worker_threads(args.worker_threads);
            }
            rt.enable_all().build()?.block_on(serve(*args))
        }
    }
}

fn inject(args: InjectArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let config = args.mutation.config(None)?;
    let mut bindings = Vec::new();
    for path in &args.bindings {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --bindings {}", path.display()))?;
        bindings.extend(
            index::bindings_from_yaml(&text, &args.namespace)
                .with_context(|| format!("--bindings {}", path.display()))?,
        );
    }
    let index = index::BindingIndex::new(bindings);
    let input = if args.filename.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.filename)
            .with_context(|| format!("reading {}", args.filename.display()))?
    };
    let injected = rolebridge_webhook::inject::inject(&input, &index, &config, &args.namespace)?;
    for w in &injected.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("injected {} pod template(s)", injected.mutated);
    std::io::stdout().write_all(injected.output.as_bytes())?;
    Ok(())
}

fn init_tracing(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("--log-level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain => builder.init(),
    }
    Ok(())
}

fn in_cluster_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
        Duration::from_secs(args.tls_reload_interval.max(1)),
        metrics.clone(),
    ));

    let mut config = args
        .mutation
        .config(args.namespace.clone().or_else(in_cluster_namespace))?;

    let (cache, client) = match &args.bindings_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --bindings-file {}", path.display()))?;
            let bindings = index::bindings_from_yaml(&text, "default")
                .with_context(|| format!("--bindings-file {}", path.display()))?;
            tracing::info!(bindings = bindings.len(), file = %path.display(), "serving fixed bindings");
            (
                Arc::new(BindingCache::fixed(metrics.clone(), bindings)),
                None,
            )
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
            let live = (args.live_read_interval > 0).then(|| {
                let limits = LiveReadLimits {
                    interval: Duration::from_secs(args.live_read_interval),
                    ..LiveReadLimits::default()
                };
                (api_live_source(client.clone()), limits)
            });
            let cache = Arc::new(BindingCache::new(metrics.clone(), live));
            let store = cache.clone().run_watch(client.clone()).await;
            tokio::spawn(controller::run(
                client.clone(),
                store,
                cache.clone(),
                metrics.clone(),
            ));
            (cache, Some(client))
        }
    };

    config.sidecar_mode = match (args.mutation.sidecar_mode, &client) {
        (ModeArg::Native, _) | (ModeArg::Auto, None) => SidecarMode::Native,
        (ModeArg::Legacy, _) => SidecarMode::Legacy,
        (ModeArg::Auto, Some(client)) => {
            let info = client
                .apiserver_version()
                .await
                .context("reading the API server version for --sidecar-mode auto")?;
            tracing::info!(version = %info.git_version, "API server version");
            mode_for_version(&info)
        }
    };
    tracing::info!(mode = ?config.sidecar_mode, agent_image = %config.agent_image,
        own_namespace = ?config.own_namespace, "mutation config");

    let state = Arc::new(AppState {
        cache,
        config: ArcSwap::from_pointee(config),
        metrics,
        certs: certs.clone(),
        shutting_down: Default::default(),
    });

    // A cluster upgrade to 1.29+ switches new pods to native sidecars without a restart.
    if let (ModeArg::Auto, Some(client)) = (args.mutation.sidecar_mode, client) {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(600)).await;
                if let Ok(info) = client.apiserver_version().await {
                    let mode = mode_for_version(&info);
                    if state.config.load().sidecar_mode != mode {
                        tracing::info!(?mode, "API server version changed the sidecar mode");
                        let mut c = (**state.config.load()).clone();
                        c.sidecar_mode = mode;
                        state.config.store(Arc::new(c));
                    }
                }
            }
        });
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    tracing::info!(listen = %listener.local_addr()?, admin = %admin_listener.local_addr()?, "serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(
        warp::serve(admin::routes(state.clone()))
            .incoming(admin_listener)
            .graceful(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .run(),
    );

    let shutdown_state = state.clone();
    let delay = Duration::from_secs(args.shutdown_delay);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(delay = ?delay, "shutdown requested; reporting not ready before closing");
        shutdown_state.shutting_down.store(true, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        let _ = stop_tx.send(true);
    });

    let tls = Arc::new(server_config(&certs, provider)?);
    serve_tls(
        listener,
        tls,
        server::routes(state),
        Duration::from_secs(args.header_read_timeout.max(1)),
        stop_rx,
        Duration::from_secs(args.drain_timeout),
    )
    .await;
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
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
