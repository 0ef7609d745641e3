//! The driver of runs: each replica claims runs whose lease is free or expired, and
//! drives each one it holds: it asks `stella_packs::schedule` what happens next,
//! stores the answer under its lease epoch, starts the dispatched steps, stores their
//! results, and again, until the run is finished.
//!
//! Durability: every state change is stored before it is acted on. A replica that
//! dies leaves its lease to expire; the replica that claims the run next finds the
//! steps that were running under the old epoch, marks them failed (`interrupted`), and
//! the scheduler retries them under the failure policy. Finished steps are never run
//! again; gates keep waiting. A driver whose lease was taken cannot write any more
//! (the store refuses its epoch), so its late results are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use stella_packs::schedule::{Dispatch, RunStatus};
use stella_packs::simulate::StepKind;
use stella_packs::{CompiledPlan, RunState, StepStatus};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::executor::{self, StepContext, StepOutcome};
use super::{load_state, status_name, stored_plan};
use crate::app::now_ms;
use crate::domain::{NewRunLog, Run, RunChanges, StepWrite};
use crate::error::AppError;
use crate::App;

/// This replica's runs: its lease owner name, and a wake-up for each run it drives.
#[derive(Debug)]
pub struct RunEngine {
    owner: String,
    wake: Notify,
    local: Mutex<HashMap<(String, String), Arc<Notify>>>,
}

impl Default for RunEngine {
    fn default() -> Self {
        RunEngine {
            owner: format!("replica-{}", uuid::Uuid::new_v4().simple()),
            wake: Notify::new(),
            local: Mutex::new(HashMap::new()),
        }
    }
}

impl RunEngine {
    /// The name this replica's leases carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Makes the claim loop look for runs now (a run was created).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Wakes the driver of a run if this replica drives it (an approval, a cancel).
    pub fn poke(&self, tenant: &str, id: &str) {
        if let Some(notify) = self.local.lock().get(&(tenant.to_owned(), id.to_owned())) {
            notify.notify_one();
        }
    }
}

/// How often promotions handed to a workflow are checked for a run that was never
/// created or that ended unnoticed.
const WORKFLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Claims runs and drives them until `shutdown`; also sweeps promotion workflows.
pub async fn run_task_runner(app: Arc<App>, shutdown: CancellationToken) {
    let poll = Duration::from_millis(app.config.run_poll_interval_ms);
    let lease_ms = i64::try_from(app.config.run_lease_ms).unwrap_or(i64::MAX);
    let mut drivers = tokio::task::JoinSet::new();
    let mut swept_at: Option<tokio::time::Instant> = None;
    loop {
        if swept_at.is_none_or(|at| at.elapsed() >= WORKFLOW_SWEEP_INTERVAL) {
            app.sweep_workflow_promotions().await;
            swept_at = Some(tokio::time::Instant::now());
        }
        match app
            .store
            .claim_runs(app.run_engine.owner(), now_ms(), lease_ms, 64)
            .await
        {
            Ok(runs) => {
                for run in runs {
                    let notify = Arc::new(Notify::new());
                    app.run_engine
                        .local
                        .lock()
                        .insert((run.tenant.clone(), run.id.clone()), notify.clone());
                    tracing::info!(tenant = %run.tenant, run_id = %run.id, epoch = run.lease_epoch, "run claimed");
                    drivers.spawn(drive(app.clone(), run, notify, shutdown.clone()));
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error::ErrorChain(&error), "claiming runs failed");
            }
        }
        while drivers.try_join_next().is_some() {}
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
            () = app.run_engine.wake.notified() => {}
        }
    }
    while drivers.join_next().await.is_some() {}
}

/// A step's result on its way back to the driver.
struct StepDone {
    key: String,
    attempt: u32,
    outcome: StepOutcome,
    duration_ms: i64,
}

struct Driver {
    app: Arc<App>,
    run: Run,
    plan: Arc<CompiledPlan>,
    epoch: i64,
    /// Steps started by this driver: their stop token and the attempt they run.
    running: HashMap<String, (CancellationToken, u32)>,
    done_tx: mpsc::UnboundedSender<StepDone>,
    /// Where running steps send log lines as they come.
    live_tx: mpsc::UnboundedSender<NewRunLog>,
    renewed_at_ms: i64,
    stopping_for_cancel: bool,
}

