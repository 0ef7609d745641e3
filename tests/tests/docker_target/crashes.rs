//! Crash recovery: a deployment interrupted at each step ends with one container, adopting or removing what the crashed run left.

use super::*;

#[tokio::test]
async fn apply_after_a_crash_mid_deployment_ends_with_one_container() -> anyhow::Result<()> {
    let world = World::new("dk-crash").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await
        .map_err(anyhow::Error::msg)?;

    // The agent dies while the new container is being health-checked.
    let task_v2 = world.task("2.0.0", &v2, world.settings());
    let target = world.target.clone();
    let task = task_v2.clone();
    let crashed = tokio::spawn(async move {
        let progress = Progress::detached("agent-test", "crash");
        target
            .apply(
                &task,
                &Plan::default(),
                &progress,
                &CancellationToken::new(),
            )
            .await
    });
    let next = format!("/{}-next", world.container_name());
    wait_until(
        "the -next container runs",
        Duration::from_secs(60),
        || async {
            let containers = world.containers().await.ok()?;
            names(&containers).contains(&next).then_some(())
        },
    )
    .await?;
    crashed.abort();
    let _ = crashed.await;
    assert_eq!(world.containers().await?.len(), 2, "old and -next are left");

    let (_, lines) = world.apply(&task_v2).await.map_err(anyhow::Error::msg)?;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("left by an interrupted deployment")),
        "{lines:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(
        names(std::slice::from_ref(&container)),
        vec![format!("/{}", world.container_name())]
    );
    assert_eq!(world.served_version(&container).await?, "v2");
    Ok(())
}

#[tokio::test]
async fn stop_first_crash_then_a_failed_rerun_leaves_the_old_container_running(
) -> anyhow::Result<()> {
    let world = World::new("dk-crashstop").await?;
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
    let old = world.only_container().await?;

    // The agent dies after stopping the old container, while the new one starts.
    let target = world.target.clone();
    let task = world.task("2.0.0", &v2, settings.clone());
    let crashed = tokio::spawn(async move {
        let progress = Progress::detached("agent-test", "crash");
        target
            .apply(
                &task,
                &Plan::default(),
                &progress,
                &CancellationToken::new(),
            )
            .await
    });
    let next = format!("/{}-next", world.container_name());
    wait_until(
        "the old container is stopped and -next runs",
        Duration::from_secs(60),
        || async {
            let containers = world.containers().await.ok()?;
            let next_runs = containers.iter().any(|c| {
                names(std::slice::from_ref(c)).contains(&next)
                    && c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            });
            let old_stopped = containers.iter().any(|c| {
                c.id == old.id
                    && c.state != Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            });
            (next_runs && old_stopped).then_some(())
        },
    )
    .await?;
    crashed.abort();
    let _ = crashed.await;

    // The rerun (of a release that fails) first undoes the interrupted deployment.
    settings.insert("health_timeout_seconds".to_owned(), "3".to_owned());
    let error = world
        .apply(&world.task("3.0.0", &v3, settings))
        .await
        .expect_err("v3 is unhealthy");
    assert!(error.contains("did not become healthy"), "{error}");
    let after = world.only_container().await?;
    assert_eq!(after.id, old.id);
    let served = wait_until("v1 serves again", Duration::from_secs(10), || async {
        get_text(&world.http, &url).await.ok()
    })
    .await?;
    assert_eq!(served, "v1");
    Ok(())
}

/// Runs `task` as an agent would and drops the run, as a crash of the agent would, right
/// after the first progress line that contains `until`. Docker finishes what the engine
/// had already been asked to do.
async fn crash_after(world: &World, task: &DeployTask, until: &str) -> anyhow::Result<()> {
    let (progress, mut lines) = Progress::channel("agent-test", "crash");
    let target = world.target.clone();
    let task = task.clone();
    let run = tokio::spawn(async move {
        target
            .apply(
                &task,
                &Plan::default(),
                &progress,
                &CancellationToken::new(),
            )
            .await
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            if line.contains(until) {
                return Ok(());
            }
        }
        anyhow::bail!("the run ended before a line containing {until:?}")
    })
    .await;
    run.abort();
    let _ = run.await;
    outcome.with_context(|| format!("no line containing {until:?} within 60 s"))?
}

