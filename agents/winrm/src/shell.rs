//! Running one PowerShell script on the host: a shell is created, the command started,
//! its output received by long polls until it is done (an operation timeout fault means
//! "no output yet, poll again"), then the shell is deleted. A command that runs longer
//! than the command timeout, or whose deployment is cancelled, is terminated with a
//! Signal first.

use std::time::{Duration, Instant};

use base64::Engine as _;
use stella_agent_core::CancellationToken;

use crate::error::WinrmError;
use crate::soap::{self, Request, Response};
use crate::transport::Transport;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What a finished command left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Its exit code.
    pub exit_code: i64,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// The command line that runs `script`: PowerShell without profile or prompts, the
/// script as `-EncodedCommand` (base64 of UTF-16LE), so no quoting reaches `cmd`.
pub fn powershell_command(script: &str) -> (&'static str, Vec<String>) {
    let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    (
        "powershell.exe",
        vec![
            "-NoProfile".to_owned(),
            "-NonInteractive".to_owned(),
            "-ExecutionPolicy".to_owned(),
            "Bypass".to_owned(),
            "-EncodedCommand".to_owned(),
            base64::engine::general_purpose::STANDARD.encode(utf16),
        ],
    )
}

/// One WS-Management call; a fault becomes an error.
async fn call(transport: &Transport, request: Request<'_>) -> Result<Response, WinrmError> {
    let endpoint = transport.endpoint();
    let envelope = request.envelope(&endpoint.url, endpoint.operation_timeout.as_secs());
    let body = transport.send(request.name(), envelope).await?;
    let response = soap::parse(&body).map_err(|detail| WinrmError::Protocol {
        url: endpoint.url.clone(),
        action: request.name(),
        detail,
    })?;
    Ok(response)
}

fn fault_error(transport: &Transport, action: &'static str, fault: &soap::Fault) -> WinrmError {
    WinrmError::Fault {
        url: transport.endpoint().url.clone(),
        action,
        fault: fault.to_string(),
    }
}

/// Runs `script`, passing each complete output line to `on_line` as it arrives.
pub async fn run(
    transport: &Transport,
    what: &str,
    script: &str,
    timeout: Duration,
    cancel: &CancellationToken,
    mut on_line: impl FnMut(StreamKind, &str) + Send,
) -> Result<Output, WinrmError> {
    let created = call(transport, Request::Create).await?;
    if let Some(fault) = &created.fault {
        return Err(fault_error(transport, "Create", fault));
    }
    let shell = created.shell_id.ok_or_else(|| WinrmError::Protocol {
        url: transport.endpoint().url.clone(),
        action: "Create",
        detail: "no ShellId in the answer".to_owned(),
    })?;
    let result = run_in(
        transport,
        &shell,
        what,
        script,
        timeout,
        cancel,
        &mut on_line,
    )
    .await;
    // The shell goes whatever happened; a failure to delete it is only logged (WinRM
    // closes idle shells itself).
    match call(transport, Request::Delete { shell: &shell }).await {
        Ok(response) if response.fault.is_none() => {}
        Ok(response) => tracing::warn!(
            url = %transport.endpoint().url,
            fault = %response.fault.unwrap_or_default(),
            "deleting a WinRM shell failed"
        ),
        Err(error) => tracing::warn!(
            url = %transport.endpoint().url,
            error = %error,
            "deleting a WinRM shell failed"
        ),
    }
    result
}

async fn run_in(
    transport: &Transport,
    shell: &str,
    what: &str,
    script: &str,
    timeout: Duration,
    cancel: &CancellationToken,
    on_line: &mut (impl FnMut(StreamKind, &str) + Send),
) -> Result<Output, WinrmError> {
    let (command, arguments) = powershell_command(script);
    let started = call(
        transport,
        Request::Command {
            shell,
            command,
            arguments: &arguments,
        },
    )
    .await?;
    if let Some(fault) = &started.fault {
        return Err(fault_error(transport, "Command", fault));
    }
    let id = started.command_id.ok_or_else(|| WinrmError::Protocol {
        url: transport.endpoint().url.clone(),
        action: "Command",
        detail: "no CommandId in the answer".to_owned(),
    })?;
    let deadline = Instant::now() + timeout;
    let mut output = Output::default();
    let mut partial = [Vec::new(), Vec::new()];
    loop {
        if cancel.is_cancelled() {
            terminate(transport, shell, &id).await;
            return Err(WinrmError::Cancelled);
        }
        if Instant::now() >= deadline {
            terminate(transport, shell, &id).await;
            return Err(WinrmError::Timeout {
                addr: transport.endpoint().addr().to_owned(),
                what: what.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        let receive = Request::Receive {
            shell,
            command: &id,
        };
        let response = tokio::select! {
            response = call(transport, receive) => response?,
            () = cancel.cancelled() => continue,
            () = tokio::time::sleep_until(deadline.into()) => continue,
        };
        if let Some(fault) = &response.fault {
            if fault.is_operation_timeout() {
                continue;
            }
            return Err(fault_error(transport, "Receive", fault));
        }
        for (stream, bytes) in &response.streams {
            let (kind, index) = if stream == "stderr" {
                (StreamKind::Stderr, 1)
            } else {
                (StreamKind::Stdout, 0)
            };
            let text = String::from_utf8_lossy(bytes);
            match kind {
                StreamKind::Stdout => output.stdout.push_str(&text),
                StreamKind::Stderr => output.stderr.push_str(&text),
            }
            partial[index].extend_from_slice(bytes);
            while let Some(at) = partial[index].iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial[index].drain(..=at).collect();
                let line = String::from_utf8_lossy(&line);
                on_line(kind, line.trim_end_matches(['\n', '\r']));
            }
        }
        if response.done {
            for (index, kind) in [(0, StreamKind::Stdout), (1, StreamKind::Stderr)] {
                if !partial[index].is_empty() {
                    let line = String::from_utf8_lossy(&partial[index]).into_owned();
                    on_line(kind, line.trim_end_matches('\r'));
                }
            }
            output.exit_code = response.exit_code.unwrap_or_default();
            return Ok(output);
        }
    }
}

/// Best effort: the command is gone when the shell is deleted anyway.
async fn terminate(transport: &Transport, shell: &str, command: &str) {
    if let Err(error) = call(transport, Request::Signal { shell, command }).await {
        tracing::warn!(url = %transport.endpoint().url, error = %error, "terminating a command failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_go_as_utf16_base64() {
        let (command, arguments) = powershell_command("echo é");
        assert_eq!(command, "powershell.exe");
        assert_eq!(arguments[4], "-EncodedCommand");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&arguments[5])
            .expect("base64");
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        assert_eq!(String::from_utf16(&units).expect("utf-16"), "echo é");
    }
}
