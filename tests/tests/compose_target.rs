//! The `compose` target against the real engine, a real registry and both Compose
//! generations — Debian's `docker-compose` 1.29 (v1) and the `docker compose` plugin
//! (v2+): every scenario runs once per generation (modules `v1` and `v2`), and a missing
//! generation fails the test. Deploy, upgrade, an unhealthy release that brings the
//! previous lock back, rollback to byte-identical lock content, re-delivery, each drift
//! kind, settings refused before anything changes; and one run end to end through a
//! real control plane and agent.
//!
//! Every test has its own registry, image repository and project name (random suffix),
//! and removes its project's containers and networks on drop, so the tests run in
//! parallel.

use std::time::Duration;

use serde_json::{json, Value};
use stella_agent_core::{DriftKind, Target};
use stella_target_compose::{LOCK_FILE, PREVIOUS_LOCK_FILE};
use stella_target_docker::labels;
use stella_tests::compose::{
    digest_of, label, two_service_file, ComposeGeneration, ComposeWorld as World, ProjectCleanup,
};
use stella_tests::images::{docker_cli, WebImages};
use stella_tests::registry::TestRegistry;
use stella_tests::{free_port, wait_until, TestAgent, TestServer};

/// Every scenario, once per Compose generation.
macro_rules! per_generation {
    ($($scenario:ident),* $(,)?) => {
        mod v1 {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::ComposeGeneration::V1).await
                }
            )*
        }
        mod v2 {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::ComposeGeneration::V2).await
                }
            )*
        }
    };
}

per_generation!(
    deploy_pins_the_release_and_keeps_the_other_service,
    upgrade_then_rollback_renders_the_older_lock_byte_for_byte,
    unhealthy_release_fails_and_the_previous_lock_runs_again,
    redelivery_changes_nothing_but_the_sticker_files,
    drift_finds_each_kind,
    a_service_missing_from_the_file_is_refused_before_anything_changes,
    health_url_is_probed_besides_the_health_checks,
);

async fn deploy_pins_the_release_and_keeps_the_other_service(
    generation: ComposeGeneration,
) -> anyhow::Result<()> {
    let world = World::new("cmp-deploy", generation).await?;
    let v1 = world.images.publish("v1", true).await?;
    world.images.publish("side", true).await?;
    let operator_file = world.write_compose_file("latest")?;
    let task = world.task("1.0.0", &v1, world.settings(30));

    let plan = world.target.plan(&task).await?;
    assert!(
        plan.steps.iter().any(|s| s.contains("pin service web"))
            && plan.steps.iter().any(|s| s.contains("keep services side")),
        "{plan:?}"
    );

    let (outcome, lines) = world.apply_ok(&task).await?;
    assert_eq!(outcome.stickers.len(), 1);
    let sticker = &outcome.stickers[0];
    assert!(sticker.verify());
    assert_eq!(sticker.image, v1);
    assert!(lines.iter().any(|l| l.contains("pulling")), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("up -d --remove-orphans") && l.contains("up to")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("compose: ")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("waiting up to 30 s")),
        "{lines:#?}"
    );

    // The operator's file is untouched; the lock sits next to it.
    assert_eq!(
        std::fs::read_to_string(world.compose_file())?,
        operator_file
    );
    let lock = std::fs::read_to_string(world.lock_file())?;
    assert!(lock.contains(&format!("image: \"{v1}\"")), "{lock}");
    assert!(
        lock.contains(&format!("image: \"{}:side\"", world.images.repository())),
        "{lock}"
    );
    assert!(lock.contains("team=shop"), "the list form stays: {lock}");
    assert!(!world
        .dir
        .path()
        .join("app")
        .join(PREVIOUS_LOCK_FILE)
        .exists());

    // web runs the digest with the sticker as labels, side as the file says.
    let web = world.service("web").await?;
    assert!(world.runs("web", &v1).await?);
    assert_eq!(label(&web, labels::DIGEST), Some(digest_of(&v1)));
    assert_eq!(
        label(&web, labels::STICKER_DIGEST),
        Some(sticker.sticker_digest.as_str())
    );
    assert_eq!(label(&web, "team"), Some("shop"));
    let side = world.service("side").await?;
    assert_eq!(label(&side, labels::TARGET), None);
    assert_eq!(label(&side, "team"), Some("shop"));

    // The sticker file, the recorded lock digest, and what inspect sees.
    let file = std::fs::read_to_string(world.sticker_file("web"))?;
    assert_eq!(file, sticker.to_canonical_json());
    let observed = world.target.inspect(&task.target).await?;
    assert_eq!(observed.len(), 1, "{observed:?}");
    assert_eq!(observed[0].component, "web");
    assert_eq!(observed[0].image_digest, digest_of(&v1));
    assert_eq!(
        observed[0].sticker_digest.as_deref(),
        Some(sticker.sticker_digest.as_str())
    );
    assert_eq!(
        world
            .target
            .read_sticker(&task.target, "web")
            .await?
            .as_ref(),
        Some(sticker)
    );
    world.wait_clean(&task).await?;
    Ok(())
}