/// `(id, running)` of a container, by name; `None` when there is none.
async fn container_state(world: &World, name: &str) -> anyhow::Result<Option<(String, bool)>> {
    match world
        .docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(inspect) => Ok(Some((
            inspect.id.unwrap_or_default(),
            inspect.state.and_then(|s| s.running).unwrap_or(false),
        ))),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

#[tokio::test]
async fn a_retry_after_a_crash_keeps_the_new_container_the_crashed_run_started(
) -> anyhow::Result<()> {
    let world = World::new("dk-resume").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", true).await?;
    world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await
        .map_err(anyhow::Error::msg)?;
    let name = world.container_name();
    let next = format!("{name}-next");

    // 1: the agent dies right after `-next` is healthy, and Docker finishes the stop of
    //    the old container the dead agent had asked for.
    // 2: the agent dies while it waits for `-next` to be healthy; the old one still runs.
    for (version, image, crash_point, old_running) in [
        ("2.0.0", &v2, "is healthy", false),
        ("3.0.0", &v3, "waiting", true),
    ] {
        let (old_id, _) = container_state(&world, &name)
            .await?
            .context("the old container")?;
        let task = world.task(version, image, world.settings());
        crash_after(&world, &task, crash_point).await?;
        if !old_running {
            docker_cli(&["stop", "-t", "5", &name], None, None).await?;
        }
        let (next_id, next_running) = container_state(&world, &next)
            .await?
            .context("the crashed run left -next")?;
        assert!(next_running, "-next runs after the crash");
        let (_, running) = container_state(&world, &name)
            .await?
            .context("the old container is still there")?;
        assert_eq!(
            running, old_running,
            "the old container's state after the crash"
        );
        let next_sticker = labels_of(&world, &next).await?[labels::STICKER_DIGEST].clone();

        // The same task again, as the journal re-runs a task that was running.
        let stop = Arc::new(AtomicBool::new(false));
        let probe = spawn_probe(&world, stop.clone());
        let started = Instant::now();
        let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let (samples, failures, failed_at) = probe.await?;
        println!(
            "{version}: retry after a crash at {crash_point:?} took {took:?}; probe: {samples} samples, {failures} failed\n{lines:#?}"
        );

        let container = world.only_container().await?;
        assert_eq!(
            container.id.as_deref(),
            Some(next_id.as_str()),
            "the healthy -next container is kept: {lines:#?}"
        );
        assert_eq!(
            names(std::slice::from_ref(&container)),
            vec![format!("/{name}")]
        );
        assert_ne!(container.id.as_deref(), Some(old_id.as_str()));
        assert_eq!(
            world.served_version(&container).await?,
            version
                .split('.')
                .next()
                .map(|major| format!("v{major}"))
                .unwrap_or_default()
        );
        for nothing_twice in ["pulling", "creating", "starting", "again"] {
            assert!(
                lines.iter().all(|l| !l.contains(nothing_twice)),
                "nothing is done twice ({nothing_twice}): {lines:#?}"
            );
        }
        assert!(lines.iter().any(|l| l.contains("adopting")), "{lines:#?}");
        assert!(outcome.summary.contains("resumed"), "{}", outcome.summary);
        assert_eq!(failures, 0, "gaps while retrying: {failed_at:#?}");
        assert!(samples >= 2, "only {samples} samples");

        // Stickers tell the truth: the labels the crashed run wrote, the file, the outcome.
        let sticker = &outcome.stickers[0];
        assert_eq!(sticker.sticker_digest, next_sticker);
        assert_eq!(sticker.deployment_id, task.deployment_id);
        assert_eq!(sticker.image, *image);
        assert_eq!(
            Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
            *sticker
        );
        assert_eq!(world.target.detect_drift(&task).await?, vec![]);

        // And once more: nothing to do.
        let (again, _) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        assert!(
            again.summary.contains("already up to date"),
            "{}",
            again.summary
        );
        assert_eq!(world.only_container().await?.id, container.id);
    }
    Ok(())
}

#[tokio::test]
async fn an_adopted_container_that_never_becomes_healthy_is_removed_and_the_old_one_serves_again(
) -> anyhow::Result<()> {
    let world = World::new("dk-resumefail").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", false).await?;
    let port = free_port().await?;
    let mut settings = world.settings_with_timeout(3);
    settings.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));
    let url = format!("http://127.0.0.1:{port}/");
    world
        .apply(&world.task("1.0.0", &v1, settings.clone()))
        .await
        .map_err(anyhow::Error::msg)?;
    let old = world.only_container().await?;

    // Stop-first: the old container is stopped, -next runs its (failing) health wait.
    let task = world.task("2.0.0", &v2, settings);
    crash_after(&world, &task, "waiting").await?;
    let name = world.container_name();
    let (_, old_running) = container_state(&world, &name)
        .await?
        .context("the old container")?;
    assert!(!old_running, "stop-first stopped the old container");

    // The retry adopts -next, waits, gives up, and puts the old container back.
    let (result, lines) = world.apply_with_lines(&task).await;
    let error = result.expect_err("v2 never becomes healthy");
    assert!(
        error.contains("did not become healthy within 3 s"),
        "{error}"
    );
    for expected in [
        "adopting",
        "removed the new container",
        "starting container",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "{expected:?} in {lines:#?}"
        );
    }
    let after = world.only_container().await?;
    assert_eq!(after.id, old.id, "the old container is the one left");
    let served = wait_until("v1 serves again", Duration::from_secs(10), || async {
        get_text(&world.http, &url).await.ok()
    })
    .await?;
    assert_eq!(served, "v1");
    Ok(())
}
