//! The target kind driving the double directly: deploys, stickers, drift, re-delivery,
//! authentication, failures and timeouts.

use super::*;

#[tokio::test]
async fn a_deploy_runs_the_script_with_the_release_and_writes_stickers() -> anyhow::Result<()> {
    let host = Host::start("winrm-deploy").await?;
    let work = host.work().display().to_string();
    let script = format!(
        "cd {work} && echo run >> count && env | grep '^STELLA_' | sort > env.txt && echo \"deploying $STELLA_VERSION\""
    );
    let task = host.task("3.1.4", host.settings("basic", &script));
    let (outcome, lines) = host.apply(&task).await;
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    assert!(
        lines.iter().any(|l| l == "script: deploying 3.1.4"),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("basic authentication")),
        "{lines:#?}"
    );
    let env = std::fs::read_to_string(host.work().join("env.txt"))?;
    for expected in [
        "STELLA_RELEASE=shop".to_owned(),
        "STELLA_VERSION=3.1.4".to_owned(),
        "STELLA_ENVIRONMENT=edge".to_owned(),
        format!("STELLA_TARGET={}", host.name),
        format!("STELLA_DEPLOYMENT={}", task.deployment_id),
        "STELLA_COMPONENTS=web-api db".to_owned(),
        format!("STELLA_IMAGE_WEB_API={}", task.components[0].image),
        format!("STELLA_DIGEST_WEB_API=sha256:{}", "a".repeat(64)),
        format!("STELLA_DIGEST_DB=sha256:{}", "b".repeat(64)),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in {env}");
    }
    assert_eq!(outcome.stickers.len(), 2);
    for sticker in &outcome.stickers {
        let file = host.sticker_file(&sticker.component);
        assert_eq!(Sticker::from_json(&std::fs::read(&file)?)?, *sticker);
        assert_eq!(
            host.target
                .read_sticker(&task.target, &sticker.component)
                .await?
                .as_ref(),
            Some(sticker)
        );
    }
    assert_eq!(host.target.detect_drift(&task).await?, vec![]);
    let observed = host.target.inspect(&task.target).await?;
    assert_eq!(observed.len(), 2, "{observed:?}");

    // A re-delivery of the same deployment does not run the script again.
    let (again, lines) = host.apply(&task).await;
    let again = again.map_err(anyhow::Error::msg)?;
    assert!(
        lines.iter().any(|l| l.contains("already ran")),
        "{lines:#?}"
    );
    assert_eq!(again.stickers, outcome.stickers);
    assert_eq!(std::fs::read_to_string(host.work().join("count"))?, "run\n");

    // A hand-edited sticker is drift; a missing one is `missing`.
    let db = host.sticker_file("db");
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

    // The next deployment runs the script again and leaves one marker.
    let next = host.task("3.1.5", host.settings("basic", &script));
    let (result, lines) = host.apply(&next).await;
    result.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    assert_eq!(
        std::fs::read_to_string(host.work().join("count"))?,
        "run\nrun\n"
    );
    let markers: Vec<String> = std::fs::read_dir(host.sticker_file("db").parent().expect("dir"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".done-"))
        .collect();
    assert_eq!(markers, vec![format!(".done-{}", next.deployment_id)]);
    Ok(())
}

#[tokio::test]
async fn ntlm_authenticates_and_wrong_passwords_are_refused() -> anyhow::Result<()> {
    let host = Host::start("winrm-ntlm").await?;
    let task = host.task("1.0.0", host.settings("ntlm", "echo over-ntlm"));
    let (outcome, lines) = host.apply(&task).await;
    outcome.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    assert!(lines.iter().any(|l| l == "script: over-ntlm"), "{lines:#?}");
    let records = host.double.records()?;
    assert!(
        !records.is_empty() && records.iter().all(|r| r["auth"] == "ntlm"),
        "{records:#?}"
    );

    for auth in ["ntlm", "basic"] {
        let mut wrong = host.task("1.0.1", host.settings(auth, "echo never"));
        wrong
            .secrets
            .0
            .insert("win_password".to_owned(), "not-the-password".to_owned());
        let (result, lines) = host.apply(&wrong).await;
        let error = result.expect_err("wrong password");
        assert!(
            error.contains("refused the credentials") && error.contains(USER),
            "{auth}: {error}"
        );
        assert!(!error.contains("not-the-password"), "{error}");
        assert!(!lines.iter().any(|l| l.contains("never")), "{lines:#?}");
    }
    // pyspnego's acceptor, not a shortcut of the double, said no.
    let log = host.double.log_text();
    assert!(log.contains("NTLM refused"), "{log}");
    Ok(())
}

#[tokio::test]
async fn a_failing_script_fails_the_deployment_with_its_stderr_and_exit_code() -> anyhow::Result<()>
{
    let host = Host::start("winrm-fail").await?;
    let task = host.task(
        "2.0.0",
        host.settings("basic", "echo starting; echo 'disk full' >&2; exit 3"),
    );
    let (result, lines) = host.apply(&task).await;
    let error = result.expect_err("exit 3 fails");
    assert!(
        error.contains("exit code 3") && error.contains("disk full"),
        "{error}"
    );
    assert!(lines.iter().any(|l| l == "script: starting"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "script (stderr): disk full"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("failed:") && l.contains("exit code 3")),
        "{lines:#?}"
    );
    // No marker, no sticker: the next delivery runs the script again.
    assert!(!host.sticker_file("db").exists());
    Ok(())
}

#[tokio::test]
async fn long_scripts_are_polled_past_the_operation_timeout_and_stopped_at_the_command_timeout(
) -> anyhow::Result<()> {
    let host = Host::start("winrm-poll").await?;
    let mut settings = host.settings("basic", "echo first; sleep 3; echo second");
    settings.insert("operation_timeout_seconds".into(), "1".into());
    let (result, lines) = host.apply(&host.task("1.0.0", settings)).await;
    result.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    let first = lines.iter().position(|l| l == "script: first");
    let second = lines.iter().position(|l| l == "script: second");
    assert!(first.is_some() && first < second, "{lines:#?}");
    let timeouts = host
        .double
        .records()?
        .iter()
        .filter(|r| r["fault"] == "w:TimedOut")
        .count();
    assert!(timeouts >= 1, "no Receive timed out");

    let mut settings = host.settings("basic", "sleep 30");
    settings.insert("operation_timeout_seconds".into(), "1".into());
    settings.insert("command_timeout_seconds".into(), "2".into());
    let started = std::time::Instant::now();
    let (result, _) = host.apply(&host.task("1.0.1", settings)).await;
    let error = result.expect_err("too long");
    assert!(error.contains("did not finish within 2 s"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let signals = host
        .double
        .records()?
        .iter()
        .filter(|r| r["action"] == stella_target_winrm::ACTION_SIGNAL)
        .count();
    assert!(signals >= 1, "the command was not terminated");
    Ok(())
}
