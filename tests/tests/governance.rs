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

/// An environment `E` after `stage` accepts a release only once the same digests ran
/// successfully in `stage`: refused before (naming `stage`), refused after a failed
/// deployment there, allowed after a successful one, also for another release with the
/// same digests.
#[tokio::test]
async fn promotion_order_requires_the_same_digests_deployed_successfully_before(
) -> anyhow::Result<()> {
    let published = Published::start().await?;
    let broken = published.images.publish("v3", false).await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    estate
        .environment(json!({"name": "stage", "allow_unscanned": true}))
        .await?;
    let prod = estate
        .environment(json!({"name": "prod", "after": "stage", "allow_unscanned": true}))
        .await?;
    assert_eq!(prod["after"], "stage");
    let stage_target = estate.target("stage").await?;
    let prod_target = estate.target("prod").await?;
    estate.release("copy", "7", &published.v1).await?;
    estate.release("web", "3", &broken).await?;

    // Nothing ran in stage: blocked, and the refusal says what must come first.
    let blocked = estate.promoted(&alice, "web@1", "prod", "blocked").await?;
    let refusal =
        "web@1 (same digests) was never deployed successfully to `stage`, which comes before `prod`";
    assert_eq!(gate(&blocked, "order")["status"], "failed", "{blocked}");
    assert_eq!(gate(&blocked, "order")["reason"], refusal);
    assert_eq!(blocked["message"], format!("order: {refusal}"));
    assert!(blocked["deployment_id"].is_null(), "{blocked}");
    // Every gate is evaluated, not only the first that fails.
    assert_eq!(gate(&blocked, "freeze")["status"], "not_configured");
    assert_eq!(gate(&blocked, "security")["status"], "passed");
    assert_eq!(gate(&blocked, "policy")["status"], "not_configured");
    assert_eq!(gate(&blocked, "approvals")["status"], "not_configured");
    let decision = estate.decision(&blocked).await?;
    assert_eq!(decision["outcome"], "blocked");
    assert_eq!(gate(&decision, "order")["reason"], refusal);
    // A blocked promotion is final.
    let (status, settled) = estate
        .answer(&estate.admin_token(), text(&blocked, "/id"), "approve")
        .await?;
    assert_eq!(
        (status, code(&settled)),
        (409, "promotion_settled"),
        "{settled}"
    );

    // A deployment that failed in stage does not count.
    let failing = estate
        .promoted(&alice, "web@3", "stage", "deploying")
        .await?;
    let failed = estate.settled(&failing).await?;
    assert_eq!(failed["state"], "failed", "{failed}");
    let still = estate.promoted(&alice, "web@3", "prod", "blocked").await?;
    assert_eq!(
        gate(&still, "order")["reason"],
        "web@3 (same digests) was never deployed successfully to `stage`, which comes before `prod`"
    );

    // A real, successful deployment to stage opens prod to the same digests.
    let staged = estate
        .promoted(&alice, "web@1", "stage", "deploying")
        .await?;
    assert_eq!(gate(&staged, "order")["status"], "not_configured");
    estate.deployed(&staged, &stage_target).await?;

    // Another name and version pinning the same digests counts as what ran there.
    let copy = estate
        .promoted(&alice, "copy@7", "prod", "deploying")
        .await?;
    assert_eq!(gate(&copy, "order")["status"], "passed", "{copy}");
    assert_eq!(
        gate(&copy, "order")["reason"],
        "the same digests were deployed successfully to `stage` (as web@1)"
    );
    assert!(copy["deployment_id"].is_string(), "{copy}");
    estate.deployed(&copy, &prod_target).await?;

    let web = estate
        .promoted(&alice, "web@1", "prod", "deploying")
        .await?;
    assert_eq!(gate(&web, "order")["status"], "passed", "{web}");
    let deployed = estate.deployed(&web, &prod_target).await?;
    assert_eq!(estate.decision(&deployed).await?["outcome"], "allowed");

    // Different digests stay blocked.
    estate.promoted(&alice, "web@3", "prod", "blocked").await?;
    Ok(())
}

