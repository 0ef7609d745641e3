//! Keys and trust: host-key pinning, refused and secret user keys, fetching the host key (library and CLI), and a release end to end.

use super::*;

#[tokio::test]
async fn host_key_mismatch_is_refused_before_authenticating_naming_both_fingerprints(
) -> anyhow::Result<()> {
    let world = World::new("ssh-hostkey").await?;
    let other = world.sshd.dir().join("other_host_key");
    keygen(&other).await?;
    let pinned = stella_tests::sshd::fingerprint_of(&other.with_extension("pub")).await?;
    let mut settings = world.settings();
    settings.insert("host_key".into(), pinned.clone());
    let (result, lines) = world
        .apply(&world.task("1.0.0", &world.images.missing(), settings))
        .await;
    let error = result.expect_err("refused");
    assert!(error.contains("host key mismatch"), "{error}");
    assert!(
        error.contains(&pinned) && error.contains(&world.sshd.fingerprint),
        "{error}"
    );
    assert!(
        error.contains(&format!("127.0.0.1:{}", world.sshd.port)),
        "{error}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("reconnecting")),
        "not retried: {lines:#?}"
    );
    // Nothing was authenticated: sshd saw no accepted key.
    assert!(
        !world.sshd.log_text().contains("Accepted publickey"),
        "{}",
        world.sshd.log_text()
    );
    Ok(())
}

