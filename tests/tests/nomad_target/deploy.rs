//! Deploys: digests pinned, stickers in `Meta`, Nomad's deployment followed; unchanged
//! re-deliveries; failed, timed-out and cancelled deployments; the ACL token; errors.

use super::*;
use stella_tests::wait_until;

#[tokio::test]
async fn a_deploy_pins_digests_writes_stickers_and_follows_the_deployment() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    let task = task(settings(&nomad), "1.0.0", 'a');
    let (outcome, lines) = apply_ok(&target, &task).await?;

    let job = nomad.job("shop").expect("job");
    assert_eq!(job["Version"], 1, "the operator's version 0, then Stella's");
    assert_eq!(task_image(&job, 0, 0), image("api", 'a'));
    assert_eq!(task_image(&job, 1, 0), image("worker", 'a'));
    // Everything else the operator wrote is kept.
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Env"]["MODE"],
        "production"
    );
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Config"]["ports"][0],
        "http"
    );
    assert_eq!(job["TaskGroups"][0]["Count"], 2);
    assert_eq!(job["Meta"]["owner"], "platform");
    assert_eq!(job["Meta"]["stella.release"], "shop");
    assert_eq!(job["Meta"]["stella.version"], "1.0.0");
    assert_eq!(
        job["Meta"]["stella.deployment"],
        task.deployment_id.as_str()
    );

    assert_eq!(outcome.stickers.len(), 2);
    for sticker in &outcome.stickers {
        assert!(sticker.verify());
        assert!(task.wrote(sticker));
        let key = format!("stella.sticker.{}", sticker.component);
        assert_eq!(job["Meta"][&key], sticker.to_canonical_json());
        assert_eq!(
            target
                .read_sticker(&task.target, &sticker.component)
                .await?
                .as_ref(),
            Some(sticker)
        );
    }
    let deployments = nomad.deployments("shop");
    let last = deployments.last().expect("a deployment");
    assert_eq!(
        (last["JobVersion"].as_u64(), last["Status"].as_str()),
        (Some(1), Some("successful"))
    );
    assert!(
        outcome.summary.contains("job shop version 1") && outcome.summary.contains("successful"),
        "{}",
        outcome.summary
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "registered job shop version 1 (was 0)"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("evaluation ") && l.ends_with(": complete")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(": successful; jobs: 1 placed, 1 healthy, 0 unhealthy of 1, web: 2 placed, 2 healthy, 0 unhealthy of 2")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(": running; ") && l.contains("web: 2 placed, 0 healthy")),
        "the placed allocations are reported before they are healthy: {lines:#?}"
    );
    // The deployment was followed with blocking queries, from the index Nomad sent.
    let followed: Vec<_> = nomad
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/job/shop/deployment")
        .collect();
    assert!(
        followed
            .iter()
            .all(|r| r.query.contains("wait=5000ms") && r.query.contains("namespace=default")),
        "{followed:?}"
    );
    assert!(
        followed
            .iter()
            .any(|r| r.query.contains("index=") && !r.query.contains("index=0")),
        "{followed:?}"
    );
    let register = nomad
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path == "/v1/jobs")
        .count();
    assert_eq!(register, 1);
    assert_eq!(target.detect_drift(&task).await?, vec![]);
    let observed = target.inspect(&task.target).await?;
    assert_eq!(observed.len(), 2, "{observed:?}");
    assert!(observed
        .iter()
        .all(|o| o.image_digest == format!("sha256:{}", "a".repeat(64))));

    // The same deployment again (a re-delivery after a crash): Nomad makes no new version,
    // the stickers are the same, and the deployment still succeeds.
    let (again, lines) = apply_ok(&target, &task).await?;
    assert!(
        lines.iter().any(|l| l
            == "job shop already runs this specification (version 1): Nomad made no new version"),
        "{lines:#?}"
    );
    assert_eq!(again.stickers, outcome.stickers);
    assert_eq!(nomad.versions("shop").len(), 2);
    assert_eq!(nomad.deployments("shop").len(), deployments.len());
    Ok(())
}