/// A freeze window active now blocks (CLI exit status 3) naming the window and its
/// end; only an admin breaks the glass, which overrides the freeze and nothing else and
/// is signed into the decision; a window not active now passes.
#[tokio::test]
async fn freeze_windows_block_until_they_end_and_only_an_admin_breaks_the_glass(
) -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let olga = estate.user("olga", &["operator"]).await?;

    // Windows that opened a minute ago (UTC and Berlin wall clock) for two hours, and
    // one that opens in three hours.
    let now = Utc::now();
    let opened = (now - chrono::Duration::seconds(60))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .ok_or_else(|| anyhow::anyhow!("cannot truncate {now}"))?;
    let ends = opened + chrono::Duration::hours(2);
    let utc_window = format!("{} {} * * */2h", opened.minute(), opened.hour());
    let berlin = opened.with_timezone(&chrono_tz::Europe::Berlin);
    let berlin_window = format!(
        "{} {} * * */2h@Europe/Berlin",
        berlin.minute(),
        berlin.hour()
    );
    let later_window = format!("0 {} * * */1h", (now + chrono::Duration::hours(3)).hour());
    estate
        .environment(json!({"name": "frozen", "freeze": [utc_window], "allow_unscanned": true}))
        .await?;
    // No scan and unscanned images not allowed: the glass must not open that gate.
    estate
        .environment(json!({"name": "frozen-berlin", "freeze": [berlin_window]}))
        .await?;
    estate
        .environment(
            json!({"name": "thawed", "freeze": [later_window], "approvals": 1,
                            "allow_unscanned": true}),
        )
        .await?;
    let frozen_target = estate.target("frozen").await?;
    estate.target("frozen-berlin").await?;
    estate.target("thawed").await?;

    let (since, until) = (rfc3339(opened), rfc3339(ends));
    for (environment, window) in [("frozen", &utc_window), ("frozen-berlin", &berlin_window)] {
        let inside = format!("inside freeze window `{window}` (since {since}, until {until})");
        let (status, _, err) = estate
            .cli(&olga, &["promote", "web@1", "--to", environment])
            .await?;
        assert_eq!(status, 3, "{err}");
        assert!(
            err.contains(&format!(
                "freeze: {inside}; an admin may pass --break-glass REASON"
            )),
            "{err}"
        );
        let listed = estate
            .server
            .get(&format!("/api/v1/promotions?environment={environment}"))
            .await?;
        let promotion = &listed[0];
        assert_eq!(promotion["state"], "blocked", "{promotion}");
        assert_eq!(gate(promotion, "freeze")["status"], "failed");
        assert_eq!(
            gate(promotion, "freeze")["reason"],
            format!("{inside}; an admin may pass --break-glass REASON")
        );
        let shown = estate
            .server
            .get(&format!("/api/v1/environments/{environment}"))
            .await?;
        assert_eq!(
            shown["frozen"],
            json!({"window": window, "since": since, "until": until})
        );
    }

    // An operator's break-glass is refused, and nothing is stored.
    let count = |environment: &'static str| {
        let estate = &estate;
        async move {
            let listed = estate
                .server
                .get(&format!("/api/v1/promotions?environment={environment}"))
                .await?;
            anyhow::Ok(listed.as_array().map_or(0, Vec::len))
        }
    };
    let before = count("frozen").await?;
    let (status, refused) = estate
        .promote_with(&olga, "web@1", "frozen", Some("hotfix"))
        .await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "break_glass_forbidden"),
        "{refused}"
    );
    assert!(
        message(&refused).contains("olga is not an admin"),
        "{refused}"
    );
    let (status, _, err) = estate
        .cli(
            &olga,
            &[
                "promote",
                "web@1",
                "--to",
                "frozen",
                "--break-glass",
                "hotfix",
            ],
        )
        .await?;
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("only an admin may break the glass"), "{err}");
    assert_eq!(count("frozen").await?, before);

    // An admin's: allowed and deployed, the gate overridden, the glass in the decision.
    let reason = "INC-7: payments are down";
    let (status, out, err) = estate
        .cli(
            &estate.admin_token(),
            &[
                "promote",
                "web@1",
                "--to",
                "frozen",
                "--break-glass",
                reason,
                "--wait",
                "-o",
                "json",
            ],
        )
        .await?;
    assert_eq!(status, 0, "{err}");
    let promotion: Value = serde_json::from_str(&out)?;
    assert_eq!(promotion["state"], "deployed", "{promotion}");
    let freeze = gate(&promotion, "freeze");
    assert_eq!(freeze["status"], "overridden", "{promotion}");
    assert_eq!(
        freeze["reason"],
        format!(
            "inside freeze window `{utc_window}` (since {since}, until {until}); break-glass by {}: {reason}",
            estate.admin
        )
    );
    assert_eq!(
        promotion["break_glass"],
        json!({"by": estate.admin, "reason": reason})
    );
    let decision = estate.decision(&promotion).await?;
    assert_eq!(decision["outcome"], "allowed");
    assert_eq!(
        decision["decision"]["break_glass"]["by"],
        estate.admin.as_str()
    );
    assert_eq!(decision["decision"]["break_glass"]["reason"], reason);
    assert_eq!(
        running_decision(&frozen_target).await?,
        text(&promotion, "/decision_id")
    );

    // The glass overrides a freeze and only a freeze.
    let (status, still) = estate
        .promote_with(
            &estate.admin_token(),
            "web@1",
            "frozen-berlin",
            Some(reason),
        )
        .await?;
    assert_eq!(status, 201, "{still}");
    assert_eq!(still["state"], "blocked", "{still}");
    assert_eq!(gate(&still, "freeze")["status"], "overridden");
    assert_eq!(gate(&still, "security")["status"], "failed");
    assert!(
        text(&still, "/message").starts_with("security: no verdict"),
        "{still}"
    );

    // A window that is not active lets the promotion through (to its approvals).
    let thawed = estate
        .promoted(&olga, "web@1", "thawed", "awaiting_approval")
        .await?;
    assert_eq!(gate(&thawed, "freeze")["status"], "passed", "{thawed}");
    assert_eq!(
        gate(&thawed, "freeze")["reason"],
        "no freeze window is active"
    );
    let shown = estate.server.get("/api/v1/environments/thawed").await?;
    assert!(shown["frozen"].is_null(), "{shown}");
    Ok(())
}

