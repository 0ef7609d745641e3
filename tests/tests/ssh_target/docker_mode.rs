//! Docker mode: deploys and upgrades (start-first, stop-first), remote failures, a connection cut mid-deploy, drift, registry credentials.

use super::*;

#[tokio::test]
async fn deploys_over_ssh_with_labels_and_a_remote_sticker_then_upgrades_start_first(
) -> anyhow::Result<()> {
    let world = World::new("ssh-deploy").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());

    let (outcome, lines) = world.apply_ok(&task).await?;
    assert!(lines.iter().any(|l| l.contains("pulling")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("connecting to 127.0.0.1:")),
        "{lines:#?}"
    );
    let sticker = outcome.stickers.first().context("a sticker")?.clone();
    assert!(sticker.verify());
    assert_eq!(sticker.image, v1);
    let container = world.only_container().await?;
    assert_eq!(container["Name"], format!("/{}", world.container_name()));
    let labels = &container["Config"]["Labels"];
    assert_eq!(labels["ops.stella.target"], world.name.as_str());
    assert_eq!(labels["ops.stella.version"], "1.0.0");
    assert_eq!(labels["ops.stella.digest"], digest_of(&v1));
    assert_eq!(labels["ops.stella.deployment"], task.deployment_id.as_str());
    assert_eq!(
        labels["ops.stella.sticker-digest"],
        sticker.sticker_digest.as_str()
    );
    assert_eq!(world.served_version(&container).await?, "v1");
    let file = std::fs::read(world.sticker_file())?;
    assert_eq!(String::from_utf8(file)?, sticker.to_canonical_json());
    assert_eq!(
        world.target.read_sticker(&task.target, "web").await?,
        Some(sticker.clone())
    );
    let observed = world.target.inspect(&task.target).await?;
    assert_eq!(observed.len(), 1);
    assert_eq!(observed[0].image_digest, digest_of(&v1));
    assert_eq!(
        observed[0].sticker_digest.as_deref(),
        Some(sticker.sticker_digest.as_str())
    );
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // The same task again changes nothing; a lost sticker file comes back.
    std::fs::remove_file(world.sticker_file())?;
    let (again, lines) = world.apply_ok(&task).await?;
    assert!(
        again.summary.contains("already up to date"),
        "{}",
        again.summary
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored the sticker file")),
        "{lines:#?}"
    );
    assert_eq!(world.only_container().await?["Id"], container["Id"]);
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
        sticker
    );

    // Start-first upgrade.
    let task_v2 = world.task("2.0.0", &v2, world.settings());
    let (upgraded, lines) = world.apply_ok(&task_v2).await?;
    assert!(
        upgraded.summary.contains("replaced start-first"),
        "{}",
        upgraded.summary
    );
    let started = lines.iter().position(|l| l.contains("-next is healthy"));
    let stopped = lines
        .iter()
        .position(|l| l.contains("stopping old container"));
    assert!(started.is_some() && started < stopped, "{lines:#?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v2");
    assert_eq!(world.target.detect_drift(&task_v2).await?, vec![]);
    // Every operation went over one connection, kept for the next.
    assert_eq!(world.target.open_connections(), 1);
    assert_eq!(world.sshd.session_count(), 1, "{}", world.sshd.log_text());
    Ok(())
}

