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

#[tokio::test]
async fn a_second_agent_joins_with_a_token_from_the_cli() -> anyhow::Result<()> {
    let dir = TestDir::new("cli");
    let server = start_server(&dir, &[]).await?;
    let env = [
        ("STELLA_SERVER", server.api_url.as_str()),
        ("STELLA_TOKEN", server.token.as_str()),
    ];

    let (code, token, stderr) = stella(&["agent", "token", "create", "--ttl", "10m"], &env).await?;
    assert_eq!(code, 0, "{stderr}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("stj1."), "{token}");

    let agent_dir = dir.path().join("second");
    let agent = ChildProcess::spawn(
        &[
            "agent",
            "run",
            "--server",
            &server.api_url,
            "--data-dir",
            agent_dir.to_str().expect("utf-8"),
            "--join-token",
            &token,
            "--name",
            "second",
            "--label",
            "site=lab",
        ],
        &[],
        dir.path().join("agent.log"),
    )?;
    let listed = wait_until(
        "the agent is listed as connected",
        Duration::from_secs(10),
        || async {
            let (code, stdout, _) = stella(&["agents", "list", "-o", "json"], &env).await.ok()?;
            if code != 0 {
                return None;
            }
            let agents: Value = serde_json::from_str(&stdout).ok()?;
            agents
                .as_array()?
                .iter()
                .find(|a| a["name"] == "second" && a["state"] == "connected")
                .cloned()
        },
    )
    .await;
    let listed = match listed {
        Ok(listed) => listed,
        Err(error) => panic!("{error}\nagent log:\n{}", agent.log_text()),
    };
    assert_eq!(listed["labels"]["site"], "lab");
    assert!(listed["capabilities"].is_array());
    assert!(listed["host"]["hostname"].is_string());

    // Table output names the agent too.
    let (code, table, _) = stella(&["agents", "list"], &env).await?;
    assert_eq!(code, 0);
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("NAME")),
        "{table}"
    );
    assert!(table.contains("second"), "{table}");

    // A used token cannot enrol a third agent: the process fails with a message.
    let (code, _, stderr) = stella(
        &[
            "agent",
            "run",
            "--server",
            &server.api_url,
            "--data-dir",
            dir.path().join("third").to_str().expect("utf-8"),
            "--join-token",
            &token,
            "--name",
            "third",
        ],
        &[],
    )
    .await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("already used"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn the_cli_reports_errors_with_a_message_and_a_non_zero_exit() -> anyhow::Result<()> {
    let dir = TestDir::new("cli-errors");
    let server = start_server(&dir, &[]).await?;
    let with_token = [
        ("STELLA_SERVER", server.api_url.as_str()),
        ("STELLA_TOKEN", server.token.as_str()),
    ];
    let without_token = [("STELLA_SERVER", server.api_url.as_str())];

    let (code, stdout, stderr) = stella(&["agents", "list"], &without_token).await?;
    let line = one_line_error(code, &stdout, &stderr);
    assert_eq!(
        line,
        "error: missing bearer token (unauthenticated, http 401); pass --token or set STELLA_TOKEN"
    );

    // A bad token: the server's message, once.
    let (code, stdout, stderr) = stella(
        &["agents", "list", "--token", "stk1_not-a-token"],
        &without_token,
    )
    .await?;
    let line = one_line_error(code, &stdout, &stderr);
    assert!(line.contains("http 401"), "{line}");
    assert!(line.contains("unknown token"), "{line}");

    let (code, stdout, stderr) = stella(&["agents", "show", "ghost"], &with_token).await?;
    let line = one_line_error(code, &stdout, &stderr);
    assert!(line.contains("not found"), "{line}");

    // TLS: https to the agent gateway, which speaks TLS (HTTP/2 only, under the
    // server's own CA) and so refuses the CLI's handshake.
    let gateway = format!("https://{}", server.grpc_addr);
    let (code, stdout, stderr) = stella(
        &["agents", "list", "--server", &gateway],
        &[("STELLA_TOKEN", server.token.as_str())],
    )
    .await?;
    let line = one_line_error(code, &stdout, &stderr);
    assert!(
        line.starts_with(&format!(
            "error: cannot reach the server at {gateway}: TLS handshake failed: "
        )),
        "{line}"
    );

    let (code, stdout, stderr) =
        stella(&["user", "create", "eve", "--role", "root"], &with_token).await?;
    let line = one_line_error(code, &stdout, &stderr);
    assert!(line.contains("unknown role"), "{line}");

    // Permission: the server's message names what is missing.
    let (code, stdout, stderr) = stella(
        &["user", "create", "vic", "--role", "viewer", "-o", "json"],
        &with_token,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let viewer: Value = serde_json::from_str(&stdout)?;
    let viewer_token = viewer["token"].as_str().unwrap_or_default().to_owned();
    let (code, stdout, stderr) = stella(
        &["env", "create", "forbidden", "--token", &viewer_token],
        &without_token,
    )
    .await?;
    let line = one_line_error(code, &stdout, &stderr);
    assert!(line.contains("http 403"), "{line}");
    assert!(
        line.contains("this needs the operator role; you are viewer"),
        "{line}"
    );

    // user create → token works; -o json is exactly one document.
    let (code, stdout, stderr) = stella(
        &[
            "user",
            "create",
            "olga",
            "--role",
            "operator,approver",
            "-o",
            "json",
        ],
        &with_token,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout)?;
    assert_eq!(created["user"]["name"], "olga");
    let (code, stdout, _) = stella(&["user", "list", "-o", "json"], &with_token).await?;
    assert_eq!(code, 0);
    let users: Value = serde_json::from_str(&stdout)?;
    assert_eq!(users.as_array().map(Vec::len), Some(3));
    Ok(())
}

#[tokio::test]
async fn transport_errors_name_their_cause_on_one_line() -> anyhow::Result<()> {
    let token = [("STELLA_TOKEN", "stk1_whatever")];

    // No scheme.
    let (code, stdout, stderr) =
        stella(&["agents", "list", "--server", "127.0.0.1:8080"], &token).await?;
    assert_eq!(
        one_line_error(code, &stdout, &stderr),
        "error: invalid --server `127.0.0.1:8080`: no scheme, use http://… or https://…"
    );

    // A closed port.
    let port = free_port().await?;
    let url = format!("http://127.0.0.1:{port}");
    let (code, stdout, stderr) = stella(&["agents", "list", "--server", &url], &token).await?;
    assert_eq!(
        one_line_error(code, &stdout, &stderr),
        format!("error: cannot reach the server at {url}: connection refused")
    );

    // A name that does not resolve (`.invalid` never does, RFC 6761).
    let (code, stdout, stderr) = stella(
        &["agents", "list", "--server", "http://stella.invalid:8080"],
        &token,
    )
    .await?;
    let line = one_line_error(code, &stdout, &stderr);
    assert!(
        line.starts_with(
            "error: cannot reach the server at http://stella.invalid:8080: cannot resolve `stella.invalid`"
        ),
        "{line}"
    );

    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}", silent.local_addr()?);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let (code, stdout, stderr) = stella(
        &[
            "agents",
            "list",
            "--server",
            &silent_url,
            "--timeout",
            "500ms",
        ],
        &token,
    )
    .await?;
    holder.abort();
    assert_eq!(
        one_line_error(code, &stdout, &stderr),
        format!("error: cannot reach the server at {silent_url}: timed out after 500ms")
    );
    Ok(())
}

