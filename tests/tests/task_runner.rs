//! The TaskRunner API end to end (docs/task-packs.md, the TaskRunner contract): the
//! contract's own request examples against a real server, every response checked
//! against the contract's schemas by Python's `jsonschema`; runs with every step kind
//! but `builtin:deploy` of a real release (covered by the promotion suites); failure
//! policy, parallelism, approvals bound to the plan hash, cancel, tenants.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::task_runner::{
    call, create_run, logs, pack, run_state, step, validate, wait_run,
};
use stella_tests::TestServer;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The contract's `basic-simulation` request.
fn basic_simulation() -> Value {
    let manifest = "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata:\n  name: scan-deploy\n  version: 1.0.0\nspec:\n  inputs:\n    - name: target\n      type: string\n      required: true\n  sandbox:\n    mode: sealed\n    egressAllowlist: []\n    cpuLimitMillicores: 100\n    memoryLimitMiB: 128\n    quotaSeconds: 60\n  slo:\n    runP95Seconds: 300\n    approvalP95Seconds: 900\n    maxQueueDepth: 100\n  steps:\n    - id: scan\n      run:\n        uses: builtin:scanner\n        with:\n          target: \"{{ inputs.target }}\"\n";
    json!({"manifest": manifest, "inputs": {"target": "registry.example.com/app:v1.2.3"}})
}

/// The contract's `create-run` request.
fn create_run_example(run_id: &str) -> Value {
    let manifest = "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata:\n  name: deploy-app\n  version: 2.0.0\nspec:\n  sandbox:\n    mode: sealed\n    egressAllowlist: []\n    cpuLimitMillicores: 200\n    memoryLimitMiB: 256\n    quotaSeconds: 120\n  slo:\n    runP95Seconds: 600\n    approvalP95Seconds: 1800\n    maxQueueDepth: 50\n  approvals:\n    - id: security-review\n      grants: [packs.approve]\n  steps:\n    - id: build\n      run:\n        uses: builtin:build\n    - id: approval\n      gate:\n        approval:\n          id: security-review\n          message: \"Security review required before deploy\"\n    - id: deploy\n      run:\n        uses: builtin:deploy\n";
    json!({"runId": run_id, "manifest": manifest, "tenantId": "tenant-prod"})
}

