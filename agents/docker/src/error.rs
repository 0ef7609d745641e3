//! The one error type of this crate, and its conversion to agent-core's [`TargetError`].

use std::path::PathBuf;

use stella_agent_core::TargetError;

/// Everything that can go wrong while driving a Docker engine.
///
/// `Display` never repeats the source; log the chain with
/// [`stella_agent_core::error_chain`].
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The target's settings are missing a key or hold an invalid value.
    #[error("{0}")]
    InvalidSettings(String),
    /// A component's image is not `repo@sha256:<64 hex>`.
    #[error("image {reference:?} of component {component} is not pinned by digest: {reason}")]
    InvalidImage {
        /// The component.
        component: String,
        /// The image reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine did not answer the first requests in time.
    #[error("the docker engine did not answer within {seconds} s")]
    NoAnswer {
        /// The time it had.
        seconds: u64,
    },
    /// A request to the engine failed.
    #[error("docker engine: could not {action}")]
    Engine {
        /// What was being done, naming the object (`inspect container app-web`).
        action: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// Pulling an image failed (unknown digest, refused credentials, unreachable registry).
    #[error("pulling {image} failed")]
    Pull {
        /// The image reference.
        image: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine reported the pull done but does not have the image.
    #[error("{image} is not present after pulling it")]
    MissingAfterPull {
        /// The image reference.
        image: String,
    },
    /// The new container did not pass its health check in time.
    #[error("container {container} did not become healthy within {timeout_seconds} s: {detail}")]
    HealthTimeout {
        /// The container name.
        container: String,
        /// The health timeout.
        timeout_seconds: u64,
        /// The last health log output or probe error.
        detail: String,
    },
    /// The new container stopped before it became healthy.
    #[error("container {container} stopped before it became healthy: {detail}")]
    Exited {
        /// The container name.
        container: String,
        /// Exit code, engine error and the last log lines.
        detail: String,
    },
    /// The engine accepted a removal but still lists the container.
    #[error("container {container} is still present after removing it")]
    StillPresent {
        /// The container.
        container: String,
    },
    /// A container name the target needs is held by a container it does not manage.
    #[error("container name {name} is taken by a container that target {target} does not manage")]
    NameTaken {
        /// The container name.
        name: String,
        /// The target.
        target: String,
    },
    /// The engine reports a container's published ports in a form that does not parse.
    #[error("the published ports of container {container} cannot be read: {detail}")]
    UnreadablePorts {
        /// The container.
        container: String,
        /// Which port.
        detail: String,
    },
    /// A slot cannot be used as asked (see `stella_agent_core::check_slot_name`).
    #[error("{0}")]
    InvalidSlot(String),
    /// A deployment failed and putting the old container back failed too.
    #[error("{failure}; restarting the old container {container} failed too: {restart_error}")]
    RollbackFailed {
        /// Why the deployment failed.
        failure: Box<DockerError>,
        /// The old container.
        container: String,
        /// Why it could not be started again.
        restart_error: String,
    },
    /// Reading or writing a sticker file failed.
    #[error("could not {action} sticker file {path}")]
    StickerIo {
        /// `read`, `write`, `create directory of`, ….
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A sticker file does not hold a sticker.
    #[error("sticker file {path} does not hold a sticker")]
    StickerCorrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A target or component name cannot be used as a file name.
    #[error("{what} name {name:?} cannot name a sticker file")]
    UnsafeName {
        /// `target` or `component`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A blocking helper task panicked.
    #[error("a background task failed")]
    Join(#[source] tokio::task::JoinError),
}

impl DockerError {
    pub(crate) fn engine(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Self {
        let action = action.into();
        move |source| DockerError::Engine { action, source }
    }

    /// Whether the engine answered 404 (no such container or image).
    pub(crate) fn is_not_found(error: &bollard::errors::Error) -> bool {
        matches!(
            error,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        )
    }
}

impl From<DockerError> for TargetError {
    fn from(error: DockerError) -> Self {
        match error {
            DockerError::InvalidSettings(message) => TargetError::InvalidSettings(message),
            DockerError::Cancelled => TargetError::Cancelled,
            other => TargetError::Failed {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