#[tokio::test]
async fn json_output_is_one_document_on_every_command() -> anyhow::Result<()> {
    let dir = TestDir::new("cli-json");
    let server = start_server(&dir, &[]).await?;
    let env = [
        ("STELLA_SERVER", server.api_url.as_str()),
        ("STELLA_TOKEN", server.token.as_str()),
    ];
    let commands: &[&[&str]] = &[
        &["whoami"],
        &["user", "create", "ci", "--role", "operator"],
        &["user", "list"],
        &["user", "token", "ci"],
        &["agent", "token", "create", "--ttl", "5m"],
        &["agent", "list"],
        &["env", "create", "dev"],
        &[
            "env",
            "create",
            "prod",
            "--after",
            "dev",
            "--drift",
            "remediate",
        ],
        &["env", "update", "prod", "--drift", "report"],
        &["env", "list"],
        &["env", "show", "prod"],
        &["registry", "add", "registry.example:5000", "--insecure"],
        &["registry", "list"],
        &["target", "list"],
        &["release", "list"],
        &["deployment", "list"],
        &["drift", "list", "--all"],
    ];
    for command in commands {
        for flags in [&["-o", "json"][..], &[][..]] {
            if flags.is_empty() && command.get(1).is_some_and(|c| *c == "create") {
                continue; // created once, with -o json
            }
            let mut args = command.to_vec();
            args.extend_from_slice(flags);
            let (code, stdout, stderr) = stella(&args, &env).await?;
            assert_eq!(code, 0, "{args:?}: {stderr}");
            assert!(!has_ansi(&stdout) && !has_ansi(&stderr), "{args:?}");
            if flags.is_empty() {
                assert!(!stdout.is_empty(), "{args:?} printed nothing");
                continue;
            }
            // One document: serde_json refuses trailing data.
            let document: Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}):\n{stdout}"));
            assert!(document.is_object() || document.is_array(), "{args:?}");
        }
    }
    // Times carry exactly three fractional digits, in JSON and in tables.
    let (_, stdout, _) = stella(&["env", "show", "dev", "-o", "json"], &env).await?;
    let dev: Value = serde_json::from_str(&stdout)?;
    let created = dev["created_at"].as_str().unwrap_or_default();
    assert!(is_millisecond_timestamp(created), "{created}");
    let (_, table, _) = stella(&["env", "show", "dev"], &env).await?;
    assert!(table.contains(created), "{table}");

    // whoami names the token's user and roles.
    let (_, stdout, _) = stella(&["whoami", "-o", "json"], &env).await?;
    let me: Value = serde_json::from_str(&stdout)?;
    assert_eq!(me["name"], "admin");
    assert!(me["roles"]
        .as_array()
        .is_some_and(|r| r.contains(&Value::from("admin"))));

    // Singular and plural name the same commands; flags go before or after.
    let pairs: &[(&[&str], &[&str])] = &[
        (&["agent", "list"], &["agents", "list"]),
        (&["deployment", "list"], &["deployments", "list"]),
        (&["env", "list"], &["envs", "list"]),
        (&["env", "list"], &["environments", "list"]),
        (&["target", "list"], &["targets", "list"]),
        (&["release", "list"], &["releases", "list"]),
        (&["registry", "list"], &["registries", "list"]),
        (&["user", "list"], &["users", "list"]),
    ];
    for (one, other) in pairs {
        let mut first = vec!["-o", "json"];
        first.extend_from_slice(one);
        let mut second = other.to_vec();
        second.extend_from_slice(&["-o", "json"]);
        let (code_a, a, err_a) = stella(&first, &env).await?;
        let (code_b, b, err_b) = stella(&second, &env).await?;
        assert_eq!(
            (code_a, code_b),
            (0, 0),
            "{one:?} {other:?}: {err_a} {err_b}"
        );
        let (a, b): (Value, Value) = (serde_json::from_str(&a)?, serde_json::from_str(&b)?);
        assert_eq!(a, b, "{one:?} vs {other:?}");
    }
    Ok(())
}

