//! Manual injection (`rolebridge-webhook inject`), for GitOps pipelines and clusters where
//! admission webhooks are not allowed.
//!
//! Every pod template in a multi-document YAML stream goes through the very same
//! [`mutate`](crate::admission::mutate::mutate), with bindings looked up in the very same
//! [`Store`], as an admission, so the two can never drift. Documents without a pod template,
//! and documents the mutation leaves alone, are copied through as the exact input text
//! (comments and formatting included); only mutated documents are re-serialised.
//!
//! Google-source pods are pinned to the Google service account of their `ServiceAccount`,
//! found in the manifests themselves or in the `--bindings` files; a pod whose service account
//! is in neither is an error naming it, since an unpinned agent could act as the node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

use crate::admission::args::{FlagError, MutationArgs};
use crate::admission::mutate::{self, Config, DenyReason, Outcome, ServiceAccountState};
use crate::bindings::store::Store;
use crate::domain::convert::{self, AccountDoc, BindingError};
use crate::domain::pod::PodView;

/// `rolebridge-webhook inject`.
#[derive(clap::Args)]
pub struct InjectArgs {
    /// Manifests to inject (multi-document YAML); `-` reads standard input.
    #[arg(
        short = 'f',
        long = "filename",
        env = "ROLEBRIDGE_INJECT_FILENAME",
        default_value = "-"
    )]
    pub filename: PathBuf,
    /// YAML file(s) with the AWSRoleBindings to apply, and the ServiceAccounts whose Google
    /// service account Google-source pods are pinned to (other kinds in them are ignored;
    /// ServiceAccounts in the manifests count too).
    #[arg(
        long,
        env = "ROLEBRIDGE_INJECT_BINDINGS",
        required = true,
        value_delimiter = ','
    )]
    pub bindings: Vec<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(
        long = "namespace",
        env = "ROLEBRIDGE_INJECT_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    #[command(flatten)]
    pub mutation: MutationArgs,
}

/// Why `inject` as a command failed: its files, its flags, or the injection itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Flags(#[from] FlagError),
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--bindings {path}: {source}")]
    Bindings {
        path: String,
        #[source]
        source: BindingError,
    },
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("writing the output: {0}")]
    Write(#[source] std::io::Error),
}

fn read(what: &'static str, path: &Path) -> Result<String, RunError> {
    std::fs::read_to_string(path).map_err(|source| RunError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// The command: reads the bindings files and the manifests (`-`: `stdin`), writes the injected
/// manifests to `stdout` and warnings plus a summary to `stderr`.
pub fn run(
    args: &InjectArgs,
    stdin: &mut dyn std::io::Read,
    stdout: &mut dyn std::io::Write,
    stderr: &mut dyn std::io::Write,
) -> Result<Injected, RunError> {
    let config = args.mutation.config(None)?;
    let mut bindings = Vec::new();
    let mut accounts = Vec::new();
    for path in &args.bindings {
        let text = read("--bindings", path)?;
        let err = |source| RunError::Bindings {
            path: path.display().to_string(),
            source,
        };
        bindings.extend(convert::bindings_from_yaml(&text, &args.namespace).map_err(err)?);
        accounts.extend(convert::service_accounts_from_yaml(&text, &args.namespace).map_err(err)?);
    }
    let bindings: Store = bindings.into_iter().collect();
    for a in &accounts {
        bindings.apply_account(&a.namespace, &a.name, a.google_service_account.as_deref());
    }
    let input = if args.filename.as_os_str() == "-" {
        let mut s = String::new();
        stdin
            .read_to_string(&mut s)
            .map_err(|source| RunError::Read {
                what: "standard input",
                path: "-".into(),
                source,
            })?;
        s
    } else {
        read("manifests", &args.filename)?
    };
    let injected = inject(&input, &bindings, &config, &args.namespace)?;
    let io = |r: std::io::Result<()>| r.map_err(RunError::Write);
    for w in &injected.warnings {
        io(writeln!(stderr, "warning: {w}"))?;
    }
    io(writeln!(
        stderr,
        "injected {} pod template(s)",
        injected.mutated
    ))?;
    io(stdout.write_all(injected.output.as_bytes()))?;
    Ok(injected)
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {document}: not valid YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document} ({object}): {message}")]
    Denied {
        document: usize,
        object: String,
        message: String,
    },
    #[error("document {document} ({object}): {message}")]
    Patch {
        document: usize,
        object: String,
        message: String,
    },
}

/// The result of an injection.
#[derive(Debug, Default)]
pub struct Injected {
    pub output: String,
    pub warnings: Vec<String>,
    /// Pod templates that were changed.
    pub mutated: usize,
}

/// Splits a YAML stream at its `---` document markers, keeping each part's exact text.
fn split_documents(input: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in input.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if pos > 0 && (bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t")) {
            docs.push(&input[start..pos]);
            start = pos;
        }
        pos += line.len();
    }
    docs.push(&input[start..]);
    docs
}

/// Where the pod template of a workload kind lives.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// The walk over one manifest stream: where it is, and what it found.
struct Injector<'a> {
    bindings: &'a Store,
    /// The manifests' own ServiceAccounts: they win over the bindings files' copies.
    accounts: Vec<AccountDoc>,
    cfg: &'a Config,
    default_namespace: &'a str,
    document: usize,
    warnings: Vec<String>,
    mutated: usize,
}

