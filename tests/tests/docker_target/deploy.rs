//! Deploys: first deploy, start-first and stop-first upgrades, registry credentials, refused settings, health checks and timeouts, redeploys of the running digest.

use super::*;

#[tokio::test]
async fn first_deploy_labels_the_container_and_writes_the_sticker() -> anyhow::Result<()> {
    let world = World::new("dk-first").await?;
    let v1 = world.images.publish("v1", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());

    let plan = world.target.plan(&task).await?;
    assert!(
        plan.steps.iter().any(|s| s.contains("pull"))
            && plan.steps.iter().any(|s| s.contains("create container")),
        "{plan:?}"
    );

    let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(lines.iter().any(|l| l.contains("pull")), "{lines:#?}");
    assert_eq!(outcome.stickers.len(), 1);
    let sticker = &outcome.stickers[0];
    assert!(sticker.verify());
    assert_eq!(sticker.image, v1);
    assert_eq!(sticker.agent_id, "agent-test");

    let container = world.only_container().await?;
    assert_eq!(
        names(std::slice::from_ref(&container)),
        vec![format!("/{}", world.container_name())]
    );
    let container_labels = container.labels.clone().unwrap_or_default();
    for (key, value) in [
        (labels::TARGET, world.name.as_str()),
        (labels::ENVIRONMENT, "test"),
        (labels::RELEASE, "shop"),
        (labels::VERSION, "1.0.0"),
        (labels::COMPONENT, "web"),
        (labels::DIGEST, digest_of(&v1)),
        (labels::DEPLOYMENT, task.deployment_id.as_str()),
        (labels::DECISION, task.decision_id.as_str()),
        (labels::STICKER_DIGEST, sticker.sticker_digest.as_str()),
    ] {
        assert_eq!(
            container_labels.get(key).map(String::as_str),
            Some(value),
            "label {key}"
        );
    }
    assert_eq!(world.served_version(&container).await?, "v1");

    let file = std::fs::read(world.sticker_file())?;
    let from_file = Sticker::from_json(&file)?;
    assert_eq!(&from_file, sticker);
    assert_eq!(String::from_utf8(file)?, sticker.to_canonical_json());
    assert_eq!(
        world
            .target
            .read_sticker(&task.target, "web")
            .await?
            .as_ref(),
        Some(sticker)
    );

    let observed = world.target.inspect(&task.target).await?;
    assert_eq!(observed.len(), 1);
    assert_eq!(observed[0].component, "web");
    assert_eq!(observed[0].image_digest, digest_of(&v1));
    assert_eq!(
        observed[0].sticker_digest.as_deref(),
        Some(sticker.sticker_digest.as_str())
    );

    // The same task again changes nothing.
    let plan = world.target.plan(&task).await?;
    assert!(
        plan.steps.iter().all(|s| s.contains("already runs")),
        "{plan:?}"
    );
    let (again, _) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(
        again.summary.contains("already up to date"),
        "{}",
        again.summary
    );
    assert_eq!(&again.stickers[0], sticker);
    assert_eq!(world.only_container().await?.id, container.id);

    // A lost sticker file comes back from the labels, without a restart.
    std::fs::remove_file(world.sticker_file())?;
    let (restored, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored the sticker file")),
        "{lines:#?}"
    );
    assert_eq!(&restored.stickers[0], sticker);
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
        *sticker
    );
    assert_eq!(world.only_container().await?.id, container.id);
    Ok(())
}

