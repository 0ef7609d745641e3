//! Live target checks through a real control plane and agent: `target create --check`
//! stores nothing when the agent cannot drive the target, `target check` says why (or
//! what it found), with the settings' secrets travelling to the agent for the check.

use super::*;

#[tokio::test]
async fn the_agent_checks_a_target_live_before_and_after_it_is_created() -> anyhow::Result<()> {
    let world = World::new("ssh-check").await?;
    let server = TestServer::start().await?;
    let agent = TestAgent::start(&server, "checker").await?;
    server
        .wait_for_state("checker", "connected", Duration::from_secs(10))
        .await?;
    server
        .post(
            "/api/v1/environments",
            json!({"name": "edge", "allow_unscanned": true}),
        )
        .await?;
    let (status, body) = server
        .request(
            reqwest::Method::PUT,
            "/api/v1/environments/edge/secrets/deploy_key",
            Some(&server.admin_token),
            Some(json!({"value": world.sshd.client_key_pem()?})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let mut settings = world.connection();
    settings.remove("key_file");
    settings.insert("key_secret".into(), "${secret.deploy_key}".into());
    let create = |settings: &BTreeMap<String, String>| {
        json!({"name": world.name, "environment": "edge", "kind": "ssh", "agent": "checker",
               "settings": settings, "check": true})
    };

    // A host key other than the host's: refused by the agent, nothing stored.
    let mut wrong = settings.clone();
    wrong.insert(
        "host_key".into(),
        "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8".into(),
    );
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            "/api/v1/targets",
            Some(&server.admin_token),
            Some(create(&wrong)),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "target_check_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("host key"), "{message}");
    assert!(
        message.contains(&world.sshd.fingerprint),
        "names what the host presented: {message}"
    );
    let (status, _) = server
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/targets/{}", world.name),
            Some(&server.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 404, "a failed check stores nothing");

    // The right settings, the key from the secret: checked and stored.
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            "/api/v1/targets",
            Some(&server.admin_token),
            Some(create(&settings)),
        )
        .await?;
    assert_eq!(status, 201, "{body}");

    let envs = [
        ("STELLA_SERVER", server.api_url()),
        ("STELLA_TOKEN", server.admin_token.clone()),
        (
            "STELLA_CONFIG_DIR",
            server.dir.path().join("cli").display().to_string(),
        ),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr) = stella(&["target", "check", &world.name], &envs).await?;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("ok: ") && stdout.contains("presented the pinned host key"),
        "{stdout}"
    );
    let pem = world.sshd.client_key_pem()?;
    let key_body = pem.lines().nth(1).unwrap_or("-");
    assert!(!stdout.contains(key_body) && !stderr.contains(key_body));

    // A port nothing listens on: the check fails at once (no reconnect rounds), one
    // line, exit 1.
    let closed = free_port().await?;
    let (status, body) = server
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/targets/{}", world.name),
            Some(&server.admin_token),
            Some(json!({"set": {"port": closed.to_string()}})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (code, stdout, stderr) =
        stella(&["target", "check", &world.name, "-o", "json"], &envs).await?;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let answer: Value = serde_json::from_str(&stdout)?;
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("its agent cannot drive it")
            && stderr.contains(&format!("127.0.0.1:{closed}")),
        "{stderr}"
    );

    // The CLI's `create --check`: the same refusal, one line, nothing stored.
    let other = format!("{}-cli", world.name);
    let mut args: Vec<String> = [
        "target", "create", &other, "--env", "edge", "--kind", "ssh", "--agent", "checker",
        "--check",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let mut closed_settings = settings.clone();
    closed_settings.insert("port".into(), closed.to_string());
    for (key, value) in &closed_settings {
        args.push("--set".into());
        args.push(format!("{key}={value}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = stella(&args, &envs).await?;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("was not created"), "{stderr}");
    let (status, _) = server
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/targets/{other}"),
            Some(&server.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 404);

    // No agent connected: the check cannot be asked, and the API says so.
    agent.stop().await?;
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/targets/{}/check", world.name),
            Some(&server.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "agent_unavailable", "{body}");
    Ok(())
}
