//! The application core shared by `api` (HTTP) and `gateway` (gRPC): every operation
//! the control plane offers, over the store, the PKI and the live agent sessions.
//! Protocol layers only translate requests and errors.

mod asked;
mod audit;
mod checks;
mod clients;
mod deployments;
mod dispatch;
mod documents;
pub mod downloads;
mod drift;
mod environments;
mod events;
mod evidence;
mod group_commit;
mod offline;
mod promotions;
mod registries;
mod releases;
mod results;
mod rollouts;
mod routers;
pub mod runs;
mod scans;
mod settlements;
mod targets;
mod tokens;
mod webhooks;
mod workflows;

pub use audit::{run_audit_checkpointer, AuditLog};
pub use checks::TargetCheck;
pub use clients::{IssuedAccessToken, OAuthError};
pub use deployments::{canonical_json, sha256_id};
pub use drift::DRIFT_ACTOR;
pub use environments::{EnvironmentChange, VariableView};
pub use events::NewEvent;
pub use evidence::Replay;
pub use offline::{BundledKit, EvidenceImport, MAX_KIT_RELEASES};
pub use promotions::PromotionDetail;
pub use releases::ComponentRequest;
pub use rollouts::{endpoint_of, run_rollout_driver, RolloutDetail, DRAIN};
pub use routers::{AppliedRoute, RouteFailure};
pub use scans::{
    Reevaluation, ReportDetail, ScanDetail, ScanImport, ShownFinding, ShownSuppression,
};
pub use targets::TargetChange;
pub use tokens::TokenListing;
pub use webhooks::{run_webhook_sender, CreatedWebhook};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stella_pki::{AgentIdentity, IssuedCertificate, JoinToken};

use crate::bootstrap::ServerPki;
use crate::config::ServerConfig;
use crate::domain::{Agent, NewAgent, NewJoinToken, Role, TenantId, User};
use crate::error::{AppError, ErrorKind};
use crate::gateway::sessions::{CloseReason, HeartbeatBuffer, RevocationSet, SessionRegistry};
use crate::metrics::Metrics;
use crate::store::Store;

/// Longest join token lifetime an operator may ask for.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Shared state of one control-plane replica.
#[derive(Debug)]
pub struct App {
    /// The configuration it runs with.
    pub config: ServerConfig,
    /// The only way to the database.
    pub store: Store,
    /// The tenant whose database `store` is; the rest below is shared by every
    /// tenant's core, except where it says otherwise.
    pub tenant: TenantId,
    /// CA, signing key, gateway certificate.
    pub pki: Arc<ServerPki>,
    /// Agent sessions open on this replica.
    pub sessions: Arc<SessionRegistry>,
    /// Revoked agent ids, consulted at every TLS handshake.
    pub revocations: Arc<RevocationSet>,
    /// Heartbeats waiting for the next batched write (this tenant's agents).
    pub heartbeats: HeartbeatBuffer,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Where the gateway listens (the bound address, also with port 0).
    pub grpc_addr: std::net::SocketAddr,
    /// Seals secrets stored in the database (registry passwords).
    pub secrets: crate::secrets::SecretBox,
    /// Resolves image tags to digests.
    pub registry: crate::registry::RegistryClient,
    /// Signs decision records and audit checkpoints.
    pub signer: stella_decision::dsse::SigningKey,
    /// When each task waiting for an unavailable agent last said so in its log.
    waiting_reminders: parking_lot::Mutex<std::collections::HashMap<String, i64>>,
    /// Cancellations this replica sent to agents lately (task id → when).
    cancels_sent: parking_lot::Mutex<std::collections::HashMap<String, i64>>,
    /// Wakes the webhook sender when deliveries are queued.
    webhook_wake: tokio::sync::Notify,
    /// The audit chain's cached head and what awaits a checkpoint.
    audit_log: AuditLog,
    /// Task results waiting for the group-committing writer.
    task_results: results::ResultWriter,
    /// New promotions settled without a deployment, waiting for their group commit.
    settlements: settlements::SettlementWriter,
    /// Document contents by id (content-addressed, so never stale).
    document_cache: documents::DocumentCache,
    /// What promotions read from configuration, by configuration generation.
    configured: promotions::ConfiguredCache,
    /// Access-token keys, rate limits, last-use and client revocation caches.
    pub identity: Arc<crate::auth::Identity>,
    /// The REST API's TLS; `None` when it serves plain HTTP (and in every tenant's
    /// core but `default`'s, which serves the API).
    pub api_tls: Option<crate::api::tls::ApiTls>,
    /// The task-pack runs this replica drives.
    pub run_engine: runs::RunEngine,
    /// Target checks waiting for their agent's answer.
    checks: asked::Asked<(bool, String)>,
    /// Route updates and reads waiting for their agent's answer.
    routes: asked::Asked<stella_proto::v1::RouteResult>,
    /// Agent binaries and packages served under `/downloads/`.
    pub downloads: downloads::Downloads,
}

