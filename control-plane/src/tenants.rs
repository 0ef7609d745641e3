//! The tenants this server serves: one [`App`] (core) per tenant, each over the
//! tenant's own database and running its own background work, beside the server-wide
//! parts they share (agent sessions, PKI, metrics, identity).
//!
//! Isolation is a property of where rows are: a tenant's core can only reach its own
//! database, so no query can forget a tenant filter, and the same names can live in two
//! tenants. The `default` tenant's database is the server's own (see
//! `store::tenants`); other tenants are opened when first needed and when the tenant
//! list, re-read every `revocation_poll_seconds`, names one this replica has not opened
//! (a tenant created on another replica).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{now_ms, App, Enrolled};
use crate::domain::{Tenant, TenantId};
use crate::error::{AppError, ErrorKind};
use crate::gateway::sessions::CloseReason;
use crate::store::{Store, StoreConfig};

/// A tenant's core and what stops its background work.
#[derive(Debug)]
struct Opened {
    app: Arc<App>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Every tenant's core; cheap to share (`Arc<Tenants>`).
#[derive(Debug)]
pub struct Tenants {
    default: Arc<App>,
    opened: parking_lot::RwLock<HashMap<TenantId, Arc<App>>>,
    running: tokio::sync::Mutex<HashMap<TenantId, Opened>>,
    /// Which tenant each agent id belongs to, as far as this replica has looked.
    agents: parking_lot::RwLock<HashMap<String, TenantId>>,
    shutdown: CancellationToken,
}

impl Tenants {
    /// The registry of a server whose `default` core is `default`; background work of
    /// the tenants it opens stops with `shutdown`.
    pub fn new(default: Arc<App>, shutdown: CancellationToken) -> Tenants {
        Tenants {
            default,
            opened: parking_lot::RwLock::default(),
            running: tokio::sync::Mutex::default(),
            agents: parking_lot::RwLock::default(),
            shutdown,
        }
    }

    /// The `default` tenant's core, which also holds users, tokens and tenants.
    pub fn default_app(&self) -> &Arc<App> {
        &self.default
    }

    /// The core of `tenant`, opening it when this replica has not yet; `NotFound`
    /// (`tenant_not_found`) for a tenant that does not exist.
    pub async fn get(&self, tenant: &TenantId) -> Result<Arc<App>, AppError> {
        if tenant.is_default() {
            return Ok(self.default.clone());
        }
        if let Some(app) = self.opened.read().get(tenant) {
            return Ok(app.clone());
        }
        match self.default.store.find_tenant(tenant).await {
            Ok(_) => self.open(tenant).await,
            Err(error) if error.is_not_found() => Err(tenant_not_found(tenant)),
            Err(error) => Err(error.into()),
        }
    }

    /// Every core open on this replica, `default` first.
    pub fn apps(&self) -> Vec<Arc<App>> {
        let opened = self.opened.read();
        let mut sorted: BTreeMap<&TenantId, &Arc<App>> = opened.iter().collect();
        let mut apps = vec![self.default.clone()];
        apps.extend(std::mem::take(&mut sorted).into_values().cloned());
        apps
    }

    /// Every tenant, `default` included.
    pub async fn list(&self) -> Result<Vec<Tenant>, AppError> {
        Ok(self.default.store.list_tenants().await?)
    }

    /// Creates a tenant and opens its database.
    pub async fn create(&self, name: &TenantId, created_by: &str) -> Result<Tenant, AppError> {
        let tenant = Tenant {
            name: name.clone(),
            created_at_ms: now_ms(),
            created_by: created_by.to_owned(),
        };
        self.default
            .store
            .insert_tenant(&tenant)
            .await
            .map_err(|error| {
                if error.is_conflict() {
                    AppError::new(
                        ErrorKind::Conflict,
                        "tenant_exists",
                        format!("a tenant named `{name}` already exists"),
                    )
                } else {
                    error.into()
                }
            })?;
        if let Err(error) = self.open(name).await {
            // Nothing of it exists without its database: forget the name again.
            if let Err(undo) = self.default.store.delete_tenant(name).await {
                tracing::error!(tenant = %name, error = %undo, "forgetting a tenant that could not be opened failed");
            }
            return Err(error);
        }
        tracing::info!(tenant = %name, by = created_by, "tenant created");
        Ok(tenant)
    }

