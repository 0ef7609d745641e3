//! The double's API as Stella's client relies on it: blocking queries that really wait,
//! `EnforceIndex` refusing a stale registration, namespaces kept apart.

use super::*;
use stella_target_nomad::{NomadClient, NomadError, NomadSettings};
use tokio::time::Instant;

fn client(nomad: &NomadDouble, namespace: &str) -> anyhow::Result<NomadClient> {
    let values = BTreeMap::from([
        ("address".to_owned(), nomad.address.clone()),
        ("job".to_owned(), "shop".to_owned()),
        ("namespace".to_owned(), namespace.to_owned()),
    ]);
    Ok(NomadClient::new(&NomadSettings::parse(&values, &values)?)?)
}

#[tokio::test]
async fn a_blocking_query_is_held_until_the_index_moves_or_the_wait_ends() -> anyhow::Result<()> {
    let (nomad, _) = world().await?;
    let client = client(&nomad, "default")?;
    stella_tests::wait_until(
        "the operator's version is deployed",
        Duration::from_secs(10),
        || async {
            let last = nomad.deployments("shop").last().cloned()?;
            (last["Status"] == "successful").then_some(())
        },
    )
    .await?;
    let (_, index) = client.latest_deployment("shop", 0).await?;
    assert_eq!(index, nomad.index());

    // Nothing changes: the answer comes after the wait (5 s), with the same index.
    let started = Instant::now();
    let (_, same) = client.latest_deployment("shop", index).await?;
    let waited = started.elapsed();
    assert_eq!(same, index);
    assert!(
        waited >= Duration::from_millis(4900),
        "answered after {waited:?}"
    );

    // A change while the query is held answers it at once, with a higher index.
    let held = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = client.latest_deployment("shop", index).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    nomad.edit("shop", |job| job["TaskGroups"][0]["Count"] = json!(4))?;
    let (answer, waited) = held.await?;
    let (_, moved) = answer?;
    assert!(moved > index, "{moved} > {index}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    Ok(())
}

#[tokio::test]
async fn a_registration_from_a_stale_read_is_refused() -> anyhow::Result<()> {
    let (nomad, _) = world().await?;
    let client = client(&nomad, "default")?;
    let read = client.job("shop").await?.expect("job");
    nomad.edit("shop", |job| job["Priority"] = json!(70))?;
    let error = client
        .register(&read, read["JobModifyIndex"].as_u64().unwrap_or_default())
        .await
        .expect_err("stale");
    assert!(matches!(error, NomadError::Conflict { .. }), "{error}");
    assert!(
        error.to_string().contains("changed by someone else"),
        "{error}"
    );
    assert_eq!(nomad.job("shop").expect("job")["Priority"], 70);
    assert!(
        client.job("nope").await?.is_none(),
        "404 is no job, not an error"
    );
    Ok(())
}

#[tokio::test]
async fn the_namespace_setting_selects_the_job() -> anyhow::Result<()> {
    let (nomad, target) = world().await?;
    let mut job = example_job("shop", &[("web", 2, &["api"]), ("jobs", 1, &["worker"])]);
    job["Namespace"] = json!("prod");
    nomad.register(job)?;
    let mut settings = settings(&nomad);
    settings.insert("namespace".into(), "prod".into());
    let task = task(settings, "1.0.0", 'a');
    apply_ok(&target, &task).await?;
    let prod = nomad.job_in("prod", "shop").expect("prod job");
    assert_eq!(task_image(&prod, 0, 0), image("api", 'a'));
    let default = nomad.job("shop").expect("default job");
    assert_eq!(
        default["Version"], 0,
        "the default namespace's job is untouched"
    );
    assert!(nomad
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/job"))
        .all(|r| r.query.contains("namespace=prod")));
    Ok(())
}

#[test]
fn the_control_plane_accepts_every_key_the_nomad_target_reads() {
    use stella_control_plane::domain::TargetKind;
    for key in stella_target_nomad::NOMAD_KEYS {
        let (key, value) = match *key {
            "task.COMPONENT" => ("task.api", "web/api"),
            "token_secret" => (*key, "${secret.nomad_token}"),
            "job_file" | "ca_file" => (*key, "/etc/stella/file"),
            "deploy_timeout_seconds" => (*key, "60"),
            "components" => (*key, "api"),
            "address" => (*key, "http://127.0.0.1:4646"),
            other => (other, "prod"),
        };
        let settings = BTreeMap::from([
            ("address".to_owned(), "http://127.0.0.1:4646".to_owned()),
            ("job".to_owned(), "shop".to_owned()),
            (key.to_owned(), value.to_owned()),
        ]);
        assert!(
            TargetKind::Nomad.validate_settings(&settings).is_ok(),
            "{key}={value} refused"
        );
        assert!(
            NomadSettings::parse(&settings, &settings).is_ok(),
            "{key}={value} refused by the target"
        );
    }
}
