//! The Stella agent as a library: [`targets_for`] wires the target kinds this host can
//! drive, and the router kinds installed here ([`routers`]), into an `agent-core`
//! registry, and [`run`] runs the agent. The
//! `stella-agent` binary, `stella agent run` and the in-process agent of
//! `stella server --dev` all go through here.

pub mod logging;
pub mod routers;

use std::path::Path;
use std::sync::Arc;

use stella_agent_core::{error_chain, AgentConfig, AgentError, TargetRegistry};
use stella_target_compose::{ComposeConfig, ComposeTarget};
use stella_target_docker::{DockerConfig, DockerTarget};
#[cfg(feature = "ecs")]
use stella_target_ecs::EcsTarget;
use stella_target_nomad::NomadTarget;
use stella_target_ssh::SshTarget;
use stella_target_winrm::WinrmTarget;
use tokio_util::sync::CancellationToken;

/// The target kinds this agent can drive on this host, keeping their state under
/// `data_dir`. Each kind is its own crate under `agents/`. A kind that needs a local
/// engine is registered only when the engine answers, so an agent never advertises a
/// capability it cannot use (`docker` needs `/var/run/docker.sock` to answer a ping).
/// `ssh`, `winrm`, `nomad` and `ecs` (in builds with the `ecs` feature, the default)
/// need nothing local and are always registered.
pub async fn targets_for(data_dir: &Path) -> TargetRegistry {
    let mut registry = TargetRegistry::new();
    let docker = DockerConfig {
        sticker_dir: data_dir.join("stickers"),
    };
    match DockerTarget::connect_local(docker).await {
        Ok(target) => {
            registry.register(Arc::new(target));
        }
        Err(error) => {
            tracing::info!(
                error = %error_chain(&error),
                "no docker engine answers; this agent does not drive docker targets"
            );
        }
    }
    registry.register(Arc::new(SshTarget::new()));
    registry.register(Arc::new(NomadTarget::new()));
    registry.register(Arc::new(WinrmTarget::new()));
    // `ecs` drives services through the ECS API; its SDK client is made on first use.
    #[cfg(feature = "ecs")]
    registry.register(Arc::new(EcsTarget::new()));
    // `compose` needs the engine and a Compose generation (v2 `docker compose` or v1
    // `docker-compose`); its sticker files go where each target's `sticker_dir` says.
    match ComposeTarget::connect_local(ComposeConfig::default()).await {
        Ok(target) => {
            registry.register(Arc::new(target));
        }
        Err(error) => {
            tracing::info!(
                error = %error_chain(&error),
                "no docker engine or no compose answers; this agent does not drive compose targets"
            );
        }
    }
    // Routers beside targets: nginx and HAProxy, where installed.
    routers::register_installed(&mut registry);
    registry
}

/// Enrols if needed, then stays connected until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let targets = targets_for(&config.data_dir).await;
    stella_agent_core::run(config, targets, shutdown).await
}

/// The exit status of an agent the control plane revoked: a service manager should not
/// restart it (systemd: `RestartPreventExitStatus=3`), since it will never be let back in.
pub const EXIT_REVOKED: u8 = 3;

/// The exit status for an agent that stopped with `error`: [`EXIT_REVOKED`] when it was
/// revoked, 1 otherwise.
pub fn exit_status(error: &AgentError) -> u8 {
    if error.is_revoked() {
        EXIT_REVOKED
    } else {
        1
    }
}

/// Cancels `token` on SIGINT or SIGTERM (systemd stops services with SIGTERM).
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// The flags of `stella agent run` and `stella-agent`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// REST URL of the control plane (the gateway is discovered from it).
    #[arg(
        long,
        env = "STELLA_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// Where the agent keeps its key, certificate and task journal.
    #[arg(
        long,
        env = "STELLA_AGENT_DATA_DIR",
        default_value = "/var/lib/stella-agent"
    )]
    pub data_dir: std::path::PathBuf,
    /// One-time join token; needed only for the first start.
    #[arg(long, env = "STELLA_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Agent name (default: host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Labels, `key=value`, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Gateway URL, instead of discovering it from the server's REST URL.
    #[arg(long, env = "STELLA_GRPC_URL")]
    pub grpc_url: Option<String>,
    /// How the agent logs.
    #[command(flatten)]
    pub log: logging::LogArgs,
}

impl RunArgs {
    /// The agent configuration these flags describe.
    pub fn into_config(self) -> AgentConfig {
        let mut config = AgentConfig::new(self.data_dir);
        config.server_url = Some(self.server);
        config.grpc_url = self.grpc_url;
        config.join_token = self.join_token;
        config.name = self.name;
        config.labels = self.labels.into_iter().collect();
        config
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("label `{s}` is not key=value")),
    }
}
