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
