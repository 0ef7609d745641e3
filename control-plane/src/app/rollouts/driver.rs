//! The rollout driver: claims rollouts under a lease and takes their steps (see the
//! parent module's documentation).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use stella_decision::rollout::{rollback_of, PauseKind, Step};
use tokio_util::sync::CancellationToken;

use super::analysis;
use super::steps::Release;
use crate::app::{now_ms, App};
use crate::domain::{
    describe_step, DeploymentState, Rollout, RolloutPhase, RolloutRequest, RolloutState,
    RolloutStepRecord, StepState, TaskKind,
};
use crate::error::{AppError, ErrorChain};

/// How long a claim lasts without renewal.
const LEASE_MS: i64 = 15_000;
/// How often a replica looks for rollouts to claim.
const CLAIM_INTERVAL: Duration = Duration::from_millis(500);
/// How often a driver looks at its rollout while a step waits.
const TICK: Duration = Duration::from_millis(200);
/// How long after a route change a step may take a slot out of service.
pub const DRAIN: Duration = Duration::from_secs(2);
/// How long a route step keeps trying while the router's agent is not reachable.
pub(super) const ROUTE_PATIENCE_MS: i64 = 60_000;
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
pub(super) enum StepOutcome {
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
pub(super) struct Driver {
    pub(super) app: Arc<App>,
    owner: String,
    renewed_at_ms: i64,
    pub(super) rollout: Rollout,
    /// The samples of the analyses running, by step number.
    pub(super) analyses: HashMap<i64, analysis::Sampling>,
    /// The client analyses probe with.
    pub(super) probes: reqwest::Client,
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
                self.finish_step(&record, StepState::Succeeded, &message, detail.as_ref())
                    .await?;
                self.rollout.next_step += 1;
                self.save().await
            }
            StepOutcome::Failed { message, detail } => {
                self.finish_step(&record, StepState::Failed, &message, detail.as_ref())
                    .await?;
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

    /// Records the end of a running step (its state, message and detail) and logs it;
    /// a step found finished already (a replica that took the rollout over) is left as
    /// it is stored.
    async fn finish_step(
        &self,
        record: &RolloutStepRecord,
        state: StepState,
        message: &str,
        detail: Option<&serde_json::Value>,
    ) -> Result<(), AppError> {
        if record.state != StepState::Running {
            return Ok(());
        }
        self.app
            .store
            .finish_rollout_step(
                &record.deployment_id,
                record.seq,
                state,
                Some(message),
                detail,
                now_ms(),
            )
            .await?;
        let verb = if state == StepState::Succeeded {
            "done"
        } else {
            "failed"
        };
        self.log(&format!(
            "{}step {} {verb}: {message}",
            self.phase_prefix(),
            record.seq
        ))
        .await;
        Ok(())
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

    pub(super) async fn log(&self, line: &str) {
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
            Step::Route {
                weights,
                matched,
                drained,
            } => self.route_step(record, weights, matched, drained).await,
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
}
