//! Delivery: signed, retried while the receiver is down, once after a restart, events left unfanned, refused signatures.

use super::*;

#[tokio::test]
async fn a_delivery_is_signed_and_carries_its_headers() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    server
        .post("/api/v1/environments", json!({"name": "production"}))
        .await?;
    let mut receiver = Receiver::down()?;
    receiver.up()?;
    let (id, secret) = create_webhook(
        &server,
        &receiver.url(),
        &["promotion.deployed", "agent.unreachable"],
    )
    .await?;
    receiver.set_secret(&secret);

    let app = &server.running().app;
    // Not subscribed: queued for nobody.
    app.emit(NewEvent {
        kind: EventKind::DriftResolved,
        ..deployed_event()
    })
    .await;
    app.emit(deployed_event()).await;

    let got = wait_until("the receiver gets the delivery", WAIT, || async {
        receiver.received().first().cloned()
    })
    .await?;
    assert!(got.signature_valid, "invalid signature: {got:?}");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("x-stella-event"), "promotion.deployed");
    assert!(got.header("user-agent").starts_with("stella/"), "{got:?}");
    let payload = got.json();
    assert_eq!(payload["event"], "promotion.deployed");
    assert_eq!(payload["environment"], "production");
    assert_eq!(
        payload["release"],
        json!({"name": "shop", "version": "1.4.2"})
    );
    assert_eq!(payload["subject"], "promotion-1");
    assert_eq!(payload["message"], "shop 1.4.2 is deployed to production");
    assert!(
        payload["at"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z') && at.len() == 24),
        "{payload}"
    );

    // Negative controls: another secret, or another body, fails the receiver's check.
    let signature = got.header("x-stella-signature");
    assert!(signature_matches(&secret, &got.body, signature));
    assert!(!signature_matches(&"0".repeat(64), &got.body, signature));
    let mut tampered = got.body.to_vec();
    tampered.push(b' ');
    assert!(!signature_matches(&secret, &tampered, signature));

    let list = wait_until("the delivery is recorded as delivered", WAIT, || async {
        deliveries(&server, &id)
            .await
            .ok()
            .filter(|list| list.first().is_some_and(|d| d["state"] == "delivered"))
    })
    .await?;
    assert_eq!(list.len(), 1, "only the subscribed event: {list:?}");
    let delivery = &list[0];
    assert_eq!(got.header("x-stella-delivery"), delivery["id"]);
    assert_eq!(delivery["event"], "promotion.deployed");
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["last_status"], 204);
    assert!(delivery["last_error"].is_null(), "{delivery}");
    assert!(delivery["delivered_at"].is_string(), "{delivery}");
    assert!(delivery["next_attempt_at"].is_null(), "{delivery}");
    assert_eq!(receiver.received().len(), 1);

    // The events are listed, and found by environment, release and kind.
    let count = |query: &'static str| {
        let server = &server;
        async move {
            let events = server.get(&format!("/api/v1/events{query}")).await?;
            anyhow::Ok(events.as_array().map_or(0, Vec::len))
        }
    };
    assert_eq!(count("").await?, 2);
    assert_eq!(count("?environment=production").await?, 2);
    assert_eq!(count("?release=shop@1.4.2").await?, 2);
    assert_eq!(count("?release=shop@1.4.3").await?, 0);
    assert_eq!(count("?kind=promotion.deployed").await?, 1);
    assert_eq!(count("?kind=promotion.deployed&limit=1").await?, 1);
    let events = server.get("/api/v1/events?kind=promotion.deployed").await?;
    assert_eq!(
        events[0]["release"],
        json!({"name": "shop", "version": "1.4.2"})
    );
    assert_eq!(events[0]["subject"], "promotion-1");
    Ok(())
}

#[tokio::test]
async fn a_receiver_down_then_up_gets_the_delivery_exactly_once() -> anyhow::Result<()> {
    let server = TestServer::start_with(fast_retries).await?;
    let mut receiver = Receiver::down()?;
    let (id, secret) = create_webhook(&server, &receiver.url(), &["*"]).await?;
    receiver.set_secret(&secret);
    server.running().app.emit(deployed_event()).await;

    // Refused connections are failed attempts, each followed by a wait.
    let failing = wait_until("three attempts have failed", WAIT, || async {
        deliveries(&server, &id)
            .await
            .ok()
            .and_then(|list| list.into_iter().next())
            .filter(|d| d["attempts"].as_i64().is_some_and(|n| n >= 3))
    })
    .await?;
    assert_eq!(failing["state"], "pending", "{failing}");
    assert!(failing["last_status"].is_null(), "{failing}");
    let error = failing["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot connect"), "{failing}");
    assert!(
        !error.contains(&receiver.addr.to_string()),
        "errors do not repeat the URL: {failing}"
    );
    let next = failing["next_attempt_at"].as_str().unwrap_or_default();
    let created = failing["created_at"].as_str().unwrap_or_default();
    assert!(next > created, "{failing}");
    assert!(failing["delivered_at"].is_null(), "{failing}");

    receiver.up()?;
    let delivered = wait_until("the delivery is delivered", WAIT, || async {
        deliveries(&server, &id)
            .await
            .ok()
            .and_then(|list| list.into_iter().next())
            .filter(|d| d["state"] == "delivered")
    })
    .await?;
    assert_eq!(delivered["last_status"], 204);
    assert!(delivered["last_error"].is_null(), "{delivered}");
    assert!(delivered["next_attempt_at"].is_null(), "{delivered}");
    // A few more poll rounds: nothing is sent again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(received[0].signature_valid);
    assert_eq!(received[0].header("x-stella-delivery"), delivered["id"]);
    let after = deliveries(&server, &id).await?;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["attempts"], delivered["attempts"]);
    Ok(())
}

