//! Driving an estate from the CLI: agents joining, `--dev`, the spine, everyday changes and their refusals.

use super::*;

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
