//! The one error type of this crate, and its conversion to agent-core's [`TargetError`].

use std::path::PathBuf;

use stella_agent_core::TargetError;

/// Everything that can go wrong while deploying a Compose project.
///
/// `Display` never repeats the source; log the chain with
/// [`stella_agent_core::error_chain`].
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
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
    /// The operator's Compose file cannot be used.
    #[error("compose file {path}: {reason}")]
    ComposeFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No Compose command answers on this host.
    #[error("{0}")]
    NoCompose(String),
    /// The engine did not answer the first requests in time.
    #[error("the docker engine did not answer within {seconds} s")]
    NoAnswer {
        /// The time it had.
        seconds: u64,
    },
    /// A request to the engine failed.
    #[error("docker engine: could not {action}")]
    Engine {
        /// What was being done, naming the object.
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
    /// A Compose command failed or did not finish in time.
    #[error("{command} {what}{output}")]
    Command {
        /// The command line (no secret is ever on it).
        command: String,
        /// `exited with status 1`, `did not finish within 120 s`, ….
        what: String,
        /// `: ` and the command's last output lines, or nothing.
        output: String,
        /// Its output lines (at most the last 50), for progress lines.
        lines: Vec<String>,
    },
    /// A service did not become running and healthy in time.
    #[error("service {service} {detail}")]
    Unhealthy {
        /// The Compose service.
        service: String,
        /// What was seen: `did not become healthy within 30 s: …`.
        detail: String,
    },
    /// `health_url` did not answer 2xx in time.
    #[error("health_url {url} did not answer 2xx within {timeout_seconds} s: {detail}")]
    HealthUrl {
        /// The URL.
        url: String,
        /// The health timeout.
        timeout_seconds: u64,
        /// The last answer or error.
        detail: String,
    },
    /// A deployment failed; what was done about it follows the failure.
    #[error("{failure}; {aftermath}")]
    Failed {
        /// Why the deployment failed.
        failure: Box<ComposeError>,
        /// `the previous lock file was restored and is running again`, ….
        aftermath: String,
    },
    /// Reading or writing a file (lock, state, sticker) failed.
    #[error("could not {action} {path}")]
    Io {
        /// `read`, `write`, `create the directory of`, ….
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

impl ComposeError {
    pub(crate) fn engine(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Self {
        let action = action.into();
        move |source| ComposeError::Engine { action, source }
    }

    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| ComposeError::Io {
            action,
            path,
            source,
        }
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

impl From<ComposeError> for TargetError {
    fn from(error: ComposeError) -> Self {
        match error {
            ComposeError::InvalidSettings(message) => TargetError::InvalidSettings(message),
            ComposeError::Cancelled => TargetError::Cancelled,
            other => TargetError::Failed {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
