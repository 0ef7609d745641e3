//! Events emitted for real: unreachable agents, drift findings.

use super::*;

/// Enrols an agent straight in the store (it never connects) and returns its id.
async fn enrol_silent_agent(server: &TestServer, name: &str) -> anyhow::Result<String> {
    let store = &server.running().app.store;
    let now = now_ms();
    let hash = format!("token-of-{name}");
    store
        .insert_join_token(&NewJoinToken {
            hash: hash.clone(),
            created_by: "test".into(),
            created_at_ms: now,
            expires_at_ms: now + 60_000,
        })
        .await?;
    let id = uuid::Uuid::now_v7().to_string();
    let enrolled = store
        .enroll_agent(
            &hash,
            now,
            &NewAgent {
                id: id.clone(),
                name: name.to_owned(),
                labels: Default::default(),
                cert_serial: "01".into(),
                cert_not_after_ms: now + 3_600_000,
                enrolled_at_ms: now,
            },
        )
        .await?;
    anyhow::ensure!(enrolled.is_ok(), "enrolment refused: {enrolled:?}");
    Ok(id)
}

#[tokio::test]
async fn an_unreachable_agent_is_announced_once_per_outage() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut receiver = Receiver::down()?;
    receiver.up()?;
    let (id, secret) = create_webhook(&server, &receiver.url(), &["agent.unreachable"]).await?;
    receiver.set_secret(&secret);

    let agent_id = enrol_silent_agent(&server, "edge-7").await?;
    let store = &server.running().app.store;
    // Last heard from a minute ago.
    store
        .record_hello(
            &agent_id,
            &HelloRecord {
                agent_version: "test".into(),
                capabilities: Vec::new(),
                labels: Default::default(),
                host: Default::default(),
                at_ms: now_ms() - 60_000,
            },
        )
        .await?;
    let first = wait_until("the outage is announced", WAIT, || async {
        receiver.received().first().cloned()
    })
    .await?;
    assert!(first.signature_valid);
    assert_eq!(first.header("x-stella-event"), "agent.unreachable");
    let payload = first.json();
    assert_eq!(payload["subject"], "edge-7");
    assert!(
        payload["message"]
            .as_str()
            .is_some_and(|m| m.contains("edge-7")),
        "{payload}"
    );
    assert!(payload["release"].is_null() && payload["environment"].is_null());
    assert_eq!(server.agent("edge-7").await?["state"], "unreachable");

    // The outage goes on: no second announcement.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(receiver.received().len(), 1);

    // Heard from again, then silent again: a new outage, announced once more.
    store.touch_agents(&[(agent_id.clone(), now_ms())]).await?;
    assert_eq!(server.agent("edge-7").await?["state"], "connected");
    let second = wait_until("the second outage is announced", WAIT, || async {
        receiver.received().get(1).cloned()
    })
    .await?;
    assert_ne!(
        second.header("x-stella-delivery"),
        first.header("x-stella-delivery")
    );
    assert_ne!(second.json()["id"], payload["id"]);
    let events = server.get("/api/v1/events?kind=agent.unreachable").await?;
    assert_eq!(events.as_array().map(Vec::len), Some(2), "{events}");
    assert_eq!(deliveries(&server, &id).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn drift_is_announced_once_per_finding_change() -> anyhow::Result<()> {
    use stella_proto::v1::DriftReport;

    let server = TestServer::start().await?;
    let mut receiver = Receiver::down()?;
    receiver.up()?;
    let (id, secret) = create_webhook(
        &server,
        &receiver.url(),
        &["drift.detected", "drift.resolved"],
    )
    .await?;
    receiver.set_secret(&secret);
    server
        .post("/api/v1/environments", json!({"name": "staging"}))
        .await?;
    let agent_id = enrol_silent_agent(&server, "edge-1").await?;
    server
        .post(
            "/api/v1/targets",
            json!({"name": "web-1", "environment": "staging", "kind": "docker", "agent": "edge-1"}),
        )
        .await?;

    let app = &server.running().app;
    let report = |component: &str, kind: &str, detail: &str, resolved_kind: &str| DriftReport {
        target: "web-1".into(),
        component: component.into(),
        kind: kind.into(),
        detail: detail.into(),
        observed_at_unix_ms: 0,
        resolved_kind: resolved_kind.into(),
    };
    // Found, then found again (one finding: no new event), then resolved on its own.
    app.record_drift(
        &agent_id,
        &report("web", "missing", "container web-1-web is gone", ""),
    )
    .await?;
    app.record_drift(&agent_id, &report("web", "missing", "still gone", ""))
        .await?;
    app.record_drift(&agent_id, &report("web", "resolved", "", "missing"))
        .await?;
    // Two findings, then the whole target clean: one event per finding.
    app.record_drift(
        &agent_id,
        &report("web", "image_changed", "runs nginx:latest", ""),
    )
    .await?;
    app.record_drift(&agent_id, &report("web", "missing", "gone again", ""))
        .await?;
    app.record_drift(&agent_id, &report("", "resolved", "", ""))
        .await?;
    // Resolving what is not open announces nothing.
    app.record_drift(&agent_id, &report("web", "resolved", "", "missing"))
        .await?;

    let kinds = |query: &'static str| {
        let server = &server;
        async move {
            let events = server.get(&format!("/api/v1/events{query}")).await?;
            anyhow::Ok(
                events
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["kind"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    let events = kinds("?environment=staging").await?;
    assert_eq!(
        events,
        [
            "drift.detected drift on target web-1: component web: missing (container web-1-web is gone)",
            "drift.resolved drift resolved on target web-1 (component web: missing)",
            "drift.detected drift on target web-1: component web: image_changed (runs nginx:latest)",
            "drift.detected drift on target web-1: component web: missing (gone again)",
            "drift.resolved drift resolved on target web-1 (component web: image_changed)",
            "drift.resolved drift resolved on target web-1 (component web: missing)",
        ],
    );
    let received = wait_until("six deliveries arrive", WAIT, || async {
        let received = receiver.received();
        (received.len() >= 6).then_some(received)
    })
    .await?;
    assert!(received.iter().all(|r| r.signature_valid));
    let payload = received[0].json();
    assert_eq!(payload["environment"], "staging");
    assert_eq!(payload["subject"], "web-1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 6);
    assert_eq!(deliveries(&server, &id).await?.len(), 6);
    Ok(())
}

/// Promotions blocked at once are stored by one group commit with their events and
/// deliveries: every promotion is stored, and each event delivered once, signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blocked_promotions_are_each_stored_and_delivered_once() -> anyhow::Result<()> {
    use stella_control_plane::domain::{Component, Digest, Release, Role};

    let server = TestServer::start().await?;
    let app = server.running().app.clone();
    let agent = stella_tests::TestAgent::start(&server, "web-host").await?;
    server
        .wait_for_state("web-host", "connected", Duration::from_secs(20))
        .await?;
    server
        .post(
            "/api/v1/environments",
            json!({"name": "stage", "allow_unscanned": true}),
        )
        .await?;
    server
        .post(
            "/api/v1/environments",
            json!({"name": "prod", "after": "stage", "allow_unscanned": true}),
        )
        .await?;
    server
        .post(
            "/api/v1/targets",
            json!({"name": "web-1", "environment": "prod", "kind": "docker", "agent": "web-host"}),
        )
        .await?;
    let digest = format!("sha256:{}", "ab".repeat(32));
    app.store
        .create_release(&Release {
            name: "shop".to_owned(),
            version: "2.0".to_owned(),
            components: vec![Component {
                name: "web".to_owned(),
                source: "registry.example.com/shop/web:2.0".to_owned(),
                image: format!("registry.example.com/shop/web@{digest}"),
                digest: Digest::parse(&digest).map_err(|e| anyhow::anyhow!("{}", e.0))?,
            }],
            created_by: "test".to_owned(),
            created_at_ms: now_ms(),
        })
        .await?;
    let mut receiver = Receiver::down()?;
    receiver.up()?;
    let (webhook_id, secret) =
        create_webhook(&server, &receiver.url(), &["promotion.blocked"]).await?;
    receiver.set_secret(&secret);
    let (user, _) = app.create_user("release-bot", vec![Role::Operator]).await?;

    const PROMOTIONS: usize = 24;
    let mut requests = Vec::new();
    for _ in 0..PROMOTIONS {
        let (app, user) = (app.clone(), user.clone());
        requests.push(tokio::spawn(async move {
            app.promote("shop", "2.0", "prod", &user, None).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for request in requests {
        let detail = request.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(detail.promotion.state.as_str(), "blocked");
        let stored = app.store.get_promotion(&detail.promotion.id).await?;
        assert_eq!(stored, detail.promotion, "stored as answered");
        let decision = stored.decision_id.clone().unwrap_or_default();
        app.store.get_decision(&decision).await?;
        ids.insert(detail.promotion.id);
    }
    assert_eq!(ids.len(), PROMOTIONS);

    let got = wait_until("every blocked promotion is delivered", WAIT, || async {
        let got = receiver.received();
        (got.len() >= PROMOTIONS).then_some(got)
    })
    .await?;
    // Give a duplicate time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received().len().max(got.len());
    assert_eq!(got, PROMOTIONS, "each event delivered once");
    let received = receiver.received();
    assert!(received.iter().all(|r| r.signature_valid));
    let subjects: std::collections::BTreeSet<String> = received
        .iter()
        .map(|r| r.json()["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(subjects, ids, "one delivery per promotion");
    let listed = deliveries(&server, &webhook_id).await?;
    assert_eq!(listed.len(), PROMOTIONS);
    assert!(app.store.unfanned_events(now_ms(), 100).await?.is_empty());
    agent.stop().await?;
    Ok(())
}
