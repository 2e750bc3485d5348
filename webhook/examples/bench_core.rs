//! The cost of each stage of an admission, without network or TLS, on two reviews: the
//! captured 9.3 KB one (`tests/fixtures/admissionreview-v1-pod-from-apiserver.json`) and one
//! with several containers and bindings of both deliveries.
//!
//!   cargo run --release -p rolebridge-webhook --example bench_core
//!       time per stage (µs) and, when valgrind is installed, instructions per stage
//!   … -- --check bench/instructions.txt
//!       also fail when a stage's instructions grew by more than 25 % over the recorded figure
//!   … -- --record bench/instructions.txt
//!       write the figures measured now as the recorded ones
//!
//! Instructions, not time, are the regression guard: callgrind counts them exactly, so they
//! do not move with the load of a shared machine. Each stage is run under callgrind twice with
//! different iteration counts and the difference is divided by the extra iterations, so the
//! set-up (reading fixtures, building the store) cancels out.
//!
//! The floor is `skip`: serde_json's `IgnoredAny` over the same bytes, i.e. reading the body
//! once and keeping nothing. The whole admission is meant to cost at most 1.5 times that.

use std::hint::black_box;
use std::process::{Command, ExitCode};
use std::time::Instant;

use rolebridge_webhook::admission::mutate::{Config, mutate};
use rolebridge_webhook::admission::review::{Parsed, parse};
use rolebridge_webhook::bindings::store::Store;
use rolebridge_webhook::domain::convert::{bindings_from_yaml, service_accounts_from_yaml};
use rolebridge_webhook::domain::pod::PodView;

// The shipped binary's allocator: allocation is a large part of what is measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (name, review, bindings) of each measured review.
const FIXTURES: [(&str, &str, &str); 2] = [
    (
        "captured",
        include_str!("../tests/fixtures/admissionreview-v1-pod-from-apiserver.json"),
        include_str!("../../bench/bindings.yaml"),
    ),
    (
        "several",
        include_str!("../tests/fixtures/admissionreview-v1-pod-several-containers.json"),
        include_str!("../../bench/bindings-several.yaml"),
    ),
];

/// The stages, cheapest first. `admission` is what the server does per request once the body
/// is in memory: parse, look the bindings up, decide, write the response.
const STAGES: [&str; 5] = ["skip", "parse", "pod-view", "mutate", "admission"];

/// How much growth over the recorded instructions the check tolerates.
const TOLERANCE: f64 = 1.25;

struct Fixture {
    body: &'static [u8],
    pod_json: String,
    store: Store,
    cfg: Config,
}

impl Fixture {
    fn load(review: &'static str, bindings: &str) -> Fixture {
        let object: serde_json::Value = serde_json::from_str(review).expect("fixture JSON");
        let store: Store = bindings_from_yaml(bindings, "default")
            .expect("fixture bindings")
            .into_iter()
            .collect();
        for a in service_accounts_from_yaml(bindings, "default").expect("fixture accounts") {
            store.apply_account(&a.namespace, &a.name, a.google_service_account.as_deref());
        }
        Fixture {
            body: review.as_bytes(),
            pod_json: object["request"]["object"].to_string(),
            store,
            cfg: Config::default(),
        }
    }

    /// One iteration of `stage`.
    fn run(&self, stage: &str, view: &PodView<'_>) {
        match stage {
            "skip" => {
                black_box(
                    serde_json::from_slice::<serde::de::IgnoredAny>(black_box(self.body)).unwrap(),
                );
            }
            "parse" => {
                black_box(matches!(parse(black_box(self.body)), Parsed::Pod(_)));
            }
            "pod-view" => {
                black_box(PodView::from_json(black_box(&self.pod_json)).unwrap());
            }
            "mutate" => {
                let bindings = self.store.bindings_for("default", "app-sa").unwrap();
                let account = self.store.service_account("default", "app-sa");
                black_box(
                    mutate(black_box(view), "default", &bindings, &account, &self.cfg).unwrap(),
                );
            }
            "admission" => {
                if let Parsed::Pod(r) = parse(black_box(self.body)) {
                    let sa = r.service_account();
                    let bindings = self
                        .store
                        .bindings_for(&r.namespace, sa)
                        .unwrap_or_default();
                    let account = self.store.service_account(&r.namespace, sa);
                    black_box(r.respond(&bindings, &account, &self.cfg));
                }
            }
            other => panic!("unknown stage {other}"),
        }
    }
}

