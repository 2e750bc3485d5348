//! `rolebridge-webhook`: `serve` runs the admission webhook, `crd` prints the CRD, `inject`
//! renders the mutation into manifests; hidden, for checks that read the code rather than scrape
//! it, `flags --json` prints the command line and `rbac --json` the API access it needs. Wiring
//! only; the modules decide.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use rolebridge_webhook::admission::inject::{self, InjectArgs};
use rolebridge_webhook::app::{self, LogFormat, ServeArgs};
use rolebridge_webhook::bindings::{rbac_non_resource, rbac_rules};
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
    /// Print every subcommand's flags (names, environment variables, defaults, and the flag
    /// groups they belong to) as JSON, for checks such as the Helm chart's.
    #[command(hide = true)]
    Flags(JsonOnly),
    /// Print the API access the webhook needs (RBAC verbs by resource, and the non-resource URLs
    /// it calls) as JSON.
    #[command(hide = true)]
    Rbac(JsonOnly),
}

/// The hidden subcommands' one output format, named so that another can follow.
#[derive(clap::Args)]
struct JsonOnly {
    #[arg(long, required = true)]
    json: bool,
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
        Command::Flags(_) => {
            let flags = flags_json(&Cli::command());
            println!("{}", serde_json::to_string_pretty(&flags)?);
            Ok(())
        }
        Command::Rbac(_) => {
            let rules = serde_json::json!({
                "rules": rbac_rules(),
                "nonResourceURLs": rbac_non_resource(),
            });
            println!("{}", serde_json::to_string_pretty(&rules)?);
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

/// The contract's description of the command line, plus each command's flag groups (clap makes
/// one per `Args` struct, e.g. `Limits`), so a check can tell which flags are limits by the
/// struct that declares them.
fn flags_json(cmd: &clap::Command) -> serde_json::Value {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut json = rolebridge_contract::introspect::flags_json(&cmd);
    add_groups(&cmd, &mut json);
    json
}

fn add_groups(cmd: &clap::Command, json: &mut serde_json::Value) {
    let groups: serde_json::Map<String, serde_json::Value> = cmd
        .get_groups()
        .map(|g| {
            let args: Vec<String> = g.get_args().map(ToString::to_string).collect();
            (g.get_id().to_string(), args.into())
        })
        .collect();
    json["groups"] = groups.into();
    let subs = json["subcommands"].as_array_mut().into_iter().flatten();
    for (sub, sub_json) in cmd.get_subcommands().zip(subs) {
        add_groups(sub, sub_json);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_describes_itself_with_its_flag_groups() {
        Cli::command().debug_assert();
        let json = flags_json(&Cli::command());
        let subcommands = json["subcommands"].as_array().unwrap();
        let serve = subcommands.iter().find(|s| s["name"] == "serve").unwrap();
        let limits = serve["groups"]["Limits"].as_array().unwrap();
        assert!(limits.contains(&"max_body_size".into()), "{limits:?}");
        let flag = serve["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "max_body_size")
            .unwrap();
        assert_eq!(flag["env"], "ROLEBRIDGE_MAX_BODY_SIZE");
        assert_eq!(flag["default"], "3584Ki");
        assert!(subcommands.iter().any(|s| s["name"] == "rbac"));
    }
}
