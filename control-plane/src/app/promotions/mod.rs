//! Promotions: gates evaluated by the pure decision crate over inputs gathered from the
//! store; approvals bound to the plan hash; signed decisions; the deployment an allowed
//! decision creates, in the same transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use stella_decision::evidence::sign_decision;
use stella_decision::gates::{
    self, ApprovalInput, ComponentInput, Decision, DecisionInputs, Documents, GateConfig, Outcome,
    Plan, ReleaseInput,
};
use stella_decision::intoto::Subject;

mod configured;
mod gather;

pub(crate) use configured::ConfiguredCache;

use super::events::NewEvent;
use super::{not_found_as, now_ms, App};
use crate::domain::{
    Approval, DecisionRecord, Deployment, DeploymentKind, DeploymentState, Environment, EventKind,
    Promotion, PromotionState, Release, Role, User, Verdict,
};
use crate::error::{AppError, ErrorKind};
use crate::store::{NewSettlement, PromotionUpdate, StoreError};

/// A promotion with what an operator needs to see: its approvals and last gate results.
#[derive(Debug, Clone)]
pub struct PromotionDetail {
    /// The promotion.
    pub promotion: Promotion,
    /// Its approvals and rejections.
    pub approvals: Vec<Approval>,
    /// The last evaluation's gates.
    pub gates: Vec<gates::GateResult>,
}

/// Each target's settings as planned, by target name.
pub(super) type PlannedTargetSettings = BTreeMap<String, BTreeMap<String, String>>;

/// Everything gathered for one evaluation.
struct Gathered {
    plan: Plan,
    /// The plan's canonical JSON, as the promotion stores it.
    plan_json: String,
    plan_hash: String,
    targets: Vec<crate::domain::Target>,
    settings: PlannedTargetSettings,
    inputs: DecisionInputs,
    documents: Documents,
    /// Why earlier approvals no longer count, when the plan changed.
    plan_note: Option<String>,
}

impl App {
    /// Requests a promotion of `release@version` to `environment`: the gates are
    /// evaluated at once; an allowed decision creates the deployment in the same
    /// transaction, a blocked one is signed and stored, and one that needs approvals
    /// waits for them.
    pub async fn promote(
        self: &Arc<Self>,
        release: &str,
        version: &str,
        environment: &str,
        requested_by: &User,
        break_glass: Option<String>,
    ) -> Result<PromotionDetail, AppError> {
        let configured = self.configured_named(release, version, environment).await?;
        let (release, env) = (&configured.0.release, &configured.0.env);
        let break_glass = match break_glass {
            Some(reason) => {
                let reason = reason.trim().to_owned();
                if reason.is_empty() {
                    return Err(AppError::invalid(
                        "--break-glass needs a reason: it goes into the decision and the audit log",
                    ));
                }
                if !requested_by.has_role(Role::Admin) {
                    return Err(AppError::new(
                        ErrorKind::PermissionDenied,
                        "break_glass_forbidden",
                        format!(
                            "only an admin may break the glass of a freeze window; {} is not an admin",
                            requested_by.name
                        ),
                    ));
                }
                Some((requested_by.name.clone(), reason))
            }
            None => None,
        };
        let id = uuid::Uuid::now_v7().to_string();
        let gathered = self
            .gather_configured(
                &configured,
                &requested_by.name,
                break_glass.as_ref(),
                self.decision_now(),
            )
            .await?;
        let now = now_ms();
        let decided = Decided::over(&gathered)?;
        let promotion = Promotion {
            id: id.clone(),
            environment: env.name.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            state: PromotionState::AwaitingApproval,
            requested_by: requested_by.name.clone(),
            requested_at_ms: now,
            plan_json: gathered.plan_json.clone(),
            plan_hash: gathered.plan_hash.clone(),
            break_glass,
            gates_json: gates_json(&decided.decision)?,
            message: None,
            decision_id: None,
            deployment_id: None,
            run_id: None,
            updated_at_ms: now,
        };
        match self
            .settle(Some(&promotion), &id, release, env, gathered, decided)
            .await?
        {
            Some(detail) => Ok(detail),
            None => self.promotion_detail(&id).await,
        }
    }

    /// Approves a promotion waiting for approvals, for its current plan. The requester
    /// can never approve their own promotion, admins included; one user counts once.
    pub async fn approve_promotion(
        self: &Arc<Self>,
        id_or_prefix: &str,
        user: &User,
        comment: Option<String>,
    ) -> Result<PromotionDetail, AppError> {
        self.answer(id_or_prefix, user, Verdict::Approved, comment)
            .await
    }

