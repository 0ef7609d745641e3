//! `stella server`: the control plane, and with `--dev` a throwaway one with an
//! in-process agent named `local`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use stella_agent::logging::LogArgs;
use stella_agent_core::AgentConfig;
use stella_control_plane::{Listeners, ServerConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `stella server`; they override the config file, whose keys (and defaults)
/// are those of `ServerConfig`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML config file (keys as in `ServerConfig`).
    #[arg(long, env = "STELLA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, env = "STELLA_DATA_DIR", value_name = "DIR", help = data_dir_help())]
    data_dir: Option<PathBuf>,
    #[arg(long, value_name = "ADDR", help = api_listen_help())]
    api_listen: Option<SocketAddr>,
    #[arg(long, value_name = "ADDR", help = grpc_listen_help())]
    grpc_listen: Option<SocketAddr>,
    /// `postgres://…` to use PostgreSQL instead of the embedded SQLite.
    #[arg(
        long,
        env = "STELLA_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// Names (DNS or IP, comma-separated) of the API certificate the server issues
    /// itself [default: this host's name, localhost, 127.0.0.1, ::1].
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    api_names: Vec<String>,
    /// Serve the API with this certificate chain (PEM, leaf first) instead; read again
    /// on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "api_key")]
    api_cert: Option<PathBuf>,
    /// The private key (PEM) of `--api-cert`.
    #[arg(long, value_name = "FILE", requires = "api_cert")]
    api_key: Option<PathBuf>,
    /// Serve the API over plain HTTP (behind a TLS-terminating proxy); `--dev` does on
    /// a loopback address.
    #[arg(long)]
    api_plain_http: bool,
    /// Agent binaries and `.deb` files served under `/downloads/` [default:
    /// /usr/lib/stella/downloads if it exists, else this executable's directory].
    #[arg(long, env = "STELLA_DOWNLOADS_DIR", value_name = "DIR")]
    downloads_dir: Option<PathBuf>,
    /// Throwaway data dir, SQLite, and an in-process agent named `local`.
    #[arg(long)]
    dev: bool,
    /// How the server logs.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The gateway address of `--dev`: loopback only.
const DEV_GRPC_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8443);

// The defaults are shown in `--help` but not set as clap defaults: a flag that is not
// given must leave the config file's value alone.
fn data_dir_help() -> String {
    format!(
        "Data dir: CA, keys, admin token, SQLite database [default: {}; a temp dir with --dev]",
        ServerConfig::default().data_dir.display()
    )
}

fn api_listen_help() -> String {
    format!(
        "REST API listen address [default: {}]",
        ServerConfig::default().api_listen
    )
}

fn grpc_listen_help() -> String {
    format!(
        "Agent gateway listen address [default: {}; {} with --dev]",
        ServerConfig::default().grpc_listen,
        SocketAddr::from(DEV_GRPC_LISTEN)
    )
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    // Kept alive until the server stops, then deleted.
    let mut throwaway = None;
    if args.dev {
        config.grpc_listen = SocketAddr::from(DEV_GRPC_LISTEN);
        if args.data_dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("stella-dev-")
                .tempdir()
                .context("creating the dev data dir")?;
            config.data_dir = dir.path().to_owned();
            throwaway = Some(dir);
        }
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = args.api_listen {
        config.api_listen = addr;
    }
    if let Some(addr) = args.grpc_listen {
        config.grpc_listen = addr;
    }
    if let Some(url) = args.database_url {
        config.database_url = Some(url);
    }
    if !args.api_names.is_empty() {
        config.api_names = args.api_names;
    }
    if let (Some(cert), Some(key)) = (args.api_cert, args.api_key) {
        config.api_cert = Some(cert);
        config.api_key = Some(key);
    }
    if let Some(dir) = args.downloads_dir {
        config.downloads_dir = Some(dir);
    }
    if args.api_plain_http || (args.dev && config.api_listen.ip().is_loopback()) {
        config.api_plain_http = true;
    }
    let listeners = Listeners::bind(&config).await?;
    let server = stella_control_plane::start(config, listeners).await?;
    let shutdown = CancellationToken::new();
    stella_agent::cancel_on_signals(shutdown.clone());
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;

    let mut agent = None;
    if args.dev {
        agent = Some(start_dev_agent(&server, shutdown.clone()).await?);
        let link = dev_sign_in_link(&server).await?;
        print_dev_banner(&server, &link);
    } else if server.created_admin_token.is_some() {
        // A log event, not a bare line, so that `--log-format json` stays one object
        // per line.
        tracing::info!(
            path = %server.app.config.data_dir.join("admin.token").display(),
            "first start: the admin token is in the data dir"
        );
    }

    let stopped = server.shutdown_token();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = stopped.cancelled() => break,
            _ = hangups.recv() => {
                // A new API certificate for new connections; open ones keep theirs.
                if let Err(error) = server.reload_api_certificate() {
                    tracing::error!(%error, "SIGHUP: the API certificate was not reloaded; the current one stays");
                }
            }
        }
    }
    shutdown.cancel();
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    server.stop().await;
    drop(throwaway);
    Ok(())
}

/// Enrols and runs the `local` agent in this process, through the real gateway.
async fn start_dev_agent(
    server: &stella_control_plane::RunningServer,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let admin = server
        .app
        .store
        .find_user("admin")
        .await
        .context("the dev server has no admin user")?;
    let token = server
        .app
        .create_join_token(&admin, None)
        .await
        .map_err(|error| anyhow::anyhow!("creating the dev agent's join token: {error}"))?;
    let mut config = AgentConfig::new(server.app.config.data_dir.join("agent-local"));
    config.grpc_url = Some(server.grpc_url());
    config.join_token = Some(token.token);
    config.name = Some("local".to_owned());
    Ok(tokio::spawn(async move {
        if let Err(error) = stella_agent::run(config, shutdown).await {
            tracing::error!(error = %format!("{error:#}"), "dev agent stopped");
        }
    }))
}

/// A sign-in link to the console for `admin` (a session made for it; the dev server
/// is a throwaway on loopback).
async fn dev_sign_in_link(server: &stella_control_plane::RunningServer) -> anyhow::Result<String> {
    let admin = server
        .app
        .store
        .find_user("admin")
        .await
        .context("the dev server has no admin user")?;
    let session = stella_control_plane::console::session::create_session(&server.app, &admin.id)
        .await
        .map_err(|error| anyhow::anyhow!("creating the console sign-in link: {error}"))?;
    Ok(format!(
        "{}/console/login/link?session={session}",
        server.api_url()
    ))
}

fn print_dev_banner(server: &stella_control_plane::RunningServer, link: &str) {
    let token = server
        .created_admin_token
        .clone()
        .unwrap_or_else(|| "<see admin.token in the data dir>".to_owned());
    let ca = server.app.config.data_dir.join("pki").join("ca.pem");
    let ca_line = if server.app.api_tls.is_some() {
        format!("  export STELLA_CA_FILE={}\n", ca.display())
    } else {
        String::new()
    };
    eprintln!(
        "\nstella dev server\n  console  {api}/ (sign in: {link})\n  api      {api}\n  gateway  {grpc}\n  data dir {dir} (deleted on exit)\n  agent    local (in-process)\n\n  export STELLA_SERVER={api}\n  export STELLA_TOKEN={token}\n{ca_line}",
        api = server.api_url(),
        grpc = server.grpc_url(),
        dir = server.app.config.data_dir.display(),
    );
}
