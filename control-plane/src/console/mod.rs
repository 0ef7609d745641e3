//! The web console, served by the server itself at `/`: HTML rendered here from
//! compile-time-checked templates (`control-plane/templates/`), one stylesheet and one
//! script shipped in the binary (`control-plane/assets/`), live updates over
//! server-sent events. Nothing is loaded from anywhere else, so it works air-gapped.
//!
//! Every page action is the API's operation, under the API's authorisation: the
//! signed-in user's roles in the tenant shown ([`session::Signed`]), the same checks
//! (`Caller::require`, separation of duties in `App::approve_promotion`). Every
//! response carries a strict Content-Security-Policy (no inline script or style).

pub mod live;
mod pages;
pub mod session;

use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::api::listener::ClientAddr;
use crate::api::tenancy::ApiState;
use crate::app::now_ms;

/// The Content-Security-Policy of every console response: this origin's script and
/// stylesheet only, no inline anything, no frames, forms only to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

/// The console's routes (merged into the API's router, whose middleware logs, times
/// and audits them).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(pages::dashboard_page))
        .route("/console", get(|| async { Redirect::to("/") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/login/link", get(login_link))
        .route("/console/logout", post(logout))
        .route("/console/tenant", post(pages::switch_tenant))
        .route("/console/pipeline", get(pages::pipeline_page))
        .route("/console/environments", post(pages::create_environment))
        .route("/console/promotions", post(pages::promote))
        .route("/console/agents", get(pages::agents_page))
        .route(
            "/console/agents/join-tokens",
            post(pages::create_join_token),
        )
        .route("/console/agents/{agent}/revoke", post(pages::revoke_agent))
        .route("/console/drift", get(pages::drift_page))
        .route("/console/targets", post(pages::create_target))
        .route(
            "/console/targets/{name}/remediate",
            post(pages::remediate_target),
        )
        .route("/console/rollback", post(pages::rollback_environment))
        .route("/console/releases", post(pages::create_release))
        .route(
            "/console/releases/{name}/{version}/scans",
            post(pages::import_scan),
        )
        .route("/console/promotions/{id}", get(pages::promotion_page))
        .route(
            "/console/promotions/{id}/answer",
            post(pages::answer_promotion),
        )
        .route(
            "/console/releases/{name}/{version}",
            get(pages::release_page),
        )
        .route("/console/decisions/{id}/evidence", get(pages::evidence))
        .route("/console/runs", get(pages::runs_page))
        .route("/console/runs/{id}", get(pages::run_page))
        .route(
            "/console/runs/{id}/approvals/{approval}",
            post(pages::answer_run),
        )
        .route("/console/runs/{id}/cancel", post(pages::cancel_run))
        .route("/console/audit", get(pages::audit_page))
        .route(
            "/console/users",
            get(pages::users_page).post(pages::create_user),
        )
        .route("/console/users/password", post(pages::set_password))
        .route("/console/live", get(live::live))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Whether a path is the console's (for the headers the API's middleware adds).
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with("/console/")
}

async fn security_headers(request: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    // A page that says what went wrong is the console's answer, not the API's
    // envelope.
    let html = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        response
            .extensions_mut()
            .insert(crate::api::envelope::Enveloped);
    }
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(http::HeaderName::from_static(name), value);
        }
    }
    if !headers.contains_key(http::header::CACHE_CONTROL) {
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
    }
    response
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (http::header::CONTENT_TYPE, content_type),
            (http::header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: String,
    username: String,
}

fn login_page(status: http::StatusCode, error: String, username: String) -> Response {
    match (LoginPage { error, username }).render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering the sign-in page");
            http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn login_form() -> Response {
    login_page(http::StatusCode::OK, String::new(), String::new())
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
struct Login {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

async fn login(
    State(state): State<ApiState>,
    addr: Option<axum::Extension<ClientAddr>>,
    headers: http::HeaderMap,
    Form(form): Form<Login>,
) -> Response {
    let app = state.tenants.default_app().clone();
    let refused = |error: crate::error::AppError, username: String| {
        login_page(error.kind.http_status(), error.message, username)
    };
    if let Err(error) = session::same_origin(&headers) {
        return refused(error, String::new());
    }
    if let Err(error) = session::limit(&app, addr.map(|axum::Extension(a)| a)) {
        return refused(error, form.username);
    }
    let tls = app.api_tls.is_some();
    match session::sign_in(&app, &form.username, &form.password, tls).await {
        Ok(Some((cookie, _))) => {
            tracing::info!(user = %form.username, "signed in to the console");
            let mut response = Redirect::to("/").into_response();
            if let Ok(value) = http::HeaderValue::from_str(&cookie) {
                response
                    .headers_mut()
                    .insert(http::header::SET_COOKIE, value);
            }
            response
        }
        Ok(None) => {
            app.metrics.auth_failure("console_password");
            // Slows guessing down beyond the rate limit, and costs a scripted flood.
            tokio::time::sleep(Duration::from_millis(200)).await;
            login_page(
                http::StatusCode::UNAUTHORIZED,
                "wrong user name or password".to_owned(),
                form.username,
            )
        }
        Err(error) => refused(error, form.username),
    }
}

/// `?session=…` of a sign-in link.
#[derive(Debug, Deserialize)]
struct LinkQuery {
    session: String,
}

/// `GET /console/login/link?session=ID`: the link `stella server --dev` prints, made
/// with an existing session's id (which is what the cookie would hold); sets the cookie.
async fn login_link(
    State(state): State<ApiState>,
    axum::extract::Query(query): axum::extract::Query<LinkQuery>,
) -> Response {
    let app = state.tenants.default_app();
    let id_hash = stella_pki::hash_token(&query.session);
    match app.store.console_session(&id_hash, now_ms()).await {
        Ok(Some(_)) => {
            let mut response = Redirect::to("/").into_response();
            let cookie = session::set_cookie(
                &query.session,
                app.api_tls.is_some(),
                session::SESSION_TTL_MS / 1000,
            );
            if let Ok(value) = http::HeaderValue::from_str(&cookie) {
                response
                    .headers_mut()
                    .insert(http::header::SET_COOKIE, value);
            }
            response
        }
        _ => login_page(
            http::StatusCode::UNAUTHORIZED,
            "this sign-in link is not valid (any more)".to_owned(),
            String::new(),
        ),
    }
}

async fn logout(
    State(state): State<ApiState>,
    headers: http::HeaderMap,
    Form(form): Form<pages::Plain>,
) -> Response {
    let app = state.tenants.default_app();
    if let Err(error) = session::same_origin(&headers) {
        return (error.kind.http_status(), error.message).into_response();
    }
    if let Some(cookie) = session::cookie(&headers, session::COOKIE) {
        let id_hash = stella_pki::hash_token(&cookie);
        // The token must be the session's own: a cross-site logout is refused too.
        match app.store.console_session(&id_hash, now_ms()).await {
            Ok(Some(found)) if found.csrf_token == form.csrf => {
                if let Err(error) = app.store.delete_console_session(&id_hash, now_ms()).await {
                    tracing::warn!(%error, "ending a console session failed");
                }
            }
            _ => {}
        }
    }
    let mut response = Redirect::to("/console/login").into_response();
    let tls = app.api_tls.is_some();
    if let Ok(value) = http::HeaderValue::from_str(&session::set_cookie("", tls, 0)) {
        response
            .headers_mut()
            .insert(http::header::SET_COOKIE, value);
    }
    response
}
