//! The agent gateway: `stella.agent.v1.AgentGateway` over TLS (tonic). The only code
//! that speaks gRPC.
//!
//! TLS is terminated here, not by tonic, so that the handshake can consult the live
//! revocation set and each connection carries the verified peer identity
//! ([`PeerInfo`]) into the request extensions. Client certificates are optional at the
//! TLS layer because `Enroll` is open to agents without one; `Connect` and `Renew`
//! refuse a request whose connection carries no verified agent certificate.

mod notify;
pub mod sessions;
pub(crate) mod tls;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use stella_pki::AgentIdentity;
use stella_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use stella_proto::v1::{
    agent_message, server_message, AgentMessage, EnrollRequest, EnrollResponse, Hello,
    RenewRequest, RenewResponse, ServerMessage, Welcome,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::app::{now_ms, App};
use crate::domain::{HelloRecord, HostFacts};
use crate::tenants::Tenants;

pub use notify::run_dispatch_listener;
pub use tls::PeerInfo;

/// How long a new stream may take to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Server messages buffered per session before the sender waits.
const SESSION_QUEUE: usize = 16;

/// Serves the gateway on `listener` until `shutdown`.
pub async fn serve(
    tenants: Arc<Tenants>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let app = tenants.default_app().clone();
    let tls = tls::server_config(&app);
    let tls = match tls {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(error = %crate::error::ErrorChain(&error), "gateway tls config");
            return Ok(());
        }
    };
    let incoming = tls::incoming(listener, tls, app.clone(), shutdown.clone());
    let service = AgentGatewayServer::new(Gateway { tenants });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Caps on in-flight data per agent (hyper's default is 1 MiB per connection); agent
        // messages are small, and a lagging gateway must not buffer 1 MiB from each agent.
        .initial_stream_window_size(Some(64 * 1024))
        .initial_connection_window_size(Some(128 * 1024))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// Background work of the gateway for one tenant: batched heartbeat writes, task
/// deadlines and reminders of tasks waiting for unavailable agents, and tasks created or
/// cancelled on other replicas for agents connected here. (Revocations are synced for
/// every tenant at once by [`Tenants::refresh`].)
pub async fn run_background(app: Arc<App>, shutdown: CancellationToken) {
    let mut flush = tokio::time::interval(Duration::from_millis(
        app.config.heartbeat_flush_interval_ms,
    ));
    let mut deadlines = tokio::time::interval(Duration::from_secs(5));
    let mut pending = tokio::time::interval(Duration::from_secs(2));
    pending.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    deadlines.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = flush.tick() => {
                if let Err(error) = app.flush_heartbeats().await {
                    tracing::warn!(%error, "heartbeat flush failed; will retry");
                }
            }
            _ = deadlines.tick() => {
                if let Err(error) = app.expire_tasks().await {
                    tracing::warn!(%error, "task deadline sweep failed; will retry");
                }
                if let Err(error) = app.report_waiting_tasks().await {
                    tracing::warn!(%error, "waiting task report failed; will retry");
                }
            }
            _ = pending.tick() => {
                if let Err(error) = app.dispatch_pending().await {
                    tracing::warn!(%error, "pending task dispatch failed; will retry");
                }
                if let Err(error) = app.propagate_cancellations().await {
                    tracing::warn!(%error, "cancellation propagation failed; will retry");
                }
            }
        }
    }
    // Last write so a clean shutdown loses no heartbeat.
    if let Err(error) = app.flush_heartbeats().await {
        tracing::warn!(%error, "final heartbeat flush failed");
    }
}

/// The tonic service: enrolment goes to the tenant holding the join token, a session
/// to the tenant its agent belongs to.
#[derive(Debug)]
struct Gateway {
    tenants: Arc<Tenants>,
}

fn peer_identity<T>(request: &Request<T>) -> Result<AgentIdentity, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.identity.clone())
        .ok_or_else(|| Status::unauthenticated("a client certificate is required for this call"))
}

