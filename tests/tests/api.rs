//! REST API against a real in-process server: authentication, roles, the error
//! envelope, OpenAPI, health and metrics.

use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::TestServer;

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message missing: {body}"
    );
    assert!(
        body["error"]["traceId"]
            .as_str()
            .is_some_and(|t| t.len() >= 16),
        "traceId missing: {body}"
    );
}

#[tokio::test]
async fn no_token_is_401_with_the_envelope() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (status, body) = server
        .request(Method::GET, "/api/v1/agents", None, None)
        .await?;
    assert_eq!(status, 401);
    assert_envelope(&body, "unauthenticated");
    let (status, body) = server
        .request(
            Method::GET,
            "/api/v1/agents",
            Some("stk1_not-a-real-token"),
            None,
        )
        .await?;
    assert_eq!(status, 401);
    assert_envelope(&body, "unauthenticated");
    Ok(())
}

#[tokio::test]
async fn viewer_may_read_but_not_mutate() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let created = server
        .post(
            "/api/v1/users",
            json!({"name": "vera", "roles": ["viewer"]}),
        )
        .await?;
    let viewer = created["token"].as_str().expect("token").to_owned();
    assert_eq!(created["user"]["roles"], json!(["viewer"]));

    let (status, _) = server
        .request(Method::GET, "/api/v1/agents", Some(&viewer), None)
        .await?;
    assert_eq!(status, 200);
    for (path, body) in [
        ("/api/v1/agents/join-tokens", json!({})),
        (
            "/api/v1/users",
            json!({"name": "mallory", "roles": ["admin"]}),
        ),
        ("/api/v1/users/vera/tokens", json!({})),
    ] {
        let (status, reply) = server
            .request(Method::POST, path, Some(&viewer), Some(body))
            .await?;
        assert_eq!(status, 403, "{path}: {reply}");
        assert_envelope(&reply, "forbidden");
    }
    // Nothing was created by the refused calls.
    let users = server.get("/api/v1/users").await?;
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");
    Ok(())
}

#[tokio::test]
async fn operator_cannot_administer_and_approver_is_separate() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let operator = server
        .post(
            "/api/v1/users",
            json!({"name": "otto", "roles": ["operator"]}),
        )
        .await?["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (status, body) = server
        .request(
            Method::POST,
            "/api/v1/agents/join-tokens",
            Some(&operator),
            Some(json!({})),
        )
        .await?;
    assert_eq!(status, 403);
    assert_envelope(&body, "forbidden");
    let (status, whoami) = server
        .request(Method::GET, "/api/v1/whoami", Some(&operator), None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(whoami["name"], "otto");
    Ok(())
}

#[tokio::test]
async fn malformed_json_is_400_with_the_envelope_and_stores_nothing() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let response = server
        .client()
        .post(format!("{}/api/v1/users", server.api_url()))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body("{\"name\": \"broken\", \"roles\": [")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.headers().contains_key("x-trace-id"));
    let body: Value = response.json().await?;
    assert_envelope(&body, "malformed_json");

    // Valid JSON, wrong shape.
    let (status, body) = server
        .request(
            Method::POST,
            "/api/v1/users",
            Some(&server.admin_token),
            Some(json!({"name": 7})),
        )
        .await?;
    assert_eq!(status, 400);
    assert_envelope(&body, "invalid_body");

    // Valid shape, invalid values.
    for bad in [
        json!({"name": "Bad Name", "roles": ["viewer"]}),
        json!({"name": "ok", "roles": ["superuser"]}),
        json!({"name": "ok", "roles": []}),
    ] {
        let (status, body) = server
            .request(
                Method::POST,
                "/api/v1/users",
                Some(&server.admin_token),
                Some(bad.clone()),
            )
            .await?;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_envelope(&body, "invalid_argument");
    }
    let users = server.get("/api/v1/users").await?;
    assert_eq!(
        users.as_array().map(Vec::len),
        Some(1),
        "only admin: {users}"
    );
    Ok(())
}

