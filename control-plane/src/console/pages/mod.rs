//! The console's pages: each is a `main` part rendered from a template of its own,
//! inside the one page frame. The same function renders a page's `main` for the page
//! and for its live updates ([`super::live`]), so what updates is what was loaded.

mod audit;
mod delivery;
mod fleet;
mod graph;
mod listing;
mod promotion;
mod release;
mod runs;
mod targets;
mod users;

use super::session::{check_csrf, same_origin, Signed};
use crate::api::envelope::Permission;
use crate::api::tenancy::ApiState;
use crate::app::now_ms;
use crate::domain::{format_utc_ms, PromotionState, Role, TenantId};
use crate::error::{AppError, ErrorKind};
use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

pub use audit::audit_page;
pub use delivery::{create_environment, create_release, dashboard_page, pipeline_page, promote};
pub use fleet::{agents_page, create_join_token, revoke_agent};
pub use listing::{Listing, Pager};
pub use promotion::{answer_promotion, deployment_line, promotion_page};
pub use release::{evidence, import_scan, release_page};
pub use runs::{answer_run, cancel_run, run_line, run_page, runs_page};
pub use targets::{create_target, drift_page, remediate_target, rollback_environment};
pub use users::{create_user, set_password, users_page};

/// The links of the console's navigation: (path, label).
const NAV: [(&str, &str); 7] = [
    ("/", "Dashboard"),
    ("/console/pipeline", "Pipeline"),
    ("/console/agents", "Agents"),
    ("/console/drift", "Targets and drift"),
    ("/console/runs", "Runs"),
    ("/console/audit", "Audit"),
    ("/console/users", "Users"),
];

/// A view of the console: which page, which object, and for a list which filter and
/// page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// Releases × environments.
    Dashboard(Listing),
    /// Environments in promotion order.
    Pipeline,
    /// One promotion.
    Promotion(String),
    /// Agents.
    Agents(Listing),
    /// Targets and drift.
    Drift(Listing),
    /// One release.
    Release(String, String),
    /// Task-pack runs.
    Runs(Listing),
    /// One run.
    Run(String),
    /// The audit chain.
    Audit(Listing),
    /// Users (server admins).
    Users(Listing),
}

impl View {
    /// The `data-live` value that names this view to [`super::live`]: its name, and
    /// for a list its query (`drift?q=web&page=2`).
    pub fn key(&self) -> String {
        match self {
            View::Dashboard(l) => format!("dashboard{}", l.query()),
            View::Pipeline => "pipeline".to_owned(),
            View::Promotion(id) => format!("promotion:{id}"),
            View::Agents(l) => format!("agents{}", l.query()),
            View::Drift(l) => format!("drift{}", l.query()),
            View::Release(name, version) => format!("release:{name}@{version}"),
            View::Runs(l) => format!("runs{}", l.query()),
            View::Run(id) => format!("run:{id}"),
            View::Audit(l) => format!("audit{}", l.query()),
            View::Users(l) => format!("users{}", l.query()),
        }
    }

    /// The view a `data-live` value names.
    pub fn parse(key: &str) -> Option<View> {
        let (name, query) = key.split_once('?').unwrap_or((key, ""));
        let listing = || Listing::parse(query);
        match name {
            "dashboard" => Some(View::Dashboard(listing()?)),
            "pipeline" => Some(View::Pipeline),
            "agents" => Some(View::Agents(listing()?)),
            "drift" => Some(View::Drift(listing()?)),
            "runs" => Some(View::Runs(listing()?)),
            "audit" => Some(View::Audit(listing()?)),
            "users" => Some(View::Users(listing()?)),
            other => {
                let short = |id: &&str| !id.is_empty() && id.len() <= 128;
                if let Some(id) = other.strip_prefix("promotion:").filter(short) {
                    return Some(View::Promotion(id.to_owned()));
                }
                if let Some(id) = other.strip_prefix("run:").filter(short) {
                    return Some(View::Run(id.to_owned()));
                }
                let release = other.strip_prefix("release:").filter(short)?;
                let (name, version) = release.split_once('@')?;
                Some(View::Release(name.to_owned(), version.to_owned()))
            }
        }
    }

