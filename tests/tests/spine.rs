//! The spine, end to end on the real Docker engine and a real registry: a release
//! created by digest, promoted to a Docker target through a real agent, upgraded, failed,
//! rolled back; drift reported and remediated; an agent killed mid-deploy; bad input.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::images::{docker_cli, ContainerCleanup, WebImages, WEB_HEALTH_CMD};
use stella_tests::registry::TestRegistry;
use stella_tests::{wait_until, ChildProcess, TestAgent, TestServer};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn digest_of(reference: &str) -> &str {
    reference.split_once('@').map_or("", |(_, d)| d)
}

/// `(name, state, labels)` of the containers labelled for a target.
async fn containers(target: &str) -> anyhow::Result<Vec<(String, String, Value)>> {
    let ids = docker_cli(
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label=ops.stella.target={target}"),
        ],
        None,
        None,
    )
    .await?;
    let mut found = Vec::new();
    for id in ids.split_whitespace() {
        let inspected = docker_cli(&["inspect", id], None, None).await?;
        let value: Value = serde_json::from_str(&inspected)?;
        let container = &value[0];
        found.push((
            container["Name"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            container["State"]["Status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            container["Config"]["Labels"].clone(),
        ));
    }
    Ok(found)
}

/// The one running container of a target; fails if there are more or none.
async fn the_container(target: &str) -> anyhow::Result<(String, Value)> {
    let all = containers(target).await?;
    anyhow::ensure!(
        all.len() == 1,
        "expected exactly one container for {target}, found {all:?}"
    );
    let (name, state, labels) = all.into_iter().next().expect("one");
    anyhow::ensure!(state == "running", "container {name} is {state}");
    Ok((name, labels))
}

struct Spine {
    server: TestServer,
    agent: TestAgent,
    images: WebImages,
    target: String,
    _registry: TestRegistry,
    _cleanup: ContainerCleanup,
}

impl Spine {
    async fn start(env_drift: &str) -> anyhow::Result<Spine> {
        let registry = TestRegistry::start().await?;
        let images = WebImages::new(
            &registry.host(),
            &unique("stella-test/spine"),
            &registry.docker_config(),
        );
        let server = TestServer::start().await?;
        let agent = TestAgent::start(&server, "docker-host").await?;
        let shown = server
            .wait_for_state("docker-host", "connected", Duration::from_secs(10))
            .await?;
        assert!(
            shown["capabilities"]
                .as_array()
                .is_some_and(|c| c.iter().any(|k| k == "docker")),
            "the agent must drive docker here: {shown}"
        );
        server
            .post(
                "/api/v1/environments",
                json!({"name": "dev", "drift": env_drift, "allow_unscanned": true}),
            )
            .await?;
        let target = unique("web");
        let cleanup = ContainerCleanup::new([target.clone()]);
        server
            .post(
                "/api/v1/targets",
                json!({"name": target, "environment": "dev", "kind": "docker", "agent": "docker-host",
                       "settings": {"health_cmd": WEB_HEALTH_CMD, "health_timeout_seconds": "30"}}),
            )
            .await?;
        Ok(Spine {
            server,
            agent,
            images,
            target,
            _registry: registry,
            _cleanup: cleanup,
        })
    }

    async fn release(&self, version: &str, image: &str) -> anyhow::Result<Value> {
        self.server
            .post(
                "/api/v1/releases",
                json!({"name": "web", "version": version, "components": {"web": image}}),
            )
            .await
    }

    async fn promote(&self, version: &str) -> anyhow::Result<Value> {
        let promotion = self
            .server
            .post(
                "/api/v1/promotions",
                json!({"release": "web", "version": version, "environment": "dev"}),
            )
            .await?;
        assert!(promotion["decision_id"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")));
        let id = promotion["deployment_id"]
            .as_str()
            .expect("deployment id")
            .to_owned();
        self.server.wait_deployment(&id, DEPLOY_TIMEOUT).await
    }
}

#[tokio::test]
async fn a_release_travels_by_digest_upgrades_fails_safely_and_rolls_back() -> anyhow::Result<()> {
    let spine = Spine::start("report").await?;
    let v1 = spine.images.publish("v1", true).await?;
    let v2 = spine.images.publish("v2", true).await?;
    let v3 = spine.images.publish("v3", false).await?;

    // Tag → digest, once, at creation.
    let release = spine
        .release("1", &format!("{}:v1", spine.images.repository()))
        .await?;
    assert_eq!(release["components"][0]["digest"], digest_of(&v1));
    assert_eq!(release["components"][0]["image"], v1);
    assert_eq!(
        release["components"][0]["source"],
        format!("{}:v1", spine.images.repository())
    );

    let deployed = spine.promote("1").await?;
    assert_eq!(deployed["state"], "succeeded", "{deployed}");
    let (name, labels) = the_container(&spine.target).await?;
    assert_eq!(name, format!("{}-web", spine.target));
    for key in [
        "target",
        "environment",
        "release",
        "version",
        "component",
        "digest",
        "deployment",
        "decision",
        "sticker-digest",
    ] {
        assert!(
            labels[format!("ops.stella.{key}")].is_string(),
            "label ops.stella.{key} missing: {labels}"
        );
    }
    assert_eq!(labels["ops.stella.version"], "1");
    assert_eq!(labels["ops.stella.digest"], digest_of(&v1));
    assert_eq!(labels["ops.stella.decision"], deployed["decision_id"]);
    let sticker_path = spine
        .agent
        .data_dir
        .join("stickers")
        .join(&spine.target)
        .join("web.json");
    let sticker: Value = serde_json::from_slice(&std::fs::read(&sticker_path)?)?;
    assert_eq!(
        sticker["sticker_digest"],
        labels["ops.stella.sticker-digest"]
    );
    assert_eq!(sticker["deployment_id"], deployed["id"]);

    // Upgrade.
    spine.release("2", &v2).await?;
    let upgraded = spine.promote("2").await?;
    assert_eq!(upgraded["state"], "succeeded", "{upgraded}");
    let (_, labels) = the_container(&spine.target).await?;
    assert_eq!(labels["ops.stella.digest"], digest_of(&v2));

    // An unhealthy version fails and leaves v2 serving.
    spine.release("3", &v3).await?;
    let failed = spine.promote("3").await?;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("health")),
        "{failed}"
    );
    let (_, labels) = the_container(&spine.target).await?;
    assert_eq!(labels["ops.stella.version"], "2");

    // Rollback: to the version deployed successfully before the current one (1).
    let rollback = spine
        .server
        .post("/api/v1/environments/dev/rollback", json!({}))
        .await?;
    assert_eq!(rollback["kind"], "rollback");
    assert_eq!(rollback["version"], "1");
    let rolled = spine
        .server
        .wait_deployment(rollback["id"].as_str().expect("id"), DEPLOY_TIMEOUT)
        .await?;
    assert_eq!(rolled["state"], "succeeded", "{rolled}");
    assert_ne!(
        rolled["decision_id"], deployed["decision_id"],
        "a rollback has its own decision"
    );
    let (_, labels) = the_container(&spine.target).await?;
    assert_eq!(labels["ops.stella.digest"], digest_of(&v1));
    assert_eq!(labels["ops.stella.deployment"], rolled["id"]);

    // And forward again by name.
    let forward = spine
        .server
        .post(
            "/api/v1/environments/dev/rollback",
            json!({"to_version": "2"}),
        )
        .await?;
    let forward = spine
        .server
        .wait_deployment(forward["id"].as_str().expect("id"), DEPLOY_TIMEOUT)
        .await?;
    assert_eq!(forward["state"], "succeeded");
    let (_, labels) = the_container(&spine.target).await?;
    assert_eq!(labels["ops.stella.version"], "2");

    let env = spine.server.get("/api/v1/environments/dev").await?;
    assert_eq!(env["current"], "web@2");

    // A release with the digest that already runs: the container is replaced, so that its
    // labels name the new version, deployment and decision.
    spine.release("2.1", &v2).await?;
    let same = spine.promote("2.1").await?;
    assert_eq!(same["state"], "succeeded", "{same}");
    let (_, labels) = the_container(&spine.target).await?;
    assert_eq!(labels["ops.stella.version"], "2.1");
    assert_eq!(labels["ops.stella.deployment"], same["id"]);
    assert_eq!(labels["ops.stella.decision"], same["decision_id"]);
    let listed = docker_cli(
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=ops.stella.target={}", spine.target),
            "--filter",
            "label=ops.stella.version=2.1",
        ],
        None,
        None,
    )
    .await?;
    assert_eq!(listed.split_whitespace().count(), 1, "{listed}");
    let logs = spine
        .server
        .get(&format!(
            "/api/v1/deployments/{}/logs",
            forward["id"].as_str().expect("id")
        ))
        .await?;
    assert!(logs.as_array().is_some_and(|l| l.len() >= 2), "{logs}");
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_stores_nothing() -> anyhow::Result<()> {
    let spine = Spine::start("report").await?;
    let v1 = spine.images.publish("v1", true).await?;
    let v2 = spine.images.publish("v2", true).await?;
    // An agent that drives no kind at all: no target can be given to it.
    let _bare = TestAgent::start_driving(
        &spine.server,
        "no-kinds",
        stella_agent_core::TargetRegistry::new(),
    )
    .await?;
    spine
        .server
        .wait_for_state("no-kinds", "connected", Duration::from_secs(10))
        .await?;
    let admin = Some(spine.server.admin_token.as_str());
    let post = |path: &'static str, body: Value| {
        let server = &spine.server;
        async move { server.request(Method::POST, path, admin, Some(body)).await }
    };

    // A digest the registry does not have.
    let (status, body) = post(
        "/api/v1/releases",
        json!({"name": "web", "version": "9", "components": {"web": spine.images.missing()}}),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "image_unresolved");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{body}"
    );
    // A tag it does not have.
    let (status, _) = post("/api/v1/releases", json!({"name": "web", "version": "9", "components": {"web": format!("{}:nope", spine.images.repository())}})).await?;
    assert_eq!(status, 400);
    // A malformed reference.
    let (status, body) = post(
        "/api/v1/releases",
        json!({"name": "web", "version": "9", "components": {"web": "Not A/Ref::"}}),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("invalid image reference")));
    assert_eq!(spine.server.get("/api/v1/releases").await?, json!([]));

    // Unknown environment, unknown kind, unknown setting, unknown agent.
    for (body, code) in [
        (
            json!({"name": "t1", "environment": "nowhere", "kind": "docker", "agent": "docker-host"}),
            "unknown_environment",
        ),
        (
            json!({"name": "t1", "environment": "dev", "kind": "kubernetes", "agent": "docker-host"}),
            "invalid_argument",
        ),
        (
            json!({"name": "t1", "environment": "dev", "kind": "docker", "agent": "docker-host", "settings": {"colour": "blue"}}),
            "invalid_argument",
        ),
        (
            json!({"name": "t1", "environment": "dev", "kind": "docker", "agent": "ghost"}),
            "unknown_agent",
        ),
        (
            json!({"name": "t1", "environment": "dev", "kind": "ecs", "agent": "no-kinds",
                   "settings": {"region": "eu-central-1", "cluster": "c", "service": "s"}}),
            "agent_cannot_drive_kind",
        ),
    ] {
        let (status, reply) = post("/api/v1/targets", body.clone()).await?;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    let targets = spine.server.get("/api/v1/targets").await?;
    assert_eq!(targets.as_array().map(Vec::len), Some(1), "{targets}");

    // Releases are immutable.
    spine.release("1", &v1).await?;
    let (status, again) = post(
        "/api/v1/releases",
        json!({"name": "web", "version": "1", "components": {"web": v1}}),
    )
    .await?;
    assert_eq!(
        status, 200,
        "the same digests answer the existing release: {again}"
    );
    let (status, body) = post(
        "/api/v1/releases",
        json!({"name": "web", "version": "1", "components": {"web": v2}}),
    )
    .await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "release_immutable");
    let kept = spine.server.get("/api/v1/releases/web/1").await?;
    assert_eq!(kept["components"][0]["image"], v1);

    // Promotions of unknown things.
    let (status, _) = post(
        "/api/v1/promotions",
        json!({"release": "web", "version": "7", "environment": "dev"}),
    )
    .await?;
    assert_eq!(status, 404);
    let (status, _) = post(
        "/api/v1/promotions",
        json!({"release": "web", "version": "1", "environment": "prod"}),
    )
    .await?;
    assert_eq!(status, 404);
    assert_eq!(spine.server.get("/api/v1/deployments").await?, json!([]));
    Ok(())
}

