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
const NAV: [(&str, &str); 6] = [
    ("/", "Dashboard"),
    ("/console/pipeline", "Pipeline"),
    ("/console/agents", "Agents"),
    ("/console/drift", "Targets and drift"),
    ("/console/runs", "Runs"),
    ("/console/audit", "Audit"),
];

/// Audit entries the audit page lists (the newest), and the longest chain it verifies.
const AUDIT_SHOWN: usize = 200;
const AUDIT_VERIFIED: i64 = 100_000;

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
    /// One release.
    Release(String, String),
    /// Task-pack runs.
    Runs,
    /// One run.
    Run(String),
    /// The audit chain.
    Audit,
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
            View::Release(name, version) => format!("release:{name}@{version}"),
            View::Runs => "runs".to_owned(),
            View::Run(id) => format!("run:{id}"),
            View::Audit => "audit".to_owned(),
        }
    }

    /// The view a `data-live` value names.
    pub fn parse(key: &str) -> Option<View> {
        match key {
            "dashboard" => Some(View::Dashboard),
            "pipeline" => Some(View::Pipeline),
            "agents" => Some(View::Agents),
            "drift" => Some(View::Drift),
            "runs" => Some(View::Runs),
            "audit" => Some(View::Audit),
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
            View::Dashboard => "Dashboard",
            View::Pipeline => "Pipeline",
            View::Promotion(_) => "Promotion",
            View::Agents => "Agents",
            View::Drift => "Targets and drift",
            View::Release(..) => "Release",
            View::Runs | View::Run(_) => "Runs",
            View::Audit => "Audit",
        }
    }

    fn nav(&self) -> &'static str {
        match self {
            View::Dashboard | View::Promotion(_) | View::Release(..) => "/",
            View::Pipeline => "/console/pipeline",
            View::Agents => "/console/agents",
            View::Drift => "/console/drift",
            View::Runs | View::Run(_) => "/console/runs",
            View::Audit => "/console/audit",
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
        View::Release(name, version) => release(signed, name, version).await?.render(),
        View::Runs => runs(signed).await?.render(),
        View::Run(id) => run(signed, id).await?.render(),
        View::Audit => {
            signed
                .caller
                .require(Permission::Administer)
                .map_err(|e| e.0)?;
            audit(signed).await?.render()
        }
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

struct ComponentRow {
    name: String,
    image: String,
    digest: String,
    scan: String,
}

struct PromotionRow {
    id: String,
    environment: String,
    state: String,
    state_text: String,
    requested: String,
    decision: String,
}

#[derive(Template)]
#[template(path = "release.html")]
struct ReleasePage {
    name: String,
    version: String,
    created_by: String,
    created_at: String,
    components: Vec<ComponentRow>,
    findings: Vec<(String, String, String, String, String)>,
    promotions: Vec<PromotionRow>,
}

async fn release(signed: &Signed, name: &str, version: &str) -> Result<ReleasePage, AppError> {
    let app = &signed.app;
    let release = app.store.get_release(name, version).await.map_err(|e| {
        if e.is_not_found() {
            AppError::new(
                ErrorKind::NotFound,
                "unknown_release",
                format!("no release {name}@{version}"),
            )
        } else {
            e.into()
        }
    })?;
    let mut components = Vec::new();
    let mut findings = Vec::new();
    for component in &release.components {
        let digest = component.digest.to_string();
        let scan = match app.scan_detail(&digest).await {
            Ok(detail) => {
                let open = detail
                    .findings
                    .iter()
                    .filter(|f| f.suppressed_by.is_none())
                    .count();
                for shown in &detail.findings {
                    findings.push((
                        component.name.clone(),
                        shown.finding.vulnerability.clone(),
                        format!("{:?}", shown.finding.severity).to_lowercase(),
                        format!(
                            "{} {}",
                            shown.finding.package, shown.finding.installed_version
                        ),
                        shown.suppressed_by.as_ref().map_or_else(
                            || "not suppressed".to_owned(),
                            |s| format!("suppressed by {}", s.vex_id),
                        ),
                    ));
                }
                format!(
                    "{} report(s), {} finding(s), {open} not suppressed",
                    detail.reports.len(),
                    detail.findings.len()
                )
            }
            Err(error) if error.kind == ErrorKind::NotFound => "not scanned".to_owned(),
            Err(error) => return Err(error),
        };
        components.push(ComponentRow {
            name: component.name.clone(),
            image: component.image.clone(),
            digest,
            scan,
        });
    }
    let promotions = app
        .store
        .list_promotions(None, None, 500)
        .await?
        .into_iter()
        .filter(|p| p.release == release.name && p.version == release.version)
        .map(|p| PromotionRow {
            state: p.state.as_str().to_owned(),
            state_text: state_text(p.state),
            requested: format!("{} by {}", format_utc_ms(p.requested_at_ms), p.requested_by),
            decision: p.decision_id.clone().unwrap_or_default(),
            environment: p.environment,
            id: p.id,
        })
        .collect();
    Ok(ReleasePage {
        name: release.name.clone(),
        version: release.version.clone(),
        created_by: release.created_by.clone(),
        created_at: format_utc_ms(release.created_at_ms),
        components,
        findings,
        promotions,
    })
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    runs: Vec<(String, String, String, String)>,
}

async fn runs(signed: &Signed) -> Result<RunsPage, AppError> {
    let tenant = signed.caller.tenant().to_string();
    let runs = signed
        .app
        .list_runs(&tenant, 200)
        .await?
        .into_iter()
        .map(|run| {
            (
                run.id,
                run.status.to_lowercase(),
                run.created_by,
                format_utc_ms(run.created_at_ms),
            )
        })
        .collect();
    Ok(RunsPage { runs })
}

struct StepRow {
    id: String,
    kind: String,
    status: String,
    attempts: u32,
    after: String,
    note: String,
    approval: String,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    id: String,
    status: String,
    plan_hash: String,
    created_by: String,
    steps: Vec<StepRow>,
    cancellable: bool,
    csrf: String,
    logs: Vec<String>,
}

/// The name serde gives an enum value (`Succeeded`, `Run`), for showing it.
fn shown<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn run(signed: &Signed, id: &str) -> Result<RunPage, AppError> {
    let tenant = signed.caller.tenant().to_string();
    let view = signed.app.run_view(&tenant, id).await?;
    let after: HashMap<String, Vec<String>> = view
        .plan
        .plan
        .steps
        .iter()
        .map(|step| (step.id.clone(), step.needs.clone()))
        .collect();
    let steps = view
        .steps
        .iter()
        .map(|step| {
            let status = shown(&step.status);
            let waiting = status == "WaitingApproval" || status == "Waiting";
            StepRow {
                kind: shown(&step.kind),
                attempts: step.attempts,
                after: after
                    .get(&step.step_id)
                    .map(|needs| needs.join(", "))
                    .unwrap_or_default(),
                note: step.gate_message.clone().unwrap_or_default(),
                approval: if waiting {
                    step.approval_id.clone().unwrap_or_default()
                } else {
                    String::new()
                },
                status: status.to_lowercase(),
                id: step.step_id.clone(),
            }
        })
        .collect();
    let logs = signed
        .app
        .run_logs(&tenant, id, None)
        .await?
        .into_iter()
        .map(|line| {
            format!(
                "{} {} {}{}",
                format_utc_ms(line.at_ms),
                line.event_type,
                line.step_id.map(|s| format!("[{s}] ")).unwrap_or_default(),
                line.message
            )
        })
        .collect();
    let status = view.run.status.to_lowercase();
    Ok(RunPage {
        cancellable: !matches!(status.as_str(), "succeeded" | "failed" | "cancelled"),
        id: view.run.id.clone(),
        status,
        plan_hash: view.run.plan_hash.clone(),
        created_by: view.run.created_by.clone(),
        steps,
        csrf: signed.csrf.clone(),
        logs,
    })
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    verification: String,
    verified_class: String,
    entries: Vec<(i64, String, String, String, String, String)>,
}

async fn audit(signed: &Signed) -> Result<AuditPage, AppError> {
    let store = &signed.app.store;
    let entries = store.list_audit_entries(0, AUDIT_VERIFIED).await?;
    let checkpoints = store.list_audit_checkpoints(0, AUDIT_VERIFIED).await?;
    let keys: Vec<stella_decision::dsse::PublicKey> = store
        .list_signing_keys()
        .await?
        .into_iter()
        .filter_map(|(_, pem, _)| stella_decision::dsse::PublicKey::from_pem(&pem).ok())
        .collect();
    let (verification, verified_class) = if i64::try_from(entries.len()).unwrap_or(i64::MAX)
        >= AUDIT_VERIFIED
    {
        (
            format!("longer than {AUDIT_VERIFIED} entries: verify it with `stella audit verify`"),
            "note".to_owned(),
        )
    } else {
        match stella_decision::audit::verify_chain(&entries, &checkpoints, &keys) {
            Ok(summary) => (
                format!(
                    "verified: {} entries, {} signed checkpoints, every hash and link intact{}",
                    summary.entries,
                    summary.checkpoints,
                    summary
                        .last_checkpoint_seq
                        .map(|seq| format!("; the newest checkpoint signs entry {seq}"))
                        .unwrap_or_default()
                ),
                "notice".to_owned(),
            ),
            Err(fault) => (
                format!("NOT verified: {}", fault.message),
                "error".to_owned(),
            ),
        }
    };
    let entries = entries
        .iter()
        .rev()
        .take(AUDIT_SHOWN)
        .map(|e| {
            (
                e.seq,
                format_utc_ms(e.at_ms),
                e.actor.clone(),
                e.action.clone(),
                e.object.clone(),
                e.outcome.clone(),
            )
        })
        .collect();
    Ok(AuditPage {
        verification,
        verified_class,
        entries,
    })
}

/// `GET /console/releases/{name}/{version}`
pub async fn release_page(
    State(state): State<ApiState>,
    signed: Signed,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let view = View::Release(name, version);
    page(
        &state,
        &signed,
        &view,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/runs`
pub async fn runs_page(State(state): State<ApiState>, signed: Signed) -> Response {
    page(
        &state,
        &signed,
        &View::Runs,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/runs/{id}`
pub async fn run_page(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    page(
        &state,
        &signed,
        &View::Run(id),
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/audit` (admin, as `GET /api/v1/audit`)
pub async fn audit_page(State(state): State<ApiState>, signed: Signed) -> Response {
    page(
        &state,
        &signed,
        &View::Audit,
        Banner::default(),
        http::StatusCode::OK,
        Extra::default(),
    )
    .await
}

/// `GET /console/decisions/{id}/evidence`: the evidence packet, as `GET
/// /api/v1/decisions/{id}/evidence` (viewer).
pub async fn evidence(signed: Signed, Path(id): Path<String>) -> Response {
    if let Err(error) = signed.caller.require(Permission::Read) {
        return error.into_response();
    }
    match signed.app.evidence_packet(&id).await {
        Ok(bytes) => {
            let file = format!(
                "attachment; filename=\"evidence-{}.tar.gz\"",
                id.trim_start_matches("sha256:")
                    .chars()
                    .take(16)
                    .collect::<String>()
            );
            (
                [
                    (http::header::CONTENT_TYPE, "application/gzip".to_owned()),
                    (http::header::CONTENT_DISPOSITION, file),
                ],
                bytes,
            )
                .into_response()
        }
        Err(error) => crate::api::envelope::ApiError(error).into_response(),
    }
}

/// The approve / reject form of a run's gate.
#[derive(Debug, Deserialize)]
pub struct RunAnswer {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// `approved` or `rejected`.
    #[serde(default)]
    pub decision: String,
    /// The plan the page showed.
    #[serde(default)]
    pub plan_hash: String,
}

/// `POST /console/runs/{id}/approvals/{approval}`: as the TaskRunner API's decision
/// (operator).
pub async fn answer_run(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Path((id, approval)): Path<(String, String)>,
    Form(form): Form<RunAnswer>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let tenant = signed.caller.tenant().to_string();
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Run(id.clone()),
        || async move {
            caller.require(Permission::Operate).map_err(|e| e.0)?;
            let decision = crate::app::runs::RunDecision {
                approval_id: approval.clone(),
                decision: form.decision.clone(),
                plan_hash: form.plan_hash,
                actor: caller.0.name.clone(),
                summary: Some("answered in the console".to_owned()),
                grants_held: Vec::new(),
                holds_every_grant: caller.0.has_role(Role::Admin),
            };
            app.decide_run_approval(&tenant, &id, decision).await?;
            Ok((format!("{approval}: {}", form.decision), Extra::default()))
        },
    )
    .await
}

/// `POST /console/runs/{id}/cancel` (operator)
pub async fn cancel_run(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Plain>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let tenant = signed.caller.tenant().to_string();
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Run(id.clone()),
        || async move {
            caller.require(Permission::Operate).map_err(|e| e.0)?;
            let run = app.cancel_run(&tenant, &id, &caller.0).await?;
            Ok((
                format!("run {} is being cancelled", run.id),
                Extra::default(),
            ))
        },
    )
    .await
}