    /// Rejects a promotion waiting for approvals: that ends it, with a signed decision.
    pub async fn reject_promotion(
        self: &Arc<Self>,
        id_or_prefix: &str,
        user: &User,
        comment: Option<String>,
    ) -> Result<PromotionDetail, AppError> {
        self.answer(id_or_prefix, user, Verdict::Rejected, comment)
            .await
    }

    async fn answer(
        self: &Arc<Self>,
        id_or_prefix: &str,
        user: &User,
        verdict: Verdict,
        comment: Option<String>,
    ) -> Result<PromotionDetail, AppError> {
        let promotion = self.find_promotion(id_or_prefix).await?;
        let verb = match verdict {
            Verdict::Approved => "approve",
            Verdict::Rejected => "reject",
        };
        if promotion.state != PromotionState::AwaitingApproval {
            return Err(AppError::new(
                ErrorKind::Conflict,
                "promotion_settled",
                format!(
                    "promotion {} is {}: there is nothing to {verb}",
                    promotion.id, promotion.state
                ),
            ));
        }
        if verdict == Verdict::Approved && user.name == promotion.requested_by {
            return Err(AppError::new(
                ErrorKind::PermissionDenied,
                "self_approval",
                format!(
                    "{} requested promotion {}: another approver must approve it (separation of duties applies to admins too)",
                    user.name, promotion.id
                ),
            ));
        }
        if let Some(comment) = &comment {
            if comment.len() > 4096 {
                return Err(AppError::invalid("a comment may be at most 4096 bytes"));
            }
        }
        // Bind the answer to the plan as it is now; a changed plan voids older approvals.
        let release = self
            .release_named(&promotion.release, &promotion.version)
            .await?;
        let env = self.environment(&promotion.environment).await?;
        let now = self.decision_now();
        let gathered = self
            .gather(
                &release,
                &env,
                &promotion.requested_by,
                promotion.break_glass.as_ref(),
                now,
            )
            .await?;
        let approval = Approval {
            promotion_id: promotion.id.clone(),
            user: user.name.clone(),
            plan_hash: gathered.plan_hash.clone(),
            verdict,
            roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            comment,
            at_ms: now,
        };
        match self.store.add_approval(&approval).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                // One user counts once per plan, but an approval that expired no longer
                // counts: its approver may give it again, or the promotion could never
                // gather approvals further apart than the TTL.
                let renewed = match (verdict, env.gates.approval_ttl_seconds) {
                    (Verdict::Approved, Some(ttl)) => {
                        let ttl_ms = i64::try_from(ttl)
                            .unwrap_or(i64::MAX / 1000)
                            .saturating_mul(1000);
                        self.store
                            .renew_expired_approval(&approval, now.saturating_sub(ttl_ms))
                            .await?
                    }
                    _ => false,
                };
                if !renewed {
                    return Err(AppError::new(
                        ErrorKind::Conflict,
                        "already_answered",
                        format!(
                            "{} already answered promotion {} for its current plan: one user counts once",
                            user.name, promotion.id
                        ),
                    ));
                }
            }
            Err(other) => return Err(other.into()),
        }
        tracing::info!(promotion_id = %promotion.id, user = %user.name, %verdict, "promotion answered");
        self.decide_and_settle(&promotion, &release, &env, gathered)
            .await?;
        self.promotion_detail(&promotion.id).await
    }

    /// Evaluates a waiting promotion again (after a change to its plan) and settles it
    /// when the gates say so.
    async fn reevaluate(
        self: &Arc<Self>,
        promotion: &Promotion,
        release: &Release,
        env: &Environment,
    ) -> Result<(), AppError> {
        let gathered = self
            .gather(
                release,
                env,
                &promotion.requested_by,
                promotion.break_glass.as_ref(),
                self.decision_now(),
            )
            .await?;
        self.decide_and_settle(promotion, release, env, gathered)
            .await
    }

    /// Decides a waiting promotion over `gathered` and its recorded approvals.
    async fn decide_and_settle(
        self: &Arc<Self>,
        promotion: &Promotion,
        release: &Release,
        env: &Environment,
        mut gathered: Gathered,
    ) -> Result<(), AppError> {
        gathered.inputs.approvals = self
            .store
            .list_approvals(&promotion.id)
            .await?
            .into_iter()
            .map(approval_input)
            .collect();
        if promotion.plan_hash != gathered.plan_hash {
            let changes = serde_json::from_str::<Plan>(&promotion.plan_json)
                .map(|old| gathered.plan.changes_since(&old))
                .unwrap_or_default();
            gathered.plan_note = Some(format!(
                "the plan changed ({}): approvals given before are void",
                if changes.is_empty() {
                    "plan hash differs".to_owned()
                } else {
                    changes.join("; ")
                }
            ));
        }
        let decided = Decided::over(&gathered)?;
        match self
            .settle(None, &promotion.id, release, env, gathered, decided)
            .await
        {
            // Someone else settled it meanwhile: what they stored stands.
            Err(error) if error.code == "promotion_moved_on" => Ok(()),
            Err(other) => Err(other),
            Ok(_) => Ok(()),
        }
    }

    /// Re-evaluates every promotion of `environment` that waits for approvals: called
    /// after a change to the environment, its targets or its variables, so a voided
    /// approval is said at once.
    pub async fn reevaluate_waiting(self: &Arc<Self>, environment: &str) {
        let waiting = match self
            .store
            .list_promotions(
                Some(environment),
                Some(PromotionState::AwaitingApproval),
                100,
            )
            .await
        {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(environment, error = %crate::error::ErrorChain(&error), "cannot list waiting promotions");
                return;
            }
        };
        for promotion in waiting {
            let result = async {
                let release = self
                    .release_named(&promotion.release, &promotion.version)
                    .await?;
                let env = self.environment(&promotion.environment).await?;
                // Boxed: an evaluation is a large future, and this one is awaited inside
                // the handlers that change an environment, its targets or variables.
                Box::pin(self.reevaluate(&promotion, &release, &env)).await
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(promotion_id = %promotion.id, %error, "cannot re-evaluate a waiting promotion");
            }
        }
    }

    /// Stores the outcome of an evaluation: a new promotion (`new`) or an existing one
    /// (the inputs' promotion id), with its signed decision and, when allowed, its
    /// deployment, in one transaction; then emits the event and dispatches.
    ///
    /// What is stored is stamped with the wall clock, never the decision clock: a pinned
    /// evaluation time (`decision_clock_ms`) must not date deployments, their deadlines
    /// or the records' order.
    async fn settle(
        self: &Arc<Self>,
        new: Option<&Promotion>,
        promotion_id: &str,
        release: &Release,
        env: &Environment,
        gathered: Gathered,
        decided: Decided,
    ) -> Result<Option<PromotionDetail>, AppError> {
        let now = now_ms();
        let promotion_id = promotion_id.to_owned();
        let Decided {
            decision,
            inputs_json,
        } = decided;
        let plan = gathered.plan_json.clone();
        let gates = gates_json(&decision)?;
        let approvals_line = decision
            .gate("approvals")
            .map(|g| {
                let mut line = g.reason.clone();
                if !g.details.is_empty() {
                    line.push_str(&format!(" ({})", g.details.join("; ")));
                }
                line
            })
            .unwrap_or_default();
        let (state, message, record, deployment) = match decision.outcome {
            Outcome::AwaitingApproval => (
                PromotionState::AwaitingApproval,
                match &gathered.plan_note {
                    Some(note) => format!("{note}; {approvals_line}"),
                    None => approvals_line.clone(),
                },
                None,
                None,
            ),
            Outcome::Blocked => {
                let record = self.sign(&decision, inputs_json, &promotion_id, now)?;
                (
                    PromotionState::Blocked,
                    blocked_line(&decision),
                    Some(record),
                    None,
                )
            }
            Outcome::Rejected => {
                let record = self.sign(&decision, inputs_json, &promotion_id, now)?;
                let by: Vec<&str> = gathered
                    .inputs
                    .approvals
                    .iter()
                    .filter(|a| a.verdict == "rejected")
                    .map(|a| a.user.as_str())
                    .collect();
                (
                    PromotionState::Rejected,
                    format!("rejected by {}", by.join(", ")),
                    Some(record),
                    None,
                )
            }
            Outcome::Allowed if gathered.plan.workflow.is_some() => {
                let record = self.sign(&decision, inputs_json, &promotion_id, now)?;
                let line = format!(
                    "allowed; carried out by workflow run {}",
                    super::workflows::run_id_of(&promotion_id)
                );
                (PromotionState::Deploying, line, Some(record), None)
            }
            Outcome::Allowed => {
                let record = self.sign(&decision, inputs_json, &promotion_id, now)?;
                let planned = self
                    .plan_deployment(
                        release,
                        env,
                        DeploymentKind::Promotion,
                        &gathered.inputs.requested_by,
                        &gathered.targets,
                        &gathered.settings,
                        &record.id,
                        now,
                    )
                    .await?;
                let line = format!("allowed; deployment {}", planned.0.id);
                (PromotionState::Deploying, line, Some(record), Some(planned))
            }
        };
        // A progressive strategy: the deployment runs as a rollout, whose driver creates
        // the tasks step by step.
        let (deployment, rollout) = match (deployment, &gathered.plan.rollout) {
            (Some((deployment, tasks)), Some(input)) => {
                let rollout = self.new_rollout(&deployment, &tasks, input, now).await?;
                (Some((deployment, Vec::new())), Some(rollout))
            }
            (deployment, _) => (deployment, None),
        };
        let workflow_run = (decision.outcome == Outcome::Allowed
            && gathered.plan.workflow.is_some())
        .then(|| super::workflows::run_id_of(&promotion_id));
        let what = format!("{}@{} to {}", release.name, release.version, env.name);
        let said = match decision.outcome {
            // Said once: when the promotion starts waiting, not at every approval.
            Outcome::AwaitingApproval => new.is_some().then(|| {
                (
                    EventKind::PromotionAwaitingApproval,
                    format!("promotion {promotion_id} of {what} awaits approval: {message}"),
                )
            }),
            Outcome::Blocked => Some((
                EventKind::PromotionBlocked,
                format!("promotion {promotion_id} of {what} is blocked: {message}"),
            )),
            Outcome::Rejected => Some((
                EventKind::PromotionRejected,
                format!("promotion {promotion_id} of {what} was {message}"),
            )),
            Outcome::Allowed => (new.is_none() || env.gates.approvals_required > 0).then(|| {
                (
                    EventKind::PromotionApproved,
                    format!("promotion {promotion_id} of {what} is approved and deploying"),
                )
            }),
        };
        let event = said.map(|(kind, message)| {
            NewEvent {
                kind,
                environment: Some(env.name.clone()),
                release: Some((release.name.clone(), release.version.clone())),
                subject: Some(promotion_id.clone()),
                message,
            }
            .into_event()
        });
        let settled = new.map(|promotion| Promotion {
            state,
            plan_json: plan.clone(),
            plan_hash: gathered.plan_hash.clone(),
            gates_json: gates.clone(),
            message: Some(message.clone()),
            decision_id: record.as_ref().map(|r| r.id.clone()),
            deployment_id: deployment.as_ref().map(|(d, _)| d.id.clone()),
            run_id: workflow_run.clone(),
            updated_at_ms: now,
            ..promotion.clone()
        });
        // A new promotion that starts nothing: group-committed with others.
        if let (Some(settled), None, None, None) = (&settled, &deployment, &rollout, &workflow_run)
        {
            self.store_settlement(NewSettlement {
                promotion: settled.clone(),
                decision: record.clone(),
                event,
                deliveries: None,
            })
            .await?;
            self.promotion_evaluated(&promotion_id, release, env, &decision, record.as_ref());
            return Ok(Some(PromotionDetail {
                promotion: settled.clone(),
                approvals: Vec::new(),
                gates: decision.gates,
            }));
        }
        let update = PromotionUpdate {
            promotion_id: &promotion_id,
            expected: PromotionState::AwaitingApproval,
            state,
            plan: (&plan, &gathered.plan_hash),
            gates_json: &gates,
            message: Some(&message),
            decision: record.as_ref(),
            deployment: deployment.as_ref().map(|(d, t)| (d, t.as_slice())),
            rollout: rollout.as_ref(),
            run_id: workflow_run.as_deref(),
            event: event.as_ref(),
            at_ms: now,
        };
        let stored = match new {
            Some(promotion) => self.store.create_promotion(promotion, Some(&update)).await,
            None => self.store.update_promotion(&update).await,
        };
        let generation = match stored {
            Ok(generation) => generation,
            Err(StoreError::Conflict {
                entity: "active deployment",
                ..
            }) => {
                let error = self.deployment_in_progress(&env.name).await;
                return Err(match new {
                    Some(_) => error,
                    // The approvals stand; the promotion waits until the environment is
                    // free and an approver (or a change) triggers it again.
                    None => AppError::new(
                        ErrorKind::Conflict,
                        "deployment_in_progress",
                        format!(
                            "promotion {promotion_id} is allowed but cannot start: {}",
                            error.message
                        ),
                    ),
                });
            }
            Err(StoreError::Conflict {
                entity: "promotion state",
                ..
            }) => {
                return Err(AppError::new(
                    ErrorKind::Conflict,
                    "promotion_moved_on",
                    format!("promotion {promotion_id} was settled meanwhile"),
                ))
            }
            Err(other) => return Err(other.into()),
        };
        self.promotion_evaluated(&promotion_id, release, env, &decision, record.as_ref());
        if let Some(event) = &event {
            self.enqueue_webhooks(event).await;
        }
        if let (Some((mut deployment, tasks)), Some(generation)) = (deployment, generation) {
            deployment.generation = generation;
            match &rollout {
                Some(rollout) => self.rollout_created(&deployment, rollout).await,
                None => {
                    self.deployment_created(&deployment, &tasks, release, env, now)
                        .await;
                }
            }
        }
        if workflow_run.is_some() {
            // Stored with the promotion first, so a crash here leaves a promotion whose
            // run the workflow sweep creates.
            self.start_workflow_run(&promotion_id).await;
        }
        Ok(settled.map(|promotion| PromotionDetail {
            promotion,
            // A new promotion has none yet.
            approvals: Vec::new(),
            gates: decision.gates,
        }))
    }

    /// Logs and counts a stored evaluation.
    fn promotion_evaluated(
        &self,
        promotion_id: &str,
        release: &Release,
        env: &Environment,
        decision: &Decision,
        record: Option<&DecisionRecord>,
    ) {
        tracing::info!(promotion_id = %promotion_id, environment = %env.name, release = %release.name, version = %release.version, outcome = decision.outcome.as_str(), decision_id = ?record.map(|r| r.id.as_str()), "promotion evaluated");
        self.metrics
            .delivery
            .decision_made(decision.outcome.as_str());
    }

    /// The evaluation time of a decision: now, unless the configuration pins it
    /// (`decision_clock_ms`, for reproducibility checks).
    fn decision_now(&self) -> i64 {
        self.config.decision_clock_ms.unwrap_or_else(now_ms)
    }

    /// Signs a decision: canonical JSON in an in-toto statement in a DSSE envelope.
    fn sign(
        &self,
        decision: &Decision,
        inputs_bytes: Vec<u8>,
        promotion_id: &str,
        now: i64,
    ) -> Result<DecisionRecord, AppError> {
        let (bytes, id) = decision.canonical().map_err(undecidable)?;
        let subjects = decision
            .subjects
            .iter()
            .map(|s| Subject::image(s.image.split('@').next().unwrap_or(&s.image), &s.digest))
            .collect::<Result<Vec<_>, _>>()
            .map_err(undecidable)?;
        let signed = sign_decision(&self.signer, subjects, &bytes).map_err(undecidable)?;
        let envelope_json = serde_json::to_string(&signed.envelope)
            .map_err(|e| AppError::internal("encoding a DSSE envelope", &e))?;
        Ok(DecisionRecord {
            id,
            promotion_id: promotion_id.to_owned(),
            outcome: decision.outcome.as_str().to_owned(),
            decision_json: String::from_utf8(bytes)
                .map_err(|e| AppError::internal("canonical decision is not UTF-8", &e))?,
            inputs_json: String::from_utf8(inputs_bytes)
                .map_err(|e| AppError::internal("canonical inputs are not UTF-8", &e))?,
            envelope_json,
            key_id: self.signer.key_id().to_owned(),
            created_at_ms: now,
        })
    }

    /// Called when a deployment reaches a terminal state: its promotion follows. A
    /// deployment that succeeded (of any kind) also gets the security verdict of what now
    /// runs stored, so `env show` has one from the start.
    pub(super) async fn promotion_deployment_finished(&self, deployment: &Deployment) {
        if deployment.state == DeploymentState::Succeeded {
            self.record_deployed_verdict(deployment).await;
        }
        if deployment.kind != DeploymentKind::Promotion || !deployment.state.is_terminal() {
            return;
        }
        let state = match deployment.state {
            DeploymentState::Succeeded => PromotionState::Deployed,
            _ => PromotionState::Failed,
        };
        let message = match &deployment.message {
            Some(message) => format!(
                "deployment {} {}: {message}",
                deployment.id, deployment.state
            ),
            None => format!("deployment {} {}", deployment.id, deployment.state),
        };
        match self
            .store
            .finish_promotion_of_deployment(&deployment.id, state, Some(&message), now_ms())
            .await
        {
            Ok(Some(promotion)) => {
                self.emit(NewEvent::promotion_finished(
                    &promotion,
                    state == PromotionState::Deployed,
                    &message,
                ))
                .await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(deployment_id = %deployment.id, error = %crate::error::ErrorChain(&error), "cannot finish the promotion of a deployment");
            }
        }
    }

    /// A promotion by id or unique prefix.
    pub async fn find_promotion(&self, id_or_prefix: &str) -> Result<Promotion, AppError> {
        self.store
            .find_promotion(id_or_prefix)
            .await
            .map_err(|error| {
                super::prefix_lookup_error(error, "promotion", "unknown_promotion", id_or_prefix)
            })
    }

    /// A promotion with its approvals and gates.
    pub async fn promotion_detail(&self, id_or_prefix: &str) -> Result<PromotionDetail, AppError> {
        let promotion = self.find_promotion(id_or_prefix).await?;
        let approvals = self.store.list_approvals(&promotion.id).await?;
        let gates = serde_json::from_str(&promotion.gates_json).unwrap_or_default();
        Ok(PromotionDetail {
            promotion,
            approvals,
            gates,
        })
    }

    /// A release by name and version; 404 `unknown_release`.
    pub(super) async fn release_named(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Release, AppError> {
        self.store.get_release(name, version).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_release",
                format!("unknown release {name}@{version}"),
            )
        })
    }
}

