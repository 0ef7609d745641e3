//! The Stella control plane as a library: [`start`] binds nothing itself — it takes
//! listeners, so tests and `stella server --dev` run the real server in-process on
//! port 0.
//!
//! Module map (see ARCHITECTURE.md): `domain` (types and rules, no IO), `store` (the
//! only SQL), `gateway` (the only gRPC), `api` (the only HTTP), `app` (operations
//! shared by gateway and api), `bootstrap` (first-start key material), `config`,
//! `error` (the one error-to-status mapping), `metrics`.

pub mod api;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod console;
pub mod domain;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod metrics;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod tenants;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use app::App;
pub use config::ServerConfig;

/// How long [`RunningServer::stop`] waits for connections to drain.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The sockets a server serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// REST API.
    pub api: TcpListener,
    /// Agent gateway.
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds both addresses of a config.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServeError> {
        let api = TcpListener::bind(config.api_listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.api_listen,
                source,
            })?;
        let grpc = gateway::tls::bind(config.grpc_listen).map_err(|source| ServeError::Bind {
            addr: config.grpc_listen,
            source,
        })?;
        Ok(Listeners { api, grpc })
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data dir could not be prepared.
    #[error("cannot prepare the data dir")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// The store could not be opened or migrated.
    #[error("cannot open the store")]
    Store(#[from] store::StoreError),
    /// A first-start step failed.
    #[error("cannot initialise: {0}")]
    Init(error::AppError),
    /// The secrets key could not be read or created.
    #[error("cannot load the secrets key")]
    Secrets(#[source] secrets::SecretsError),
    /// A listener's address could not be read.
    #[error("cannot read listener address")]
    LocalAddr(#[source] std::io::Error),
}

/// A server running in this process.
#[derive(Debug)]
pub struct RunningServer {
    /// The `default` tenant's core (for tests and the dev agent).
    pub app: Arc<App>,
    /// Every tenant's core.
    pub tenants: Arc<tenants::Tenants>,
    /// Bound REST address.
    pub api_addr: SocketAddr,
    /// Bound gateway address.
    pub grpc_addr: SocketAddr,
    /// The admin token, when this start created it.
    pub created_admin_token: Option<String>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// `https://<api addr>`, or `http://` when the API serves plain HTTP.
    pub fn api_url(&self) -> String {
        let scheme = if self.app.api_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.api_addr)
    }

    /// Serves a fresh API certificate to new connections (the operator's files read
    /// again, or a new one from the CA); open connections keep theirs. What SIGHUP does.
    pub fn reload_api_certificate(
        &self,
    ) -> Result<Option<stella_pki::Fingerprint>, error::AppError> {
        match &self.app.api_tls {
            Some(tls) => tls.reload(&self.app.pki.ca).map(Some),
            None => Ok(None),
        }
    }

    /// `https://<gateway addr>`.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// Stops serving: ends every agent session (agents reconnect by themselves),
    /// flushes heartbeats and waits for every task, at most [`STOP_GRACE`]; then signs
    /// a last audit checkpoint of what the drained API appended.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.app
            .sessions
            .close_all(gateway::sessions::CloseReason::ShuttingDown);
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let drained = tokio::time::timeout(STOP_GRACE, futures::future::join_all(self.tasks));
        if drained.await.is_err() {
            tracing::warn!("shutdown grace period over; aborting what is left");
            for abort in aborts {
                abort.abort();
            }
        }
        self.app.checkpoint_audit().await;
        self.app.store.close().await;
    }

    /// Resolves when the server stops by itself or through [`Self::stop`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the control plane on the given listeners: opens the store, creates
/// first-start material, then serves the API and the gateway.
pub async fn start(
    config: ServerConfig,
    listeners: Listeners,
) -> Result<RunningServer, ServeError> {
    config.validate()?;
    bootstrap::create_private_dir(&config.data_dir)?;
    let api_addr = listeners.api.local_addr().map_err(ServeError::LocalAddr)?;
    let grpc_addr = listeners.grpc.local_addr().map_err(ServeError::LocalAddr)?;
    let store = store::Store::connect(&config.database_url()).await?;
    let sans = bootstrap::server_sans(&config.tls_sans, grpc_addr);
    let pki = bootstrap::load_or_create(&config.data_dir, &config.trust_domain, &sans)?;
    let revoked = store.revoked_agent_ids().await?;
    let secrets =
        secrets::SecretBox::load_or_create(&config.data_dir).map_err(ServeError::Secrets)?;
    let signer =
        stella_decision::dsse::SigningKey::from_pkcs8_pem(&pki.signing_key_pem).map_err(|e| {
            ServeError::Init(error::AppError::new(
                error::ErrorKind::Internal,
                "signing_key",
                format!("the decision signing key cannot be read: {e}"),
            ))
        })?;
    let public = signer.public_key();
    store
        .put_signing_key(public.key_id(), &public.to_pem(), app::now_ms())
        .await?;
    let api_tls = api::tls::ApiTls::load(&config, &pki.ca, api_addr).map_err(ServeError::Init)?;
    let issuer = oauth_issuer(&config, api_addr, api_tls.is_some());
    let app = Arc::new(
        App::new(config, store, pki, revoked, grpc_addr, secrets, signer).with_api(api_tls, issuer),
    );
    let created_admin_token = app.ensure_admin().await.map_err(ServeError::Init)?;

    let shutdown = CancellationToken::new();
    let tenants = Arc::new(tenants::Tenants::new(app.clone(), shutdown.clone()));
    // Opens every tenant's database (migrating it) and reads every tenant's revoked
    // agents before an agent can connect.
    tenants.refresh().await.map_err(ServeError::Init)?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (tenants, shutdown) = (tenants.clone(), shutdown.clone());
        async move {
            if let Err(error) = api::serve(tenants, listeners.api, shutdown.clone()).await {
                tracing::error!(%error, "api server failed");
                shutdown.cancel();
            }
        }
    }));
    tasks.push(tokio::spawn({
        let (tenants, shutdown) = (tenants.clone(), shutdown.clone());
        async move {
            if let Err(error) = gateway::serve(tenants, listeners.grpc, shutdown.clone()).await {
                tracing::error!(error = %error::ErrorChain(&error), "agent gateway failed");
                shutdown.cancel();
            }
        }
    }));
    tasks.extend(tenants::spawn_background(&app, &shutdown));
    if app.store.backend() == store::Backend::Postgres {
        tasks.push(tokio::spawn(gateway::run_dispatch_listener(
            tenants.clone(),
            app.config.database_url(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(tenants.clone().run_refresh()));
    // Hashes the downloads now rather than at the first request for them.
    tasks.push(tokio::spawn({
        let downloads = app.downloads.clone();
        async move {
            match downloads.list().await {
                Ok(listed) => tracing::info!(
                    dir = %downloads.dir().display(),
                    files = listed.len(),
                    "downloads hashed"
                ),
                Err(error) => tracing::warn!(error = %error.message, "downloads not hashed"),
            }
        }
    }));
    tracing::info!(%api_addr, %grpc_addr, ca = %app.pki.ca.fingerprint(), "control plane started");
    Ok(RunningServer {
        app,
        tenants,
        api_addr,
        grpc_addr,
        created_admin_token,
        shutdown,
        tasks,
    })
}

/// `iss` of access tokens: as configured, else the API's own URL (its first
/// configured name, else the address it listens on, else this host's name).
fn oauth_issuer(config: &ServerConfig, api_addr: SocketAddr, tls: bool) -> String {
    if let Some(issuer) = &config.oauth_issuer {
        return issuer.trim_end_matches('/').to_owned();
    }
    let scheme = if tls { "https" } else { "http" };
    let host = match config.api_names.first() {
        Some(name) => name.clone(),
        None if !api_addr.ip().is_unspecified() => api_addr.ip().to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned()),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{host}:{}", api_addr.port())
}

/// Runs the control plane until `shutdown` is cancelled.
pub async fn serve(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let server = start(config, listeners).await?;
    let stopped = server.shutdown_token();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = stopped.cancelled() => {}
    }
    server.stop().await;
    Ok(())
}
