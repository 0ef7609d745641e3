//! Drift: missing, unexpected, changed and tampered containers, edited labels, squatters.

use super::*;

#[tokio::test]
async fn drift_finds_missing_unexpected_changed_and_tampered() -> anyhow::Result<()> {
    let world = World::new("dk-drift").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());
    world.apply(&task).await.map_err(anyhow::Error::msg)?;
    let kinds = |findings: &[stella_agent_core::DriftFinding]| {
        findings.iter().map(|f| f.kind).collect::<Vec<_>>()
    };
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    let (notify, mut events) = tokio::sync::mpsc::unbounded_channel();
    world.target.watch(notify);
    // The event stream is subscribed asynchronously; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An edited sticker file.
    let original = std::fs::read_to_string(world.sticker_file())?;
    std::fs::write(world.sticker_file(), original.replace("1.0.0", "9.9.9"))?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::StickerTampered],
        "{findings:?}"
    );
    std::fs::remove_file(world.sticker_file())?;
    assert_eq!(
        kinds(&world.target.detect_drift(&task).await?),
        vec![DriftKind::StickerTampered]
    );
    std::fs::write(world.sticker_file(), &original)?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // Stopped: missing; and the engine event names the target.
    docker_cli(&["stop", "-t", "5", &world.container_name()], None, None).await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(kinds(&findings), vec![DriftKind::Missing], "{findings:?}");
    // Events of other tests' targets arrive too; ours must be among them.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(target) = events.recv().await {
            if target == world.name {
                return;
            }
        }
    })
    .await
    .context("no engine event named the target within 10 s")?;
    docker_cli(&["start", &world.container_name()], None, None).await?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // Someone runs v2 under the target's labels: a second container of the component.
    let config = world.registry.docker_config();
    docker_cli(&["pull", &v2], Some(&config), None).await?;
    let target_label = format!("{}={}", labels::TARGET, world.name);
    let intruder = format!("{}-intruder", world.name);
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &intruder,
            "--label",
            &target_label,
            "--label",
            "ops.stella.component=web",
            &v2,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::Unexpected],
        "{findings:?}"
    );
    docker_cli(&["rm", "-f", &intruder], None, None).await?;

    // A component the target should not run.
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &intruder,
            "--label",
            &target_label,
            "--label",
            "ops.stella.component=db",
            &v2,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::Unexpected],
        "{findings:?}"
    );
    assert_eq!(findings[0].component, "db");
    docker_cli(&["rm", "-f", &intruder], None, None).await?;

    // The container replaced by one of v2 carrying the same labels: the labels still say
    // v1, but the image ID does not.
    let deployed = world.only_container().await?;
    let mut label_args = Vec::new();
    for (key, value) in deployed.labels.clone().unwrap_or_default() {
        label_args.push("--label".to_owned());
        label_args.push(format!("{key}={value}"));
    }
    docker_cli(&["rm", "-f", &world.container_name()], None, None).await?;
    let mut args: Vec<&str> = vec!["run", "-d", "--name"];
    let container_name = world.container_name();
    args.push(&container_name);
    args.extend(label_args.iter().map(String::as_str));
    args.push(&v2);
    docker_cli(&args, None, None).await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::ImageChanged],
        "{findings:?}"
    );
    assert!(findings[0].detail.contains(digest_of(&v2)), "{findings:?}");
    let observed = world.target.inspect(&task.target).await?;
    assert_eq!(
        observed[0].image_digest,
        digest_of(&v2),
        "inspect trusts the image, not the label"
    );

    // Other settings than the container was made with.
    let mut changed = task.clone();
    changed
        .target
        .settings
        .insert("env.MODE".to_owned(), "fast".to_owned());
    world.apply(&task).await.map_err(anyhow::Error::msg)?;
    let findings = world.target.detect_drift(&changed).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::ConfigChanged],
        "{findings:?}"
    );
    Ok(())
}

#[tokio::test]
async fn drift_sees_edited_labels_and_a_container_squatting_the_name() -> anyhow::Result<()> {
    let world = World::new("dk-lies").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let config = world.registry.docker_config();
    docker_cli(&["pull", &v2], Some(&config), None).await?;
    let task = world.task("1.0.0", &v1, world.settings());
    world.apply(&task).await.map_err(anyhow::Error::msg)?;
    let name = world.container_name();
    let kinds = |findings: &[stella_agent_core::DriftFinding]| {
        findings.iter().map(|f| f.kind).collect::<Vec<_>>()
    };

    // Recreated by hand with the same image and every label, the version edited: the
    // sticker-digest label (and the sticker file) still match each other.
    let mut edited = labels_of(&world, &name).await?;
    edited.insert(labels::VERSION.to_owned(), "9.9.9".to_owned());
    docker_cli(&["rm", "-f", &name], None, None).await?;
    let mut args = vec![
        "run".to_owned(),
        "-d".to_owned(),
        "--name".to_owned(),
        name.clone(),
    ];
    for (key, value) in &edited {
        args.extend(["--label".to_owned(), format!("{key}={value}")]);
    }
    args.push(v1.clone());
    docker_cli(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::StickerTampered],
        "{findings:?}"
    );
    assert!(
        findings[0].detail.contains(labels::VERSION) && findings[0].detail.contains("9.9.9"),
        "{findings:?}"
    );
    // A deployment does not take lying labels for "up to date".
    let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(
        !outcome.summary.contains("already up to date"),
        "{}\n{lines:#?}",
        outcome.summary
    );
    assert_eq!(labels_of(&world, &name).await?[labels::VERSION], "1.0.0");
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // Someone else's container under the target's container name, with another image.
    let squatter_target = format!("{}-squatter", world.name);
    let _squatters = ContainerCleanup::new([squatter_target.clone()]);
    let squatter_label = format!("{}={squatter_target}", labels::TARGET);
    docker_cli(&["rm", "-f", &name], None, None).await?;
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &squatter_label,
            &v2,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::ImageChanged],
        "{findings:?}"
    );
    assert!(
        findings[0].detail.contains("not deployed by Stella")
            && findings[0].detail.contains(digest_of(&v2))
            && findings[0].detail.contains(&name),
        "{findings:?}"
    );
    // With the desired image, but no sticker.
    docker_cli(&["rm", "-f", &name], None, None).await?;
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &squatter_label,
            &v1,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::StickerTampered],
        "{findings:?}"
    );
    assert!(
        findings[0].detail.contains("not deployed by Stella"),
        "{findings:?}"
    );
    // Stella does not remove what it did not deploy.
    let error = world.apply(&task).await.expect_err("the name is taken");
    assert!(error.contains("is taken"), "{error}");
    docker_cli(&["rm", "-f", &name], None, None).await?;
    Ok(())
}
