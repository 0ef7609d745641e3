//! Script mode: a deploy script on a host user without docker, run once per deployment; cut off and timed out.

use super::*;

#[tokio::test]
async fn script_mode_as_a_user_without_docker_runs_once_per_deployment() -> anyhow::Result<()> {
    let host = ScriptHost::new("ssh-script").await?;
    let work = host.work.display().to_string();
    let script = format!(
        "cd {work} && echo run >> count && env | grep '^STELLA_' | sort > env.txt && id -un > user.txt \
         && (docker ps >/dev/null 2>&1 && echo docker-ok || echo no-docker) && echo \"deploying $STELLA_VERSION\""
    );
    let task = host.task(host.settings(NODOCKER_USER, &script));
    let (outcome, lines) = apply_on(&host.target, &task).await;
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    assert!(lines.iter().any(|l| l == "script: no-docker"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "script: deploying 3.1.4"),
        "{lines:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(host.work.join("user.txt"))?.trim(),
        NODOCKER_USER
    );
    let env = std::fs::read_to_string(host.work.join("env.txt"))?;
    for expected in [
        "STELLA_RELEASE=shop".to_owned(),
        "STELLA_VERSION=3.1.4".to_owned(),
        "STELLA_ENVIRONMENT=edge".to_owned(),
        format!("STELLA_TARGET={}", host.name),
        format!("STELLA_DEPLOYMENT={}", task.deployment_id),
        "STELLA_COMPONENTS=web-api db".to_owned(),
        format!("STELLA_IMAGE_WEB_API={}", task.components[0].image),
        format!("STELLA_DIGEST_WEB_API=sha256:{}", "a".repeat(64)),
        format!("STELLA_IMAGE_DB={}", task.components[1].image),
        format!("STELLA_DIGEST_DB=sha256:{}", "b".repeat(64)),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in {env}");
    }
    assert_eq!(outcome.stickers.len(), 2);
    for sticker in &outcome.stickers {
        let path = host
            .stickers
            .join(&host.name)
            .join(format!("{}.json", sticker.component));
        assert_eq!(Sticker::from_json(&std::fs::read(&path)?)?, *sticker);
    }
    assert!(host
        .stickers
        .join(&host.name)
        .join(format!(".done-{}", task.deployment_id))
        .exists());
    assert_eq!(host.target.detect_drift(&task).await?, vec![]);

    // A re-delivery of the same deployment does not run the script again.
    let (again, lines) = apply_on(&host.target, &task).await;
    let again = again.map_err(anyhow::Error::msg)?;
    assert!(
        lines.iter().any(|l| l.contains("already ran")),
        "{lines:#?}"
    );
    assert_eq!(again.stickers, outcome.stickers);
    assert_eq!(std::fs::read_to_string(host.work.join("count"))?, "run\n");

    // A hand-edited sticker is drift; a missing one is `missing`.
    let db = host.stickers.join(&host.name).join("db.json");
    let text = std::fs::read_to_string(&db)?;
    std::fs::write(&db, text.replace("3.1.4", "3.1.5"))?;
    let findings = host.target.detect_drift(&task).await?;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        (findings[0].component.as_str(), findings[0].kind),
        ("db", DriftKind::StickerTampered)
    );
    std::fs::remove_file(&db)?;
    let kinds: Vec<DriftKind> = host
        .target
        .detect_drift(&task)
        .await?
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, vec![DriftKind::Missing]);

    // A failing script fails the deployment with its stderr, and is not marked done.
    let failing =
        host.task(host.settings(NODOCKER_USER, "echo starting; echo 'disk full' >&2; exit 3"));
    let (result, lines) = apply_on(&host.target, &failing).await;
    let error = result.expect_err("exit 3 fails");
    assert!(
        error.contains("exit status 3") && error.contains("disk full"),
        "{error}"
    );
    assert!(
        lines.iter().any(|l| l == "script (stderr): disk full"),
        "{lines:#?}"
    );
    assert!(!host
        .stickers
        .join(&host.name)
        .join(format!(".done-{}", failing.deployment_id))
        .exists());
    Ok(())
}

#[tokio::test]
async fn a_script_cut_off_mid_run_is_run_again_and_one_that_runs_too_long_fails(
) -> anyhow::Result<()> {
    let host = ScriptHost::new("ssh-rerun").await?;
    let work = host.work.display().to_string();
    let script =
        format!("cd {work} && echo run >> count && echo started && sleep 2 && echo finished");
    let task = host.task(host.settings(NODOCKER_USER, &script));
    let (progress, mut lines) = Progress::channel("agent-test", "rerun");
    let running = {
        let target = host.target.clone();
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
    while let Some(line) = lines.recv().await {
        if killed == 0 && line == "script: started" {
            killed = host.sshd.kill_sessions();
        }
        seen.push(line);
    }
    let outcome = running
        .await?
        .map_err(|e| anyhow::anyhow!("{e}: {seen:#?}"))?;
    assert!(killed >= 1, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("lost, reconnecting (attempt 1/3)")),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|l| l == "script: finished"), "{seen:#?}");
    // Interrupted while it ran: run again from the start (scripts must be idempotent).
    assert_eq!(
        std::fs::read_to_string(host.work.join("count"))?,
        "run\nrun\n"
    );
    assert_eq!(outcome.stickers.len(), 2);

    let mut settings = host.settings(NODOCKER_USER, "sleep 5");
    settings.insert("command_timeout_seconds".into(), "1".into());
    let started = std::time::Instant::now();
    let (result, lines) = apply_on(&host.target, &host.task(settings)).await;
    let error = result.expect_err("too long");
    assert!(error.contains("did not finish within 1 s"), "{error}");
    assert!(
        !lines.iter().any(|l| l.contains("reconnecting")),
        "not retried: {lines:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
