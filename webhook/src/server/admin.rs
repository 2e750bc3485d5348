//! The plain-HTTP admin port: `/healthz`, `/readyz`, `/metrics`.
//!
//! It is separate from the admission port so that probes and scrapes need no TLS and can never
//! queue behind admissions, and so that the admission port exposes nothing but `/mutate`.

use std::convert::Infallible;
use std::sync::Arc;

use warp::Filter;
use warp::http::{Response, StatusCode};

use crate::server::AppState;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .expect("static headers")
}

pub(crate) fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response<String>,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .map(|| text(StatusCode::OK, "text/plain", "ok\n".to_owned()));
    let ready_state = state.clone();
    let readyz =
        warp::path("readyz")
            .and(warp::path::end())
            .map(move || match ready_state.readiness() {
                Ok(()) => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                ),
            });
    let metrics = warp::path("metrics").and(warp::path::end()).map(move || {
        text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        )
    });
    warp::get()
        .and(healthz.or(readyz).unify().or(metrics).unify())
        .recover(|_| async {
            Ok::<_, Infallible>(text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: /healthz, /readyz, /metrics\n".to_owned(),
            ))
        })
        .unify()
}
