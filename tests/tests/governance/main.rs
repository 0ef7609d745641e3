//! Release governance end to end (docs/governance.md): gates, approvals, signed
//! decisions, replay and evidence packets, against a real control plane, a real
//! registry, and a real agent deploying to the real Docker engine whenever a decision
//! allows a deployment. The `stella` binary is the real CLI. A decision's DSSE envelope
//! is checked with an independent implementation (Python's `securesystemslib`).
//!
//! Each test has its own estate (registry, server, agent), shared by the cases it
//! holds; names of targets (and so of containers) are unique, since every test deploys
//! to the same engine.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, Timelike, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest as _;
use stella_control_plane::ServerConfig;
use stella_decision::dsse::{PublicKey, SigningKey};
use stella_decision::evidence::{sign_decision, Packet};
use stella_decision::intoto::Subject;
use stella_tests::images::{docker_cli, ContainerCleanup, WebImages, WEB_HEALTH_CMD};
use stella_tests::registry::TestRegistry;
use stella_tests::{stella, wait_until, TestAgent, TestServer};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);
const AGENT: &str = "docker-host";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A registry holding the test's web images; `v1` is healthy.
struct Published {
    images: WebImages,
    v1: String,
    _registry: TestRegistry,
}

impl Published {
    async fn start() -> anyhow::Result<Published> {
        let registry = TestRegistry::start().await?;
        let images = WebImages::new(
            &registry.host(),
            &unique("stella-test/governance"),
            &registry.docker_config(),
        );
        let v1 = images.publish("v1", true).await?;
        Ok(Published {
            images,
            v1,
            _registry: registry,
        })
    }
}

/// A control plane with the release `web@1` (the healthy image) and a connected agent
/// on this machine's Docker engine; containers of its targets are removed on drop.
struct Estate {
    server: TestServer,
    /// The bootstrap admin's name.
    admin: String,
    agent: Option<TestAgent>,
    cleanup: Mutex<ContainerCleanup>,
}

impl Estate {
    async fn start(
        published: &Published,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Estate> {
        let server = TestServer::start_with(adjust).await?;
        let agent = TestAgent::start(&server, AGENT).await?;
        server
            .wait_for_state(AGENT, "connected", Duration::from_secs(10))
            .await?;
        let admin = server.get("/api/v1/whoami").await?["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let estate = Estate {
            server,
            admin,
            agent: Some(agent),
            cleanup: Mutex::new(ContainerCleanup::new(Vec::<String>::new())),
        };
        estate.release("web", "1", &published.v1).await?;
        Ok(estate)
    }

    fn admin_token(&self) -> String {
        self.server.admin_token.clone()
    }

    /// A user with `roles`; returns its token.
    async fn user(&self, name: &str, roles: &[&str]) -> anyhow::Result<String> {
        let created = self
            .server
            .post("/api/v1/users", json!({"name": name, "roles": roles}))
            .await?;
        created["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no token in {created}"))
    }

    async fn environment(&self, body: Value) -> anyhow::Result<Value> {
        self.server.post("/api/v1/environments", body).await
    }

    async fn release(&self, name: &str, version: &str, image: &str) -> anyhow::Result<Value> {
        self.server
            .post(
                "/api/v1/releases",
                json!({"name": name, "version": version, "components": {"web": image}}),
            )
            .await
    }

    /// A docker target in `environment` on the agent, health-checked; returns its name.
    async fn target(&self, environment: &str) -> anyhow::Result<String> {
        self.target_named(&unique(environment), environment).await
    }

    async fn target_named(&self, name: &str, environment: &str) -> anyhow::Result<String> {
        self.cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(name);
        self.server
            .post(
                "/api/v1/targets",
                json!({"name": name, "environment": environment, "kind": "docker",
                       "agent": AGENT,
                       "settings": {"health_cmd": WEB_HEALTH_CMD,
                                    "health_timeout_seconds": "8"}}),
            )
            .await?;
        Ok(name.to_owned())
    }

    /// `POST /api/v1/promotions` of `name@version` as the holder of `token`.
    async fn promote(
        &self,
        token: &str,
        release: &str,
        environment: &str,
    ) -> anyhow::Result<(u16, Value)> {
        self.promote_with(token, release, environment, None).await
    }

