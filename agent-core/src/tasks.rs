//! The tasks an agent runs: assignments checked against the journal (a finished task is
//! answered from it, never run twice), each run with its progress journaled and its
//! deadline kept, cancellations, acknowledgements, and the deploys that update the
//! desired state. Task kinds: `deploy` (a [`DeployTask`], to the target's own deployment
//! or to a slot) and `retire` (a [`RetireTask`]: remove a slot).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use stella_proto::v1;
use stella_proto::v1::agent_message::Body as AgentBody;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::desired::{parse_deploy_task, DesiredStore};
use crate::drift::Deploying;
use crate::error::error_chain;
use crate::fsutil;
use crate::journal::{EntryState, Journal, JournalEntry, Outcome, StoredResult};
use crate::slot::{check_slot_name, STABLE_SLOT};
use crate::target::{DeployTask, Progress, RetireTask, TargetRegistry};

/// The tasks of this agent: the journal, what runs now, and how results reach the server.
pub(crate) struct Tasks {
    pub(crate) agent_id: String,
    pub(crate) journal: Journal,
    pub(crate) targets: TargetRegistry,
    /// Towards the current session (or the next one, when disconnected).
    pub(crate) outbox: mpsc::UnboundedSender<v1::AgentMessage>,
    pub(crate) running: Mutex<HashMap<String, RunningTask>>,
    pub(crate) join_set: tokio::sync::Mutex<JoinSet<()>>,
    /// The targets' desired state, updated by successful deploys.
    pub(crate) desired: Arc<DesiredStore>,
    /// Targets a deploy is changing, left alone by the drift loop.
    pub(crate) deploying: Arc<Deploying>,
    /// Asks the drift loop to check a target (after a deploy of it).
    pub(crate) drift_notify: mpsc::UnboundedSender<String>,
}

pub(crate) struct RunningTask {
    /// The newest lease epoch the server assigned the task under.
    epoch: Arc<AtomicU64>,
    cancel: CancellationToken,
    cancel_reason: Arc<OnceLock<String>>,
}

impl Tasks {
    pub(crate) async fn assign(self: Arc<Self>, assignment: v1::TaskAssignment) {
        let span = tracing::info_span!(
            "task",
            task_id = %assignment.task_id,
            epoch = assignment.epoch,
            kind = %assignment.kind
        );
        Arc::clone(&self)
            .assign_in_span(assignment)
            .instrument(span)
            .await;
    }

    async fn assign_in_span(self: Arc<Self>, assignment: v1::TaskAssignment) {
        if !Journal::is_valid_task_id(&assignment.task_id) {
            tracing::warn!("refusing a task whose id cannot be journaled");
            let result = StoredResult {
                outcome: Outcome::Failed,
                message: format!("invalid task id {:?}", assignment.task_id),
                output_json: String::new(),
                finished_at_unix_ms: crate::now_unix_ms(),
            };
            self.send_result(&assignment.task_id, assignment.epoch, &result);
            return;
        }
        // The running map first, then the journal: a task leaves the map only after its
        // result is journaled, so a task found in neither never ran.
        if let Some(running) = self.running_task(&assignment.task_id) {
            running.fetch_max(assignment.epoch, Ordering::SeqCst);
            tracing::info!("task is already running; its result will follow");
            return;
        }
        let journal = self.journal.clone();
        let task_id = assignment.task_id.clone();
        let entry = match fsutil::blocking(move || journal.get(&task_id)).await {
            Ok(entry) => entry,
            Err(error) => {
                // Targets are idempotent: running again is safe, refusing would stall.
                tracing::warn!(error = %error_chain(&error), "unreadable journal entry; running the task");
                None
            }
        };
        match entry {
            Some(entry) if entry.state == EntryState::Finished => {
                let epoch = entry.epoch.max(assignment.epoch);
                if let Some(result) = entry.task_result(epoch) {
                    tracing::info!("task already finished; answering from the journal");
                    self.push(AgentBody::TaskResult(result));
                    return;
                }
            }
            Some(_) => tracing::info!("task was interrupted by a restart; running it again"),
            None => {}
        }

        let entry = JournalEntry::running(&assignment.task_id, assignment.epoch, &assignment.kind);
        let journal = self.journal.clone();
        if let Err(error) = fsutil::blocking(move || journal.put(&entry)).await {
            tracing::error!(error = %error_chain(&error), "could not journal the task; not running it");
            let result = StoredResult {
                outcome: Outcome::Failed,
                message: format!(
                    "the agent could not record the task: {}",
                    error_chain(&error)
                ),
                output_json: String::new(),
                finished_at_unix_ms: crate::now_unix_ms(),
            };
            self.send_result(&assignment.task_id, assignment.epoch, &result);
            return;
        }

        let epoch = Arc::new(AtomicU64::new(assignment.epoch));
        let cancel = CancellationToken::new();
        let cancel_reason = Arc::new(OnceLock::new());
        self.lock_running().insert(
            assignment.task_id.clone(),
            RunningTask {
                epoch: Arc::clone(&epoch),
                cancel: cancel.clone(),
                cancel_reason: Arc::clone(&cancel_reason),
            },
        );
        let tasks = Arc::clone(&self);
        let work = async move {
            tasks
                .execute(assignment, epoch, cancel, cancel_reason)
                .await;
        };
        self.join_set.lock().await.spawn(work.in_current_span());
    }