#[tokio::test]
async fn stop_first_with_a_fixed_host_port_keeps_the_old_container_when_the_new_one_fails(
) -> anyhow::Result<()> {
    let world = World::new("ssh-stopfirst").await?;
    let v1 = world.images.publish("v1", true).await?;
    let broken = world.images.publish("broken", false).await?;
    let v2 = world.images.publish("v2", true).await?;
    let port = free_port().await?;
    let mut settings = world.settings();
    settings.insert("ports".into(), format!("127.0.0.1:{port}:8080"));
    settings.insert("health_timeout_seconds".into(), "4".into());
    world
        .apply_ok(&world.task("1.0.0", &v1, settings.clone()))
        .await?;
    let url = format!("http://127.0.0.1:{port}/");
    let get = || async {
        reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .text()
            .await
    };
    assert_eq!(get().await?, "v1");

    let (result, lines) = world
        .apply(&world.task("1.1.0", &broken, settings.clone()))
        .await;
    let error = result.expect_err("an unhealthy release fails");
    assert!(
        error.contains("did not become healthy within 4 s"),
        "{error}"
    );
    assert!(
        lines.iter().any(|l| l.contains("stopping old container")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("starting old container") && l.contains("again")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed:") && l.contains("healthy")),
        "{lines:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(container["Config"]["Labels"]["ops.stella.version"], "1.0.0");
    wait_until("v1 serves again", Duration::from_secs(10), || async {
        (get().await.ok()?.as_str() == "v1").then_some(())
    })
    .await?;

    let (outcome, _) = world.apply_ok(&world.task("2.0.0", &v2, settings)).await?;
    assert!(
        outcome.summary.contains("replaced stop-first"),
        "{}",
        outcome.summary
    );
    assert_eq!(get().await?, "v2");
    world.only_container().await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_remote_command_is_reported_with_its_stderr_and_the_old_container_keeps_running(
) -> anyhow::Result<()> {
    let world = World::new("ssh-fail").await?;
    let v1 = world.images.publish("v1", true).await?;
    world
        .apply_ok(&world.task("1.0.0", &v1, world.settings()))
        .await?;
    let before = world.only_container().await?;

    let missing = world.images.missing();
    let (result, lines) = world
        .apply(&world.task("2.0.0", &missing, world.settings()))
        .await;
    let error = result.expect_err("a digest the registry lacks cannot be pulled");
    assert!(
        error.contains("docker pull") && error.contains("exit status"),
        "{error}"
    );
    // The remote docker's own words (e.g. `manifest unknown`) are in the log.
    let failed = lines
        .iter()
        .find(|l| l.starts_with("failed:"))
        .with_context(|| format!("no failure line in {lines:#?}"))?;
    assert!(
        failed.contains("docker pull") && failed.len() > "failed: docker pull".len() + 40,
        "{failed}"
    );
    assert!(
        failed.to_lowercase().contains("manifest") || failed.to_lowercase().contains("not found"),
        "{failed}"
    );
    let after = world.only_container().await?;
    assert_eq!(after["Id"], before["Id"]);
    assert_eq!(world.served_version(&after).await?, "v1");
    Ok(())
}

#[tokio::test]
async fn a_connection_cut_during_the_health_wait_reconnects_and_completes_exactly_once(
) -> anyhow::Result<()> {
    let world = World::new("ssh-cut").await?;
    let slow = world
        .images
        .publish_with(
            "slow",
            &WebImageOptions {
                healthy: false,
                healthy_after_seconds: Some(3),
                ..WebImageOptions::default()
            },
        )
        .await?;
    let task = world.task("1.0.0", &slow, world.settings());
    let (progress, mut lines) = Progress::channel("agent-test", "cut");
    let target = world.target.clone();
    let running = {
        let task = task.clone();
        tokio::spawn(async move {
            target
                .apply(
                    &task,
                    &Plan::default(),
                    &progress,
                    &CancellationToken::new(),
                )
                .await
        })
    };
    let mut seen = Vec::new();
    let mut killed = 0;
    let mut next_id = None;
    while let Some(line) = lines.recv().await {
        if killed == 0 && line.contains("waiting up to") {
            let next = docker_cli(
                &[
                    "inspect",
                    "--format",
                    "{{.Id}}",
                    &format!("{}-next", world.container_name()),
                ],
                None,
                None,
            )
            .await?;
            next_id = Some(next.trim().to_owned());
            tokio::time::sleep(Duration::from_millis(300)).await;
            killed = world.sshd.kill_sessions();
        }
        seen.push(line);
    }
    let outcome = running.await?;
    assert!(killed >= 1, "a session was killed: {seen:#?}");
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{e}: {seen:#?}"))?;
    assert_eq!(outcome.stickers.len(), 1);
    assert!(
        seen.iter().any(|l| l.contains(&format!(
            "connection to 127.0.0.1:{} lost, reconnecting (attempt 1/3)",
            world.sshd.port
        ))),
        "{seen:#?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|l| l.contains("creating container"))
            .count(),
        1,
        "created once: {seen:#?}"
    );
    assert_eq!(
        seen.iter().filter(|l| l.contains("pulling")).count(),
        1,
        "{seen:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(
        container["Id"].as_str(),
        next_id.as_deref(),
        "the container made before the cut"
    );
    assert_eq!(container["Name"], format!("/{}", world.container_name()));
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
        outcome.stickers[0]
    );
    Ok(())
}

#[tokio::test]
async fn drift_sees_a_hand_edited_remote_sticker_a_stopped_container_and_other_settings(
) -> anyhow::Result<()> {
    let world = World::new("ssh-drift").await?;
    let v1 = world.images.publish("v1", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());
    world.apply_ok(&task).await?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    let original = std::fs::read_to_string(world.sticker_file())?;
    std::fs::write(
        world.sticker_file(),
        original.replace("\"1.0.0\"", "\"9.9.9\""),
    )?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, DriftKind::StickerTampered);
    assert!(findings[0].detail.contains("edited"), "{findings:?}");
    std::fs::remove_file(world.sticker_file())?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(findings[0].kind, DriftKind::StickerTampered);
    assert!(
        findings[0].detail.contains("no sticker file"),
        "{findings:?}"
    );
    std::fs::write(world.sticker_file(), &original)?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    let mut changed = task.clone();
    changed
        .target
        .settings
        .insert("env.COLOUR".into(), "blue".into());
    let kinds: Vec<DriftKind> = world
        .target
        .detect_drift(&changed)
        .await?
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, vec![DriftKind::ConfigChanged]);

    docker_cli(&["stop", "-t", "1", &world.container_name()], None, None).await?;
    let kinds: Vec<DriftKind> = world
        .target
        .detect_drift(&task)
        .await?
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, vec![DriftKind::Missing]);
    Ok(())
}