/// A join token as handed to the operator, once.
#[derive(Debug, Clone)]
pub struct IssuedJoinToken {
    /// The printable token; not stored anywhere.
    pub token: String,
    /// When it stops working.
    pub expires_at_ms: i64,
}

/// What a successful enrolment hands back to the agent.
#[derive(Debug)]
pub struct Enrolled {
    /// The agent's new identity.
    pub identity: AgentIdentity,
    /// Its name.
    pub name: String,
    /// Its first certificate.
    pub certificate: IssuedCertificate,
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn system_time_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A store error, with a conflict told in the words of the operation that hit it.
pub(crate) fn conflict_as(
    error: crate::store::StoreError,
    code: &'static str,
    message: String,
) -> AppError {
    match AppError::from(error) {
        conflict if conflict.kind == ErrorKind::Conflict => {
            AppError::new(ErrorKind::Conflict, code, message)
        }
        other => other,
    }
}

/// A store error, with "not found" told in the words of the request.
pub(crate) fn not_found_as(
    error: crate::store::StoreError,
    kind: ErrorKind,
    code: &'static str,
    message: String,
) -> AppError {
    match error {
        crate::store::StoreError::NotFound { .. } => AppError::new(kind, code, message),
        other => other.into(),
    }
}

/// The error of a lookup by id or unique prefix, in the words of the request:
/// `ambiguous_id` (409) when several match, `unknown_<what>` (404) when none does.
pub(crate) fn prefix_lookup_error(
    error: crate::store::StoreError,
    what: &'static str,
    unknown_code: &'static str,
    id_or_prefix: &str,
) -> AppError {
    match error {
        crate::store::StoreError::Conflict { .. } => AppError::new(
            ErrorKind::Conflict,
            "ambiguous_id",
            format!("`{id_or_prefix}` matches several {what}s: give more of the id"),
        ),
        crate::store::StoreError::NotFound { .. } => AppError::new(
            ErrorKind::NotFound,
            unknown_code,
            format!("no {what} `{id_or_prefix}`"),
        ),
        other => other.into(),
    }
}

/// A broken domain rule as a 400.
pub(crate) fn invalid(error: crate::domain::Invalid) -> AppError {
    AppError::invalid(error.0)
}

fn user_change_error(name: &str, error: crate::store::StoreError) -> AppError {
    match error {
        crate::store::StoreError::Conflict { .. } => AppError::new(
            ErrorKind::Conflict,
            "last_admin",
            format!("`{name}` is the last admin: make another user admin first"),
        ),
        crate::store::StoreError::NotFound { .. } => AppError::new(
            ErrorKind::NotFound,
            "unknown_user",
            format!("unknown user `{name}`"),
        ),
        other => other.into(),
    }
}

/// Names of agents and users: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_name(what: &str, name: &str) -> Result<(), AppError> {
    let mut chars = name.chars();
    let valid_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid_rest =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if valid_first && valid_rest && name.len() <= 63 {
        Ok(())
    } else {
        Err(AppError::invalid(format!(
            "invalid {what} name `{name}`: use 1 to 63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

impl App {
    /// Assembles the core from its parts.
    pub fn new(
        config: ServerConfig,
        store: Store,
        pki: ServerPki,
        revoked: Vec<String>,
        grpc_addr: std::net::SocketAddr,
        secrets: crate::secrets::SecretBox,
        signer: stella_decision::dsse::SigningKey,
    ) -> Self {
        let identity = crate::auth::Identity::new(
            &config,
            pki.oauth_keys(),
            config.oauth_issuer.clone().unwrap_or_default(),
        );
        App {
            identity: Arc::new(identity),
            api_tls: None,
            downloads: downloads::Downloads::of(&config),
            config,
            store,
            tenant: TenantId::default_tenant(),
            pki: Arc::new(pki),
            sessions: Arc::default(),
            revocations: Arc::new(RevocationSet::new(revoked)),
            heartbeats: HeartbeatBuffer::default(),
            metrics: Arc::new(Metrics::new()),
            grpc_addr,
            secrets,
            registry: crate::registry::RegistryClient::new(),
            signer,
            waiting_reminders: parking_lot::Mutex::default(),
            cancels_sent: parking_lot::Mutex::default(),
            webhook_wake: tokio::sync::Notify::new(),
            audit_log: AuditLog::default(),
            task_results: results::ResultWriter::default(),
            settlements: settlements::SettlementWriter::default(),
            document_cache: documents::DocumentCache::default(),
            configured: promotions::ConfiguredCache::default(),
            run_engine: runs::RunEngine::default(),
            checks: asked::Asked::new("target check"),
            routes: asked::Asked::new("route request"),
        }
    }

    /// Sets what `new` cannot know yet: the API's TLS and the access-token issuer.
    pub fn with_api(mut self, api_tls: Option<crate::api::tls::ApiTls>, issuer: String) -> Self {
        self.api_tls = api_tls;
        match Arc::get_mut(&mut self.identity) {
            Some(identity) => identity.issuer = issuer,
            None => tracing::error!("the access-token issuer was set after the core was shared"),
        }
        self
    }

    /// The core of another tenant over its own database: what belongs to a tenant
    /// (its store, heartbeat buffer, audit head, caches, run engine) is new, what
    /// belongs to the server (configuration, PKI, agent sessions, revocations,
    /// metrics, secrets, registry client, signing key, identity) is shared.
    pub fn for_tenant(&self, tenant: TenantId, store: Store) -> App {
        App {
            config: self.config.clone(),
            store,
            tenant,
            pki: self.pki.clone(),
            sessions: self.sessions.clone(),
            revocations: self.revocations.clone(),
            heartbeats: HeartbeatBuffer::default(),
            metrics: self.metrics.clone(),
            grpc_addr: self.grpc_addr,
            secrets: self.secrets.clone(),
            registry: self.registry.clone(),
            signer: self.signer.clone(),
            waiting_reminders: parking_lot::Mutex::default(),
            cancels_sent: parking_lot::Mutex::default(),
            webhook_wake: tokio::sync::Notify::new(),
            audit_log: AuditLog::default(),
            task_results: results::ResultWriter::default(),
            settlements: settlements::SettlementWriter::default(),
            document_cache: documents::DocumentCache::default(),
            configured: promotions::ConfiguredCache::default(),
            identity: self.identity.clone(),
            api_tls: None,
            run_engine: runs::RunEngine::default(),
            checks: asked::Asked::new("target check"),
            routes: asked::Asked::new("route request"),
            downloads: self.downloads.clone(),
        }
    }

    /// The gateway's port.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }

    /// The SPIFFE trust domain of agent identities.
    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    fn agent_cert_validity(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.agent_cert_validity_hours) * 3600)
    }

    /// Creates a one-time join token; only its hash is stored.
    pub async fn create_join_token(
        &self,
        created_by: &User,
        ttl: Option<Duration>,
    ) -> Result<IssuedJoinToken, AppError> {
        let ttl = ttl.unwrap_or(Duration::from_secs(self.config.join_token_ttl_seconds));
        if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
            return Err(AppError::invalid(
                "join token ttl must be between 1 second and 7 days",
            ));
        }
        let token = JoinToken::generate(&self.pki.ca.fingerprint());
        let now = now_ms();
        let expires_at_ms = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        self.store
            .insert_join_token(&NewJoinToken {
                hash: token.secret_hash(),
                created_by: created_by.name.clone(),
                created_at_ms: now,
                expires_at_ms,
            })
            .await?;
        tracing::info!(user = %created_by.name, expires_at_ms, "join token created");
        Ok(IssuedJoinToken {
            token: token.expose(),
            expires_at_ms,
        })
    }

    /// Enrols an agent: checks the token, signs the CSR, consumes the token and
    /// records the agent in one transaction. A refused token issues nothing.
    pub async fn enroll(
        &self,
        join_token: &str,
        csr_der: &[u8],
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Enrolled, AppError> {
        let result = self.enroll_inner(join_token, csr_der, name, labels).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.code,
        };
        Metrics::count(&self.metrics.enrolments, outcome);
        result
    }

    async fn enroll_inner(
        &self,
        join_token: &str,
        csr_der: &[u8],
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Enrolled, AppError> {
        let token = JoinToken::parse(join_token).map_err(|error| {
            AppError::new(
                ErrorKind::Unauthenticated,
                "join_token_invalid",
                format!("join token refused: {error}"),
            )
        })?;
        if token.ca_fingerprint() != &self.pki.ca.fingerprint() {
            return Err(AppError::new(
                ErrorKind::Unauthenticated,
                "join_token_foreign",
                "join token refused: it was issued by another control plane",
            ));
        }
        validate_name("agent", name)?;
        for key in labels.keys() {
            if key.is_empty() || key.len() > 63 {
                return Err(AppError::invalid(format!("invalid label key `{key}`")));
            }
        }
        let agent_id = uuid::Uuid::now_v7().to_string();
        let identity = AgentIdentity::new(self.trust_domain(), &agent_id)
            .map_err(|error| AppError::internal("agent identity", &error))?;
        // Signing first validates the CSR; the certificate reaches the agent only if the
        // token is then consumed.
        let certificate = self
            .pki
            .ca
            .sign_agent_csr(csr_der, &identity, self.agent_cert_validity())
            .map_err(|error| AppError::invalid(format!("certificate request refused: {error}")))?;
        let now = now_ms();
        let agent = NewAgent {
            id: agent_id.clone(),
            name: name.to_owned(),
            labels,
            cert_serial: certificate.serial_hex.clone(),
            cert_not_after_ms: system_time_ms(certificate.not_after),
            enrolled_at_ms: now,
        };
        let refusal = self
            .store
            .enroll_agent(&token.secret_hash(), now, &agent)
            .await
            .map_err(|error| {
                conflict_as(
                    error,
                    "agent_name_taken",
                    format!("an agent named `{name}` is already enrolled"),
                )
            })?;
        if let Err(refusal) = refusal {
            use crate::domain::JoinTokenRefusal;
            let (code, message) = match refusal {
                JoinTokenRefusal::Unknown => ("join_token_unknown", "join token refused: unknown"),
                JoinTokenRefusal::AlreadyUsed => {
                    ("join_token_used", "join token refused: already used")
                }
                JoinTokenRefusal::Expired => ("join_token_expired", "join token refused: expired"),
            };
            tracing::warn!(agent = %name, code, "enrolment refused");
            return Err(AppError::new(ErrorKind::Unauthenticated, code, message));
        }
        tracing::info!(agent_id = %agent_id, agent = %name, "agent enrolled");
        Ok(Enrolled {
            identity,
            name: name.to_owned(),
            certificate,
        })
    }

    /// Checks that a certificate-authenticated agent may still talk to us.
    pub async fn authorize_agent(&self, identity: &AgentIdentity) -> Result<Agent, AppError> {
        if identity.trust_domain != self.trust_domain() {
            return Err(AppError::new(
                ErrorKind::PermissionDenied,
                "agent_foreign",
                "certificate is for another trust domain",
            ));
        }
        let agent = match self.store.get_agent(&identity.agent_id).await {
            Ok(agent) => agent,
            Err(crate::store::StoreError::NotFound { .. }) => {
                return Err(AppError::new(
                    ErrorKind::PermissionDenied,
                    "agent_unknown",
                    "agent is not enrolled here",
                ))
            }
            Err(error) => return Err(error.into()),
        };
        if agent.revoked_at_ms.is_some() || self.revocations.contains(&agent.id) {
            return Err(AppError::new(
                ErrorKind::PermissionDenied,
                "agent_revoked",
                "agent is revoked",
            ));
        }
        Ok(agent)
    }

    /// Issues a fresh certificate for an authenticated, unrevoked agent.
    pub async fn renew(
        &self,
        identity: &AgentIdentity,
        csr_der: &[u8],
    ) -> Result<IssuedCertificate, AppError> {
        let result: Result<IssuedCertificate, AppError> = async {
            let agent = self.authorize_agent(identity).await?;
            let certificate = self
                .pki
                .ca
                .sign_agent_csr(csr_der, identity, self.agent_cert_validity())
                .map_err(|error| {
                    AppError::invalid(format!("certificate request refused: {error}"))
                })?;
            self.store
                .update_agent_certificate(
                    &agent.id,
                    &certificate.serial_hex,
                    system_time_ms(certificate.not_after),
                )
                .await?;
            tracing::info!(agent_id = %agent.id, "agent certificate renewed");
            Ok(certificate)
        }
        .await;
        Metrics::count(
            &self.metrics.renewals,
            match &result {
                Ok(_) => "ok",
                Err(error) => error.code,
            },
        );
        result
    }

    /// Revokes an agent: stored first, then its session on this replica is closed and
    /// its certificate refused at the next handshake. Other replicas follow within
    /// `revocation_poll_seconds`.
    pub async fn revoke_agent(&self, id_or_name: &str, reason: &str) -> Result<Agent, AppError> {
        let agent = self.store.find_agent(id_or_name).await?;
        let newly = self.store.revoke_agent(&agent.id, now_ms(), reason).await?;
        self.revocations.insert(&agent.id);
        if self.sessions.close(&agent.id, CloseReason::Revoked) {
            self.metrics.revoked_sessions_closed.inc();
        }
        if newly {
            tracing::warn!(agent_id = %agent.id, agent = %agent.name, reason, "agent revoked");
        }
        Ok(self.store.get_agent(&agent.id).await?)
    }

    /// Deletes a revoked agent so its name can be enrolled again; its id stays revoked.
    /// Refused while the agent is not revoked or a target names it.
    pub async fn delete_agent(&self, id_or_name: &str) -> Result<(), AppError> {
        let agent = self.store.find_agent(id_or_name).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_agent",
                format!("unknown agent `{id_or_name}`"),
            )
        })?;
        self.store
            .delete_revoked_agent(&agent.id, now_ms())
            .await
            .map_err(|error| match error {
                crate::store::StoreError::Conflict {
                    entity: "agent", ..
                } => AppError::new(
                    ErrorKind::Conflict,
                    "agent_not_revoked",
                    format!(
                        "agent `{}` is not revoked: revoke it first (stella agents revoke {})",
                        agent.name, agent.name
                    ),
                ),
                crate::store::StoreError::Conflict {
                    entity: "router",
                    key,
                } => AppError::new(
                    ErrorKind::Conflict,
                    "agent_in_use",
                    format!(
                        "agent `{}` still drives router `{key}`: delete its routers first",
                        agent.name
                    ),
                ),
                crate::store::StoreError::Conflict { key, .. } => AppError::new(
                    ErrorKind::Conflict,
                    "agent_in_use",
                    format!(
                        "agent `{}` still drives target `{key}`: move or delete its targets first",
                        agent.name
                    ),
                ),
                other => other.into(),
            })?;
        tracing::info!(agent_id = %agent.id, agent = %agent.name, "agent deleted");
        Ok(())
    }