    fn title(&self) -> &'static str {
        match self {
            View::Dashboard(_) => "Dashboard",
            View::Pipeline => "Pipeline",
            View::Promotion(_) => "Promotion",
            View::Agents(_) => "Agents",
            View::Drift(_) => "Targets and drift",
            View::Release(..) => "Release",
            View::Runs(_) | View::Run(_) => "Runs",
            View::Audit(_) => "Audit",
            View::Users(_) => "Users",
        }
    }

    fn nav(&self) -> &'static str {
        match self {
            View::Dashboard(_) | View::Promotion(_) | View::Release(..) => "/",
            View::Pipeline => "/console/pipeline",
            View::Agents(_) => "/console/agents",
            View::Drift(_) => "/console/drift",
            View::Runs(_) | View::Run(_) => "/console/runs",
            View::Audit(_) => "/console/audit",
            View::Users(_) => "/console/users",
        }
    }
}

#[derive(Template)]
#[template(path = "page.html")]
struct Page<'a> {
    title: &'a str,
    nav: &'a [(&'a str, &'a str)],
    current: &'a str,
    csrf: &'a str,
    tenants: Vec<String>,
    tenant: String,
    user: &'a str,
    roles: String,
    error: String,
    notice: String,
    live: String,
    version: String,
    main: String,
}

/// What a page says above its `main` part.
#[derive(Default)]
pub struct Banner {
    /// An error (role `alert`).
    pub error: String,
    /// A confirmation (role `status`).
    pub notice: String,
}

/// Renders a whole page of `view`, with `extra` rendered into its `main` when the view
/// has something to add (a join token just created).
pub async fn page(
    state: &ApiState,
    signed: &Signed,
    view: &View,
    banner: Banner,
    status: http::StatusCode,
    extra: Extra,
) -> Response {
    let main = match render_main(signed, view, &extra).await {
        Ok(main) => main,
        Err(error) => return error_page(state, signed, view, &error).await,
    };
    frame(state, signed, view, banner, main, status).await
}

async fn frame(
    state: &ApiState,
    signed: &Signed,
    view: &View,
    banner: Banner,
    main: String,
    status: http::StatusCode,
) -> Response {
    let tenants = visible_tenants(state, signed).await;
    let user = &signed.caller.0;
    let mut roles: Vec<String> = user.roles.iter().map(ToString::to_string).collect();
    roles.extend(
        signed
            .caller
            .2
            .narrowed
            .iter()
            .map(|(role, env)| format!("{role} for {env}")),
    );
    let page = Page {
        title: view.title(),
        nav: &NAV,
        current: view.nav(),
        csrf: &signed.csrf,
        tenants,
        tenant: signed.caller.tenant().to_string(),
        user: &user.name,
        roles: if roles.is_empty() {
            "no role".to_owned()
        } else {
            roles.join(", ")
        },
        error: banner.error,
        notice: banner.notice,
        live: view.key(),
        version: super::live::version(&main),
        main,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => render_failed(&error),
    }
}

async fn error_page(state: &ApiState, signed: &Signed, view: &View, error: &AppError) -> Response {
    let status = error.kind.http_status();
    // The page as it is, under the error; nothing when the page itself failed.
    let main = render_main(signed, view, &Extra::default())
        .await
        .unwrap_or_default();
    frame(
        state,
        signed,
        view,
        Banner {
            error: error.message.clone(),
            notice: String::new(),
        },
        main,
        status,
    )
    .await
}

fn render_failed(error: &askama::Error) -> Response {
    tracing::error!(%error, "rendering a console page");
    (
        http::StatusCode::INTERNAL_SERVER_ERROR,
        "the page could not be rendered",
    )
        .into_response()
}

/// The tenants the switcher offers: every one to a server admin, else `default` and
/// those the user holds a role in.
async fn visible_tenants(state: &ApiState, signed: &Signed) -> Vec<String> {
    let all = state.tenants.list().await.unwrap_or_default();
    let server_admin = state
        .app
        .store
        .get_user(&signed.caller.0.id)
        .await
        .is_ok_and(|user| user.has_role(Role::Admin));
    let bindings = state
        .app
        .store
        .role_bindings(&signed.caller.0.id)
        .await
        .unwrap_or_default();
    all.into_iter()
        .filter(|t| {
            server_admin || t.name.is_default() || bindings.iter().any(|b| b.tenant == t.name)
        })
        .map(|t| t.name.to_string())
        .collect()
}