async fn upgrade_then_rollback_renders_the_older_lock_byte_for_byte(
    generation: ComposeGeneration,
) -> anyhow::Result<()> {
    let world = World::new("cmp-upgrade", generation).await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    world.images.publish("side", true).await?;
    world.write_compose_file("v1")?;
    let first = world.task("1.0.0", &v1, world.settings(30));
    world.apply_ok(&first).await?;
    let lock_v1 = std::fs::read(world.lock_file())?;
    let side_id = world.service("side").await?.id;

    let second = world.task("2.0.0", &v2, world.settings(30));
    let (outcome, _) = world.apply_ok(&second).await?;
    assert!(world.runs("web", &v2).await?);
    assert_eq!(outcome.stickers[0].version, "2.0.0");
    assert_eq!(
        std::fs::read(world.dir.path().join("app").join(PREVIOUS_LOCK_FILE))?,
        lock_v1,
        "the lock it replaced is kept"
    );
    assert_eq!(
        world.service("side").await?.id,
        side_id,
        "a service the release does not cover is not recreated"
    );
    world.wait_clean(&second).await?;

    // Rollback: the earlier task again renders exactly the earlier lock.
    let (outcome, _) = world.apply_ok(&first).await?;
    assert_eq!(std::fs::read(world.lock_file())?, lock_v1);
    assert!(world.runs("web", &v1).await?);
    assert_eq!(outcome.stickers[0].deployment_id, first.deployment_id);
    let web = world.service("web").await?;
    assert_eq!(label(&web, labels::VERSION), Some("1.0.0"));
    world.wait_clean(&first).await?;
    Ok(())
}

