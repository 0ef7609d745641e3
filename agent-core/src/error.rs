//! The errors of agent-core: [`AgentError`] for the agent itself, [`TargetError`] for the
//! target implementations it drives.

use std::error::Error as StdError;
use std::path::PathBuf;

/// Everything that can go wrong in the agent: enrolment, the session, renewal, the data dir.
///
/// `Display` never repeats the source; log the chain with [`error_chain`].
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data dir holds no identity and no join token was given.
    #[error("no agent identity in {data_dir} and no join token to enrol with")]
    MissingJoinToken {
        /// Where the identity was looked for.
        data_dir: PathBuf,
    },
    /// `enrol` was asked to enrol a data dir that already holds an identity (enrolling
    /// again would replace the key of a working identity).
    #[error("{data_dir} already holds an agent identity; remove it to enrol again")]
    AlreadyEnrolled {
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The join token does not parse (`stj1.<secret>.<ca-fingerprint>`).
    #[error("the join token is malformed")]
    InvalidJoinToken(#[source] stella_pki::PkiError),
    /// Neither `grpc_url` nor `server_url` is configured.
    #[error("no control plane configured: set a server url or a grpc url")]
    NoServer,
    /// The gRPC URL is not an `https://host:port` URL.
    #[error("invalid grpc url {url:?}: {reason}")]
    InvalidGrpcUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `GET {server}/api/v1/gateway` failed.
    #[error("gateway discovery at {url} failed")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The CA fingerprint advertised by discovery or returned by `Enroll` differs from the
    /// one the join token pins.
    #[error("the join token pins ca {pinned} but {origin} presents ca {presented}")]
    CaPinMismatch {
        /// Who presented the other CA.
        origin: String,
        /// The fingerprint in the join token.
        pinned: String,
        /// The fingerprint presented.
        presented: String,
    },
    /// The TLS handshake with the gateway failed during enrolment: the server did not
    /// present the CA the join token pins.
    #[error("the server at {url} did not present the ca pinned by the join token ({pinned})")]
    EnrolmentServerUntrusted {
        /// The gateway URL.
        url: String,
        /// The fingerprint in the join token.
        pinned: String,
        /// The TLS error.
        #[source]
        source: rustls::Error,
    },
    /// The control plane refused the join token or the CSR.
    #[error("the control plane refused the enrolment ({code}): {message}")]
    EnrolmentRefused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The control plane refused this agent's certificate: it may have been revoked.
    #[error("the control plane at {url} refused this agent ({reason}); it may have been revoked")]
    Refused {
        /// The gateway URL.
        url: String,
        /// The gRPC status or TLS alert.
        reason: String,
    },
    /// The control plane revoked this agent: it will never be let back in.
    #[error("the control plane at {url} revoked this agent ({reason}): enrol it again with a new join token and an empty data dir")]
    Revoked {
        /// The gateway URL.
        url: String,
        /// The gRPC status or TLS alert that said so.
        reason: String,
    },
    /// A TLS handshake with the gateway failed.
    #[error("tls with {url} failed")]
    Tls {
        /// The gateway URL.
        url: String,
        /// The TLS error.
        #[source]
        source: rustls::Error,
    },
    /// The gateway could not be reached.
    #[error("could not connect to {url}")]
    Connect {
        /// The gateway URL.
        url: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed with a gRPC status.
    #[error("{call} failed")]
    Rpc {
        /// `Enroll`, `Connect` or `Renew`.
        call: &'static str,
        /// The status.
        #[source]
        source: tonic::Status,
    },
    /// The control plane answered something the agent cannot use.
    #[error("invalid {call} response: {reason}")]
    InvalidResponse {
        /// `Enroll`, `Connect` or `Renew`.
        call: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A PKI operation (key generation, CSR, TLS configuration) failed.
    #[error("{action} failed")]
    Pki {
        /// What was being done.
        action: &'static str,
        /// The PKI error.
        #[source]
        source: stella_pki::PkiError,
    },
    /// Reading or writing the data dir failed.
    #[error("could not {action} {path}")]
    Io {
        /// What was being done: `read`, `write`, `create`, ….
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A file in the data dir does not hold what it should.
    #[error("{path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A blocking helper task panicked or was cancelled.
    #[error("a background task failed")]
    Join(#[source] tokio::task::JoinError),
}

impl AgentError {
    /// Whether the control plane refused this agent (revoked, unknown certificate): retrying
    /// quickly cannot help, so the session retries at the maximum backoff.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            AgentError::Refused { .. } | AgentError::Revoked { .. }
        )
    }

    /// Whether the control plane revoked this agent: the agent stops instead of retrying.
    pub fn is_revoked(&self) -> bool {
        matches!(self, AgentError::Revoked { .. })
    }

    /// Whether retrying the same call later may succeed (network trouble, server restart).
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Connect { .. } | AgentError::Discovery { .. } => true,
            AgentError::Rpc { source, .. } => matches!(
                source.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        AgentError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pki(action: &'static str) -> impl FnOnce(stella_pki::PkiError) -> Self {
        move |source| AgentError::Pki { action, source }
    }
}

/// What a [`Target`](crate::Target) reports when it cannot plan, apply or inspect.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target's settings are missing a key or hold an invalid value.
    #[error("invalid target settings: {0}")]
    InvalidSettings(String),
    /// The task was cancelled (by the server, or at its deadline).
    #[error("cancelled")]
    Cancelled,
    /// Anything else, with a message for the operator and optionally its cause.
    #[error("{message}")]
    Failed {
        /// What failed, for the operator.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
}

impl TargetError {
    /// A failure with a message and no underlying error.
    pub fn failed(message: impl Into<String>) -> Self {
        TargetError::Failed {
            message: message.into(),
            source: None,
        }
    }

    /// A failure with a message and the error that caused it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        TargetError::Failed {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Formats an error with its whole source chain: `outer: inner: innermost`.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors (hyper, io::Error wrappers) repeat their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Finds a rustls error anywhere in a chain, including inside `io::Error`s (whose
/// `source()` skips the wrapped error itself).
pub(crate) fn find_rustls_error<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&'a (dyn StdError + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return Some(tls);
                }
                if let Some(found) = find_rustls_error(inner) {
                    return Some(found);
                }
            }
        }
        current = err.source();
    }
    None
}
