//! The pages of releases on their way: dashboard, pipeline, promotion, release, and
//! targets and drift; and their forms (promote, answer, new environment).

#[allow(clippy::wildcard_imports)]
use super::*;

/// Releases shown on the dashboard, newest first.
const DASHBOARD_RELEASES: usize = 50;

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
pub(super) struct Dashboard {
    envs: Vec<EnvHead>,
    rows: Vec<Row>,
    waiting: Vec<Waiting>,
    csrf: String,
}

pub(super) async fn dashboard(signed: &Signed) -> Result<Dashboard, AppError> {
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
pub(super) struct Pipeline {
    envs: Vec<PipelineEnv>,
    csrf: String,
}

pub(super) async fn pipeline(signed: &Signed) -> Result<Pipeline, AppError> {
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
pub(super) struct PromotionPage {
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

pub(super) async fn promotion(signed: &Signed, id: &str) -> Result<PromotionPage, AppError> {
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
pub(super) struct DriftPage {
    targets: Vec<TargetRow>,
}

pub(super) async fn drift(signed: &Signed) -> Result<DriftPage, AppError> {
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
pub(super) struct ReleasePage {
    name: String,
    version: String,
    created_by: String,
    created_at: String,
    components: Vec<ComponentRow>,
    findings: Vec<(String, String, String, String, String)>,
    promotions: Vec<PromotionRow>,
}

pub(super) async fn release(
    signed: &Signed,
    name: &str,
    version: &str,
) -> Result<ReleasePage, AppError> {
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
