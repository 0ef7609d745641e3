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