#[tokio::test]
async fn start_first_upgrade_never_stops_serving_and_failures_keep_the_old_container(
) -> anyhow::Result<()> {
    let world = World::new("dk-startfirst").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await
        .map_err(anyhow::Error::msg)?;

    let stop = Arc::new(AtomicBool::new(false));
    let probe = spawn_probe(&world, stop.clone());
    let task_v2 = world.task("2.0.0", &v2, world.settings());
    let plan = world.target.plan(&task_v2).await?;
    assert!(
        plan.steps.iter().any(|s| s.contains("start-first")),
        "{plan:?}"
    );
    let started = Instant::now();
    let (outcome, lines) = world.apply(&task_v2).await.map_err(anyhow::Error::msg)?;
    let upgrade_time = started.elapsed();
    // A few more samples after the switch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (samples, failures, failed_at) = probe.await?;
    println!("v1 -> v2 start-first upgrade took {upgrade_time:?}; probe: {samples} samples, {failures} failed");
    assert!(
        outcome.summary.contains("replaced start-first"),
        "{}",
        outcome.summary
    );
    assert!(samples >= 10, "only {samples} samples");
    assert_eq!(
        failures, 0,
        "failed samples: {failed_at:#?}\nprogress: {lines:#?}"
    );
    // Before each step that can take a while, a line says what and for how long at most.
    let name = world.container_name();
    for expected in [
        format!("web: pulling {v2}"),
        format!("web: starting {name}-next"),
        format!("web: waiting up to 30 s for {name}-next to be healthy (its Docker health check)"),
        format!("web: stopping old container {name}, up to 10 s"),
    ] {
        assert!(lines.contains(&expected), "{expected:?} in {lines:#?}");
    }
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v2");
    assert_eq!(
        container
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::VERSION))
            .map(String::as_str),
        Some("2.0.0")
    );

    // v3 never becomes healthy: a clear error once the health timeout is over, v2
    // untouched.
    let error = world
        .apply(&world.task("3.0.0", &v3, world.settings_with_timeout(3)))
        .await
        .expect_err("v3 is unhealthy");
    println!("v3: {error}");
    assert!(
        error.contains(&format!(
            "container {}-next did not become healthy within 3 s",
            world.container_name()
        )) && error.contains("404"),
        "{error}"
    );
    let after = world.only_container().await?;
    assert_eq!(after.id, container.id);
    assert_eq!(world.served_version(&after).await?, "v2");
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?.image,
        v2,
        "the sticker file still names v2"
    );

    // A digest the registry does not have: the pull fails, v2 untouched.
    let missing = world.images.missing();
    let error = world
        .apply(&world.task("4.0.0", &missing, world.settings()))
        .await
        .expect_err("the digest is missing");
    println!("missing digest: {error}");
    assert!(
        error.contains(&format!("pulling {missing} failed")),
        "{error}"
    );
    assert!(
        error.contains("manifest unknown") || error.contains("not found"),
        "{error}"
    );
    let after = world.only_container().await?;
    assert_eq!(after.id, container.id);
    assert_eq!(world.served_version(&after).await?, "v2");
    Ok(())
}

#[tokio::test]
async fn stop_first_with_a_fixed_host_port_restarts_the_old_container_on_failure(
) -> anyhow::Result<()> {
    let world = World::new("dk-stopfirst").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    let port = free_port().await?;
    let mut settings = world.settings();
    settings.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));
    let url = format!("http://127.0.0.1:{port}/");

    world
        .apply(&world.task("1.0.0", &v1, settings.clone()))
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(get_text(&world.http, &url).await?, "v1");

    let task_v2 = world.task("2.0.0", &v2, settings.clone());
    let plan = world.target.plan(&task_v2).await?;
    assert!(
        plan.steps.iter().any(|s| s.contains("stop-first")),
        "{plan:?}"
    );
    let started = Instant::now();
    let (outcome, lines) = world.apply(&task_v2).await.map_err(anyhow::Error::msg)?;
    println!("v1 -> v2 stop-first upgrade took {:?}", started.elapsed());
    assert!(
        outcome.summary.contains("replaced stop-first"),
        "{}",
        outcome.summary
    );
    assert!(
        lines.iter().any(|l| l.contains("stopped old container")),
        "{lines:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(get_text(&world.http, &url).await?, "v2");

    settings.insert("health_timeout_seconds".to_owned(), "3".to_owned());
    let error = world
        .apply(&world.task("3.0.0", &v3, settings))
        .await
        .expect_err("v3 is unhealthy");
    println!("v3 stop-first: {error}");
    assert!(
        error.contains("did not become healthy within 3 s"),
        "{error}"
    );
    let after = world.only_container().await?;
    assert_eq!(
        after.id, container.id,
        "the old container is the one running"
    );
    let served = wait_until(
        "the old container serves again",
        Duration::from_secs(10),
        || async { get_text(&world.http, &url).await.ok() },
    )
    .await?;
    assert_eq!(served, "v2");
    Ok(())
}