#[tokio::test]
async fn a_delivery_pending_at_shutdown_is_delivered_once_after_a_restart() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(fast_retries).await?;
    let mut receiver = Receiver::down()?;
    let (id, secret) = create_webhook(&server, &receiver.url(), &["promotion.deployed"]).await?;
    receiver.set_secret(&secret);
    server.running().app.emit(deployed_event()).await;
    wait_until("an attempt has failed", WAIT, || async {
        deliveries(&server, &id)
            .await
            .ok()
            .and_then(|list| list.into_iter().next())
            .filter(|d| d["attempts"].as_i64().is_some_and(|n| n >= 1))
    })
    .await?;

    server.stop().await;
    receiver.up()?;
    // Nobody sends while the server is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(receiver.received().is_empty());

    server.restart().await?;
    let got = wait_until("the receiver gets the delivery", WAIT, || async {
        receiver.received().first().cloned()
    })
    .await?;
    assert!(
        got.signature_valid,
        "the sealed secret survives the restart"
    );
    let delivered = wait_until("the delivery is recorded", WAIT, || async {
        deliveries(&server, &id)
            .await
            .ok()
            .and_then(|list| list.into_iter().next())
            .filter(|d| d["state"] == "delivered")
    })
    .await?;
    assert_eq!(got.header("x-stella-delivery"), delivered["id"]);

    // Delivered is delivered: another restart sends nothing again.
    server.restart().await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.received().len(), 1, "{:?}", receiver.received());
    Ok(())
}

/// An event stored by a replica that stopped before it queued the deliveries (stored
/// here directly, as the transaction of a change stores it) is fanned out by the sweep;
/// one fanned out at once is never fanned out again.
#[tokio::test]
async fn an_event_left_unfanned_is_delivered_once_by_the_sweep() -> anyhow::Result<()> {
    let server = TestServer::start_with(fast_retries).await?;
    let mut receiver = Receiver::down()?;
    receiver.up()?;
    let (_, secret) = create_webhook(&server, &receiver.url(), &["promotion.deployed"]).await?;
    receiver.set_secret(&secret);
    let app = &server.running().app;

    let left = stella_control_plane::domain::Event {
        id: uuid::Uuid::now_v7().to_string(),
        kind: EventKind::PromotionDeployed,
        environment: Some("production".to_owned()),
        release: Some(("shop".to_owned(), "1.4.3".to_owned())),
        subject: Some("promotion-left".to_owned()),
        message: "stored, never fanned out".to_owned(),
        at_ms: now_ms(),
    };
    app.store.add_event(&left).await?;
    let got = wait_until("the sweep delivers the event", WAIT, || async {
        receiver
            .received()
            .into_iter()
            .find(|r| r.json()["id"] == left.id.as_str())
    })
    .await?;
    assert!(got.signature_valid);

    app.emit(deployed_event()).await;
    // Longer than the sweep's grace and interval: nothing is delivered twice.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let mut ids: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "one delivery per event: {ids:?}");
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_refuses_the_signature_is_retried() -> anyhow::Result<()> {
    let server = TestServer::start_with(fast_retries).await?;
    let mut receiver = Receiver::down()?;
    receiver.up()?;
    let (id, _secret) = create_webhook(&server, &receiver.url(), &["*"]).await?;
    // The receiver holds another secret: it refuses every delivery.
    receiver.set_secret(&"f".repeat(64));
    server.running().app.emit(deployed_event()).await;
    let refused = wait_until("two attempts were refused", WAIT, || async {
        deliveries(&server, &id)
            .await
            .ok()
            .and_then(|list| list.into_iter().next())
            .filter(|d| d["attempts"].as_i64().is_some_and(|n| n >= 2))
    })
    .await?;
    assert_eq!(refused["state"], "pending");
    assert_eq!(refused["last_status"], 401);
    assert!(
        refused["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401")),
        "{refused}"
    );
    let received = receiver.received();
    assert!(received.iter().all(|r| !r.signature_valid), "{received:?}");
    // Every attempt is the same delivery with the same body.
    assert!(received.windows(2).all(|w| w[0].body == w[1].body
        && w[0].header("x-stella-delivery") == w[1].header("x-stella-delivery")));
    Ok(())
}