/// K distinct approvers other than the requester, admins included; one user counts
/// once; viewers and operators cannot approve; a rejection ends the promotion with a
/// signed decision; K approvals deploy.
#[tokio::test]
async fn approvals_need_distinct_approvers_other_than_the_requester() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let carol = estate.user("carol", &["operator", "approver"]).await?;
    let bob = estate.user("bob", &["approver"]).await?;
    let dave = estate.user("dave", &["approver"]).await?;
    let vera = estate.user("vera", &["viewer"]).await?;
    let otto = estate.user("otto", &["operator"]).await?;
    estate
        .environment(json!({"name": "prod", "approvals": 2, "allow_unscanned": true}))
        .await?;
    let target = estate.target("prod").await?;

    let waiting = estate
        .promoted(&carol, "web@1", "prod", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    assert_eq!(gate(&waiting, "approvals")["status"], "waiting");
    assert_eq!(
        gate(&waiting, "approvals")["reason"],
        "0/2 approvals; needs 2 more from approvers other than carol"
    );
    assert!(
        waiting["decision_id"].is_null(),
        "waiting is not a decision"
    );

    // The requester never approves their own promotion.
    let (status, refused) = estate.answer(&carol, &id, "approve").await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "self_approval"),
        "{refused}"
    );
    assert!(
        message(&refused).contains("carol requested promotion"),
        "{refused}"
    );
    // Neither viewers nor operators approve.
    for token in [&vera, &otto] {
        let (status, refused) = estate.answer(token, &id, "approve").await?;
        assert_eq!((status, code(&refused)), (403, "forbidden"), "{refused}");
    }

    // One approver counts once.
    let (status, once) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{once}");
    assert_eq!(once["state"], "awaiting_approval");
    assert_eq!(
        gate(&once, "approvals")["reason"],
        "1/2 approvals (bob); needs 1 more from approvers other than carol"
    );
    let (status, twice) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!((status, code(&twice)), (409, "already_answered"), "{twice}");
    let shown = estate.promotion(&id).await?;
    assert_eq!(shown["approvals"].as_array().map(Vec::len), Some(1));
    assert_eq!(shown["approvals"][0]["user"], "bob");
    assert_eq!(shown["approvals"][0]["current"], true);

    // Admins are held to it too; a rejection ends a promotion with a signed decision.
    let admin_token = estate.admin_token();
    let by_admin = estate
        .promoted(&admin_token, "web@1", "prod", "awaiting_approval")
        .await?;
    let admin_id = text(&by_admin, "/id").to_owned();
    let (status, refused) = estate.answer(&admin_token, &admin_id, "approve").await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "self_approval"),
        "{refused}"
    );
    let (status, rejected) = estate.answer(&bob, &admin_id, "reject").await?;
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["message"], "rejected by bob");
    assert!(rejected["deployment_id"].is_null(), "{rejected}");
    let decision = estate.decision(&rejected).await?;
    assert_eq!(decision["outcome"], "rejected");
    assert_eq!(decision["decision"]["outcome"], "rejected");
    assert_eq!(decision["decision"]["requested_by"], estate.admin.as_str());
    assert_eq!(
        decision["envelope"]["payloadType"],
        "application/vnd.in-toto+json"
    );
    assert_eq!(
        decision["envelope"]["signatures"][0]["keyid"],
        decision["key_id"]
    );
    let (status, settled) = estate.answer(&dave, &admin_id, "approve").await?;
    assert_eq!(
        (status, code(&settled)),
        (409, "promotion_settled"),
        "{settled}"
    );
    let (exit, _, err) = estate
        .cli(&admin_token, &["promote", "web@1", "--to", "prod"])
        .await?;
    assert_eq!(exit, 0, "awaiting approval exits 0 without --wait: {err}");
    assert!(
        err.contains("to prod: awaiting_approval: 0/2 approvals"),
        "{err}"
    );

    // A second, distinct approver (through the CLI): allowed, deployed for real.
    let (status, out, err) = estate
        .cli(&dave, &["promotion", "approve", &id, "-o", "json"])
        .await?;
    assert_eq!(status, 0, "{err}");
    let allowed: Value = serde_json::from_str(&out)?;
    assert_eq!(allowed["state"], "deploying", "{allowed}");
    assert_eq!(gate(&allowed, "approvals")["status"], "passed");
    assert_eq!(
        gate(&allowed, "approvals")["reason"],
        "2/2 approvals (bob, dave)"
    );
    let deployed = estate.deployed(&allowed, &target).await?;
    let decision = estate.decision(&deployed).await?;
    assert_eq!(decision["outcome"], "allowed");
    let approvers: Vec<&str> = decision["inputs"]["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["user"].as_str())
        .collect();
    assert_eq!(approvers, ["bob", "dave"]);
    Ok(())
}

