//! Progressive rollouts (RFC 0005, increment 2): a promotion into an environment whose
//! strategy is not all-at-once creates its deployment with a rollout instead of tasks,
//! and the rollout driver takes the strategy's steps one at a time.
//!
//! **The driver.** Every replica runs [`run_rollout_driver`]. It claims rollouts whose
//! lease is free or expired (raising the lease epoch), and drives each one it holds in a
//! task of its own, renewing the lease as it goes. Every write names the epoch it holds:
//! a driver whose lease another replica took writes nothing more and stops. What a step
//! did is in the store before the driver moves on (its tasks, their results, its record
//! in `rollout_steps`), so a replica that takes a rollout over after a crash resumes the
//! step it finds running: a step's tasks are created once, a route is applied again
//! (applying the same weights twice is harmless).
//!
//! **Steps.** `deploy` and `restore` create one task per target (the slot in the
//! payload; `restore` sends the previous release), `retire` one `retire` task per target
//! that had the slot, and each waits for its tasks. `route` sends the router the
//! backends of every slot with its share of the weight (the address of a target's slot
//! is what its agent reported when it deployed it: see [`endpoint_of`]). `pause` waits
//! for its time or for `stella deployment promote`. A step that deploys, restores or
//! retires right after a route waits [`DRAIN`] first, so requests the router sent to a
//! slot it just took out of service can finish.
//!
//! **Failure** of a forward step (or `stella deployment abort`) starts the rollback:
//! `decision::rollout::rollback_of` over the steps run so far, the failed one included
//! (a deploy that failed on one target may have succeeded on another). The deployment
//! ends `failed` with "rolled back: REASON". A rollback step that fails ends the rollout
//! `failed` and says which step: the operator looks at the router and the targets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use stella_decision::plan::RolloutInput;
use stella_decision::rollout::{
    backend_weight, compile, rollback_of, HeaderOrCookie, PauseKind, Slot, Step, Strategy,
};
use stella_routers::{AbMatch, Backend, RouteName};
use tokio_util::sync::CancellationToken;

use super::{now_ms, App};

pub(super) mod analysis;
use crate::domain::{
    describe_step, slot_name, Agent, DeploySpec, Deployment, DeploymentState, Environment, Rollout,
    RolloutPhase, RolloutRequest, RolloutState, RolloutStepRecord, StepState, Target, Task,
    TaskKind, TaskState,
};
use crate::error::{AppError, ErrorChain, ErrorKind};
use crate::store::{StepTask, StoreError};

/// How long a claim lasts without renewal.
const LEASE_MS: i64 = 15_000;
/// How often a replica looks for rollouts to claim.
const CLAIM_INTERVAL: Duration = Duration::from_millis(500);
/// How often a driver looks at its rollout while a step waits.
const TICK: Duration = Duration::from_millis(200);
/// How long after a route change a step may take a slot out of service.
pub const DRAIN: Duration = Duration::from_secs(2);
/// How long a route step keeps trying while the router's agent is not reachable.
const ROUTE_PATIENCE_MS: i64 = 60_000;
/// The host a router reaches a target's published ports on, unless the target says
/// (`route_host`) or the engine bound one address.
const DEFAULT_ROUTE_HOST: &str = "127.0.0.1";

/// The rollout a plan binds for `env` over `targets`: `None` for all-at-once. Refused
/// when the strategy does not compile over these targets, or needs slots that a target's
/// kind does not have.
pub(super) fn rollout_input(
    env: &Environment,
    targets: &[Target],
    agents: &HashMap<String, Agent>,
) -> Result<Option<RolloutInput>, AppError> {
    let strategy = match &env.gates.rollout {
        None | Some(Strategy::AllAtOnce) => return Ok(None),
        Some(strategy) => strategy,
    };
    let invalid = |message: String| {
        AppError::new(
            ErrorKind::FailedPrecondition,
            "rollout_invalid",
            format!("environment `{}`: {message}", env.name),
        )
    };
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let steps = compile(strategy, &names).map_err(|e| invalid(e.0))?;
    let uses_slots = steps
        .iter()
        .any(|s| matches!(s, Step::Deploy { slot, .. } if *slot != Slot::Stable));
    if uses_slots {
        if let Some(target) = targets.iter().find(|t| t.kind.as_str() != "docker") {
            return Err(invalid(format!(
                "the {} strategy runs the new release beside the old one, which only docker \
                 targets can do; target `{}` is a {} target",
                strategy.name(),
                target.name,
                target.kind.as_str()
            )));
        }
        // An agent that said hello without `slots:docker` predates slots: it would
        // deploy a slot's payload over the stable containers.
        for target in targets {
            let capability = format!("slots:{}", target.kind.as_str());
            if let Some(agent) = agents.get(&target.agent_id) {
                if agent.host.is_some() && !agent.capabilities.contains(&capability) {
                    return Err(invalid(format!(
                        "target `{}` is driven by agent `{}`, which does not deploy to slots \
                         (it did not advertise `{capability}`): upgrade the agent",
                        target.name, agent.name
                    )));
                }
            }
        }
    }
    Ok(Some(RolloutInput {
        strategy: strategy.clone(),
        steps,
    }))
}

/// A rollout and its steps, as `deployment show` gives them.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutDetail {
    /// The rollout.
    pub rollout: Rollout,
    /// Every step it ran or runs.
    pub records: Vec<RolloutStepRecord>,
}

