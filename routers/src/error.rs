//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while applying, reading or removing a route.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The route or its backends are not valid (name, address, weight, A/B rule, sets).
    #[error("{0}")]
    Invalid(String),
    /// Reading, writing, renaming or removing a file failed.
    #[error("{action} {path}")]
    File {
        /// `writing`, `reading`, `renaming … to`, `removing`, ….
        action: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command could not be started (binary missing, not executable, …).
    #[error("starting {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote on stderr (and stdout), trimmed.
        output: String,
    },
    /// A command did not finish in time (it was killed).
    #[error("{command} did not finish within {seconds} s")]
    CommandTimeout {
        /// The command line.
        command: String,
        /// The time allowed.
        seconds: u64,
    },
    /// `nginx -t` refused the configuration with the new route file; the previous file
    /// was put back and nginx was not reloaded.
    #[error("nginx -t refused {path} (the previous file is back in place, nginx was not reloaded): {message}")]
    NginxRejected {
        /// The route file.
        path: PathBuf,
        /// nginx's own message.
        message: String,
    },
    /// nginx took the reload signal but started no workers with the new configuration
    /// in time (its error log says why, e.g. a port it could not bind).
    #[error("nginx (master pid {pid}) started no new workers within {seconds} s of the reload signal; see its error log")]
    ReloadUnconfirmed {
        /// The master's pid.
        pid: u32,
        /// The time waited.
        seconds: u64,
    },
    /// A route file exists that this crate did not write, or was edited since.
    #[error("{path} was not written by stella-routers or was edited by hand: {reason}")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The HAProxy admin socket could not be reached or answered badly.
    #[error("haproxy admin socket {path}: {context}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// What was being done (the command).
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// HAProxy refused a runtime command.
    #[error("haproxy refused `{command}`: {reply}")]
    HaproxyRefused {
        /// The command.
        command: String,
        /// HAProxy's answer.
        reply: String,
    },
    /// HAProxy's configuration does not have what the route needs (a backend, enough
    /// server slots, the A/B map for a header or cookie).
    #[error("haproxy: {0}")]
    HaproxyConfig(String),
    /// HAProxy's answer could not be understood.
    #[error("haproxy: unexpected answer to `{command}`: {detail}")]
    HaproxyReply {
        /// The command.
        command: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// A runtime command failed after others had changed the route (HAProxy has no
    /// transaction across commands): the route is partly changed; applying it again
    /// finishes the change, since `apply` plans from what is live.
    #[error("route {route} is partly changed (apply it again)")]
    PartlyApplied {
        /// The route.
        route: String,
        /// The command's error.
        #[source]
        source: Box<RouterError>,
    },
    /// What the router reports after the change is not what was applied.
    #[error("route {route}: read back {live} after applying {wanted}")]
    Mismatch {
        /// The route.
        route: String,
        /// What was applied.
        wanted: String,
        /// What the router reports.
        live: String,
    },
}

impl RouterError {
    pub(crate) fn file(action: &str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::File {
            action: action.to_owned(),
            path: path.to_owned(),
            source,
        }
    }
}

/// `error` and its sources, joined by `: `, for the one log line that reports it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}
