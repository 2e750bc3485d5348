//! Standalone GKE metadata server emulator (see `rolebridge_e2e::metadata_emulator`).
//!
//! Point clients at it with `GCE_METADATA_HOST=<printed address>`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rolebridge_e2e::metadata_emulator::{Config, Emulator, Fault, NODE_EMAIL, Persona};

#[derive(Debug, Parser)]
#[command(
    name = "gke-metadata-emulator",
    about = "Emulates the GKE metadata server's identity endpoint (or a node's Compute Engine \
             metadata server, or GKE's for a service account without a Google service account)"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, env = "EMULATOR_LIFETIME", default_value_t = 3600)]
    lifetime: u64,
    /// Delay before every metadata answer, in milliseconds.
    #[arg(long, env = "EMULATOR_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Audience the server mints tokens for (repeatable); without any, every audience is served
    /// as on GKE. Others get 400.
    #[arg(
        long = "allowed-audience",
        env = "EMULATOR_ALLOWED_AUDIENCES",
        value_delimiter = ','
    )]
    allowed_audiences: Vec<String>,
    /// Fault applied to every identity request: none, <status> (e.g. 500 or 404), hang,
    /// garbage, wrong-aud, expired, close. Changeable at run time with
    /// `POST /emulator/config?fault=...`.
    #[arg(long, env = "EMULATOR_FAULT", default_value = "none")]
    fault: Fault,
    /// Google service account email claim.
    #[arg(
        long,
        env = "EMULATOR_EMAIL",
        default_value = "app@rolebridge-test.iam.gserviceaccount.com"
    )]
    email: String,
    /// Google service account unique ID (the token's azp and sub).
    #[arg(
        long,
        env = "EMULATOR_UNIQUE_ID",
        default_value = "112233445566778899001"
    )]
    unique_id: String,
    /// Reuse a token per audience while more than half its lifetime is left (like a caching
    /// metadata server).
    #[arg(long, env = "EMULATOR_CACHE_TOKENS")]
    cache_tokens: bool,
    /// Serve instance/attributes/cluster-name with this value (404 when unset).
    #[arg(long, env = "EMULATOR_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Project ID served at /computeMetadata/v1/project/project-id.
    #[arg(long, env = "EMULATOR_PROJECT_ID", default_value = "rolebridge-test")]
    project_id: String,
    /// Which metadata server to play: gke (a pod bound to --email), compute-engine-node (a
    /// node's: tokens for --node-email, as a hostNetwork pod or a pod on a node pool without
    /// GKE_METADATA sees them), gke-unannotated (identity answers 404 with GKE's message for
    /// --kubernetes-service-account). Changeable at run time with
    /// `POST /emulator/config?persona=...`.
    #[arg(long, env = "EMULATOR_PERSONA", value_enum, default_value_t = Persona::Gke)]
    persona: Persona,
    /// compute-engine-node: the node's service account.
    #[arg(long, env = "EMULATOR_NODE_EMAIL", default_value = NODE_EMAIL)]
    node_email: String,
    /// gke-unannotated: the pod's Kubernetes service account, NAMESPACE/NAME.
    #[arg(
        long,
        env = "EMULATOR_KUBERNETES_SERVICE_ACCOUNT",
        default_value = "default/default"
    )]
    kubernetes_service_account: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let emulator = Emulator::start(
        a.listen,
        Config {
            lifetime: Duration::from_secs(a.lifetime),
            latency: Duration::from_millis(a.latency_ms),
            allowed_audiences: a.allowed_audiences,
            email: a.email,
            unique_id: a.unique_id,
            project_id: a.project_id,
            fault: a.fault,
            cache_tokens: a.cache_tokens,
            cluster_name: a.cluster_name.clone(),
            persona: a.persona,
            node_email: a.node_email,
            kubernetes_service_account: a.kubernetes_service_account,
            ..Config::default()
        },
    )
    .with_context(|| format!("cannot listen on {}", a.listen))?;
    // Printed on stdout, one line each, for scripts: the address and the env line to use.
    println!("gke-metadata-emulator listening on {}", emulator.addr());
    println!("GCE_METADATA_HOST={}", emulator.host());
    tracing::info!(addr = %emulator.addr(), "listening");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    drop(emulator);
    Ok(())
}
