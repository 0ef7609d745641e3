//! The script sandbox and run durability (docs/task-packs.md, "Sandbox" and
//! "Durability"): a sealed script cannot reach the host's loopback; a restricted one
//! reaches its allowlisted host only; memory and time limits stop a script with that
//! reason; a server killed with SIGKILL mid-run resumes the run on restart without
//! running a finished step again.

use std::time::Duration;

use serde_json::json;
use stella_tests::task_runner::{logs, pack, step};
use stella_tests::{free_port, wait_until, ChildProcess, TestDir, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A loopback HTTP server answering 200 `hello` and counting its requests.
async fn hello_server() -> anyhow::Result<(u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "hello"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, hits))
}

async fn run(server: &TestServer, id: &str, manifest: String) -> anyhow::Result<serde_json::Value> {
    stella_tests::task_runner::create_run(server, json!({"runId": id, "manifest": manifest}))
        .await?;
    stella_tests::task_runner::wait_run(server, id, &["Succeeded", "Failed"], RUN_TIMEOUT).await
}

fn failure_reason(log: &[serde_json::Value], key: &str) -> String {
    log.iter()
        .rev()
        .find(|l| l["eventType"] == "step.failed" && l["stepId"] == key)
        .and_then(|l| l["metadata"]["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn sealed_and_restricted_sandboxes_enforce_egress() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (allowed, allowed_hits) = hello_server().await?;
    let (other, other_hits) = hello_server().await?;

    // Sealed: the host's loopback server is out of reach.
    let sealed = format!(
        "    - id: probe\n      continueOnError: true\n      run:\n        uses: builtin:script\n        with: {{script: 'curl -sS --max-time 3 http://127.0.0.1:{allowed}/'}}\n"
    );
    let id = unique("sealed");
    let state = run(
        &server,
        &id,
        pack(
            "sealed",
            "  sandbox: {mode: sealed, egressAllowlist: []}\n",
            &sealed,
        ),
    )
    .await?;
    assert_eq!(step(&state, "probe")["status"], "Failed", "{state}");
    assert_eq!(allowed_hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Restricted: the allowlisted host answers through the proxy; another host is
    // refused by it, and a direct connection has no route.
    let script = format!(
        "curl -sSf --max-time 5 http://127.0.0.1:{allowed}/ > /work/allowed.txt; echo allowed=$? >> /work/result; \
         curl -sSf --max-time 5 http://127.0.0.1:{other}/ > /work/other.txt; echo other=$? >> /work/result; \
         curl -sSf --noproxy '*' --max-time 3 http://127.0.0.1:{allowed}/ > /dev/null; echo direct=$? >> /work/result"
    );
    let steps = format!("    - id: probe\n      run:\n        uses: builtin:script\n        with:\n          script: \"{script}\"\n");
    let extra =
        format!("  sandbox: {{mode: restricted, egressAllowlist: ['127.0.0.1:{allowed}']}}\n");
    let id = unique("restricted");
    let state = run(&server, &id, pack("restricted", &extra, &steps)).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    let work = server
        .config
        .data_dir
        .join(format!("runs/default/{id}/work"));
    let result = std::fs::read_to_string(work.join("result"))?;
    assert!(result.contains("allowed=0"), "{result}");
    assert!(!result.contains("other=0"), "{result}");
    assert!(!result.contains("direct=0"), "{result}");
    assert_eq!(std::fs::read_to_string(work.join("allowed.txt"))?, "hello");
    assert_eq!(other_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(allowed_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    Ok(())
}

#[tokio::test]
async fn memory_and_time_limits_stop_a_script_with_that_reason() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let steps = "    - id: hog\n      continueOnError: true\n      run:\n        uses: builtin:script\n        with: {script: \"python3 -c 'b = b\\\"x\\\" * (512 * 1024 * 1024); print(len(b))'\"}\n    - id: sleeper\n      continueOnError: true\n      run:\n        uses: builtin:script\n        with: {script: 'sleep 60'}\n";
    let extra =
        "  sandbox: {mode: sealed, egressAllowlist: [], memoryLimitMiB: 64, quotaSeconds: 3}\n";
    let id = unique("limits");
    let started = std::time::Instant::now();
    let state = run(&server, &id, pack("limits", extra, steps)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the sleeper was killed at its quota"
    );
    assert_eq!(step(&state, "hog")["status"], "Failed", "{state}");
    assert_eq!(step(&state, "sleeper")["status"], "Failed", "{state}");
    let log = logs(&server, &id).await?;
    let hog = failure_reason(&log, "hog");
    assert!(hog.contains("memory limit exceeded"), "{hog}");
    let sleeper = failure_reason(&log, "sleeper");
    assert!(sleeper.contains("time limit exceeded"), "{sleeper}");
    Ok(())
}

/// `stella server` as a child process on a data dir of its own.
async fn spawn_server(dir: &TestDir, api: u16, grpc: u16) -> anyhow::Result<ChildProcess> {
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "run_lease_ms = 2000\nrun_poll_interval_ms = 200\n")?;
    let data = dir.path().join("data");
    let args = [
        "server",
        "--config",
        config.to_str().unwrap_or_default(),
        "--data-dir",
        data.to_str().unwrap_or_default(),
        // The test is about durability; TLS has suites of its own.
        "--api-plain-http",
        "--api-listen",
        &format!("127.0.0.1:{api}"),
        "--grpc-listen",
        &format!("127.0.0.1:{grpc}"),
    ];
    let log = dir
        .path()
        .join(format!("server-{}.log", uuid::Uuid::new_v4().simple()));
    let process = ChildProcess::spawn(&args, &[], log)?;
    wait_until("the server is up", Duration::from_secs(30), || async {
        let ok = reqwest::get(format!("http://127.0.0.1:{api}/readyz"))
            .await
            .ok()?
            .status()
            .is_success();
        (ok && data.join("admin.token").exists()).then_some(())
    })
    .await?;
    Ok(process)
}

#[tokio::test]
async fn a_run_survives_sigkill_and_no_finished_step_runs_twice() -> anyhow::Result<()> {
    let dir = TestDir::new("runs-sigkill");
    let (api, grpc) = (free_port().await?, free_port().await?);
    let mut server = spawn_server(&dir, api, grpc).await?;
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))?
        .trim()
        .to_owned();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{api}/v1/task-runner/runs");
    let append = |name: &str| {
        format!("    - id: {name}\n      run:\n        uses: builtin:script\n        with: {{script: 'echo {name} >> /work/effects'}}\n")
    };
    let steps = format!(
        "{}{}    - id: pause\n      run:\n        uses: builtin:wait\n        with: {{seconds: 4}}\n{}",
        append("one"),
        append("two"),
        append("three")
    );
    let id = unique("durable");
    let manifest = pack(
        "durable",
        "  failure: {maxAttempts: 2, backoffSeconds: 0, continueOnError: false}\n",
        &steps,
    );
    let created = client
        .post(&base)
        .bearer_auth(&token)
        .json(&json!({"runId": id, "manifest": manifest}))
        .send()
        .await?;
    assert_eq!(created.status().as_u16(), 201);
    let state_of = |client: reqwest::Client, token: String, url: String| async move {
        client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    let url = format!("{base}/{id}");
    wait_until("the wait step runs", RUN_TIMEOUT, || {
        let (client, token, url) = (client.clone(), token.clone(), url.clone());
        async move {
            let state = state_of(client, token, url).await?;
            (step(&state, "pause")["status"] == "Running").then_some(())
        }
    })
    .await?;
    server.kill().await?;

    let _restarted = spawn_server(&dir, api, grpc).await?;
    let state = wait_until("the run finishes after the restart", RUN_TIMEOUT, || {
        let (client, token, url) = (client.clone(), token.clone(), url.clone());
        async move {
            let state = state_of(client, token, url).await?;
            matches!(state["status"].as_str(), Some("Succeeded" | "Failed")).then_some(state)
        }
    })
    .await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    assert_eq!(
        step(&state, "pause")["attempts"],
        2,
        "the interrupted step was retried"
    );
    assert_eq!(step(&state, "one")["attempts"], 1);
    let effects = std::fs::read_to_string(
        dir.path()
            .join(format!("data/runs/default/{id}/work/effects")),
    )?;
    assert_eq!(
        effects, "one\ntwo\nthree\n",
        "every step with a side effect ran exactly once"
    );
    Ok(())
}
