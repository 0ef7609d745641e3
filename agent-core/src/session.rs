//! The agent's life once enrolled: the `Connect` session with its heartbeats, reconnects
//! with backoff, certificate renewal at half-life, and the tasks it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use stella_proto::v1;
use stella_proto::v1::agent_gateway_client::AgentGatewayClient;
use stella_proto::v1::agent_message::Body as AgentBody;
use stella_proto::v1::server_message::Body as ServerBody;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::drift::{parse_deploy_task, Deploying, DesiredStore, DriftLoop};
use crate::enrol::{enrol, renew};
use crate::error::{error_chain, AgentError};
use crate::fsutil;
use crate::host::HostFacts;
use crate::identity::Identity;
use crate::journal::{EntryState, Journal, JournalEntry, Outcome, StoredResult, RETENTION};
use crate::target::{DeployTask, Progress, TargetRegistry};
use crate::transport::{self, GatewayUrl};

/// The heartbeat interval when `Welcome` does not name one.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long the server has to answer `Hello` with `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// A session that lasted this long was healthy: the next reconnect starts a new backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// Messages queued towards the server in one session.
const SESSION_BUFFER: usize = 64;

/// Enrols if the data dir holds no identity, then keeps a session with the control plane
/// open (reconnecting with backoff, renewing the certificate at half-life) until
/// `shutdown` fires. Fails only when the agent cannot work at all: no identity and no way
/// to get one, or an unusable data dir.
pub async fn run(
    config: AgentConfig,
    targets: TargetRegistry,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let loaded = {
        let data_dir = config.data_dir.clone();
        fsutil::blocking(move || {
            Identity::recover(&data_dir)?;
            Identity::load(&data_dir)
        })
        .await?
    };
    let mut identity = match loaded {
        Some(identity) => identity,
        None => match enrol_until_done(&config, &shutdown).await? {
            Some(identity) => identity,
            None => return Ok(()),
        },
    };
    if let Some(grpc_url) = &config.grpc_url {
        if *grpc_url != identity.grpc_url {
            identity.grpc_url = grpc_url.clone();
            let saved = identity.clone();
            let data_dir = config.data_dir.clone();
            fsutil::blocking(move || saved.save_agent_json(&data_dir)).await?;
        }
    }
    let span = tracing::info_span!("agent", agent_id = %identity.agent_id, name = %identity.name);
    let agent = Agent::new(config, targets, identity).await?;
    Box::pin(agent.run(shutdown)).instrument(span).await
}

async fn enrol_until_done(
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Identity>, AgentError> {
    let mut backoff = Backoff::new(config.backoff);
    loop {
        match enrol(config).await {
            Ok(identity) => return Ok(Some(identity)),
            Err(error) if error.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %error_chain(&error),
                    retry_in_ms = delay.as_millis(),
                    "enrolment failed; retrying"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "enrolment failed");
                return Err(error);
            }
        }
    }
}

/// How a session ended, when it did not fail.
enum SessionEnd {
    Shutdown,
    ClosedByServer,
}

struct Agent {
    config: AgentConfig,
    identity: watch::Sender<Arc<Identity>>,
    tasks: Arc<Tasks>,
    outbox: mpsc::UnboundedReceiver<v1::AgentMessage>,
    heartbeat_sequence: u64,
    /// Whether a welcomed session is up: drift reports are sent only then.
    session_up: watch::Sender<bool>,
    /// For the drift loop, taken when it starts.
    drift_notify: Option<mpsc::UnboundedReceiver<String>>,
}