fn unix_seconds(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn hello_record(hello: Hello, at_ms: i64) -> HelloRecord {
    let host = hello.host.unwrap_or_default();
    HelloRecord {
        agent_version: hello.agent_version,
        capabilities: {
            let mut kinds = hello.capabilities;
            kinds.sort();
            kinds.dedup();
            kinds
        },
        labels: hello.labels.into_iter().collect::<BTreeMap<_, _>>(),
        host: HostFacts {
            hostname: host.hostname,
            os_name: host.os_name,
            os_version: host.os_version,
            kernel_version: host.kernel_version,
            arch: host.arch,
            cpu_count: host.cpu_count,
            memory_total_bytes: host.memory_total_bytes,
            boot_time_unix_seconds: host.boot_time_unix_seconds,
        },
        at_ms,
    }
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentGateway for Gateway {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let request = request.into_inner();
        let enrolled = self
            .tenants
            .enroll(
                &request.join_token,
                &request.csr_der,
                &request.name,
                request.labels.into_iter().collect(),
            )
            .await?;
        Ok(Response::new(EnrollResponse {
            agent_id: enrolled.identity.agent_id,
            trust_domain: enrolled.identity.trust_domain,
            certificate_pem: enrolled.certificate.cert_pem,
            ca_pem: self.tenants.default_app().pki.ca.cert_pem().to_owned(),
            not_after_unix_seconds: unix_seconds(enrolled.certificate.not_after),
        }))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let identity = peer_identity(&request)?;
        let app = self.tenants.app_of_agent(&identity.agent_id).await?;
        let certificate = app.renew(&identity, &request.into_inner().csr_der).await?;
        Ok(Response::new(RenewResponse {
            certificate_pem: certificate.cert_pem,
            ca_pem: app.pki.ca.cert_pem().to_owned(),
            not_after_unix_seconds: unix_seconds(certificate.not_after),
        }))
    }

    type ConnectStream = ServerStream;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let identity = peer_identity(&request)?;
        let app = self.tenants.app_of_agent(&identity.agent_id).await?;
        let agent = app.authorize_agent(&identity).await?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        let in_flight = hello.in_flight.len();
        let hello_at_ms = now_ms();
        app.store
            .record_hello(&agent.id, &hello_record(hello, hello_at_ms))
            .await
            .map_err(crate::error::AppError::from)?;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let guard = app.sessions.open(&agent.id, tx.clone());
        let welcome = ServerMessage {
            body: Some(server_message::Body::Welcome(Welcome {
                agent_id: agent.id.clone(),
                agent_name: agent.name.clone(),
                heartbeat_interval_seconds: app.config.heartbeat_interval_seconds,
                server_time_unix_ms: now_ms(),
            })),
        };
        // The channel is new and empty: this cannot wait.
        let _ = tx.try_send(Box::new(Ok(welcome)));
        match app.desired_state_for(&agent.id).await {
            Ok(desired) => {
                let _ = tx.try_send(Box::new(Ok(desired)));
            }
            Err(error) => tracing::warn!(%error, "cannot build the agent's desired state"),
        }
        tracing::info!(agent_id = %agent.id, agent = %agent.name, in_flight, "agent session opened");
        let span = tracing::info_span!("agent_session", agent_id = %agent.id);
        tokio::spawn(
            run_session(
                app.clone(),
                agent.id.clone(),
                hello_at_ms,
                inbound,
                tx,
                guard,
            )
            .instrument(span.clone()),
        );
        // Tasks waiting for this agent, and those it had in flight (re-assigned under a
        // new epoch; its journal answers the ones it finished).
        tokio::spawn(async move { app.dispatch_to(&agent.id).await }.instrument(span));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|item| *item),
        )))
    }
}

/// Reads the agent's messages until the session ends. A session that the agent's side
/// ended without a `Goodbye` (its process killed, its connection cut) is recorded as
/// lost, so the agent shows unreachable after one heartbeat interval unless it comes
/// back; one the server closed (replaced by a newer session, revoked, shutting down) is
/// not.
async fn run_session(
    app: Arc<App>,
    agent_id: String,
    hello_at_ms: i64,
    mut inbound: Streaming<AgentMessage>,
    tx: sessions::Outbox,
    guard: sessions::SessionGuard,
) {
    app.metrics.agent_sessions.inc();
    let mut last_heard_ms = hello_at_ms;
    let mut said_goodbye = false;
    let lost = loop {
        tokio::select! {
            _ = guard.closed.cancelled() => {
                let reason = guard.close_reason().unwrap_or(sessions::CloseReason::ShuttingDown);
                tracing::info!(?reason, "closing agent session");
                let _ = tx.send(Box::new(Err(reason.status()))).await;
                break false;
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    last_heard_ms = last_heard_ms.max(now_ms());
                    said_goodbye |= matches!(message.body, Some(agent_message::Body::Goodbye(_)));
                    handle_agent_message(&app, &agent_id, message).await;
                }
                Ok(None) => {
                    tracing::info!(said_goodbye, "agent closed its session");
                    break !said_goodbye;
                }
                Err(status) => {
                    tracing::info!(code = ?status.code(), message = status.message(), said_goodbye, "agent session ended");
                    break !said_goodbye;
                }
            }
        }
    };
    app.sessions.remove(&agent_id, guard.session_id);
    app.metrics.agent_sessions.dec();
    if lost {
        if let Err(error) = app
            .store
            .record_session_lost(&agent_id, now_ms(), last_heard_ms)
            .await
        {
            tracing::warn!(error = %crate::error::ErrorChain(&error), "cannot record the lost session");
        }
    }
}

async fn handle_agent_message(app: &Arc<App>, agent_id: &str, message: AgentMessage) {
    let outcome = match message.body {
        Some(agent_message::Body::Heartbeat(_)) => {
            app.heartbeats.record(agent_id, now_ms());
            app.metrics.heartbeats.inc();
            Ok(())
        }
        Some(agent_message::Body::Hello(_)) => {
            tracing::warn!("ignoring a second hello on an open session");
            Ok(())
        }
        Some(agent_message::Body::TaskUpdate(update)) => {
            app.record_task_update(agent_id, &update).await
        }
        Some(agent_message::Body::TaskResult(result)) => {
            app.record_task_result(agent_id, &result).await
        }
        Some(agent_message::Body::StickerReport(report)) => {
            tracing::debug!(target = %report.target, component = %report.component, "sticker report");
            Ok(())
        }
        Some(agent_message::Body::DriftReport(report)) => app.record_drift(agent_id, &report).await,
        Some(agent_message::Body::Goodbye(goodbye)) => {
            app.record_goodbye(agent_id, &goodbye.reason).await
        }
        Some(agent_message::Body::CheckResult(result)) => {
            app.complete_check(agent_id, result);
            Ok(())
        }
        Some(agent_message::Body::RouteResult(result)) => {
            app.complete_route(agent_id, result);
            Ok(())
        }
        None => {
            tracing::debug!("empty agent message");
            Ok(())
        }
    };
    if let Err(error) = outcome {
        tracing::warn!(code = error.code, %error, "agent message not applied");
    }
}