#[tokio::test]
async fn help_completions_and_misplaced_flags() -> anyhow::Result<()> {
    let none: [(&str, &str); 0] = [];
    let (code, help, _) = stella(&["server", "--help"], &none).await?;
    assert_eq!(code, 0);
    for expected in [
        "--api-listen <ADDR>",
        "[default: 127.0.0.1:8080]",
        "[default: 0.0.0.0:8443; 127.0.0.1:8443 with --dev]",
        "[default: /var/lib/stella; a temp dir with --dev]",
        "--log-format <FORMAT>",
        "STELLA_LOG",
        "RUST_LOG",
        "NO_COLOR",
    ] {
        assert!(help.contains(expected), "{expected} missing:\n{help}");
    }
    for absent in ["--token", "--output", "--server", "Global options"] {
        assert!(!help.contains(absent), "{absent} present:\n{help}");
    }
    let usage = help
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_default();
    assert_eq!(usage, "Usage: stella server [OPTIONS]");

    let (_, help, _) = stella(&["agent", "run", "--help"], &none).await?;
    assert!(
        help.contains("--server <URL>") && help.contains("--log-format"),
        "{help}"
    );
    assert!(
        !help.contains("--token") && !help.contains("--output"),
        "{help}"
    );

    let (_, help, _) = stella(&["--help"], &none).await?;
    assert!(help.contains("Global options:"), "{help}");
    let (_, help, _) = stella(&["deployments", "list", "--help"], &none).await?;
    assert!(
        help.contains("Global options:") && help.contains("--token <TOKEN>"),
        "{help}"
    );
    let usage = help
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_default();
    assert!(
        !usage.contains("--token") && !usage.contains("--server"),
        "{usage}"
    );

    let (_, help, _) = stella(&["target", "create", "--help"], &none).await?;
    for key in [
        "docker",
        "container_name",
        "ports",
        "volumes",
        "command",
        "restart",
        "network",
        "health_cmd",
        "health_url",
        "health_timeout_seconds",
        "stop_timeout_seconds",
        "env.NAME",
        "components",
    ] {
        assert!(help.contains(key), "{key} missing:\n{help}");
    }
    for key in [
        "compose_file",
        "service.COMPONENT",
        "compose_version",
        "sticker_dir",
    ] {
        assert!(help.contains(key), "compose key {key} missing:\n{help}");
    }
    for kind in ["winrm", "nomad"] {
        assert!(!help.contains(kind), "{kind} offered:\n{help}");
    }
    let (code, _, stderr) = stella(
        &[
            "target", "create", "t", "--env", "e", "--agent", "a", "--kind", "nomad",
        ],
        &none,
    )
    .await?;
    assert_eq!(code, 2, "{stderr}");

    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = stella(&["completions", shell], &none).await?;
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(
            script.contains("stella") && script.contains("promote"),
            "{shell}"
        );
    }

    // Client flags are refused where they mean nothing.
    for args in [
        &["server", "--token", "x"][..],
        &["-o", "json", "server"][..],
        &["agent", "run", "-o", "json"][..],
    ] {
        let (code, stdout, stderr) = stella(args, &none).await?;
        assert_eq!(code, 2, "{args:?}: {stdout} {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn logs_are_plain_or_json_lines_and_coloured_only_on_a_terminal() -> anyhow::Result<()> {
    // The server's text log in a file: no colour.
    let dir = TestDir::new("cli-logs");
    let server = start_server(&dir, &[]).await?;
    let text = server.process.log_text();
    assert!(text.contains("INFO"), "{text}");
    assert!(!has_ansi(&text), "{text}");

    // --log-format json: every line one object; RUST_LOG is honoured.
    let api = format!("127.0.0.1:{}", free_port().await?);
    let grpc = format!("127.0.0.1:{}", free_port().await?);
    let data_dir = dir.path().join("json-server");
    let json_server = ChildProcess::spawn(
        &[
            "server",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--api-listen",
            &api,
            "--grpc-listen",
            &grpc,
            "--log-format",
            "json",
        ],
        &[("RUST_LOG", "debug"), ("STELLA_LOG", "")],
        dir.path().join("json-server.log"),
    )?;
    let lines = wait_until(
        "the server logs that it listens",
        Duration::from_secs(20),
        || async {
            let text = json_server.log_text();
            text.contains("admin token").then_some(text)
        },
    )
    .await;
    let lines = match lines {
        Ok(lines) => lines,
        Err(error) => panic!("{error}\n{}", json_server.log_text()),
    };
    let mut levels = Vec::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["target"].is_string(),
            "{line}"
        );
        levels.push(event["level"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        levels.iter().any(|l| l == "DEBUG"),
        "RUST_LOG=debug ignored: {levels:?}"
    );

    // The agent: json too, and text with colour only on a terminal without NO_COLOR.
    let agent_dir = dir.path().join("agent-without-identity");
    let agent_args = [
        "agent",
        "run",
        "--server",
        &server.api_url,
        "--data-dir",
        agent_dir.to_str().expect("utf-8 path"),
    ];
    let mut json_args = agent_args.to_vec();
    json_args.extend_from_slice(&["--log-format", "json"]);
    let (code, stdout, stderr) = stella(&json_args, &[]).await?;
    assert_ne!(code, 0, "{stdout}");
    let (events, last): (Vec<&str>, Vec<&str>) =
        stderr.lines().partition(|line| line.starts_with('{'));
    assert_eq!(last.len(), 1, "{stderr}");
    assert!(
        last[0].starts_with("error: agent stopped: no agent identity"),
        "{stderr}"
    );
    assert!(!events.is_empty(), "{stderr}");
    for event in events {
        let event: Value = serde_json::from_str(event)?;
        assert!(event["level"].is_string(), "{event}");
    }
    let (_, _, stderr) = stella(&agent_args, &[]).await?;
    assert!(!has_ansi(&stderr), "{stderr}");

    // On a terminal (`script` gives the command one): coloured, unless NO_COLOR.
    let command_line = std::iter::once(stella_tests::stella_bin().display().to_string())
        .chain(agent_args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    for (no_color, coloured) in [(None, true), (Some("1"), false)] {
        let mut script = tokio::process::Command::new("script");
        script
            .args(["-qec", &command_line, "/dev/null"])
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null());
        if let Some(value) = no_color {
            script.env("NO_COLOR", value);
        }
        let output = script.output().await?;
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("no agent identity"), "{text}");
        assert_eq!(has_ansi(&text), coloured, "NO_COLOR={no_color:?}: {text:?}");
    }
    Ok(())
}