impl Agent {
    async fn new(
        config: AgentConfig,
        targets: TargetRegistry,
        identity: Identity,
    ) -> Result<Agent, AgentError> {
        let data_dir = config.data_dir.clone();
        let (journal, desired) = fsutil::blocking(move || {
            Ok((Journal::open(&data_dir)?, DesiredStore::load(&data_dir)))
        })
        .await?;
        let (outbox_tx, outbox) = mpsc::unbounded_channel();
        let (drift_notify_tx, drift_notify) = mpsc::unbounded_channel();
        let tasks = Arc::new(Tasks {
            agent_id: identity.agent_id.clone(),
            journal,
            targets,
            outbox: outbox_tx,
            running: Mutex::new(HashMap::new()),
            join_set: tokio::sync::Mutex::new(JoinSet::new()),
            desired: Arc::new(desired),
            deploying: Arc::new(Deploying::default()),
            drift_notify: drift_notify_tx,
        });
        let (identity, _) = watch::channel(Arc::new(identity));
        let (session_up, _) = watch::channel(false);
        Ok(Agent {
            config,
            identity,
            tasks,
            outbox,
            heartbeat_sequence: 0,
            session_up,
            drift_notify: Some(drift_notify),
        })
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        self.prune_journal().await;
        let renewal = tokio::spawn(
            renewal_loop(
                self.identity.clone(),
                self.config.clone(),
                shutdown.child_token(),
            )
            .in_current_span(),
        );
        let drift_shutdown = shutdown.child_token();
        let drift = self.start_drift_loop(drift_shutdown.clone());
        let mut backoff = Backoff::new(self.config.backoff);
        let mut revoked = None;
        loop {
            let started = Instant::now();
            let mut welcomed = false;
            let result = self.session(&shutdown, &mut welcomed).await;
            self.session_up.send_replace(false);
            self.discard_stale_outbox();
            if welcomed || started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            let delay = match result {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::ClosedByServer) => {
                    let delay = backoff.next_delay();
                    tracing::info!(
                        reconnect_in_ms = delay.as_millis(),
                        "the server closed the session"
                    );
                    delay
                }
                Err(error) if error.is_revoked() => {
                    tracing::error!(error = %error_chain(&error), "this agent was revoked; stopping");
                    revoked = Some(error);
                    break;
                }
                Err(error) if error.is_refused() => {
                    let delay = backoff.refused_delay();
                    tracing::error!(
                        error = %error_chain(&error),
                        retry_in_ms = delay.as_millis(),
                        "the control plane refused this agent; retrying at the maximum backoff"
                    );
                    delay
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %error_chain(&error),
                        reconnect_in_ms = delay.as_millis(),
                        "session failed"
                    );
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        renewal.abort();
        drift_shutdown.cancel();
        if let Err(error) = drift.await {
            if error.is_panic() {
                tracing::error!("the drift loop panicked");
            }
        }
        // Stopping midway is the same as a crash: the journal keeps these tasks as
        // running, and they run again when the server re-assigns them.
        self.tasks.join_set.lock().await.shutdown().await;
        if let Some(error) = revoked {
            return Err(error);
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// Starts the drift loop, and the watches of the target kinds that feed it.
    fn start_drift_loop(&mut self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let notify = self
            .drift_notify
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        for kind in self.tasks.targets.kinds() {
            if let Some(target) = self.tasks.targets.get(kind) {
                target.watch(self.tasks.drift_notify.clone());
            }
        }
        let drift = DriftLoop {
            interval: Duration::from_secs(self.config.drift_interval_seconds),
            targets: self.tasks.targets.clone(),
            desired: Arc::clone(&self.tasks.desired),
            deploying: Arc::clone(&self.tasks.deploying),
            outbox: self.tasks.outbox.clone(),
            session_up: self.session_up.subscribe(),
            notify,
        };
        tokio::spawn(drift.run(shutdown).in_current_span())
    }

    async fn prune_journal(&self) {
        let journal = self.tasks.journal.clone();
        match fsutil::blocking(move || journal.prune(RETENTION, crate::now_unix_ms())).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "pruned finished tasks from the journal"),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "could not prune the journal");
            }
        }
    }

    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        welcomed: &mut bool,
    ) -> Result<SessionEnd, AgentError> {
        let identity = self.identity.borrow().clone();
        let gateway = GatewayUrl::parse(&identity.grpc_url)?;
        let tls = stella_pki::agent_client_tls_config(
            &identity.ca_pem,
            &identity.cert_pem,
            &identity.key_pem,
        )
        .map_err(AgentError::pki("configuring mutual tls"))?;
        let channel = tokio::select! {
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            channel = transport::connect(&gateway, tls) => {
                channel.map_err(|e| transport::refine_connect_error(&gateway, e))?
            }
        };

        let (upstream, upstream_rx) = mpsc::channel(SESSION_BUFFER);
        let hello = self.hello().await?;
        upstream
            .send(hello)
            .await
            .map_err(|_| stream_closed("before Hello was sent"))?;
        let mut client = AgentGatewayClient::new(channel);
        let response = tokio::select! {
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            response = client.connect(ReceiverStream::new(upstream_rx)) => {
                response.map_err(|status| transport::classify_status("Connect", &gateway, status))?
            }
        };
        let mut inbound = response.into_inner();

        let welcome = tokio::select! {
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            () = tokio::time::sleep(WELCOME_TIMEOUT) => {
                return Err(AgentError::InvalidResponse {
                    call: "Connect",
                    reason: format!("no Welcome within {} s", WELCOME_TIMEOUT.as_secs()),
                });
            }
            message = inbound.message() => match message {
                Ok(Some(v1::ServerMessage { body: Some(ServerBody::Welcome(welcome)) })) => welcome,
                Ok(Some(_)) => {
                    return Err(AgentError::InvalidResponse {
                        call: "Connect",
                        reason: "the first message was not Welcome".to_owned(),
                    });
                }
                Ok(None) => return Err(stream_closed("before Welcome")),
                Err(status) => return Err(transport::classify_status("Connect", &gateway, status)),
            },
        };
        *welcomed = true;
        if welcome.agent_id != identity.agent_id {
            tracing::warn!(
                welcome_agent_id = %welcome.agent_id,
                "the server welcomed a different agent id than our certificate names"
            );
        }
        let heartbeat_interval = match welcome.heartbeat_interval_seconds {
            0 => DEFAULT_HEARTBEAT_INTERVAL,
            seconds => Duration::from_secs(u64::from(seconds)),
        };
        tracing::info!(
            grpc_url = %gateway.as_str(),
            heartbeat_interval_seconds = heartbeat_interval.as_secs(),
            "connected"
        );

        self.discard_stale_outbox();
        self.resend_unacknowledged(&upstream).await?;
        self.session_up.send_replace(true);

        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_interval, heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.tasks.reap().await;
            tokio::select! {
                () = shutdown.cancelled() => {
                    say_goodbye(upstream, inbound).await;
                    return Ok(SessionEnd::Shutdown);
                }
                _ = heartbeat.tick() => {
                    self.heartbeat_sequence += 1;
                    let beat = v1::Heartbeat {
                        sequence: self.heartbeat_sequence,
                        sent_at_unix_ms: crate::now_unix_ms(),
                    };
                    send(&upstream, AgentBody::Heartbeat(beat)).await?;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.on_server_message(message).await,
                    Ok(None) => return Ok(SessionEnd::ClosedByServer),
                    Err(status) => return Err(transport::classify_status("Connect", &gateway, status)),
                },
                Some(message) = self.outbox.recv() => {
                    upstream
                        .send(message)
                        .await
                        .map_err(|_| stream_closed("while sending"))?;
                }
            }
        }
    }

    async fn hello(&self) -> Result<v1::AgentMessage, AgentError> {
        let host = HostFacts::collect_async().await;
        let journal = self.tasks.journal.clone();
        let in_flight = fsutil::blocking(move || journal.in_flight()).await?;
        let hello = v1::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: self
                .tasks
                .targets
                .kinds()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            labels: self.config.labels.clone().into_iter().collect(),
            host: Some(host.into()),
            in_flight: in_flight.iter().map(JournalEntry::status).collect(),
        };
        Ok(v1::AgentMessage {
            body: Some(AgentBody::Hello(hello)),
        })
    }

    /// Drops what queued up for the server while there was no session, so a long
    /// disconnection does not pile up memory: progress lines and results are in the
    /// journal, re-sent by [`Agent::resend_unacknowledged`], and drift is reported afresh
    /// by the first round of the next session. Sticker reports (one per
    /// deployed component) are kept.
    fn discard_stale_outbox(&mut self) {
        let mut kept = Vec::new();
        while let Ok(message) = self.outbox.try_recv() {
            if matches!(message.body, Some(AgentBody::StickerReport(_))) {
                kept.push(message);
            }
        }
        for message in kept {
            let _ = self.tasks.outbox.send(message);
        }
    }

    async fn resend_unacknowledged(
        &self,
        upstream: &mpsc::Sender<v1::AgentMessage>,
    ) -> Result<(), AgentError> {
        let journal = self.tasks.journal.clone();
        let entries = fsutil::blocking(move || journal.in_flight()).await?;
        for entry in entries {
            // Progress lines first, so the server has them before it sees the result.
            let journal = self.tasks.journal.clone();
            let task_id = entry.task_id.clone();
            let lines = fsutil::blocking(move || journal.read_lines(&task_id))
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(task_id = %entry.task_id, error = %error_chain(&error), "cannot read journaled progress lines");
                    Vec::new()
                });
            if !lines.is_empty() {
                tracing::debug!(task_id = %entry.task_id, lines = lines.len(), "re-sending journaled progress lines");
            }
            for line in lines {
                let update = v1::TaskUpdate {
                    task_id: entry.task_id.clone(),
                    epoch: entry.epoch,
                    message: line.message,
                    at_unix_ms: line.at_unix_ms,
                    line: line.line,
                };
                send(upstream, AgentBody::TaskUpdate(update)).await?;
            }
            if entry.state != EntryState::Finished {
                continue;
            }
            let Some(result) = entry.task_result(entry.epoch) else {
                continue;
            };
            tracing::info!(task_id = %entry.task_id, "re-sending an unacknowledged task result");
            send(upstream, AgentBody::TaskResult(result)).await?;
        }
        Ok(())
    }

    async fn on_server_message(&self, message: v1::ServerMessage) {
        match message.body {
            Some(ServerBody::TaskAssignment(assignment)) => {
                Arc::clone(&self.tasks).assign(assignment).await;
            }
            Some(ServerBody::CancelTask(cancel)) => self.tasks.cancel(&cancel),
            Some(ServerBody::TaskAck(ack)) => self.tasks.acknowledge(ack).await,
            Some(ServerBody::DesiredState(desired)) => self.tasks.desired.replace(&desired).await,
            Some(ServerBody::Welcome(_)) => {
                tracing::debug!("ignoring a repeated Welcome");
            }
            None => tracing::debug!("ignoring an empty server message"),
        }
    }
}

