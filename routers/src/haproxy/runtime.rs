//! A client of HAProxy's Runtime API (the "stats socket" at admin level), written here
//! because it is a line protocol and small: connect to the UNIX socket, send one command
//! ending in `\n`, read until HAProxy closes the connection (non-interactive mode: one
//! command per connection), and the answer is text ending in an empty line. See
//! HAProxy's management guide, "Unix Socket commands".
//!
//! A command line must hold no `\n` and no `;` (HAProxy would run what follows as
//! another command); every value sent here was checked by the model first, and
//! [`RuntimeApi::command`] refuses such lines anyway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::RouterError;

/// Answers longer than this are refused (a `show servers state` of a few hundred slots
/// is tens of KiB).
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// One HAProxy admin socket.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    socket: PathBuf,
    timeout: Duration,
}

impl RuntimeApi {
    /// The socket at `socket`; each command must be answered within `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `line` and returns HAProxy's answer with its trailing empty line removed.
    pub async fn command(&self, line: &str) -> Result<String, RouterError> {
        if line.contains(['\n', '\r', ';']) {
            return Err(RouterError::Invalid(format!(
                "haproxy command {line:?} holds a line break or ';'"
            )));
        }
        let io_error = |source: std::io::Error| RouterError::Socket {
            path: self.socket.clone(),
            context: format!("`{line}`"),
            source,
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await.map_err(io_error)?;
            stream
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(io_error)?;
            // HAProxy closes the connection after its answer; `take` bounds what is
            // read from a server that would not.
            let mut reply = Vec::new();
            (&mut stream)
                .take(MAX_REPLY_BYTES as u64 + 1)
                .read_to_end(&mut reply)
                .await
                .map_err(io_error)?;
            if reply.len() > MAX_REPLY_BYTES {
                return Err(RouterError::HaproxyReply {
                    command: line.to_owned(),
                    detail: format!("answer longer than {MAX_REPLY_BYTES} bytes"),
                });
            }
            Ok(reply)
        };
        let reply = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                io_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} ms", self.timeout.as_millis()),
                ))
            })??;
        let text = String::from_utf8(reply).map_err(|_| RouterError::HaproxyReply {
            command: line.to_owned(),
            detail: "answer is not UTF-8".to_owned(),
        })?;
        Ok(text.trim_end_matches('\n').to_owned())
    }

    /// Sends a command whose success is an empty answer (`set server … weight|state`,
    /// `add map`, `commit map`).
    pub async fn command_quiet(&self, line: &str) -> Result<(), RouterError> {
        let reply = self.command(line).await?;
        if reply.trim().is_empty() {
            Ok(())
        } else {
            Err(RouterError::HaproxyRefused {
                command: line.to_owned(),
                reply: reply.trim().to_owned(),
            })
        }
    }
}
