//! What a user sees: one-line errors and exit codes, JSON output, help and completions, log formats.

use super::*;

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
        "nomad",
        "token_secret",
        "task.COMPONENT",
    ] {
        assert!(help.contains(key), "{key} missing:\n{help}");
    }
    for key in ["winrm", "password_secret", "ecs", "container.COMPONENT"] {
        assert!(help.contains(key), "{key} missing:\n{help}");
    }
    let (code, _, stderr) = stella(
        &[
            "target",
            "create",
            "t",
            "--env",
            "e",
            "--agent",
            "a",
            "--kind",
            "kubernetes",
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
