//! Against a real moto server: the SDK calls Stella makes, as moto answers them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_ecs::types::{ContainerDefinition, Tag};
use serde_json::json;
use stella_agent_core::{DriftKind, Target};
use stella_target_ecs::{EcsTarget, PREVIOUS_TASK_DEFINITION_TAG};
use stella_tests::images::WebImages;
use stella_tests::moto::Moto;
use stella_tests::registry::TestRegistry;
use stella_tests::{init_tracing, TestAgent, TestServer};

use super::{apply_ok, pinned, settings, suffix, task};

const BASE_IMAGE: &str = "r.example/shop/api:1";
const SIDECAR_IMAGE: &str = "public.ecr.aws/aws-observability/aws-for-fluent-bit:2";

/// A cluster with one service of one desired task, running `shop` revision 1: an `api`
/// container and a log router sidecar.
struct World {
    moto: Moto,
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
    name: String,
    base: String,
    target: EcsTarget,
}

impl World {
    async fn new() -> anyhow::Result<World> {
        init_tracing();
        let moto = Moto::start(1).await?;
        let ecs = moto.ecs_client();
        let cluster = format!("prod-{}", suffix());
        let service = "shop".to_owned();
        ecs.create_cluster().cluster_name(&cluster).send().await?;
        let registered = ecs
            .register_task_definition()
            .family("shop")
            .container_definitions(container("api", BASE_IMAGE))
            .container_definitions(container("log-router", SIDECAR_IMAGE))
            .send()
            .await?;
        let base = registered
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .context("no arn")?
            .to_owned();
        ecs.create_service()
            .cluster(&cluster)
            .service_name(&service)
            .task_definition(&base)
            .desired_count(1)
            .send()
            .await?;
        Ok(World {
            moto,
            ecs,
            cluster,
            service,
            name: format!("ecs-{}", suffix()),
            base,
            target: EcsTarget::new(),
        })
    }

    fn settings(&self) -> BTreeMap<String, String> {
        settings(&self.moto.url, &self.cluster, &self.service)
    }

    fn task(&self, version: &str, image: &str) -> stella_agent_core::DeployTask {
        task(&self.name, self.settings(), version, &[("api", image)])
    }

    async fn service(&self) -> anyhow::Result<aws_sdk_ecs::types::Service> {
        let output = self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await?;
        output.services().first().cloned().context("no service")
    }

    async fn task_definition(&self) -> anyhow::Result<String> {
        Ok(self
            .service()
            .await?
            .task_definition()
            .context("no task definition")?
            .to_owned())
    }

