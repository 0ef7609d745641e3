//! Task-pack runs: the list, a run with its steps, gate answers and cancellation.

#[allow(clippy::wildcard_imports)]
use super::*;

#[derive(Template)]
#[template(path = "runs.html")]
pub(super) struct RunsPage {
    runs: Vec<(String, String, String, String)>,
}

pub(super) async fn runs(signed: &Signed) -> Result<RunsPage, AppError> {
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
pub(super) struct RunPage {
    id: String,
    status: String,
    plan_hash: String,
    created_by: String,
    steps: Vec<StepRow>,
    cancellable: bool,
    csrf: String,
    logs: Vec<String>,
}

pub(super) async fn run(signed: &Signed, id: &str) -> Result<RunPage, AppError> {
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
