//! Helpers of the TaskRunner suites: requests with the tenant header, waiting for a
//! run, and validation of responses against the TaskRunner contract
//! (`tests/fixtures/taskrunner-openapi.yaml`, extracted from the contract's text) with
//! Python's `jsonschema`, an implementation independent of the server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{wait_until, TestServer};

/// The contract, as a fixture.
pub fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/taskrunner-openapi.yaml")
}

/// A request with a tenant: (status, headers, body as JSON or text).
pub async fn call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    tenant: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
    let client = server.client();
    let mut request = client
        .request(method, format!("{}{path}", server.api_url()))
        .bearer_auth(&server.admin_token);
    if let Some(tenant) = tenant {
        request = request.header("X-StellaOps-Tenant", tenant);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, headers, value))
}

/// Creates a run (expects 201); returns its state.
pub async fn create_run(server: &TestServer, body: Value) -> anyhow::Result<Value> {
    let (status, _, reply) = call(
        server,
        reqwest::Method::POST,
        "/v1/task-runner/runs",
        None,
        Some(body),
    )
    .await?;
    if status != 201 {
        bail!("creating a run answered {status}: {reply}");
    }
    Ok(reply)
}

/// The state of a run.
pub async fn run_state(server: &TestServer, id: &str) -> anyhow::Result<Value> {
    server.get(&format!("/v1/task-runner/runs/{id}")).await
}

/// Waits until a run's `status` is one of `statuses`.
pub async fn wait_run(
    server: &TestServer,
    id: &str,
    statuses: &[&str],
    timeout: Duration,
) -> anyhow::Result<Value> {
    wait_until(
        &format!("run {id} is one of {statuses:?}"),
        timeout,
        || async {
            run_state(server, id)
                .await
                .ok()
                .filter(|s| statuses.iter().any(|st| s["status"] == *st))
        },
    )
    .await
}

/// The step row of `key` in a run state.
pub fn step<'a>(state: &'a Value, key: &str) -> &'a Value {
    state["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["stepId"] == key))
        .unwrap_or(&Value::Null)
}

/// The NDJSON log of a run, parsed.
pub async fn logs(server: &TestServer, id: &str) -> anyhow::Result<Vec<Value>> {
    let text = server
        .client()
        .get(format!(
            "{}/v1/task-runner/runs/{id}/logs",
            server.api_url()
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("log line {line}")))
        .collect()
}

/// Validates each (schema name in `components.schemas`, instance) against the
/// contract; fails with every violation.
pub fn validate(cases: &[(&str, &Value)]) -> anyhow::Result<()> {
    const SCRIPT: &str = r##"
import json, sys, yaml
from jsonschema import Draft202012Validator
spec = yaml.safe_load(open(sys.argv[1]))
cases = json.load(sys.stdin)
errors = []
for name, instance in cases:
    schema = {"$ref": "#/components/schemas/" + name, "components": spec["components"]}
    if name.startswith("array:"):
        schema = {"type": "array", "items": {"$ref": "#/components/schemas/" + name[6:]}, "components": spec["components"]}
    for error in Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).iter_errors(instance):
        errors.append(f"{name}: {list(error.absolute_path)}: {error.message}")
print("\n".join(errors))
sys.exit(1 if errors else 0)
"##;
    let input = json!(cases.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>()).to_string();
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(spec_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3 (jsonschema)")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin.write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "responses break the contract:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A pack of `steps` (YAML list items, already indented by 4) with `extra` spec lines.
pub fn pack(name: &str, extra: &str, steps: &str) -> String {
    format!(
        "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata:\n  name: {name}\n  version: 1.0.0\nspec:\n{extra}  steps:\n{steps}"
    )
}