#[tokio::test]
async fn duplicate_user_is_409_and_unknown_things_are_404() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    server
        .post("/api/v1/users", json!({"name": "dup", "roles": ["viewer"]}))
        .await?;
    let (status, body) = server
        .request(
            Method::POST,
            "/api/v1/users",
            Some(&server.admin_token),
            Some(json!({"name": "dup", "roles": ["admin"]})),
        )
        .await?;
    assert_eq!(status, 409);
    assert_envelope(&body, "user_exists");
    // The first user keeps its role.
    let users = server.get("/api/v1/users").await?;
    let dup = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "dup"))
        .cloned()
        .expect("dup listed");
    assert_eq!(dup["roles"], json!(["viewer"]));

    let (status, body) = server
        .request(
            Method::GET,
            "/api/v1/agents/nope",
            Some(&server.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    assert_envelope(&body, "not_found");
    let (status, body) = server
        .request(
            Method::GET,
            "/api/v1/no-such-endpoint",
            Some(&server.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    assert_envelope(&body, "not_found");
    Ok(())
}

#[tokio::test]
async fn openapi_health_and_metrics_are_served() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (status, spec) = server
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/api/v1/agents",
        "/api/v1/agents/join-tokens",
        "/api/v1/users",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());

    let http = server.client();
    let healthz = http
        .get(format!("{}/healthz", server.api_url()))
        .send()
        .await?;
    assert_eq!(healthz.status().as_u16(), 200);
    let readyz = http
        .get(format!("{}/readyz", server.api_url()))
        .send()
        .await?;
    assert_eq!(readyz.status().as_u16(), 200);
    let metrics = http
        .get(format!("{}/metrics", server.api_url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("stella_http_requests_total"), "{metrics}");
    assert!(metrics.contains("stella_agent_sessions"), "{metrics}");

    // First start wrote the admin token for its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.config.data_dir.join("admin.token"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    Ok(())
}

#[tokio::test]
async fn user_tokens_work_once_issued() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    server
        .post(
            "/api/v1/users",
            json!({"name": "ada", "roles": ["approver", "viewer"]}),
        )
        .await?;
    let second = server.post("/api/v1/users/ada/tokens", json!({})).await?;
    let token = second["token"].as_str().expect("token");
    assert!(token.starts_with("stk1_"));
    let (status, me) = server
        .request(Method::GET, "/api/v1/whoami", Some(token), None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(me["roles"], json!(["viewer", "approver"]));
    let (status, body) = server
        .request(
            Method::POST,
            "/api/v1/users/nobody/tokens",
            Some(&server.admin_token),
            Some(json!({})),
        )
        .await?;
    assert_eq!(status, 404, "{body}");
    Ok(())
}

/// The served document, checked by an independent validator (`openapi-spec-validator`
/// from PyPI; `cargo xtask test` installs it) and for what a client generator needs:
/// unique operation ids, written summaries and descriptions, declared error responses.
#[tokio::test]
async fn openapi_document_is_valid_and_complete() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (status, spec) = server
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await?;
    assert_eq!(status, 200);

    let file = server.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&spec)?)?;
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n",
        ])
        .arg(&file)
        .output()
        .map_err(|error| {
            anyhow::anyhow!("cannot run python3 ({error}); `cargo xtask test` provisions it")
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'openapi_spec_validator'"),
        "openapi-spec-validator is missing: `python3 -m pip install openapi-spec-validator` \
         (`cargo xtask test` installs it)"
    );
    assert!(
        output.status.success(),
        "the document is invalid:\n{stderr}"
    );

    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert!(spec["paths"][path]["get"].is_object(), "{path} missing");
    }
    let mut operation_ids = std::collections::BTreeSet::new();
    let paths = spec["paths"].as_object().cloned().unwrap_or_default();
    for (path, item) in &paths {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let name = format!("{} {path}", method.to_uppercase());
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{name}: no operationId");
            assert!(
                operation_ids.insert(id.to_owned()),
                "{name}: operationId `{id}` is used twice"
            );
            for field in ["summary", "description"] {
                assert!(
                    operation[field]
                        .as_str()
                        .is_some_and(|t| !t.trim().is_empty()),
                    "{name}: empty {field}"
                );
            }
            let responses = operation["responses"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let secured = operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty());
            let mut expected: Vec<&str> = Vec::new();
            if secured {
                expected.push("401");
            }
            if operation["requestBody"].is_object() && !path.starts_with("/oauth/") {
                expected.extend(["400", "413", "415"]);
            }
            for status in expected {
                assert!(
                    responses.contains_key(status),
                    "{name}: {status} undeclared"
                );
            }
            // The OAuth2 token endpoint answers errors as RFC 6749 §5.2 says, not with
            // the envelope, and takes a form rather than JSON.
            let oauth = path.starts_with("/oauth/");
            if oauth {
                for status in ["400", "401", "429"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/OAuthErrorBody",
                        "{name}: {status}"
                    );
                }
                continue;
            }
            for (status, response) in &responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorEnvelope",
                        "{name}: {status} without the envelope"
                    );
                }
            }
        }
    }
    assert!(
        operation_ids.contains("listAgents") && operation_ids.contains("listUsers"),
        "{operation_ids:?}"
    );
    Ok(())
}
