//! Pack gates against a real server: `gate.policy` evaluates a stored Rego policy (an
//! environment's, or one named by its content id) over the step's parameters, with the
//! failure action deciding what a denial does; `gate.approval` takes a decision only
//! from a caller holding every grant its approval declares.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::task_runner::{create_run, logs, pack, step, wait_run};
use stella_tests::TestServer;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

const POLICY: &str = r#"package stella.packs

deny contains msg if {
    input.parameters.critical > 0
    msg := sprintf("%d critical findings", [input.parameters.critical])
}

deny contains "the run has no plan hash" if {
    not startswith(input.run.planHash, "sha256:")
}
"#;

/// A pack whose policy gate names `policy` (and `version`, if any) with `critical`, then
/// a step that runs only if the gate let the run go on.
fn policy_pack(policy: &str, version: Option<&str>, critical: u32, action: &str) -> String {
    let version = version.map_or_else(String::new, |v| format!("          version: '{v}'\n"));
    let steps = format!(
        "    - id: policy\n      gate:\n        policy:\n          id: '{policy}'\n{version}          parameters: {{critical: {critical}}}\n          failureAction: {action}\n    - id: after\n      run:\n        uses: builtin:wait\n        with: {{seconds: 0}}\n"
    );
    pack("gated", "", &steps)
}

async fn run_to_end(server: &TestServer, manifest: String) -> anyhow::Result<(Value, Vec<Value>)> {
    let id = unique("gate");
    create_run(server, json!({"runId": id, "manifest": manifest})).await?;
    let state = wait_run(server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    let log = logs(server, &id).await?;
    Ok((state, log))
}

fn failure_reason(log: &[Value], key: &str) -> String {
    log.iter()
        .rev()
        .find(|l| l["eventType"] == "step.failed" && l["stepId"] == key)
        .and_then(|l| l["metadata"]["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn policy_gates_evaluate_stored_rego_over_their_parameters() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let env = unique("pol");
    let created = server
        .post(
            "/api/v1/environments",
            json!({"name": env, "policy": POLICY}),
        )
        .await?;
    let policy_id = created["policy"].as_str().unwrap_or_default().to_owned();
    assert!(policy_id.starts_with("sha256:"), "{created}");
    let by_env = format!("environment/{env}");

    let (state, _) = run_to_end(&server, policy_pack(&by_env, None, 0, "abort")).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    assert_eq!(step(&state, "policy")["status"], "Succeeded");

    let (state, log) = run_to_end(&server, policy_pack(&by_env, None, 2, "abort")).await?;
    assert_eq!(state["status"], "Failed", "{state}");
    assert_eq!(step(&state, "after")["attempts"], 0, "never ran: {state}");
    let reason = failure_reason(&log, "policy");
    assert!(reason.contains("denies: 2 critical findings"), "{reason}");

    // A warning lets the run go on past the denial.
    let (state, _) = run_to_end(&server, policy_pack(&by_env, None, 2, "warn")).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    assert_eq!(step(&state, "after")["status"], "Succeeded", "{state}");

    // By content id, pinned to its version; a pin to another version fails.
    let short = &policy_id["sha256:".len().."sha256:".len() + 12];
    let (state, _) = run_to_end(&server, policy_pack(&policy_id, Some(short), 0, "abort")).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    let (state, log) = run_to_end(
        &server,
        policy_pack(&by_env, Some("deadbeefdeadbeef"), 0, "abort"),
    )
    .await?;
    assert_eq!(state["status"], "Failed", "{state}");
    assert!(failure_reason(&log, "policy").contains("not the pinned deadbeefdeadbeef"));

    // An unknown policy, or an environment without one, fails with the reason.
    let (_, log) = run_to_end(&server, policy_pack("prod-release", None, 0, "abort")).await?;
    assert!(failure_reason(&log, "policy").contains("unknown policy `prod-release`"));
    let bare = unique("bare");
    server
        .post("/api/v1/environments", json!({"name": bare}))
        .await?;
    let (_, log) = run_to_end(
        &server,
        policy_pack(&format!("environment/{bare}"), None, 0, "abort"),
    )
    .await?;
    assert!(failure_reason(&log, "policy").contains("has no policy"));
    Ok(())
}

#[tokio::test]
async fn an_approval_is_decided_only_by_a_holder_of_its_grants() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let user = |name: String, roles: &'static [&'static str]| {
        let server = &server;
        async move {
            let created = server
                .post("/api/v1/users", json!({"name": name, "roles": roles}))
                .await?;
            anyhow::Ok(created["token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let operator = user(unique("op"), &["operator"]).await?;
    let reviewer = user(unique("rev"), &["operator", "approver"]).await?;
    let manifest = pack(
        "reviewed",
        "  approvals:\n    - id: review\n      grants: [packs.approve]\n",
        "    - id: gate\n      gate:\n        approval: {id: review}\n    - id: after\n      run:\n        uses: builtin:wait\n        with: {seconds: 0}\n",
    );
    let id = unique("grants");
    let created = create_run(&server, json!({"runId": id, "manifest": manifest})).await?;
    let plan_hash = created["planHash"].as_str().unwrap_or_default().to_owned();
    wait_run(&server, &id, &["Waiting"], RUN_TIMEOUT).await?;
    let path = format!("/v1/task-runner/runs/{id}/approvals/review");
    let body = json!({"decision": "approved", "planHash": plan_hash});

    let (status, refused) = server
        .request(Method::POST, &path, Some(&operator), Some(body.clone()))
        .await?;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "missing_grants", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("packs.approve"),
        "{refused}"
    );
    let (status, decided) = server
        .request(Method::POST, &path, Some(&reviewer), Some(body))
        .await?;
    assert_eq!(status, 200, "{decided}");
    let state = wait_run(&server, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    assert_eq!(state["status"], "Succeeded", "{state}");
    Ok(())
}
