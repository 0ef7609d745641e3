//! The REST API (axum) under `/api/v1/`, plus `/healthz`, `/readyz`, `/metrics` and
//! the OpenAPI document generated from this code at `/api/v1/openapi.json`. The only
//! code that speaks HTTP.

pub mod agents;
pub mod deployments;
pub mod drift;
pub mod envelope;
pub mod environments;
pub mod registries;
pub mod releases;
pub mod targets;
pub mod users;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use crate::app::App;
use crate::error::{AppError, ErrorKind};
use crate::metrics::HttpLabels;
use envelope::{ApiError, TRACE_ID};

/// The OpenAPI document of the REST API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Stella API", description = "Release control plane for container estates without Kubernetes"),
    paths(
        agents::list, agents::show, agents::revoke, agents::create_join_token, agents::gateway,
        users::create, users::list, users::create_token, users::whoami,
        environments::create_environment, environments::list_environments, environments::show_environment,
        environments::update_environment, targets::create_target, targets::list_targets,
        targets::show_target, registries::add_registry, registries::list_registries,
        releases::create_release, releases::list_releases, releases::show_release,
        deployments::promote, deployments::list_deployments, deployments::show_deployment,
        deployments::deployment_logs, deployments::rollback, drift::list_drift,
    ),
    components(schemas(envelope::ErrorEnvelope, envelope::ErrorBody)),
    modifiers(&BearerAuth),
    tags((name = "agents"), (name = "users"), (name = "environments"), (name = "targets"),
        (name = "registries"), (name = "releases"), (name = "promotions"), (name = "deployments"),
        (name = "drift")),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole HTTP surface.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/agents", get(agents::list))
        .route("/agents/join-tokens", post(agents::create_join_token))
        .route("/agents/{agent}", get(agents::show))
        .route("/agents/{agent}/revoke", post(agents::revoke))
        .route("/gateway", get(agents::gateway))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{name}/tokens", post(users::create_token))
        .route("/whoami", get(users::whoami))
        .route(
            "/environments",
            get(environments::list_environments).post(environments::create_environment),
        )
        .route(
            "/environments/{name}",
            get(environments::show_environment).patch(environments::update_environment),
        )
        .route("/environments/{name}/rollback", post(deployments::rollback))
        .route(
            "/targets",
            get(targets::list_targets).post(targets::create_target),
        )
        .route("/targets/{name}", get(targets::show_target))
        .route(
            "/registries",
            get(registries::list_registries).post(registries::add_registry),
        )
        .route(
            "/releases",
            get(releases::list_releases).post(releases::create_release),
        )
        .route("/releases/{name}/{version}", get(releases::show_release))
        .route("/promotions", post(deployments::promote))
        .route("/deployments", get(deployments::list_deployments))
        .route("/deployments/{id}", get(deployments::show_deployment))
        .route("/deployments/{id}/logs", get(deployments::deployment_logs))
        .route("/drift", get(drift::list_drift))
        .route("/openapi.json", get(openapi));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Gives every request a trace id (header `x-trace-id`, and in error envelopes),
/// and counts it.
async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let method = request.method().to_string();
    let mut response = TRACE_ID.scope(trace_id.clone(), next.run(request)).await;
    if let Ok(value) = http::HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    app.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn not_found() -> ApiError {
    ApiError(AppError::new(
        ErrorKind::NotFound,
        "not_found",
        "no such endpoint",
    ))
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(error) => ApiError(AppError::new(
            ErrorKind::Unavailable,
            "store_unavailable",
            format!("store unavailable: {error}"),
        ))
        .into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
