//! The one error type of this crate, and its conversion to agent-core's [`TargetError`].

use stella_agent_core::TargetError;

/// Everything that can go wrong while driving a Nomad job.
///
/// No variant carries the ACL token or a registry password.
#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    /// The target's settings are missing a key or hold an invalid value.
    #[error("{0}")]
    InvalidSettings(String),
    /// The Nomad API could not be reached, or the connection broke.
    #[error("cannot reach the Nomad API at {address} ({call}): {reason}")]
    Connect {
        /// `http(s)://host:port`.
        address: String,
        /// `GET /v1/job/:id`, …
        call: String,
        /// The transport error.
        reason: String,
    },
    /// Nomad answered with an error status; `body` is Nomad's message (plain text).
    #[error("{call} answered {status}: {}", body_text(.body))]
    Api {
        /// `GET /v1/job/:id`, …
        call: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body, trimmed.
        body: String,
    },
    /// Nomad answered 2xx with a body this client cannot read.
    #[error("{call}: unexpected answer: {reason}")]
    Decode {
        /// `GET /v1/job/:id`, …
        call: String,
        /// What is wrong.
        reason: String,
    },
    /// The job does not exist (and no `job_file` says what to register).
    #[error(
        "job {job:?} not found in namespace {namespace:?}: register it first, or set job_file"
    )]
    JobNotFound {
        /// Job ID.
        job: String,
        /// Namespace.
        namespace: String,
    },
    /// Someone changed the job between Stella's read and its register: nothing was changed.
    #[error("job {job:?} was changed by someone else while Stella registered it (index {index}); try again")]
    Conflict {
        /// Job ID.
        job: String,
        /// The `JobModifyIndex` Stella expected.
        index: u64,
    },
    /// The deployment failed on Nomad (or was cancelled, or timed out).
    #[error("{0}")]
    Failed(String),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
}

fn body_text(body: &str) -> &str {
    if body.trim().is_empty() {
        "(no body)"
    } else {
        body.trim()
    }
}

impl NomadError {
    /// Whether Nomad answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, NomadError::Api { status: 404, .. })
    }
}

impl From<NomadError> for TargetError {
    fn from(error: NomadError) -> Self {
        match error {
            NomadError::InvalidSettings(message) => TargetError::InvalidSettings(message),
            NomadError::Cancelled => TargetError::Cancelled,
            other => TargetError::Failed {
                message: other.to_string(),
                source: None,
            },
        }
    }
}