async fn unhealthy_release_fails_and_the_previous_lock_runs_again(
    generation: ComposeGeneration,
) -> anyhow::Result<()> {
    let world = World::new("cmp-unhealthy", generation).await?;
    let v1 = world.images.publish("v1", true).await?;
    let broken = world.images.publish("v3", false).await?;
    world.images.publish("side", true).await?;
    world.write_compose_file("v1")?;

    // A first deployment that fails has nothing to go back to.
    let (result, lines) = world
        .apply(&world.task("0.9.0", &broken, world.settings(4)))
        .await;
    let error = result.expect_err("an unhealthy release fails");
    assert!(error.contains("service web"), "{error}");
    assert!(error.contains("no previous lock"), "{error}");
    assert!(
        lines.iter().any(|l| l.contains("no previous lock")),
        "{lines:#?}"
    );

    let good = world.task("1.0.0", &v1, world.settings(30));
    world.apply_ok(&good).await?;
    let lock_v1 = std::fs::read(world.lock_file())?;

    let bad = world.task("3.0.0", &broken, world.settings(4));
    let started = std::time::Instant::now();
    let (result, lines) = world.apply(&bad).await;
    let error = result.expect_err("an unhealthy release fails");
    assert!(
        error.contains("service web") && error.contains("within 4 s"),
        "{error}"
    );
    assert!(
        error.contains("previous lock was restored and its services run healthy again"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // The failing service's logs are in the progress lines.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("last ") && l.contains("service web")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "web | web is starting"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restoring the previous lock")),
        "{lines:#?}"
    );

    // The previous lock is back and runs, healthy, under its own sticker.
    assert_eq!(std::fs::read(world.lock_file())?, lock_v1);
    assert!(world.runs("web", &v1).await?);
    let web = world.service("web").await?;
    assert_eq!(label(&web, labels::VERSION), Some("1.0.0"));
    let inspect = world
        .docker
        .inspect_container(
            &web.id.clone().unwrap_or_default(),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    assert_eq!(
        inspect.state.and_then(|s| s.health).and_then(|h| h.status),
        Some(bollard::models::HealthStatusEnum::HEALTHY)
    );
    let sticker: Value =
        serde_json::from_str(&std::fs::read_to_string(world.sticker_file("web"))?)?;
    assert_eq!(
        sticker["version"], "1.0.0",
        "the failed release wrote no sticker"
    );
    world.wait_clean(&good).await?;
    Ok(())
}

async fn redelivery_changes_nothing_but_the_sticker_files(
    generation: ComposeGeneration,
) -> anyhow::Result<()> {
    let world = World::new("cmp-redeliver", generation).await?;
    let v1 = world.images.publish("v1", true).await?;
    world.images.publish("side", true).await?;
    world.write_compose_file("v1")?;
    let task = world.task("1.0.0", &v1, world.settings(30));
    let (first, _) = world.apply_ok(&task).await?;
    let lock = std::fs::read(world.lock_file())?;
    let ids: Vec<Option<String>> = world
        .containers()
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();

    // The agent crashed after deploying and lost the sticker file: the same task again.
    std::fs::remove_file(world.sticker_file("web"))?;
    let (again, lines) = world.apply_ok(&task).await?;
    assert!(
        lines.iter().any(|l| l.contains("already up to date")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("up -d") || l.starts_with("writing")),
        "{lines:#?}"
    );
    assert_eq!(
        again.stickers, first.stickers,
        "the same sticker, deployed_at included"
    );
    assert_eq!(std::fs::read(world.lock_file())?, lock);
    let ids_after: Vec<Option<String>> = world
        .containers()
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids_after, ids, "no container was recreated");
    assert_eq!(
        std::fs::read_to_string(world.sticker_file("web"))?,
        first.stickers[0].to_canonical_json()
    );
    world.wait_clean(&task).await?;
    Ok(())
}

async fn drift_finds_each_kind(generation: ComposeGeneration) -> anyhow::Result<()> {
    let world = World::new("cmp-drift", generation).await?;
    world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    world.images.publish("side", true).await?;
    // The operator's file says v1; the release deploys v2.
    world.write_compose_file("v1")?;
    let task = world.task("2.0.0", &v2, world.settings(30));
    world.apply_ok(&task).await?;
    world.wait_clean(&task).await?;

    // sticker_tampered: the sticker file edited.
    let sticker_path = world.sticker_file("web");
    let original = std::fs::read(&sticker_path)?;
    let mut sticker: Value = serde_json::from_slice(&original)?;
    sticker["version"] = json!("9.9.9");
    std::fs::write(&sticker_path, serde_json::to_vec(&sticker)?)?;
    let found = world.wait_drift(&task, DriftKind::StickerTampered).await?;
    assert_eq!(found.component, "web");
    std::fs::write(&sticker_path, &original)?;
    world.wait_clean(&task).await?;

    // config_changed: the lock edited by hand.
    let lock = std::fs::read(world.lock_file())?;
    let mut edited = lock.clone();
    edited.extend_from_slice(b"# tuned by hand\n");
    std::fs::write(world.lock_file(), &edited)?;
    let found = world.wait_drift(&task, DriftKind::ConfigChanged).await?;
    assert!(found.detail.contains(LOCK_FILE), "{found:?}");
    std::fs::write(world.lock_file(), &lock)?;
    world.wait_clean(&task).await?;

    // missing: the covered service stopped.
    let web = world.service("web").await?.id.unwrap_or_default();
    docker_cli(&["stop", "-t", "1", &web], None, None).await?;
    let found = world.wait_drift(&task, DriftKind::Missing).await?;
    assert_eq!(found.component, "web");
    docker_cli(&["start", &web], None, None).await?;
    world.wait_clean(&task).await?;

    // unexpected: a service the lock does not have, added to the project by hand.
    let extra_file = world.dir.path().join("app").join("extra.yml");
    std::fs::write(
        &extra_file,
        format!(
            "services:\n  extra:\n    image: {v2}\n    command: [\"/bin/httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
        ),
    )?;
    world
        .generation
        .run(&world.name, &extra_file, &["up", "-d", "extra"])
        .await?;
    let found = world.wait_drift(&task, DriftKind::Unexpected).await?;
    assert_eq!(found.component, "extra");
    let extra = world.service("extra").await?.id.unwrap_or_default();
    docker_cli(&["rm", "-f", &extra], None, None).await?;
    world.wait_clean(&task).await?;

    // image_changed: someone ran `up` with the plain file (web on v1, no sticker).
    world
        .generation
        .run(&world.name, &world.compose_file(), &["up", "-d"])
        .await?;
    let found = world.wait_drift(&task, DriftKind::ImageChanged).await?;
    assert_eq!(found.component, "web");
    assert!(found.detail.contains(digest_of(&v2)), "{found:?}");
    let all = world.drift(&task).await?;
    assert!(
        all.iter().any(|f| f.kind == DriftKind::StickerTampered),
        "the sticker is not on the container: {all:?}"
    );

    // A deployment puts it right.
    let again = world.task("2.0.1", &v2, world.settings(30));
    world.apply_ok(&again).await?;
    world.wait_clean(&again).await?;
    Ok(())
}

async fn a_service_missing_from_the_file_is_refused_before_anything_changes(
    generation: ComposeGeneration,
) -> anyhow::Result<()> {
    let world = World::new("cmp-refused", generation).await?;
    world.write_compose_file("v1")?;
    let image = world.images.missing();
    let mut task = world.task("1.0.0", &image, world.settings(30));
    task.components[0].name = "api".to_owned();
    let (result, _) = world.apply(&task).await;
    let error = result.expect_err("no service api");
    assert!(
        error.contains("service api") && error.contains("service.api="),
        "{error}"
    );
    assert!(!world.lock_file().exists());
    assert!(world.containers().await?.is_empty());

    // Mapped to a service that exists, the image is what is wrong: unpinned.
    task.target
        .settings
        .insert("service.api".to_owned(), "web".to_owned());
    task.components[0].image = format!("{}:v1", world.images.repository());
    let (result, _) = world.apply(&task).await;
    let error = result.expect_err("unpinned");
    assert!(error.contains("not pinned by digest"), "{error}");
    assert!(!world.lock_file().exists());
    Ok(())
}

async fn health_url_is_probed_besides_the_health_checks(
    generation: ComposeGeneration,
) -> anyhow::Result<()> {
    let world = World::new("cmp-url", generation).await?;
    let v1 = world.images.publish("v1", true).await?;
    // Serves `/` but has no `/health`; the file gives `web` no health check of its own.
    let no_health = world.images.publish("v3", false).await?;
    let port = free_port().await?;
    std::fs::write(
        world.compose_file(),
        format!(
            "services:\n  web:\n    image: {}:v1\n    ports: [\"127.0.0.1:{port}:8080\"]\n",
            world.images.repository()
        ),
    )?;
    let url = format!("http://127.0.0.1:{port}/health");
    let mut settings = world.settings(3);
    settings.insert("health_url".to_owned(), url.clone());

    let (_, lines) = world
        .apply_ok(&world.task("1.0.0", &v1, settings.clone()))
        .await?;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("then GET {url} answers 2xx"))),
        "{lines:#?}"
    );
    let lock_v1 = std::fs::read(world.lock_file())?;

    let (result, _) = world
        .apply(&world.task("3.0.0", &no_health, settings))
        .await;
    let error = result.expect_err("the probe never passes");
    assert!(
        error.contains(&format!("health_url {url} did not answer 2xx within 3 s"))
            && error.contains("404"),
        "{error}"
    );
    assert!(
        error.contains("the previous lock was restored and its services run healthy again"),
        "{error}"
    );
    assert_eq!(std::fs::read(world.lock_file())?, lock_v1);
    assert!(world.runs("web", &v1).await?);
    Ok(())
}