async fn drive(app: Arc<App>, run: Run, notify: Arc<Notify>, shutdown: CancellationToken) {
    let (tenant, id, epoch) = (run.tenant.clone(), run.id.clone(), run.lease_epoch);
    match drive_run(app.clone(), run, &notify, &shutdown).await {
        Ok(()) => {}
        Err(error) => {
            tracing::warn!(%tenant, run_id = %id, error = %error.message, "driving a run failed");
        }
    }
    app.run_engine
        .local
        .lock()
        .remove(&(tenant.clone(), id.clone()));
    if let Err(error) = app
        .store
        .release_run_lease(&tenant, &id, app.run_engine.owner(), epoch)
        .await
    {
        tracing::warn!(error = %crate::error::ErrorChain(&error), "releasing a run lease failed");
    }
}

async fn drive_run(
    app: Arc<App>,
    run: Run,
    notify: &Notify,
    shutdown: &CancellationToken,
) -> Result<(), AppError> {
    let plan = Arc::new(stored_plan(&run)?);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (live_tx, mut live_rx) = mpsc::unbounded_channel();
    let mut driver = Driver {
        live_tx,
        epoch: run.lease_epoch,
        app: app.clone(),
        run,
        plan,
        running: HashMap::new(),
        done_tx,
        renewed_at_ms: now_ms(),
        stopping_for_cancel: false,
    };
    if !driver.recover().await? {
        return Ok(());
    }
    let poll = Duration::from_millis(app.config.run_poll_interval_ms);
    let mut finished: Vec<StepDone> = Vec::new();
    loop {
        // A step's lines were sent before its result: store them first.
        let mut lines = RunChanges::default();
        while let Ok(line) = live_rx.try_recv() {
            lines.logs.push(line);
        }
        if !driver.apply(&lines).await? {
            driver.stop_all();
            return Ok(());
        }
        while let Ok(done) = done_rx.try_recv() {
            finished.push(done);
        }
        let Some(next_retry) = driver.step(std::mem::take(&mut finished)).await? else {
            driver.stop_all();
            return Ok(());
        };
        let wait = match next_retry {
            Some(at) => poll.min(Duration::from_millis(
                u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0),
            )),
            None => poll,
        };
        tokio::select! {
            done = done_rx.recv() => finished.extend(done),
            Some(line) = live_rx.recv() => {
                // Lines as they come, a batch at a time, under this driver's lease.
                let mut changes = RunChanges::default();
                changes.logs.push(line);
                while let Ok(line) = live_rx.try_recv() {
                    changes.logs.push(line);
                }
                if !driver.apply(&changes).await? {
                    driver.stop_all();
                    return Ok(());
                }
            }
            () = notify.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {
                driver.hand_over().await;
                return Ok(());
            }
        }
    }
}

