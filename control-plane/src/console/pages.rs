//! The console's pages: each is a `main` part rendered from a template of its own,
//! inside the one page frame. The same function renders a page's `main` for the page
//! and for its live updates ([`super::live`]), so what updates is what was loaded.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::session::{check_csrf, same_origin, Signed};
use crate::api::envelope::Permission;
use crate::api::tenancy::ApiState;
use crate::app::now_ms;
use crate::domain::{format_utc_ms, PromotionState, Role, TenantId};
use crate::error::{AppError, ErrorKind};

/// The links of the console's navigation: (path, label).
const NAV: [(&str, &str); 4] = [
    ("/", "Dashboard"),
    ("/console/pipeline", "Pipeline"),
    ("/console/agents", "Agents"),
    ("/console/drift", "Targets and drift"),
];

/// Releases shown on the dashboard, newest first.
const DASHBOARD_RELEASES: usize = 50;

/// A view of the console: which page, and for the promotion page which promotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// Releases × environments.
    Dashboard,
    /// Environments in promotion order.
    Pipeline,
    /// One promotion.
    Promotion(String),
    /// Agents.
    Agents,
    /// Targets and drift.
    Drift,
}

impl View {
    /// The `data-live` value that names this view to [`super::live`].
    pub fn key(&self) -> String {
        match self {
            View::Dashboard => "dashboard".to_owned(),
            View::Pipeline => "pipeline".to_owned(),
            View::Promotion(id) => format!("promotion:{id}"),
            View::Agents => "agents".to_owned(),
            View::Drift => "drift".to_owned(),
        }
    }

    /// The view a `data-live` value names.
    pub fn parse(key: &str) -> Option<View> {
        match key {
            "dashboard" => Some(View::Dashboard),
            "pipeline" => Some(View::Pipeline),
            "agents" => Some(View::Agents),
            "drift" => Some(View::Drift),
            other => other
                .strip_prefix("promotion:")
                .filter(|id| !id.is_empty() && id.len() <= 64)
                .map(|id| View::Promotion(id.to_owned())),
        }
    }

