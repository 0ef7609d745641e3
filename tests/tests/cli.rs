//! The `stella` binary as an operator uses it: a server process, `agent token create`,
//! a second agent process, `agents list -o json`; and the CLI's refusals.

use std::time::Duration;

use serde_json::Value;
use stella_tests::{free_port, stella, wait_until, ChildProcess, TestDir};

struct ServerProcess {
    _process: ChildProcess,
    api_url: String,
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
    let api_url = format!("http://{api}");
    let token_path = data_dir.join("admin.token");
    let ready = wait_until("the server is up", Duration::from_secs(20), || async {
        let ok = reqwest::get(format!("{api_url}/readyz"))
            .await
            .ok()?
            .status()
            .is_success();
        (ok && token_path.exists()).then_some(())
    })
    .await;
    if let Err(error) = ready {
        panic!("{error}\nserver log:\n{}", process.log_text());
    }
    let token = std::fs::read_to_string(&token_path)?.trim().to_owned();
    Ok(ServerProcess {
        _process: process,
        api_url,
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
    assert_ne!(code, 0);
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("error: missing bearer token"),
        "{stderr}"
    );

    let (code, _, stderr) = stella(&["agents", "show", "ghost"], &with_token).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("not found"), "{stderr}");

    let (code, _, stderr) =
        stella(&["user", "create", "eve", "--role", "root"], &with_token).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown role"), "{stderr}");

    let (code, _, stderr) = stella(
        &["agents", "list"],
        &[
            ("STELLA_SERVER", "http://127.0.0.1:9"),
            ("STELLA_TOKEN", "x"),
        ],
    )
    .await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot reach the server"), "{stderr}");

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
    assert_eq!(users.as_array().map(Vec::len), Some(2));
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
    assert_eq!(run(args("env create dev")).await?.0, 0);
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
