//! The REST API (axum) under `/api/v1/`, plus `/healthz`, `/readyz`, `/metrics` and
//! the OpenAPI document generated from this code at `/api/v1/openapi.json`. The only
//! code that speaks HTTP.
//!
//! One module per concern; `envelope` holds the error envelope, JSON bodies, query
//! strings and authentication; `listener` the accept loop and its limits; `openapi`
//! the document.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod clients;
pub mod decisions;
pub mod deployments;
pub mod downloads;
pub mod drift;
pub mod envelope;
pub mod environments;
pub mod health;
pub mod listener;
pub mod oauth;
pub mod offline;
pub mod openapi;
pub mod promotions;
pub mod registries;
pub mod releases;
pub mod routers;
pub mod scans;
pub mod targets;
pub mod task_runner;
pub mod tenancy;
pub mod tenants;
pub mod tls;
pub mod tokens;
pub mod users;
pub mod variables;
pub mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;
use crate::error::{AppError, ErrorKind};
use crate::metrics::{HttpLabels, HttpLatencyLabels};
use crate::tenants::Tenants;
use envelope::{ApiError, TRACE_ID};

pub use openapi::ApiDoc;
use tenancy::ApiState;

/// The whole HTTP surface.
pub fn router(tenants: Arc<Tenants>) -> Router {
    let app = tenants.default_app().clone();
    let state = ApiState {
        app: app.clone(),
        tenants,
    };
    let api = Router::new()
        .route("/agents", get(agents::list))
        .route("/agents/join-tokens", post(agents::create_join_token))
        .route("/agents/{agent}", get(agents::show).delete(agents::delete))
        .route("/agents/{agent}/revoke", post(agents::revoke))
        .route("/gateway", get(agents::gateway))
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{name}",
            axum::routing::patch(users::update).delete(users::delete),
        )
        .route("/users/{name}/tokens", post(users::create_token))
        .route("/whoami", get(users::whoami))
        .route("/password", put(users::set_own_password))
        .route("/users/{name}/password", put(users::set_password))
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/{name}", axum::routing::delete(tenants::delete))
        .route(
            "/users/{name}/bindings",
            get(tenants::list_bindings)
                .post(tenants::bind)
                .delete(tenants::unbind),
        )
        .route(
            "/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke_token))
        .route(
            "/clients",
            get(clients::list_clients).post(clients::create_client),
        )
        .route(
            "/clients/{id}",
            axum::routing::delete(clients::revoke_client),
        )
        .route(
            "/environments",
            get(environments::list_environments).post(environments::create_environment),
        )
        .route(
            "/environments/{name}",
            get(environments::show_environment)
                .patch(environments::update_environment)
                .delete(environments::delete_environment),
        )
        .route(
            "/environments/{name}/variables",
            get(variables::list_variables),
        )
        .route(
            "/environments/{name}/variables/{variable}",
            put(variables::set_variable).delete(variables::delete_variable),
        )
        .route(
            "/environments/{name}/secrets/{variable}",
            put(variables::set_secret).delete(variables::delete_secret),
        )
        .route("/environments/{name}/rollback", post(deployments::rollback))
        .route(
            "/targets",
            get(targets::list_targets).post(targets::create_target),
        )
        .route(
            "/targets/{name}",
            get(targets::show_target)
                .patch(targets::update_target)
                .delete(targets::delete_target),
        )
        .route("/targets/{name}/check", post(targets::check_target))
        .route("/targets/{name}/remediate", post(targets::remediate_target))
        .route(
            "/routers",
            get(routers::list_routers).post(routers::create_router),
        )
        .route(
            "/routers/{name}",
            get(routers::show_router).delete(routers::delete_router),
        )
        .route(
            "/routers/{name}/routes/{route}",
            get(routers::show_route).put(routers::apply_route),
        )
        .route(
            "/registries",
            get(registries::list_registries).post(registries::add_registry),
        )
        .route(
            "/registries/{host}",
            axum::routing::delete(registries::delete_registry),
        )
        .route(
            "/releases",
            get(releases::list_releases).post(releases::create_release),
        )
        .route("/releases/{name}/{version}", get(releases::show_release))
        .route("/scans", post(scans::import_scan))
        .route("/scans/{digest}", get(scans::show_scan))
        .route(
            "/promotions",
            get(promotions::list_promotions).post(promotions::promote),
        )
        .route("/promotions/{id}", get(promotions::show_promotion))
        .route(
            "/promotions/{id}/approve",
            post(promotions::approve_promotion),
        )
        .route(
            "/promotions/{id}/reject",
            post(promotions::reject_promotion),
        )
        .route("/decisions/{id}", get(decisions::show_decision))
        .route("/decisions/{id}/replay", get(decisions::replay_decision))
        .route("/decisions/{id}/evidence", get(decisions::export_evidence))
        .route("/keys", get(decisions::list_keys))
        .route("/offline/kits", post(offline::bundle_kit))
        .route(
            "/evidence/imports",
            get(offline::list_imported_evidence).post(offline::import_evidence),
        )
        .route("/deployments", get(deployments::list_deployments))
        .route("/deployments/{id}", get(deployments::show_deployment))
        .route("/deployments/{id}/logs", get(deployments::deployment_logs))
        .route(
            "/deployments/{id}/{action}",
            post(deployments::move_rollout),
        )
        .route(
            "/deployments/{id}/cancel",
            post(deployments::cancel_deployment),
        )
        .route("/drift", get(drift::list_drift))
        .route("/downloads", get(downloads::list_downloads))
        .route(
            "/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route(
            "/webhooks/{id}",
            axum::routing::delete(webhooks::delete_webhook),
        )
        .route("/webhooks/{id}/deliveries", get(webhooks::list_deliveries))
        .route("/events", get(webhooks::list_events))
        .route("/audit", get(audit::list_audit))
        .route("/audit/checkpoints", get(audit::list_audit_checkpoints))
        .route("/openapi.json", get(openapi::document));
    let task_runner = Router::new()
        .route("/simulations", post(task_runner::simulate))
        .route(
            "/runs",
            get(task_runner::list_runs).post(task_runner::create_run),
        )
        .route("/runs/{run_id}", get(task_runner::show_run))
        .route("/runs/{run_id}/logs", get(task_runner::run_logs))
        .route("/runs/{run_id}/artifacts", get(task_runner::list_artifacts))
        .route(
            "/runs/{run_id}/artifacts/{name}",
            get(task_runner::download_artifact),
        )
        .route(
            "/runs/{run_id}/approvals/{approval_id}",
            post(task_runner::decide_approval),
        )
        .route("/runs/{run_id}/cancel", post(task_runner::cancel_run))
        .route("/openapi.yaml", get(task_runner::openapi_spec));
    Router::new()
        .merge(crate::console::router())
        .nest("/api/v1", api)
        .route("/oauth/token", post(oauth::token))
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .nest("/v1/task-runner", task_runner)
        .route("/.well-known/openapi", get(task_runner::openapi_metadata))
        .route("/downloads/{name}", get(downloads::get_download))
        .route("/install/agent.sh", get(downloads::agent_install_script))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // Inside `observe`: an entry is appended within the request's trace span, and a
        // body the audit middleware refuses leaves as the envelope.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(app, observe))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`, with the limits of the app's
/// configuration (see [`listener`]).
pub async fn serve(
    tenants: Arc<Tenants>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = tenants.default_app().clone();
    let limits = listener::ListenerLimits::of(&app.config);
    let tls = app.api_tls.as_ref().map(|tls| tls.acceptor());
    listener::serve(app, router(tenants), listener, limits, tls, shutdown).await
}

/// A new trace id: 32 hex digits.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Gives every request a trace id (the `x-trace-id` header, error envelopes, and the
/// span of everything logged while serving it), makes sure an error response is the
/// envelope, logs the request and measures it.
async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let trace_id = new_trace_id();
    let method = request.method().clone();
    // The path only: a query string may carry what does not belong in a log.
    let path = truncated(request.uri().path(), 200);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!("request", trace_id = %trace_id);
    let serve = async move { envelope::ensure_envelope(next.run(request).await).await };
    let mut response = TRACE_ID
        .scope(trace_id.clone(), serve)
        .instrument(span)
        .await;
    if let Ok(value) = http::HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    let elapsed = started.elapsed();
    let status = response.status();
    let method_label = method_label(&method);
    app.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: method_label.to_owned(),
            status: status.as_u16(),
        })
        .inc();
    app.metrics
        .http_request_duration
        .get_or_create(&HttpLatencyLabels {
            method: method_label.to_owned(),
            route,
            status_class: format!("{}xx", status.as_u16() / 100),
        })
        .observe(elapsed.as_secs_f64());
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let status = status.as_u16();
    macro_rules! log_request {
        ($level:ident) => {
            tracing::$level!(%method, %path, status, duration_ms, %trace_id, "request")
        };
    }
    match status {
        500.. => log_request!(warn),
        400.. => log_request!(info),
        _ => log_request!(debug),
    }
    response
}

/// The method as a metric label: the ones the API routes, or `other`, so that a client
/// cannot make up new series.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

async fn not_found(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError(AppError::new(
        ErrorKind::NotFound,
        "not_found",
        format!("no endpoint at {}", truncated(uri.path(), 200)),
    ))
}

async fn method_not_allowed(method: http::Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError(AppError::new(
        ErrorKind::MethodNotAllowed,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; the `allow` header lists what is",
            truncated(uri.path(), 200)
        ),
    ))
}

/// Unix milliseconds as RFC 3339 UTC, always with three fraction digits
/// (`2023-11-14T22:13:20.480Z`), so that every time in the API has one shape.
pub fn rfc3339(ms: i64) -> String {
    crate::domain::format_utc_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn timestamps_always_have_three_fraction_digits() {
        assert_eq!(rfc3339(1_700_000_000_480), "2023-11-14T22:13:20.480Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(rfc3339(1_700_000_000_007), "2023-11-14T22:13:20.007Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