    fn title(&self) -> &'static str {
        match self {
            View::Dashboard => "Dashboard",
            View::Pipeline => "Pipeline",
            View::Promotion(_) => "Promotion",
            View::Agents => "Agents",
            View::Drift => "Targets and drift",
        }
    }

    fn nav(&self) -> &'static str {
        match self {
            View::Dashboard | View::Promotion(_) => "/",
            View::Pipeline => "/console/pipeline",
            View::Agents => "/console/agents",
            View::Drift => "/console/drift",
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

/// What a page's `main` shows besides what the store holds.
#[derive(Default)]
pub struct Extra {
    /// A join token's install command and when the token expires.
    pub install: Option<(String, String)>,
}

/// The `main` part of `view`, as the signed-in caller may see it.
pub async fn render_main(signed: &Signed, view: &View, extra: &Extra) -> Result<String, AppError> {
    signed.caller.require(Permission::Read).map_err(|e| e.0)?;
    let html = match view {
        View::Dashboard => dashboard(signed).await?.render(),
        View::Pipeline => pipeline(signed).await?.render(),
        View::Promotion(id) => promotion(signed, id).await?.render(),
        View::Agents => agents(signed, extra).await?.render(),
        View::Drift => drift(signed).await?.render(),
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

struct EnvHead {
    name: String,
    drift: usize,
}

struct Cell {
    text: String,
    class: String,
    href: String,
}

struct Row {
    name: String,
    version: String,
    cells: Vec<Cell>,
}

struct Waiting {
    id: String,
    release: String,
    environment: String,
    state: String,
    state_text: String,
    message: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    envs: Vec<EnvHead>,
    rows: Vec<Row>,
    waiting: Vec<Waiting>,
    csrf: String,
}

fn state_text(state: PromotionState) -> String {
    state.as_str().replace('_', " ")
}

async fn dashboard(signed: &Signed) -> Result<Dashboard, AppError> {
    let store = &signed.app.store;
    let environments = ordered(store.list_environments().await?);
    let mut releases = store.list_releases(None).await?;
    releases.truncate(DASHBOARD_RELEASES);
    let drift = store.list_drift(None, false).await?;
    let mut drifted: HashMap<&str, std::collections::BTreeSet<&str>> = HashMap::new();
    for record in &drift {
        drifted
            .entry(record.environment.as_str())
            .or_default()
            .insert(record.target.as_str());
    }
    // The newest deployment of each (environment, release, version), and the current
    // release of each environment (its newest succeeded deployment).
    let mut cells: HashMap<(String, String, String), (String, String)> = HashMap::new();
    let mut current: HashMap<String, (String, String)> = HashMap::new();
    for env in &environments {
        let deployments = store.list_deployments(Some(&env.name), 200).await?;
        for deployment in &deployments {
            let key = (
                env.name.clone(),
                deployment.release.clone(),
                deployment.version.clone(),
            );
            cells
                .entry(key)
                .or_insert_with(|| (deployment.state.as_str().to_owned(), deployment.id.clone()));
        }
        if let Some(live) = deployments.iter().find(|d| d.state.as_str() == "succeeded") {
            current.insert(
                env.name.clone(),
                (live.release.clone(), live.version.clone()),
            );
        }
    }
    let promotions = store.list_promotions(None, None, 200).await?;
    let mut open: HashMap<(String, String, String), &crate::domain::Promotion> = HashMap::new();
    for promotion in &promotions {
        if matches!(
            promotion.state,
            PromotionState::AwaitingApproval | PromotionState::Blocked
        ) {
            open.entry((
                promotion.environment.clone(),
                promotion.release.clone(),
                promotion.version.clone(),
            ))
            .or_insert(promotion);
        }
    }
    let rows = releases
        .iter()
        .map(|release| Row {
            name: release.name.clone(),
            version: release.version.clone(),
            cells: environments
                .iter()
                .map(|env| {
                    let key = (
                        env.name.clone(),
                        release.name.clone(),
                        release.version.clone(),
                    );
                    let is_current = current
                        .get(&env.name)
                        .is_some_and(|(n, v)| *n == release.name && *v == release.version);
                    if let Some(promotion) = open.get(&key) {
                        return Cell {
                            text: state_text(promotion.state),
                            class: format!("state {}", promotion.state.as_str()),
                            href: format!("/console/promotions/{}", promotion.id),
                        };
                    }
                    match cells.get(&key) {
                        Some((state, _)) if is_current => Cell {
                            text: "current".to_owned(),
                            class: "state current".to_owned(),
                            href: String::new(),
                        },
                        Some((state, _)) if state == "succeeded" => Cell {
                            text: "previous".to_owned(),
                            class: "state previous".to_owned(),
                            href: String::new(),
                        },
                        Some((state, _)) => Cell {
                            text: state.clone(),
                            class: format!("state {state}"),
                            href: String::new(),
                        },
                        None => Cell {
                            text: String::new(),
                            class: String::new(),
                            href: String::new(),
                        },
                    }
                })
                .collect(),
        })
        .collect();
    let waiting = promotions
        .iter()
        .filter(|p| {
            matches!(
                p.state,
                PromotionState::AwaitingApproval | PromotionState::Blocked
            )
        })
        .map(|p| Waiting {
            id: p.id.clone(),
            release: format!("{}@{}", p.release, p.version),
            environment: p.environment.clone(),
            state: p.state.as_str().to_owned(),
            state_text: state_text(p.state),
            message: p.message.clone().unwrap_or_default(),
        })
        .collect();
    Ok(Dashboard {
        envs: environments
            .iter()
            .map(|env| EnvHead {
                name: env.name.clone(),
                drift: drifted.get(env.name.as_str()).map_or(0, |t| t.len()),
            })
            .collect(),
        rows,
        waiting,
        csrf: signed.csrf.clone(),
    })
}

/// Environments in promotion order: each after the one it comes after, by name among
/// equals.
fn ordered(mut environments: Vec<crate::domain::Environment>) -> Vec<crate::domain::Environment> {
    environments.sort_by(|a, b| a.name.cmp(&b.name));
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    let by_name: HashMap<String, Option<String>> = environments
        .iter()
        .map(|e| (e.name.clone(), e.after.clone()))
        .collect();
    for env in &environments {
        let mut d = 0;
        let mut at = env.after.clone();
        while let Some(name) = at {
            d += 1;
            if d > by_name.len() {
                break;
            }
            at = by_name.get(&name).cloned().flatten();
        }
        depth.insert(env.name.clone(), d);
    }
    environments.sort_by_key(|e| (depth.get(&e.name).copied().unwrap_or(0), e.name.clone()));
    environments
}

struct PipelineEnv {
    name: String,
    current: String,
    after: String,
    approvals: u32,
    freeze: String,
    waiting: String,
}

#[derive(Template)]
#[template(path = "pipeline.html")]
struct Pipeline {
    envs: Vec<PipelineEnv>,
    csrf: String,
}

async fn pipeline(signed: &Signed) -> Result<Pipeline, AppError> {
    let store = &signed.app.store;
    let environments = ordered(store.list_environments().await?);
    let promotions = store.list_promotions(None, None, 200).await?;
    let mut envs = Vec::new();
    for env in environments {
        let deployments = store.list_deployments(Some(&env.name), 50).await?;
        let current = deployments
            .iter()
            .find(|d| d.state.as_str() == "succeeded")
            .map_or_else(
                || "none".to_owned(),
                |d| format!("{}@{}", d.release, d.version),
            );
        let waiting: Vec<String> = promotions
            .iter()
            .filter(|p| {
                p.environment == env.name
                    && matches!(
                        p.state,
                        PromotionState::AwaitingApproval | PromotionState::Blocked
                    )
            })
            .map(|p| format!("{}@{} ({})", p.release, p.version, state_text(p.state)))
            .collect();
        envs.push(PipelineEnv {
            current,
            after: env.after.clone().unwrap_or_else(|| "—".to_owned()),
            approvals: env.gates.approvals_required,
            freeze: if env.gates.freeze.is_empty() {
                "none".to_owned()
            } else {
                env.gates.freeze.join(", ")
            },
            waiting: if waiting.is_empty() {
                "nothing".to_owned()
            } else {
                waiting.join(", ")
            },
            name: env.name,
        });
    }
    Ok(Pipeline {
        envs,
        csrf: signed.csrf.clone(),
    })
}

#[derive(Template)]
#[template(path = "promotion.html")]
struct PromotionPage {
    id: String,
    release: String,
    environment: String,
    state: String,
    state_text: String,
    requested_by: String,
    requested_at: String,
    message: String,
    decision: String,
    verified: String,
    deployment: String,
    deployment_state: String,
    gates: Vec<(String, String, String)>,
    approvals: Vec<String>,
    awaiting: bool,
    own: bool,
    csrf: String,
    logs: Vec<String>,
}

async fn promotion(signed: &Signed, id: &str) -> Result<PromotionPage, AppError> {
    let detail = signed.app.promotion_detail(id).await?;
    let promotion = &detail.promotion;
    let (deployment, deployment_state, logs) = match &promotion.deployment_id {
        Some(deployment_id) => {
            let deployment = signed.app.find_deployment(deployment_id).await?;
            let logs = signed
                .app
                .store
                .logs_after(deployment_id, 0, 200)
                .await?
                .into_iter()
                .map(|line| format!("{} {}", format_utc_ms(line.at_ms), line.message))
                .collect();
            (
                deployment_id.clone(),
                deployment.state.as_str().to_owned(),
                logs,
            )
        }
        None => (String::new(), String::new(), Vec::new()),
    };
    Ok(PromotionPage {
        id: promotion.id.clone(),
        release: format!("{}@{}", promotion.release, promotion.version),
        environment: promotion.environment.clone(),
        state: promotion.state.as_str().to_owned(),
        state_text: state_text(promotion.state),
        requested_by: promotion.requested_by.clone(),
        requested_at: format_utc_ms(promotion.requested_at_ms),
        message: promotion.message.clone().unwrap_or_default(),
        decision: promotion.decision_id.clone().unwrap_or_default(),
        verified: "signed; verify offline with stella evidence verify".to_owned(),
        deployment,
        deployment_state,
        gates: detail
            .gates
            .iter()
            .map(|gate| {
                let mut why = gate.reason.clone();
                for detail in &gate.details {
                    why.push_str("; ");
                    why.push_str(detail);
                }
                (gate.gate.clone(), gate_status(gate.status).to_owned(), why)
            })
            .collect(),
        approvals: detail
            .approvals
            .iter()
            .map(|a| {
                format!(
                    "{} by {} at {}{}",
                    a.verdict.as_str(),
                    a.user,
                    format_utc_ms(a.at_ms),
                    a.comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                )
            })
            .collect(),
        awaiting: promotion.state == PromotionState::AwaitingApproval,
        own: promotion.requested_by == signed.caller.0.name,
        csrf: signed.csrf.clone(),
        logs,
    })
}

fn gate_status(status: stella_decision::gates::GateStatus) -> &'static str {
    use stella_decision::gates::GateStatus;
    match status {
        GateStatus::Passed => "pass",
        GateStatus::Failed => "fail",
        GateStatus::Waiting => "waiting",
        GateStatus::Overridden => "overridden",
        GateStatus::NotConfigured => "skipped",
    }
}

struct AgentRow {
    name: String,
    state: String,
    version: String,
    capabilities: String,
    host: String,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    agents: Vec<AgentRow>,
    csrf: String,
    install: String,
    expires: String,
}

async fn agents(signed: &Signed, extra: &Extra) -> Result<AgentsPage, AppError> {
    let app = &signed.app;
    let now = now_ms();
    let interval = app.config.heartbeat_interval_ms();
    let agents = app
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|agent| AgentRow {
            state: agent.state(now, interval).as_str().to_owned(),
            version: agent.agent_version.clone().unwrap_or_default(),
            capabilities: agent.capabilities.join(", "),
            host: agent.host.as_ref().map_or_else(String::new, |h| {
                format!(
                    "{} ({} {}, {})",
                    h.hostname, h.os_name, h.os_version, h.arch
                )
            }),
            last_seen: agent
                .last_seen_at_ms
                .map_or_else(|| "never".to_owned(), format_utc_ms),
            name: agent.name,
        })
        .collect();
    let (install, expires) = extra.install.clone().unwrap_or_default();
    Ok(AgentsPage {
        agents,
        csrf: signed.csrf.clone(),
        install,
        expires,
    })
}

struct TargetRow {
    name: String,
    environment: String,
    kind: String,
    agent: String,
    deployed: String,
    drift: String,
}

#[derive(Template)]
#[template(path = "drift.html")]
struct DriftPage {
    targets: Vec<TargetRow>,
}

async fn drift(signed: &Signed) -> Result<DriftPage, AppError> {
    let store = &signed.app.store;
    let targets = store.list_targets(None).await?;
    let drift = store.list_drift(None, false).await?;
    let agents: HashMap<String, String> = store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    let mut current: HashMap<String, String> = HashMap::new();
    for env in store.list_environments().await? {
        let deployments = store.list_deployments(Some(&env.name), 50).await?;
        if let Some(live) = deployments.iter().find(|d| d.state.as_str() == "succeeded") {
            current.insert(
                env.name.clone(),
                format!("{}@{}", live.release, live.version),
            );
        }
    }
    let now = now_ms();
    let targets = targets
        .into_iter()
        .map(|target| {
            let findings: Vec<String> = drift
                .iter()
                .filter(|d| d.target == target.name)
                .map(|d| {
                    let age = (now - d.first_seen_at_ms).max(0) / 1000;
                    format!(
                        "{} {} ({}; for {age} s)",
                        d.component,
                        d.kind.as_str(),
                        d.detail
                    )
                })
                .collect();
            TargetRow {
                deployed: current
                    .get(&target.environment)
                    .cloned()
                    .unwrap_or_else(|| "nothing".to_owned()),
                agent: agents
                    .get(&target.agent_id)
                    .cloned()
                    .unwrap_or_else(|| target.agent_id.clone()),
                kind: target.kind.as_str().to_owned(),
                environment: target.environment.clone(),
                drift: findings.join("; "),
                name: target.name,
            }
        })
        .collect();
    Ok(DriftPage { targets })
}

/// `GET /`
pub async fn dashboard_page(State(state): State<ApiState>, signed: Signed) -> Response {
    page(
        &state,
        &signed,
        &View::Dashboard,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/pipeline`
pub async fn pipeline_page(State(state): State<ApiState>, signed: Signed) -> Response {
    page(
        &state,
        &signed,
        &View::Pipeline,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/agents`
pub async fn agents_page(State(state): State<ApiState>, signed: Signed) -> Response {
    page(
        &state,
        &signed,
        &View::Agents,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/drift`
pub async fn drift_page(State(state): State<ApiState>, signed: Signed) -> Response {
    page(
        &state,
        &signed,
        &View::Drift,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/promotions/{id}`
pub async fn promotion_page(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    page(
        &state,
        &signed,
        &View::Promotion(id),
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// A form with only its CSRF token.
#[derive(Debug, Deserialize)]
pub struct Plain {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
}

/// The approve / reject form of a promotion.
#[derive(Debug, Deserialize)]
pub struct Answer {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// `approve` or `reject`.
    #[serde(default)]
    pub verdict: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
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

/// `POST /console/promotions/{id}/answer`: approve or reject, with the API's rules
/// (the approver role, or one narrowed to the environment; never one's own promotion).
pub async fn answer_promotion(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Answer>,
) -> Response {
    let view = View::Promotion(id.clone());
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        let promotion = app.find_promotion(&id).await?;
        caller
            .require_in(Permission::Approve, &promotion.environment)
            .map_err(|e| e.0)?;
        let comment = Some(form.comment).filter(|c| !c.trim().is_empty());
        let answered = match form.verdict.as_str() {
            "approve" => app.approve_promotion(&id, &caller.0, comment).await?,
            "reject" => app.reject_promotion(&id, &caller.0, comment).await?,
            other => {
                return Err(AppError::invalid(format!(
                    "unknown verdict `{other}`: approve or reject"
                )))
            }
        };
        Ok((
            format!(
                "{} {}: it is now {}",
                if form.verdict == "approve" {
                    "approved"
                } else {
                    "rejected"
                },
                answered.promotion.id,
                state_text(answered.promotion.state)
            ),
            Extra::default(),
        ))
    })
    .await
}

/// `POST /console/agents/{agent}/revoke`
pub async fn revoke_agent(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Path(agent): Path<String>,
    Form(form): Form<Plain>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Agents,
        || async move {
            caller.require(Permission::Administer).map_err(|e| e.0)?;
            let revoked = app
                .revoke_agent(
                    &agent,
                    &format!("revoked in the console by {}", caller.0.name),
                )
                .await?;
            Ok((format!("agent {} revoked", revoked.name), Extra::default()))
        },
    )
    .await
}

/// `POST /console/agents/join-tokens`: a join token and the command that installs an
/// agent with it, for this server as the browser reached it.
pub async fn create_join_token(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<Plain>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let server = server_url(&state, &headers);
    let pin = state
        .app
        .api_tls
        .as_ref()
        .and_then(|tls| tls.public_key_pin());
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Agents,
        || async move {
            caller.require(Permission::Administer).map_err(|e| e.0)?;
            let issued = app.create_join_token(&caller.0, None).await?;
            let command = install_command(&server, &issued.token, pin.as_deref());
            Ok((
                "join token created: copy the command below".to_owned(),
                Extra {
                    install: Some((command, format_utc_ms(issued.expires_at_ms))),
                },
            ))
        },
    )
    .await
}

/// This server's URL as the browser reached it.
fn server_url(state: &ApiState, headers: &http::HeaderMap) -> String {
    let scheme = if state.app.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// The one command that installs and enrols an agent, as `stella agent token create
/// --install` prints it.
fn install_command(server: &str, token: &str, pin: Option<&str>) -> String {
    let script = format!("{server}/install/agent.sh");
    match pin.filter(|_| server.starts_with("https://")) {
        Some(pin) => format!(
            "curl -fsSk --pinnedpubkey '{pin}' '{script}' | sudo sh -s -- --server '{server}' --token '{token}' --pin '{pin}'"
        ),
        None => format!(
            "curl -fsS '{script}' | sudo sh -s -- --server '{server}' --token '{token}'"
        ),
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
                &View::Dashboard,
                &AppError::new(
                    ErrorKind::PermissionDenied,
                    "tenant_forbidden",
                    format!("you hold no role in tenant `{tenant}`"),
                ),
            )
            .await
        }
        Err(error) => return error_page(&state, &signed, &View::Dashboard, &error).await,
    };
    if let Err(error) = state
        .app
        .store
        .set_console_tenant(&signed.id_hash, tenant.as_str())
        .await
    {
        return error_page(&state, &signed, &View::Dashboard, &error.into()).await;
    }
    Redirect::to("/").into_response()
}

/// The new-environment form of the pipeline page.
#[derive(Debug, Deserialize)]
pub struct NewEnvironment {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The environment it comes after (empty: none).
    #[serde(default)]
    pub after: String,
    /// Approvals a promotion into it needs.
    #[serde(default)]
    pub approvals: String,
    /// `true` when images without a scan report may be promoted into it.
    #[serde(default)]
    pub allow_unscanned: Option<String>,
}

/// `POST /console/environments`: as `POST /api/v1/environments` (operator).
pub async fn create_environment(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<NewEnvironment>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Pipeline,
        || async move {
            caller.require(Permission::Operate).map_err(|e| e.0)?;
            let approvals = match form.approvals.trim() {
                "" => None,
                text => Some(text.parse::<u32>().map_err(|_| {
                    AppError::invalid(format!("approvals `{text}` is not a number"))
                })?),
            };
            let settings = crate::app::EnvironmentChange {
                after: Some(Some(form.after.clone()).filter(|a| !a.is_empty())),
                approvals_required: approvals,
                allow_unscanned: Some(form.allow_unscanned.as_deref() == Some("true")),
                ..crate::app::EnvironmentChange::default()
            };
            let env = app.create_environment(form.name.trim(), settings).await?;
            Ok((
                format!("environment {} created", env.name),
                Extra::default(),
            ))
        },
    )
    .await
}

/// The promote form of the dashboard.
#[derive(Debug, Deserialize)]
pub struct PromoteForm {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// `NAME@VERSION`.
    #[serde(default)]
    pub release: String,
    /// The environment.
    #[serde(default)]
    pub environment: String,
}

/// `POST /console/promotions`: as `POST /api/v1/promotions` (operator, or one narrowed
/// to the environment); then the promotion's page, which follows it live.
pub async fn promote(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<PromoteForm>,
) -> Response {
    let checked = same_origin(&headers)
        .and_then(|()| check_csrf(&signed, &form.csrf))
        .and_then(|()| {
            signed
                .caller
                .require_in(Permission::Operate, &form.environment)
                .map_err(|e| e.0)
        });
    let outcome = match checked {
        Ok(()) => match form.release.split_once('@') {
            Some((name, version)) => {
                signed
                    .app
                    .promote(name, version, &form.environment, &signed.caller.0, None)
                    .await
            }
            None => Err(AppError::invalid(format!(
                "release `{}` is not NAME@VERSION",
                form.release
            ))),
        },
        Err(error) => Err(error),
    };
    match outcome {
        Ok(detail) => {
            Redirect::to(&format!("/console/promotions/{}", detail.promotion.id)).into_response()
        }
        Err(error) => error_page(&state, &signed, &View::Dashboard, &error).await,
    }
}
