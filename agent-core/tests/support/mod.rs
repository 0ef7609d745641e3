//! Test support for agent-core: a scripted control plane (a real tonic `AgentGateway` over
//! real TLS from `stella-pki`, on a loopback port 0) that can acknowledge results and send
//! a desired state, a counting target, and a fake target for the drift loop.
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stella_agent_core::{
    async_trait, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, ObservedComponent,
    Plan, Progress, RegistryCredential, Sticker, Target, TargetError, TargetSpec,
};
use stella_pki::{AgentIdentity, CertificateAuthority, JoinToken, RevocationList};
use stella_proto::v1;
use stella_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

pub const TRUST_DOMAIN: &str = "stella.local";
/// Generous: the machine running the tests is small and shared.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `probe` until it returns `Some`, failing the test at `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the scripted control plane saw and does; shared with the test.
#[derive(Debug)]
pub struct Script {
    pub ca: CertificateAuthority,
    /// Join tokens the server accepts (single use).
    tokens: Mutex<HashSet<String>>,
    pub cert_validity: Mutex<Duration>,
    pub heartbeat_interval_seconds: Mutex<u32>,
    /// Every agent message, with the agent id from the peer certificate and when.
    received: Mutex<Vec<Received>>,
    sessions: Mutex<Vec<SessionHandle>>,
    pub enrolments: Mutex<Vec<v1::EnrollRequest>>,
    pub connects: AtomicUsize,
    pub renewals: AtomicUsize,
    pub handshake_failures: AtomicUsize,
    /// When each failed handshake happened.
    pub handshake_failure_times: Mutex<Vec<Instant>>,
    revoked: Mutex<HashSet<String>>,
    /// When set, every `TaskResult` is answered with a `TaskAck`, as the real server does.
    pub auto_ack: AtomicBool,
    /// When set, sent right after every `Welcome`, as the real server does.
    pub desired_on_welcome: Mutex<Option<v1::DesiredState>>,
    /// When set, `Connect` fails with `UNAVAILABLE` (still counted in `connects`).
    pub refuse_connects: AtomicBool,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub agent_id: String,
    pub session: usize,
    pub at: Instant,
    pub message: v1::agent_message::Body,
}

#[derive(Debug)]
struct SessionHandle {
    id: usize,
    agent_id: String,
    tx: Option<mpsc::UnboundedSender<Result<v1::ServerMessage, Status>>>,
}

impl Script {
    pub fn received(&self) -> Vec<Received> {
        lock(&self.received).clone()
    }

    pub fn hellos(&self) -> Vec<(usize, v1::Hello)> {
        self.received()
            .into_iter()
            .filter_map(|r| match r.message {
                v1::agent_message::Body::Hello(hello) => Some((r.session, hello)),
                _ => None,
            })
            .collect()
    }

    pub fn heartbeats(&self) -> Vec<(Instant, v1::Heartbeat)> {
        self.received()
            .into_iter()
            .filter_map(|r| match r.message {
                v1::agent_message::Body::Heartbeat(beat) => Some((r.at, beat)),
                _ => None,
            })
            .collect()
    }

    pub fn results(&self, task_id: &str) -> Vec<(usize, v1::TaskResult)> {
        self.received()
            .into_iter()
            .filter_map(|r| match r.message {
                v1::agent_message::Body::TaskResult(result) if result.task_id == task_id => {
                    Some((r.session, result))
                }
                _ => None,
            })
            .collect()
    }

    pub fn updates(&self, task_id: &str) -> Vec<String> {
        self.received()
            .into_iter()
            .filter_map(|r| match r.message {
                v1::agent_message::Body::TaskUpdate(update) if update.task_id == task_id => {
                    Some(update.message)
                }
                _ => None,
            })
            .collect()
    }

    /// Every drift report, with its session.
    pub fn drift_reports(&self) -> Vec<(usize, v1::DriftReport)> {
        self.received()
            .into_iter()
            .filter_map(|r| match r.message {
                v1::agent_message::Body::DriftReport(report) => Some((r.session, report)),
                _ => None,
            })
            .collect()
    }