    /// The server stored a result: stop re-sending it.
    pub(crate) async fn acknowledge(&self, ack: v1::TaskAck) {
        let journal = self.journal.clone();
        let task_id = ack.task_id.clone();
        match fsutil::blocking(move || journal.acknowledge(&task_id, ack.epoch)).await {
            Ok(true) => {
                tracing::debug!(task_id = %ack.task_id, epoch = ack.epoch, "task result acknowledged");
            }
            Ok(false) => tracing::debug!(
                task_id = %ack.task_id,
                epoch = ack.epoch,
                "acknowledgement of no unacknowledged result"
            ),
            Err(error) => tracing::warn!(
                task_id = %ack.task_id,
                error = %error_chain(&error),
                "could not record a task acknowledgement; the result will be sent again"
            ),
        }
    }

    pub(crate) fn cancel(&self, request: &v1::CancelTask) {
        let running = self.lock_running();
        let Some(task) = running.get(&request.task_id) else {
            tracing::info!(task_id = %request.task_id, "cancel for a task that is not running");
            return;
        };
        tracing::info!(task_id = %request.task_id, reason = %request.reason, "cancelling task");
        let _ = task.cancel_reason.set(request.reason.clone());
        task.cancel.cancel();
    }

    async fn execute(
        &self,
        assignment: v1::TaskAssignment,
        epoch: Arc<AtomicU64>,
        cancel: CancellationToken,
        cancel_reason: Arc<OnceLock<String>>,
    ) {
        let journal = self.journal.clone();
        let task_id = assignment.task_id.clone();
        let lines = match fsutil::blocking(move || journal.task_lines(&task_id)).await {
            Ok(lines) => Some(Arc::new(lines)),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "cannot journal progress lines; sending them unjournaled");
                None
            }
        };
        let progress = Progress::session(
            self.agent_id.clone(),
            assignment.task_id.clone(),
            Arc::clone(&epoch),
            self.outbox.clone(),
            lines,
        );
        let work = run_task(self, &assignment, &progress, &cancel);
        tokio::pin!(work);
        let deadline = deadline_of(assignment.deadline_unix_ms);
        let mut deadline_passed = false;
        let (mut result, stickers) = tokio::select! {
            outcome = &mut work => outcome,
            () = sleep_until_deadline(deadline) => {
                deadline_passed = true;
                let _ = cancel_reason.set("the task's deadline passed".to_owned());
                cancel.cancel();
                work.await
            }
        };
        if result.outcome == Outcome::Cancelled {
            if let Some(reason) = cancel_reason.get().filter(|r| !r.is_empty()) {
                result.message = format!("cancelled: {reason}");
            }
        }
        tracing::info!(
            outcome = ?result.outcome,
            deadline_passed,
            message = %result.message,
            "task finished"
        );

        let epoch_now = epoch.load(Ordering::SeqCst);
        let journal = self.journal.clone();
        let (task_id, kind, stored) = (
            assignment.task_id.clone(),
            assignment.kind.clone(),
            result.clone(),
        );
        if let Err(error) =
            fsutil::blocking(move || journal.finish(&task_id, epoch_now, &kind, stored)).await
        {
            tracing::error!(error = %error_chain(&error), "could not journal the task result");
        }
        self.lock_running().remove(&assignment.task_id);
        self.send_result(&assignment.task_id, epoch.load(Ordering::SeqCst), &result);
        for sticker in stickers {
            self.push(AgentBody::StickerReport(v1::StickerReport {
                target: sticker.target.clone(),
                component: sticker.component.clone(),
                sticker_json: sticker.to_canonical_json().into_bytes(),
            }));
        }
    }

    /// Runs a deploy task. The drift loop leaves its target alone meanwhile; a success
    /// becomes the target's desired state, and the target is checked for drift right after.
    /// A deploy to a slot is none of that: it changes nothing the drift loop looks at,
    /// is not the target's desired state, and reports no stickers.
    async fn deploy(
        &self,
        payload_json: &[u8],
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<crate::ApplyOutcome, TaskFailure> {
        let task = parse_deploy_task(payload_json).map_err(TaskFailure::failed)?;
        let span = tracing::info_span!(
            "deploy",
            deployment_id = %task.deployment_id,
            release = %task.release,
            version = %task.version,
            target = %task.target.name,
            slot = %task.slot.as_deref().unwrap_or(STABLE_SLOT)
        );
        if task.slot.is_some() {
            let mut outcome = plan_and_apply(&self.targets, &task, progress, cancel)
                .instrument(span)
                .await?;
            if !outcome.stickers.is_empty() {
                tracing::warn!(target = %task.target.name, kind = %task.target.kind, "a slot deploy returned stickers; not reporting them");
                outcome.stickers.clear();
            }
            outcome.slot.clone_from(&task.slot);
            return Ok(outcome);
        }
        let deploying = self.deploying.start(&task.target.name);
        let outcome = plan_and_apply(&self.targets, &task, progress, cancel)
            .instrument(span)
            .await;
        if outcome.is_ok() {
            self.desired.deployed(&task).await;
        }
        drop(deploying);
        let _ = self.drift_notify.send(task.target.name.clone());
        outcome
    }

    /// Runs a retire task: removes what runs in a slot of a target, through the kind's
    /// [`Target::retire`](crate::Target::retire). The drift loop does not look at slots,
    /// and the desired state does not hold them, so neither is involved.
    async fn retire(
        &self,
        payload_json: &[u8],
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<crate::ApplyOutcome, TaskFailure> {
        let task: RetireTask = serde_json::from_slice(payload_json)
            .map_err(|e| TaskFailure::failed(format!("invalid retire payload: {e}")))?;
        check_slot_name(&task.slot)
            .map_err(|reason| TaskFailure::failed(format!("cannot retire: {reason}")))?;
        let Some(target) = self.targets.get(&task.target.kind) else {
            return Err(TaskFailure::failed(cannot_drive(
                &self.targets,
                &task.target.kind,
            )));
        };
        let span = tracing::info_span!(
            "retire",
            deployment_id = %task.deployment_id,
            target = %task.target.name,
            slot = %task.slot
        );
        progress.report(format!(
            "retiring slot {} of {} ({})",
            task.slot, task.target.name, task.target.kind
        ));
        // Removing a slot's containers is idempotent, so a cancelled retire can simply
        // be run again.
        let retired = tokio::select! {
            () = cancel.cancelled() => Err(crate::TargetError::Cancelled),
            retired = target.retire(&task.target, &task.slot, progress).instrument(span) => retired,
        };
        let mut outcome = retired.map_err(|e| TaskFailure::from_target(&e, cancel))?;
        outcome.slot = Some(task.slot);
        outcome.stickers.clear();
        Ok(outcome)
    }

    pub(crate) fn send_result(&self, task_id: &str, epoch: u64, result: &StoredResult) {
        self.push(AgentBody::TaskResult(v1::TaskResult {
            task_id: task_id.to_owned(),
            epoch,
            state: result.outcome.to_proto().into(),
            message: result.message.clone(),
            output_json: result.output_json.clone().into_bytes(),
            finished_at_unix_ms: result.finished_at_unix_ms,
        }));
    }

    pub(crate) fn push(&self, body: AgentBody) {
        // The receiver lives as long as the agent; after shutdown nothing is listening.
        let _ = self.outbox.send(v1::AgentMessage { body: Some(body) });
    }

    fn running_task(&self, task_id: &str) -> Option<Arc<AtomicU64>> {
        self.lock_running()
            .get(task_id)
            .map(|task| Arc::clone(&task.epoch))
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningTask>> {
        // A panic while holding this lock leaves the map consistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) async fn reap(&self) {
        let mut join_set = self.join_set.lock().await;
        while let Some(joined) = join_set.try_join_next() {
            if let Err(error) = joined {
                if error.is_panic() {
                    tracing::error!("a task panicked");
                }
            }
        }
    }
}

/// Runs one task to its result and the stickers it wrote.
async fn run_task(
    tasks: &Tasks,
    assignment: &v1::TaskAssignment,
    progress: &Progress,
    cancel: &CancellationToken,
) -> (StoredResult, Vec<crate::Sticker>) {
    let outcome = match assignment.kind.as_str() {
        "deploy" => {
            tasks
                .deploy(&assignment.payload_json, progress, cancel)
                .await
        }
        "retire" => {
            tasks
                .retire(&assignment.payload_json, progress, cancel)
                .await
        }
        other => Err(TaskFailure::failed(format!(
            "unknown task kind {other:?}; this agent runs \"deploy\" and \"retire\" tasks"
        ))),
    };
    let finished_at_unix_ms = crate::now_unix_ms();
    match outcome {
        Ok(outcome) => {
            let output_json = serde_json::to_string(&outcome).unwrap_or_default();
            let message = if outcome.summary.is_empty() {
                match assignment.kind.as_str() {
                    "retire" => "retired".to_owned(),
                    _ => "deployed".to_owned(),
                }
            } else {
                outcome.summary.clone()
            };
            (
                StoredResult {
                    outcome: Outcome::Succeeded,
                    message,
                    output_json,
                    finished_at_unix_ms,
                },
                outcome.stickers,
            )
        }
        Err(failure) => (
            StoredResult {
                outcome: failure.outcome,
                message: failure.message,
                output_json: String::new(),
                finished_at_unix_ms,
            },
            Vec::new(),
        ),
    }
}

struct TaskFailure {
    outcome: Outcome,
    message: String,
}

impl TaskFailure {
    fn failed(message: String) -> Self {
        TaskFailure {
            outcome: Outcome::Failed,
            message,
        }
    }

    fn from_target(error: &crate::TargetError, cancel: &CancellationToken) -> Self {
        if matches!(error, crate::TargetError::Cancelled) || cancel.is_cancelled() {
            return TaskFailure {
                outcome: Outcome::Cancelled,
                message: "cancelled".to_owned(),
            };
        }
        TaskFailure::failed(error_chain(error))
    }
}

/// How long a target check may take on the agent (the server waits a little longer).
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

impl Tasks {
    /// Answers a `CheckTarget`: runs the kind's [`Target::check`](crate::Target::check)
    /// beside whatever else runs, and sends one `CheckResult`. Nothing is journalled: a
    /// check lost with a session is simply asked again.
    pub(crate) fn check(self: Arc<Self>, check: v1::CheckTarget) {
        tokio::spawn(async move {
            let outcome = match serde_json::from_slice::<DeployTask>(&check.payload_json) {
                Err(error) => Err(format!("the check's payload is not a target: {error}")),
                Ok(task) => match self.targets.get(&task.target.kind) {
                    None => Err(cannot_drive(&self.targets, &task.target.kind)),
                    Some(target) => {
                        match tokio::time::timeout(CHECK_TIMEOUT, target.check(&task)).await {
                            Ok(Ok(found)) => Ok(found),
                            Ok(Err(error)) => Err(error_chain(&error)),
                            Err(_) => Err(format!(
                                "no answer from the target within {} s",
                                CHECK_TIMEOUT.as_secs()
                            )),
                        }
                    }
                },
            };
            tracing::info!(check_id = %check.check_id, ok = outcome.is_ok(), "target checked");
            let (ok, message) = match outcome {
                Ok(found) => (true, found),
                Err(reason) => (false, reason),
            };
            let _ = self.outbox.send(v1::AgentMessage {
                body: Some(AgentBody::CheckResult(v1::CheckResult {
                    check_id: check.check_id,
                    ok,
                    message,
                })),
            });
        });
    }
}

impl Tasks {
    /// Answers a `RouteUpdate`: applies or reads the route on the router its settings
    /// name, beside whatever else runs, and sends one `RouteResult`. Nothing is
    /// journalled: the router is where a route lives, and a request lost with a session
    /// is asked again.
    pub(crate) fn route(self: Arc<Self>, update: v1::RouteUpdate) {
        tokio::spawn(async move {
            let result = self.targets.routers().answer(&update).await;
            if result.ok {
                tracing::info!(request_id = %update.request_id, kind = %update.router_kind, route = %update.route, read_only = update.read_only, method = %result.method, "route request carried out");
            } else {
                tracing::warn!(request_id = %update.request_id, kind = %update.router_kind, route = %update.route, read_only = update.read_only, error_kind = %result.error_kind, error = %result.message, "route request failed");
            }
            let _ = self.outbox.send(v1::AgentMessage {
                body: Some(AgentBody::RouteResult(result)),
            });
        });
    }
}

/// Why a task or check for `kind` cannot run on this agent.
fn cannot_drive(targets: &TargetRegistry, kind: &str) -> String {
    format!(
        "this agent cannot drive targets of kind {kind:?} (it drives: {})",
        if targets.is_empty() {
            "nothing".to_owned()
        } else {
            targets.kinds().join(", ")
        }
    )
}

/// Plans and applies a deploy task on its target kind.
async fn plan_and_apply(
    targets: &TargetRegistry,
    task: &DeployTask,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<crate::ApplyOutcome, TaskFailure> {
    let Some(target) = targets.get(&task.target.kind) else {
        return Err(TaskFailure::failed(cannot_drive(
            targets,
            &task.target.kind,
        )));
    };
    if let Some(slot) = &task.slot {
        // Payloads are checked when parsed; a task made in code is checked here.
        check_slot_name(slot).map_err(TaskFailure::failed)?;
        if !target.supports_slots() {
            return Err(TaskFailure::failed(format!(
                "targets of kind {} have no slots: cannot deploy {}@{} to slot {slot} of {}",
                task.target.kind, task.release, task.version, task.target.name
            )));
        }
        progress.report(format!(
            "planning {}@{} in slot {slot} of {} ({})",
            task.release, task.version, task.target.name, task.target.kind
        ));
    } else {
        progress.report(format!(
            "planning {}@{} on {} ({})",
            task.release, task.version, task.target.name, task.target.kind
        ));
    }
    let plan = tokio::select! {
        () = cancel.cancelled() => Err(crate::TargetError::Cancelled),
        plan = target.plan(task) => plan,
    }
    .map_err(|e| TaskFailure::from_target(&e, cancel))?;
    for step in &plan.steps {
        progress.report(format!("plan: {step}"));
    }
    if cancel.is_cancelled() {
        return Err(TaskFailure::from_target(
            &crate::TargetError::Cancelled,
            cancel,
        ));
    }
    target
        .apply(task, &plan, progress, cancel)
        .await
        .map_err(|e| TaskFailure::from_target(&e, cancel))
}

fn deadline_of(deadline_unix_ms: i64) -> Option<Instant> {
    if deadline_unix_ms <= 0 {
        return None;
    }
    let remaining_ms = deadline_unix_ms.saturating_sub(crate::now_unix_ms()).max(0);
    Some(Instant::now() + Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)))
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