fn fixture(name: &str) -> Fixture {
    let (_, review, bindings) = FIXTURES
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown fixture {name}"));
    Fixture::load(review, bindings)
}

/// Microseconds per iteration of `stage`.
fn time(f: &Fixture, stage: &str, iters: u32) -> f64 {
    let view = PodView::from_json(&f.pod_json).unwrap();
    for _ in 0..iters / 10 {
        f.run(stage, &view);
    }
    let start = Instant::now();
    for _ in 0..iters {
        f.run(stage, &view);
    }
    start.elapsed().as_secs_f64() / f64::from(iters) * 1e6
}

/// Instructions per iteration of `stage`, counted by callgrind; `None` without valgrind.
fn instructions(fixture: &str, stage: &str) -> Option<u64> {
    const FEW: u64 = 20;
    const MANY: u64 = 220;
    let count = |iters: u64| -> Option<u64> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(std::env::current_exe().ok()?)
            .args(["--child", fixture, stage, &iters.to_string()])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let line = text.lines().find(|l| l.contains("Collected :"))?;
        line.rsplit(':')
            .next()?
            .trim()
            .replace(',', "")
            .parse()
            .ok()
    };
    let (few, many) = (count(FEW)?, count(MANY)?);
    Some(many.saturating_sub(few) / (MANY - FEW))
}

/// `fixture stage instructions` lines.
fn read_recorded(path: &str) -> Vec<(String, String, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.into(), w.next()?.into(), w.next()?.parse().ok()?))
        })
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        // Under callgrind: just the loop.
        let f = fixture(&args[1]);
        let view = PodView::from_json(&f.pod_json).unwrap();
        let iters: u64 = args[3].parse().unwrap();
        for _ in 0..iters {
            f.run(&args[2], &view);
        }
        return ExitCode::SUCCESS;
    }
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let (check, record) = (option("--check"), option("--record"));
    let recorded = check.as_deref().map(read_recorded).unwrap_or_default();
    let mut measured = Vec::new();
    let mut failed = false;
    println!(
        "{:<10} {:<10} {:>10} {:>14} {:>10} {:>14}",
        "review", "stage", "µs", "instructions", "× skip", "recorded"
    );
    for (name, _, _) in FIXTURES {
        let f = fixture(name);
        let mut floor = None;
        for stage in STAGES {
            let micros = time(&f, stage, 5_000);
            let instr = instructions(name, stage);
            if stage == "skip" {
                floor = instr;
            }
            let ratio = match (instr, floor) {
                (Some(i), Some(s)) if s > 0 => format!("{:.2}", i as f64 / s as f64),
                _ => "-".into(),
            };
            let before = recorded
                .iter()
                .find(|(fx, st, _)| fx == name && st == stage)
                .map(|(_, _, n)| *n);
            let verdict = match (instr, before) {
                (Some(now), Some(was)) if now as f64 > was as f64 * TOLERANCE => {
                    failed = true;
                    format!("{was} REGRESSED")
                }
                (_, Some(was)) => was.to_string(),
                (_, None) => "-".into(),
            };
            let shown = instr.map_or("-".into(), |i| i.to_string());
            println!("{name:<10} {stage:<10} {micros:>10.2} {shown:>14} {ratio:>10} {verdict:>14}");
            if let Some(i) = instr {
                measured.push(format!("{name} {stage} {i}"));
            }
        }
    }
    if (check.is_some() || record.is_some()) && measured.is_empty() {
        eprintln!("bench_core: valgrind is not installed: no instruction counts");
        return ExitCode::FAILURE;
    }
    if let Some(path) = record {
        let text = format!(
            "# Instructions per admission stage (callgrind), written by bench_core --record.\n\
             # CI fails when a stage grows by more than {:.0} % over these.\n{}\n",
            (TOLERANCE - 1.0) * 100.0,
            measured.join("\n")
        );
        std::fs::write(&path, text).expect("writing the recorded figures");
        println!("recorded in {path}");
    }
    if failed {
        eprintln!(
            "bench_core: instructions grew by more than {:.0} % (see REGRESSED)",
            (TOLERANCE - 1.0) * 100.0
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
