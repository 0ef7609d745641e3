//! Task-pack runs: plans and simulations (`stella_packs`), runs stored with their step
//! states, approvals bound to the plan hash, cancellation, logs and artifacts. The
//! [`driver`] moves runs on; [`executor`] runs the steps; [`sandbox`] confines scripts.
//!
//! Tenancy: every run belongs to the tenant of the request that created it
//! (`X-StellaOps-Tenant`, `default` when absent) and is visible to that tenant only.

pub mod driver;
mod executor;
mod policy_gate;
pub mod sandbox;

pub use driver::{run_task_runner, RunEngine};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use stella_packs::schedule::RunStateStep;
use stella_packs::simulate::{ApprovalDecision, SimulationContext};
use stella_packs::{CompiledPlan, PlanErrors, RunState, SimulationResponse, StepState, StepStatus};

use super::now_ms;
use crate::domain::{NewRun, NewRunLog, Run, RunApproval, RunArtifact, RunLogLine, User};
use crate::error::{AppError, ErrorKind};
use crate::App;

/// Why a run could not be planned or created.
#[derive(Debug)]
pub enum RunRequestError {
    /// The manifest or its inputs are wrong (the TaskRunner `PlanErrorResponse`).
    Plan(PlanErrors),
    /// Anything else.
    App(AppError),
}

impl From<AppError> for RunRequestError {
    fn from(error: AppError) -> Self {
        RunRequestError::App(error)
    }
}

/// A run with the rows of its steps.
#[derive(Debug, Clone)]
pub struct RunView {
    /// The run.
    pub run: Run,
    /// Its plan.
    pub plan: CompiledPlan,
    /// Every step as the TaskRunner `RunStateStep`.
    pub steps: Vec<RunStateStep>,
}

/// What an approval decision did.
#[derive(Debug, Clone)]
pub struct ApprovalOutcome {
    /// `approved`, `rejected`, `expired`.
    pub status: String,
    /// Whether the run goes on (approved, and the run is in progress).
    pub resumed: bool,
}

/// An approval decision as requested.
#[derive(Debug, Clone)]
pub struct RunDecision {
    /// The approval (from the pack's `spec.approvals`).
    pub approval_id: String,
    /// `approved`, `rejected`, `expired`.
    pub decision: String,
    /// The plan the decision is for.
    pub plan_hash: String,
    /// Who decides.
    pub actor: String,
    /// Why.
    pub summary: Option<String>,
    /// The grants the deciding caller holds (see `api::task_runner::held_grants`).
    pub grants_held: Vec<String>,
    /// Whether the caller holds every grant (an admin).
    pub holds_every_grant: bool,
}

/// Longest run id.
const MAX_RUN_ID: usize = 128;

/// Whether `id` is a valid run id (`^[a-zA-Z0-9_-]+$`, at most 128 characters).
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RUN_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `tenant` is a valid tenant slug (same characters as a run id, and `.`).
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= MAX_RUN_ID
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn plan_of(text: &str, inputs: &Map<String, Value>) -> Result<CompiledPlan, PlanErrors> {
    stella_packs::plan_text(text, inputs)
}

/// The stored plan of a run, its hash checked.
pub(crate) fn stored_plan(run: &Run) -> Result<CompiledPlan, AppError> {
    let corrupt = |detail: String| {
        AppError::new(
            ErrorKind::Internal,
            "corrupt_plan",
            format!("the stored plan of run {} cannot be read: {detail}", run.id),
        )
    };
    let plan: stella_packs::Plan =
        serde_json::from_str(&run.plan_json).map_err(|e| corrupt(e.to_string()))?;
    let compiled = CompiledPlan {
        plan_hash: run.plan_hash.clone(),
        plan,
    };
    Ok(compiled)
}

/// A run's state as the scheduler reads it.
pub(crate) async fn load_state(app: &App, run: &Run) -> Result<RunState, AppError> {
    let records = app.store.run_steps(&run.tenant, &run.id).await?;
    let approvals = app.store.run_approvals(&run.tenant, &run.id).await?;
    let mut state = RunState {
        cancelled: run.cancel_requested,
        ..RunState::default()
    };
    for record in records {
        let status = parse_status(&record.status).ok_or_else(|| {
            AppError::new(
                ErrorKind::Internal,
                "corrupt_run",
                format!(
                    "step {} of run {} has status {}",
                    record.key, run.id, record.status
                ),
            )
        })?;
        state.steps.insert(
            record.key.clone(),
            StepState {
                status,
                attempts: u32::try_from(record.attempts).unwrap_or(u32::MAX),
                last_transition_ms: record.last_transition_ms,
            },
        );
        if let Some(outputs) = record.outputs {
            state.outputs.insert(record.key, outputs);
        }
    }
    for approval in approvals {
        if let Some(decision) = parse_decision(&approval.decision) {
            state.approvals.insert(approval.approval_id, decision);
        }
    }
    Ok(state)
}

