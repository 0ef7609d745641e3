//! The Stella agent as a library: [`targets`] wires the target kinds this build
//! supports into an `agent-core` registry, and [`run`] runs the agent. The
//! `stella-agent` binary, `stella agent run` and the in-process agent of
//! `stella server --dev` all go through here.

use stella_agent_core::{AgentConfig, AgentError, TargetRegistry};
use tokio_util::sync::CancellationToken;

/// The target kinds this agent can drive. Each kind is its own crate under `agents/`
/// and is registered here once it exists.
pub fn targets() -> TargetRegistry {
    TargetRegistry::default()
}

/// Enrols if needed, then stays connected until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    stella_agent_core::run(config, targets(), shutdown).await
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
}

impl RunArgs {
    /// The agent configuration for a control plane at `server_url` (REST).
    pub fn into_config(self, server_url: &str) -> AgentConfig {
        let mut config = AgentConfig::new(self.data_dir);
        config.server_url = Some(server_url.to_owned());
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