impl App {
    /// The rollout of a promotion's deployment, before it is stored: the new release's
    /// payload per target (from the tasks an all-at-once deployment would have had) and
    /// what ran on each target before.
    pub(super) async fn new_rollout(
        &self,
        deployment: &Deployment,
        tasks: &[Task],
        input: &RolloutInput,
        now: i64,
    ) -> Result<Rollout, AppError> {
        if let Some(router) = input.strategy.router() {
            self.router(router).await.map_err(|error| {
                AppError::new(
                    ErrorKind::FailedPrecondition,
                    "rollout_invalid",
                    format!(
                        "environment `{}`: its {} strategy names router `{router}`: {}",
                        deployment.environment,
                        input.strategy.name(),
                        error.message
                    ),
                )
            })?;
        }
        let mut payloads = BTreeMap::new();
        let mut previous = BTreeMap::new();
        for task in tasks {
            payloads.insert(task.target.clone(), task.payload_json.clone());
            let before = self.store.latest_succeeded_task(&task.target).await?;
            previous.insert(task.target.clone(), before.map(|t| t.payload_json));
        }
        Ok(Rollout {
            deployment_id: deployment.id.clone(),
            environment: deployment.environment.clone(),
            strategy: input.strategy.clone(),
            steps: input.steps.clone(),
            payloads,
            previous,
            state: RolloutState::Running,
            phase: RolloutPhase::Forward,
            rollback: Vec::new(),
            next_step: 0,
            requested: None,
            weights: Vec::new(),
            message: None,
            lease_owner: None,
            lease_expires_at_ms: None,
            lease_epoch: 0,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
        })
    }

    /// What follows a stored rollout: its first log lines (a driver claims it within
    /// [`CLAIM_INTERVAL`]).
    pub(super) async fn rollout_created(&self, deployment: &Deployment, rollout: &Rollout) {
        self.log(
            &deployment.id,
            "",
            &format!(
                "{} of {}@{} to {} as a {} rollout over {} target{}, {} steps; requested by {}",
                deployment.kind,
                deployment.release,
                deployment.version,
                deployment.environment,
                rollout.strategy.name(),
                rollout.payloads.len(),
                if rollout.payloads.len() == 1 { "" } else { "s" },
                rollout.steps.len(),
                deployment.created_by,
            ),
        )
        .await;
        for (index, step) in rollout.steps.iter().enumerate() {
            self.log(
                &deployment.id,
                "",
                &format!("  step {}: {}", index + 1, describe_step(step)),
            )
            .await;
        }
        tracing::info!(deployment_id = %deployment.id, environment = %deployment.environment, strategy = rollout.strategy.name(), steps = rollout.steps.len(), "rollout created");
    }

    /// The rollout of a deployment with its step records, if it runs as one.
    pub async fn rollout_detail(
        &self,
        deployment_id: &str,
    ) -> Result<Option<RolloutDetail>, AppError> {
        let Some(rollout) = self.store.get_rollout(deployment_id).await? else {
            return Ok(None);
        };
        let records = self.store.rollout_steps(deployment_id).await?;
        Ok(Some(RolloutDetail { rollout, records }))
    }

    /// Records an operator's request (`promote`, `pause`, `resume`, `abort`) for the
    /// rollout of a deployment (id or unique prefix); its driver acts on it within a
    /// fraction of a second. Refused when the deployment runs no rollout or it is over.
    pub async fn request_rollout(
        &self,
        id_or_prefix: &str,
        request: RolloutRequest,
        by: &str,
    ) -> Result<Deployment, AppError> {
        let deployment = self.find_deployment(id_or_prefix).await?;
        match self
            .store
            .request_rollout(&deployment.id, request, by, now_ms())
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound { .. }) => {
                return Err(AppError::new(
                    ErrorKind::FailedPrecondition,
                    "not_a_rollout",
                    format!(
                    "deployment {} deploys every target at once: there are no steps to {request}",
                    deployment.id
                ),
                ))
            }
            Err(StoreError::Conflict { .. }) => {
                return Err(AppError::new(
                    ErrorKind::Conflict,
                    "rollout_finished",
                    format!("the rollout of deployment {} is over", deployment.id),
                ))
            }
            Err(other) => return Err(other.into()),
        }
        self.log(&deployment.id, "", &format!("{request} requested by {by}"))
            .await;
        tracing::info!(deployment_id = %deployment.id, %request, by, "rollout request recorded");
        Ok(deployment)
    }
}

/// Claims and drives rollouts until `stop` (see the module documentation).
pub async fn run_rollout_driver(app: Arc<App>, stop: CancellationToken) {
    let owner = app.run_engine.owner().to_owned();
    let probe_client = match reqwest::Client::builder().no_proxy().build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "cannot build the HTTP client of rollout analyses; rollouts are not driven");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CLAIM_INTERVAL) => {}
        }
        let claimed = match app
            .store
            .claim_rollouts(&owner, now_ms(), LEASE_MS, 16)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "claiming rollouts failed");
                continue;
            }
        };
        for rollout in claimed {
            tracing::info!(deployment_id = %rollout.deployment_id, epoch = rollout.lease_epoch, "rollout claimed");
            let driver = Driver {
                app: app.clone(),
                owner: owner.clone(),
                renewed_at_ms: now_ms(),
                rollout,
                analyses: HashMap::new(),
                probes: probe_client.clone(),
            };
            tokio::spawn(driver.drive(stop.clone()));
        }
    }
}

