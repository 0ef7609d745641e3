//! `stella server`: the control plane, and with `--dev` a throwaway one with an
//! in-process agent named `local`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use stella_agent_core::AgentConfig;
use stella_control_plane::{Listeners, ServerConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `stella server`; they override the config file.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML config file (keys as in `ServerConfig`).
    #[arg(long, env = "STELLA_CONFIG")]
    config: Option<PathBuf>,
    /// Data dir (CA, keys, admin token, SQLite database).
    #[arg(long, env = "STELLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// REST API listen address.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Agent gateway listen address.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// `postgres://…` to use PostgreSQL instead of the embedded SQLite.
    #[arg(long, env = "STELLA_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Throwaway data dir, SQLite, and an in-process agent named `local`.
    #[arg(long)]
    dev: bool,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    // Kept alive until the server stops, then deleted.
    let mut throwaway = None;
    if args.dev {
        config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 8443));
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
    let listeners = Listeners::bind(&config).await?;
    let server = stella_control_plane::start(config, listeners).await?;
    let shutdown = CancellationToken::new();
    stella_agent::cancel_on_signals(shutdown.clone());

    let mut agent = None;
    if args.dev {
        agent = Some(start_dev_agent(&server, shutdown.clone()).await?);
        print_dev_banner(&server);
    } else if server.created_admin_token.is_some() {
        eprintln!(
            "first start: the admin token is in {}",
            server.app.config.data_dir.join("admin.token").display()
        );
    }

    let stopped = server.shutdown_token();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = stopped.cancelled() => {}
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

fn print_dev_banner(server: &stella_control_plane::RunningServer) {
    let token = server
        .created_admin_token
        .clone()
        .unwrap_or_else(|| "<see admin.token in the data dir>".to_owned());
    eprintln!(
        "\nstella dev server\n  api      {api}\n  gateway  {grpc}\n  data dir {dir} (deleted on exit)\n  agent    local (in-process)\n\n  export STELLA_SERVER={api}\n  export STELLA_TOKEN={token}\n",
        api = server.api_url(),
        grpc = server.grpc_url(),
        dir = server.app.config.data_dir.display(),
    );
}
