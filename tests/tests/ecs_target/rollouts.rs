//! Against the rollout double: deployments that progress and complete, fail, fail with
//! the circuit breaker's rollback, and outlast the deploy timeout; and boto3 against
//! the double, so it is not only the mirror of the SDK.

use std::process::Stdio;

use stella_target_ecs::EcsTarget;
use stella_tests::doubles::ecs::{EcsDouble, RolloutScript};
use stella_tests::init_tracing;

use super::{apply_ok, apply_on, pinned, settings, suffix, task};

const BASE_IMAGE: &str = "r.example/shop/api:1";

struct World {
    double: EcsDouble,
    base: String,
    name: String,
    target: EcsTarget,
}

impl World {
    async fn new(script: RolloutScript) -> anyhow::Result<World> {
        init_tracing();
        let double = EcsDouble::start().await?;
        let base = double.register(
            "shop",
            &[("api", BASE_IMAGE), ("log-router", "fluent-bit:2")],
        );
        double.create_service("prod", "shop", &base, 2);
        double.script(script);
        Ok(World {
            double,
            base,
            name: format!("ecs-{}", suffix()),
            target: EcsTarget::new(),
        })
    }

    fn task(&self, version: &str, image: &str) -> stella_agent_core::DeployTask {
        task(
            &self.name,
            settings(&self.double.url, "prod", "shop"),
            version,
            &[("api", image)],
        )
    }
}

#[tokio::test]
async fn a_rollout_is_followed_through_its_progress_to_completion() -> anyhow::Result<()> {
    let world = World::new(RolloutScript::Complete { polls: 4 }).await?;
    let v1 = pinned("r.example/shop/api", 'a');
    let (outcome, lines) = apply_ok(&world.target, &world.task("1.0.0", &v1)).await?;
    let text = lines.join("\n");
    assert!(text.contains("rollout IN_PROGRESS: 0/2 running"), "{text}");
    assert!(text.contains("rollout IN_PROGRESS: 1/2 running"), "{text}");
    assert!(text.contains("rollout COMPLETED: 2/2 running"), "{text}");
    let running = world
        .double
        .service_task_definition("shop")
        .unwrap_or_default();
    assert!(running.ends_with("shop:2"), "{running}");
    assert_eq!(world.double.images(&running)["api"], v1);
    let tags = world.double.tags(&world.double.service_arn("shop"));
    assert_eq!(
        tags["stella:sticker-digest:api"],
        outcome.stickers[0].sticker_digest
    );
    assert!(world.double.calls("DescribeServices") >= 4);
    Ok(())
}

#[tokio::test]
async fn a_failed_rollout_fails_the_deployment_and_leaves_the_old_stickers() -> anyhow::Result<()> {
    let world = World::new(RolloutScript::Complete { polls: 1 }).await?;
    let v1 = pinned("r.example/shop/api", 'a');
    let (first, _) = apply_ok(&world.target, &world.task("1.0.0", &v1)).await?;
    world.double.script(RolloutScript::Fail { polls: 2 });
    let v2 = pinned("r.example/shop/api", 'b');
    let (result, lines) = apply_on(&world.target, &world.task("2.0.0", &v2)).await;
    let error = result.expect_err("the rollout failed");
    assert!(
        error.contains("FAILED: ECS deployment circuit breaker"),
        "{error}"
    );
    assert!(!error.contains("rolled the service back"), "{error}");
    assert!(
        lines.join("\n").contains("rollout IN_PROGRESS"),
        "{lines:#?}"
    );
    let tags = world.double.tags(&world.double.service_arn("shop"));
    assert_eq!(
        tags["stella:sticker-digest:api"],
        first.stickers[0].sticker_digest
    );
    assert_eq!(tags["stella:version"], "1.0.0");
    Ok(())
}

#[tokio::test]
async fn a_circuit_breaker_rollback_is_reported_with_the_revision_it_went_back_to(
) -> anyhow::Result<()> {
    let world = World::new(RolloutScript::FailAndRollBack { polls: 2 }).await?;
    let v1 = pinned("r.example/shop/api", 'a');
    let (result, lines) = apply_on(&world.target, &world.task("1.0.0", &v1)).await;
    let error = result.expect_err("rolled back");
    assert!(
        error.contains(&format!(
            "the deployment circuit breaker rolled the service back to {}",
            world.base
        )),
        "{error}\n{lines:#?}"
    );
    assert_eq!(
        world.double.service_task_definition("shop").as_deref(),
        Some(world.base.as_str())
    );
    let tags = world.double.tags(&world.double.service_arn("shop"));
    assert!(!tags.contains_key("stella:version"), "{tags:?}");
    Ok(())
}