/// An approval is bound to the plan: a target edit voids it (said in the message, the
/// approval shown as not current), a fresh one is needed; with a TTL an approval
/// expires, and the approver may give it again.
#[tokio::test]
async fn approvals_are_void_when_the_plan_changes_and_expire_after_their_ttl() -> anyhow::Result<()>
{
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    let bob = estate.user("bob", &["approver"]).await?;
    let dave = estate.user("dave", &["approver"]).await?;
    estate
        .environment(json!({"name": "prod", "approvals": 2, "allow_unscanned": true}))
        .await?;
    let target = estate.target("prod").await?;

    let waiting = estate
        .promoted(&alice, "web@1", "prod", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let (status, approved) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["approvals"][0]["current"], true);

    // The target's settings change: bob's approval was for the old plan.
    let (status, edited) = estate
        .server
        .call(
            Method::PATCH,
            &format!("/api/v1/targets/{target}"),
            Some(json!({"set": {"health_timeout_seconds": "9"}})),
        )
        .await?;
    assert_eq!(status, 200, "{edited}");
    let voided = estate.promotion(&id).await?;
    assert_eq!(voided["state"], "awaiting_approval", "{voided}");
    assert_ne!(voided["plan_hash"], waiting["plan_hash"]);
    assert_eq!(
        voided["message"],
        format!(
            "the plan changed (target `{target}` settings changed): approvals given before are void; \
             0/2 approvals; needs 2 more from approvers other than alice \
             (approval by bob is void: it was given for plan {})",
            text(&waiting, "/plan_hash")
        )
    );
    assert_eq!(voided["approvals"][0]["user"], "bob");
    assert_eq!(voided["approvals"][0]["current"], false);
    assert_eq!(
        voided["approvals"][0]["plan_hash"], waiting["plan_hash"],
        "{voided}"
    );

    // dave approves the new plan: one of two; bob must approve again.
    let (status, one) = estate.answer(&dave, &id, "approve").await?;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["state"], "awaiting_approval", "{one}");
    assert_eq!(
        gate(&one, "approvals")["reason"],
        "1/2 approvals (dave); needs 1 more from approvers other than alice"
    );
    assert_eq!(
        gate(&one, "approvals")["details"],
        json!([format!(
            "approval by bob is void: it was given for plan {}",
            text(&waiting, "/plan_hash")
        )])
    );
    let (status, allowed) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{allowed}");
    assert_eq!(allowed["state"], "deploying", "{allowed}");
    assert_eq!(
        gate(&allowed, "approvals")["reason"],
        "2/2 approvals (dave, bob)"
    );
    let deployed = estate.deployed(&allowed, &target).await?;
    let decision = estate.decision(&deployed).await?;
    assert_eq!(decision["decision"]["plan_hash"], voided["plan_hash"]);

    // Approvals that expire after two seconds.
    estate
        .environment(
            json!({"name": "hotfix", "approvals": 2, "approval_ttl_seconds": 2,
                            "allow_unscanned": true}),
        )
        .await?;
    let hotfix_target = estate.target("hotfix").await?;
    let waiting = estate
        .promoted(&alice, "web@1", "hotfix", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let (status, first) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{first}");
    let given = DateTime::parse_from_rfc3339(text(&first, "/approvals/0/at"))?.with_timezone(&Utc);
    // The TTL is wall-clock time: let it pass.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, late) = estate.answer(&dave, &id, "approve").await?;
    assert_eq!(status, 200, "{late}");
    assert_eq!(late["state"], "awaiting_approval", "{late}");
    assert_eq!(
        gate(&late, "approvals")["reason"],
        "1/2 approvals (dave); needs 1 more from approvers other than alice"
    );
    assert_eq!(
        gate(&late, "approvals")["details"],
        json!([format!(
            "approval by bob expired at {}",
            rfc3339(given + chrono::Duration::seconds(2))
        )])
    );
    // bob approves again, in time.
    let (status, renewed) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["state"], "deploying", "{renewed}");
    estate.deployed(&renewed, &hotfix_target).await?;
    Ok(())
}

/// A Rego v1 policy's `deny` reasons block, over the documented input; `allow` that is
/// not true denies; v0 syntax is refused. No scan report blocks with "no verdict"
/// unless the environment allows unscanned images.
#[tokio::test]
async fn policy_and_security_gates_block_with_their_reasons() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    let otto = estate.user("otto", &["operator"]).await?;

    // v0 syntax: refused, nothing created.
    let v0 = "package stella.old\n\ndeny[msg] {\n    input.requester == \"alice\"\n    msg := \"no\"\n}\n";
    let (status, refused) = estate
        .server
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "old", "policy": v0})),
        )
        .await?;
    assert_eq!(
        (status, code(&refused)),
        (400, "invalid_policy"),
        "{refused}"
    );
    assert!(message(&refused).contains("Rego v0"), "{refused}");
    let (status, _) = estate
        .server
        .call(Method::GET, "/api/v1/environments/old", None)
        .await?;
    assert_eq!(status, 404);

    // The reason is built from the input document as documented.
    let guard = r#"package stella.guard

