//! The binding and service-account watches against a stub API server that goes away and comes
//! back with its watch history compacted: admissions keep being answered from the cache during
//! the outage, and a binding created after the API server returns reaches the cache and gets
//! its status within 10 s (the issue measured 54 s with kube's default backoff).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use rolebridge_webhook::bindings::lease::Leadership;
use support::apiserver::StubApi;

fn spec(sa: &str) -> serde_json::Value {
    json!({"serviceAccountName": sa, "roleArn": "arn:aws:iam::123456789012:role/app"})
}

fn reason(stub: &StubApi, name: &str) -> Option<String> {
    let status = stub.status_of("team", name)?;
    Some(status["conditions"][0]["reason"].as_str()?.to_owned())
}

async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

async fn recovers(gone_as_http: bool) {
    let stub = StubApi::start().await;
    stub.gone_as_http(gone_as_http);
    stub.create_service_account("team", "app", Some("app@p.iam.gserviceaccount.com"));
    stub.create_binding("team", "before", spec("app"));
    let cache = support::run_bindings(stub.client(), None, Leadership::always(), 4);
    eventually("first status", Duration::from_secs(10), || {
        reason(&stub, "before").as_deref() == Some("Bound")
    })
    .await;

    // The control plane goes away long enough for the watches to back off to their cap.
    stub.outage();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(cache.is_synced(), "still serving from the cache");
    let served = cache
        .bindings_for("team", "app")
        .await
        .expect("cached binding");
    assert_eq!(served[0].name, "before");

    stub.restore().await;
    let back = Instant::now();
    stub.create_service_account("team", "late", Some("late@p.iam.gserviceaccount.com"));
    stub.create_binding("team", "after", spec("late"));
    let cached = eventually("cache has the new binding", Duration::from_secs(10), || {
        cache.store().bindings_for("team", "late").is_some()
    })
    .await;
    eventually(
        "status of the new binding",
        Duration::from_secs(10) - cached,
        || reason(&stub, "after").as_deref() == Some("Bound"),
    )
    .await;
    eprintln!(
        "gone as HTTP 410: {gone_as_http}: cached {:?}, status {:?} after the API server returned",
        cached,
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_created_after_an_outage_gets_its_status_within_10s() {
    recovers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_refused_with_410_starts_over_with_a_fresh_list() {
    recovers(true).await;
}