/// What one look at a rollout came to.
enum Progress {
    /// Something changed: look again at once.
    Moved,
    /// Waiting (tasks, a pause, the drain time, an agent).
    Wait,
    /// The rollout is over, or another replica drives it now.
    Stop,
}

/// What a step came to on one look.
enum StepOutcome {
    Wait,
    Done {
        message: String,
        detail: Option<serde_json::Value>,
    },
    Failed {
        message: String,
        detail: Option<serde_json::Value>,
    },
}

/// One rollout this replica drives, under the lease epoch it claimed.
struct Driver {
    app: Arc<App>,
    owner: String,
    renewed_at_ms: i64,
    rollout: Rollout,
    /// The samples of the analyses running, by step number.
    analyses: HashMap<i64, analysis::Sampling>,
    /// The client analyses probe with.
    probes: reqwest::Client,
}

impl Driver {
    async fn drive(mut self, stop: CancellationToken) {
        let id = self.rollout.deployment_id.clone();
        loop {
            if stop.is_cancelled() {
                if let Err(error) = self
                    .app
                    .store
                    .release_rollout_lease(&id, &self.owner, self.rollout.lease_epoch)
                    .await
                {
                    tracing::warn!(deployment_id = %id, error = %ErrorChain(&error), "releasing a rollout lease failed");
                }
                return;
            }
            let now = now_ms();
            if now - self.renewed_at_ms > LEASE_MS / 3 {
                match self
                    .app
                    .store
                    .renew_rollout_lease(&id, &self.owner, self.rollout.lease_epoch, now + LEASE_MS)
                    .await
                {
                    Ok(true) => self.renewed_at_ms = now,
                    Ok(false) => {
                        tracing::warn!(deployment_id = %id, "rollout lease lost: another replica drives it");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(deployment_id = %id, error = %ErrorChain(&error), "renewing a rollout lease failed");
                    }
                }
            }
            let pause = match self.advance().await {
                Ok(Progress::Moved) => continue,
                Ok(Progress::Wait) => TICK,
                Ok(Progress::Stop) => return,
                Err(error) => {
                    tracing::warn!(deployment_id = %id, error = %error, "a rollout step could not be taken; trying again");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Looks at the rollout once: an operator's request, else the current step.
    async fn advance(&mut self) -> Result<Progress, AppError> {
        let id = self.rollout.deployment_id.clone();
        let Some(stored) = self.app.store.get_rollout(&id).await? else {
            return Ok(Progress::Stop);
        };
        if stored.lease_owner.as_deref() != Some(self.owner.as_str())
            || stored.lease_epoch != self.rollout.lease_epoch
            || stored.state.is_terminal()
        {
            return Ok(Progress::Stop);
        }
        self.rollout.lease_owner = stored.lease_owner;
        if let Some((request, by)) = stored.requested {
            return self.answer(request, &by).await;
        }
        if self.rollout.state == RolloutState::Paused {
            return Ok(Progress::Wait);
        }
        let Some(step) = self
            .rollout
            .phase_steps()
            .get(self.rollout.next_step)
            .cloned()
        else {
            return self.finish().await;
        };
        let phase = self.rollout.phase;
        let seq = self.rollout.seq_of(phase, self.rollout.next_step);
        let now = now_ms();
        let record = self
            .app
            .store
            .start_rollout_step(&RolloutStepRecord {
                deployment_id: id.clone(),
                seq,
                phase,
                step: step.clone(),
                state: StepState::Running,
                message: None,
                detail: None,
                started_at_ms: now,
                finished_at_ms: None,
            })
            .await?;
        if record.started_at_ms == now && record.state == StepState::Running {
            self.log(&format!(
                "{}step {seq}: {}",
                self.phase_prefix(),
                describe_step(&step)
            ))
            .await;
        }
        let outcome = match record.state {
            StepState::Running => self.run_step(&step, &record).await?,
            // Finished before this driver took over, which crashed before moving on.
            StepState::Succeeded => StepOutcome::Done {
                message: record.message.clone().unwrap_or_default(),
                detail: None,
            },
            StepState::Failed => StepOutcome::Failed {
                message: record.message.clone().unwrap_or_default(),
                detail: None,
            },
        };
        match outcome {
            StepOutcome::Wait => Ok(Progress::Wait),
            StepOutcome::Done { message, detail } => {
                if record.state == StepState::Running {
                    self.app
                        .store
                        .finish_rollout_step(
                            &id,
                            seq,
                            StepState::Succeeded,
                            Some(&message),
                            detail.as_ref(),
                            now_ms(),
                        )
                        .await?;
                    self.log(&format!(
                        "{}step {seq} done: {message}",
                        self.phase_prefix()
                    ))
                    .await;
                }
                self.rollout.next_step += 1;
                self.save().await
            }
            StepOutcome::Failed { message, detail } => {
                if record.state == StepState::Running {
                    self.app
                        .store
                        .finish_rollout_step(
                            &id,
                            seq,
                            StepState::Failed,
                            Some(&message),
                            detail.as_ref(),
                            now_ms(),
                        )
                        .await?;
                    self.log(&format!(
                        "{}step {seq} failed: {message}",
                        self.phase_prefix()
                    ))
                    .await;
                }
                match phase {
                    RolloutPhase::Forward => {
                        self.start_rollback(format!(
                            "step {seq} ({}): {message}",
                            describe_step(&step)
                        ))
                        .await
                    }
                    RolloutPhase::Rollback => {
                        let reason = self.rollout.message.clone().unwrap_or_default();
                        let text = format!(
                            "rollback failed at step {seq} ({}): {message}; it was rolling back because {reason}",
                            describe_step(&step)
                        );
                        self.end(RolloutState::Failed, DeploymentState::Failed, Some(text))
                            .await
                    }
                }
            }
        }
    }

    fn phase_prefix(&self) -> &'static str {
        match self.rollout.phase {
            RolloutPhase::Forward => "",
            RolloutPhase::Rollback => "rollback ",
        }
    }

    /// Acts on an operator's request and clears it.
    async fn answer(&mut self, request: RolloutRequest, by: &str) -> Result<Progress, AppError> {
        self.rollout.requested = None;
        let current = self
            .rollout
            .phase_steps()
            .get(self.rollout.next_step)
            .cloned();
        match request {
            RolloutRequest::Abort => {
                if self.rollout.phase == RolloutPhase::Forward {
                    return self.start_rollback(format!("aborted by {by}")).await;
                }
                self.log(&format!(
                    "abort by {by}: the rollout is rolling back already"
                ))
                .await;
            }
            RolloutRequest::Pause => {
                if self.rollout.state == RolloutState::Running {
                    self.rollout.state = RolloutState::Paused;
                    self.rollout.message = Some(format!("paused by {by}"));
                    self.log(&format!(
                        "paused by {by}: no further step starts until `resume`"
                    ))
                    .await;
                }
            }
            RolloutRequest::Resume => {
                if self.rollout.state == RolloutState::Paused {
                    self.rollout.state = RolloutState::Running;
                    self.rollout.message = None;
                    self.log(&format!("resumed by {by}")).await;
                }
            }
            RolloutRequest::Promote => match current {
                Some(step @ Step::Pause(_)) => {
                    let seq = self
                        .rollout
                        .seq_of(self.rollout.phase, self.rollout.next_step);
                    let message = format!("promoted by {by}");
                    // The record exists when the pause was seen running; a promote that
                    // arrives before leaves the step's record to say so.
                    let record = self
                        .app
                        .store
                        .start_rollout_step(&RolloutStepRecord {
                            deployment_id: self.rollout.deployment_id.clone(),
                            seq,
                            phase: self.rollout.phase,
                            step,
                            state: StepState::Running,
                            message: None,
                            detail: None,
                            started_at_ms: now_ms(),
                            finished_at_ms: None,
                        })
                        .await?;
                    if record.state == StepState::Running {
                        self.app
                            .store
                            .finish_rollout_step(
                                &self.rollout.deployment_id,
                                seq,
                                StepState::Succeeded,
                                Some(&message),
                                None,
                                now_ms(),
                            )
                            .await?;
                    }
                    self.log(&format!("step {seq} done: {message}")).await;
                    self.rollout.next_step += 1;
                }
                other => {
                    let what = other.map_or_else(|| "none".to_owned(), |s| describe_step(&s));
                    self.log(&format!(
                        "promote by {by} ignored: the current step is not a pause ({what})"
                    ))
                    .await;
                }
            },
        }
        self.save().await
    }

    /// Switches to the rollback of the forward steps run so far (the current one too).
    async fn start_rollback(&mut self, reason: String) -> Result<Progress, AppError> {
        let done = (self.rollout.next_step + 1).min(self.rollout.steps.len());
        self.rollout.rollback = rollback_of(&self.rollout.steps[..done]);
        self.rollout.phase = RolloutPhase::Rollback;
        self.rollout.next_step = 0;
        self.rollout.state = RolloutState::Running;
        self.rollout.message = Some(reason.clone());
        self.log(&format!(
            "rolling back ({} step{}): {reason}",
            self.rollout.rollback.len(),
            if self.rollout.rollback.len() == 1 {
                ""
            } else {
                "s"
            }
        ))
        .await;
        for (index, step) in self.rollout.rollback.clone().iter().enumerate() {
            let seq = self.rollout.seq_of(RolloutPhase::Rollback, index);
            self.log(&format!("  rollback step {seq}: {}", describe_step(step)))
                .await;
        }
        self.save().await
    }

    /// Every step of the phase ran: the rollout and its deployment end.
    async fn finish(&mut self) -> Result<Progress, AppError> {
        match self.rollout.phase {
            RolloutPhase::Forward => {
                self.end(RolloutState::Succeeded, DeploymentState::Succeeded, None)
                    .await
            }
            RolloutPhase::Rollback => {
                let reason = self.rollout.message.clone().unwrap_or_default();
                self.end(
                    RolloutState::RolledBack,
                    DeploymentState::Failed,
                    Some(format!("rolled back: {reason}")),
                )
                .await
            }
        }
    }

    async fn end(
        &mut self,
        state: RolloutState,
        deployment_state: DeploymentState,
        message: Option<String>,
    ) -> Result<Progress, AppError> {
        let ended = self
            .app
            .store
            .finish_rollout(
                &self.rollout,
                state,
                deployment_state,
                message.as_deref(),
                now_ms(),
            )
            .await?;
        if !ended {
            return Ok(Progress::Stop);
        }
        tracing::info!(deployment_id = %self.rollout.deployment_id, %state, "rollout ended");
        self.log(&format!(
            "rollout {state}{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        ))
        .await;
        // Logs the deployment's end, counts it and settles its promotion.
        self.app
            .after_task_finished(&self.rollout.deployment_id)
            .await;
        Ok(Progress::Stop)
    }

    async fn save(&mut self) -> Result<Progress, AppError> {
        if self.app.store.save_rollout(&self.rollout, now_ms()).await? {
            Ok(Progress::Moved)
        } else {
            tracing::warn!(deployment_id = %self.rollout.deployment_id, "rollout lease lost: another replica drives it");
            Ok(Progress::Stop)
        }
    }

    async fn log(&self, line: &str) {
        self.app.log(&self.rollout.deployment_id, "", line).await;
    }

    async fn run_step(
        &mut self,
        step: &Step,
        record: &RolloutStepRecord,
    ) -> Result<StepOutcome, AppError> {
        match step {
            Step::Deploy { targets, slot } => {
                self.task_step(record, TaskKind::Deploy, targets, *slot, Release::New)
                    .await
            }
            Step::Restore { targets, slot } => {
                self.task_step(record, TaskKind::Deploy, targets, *slot, Release::Previous)
                    .await
            }
            Step::Retire { slot } => {
                let targets = self.rollout.targets_with(*slot);
                self.task_step(record, TaskKind::Retire, &targets, *slot, Release::New)
                    .await
            }
            Step::Route { weights, matched } => self.route_step(record, weights, matched).await,
            Step::Pause(PauseKind::For(duration)) => {
                let until = record
                    .started_at_ms
                    .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
                if now_ms() >= until {
                    Ok(StepOutcome::Done {
                        message: format!("paused {}", humantime::format_duration(*duration)),
                        detail: None,
                    })
                } else {
                    Ok(StepOutcome::Wait)
                }
            }
            Step::Pause(PauseKind::Manual) => Ok(StepOutcome::Wait),
            Step::Analyse { checks, duration } => {
                self.analyse_step(record, checks, *duration).await
            }
        }
    }

    /// A step carried out by one task per target: created once, then waited for.
    async fn task_step(
        &mut self,
        record: &RolloutStepRecord,
        kind: TaskKind,
        targets: &[String],
        slot: Slot,
        release: Release,
    ) -> Result<StepOutcome, AppError> {
        let id = self.rollout.deployment_id.clone();
        let tasks = self.app.store.rollout_step_tasks(&id, record.seq).await?;
        if tasks.is_empty() {
            if self.follows_route(record) {
                let drained = record
                    .started_at_ms
                    .saturating_add(i64::try_from(DRAIN.as_millis()).unwrap_or(0));
                if now_ms() < drained {
                    return Ok(StepOutcome::Wait);
                }
            }
            return self
                .create_tasks(record, kind, targets, slot, release)
                .await;
        }
        if tasks.iter().any(|t| !t.task.state.is_terminal()) {
            return Ok(StepOutcome::Wait);
        }
        let mut endpoints = BTreeMap::new();
        let mut failures = Vec::new();
        for done in &tasks {
            if done.task.state == TaskState::Succeeded {
                if let Some(output) = &done.output_json {
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(output) {
                        if let Some(found) = value.get("endpoints") {
                            endpoints.insert(done.task.target.clone(), found.clone());
                        }
                    }
                }
            } else {
                failures.push(format!(
                    "{}: {}",
                    done.task.target,
                    done.task.message.as_deref().unwrap_or("failed")
                ));
            }
        }
        let detail = Some(serde_json::json!({
            "tasks": tasks.iter().map(|t| serde_json::json!({
                "id": t.task.id, "target": t.task.target, "state": t.task.state.as_str(),
            })).collect::<Vec<_>>(),
            "endpoints": endpoints,
        }));
        if failures.is_empty() {
            Ok(StepOutcome::Done {
                message: format!(
                    "{} task{} succeeded",
                    tasks.len(),
                    if tasks.len() == 1 { "" } else { "s" }
                ),
                detail,
            })
        } else {
            Ok(StepOutcome::Failed {
                message: failures.join("; "),
                detail,
            })
        }
    }

    /// An `analyse` step: a probe round when one is due, the judgement at the end.
    async fn analyse_step(
        &mut self,
        record: &RolloutStepRecord,
        checks: &str,
        duration: Duration,
    ) -> Result<StepOutcome, AppError> {
        let parsed = match analysis::parse_checks(checks) {
            Ok(parsed) => parsed,
            Err(message) => {
                return Ok(StepOutcome::Failed {
                    message,
                    detail: None,
                })
            }
        };
        let now = now_ms();
        let sampling = self
            .analyses
            .entry(record.seq)
            .or_insert_with(|| analysis::Sampling::new(now));
        let deadline = sampling
            .started_ms
            .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        if now < deadline {
            if now < sampling.next_ms {
                return Ok(StepOutcome::Wait);
            }
            sampling.next_ms = now + analysis::PROBE_INTERVAL_MS;
            let (canary, baseline) = match self.analysis_sides().await {
                Ok(sides) => sides,
                Err(message) => {
                    return Ok(StepOutcome::Failed {
                        message,
                        detail: None,
                    })
                }
            };
            let (b, c) = futures::future::join(
                analysis::probe_round(&self.probes, &baseline, &parsed.path),
                analysis::probe_round(&self.probes, &canary, &parsed.path),
            )
            .await;
            if let Some(sampling) = self.analyses.get_mut(&record.seq) {
                sampling.add(b, c);
            }
            return Ok(StepOutcome::Wait);
        }
        let judged = sampling.judged(&parsed);
        self.analyses.remove(&record.seq);
        let (step_record, detail) = match judged {
            Ok(judged) => judged,
            Err(message) => {
                return Ok(StepOutcome::Failed {
                    message: format!("analysis `{checks}`: {message}"),
                    detail: None,
                })
            }
        };
        let rounds = detail["rounds"].as_u64().unwrap_or(0);
        Ok(match step_record.verdict {
            stella_decision::analysis::Verdict::Continue => StepOutcome::Done {
                message: format!(
                    "analysis `{checks}` passed over {rounds} rounds: the new version is no worse than the old"
                ),
                detail: Some(detail),
            },
            stella_decision::analysis::Verdict::Rollback { reason } => StepOutcome::Failed {
                message: format!("analysis `{checks}` over {rounds} rounds: {reason}"),
                detail: Some(detail),
            },
            stella_decision::analysis::Verdict::Pause { reason } => StepOutcome::Failed {
                message: format!(
                    "analysis `{checks}` could not decide in {}: {reason}",
                    humantime::format_duration(duration)
                ),
                detail: Some(detail),
            },
        })
    }

    /// The addresses an analysis compares: the new version (the slot the last forward
    /// deploy filled, or a rolling batch's stable containers) and the old one (the
    /// stable containers of the other targets; the batch itself when no other is left).
    async fn analysis_sides(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let index = self.rollout.next_step.min(self.rollout.steps.len());
        let last = self.rollout.steps[..index]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::Deploy { targets, slot } => Some((targets.clone(), *slot)),
                _ => None,
            });
        let Some((targets, slot)) = last else {
            return Err("an analysis needs a deploy before it".to_owned());
        };
        let mut canary = Vec::new();
        for target in &targets {
            if let Some(address) = self
                .endpoint(target, slot)
                .await
                .map_err(|e| e.to_string())?
            {
                canary.push(address);
            }
        }
        if canary.is_empty() {
            return Err(format!(
                "no address to check for slot {} of {}",
                slot_name(slot),
                targets.join(", ")
            ));
        }
        let mut baseline = Vec::new();
        for target in self.rollout.payloads.keys() {
            if slot == Slot::Stable && targets.contains(target) {
                continue;
            }
            if let Some(address) = self
                .endpoint(target, Slot::Stable)
                .await
                .map_err(|e| e.to_string())?
            {
                baseline.push(address);
            }
        }
        if baseline.is_empty() {
            baseline = canary.clone();
        }
        Ok((canary, baseline))
    }

    /// Whether the step before `record` in this phase changed the route.
    fn follows_route(&self, record: &RolloutStepRecord) -> bool {
        let index = self.rollout.next_step;
        index > 0
            && matches!(
                self.rollout.phase_steps().get(index - 1),
                Some(Step::Route { .. })
            )
            && record.phase == self.rollout.phase
    }

    async fn create_tasks(
        &mut self,
        record: &RolloutStepRecord,
        kind: TaskKind,
        targets: &[String],
        slot: Slot,
        release: Release,
    ) -> Result<StepOutcome, AppError> {
        let deployment = self
            .app
            .store
            .get_deployment(&self.rollout.deployment_id)
            .await?;
        let env = self
            .app
            .store
            .get_environment(&self.rollout.environment)
            .await?;
        let timeout_seconds = env
            .deployment_timeout_seconds
            .unwrap_or(self.app.config.task_deadline_seconds);
        let now = now_ms();
        let deadline = now.saturating_add(
            i64::try_from(timeout_seconds)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        );
        let slot_value = (slot != Slot::Stable).then(|| slot_name(slot).to_owned());
        let mut built = Vec::new();
        let mut skipped = Vec::new();
        for name in targets {
            let payload = match (kind, release) {
                (TaskKind::Deploy, Release::New) => self.rollout.payloads.get(name).cloned(),
                (TaskKind::Deploy, Release::Previous) => {
                    self.rollout.previous.get(name).cloned().flatten()
                }
                (TaskKind::Retire, _) => self.rollout.payloads.get(name).cloned(),
            };
            let Some(payload) = payload else {
                skipped.push(name.clone());
                continue;
            };
            let mut spec: DeploySpec = serde_json::from_str(&payload)
                .map_err(|e| AppError::internal("decoding a rollout payload", &e))?;
            let payload_json = match kind {
                TaskKind::Deploy => {
                    spec.slot = slot_value.clone();
                    // A restored payload is carried out by this deployment.
                    spec.deployment_id = deployment.id.clone();
                    spec.decision_id = deployment.decision_id.clone();
                    serde_json::to_string(&spec)
                }
                TaskKind::Retire => serde_json::to_string(&serde_json::json!({
                    "deployment_id": deployment.id,
                    "target": spec.target,
                    "slot": slot_name(slot),
                })),
            }
            .map_err(|e| AppError::internal("encoding a rollout task", &e))?;
            let target = self.app.store.get_target(name).await?;
            built.push(StepTask {
                task: Task {
                    id: uuid::Uuid::now_v7().to_string(),
                    deployment_id: deployment.id.clone(),
                    target: name.clone(),
                    agent_id: target.agent_id,
                    kind,
                    epoch: 0,
                    generation: deployment.generation,
                    state: TaskState::Pending,
                    payload_json,
                    message: None,
                    deadline_at_ms: deadline,
                    created_at_ms: now,
                    finished_at_ms: None,
                },
                slot: slot_value.clone(),
            });
        }
        if built.is_empty() {
            return Ok(StepOutcome::Done {
                message: format!(
                    "nothing to do: no earlier release ran on {}",
                    skipped.join(", ")
                ),
                detail: None,
            });
        }
        if self
            .app
            .store
            .add_rollout_tasks(&deployment, record.seq, &built)
            .await?
        {
            let mut agents: Vec<&str> = built.iter().map(|t| t.task.agent_id.as_str()).collect();
            agents.sort_unstable();
            agents.dedup();
            for agent in agents {
                self.app.dispatch_new_to(agent).await;
            }
            if !skipped.is_empty() {
                self.log(&format!(
                    "  nothing to restore on {}: no earlier release ran there",
                    skipped.join(", ")
                ))
                .await;
            }
        }
        Ok(StepOutcome::Wait)
    }

    async fn route_step(
        &mut self,
        record: &RolloutStepRecord,
        weights: &[(Slot, u8)],
        matched: &Option<(HeaderOrCookie, Slot)>,
    ) -> Result<StepOutcome, AppError> {
        let failed = |message: String| {
            Ok(StepOutcome::Failed {
                message,
                detail: None,
            })
        };
        let Some(router_name) = self.rollout.strategy.router().map(str::to_owned) else {
            return failed(format!(
                "the {} strategy names no router",
                self.rollout.strategy.name()
            ));
        };
        let router = match self.app.router(&router_name).await {
            Ok(router) => router,
            Err(error) => return failed(error.message),
        };
        let route = match RouteName::new(&self.rollout.environment) {
            Ok(route) => route,
            Err(error) => return failed(error.to_string()),
        };
        let backends = match self.backends(weights, matched).await {
            Ok(backends) => backends,
            Err(message) => return failed(message),
        };
        match self.app.apply_route(&router, &route, &backends).await {
            Ok(applied) => {
                self.rollout.weights = weights.to_vec();
                let described: Vec<String> = weights
                    .iter()
                    .map(|(slot, percent)| format!("{} {percent}%", slot_name(*slot)))
                    .collect();
                Ok(StepOutcome::Done {
                    message: format!(
                        "router `{}` route `{route}`: {} ({} backend{}, {} in {} ms)",
                        router.name,
                        described.join(", "),
                        applied.backends.len(),
                        if applied.backends.len() == 1 { "" } else { "s" },
                        applied.method.as_deref().unwrap_or("applied"),
                        applied.duration_ms
                    ),
                    detail: Some(serde_json::json!({
                        "router": router.name,
                        "route": route.as_str(),
                        "backends": applied.backends,
                        "method": applied.method,
                        "duration_ms": applied.duration_ms,
                    })),
                })
            }
            Err(error)
                if matches!(error.kind, ErrorKind::Unavailable)
                    || error.code == "agent_unavailable" =>
            {
                if now_ms() - record.started_at_ms < ROUTE_PATIENCE_MS {
                    tracing::info!(deployment_id = %self.rollout.deployment_id, error = %error, "route not applied yet; trying again");
                    Ok(StepOutcome::Wait)
                } else {
                    failed(format!(
                        "{} (tried for {} s)",
                        error.message,
                        ROUTE_PATIENCE_MS / 1000
                    ))
                }
            }
            Err(error) => failed(error.message),
        }
    }

    /// The router's backends for `weights`: every target of each slot, at the address
    /// its agent reported, with the slot's share of the weight split evenly between its
    /// targets. A slot without weight whose address is unknown (it never ran, or it
    /// failed to start) is left out; one with weight is an error.
    async fn backends(
        &self,
        weights: &[(Slot, u8)],
        matched: &Option<(HeaderOrCookie, Slot)>,
    ) -> Result<Vec<Backend>, String> {
        let mut backends = Vec::new();
        for (slot, percent) in weights {
            let targets = self.rollout.targets_with(*slot);
            if targets.is_empty() {
                continue;
            }
            let rule = matched
                .as_ref()
                .filter(|(_, s)| s == slot)
                .map(|(rule, _)| match rule {
                    HeaderOrCookie::Header { name, value } => AbMatch::header(name, value),
                    HeaderOrCookie::Cookie { name, value } => AbMatch::cookie(name, value),
                });
            let weight = match (&rule, *percent) {
                (Some(_), _) => 1,
                (None, 0) => 0,
                (None, p) => {
                    let n = u16::try_from(targets.len()).unwrap_or(u16::MAX).max(1);
                    (backend_weight(p) / n).max(1)
                }
            };
            for target in &targets {
                let address = match self.endpoint(target, *slot).await {
                    Ok(Some(address)) => address,
                    Ok(None) if weight == 0 => continue,
                    Ok(None) => {
                        return Err(format!(
                            "target `{target}` has no known address for slot {}: its agent reported no published port",
                            slot_name(*slot)
                        ))
                    }
                    Err(error) => return Err(error.to_string()),
                };
                let backend = Backend::new(&address, weight)
                    .map_err(|e| format!("target `{target}`: {e}"))?
                    .in_slot(slot_name(*slot));
                backends.push(match &rule {
                    Some(rule) => backend.matching(rule.clone()),
                    None => backend,
                });
            }
        }
        if backends.is_empty() {
            return Err("no target of the rollout has a known address".to_owned());
        }
        Ok(backends)
    }

    /// `host:port` at which the router reaches `slot` of `target`.
    async fn endpoint(&self, target: &str, slot: Slot) -> Result<Option<String>, StoreError> {
        let output = match slot {
            Slot::Stable => {
                self.app
                    .store
                    .latest_deploy_output(target, None, None)
                    .await?
            }
            other => {
                self.app
                    .store
                    .latest_deploy_output(
                        target,
                        Some(slot_name(other)),
                        Some(&self.rollout.deployment_id),
                    )
                    .await?
            }
        };
        let settings = self
            .rollout
            .payloads
            .get(target)
            .and_then(|p| serde_json::from_str::<DeploySpec>(p).ok())
            .map(|spec| spec.target.settings)
            .unwrap_or_default();
        Ok(endpoint_of(
            output.as_deref(),
            &settings,
            slot == Slot::Stable,
        ))
    }
}

/// Which release a deploy step sends.
#[derive(Clone, Copy)]
enum Release {
    /// The rollout's.
    New,
    /// What ran before it.
    Previous,
}

/// `host:port` of a target's slot for the router: the first TCP port the agent reported
/// (`endpoints` of its deploy outcome) — for the stable slot, failing that, the fixed
/// host port of the `ports` setting. The host is the target's `route_host` setting, else
/// the address the engine bound when it is a specific one, else 127.0.0.1 (a router on
/// the engine's host).
pub fn endpoint_of(
    output_json: Option<&str>,
    settings: &BTreeMap<String, String>,
    stable: bool,
) -> Option<String> {
    let reported = output_json
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|value| {
            value
                .get("endpoints")?
                .as_array()?
                .iter()
                .find(|e| e.get("protocol").and_then(|p| p.as_str()).unwrap_or("tcp") == "tcp")
                .and_then(|e| {
                    let port = u16::try_from(e.get("host_port")?.as_u64()?).ok()?;
                    let ip = e
                        .get("host_ip")
                        .and_then(|ip| ip.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    Some((ip, port))
                })
        });
    let (ip, port) = match reported {
        Some(found) => found,
        None if stable => (String::new(), fixed_host_port(settings.get("ports")?)?),
        None => return None,
    };
    let host = match settings.get("route_host").map(|h| h.trim()) {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ if !ip.is_empty() && ip != "0.0.0.0" && ip != "::" => ip,
        _ => DEFAULT_ROUTE_HOST.to_owned(),
    };
    if host.contains(':') && !host.starts_with('[') {
        Some(format!("[{host}]:{port}"))
    } else {
        Some(format!("{host}:{port}"))
    }
}

/// The host port of the first TCP mapping of a Docker `ports` setting
/// (`[host_ip:][host_port:]container_port[/protocol]`, comma separated) that fixes one.
fn fixed_host_port(ports: &str) -> Option<u16> {
    ports.split(',').map(str::trim).find_map(|spec| {
        let (mapping, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
        if protocol != "tcp" {
            return None;
        }
        let parts: Vec<&str> = mapping.rsplitn(3, ':').collect();
        // rsplitn: [container, host_port, host_ip…]
        parts.get(1)?.parse::<u16>().ok().filter(|p| *p > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn endpoints_come_from_the_outcome_then_the_fixed_port() {
        let output = r#"{"summary":"x","endpoints":[
            {"component":"web","container_port":53,"protocol":"udp","host_ip":"0.0.0.0","host_port":5353},
            {"component":"web","container_port":8080,"protocol":"tcp","host_ip":"0.0.0.0","host_port":49153}]}"#;
        assert_eq!(
            endpoint_of(Some(output), &settings(&[]), false).as_deref(),
            Some("127.0.0.1:49153")
        );
        assert_eq!(
            endpoint_of(
                Some(output),
                &settings(&[("route_host", "10.0.0.7")]),
                false
            )
            .as_deref(),
            Some("10.0.0.7:49153")
        );
        let bound = r#"{"endpoints":[{"component":"web","container_port":80,"protocol":"tcp","host_ip":"192.0.2.4","host_port":8080}]}"#;
        assert_eq!(
            endpoint_of(Some(bound), &settings(&[]), true).as_deref(),
            Some("192.0.2.4:8080")
        );
        let ports = settings(&[("ports", "127.0.0.1:9000:8080/udp, 8081:8080")]);
        assert_eq!(
            endpoint_of(None, &ports, true).as_deref(),
            Some("127.0.0.1:8081")
        );
        assert_eq!(endpoint_of(Some("{}"), &ports, false), None);
        assert_eq!(
            endpoint_of(None, &settings(&[("ports", "8080")]), true),
            None
        );
        assert_eq!(
            endpoint_of(None, &settings(&[("ports", "0.0.0.0:9090:80")]), true).as_deref(),
            Some("127.0.0.1:9090")
        );
        assert_eq!(
            endpoint_of(Some(output), &settings(&[("route_host", "fd00::1")]), false).as_deref(),
            Some("[fd00::1]:49153")
        );
    }
}
