//! The one error type of this crate, and its conversion to agent-core's [`TargetError`].

use stella_agent_core::TargetError;

/// Everything that can go wrong while driving an ECS service.
///
/// No variant carries a credential or a secret value.
#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    /// The target's settings are missing a key or hold an invalid value.
    #[error("{0}")]
    InvalidSettings(String),
    /// An ECS API call failed (refused, unreachable, throttled, …).
    #[error("ecs {operation} failed: {reason}")]
    Api {
        /// The operation: `DescribeServices`, `UpdateService`, ….
        operation: &'static str,
        /// The service's error code and message, or the transport error.
        reason: String,
    },
    /// The service is not there (never created, deleted, or draining).
    #[error("service {service} in cluster {cluster} {state}")]
    ServiceNotFound {
        /// The cluster.
        cluster: String,
        /// The service.
        service: String,
        /// `does not exist`, `is INACTIVE`, ….
        state: String,
    },
    /// The rollout failed: the platform's own rollout state said so, or it did not
    /// finish within the deploy timeout.
    #[error("{0}")]
    Rollout(String),
    /// The deployment cannot be carried out as asked (no container for a component, too
    /// many tags, …).
    #[error("{0}")]
    Failed(String),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl From<EcsError> for TargetError {
    fn from(error: EcsError) -> Self {
        match error {
            EcsError::InvalidSettings(message) => TargetError::InvalidSettings(message),
            EcsError::Cancelled => TargetError::Cancelled,
            other => TargetError::Failed {
                message: other.to_string(),
                source: None,
            },
        }
    }
}
