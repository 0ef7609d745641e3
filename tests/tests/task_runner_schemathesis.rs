//! Schemathesis (property-based API testing, from PyPI) against a running server, with
//! the TaskRunner contract and with Stella's generated OpenAPI document: no request
//! may make the server answer 5xx, and no response may break its schema. Runs are
//! bounded (`--max-examples`) to keep the suite fast.

use stella_tests::task_runner::spec_path;
use stella_tests::TestServer;

async fn schemathesis(server: &TestServer, schema: &str, max_examples: &str) -> anyhow::Result<()> {
    // Its cache goes to the working directory: the test's own, not the repository.
    let cwd = stella_tests::TestDir::new("schemathesis");
    let output = tokio::process::Command::new("schemathesis")
        .current_dir(cwd.path())
        .args([
            "run",
            schema,
            "--url",
            &server.api_url(),
            "--header",
            &format!("Authorization: Bearer {}", server.admin_token),
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            max_examples,
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "10",
            // The server's own CA, for the schema's URL and every request.
            "--tls-verify",
            &server.ca_file().display().to_string(),
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "schemathesis found problems with {schema}:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn schemathesis_finds_no_error_against_the_taskrunner_contract() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    schemathesis(&server, &spec_path().display().to_string(), "10").await
}

#[tokio::test]
async fn schemathesis_finds_no_error_against_the_generated_document() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = format!("{}/api/v1/openapi.json", server.api_url());
    schemathesis(&server, &url, "3").await
}
