//! Managing webhooks: validation, roles, and the CLI.

use super::*;

#[tokio::test]
async fn webhook_requests_are_validated_and_for_admins_only() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    for (body, code, hint) in [
        (
            json!({"url": "ftp://example.com/", "events": ["*"]}),
            "invalid_url",
            "http",
        ),
        (
            json!({"url": "not a url", "events": ["*"]}),
            "invalid_url",
            "absolute",
        ),
        (
            json!({"url": "https://user:pw@example.com/", "events": ["*"]}),
            "invalid_url",
            "credentials",
        ),
        (
            json!({"url": "https://example.com/", "events": ["drift.detectd"]}),
            "unknown_event",
            "agent.unreachable",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "unknown_event",
            "at least one",
        ),
        (
            json!({"url": "https://example.com/"}),
            "invalid_body",
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["*"], "secret": "mine"}),
            "invalid_body",
            "secret",
        ),
    ] {
        let (status, reply) = server
            .call(Method::POST, "/api/v1/webhooks", Some(body.clone()))
            .await?;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_envelope(&reply, code);
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(hint), "{body}: {reply}");
        // The secret is not echoed, nor a URL with credentials.
        assert!(!message.contains("pw@"), "{reply}");
    }
    assert_eq!(server.get("/api/v1/webhooks").await?, json!([]));

    let (id, secret) = create_webhook(
        &server,
        "https://hooks.example.com/x",
        &["drift.detected", "*"],
    )
    .await?;
    let list = server.get("/api/v1/webhooks").await?;
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["events"], json!(["*"]));
    assert_eq!(list[0]["created_by"], "admin");
    assert!(list[0].get("secret").is_none(), "{list}");
    assert!(!list.to_string().contains(&secret));

    let viewer = server
        .post(
            "/api/v1/users",
            json!({"name": "vera", "roles": ["viewer", "operator", "approver"]}),
        )
        .await?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/webhooks".to_owned(),
            Some(json!({"url": "https://e.com/", "events": ["*"]})),
        ),
        (Method::GET, "/api/v1/webhooks".to_owned(), None),
        (Method::DELETE, format!("/api/v1/webhooks/{id}"), None),
        (
            Method::GET,
            format!("/api/v1/webhooks/{id}/deliveries"),
            None,
        ),
    ] {
        let (status, reply) = server
            .request(method.clone(), &path, Some(&viewer), body)
            .await?;
        assert_eq!(status, 403, "{method} {path}: {reply}");
        assert_envelope(&reply, "forbidden");
    }
    // Events are for every reader.
    let (status, reply) = server
        .request(Method::GET, "/api/v1/events", Some(&viewer), None)
        .await?;
    assert_eq!(status, 200, "{reply}");
    for (query, status, code) in [
        ("?kind=drift.detectd", 400, "unknown_event"),
        ("?release=shop", 400, "invalid_argument"),
        ("?environment=nowhere", 404, "unknown_environment"),
        ("?limit=many", 400, "invalid_query"),
    ] {
        let (got, reply) = server
            .call(Method::GET, &format!("/api/v1/events{query}"), None)
            .await?;
        assert_eq!(got, status, "{query}: {reply}");
        assert_envelope(&reply, code);
    }

    let (status, reply) = server
        .call(Method::GET, "/api/v1/webhooks/nope/deliveries", None)
        .await?;
    assert_eq!(status, 404, "{reply}");
    assert_envelope(&reply, "unknown_webhook");
    let (status, _) = server
        .call(Method::DELETE, &format!("/api/v1/webhooks/{id}"), None)
        .await?;
    assert_eq!(status, 204);
    let (status, reply) = server
        .call(Method::DELETE, &format!("/api/v1/webhooks/{id}"), None)
        .await?;
    assert_eq!(status, 404);
    assert_envelope(&reply, "unknown_webhook");
    assert_eq!(server.get("/api/v1/webhooks").await?, json!([]));
    Ok(())
}

#[tokio::test]
async fn the_cli_creates_lists_and_deletes_webhooks_and_shows_events() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let api_url = server.api_url();
    let env = [
        ("STELLA_SERVER", api_url.as_str()),
        ("STELLA_TOKEN", server.admin_token.as_str()),
    ];
    let run = |args: &'static [&'static str]| stella_tests::stella(args, &env);

    let (code, stdout, stderr) = stella_tests::stella(
        &[
            "webhook",
            "create",
            "https://hooks.example.com/a",
            "--event",
            "drift.detected",
            "--event",
            "promotion.failed,agent.unreachable",
            "-o",
            "json",
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout)?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        created["secret"].as_str().map(str::len),
        Some(64),
        "{created}"
    );
    assert_eq!(
        created["events"],
        json!(["promotion.failed", "drift.detected", "agent.unreachable"])
    );

    // For people: the id and the secret, and a note that it is shown once.
    let (code, stdout, stderr) = stella_tests::stella(
        &[
            "webhooks",
            "create",
            "https://hooks.example.com/b",
            "--event",
            "*",
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("secret"), "{stdout}");
    assert!(stderr.contains("shown only once"), "{stderr}");

    let (code, stdout, stderr) = run(&["webhook", "list", "-o", "json"]).await?;
    assert_eq!(code, 0, "{stderr}");
    let list: Value = serde_json::from_str(&stdout)?;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert!(!stdout.contains(created["secret"].as_str().unwrap_or("-")));

    server.running().app.emit(deployed_event()).await;
    let (code, stdout, stderr) = run(&["events", "--kind", "promotion.deployed"]).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("shop@1.4.2"), "{stdout}");
    let (code, stdout, stderr) = run(&["events", "--release", "shop@1.4.2", "-o", "json"]).await?;
    assert_eq!(code, 0, "{stderr}");
    let events: Value = serde_json::from_str(&stdout)?;
    assert_eq!(events[0]["event"], Value::Null);
    assert_eq!(events[0]["kind"], "promotion.deployed");

    let (code, stdout, stderr) =
        stella_tests::stella(&["webhook", "deliveries", &id, "-o", "json"], &env).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout)?, json!([]));

    // Refusals: one line naming the cause.
    let (code, _, stderr) = run(&[
        "webhook",
        "create",
        "https://hooks.example.com/c",
        "--event",
        "drift.detectd",
    ])
    .await?;
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown event `drift.detectd`"), "{stderr}");
    let (code, _, stderr) = run(&["events", "--release", "shop"]).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("NAME@VERSION"), "{stderr}");

    let (code, stdout, stderr) = stella_tests::stella(&["webhook", "delete", &id], &env).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
    let (code, _, stderr) = stella_tests::stella(&["webhook", "deliveries", &id], &env).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown webhook"), "{stderr}");
    Ok(())
}
