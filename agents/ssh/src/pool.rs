//! The connection pool: one SSH connection per (host, port, user, key, pinned host key),
//! shared by every target on that host and by the drift rounds, made again when it is
//! found dead. Every libssh2 call runs on `spawn_blocking`.
//!
//! A [`Host`] holds its connection exclusively while one operation (a component's
//! deployment, a drift check) runs, so commands on one connection never interleave.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stella_agent_core::Progress;

use crate::conn::{Connection, Output, StreamKind};
use crate::error::SshError;
use crate::settings::Endpoint;

/// How many times an operation is started again after its connection was lost.
pub const MAX_RECONNECTS: u32 = 3;
/// The first wait before reconnecting; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// The connections of one agent.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Pool {
    /// The host `endpoint` names, held exclusively until the returned [`Host`] drops.
    pub(crate) async fn host(&self, endpoint: &Endpoint, command_timeout: Duration) -> Host {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slots.entry(endpoint.pool_key()).or_default().clone()
        };
        Host {
            guard: slot.lock_owned().await,
            endpoint: endpoint.clone(),
            command_timeout,
        }
    }

    /// How many connections are open now.
    pub(crate) fn open_connections(&self) -> usize {
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots
            .values()
            .filter(|slot| slot.try_lock().map(|c| c.is_some()).unwrap_or(true))
            .count()
    }
}

/// Runs `operation` (which takes the host from the pool itself), starting it again when
/// the connection is lost, at most [`MAX_RECONNECTS`] times with a doubling pause, each
/// time with a progress line. Operations are written so that running them again
/// continues where the last one stopped (every step first looks at the remote state).
pub(crate) async fn retrying<T, F, Fut>(
    addr: &str,
    progress: Option<&Progress>,
    mut operation: F,
) -> Result<T, SshError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SshError>>,
{
    let mut attempt = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match operation().await {
            Err(error) if error.is_connection_lost() && attempt < MAX_RECONNECTS => {
                attempt += 1;
                let line = match &error {
                    SshError::Connect { .. } => format!(
                        "cannot connect to {addr} ({error}), retrying (attempt {attempt}/{MAX_RECONNECTS})"
                    ),
                    _ => format!(
                        "connection to {addr} lost, reconnecting (attempt {attempt}/{MAX_RECONNECTS})"
                    ),
                };
                tracing::warn!(addr, attempt, error = %error, "ssh connection lost; trying again");
                if let Some(progress) = progress {
                    progress.report(line);
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            other => return other,
        }
    }
}

/// One host, its connection held for one operation.
#[derive(Debug)]
pub(crate) struct Host {
    guard: tokio::sync::OwnedMutexGuard<Option<Connection>>,
    pub(crate) endpoint: Endpoint,
    pub(crate) command_timeout: Duration,
}

impl Host {
    /// `host:port`.
    pub(crate) fn addr(&self) -> String {
        self.endpoint.addr()
    }

    /// Runs `work` on the connection (made first if there is none) on a blocking
    /// thread; a connection that failed is dropped, so the next call makes a new one.
    pub(crate) async fn with<T, W>(&mut self, work: W) -> Result<T, SshError>
    where
        T: Send + 'static,
        W: FnOnce(&mut Connection) -> Result<T, SshError> + Send + 'static,
    {
        let existing = self.guard.take();
        let endpoint = self.endpoint.clone();
        let (connection, result) = tokio::task::spawn_blocking(move || {
            let mut connection = match existing {
                Some(connection) => connection,
                None => match Connection::open(&endpoint) {
                    Ok(connection) => connection,
                    Err(error) => return (None, Err(error)),
                },
            };
            let result = work(&mut connection);
            let keep = !matches!(
                result,
                Err(SshError::Transport { .. } | SshError::Timeout { .. })
            );
            (keep.then_some(connection), result)
        })
        .await
        .map_err(SshError::Join)?;
        *self.guard = connection;
        result
    }

    /// Runs a command, failing on a non-zero exit status.
    pub(crate) async fn run(&mut self, what: &str, command: String) -> Result<Output, SshError> {
        let timeout = self.command_timeout;
        let what = what.to_owned();
        self.with(move |c| c.run(&what, &command, None, timeout))
            .await
    }

    /// Runs a command with `stdin`, failing on a non-zero exit status.
    pub(crate) async fn run_with_input(
        &mut self,
        what: &str,
        command: String,
        stdin: Vec<u8>,
    ) -> Result<Output, SshError> {
        let timeout = self.command_timeout;
        let what = what.to_owned();
        self.with(move |c| c.run(&what, &command, Some(&stdin), timeout))
            .await
    }

    /// Runs a command and returns what it did, whatever its exit status.
    pub(crate) async fn exec(&mut self, what: &str, command: String) -> Result<Output, SshError> {
        let timeout = self.command_timeout;
        let what = what.to_owned();
        self.with(move |c| c.exec(&what, &command, None, timeout, &mut |_, _| {}))
            .await
    }

    /// Runs a command whose output lines go to `on_line` as they arrive.
    pub(crate) async fn exec_streaming(
        &mut self,
        what: &str,
        command: String,
        mut on_line: impl FnMut(StreamKind, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        let timeout = self.command_timeout;
        let what = what.to_owned();
        self.with(move |c| c.exec(&what, &command, None, timeout, &mut on_line))
            .await
    }

    /// The error a failed command stands for.
    pub(crate) fn remote_error(&self, what: &str, output: &Output) -> SshError {
        SshError::Remote {
            addr: self.addr(),
            what: what.to_owned(),
            status: output.status,
            stderr: crate::conn::last_lines(&output.stderr, 10),
        }
    }

    /// Writes a file atomically (see [`Connection::write_file_atomic`]).
    pub(crate) async fn write_file(
        &mut self,
        path: String,
        contents: Vec<u8>,
    ) -> Result<(), SshError> {
        let timeout = self.command_timeout;
        self.with(move |c| c.write_file_atomic(&path, &contents, timeout))
            .await
    }

    /// Writes a file next to `path` (synced) and returns its name, for a command to
    /// move into place.
    pub(crate) async fn stage_file(
        &mut self,
        path: String,
        contents: Vec<u8>,
    ) -> Result<String, SshError> {
        let timeout = self.command_timeout;
        self.with(move |c| c.stage_file(&path, &contents, timeout))
            .await
    }

    /// Reads a file; `None` when absent.
    pub(crate) async fn read_file(&mut self, path: String) -> Result<Option<Vec<u8>>, SshError> {
        let timeout = self.command_timeout;
        self.with(move |c| c.read_file(&path, timeout)).await
    }

    /// The regular files of a directory.
    pub(crate) async fn list_dir(&mut self, dir: String) -> Result<Vec<String>, SshError> {
        let timeout = self.command_timeout;
        self.with(move |c| c.list_dir(&dir, timeout)).await
    }
}
