//! What the HTTP edge adds to authentication: refused credentials counted
//! (`stella_auth_failures_total{reason}`) and audited, and the rate limits of the
//! endpoints that hand out credentials (429 with `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::envelope::ApiError;
use super::listener::ClientAddr;
use crate::app::App;
use crate::error::{AppError, ErrorKind};

/// Counts a refused authentication and audits it. Mutating requests under `/api/v1/`
/// are audited by the audit middleware anyway (outcome 401); the others are audited
/// here, at most as often as the per-IP rate allows, so that a flood of bad tokens
/// cannot turn into a flood of audit writes (the metric counts every one).
pub fn count_failure(app: &Arc<App>, parts: &Parts, reason: &'static str) {
    app.metrics.auth_failure(reason);
    let mutating = matches!(
        parts.method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE
    );
    // Inside the `/api/v1` router the URI has lost its prefix; the original has it.
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || parts.uri.path().to_owned(),
            |uri| uri.0.path().to_owned(),
        );
    if mutating && path.starts_with("/api/v1/") {
        return;
    }
    let ip = parts
        .extensions
        .get::<ClientAddr>()
        .map_or_else(|| "unknown".to_owned(), |addr| addr.0.to_string());
    if app.identity.by_ip.check(&format!("audit:{ip}")).is_err() {
        return;
    }
    let app = app.clone();
    let action = format!("{} (authentication refused: {reason})", parts.method);
    let object = path.chars().take(1024).collect::<String>();
    tokio::spawn(async move {
        app.audit(
            super::audit::ANONYMOUS,
            &action,
            &object,
            super::audit::UNREAD_BODY,
            "401",
        )
        .await;
    });
}

/// The 429 of a rate limit, with `Retry-After` in whole seconds (at least 1).
pub fn too_many_requests(wait: Duration, what: &str) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError(AppError::new(
        ErrorKind::TooManyRequests,
        "rate_limited",
        format!("too many {what} from this client; retry in {seconds} s"),
    ))
    .into_response();
    if let Ok(value) = http::HeaderValue::from_str(&seconds.to_string()) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// Takes one request from the per-IP bucket of a credential-issuing endpoint; the 429
/// to answer when the bucket is empty.
pub fn limit_by_ip(app: &App, addr: Option<ClientAddr>, what: &str) -> Option<Response> {
    let ip = addr.map_or_else(|| "unknown".to_owned(), |addr| addr.0.to_string());
    app.identity
        .by_ip
        .check(&format!("ip:{ip}"))
        .err()
        .map(|wait| {
            crate::metrics::Metrics::count(&app.metrics.auth_rate_limited, "ip");
            too_many_requests(wait, what)
        })
}