pub(crate) fn parse_status(text: &str) -> Option<StepStatus> {
    Some(match text {
        "Pending" => StepStatus::Pending,
        "Running" => StepStatus::Running,
        "Succeeded" => StepStatus::Succeeded,
        "Failed" => StepStatus::Failed,
        "Skipped" => StepStatus::Skipped,
        "Waiting" => StepStatus::Waiting,
        _ => return None,
    })
}

pub(crate) fn status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "Pending",
        StepStatus::Running => "Running",
        StepStatus::Succeeded => "Succeeded",
        StepStatus::Failed => "Failed",
        StepStatus::Skipped => "Skipped",
        StepStatus::Waiting => "Waiting",
    }
}

fn parse_decision(text: &str) -> Option<ApprovalDecision> {
    Some(match text {
        "approved" => ApprovalDecision::Approved,
        "rejected" => ApprovalDecision::Rejected,
        "expired" => ApprovalDecision::Expired,
        _ => return None,
    })
}

fn not_found(id: &str) -> AppError {
    AppError::new(
        ErrorKind::NotFound,
        "run_not_found",
        format!("no run `{id}`"),
    )
}

impl App {
    /// Plans `manifest` with `inputs` and simulates it, executing nothing.
    pub fn simulate_pack(
        &self,
        manifest: &str,
        inputs: &Map<String, Value>,
    ) -> Result<SimulationResponse, PlanErrors> {
        let plan = plan_of(manifest, inputs)?;
        Ok(stella_packs::simulate(&plan, &SimulationContext::default()))
    }