/// A release as the gates see it: its components with their pinned images and digests.
pub(super) fn release_input(release: &Release) -> ReleaseInput {
    ReleaseInput {
        name: release.name.clone(),
        version: release.version.clone(),
        components: release
            .components
            .iter()
            .map(|c| ComponentInput {
                name: c.name.clone(),
                image: c.image.clone(),
                digest: c
                    .image
                    .rsplit_once('@')
                    .map_or_else(String::new, |(_, digest)| digest.to_owned()),
            })
            .collect(),
    }
}

/// An environment's gates as the decision sees them.
pub(super) fn gate_config(env: &Environment) -> GateConfig {
    GateConfig {
        environment: env.name.clone(),
        after: env.after.clone(),
        approvals_required: env.gates.approvals_required,
        approval_ttl_seconds: env.gates.approval_ttl_seconds,
        freeze: env.gates.freeze.clone(),
        block_severity: env.gates.block_severity.clone(),
        allow_unscanned: env.gates.allow_unscanned,
        policy: env.gates.policy_id.clone(),
    }
}

fn approval_input(approval: Approval) -> ApprovalInput {
    ApprovalInput {
        user: approval.user,
        verdict: approval.verdict.as_str().to_owned(),
        roles: approval.roles,
        plan_hash: approval.plan_hash,
        at_ms: approval.at_ms,
        comment: approval.comment,
    }
}