    /// Acknowledges a result on every open session.
    pub fn ack(&self, task_id: &str, epoch: u64) -> usize {
        self.push(&v1::server_message::Body::TaskAck(v1::TaskAck {
            task_id: task_id.to_owned(),
            epoch,
        }))
    }

    pub fn sticker_reports(&self) -> Vec<v1::StickerReport> {
        self.received()
            .into_iter()
            .filter_map(|r| match r.message {
                v1::agent_message::Body::StickerReport(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    /// Sends a message on every open session; returns how many got it.
    pub fn push(&self, message: &v1::server_message::Body) -> usize {
        let sessions = lock(&self.sessions);
        sessions
            .iter()
            .filter_map(|s| s.tx.as_ref())
            .filter(|tx| {
                tx.send(Ok(v1::ServerMessage {
                    body: Some(message.clone()),
                }))
                .is_ok()
            })
            .count()
    }

    pub fn open_sessions(&self) -> usize {
        lock(&self.sessions)
            .iter()
            .filter(|s| s.tx.as_ref().is_some_and(|tx| !tx.is_closed()))
            .count()
    }

    /// Ends every open session's response stream (the agent sees the stream end).
    pub fn drop_sessions(&self) {
        for session in lock(&self.sessions).iter_mut() {
            session.tx = None;
        }
    }

    pub fn revoke(&self, agent_id: &str) {
        lock(&self.revoked).insert(agent_id.to_owned());
    }

    /// A join token the server will accept once.
    pub fn join_token(&self) -> String {
        let token = JoinToken::generate(&self.ca.fingerprint()).expose();
        lock(&self.tokens).insert(token.clone());
        token
    }

    /// Registers a token the server accepts (whatever CA it pins).
    pub fn accept_token(&self, token: &str) {
        lock(&self.tokens).insert(token.to_owned());
    }

    fn record(&self, agent_id: &str, session: usize, message: v1::agent_message::Body) {
        lock(&self.received).push(Received {
            agent_id: agent_id.to_owned(),
            session,
            at: Instant::now(),
            message,
        });
    }

    fn send_to(&self, session: usize, message: v1::server_message::Body) {
        let sessions = lock(&self.sessions);
        if let Some(tx) = sessions
            .iter()
            .find(|s| s.id == session)
            .and_then(|s| s.tx.as_ref())
        {
            let _ = tx.send(Ok(v1::ServerMessage {
                body: Some(message),
            }));
        }
    }
}

impl RevocationList for Script {
    fn is_revoked(&self, identity: &AgentIdentity) -> bool {
        lock(&self.revoked).contains(&identity.agent_id)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A control plane whose gateway the test scripts: real TLS and gRPC, no store.
#[derive(Debug)]
pub struct ScriptedControlPlane {
    pub script: Arc<Script>,
    pub grpc_url: String,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl ScriptedControlPlane {
    pub async fn start() -> ScriptedControlPlane {
        ScriptedControlPlane::start_with_ca(
            CertificateAuthority::generate(TRUST_DOMAIN).expect("generate ca"),
        )
        .await
    }

    pub async fn start_with_ca(ca: CertificateAuthority) -> ScriptedControlPlane {
        let server_cert = ca
            .issue_server_certificate(
                &["127.0.0.1".to_owned(), "localhost".to_owned()],
                Duration::from_secs(3600),
            )
            .expect("server certificate");
        let script = Arc::new(Script {
            ca,
            tokens: Mutex::new(HashSet::new()),
            cert_validity: Mutex::new(Duration::from_secs(3600)),
            heartbeat_interval_seconds: Mutex::new(5),
            received: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            enrolments: Mutex::new(Vec::new()),
            connects: AtomicUsize::new(0),
            renewals: AtomicUsize::new(0),
            handshake_failures: AtomicUsize::new(0),
            handshake_failure_times: Mutex::new(Vec::new()),
            revoked: Mutex::new(HashSet::new()),
            auto_ack: AtomicBool::new(false),
            desired_on_welcome: Mutex::new(None),
            refuse_connects: AtomicBool::new(false),
        });
        let tls = stella_pki::server_tls_config(
            script.ca.cert_pem(),
            TRUST_DOMAIN,
            &server_cert,
            Arc::clone(&script) as Arc<dyn RevocationList>,
        )
        .expect("server tls config");
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();

        // Handshakes run concurrently, so one stuck client cannot block the others.
        let (conns_tx, conns_rx) = mpsc::channel::<Result<TlsConn, io::Error>>(16);
        let accept_shutdown = shutdown.clone();
        let accept_script = Arc::clone(&script);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = accept_shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let conns_tx = conns_tx.clone();
                let script = Arc::clone(&accept_script);
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = conns_tx.send(Ok(TlsConn(tls))).await;
                        }
                        Err(error) => {
                            tracing::info!(%error, "scripted control plane: tls handshake failed");
                            lock(&script.handshake_failure_times).push(Instant::now());
                            script.handshake_failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });

        let gateway = ScriptedGateway {
            script: Arc::clone(&script),
            next_session: Arc::new(AtomicUsize::new(0)),
        };
        let serve_shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(AgentGatewayServer::new(gateway))
                .serve_with_incoming_shutdown(
                    ReceiverStream::new(conns_rx),
                    serve_shutdown.cancelled_owned(),
                )
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "scripted control plane failed");
            }
        });
        ScriptedControlPlane {
            script,
            grpc_url: format!("https://127.0.0.1:{}", addr.port()),
            shutdown,
            server,
        }
    }
}

impl Drop for ScriptedControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.server.abort();
    }
}

