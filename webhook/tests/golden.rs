//! Golden cases for the mutation: one YAML file per case under `tests/golden/`.
//!
//! Each case gives an input pod (inline, or `podFromReview` naming a captured AdmissionReview in
//! `tests/fixtures/`), the `AWSRoleBinding` manifests present in the cluster, optional config
//! overrides and the expected result. The harness selects bindings exactly like the webhook
//! (typed resource → `convert::binding_from_resource` → the webhook's own
//! `Store::bindings_for(namespace, SA)`),
//! runs `mutate`, applies the patch with `json_patch::patch` and compares the result with
//! `expect.pod` semantically (JSON value equality). Every mutated result must also be a fixed
//! point: mutating it again yields no operations and `Skipped(AlreadyInjected)`.
//!
//! File format (`expect` must be the last top-level key, and `pod` the last key inside it, so
//! that `ROLEBRIDGE_UPDATE_GOLDEN=1` can rewrite the expected pod without touching comments):
//!
//! ```yaml
//! description: what this case proves
//! namespace: default            # optional, default "default"
//! config: {sidecarMode: legacy} # optional: agentImage, agentImagePullPolicy, sidecarMode,
//!                               # defaultAudience, ownNamespace, credentialsPort, clusterName,
//!                               # kubernetesTokenExpiration (seconds)
//! bindings: [ ...AWSRoleBinding manifests... ]
//! serviceAccounts:              # optional: the service accounts of the namespace, each with
//!   app-sa: a@p.iam.gserviceaccount.com  # its iam.gke.io/gcp-service-account (null: none);
//!   other: null                 # absent: every service account a binding names exists, with
//!                               # DEFAULT_GSA; one not listed here does not exist
//! pod: { ... }                  # or podFromReview: <file in tests/fixtures>
//! expect:
//!   outcome: mutated | skipped | denied
//!   skipReason: noBinding       # optional, skipped only
//!   denial: ["substring"]       # denied only
//!   warnings: ["substring"]     # absent: there must be no warning at all
//!   pod: { ... }                # mutated only: the whole pod after the patch
//! ```
//!
//! `ROLEBRIDGE_UPDATE_GOLDEN=1` writes the actual result into `expect.pod` of mutated cases. It
//! is a typing aid: every expected pod must still be read and checked against the rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rolebridge_webhook::admission::mutate::{
    self, Config, Outcome, ServiceAccountState, SidecarMode, Skip,
};
use rolebridge_webhook::bindings::store::Store;
use rolebridge_webhook::domain::convert::binding_from_resource;
use rolebridge_webhook::domain::crd::AWSRoleBinding;
use rolebridge_webhook::domain::pod::PodView;
use serde::Deserialize;
use serde_json::Value;

/// The folder must hold at least this many cases, so a broken glob cannot pass silently.
const MIN_CASES: usize = 30;

/// The Google service account of every bound service account of a case that lists none (the
/// real-API-server replay gives them the same).
const DEFAULT_GSA: &str = "app@project.iam.gserviceaccount.com";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    description: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    config: ConfigOverrides,
    #[serde(default)]
    bindings: Vec<AWSRoleBinding>,
    #[serde(default)]
    service_accounts: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pod: Option<Value>,
    #[serde(default)]
    pod_from_review: Option<String>,
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigOverrides {
    agent_image: Option<String>,
    agent_image_pull_policy: Option<String>,
    sidecar_mode: Option<Mode>,
    default_audience: Option<String>,
    own_namespace: Option<String>,
    credentials_port: Option<u16>,
    cluster_name: Option<String>,
    kubernetes_token_expiration: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum Mode {
    Native,
    Legacy,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "camelCase")]
enum ExpectedOutcome {
    Mutated,
    Skipped,
    Denied,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "camelCase")]
enum SkipReason {
    OwnNamespace,
    NoBinding,
    OptedOut,
    Windows,
    NoContainerCovered,
    AlreadyInjected,
}