#[tokio::test]
async fn a_rollout_that_outlasts_the_deploy_timeout_fails() -> anyhow::Result<()> {
    let world = World::new(RolloutScript::Hang).await?;
    let mut task = world.task("1.0.0", &pinned("r.example/shop/api", 'a'));
    task.target
        .settings
        .insert("deploy_timeout_seconds".into(), "1".into());
    let started = std::time::Instant::now();
    let (result, _) = apply_on(&world.target, &task).await;
    let error = result.expect_err("timed out");
    assert!(error.contains("did not complete within 1 s"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    Ok(())
}

/// boto3 (botocore's own model of the ECS API) against the double: the calls Stella
/// makes parse, and a rollout completes.
#[tokio::test]
async fn the_double_answers_boto3() -> anyhow::Result<()> {
    let world = World::new(RolloutScript::Complete { polls: 2 }).await?;
    let script = r#"
import sys, boto3
ecs = boto3.client("ecs", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
base = ecs.describe_services(cluster="prod", services=["shop"], include=["TAGS"])["services"][0]
td = ecs.describe_task_definition(taskDefinition=base["taskDefinition"], include=["TAGS"])["taskDefinition"]
new = ecs.register_task_definition(family=td["family"], containerDefinitions=td["containerDefinitions"],
                                   tags=[{"key": "stella:version", "value": "9"}])["taskDefinition"]["taskDefinitionArn"]
ecs.update_service(cluster="prod", service="shop", taskDefinition=new)
ecs.tag_resource(resourceArn=base["serviceArn"], tags=[{"key": "k", "value": "v"}])
ecs.untag_resource(resourceArn=base["serviceArn"], tagKeys=["k"])
assert ecs.list_tags_for_resource(resourceArn=new)["tags"] == [{"key": "stella:version", "value": "9"}]
for _ in range(5):
    d = [d for d in ecs.describe_services(cluster="prod", services=["shop"])["services"][0]["deployments"] if d["taskDefinition"] == new][0]
    if d["rolloutState"] == "COMPLETED":
        print("COMPLETED", new)
        break
"#;
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&world.double.url)
        .stdin(Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("COMPLETED"),
        "boto3 failed (pip install boto3: it comes with moto[server]): {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `write_sticker` replaces one component's sticker tags on the service; the other
/// components' stickers stay when they share the fields held once for all (the same
/// deployment, agent and time) and are dropped otherwise, never left unverifiable.
#[tokio::test]
async fn a_sticker_written_alone_keeps_the_others_only_when_they_still_verify() -> anyhow::Result<()>
{
    use stella_agent_core::{Sticker, Target};
    let world = World::new(RolloutScript::Complete { polls: 1 }).await?;
    let api = pinned("r.example/shop/api", 'a');
    let router = pinned("r.example/shop/router", 'b');
    let mut task = world.task("1.0.0", &api);
    task.components.push(stella_agent_core::ComponentSpec {
        name: "log-router".into(),
        image: router.clone(),
    });
    let (outcome, _) = apply_ok(&world.target, &task).await?;
    assert_eq!(outcome.stickers.len(), 2);
    world
        .target
        .write_sticker(&task.target, &outcome.stickers[0])
        .await?;
    let other = world
        .target
        .read_sticker(&task.target, "log-router")
        .await?;
    assert_eq!(other.as_ref(), Some(&outcome.stickers[1]));

    let mut fields = outcome.stickers[0].fields();
    fields.agent_id = "agent-2".into();
    let rewritten = Sticker::seal(fields);
    world.target.write_sticker(&task.target, &rewritten).await?;
    let read = world.target.read_sticker(&task.target, "api").await?;
    assert_eq!(read.as_ref(), Some(&rewritten));
    let other = world
        .target
        .read_sticker(&task.target, "log-router")
        .await?;
    assert_eq!(other, None);
    Ok(())
}