/// How long a clean stop waits for the server to take the goodbye and close the stream.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Tells the server this agent stops cleanly (it shows `disconnected` at once), ends our
/// side of the stream and waits briefly for the server to end its side, so the goodbye
/// is not lost in a connection torn down under it.
async fn say_goodbye(
    upstream: mpsc::Sender<v1::AgentMessage>,
    mut inbound: tonic::Streaming<v1::ServerMessage>,
) {
    let goodbye = v1::AgentMessage {
        body: Some(AgentBody::Goodbye(v1::Goodbye {
            reason: "the agent is stopping".to_owned(),
        })),
    };
    let sent = tokio::time::timeout(GOODBYE_TIMEOUT, upstream.send(goodbye)).await;
    drop(upstream);
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        tracing::info!("said goodbye to the control plane");
    }
}

fn stream_closed(when: &str) -> AgentError {
    AgentError::InvalidResponse {
        call: "Connect",
        reason: format!("the stream closed {when}"),
    }
}

async fn send(
    upstream: &mpsc::Sender<v1::AgentMessage>,
    body: AgentBody,
) -> Result<(), AgentError> {
    upstream
        .send(v1::AgentMessage { body: Some(body) })
        .await
        .map_err(|_| stream_closed("while sending"))
}

async fn renewal_loop(
    identity: watch::Sender<Arc<Identity>>,
    config: AgentConfig,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.backoff);
    let mut retry_in: Option<Duration> = None;
    loop {
        let current = identity.borrow().clone();
        let wait = retry_in.take().unwrap_or_else(|| {
            let now = OffsetDateTime::now_utc();
            Duration::try_from(current.renew_at(now) - now).unwrap_or_default()
        });
        tracing::debug!(
            renew_in_seconds = wait.as_secs(),
            "next certificate renewal"
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match renew(&current, &config.data_dir).await {
            Ok(renewed) => {
                backoff.reset();
                identity.send_replace(Arc::new(renewed));
            }
            Err(error) => {
                let delay = if error.is_refused() {
                    backoff.refused_delay()
                } else {
                    backoff.next_delay()
                };
                if current.not_after <= OffsetDateTime::now_utc() {
                    tracing::error!(
                        error = %error_chain(&error),
                        not_after = %current.not_after,
                        "the agent certificate expired and cannot be renewed; \
                         enrol again with a new join token"
                    );
                } else {
                    tracing::warn!(
                        error = %error_chain(&error),
                        retry_in_ms = delay.as_millis(),
                        "certificate renewal failed"
                    );
                }
                retry_in = Some(delay);
            }
        }
    }
}