#[tokio::test]
async fn registry_credentials_go_to_a_temporary_docker_config_on_the_host() -> anyhow::Result<()> {
    let password = "ssh-registry-s3cret-pw";
    let registry = TestRegistry::start_with_basic_auth("stella", password).await?;
    let world = World::with_registry("ssh-auth", registry).await?;
    let v1 = world.images.publish("v1", true).await?;
    let registry_host = world.registry.host();

    // Without credentials the host cannot pull; the registry's answer is in the error.
    let (result, _) = world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await;
    let error = result.expect_err("no credentials");
    assert!(error.contains("docker pull"), "{error}");
    assert!(error.to_lowercase().contains("auth"), "{error}");

    let mut task = world.task("1.0.0", &v1, world.settings());
    task.registry_auth = vec![RegistryCredential {
        registry: registry_host.clone(),
        username: "stella".to_owned(),
        password: password.to_owned(),
    }];
    let (outcome, lines) = world.apply_ok(&task).await?;
    assert!(lines.iter().any(|l| l.contains("pulling")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(password)), "{lines:#?}");
    assert!(!format!("{outcome:?}").contains(password));
    world.only_container().await?;
    // The login went to a temporary DOCKER_CONFIG, removed afterwards: neither the
    // user's own config nor any leftover temporary one knows the registry.
    let own = std::fs::read_to_string("/root/.docker/config.json").unwrap_or_default();
    assert!(!own.contains(&registry_host), "{own}");
    for entry in std::fs::read_dir("/tmp")?.filter_map(Result::ok) {
        let config = entry.path().join("config.json");
        if entry.file_name().to_string_lossy().starts_with("tmp.") {
            let text = std::fs::read_to_string(&config).unwrap_or_default();
            assert!(
                !text.contains(&registry_host),
                "{} was left behind",
                config.display()
            );
        }
    }
    Ok(())
}