#[derive(Debug, Clone)]
struct ScriptedGateway {
    script: Arc<Script>,
    next_session: Arc<AtomicUsize>,
}

fn peer_identity<T>(request: &Request<T>) -> Result<AgentIdentity, Status> {
    request
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|peer| peer.identity.clone())
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))
}

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tonic::async_trait]
impl AgentGateway for ScriptedGateway {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let request = request.into_inner();
        lock(&self.script.enrolments).push(request.clone());
        if !lock(&self.script.tokens).remove(&request.join_token) {
            return Err(Status::unauthenticated(
                "the join token is unknown, used or expired",
            ));
        }
        let agent_id = uuid::Uuid::now_v7().to_string();
        let identity = AgentIdentity::new(TRUST_DOMAIN, &agent_id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let validity = *lock(&self.script.cert_validity);
        let issued = self
            .script
            .ca
            .sign_agent_csr(&request.csr_der, &identity, validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(v1::EnrollResponse {
            agent_id,
            trust_domain: TRUST_DOMAIN.to_owned(),
            certificate_pem: issued.cert_pem,
            ca_pem: self.script.ca.cert_pem().to_owned(),
            not_after_unix_seconds: unix_seconds(issued.not_after),
        }))
    }

    type ConnectStream = UnboundedReceiverStream<Result<v1::ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let identity = peer_identity(&request)?;
        if self.script.refuse_connects.load(Ordering::SeqCst) {
            self.script.connects.fetch_add(1, Ordering::SeqCst);
            return Err(Status::unavailable(
                "the scripted control plane refuses connects",
            ));
        }
        let session = self.next_session.fetch_add(1, Ordering::SeqCst);
        self.script.connects.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.script.sessions).push(SessionHandle {
            id: session,
            agent_id: identity.agent_id.clone(),
            tx: Some(tx),
        });
        let script = Arc::clone(&self.script);
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let Some(body) = message.body else { continue };
                let is_hello = matches!(body, v1::agent_message::Body::Hello(_));
                let ack = match &body {
                    v1::agent_message::Body::TaskResult(result)
                        if script.auto_ack.load(Ordering::SeqCst) =>
                    {
                        Some(v1::TaskAck {
                            task_id: result.task_id.clone(),
                            epoch: result.epoch,
                        })
                    }
                    _ => None,
                };
                script.record(&identity.agent_id, session, body);
                if let Some(ack) = ack {
                    script.send_to(session, v1::server_message::Body::TaskAck(ack));
                }
                if is_hello {
                    let interval = *lock(&script.heartbeat_interval_seconds);
                    script.send_to(
                        session,
                        v1::server_message::Body::Welcome(v1::Welcome {
                            agent_id: identity.agent_id.clone(),
                            agent_name: String::new(),
                            heartbeat_interval_seconds: interval,
                            server_time_unix_ms: 0,
                        }),
                    );
                    let desired = lock(&script.desired_on_welcome).clone();
                    if let Some(desired) = desired {
                        script.send_to(session, v1::server_message::Body::DesiredState(desired));
                    }
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let identity = peer_identity(&request)?;
        let validity = *lock(&self.script.cert_validity);
        let issued = self
            .script
            .ca
            .sign_agent_csr(&request.get_ref().csr_der, &identity, validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.script.renewals.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(v1::RenewResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.script.ca.cert_pem().to_owned(),
            not_after_unix_seconds: unix_seconds(issued.not_after),
        }))
    }
}