    async fn images(&self, arn: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let output = self
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await?;
        Ok(output
            .task_definition()
            .context("no task definition")?
            .container_definitions()
            .iter()
            .map(|c| {
                (
                    c.name().unwrap_or_default().to_owned(),
                    c.image().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    async fn tags(&self, arn: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let output = self
            .ecs
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await?;
        Ok(output
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    async fn service_arn(&self) -> anyhow::Result<String> {
        Ok(self
            .service()
            .await?
            .service_arn()
            .context("no arn")?
            .to_owned())
    }

    async fn family_revisions(&self) -> anyhow::Result<usize> {
        let output = self
            .ecs
            .list_task_definitions()
            .family_prefix("shop")
            .send()
            .await?;
        Ok(output.task_definition_arns().len())
    }

    async fn drift(&self, desired: &stella_agent_core::DeployTask) -> Vec<(String, DriftKind)> {
        match self.target.detect_drift(desired).await {
            Ok(findings) => findings.into_iter().map(|f| (f.detail, f.kind)).collect(),
            Err(error) => panic!("drift failed: {error}"),
        }
    }
}

fn container(name: &str, image: &str) -> ContainerDefinition {
    ContainerDefinition::builder()
        .name(name)
        .image(image)
        .memory(128)
        .essential(name == "api")
        .build()
}

fn kinds(findings: &[(String, DriftKind)]) -> Vec<DriftKind> {
    let mut kinds: Vec<DriftKind> = findings.iter().map(|(_, kind)| *kind).collect();
    kinds.sort_unstable();
    kinds
}

/// A deploy registers a revision from the service's with the component's image pinned by
/// digest (the sidecar untouched), points the service at it, and tags both with the
/// sticker; delivering the same task again changes nothing.
#[tokio::test]
async fn a_deploy_registers_a_pinned_revision_and_tags_service_and_revision() -> anyhow::Result<()>
{
    let world = World::new().await?;
    let v1 = pinned("r.example/shop/api", 'a');
    let task = world.task("1.0.0", &v1);
    let (outcome, lines) = apply_ok(&world.target, &task).await?;

    let running = world.task_definition().await?;
    assert_ne!(running, world.base);
    assert!(running.ends_with("task-definition/shop:2"), "{running}");
    let images = world.images(&running).await?;
    assert_eq!(images["api"], v1);
    assert_eq!(images["log-router"], SIDECAR_IMAGE);
    let text = lines.join("\n");
    assert!(text.contains(&format!("registered {running}")), "{text}");
    assert!(text.contains("rollout COMPLETED"), "{text}");
    assert!(text.contains("credentials from the secrets"), "{text}");
    assert!(
        !text.contains(stella_tests::moto::SECRET_ACCESS_KEY),
        "{text}"
    );

    let sticker = outcome.stickers.first().context("no sticker")?;
    assert!(sticker.verify());
    assert_eq!(sticker.image, v1);
    let service_tags = world.tags(&world.service_arn().await?).await?;
    let revision_tags = world.tags(&running).await?;
    for tags in [&service_tags, &revision_tags] {
        assert_eq!(tags["stella:release"], "shop");
        assert_eq!(tags["stella:version"], "1.0.0");
        assert_eq!(tags["stella:deployment"], task.deployment_id);
        assert_eq!(tags["stella:image:api"], v1);
        assert_eq!(tags["stella:sticker-digest:api"], sticker.sticker_digest);
        assert!(tags.iter().all(|(k, v)| k.len() <= 128 && v.len() <= 256));
    }
    assert_eq!(service_tags[PREVIOUS_TASK_DEFINITION_TAG], world.base);
    let read = world
        .target
        .read_sticker(&task.target, "api")
        .await?
        .context("no sticker read")?;
    assert_eq!(&read, sticker);
    assert_eq!(world.drift(&task).await, vec![]);
    let observed = world.target.inspect(&task.target).await?;
    assert!(observed.iter().any(|o| o.component == "api"
        && Some(&o.image_digest) == sticker.image.split('@').nth(1).map(str::to_owned).as_ref()));

    // Delivered again (an agent restart mid-task): nothing new.
    let (again, lines) = apply_ok(&world.target, &task).await?;
    assert!(
        again.summary.contains("already ran this deployment"),
        "{lines:#?}"
    );
    assert_eq!(again.stickers, outcome.stickers);
    assert_eq!(world.family_revisions().await?, 2);
    Ok(())
}

/// Out-of-band changes are drift, and delivering the desired state again repairs them:
/// edited tags, another task definition, a scale to 0; a deleted service is missing.
#[tokio::test]
async fn out_of_band_changes_are_drift_and_remediation_repairs_them() -> anyhow::Result<()> {
    let world = World::new().await?;
    let desired = world.task("1.0.0", &pinned("r.example/shop/api", 'a'));
    apply_ok(&world.target, &desired).await?;
    let service_arn = world.service_arn().await?;

    // Tags edited.
    world
        .ecs
        .tag_resource()
        .resource_arn(&service_arn)
        .tags(Tag::builder().key("stella:version").value("6.6.6").build())
        .send()
        .await?;
    let findings = world.drift(&desired).await;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::StickerTampered],
        "{findings:?}"
    );
    apply_ok(&world.target, &desired).await?;
    assert_eq!(world.drift(&desired).await, vec![]);
    assert_eq!(
        world.family_revisions().await?,
        2,
        "tags only: no new revision"
    );

    // The service pointed at another task definition.
    world
        .ecs
        .update_service()
        .cluster(&world.cluster)
        .service(&world.service)
        .task_definition(&world.base)
        .send()
        .await?;
    let findings = world.drift(&desired).await;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::ImageChanged, DriftKind::StickerTampered],
        "{findings:?}"
    );
    assert!(findings[0].0.contains(BASE_IMAGE) || findings[1].0.contains(BASE_IMAGE));
    apply_ok(&world.target, &desired).await?;
    assert_eq!(world.drift(&desired).await, vec![]);

    // Scaled to 0.
    world
        .ecs
        .update_service()
        .cluster(&world.cluster)
        .service(&world.service)
        .desired_count(0)
        .send()
        .await?;
    let findings = world.drift(&desired).await;
    assert_eq!(kinds(&findings), vec![DriftKind::Missing], "{findings:?}");
    assert!(findings[0].0.contains("scaled to 0"), "{findings:?}");
    let (_, lines) = apply_ok(&world.target, &desired).await?;
    assert!(
        lines.join("\n").contains("desired count back to 1"),
        "{lines:#?}"
    );
    assert_eq!(world.service().await?.desired_count(), 1);
    assert_eq!(world.drift(&desired).await, vec![]);

    // Deleted.
    world
        .ecs
        .delete_service()
        .cluster(&world.cluster)
        .service(&world.service)
        .force(true)
        .send()
        .await?;
    let findings = world.drift(&desired).await;
    assert_eq!(kinds(&findings), vec![DriftKind::Missing], "{findings:?}");
    let (result, _) = super::apply_on(&world.target, &desired).await;
    let error = result.expect_err("no service to update");
    assert!(error.contains("shop"), "{error}");
    Ok(())
}

/// A rollback (the previous release delivered again) puts the service back on the
/// revision it ran before, without registering another.
#[tokio::test]
async fn a_rollback_returns_the_service_to_its_previous_revision() -> anyhow::Result<()> {
    let world = World::new().await?;
    let v1 = pinned("r.example/shop/api", 'a');
    let v2 = pinned("r.example/shop/api", 'b');
    apply_ok(&world.target, &world.task("1.0.0", &v1)).await?;
    let first = world.task_definition().await?;
    apply_ok(&world.target, &world.task("2.0.0", &v2)).await?;
    let second = world.task_definition().await?;
    assert_ne!(first, second);

    let rollback = world.task("1.0.0", &v1);
    let (outcome, lines) = apply_ok(&world.target, &rollback).await?;
    assert_eq!(world.task_definition().await?, first, "{lines:#?}");
    assert_eq!(world.family_revisions().await?, 3, "no new revision");
    assert!(
        lines.join("\n").contains("the service goes back to it"),
        "{lines:#?}"
    );
    let tags = world.tags(&first).await?;
    assert_eq!(tags["stella:deployment"], rollback.deployment_id);
    let service_tags = world.tags(&world.service_arn().await?).await?;
    assert_eq!(service_tags[PREVIOUS_TASK_DEFINITION_TAG], second);
    assert!(outcome.stickers.iter().all(|s| s.verify()));
    assert_eq!(world.drift(&rollback).await, vec![]);
    Ok(())
}

/// A release promoted through a real control plane to an ECS service (keys as
/// environment secrets) by a real agent; the deployment log shows the rollout.
#[tokio::test]
async fn a_release_reaches_an_ecs_service_through_server_and_agent() -> anyhow::Result<()> {
    let world = World::new().await?;
    let server = TestServer::start().await?;
    let _agent = TestAgent::start(&server, "ecs-driver").await?;
    let shown = server
        .wait_for_state("ecs-driver", "connected", Duration::from_secs(10))
        .await?;
    assert!(
        shown["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|k| k == "ecs")),
        "{shown}"
    );
    server
        .post(
            "/api/v1/environments",
            json!({"name": "prod", "allow_unscanned": true}),
        )
        .await?;
    for (name, value) in [
        ("aws_id", stella_tests::moto::ACCESS_KEY_ID),
        ("aws_key", stella_tests::moto::SECRET_ACCESS_KEY),
    ] {
        let (status, body) = server
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/environments/prod/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await?;
        anyhow::ensure!(status < 300, "secret {name}: {status} {body}");
    }
    let mut settings = world.settings();
    settings.insert("poll_interval_ms".into(), "200".into());
    server
        .post(
            "/api/v1/targets",
            json!({"name": world.name, "environment": "prod", "kind": "ecs", "agent": "ecs-driver",
                   "settings": settings, "check": true}),
        )
        .await?;
    // Created after the agent described the service with the keys from the secrets.
    let checked = server
        .post(&format!("/api/v1/targets/{}/check", world.name), json!({}))
        .await?;
    assert_eq!(checked["ok"], true, "{checked}");
    assert!(
        checked["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("service {}", world.service))),
        "{checked}"
    );
    // The control plane resolves a release's images in their registry.
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-test/{}", world.name),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    server
        .post(
            "/api/v1/releases",
            json!({"name": "shop", "version": "1.0.0", "components": {"api": v1}}),
        )
        .await?;
    let promotion = server
        .post(
            "/api/v1/promotions",
            json!({"release": "shop", "version": "1.0.0", "environment": "prod"}),
        )
        .await?;
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .with_context(|| format!("no deployment in {promotion}"))?
        .to_owned();
    let deployment = server
        .wait_deployment(&deployment_id, Duration::from_secs(120))
        .await?;
    let logs = server
        .get(&format!("/api/v1/deployments/{deployment_id}/logs"))
        .await?;
    assert_eq!(
        deployment["state"],
        "succeeded",
        "{deployment}\n{logs}\n{}",
        world.moto.log_text()
    );
    let text = logs.to_string();
    assert!(text.contains("registered arn:aws:ecs"), "{text}");
    assert!(text.contains("rollout COMPLETED"), "{text}");
    assert!(text.contains("stickers written as tags"), "{text}");
    assert!(
        !text.contains(stella_tests::moto::SECRET_ACCESS_KEY),
        "{text}"
    );
    let running = world.task_definition().await?;
    assert_eq!(world.images(&running).await?["api"], v1);
    let tags = world.tags(&world.service_arn().await?).await?;
    assert_eq!(tags["stella:deployment"], deployment_id);
    assert_eq!(tags["stella:environment"], "prod");
    Ok(())
}