/// End to end: a compose target created over the REST API, a release promoted to it
/// through a real agent, its logs and drift visible on the control plane.
#[tokio::test]
async fn a_release_promoted_to_a_compose_target_through_a_real_agent() -> anyhow::Result<()> {
    let generation = ComposeGeneration::V2;
    generation.require().await?;
    let registry = TestRegistry::start().await?;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let target = format!("cmp-e2e-{suffix}");
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-test/{target}"),
        &registry.docker_config(),
    );
    let _cleanup = ProjectCleanup::new([target.clone()]).with_images(images.repository());
    let v1 = images.publish("v1", true).await?;
    images.publish("side", true).await?;

    let server = TestServer::start().await?;
    let agent = TestAgent::start(&server, "compose-host").await?;
    let shown = server
        .wait_for_state("compose-host", "connected", Duration::from_secs(10))
        .await?;
    assert!(
        shown["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|k| k == "compose")),
        "the agent must drive compose here: {shown}"
    );
    let app = server.dir.path().join("app");
    std::fs::create_dir_all(&app)?;
    let compose_file = app.join("compose.yml");
    std::fs::write(&compose_file, two_service_file(images.repository(), "v1"))?;
    let sticker_dir = server.dir.path().join("stickers");

    server
        .post(
            "/api/v1/environments",
            json!({"name": "dev", "drift": "report", "allow_unscanned": true}),
        )
        .await?;
    server
        .post(
            "/api/v1/targets",
            json!({"name": target, "environment": "dev", "kind": "compose", "agent": "compose-host",
            "settings": {
                "compose_file": compose_file.display().to_string(),
                "compose_version": generation.setting(),
                "health_timeout_seconds": "30",
                "sticker_dir": sticker_dir.display().to_string(),
                "service.web": "web",
            }}),
        )
        .await?;
    server
        .post(
            "/api/v1/releases",
            json!({"name": "shop", "version": "1", "components": {"web": v1}}),
        )
        .await?;
    let promotion = server
        .post(
            "/api/v1/promotions",
            json!({"release": "shop", "version": "1", "environment": "dev"}),
        )
        .await?;
    let id = promotion["deployment_id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    let deployment = server
        .wait_deployment(&id, Duration::from_secs(120))
        .await?;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");

    let logs = server
        .get(&format!("/api/v1/deployments/{id}/logs"))
        .await?;
    let text = logs.to_string();
    for expected in [
        "compose.stella.lock.yml",
        "up -d --remove-orphans",
        "compose: ",
        "is up",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} is not in the logs: {logs}"
        );
    }
    let sticker: Value = serde_json::from_str(&std::fs::read_to_string(
        sticker_dir.join(&target).join("web.json"),
    )?)?;
    assert_eq!(sticker["deployment_id"], deployment["id"]);
    assert_eq!(sticker["decision_id"], deployment["decision_id"]);

    // Drift: the covered service stopped by hand is reported, and resolved once it runs.
    let web = docker_cli(
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={target}"),
            "--filter",
            "label=com.docker.compose.service=web",
        ],
        None,
        None,
    )
    .await?;
    let web = web.trim().to_owned();
    docker_cli(&["stop", "-t", "1", &web], None, None).await?;
    let missing = wait_until(
        "drift `missing` is reported",
        Duration::from_secs(30),
        || async {
            let drift = server.get("/api/v1/drift").await.ok()?;
            drift
                .as_array()?
                .iter()
                .find(|d| d["kind"] == "missing" && d["target"] == target.as_str())
                .cloned()
        },
    )
    .await?;
    assert_eq!(missing["component"], "web");
    docker_cli(&["start", &web], None, None).await?;
    wait_until("drift is resolved", Duration::from_secs(30), || async {
        let drift = server.get("/api/v1/drift").await.ok()?;
        drift.as_array()?.is_empty().then_some(())
    })
    .await?;
    agent.stop().await?;
    Ok(())
}
