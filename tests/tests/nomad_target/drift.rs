//! Drift of each kind, made by hand on the job as an operator would, and remediated by
//! deploying again.

use super::*;

fn kinds(findings: &[stella_agent_core::DriftFinding]) -> Vec<(String, DriftKind)> {
    let mut kinds: Vec<(String, DriftKind)> = findings
        .iter()
        .map(|f| (f.component.clone(), f.kind))
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn drift_of_each_kind_is_seen_and_deploying_again_remediates_it() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    let desired = task(settings(&nomad), "1.0.0", 'a');
    apply_ok(&target, &desired).await?;
    assert_eq!(target.detect_drift(&desired).await?, vec![]);

    // Another image registered outside Stella.
    nomad.edit("shop", |job| {
        job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = json!(image("api", 'f'));
    })?;
    let findings = target.detect_drift(&desired).await?;
    assert_eq!(
        kinds(&findings),
        vec![("api".to_owned(), DriftKind::ImageChanged)],
        "{findings:?}"
    );
    assert!(findings[0].detail.contains(&"f".repeat(64)), "{findings:?}");
    let (_, lines) = apply_ok(&target, &desired).await?;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("registered job shop version 3")),
        "{lines:#?}"
    );
    assert_eq!(target.detect_drift(&desired).await?, vec![]);

    // The Meta sticker edited.
    nomad.edit("shop", |job| {
        let sticker = job["Meta"]["stella.sticker.worker"]
            .as_str()
            .unwrap_or_default();
        job["Meta"]["stella.sticker.worker"] = json!(sticker.replace("1.0.0", "9.9.9"));
    })?;
    let findings = target.detect_drift(&desired).await?;
    assert_eq!(
        kinds(&findings),
        vec![("worker".to_owned(), DriftKind::StickerTampered)],
        "{findings:?}"
    );
    apply_ok(&target, &desired).await?;
    assert_eq!(target.detect_drift(&desired).await?, vec![]);

    // The job's spec edited (a new version made outside Stella).
    nomad.edit("shop", |job| {
        job["TaskGroups"][1]["Tasks"][0]["Env"]["MODE"] = json!("debug");
    })?;
    let findings = target.detect_drift(&desired).await?;
    assert_eq!(
        kinds(&findings),
        vec![
            ("api".to_owned(), DriftKind::ConfigChanged),
            ("worker".to_owned(), DriftKind::ConfigChanged)
        ],
        "{findings:?}"
    );
    assert!(
        findings[0]
            .detail
            .contains("edited outside Stella: version 6"),
        "{findings:?}"
    );
    // Deploying again keeps the edit (the job as it runs is the base) and records it.
    apply_ok(&target, &desired).await?;
    assert_eq!(target.detect_drift(&desired).await?, vec![]);
    assert_eq!(
        nomad.job("shop").expect("job")["TaskGroups"][1]["Tasks"][0]["Env"]["MODE"],
        "debug"
    );

    // Stopped.
    nomad.stop("shop", false)?;
    let findings = target.detect_drift(&desired).await?;
    assert_eq!(
        kinds(&findings),
        vec![
            ("api".to_owned(), DriftKind::Missing),
            ("worker".to_owned(), DriftKind::Missing)
        ],
        "{findings:?}"
    );
    assert!(
        findings[0].detail.contains("job shop is stopped"),
        "{findings:?}"
    );
    assert_eq!(target.inspect(&desired.target).await?, vec![]);
    let (_, lines) = apply_ok(&target, &desired).await?;
    assert!(
        lines.iter().any(|l| l.starts_with("registered job shop")),
        "{lines:#?}"
    );
    let job = nomad.job("shop").expect("job");
    assert_eq!(job["Stop"], false);
    assert_eq!(target.detect_drift(&desired).await?, vec![]);

    // Purged: missing; without a job file there is nothing to register.
    nomad.stop("shop", true)?;
    assert!(nomad.job("shop").is_none());
    let findings = target.detect_drift(&desired).await?;
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert!(findings
        .iter()
        .all(|f| f.kind == DriftKind::Missing && f.detail.contains("purged")));
    let (result, _) = apply(&target, &desired).await;
    assert!(result
        .expect_err("purged")
        .contains("register it first, or set job_file"));
    Ok(())
}

#[tokio::test]
async fn a_job_file_registers_a_purged_job_again() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("shop.json");
    let mut spec = example_job(
        "ignored-id",
        &[("web", 1, &["api"]), ("jobs", 1, &["worker"])],
    );
    spec["TaskGroups"][0]["Tasks"][0]["Env"]["FROM_FILE"] = json!("yes");
    std::fs::write(&file, serde_json::to_vec(&json!({"Job": spec}))?)?;
    let mut settings = settings(&nomad);
    settings.insert("job_file".into(), file.display().to_string());
    let desired = task(settings, "1.0.0", 'a');
    apply_ok(&target, &desired).await?;
    let job = nomad.job("shop").expect("job");
    assert_eq!(job["TaskGroups"][0]["Tasks"][0]["Env"]["FROM_FILE"], "yes");
    assert_eq!(job["TaskGroups"][0]["Count"], 1);

    nomad.stop("shop", true)?;
    assert_eq!(target.detect_drift(&desired).await?.len(), 2);
    let (_, lines) = apply_ok(&target, &desired).await?;
    assert!(
        lines.iter().any(|l| l == "registered job shop version 0"),
        "{lines:#?}"
    );
    assert_eq!(target.detect_drift(&desired).await?, vec![]);
    Ok(())
}

#[tokio::test]
async fn the_job_is_watched_so_drift_is_looked_for_as_soon_as_it_changes() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    let desired = task(settings(&nomad), "1.0.0", 'a');
    apply_ok(&target, &desired).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    target.watch(tx);
    stella_tests::wait_until(
        "the watcher holds a blocking query on the job",
        Duration::from_secs(10),
        || async {
            nomad
                .requests()
                .iter()
                .any(|r| {
                    r.path == "/v1/job/shop"
                        && r.query.contains("index=")
                        && !r.query.contains("index=0&")
                })
                .then_some(())
        },
    )
    .await?;
    assert!(rx.try_recv().is_err(), "nothing changed yet");
    nomad.stop("shop", false)?;
    let notified = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
    assert_eq!(notified.as_deref(), Some("nomad-shop"));
    let findings = target.detect_drift(&desired).await?;
    assert!(
        findings.iter().all(|f| f.kind == DriftKind::Missing) && findings.len() == 2,
        "{findings:?}"
    );
    Ok(())
}
