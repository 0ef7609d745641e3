//! The agent's life once enrolled: the `Connect` session with its heartbeats, reconnects
//! with backoff, certificate renewal at half-life, and the tasks it runs.

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
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
use crate::desired::DesiredStore;
use crate::drift::{Deploying, DriftLoop};
use crate::enrol::{enrol, renew};
use crate::error::{error_chain, AgentError};
use crate::fsutil;
use crate::host::HostFacts;
use crate::identity::Identity;
use crate::journal::{EntryState, Journal, JournalEntry, RETENTION};
use crate::target::TargetRegistry;
use crate::tasks::Tasks;
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
            held: Arc::default(),
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
            capabilities: self.tasks.targets.capabilities(),
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
            Some(ServerBody::CheckTarget(check)) => Arc::clone(&self.tasks).check(check),
            Some(ServerBody::RouteUpdate(update)) => Arc::clone(&self.tasks).route(update),
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
