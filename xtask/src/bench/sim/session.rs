//! One simulated agent's `Connect` session: `Hello`, heartbeats, and the answers to the
//! tasks it is sent (a `TaskResult` `succeeded` for each, at once: the simulated `sim`
//! target has nothing to do). With a reconnect policy, a lost session is opened again
//! with agent-core's own backoff (exponential, full jitter), as `stella-agent` does.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::Rng;
use serde::Deserialize;
use stella_agent_core::transport::{self, GatewayUrl};
use stella_agent_core::{Backoff, BackoffConfig};
use stella_proto::v1::agent_gateway_client::AgentGatewayClient;
use stella_proto::v1::{
    agent_message, server_message, AgentMessage, Heartbeat, Hello, ServerMessage, TaskAssignment,
    TaskResult, TaskState,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Streaming;

use super::SimAgent;

/// How long the server may take to answer `Hello` with `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(60);
/// Without a reconnect policy: attempts to open a session before the agent counts as
/// failed.
const CONNECT_ATTEMPTS: u32 = 3;
/// Agent messages queued per session: a heartbeat every few seconds and a task result
/// now and then need no more.
const OUTBOUND_QUEUE: usize = 2;

/// Counters shared by all sessions.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Sessions that received `Welcome`, reconnections included.
    pub welcomed: AtomicUsize,
    /// Sessions open now.
    pub open: AtomicUsize,
    /// Agents that could not open a session (only without a reconnect policy).
    pub failed: AtomicUsize,
    /// Sessions that ended before the bench ended or killed them.
    pub lost: AtomicUsize,
    /// Attempts to open a session that failed: each is an error an agent saw.
    pub attempt_errors: AtomicUsize,
    /// Heartbeats handed to the transport.
    pub heartbeats_sent: AtomicU64,
    /// When the latest `Welcome` arrived, in µs since [`SessionContext::started`].
    pub last_welcome_micros: AtomicU64,
    first_error: Mutex<Option<String>>,
    first_attempt_error: Mutex<Option<String>>,
}

impl SessionStats {
    /// The first error any session hit, for the report.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    /// The first error of an attempt to open a session.
    pub fn first_attempt_error(&self) -> Option<String> {
        self.first_attempt_error.lock().ok().and_then(|e| e.clone())
    }

    /// Forgets the first errors, so a phase reports its own.
    pub fn clear_first_errors(&self) {
        for slot in [&self.first_error, &self.first_attempt_error] {
            if let Ok(mut first) = slot.lock() {
                *first = None;
            }
        }
    }

    fn record_error(&self, error: &anyhow::Error) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{error:#}"));
        }
    }
}

/// A task assignment as an agent received it.
#[derive(Debug, Clone)]
pub struct TaskFrame {
    /// The deployment named in its payload (empty if the payload named none).
    pub deployment_id: String,
    /// When the frame was read from the stream.
    pub at: Instant,
}

/// The tasks the agents were sent and what they answered.
#[derive(Debug, Default)]
pub struct TaskLog {
    frames: Mutex<Vec<TaskFrame>>,
    /// `TaskResult`s handed to the transport.
    pub results_sent: AtomicUsize,
    /// `TaskAck`s received: the server stored the result.
    pub acks: AtomicUsize,
    /// When the latest `TaskAck` arrived, in µs since [`SessionContext::started`].
    pub last_ack_micros: AtomicU64,
}