/// The verified client certificate's identity, as tonic connect info.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub identity: Option<AgentIdentity>,
}

/// A server-side TLS connection that tells tonic who the peer is (tonic implements
/// `Connected` for tokio-rustls streams only with its own TLS feature).
struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = PeerCertificate;

    fn connect_info(&self) -> PeerCertificate {
        let (_, connection) = self.0.get_ref();
        PeerCertificate {
            identity: connection
                .peer_certificates()
                .and_then(stella_pki::agent_identity_of_peer),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A target that counts what it is asked to do, optionally holding `apply` until the test
/// releases it.
#[derive(Debug)]
pub struct CountingTarget {
    kind: &'static str,
    pub plans: AtomicUsize,
    pub applies: AtomicUsize,
    pub finished_applies: AtomicUsize,
    /// When set, `apply` waits for a permit (or cancellation).
    pub gate: Option<tokio::sync::Semaphore>,
    /// The task `apply` last got, registry credentials included.
    pub last_task: Mutex<Option<DeployTask>>,
    /// Whether the kind has slots (see [`CountingTarget::with_slots`]).
    pub slots: bool,
    /// The slots `retire` was asked to remove, in order.
    pub retired: Mutex<Vec<String>>,
}

impl CountingTarget {
    pub fn new(kind: &'static str) -> Arc<CountingTarget> {
        Arc::new(CountingTarget {
            kind,
            plans: AtomicUsize::new(0),
            applies: AtomicUsize::new(0),
            finished_applies: AtomicUsize::new(0),
            gate: None,
            last_task: Mutex::new(None),
            slots: false,
            retired: Mutex::new(Vec::new()),
        })
    }

    /// A counting target whose kind has slots: its `retire` records the slot and
    /// succeeds.
    pub fn with_slots(kind: &'static str) -> Arc<CountingTarget> {
        Arc::new(CountingTarget {
            kind,
            plans: AtomicUsize::new(0),
            applies: AtomicUsize::new(0),
            finished_applies: AtomicUsize::new(0),
            gate: None,
            last_task: Mutex::new(None),
            slots: true,
            retired: Mutex::new(Vec::new()),
        })
    }

    pub fn gated(kind: &'static str) -> Arc<CountingTarget> {
        Arc::new(CountingTarget {
            kind,
            plans: AtomicUsize::new(0),
            applies: AtomicUsize::new(0),
            finished_applies: AtomicUsize::new(0),
            gate: Some(tokio::sync::Semaphore::new(0)),
            last_task: Mutex::new(None),
            slots: false,
            retired: Mutex::new(Vec::new()),
        })
    }

    pub fn release(&self) {
        if let Some(gate) = &self.gate {
            gate.add_permits(1);
        }
    }
}

#[async_trait]
impl Target for CountingTarget {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError> {
        self.plans.fetch_add(1, Ordering::SeqCst);
        Ok(Plan {
            steps: task
                .components
                .iter()
                .map(|c| format!("run {} as {}", c.name, c.image))
                .collect(),
        })
    }

    async fn apply(
        &self,
        task: &DeployTask,
        _plan: &Plan,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError> {
        *lock(&self.last_task) = Some(task.clone());
        let applies = self.applies.fetch_add(1, Ordering::SeqCst) + 1;
        progress.report(format!("apply #{applies}"));
        if let Some(gate) = &self.gate {
            tokio::select! {
                () = cancel.cancelled() => return Err(TargetError::Cancelled),
                permit = gate.acquire() => {
                    permit.map_err(|e| TargetError::with_source("gate closed", e))?.forget();
                }
            }
        }
        let stickers = task
            .components
            .iter()
            .map(|component| task.sticker(component, progress.agent_id()))
            .collect();
        self.finished_applies.fetch_add(1, Ordering::SeqCst);
        Ok(ApplyOutcome {
            summary: format!("applied {} (apply #{applies})", task.version),
            stickers,
            ..ApplyOutcome::default()
        })
    }

    async fn inspect(&self, _target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError> {
        Ok(Vec::new())
    }

    fn supports_slots(&self) -> bool {
        self.slots
    }

    async fn retire(
        &self,
        target: &TargetSpec,
        slot: &str,
        progress: &Progress,
    ) -> Result<ApplyOutcome, TargetError> {
        let _ = target;
        let mut retired = lock(&self.retired);
        let removed = usize::from(!retired.iter().any(|s| s == slot));
        retired.push(slot.to_owned());
        progress.report(format!("retiring {slot}"));
        Ok(ApplyOutcome {
            summary: format!("retired slot {slot}: removed {removed} container"),
            ..ApplyOutcome::default()
        })
    }

    async fn write_sticker(
        &self,
        _target: &TargetSpec,
        _sticker: &Sticker,
    ) -> Result<(), TargetError> {
        Ok(())
    }

    async fn read_sticker(
        &self,
        _target: &TargetSpec,
        _component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        Ok(None)
    }
}

/// A deploy task payload for `kind`.
pub fn deploy_payload(kind: &str) -> Vec<u8> {
    let task = DeployTask {
        deployment_id: "dep-1".to_owned(),
        decision_id: "sha256:decision".to_owned(),
        environment: "prod".to_owned(),
        release: "shop".to_owned(),
        version: "1.0.0".to_owned(),
        target: TargetSpec {
            name: "web-1".to_owned(),
            kind: kind.to_owned(),
            settings: Default::default(),
        },
        components: vec![stella_agent_core::ComponentSpec {
            name: "api".to_owned(),
            image: format!("registry.local/shop/api@sha256:{}", "a".repeat(64)),
        }],
        registry_auth: Vec::new(),
        generation: 0,
        secrets: Default::default(),
        slot: None,
    };
    serde_json::to_vec(&task).expect("payload")
}

/// `sha256:` and 64 times `c`.
pub fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// A deploy task for `target` of `kind` with components `(name, digest char)`.
pub fn deploy_task(target: &str, kind: &str, components: &[(&str, char)]) -> DeployTask {
    DeployTask {
        deployment_id: format!("dep-{target}"),
        decision_id: "sha256:decision".to_owned(),
        environment: "prod".to_owned(),
        release: "shop".to_owned(),
        version: "1.0.0".to_owned(),
        target: TargetSpec {
            name: target.to_owned(),
            kind: kind.to_owned(),
            settings: Default::default(),
        },
        components: components
            .iter()
            .map(|(name, c)| ComponentSpec {
                name: (*name).to_owned(),
                image: format!("registry.local/shop/{name}@{}", digest(*c)),
            })
            .collect(),
        registry_auth: Vec::new(),
        generation: 0,
        secrets: Default::default(),
        slot: None,
    }
}

/// A credential whose password tests look for on disk and in logs.
pub fn credential(password: &str) -> RegistryCredential {
    RegistryCredential {
        registry: "registry.local".to_owned(),
        username: "deployer".to_owned(),
        password: password.to_owned(),
    }
}

/// A `DesiredState` holding these tasks.
pub fn desired_state(tasks: &[&DeployTask]) -> v1::DesiredState {
    v1::DesiredState {
        targets: tasks
            .iter()
            .map(|task| v1::DesiredTarget {
                target: task.target.name.clone(),
                deploy_json: serde_json::to_vec(task).expect("deploy json"),
                generation: task.generation,
            })
            .collect(),
    }
}

/// A target kind (`fake`) whose targets are in memory, for the drift loop: the test sets
/// what runs and the stickers, and notifies as an engine watch would. It keeps the
/// default `detect_drift`.
#[derive(Debug)]
pub struct FakeDriftTarget {
    /// What runs, by target name.
    observed: Mutex<BTreeMap<String, Vec<ObservedComponent>>>,
    /// Stickers by (target, component).
    stickers: Mutex<BTreeMap<(String, String), Sticker>>,
    /// The agent's sender, handed over in `watch`.
    notify: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// `inspect` calls by target name.
    inspections: Mutex<BTreeMap<String, usize>>,
    /// When set, `apply` waits for a permit.
    gate: Option<tokio::sync::Semaphore>,
    pub applies: AtomicUsize,
    /// Targets `forget` was called for, in order.
    forgotten: Mutex<Vec<String>>,
}

impl FakeDriftTarget {
    pub fn new() -> Arc<FakeDriftTarget> {
        FakeDriftTarget::with_gate(None)
    }

    pub fn gated() -> Arc<FakeDriftTarget> {
        FakeDriftTarget::with_gate(Some(tokio::sync::Semaphore::new(0)))
    }

    fn with_gate(gate: Option<tokio::sync::Semaphore>) -> Arc<FakeDriftTarget> {
        Arc::new(FakeDriftTarget {
            observed: Mutex::new(BTreeMap::new()),
            stickers: Mutex::new(BTreeMap::new()),
            notify: Mutex::new(None),
            inspections: Mutex::new(BTreeMap::new()),
            gate,
            applies: AtomicUsize::new(0),
            forgotten: Mutex::new(Vec::new()),
        })
    }

    pub fn registry(self: &Arc<Self>) -> stella_agent_core::TargetRegistry {
        let mut registry = stella_agent_core::TargetRegistry::new();
        registry.register(Arc::clone(self) as Arc<dyn Target>);
        registry
    }

    pub fn release(&self) {
        if let Some(gate) = &self.gate {
            gate.add_permits(1);
        }
    }

    /// Makes `task`'s target run exactly what it describes, with valid stickers.
    pub fn converge(&self, task: &DeployTask) {
        let mut running = Vec::new();
        for component in &task.components {
            let sticker = task.sticker(component, "agent");
            running.push(ObservedComponent {
                component: component.name.clone(),
                image_digest: component.digest().unwrap_or_default().to_owned(),
                sticker_digest: Some(sticker.sticker_digest.clone()),
            });
            self.set_sticker(&task.target.name, sticker);
        }
        self.set_observed(&task.target.name, running);
    }

    pub fn set_observed(&self, target: &str, components: Vec<ObservedComponent>) {
        lock(&self.observed).insert(target.to_owned(), components);
    }

    pub fn set_sticker(&self, target: &str, sticker: Sticker) {
        lock(&self.stickers).insert((target.to_owned(), sticker.component.clone()), sticker);
    }

    pub fn remove_sticker(&self, target: &str, component: &str) {
        lock(&self.stickers).remove(&(target.to_owned(), component.to_owned()));
    }

    /// What a watch would do when the engine changes something on `target`.
    pub fn notify(&self, target: &str) {
        let notify = lock(&self.notify);
        notify
            .as_ref()
            .expect("the agent called watch")
            .send(target.to_owned())
            .expect("the drift loop listens");
    }

    pub fn is_watched(&self) -> bool {
        lock(&self.notify).is_some()
    }

    pub fn inspections(&self, target: &str) -> usize {
        lock(&self.inspections).get(target).copied().unwrap_or(0)
    }

    pub fn forgotten(&self) -> Vec<String> {
        lock(&self.forgotten).clone()
    }
}

#[async_trait]
impl Target for FakeDriftTarget {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn forget(&self, target: &str) {
        lock(&self.forgotten).push(target.to_owned());
    }

    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError> {
        Ok(Plan {
            steps: vec![format!("converge {}", task.target.name)],
        })
    }

    async fn apply(
        &self,
        task: &DeployTask,
        _plan: &Plan,
        _progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            tokio::select! {
                () = cancel.cancelled() => return Err(TargetError::Cancelled),
                permit = gate.acquire() => {
                    permit.map_err(|e| TargetError::with_source("gate closed", e))?.forget();
                }
            }
        }
        self.converge(task);
        Ok(ApplyOutcome::default())
    }

    async fn inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError> {
        *lock(&self.inspections)
            .entry(target.name.clone())
            .or_default() += 1;
        Ok(lock(&self.observed)
            .get(&target.name)
            .cloned()
            .unwrap_or_default())
    }

    async fn write_sticker(
        &self,
        target: &TargetSpec,
        sticker: &Sticker,
    ) -> Result<(), TargetError> {
        self.set_sticker(&target.name, sticker.clone());
        Ok(())
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        Ok(lock(&self.stickers)
            .get(&(target.name.clone(), component.to_owned()))
            .cloned())
    }

    fn watch(&self, notify: mpsc::UnboundedSender<String>) {
        *lock(&self.notify) = Some(notify);
    }
}

pub fn assignment(task_id: &str, epoch: u64, kind: &str) -> v1::server_message::Body {
    v1::server_message::Body::TaskAssignment(v1::TaskAssignment {
        task_id: task_id.to_owned(),
        epoch,
        kind: "deploy".to_owned(),
        payload_json: deploy_payload(kind),
        deadline_unix_ms: 0,
    })
}

/// A data dir that is kept (and its path printed) when the test fails.
#[derive(Debug)]
pub struct DataDir {
    dir: Option<tempfile::TempDir>,
}

impl DataDir {
    pub fn new() -> DataDir {
        let dir = tempfile::Builder::new()
            .prefix("stella-agent-core-")
            .tempdir()
            .expect("tempdir");
        DataDir { dir: Some(dir) }
    }

    /// The agent's data dir (a not yet existing child, so the agent creates it).
    pub fn path(&self) -> std::path::PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().join("agent"))
            .unwrap_or_default()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test failed; agent data dir kept at {}", kept.display());
            }
        }
    }
}