#[tokio::test]
async fn a_key_the_host_does_not_accept_is_refused_clearly() -> anyhow::Result<()> {
    let world = World::new("ssh-badkey").await?;
    let stranger = world.sshd.dir().join("stranger_key");
    keygen(&stranger).await?;
    let mut settings = world.settings();
    settings.insert("key_file".into(), stranger.display().to_string());
    let (result, _) = world
        .apply(&world.task("1.0.0", &world.images.missing(), settings.clone()))
        .await;
    let error = result.expect_err("refused");
    assert!(
        error.contains("the host refused the key for user root"),
        "{error}"
    );
    settings.insert("key_file".into(), "/nonexistent/key".into());
    let (result, _) = world
        .apply(&world.task("1.0.0", &world.images.missing(), settings))
        .await;
    let error = result.expect_err("refused");
    assert!(error.contains("cannot be read"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_key_from_a_secret_authenticates_and_is_never_shown() -> anyhow::Result<()> {
    let host = ScriptHost::new("ssh-secret").await?;
    let mut settings = host.settings("root", "echo deployed-with-secret-key");
    settings.remove("key_file");
    settings.insert("key_secret".into(), "${secret.deploy_key}".into());
    let mut task = host.task(settings);
    let pem = host.sshd.client_key_pem()?;
    task.secrets.0.insert("deploy_key".into(), pem.clone());
    let (outcome, lines) = apply_on(&host.target, &task).await;
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    assert!(
        lines
            .iter()
            .any(|l| l == "script: deployed-with-secret-key"),
        "{lines:#?}"
    );
    let key_body = pem.lines().nth(1).context("pem body")?;
    assert!(!lines.iter().any(|l| l.contains(key_body)));
    assert!(!format!("{outcome:?}").contains(key_body));
    // Drift rounds get the desired state with the secret in memory.
    assert_eq!(host.target.detect_drift(&task).await?, vec![]);
    // Without the secret the error names it, not a value.
    let fresh = SshTarget::new();
    let mut without = task.clone();
    without.secrets = Default::default();
    let (result, _) = apply_on(&fresh, &without).await;
    let error = result.expect_err("no secret");
    assert!(error.contains("deploy_key"), "{error}");
    Ok(())
}

#[tokio::test]
async fn fetch_host_key_shows_the_fingerprint_ssh_keygen_prints() -> anyhow::Result<()> {
    init_tracing();
    let sshd = TestSshd::start().await?;
    let port = sshd.port;
    let key = tokio::task::spawn_blocking(move || {
        fetch_host_key("127.0.0.1", port, Duration::from_secs(5))
    })
    .await??;
    let expected = stella_tests::sshd::fingerprint_of(&sshd.host_key_pub()).await?;
    assert_eq!(key.fingerprint, expected);
    assert_eq!(key.key_type, "ssh-ed25519");
    // Nothing listens: a clear error in time.
    let closed = free_port().await?;
    let error = tokio::task::spawn_blocking(move || {
        fetch_host_key("127.0.0.1", closed, Duration::from_secs(2))
    })
    .await?
    .expect_err("nothing listens");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{error}"
    );
    Ok(())
}

/// The CLI shows a host's key for checking, and never pins one on first use without a
/// person confirming it: without a terminal, creating an ssh target with no host_key
/// fails on one line naming the fingerprint to pin.
#[tokio::test]
async fn the_cli_shows_the_host_key_and_refuses_to_pin_it_unseen() -> anyhow::Result<()> {
    init_tracing();
    let sshd = TestSshd::start().await?;
    let port = sshd.port.to_string();
    let expected = stella_tests::sshd::fingerprint_of(&sshd.host_key_pub()).await?;
    let none: [(&str, &str); 0] = [];
    let (code, stdout, stderr) = stella_tests::stella(
        &[
            "target",
            "host-key",
            "127.0.0.1",
            "--port",
            &port,
            "-o",
            "json",
        ],
        &none,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(shown["fingerprint"], expected.as_str(), "{shown}");
    assert_eq!(shown["key_type"], "ssh-ed25519", "{shown}");

    let (code, _, stderr) = stella_tests::stella(
        &[
            "--server",
            "http://127.0.0.1:9",
            "target",
            "create",
            "h1",
            "--env",
            "prod",
            "--kind",
            "ssh",
            "--agent",
            "a",
            "--set",
            "host=127.0.0.1",
            "--set",
            &format!("port={port}"),
            "--set",
            "user=root",
            "--set",
            "key_file=/k",
        ],
        &none,
    )
    .await?;
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("--set host_key={expected}")),
        "{stderr}"
    );
    Ok(())
}

/// A release promoted through a real control plane to an ssh target driven by a real
/// agent.
#[tokio::test]
async fn a_release_reaches_an_ssh_target_through_server_and_agent() -> anyhow::Result<()> {
    let world = World::new("ssh-e2e").await?;
    let v1 = world.images.publish("v1", true).await?;
    let server = TestServer::start().await?;
    let _agent = TestAgent::start(&server, "ssh-driver").await?;
    let shown = server
        .wait_for_state("ssh-driver", "connected", Duration::from_secs(10))
        .await?;
    assert!(
        shown["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|k| k == "ssh")),
        "{shown}"
    );
    server
        .post(
            "/api/v1/environments",
            json!({"name": "edge", "allow_unscanned": true}),
        )
        .await?;
    server
        .post(
            "/api/v1/targets",
            json!({"name": world.name, "environment": "edge", "kind": "ssh", "agent": "ssh-driver",
                   "settings": world.settings()}),
        )
        .await?;
    server
        .post(
            "/api/v1/releases",
            json!({"name": "shop", "version": "1.0.0", "components": {"web": v1}}),
        )
        .await?;
    let promotion = server
        .post(
            "/api/v1/promotions",
            json!({"release": "shop", "version": "1.0.0", "environment": "edge"}),
        )
        .await?;
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .with_context(|| format!("no deployment in {promotion}"))?
        .to_owned();
    let deployment = server
        .wait_deployment(&deployment_id, Duration::from_secs(120))
        .await?;
    let logs = server
        .get(&format!("/api/v1/deployments/{deployment_id}/logs"))
        .await?;
    assert_eq!(deployment["state"], "succeeded", "{deployment}\n{logs}");
    let text = logs.to_string();
    assert!(
        text.contains(&format!("connecting to 127.0.0.1:{}", world.sshd.port)),
        "{text}"
    );
    assert!(text.contains("creating container"), "{text}");
    assert!(text.contains("sticker written to"), "{text}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v1");
    assert!(world.sticker_file().exists());
    Ok(())
}