#[tokio::test]
async fn contract_examples_answer_in_the_contracts_shapes() -> anyhow::Result<()> {
    let server = TestServer::start().await?;

    // Simulation of the contract's example, and a plan error with its JSON path.
    let (status, _, simulation) = call(
        &server,
        Method::POST,
        "/v1/task-runner/simulations",
        None,
        Some(basic_simulation()),
    )
    .await?;
    assert_eq!(status, 200, "{simulation}");
    assert_eq!(simulation["steps"][0]["uses"], "builtin:scanner");
    assert_eq!(simulation["hasPendingApprovals"], false);
    let mut broken = basic_simulation();
    broken["manifest"] = json!(broken["manifest"]
        .as_str()
        .unwrap_or_default()
        .replace("builtin:scanner", "builtin:nope"));
    broken["inputs"] = json!({"target": 7});
    let (status, _, plan_errors) = call(
        &server,
        Method::POST,
        "/v1/task-runner/simulations",
        None,
        Some(broken),
    )
    .await?;
    assert_eq!(status, 400, "{plan_errors}");
    let paths: Vec<&str> = plan_errors["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["path"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        paths.contains(&"$.inputs.target") || paths.contains(&"$.spec.steps[0].run.uses"),
        "{plan_errors}"
    );
    let (status, _, missing) = call(
        &server,
        Method::POST,
        "/v1/task-runner/simulations",
        None,
        Some(json!({"inputs": {}})),
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(missing["errors"][0]["path"], "$.manifest");

    // The create-run example: 201 with Location, in the body's tenant (which exists,
    // and where the caller holds a role).
    server
        .post("/api/v1/tenants", json!({"name": "tenant-prod"}))
        .await?;
    server
        .post(
            "/api/v1/users/admin/bindings",
            json!({"tenant": "tenant-prod", "role": "admin"}),
        )
        .await?;
    let run_id = unique("run-20251206");
    let (status, headers, created) = call(
        &server,
        Method::POST,
        "/v1/task-runner/runs",
        None,
        Some(create_run_example(&run_id)),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/task-runner/runs/{run_id}").as_str())
    );
    let (status, _, duplicate) = call(
        &server,
        Method::POST,
        "/v1/task-runner/runs",
        None,
        Some(create_run_example(&run_id)),
    )
    .await?;
    assert_eq!(status, 409, "{duplicate}");
    // Tenants: the run is the tenant's, invisible to another one.
    let (status, _, _) = call(
        &server,
        Method::GET,
        &format!("/v1/task-runner/runs/{run_id}"),
        None,
        None,
    )
    .await?;
    assert_eq!(
        status, 404,
        "a run of tenant-prod is not the default tenant's"
    );
    let tenant = Some("tenant-prod");
    let waiting = stella_tests::wait_until("the run waits at its gate", RUN_TIMEOUT, || async {
        let (_, _, state) = call(
            &server,
            Method::GET,
            &format!("/v1/task-runner/runs/{run_id}"),
            tenant,
            None,
        )
        .await
        .ok()?;
        (state["status"] == "Waiting").then_some(state)
    })
    .await?;
    assert_eq!(step(&waiting, "build")["status"], "Succeeded");
    assert_eq!(step(&waiting, "approval")["status"], "Pending");
    assert_eq!(
        step(&waiting, "approval")["statusReason"],
        "awaiting-approval"
    );
    assert_eq!(
        step(&waiting, "approval")["gateMessage"],
        "Security review required before deploy"
    );
    assert_eq!(step(&waiting, "deploy")["status"], "Pending");
    let plan_hash = waiting["planHash"].as_str().unwrap_or_default().to_owned();

    // Approvals: malformed 400, stale plan hash 409, unknown approval 404, then approved.
    let approval_path = format!("/v1/task-runner/runs/{run_id}/approvals/security-review");
    let (status, _, malformed) = call(
        &server,
        Method::POST,
        &approval_path,
        tenant,
        Some(json!({"decision": "maybe", "planHash": plan_hash})),
    )
    .await?;
    assert_eq!(status, 400, "{malformed}");
    let (status, _, bad_hash) = call(
        &server,
        Method::POST,
        &approval_path,
        tenant,
        Some(json!({"decision": "approved", "planHash": "sha256:1234"})),
    )
    .await?;
    assert_eq!(status, 400, "{bad_hash}");
    let stale = format!("sha256:{}", "ab".repeat(32));
    let (status, _, conflict) = call(
        &server,
        Method::POST,
        &approval_path,
        tenant,
        Some(
            json!({"decision": "approved", "planHash": stale, "actorId": "user:alice@example.com"}),
        ),
    )
    .await?;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "plan_hash_mismatch");
    let (status, _, _) = call(
        &server,
        Method::POST,
        &format!("/v1/task-runner/runs/{run_id}/approvals/nope"),
        tenant,
        Some(json!({"decision": "approved", "planHash": plan_hash})),
    )
    .await?;
    assert_eq!(status, 404);
    let (status, _, decided) = call(&server, Method::POST, &approval_path, tenant, Some(json!({"decision": "approved", "planHash": plan_hash, "actorId": "user:alice@example.com", "summary": "Reviewed and approved for production deployment"}))).await?;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided, json!({"status": "approved", "resumed": true}));
    let finished = stella_tests::wait_until("the run finishes", RUN_TIMEOUT, || async {
        let (_, _, state) = call(
            &server,
            Method::GET,
            &format!("/v1/task-runner/runs/{run_id}"),
            tenant,
            None,
        )
        .await
        .ok()?;
        (state["status"] == "Succeeded").then_some(state)
    })
    .await?;
    assert_eq!(step(&finished, "approval")["status"], "Succeeded");
    assert_eq!(step(&finished, "deploy")["status"], "Succeeded");

    // Logs (NDJSON) and artifacts of the tenant's run.
    let text = server
        .client()
        .get(format!(
            "{}/v1/task-runner/runs/{run_id}/logs",
            server.api_url()
        ))
        .bearer_auth(&server.admin_token)
        .header("X-StellaOps-Tenant", "tenant-prod")
        .send()
        .await?;
    assert_eq!(
        text.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let lines: Vec<Value> = text
        .text()
        .await?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let events: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["eventType"].as_str())
        .collect();
    for expected in [
        "run.created",
        "run.started",
        "step.started",
        "step.completed",
        "gate.awaiting",
        "gate.approved",
        "run.completed",
    ] {
        assert!(
            events.contains(&expected),
            "{expected} missing from {events:?}"
        );
    }
    let (status, _, artifacts) = call(
        &server,
        Method::GET,
        &format!("/v1/task-runner/runs/{run_id}/artifacts"),
        tenant,
        None,
    )
    .await?;
    assert_eq!((status, artifacts.clone()), (200, json!([])));

    // Cancel answers 202 with Location, and metadata is served.
    let (status, headers, cancelled) = call(
        &server,
        Method::POST,
        &format!("/v1/task-runner/runs/{run_id}/cancel"),
        tenant,
        None,
    )
    .await?;
    assert_eq!(
        (status, cancelled.clone()),
        (202, json!({"status": "cancelled"}))
    );
    assert!(headers.get("location").is_some());
    let (status, headers, metadata) =
        call(&server, Method::GET, "/.well-known/openapi", None, None).await?;
    assert_eq!(status, 200);
    assert!(headers.get("etag").is_some() && headers.get("x-signature").is_some());
    let served = server
        .client()
        .get(format!(
            "{}{}",
            server.api_url(),
            metadata["specUrl"].as_str().unwrap_or_default()
        ))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(
        served,
        std::fs::read_to_string(stella_tests::task_runner::spec_path())?,
        "the served contract is the fixture"
    );

    let mut cases: Vec<(&str, &Value)> = vec![
        ("SimulationResponse", &simulation),
        ("PlanErrorResponse", &plan_errors),
        ("PlanErrorResponse", &missing),
        ("RunStateResponse", &created),
        ("ErrorEnvelope", &duplicate),
        ("RunStateResponse", &waiting),
        ("ErrorEnvelope", &malformed),
        ("ErrorEnvelope", &bad_hash),
        ("ErrorEnvelope", &conflict),
        ("ApprovalDecisionResponse", &decided),
        ("RunStateResponse", &finished),
        ("array:RunArtifact", &artifacts),
        ("OpenApiMetadata", &metadata),
    ];
    for line in &lines {
        cases.push(("RunLogEntry", line));
    }
    validate(&cases)
}

