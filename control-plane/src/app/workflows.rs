//! Promotion workflows: an environment may name a task pack that carries out every
//! promotion allowed into it.
//!
//! Without one, an allowed promotion runs the built-in workflow: its gates (promotion
//! order, freeze windows, security, policy, approvals — the decision), then the
//! deployment and its health checks. With one, the decision covers the gates as before,
//! and the pack, compiled for the promotion, is what happens after: steps before its one
//! `builtin:promotion` step (smoke tests, a change ticket, a backup) run first, that step
//! makes and waits for the deployment, and the steps after it verify. The compiled plan's
//! input `promotion` holds the release, its components and the deployment plan's hash, so
//! the workflow's plan hash — the promotion's plan hash, which approvals bind and the
//! signed decision carries — covers both what is deployed and every step around it.
//!
//! The run is created right after the decision is stored, in tenant `default`, with the
//! id `promotion-<promotion id>`; the sweep ([`App::sweep_workflow_promotions`]) creates
//! it again if the server stopped in between, and settles promotions whose run ended
//! while no replica was listening.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use stella_decision::gates::{Plan, WorkflowInput};
use stella_packs::plan::PlanBody;

use super::events::NewEvent;
use super::now_ms;
use super::runs::RunRequestError;
use crate::domain::{
    DeploymentKind, DeploymentState, Document, Environment, NewRunLog, Promotion, PromotionState,
    Run,
};
use crate::error::{AppError, ErrorKind};
use crate::store::StoreError;
use crate::App;

/// The document kind of a workflow manifest.
const DOCUMENT_KIND: &str = "task-pack";
/// The largest workflow manifest.
const MAX_WORKFLOW_BYTES: usize = 256 * 1024;
/// The tenant promotion workflow runs belong to.
pub(super) const WORKFLOW_TENANT: &str = "default";
/// The executor that deploys the promotion a workflow carries out.
const PROMOTION_EXECUTOR: &str = "builtin:promotion";
/// How long `builtin:promotion` waits for the deployment by default.
const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(1800);

/// The id of the run that carries out a promotion.
pub(super) fn run_id_of(promotion_id: &str) -> String {
    format!("promotion-{promotion_id}")
}

/// The promotion a workflow run carries out, by its id.
fn promotion_of_run(run: &Run) -> Option<&str> {
    (run.tenant == WORKFLOW_TENANT)
        .then(|| run.id.strip_prefix("promotion-"))
        .flatten()
}

/// The `promotion` input of a workflow compiled for `plan`, whose deployment part
/// hashes to `deployment_hash`.
fn promotion_input(plan: &Plan, deployment_hash: &str) -> Value {
    let components: Map<String, Value> = plan
        .release
        .components
        .iter()
        .map(|c| (c.name.clone(), Value::String(c.image.clone())))
        .collect();
    json!({
        "release": plan.release.name,
        "version": plan.release.version,
        "environment": plan.gates.environment,
        "components": components,
        "deploymentPlanHash": deployment_hash,
    })
}