#[tokio::test]
async fn dev_mode_runs_a_local_agent() -> anyhow::Result<()> {
    let dir = TestDir::new("dev");
    let api = format!("127.0.0.1:{}", free_port().await?);
    let grpc = format!("127.0.0.1:{}", free_port().await?);
    let process = ChildProcess::spawn(
        &[
            "server",
            "--dev",
            "--api-listen",
            &api,
            "--grpc-listen",
            &grpc,
        ],
        &[],
        dir.path().join("dev.log"),
    )?;
    let token = wait_until(
        "the dev banner prints the admin token",
        Duration::from_secs(20),
        || async {
            process.log_text().lines().find_map(|line| {
                line.trim()
                    .strip_prefix("export STELLA_TOKEN=")
                    .map(str::to_owned)
            })
        },
    )
    .await;
    let token = match token {
        Ok(token) => token,
        Err(error) => panic!("{error}\nlog:\n{}", process.log_text()),
    };
    let api_url = format!("http://{api}");
    let env = [
        ("STELLA_SERVER", api_url.as_str()),
        ("STELLA_TOKEN", token.as_str()),
    ];
    wait_until(
        "the local agent is connected",
        Duration::from_secs(10),
        || async {
            let (code, stdout, _) = stella(&["agents", "show", "local", "-o", "json"], &env)
                .await
                .ok()?;
            let agent: Value = serde_json::from_str(&stdout).ok()?;
            (code == 0 && agent["state"] == "connected").then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_spine_from_the_cli() -> anyhow::Result<()> {
    use stella_tests::images::{docker_cli, ContainerCleanup, WebImages, WEB_HEALTH_CMD};
    use stella_tests::registry::TestRegistry;
    use stella_tests::stella_with_input;

    let dir = TestDir::new("cli-spine");
    let registry = TestRegistry::start_with_basic_auth("ci", "s3cret-pass").await?;
    let repo = format!(
        "stella-test/cli-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let images = WebImages::new(&registry.host(), &repo, &registry.docker_config());
    let v1 = images.publish("v1", true).await?;
    images.publish("v2", true).await?;
    let v3 = images.publish("v3", false).await?;
    let server = start_server(&dir, &[]).await?;
    let env = [
        ("STELLA_SERVER", server.api_url.as_str()),
        ("STELLA_TOKEN", server.token.as_str()),
    ];
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stella(&args, &env).await
    };
    let args = |text: &str| {
        text.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // An agent with the docker target.
    let (_, token, _) = run(args("agent token create")).await?;
    let _agent = ChildProcess::spawn(
        &[
            "agent",
            "run",
            "--server",
            &server.api_url,
            "--data-dir",
            dir.path().join("agent").to_str().expect("utf-8"),
            "--join-token",
            token.trim(),
            "--name",
            "host-1",
        ],
        &[],
        dir.path().join("agent.log"),
    )?;
    wait_until("the agent connects", Duration::from_secs(20), || async {
        let (code, out, _) = stella(&["agents", "show", "host-1", "-o", "json"], &env)
            .await
            .ok()?;
        let agent: Value = serde_json::from_str(&out).ok()?;
        (code == 0 && agent["state"] == "connected").then_some(())
    })
    .await?;

    // Registry credentials: stored, never printed.
    let (code, out, err) = stella_with_input(
        &[
            "registry",
            "add",
            &registry.host(),
            "--username",
            "ci",
            "--password-stdin",
            "-o",
            "json",
        ],
        &env,
        Some("s3cret-pass\n"),
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("s3cret-pass"));
    let (_, listed, _) = run(args("registry list -o json")).await?;
    assert!(
        !listed.contains("s3cret-pass") && listed.contains("\"has_password\": true"),
        "{listed}"
    );

    let target = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = ContainerCleanup::new([target.clone()]);
    assert_eq!(run(args("env create dev --allow-unscanned")).await?.0, 0);
    let (code, _, err) = stella(
        &[
            "target",
            "create",
            &target,
            "--env",
            "dev",
            "--kind",
            "docker",
            "--agent",
            "host-1",
            "--set",
            &format!("health_cmd={WEB_HEALTH_CMD}"),
            // The failing release fails at this timeout: keep the suite short.
            "--set",
            "health_timeout_seconds=8",
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0, "{err}");

    // Tag resolved through basic auth.
    let (code, out, err) = run(args(&format!(
        "release create web 1 --component web={}/{repo}:v1 -o json",
        registry.host()
    )))
    .await?;
    assert_eq!(code, 0, "{err}");
    let release: Value = serde_json::from_str(&out)?;
    assert_eq!(release["components"][0]["image"], v1);

    let (code, out, err) = run(args("promote web@1 --to dev --wait -o json")).await?;
    assert_eq!(code, 0, "{err}");
    let promotion: Value = serde_json::from_str(&out)?;
    assert_eq!(promotion["state"], "deployed");
    assert_eq!(promotion["version"], "1");
    // Progress went to stderr as plain timestamped lines (not a terminal), no colour.
    assert!(!has_ansi(&err), "{err}");
    let progress: Vec<&str> = err.lines().collect();
    assert!(progress.len() >= 3, "{err}");
    for line in &progress {
        let stamp = line.split_whitespace().next().unwrap_or_default();
        assert!(is_millisecond_timestamp(stamp), "{line}");
    }
    assert!(err.contains(&format!("{target}: ")), "{err}");

    // deployment show: the digest each target runs.
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (code, shown, err) = stella(&["deployment", "show", &deployment_id], &env).await?;
    assert_eq!(code, 0, "{err}");
    let digest = v1.split_once('@').map_or("", |p| p.1);
    let component_row = shown
        .lines()
        .find(|line| line.starts_with(&target) && line.contains(digest));
    assert!(
        component_row.is_some_and(|row| row.split_whitespace().nth(1) == Some("web")),
        "{shown}"
    );
    assert!(promotion["decision_id"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));
    let labels = docker_cli(
        &[
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            &format!("{target}-web"),
        ],
        None,
        None,
    )
    .await?;
    assert!(
        labels.contains(&format!(
            "\"ops.stella.digest\":\"{}\"",
            v1.split_once('@').map_or("", |p| p.1)
        )),
        "{labels}"
    );

    // A failing promotion exits non-zero with the reason.
    let (code, _, _) = stella(
        &[
            "release",
            "create",
            "web",
            "3",
            "--component",
            &format!("web={v3}"),
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0);
    let (code, _, err) = run(args("promote web@3 --to dev --wait")).await?;
    assert_ne!(code, 0);
    assert!(err.contains("failed"), "{err}");

    // Hand-made change → drift, then roll back.
    docker_cli(&["stop", "-t", "1", &format!("{target}-web")], None, None).await?;
    let drift = wait_until("drift list shows it", Duration::from_secs(30), || async {
        let (code, out, _) = stella(&["drift", "list", "-o", "json"], &env).await.ok()?;
        let drift: Value = serde_json::from_str(&out).ok()?;
        (code == 0 && drift.as_array().is_some_and(|d| !d.is_empty())).then_some(drift)
    })
    .await?;
    assert_eq!(drift[0]["kind"], "missing");
    let (code, out, err) = run(args("rollback --env dev --to 1 --wait -o json")).await?;
    assert_eq!(code, 0, "{err}");
    let rolled: Value = serde_json::from_str(&out)?;
    assert_eq!(rolled["kind"], "rollback");
    let (code, logs, _) = run(vec![
        "deployment".into(),
        "logs".into(),
        rolled["id"].as_str().unwrap_or_default().to_owned(),
    ])
    .await?;
    assert_eq!(code, 0);
    assert!(logs.contains("succeeded"), "{logs}");
    let (code, logs, _) = run(vec![
        "deployment".into(),
        "logs".into(),
        rolled["id"].as_str().unwrap_or_default().to_owned(),
        "-o".into(),
        "json".into(),
    ])
    .await?;
    assert_eq!(code, 0);
    let logs: Value = serde_json::from_str(&logs)?;
    assert!(
        logs.as_array().is_some_and(|lines| lines.len() >= 3),
        "{logs}"
    );

    // promote without --wait: the id on stdout, what is deployed on stderr; then
    // `logs --follow -o json` follows it, one JSON object per line.
    let (code, _, err) = run(args(&format!(
        "release create web 2 --component web={}/{repo}:v2",
        registry.host()
    )))
    .await?;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(args("promote web@2 --to dev")).await?;
    assert_eq!(code, 0, "{err}");
    let promoted = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "{out}");
    let note = format!("promotion {promoted} of web@2 to dev: deploying: allowed; deployment ");
    let deployment_id = err
        .lines()
        .find_map(|line| line.strip_prefix(&note))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    assert!(!deployment_id.is_empty(), "{err}");
    let (code, out, err) = stella(
        &[
            "deployment",
            "logs",
            &deployment_id,
            "--follow",
            "-o",
            "json",
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() >= 3, "{out}");
    for line in &lines {
        assert!(line["message"].is_string(), "{line}");
        assert!(
            is_millisecond_timestamp(line["at"].as_str().unwrap_or_default()),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l["target"] == target.as_str()),
        "{out}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l["message"] == "deployment succeeded"),
        "{out}"
    );

    // rollback without --wait names the version the server chose.
    let (code, out, err) = run(args("rollback --env dev")).await?;
    assert_eq!(code, 0, "{err}");
    let rollback_id = out.trim().to_owned();
    assert!(
        err.contains(&format!(
            "rolling back dev to web@1: deployment {rollback_id}"
        )),
        "{err}"
    );
    let (code, out, err) = run(args(&format!("deployment logs {rollback_id} --follow"))).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployment succeeded"), "{out}");

    // On a terminal: the live display, ending with the result per target.
    let command_line = format!(
        "{} promote web@2 --to dev --wait",
        stella_tests::stella_bin().display()
    );
    let output = tokio::process::Command::new("script")
        .args(["-qec", &command_line, "/dev/null"])
        .env("STELLA_SERVER", &server.api_url)
        .env("STELLA_TOKEN", &server.token)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(screen.contains("promotion web@2 → dev"), "{screen}");
    assert!(screen.contains("✓ succeeded in"), "{screen}");
    assert!(screen.contains(&target), "{screen}");

    // Bad input: a clear message and a non-zero exit.
    let (code, _, err) = run(args(
        "target create t2 --env nowhere --kind docker --agent host-1",
    ))
    .await?;
    assert_ne!(code, 0);
    assert!(err.contains("unknown environment"), "{err}");
    let (code, _, err) = run(args("release create web 9 --component web=NOT::A::REF")).await?;
    assert_ne!(code, 0);
    assert!(err.contains("invalid image reference"), "{err}");
    Ok(())
}

/// The everyday changes an operator makes from the CLI, and their refusals: one line, a
/// non-zero exit, nothing changed.
#[tokio::test]
async fn everyday_changes_and_their_refusals_from_the_cli() -> anyhow::Result<()> {
    let dir = TestDir::new("cli-everyday");
    let server = start_server(&dir, &[]).await?;
    let env = [
        ("STELLA_SERVER", server.api_url.as_str()),
        ("STELLA_TOKEN", server.token.as_str()),
    ];
    let ok = |args: &'static [&'static str]| async move {
        let (code, stdout, stderr) = stella(args, &env).await?;
        anyhow::ensure!(code == 0, "{args:?}: {stderr}");
        anyhow::Ok(stdout)
    };
    let refused = |args: &'static [&'static str]| async move {
        let (code, stdout, stderr) = stella(args, &env).await?;
        anyhow::Ok(one_line_error(code, &stdout, &stderr))
    };

    ok(&["env", "create", "dev", "--deployment-timeout", "15m"]).await?;
    let dev: Value = serde_json::from_str(&ok(&["env", "show", "dev", "-o", "json"]).await?)?;
    assert_eq!(dev["deployment_timeout_seconds"], 900, "{dev}");
    ok(&["env", "create", "stage", "--after", "dev"]).await?;
    let cycle = refused(&["env", "update", "dev", "--after", "stage"]).await?;
    assert!(
        cycle.contains("cycle") && cycle.contains("dev → stage → dev"),
        "{cycle}"
    );
    ok(&["env", "update", "dev", "--deployment-timeout", "default"]).await?;
    let dev: Value = serde_json::from_str(&ok(&["env", "show", "dev", "-o", "json"]).await?)?;
    assert_eq!(dev["deployment_timeout_seconds"], Value::Null, "{dev}");

    // Variables and secrets; a secret comes from stdin and is never shown.
    ok(&["env", "var", "set", "dev", "db_url", "postgres://db"]).await?;
    let (code, _, stderr) = stella_tests::stella_with_input(
        &["env", "secret", "set", "dev", "db_password"],
        &env,
        Some("hunter2-cli\n"),
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let listed = ok(&["env", "var", "list", "dev", "-o", "json"]).await?;
    let listed: Value = serde_json::from_str(&listed)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(!listed.to_string().contains("hunter2-cli"), "{listed}");
    let table = ok(&["env", "secret", "list", "dev"]).await?;
    assert!(
        table.contains("db_password") && !table.contains("db_url"),
        "{table}"
    );
    ok(&["env", "var", "unset", "dev", "db_url"]).await?;
    let gone = refused(&["env", "var", "unset", "dev", "db_url"]).await?;
    assert!(gone.contains("db_url"), "{gone}");

    // Refusals the probe's operator met, now with their reasons.
    let ttl = refused(&["agent", "token", "create", "--ttl", "0s"]).await?;
    assert!(ttl.contains("ttl"), "{ttl}");
    for args in [
        &["drift", "list", "--env", "nope"][..],
        &["deployment", "list", "--env", "nope"][..],
    ] {
        let (code, stdout, stderr) = stella(args, &env).await?;
        let line = one_line_error(code, &stdout, &stderr);
        assert!(line.contains("unknown environment `nope`"), "{line}");
    }
    let missing = refused(&["deployment", "cancel", "0123456789ab"]).await?;
    assert!(missing.contains("no deployment"), "{missing}");
    let in_use = refused(&["env", "delete", "dev"]).await?;
    assert!(in_use.contains("stage"), "{in_use}");

    // Deletes print what they removed; `-o json` one document.
    ok(&["env", "delete", "stage"]).await?;
    let deleted = ok(&["env", "delete", "dev", "-o", "json"]).await?;
    let deleted: Value = serde_json::from_str(&deleted)?;
    assert_eq!(deleted["deleted"]["name"], "dev", "{deleted}");
    ok(&["registry", "add", "registry.example.com"]).await?;
    ok(&["registry", "delete", "registry.example.com"]).await?;
    let unknown = refused(&["registry", "delete", "registry.example.com"]).await?;
    assert!(unknown.contains("registry.example.com"), "{unknown}");

    // Users: roles replaced; never yourself, never the last admin.
    ok(&["user", "create", "ci", "--role", "operator"]).await?;
    let ci: Value = serde_json::from_str(
        &ok(&["user", "update", "ci", "--role", "viewer", "-o", "json"]).await?,
    )?;
    assert_eq!(ci["roles"], serde_json::json!(["viewer"]), "{ci}");
    let last = refused(&["user", "update", "admin", "--role", "viewer"]).await?;
    assert!(last.contains("last admin"), "{last}");
    let own = refused(&["user", "delete", "admin"]).await?;
    assert!(own.contains("yourself"), "{own}");
    ok(&["user", "delete", "ci"]).await?;
    let users = ok(&["users", "list"]).await?;
    assert!(!users.contains("ci "), "{users}");
    drop(server.process);
    Ok(())
}
