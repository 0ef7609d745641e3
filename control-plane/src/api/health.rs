//! `/healthz`, `/readyz` and `/metrics`: for supervisors, load balancers and
//! Prometheus. No token needed.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::envelope::{ApiError, ErrorEnvelope};
use crate::app::App;
use crate::error::{AppError, ErrorKind};

/// Liveness: the process serves HTTP.
///
/// Answers `ok` as long as the REST listener accepts connections; it checks nothing
/// else, so a supervisor restarts the server only when it is truly stuck.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "getHealth",
    responses((status = 200, description = "The server is alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers.
///
/// Answers `ready` when the database answers a ping within 2 s, and `503 store_unavailable`
/// otherwise, so that a load balancer sends requests only to replicas that can serve
/// them.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "getReadiness",
    responses(
        (status = 200, description = "The store answers", body = String, content_type = "text/plain"),
        (status = 503, description = "The store does not answer (`store_unavailable`)", body = ErrorEnvelope),
    ))]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    // Bounded: while the database is down the pool keeps trying to connect until its
    // acquire timeout, and a probe that hangs that long tells a load balancer nothing.
    let message = match tokio::time::timeout(READY_PING_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => return "ready\n".into_response(),
        Ok(Err(error)) => format!("store unavailable: {error}"),
        Err(_) => format!(
            "store unavailable: no answer within {} s",
            READY_PING_TIMEOUT.as_secs()
        ),
    };
    ApiError(AppError::new(
        ErrorKind::Unavailable,
        "store_unavailable",
        message,
    ))
    .into_response()
}

/// How long `/readyz` waits for the store's answer.
const READY_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Prometheus metrics of this replica.
///
/// The OpenMetrics text exposition: agent sessions, heartbeats, enrolments, renewals,
/// REST requests with their latency by route template (`stella_http_request_duration_seconds`)
/// and REST connections.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "getMetrics",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