impl SkipReason {
    fn matches(self, s: Skip) -> bool {
        matches!(
            (self, s),
            (SkipReason::OwnNamespace, Skip::OwnNamespace)
                | (SkipReason::NoBinding, Skip::NoBinding)
                | (SkipReason::OptedOut, Skip::OptedOut)
                | (SkipReason::Windows, Skip::Windows)
                | (SkipReason::NoContainerCovered, Skip::NoContainerCovered)
                | (SkipReason::AlreadyInjected, Skip::AlreadyInjected)
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    outcome: ExpectedOutcome,
    #[serde(default)]
    skip_reason: Option<SkipReason>,
    #[serde(default)]
    denial: Option<Vec<String>>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
    #[serde(default)]
    pod: Option<Value>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn config(o: &ConfigOverrides) -> Config {
    let mut cfg = Config::default();
    if let Some(v) = &o.agent_image {
        cfg.agent_image = v.clone();
    }
    if let Some(v) = &o.agent_image_pull_policy {
        cfg.agent_image_pull_policy = v.clone();
    }
    if let Some(m) = o.sidecar_mode {
        cfg.sidecar_mode = match m {
            Mode::Native => SidecarMode::Native,
            Mode::Legacy => SidecarMode::Legacy,
        };
    }
    if let Some(v) = &o.default_audience {
        cfg.default_audience = v.clone();
    }
    if let Some(v) = &o.own_namespace {
        cfg.own_namespace = Some(v.clone());
    }
    if let Some(v) = o.credentials_port {
        cfg.credentials_port = v;
    }
    if let Some(v) = &o.cluster_name {
        cfg.cluster_name = Some(v.clone());
    }
    if let Some(v) = o.kubernetes_token_expiration {
        cfg.kubernetes_token_expiration = std::time::Duration::from_secs(v);
    }
    cfg
}

/// What the webhook knows of service account `sa` in the case's namespace.
fn account(case: &Case, sa: &str) -> ServiceAccountState {
    match &case.service_accounts {
        Some(listed) => match listed.get(sa) {
            Some(gsa) => ServiceAccountState::of_annotation(gsa.as_deref()),
            None => ServiceAccountState::Missing,
        },
        None if case
            .bindings
            .iter()
            .any(|b| b.spec.service_account_name == sa) =>
        {
            ServiceAccountState::WorkloadIdentity(DEFAULT_GSA.into())
        }
        None => ServiceAccountState::Missing,
    }
}

fn input_pod(case: &Case) -> Result<Value, String> {
    match (&case.pod, &case.pod_from_review) {
        (Some(p), None) => Ok(p.clone()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(fixtures_dir().join(file))
                .map_err(|e| format!("podFromReview {file}: {e}"))?;
            let review: Value =
                serde_json::from_str(&text).map_err(|e| format!("podFromReview {file}: {e}"))?;
            let pod = review["request"]["object"].clone();
            if !pod.is_object() {
                return Err(format!("podFromReview {file}: no request.object"));
            }
            Ok(pod)
        }
        _ => Err("exactly one of `pod` and `podFromReview` is required".into()),
    }
}

/// Lines `path: expected → actual` for every leaf where the two documents differ.
fn diff_paths(path: &str, expected: &Value, actual: &Value, out: &mut String) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                match a.get(k) {
                    Some(av) => diff_paths(&p, ev, av, out),
                    None => {
                        let _ = writeln!(out, "  {p}: missing in actual (expected {ev})");
                    }
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                    let _ = writeln!(out, "  {p}: unexpected in actual: {av}");
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            for i in 0..e.len().max(a.len()) {
                let p = format!("{path}/{i}");
                match (e.get(i), a.get(i)) {
                    (Some(ev), Some(av)) => diff_paths(&p, ev, av, out),
                    (Some(ev), None) => {
                        let _ = writeln!(out, "  {p}: missing in actual (expected {ev})");
                    }
                    (None, Some(av)) => {
                        let _ = writeln!(out, "  {p}: unexpected in actual: {av}");
                    }
                    (None, None) => {}
                }
            }
        }
        (e, a) if e != a => {
            let _ = writeln!(out, "  {path}: expected {e}, actual {a}");
        }
        _ => {}
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("a Value always serialises")
}

/// Rewrites `expect.pod` in the file's text, keeping everything before it (comments included).
fn update_expected_pod(path: &Path, text: &str, pod: &Value) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let expect_at = lines
        .iter()
        .position(|l| l.trim_end() == "expect:")
        .ok_or("no top-level `expect:` line")?;
    if lines[expect_at + 1..]
        .iter()
        .any(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('#'))
    {
        return Err("`expect` must be the last top-level key".into());
    }
    let pod_at = lines[expect_at + 1..]
        .iter()
        .position(|l| l.starts_with("  pod:"))
        .map(|i| i + expect_at + 1)
        .unwrap_or(lines.len());
    let mut out = lines[..pod_at].join("\n");
    out.push_str("\n  pod:\n");
    let yaml = serde_norway::to_string(pod).map_err(|e| e.to_string())?;
    for l in yaml.lines() {
        out.push_str("    ");
        out.push_str(l);
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| e.to_string())
}

fn check_substrings(what: &str, wanted: &[String], got: &[String], errors: &mut Vec<String>) {
    for w in wanted {
        if !got.iter().any(|g| g.contains(w.as_str())) {
            errors.push(format!("no {what} contains {w:?}; got {got:#?}"));
        }
    }
}

/// Runs one case; returns what went wrong (empty when it passed).
fn run_case(path: &Path, update: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot read: {e}")],
    };
    let case: Case = match serde_norway::from_str(&text) {
        Ok(c) => c,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    if case.description.trim().is_empty() {
        errors.push("empty description".into());
    }
    let pod = match input_pod(&case) {
        Ok(p) => p,
        Err(e) => return vec![e],
    };
    let namespace = case.namespace.as_deref().unwrap_or("default");
    let cfg = config(&case.config);

    let mut resolved = Vec::new();
    for b in &case.bindings {
        match binding_from_resource(b) {
            Ok(nb) => resolved.push(nb),
            Err(e) => return vec![format!("binding is not valid: {e}")],
        }
    }
    let store: Store = resolved.into_iter().collect();

    let pod_json = serde_json::to_string(&pod).expect("a Value always serialises");
    let view = match PodView::from_json(&pod_json) {
        Ok(v) => v,
        Err(e) => return vec![format!("pod does not parse as a PodView: {e}")],
    };
    let bindings = store
        .bindings_for(namespace, view.service_account())
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let account = account(&case, view.service_account());
    let result = mutate::mutate(&view, namespace, &bindings, &account, &cfg);

    let expect = &case.expect;
    let warnings: &[String] = match &result {
        Ok(m) => &m.warnings,
        Err(_) => &[],
    };
    match &expect.warnings {
        Some(w) => {
            if w.is_empty() {
                errors.push("`warnings: []` is ambiguous: omit the key to require none".into());
            }
            check_substrings("warning", w, warnings, &mut errors);
        }
        None if !warnings.is_empty() => {
            errors.push(format!("expected no warnings, got {warnings:#?}"));
        }
        None => {}
    }
    if expect.outcome != ExpectedOutcome::Denied && expect.denial.is_some() {
        errors.push("`denial` is only for denied cases".into());
    }
    if expect.outcome != ExpectedOutcome::Skipped && expect.skip_reason.is_some() {
        errors.push("`skipReason` is only for skipped cases".into());
    }
    if expect.outcome != ExpectedOutcome::Mutated && expect.pod.is_some() {
        errors.push("`expect.pod` is only for mutated cases".into());
    }

    match (expect.outcome, result) {
        (ExpectedOutcome::Denied, Err(denial)) => match &expect.denial {
            Some(d) if !d.is_empty() => check_substrings(
                "denial",
                d,
                std::slice::from_ref(&denial.message),
                &mut errors,
            ),
            _ => errors.push("a denied case must list `denial` substrings".into()),
        },
        (ExpectedOutcome::Skipped, Ok(m)) => {
            match m.outcome {
                Outcome::Skipped(s) => {
                    if let Some(r) = expect.skip_reason
                        && !r.matches(s)
                    {
                        errors.push(format!("skipped for {s:?}, expected {r:?}"));
                    }
                }
                Outcome::Mutated => errors.push("expected skipped, got mutated".into()),
            }
            if !m.patch.is_empty() {
                errors.push(format!(
                    "a skipped pod must get no operations, got {:#?}",
                    m.patch
                ));
            }
        }
        (ExpectedOutcome::Mutated, Ok(m)) => {
            if m.outcome != Outcome::Mutated {
                errors.push(format!("expected mutated, got {:?}", m.outcome));
            }
            let ops = match m.patch.ops() {
                Ok(ops) => ops,
                Err(e) => {
                    errors.push(format!("the patch is not a JSON patch: {e}: {:?}", m.patch));
                    return errors;
                }
            };
            if let Some(op) = ops
                .iter()
                .find(|op| !matches!(op, json_patch::PatchOperation::Add(_)))
            {
                errors.push(format!("the mutation only ever adds, got {op:?}"));
            }
            let mut actual = pod.clone();
            if let Err(e) = json_patch::patch(&mut actual, &ops) {
                errors.push(format!("patch does not apply: {e}\npatch: {:#?}", m.patch));
                return errors;
            }
            if update {
                if let Err(e) = update_expected_pod(path, &text, &actual) {
                    errors.push(format!("cannot update: {e}"));
                }
            } else {
                match &expect.pod {
                    None => errors.push("a mutated case must give `expect.pod`".into()),
                    Some(want) if *want != actual => {
                        let mut d = String::new();
                        diff_paths("", want, &actual, &mut d);
                        errors.push(format!(
                            "mutated pod differs from expect.pod:\n{d}\n--- expected\n{}\n--- actual\n{}",
                            pretty(want),
                            pretty(&actual)
                        ));
                    }
                    Some(_) => {}
                }
            }
            // Reinvocation / a second replica: the result is a fixed point.
            let again_json = serde_json::to_string(&actual).expect("a Value always serialises");
            let again_view = PodView::from_json(&again_json).expect("the patched pod parses");
            match mutate::mutate(&again_view, namespace, &bindings, &account, &cfg) {
                Ok(m2)
                    if m2.patch.is_empty()
                        && m2.outcome == Outcome::Skipped(Skip::AlreadyInjected) => {}
                other => errors.push(format!(
                    "not idempotent: mutating the result again gave {other:#?}"
                )),
            }
        }
        (want, got) => errors.push(format!("expected {want:?}, got {got:#?}")),
    }
    errors
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("ROLEBRIDGE_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= MIN_CASES,
        "only {} golden cases in {} (want at least {MIN_CASES})",
        files.len(),
        golden_dir().display()
    );
    let mut failures = String::new();
    for f in &files {
        let errors = run_case(f, update);
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        if errors.is_empty() {
            eprintln!("ok   {name}");
        } else {
            eprintln!("FAIL {name}");
            let _ = writeln!(failures, "\n=== {name} ({})", f.display());
            for e in errors {
                let _ = writeln!(failures, "- {e}");
            }
        }
    }
    assert!(failures.is_empty(), "golden cases failed:{failures}");
    assert!(
        !update,
        "ROLEBRIDGE_UPDATE_GOLDEN=1 rewrote expected pods: review the diff, then run again without it"
    );
}

/// The harness itself must notice a wrong expectation, or every case above proves nothing.
#[test]
fn harness_detects_a_wrong_expected_pod() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.yaml");
    std::fs::write(
        &path,
        r#"description: deliberately wrong
bindings:
  - apiVersion: rolebridge.io/v1alpha1
    kind: AWSRoleBinding
    metadata: {name: b, namespace: default}
    spec: {serviceAccountName: sa, roleArn: "arn:aws:iam::123456789012:role/r"}
pod:
  metadata: {name: p}
  spec: {serviceAccountName: sa, containers: [{name: app, image: app}]}
expect:
  outcome: mutated
  pod:
    metadata: {name: p}
    spec: {serviceAccountName: sa, containers: [{name: app, image: app}]}
"#,
    )
    .unwrap();
    let errors = run_case(&path, false);
    assert!(
        errors.iter().any(|e| e.contains("differs from expect.pod")),
        "{errors:#?}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("outcome: mutated", "outcome: skipped");
    std::fs::write(&path, text).unwrap();
    let errors = run_case(&path, false);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("expected skipped, got mutated")),
        "{errors:#?}"
    );
}
