//! Releases through a real control plane and a real agent to a job on the double:
//! settings refused by `stella target create`, a deploy with its progress in the
//! deployment log, a failing version reverted, `stella rollback`, drift reported and
//! remediated.

use super::*;
use anyhow::Context;
use reqwest::Method;
use stella_tests::images::WebImages;
use stella_tests::registry::TestRegistry;
use stella_tests::{stella, wait_until, TestAgent, TestServer};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);

/// One test's world: a registry with the web images, the double (with an ACL token),
/// a server and an agent, an environment `prod` holding the token as a secret.
struct Estate {
    nomad: NomadDouble,
    server: TestServer,
    _agent: TestAgent,
    images: WebImages,
    _registry: TestRegistry,
    job: String,
}

impl Estate {
    async fn start(drift: &str) -> anyhow::Result<Estate> {
        init_tracing();
        let registry = TestRegistry::start().await?;
        let job = format!("shop-{}", suffix());
        let images = WebImages::new(
            &registry.host(),
            &format!("stella-test/{job}"),
            &registry.docker_config(),
        );
        let token = format!("nomad-token-{}", suffix());
        let nomad = NomadDouble::start_with(Some(&token)).await?;
        let mut spec = example_job(&job, &[("web", 2, &["web"])]);
        spec["ID"] = json!(job);
        nomad.register(spec)?;
        let server = TestServer::start().await?;
        let agent = TestAgent::start(&server, "nomad-driver").await?;
        let shown = server
            .wait_for_state("nomad-driver", "connected", Duration::from_secs(10))
            .await?;
        anyhow::ensure!(
            shown["capabilities"]
                .as_array()
                .is_some_and(|c| c.iter().any(|k| k == "nomad")),
            "the agent does not offer nomad: {shown}"
        );
        server
            .post(
                "/api/v1/environments",
                json!({"name": "prod", "drift": drift, "allow_unscanned": true}),
            )
            .await?;
        let (status, body) = server
            .call(
                Method::PUT,
                "/api/v1/environments/prod/secrets/nomad_token",
                Some(json!({"value": token})),
            )
            .await?;
        anyhow::ensure!(status < 300, "secret: {status} {body}");
        Ok(Estate {
            nomad,
            server,
            _agent: agent,
            images,
            _registry: registry,
            job,
        })
    }

    fn settings(&self) -> Value {
        json!({"address": self.nomad.address, "job": self.job,
               "token_secret": "${secret.nomad_token}", "deploy_timeout_seconds": "30"})
    }

    async fn create_target(&self) -> anyhow::Result<()> {
        self.server
            .post(
                "/api/v1/targets",
                json!({"name": "nomad-prod", "environment": "prod", "kind": "nomad",
                       "agent": "nomad-driver", "settings": self.settings(), "check": true}),
            )
            .await?;
        Ok(())
    }

    /// Creates release `shop@version` with `image` and promotes it to prod; returns the
    /// finished deployment and its log as text.
    async fn ship(&self, version: &str, image: &str) -> anyhow::Result<(Value, String)> {
        self.server
            .post(
                "/api/v1/releases",
                json!({"name": "shop", "version": version, "components": {"web": image}}),
            )
            .await?;
        let promotion = self
            .server
            .post(
                "/api/v1/promotions",
                json!({"release": "shop", "version": version, "environment": "prod"}),
            )
            .await?;
        let id = promotion["deployment_id"]
            .as_str()
            .with_context(|| format!("no deployment in {promotion}"))?
            .to_owned();
        self.finished(&id).await
    }

    async fn finished(&self, id: &str) -> anyhow::Result<(Value, String)> {
        let deployment = self.server.wait_deployment(id, DEPLOY_TIMEOUT).await?;
        let logs = self
            .server
            .get(&format!("/api/v1/deployments/{id}/logs"))
            .await?;
        Ok((deployment, logs.to_string()))
    }

    fn running_image(&self) -> String {
        self.nomad
            .job(&self.job)
            .map(|job| task_image(&job, 0, 0))
            .unwrap_or_default()
    }

    fn sticker_deployment(&self) -> String {
        self.nomad
            .job(&self.job)
            .and_then(|job| {
                let sticker = job["Meta"]["stella.sticker.web"].as_str()?.to_owned();
                let sticker: Value = serde_json::from_str(&sticker).ok()?;
                sticker["deployment_id"].as_str().map(str::to_owned)
            })
            .unwrap_or_default()
    }

    fn cli_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STELLA_SERVER", self.server.api_url()),
            ("STELLA_TOKEN", self.server.admin_token.clone()),
        ]
    }

    async fn stella(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let env = self.cli_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        stella(args, &env).await
    }
}