#[tokio::test]
async fn an_unhealthy_deployment_fails_with_nomads_reason_and_is_reverted() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    let good = task(settings(&nomad), "1.0.0", 'a');
    let (good_outcome, _) = apply_ok(&target, &good).await?;
    nomad.script(
        &"b".repeat(64),
        Outcome::Unhealthy {
            after: Duration::from_millis(100),
        },
    );
    let bad = task(settings(&nomad), "2.0.0", 'b');
    let (result, lines) = apply(&target, &bad).await;
    let error = result.expect_err("unhealthy allocations fail it");
    assert!(
        error.contains("the Nomad deployment of job shop version 2 failed: Failed due to unhealthy allocations")
            && error.contains("web: 2 placed, 0 healthy, 2 unhealthy of 2"),
        "{error}"
    );
    assert!(error.contains("reverted job shop to version 1"), "{error}");
    assert!(
        lines.iter().any(|l| l == "reverted job shop to version 1"),
        "{lines:#?}"
    );
    // Version 3 is version 1 again: its images and its stickers.
    let job = nomad.job("shop").expect("job");
    assert_eq!(job["Version"], 3);
    assert_eq!(task_image(&job, 0, 0), image("api", 'a'));
    assert_eq!(
        job["Meta"]["stella.deployment"],
        good.deployment_id.as_str()
    );
    wait_until(
        "the reverted version is deployed",
        Duration::from_secs(10),
        || async {
            let last = nomad.deployments("shop").last().cloned()?;
            (last["JobVersion"] == 3 && last["Status"] == "successful").then_some(())
        },
    )
    .await?;
    assert_eq!(target.detect_drift(&good).await?, vec![]);
    assert_eq!(
        target.read_sticker(&good.target, "api").await?.as_ref(),
        good_outcome.stickers.iter().find(|s| s.component == "api")
    );
    Ok(())
}

#[tokio::test]
async fn a_progress_deadline_or_stellas_timeout_fails_and_reverts() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    apply_ok(&target, &task(settings(&nomad), "1.0.0", 'a')).await?;

    nomad.script(
        &"c".repeat(64),
        Outcome::ProgressDeadline {
            after: Duration::from_millis(150),
        },
    );
    let (result, _) = apply(&target, &task(settings(&nomad), "2.0.0", 'c')).await;
    let error = result.expect_err("progress deadline");
    assert!(
        error.contains("failed: Failed due to progress deadline"),
        "{error}"
    );
    assert!(error.contains("reverted job shop to version 1"), "{error}");

    wait_until(
        "the reverted version is deployed",
        Duration::from_secs(10),
        || async {
            let last = nomad.deployments("shop").last().cloned()?;
            (last["JobVersion"] == 3 && last["Status"] == "successful").then_some(())
        },
    )
    .await?;

    // Nomad's deployment never ends: Stella gives up at deploy_timeout_seconds, and
    // reverts to the last stable version.
    nomad.script(&"e".repeat(64), Outcome::Hang);
    let mut quick = settings(&nomad);
    quick.insert("deploy_timeout_seconds".into(), "1".into());
    let (result, lines) = apply(&target, &task(quick, "3.0.0", 'e')).await;
    let error = result.expect_err("timeout");
    assert!(
        error.contains("version 4 did not finish within 1 s"),
        "{error}\n{lines:#?}"
    );
    assert!(error.contains("reverted job shop to version 3"), "{error}");
    let job = nomad.job("shop").expect("job");
    assert_eq!(task_image(&job, 0, 0), image("api", 'a'));
    // The hanging deployment was cancelled by the revert's new version.
    let hung = nomad
        .deployments("shop")
        .into_iter()
        .find(|d| d["JobVersion"] == 4)
        .expect("version 4 deployment");
    assert_eq!(hung["Status"], "cancelled");
    Ok(())
}

#[tokio::test]
async fn a_deployment_cancelled_by_a_newer_version_fails_without_reverting() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    nomad.set_default(Outcome::Hang);
    let task = task(settings(&nomad), "1.0.0", 'a');
    let running = {
        let task = task.clone();
        tokio::spawn(async move {
            let result = apply(&target, &task).await;
            (result, target)
        })
    };
    wait_until(
        "Stella's version is being deployed",
        Duration::from_secs(10),
        || async {
            let last = nomad.deployments("shop").last().cloned()?;
            (last["JobVersion"] == 1 && last["Status"] == "running").then_some(())
        },
    )
    .await?;
    // An operator registers another version meanwhile.
    nomad.set_default(Outcome::Succeed {
        after: Duration::from_millis(50),
    });
    nomad.edit("shop", |job| job["TaskGroups"][0]["Count"] = json!(3))?;
    let ((result, lines), _target) = running.await?;
    let error = result.expect_err("cancelled");
    assert!(
        error.contains("the Nomad deployment of job shop version 1 was cancelled: Cancelled due to newer version of job"),
        "{error}\n{lines:#?}"
    );
    assert!(!error.contains("reverted"), "{error}");
    let job = nomad.job("shop").expect("job");
    assert_eq!(job["Version"], 2, "the operator's version stays");
    assert_eq!(job["TaskGroups"][0]["Count"], 3);
    Ok(())
}