/// The tasks of this agent: the journal, what runs now, and how results reach the server.
struct Tasks {
    agent_id: String,
    journal: Journal,
    targets: TargetRegistry,
    /// Towards the current session (or the next one, when disconnected).
    outbox: mpsc::UnboundedSender<v1::AgentMessage>,
    running: Mutex<HashMap<String, RunningTask>>,
    join_set: tokio::sync::Mutex<JoinSet<()>>,
    /// The targets' desired state, updated by successful deploys.
    desired: Arc<DesiredStore>,
    /// Targets a deploy is changing, left alone by the drift loop.
    deploying: Arc<Deploying>,
    /// Asks the drift loop to check a target (after a deploy of it).
    drift_notify: mpsc::UnboundedSender<String>,
}

struct RunningTask {
    /// The newest lease epoch the server assigned the task under.
    epoch: Arc<AtomicU64>,
    cancel: CancellationToken,
    cancel_reason: Arc<OnceLock<String>>,
}

impl Tasks {
    async fn assign(self: Arc<Self>, assignment: v1::TaskAssignment) {
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
    async fn acknowledge(&self, ack: v1::TaskAck) {
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

    fn cancel(&self, request: &v1::CancelTask) {
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
            target = %task.target.name
        );
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

    fn send_result(&self, task_id: &str, epoch: u64, result: &StoredResult) {
        self.push(AgentBody::TaskResult(v1::TaskResult {
            task_id: task_id.to_owned(),
            epoch,
            state: result.outcome.to_proto().into(),
            message: result.message.clone(),
            output_json: result.output_json.clone().into_bytes(),
            finished_at_unix_ms: result.finished_at_unix_ms,
        }));
    }

    fn push(&self, body: AgentBody) {
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

    async fn reap(&self) {
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
        other => Err(TaskFailure::failed(format!(
            "unknown task kind {other:?}; this agent runs \"deploy\" tasks"
        ))),
    };
    let finished_at_unix_ms = crate::now_unix_ms();
    match outcome {
        Ok(outcome) => {
            let output_json = serde_json::to_string(&outcome).unwrap_or_default();
            let message = if outcome.summary.is_empty() {
                "deployed".to_owned()
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

/// Plans and applies a deploy task on its target kind.
async fn plan_and_apply(
    targets: &TargetRegistry,
    task: &DeployTask,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<crate::ApplyOutcome, TaskFailure> {
    let Some(target) = targets.get(&task.target.kind) else {
        return Err(TaskFailure::failed(format!(
            "this agent cannot drive targets of kind {:?} (it drives: {})",
            task.target.kind,
            if targets.is_empty() {
                "nothing".to_owned()
            } else {
                targets.kinds().join(", ")
            }
        )));
    };
    progress.report(format!(
        "planning {}@{} on {} ({})",
        task.release, task.version, task.target.name, task.target.kind
    ));
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
