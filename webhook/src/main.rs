//! `rolebridge-webhook`: `serve` runs the admission webhook, `crd` prints the CRD, `inject`
//! renders the mutation into manifests. Wiring only; the modules decide.

use anyhow::Context;
use clap::{Parser, Subcommand};

use rolebridge_webhook::admission::inject::{self, InjectArgs};
use rolebridge_webhook::app::{self, LogFormat, ServeArgs};
use rolebridge_webhook::domain::crd;

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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // kube and rustls are built with ring; another crate in the build graph may enable
    // aws-lc-rs too, and rustls then refuses to guess. Choose explicitly, first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(())
        }
        Command::Inject(args) => {
            let (mut stdin, mut stdout, mut stderr) =
                (std::io::stdin(), std::io::stdout(), std::io::stderr());
            inject::run(&args, &mut stdin, &mut stdout, &mut stderr)?;
            Ok(())
        }
        Command::Serve(args) => {
            init_tracing(&args.log_level, args.log_format)?;
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.on_thread_park(rolebridge_webhook::memory::on_thread_park);
            if args.worker_threads > 0 {
                rt.worker_threads(args.worker_threads);
            }
            rt.enable_all().build()?.block_on(app::serve(*args))?;
            Ok(())
        }
    }
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