impl Driver {
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.app.config.run_lease_ms).unwrap_or(i64::MAX)
    }

    /// Writes `changes` under this driver's epoch; false when the lease was lost.
    async fn apply(&self, changes: &RunChanges) -> Result<bool, AppError> {
        if changes.is_empty() {
            return Ok(true);
        }
        let applied = self
            .app
            .store
            .apply_run_changes(
                &self.run.tenant,
                &self.run.id,
                self.app.run_engine.owner(),
                self.epoch,
                changes,
                now_ms(),
            )
            .await?;
        if !applied {
            tracing::warn!(run_id = %self.run.id, epoch = self.epoch, "run lease lost: another replica drives the run");
        }
        Ok(applied)
    }

    /// After a claim: steps that were running under an earlier epoch were interrupted
    /// (their replica stopped); they fail now and the failure policy decides.
    async fn recover(&mut self) -> Result<bool, AppError> {
        let state = load_state(&self.app, &self.run).await?;
        let kinds = kinds(&self.plan, &state);
        let now = now_ms();
        let mut changes = RunChanges::default();
        let first = self.epoch == 1 && state.steps.is_empty();
        changes.logs.push(if first {
            NewRunLog::info("run.started", "Run started.")
        } else {
            NewRunLog::info(
                "run.resumed",
                "Run resumed after its previous driver stopped.",
            )
            .meta("epoch", self.epoch.to_string())
        });
        for (key, step) in &state.steps {
            let leaf = matches!(kinds.get(key), Some(StepKind::Run | StepKind::GatePolicy));
            if step.status == StepStatus::Running && leaf {
                let reason = "interrupted: the replica running it stopped".to_owned();
                changes.logs.push(
                    NewRunLog::info("step.failed", format!("Step interrupted: {key}"))
                        .level("warn")
                        .step(key)
                        .meta("reason", reason.clone()),
                );
                changes.steps.push(StepWrite {
                    key: key.clone(),
                    status: "Failed".to_owned(),
                    attempts: i64::from(step.attempts),
                    at_ms: now,
                    reason: Some(reason),
                    outputs: None,
                });
            }
        }
        self.apply(&changes).await
    }

    /// One round: store finished steps, schedule, store the decisions, start the
    /// dispatched steps. `None` when the driver should stop (finished, or lease lost);
    /// else the next retry time, if any.
    async fn step(&mut self, finished: Vec<StepDone>) -> Result<Option<Option<i64>>, AppError> {
        let now = now_ms();
        let mut changes = RunChanges::default();
        for done in finished {
            self.running.remove(&done.key);
            record_result(&mut changes, done, now);
        }
        if !changes.is_empty() && !self.apply(&changes).await? {
            return Ok(None);
        }
        if now - self.renewed_at_ms > self.lease_ms() / 3 {
            let renewed = self
                .app
                .store
                .renew_run_lease(
                    &self.run.tenant,
                    &self.run.id,
                    self.app.run_engine.owner(),
                    self.epoch,
                    now.saturating_add(self.lease_ms()),
                )
                .await?;
            if !renewed {
                tracing::warn!(run_id = %self.run.id, "run lease lost");
                return Ok(None);
            }
            self.renewed_at_ms = now;
        }

        self.run = self
            .app
            .store
            .get_run(&self.run.tenant, &self.run.id)
            .await?;
        let state = load_state(&self.app, &self.run).await?;
        if self.run.cancel_requested && !self.stopping_for_cancel {
            self.stopping_for_cancel = true;
            for (token, _) in self.running.values() {
                token.cancel();
            }
        }
        let now = now_ms();
        let schedule = stella_packs::schedule(&self.plan, &state, now);
        let mut changes = RunChanges::default();
        for transition in &schedule.transitions {
            let current = state.steps.get(&transition.key);
            if current.is_some_and(|s| s.status == transition.to) {
                continue;
            }
            let attempts = current.map_or(0, |s| s.attempts);
            transition_log(
                &mut changes,
                &transition.key,
                transition.to,
                &transition.reason,
                &schedule.waiting,
            );
            changes.steps.push(StepWrite {
                key: transition.key.clone(),
                status: status_name(transition.to).to_owned(),
                attempts: i64::from(attempts),
                at_ms: now,
                reason: Some(transition.reason.clone()),
                outputs: None,
            });
        }
        // A step already started here is not started again, whatever the store says.
        let dispatch: Vec<Dispatch> = schedule
            .dispatch
            .iter()
            .filter(|d| !self.running.contains_key(&d.key))
            .cloned()
            .collect();
        for d in &dispatch {
            let mut log = NewRunLog::info("step.started", format!("Starting step: {}", d.key))
                .step(&d.key)
                .meta("attempt", d.attempt.to_string());
            if let Some(uses) = &d.uses {
                log = log.meta("uses", uses.clone());
            }
            changes.logs.push(log);
            changes.steps.push(StepWrite {
                key: d.key.clone(),
                status: "Running".to_owned(),
                attempts: i64::from(d.attempt),
                at_ms: now,
                reason: None,
                outputs: None,
            });
        }
        let status = run_status_name(schedule.run_status);
        let finished = matches!(
            schedule.run_status,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        ) && self.running.is_empty();
        if status != self.run.status && (finished || !is_final(status)) {
            if finished {
                changes.artifacts =
                    executor::capture_outputs(&self.app, &self.run, &self.plan, &state).await;
                let (event, level, message) = match schedule.run_status {
                    RunStatus::Succeeded => ("run.completed", "info", "Run completed."),
                    RunStatus::Cancelled => ("run.cancelled", "warn", "Run cancelled."),
                    _ => ("run.failed", "error", "Run failed."),
                };
                changes
                    .logs
                    .push(NewRunLog::info(event, message).level(level));
            }
            changes.status = Some(status.to_owned());
        }
        if !self.apply(&changes).await? {
            return Ok(None);
        }
        for d in dispatch {
            self.start(d);
        }
        if finished {
            tracing::info!(run_id = %self.run.id, status, "run finished");
            let ended = Run {
                status: status.to_owned(),
                ..self.run.clone()
            };
            self.app.workflow_run_finished(&ended).await;
            return Ok(None);
        }
        Ok(Some(schedule.next_retry_at_ms))
    }

    fn start(&mut self, dispatch: Dispatch) {
        let cancel = CancellationToken::new();
        self.running
            .insert(dispatch.key.clone(), (cancel.clone(), dispatch.attempt));
        let context = StepContext {
            app: self.app.clone(),
            run: self.run.clone(),
            plan: self.plan.clone(),
            cancel,
            live: self.live_tx.clone(),
        };
        let done_tx = self.done_tx.clone();
        tokio::spawn(async move {
            let started = now_ms();
            let (key, attempt) = (dispatch.key.clone(), dispatch.attempt);
            let outcome = executor::execute(&context, &dispatch).await;
            let _ = done_tx.send(StepDone {
                key,
                attempt,
                outcome,
                duration_ms: now_ms() - started,
            });
        });
    }

    fn stop_all(&mut self) {
        for (token, _) in self.running.values() {
            token.cancel();
        }
    }

    /// On a graceful stop: the running steps are stopped and put back to `Pending` with
    /// the attempt they ran not counted, so the replica that takes the run over starts
    /// them again without spending an attempt of the failure policy. (After a crash there
    /// is no such chance: the next driver fails them, see [`Driver::recover`].)
    async fn hand_over(&mut self) {
        self.stop_all();
        if self.running.is_empty() {
            return;
        }
        let now = now_ms();
        let mut changes = RunChanges::default();
        for (key, (_, attempt)) in &self.running {
            changes.logs.push(
                NewRunLog::info(
                    "step.handed-over",
                    format!("Step handed over: {key} (this replica stops)"),
                )
                .level("warn")
                .step(key)
                .meta("attempt", attempt.to_string()),
            );
            changes.steps.push(StepWrite {
                key: key.clone(),
                status: "Pending".to_owned(),
                attempts: i64::from(attempt.saturating_sub(1)),
                at_ms: now,
                reason: None,
                outputs: None,
            });
        }
        if let Err(error) = self.apply(&changes).await {
            tracing::warn!(run_id = %self.run.id, error = %error.message, "handing running steps over failed; the next driver fails them");
        }
    }
}

