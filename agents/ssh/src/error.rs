//! The one error type of this crate, and its conversion to agent-core's [`TargetError`].

use stella_agent_core::TargetError;

/// Everything that can go wrong while driving a host over SSH.
///
/// No variant carries key material, a secret value or a registry password.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The target's settings are missing a key or hold an invalid value.
    #[error("{0}")]
    InvalidSettings(String),
    /// No TCP connection (refused, unreachable, timed out).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The host presented another host key than the pinned one: nothing was sent to it.
    #[error(
        "host key mismatch for {addr}: the host presented {presented}, the target pins {pinned}; \
         refusing to authenticate (if the host's key was changed on purpose, update host_key)"
    )]
    HostKeyMismatch {
        /// `host:port`.
        addr: String,
        /// `SHA256:…` the host presented.
        presented: String,
        /// `SHA256:…` the settings pin.
        pinned: String,
    },
    /// The host refused the user's key.
    #[error("{addr}: the host refused the key for user {user}{detail}")]
    AuthRefused {
        /// `host:port`.
        addr: String,
        /// The remote user.
        user: String,
        /// More, when known (`; the key file … cannot be read`).
        detail: String,
    },
    /// The SSH connection failed or was lost (during the handshake or a command): the
    /// operation may be retried on a new connection.
    #[error("ssh connection to {addr} lost while {action}: {reason}")]
    Transport {
        /// `host:port`.
        addr: String,
        /// What was being done.
        action: String,
        /// libssh2's message.
        reason: String,
    },
    /// A remote command ran longer than `command_timeout_seconds`.
    #[error("{what} on {addr} did not finish within {seconds} s")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The command (a description, never a secret).
        what: String,
        /// The timeout.
        seconds: u64,
    },
    /// A remote command exited with a non-zero status.
    #[error("{what} on {addr} failed (exit status {status}){}", stderr_suffix(.stderr))]
    Remote {
        /// `host:port`.
        addr: String,
        /// The command (a description, never a secret).
        what: String,
        /// The exit status.
        status: i32,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// The deployment failed on the remote host for another reason (health, a name
    /// taken, …).
    #[error("{0}")]
    Failed(String),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A blocking helper task panicked.
    #[error("a background task failed")]
    Join(#[source] tokio::task::JoinError),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

impl SshError {
    /// Whether the connection was lost: the operation can go on over a new one.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, SshError::Transport { .. } | SshError::Connect { .. })
    }
}

impl From<SshError> for TargetError {
    fn from(error: SshError) -> Self {
        match error {
            SshError::InvalidSettings(message) => TargetError::InvalidSettings(message),
            SshError::Cancelled => TargetError::Cancelled,
            other => TargetError::Failed {
                message: other.to_string(),
                source: None,
            },
        }
    }
}