#[tokio::test]
async fn basic_auth_registry_pulls_with_the_task_credentials() -> anyhow::Result<()> {
    let password = "s3cret-registry-pw";
    let registry = TestRegistry::start_with_basic_auth("stella", password).await?;
    let world = World::with_registry("dk-auth", registry).await?;
    let v1 = world.images.publish("v1", true).await?;

    let mut task = world.task("1.0.0", &v1, world.settings());
    let error = world.apply(&task).await.expect_err("no credentials");
    println!("without credentials: {error}");
    assert!(error.contains(&format!("pulling {v1} failed")), "{error}");
    assert!(
        error.contains("no basic auth credentials") || error.contains("unauthorized"),
        "{error}"
    );
    assert!(world.containers().await?.is_empty());

    task.registry_auth = vec![RegistryCredential {
        registry: world.registry.host(),
        username: "stella".to_owned(),
        password: "wrong".to_owned(),
    }];
    let error = world.apply(&task).await.expect_err("wrong credentials");
    assert!(error.contains("pulling"), "{error}");
    assert!(!error.contains("wrong"), "the password leaks: {error}");

    task.registry_auth[0].password = password.to_owned();
    let (_, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(lines.iter().all(|l| !l.contains(password)), "{lines:#?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v1");
    Ok(())
}

#[tokio::test]
async fn invalid_settings_and_unpinned_images_are_refused_before_anything_changes(
) -> anyhow::Result<()> {
    let world = World::new("dk-invalid").await?;
    let image = format!("{}@sha256:{}", world.images.repository(), "1".repeat(64));
    let mut settings = world.settings();
    settings.insert("colour".to_owned(), "blue".to_owned());
    let error = world
        .target
        .apply(
            &world.task("1", &image, settings),
            &Plan::default(),
            &Progress::detached("a", "t"),
            &CancellationToken::new(),
        )
        .await
        .expect_err("unknown key");
    assert!(
        matches!(error, stella_agent_core::TargetError::InvalidSettings(_)),
        "{error}"
    );

    let unpinned = format!("{}:latest", world.images.repository());
    let error = world
        .apply(&world.task("1", &unpinned, world.settings()))
        .await
        .expect_err("unpinned");
    assert!(error.contains("is not pinned by digest"), "{error}");
    assert!(world.containers().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn health_url_probe_plain_settle_and_exiting_containers() -> anyhow::Result<()> {
    let world = World::new("dk-health").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    let url_settings = BTreeMap::from([
        (
            "health_url".to_owned(),
            "http://{ip}:8080/health".to_owned(),
        ),
        ("health_timeout_seconds".to_owned(), "3".to_owned()),
    ]);

    // health_url alone: the agent's probe decides.
    world
        .apply(&world.task("1.0.0", &v1, url_settings.clone()))
        .await
        .map_err(anyhow::Error::msg)?;
    let container = world.only_container().await?;
    let started = Instant::now();
    let error = world
        .apply(&world.task("3.0.0", &v3, url_settings))
        .await
        .expect_err("v3 has no /health");
    println!("health_url: {error} (after {:?})", started.elapsed());
    assert!(
        error.contains(&format!(
            "container {}-next did not become healthy within 3 s",
            world.container_name()
        )) && error.contains("/health answered 404"),
        "{error}"
    );
    assert_eq!(world.only_container().await?.id, container.id);

    // No health check at all: running 2 s after the start is enough.
    let started = Instant::now();
    world
        .apply(&world.task("2.0.0", &v2, BTreeMap::new()))
        .await
        .map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    println!("v1 -> v2 without a health check took {took:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v2");

    // A command that exits fails at once, whatever the timeout.
    let exiting = BTreeMap::from([
        ("command".to_owned(), "/bin/busybox false".to_owned()),
        ("restart".to_owned(), "no".to_owned()),
        ("health_timeout_seconds".to_owned(), "60".to_owned()),
    ]);
    let started = Instant::now();
    let error = world
        .apply(&world.task("3.0.0", &v1, exiting))
        .await
        .expect_err("the command exits");
    println!("exiting: {error} (after {:?})", started.elapsed());
    assert!(
        error.contains("stopped before it became healthy") && error.contains("exit code 1"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(world.only_container().await?.id, container.id);
    Ok(())
}

#[tokio::test]
async fn health_timeout_seconds_is_how_long_a_new_container_may_take() -> anyhow::Result<()> {
    let world = World::new("dk-slow").await?;
    let config = world.registry.docker_config();
    let slow = world
        .images
        .publish_with(
            "slow",
            &WebImageOptions {
                healthy_after_seconds: Some(6),
                ..WebImageOptions::default()
            },
        )
        .await?;
    // The same with the image's own HEALTHCHECK, which gives up after one failure.
    let slow_own = world
        .images
        .publish_with(
            "slow-own",
            &WebImageOptions {
                healthy_after_seconds: Some(6),
                healthcheck: Some(format!(
                    "HEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD {WEB_HEALTH_CMD}"
                )),
                ..WebImageOptions::default()
            },
        )
        .await?;
    let never = world.images.publish("never", false).await?;
    // Pulled beforehand so only the health wait is timed.
    for image in [&slow, &slow_own, &never] {
        docker_cli(&["pull", image], Some(&config), None).await?;
    }

    let started = Instant::now();
    let (_, lines) = world
        .apply(&world.task("1.0.0", &slow, world.settings_with_timeout(20)))
        .await
        .map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    println!("a container healthy after 6 s, timeout 20 s: deployed in {took:?}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "waiting up to 20 s for {}-next to be healthy",
            world.container_name()
        ))),
        "{lines:#?}"
    );

    let started = Instant::now();
    let mut own = world.task("2.0.0", &slow_own, BTreeMap::new());
    own.target
        .settings
        .insert("health_timeout_seconds".to_owned(), "20".to_owned());
    world.apply(&own).await.map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    println!("the image's own health check, healthy after 6 s, timeout 20 s: deployed in {took:?}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "slow-own");

    let started = Instant::now();
    let error = world
        .apply(&world.task("3.0.0", &never, world.settings_with_timeout(5)))
        .await
        .expect_err("never healthy");
    let took = started.elapsed();
    println!("never healthy, timeout 5 s: failed after {took:?}: {error}");
    assert!(
        took >= Duration::from_millis(4_900) && took < Duration::from_secs(9),
        "{took:?}"
    );
    assert!(
        error.contains(&format!(
            "container {}-next did not become healthy within 5 s",
            world.container_name()
        )) && error.contains("404"),
        "{error}"
    );
    assert_eq!(world.only_container().await?.id, container.id);
    Ok(())
}

#[tokio::test]
async fn a_new_deployment_of_the_running_digest_replaces_the_container_so_labels_tell_the_truth(
) -> anyhow::Result<()> {
    let world = World::new("dk-relabel").await?;
    let v1 = world.images.publish("v1", true).await?;
    let port = free_port().await?;
    let mut fixed_port = world.settings();
    fixed_port.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));

    for (settings, strategy, versions) in [
        (world.settings(), "start-first", ["1.0.0", "1.0.1"]),
        (fixed_port, "stop-first", ["2.0.0", "2.0.1"]),
    ] {
        let first = world.task(versions[0], &v1, settings.clone());
        world.apply(&first).await.map_err(anyhow::Error::msg)?;
        let before = world.only_container().await?;

        // Another release (or a rollback, or a remediation) with the same digest.
        let task = world.task(versions[1], &v1, settings);
        let plan = world.target.plan(&task).await?;
        assert!(plan.steps.iter().any(|s| s.contains("replace")), "{plan:?}");
        let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        assert!(
            outcome.summary.contains(&format!("replaced {strategy}")),
            "{}\n{lines:#?}",
            outcome.summary
        );
        let after = world.only_container().await?;
        assert_ne!(after.id, before.id, "a new container with new labels");
        let container_labels = after.labels.clone().unwrap_or_default();
        assert_eq!(container_labels[labels::VERSION], versions[1]);
        assert_eq!(container_labels[labels::DEPLOYMENT], task.deployment_id);
        let sticker = &outcome.stickers[0];
        assert_eq!(sticker.deployment_id, task.deployment_id);
        assert_eq!(sticker.version, versions[1]);
        assert_eq!(
            container_labels[labels::STICKER_DIGEST],
            sticker.sticker_digest
        );
        assert_eq!(
            Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
            *sticker
        );
        let listed = docker_cli(
            &[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label={}={}", labels::VERSION, versions[1]),
                "--filter",
                &format!("label={}={}", labels::TARGET, world.name),
            ],
            None,
            None,
        )
        .await?;
        assert_eq!(listed.trim(), after.id.as_deref().unwrap_or_default());
        assert_eq!(world.target.detect_drift(&task).await?, vec![]);
        // Measured against the earlier deployment, the sticker is not the desired one.
        let findings = world.target.detect_drift(&first).await?;
        assert_eq!(
            findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
            vec![DriftKind::StickerTampered],
            "{findings:?}"
        );

        // The same task again (a retry) is a no-op.
        let (again, _) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        assert!(
            again.summary.contains("already up to date"),
            "{}",
            again.summary
        );
        assert_eq!(&again.stickers[0], sticker);
        assert_eq!(world.only_container().await?.id, after.id);
    }
    Ok(())
}