async fn wait_drift(server: &TestServer, kind: &str) -> anyhow::Result<Value> {
    wait_until(
        &format!("drift `{kind}` is reported"),
        Duration::from_secs(30),
        || async {
            let drift = server.get("/api/v1/drift").await.ok()?;
            drift
                .as_array()?
                .iter()
                .find(|d| d["kind"] == kind)
                .cloned()
        },
    )
    .await
}

async fn wait_no_drift(server: &TestServer) -> anyhow::Result<()> {
    wait_until("drift is resolved", Duration::from_secs(30), || async {
        let drift = server.get("/api/v1/drift").await.ok()?;
        drift.as_array()?.is_empty().then_some(())
    })
    .await
}

#[tokio::test]
async fn drift_is_reported_for_each_kind_and_remediated() -> anyhow::Result<()> {
    let spine = Spine::start("report").await?;
    let v1 = spine.images.publish("v1", true).await?;
    let v2 = spine.images.publish("v2", true).await?;
    spine.release("1", &v1).await?;
    assert_eq!(spine.promote("1").await?["state"], "succeeded");
    let (name, _) = the_container(&spine.target).await?;
    let server = &spine.server;

    // missing
    docker_cli(&["stop", "-t", "1", &name], None, None).await?;
    let missing = wait_drift(server, "missing").await?;
    assert_eq!(missing["target"], spine.target);
    assert_eq!(missing["component"], "web");
    docker_cli(&["start", &name], None, None).await?;
    wait_no_drift(server).await?;

    // sticker_tampered
    let sticker_path = spine
        .agent
        .data_dir
        .join("stickers")
        .join(&spine.target)
        .join("web.json");
    let mut sticker: Value = serde_json::from_slice(&std::fs::read(&sticker_path)?)?;
    let original = std::fs::read(&sticker_path)?;
    sticker["version"] = json!("999");
    std::fs::write(&sticker_path, serde_json::to_vec(&sticker)?)?;
    wait_drift(server, "sticker_tampered").await?;
    std::fs::write(&sticker_path, original)?;
    wait_no_drift(server).await?;

    // unexpected: something else runs under the target's labels.
    docker_cli(&["pull", &v2], None, None).await?;
    let intruder = format!("{}-intruder", spine.target);
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &intruder,
            "--label",
            &format!("ops.stella.target={}", spine.target),
            "--label",
            "ops.stella.component=cron",
            &v2,
        ],
        None,
        None,
    )
    .await?;
    wait_drift(server, "unexpected").await?;
    docker_cli(&["rm", "-f", &intruder], None, None).await?;
    wait_no_drift(server).await?;

    // image_changed: the container removed (missing), then made again by hand with
    // another image. `missing` ends while `image_changed` lasts: it is resolved alone.
    let labels = docker_cli(
        &["inspect", "--format", "{{json .Config.Labels}}", &name],
        None,
        None,
    )
    .await?;
    let labels: serde_json::Map<String, Value> = serde_json::from_str(labels.trim())?;
    docker_cli(&["rm", "-f", &name], None, None).await?;
    wait_drift(server, "missing").await?;
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    for (key, value) in &labels {
        args.push("--label".into());
        args.push(format!("{key}={}", value.as_str().unwrap_or_default()));
    }
    args.push(v2.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_cli(&args, None, None).await?;
    wait_drift(server, "image_changed").await?;
    let open = wait_until(
        "missing is resolved while image_changed stays open",
        Duration::from_secs(30),
        || async {
            let drift = server.get("/api/v1/drift").await.ok()?;
            let kinds: Vec<Value> = drift
                .as_array()?
                .iter()
                .map(|d| d["kind"].clone())
                .collect();
            (kinds == [json!("image_changed")]).then_some(drift)
        },
    )
    .await?;
    assert_eq!(open[0]["component"], "web");
    let all = server.get("/api/v1/drift?all=true").await?;
    assert!(
        all.as_array().is_some_and(|d| d
            .iter()
            .any(|f| f["kind"] == "missing" && f["resolved_at"].is_string())),
        "{all}"
    );

    // remediate: the promoted digest is redeployed.
    server
        .request(
            Method::PATCH,
            "/api/v1/environments/dev",
            Some(&server.admin_token),
            Some(json!({"drift": "remediate"})),
        )
        .await?;
    let remediation = wait_until(
        "a remediation deployment succeeds",
        Duration::from_secs(60),
        || async {
            let deployments = server
                .get("/api/v1/deployments?environment=dev")
                .await
                .ok()?;
            deployments
                .as_array()?
                .iter()
                .find(|d| d["kind"] == "remediation" && d["state"] == "succeeded")
                .cloned()
        },
    )
    .await?;
    assert_eq!(remediation["created_by"], "stella:drift");
    assert_eq!(remediation["version"], "1");
    wait_until(
        "the promoted digest runs again",
        Duration::from_secs(30),
        || async {
            let (_, labels) = the_container(&spine.target).await.ok()?;
            (labels["ops.stella.digest"] == digest_of(&v1)).then_some(())
        },
    )
    .await?;
    wait_no_drift(server).await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_killed_mid_deploy_finishes_after_it_reconnects() -> anyhow::Result<()> {
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &unique("stella-test/kill"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let mut server = TestServer::start().await?;
    let token = server.join_token().await?;
    let data_dir = server.dir.path().join("agent-killed");
    let api_url = server.api_url();
    let args = |token: Option<&str>| {
        let mut args = vec![
            "agent".to_owned(),
            "run".to_owned(),
            "--server".to_owned(),
            api_url.clone(),
            "--data-dir".to_owned(),
            data_dir.to_string_lossy().into_owned(),
            "--name".to_owned(),
            "fragile".to_owned(),
        ];
        if let Some(token) = token {
            args.extend(["--join-token".to_owned(), token.to_owned()]);
        }
        args
    };
    let first_args = args(Some(&token));
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut agent = ChildProcess::spawn(&first_args, &[], server.dir.path().join("agent-1.log"))?;
    server
        .wait_for_state("fragile", "connected", Duration::from_secs(20))
        .await?;
    server
        .post(
            "/api/v1/environments",
            json!({"name": "dev", "allow_unscanned": true}),
        )
        .await?;
    let target = unique("kill");
    let _cleanup = ContainerCleanup::new([target.clone()]);
    server
        .post(
            "/api/v1/targets",
            json!({"name": target, "environment": "dev", "kind": "docker", "agent": "fragile",
                   "settings": {"health_cmd": WEB_HEALTH_CMD}}),
        )
        .await?;
    server
        .post(
            "/api/v1/releases",
            json!({"name": "web", "version": "1", "components": {"web": v1}}),
        )
        .await?;
    let promotion = server
        .post(
            "/api/v1/promotions",
            json!({"release": "web", "version": "1", "environment": "dev"}),
        )
        .await?;
    let id = promotion["deployment_id"].as_str().expect("id").to_owned();

    // Kill the agent as soon as it has the task, mid-deploy.
    wait_until(
        "the task reaches the agent",
        Duration::from_secs(20),
        || async {
            let logs = server
                .get(&format!("/api/v1/deployments/{id}/logs"))
                .await
                .ok()?;
            logs.as_array()?
                .iter()
                .any(|l| {
                    l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("assigned"))
                })
                .then_some(())
        },
    )
    .await?;
    agent.kill().await?;

    // The server restarts too, mid-deploy: nothing is lost.
    server.restart().await?;
    let second_args = args(None);
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let _agent = ChildProcess::spawn(&second_args, &[], server.dir.path().join("agent-2.log"))?;
    let finished = server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let all = containers(&target).await?;
    assert_eq!(all.len(), 1, "exactly one container afterwards: {all:?}");
    assert_eq!(all[0].1, "running");
    let tasks = finished["tasks"].as_array().cloned().unwrap_or_default();
    assert!(
        tasks[0]["epoch"].as_i64().is_some_and(|e| e >= 2),
        "re-assigned under a new epoch: {tasks:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_deployment_made_on_one_replica_reaches_an_agent_connected_to_another(
) -> anyhow::Result<()> {
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &unique("stella-test/replica"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let url = stella_tests::postgres::fresh_database_url().await?;
    let first = TestServer::start_with(|config| config.database_url = Some(url)).await?;
    let second = first.start_replica().await?;
    assert_eq!(
        first.running().app.pki.ca.fingerprint(),
        second.running().app.pki.ca.fingerprint()
    );
    // The agent joins through the second replica, with a token made on the first.
    let token = first.join_token().await?;
    let _agent = TestAgent::start_with(
        &second,
        second.dir.path().join("agent"),
        "roamer",
        Some(token),
    );
    let shown = second
        .wait_for_state("roamer", "connected", Duration::from_secs(20))
        .await?;
    let agent_id = shown["id"].as_str().expect("id").to_owned();
    assert!(second.running().app.sessions.is_open(&agent_id));
    assert!(!first.running().app.sessions.is_open(&agent_id));

    first
        .post(
            "/api/v1/environments",
            json!({"name": "dev", "allow_unscanned": true}),
        )
        .await?;
    let target = unique("replica");
    let _cleanup = ContainerCleanup::new([target.clone()]);
    first
        .post(
            "/api/v1/targets",
            json!({"name": target, "environment": "dev", "kind": "docker", "agent": "roamer",
                   "settings": {"health_cmd": WEB_HEALTH_CMD}}),
        )
        .await?;
    first
        .post(
            "/api/v1/releases",
            json!({"name": "web", "version": "1", "components": {"web": v1}}),
        )
        .await?;
    let promotion = first
        .post(
            "/api/v1/promotions",
            json!({"release": "web", "version": "1", "environment": "dev"}),
        )
        .await?;
    let id = promotion["deployment_id"].as_str().expect("id");
    let finished = first.wait_deployment(id, DEPLOY_TIMEOUT).await?;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let (_, labels) = the_container(&target).await?;
    assert_eq!(labels["ops.stella.deployment"], id);
    Ok(())
}