    /// Plans and stores a new run for `tenant`; it starts at once. `run_id` defaults
    /// to a new UUID; 409 `run_exists` when the tenant has a run with this id.
    pub async fn create_run(
        self: &Arc<Self>,
        tenant: &str,
        run_id: Option<String>,
        manifest: &str,
        inputs: &Map<String, Value>,
        user: &User,
    ) -> Result<RunView, RunRequestError> {
        let id = match run_id {
            Some(id) if valid_run_id(&id) => id,
            Some(id) => {
                return Err(RunRequestError::Plan(PlanErrors::one(
                    "$.runId",
                    format!(
                    "run id `{id}` must match ^[a-zA-Z0-9_-]+$ (at most {MAX_RUN_ID} characters)"
                ),
                )))
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let plan = plan_of(manifest, inputs).map_err(RunRequestError::Plan)?;
        let plan_json = String::from_utf8(
            stella_decision::canonical::canonical_bytes(&plan.plan)
                .map_err(|e| AppError::new(ErrorKind::Internal, "plan_encoding", e.to_string()))?,
        )
        .map_err(|e| AppError::new(ErrorKind::Internal, "plan_encoding", e.to_string()))?;
        let now = now_ms();
        let new = NewRun {
            tenant: tenant.to_owned(),
            id: id.clone(),
            plan_hash: plan.plan_hash.clone(),
            plan_json,
            manifest: manifest.to_owned(),
            inputs_json: Value::Object(inputs.clone()).to_string(),
            created_by: user.name.clone(),
            created_at_ms: now,
        };
        let first = NewRunLog::info("run.created", "Run created via API.")
            .meta("planHash", plan.plan_hash.clone())
            .meta("requestedAt", crate::domain::format_utc_ms(now))
            .meta("requestedBy", user.name.clone());
        let run = self.store.create_run(&new, first).await.map_err(|e| {
            super::conflict_as(e, "run_exists", format!("a run `{id}` exists already"))
        })?;
        tracing::info!(tenant, run_id = %id, plan_hash = %plan.plan_hash, "run created");
        self.run_engine.wake();
        let steps = stella_packs::run_state_steps(&plan, &RunState::default());
        Ok(RunView { run, plan, steps })
    }

    /// A run and its steps; 404 `run_not_found`.
    pub async fn run_view(&self, tenant: &str, id: &str) -> Result<RunView, AppError> {
        let run = self.find_run(tenant, id).await?;
        let plan = stored_plan(&run)?;
        let state = load_state(self, &run).await?;
        let steps = stella_packs::run_state_steps(&plan, &state);
        Ok(RunView { run, plan, steps })
    }

    /// A run; 404 `run_not_found`.
    pub async fn find_run(&self, tenant: &str, id: &str) -> Result<Run, AppError> {
        if !valid_run_id(id) {
            return Err(not_found(id));
        }
        self.store.get_run(tenant, id).await.map_err(|e| {
            super::not_found_as(
                e,
                ErrorKind::NotFound,
                "run_not_found",
                format!("no run `{id}`"),
            )
        })
    }

    /// The tenant's runs, newest first.
    pub async fn list_runs(&self, tenant: &str, limit: i64) -> Result<Vec<Run>, AppError> {
        Ok(self.store.list_runs(tenant, limit.clamp(1, 1000)).await?)
    }

    /// Log lines of a run after `after`.
    pub async fn run_logs(
        &self,
        tenant: &str,
        id: &str,
        after: Option<i64>,
    ) -> Result<Vec<RunLogLine>, AppError> {
        Ok(self.store.run_logs_after(tenant, id, after, 1000).await?)
    }

    /// The artifacts of a run (404 for an unknown run).
    pub async fn run_artifacts(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Vec<RunArtifact>, AppError> {
        self.find_run(tenant, id).await?;
        Ok(self.store.run_artifacts(tenant, id).await?)
    }

    /// One artifact with its content; 404 `artifact_not_found`.
    pub async fn run_artifact(
        &self,
        tenant: &str,
        id: &str,
        name: &str,
    ) -> Result<RunArtifact, AppError> {
        self.find_run(tenant, id).await?;
        self.store
            .run_artifact(tenant, id, name)
            .await
            .map_err(|e| {
                super::not_found_as(
                    e,
                    ErrorKind::NotFound,
                    "artifact_not_found",
                    format!("run `{id}` has no artifact `{name}`"),
                )
            })
    }

    /// Applies an approval decision to a run's gate. 404 when the run or the approval
    /// is unknown; 409 `plan_hash_mismatch` when `plan_hash` is not the run's;
    /// 409 `already_decided` when the approval has a decision.
    pub async fn decide_run_approval(
        &self,
        tenant: &str,
        id: &str,
        request: RunDecision,
    ) -> Result<ApprovalOutcome, AppError> {
        let RunDecision {
            approval_id,
            decision,
            plan_hash,
            actor,
            summary,
            grants_held,
            holds_every_grant,
        } = request;
        let (approval_id, decision, plan_hash, actor) = (
            approval_id.as_str(),
            decision.as_str(),
            plan_hash.as_str(),
            actor.as_str(),
        );
        let run = self.find_run(tenant, id).await?;
        let plan = stored_plan(&run)?;
        let Some(declared) = plan.plan.approvals.iter().find(|a| a.id == approval_id) else {
            return Err(AppError::new(
                ErrorKind::NotFound,
                "approval_not_found",
                format!("run `{id}` has no approval `{approval_id}`"),
            ));
        };
        let missing: Vec<&str> = declared
            .grants
            .iter()
            .filter(|grant| !holds_every_grant && !grants_held.contains(grant))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(AppError::new(
                ErrorKind::PermissionDenied,
                "missing_grants",
                format!(
                    "approval `{approval_id}` needs the grants {}, which neither your roles nor your token's scopes hold",
                    missing.join(", ")
                ),
            ));
        }
        if plan_hash != run.plan_hash {
            return Err(AppError::new(
                ErrorKind::Conflict,
                "plan_hash_mismatch",
                format!(
                    "the decision is for plan {plan_hash}, but run `{id}` runs plan {}",
                    run.plan_hash
                ),
            ));
        }
        let now = now_ms();
        let (event, level) = match decision {
            "approved" => ("gate.approved", "info"),
            _ => ("gate.rejected", "warn"),
        };
        let log = NewRunLog::info(
            event,
            format!("Approval {approval_id} {decision} by {actor}."),
        )
        .level(level)
        .meta("approvalId", approval_id)
        .meta("decision", decision)
        .meta("actorId", actor)
        .meta("planHash", plan_hash);
        let log = match &summary {
            Some(text) => log.meta("summary", text.clone()),
            None => log,
        };
        let approval = RunApproval {
            approval_id: approval_id.to_owned(),
            decision: decision.to_owned(),
            actor: actor.to_owned(),
            summary,
            decided_at_ms: now,
        };
        self.store
            .record_run_approval(tenant, id, &approval, log)
            .await
            .map_err(|e| {
                super::conflict_as(
                    e,
                    "already_decided",
                    format!("approval `{approval_id}` of run `{id}` was decided already"),
                )
            })?;
        self.run_engine.poke(tenant, id);
        Ok(ApprovalOutcome {
            status: decision.to_owned(),
            resumed: decision == "approved" && !run.is_finished(),
        })
    }

    /// Requests cancellation: pending steps become skipped and running ones are
    /// stopped by the replica driving the run. Cancelling a finished run changes
    /// nothing.
    pub async fn cancel_run(&self, tenant: &str, id: &str, user: &User) -> Result<Run, AppError> {
        let run = self.find_run(tenant, id).await?;
        let log = NewRunLog::info(
            "run.cancel-requested",
            format!("Cancellation requested by {}.", user.name),
        )
        .meta("requestedBy", user.name.clone());
        self.store
            .request_run_cancel(tenant, id, log, now_ms())
            .await?;
        self.run_engine.poke(tenant, id);
        Ok(run)
    }

    /// The user a run acts as (its creator), for steps that promote.
    pub(crate) async fn run_user(&self, run: &Run) -> Result<User, AppError> {
        self.store.find_user(&run.created_by).await.map_err(|e| {
            super::not_found_as(
                e,
                ErrorKind::FailedPrecondition,
                "run_user_gone",
                format!(
                    "the user `{}` who created the run no longer exists",
                    run.created_by
                ),
            )
        })
    }
}

/// Step outputs by step key, as the expression context reads them.
pub(crate) fn outputs_context(state: &RunState) -> Map<String, Value> {
    state
        .outputs
        .iter()
        .map(|(key, outputs)| (key.clone(), Value::Object(outputs.clone())))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect()
}