fn record_result(changes: &mut RunChanges, done: StepDone, now: i64) {
    let duration = format!("{:.3}s", done.duration_ms as f64 / 1000.0);
    changes.logs.extend(done.outcome.logs);
    match done.outcome.result {
        Ok(outputs) => {
            changes.logs.push(
                NewRunLog::info("step.completed", format!("Step completed: {}", done.key))
                    .step(&done.key)
                    .meta("duration", duration),
            );
            changes.steps.push(StepWrite {
                key: done.key,
                status: "Succeeded".to_owned(),
                attempts: i64::from(done.attempt),
                at_ms: now,
                reason: None,
                outputs: Some(outputs),
            });
        }
        Err(reason) => {
            changes.logs.push(
                NewRunLog::info(
                    "step.failed",
                    format!("Step failed: {}: {reason}", done.key),
                )
                .level("error")
                .step(&done.key)
                .meta("duration", duration)
                .meta("reason", reason.clone())
                .meta("attempt", done.attempt.to_string()),
            );
            changes.steps.push(StepWrite {
                key: done.key,
                status: "Failed".to_owned(),
                attempts: i64::from(done.attempt),
                at_ms: now,
                reason: Some(reason),
                outputs: None,
            });
        }
    }
}

fn transition_log(
    changes: &mut RunChanges,
    key: &str,
    to: StepStatus,
    reason: &str,
    waiting: &[stella_packs::schedule::GateWait],
) {
    let log = match to {
        StepStatus::Skipped => {
            NewRunLog::info("step.skipped", format!("Step skipped: {key} ({reason})"))
        }
        StepStatus::Failed => {
            NewRunLog::info("step.failed", format!("Step failed: {key}: {reason}")).level("error")
        }
        StepStatus::Waiting => {
            let approval = waiting
                .iter()
                .find(|w| w.key == key)
                .map_or_else(|| key.to_owned(), |w| w.approval_id.clone());
            NewRunLog::info("gate.awaiting", format!("Awaiting approval: {approval}"))
                .level("warn")
                .meta("approvalId", approval)
        }
        _ => return,
    };
    changes
        .logs
        .push(log.step(key).meta("reason", reason.to_owned()));
}

fn run_status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running => "Running",
        RunStatus::Waiting => "Waiting",
        RunStatus::Succeeded => "Succeeded",
        RunStatus::Failed => "Failed",
        RunStatus::Cancelled => "Cancelled",
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "Succeeded" | "Failed" | "Cancelled")
}

/// Step kinds by instance key (iterations included).
fn kinds(plan: &CompiledPlan, state: &RunState) -> BTreeMap<String, StepKind> {
    stella_packs::run_state_steps(plan, state)
        .into_iter()
        .map(|row| (row.step_id, row.kind))
        .collect()
}
