//! Releases promoted through a real control plane to a `winrm` target driven by a real
//! agent: deploys with the script's output in the deployment log, an upgrade, a failing
//! script, a rollback, drift from an edited sticker file, and its remediation.

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::images::WebImages;
use stella_tests::registry::TestRegistry;
use stella_tests::{wait_until, TestAgent, TestServer};

use super::*;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

async fn promote(server: &TestServer, version: &str) -> anyhow::Result<(Value, String)> {
    let promotion = server
        .post(
            "/api/v1/promotions",
            json!({"release": "shop", "version": version, "environment": "edge"}),
        )
        .await?;
    let id = promotion["deployment_id"]
        .as_str()
        .with_context(|| format!("no deployment in {promotion}"))?
        .to_owned();
    finish(server, &id).await
}

/// The finished deployment and its log as text.
async fn finish(server: &TestServer, id: &str) -> anyhow::Result<(Value, String)> {
    let deployment = server.wait_deployment(id, DEPLOY_TIMEOUT).await?;
    let logs = server
        .get(&format!("/api/v1/deployments/{id}/logs"))
        .await?;
    Ok((deployment, logs.to_string()))
}

#[tokio::test]
async fn releases_reach_a_winrm_target_through_server_and_agent() -> anyhow::Result<()> {
    let host = Host::start("winrm-e2e").await?;
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-test/{}", host.name),
        &registry.docker_config(),
    );
    let server = TestServer::start().await?;
    let _agent = TestAgent::start(&server, "win-driver").await?;
    let shown = server
        .wait_for_state("win-driver", "connected", Duration::from_secs(10))
        .await?;
    assert!(
        shown["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|k| k == "winrm")),
        "{shown}"
    );
    server
        .post(
            "/api/v1/environments",
            json!({"name": "edge", "allow_unscanned": true}),
        )
        .await?;
    let (status, _) = server
        .call(
            Method::PUT,
            "/api/v1/environments/edge/secrets/win_password",
            Some(json!({"value": host.double.password})),
        )
        .await?;
    assert!(status < 300, "PUT secret answered {status}");
    let work = host.work().display().to_string();
    let script = format!(
        "cd {work} && echo \"$STELLA_VERSION $STELLA_DIGEST_WEB\" >> versions && echo \"deploying $STELLA_VERSION\" \
         && if [ \"$STELLA_VERSION\" = 3.0.0 ]; then echo 'cannot start the service' >&2; exit 7; fi"
    );
    let mut settings = host.settings("ntlm", &script);
    settings.insert("components".into(), "web".into());
    // A literal password is refused by the control plane.
    let mut literal = settings.clone();
    literal.insert("password_secret".into(), "hunter2".into());
    let (status, refused) = server
        .call(
            Method::POST,
            "/api/v1/targets",
            Some(
                json!({"name": host.name, "environment": "edge", "kind": "winrm",
                        "agent": "win-driver", "settings": literal}),
            ),
        )
        .await?;
    assert_eq!(status, 400, "{refused}");
    server
        .post(
            "/api/v1/targets",
            json!({"name": host.name, "environment": "edge", "kind": "winrm",
                   "agent": "win-driver", "settings": settings, "check": true}),
        )
        .await?;
    // Created after the agent logged in with the password from the secret; asked again:
    let checked = server
        .post(&format!("/api/v1/targets/{}/check", host.name), json!({}))
        .await?;
    assert_eq!(checked["ok"], true, "{checked}");
    assert!(
        checked["message"]
            .as_str()
            .is_some_and(|m| m.contains("ran PowerShell")),
        "{checked}"
    );
    let mut digests = BTreeMap::new();
    for (version, tag) in [("1.0.0", "v1"), ("2.0.0", "v2"), ("3.0.0", "v3")] {
        let image = images.publish(tag, true).await?;
        digests.insert(
            version,
            image
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
        );
        server
            .post(
                "/api/v1/releases",
                json!({"name": "shop", "version": version, "components": {"web": image}}),
            )
            .await?;
    }
    let versions = || std::fs::read_to_string(host.work().join("versions")).unwrap_or_default();
    let sticker = || -> anyhow::Result<Sticker> {
        Ok(Sticker::from_json(&std::fs::read(
            host.sticker_file("web"),
        )?)?)
    };

    let (deployment, logs) = promote(&server, "1.0.0").await?;
    assert_eq!(deployment["state"], "succeeded", "{deployment}\n{logs}");
    assert!(logs.contains("script: deploying 1.0.0"), "{logs}");
    assert!(logs.contains("ntlm authentication"), "{logs}");
    assert!(
        !logs.contains(&host.double.password),
        "the password is in the log"
    );
    assert_eq!(versions(), format!("1.0.0 {}\n", digests["1.0.0"]));
    assert_eq!(sticker()?.version, "1.0.0");
    assert_eq!(sticker()?.deployment_id, deployment["id"]);

    let (deployment, logs) = promote(&server, "2.0.0").await?;
    assert_eq!(deployment["state"], "succeeded", "{deployment}\n{logs}");
    assert_eq!(sticker()?.version, "2.0.0");

    // A failing script: its stderr and exit code in the log, the deployment failed, the
    // sticker still says 2.0.0.
    let (deployment, logs) = promote(&server, "3.0.0").await?;
    assert_eq!(deployment["state"], "failed", "{deployment}\n{logs}");
    assert!(
        logs.contains("script (stderr): cannot start the service"),
        "{logs}"
    );
    assert!(logs.contains("exit code 7"), "{logs}");
    assert_eq!(sticker()?.version, "2.0.0");

    // Rollback: the script runs again with the previous release's variables.
    let rollback = server
        .post("/api/v1/environments/edge/rollback", json!({}))
        .await?;
    assert_eq!(rollback["kind"], "rollback");
    let target_version = rollback["version"].as_str().unwrap_or_default().to_owned();
    let (rolled, logs) = finish(&server, rollback["id"].as_str().context("id")?).await?;
    assert_eq!(rolled["state"], "succeeded", "{rolled}\n{logs}");
    assert!(
        versions().ends_with(&format!(
            "{target_version} {}\n",
            digests[target_version.as_str()]
        )),
        "{}",
        versions()
    );
    assert_eq!(sticker()?.version, target_version);
    assert_eq!(sticker()?.deployment_id, rolled["id"]);

    // Drift: an edited sticker file is reported...
    let file = host.sticker_file("web");
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)?.replace(&target_version, "9.9.9"),
    )?;
    let drift = wait_until(
        "drift `sticker_tampered` is reported",
        Duration::from_secs(30),
        || async {
            let drift = server.get("/api/v1/drift").await.ok()?;
            drift
                .as_array()?
                .iter()
                .find(|d| d["kind"] == "sticker_tampered" && d["target"] == host.name.as_str())
                .cloned()
        },
    )
    .await?;
    assert_eq!(drift["component"], "web");

    // ...and remediated: the desired release is deployed again.
    let runs = versions().lines().count();
    server
        .call(
            Method::PATCH,
            "/api/v1/environments/edge",
            Some(json!({"drift": "remediate"})),
        )
        .await?;
    let remediation = wait_until(
        "a remediation deployment succeeds",
        Duration::from_secs(60),
        || async {
            let deployments = server
                .get("/api/v1/deployments?environment=edge")
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
    assert_eq!(remediation["version"], target_version.as_str());
    assert!(sticker()?.verify());
    assert_eq!(sticker()?.deployment_id, remediation["id"]);
    assert_eq!(versions().lines().count(), runs + 1);
    wait_until("drift is resolved", Duration::from_secs(30), || async {
        let drift = server.get("/api/v1/drift").await.ok()?;
        (!drift
            .as_array()?
            .iter()
            .any(|d| d["target"] == host.name.as_str()))
        .then_some(())
    })
    .await?;
    Ok(())
}