/// A decision with the canonical JSON of the inputs it was made over.
struct Decided {
    decision: Decision,
    inputs_json: Vec<u8>,
}

impl Decided {
    fn over(gathered: &Gathered) -> Result<Decided, AppError> {
        let (decision, inputs_json) =
            gates::decide_canonical(&gathered.inputs, &gathered.documents).map_err(undecidable)?;
        Ok(Decided {
            decision,
            inputs_json,
        })
    }
}

fn gates_json(decision: &Decision) -> Result<String, AppError> {
    serde_json::to_string(&decision.gates)
        .map_err(|e| AppError::internal("encoding gate results", &e))
}

/// "blocked by <gate>: <reason>", every failed gate.
fn blocked_line(decision: &Decision) -> String {
    decision
        .gates
        .iter()
        .filter(|g| g.status == gates::GateStatus::Failed)
        .map(|g| format!("{}: {}", g.gate, g.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An input the gates cannot read (a broken stored document or window): 422.
#[allow(clippy::needless_pass_by_value)] // used as `map_err(undecidable)`
pub(super) fn undecidable(error: stella_decision::DecisionError) -> AppError {
    AppError::new(
        ErrorKind::FailedPrecondition,
        "undecidable",
        format!("the promotion cannot be decided: {error}"),
    )
}
