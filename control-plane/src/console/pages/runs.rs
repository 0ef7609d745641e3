//! Task-pack runs: the list, a run with its steps, gate answers and cancellation.

#[allow(clippy::wildcard_imports)]
use super::*;

#[derive(Template)]
#[template(path = "runs.html")]
pub(super) struct RunsPage {
    runs: Vec<(String, String, String, String)>,
    pager: Pager,
}

/// Runs listed on one page, and the newest runs the list goes back to.
const RUNS_PER_PAGE: usize = 100;
const RUNS_LISTED: i64 = 10_000;

pub(super) async fn runs(signed: &Signed, listing: &Listing) -> Result<RunsPage, AppError> {
    let tenant = signed.caller.tenant().to_string();
    let runs = signed
        .app
        .list_runs(&tenant, RUNS_LISTED)
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
        .filter(|run| listing.keeps([run.0.as_str(), &run.1, &run.2, &run.3]))
        .collect();
    let (runs, pager) = listing.page_of(runs, RUNS_PER_PAGE, "/console/runs", "runs");
    Ok(RunsPage { runs, pager })
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
    last_seq: i64,
    graph: super::graph::Graph,
}

/// Each step of a plan to draw, with the steps it waits for: a list runs in order, so
/// a step waits for the one before it (for all the last ones of a `parallel` block
/// before it); a child of a `parallel` block waits for its `needs`, or else for the
/// block's start. Maps, loops and branches are drawn as one step each.
fn waits_for(steps: &[stella_packs::plan::PlanStep]) -> Vec<(String, Vec<String>)> {
    use stella_packs::plan::PlanBody;
    let mut drawn = Vec::new();
    let mut before: Vec<String> = Vec::new();
    for step in steps {
        drawn.push((step.id.clone(), before.clone()));
        before = vec![step.id.clone()];
        if let PlanBody::Parallel {
            steps: children, ..
        } = &step.body
        {
            let ids: Vec<&str> = children.iter().map(|c| c.id.as_str()).collect();
            for child in children {
                let needs: Vec<String> = child
                    .needs
                    .iter()
                    .filter(|n| ids.contains(&n.as_str()))
                    .cloned()
                    .collect();
                let needs = if needs.is_empty() {
                    vec![step.id.clone()]
                } else {
                    needs
                };
                drawn.push((child.id.clone(), needs));
            }
            let last: Vec<String> = children
                .iter()
                .filter(|c| !children.iter().any(|o| o.needs.contains(&c.id)))
                .map(|c| c.id.clone())
                .collect();
            if !last.is_empty() {
                before = last;
            }
        }
    }
    drawn
}

/// A run's log line as the page shows it (and the live log streams it).
pub fn run_line(line: &crate::domain::RunLogLine) -> String {
    format!(
        "{} {} {}{}",
        format_utc_ms(line.at_ms),
        line.event_type,
        line.step_id
            .as_deref()
            .map(|s| format!("[{s}] "))
            .unwrap_or_default(),
        line.message
    )
}

/// A run's page; `live` leaves out the log's lines (see [`super::Extra::live`]).
pub(super) async fn run(signed: &Signed, id: &str, live: bool) -> Result<RunPage, AppError> {
    let tenant = signed.caller.tenant().to_string();
    let view = signed.app.run_view(&tenant, id).await?;
    let waits = waits_for(&view.plan.plan.steps);
    let after: HashMap<&str, &Vec<String>> = waits
        .iter()
        .map(|(id, needs)| (id.as_str(), needs))
        .collect();
    let steps: Vec<StepRow> = view
        .steps
        .iter()
        .map(|step| {
            // A gate waiting for its approval is `Pending` with the reason
            // `awaiting-approval` (the TaskRunner contract); the page says `waiting`.
            let waiting = step.status_reason.as_deref() == Some("awaiting-approval");
            let status = if waiting {
                "Waiting".to_owned()
            } else {
                shown(&step.status)
            };
            StepRow {
                kind: shown(&step.kind),
                attempts: step.attempts,
                after: after
                    .get(step.step_id.as_str())
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
    let lines = if live {
        Vec::new()
    } else {
        signed.app.run_logs(&tenant, id, None).await?
    };
    let last_seq = lines.last().map_or(-1, |line| line.seq);
    let logs = lines.iter().map(run_line).collect();
    let states: HashMap<&str, String> = steps
        .iter()
        .map(|row: &StepRow| (row.id.as_str(), row.status.clone()))
        .collect();
    let nodes: Vec<super::graph::StepNode<'_>> = waits
        .iter()
        .map(|(id, needs)| super::graph::StepNode {
            id,
            needs,
            state: states.get(id.as_str()).map_or("pending", String::as_str),
        })
        .collect();
    let graph = super::graph::layout(&nodes);
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
        last_seq,
        graph,
    })
}

/// `GET /console/runs`
pub async fn runs_page(
    State(state): State<ApiState>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    list_page(&state, &signed, query, View::Runs).await
}

/// `GET /console/runs/{id}`
pub async fn run_page(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    show(&state, &signed, &View::Run(id)).await
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