deny contains msg if {
    input.requester == "alice"
    msg := sprintf("%s may not promote %s@%s (%s) to %s on %d target(s)", [
        input.requester, input.release.name, input.release.version,
        input.release.digests[0], input.environment.name, count(input.targets),
    ])
}
"#;
    let guarded = estate
        .environment(json!({"name": "guarded", "policy": guard, "approvals": 1,
                            "allow_unscanned": true}))
        .await?;
    let policy_id = text(&guarded, "/policy").to_owned();
    assert!(policy_id.starts_with("sha256:"), "{guarded}");
    estate.target("guarded").await?;
    let blocked = estate
        .promoted(&alice, "web@1", "guarded", "blocked")
        .await?;
    let digest = published.v1.split_once('@').map_or("", |(_, d)| d);
    let why = format!("alice may not promote web@1 ({digest}) to guarded on 1 target(s)");
    let policy = gate(&blocked, "policy");
    assert_eq!(policy["status"], "failed", "{blocked}");
    assert_eq!(
        policy["reason"],
        format!("policy stella.guard denies it: {why}")
    );
    assert_eq!(policy["details"], json!([why]));
    assert_eq!(
        blocked["message"],
        format!("policy: policy stella.guard denies it: {why}")
    );
    // Someone else passes it (and waits for the approval).
    let passed = estate
        .promoted(&otto, "web@1", "guarded", "awaiting_approval")
        .await?;
    assert_eq!(gate(&passed, "policy")["status"], "passed");
    assert_eq!(
        gate(&passed, "policy")["reason"],
        format!("policy {policy_id} allows it")
    );

    // A module must define `deny`.
    let (status, refused) = estate
        .server
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "closed", "policy": "package stella.closed\n\nallow := true\n"})),
        )
        .await?;
    assert_eq!(
        (status, code(&refused)),
        (400, "invalid_policy"),
        "{refused}"
    );
    assert!(
        message(&refused).contains("policy `stella.closed` defines no `deny` rule"),
        "{refused}"
    );

    // `allow` defined and not true denies, even when `deny` is empty.
    let closed = r#"package stella.closed

deny contains "the release has no images" if count(input.release.digests) == 0

allow := false
"#;
    estate
        .environment(json!({"name": "closed", "policy": closed, "allow_unscanned": true}))
        .await?;
    estate.target("closed").await?;
    let closed = estate.promoted(&otto, "web@1", "closed", "blocked").await?;
    assert_eq!(
        gate(&closed, "policy")["reason"],
        "policy stella.closed denies it: policy `allow` is not true"
    );

    // No scan report, unscanned images not allowed (the default): no verdict.
    let strict = estate
        .environment(json!({"name": "strict", "approvals": 1}))
        .await?;
    assert_eq!(strict["allow_unscanned"], false, "{strict}");
    estate.target("strict").await?;
    let unscanned = estate.promoted(&otto, "web@1", "strict", "blocked").await?;
    let security = gate(&unscanned, "security");
    assert_eq!(security["status"], "failed", "{unscanned}");
    assert!(
        text(security, "/reason").starts_with("no verdict"),
        "{unscanned}"
    );
    assert!(
        text(&unscanned, "/message").starts_with("security: no verdict"),
        "{unscanned}"
    );
    // Allowed unscanned: the gate passes.
    let (status, _) = estate
        .server
        .call(
            Method::PATCH,
            "/api/v1/environments/strict",
            Some(json!({"allow_unscanned": true})),
        )
        .await?;
    assert_eq!(status, 200);
    let scanned_or_not = estate
        .promoted(&otto, "web@1", "strict", "awaiting_approval")
        .await?;
    assert_eq!(gate(&scanned_or_not, "security")["status"], "passed");
    Ok(())
}

/// Python script: verifies a DSSE envelope (argv[1], JSON) with an Ed25519 key (id
/// argv[2], raw public key hex argv[3]). Exit 0 verified, 3 not verified.
const DSSE_VERIFY_PY: &str = r#"
import json, sys
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

with open(sys.argv[1]) as f:
    envelope = Envelope.from_dict(json.load(f))
key = SSlibKey(sys.argv[2], "ed25519", "ed25519", {"public": sys.argv[3]})
try:
    envelope.verify([key], 1)
except VerificationError as error:
    print(f"not verified: {error}", file=sys.stderr)
    sys.exit(3)
print("verified")
"#;

/// Whether `securesystemslib` verifies `envelope` with the key; fails when Python or
/// the library is missing, or the script fails otherwise.
async fn python_verifies(
    dir: &Path,
    envelope: &Value,
    key_id: &str,
    raw_hex: &str,
) -> anyhow::Result<bool> {
    let script = dir.join("dsse_verify.py");
    std::fs::write(&script, DSSE_VERIFY_PY)?;
    let file = dir.join(format!("envelope-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, serde_json::to_vec(envelope)?)?;
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&file)
        .args([key_id, raw_hex])
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "python3 is missing ({e}): install it and securesystemslib (cargo xtask test does)"
            )
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => anyhow::bail!(
            "the securesystemslib check did not run ({}): {stderr} (cargo xtask test installs securesystemslib)",
            output.status
        ),
    }
}

/// The raw Ed25519 key in an SPKI PEM: the DER is a fixed 12-byte prefix and the key.
fn raw_ed25519_hex(pem: &str) -> anyhow::Result<String> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim())?;
    let prefix = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    anyhow::ensure!(
        der.len() == 44 && der[..12] == prefix,
        "not an Ed25519 SPKI key: {pem}"
    );
    Ok(der[12..].iter().map(|b| format!("{b:02x}")).collect())
}