/// A configuration for an agent of `control_plane`, with a fresh join token and a fast
/// backoff.
pub fn agent_config(
    control_plane: &ScriptedControlPlane,
    data_dir: &DataDir,
) -> stella_agent_core::AgentConfig {
    let mut config = stella_agent_core::AgentConfig::new(data_dir.path());
    config.grpc_url = Some(control_plane.grpc_url.clone());
    config.join_token = Some(control_plane.script.join_token());
    config.name = Some("test-agent".to_owned());
    config.labels.insert("zone".to_owned(), "a".to_owned());
    config.backoff = stella_agent_core::BackoffConfig {
        initial_delay_ms: 10,
        max_delay_ms: 200,
    };
    config
}

/// An agent running `stella_agent_core::run` in the background.
#[derive(Debug)]
pub struct RunningAgent {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), stella_agent_core::AgentError>>>,
}

impl RunningAgent {
    pub fn start(
        config: stella_agent_core::AgentConfig,
        targets: stella_agent_core::TargetRegistry,
    ) -> RunningAgent {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(stella_agent_core::run(config, targets, shutdown.clone()));
        RunningAgent {
            shutdown,
            handle: Some(handle),
        }
    }

    /// Stops the agent; it must stop cleanly and in time.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("running");
        let result = tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("agent stops in time")
            .expect("agent task");
        if let Err(error) = result {
            panic!("agent failed: {}", stella_agent_core::error_chain(&error));
        }
    }

    /// Waits for the agent to stop on its own and returns how it ended.
    pub async fn finished(mut self) -> Result<(), stella_agent_core::AgentError> {
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("agent stops in time")
            .expect("agent task")
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