    async fn promote_with(
        &self,
        token: &str,
        release: &str,
        environment: &str,
        break_glass: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let (name, version) = release
            .split_once('@')
            .ok_or_else(|| anyhow::anyhow!("{release} is not NAME@VERSION"))?;
        let mut body = json!({"release": name, "version": version, "environment": environment});
        if let Some(reason) = break_glass {
            body["break_glass"] = json!(reason);
        }
        self.server
            .request(Method::POST, "/api/v1/promotions", Some(token), Some(body))
            .await
    }

    /// Promotes and expects 201 in `state`.
    async fn promoted(
        &self,
        token: &str,
        release: &str,
        environment: &str,
        state: &str,
    ) -> anyhow::Result<Value> {
        let (status, promotion) = self.promote(token, release, environment).await?;
        anyhow::ensure!(
            status == 201 && promotion["state"] == state,
            "promoting {release} to {environment} answered {status}, expected 201 {state}: {promotion}"
        );
        Ok(promotion)
    }

    /// `approve` or `reject` as the holder of `token`.
    async fn answer(&self, token: &str, id: &str, verb: &str) -> anyhow::Result<(u16, Value)> {
        self.server
            .request(
                Method::POST,
                &format!("/api/v1/promotions/{id}/{verb}"),
                Some(token),
                Some(json!({"comment": format!("{verb}d in a test")})),
            )
            .await
    }

    async fn promotion(&self, id: &str) -> anyhow::Result<Value> {
        self.server.get(&format!("/api/v1/promotions/{id}")).await
    }

    async fn decision(&self, promotion: &Value) -> anyhow::Result<Value> {
        let id = promotion["decision_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no decision in {promotion}"))?;
        self.server.get(&format!("/api/v1/decisions/{id}")).await
    }

    /// Waits until a deploying promotion is `deployed` or `failed`.
    async fn settled(&self, promotion: &Value) -> anyhow::Result<Value> {
        let id = promotion["id"].as_str().unwrap_or_default();
        wait_until(
            &format!("promotion {id} is deployed or failed"),
            DEPLOY_TIMEOUT,
            || async {
                self.promotion(id)
                    .await
                    .ok()
                    .filter(|p| p["state"] == "deployed" || p["state"] == "failed")
            },
        )
        .await
    }

    /// Waits until a deploying promotion is deployed, and checks that its target's
    /// container runs under its decision.
    async fn deployed(&self, promotion: &Value, target: &str) -> anyhow::Result<Value> {
        let settled = self.settled(promotion).await?;
        anyhow::ensure!(settled["state"] == "deployed", "not deployed: {settled}");
        let running = running_decision(target).await?;
        anyhow::ensure!(
            running == settled["decision_id"].as_str().unwrap_or_default(),
            "{target} runs decision {running}, not that of {settled}"
        );
        Ok(settled)
    }

    /// `stella ARGS…` against this server as the holder of `token`, with a config dir
    /// of this estate's own (its known keys).
    async fn cli(&self, token: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let config = self.cli_config();
        stella(
            args,
            &[
                ("STELLA_SERVER", &self.server.api_url()),
                ("STELLA_TOKEN", token),
                ("STELLA_CONFIG_DIR", &config.display().to_string()),
            ],
        )
        .await
    }

    fn cli_config(&self) -> PathBuf {
        self.server.dir.path().join("cli-config")
    }
}

/// `<target>-web` runs, labelled with the decision that put it there.
async fn running_decision(target: &str) -> anyhow::Result<String> {
    let inspected = docker_cli(
        &[
            "inspect",
            "--format",
            r#"{{.State.Running}} {{index .Config.Labels "ops.stella.decision"}}"#,
            &format!("{target}-web"),
        ],
        None,
        None,
    )
    .await?;
    match inspected.trim().split_once(' ') {
        Some(("true", decision)) => Ok(decision.to_owned()),
        _ => anyhow::bail!("{target}-web is not running: {inspected}"),
    }
}

/// The result of gate `name` in a promotion or decision.
fn gate<'a>(promotion: &'a Value, name: &str) -> &'a Value {
    let gates = if promotion["gates"].is_array() {
        &promotion["gates"]
    } else {
        &promotion["decision"]["gates"]
    };
    gates
        .as_array()
        .and_then(|gates| gates.iter().find(|g| g["gate"] == name))
        .unwrap_or(&Value::Null)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The API's time format: RFC 3339, milliseconds, `Z`.
fn rfc3339(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

mod evidence;
mod gates;
mod workflows;