impl TaskLog {
    /// How many assignments were received so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The assignments received after the first `from`.
    pub fn frames_from(&self, from: usize) -> Vec<TaskFrame> {
        self.lock()
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    fn record(&self, assignment: &TaskAssignment) {
        #[derive(Deserialize)]
        struct Payload {
            deployment_id: String,
        }
        let at = Instant::now();
        let deployment_id = serde_json::from_slice::<Payload>(&assignment.payload_json)
            .map(|p| p.deployment_id)
            .unwrap_or_default();
        self.lock().push(TaskFrame { deployment_id, at });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TaskFrame>> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    /// Where to connect.
    pub gateway: GatewayUrl,
    /// The first message of every session (labels, capabilities and host facts).
    pub hello: Hello,
    /// Used when `Welcome` names no interval.
    pub default_heartbeat_interval: Duration,
    /// Time base of the `_micros` counters.
    pub started: Instant,
    /// Counters.
    pub stats: SessionStats,
    /// Tasks received and answered.
    pub tasks: TaskLog,
    /// Ends every session.
    pub shutdown: CancellationToken,
    /// Only open the mTLS connections, without calling `Connect`: separates what a
    /// connection costs the server (TCP, TLS, HTTP/2) from what a session adds.
    pub connections_only: bool,
    /// Reopen lost sessions with this backoff, forever; `None`: a lost session ends the
    /// agent.
    pub reconnect: Option<BackoffConfig>,
}

impl SessionContext {
    /// Micros since [`SessionContext::started`].
    pub fn micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Counts a session (or, with `connections_only`, a connection) as open.
    fn record_welcome(&self) {
        self.stats.welcomed.fetch_add(1, Ordering::Relaxed);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_welcome_micros
            .fetch_max(self.micros(), Ordering::Relaxed);
    }
}

/// How a session ended.
enum SessionEnd {
    /// The bench stopped or killed the agent.
    Stopped,
    /// The connection or the stream failed, or the server closed it.
    Lost(anyhow::Error),
}

/// Runs one agent until `shutdown`, until `kill` (its connection is dropped without
/// `Goodbye`, as when its process is killed), or, without a reconnect policy, until the
/// server ends its session. `permit` is held while connecting the first time, which
/// bounds concurrent handshakes.
pub async fn run_agent(
    agent: SimAgent,
    context: Arc<SessionContext>,
    permit: OwnedSemaphorePermit,
    kill: CancellationToken,
) {
    if context.connections_only {
        return hold_connection(&agent, &context, permit).await;
    }
    let stats = &context.stats;
    let mut permit = Some(permit);
    let mut backoff = context.reconnect.map(Backoff::new);
    let mut attempt = 0u32;
    loop {
        let opened = tokio::select! {
            () = kill.cancelled() => return,
            () = context.shutdown.cancelled() => return,
            opened = try_open_session(&agent, &context) => opened,
        };
        drop(permit.take());
        match opened {
            Ok(session) => {
                context.record_welcome();
                attempt = 0;
                if let Some(backoff) = backoff.as_mut() {
                    backoff.reset();
                }
                let end = hold_session(&context, session, &kill).await;
                stats.open.fetch_sub(1, Ordering::Relaxed);
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::Lost(error) => {
                        stats.lost.fetch_add(1, Ordering::Relaxed);
                        stats.record_error(&error.context(format!("{}: session lost", agent.name)));
                        if backoff.is_none() {
                            return;
                        }
                    }
                }
            }
            Err(error) => {
                attempt += 1;
                stats.attempt_errors.fetch_add(1, Ordering::Relaxed);
                stats.record_error(&error);
                if let Ok(mut first) = stats.first_attempt_error.lock() {
                    first.get_or_insert_with(|| format!("{error:#}"));
                }
                if backoff.is_none() && attempt >= CONNECT_ATTEMPTS {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let delay = match backoff.as_mut() {
            Some(backoff) => backoff.next_delay(),
            None => Duration::from_millis(200 * u64::from(attempt.max(1))),
        };
        tokio::select! {
            () = kill.cancelled() => return,
            () = context.shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Heartbeats and answers tasks until the session ends.
async fn hold_session(
    context: &SessionContext,
    session: Session,
    kill: &CancellationToken,
) -> SessionEnd {
    let Session {
        channel: _channel,
        outbound,
        mut inbound,
        heartbeat_interval,
    } = session;
    let stats = &context.stats;
    // A random phase spreads the heartbeats of agents that connected together.
    let phase_ms = rand::thread_rng().gen_range(0..heartbeat_interval.as_millis().max(1));
    let phase = Duration::from_millis(u64::try_from(phase_ms).unwrap_or(0));
    let mut ticker = tokio::time::interval_at(Instant::now() + phase, heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            () = context.shutdown.cancelled() => return SessionEnd::Stopped,
            () = kill.cancelled() => return SessionEnd::Stopped,
            _ = ticker.tick() => {
                sequence += 1;
                if outbound.send(heartbeat(sequence)).await.is_err() {
                    return SessionEnd::Lost(anyhow::anyhow!("the request stream closed"));
                }
                stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    if let Err(error) = answer(context, &outbound, message).await {
                        return SessionEnd::Lost(error);
                    }
                }
                Ok(None) => {
                    return SessionEnd::Lost(anyhow::anyhow!("the server ended the session"));
                }
                Err(status) => return SessionEnd::Lost(status.into()),
            }
        }
    }
}

/// A task is finished `succeeded` at once (the `sim` target has nothing to do); a
/// `TaskAck` is counted; anything else (desired state) is ignored.
async fn answer(
    context: &SessionContext,
    outbound: &mpsc::Sender<AgentMessage>,
    message: ServerMessage,
) -> anyhow::Result<()> {
    match message.body {
        Some(server_message::Body::TaskAssignment(assignment)) => {
            context.tasks.record(&assignment);
            let result = AgentMessage {
                body: Some(agent_message::Body::TaskResult(TaskResult {
                    task_id: assignment.task_id,
                    epoch: assignment.epoch,
                    state: TaskState::Succeeded as i32,
                    message: "simulated: nothing to do".to_owned(),
                    output_json: Vec::new(),
                    finished_at_unix_ms: unix_ms(),
                })),
            };
            outbound
                .send(result)
                .await
                .map_err(|_| anyhow::anyhow!("the request stream closed"))?;
            context.tasks.results_sent.fetch_add(1, Ordering::Relaxed);
        }
        Some(server_message::Body::TaskAck(_)) => {
            context.tasks.acks.fetch_add(1, Ordering::Relaxed);
            context
                .tasks
                .last_ack_micros
                .fetch_max(context.micros(), Ordering::Relaxed);
        }
        _ => {}
    }
    Ok(())
}

/// The `--connections-only` variant of [`run_agent`]: counts an open connection as
/// welcomed and holds it until `shutdown`.
async fn hold_connection(agent: &SimAgent, context: &SessionContext, permit: OwnedSemaphorePermit) {
    let connected = transport::connect(&context.gateway, agent.tls.clone())
        .await
        .with_context(|| format!("{}: connect", agent.name));
    drop(permit);
    let stats = &context.stats;
    match connected {
        Ok(_channel) => {
            context.record_welcome();
            context.shutdown.cancelled().await;
        }
        Err(error) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            stats.record_error(&error);
        }
    }
}

/// An open session: the channel must outlive the streams.
struct Session {
    channel: Channel,
    outbound: mpsc::Sender<AgentMessage>,
    inbound: Streaming<ServerMessage>,
    heartbeat_interval: Duration,
}

async fn try_open_session(agent: &SimAgent, context: &SessionContext) -> anyhow::Result<Session> {
    let name = &agent.name;
    // The agent's own transport (agent-core), so the server sees the same TLS and
    // HTTP/2 settings (keepalive PINGs included) as from real agents.
    let channel = transport::connect(&context.gateway, agent.tls.clone())
        .await
        .with_context(|| format!("{name}: connect"))?;
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    outbound
        .send(AgentMessage {
            body: Some(agent_message::Body::Hello(context.hello.clone())),
        })
        .await
        .context("queueing hello")?;
    let mut client = AgentGatewayClient::new(channel.clone());
    let welcome = async {
        let mut inbound = client
            .connect(ReceiverStream::new(queue))
            .await?
            .into_inner();
        let first = inbound.message().await?;
        Ok::<_, tonic::Status>((inbound, first))
    };
    let (inbound, first) = tokio::time::timeout(WELCOME_TIMEOUT, welcome)
        .await
        .with_context(|| format!("{name}: no welcome within {WELCOME_TIMEOUT:?}"))?
        .with_context(|| format!("{name}: Connect"))?;
    let Some(ServerMessage {
        body: Some(server_message::Body::Welcome(welcome)),
    }) = first
    else {
        bail!("{name}: the first server message was not a welcome: {first:?}");
    };
    let heartbeat_interval = match welcome.heartbeat_interval_seconds {
        0 => context.default_heartbeat_interval,
        seconds => Duration::from_secs(u64::from(seconds)),
    };
    Ok(Session {
        channel,
        outbound,
        inbound,
        heartbeat_interval,
    })
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn heartbeat(sequence: u64) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Heartbeat(Heartbeat {
            sequence,
            sent_at_unix_ms: unix_ms(),
        })),
    }
}