#[tokio::test]
async fn script_steps_pass_outputs_capture_artifacts_and_continue_on_error() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let steps = r#"    - id: hello
      run:
        uses: builtin:script
        with:
          script: |
            echo "greeting=hello from $(hostname)" >> "$STELLA_OUTPUTS"
            echo '{"ok":true}' > /output/report.json
            echo "$1-$NAME"
          args: [first]
          env: {NAME: pack}
    - id: flaky
      continueOnError: true
      run:
        uses: builtin:script
        with: {script: "exit 3"}
    - id: echo
      run:
        uses: builtin:script
        with:
          script: "echo '{{ steps.hello.outputs.greeting }}' > /work/echoed"
"#;
    let extra = "  outputs:\n    - {name: report, type: file, path: /output/report.json}\n    - {name: greeting, type: object, expression: \"{{ steps.hello.outputs.greeting }}\"}\n    - {name: missing, type: file, path: /output/none.json}\n";
    let id = unique("script");
    create_run(
        &server,
        json!({"runId": id, "manifest": pack("scripts", extra, steps)}),
    )
    .await?;
    let state = wait_run(&server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    assert_eq!(step(&state, "flaky")["status"], "Failed");
    assert_eq!(step(&state, "flaky")["continueOnError"], true);
    let work = server
        .config
        .data_dir
        .join(format!("runs/default/{id}/work"));
    assert_eq!(
        std::fs::read_to_string(work.join("echoed"))?.trim(),
        "hello from stella-sandbox"
    );
    let log = logs(&server, &id).await?;
    assert!(
        log.iter().any(|l| l["eventType"] == "step.output"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("first-pack"))),
        "{log:?}"
    );
    let (_, _, artifacts) = call(
        &server,
        Method::GET,
        &format!("/v1/task-runner/runs/{id}/artifacts"),
        None,
        None,
    )
    .await?;
    validate(&[("array:RunArtifact", &artifacts)])?;
    let by_name = |name: &str| {
        artifacts
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_name("report")["status"], "captured");
    assert_eq!(
        by_name("report")["storedPath"],
        format!("runs/{id}/artifacts/report")
    );
    assert_eq!(
        by_name("greeting")["expressionJson"],
        "\"hello from stella-sandbox\""
    );
    assert_eq!(by_name("missing")["status"], "failed");
    let report = server
        .client()
        .get(format!(
            "{}/v1/task-runner/runs/{id}/artifacts/report",
            server.api_url()
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(report.trim(), r#"{"ok":true}"#);
    Ok(())
}

#[tokio::test]
async fn failed_steps_are_retried_with_doubling_backoff() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let extra = "  failure: {maxAttempts: 3, backoffSeconds: 1, continueOnError: false}\n";
    let steps = "    - id: flaky\n      run:\n        uses: builtin:script\n        with:\n          script: 'n=$(cat /work/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /work/n; [ $n -ge 3 ]'\n";
    let id = unique("retry");
    create_run(
        &server,
        json!({"runId": id, "manifest": pack("retry", extra, steps)}),
    )
    .await?;
    let state = wait_run(&server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    assert_eq!(step(&state, "flaky")["attempts"], 3);
    let starts: Vec<chrono_ms::Ms> = logs(&server, &id)
        .await?
        .iter()
        .filter(|l| l["eventType"] == "step.started")
        .filter_map(|l| chrono_ms::parse(l["timestamp"].as_str()?))
        .collect();
    assert_eq!(starts.len(), 3);
    let (first_gap, second_gap) = (starts[1] - starts[0], starts[2] - starts[1]);
    assert!(
        first_gap >= 1000,
        "first retry after {first_gap} ms, backoff is 1 s"
    );
    assert!(
        second_gap >= 2000,
        "second retry after {second_gap} ms, backoff doubles to 2 s"
    );

    // Out of attempts: the run fails.
    let steps = "    - id: broken\n      run:\n        uses: builtin:script\n        with: {script: 'exit 1'}\n    - id: after\n      run:\n        uses: builtin:wait\n        with: {seconds: 0}\n";
    let extra = "  failure: {maxAttempts: 2, backoffSeconds: 0, continueOnError: false}\n";
    let id = unique("fails");
    create_run(
        &server,
        json!({"runId": id, "manifest": pack("fails", extra, steps)}),
    )
    .await?;
    let state = wait_run(&server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    assert_eq!(state["status"], "Failed", "{state}");
    assert_eq!(step(&state, "broken")["attempts"], 2);
    assert_eq!(step(&state, "after")["status"], "Pending");
    Ok(())
}

#[tokio::test]
async fn max_parallel_bounds_the_measured_concurrency() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut children = String::new();
    for i in 0..5 {
        children.push_str(&format!(
            "          - id: c{i}\n            run:\n              uses: builtin:script\n              with: {{script: 'echo start $(date +%s%N) >> /work/c{i}; sleep 1; echo end $(date +%s%N) >> /work/c{i}'}}\n"
        ));
    }
    let steps = format!(
        "    - id: fan\n      parallel:\n        maxParallel: 2\n        steps:\n{children}"
    );
    let id = unique("parallel");
    create_run(
        &server,
        json!({"runId": id, "manifest": pack("parallel", "", &steps)}),
    )
    .await?;
    let state = wait_run(&server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    assert_eq!(step(&state, "fan")["maxParallel"], 2);
    let work = server
        .config
        .data_dir
        .join(format!("runs/default/{id}/work"));
    let mut events = Vec::new();
    for i in 0..5 {
        let text = std::fs::read_to_string(work.join(format!("c{i}")))?;
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let kind = parts.next().unwrap_or_default() == "start";
            let at: u128 = parts.next().unwrap_or_default().parse()?;
            events.push((at, kind));
        }
    }
    events.sort();
    let (mut now, mut most) = (0_i32, 0_i32);
    for (_, start) in events {
        now += if start { 1 } else { -1 };
        most = most.max(now);
    }
    assert_eq!(most, 2, "at most maxParallel steps at once, and that many");
    Ok(())
}

#[tokio::test]
async fn cancel_skips_pending_steps_and_stops_the_running_one() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let steps = "    - id: long\n      run:\n        uses: builtin:script\n        with: {script: 'sleep 60'}\n    - id: later\n      run:\n        uses: builtin:wait\n        with: {seconds: 1}\n";
    let id = unique("cancel");
    create_run(
        &server,
        json!({"runId": id, "manifest": pack("cancel", "", steps)}),
    )
    .await?;
    stella_tests::wait_until("the script runs", RUN_TIMEOUT, || async {
        let state = run_state(&server, &id).await.ok()?;
        (step(&state, "long")["status"] == "Running").then_some(())
    })
    .await?;
    let started = Instant::now();
    let (status, _, _) = call(
        &server,
        Method::POST,
        &format!("/v1/task-runner/runs/{id}/cancel"),
        None,
        None,
    )
    .await?;
    assert_eq!(status, 202);
    let state = wait_run(&server, &id, &["Cancelled"], RUN_TIMEOUT).await?;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the running script was stopped"
    );
    assert_eq!(step(&state, "long")["status"], "Failed");
    assert_eq!(step(&state, "later")["status"], "Skipped");
    let (status, _, _) = call(
        &server,
        Method::POST,
        "/v1/task-runner/runs/nope/cancel",
        None,
        None,
    )
    .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn scanner_wait_and_http_check_steps() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/teapot",
            axum::routing::get(|| async { (axum::http::StatusCode::IM_A_TEAPOT, "no") }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let steps = format!(
        "    - id: pause\n      run:\n        uses: builtin:wait\n        with: {{seconds: 1}}\n    - id: health\n      run:\n        uses: builtin:http-check\n        with: {{url: 'http://127.0.0.1:{port}/healthz'}}\n    - id: teapot\n      continueOnError: true\n      run:\n        uses: builtin:http-check\n        with: {{url: 'http://127.0.0.1:{port}/teapot', retries: 1}}\n    - id: scan\n      continueOnError: true\n      run:\n        uses: builtin:scanner\n        with: {{target: 'registry.example.com/app:v1.2.3'}}\n"
    );
    let id = unique("kinds");
    let started = Instant::now();
    create_run(
        &server,
        json!({"runId": id, "manifest": pack("kinds", "", &steps)}),
    )
    .await?;
    let state = wait_run(&server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(step(&state, "health")["status"], "Succeeded");
    assert_eq!(step(&state, "teapot")["status"], "Failed");
    assert_eq!(step(&state, "scan")["status"], "Failed");
    let log = logs(&server, &id).await?;
    let reason = |key: &str| {
        log.iter()
            .find(|l| l["eventType"] == "step.failed" && l["stepId"] == key)
            .and_then(|l| l["metadata"]["reason"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    assert!(
        reason("teapot").contains("answered 418"),
        "{}",
        reason("teapot")
    );
    assert!(reason("scan").contains("not scanned"), "{}", reason("scan"));
    Ok(())
}

/// Milliseconds from RFC 3339 UTC times as the server writes them.
mod chrono_ms {
    pub type Ms = i64;

    pub fn parse(text: &str) -> Option<Ms> {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
    }
}

#[tokio::test]
async fn the_cli_simulates_runs_and_shows_packs() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let dir = stella_tests::TestDir::new("pack-cli");
    let file = dir.path().join("pack.yaml");
    let steps = "    - id: greet\n      run:\n        uses: builtin:script\n        with: {script: 'echo hello {{ inputs.who }}'}\n";
    let extra = "  inputs:\n    - {name: who, type: string, required: true}\n";
    std::fs::write(&file, pack("cli", extra, steps))?;
    let file = file.to_str().unwrap_or_default().to_owned();
    let env = [
        ("STELLA_SERVER", server.api_url()),
        ("STELLA_TOKEN", server.admin_token.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) =
        stella_tests::stella(&["pack", "simulate", &file, "--input", "who=world"], &env).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("greet") && out.contains("Pending"), "{out}");
    let (code, _, err) = stella_tests::stella(&["pack", "simulate", &file], &env).await?;
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("$.inputs.who"), "{err}");
    let (code, out, err) = stella_tests::stella(
        &[
            "-o",
            "json",
            "pack",
            "run",
            &file,
            "--input",
            "who=world",
            "--run-id",
            "cli-run",
            "--wait",
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let finished: Value = serde_json::from_str(&out)?;
    assert_eq!(finished["status"], "Succeeded");
    let (code, out, _) = stella_tests::stella(&["run", "logs", "cli-run"], &env).await?;
    assert_eq!(code, 0);
    assert!(out.contains("hello world"), "{out}");
    let (code, out, _) = stella_tests::stella(&["run", "list"], &env).await?;
    assert_eq!(code, 0);
    assert!(out.contains("cli-run"), "{out}");
    let (code, _, err) = stella_tests::stella(&["run", "show", "nope"], &env).await?;
    assert_ne!(code, 0);
    assert!(err.contains("no run"), "{err}");
    Ok(())
}

/// A script's output reaches the run's log line by line while it runs, not only when
/// the step has finished.
#[tokio::test]
async fn script_output_is_logged_while_the_script_runs() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let id = unique("live");
    let steps = "    - id: talk\n      run:\n        uses: builtin:script\n        with: {script: 'echo first; sleep 4; echo second'}\n";
    create_run(
        &server,
        json!({"runId": id, "manifest": pack("live", "", steps)}),
    )
    .await?;
    let live = |log: &[Value], text: &str| {
        log.iter().any(|l| {
            l["eventType"] == "step.output"
                && l["stepId"] == "talk"
                && l["message"] == text
                && l["metadata"]["stream"] == "live"
        })
    };
    let seen = stella_tests::wait_until(
        "the first line is logged",
        Duration::from_secs(20),
        || async {
            logs(&server, &id)
                .await
                .ok()
                .filter(|log| live(log, "first"))
        },
    )
    .await?;
    assert!(
        !live(&seen, "second"),
        "the second line came with the first"
    );
    let state = run_state(&server, &id).await?;
    assert_eq!(step(&state, "talk")["status"], "Running", "{state}");
    let state = wait_run(&server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    let log = logs(&server, &id).await?;
    assert!(live(&log, "second"), "{log:?}");
    Ok(())
}