#[tokio::test]
async fn releases_reach_a_nomad_job_fail_with_nomads_reason_and_roll_back() -> anyhow::Result<()> {
    let estate = Estate::start("report").await?;
    let v1 = estate.images.publish("v1", true).await?;
    let v2 = estate.images.publish("v2", true).await?;
    let v3 = estate.images.publish("v3", true).await?;
    let v2_digest = v2
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    estate.nomad.script(
        &v2_digest,
        Outcome::Unhealthy {
            after: Duration::from_millis(200),
        },
    );

    // `stella target create` refuses settings a nomad target cannot use.
    let address = format!("address={}", estate.nomad.address);
    for (sets, expected) in [
        (vec!["job=shop"], "a nomad target needs address"),
        (vec![address.as_str()], "a nomad target needs job"),
        (
            vec![address.as_str(), "job=shop", "token_secret=s.plain-text"],
            "${secret.NAME}",
        ),
        (
            vec![address.as_str(), "job=shop", "image=web:1"],
            "unknown setting `image` for a nomad target",
        ),
        (
            vec!["address=nomad:4646", "job=shop"],
            "http(s)://host:port",
        ),
    ] {
        let mut args = vec![
            "target",
            "create",
            "refused",
            "--env",
            "prod",
            "--agent",
            "nomad-driver",
            "--kind",
            "nomad",
        ];
        for set in &sets {
            args.push("--set");
            args.push(set);
        }
        let (code, stdout, stderr) = estate.stella(&args).await?;
        assert_ne!(code, 0, "{sets:?} accepted: {stdout}");
        assert!(stderr.contains(expected), "{sets:?}: {stderr}");
    }
    // Created after the agent read the job with the token from the secret.
    estate.create_target().await?;
    let (code, stdout, stderr) = estate.stella(&["target", "check", "nomad-prod"]).await?;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("ok: ") && stdout.contains(&format!("job {:?} version", estate.job)),
        "{stdout}"
    );

    // A release: the digest pinned, the sticker in Meta, the rollout in the log.
    let (first, logs) = estate.ship("1.0.0", &v1).await?;
    assert_eq!(first["state"], "succeeded", "{first}\n{logs}");
    assert!(
        logs.contains(&format!("registered job {} version 1 (was 0)", estate.job)),
        "{logs}"
    );
    assert!(
        logs.contains("successful; web: 2 placed, 2 healthy, 0 unhealthy of 2"),
        "{logs}"
    );
    assert_eq!(estate.running_image(), v1);
    assert_eq!(
        estate.sticker_deployment(),
        first["id"].as_str().unwrap_or_default()
    );

    // An unhealthy version: failed with Nomad's reason, reverted to the version before.
    let (failed, logs) = estate.ship("2.0.0", &v2).await?;
    assert_eq!(failed["state"], "failed", "{failed}\n{logs}");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Failed due to unhealthy allocations"),
        "{failed}"
    );
    assert!(
        logs.contains("web: 2 placed, 0 healthy, 2 unhealthy of 2"),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("reverted job {} to version 1", estate.job)),
        "{logs}"
    );
    assert_eq!(estate.running_image(), v1);
    assert_eq!(
        estate.sticker_deployment(),
        first["id"].as_str().unwrap_or_default()
    );

    let (third, logs) = estate.ship("3.0.0", &v3).await?;
    assert_eq!(third["state"], "succeeded", "{third}\n{logs}");
    assert_eq!(estate.running_image(), v3);

    // `stella rollback`: to the version deployed successfully before the current one.
    let (code, stdout, stderr) = estate.stella(&["rollback", "--env", "prod"]).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("rolling back prod to shop@1.0.0"),
        "{stderr}"
    );
    let (rolled, logs) = estate.finished(stdout.trim()).await?;
    assert_eq!(rolled["state"], "succeeded", "{rolled}\n{logs}");
    assert_eq!(rolled["kind"], "rollback");
    assert_eq!(estate.running_image(), v1);
    assert_eq!(
        estate.sticker_deployment(),
        rolled["id"].as_str().unwrap_or_default()
    );
    // Every request carried the token; none was refused.
    let requests = estate.nomad.requests();
    assert!(requests.iter().all(|r| r.token.is_some()), "{requests:?}");
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
async fn drift_on_the_job_is_reported_and_remediated() -> anyhow::Result<()> {
    let estate = Estate::start("report").await?;
    let v1 = estate.images.publish("v1", true).await?;
    estate.create_target().await?;
    let (deployed, logs) = estate.ship("1.0.0", &v1).await?;
    assert_eq!(deployed["state"], "succeeded", "{deployed}\n{logs}");
    let server = &estate.server;

    // The Meta sticker edited by hand: reported; put back: resolved.
    let original = estate.nomad.job(&estate.job).context("job")?;
    estate.nomad.edit(&estate.job, |job| {
        let sticker = job["Meta"]["stella.sticker.web"]
            .as_str()
            .unwrap_or_default();
        job["Meta"]["stella.sticker.web"] = json!(sticker.replace("\"1.0.0\"", "\"6.6.6\""));
    })?;
    let tampered = wait_drift(server, "sticker_tampered").await?;
    assert_eq!(tampered["target"], "nomad-prod");
    estate.nomad.register(original)?;
    wait_no_drift(server).await?;

    // Stopped: missing.
    estate.nomad.stop(&estate.job, false)?;
    let missing = wait_drift(server, "missing").await?;
    assert!(
        missing["detail"]
            .as_str()
            .is_some_and(|d| d.contains("stopped")),
        "{missing}"
    );

    // Remediation: the promoted digest registered again, the job running.
    server
        .request(
            Method::PATCH,
            "/api/v1/environments/prod",
            Some(&server.admin_token),
            Some(json!({"drift": "remediate"})),
        )
        .await?;
    let remediation = wait_until(
        "a remediation deployment succeeds",
        Duration::from_secs(60),
        || async {
            let deployments = server
                .get("/api/v1/deployments?environment=prod")
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
    assert_eq!(remediation["version"], "1.0.0");
    let job = estate.nomad.job(&estate.job).context("job")?;
    assert_eq!(job["Stop"], false);
    assert_eq!(task_image(&job, 0, 0), v1);
    wait_no_drift(server).await?;

    // Another image registered by hand is remediated too.
    estate.nomad.edit(&estate.job, |job| {
        job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = json!("registry.example/web:latest");
    })?;
    wait_until(
        "the promoted digest runs again",
        Duration::from_secs(60),
        || async { (estate.running_image() == v1).then_some(()) },
    )
    .await?;
    wait_no_drift(server).await?;
    Ok(())
}
