//! A promotion's page: its gates, approvals, decision and deployment; and the
//! approve / reject form.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Log lines a promotion's page shows when it loads (the live log follows on).
const LOG_LINES: i64 = 1000;

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
    last_seq: i64,
    /// Per task: element id, what it is, state, last word.
    tasks: Vec<(String, String, String, String)>,
    rollout: Option<RolloutPanel>,
}

/// A progressive deployment as the promotion's page shows it: where it is, the
/// weights the router was last given, and every step so far.
pub(super) struct RolloutPanel {
    strategy: String,
    state: String,
    weights: String,
    message: String,
    /// Per step: number, phase, what, state, message.
    steps: Vec<(i64, String, String, String, String)>,
}

impl RolloutPanel {
    fn new(detail: &crate::app::RolloutDetail) -> Self {
        let rollout = &detail.rollout;
        let weights = rollout
            .weights
            .iter()
            .map(|(slot, percent)| format!("{} {percent}%", crate::domain::slot_name(*slot)))
            .collect::<Vec<_>>()
            .join(", ");
        RolloutPanel {
            strategy: rollout.strategy.name().to_owned(),
            state: rollout.state.as_str().to_owned(),
            weights: if weights.is_empty() {
                "not routed yet".to_owned()
            } else {
                weights
            },
            message: rollout.message.clone().unwrap_or_default(),
            steps: detail
                .records
                .iter()
                .map(|r| {
                    (
                        r.seq,
                        r.phase.as_str().to_owned(),
                        crate::domain::describe_step(&r.step),
                        r.state.as_str().to_owned(),
                        r.message.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }
}

/// A deployment's log line as the page shows it (and the live log streams it).
pub fn deployment_line(line: &crate::domain::LogLine) -> String {
    format!("{} {}", format_utc_ms(line.at_ms), line.message)
}

/// A promotion's page; `live` leaves out the log's lines (see [`super::Extra::live`]).
pub(super) async fn promotion(
    signed: &Signed,
    id: &str,
    live: bool,
) -> Result<PromotionPage, AppError> {
    let detail = signed.app.promotion_detail(id).await?;
    let promotion = &detail.promotion;
    let (deployment, deployment_state, logs, last_seq, tasks, rollout) =
        match &promotion.deployment_id {
            Some(deployment_id) => {
                let deployment = signed.app.find_deployment(deployment_id).await?;
                let lines = if live {
                    Vec::new()
                } else {
                    signed
                        .app
                        .store
                        .logs_after(deployment_id, -1, LOG_LINES)
                        .await?
                };
                let rollout = signed.app.rollout_detail(deployment_id).await?;
                let tasks = signed
                    .app
                    .store
                    .tasks_of_deployment(deployment_id)
                    .await?
                    .into_iter()
                    .map(|task| {
                        // A rollout has several tasks per target: each row says which.
                        let (id, what) = match &rollout {
                            None => (format!("task-{}", task.target), task.target.clone()),
                            Some(_) => {
                                let slot =
                                    serde_json::from_str::<serde_json::Value>(&task.payload_json)
                                        .ok()
                                        .and_then(|v| v.get("slot")?.as_str().map(str::to_owned))
                                        .unwrap_or_else(|| "stable".to_owned());
                                (
                                    format!("task-{}", task.id),
                                    format!("{} ({} {slot})", task.target, task.kind),
                                )
                            }
                        };
                        (
                            id,
                            what,
                            task.state.as_str().to_owned(),
                            task.message.unwrap_or_default(),
                        )
                    })
                    .collect();
                (
                    deployment_id.clone(),
                    deployment.state.as_str().to_owned(),
                    lines.iter().map(deployment_line).collect(),
                    lines.last().map_or(-1, |line| line.seq),
                    tasks,
                    rollout.as_ref().map(RolloutPanel::new),
                )
            }
            None => (
                String::new(),
                String::new(),
                Vec::new(),
                -1,
                Vec::new(),
                None,
            ),
        };
    let verified = match &promotion.decision_id {
        None => String::new(),
        Some(id) => match signed.app.replay_decision(id).await {
            Ok(replay) if replay.identical => {
                "replayed on the server from its stored inputs: byte-identical; the evidence packet verifies offline with stella evidence verify".to_owned()
            }
            Ok(replay) => format!(
                "NOT reproduced: replaying its stored inputs gives {} ({} field(s) differ)",
                replay.recomputed_id,
                replay.differences.len()
            ),
            Err(error) => format!("NOT verified: {}", error.message),
        },
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
        verified,
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
        last_seq,
        tasks,
        rollout,
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

/// `GET /console/promotions/{id}`
pub async fn promotion_page(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    show(&state, &signed, &View::Promotion(id)).await
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
    Box::pin(act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        view,
        || async move {
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
        },
    ))
    .await
}
