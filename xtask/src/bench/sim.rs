//! Simulated agents: enrolment through the real gateway, then one mTLS `Connect`
//! session each that says `Hello` and heartbeats, as `stella-agent` does. Many of them
//! share one process (omicron's simulated sled agent idea), so they are kept small: one
//! task, one TLS connection and a two-slot queue per agent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::Rng;
use stella_agent_core::transport::{self, GatewayUrl};
use stella_pki::{AgentKey, Fingerprint};
use stella_proto::v1::agent_gateway_client::AgentGatewayClient;
use stella_proto::v1::{
    agent_message, server_message, AgentMessage, EnrollRequest, Heartbeat, Hello, ServerMessage,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Streaming;

/// How long one `Enroll` call may take.
const ENROL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to answer `Hello` with `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts to open a session before the agent counts as failed.
const CONNECT_ATTEMPTS: u32 = 3;
/// Agent messages queued per session: a heartbeat every few seconds needs no more.
const OUTBOUND_QUEUE: usize = 2;

/// An enrolled simulated agent: its name and the mTLS config holding its certificate
/// (the id the server gave it is in that certificate; nothing here needs it).
#[derive(Debug)]
pub struct SimAgent {
    /// The name it enrolled with.
    pub name: String,
    tls: rustls::ClientConfig,
}

/// Enrols simulated agents over a few shared TLS connections (HTTP/2 multiplexes the
/// calls), pinning the CA like a real agent.
#[derive(Debug)]
pub struct Enroller {
    channels: Vec<Channel>,
    labels: HashMap<String, String>,
}

impl Enroller {
    /// Opens `connections` enrolment connections to the gateway.
    pub async fn new(
        gateway: &GatewayUrl,
        ca_pin: &Fingerprint,
        connections: usize,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let tls = stella_pki::enrolment_client_tls_config(ca_pin)?;
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            channels.push(transport::connect(gateway, tls.clone()).await?);
        }
        Ok(Enroller { channels, labels })
    }

    /// Enrols agent number `index` (named `sim-00001` for index 1) with `join_token`.
    pub async fn enrol(&self, index: usize, join_token: String) -> anyhow::Result<SimAgent> {
        let name = format!("sim-{index:05}");
        let key = AgentKey::generate()?;
        let csr_der = key.csr_der(&name)?;
        let channel = self.channels[index % self.channels.len()].clone();
        let request = EnrollRequest {
            join_token,
            csr_der,
            name: name.clone(),
            labels: self.labels.clone(),
        };
        let response = tokio::time::timeout(
            ENROL_TIMEOUT,
            AgentGatewayClient::new(channel).enroll(request),
        )
        .await
        .with_context(|| format!("enrolling {name} took longer than {ENROL_TIMEOUT:?}"))?
        .with_context(|| format!("enrolling {name}"))?
        .into_inner();
        let tls = stella_pki::agent_client_tls_config(
            &response.ca_pem,
            &response.certificate_pem,
            &key.key_pem(),
        )?;
        Ok(SimAgent { name, tls })
    }
}

/// Counters shared by all sessions.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Sessions that received `Welcome`.
    pub welcomed: AtomicUsize,
    /// Agents that could not open a session.
    pub failed: AtomicUsize,
    /// Sessions that ended before the bench did.
    pub lost: AtomicUsize,
    /// Heartbeats handed to the transport.
    pub heartbeats_sent: AtomicU64,
    /// When the latest `Welcome` arrived, in µs since [`SessionContext::started`].
    pub last_welcome_micros: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl SessionStats {
    /// The first error any session hit, for the report.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    fn record_error(&self, error: &anyhow::Error) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{error:#}"));
        }
    }
}

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    /// Where to connect.
    pub gateway: GatewayUrl,
    /// The first message of every session (labels and host facts of the simulation).
    pub hello: Hello,
    /// Used when `Welcome` names no interval.
    pub default_heartbeat_interval: Duration,
    /// Time base of [`SessionStats::last_welcome_micros`].
    pub started: Instant,
    /// Counters.
    pub stats: SessionStats,
    /// Ends every session.
    pub shutdown: CancellationToken,
    /// Only open the mTLS connections, without calling `Connect`: separates what a
    /// connection costs the server (TCP, TLS, HTTP/2) from what a session adds.
    pub connections_only: bool,
}

impl SessionContext {
    /// Counts a session (or, with `connections_only`, a connection) as open.
    fn record_welcome(&self) {
        self.stats.welcomed.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats
            .last_welcome_micros
            .fetch_max(micros, Ordering::Relaxed);
    }
}

/// Runs one agent's session until `shutdown` or until the server ends it. `permit` is
/// held while connecting, which bounds concurrent handshakes.
pub async fn run_session(
    agent: SimAgent,
    context: Arc<SessionContext>,
    permit: OwnedSemaphorePermit,
) {
    if context.connections_only {
        return hold_connection(&agent, &context, permit).await;
    }
    let opened = open_session(&agent, &context).await;
    drop(permit);
    let session = match opened {
        Ok(session) => session,
        Err(error) => {
            context.stats.failed.fetch_add(1, Ordering::Relaxed);
            context.stats.record_error(&error);
            return;
        }
    };
    let stats = &context.stats;
    context.record_welcome();

    let Session {
        channel: _channel,
        outbound,
        mut inbound,
        heartbeat_interval,
    } = session;
    // A random phase spreads the heartbeats of agents that connected together.
    let phase_ms = rand::thread_rng().gen_range(0..heartbeat_interval.as_millis().max(1));
    let phase = Duration::from_millis(u64::try_from(phase_ms).unwrap_or(0));
    let mut ticker = tokio::time::interval_at(Instant::now() + phase, heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    let ended: Option<anyhow::Error> = loop {
        tokio::select! {
            _ = context.shutdown.cancelled() => break None,
            _ = ticker.tick() => {
                sequence += 1;
                if outbound.send(heartbeat(sequence)).await.is_err() {
                    break Some(anyhow::anyhow!("the request stream closed"));
                }
                stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            }
            message = inbound.message() => match message {
                // Nothing is deployed during the bench; other messages are ignored.
                Ok(Some(_)) => {}
                Ok(None) => break Some(anyhow::anyhow!("the server ended the session")),
                Err(status) => break Some(status.into()),
            }
        }
    };
    if let Some(error) = ended {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        stats.record_error(&error.context(format!("{}: session lost", agent.name)));
    }
}

/// The `--connections-only` variant of [`run_session`]: counts an open connection as
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

async fn open_session(agent: &SimAgent, context: &SessionContext) -> anyhow::Result<Session> {
    let mut attempt = 1;
    loop {
        match try_open_session(agent, context).await {
            Ok(session) => return Ok(session),
            Err(error) if attempt >= CONNECT_ATTEMPTS => return Err(error),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
        }
    }
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

fn heartbeat(sequence: u64) -> AgentMessage {
    let sent_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    AgentMessage {
        body: Some(agent_message::Body::Heartbeat(Heartbeat {
            sequence,
            sent_at_unix_ms,
        })),
    }
}
