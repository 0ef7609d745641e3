//! One SSH connection (blocking; callers run it on `spawn_blocking`): connect with a
//! timeout, check the pinned host key before authenticating, run commands with a
//! timeout capturing their output, and read and write files over SFTP.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ssh2::{ErrorCode, HashType, RenameFlags, Session};

use crate::error::SshError;
use crate::quote::shell_quote;
use crate::settings::{fingerprint, Endpoint, KeyMaterial};

/// A host's key, as `stella target create` shows it for confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, ….
    pub key_type: String,
}

/// Connects to `host:port`, completes the SSH handshake and returns the host's key
/// fingerprint without authenticating (blocking).
pub fn fetch_host_key(host: &str, port: u16, timeout: Duration) -> Result<HostKey, SshError> {
    let addr = display_addr(host, port);
    let session = handshake(host, port, &addr, timeout)?;
    let fingerprint = presented_fingerprint(&session, &addr)?;
    let key_type = match session.host_key() {
        Some((_, kind)) => key_type_name(kind).to_owned(),
        None => "unknown".to_owned(),
    };
    let _ = session.disconnect(None, "host key fetched", None);
    Ok(HostKey {
        fingerprint,
        key_type,
    })
}

fn key_type_name(kind: ssh2::HostKeyType) -> &'static str {
    match kind {
        ssh2::HostKeyType::Rsa => "ssh-rsa",
        ssh2::HostKeyType::Dss => "ssh-dss",
        ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
        ssh2::HostKeyType::Unknown => "unknown",
    }
}

fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// TCP connect (each resolved address in turn, each with `timeout`) and handshake.
fn handshake(host: &str, port: u16, addr: &str, timeout: Duration) -> Result<Session, SshError> {
    let connect_error = |reason: String| SshError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| connect_error(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = "no address".to_owned();
    let mut stream = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(tcp) => {
                stream = Some(tcp);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let stream = stream.ok_or_else(|| connect_error(last))?;
    let _ = stream.set_nodelay(true);
    let mut session = Session::new().map_err(|e| connect_error(e.to_string()))?;
    session.set_tcp_stream(stream);
    session.set_timeout(millis(timeout));
    session.handshake().map_err(|e| SshError::Transport {
        addr: addr.to_owned(),
        action: "doing the SSH handshake".to_owned(),
        reason: e.message().to_owned(),
    })?;
    Ok(session)
}

fn presented_fingerprint(session: &Session, addr: &str) -> Result<String, SshError> {
    session
        .host_key_hash(HashType::Sha256)
        .map(fingerprint)
        .ok_or_else(|| SshError::Transport {
            addr: addr.to_owned(),
            action: "reading the host key".to_owned(),
            reason: "the host presented no key".to_owned(),
        })
}

/// What a remote command did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Output {
    pub(crate) status: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Which stream a line came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Stdout,
    Stderr,
}

/// An authenticated connection.
pub(crate) struct Connection {
    session: Session,
    sftp: Option<ssh2::Sftp>,
    addr: String,
    /// Connections made so far by this process, for logs.
    pub(crate) serial: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Connection {
    /// Connects, checks the pinned host key, then authenticates with the user's key.
    pub(crate) fn open(endpoint: &Endpoint) -> Result<Connection, SshError> {
        let addr = endpoint.addr();
        let session = handshake(
            &endpoint.host,
            endpoint.port,
            &addr,
            endpoint.connect_timeout,
        )?;
        // Before anything is sent that depends on trusting the host.
        let presented = presented_fingerprint(&session, &addr)?;
        if presented != endpoint.host_key {
            let _ = session.disconnect(None, "host key mismatch", None);
            return Err(SshError::HostKeyMismatch {
                addr,
                presented,
                pinned: endpoint.host_key.clone(),
            });
        }
        let result = match &endpoint.key {
            KeyMaterial::File(path) => {
                if let Err(error) = std::fs::metadata(path) {
                    return Err(SshError::AuthRefused {
                        addr,
                        user: endpoint.user.clone(),
                        detail: format!(
                            " (the key file {} cannot be read: {error})",
                            path.display()
                        ),
                    });
                }
                session.userauth_pubkey_file(&endpoint.user, None, path, None)
            }
            KeyMaterial::Memory(pem) => {
                session.userauth_pubkey_memory(&endpoint.user, None, pem, None)
            }
        };
        if let Err(error) = result {
            let detail = match error.code() {
                ErrorCode::Session(-16) => {
                    " (the private key could not be read: not a supported, unencrypted key)"
                        .to_owned()
                }
                _ => String::new(),
            };
            let _ = session.disconnect(None, "authentication failed", None);
            return Err(SshError::AuthRefused {
                addr,
                user: endpoint.user.clone(),
                detail,
            });
        }
        if !session.authenticated() {
            return Err(SshError::AuthRefused {
                addr,
                user: endpoint.user.clone(),
                detail: String::new(),
            });
        }
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tracing::debug!(addr = %addr, user = %endpoint.user, serial, "ssh connection established");
        Ok(Connection {
            session,
            sftp: None,
            addr,
            serial,
        })
    }

    fn lost(&self, action: &str) -> impl FnOnce(ssh2::Error) -> SshError + '_ {
        let action = action.to_owned();
        move |error| self.lost_error(action, error.message())
    }

    fn lost_error(&self, action: String, reason: &str) -> SshError {
        SshError::Transport {
            addr: self.addr.clone(),
            action,
            reason: reason.to_owned(),
        }
    }

    /// Runs `command` (a command line for the remote user's shell) with `stdin`, for at
    /// most `timeout`; `on_line` gets each line of output as it arrives. `what` names
    /// the command in errors (never the command line itself, which may hold values the
    /// operator considers private).
    pub(crate) fn exec(
        &mut self,
        what: &str,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_line: &mut dyn FnMut(StreamKind, &str),
    ) -> Result<Output, SshError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let action = format!("running {what}");
        self.session.set_blocking(true);
        self.session.set_timeout(millis(timeout));
        let mut channel = self.session.channel_session().map_err(self.lost(&action))?;
        channel.exec(command).map_err(self.lost(&action))?;
        if let Some(input) = stdin {
            channel
                .write_all(input)
                .map_err(|e| self.lost_error(action.clone(), &e.to_string()))?;
        }
        channel.send_eof().map_err(self.lost(&action))?;
        let opened_ms = started.elapsed().as_millis() as u64;

        self.session.set_blocking(false);
        let mut stdout = Lines::default();
        let mut stderr = Lines::default();
        let mut buf = vec![0u8; 32 * 1024];
        let mut pause = Duration::from_millis(1);
        let result = loop {
            let mut progressed = false;
            let mut failed = None;
            for kind in [StreamKind::Stdout, StreamKind::Stderr] {
                let read = match kind {
                    StreamKind::Stdout => channel.read(&mut buf),
                    StreamKind::Stderr => channel.stderr().read(&mut buf),
                };
                match read {
                    Ok(0) => {}
                    Ok(n) => {
                        progressed = true;
                        let lines = match kind {
                            StreamKind::Stdout => &mut stdout,
                            StreamKind::Stderr => &mut stderr,
                        };
                        lines.push(&buf[..n], &mut |line| on_line(kind, line));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(reason) = failed {
                break Err(self.lost_error(action.clone(), &reason));
            }
            if progressed {
                pause = Duration::from_millis(1);
                continue;
            }
            if channel.eof() {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(SshError::Timeout {
                    addr: self.addr.clone(),
                    what: what.to_owned(),
                    seconds: timeout.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        self.session.set_blocking(true);
        let read_ms = started.elapsed().as_millis() as u64;
        result?;
        stdout.finish(&mut |line| on_line(StreamKind::Stdout, line));
        stderr.finish(&mut |line| on_line(StreamKind::Stderr, line));
        channel.wait_close().map_err(self.lost(&action))?;
        let mut status = channel.exit_status().map_err(self.lost(&action))?;
        if let Ok(signal) = channel.exit_signal() {
            if let Some(name) = signal.exit_signal {
                stderr.text.push_str(&format!("\nkilled by signal {name}"));
                if status == 0 {
                    status = 128;
                }
            }
        }
        tracing::debug!(addr = %self.addr, what, status, opened_ms, read_ms, elapsed_ms = started.elapsed().as_millis() as u64, "remote command");
        Ok(Output {
            status,
            stdout: stdout.text,
            stderr: stderr.text,
        })
    }

    /// [`Connection::exec`] without stdin or line callback, failing on a non-zero exit
    /// status with the last lines of stderr.
    pub(crate) fn run(
        &mut self,
        what: &str,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let output = self.exec(what, command, stdin, timeout, &mut |_, _| {})?;
        if output.status != 0 {
            return Err(self.remote_error(what, &output));
        }
        Ok(output)
    }

    pub(crate) fn remote_error(&self, what: &str, output: &Output) -> SshError {
        SshError::Remote {
            addr: self.addr.clone(),
            what: what.to_owned(),
            status: output.status,
            stderr: last_lines(&output.stderr, 10),
        }
    }

    /// The connection's SFTP channel, opened on first use and kept (starting the
    /// subsystem costs a round of the remote user's shell start-up).
    fn ensure_sftp(&mut self, action: &str) -> Result<(), SshError> {
        if self.sftp.is_none() {
            let sftp = self.session.sftp().map_err(self.lost(action))?;
            self.sftp = Some(sftp);
        }
        Ok(())
    }

    fn sftp_error(&self, action: &str, error: &ssh2::Error) -> SshError {
        match error.code() {
            ErrorCode::SFTP(_) => SshError::Failed(format!(
                "could not {action} on {}: {}",
                self.addr,
                error.message()
            )),
            ErrorCode::Session(_) => self.lost_error(action.to_owned(), error.message()),
        }
    }

    /// Creates `dir` and its missing parents over SFTP.
    fn mkdir_p(&self, sftp: &ssh2::Sftp, dir: &str) -> Result<(), SshError> {
        if sftp.stat(Path::new(dir)).is_ok_and(|stat| stat.is_dir()) {
            return Ok(());
        }
        let mut path = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            if sftp.stat(Path::new(&path)).is_ok() {
                continue;
            }
            if let Err(error) = sftp.mkdir(Path::new(&path), 0o755) {
                // Made meanwhile by someone else is fine.
                if !sftp.stat(Path::new(&path)).is_ok_and(|stat| stat.is_dir()) {
                    return Err(self.sftp_error(&format!("create the directory {path}"), &error));
                }
            }
        }
        Ok(())
    }

    /// Writes `contents` to a temporary file next to `path` over SFTP and syncs it
    /// (`fsync@openssh.com`); creates the directory as needed. Returns the file's path.
    pub(crate) fn stage_file(
        &mut self,
        path: &str,
        contents: &[u8],
        timeout: Duration,
    ) -> Result<String, SshError> {
        let dir = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_owned());
        let file_name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.session.set_blocking(true);
        self.session.set_timeout(millis(timeout));
        let action = format!("write {path}");
        self.ensure_sftp(&action)?;
        let Some(sftp) = self.sftp.as_ref() else {
            return Err(self.lost_error(action, "no SFTP channel"));
        };
        self.mkdir_p(sftp, &dir)?;
        let nonce = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = format!("{dir}/.{file_name}.tmp-{}-{nonce}", std::process::id());
        let mut file = sftp
            .create(Path::new(&temp))
            .map_err(|e| self.sftp_error(&action, &e))?;
        file.write_all(contents)
            .map_err(|e| self.lost_error(action.clone(), &e.to_string()))?;
        file.fsync().map_err(|e| self.sftp_error(&action, &e))?;
        Ok(temp)
    }

    /// Writes `contents` to `path` atomically: staged (see [`Connection::stage_file`]),
    /// then renamed over `path` — by SFTP when nothing is there yet, else with `mv -f`
    /// (rename(2)), since the SFTP v3 rename of OpenSSH does not replace a file.
    pub(crate) fn write_file_atomic(
        &mut self,
        path: &str,
        contents: &[u8],
        timeout: Duration,
    ) -> Result<(), SshError> {
        let temp = self.stage_file(path, contents, timeout)?;
        let action = format!("write {path}");
        let Some(sftp) = self.sftp.as_ref() else {
            return Err(self.lost_error(action, "no SFTP channel"));
        };
        let renamed = sftp.rename(
            Path::new(&temp),
            Path::new(path),
            Some(RenameFlags::ATOMIC | RenameFlags::OVERWRITE),
        );
        if let Err(error) = renamed {
            if let ErrorCode::Session(_) = error.code() {
                return Err(self.lost_error(action, error.message()));
            }
            self.run(
                &format!("rename into {path}"),
                &format!("mv -f -- {} {}", shell_quote(&temp), shell_quote(path)),
                None,
                timeout,
            )?;
        }
        Ok(())
    }

    /// The contents of a remote file; `None` when it does not exist.
    pub(crate) fn read_file(
        &mut self,
        path: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, SshError> {
        self.session.set_blocking(true);
        self.session.set_timeout(millis(timeout));
        let action = format!("read {path}");
        self.ensure_sftp(&action)?;
        let Some(sftp) = self.sftp.as_ref() else {
            return Err(self.lost_error(action, "no SFTP channel"));
        };
        let mut file = match sftp.open(Path::new(path)) {
            Ok(file) => file,
            Err(error) => {
                return match error.code() {
                    // NO_SUCH_FILE, NO_SUCH_PATH
                    ErrorCode::SFTP(2 | 10) => Ok(None),
                    _ => Err(self.sftp_error(&action, &error)),
                };
            }
        };
        let mut contents = Vec::new();
        file.read_to_end(&mut contents)
            .map_err(|e| self.lost_error(action, &e.to_string()))?;
        Ok(Some(contents))
    }

    /// The names of the regular files in a remote directory (none when it is absent).
    pub(crate) fn list_dir(
        &mut self,
        dir: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, SshError> {
        self.session.set_blocking(true);
        self.session.set_timeout(millis(timeout));
        let action = format!("list {dir}");
        self.ensure_sftp(&action)?;
        let Some(sftp) = self.sftp.as_ref() else {
            return Err(self.lost_error(action, "no SFTP channel"));
        };
        match sftp.readdir(Path::new(dir)) {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter(|(_, stat)| stat.is_file())
                .filter_map(|(path, _): (PathBuf, _)| {
                    path.file_name().map(|n| n.to_string_lossy().into_owned())
                })
                .collect()),
            Err(error) => match error.code() {
                ErrorCode::SFTP(2 | 10) => Ok(Vec::new()),
                _ => Err(self.sftp_error(&action, &error)),
            },
        }
    }
}

/// Collects a stream's text and cuts it into lines as it arrives.
#[derive(Default)]
struct Lines {
    text: String,
    partial: Vec<u8>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8], on_line: &mut dyn FnMut(&str)) {
        self.text.push_str(&String::from_utf8_lossy(bytes));
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            on_line(line.trim_end_matches('\r'));
        }
    }

    fn finish(&mut self, on_line: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            on_line(&line);
        }
    }
}

/// The last `count` non-empty lines of `text`, joined with ` | `.
pub(crate) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_as_they_arrive() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        lines.push(b"one\ntw", &mut |l| seen.push(l.to_owned()));
        lines.push(b"o\r\nthree", &mut |l| seen.push(l.to_owned()));
        lines.finish(&mut |l| seen.push(l.to_owned()));
        assert_eq!(seen, ["one", "two", "three"]);
        assert_eq!(lines.text, "one\ntwo\r\nthree");
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
    }
}