    /// Deletes a tenant that holds no environment and no agent: its background work
    /// stops, its database is removed, its bindings go.
    pub async fn delete(&self, name: &TenantId) -> Result<(), AppError> {
        if name.is_default() {
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "tenant_default",
                "the default tenant cannot be deleted",
            ));
        }
        let app = self.get(name).await?;
        let (environments, agents) = app.store.count_owned_objects().await?;
        if environments > 0 || agents > 0 {
            return Err(AppError::new(
                ErrorKind::Conflict,
                "tenant_not_empty",
                format!(
                    "tenant `{name}` still has {environments} environment(s) and {agents} agent(s); delete them first"
                ),
            ));
        }
        self.default.store.delete_tenant(name).await?;
        self.close(name).await;
        self.remove_database(name).await?;
        tracing::info!(tenant = %name, "tenant deleted");
        Ok(())
    }

    /// Opens every tenant this replica has not opened yet, and closes those deleted
    /// elsewhere; then re-reads revocations of every tenant.
    pub async fn refresh(&self) -> Result<(), AppError> {
        let listed = self.list().await?;
        for tenant in &listed {
            if !tenant.name.is_default() && !self.opened.read().contains_key(&tenant.name) {
                if let Err(error) = self.open(&tenant.name).await {
                    tracing::warn!(tenant = %tenant.name, %error, "opening a tenant failed; will retry");
                }
            }
        }
        let gone: Vec<TenantId> = self
            .opened
            .read()
            .keys()
            .filter(|name| !listed.iter().any(|tenant| &tenant.name == *name))
            .cloned()
            .collect();
        for name in gone {
            self.close(&name).await;
        }
        self.sync_revocations().await
    }

    /// Re-reads every tenant's revoked agents (other replicas may have revoked some)
    /// and closes their sessions here.
    pub async fn sync_revocations(&self) -> Result<(), AppError> {
        let mut revoked = Vec::new();
        for app in self.apps() {
            revoked.extend(app.store.revoked_agent_ids().await?);
        }
        for id in &revoked {
            if self.default.sessions.close(id, CloseReason::Revoked) {
                self.default.metrics.revoked_sessions_closed.inc();
            }
        }
        self.default.revocations.replace(revoked);
        Ok(())
    }

    /// Enrols an agent into the tenant whose database holds its join token (the
    /// `default` tenant answers for a token no tenant holds).
    pub async fn enroll(
        &self,
        join_token: &str,
        csr_der: &[u8],
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Enrolled, AppError> {
        let mut app = self.default.clone();
        if let Ok(token) = stella_pki::JoinToken::parse(join_token) {
            let hash = token.secret_hash();
            let mut found = self.holder_of_token(&hash).await?;
            // A tenant created on another replica since the last refresh: its token
            // is in a database this replica has not opened yet.
            if found.is_none() {
                self.refresh().await?;
                found = self.holder_of_token(&hash).await?;
            }
            if let Some(holder) = found {
                app = holder;
            }
        }
        let enrolled = app.enroll(join_token, csr_der, name, labels).await?;
        self.agents
            .write()
            .insert(enrolled.identity.agent_id.clone(), app.tenant.clone());
        Ok(enrolled)
    }

    /// The core of the tenant whose database holds the join token with this hash.
    async fn holder_of_token(&self, hash: &str) -> Result<Option<Arc<App>>, AppError> {
        for candidate in self.apps() {
            if candidate.store.has_join_token(hash).await? {
                return Ok(Some(candidate));
            }
        }
        Ok(None)
    }

    /// The core of the tenant an agent belongs to (`default` for an id no tenant
    /// knows, whose own checks then refuse it).
    pub async fn app_of_agent(&self, agent_id: &str) -> Result<Arc<App>, AppError> {
        if self.opened.read().is_empty() {
            return Ok(self.default.clone());
        }
        let known = self.agents.read().get(agent_id).cloned();
        if let Some(tenant) = known {
            if let Ok(app) = self.get(&tenant).await {
                return Ok(app);
            }
        }
        for app in self.apps() {
            if app.store.has_agent(agent_id).await? {
                self.agents
                    .write()
                    .insert(agent_id.to_owned(), app.tenant.clone());
                return Ok(app);
            }
        }
        Ok(self.default.clone())
    }

    /// Runs [`Tenants::refresh`] every `revocation_poll_seconds` until shutdown.
    pub async fn run_refresh(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(
            self.default.config.revocation_poll_seconds,
        ));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    if let Err(error) = self.refresh().await {
                        tracing::warn!(%error, "tenant refresh failed; will retry");
                    }
                }
            }
        }
        let names: Vec<TenantId> = self.opened.read().keys().cloned().collect();
        for name in names {
            self.close(&name).await;
        }
    }

    async fn open(&self, tenant: &TenantId) -> Result<Arc<App>, AppError> {
        let mut running = self.running.lock().await;
        if let Some(opened) = running.get(tenant) {
            return Ok(opened.app.clone());
        }
        let config = &self.default.config;
        if self.default.store.backend() == crate::store::Backend::Sqlite {
            crate::bootstrap::create_private_dir(&config.data_dir.join("tenants"))
                .map_err(|error| AppError::internal("tenant database directory", &error))?;
        }
        self.default.store.create_tenant_schema(tenant).await?;
        let url = Store::tenant_url(&config.database_url(), &config.data_dir, tenant);
        let store = Store::connect_with(&StoreConfig::new(url)).await?;
        let public = self.default.signer.public_key();
        store
            .put_signing_key(public.key_id(), &public.to_pem(), now_ms())
            .await?;
        let app = Arc::new(self.default.for_tenant(tenant.clone(), store));
        let stop = self.shutdown.child_token();
        let tasks = spawn_background(&app, &stop);
        running.insert(
            tenant.clone(),
            Opened {
                app: app.clone(),
                stop,
                tasks,
            },
        );
        self.opened.write().insert(tenant.clone(), app.clone());
        tracing::info!(%tenant, "tenant opened");
        Ok(app)
    }

    async fn close(&self, tenant: &TenantId) {
        self.opened.write().remove(tenant);
        self.agents.write().retain(|_, owner| owner != tenant);
        let opened = self.running.lock().await.remove(tenant);
        if let Some(opened) = opened {
            opened.stop.cancel();
            for task in opened.tasks {
                if let Err(error) = task.await {
                    tracing::warn!(%tenant, %error, "a tenant's background task ended badly");
                }
            }
            opened.app.checkpoint_audit().await;
            opened.app.store.close().await;
            tracing::info!(%tenant, "tenant closed");
        }
    }

    async fn remove_database(&self, tenant: &TenantId) -> Result<(), AppError> {
        match self.default.store.backend() {
            crate::store::Backend::Postgres => {
                self.default.store.drop_tenant_schema(tenant).await?;
            }
            crate::store::Backend::Sqlite => {
                let dir = self.default.config.data_dir.join("tenants");
                for suffix in ["db", "db-wal", "db-shm"] {
                    let path = dir.join(format!("{tenant}.{suffix}"));
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => {
                            return Err(AppError::internal("removing a tenant's database", &error))
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Starts a core's background work: the gateway's sweeps, webhook deliveries, the
/// task runner and audit checkpoints.
pub fn spawn_background(app: &Arc<App>, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(crate::gateway::run_background(app.clone(), stop.clone())),
        tokio::spawn(crate::app::run_webhook_sender(app.clone(), stop.clone())),
        tokio::spawn(crate::app::runs::run_task_runner(app.clone(), stop.clone())),
        tokio::spawn(crate::app::run_rollout_driver(app.clone(), stop.clone())),
        tokio::spawn(crate::app::run_audit_checkpointer(
            app.clone(),
            stop.clone(),
        )),
    ]
}

fn tenant_not_found(tenant: &TenantId) -> AppError {
    AppError::new(
        ErrorKind::NotFound,
        "tenant_not_found",
        format!("tenant `{tenant}` not found"),
    )
}
