//! The `stella` binary as an operator uses it: a server process, `agent token create`,
//! a second agent process, `agents list -o json`; the CLI's refusals and error messages,
//! its help, aliases and completions, `-o json` on every command, and the logs of the
//! long-running commands.

use std::time::Duration;

use serde_json::Value;
use stella_tests::{free_port, stella, wait_until, ChildProcess, TestDir};

/// The one line of stderr of a failed command (and no other).
fn one_line_error(code: i32, stdout: &str, stderr: &str) -> String {
    assert_ne!(code, 0, "the command succeeded: {stdout}");
    assert!(stdout.is_empty(), "stdout of a failure: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr:?}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    for boilerplate in [
        "error sending request",
        "client error (",
        "hyper",
        "os error",
        "Caused by",
    ] {
        assert!(!line.contains(boilerplate), "{boilerplate} in {line}");
    }
    line.to_owned()
}

/// Whether a text holds an ANSI escape sequence.
fn has_ansi(text: &str) -> bool {
    text.contains('\u{1b}')
}

/// `2026-12-02T19:16:20.480Z`: RFC 3339 UTC with exactly three fractional digits.
fn is_millisecond_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() == 24
        && text.ends_with('Z')
        && bytes.get(10) == Some(&b'T')
        && bytes.get(19) == Some(&b'.')
        && text[20..23].bytes().all(|b| b.is_ascii_digit())
}

struct ServerProcess {
    process: ChildProcess,
    api_url: String,
    /// `127.0.0.1:PORT` of the agent gateway (TLS under the server's own CA).
    grpc_addr: String,
    token: String,
}

async fn start_server(dir: &TestDir, extra: &[&str]) -> anyhow::Result<ServerProcess> {
    let api = format!("127.0.0.1:{}", free_port().await?);
    let grpc = format!("127.0.0.1:{}", free_port().await?);
    let data_dir = dir.path().join("server");
    let mut args = vec![
        "server",
        "--data-dir",
        data_dir.to_str().expect("utf-8 path"),
        "--api-listen",
        &api,
        "--grpc-listen",
        &grpc,
    ];
    args.extend_from_slice(extra);
    let process = ChildProcess::spawn(&args, &[], dir.path().join("server.log"))?;
    // TLS under the server's own CA unless started plain; CLI commands sent to it trust
    // that CA (the harness passes STELLA_CA_FILE).
    let plain = extra.contains(&"--api-plain-http");
    let api_url = format!("{}://{api}", if plain { "http" } else { "https" });
    let token_path = data_dir.join("admin.token");
    let ca_file = data_dir.join("pki").join("ca.pem");
    let ready = wait_until("the server is up", Duration::from_secs(20), || async {
        let http = if plain {
            reqwest::Client::new()
        } else {
            stella_tests::client_trusting(&ca_file).ok()?
        };
        let ok = http
            .get(format!("{api_url}/readyz"))
            .send()
            .await
            .ok()?
            .status()
            .is_success();
        (ok && token_path.exists()).then_some(())
    })
    .await;
    if !plain {
        stella_tests::register_server_ca(&api_url, &ca_file);
    }
    if let Err(error) = ready {
        panic!("{error}\nserver log:\n{}", process.log_text());
    }
    let token = std::fs::read_to_string(&token_path)?.trim().to_owned();
    Ok(ServerProcess {
        process,
        api_url,
        grpc_addr: grpc,
        token,
    })
}

mod estate;
mod output;