/// The files of a `.tar.gz`, in archive order; unpacked here, not by Stella's reader.
fn untar(bytes: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        files.push((path, content));
    }
    Ok(files)
}

fn retar(files: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gzip);
    for (path, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, content.as_slice())?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// A decision's DSSE envelope verifies with an independent implementation and the
/// server's published key, and not once tampered; replay is byte-identical; evidence
/// exports are byte-identical and verify with no server; every tampered file is named;
/// a packet re-signed with another key is refused unless that key is the one trusted.
#[tokio::test]
async fn decisions_are_signed_replayable_and_verify_offline_as_evidence() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let mut estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    // A policy makes the packet carry an input document.
    let policy = "package stella.prod\n\ndeny contains \"mallory may not\" if {\n    input.requester == \"mallory\"\n}\n";
    estate
        .environment(json!({"name": "prod", "policy": policy, "allow_unscanned": true}))
        .await?;
    let target = estate.target("prod").await?;
    let promotion = estate
        .promoted(&alice, "web@1", "prod", "deploying")
        .await?;
    estate.deployed(&promotion, &target).await?;
    let decision_id = text(&promotion, "/decision_id").to_owned();
    let decision = estate.decision(&promotion).await?;

    // The signature, checked by securesystemslib with the key the server publishes.
    let keys = estate.server.get("/api/v1/keys").await?;
    let key = &keys[0];
    assert_eq!(key["algorithm"], "ed25519");
    let pem = text(key, "/public_key_pem");
    let raw_hex = raw_ed25519_hex(pem)?;
    assert_eq!(PublicKey::from_pem(pem)?.raw_hex(), raw_hex);
    let raw = (0..raw_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&raw_hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()?;
    let key_id = text(key, "/key_id");
    assert_eq!(
        key_id,
        hex_sha256(&raw),
        "a key id is the SHA-256 of the raw key"
    );
    assert_eq!(decision["key_id"], key_id);
    let envelope = &decision["envelope"];
    let work = estate.server.dir.path().join("python");
    std::fs::create_dir_all(&work)?;
    assert!(
        python_verifies(&work, envelope, key_id, &raw_hex).await?,
        "securesystemslib does not verify {envelope}"
    );

    // The statement: subjects are the release's images by digest, the predicate is
    // the decision whose id is the decision id.
    let engine = base64::engine::general_purpose::STANDARD;
    let payload = engine.decode(text(envelope, "/payload"))?;
    let statement: Value = serde_json::from_slice(&payload)?;
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["predicateType"],
        "https://stellaops.io/attestations/decision/v1"
    );
    let (repository, digest) = published
        .v1
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("no digest in {}", published.v1))?;
    assert_eq!(
        statement["subject"],
        json!([{"name": repository, "digest": {"sha256": &digest["sha256:".len()..]}}])
    );
    assert_eq!(statement["predicate"], decision["decision"]);
    let canonical = stella_decision::canonical::canonical_value(&statement["predicate"])?;
    assert_eq!(stella_decision::sha256_id(&canonical), decision_id);

    // One changed byte of the payload, and the signature no longer holds.
    let mut tampered_payload = payload.clone();
    let at = tampered_payload.len() / 2;
    tampered_payload[at] ^= 0x01;
    let mut tampered = envelope.clone();
    tampered["payload"] = json!(engine.encode(&tampered_payload));
    assert!(
        !python_verifies(&work, &tampered, key_id, &raw_hex).await?,
        "securesystemslib verifies a tampered envelope"
    );
    // Nor with another key.
    let other = SigningKey::from_seed([7; 32]);
    assert!(
        !python_verifies(&work, envelope, key_id, &other.public_key().raw_hex()).await?,
        "securesystemslib verifies with the wrong key"
    );

    // Replay in the CLI: byte-identical.
    let admin = estate.admin_token();
    let (status, out, err) = estate
        .cli(&admin, &["decision", "replay", &decision_id])
        .await?;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains(&format!(
            "{decision_id}: byte-identical when recomputed from its inputs"
        )),
        "{out}"
    );
    let (status, out, err) = estate
        .cli(&admin, &["decision", "replay", &decision_id, "-o", "json"])
        .await?;
    assert_eq!(status, 0, "{err}");
    let replay: Value = serde_json::from_str(&out)?;
    assert_eq!(
        replay,
        json!({"decision_id": decision_id, "identical": true,
               "recomputed_id": decision_id, "differences": []})
    );

    // Two exports, byte for byte the same.
    let dir = estate.server.dir.path().join("evidence");
    std::fs::create_dir_all(&dir)?;
    let (first, second) = (dir.join("first.tar.gz"), dir.join("second.tar.gz"));
    for out in [&first, &second] {
        let (status, _, err) = estate
            .cli(
                &admin,
                &[
                    "evidence",
                    "export",
                    &decision_id,
                    "--out",
                    &out.display().to_string(),
                ],
            )
            .await?;
        assert_eq!(status, 0, "{err}");
    }
    let packet = std::fs::read(&first)?;
    assert_eq!(packet, std::fs::read(&second)?, "exports differ");
    let files = untar(&packet)?;
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let policy_file = format!("documents/{}", &hex_sha256(policy.as_bytes()));
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.sig.json",
            "decision.json",
            "deployment.json",
            policy_file.as_str(),
            "envelope.json",
            "inputs.json",
            "key.pem",
            "stickers.json",
        ]
    );

    // No server from here on.
    if let Some(agent) = estate.agent.take() {
        agent.stop().await?;
    }
    estate.server.stop().await;
    let verify = |file: PathBuf, key: Option<PathBuf>| {
        let estate = &estate;
        async move {
            let mut args = vec![
                "evidence".to_owned(),
                "verify".to_owned(),
                file.display().to_string(),
            ];
            if let Some(key) = key {
                args.extend(["--key".to_owned(), key.display().to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            estate.cli("", &args).await
        }
    };
    let (status, out, err) = verify(first.clone(), None).await?;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains(&format!("verified: decision {decision_id} (allowed)")),
        "{out}"
    );

    // Each file with one byte flipped (the manifest kept): refused, naming the file.
    for index in 0..files.len() {
        let mut flipped = files.clone();
        let (name, content) = &mut flipped[index];
        content[0] ^= 0x01;
        let name = name.clone();
        let file = dir.join(format!("tampered-{index}.tar.gz"));
        std::fs::write(&file, retar(&flipped)?)?;
        let (status, _, err) = verify(file, None).await?;
        assert_eq!(status, 1, "a packet with {name} tampered verifies: {err}");
        assert!(
            err.contains(&format!("does not verify: {name}: ")),
            "{name}: {err}"
        );
    }

    // The same decision re-signed with another key: a fine signature, but not trusted.
    let mut original = Packet::read(&packet)?;
    let decision_bytes = original
        .files
        .remove("decision.json")
        .ok_or_else(|| anyhow::anyhow!("no decision.json"))?;
    let inputs = original
        .files
        .remove("inputs.json")
        .ok_or_else(|| anyhow::anyhow!("no inputs.json"))?;
    let signed = sign_decision(
        &other,
        vec![Subject::image(repository, digest)?],
        &decision_bytes,
    )?;
    let mut resigned = Packet::for_decision(
        &signed,
        inputs,
        original.documents().into_values().map(|d| d.to_vec()),
        &other.public_key(),
    )?;
    for extra in ["deployment.json", "stickers.json"] {
        if let Some(content) = original.files.remove(extra) {
            resigned.files.insert(extra.to_owned(), content);
        }
    }
    let resigned_file = dir.join("resigned.tar.gz");
    std::fs::write(&resigned_file, resigned.write(&decision_id)?)?;
    let server_key = dir.join("server.pem");
    std::fs::write(&server_key, pem)?;
    let other_key = dir.join("other.pem");
    std::fs::write(&other_key, other.public_key().to_pem())?;
    for key in [None, Some(server_key)] {
        let (status, _, err) = verify(resigned_file.clone(), key.clone()).await?;
        assert_eq!(status, 1, "re-signed packet verifies with {key:?}: {err}");
        assert!(
            err.contains("does not verify: envelope.json: "),
            "{key:?}: {err}"
        );
    }
    let (status, out, err) = verify(resigned_file, Some(other_key)).await?;
    assert_eq!(status, 0, "{err}");
    assert!(out.contains(other.key_id()), "{out}");
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two fresh servers given the same users, environments, targets, agents, releases
/// and evaluation time decide with the same id, blocked or allowed.
#[tokio::test]
async fn decision_ids_are_equal_across_servers_given_the_same_inputs() -> anyhow::Result<()> {
    const CLOCK_MS: i64 = 1_796_212_805_000;
    let published = Published::start().await?;
    let target = unique("same");
    let mut estates = Vec::new();
    for _ in 0..2 {
        let estate = Estate::start(&published, |config| {
            config.decision_clock_ms = Some(CLOCK_MS);
        })
        .await?;
        let alice = estate.user("alice", &["operator"]).await?;
        estate
            .environment(json!({"name": "stage", "allow_unscanned": true}))
            .await?;
        estate
            .environment(json!({"name": "prod", "after": "stage", "approvals": 1,
                                "freeze": ["0 18 * * FRI/64h@Europe/Berlin"]}))
            .await?;
        estate.target_named(&target, "stage").await?;
        estate
            .target_named(&format!("{target}-prod"), "prod")
            .await?;
        estates.push((estate, alice));
    }

    // Blocked (order, security), on both.
    let mut blocked = Vec::new();
    for (estate, alice) in &estates {
        let promotion = estate.promoted(alice, "web@1", "prod", "blocked").await?;
        let decision = estate.decision(&promotion).await?;
        assert_eq!(
            decision["decision"]["evaluated_at"],
            "2026-12-02T12:00:05.000Z"
        );
        blocked.push((promotion, decision));
    }
    assert_ne!(blocked[0].0["id"], blocked[1].0["id"], "two promotions");
    assert_eq!(blocked[0].0["decision_id"], blocked[1].0["decision_id"]);
    assert_eq!(blocked[0].1["decision"], blocked[1].1["decision"]);
    assert_eq!(blocked[0].1["inputs"], blocked[1].1["inputs"]);

    // Allowed, and deployed for real, one server after the other.
    let mut allowed = Vec::new();
    for (estate, alice) in &mut estates {
        let promotion = estate
            .promoted(alice, "web@1", "stage", "deploying")
            .await?;
        estate.deployed(&promotion, &target).await?;
        // The next server's agent replaces the container: this one must not watch.
        if let Some(agent) = estate.agent.take() {
            agent.stop().await?;
        }
        allowed.push(promotion);
    }
    assert_eq!(allowed[0]["decision_id"], allowed[1]["decision_id"]);
    assert_ne!(allowed[0]["decision_id"], blocked[0].0["decision_id"]);
    Ok(())
}

/// A delivery as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    event: String,
    body: Value,
    signature_valid: bool,
}

#[derive(Clone, Default)]
struct ReceiverState {
    secret: Arc<Mutex<String>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// Records each delivery and whether its `X-Stella-Signature` is the HMAC-SHA256 of
/// the body under the secret; answers 204 when it is, 401 otherwise.
async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let secret = state
        .secret
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let expected = format!(
        "sha256={}",
        ring::hmac::sign(&key, &body)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let signature_valid = header("x-stella-signature") == expected;
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            event: header("x-stella-event"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            signature_valid,
        });
    if signature_valid {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// Promotion events reach a subscribed webhook, signed: awaiting approval, approved,
/// deployed, blocked, rejected.
#[tokio::test]
async fn promotion_events_reach_webhooks_signed() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |config| {
        config.webhook_retry_initial_ms = 200;
        config.webhook_retry_max_ms = 800;
    })
    .await?;
    let alice = estate.user("alice", &["operator"]).await?;
    let bob = estate.user("bob", &["approver"]).await?;

    let state = ReceiverState::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(state.clone());
    let receiver = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let events = [
        "promotion.awaiting_approval",
        "promotion.approved",
        "promotion.rejected",
        "promotion.blocked",
        "promotion.deployed",
        "promotion.failed",
    ];
    let hook = estate
        .server
        .post("/api/v1/webhooks", json!({"url": url, "events": events}))
        .await?;
    *state.secret.lock().unwrap_or_else(PoisonError::into_inner) =
        text(&hook, "/secret").to_owned();

    estate
        .environment(json!({"name": "prod", "approvals": 1, "allow_unscanned": true}))
        .await?;
    estate.environment(json!({"name": "strict"})).await?;
    let target = estate.target("prod").await?;
    estate.target("strict").await?;

    let waiting = estate
        .promoted(&alice, "web@1", "prod", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let (status, allowed) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{allowed}");
    estate.deployed(&allowed, &target).await?;
    let blocked = estate
        .promoted(&alice, "web@1", "strict", "blocked")
        .await?;
    let rejected = estate
        .promoted(&alice, "web@1", "prod", "awaiting_approval")
        .await?;
    let (status, _) = estate
        .answer(&bob, text(&rejected, "/id"), "reject")
        .await?;
    assert_eq!(status, 200);

    let expected = [
        ("promotion.awaiting_approval", &waiting, "prod"),
        ("promotion.approved", &waiting, "prod"),
        ("promotion.deployed", &waiting, "prod"),
        ("promotion.blocked", &blocked, "strict"),
        ("promotion.awaiting_approval", &rejected, "prod"),
        ("promotion.rejected", &rejected, "prod"),
    ];
    let received = wait_until(
        "the receiver gets every promotion event",
        Duration::from_secs(20),
        || async {
            let received = state
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            (received.len() >= expected.len()).then_some(received)
        },
    )
    .await?;
    receiver.abort();
    assert_eq!(received.len(), expected.len(), "{received:#?}");
    let mut got: Vec<(String, String)> = received
        .iter()
        .map(|r| (r.event.clone(), text(&r.body, "/subject").to_owned()))
        .collect();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(event, promotion, _)| ((*event).to_owned(), text(promotion, "/id").to_owned()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for delivery in &received {
        assert!(delivery.signature_valid, "{delivery:?}");
        assert_eq!(delivery.body["event"], delivery.event.as_str());
        let (_, promotion, environment) = expected
            .iter()
            .find(|(event, promotion, _)| {
                *event == delivery.event && delivery.body["subject"] == promotion["id"]
            })
            .ok_or_else(|| anyhow::anyhow!("unexpected {delivery:?}"))?;
        assert_eq!(delivery.body["environment"], *environment, "{delivery:?}");
        assert_eq!(
            delivery.body["release"],
            json!({"name": "web", "version": "1"})
        );
        assert!(
            text(&delivery.body, "/message").contains(text(promotion, "/id")),
            "{delivery:?}"
        );
    }
    let blocked_event = received
        .iter()
        .find(|r| r.event == "promotion.blocked")
        .map(|r| text(&r.body, "/message").to_owned())
        .unwrap_or_default();
    assert!(
        blocked_event.contains("security: no verdict"),
        "{blocked_event}"
    );
    Ok(())
}