#[tokio::test]
async fn the_acl_token_comes_from_a_secret_and_a_wrong_one_is_refused() -> anyhow::Result<()> {
    init_tracing();
    let token = format!("tok-{}", suffix());
    let nomad = NomadDouble::start_with(Some(&token)).await?;
    nomad.register(example_job(
        "shop",
        &[("web", 2, &["api"]), ("jobs", 1, &["worker"])],
    ))?;
    let target = NomadTarget::new();
    let mut settings = settings(&nomad);
    settings.insert("token_secret".into(), "${secret.nomad_token}".into());
    let mut with_token = task(settings.clone(), "1.0.0", 'a');
    with_token
        .secrets
        .0
        .insert("nomad_token".into(), token.clone());
    let (outcome, lines) = apply_ok(&target, &with_token).await?;
    assert!(!format!("{outcome:?}{lines:?}").contains(&token));
    let requests = nomad.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.token.as_deref() == Some(token.as_str())),
        "{requests:?}"
    );
    // A drift round gets the desired state with the secret in memory; inspect gets only
    // the target and uses the token the last task brought.
    assert_eq!(target.detect_drift(&with_token).await?, vec![]);
    assert_eq!(target.inspect(&with_token.target).await?.len(), 2);

    let mut wrong = task(settings.clone(), "1.0.1", 'a');
    wrong
        .secrets
        .0
        .insert("nomad_token".into(), "not-the-token".into());
    let (result, _) = apply(&target, &wrong).await;
    let error = result.expect_err("refused");
    assert!(
        error.contains("403") && error.contains("Permission denied"),
        "{error}"
    );
    assert!(!error.contains("not-the-token"), "{error}");

    let fresh = NomadTarget::new();
    let (result, _) = apply(&fresh, &task(settings, "1.0.2", 'a')).await;
    let error = result.expect_err("no secret sent");
    assert!(error.contains("nomad_token"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_missing_job_or_task_is_a_clear_error_and_a_mapping_finds_the_task() -> anyhow::Result<()>
{
    let (nomad, target) = world().await?;
    let mut missing = settings(&nomad);
    missing.insert("job".into(), "nope".into());
    let (result, _) = apply(&target, &task(missing, "1.0.0", 'a')).await;
    let error = result.expect_err("no job");
    assert!(
        error.contains(r#"job "nope" not found in namespace "default""#),
        "{error}"
    );

    nomad.register(example_job("other", &[("front", 1, &["server"])]))?;
    let mut unmapped = settings(&nomad);
    unmapped.insert("job".into(), "other".into());
    unmapped.insert("components".into(), "api".into());
    let (result, _) = apply(&target, &task(unmapped.clone(), "1.0.0", 'a')).await;
    let error = result.expect_err("no task api");
    assert!(
        error.contains(
            "the job has no task api (its tasks: front/server); map it with task.api=GROUP/TASK"
        ),
        "{error}"
    );
    unmapped.insert("task.api".into(), "front/server".into());
    apply_ok(&target, &task(unmapped, "1.0.0", 'a')).await?;
    let job = nomad.job("other").expect("job");
    assert_eq!(task_image(&job, 0, 0), image("api", 'a'));
    assert!(job["Meta"].get("stella.sticker.worker").is_none());

    let (result, _) = apply(
        &target,
        &task(
            BTreeMap::from([("job".to_owned(), "shop".to_owned())]),
            "1",
            'a',
        ),
    )
    .await;
    assert!(result.expect_err("no address").contains("needs address"));
    Ok(())
}

#[tokio::test]
async fn a_cancelled_task_stops_following_at_once() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    nomad.set_default(Outcome::Hang);
    let task = task(settings(&nomad), "1.0.0", 'a');
    let cancel = CancellationToken::new();
    let running = {
        let task = task.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let (progress, _lines) = Progress::channel("agent-test", "cancel");
            target
                .apply(&task, &Plan::default(), &progress, &cancel)
                .await
        })
    };
    wait_until(
        "Stella's version is being deployed",
        Duration::from_secs(10),
        || async {
            let last = nomad.deployments("shop").last().cloned()?;
            (last["JobVersion"] == 1 && last["Status"] == "running").then_some(())
        },
    )
    .await?;
    let started = tokio::time::Instant::now();
    cancel.cancel();
    let result = running.await?;
    assert!(
        matches!(result, Err(stella_agent_core::TargetError::Cancelled)),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the blocking query was not waited out"
    );
    Ok(())
}