/// A page as it is (`GET`), with nothing above it.
async fn show(state: &ApiState, signed: &Signed, view: &View) -> Response {
    page(
        state,
        signed,
        view,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// A list page (`GET` with `?q=…&page=…`); a query that is not a listing is refused
/// with the page's error.
async fn list_page(
    state: &ApiState,
    signed: &Signed,
    query: Option<String>,
    view: fn(Listing) -> View,
) -> Response {
    match Listing::parse(query.as_deref().unwrap_or_default()) {
        Some(listing) => show(state, signed, &view(listing)).await,
        None => {
            let error = AppError::invalid("the filter is not `?q=TEXT&page=N` (N from 1)");
            error_page(state, signed, &view(Listing::default()), &error).await
        }
    }
}

/// What a page's `main` shows besides what the store holds.
#[derive(Default)]
pub struct Extra {
    /// A join token's install command and when the token expires.
    pub install: Option<(String, String)>,
    /// Rendered for a live update: a log's lines are left out (they come on the
    /// stream one by one, [`super::live`]).
    pub live: bool,
}

/// The `main` part of `view`, as the signed-in caller may see it.
pub async fn render_main(signed: &Signed, view: &View, extra: &Extra) -> Result<String, AppError> {
    signed.caller.require(Permission::Read).map_err(|e| e.0)?;
    let html = match view {
        View::Dashboard(l) => delivery::dashboard(signed, l).await?.render(),
        View::Pipeline => delivery::pipeline(signed).await?.render(),
        View::Promotion(id) => promotion::promotion(signed, id, extra.live).await?.render(),
        View::Agents(l) => fleet::agents(signed, l, extra).await?.render(),
        View::Drift(l) => targets::drift(signed, l).await?.render(),
        View::Release(name, version) => release::release(signed, name, version).await?.render(),
        View::Runs(l) => runs::runs(signed, l).await?.render(),
        View::Run(id) => runs::run(signed, id, extra.live).await?.render(),
        View::Audit(l) => {
            signed
                .caller
                .require(Permission::Administer)
                .map_err(|e| e.0)?;
            audit::audit(signed, l).await?.render()
        }
        View::Users(l) => users::users(signed, l).await?.render(),
    };
    html.map_err(|error| {
        tracing::error!(%error, "rendering a console page");
        AppError::new(
            ErrorKind::Internal,
            "internal",
            "the page could not be rendered",
        )
    })
}

fn state_text(state: PromotionState) -> String {
    state.as_str().replace('_', " ")
}

/// A form with only its CSRF token.
#[derive(Debug, Deserialize)]
pub struct Plain {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
}

/// Runs a form's action after the origin and CSRF checks; the page again, with the
/// outcome above it (or the refusal, with its status).
async fn act<F, Fut>(
    state: &ApiState,
    signed: &Signed,
    headers: &http::HeaderMap,
    csrf: &str,
    view: View,
    action: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(String, Extra), AppError>>,
{
    let checked = same_origin(headers).and_then(|()| check_csrf(signed, csrf));
    let outcome = match checked {
        Ok(()) => action().await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok((notice, extra)) => {
            page(
                state,
                signed,
                &view,
                Banner {
                    notice,
                    error: String::new(),
                },
                http::StatusCode::OK,
                extra,
            )
            .await
        }
        Err(error) => {
            page(
                state,
                signed,
                &view,
                Banner {
                    error: error.message.clone(),
                    notice: String::new(),
                },
                error.kind.http_status(),
                Extra::default(),
            )
            .await
        }
    }
}

/// The tenant switcher's form.
#[derive(Debug, Deserialize)]
pub struct SwitchTenant {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// The tenant to show.
    #[serde(default)]
    pub tenant: String,
}

/// `POST /console/tenant`: shows another tenant (one the user holds a role in).
pub async fn switch_tenant(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<SwitchTenant>,
) -> Response {
    let checked = same_origin(&headers).and_then(|()| check_csrf(&signed, &form.csrf));
    let tenant = checked.and_then(|()| {
        form.tenant
            .parse::<TenantId>()
            .map_err(|e| AppError::invalid(e.0))
    });
    let tenant = match tenant {
        Ok(tenant)
            if visible_tenants(&state, &signed)
                .await
                .contains(&tenant.to_string()) =>
        {
            tenant
        }
        Ok(tenant) => {
            return error_page(
                &state,
                &signed,
                &View::Dashboard(Listing::default()),
                &AppError::new(
                    ErrorKind::PermissionDenied,
                    "tenant_forbidden",
                    format!("you hold no role in tenant `{tenant}`"),
                ),
            )
            .await
        }
        Err(error) => {
            return error_page(
                &state,
                &signed,
                &View::Dashboard(Listing::default()),
                &error,
            )
            .await
        }
    };
    if let Err(error) = state
        .app
        .store
        .set_console_tenant(&signed.id_hash, tenant.as_str())
        .await
    {
        return error_page(
            &state,
            &signed,
            &View::Dashboard(Listing::default()),
            &error.into(),
        )
        .await;
    }
    Redirect::to("/").into_response()
}

/// The name serde gives an enum value (`Succeeded`, `Run`), for showing it.
fn shown<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