    /// An agent said goodbye: it stopped cleanly.
    pub async fn record_goodbye(&self, agent_id: &str, reason: &str) -> Result<(), AppError> {
        self.store.record_goodbye(agent_id, now_ms()).await?;
        tracing::info!(agent_id, reason, "agent said goodbye");
        Ok(())
    }

    /// Writes buffered heartbeats in one batch.
    pub async fn flush_heartbeats(&self) -> Result<(), AppError> {
        let batch = self.heartbeats.drain();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.store.touch_agents(&batch).await {
            // Put them back: a later flush keeps the newest time per agent.
            self.heartbeats.restore(batch);
            return Err(error.into());
        }
        self.metrics.heartbeat_flushes.inc();
        Ok(())
    }

    /// Creates a user with roles and returns it with its first API token.
    pub async fn create_user(
        &self,
        name: &str,
        roles: Vec<Role>,
    ) -> Result<(User, String), AppError> {
        validate_name("user", name)?;
        if roles.is_empty() {
            return Err(AppError::invalid("a user needs at least one role"));
        }
        let mut roles = roles;
        roles.sort();
        roles.dedup();
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            roles,
            created_at_ms: now_ms(),
        };
        self.store.create_user(&user).await.map_err(|error| {
            conflict_as(
                error,
                "user_exists",
                format!("a user named `{name}` already exists"),
            )
        })?;
        let (_, token) = self.issue_token(&user, "", None).await?;
        tracing::info!(user = %user.name, roles = ?user.roles, "user created");
        Ok((user, token))
    }

    /// Replaces a user's roles. Refused when it would leave no admin.
    pub async fn set_user_roles(&self, name: &str, roles: Vec<Role>) -> Result<User, AppError> {
        if roles.is_empty() {
            return Err(AppError::invalid("a user needs at least one role"));
        }
        let mut roles = roles;
        roles.sort();
        roles.dedup();
        self.store
            .change_user(name, Some(&roles))
            .await
            .map_err(|error| user_change_error(name, error))?;
        tracing::info!(user = %name, roles = ?roles, "user roles changed");
        Ok(self.store.find_user(name).await?)
    }

    /// Deletes a user and its API tokens (which stop working at once). Refused for the
    /// caller itself and when it would leave no admin.
    pub async fn delete_user(&self, name: &str, caller: &User) -> Result<(), AppError> {
        if caller.name == name {
            return Err(AppError::new(
                ErrorKind::Conflict,
                "cannot_delete_self",
                "you cannot delete yourself: ask another admin",
            ));
        }
        self.store
            .change_user(name, None)
            .await
            .map_err(|error| user_change_error(name, error))?;
        tracing::info!(user = %name, by = %caller.name, "user deleted");
        Ok(())
    }

    /// On first start: the `admin` user, with its token written to `<data-dir>/admin.token` (0600).
    pub async fn ensure_admin(&self) -> Result<Option<String>, AppError> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            name: "admin".to_owned(),
            roles: vec![Role::Admin],
            created_at_ms: now_ms(),
        };
        self.store.create_user(&user).await?;
        let token = self.issue_bootstrap_token(&user).await?;
        let path = self.config.data_dir.join("admin.token");
        crate::bootstrap::write_secret(&path, &format!("{token}\n"))
            .map_err(|error| AppError::internal("writing admin token", &error))?;
        tracing::info!(path = %path.display(), "created admin user; its token is in this file");
        Ok(Some(token))
    }
}
