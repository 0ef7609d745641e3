//! The one error type of this crate, and its conversion to agent-core's [`TargetError`].

use stella_agent_core::TargetError;

/// Everything that can go wrong while driving a Windows host over WS-Management.
///
/// No variant carries the password or another secret value.
#[derive(Debug, thiserror::Error)]
pub enum WinrmError {
    /// The target's settings are missing a key or hold an invalid value.
    #[error("{0}")]
    InvalidSettings(String),
    /// No answer from the listener (refused, unreachable, TLS, timed out): the operation
    /// may be retried.
    #[error("cannot reach the WinRM listener at {url}: {reason}")]
    Connect {
        /// The endpoint.
        url: String,
        /// Why, with the HTTP client's causes.
        reason: String,
    },
    /// The listener refused the credentials (HTTP 401 after authenticating).
    #[error("{url}: the host refused the credentials of user {user} ({auth} authentication)")]
    AuthRefused {
        /// The endpoint.
        url: String,
        /// The user.
        user: String,
        /// `basic` or `ntlm`.
        auth: &'static str,
    },
    /// The listener answered something that is not WS-Management.
    #[error("{url}: unexpected answer to {action}: {detail}")]
    Protocol {
        /// The endpoint.
        url: String,
        /// The WS-Management operation (`Create`, `Receive`, …).
        action: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The host answered a SOAP fault.
    #[error("{url}: {action} failed on the host: {fault}")]
    Fault {
        /// The endpoint.
        url: String,
        /// The WS-Management operation.
        action: &'static str,
        /// The fault's code, WMI error code and reason.
        fault: String,
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
    #[error("{what} on {addr} failed (exit code {code}){}", stderr_suffix(.stderr))]
    Remote {
        /// `host:port`.
        addr: String,
        /// The command (a description, never a secret).
        what: String,
        /// The exit code.
        code: i64,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// The deployment failed for another reason.
    #[error("{0}")]
    Failed(String),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

impl From<WinrmError> for TargetError {
    fn from(error: WinrmError) -> Self {
        match error {
            WinrmError::InvalidSettings(message) => TargetError::InvalidSettings(message),
            WinrmError::Cancelled => TargetError::Cancelled,
            other => TargetError::Failed {
                message: other.to_string(),
                source: None,
            },
        }
    }
}