/// Every plan error of a manifest on one line: `PATH: message; …`.
fn one_line(errors: &stella_packs::PlanErrors) -> String {
    errors
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn invalid_workflow(message: impl Into<String>) -> AppError {
    AppError::new(ErrorKind::InvalidArgument, "invalid_workflow", message)
}

/// Checks a workflow manifest: it compiles for a promotion (its own inputs need
/// defaults: Stella gives only `promotion`), has exactly one `builtin:promotion` step,
/// and no gate steps (the environment's gates are the decision's).
fn check_manifest(manifest: &str) -> Result<(), AppError> {
    if manifest.len() > MAX_WORKFLOW_BYTES {
        return Err(invalid_workflow(format!(
            "the workflow is {} bytes; at most {MAX_WORKFLOW_BYTES} are accepted",
            manifest.len()
        )));
    }
    let sample = json!({
        "release": "example",
        "version": "1.0.0",
        "environment": "example",
        "components": {"web": "registry.example/web@sha256:0000000000000000000000000000000000000000000000000000000000000000"},
        "deploymentPlanHash": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    });
    let inputs = Map::from_iter([("promotion".to_owned(), sample)]);
    let compiled = stella_packs::plan_text(manifest, &inputs).map_err(|errors| {
        let line = one_line(&errors);
        let hint = if line.contains("unknown input `promotion`") {
            " (a promotion workflow declares the input `promotion`, type object: Stella gives it the release, version, environment, components and the deployment plan's hash)"
        } else {
            ""
        };
        invalid_workflow(format!(
            "the workflow is refused: {line}{hint}"
        ))
    })?;
    let mut deploys = 0;
    for step in compiled.plan.all_steps() {
        match &step.body {
            PlanBody::Run { uses, .. } if uses == PROMOTION_EXECUTOR => deploys += 1,
            PlanBody::GateApproval { .. } | PlanBody::GatePolicy { .. } => {
                return Err(invalid_workflow(format!(
                    "step `{}`: a promotion workflow has no gate steps; the environment's gates \
                     (--approvals, --policy, --freeze, --block-severity) decide before it starts",
                    step.id
                )));
            }
            _ => {}
        }
    }
    if deploys != 1 {
        return Err(invalid_workflow(format!(
            "a promotion workflow has exactly one `{PROMOTION_EXECUTOR}` step (the deployment); this one has {deploys}"
        )));
    }
    Ok(())
}

impl App {
    /// Checks a workflow manifest and stores it by content; returns its id.
    pub(super) async fn store_workflow(
        &self,
        environment: &str,
        manifest: &str,
    ) -> Result<String, AppError> {
        check_manifest(manifest)?;
        let id = stella_decision::sha256_id(manifest.as_bytes());
        self.store
            .put_document(&Document {
                id: id.clone(),
                kind: DOCUMENT_KIND.to_owned(),
                content: manifest.to_owned(),
                created_by: format!("environment:{environment}"),
                created_at_ms: now_ms(),
            })
            .await?;
        Ok(id)
    }

    /// The manifest of a stored workflow.
    async fn workflow_manifest(&self, id: &str) -> Result<String, AppError> {
        let document = self.store.get_document(id).await?;
        Ok(document.content)
    }

    /// The environment's workflow compiled for a promotion with this deployment plan;
    /// `None` when the environment runs the built-in one.
    pub(super) async fn compile_workflow(
        &self,
        env: &Environment,
        plan: &Plan,
    ) -> Result<Option<WorkflowInput>, AppError> {
        let Some(id) = &env.gates.workflow_id else {
            return Ok(None);
        };
        let manifest = self.workflow_manifest(id).await?;
        let deployment_hash = plan
            .deployment_hash()
            .map_err(super::promotions::undecidable)?;
        let inputs = Map::from_iter([(
            "promotion".to_owned(),
            promotion_input(plan, &deployment_hash),
        )]);
        let compiled = stella_packs::plan_text(&manifest, &inputs).map_err(|errors| {
            AppError::new(
                ErrorKind::FailedPrecondition,
                "invalid_workflow",
                format!(
                    "the promotion workflow of `{}` does not compile for this promotion: {}",
                    env.name,
                    one_line(&errors)
                ),
            )
        })?;
        let plan = serde_json::to_value(&compiled.plan)
            .map_err(|e| AppError::internal("encoding a workflow plan", &e))?;
        Ok(Some(WorkflowInput {
            id: id.clone(),
            plan,
        }))
    }

    /// Creates the run that carries out an allowed promotion (nothing when it exists).
    /// A run that cannot be created fails the promotion, with the reason.
    pub(super) async fn start_workflow_run(self: &Arc<Self>, promotion_id: &str) {
        let run_id = run_id_of(promotion_id);
        let failure = match self.create_workflow_run(promotion_id, &run_id).await {
            Ok(()) => return,
            Err(error) => error,
        };
        tracing::warn!(promotion_id, error = %failure.message, "cannot start a promotion workflow");
        self.settle_workflow_promotion(
            &run_id,
            PromotionState::Failed,
            &format!("the workflow run could not start: {}", failure.message),
        )
        .await;
    }

    async fn create_workflow_run(
        self: &Arc<Self>,
        promotion_id: &str,
        run_id: &str,
    ) -> Result<(), AppError> {
        let promotion = self.store.get_promotion(promotion_id).await?;
        let plan: Plan = serde_json::from_str(&promotion.plan_json)
            .map_err(|e| AppError::internal("decoding a promotion plan", &e))?;
        let Some(workflow) = plan.workflow else {
            return Err(AppError::new(
                ErrorKind::Internal,
                "workflow_missing",
                "a promotion handed to a workflow has none in its plan",
            ));
        };
        let manifest = self.workflow_manifest(&workflow.id).await?;
        let inputs = workflow
            .plan
            .get("inputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let user = self.store.find_user(&promotion.requested_by).await?;
        match self
            .create_run(
                WORKFLOW_TENANT,
                Some(run_id.to_owned()),
                &manifest,
                &inputs,
                &user,
            )
            .await
        {
            Ok(view) if view.run.plan_hash == promotion.plan_hash => {
                tracing::info!(promotion_id, run_id, "promotion workflow started");
                Ok(())
            }
            Ok(view) => Err(AppError::new(
                ErrorKind::Internal,
                "workflow_plan_mismatch",
                format!(
                    "the workflow run's plan hash {} is not the promotion's {}",
                    view.run.plan_hash, promotion.plan_hash
                ),
            )),
            Err(RunRequestError::App(error)) if error.code == "run_exists" => Ok(()),
            Err(RunRequestError::App(error)) => Err(error),
            Err(RunRequestError::Plan(errors)) => Err(invalid_workflow(format!(
                "the workflow no longer compiles: {}",
                one_line(&errors)
            ))),
        }
    }

    /// `builtin:promotion`: makes the deployment of the promotion this run carries out
    /// (once: a retried step finds it made) from the deployment plan the decision bound,
    /// and waits for it. Refused outside a promotion workflow, for a run whose plan is
    /// not the promotion's, and when the targets or settings changed since the decision.
    pub(super) async fn run_promotion_step(
        self: &Arc<Self>,
        run: &Run,
        with: &Map<String, Value>,
        cancel: &tokio_util::sync::CancellationToken,
        logs: &mut Vec<NewRunLog>,
    ) -> Result<Map<String, Value>, String> {
        let Some(promotion_id) = promotion_of_run(run) else {
            return Err(format!(
                "{PROMOTION_EXECUTOR} runs only in a promotion workflow, the run Stella starts for an allowed promotion"
            ));
        };
        let promotion = self
            .store
            .get_promotion(promotion_id)
            .await
            .map_err(|e| format!("promotion {promotion_id}: {e}"))?;
        if promotion.run_id.as_deref() != Some(run.id.as_str())
            || promotion.plan_hash != run.plan_hash
        {
            return Err(format!(
                "run {} is not the workflow the decision of promotion {promotion_id} bound",
                run.id
            ));
        }
        let deployment_id = match &promotion.deployment_id {
            Some(id) => id.clone(),
            None => self
                .deploy_promotion(&promotion, run, logs)
                .await
                .map_err(|e| e.message)?,
        };
        let timeout = match with.get("timeoutSeconds").and_then(Value::as_u64) {
            Some(seconds) => Duration::from_secs(seconds),
            None => DEFAULT_DEPLOY_TIMEOUT,
        };
        let started = Instant::now();
        loop {
            let deployment = self
                .store
                .get_deployment(&deployment_id)
                .await
                .map_err(|e| format!("deployment {deployment_id}: {e}"))?;
            if deployment.state.is_terminal() {
                let outputs = Map::from_iter([
                    ("promotionId".to_owned(), json!(promotion.id)),
                    ("decisionId".to_owned(), json!(promotion.decision_id)),
                    ("deploymentId".to_owned(), json!(deployment.id)),
                    ("state".to_owned(), json!(deployment.state.as_str())),
                ]);
                return if deployment.state == DeploymentState::Succeeded {
                    logs.push(NewRunLog::info(
                        "step.output",
                        format!("deployment {deployment_id} succeeded"),
                    ));
                    Ok(outputs)
                } else {
                    Err(format!(
                        "deployment {deployment_id} {}{}",
                        deployment.state,
                        deployment
                            .message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ))
                };
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "deployment {deployment_id} did not finish within {} s (state {})",
                    timeout.as_secs(),
                    deployment.state
                ));
            }
            tokio::select! {
                () = cancel.cancelled() => return Err("stopped: the run was cancelled".to_owned()),
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Makes the deployment of `promotion` from the plan its decision bound.
    async fn deploy_promotion(
        self: &Arc<Self>,
        promotion: &Promotion,
        run: &Run,
        logs: &mut Vec<NewRunLog>,
    ) -> Result<String, AppError> {
        let env = self.environment(&promotion.environment).await?;
        let release = self
            .release_named(&promotion.release, &promotion.version)
            .await?;
        let (plan, targets, settings) = self.deployment_plan(&release, &env).await?;
        let now_hash = plan
            .deployment_hash()
            .map_err(super::promotions::undecidable)?;
        let decided: Plan = serde_json::from_str(&promotion.plan_json)
            .map_err(|e| AppError::internal("decoding a promotion plan", &e))?;
        let bound = decided
            .deployment_hash()
            .map_err(super::promotions::undecidable)?;
        if now_hash != bound {
            let changes = plan.changes_since(&Plan {
                workflow: None,
                ..decided
            });
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "plan_changed",
                format!(
                    "the deployment plan changed since the decision ({}); promote again",
                    changes.join("; ")
                ),
            ));
        }
        let decision_id = promotion.decision_id.clone().unwrap_or_default();
        let now = now_ms();
        let (mut deployment, tasks) = self
            .plan_deployment(
                &release,
                &env,
                DeploymentKind::Promotion,
                &promotion.requested_by,
                &targets,
                &settings,
                &decision_id,
                now,
            )
            .await?;
        match self
            .store
            .attach_workflow_deployment(&promotion.id, &run.id, &deployment, &tasks, now)
            .await
        {
            Ok(generation) => deployment.generation = generation,
            Err(StoreError::Conflict {
                entity: "active deployment",
                ..
            }) => return Err(self.deployment_in_progress(&env.name).await),
            Err(StoreError::Conflict { .. }) => {
                // Another attempt of this step made it meanwhile.
                let promotion = self.store.get_promotion(&promotion.id).await?;
                return promotion.deployment_id.ok_or_else(|| {
                    AppError::new(
                        ErrorKind::Conflict,
                        "promotion_moved_on",
                        format!("promotion {} was settled meanwhile", promotion.id),
                    )
                });
            }
            Err(other) => return Err(other.into()),
        }
        logs.push(NewRunLog::info(
            "step.output",
            format!(
                "deployment {} of {}@{} to {} created ({} targets)",
                deployment.id,
                release.name,
                release.version,
                env.name,
                tasks.len()
            ),
        ));
        self.deployment_created(&deployment, &tasks, &release, &env, now)
            .await;
        Ok(deployment.id)
    }

    /// A workflow run ended: the promotion it carries out follows (deployed when the run
    /// succeeded, failed otherwise).
    pub(super) async fn workflow_run_finished(&self, run: &Run) {
        if promotion_of_run(run).is_none() {
            return;
        }
        let (state, message) = match run.status.as_str() {
            "Succeeded" => (
                PromotionState::Deployed,
                format!("workflow run {} succeeded", run.id),
            ),
            "Cancelled" => (
                PromotionState::Failed,
                format!("workflow run {} was cancelled", run.id),
            ),
            _ => (
                PromotionState::Failed,
                self.run_failure(run)
                    .await
                    .unwrap_or_else(|| format!("workflow run {} failed", run.id)),
            ),
        };
        self.settle_workflow_promotion(&run.id, state, &message)
            .await;
    }

    /// "workflow run R failed at step S: reason", from the run's log.
    async fn run_failure(&self, run: &Run) -> Option<String> {
        let lines = self
            .store
            .run_logs_after(&run.tenant, &run.id, None, 1000)
            .await
            .ok()?;
        let failed = lines
            .iter()
            .rev()
            .find(|line| line.event_type == "step.failed")?;
        let reason = failed
            .metadata
            .as_ref()
            .and_then(|meta| meta.get("reason"))
            .and_then(Value::as_str)
            .map_or_else(|| failed.message.clone(), str::to_owned);
        Some(format!(
            "workflow run {} failed at step {}: {reason}",
            run.id,
            failed.step_id.as_deref().unwrap_or("?")
        ))
    }

    async fn settle_workflow_promotion(&self, run_id: &str, state: PromotionState, message: &str) {
        match self
            .store
            .finish_promotion_of_run(run_id, state, message, now_ms())
            .await
        {
            Ok(Some(promotion)) => {
                self.emit(NewEvent::promotion_finished(
                    &promotion,
                    state == PromotionState::Deployed,
                    message,
                ))
                .await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(run_id, error = %crate::error::ErrorChain(&error), "cannot settle the promotion of a workflow run");
            }
        }
    }

    /// Promotions handed to a workflow whose run was never created (the server stopped
    /// in between) get it; those whose run ended while nobody settled them are settled.
    pub async fn sweep_workflow_promotions(self: &Arc<Self>) {
        let promotions = match self.store.promotions_in_workflow(100).await {
            Ok(promotions) => promotions,
            Err(error) => {
                tracing::warn!(error = %crate::error::ErrorChain(&error), "listing promotions in a workflow failed");
                return;
            }
        };
        for promotion in promotions {
            let Some(run_id) = promotion.run_id.as_deref() else {
                continue;
            };
            match self.store.get_run(WORKFLOW_TENANT, run_id).await {
                Ok(run) if matches!(run.status.as_str(), "Succeeded" | "Failed" | "Cancelled") => {
                    self.workflow_run_finished(&run).await;
                }
                Ok(_) => {}
                Err(StoreError::NotFound { .. }) => self.start_workflow_run(&promotion.id).await,
                Err(error) => {
                    tracing::warn!(run_id, error = %crate::error::ErrorChain(&error), "reading a workflow run failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata: {name: ship, version: 1.0.0}\nspec:\n  inputs:\n    - {name: promotion, type: object, required: false}\n  steps:\n";

    #[test]
    fn a_workflow_has_one_deployment_step_and_no_gates() {
        let ok = format!(
            "{HEAD}    - {{id: before, run: {{uses: builtin:wait, with: {{seconds: 0}}}}}}\n    - {{id: deploy, run: {{uses: builtin:promotion}}}}\n"
        );
        check_manifest(&ok).expect("valid");
        let none =
            format!("{HEAD}    - {{id: w, run: {{uses: builtin:wait, with: {{seconds: 0}}}}}}\n");
        let error = check_manifest(&none).expect_err("no deploy");
        assert!(error.message.contains("exactly one"), "{}", error.message);
        let gate = format!(
            "{HEAD}    - {{id: deploy, run: {{uses: builtin:promotion}}}}\n    - {{id: ok, gate: {{approval: {{id: a}}}}}}\n"
        );
        assert!(check_manifest(&gate).is_err());
        let undeclared = ok.replace(
            "    - {name: promotion, type: object, required: false}\n",
            "",
        );
        let error = check_manifest(&undeclared).expect_err("no promotion input");
        assert!(
            error.message.contains("declares the input `promotion`"),
            "{}",
            error.message
        );
    }
}