impl Injector<'_> {
    /// Mutates the object in place; returns whether anything changed.
    fn object(&mut self, obj: &mut Value) -> Result<bool, InjectError> {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        if kind.ends_with("List") && obj["items"].is_array() {
            let mut changed = false;
            if let Some(items) = obj["items"].as_array_mut() {
                for item in items {
                    changed |= self.object(item)?;
                }
            }
            return Ok(changed);
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or("<unnamed>")
            .to_owned();
        let namespace = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or(self.default_namespace)
            .to_owned();
        let label = format!("{kind} {namespace}/{name}");
        if kind == "Pod" {
            return self.pod(obj, &namespace, &label);
        }
        let Some(path) = template_path(&kind) else {
            return Ok(false);
        };
        let mut template = &mut *obj;
        for key in path {
            match template.get_mut(*key) {
                Some(next) => template = next,
                None => return Ok(false),
            }
        }
        self.pod(template, &namespace, &label)
    }

    fn pod(&mut self, pod: &mut Value, namespace: &str, label: &str) -> Result<bool, InjectError> {
        // A pod always has metadata by the time it is admitted; a template may omit it.
        let had_metadata = pod.get("metadata").is_some_and(Value::is_object);
        if !had_metadata && let Some(obj) = pod.as_object_mut() {
            obj.insert("metadata".into(), Value::Object(Default::default()));
        }
        let json = pod.to_string();
        let view = PodView::from_json(&json).map_err(|e| InjectError::Patch {
            document: self.document,
            object: label.to_owned(),
            message: format!("pod spec does not parse: {e}"),
        })?;
        let sa = view.service_account();
        let bindings = self.bindings.bindings_for(namespace, sa);
        let account = match self
            .accounts
            .iter()
            .find(|a| a.namespace == namespace && a.name == sa)
        {
            Some(a) => ServiceAccountState::of_annotation(a.google_service_account.as_deref()),
            None => self.bindings.service_account(namespace, sa),
        };
        let result = mutate::mutate(
            &view,
            namespace,
            bindings.as_deref().unwrap_or_default(),
            &account,
            self.cfg,
        )
        .map_err(|d| InjectError::Denied {
            document: self.document,
            object: label.to_owned(),
            message: match d.reason {
                DenyReason::ServiceAccountUnknown => format!(
                    "rolebridge: ServiceAccount {namespace}/{sa} is neither in the manifests nor in a --bindings file, so inject cannot pin the Google service account the agent must act as (a binding of it uses tokenSource: Google), and an unpinned agent could act as the node's identity. Add the ServiceAccount, with its iam.gke.io/gcp-service-account annotation, to the manifests or to a --bindings file."
                ),
                _ => d.message,
            },
        })?;
        for w in result.warnings {
            self.warnings.push(format!("{label}: {w}"));
        }
        if result.outcome != Outcome::Mutated {
            if !had_metadata && let Some(obj) = pod.as_object_mut() {
                obj.remove("metadata");
            }
            return Ok(false);
        }
        let ops = result.patch.ops().map_err(|e| InjectError::Patch {
            document: self.document,
            object: label.to_owned(),
            message: format!("the patch does not read back: {e}"),
        })?;
        json_patch::patch(pod, &ops).map_err(|e| InjectError::Patch {
            document: self.document,
            object: label.to_owned(),
            message: e.to_string(),
        })?;
        self.mutated += 1;
        Ok(true)
    }
}

/// Injects every pod template of `input`. Objects without a namespace are taken to be in
/// `default_namespace`, as `kubectl apply` would place them.
pub fn inject(
    input: &str,
    bindings: &Store,
    cfg: &Config,
    default_namespace: &str,
) -> Result<Injected, InjectError> {
    let accounts =
        convert::service_accounts_from_yaml(input, default_namespace).map_err(|e| match e {
            BindingError::Yaml { document, message } => InjectError::Yaml { document, message },
            other => InjectError::Yaml {
                document: 0,
                message: other.to_string(),
            },
        })?;
    let mut injector = Injector {
        bindings,
        accounts,
        cfg,
        default_namespace,
        document: 0,
        warnings: Vec::new(),
        mutated: 0,
    };
    let mut output = String::with_capacity(input.len() * 2);
    for (i, text) in split_documents(input).into_iter().enumerate() {
        injector.document = i + 1;
        let yaml_err = |e: serde_norway::Error| InjectError::Yaml {
            document: i + 1,
            message: e.to_string(),
        };
        // A part may hold only a marker or comments: nothing to parse, copy it through.
        let mut docs = serde_norway::Deserializer::from_str(text);
        let value = match docs.next() {
            Some(doc) => Value::deserialize(doc).map_err(yaml_err)?,
            None => Value::Null,
        };
        let mut value = value;
        if value.is_object() && injector.object(&mut value)? {
            let marker = text.lines().next().filter(|l| l.starts_with("---"));
            if let Some(m) = marker {
                let _ = writeln!(output, "{m}");
            }
            output.push_str(&serde_norway::to_string(&value).map_err(yaml_err)?);
            if !output.ends_with('\n') {
                output.push('\n');
            }
        } else {
            output.push_str(text);
        }
    }
    Ok(Injected {
        output,
        warnings: injector.warnings,
        mutated: injector.mutated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_document_markers_only() {
        let input = "a: 1\n---\nb: |\n  ---\n  x\n--- # c\nc: 3\n";
        let docs = split_documents(input);
        assert_eq!(
            docs,
            ["a: 1\n", "---\nb: |\n  ---\n  x\n", "--- # c\nc: 3\n"]
        );
        assert_eq!(docs.concat(), input);
    }
}
