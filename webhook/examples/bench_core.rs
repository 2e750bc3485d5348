//! Prints the cost of each stage of an admission on the captured 9.3 KB review, without
//! network or TLS: `cargo run --release -p rolebridge-webhook --example bench_core`.

use std::hint::black_box;
use std::time::Instant;

use rolebridge_webhook::admission::mutate::{Config, mutate};
use rolebridge_webhook::admission::review::{Parsed, parse};
use rolebridge_webhook::bindings::store::Store;
use rolebridge_webhook::domain::convert::{bindings_from_yaml, service_accounts_from_yaml};
use rolebridge_webhook::domain::pod::PodView;

const REVIEW: &str = include_str!("../tests/fixtures/admissionreview-v1-pod-from-apiserver.json");

fn time(name: &str, iters: u32, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let per = start.elapsed().as_secs_f64() / f64::from(iters) * 1e6;
    println!("{name:<40} {per:>8.2} µs");
}

fn main() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/bindings.yaml"
    ))
    .unwrap();
    let store: Store = bindings_from_yaml(&text, "default")
        .unwrap()
        .into_iter()
        .collect();
    for a in service_accounts_from_yaml(&text, "default").unwrap() {
        store.apply_account(&a.namespace, &a.name, a.google_service_account.as_deref());
    }
    let bindings = store.bindings_for("default", "app-sa").unwrap();
    let account = store.service_account("default", "app-sa");
    let cfg = Config::default();
    let body = REVIEW.as_bytes();
    let object: serde_json::Value = serde_json::from_str(REVIEW).unwrap();
    let pod_json = object["request"]["object"].to_string();
    let n = 20_000;

    time("serde_json::Value parse (reference)", n, || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap());
    });
    time("skip whole body (IgnoredAny)", n, || {
        black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).unwrap());
    });
    time("review::parse (review + pod view)", n, || {
        black_box(matches!(parse(black_box(body)), Parsed::Pod(_)));
    });
    time("PodView::from_json (pod only)", n, || {
        black_box(PodView::from_json(black_box(&pod_json)).unwrap());
    });
    let view = PodView::from_json(&pod_json).unwrap();
    time("mutate (patch ops)", n, || {
        black_box(mutate(black_box(&view), "default", &bindings, &account, &cfg).unwrap());
    });
    let m = mutate(&view, "default", &bindings, &account, &cfg).unwrap();
    time("serialize patch to JSON", n, || {
        black_box(serde_json::to_vec(black_box(&m.patch)).unwrap());
    });
    time("parse + respond (whole admission)", n, || {
        if let Parsed::Pod(r) = parse(black_box(body)) {
            black_box(r.respond(&bindings, &account, &cfg));
        }
    });
}
