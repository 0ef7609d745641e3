//! Webhooks against a real in-process server and a local receiver that checks every
//! signature: signed deliveries with their headers, retries while the receiver is down
//! and exactly one delivery once it is up (after a server restart too), events emitted
//! for real (unreachable agents, drift), validation and roles.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde_json::{json, Value};
use stella_control_plane::app::{now_ms, NewEvent};
use stella_control_plane::domain::{EventKind, HelloRecord, NewAgent, NewJoinToken};
use stella_control_plane::ServerConfig;
use stella_tests::{wait_until, TestServer};
use tokio::net::TcpSocket;

const WAIT: Duration = Duration::from_secs(20);

/// A delivery as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    signature_valid: bool,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    secret: Arc<Mutex<String>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A webhook receiver on a loopback port that is reserved from the start but refuses
/// connections until [`Receiver::up`]: "down", then "up", on the same URL.
struct Receiver {
    addr: SocketAddr,
    socket: Option<TcpSocket>,
    state: ReceiverState,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Bound, not listening: connections are refused.
    fn down() -> anyhow::Result<Receiver> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind("127.0.0.1:0".parse()?)?;
        Ok(Receiver {
            addr: socket.local_addr()?,
            socket: Some(socket),
            state: ReceiverState::default(),
            task: None,
        })
    }

    /// Listening: answers 204 to a delivery whose signature is valid, 401 otherwise.
    fn up(&mut self) -> anyhow::Result<()> {
        let socket = self
            .socket
            .take()
            .ok_or_else(|| anyhow::anyhow!("the receiver is up already"))?;
        let listener = socket.listen(128)?;
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(self.state.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set_secret(&self, secret: &str) {
        *self
            .state
            .secret
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = secret.to_owned();
    }

    fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

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
    let signature = headers
        .get("x-stella-signature")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let signature_valid = signature_matches(&secret, &body, signature);
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            headers,
            body,
            signature_valid,
        });
    if signature_valid {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// What a receiver does: `sha256=<hex>` must be the HMAC-SHA256 of the body keyed with
/// the secret's text, compared in constant time.
fn signature_matches(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(tag) = header.strip_prefix("sha256=").and_then(decode_hex) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok().filter(|p| p.len() == 2)?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

/// Retries within a second, so backoff shows within a test.
fn fast_retries(config: &mut ServerConfig) {
    config.webhook_retry_initial_ms = 200;
    config.webhook_retry_max_ms = 800;
    config.webhook_timeout_seconds = 5;
}

/// Creates a webhook; returns its id and secret.
async fn create_webhook(
    server: &TestServer,
    url: &str,
    events: &[&str],
) -> anyhow::Result<(String, String)> {
    let created = server
        .post("/api/v1/webhooks", json!({ "url": url, "events": events }))
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let secret = created["secret"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        !id.is_empty() && secret.len() == 64,
        "unexpected creation answer: {created}"
    );
    Ok((id, secret))
}

async fn deliveries(server: &TestServer, webhook_id: &str) -> anyhow::Result<Vec<Value>> {
    let list = server
        .get(&format!("/api/v1/webhooks/{webhook_id}/deliveries"))
        .await?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

fn deployed_event() -> NewEvent {
    NewEvent {
        kind: EventKind::PromotionDeployed,
        environment: Some("production".to_owned()),
        release: Some(("shop".to_owned(), "1.4.2".to_owned())),
        subject: Some("promotion-1".to_owned()),
        message: "shop 1.4.2 is deployed to production".to_owned(),
    }
}

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["traceId"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
}

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

#[tokio::test]
async fn webhook_requests_are_validated_and_for_admins_only() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    for (body, code, hint) in [
        (
            json!({"url": "ftp://example.com/", "events": ["*"]}),
            "invalid_url",
            "http",
        ),
        (
            json!({"url": "not a url", "events": ["*"]}),
            "invalid_url",
            "absolute",
        ),
        (
            json!({"url": "https://user:pw@example.com/", "events": ["*"]}),
            "invalid_url",
            "credentials",
        ),
        (
            json!({"url": "https://example.com/", "events": ["drift.detectd"]}),
            "unknown_event",
            "agent.unreachable",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "unknown_event",
            "at least one",
        ),
        (
            json!({"url": "https://example.com/"}),
            "invalid_body",
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["*"], "secret": "mine"}),
            "invalid_body",
            "secret",
        ),
    ] {
        let (status, reply) = server
            .call(Method::POST, "/api/v1/webhooks", Some(body.clone()))
            .await?;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_envelope(&reply, code);
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(hint), "{body}: {reply}");
        // The secret is not echoed, nor a URL with credentials.
        assert!(!message.contains("pw@"), "{reply}");
    }
    assert_eq!(server.get("/api/v1/webhooks").await?, json!([]));

    let (id, secret) = create_webhook(
        &server,
        "https://hooks.example.com/x",
        &["drift.detected", "*"],
    )
    .await?;
    let list = server.get("/api/v1/webhooks").await?;
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["events"], json!(["*"]));
    assert_eq!(list[0]["created_by"], "admin");
    assert!(list[0].get("secret").is_none(), "{list}");
    assert!(!list.to_string().contains(&secret));

    let viewer = server
        .post(
            "/api/v1/users",
            json!({"name": "vera", "roles": ["viewer", "operator", "approver"]}),
        )
        .await?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/webhooks".to_owned(),
            Some(json!({"url": "https://e.com/", "events": ["*"]})),
        ),
        (Method::GET, "/api/v1/webhooks".to_owned(), None),
        (Method::DELETE, format!("/api/v1/webhooks/{id}"), None),
        (
            Method::GET,
            format!("/api/v1/webhooks/{id}/deliveries"),
            None,
        ),
    ] {
        let (status, reply) = server
            .request(method.clone(), &path, Some(&viewer), body)
            .await?;
        assert_eq!(status, 403, "{method} {path}: {reply}");
        assert_envelope(&reply, "forbidden");
    }
    // Events are for every reader.
    let (status, reply) = server
        .request(Method::GET, "/api/v1/events", Some(&viewer), None)
        .await?;
    assert_eq!(status, 200, "{reply}");
    for (query, status, code) in [
        ("?kind=drift.detectd", 400, "unknown_event"),
        ("?release=shop", 400, "invalid_argument"),
        ("?environment=nowhere", 404, "unknown_environment"),
        ("?limit=many", 400, "invalid_query"),
    ] {
        let (got, reply) = server
            .call(Method::GET, &format!("/api/v1/events{query}"), None)
            .await?;
        assert_eq!(got, status, "{query}: {reply}");
        assert_envelope(&reply, code);
    }

    let (status, reply) = server
        .call(Method::GET, "/api/v1/webhooks/nope/deliveries", None)
        .await?;
    assert_eq!(status, 404, "{reply}");
    assert_envelope(&reply, "unknown_webhook");
    let (status, _) = server
        .call(Method::DELETE, &format!("/api/v1/webhooks/{id}"), None)
        .await?;
    assert_eq!(status, 204);
    let (status, reply) = server
        .call(Method::DELETE, &format!("/api/v1/webhooks/{id}"), None)
        .await?;
    assert_eq!(status, 404);
    assert_envelope(&reply, "unknown_webhook");
    assert_eq!(server.get("/api/v1/webhooks").await?, json!([]));
    Ok(())
}

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

#[tokio::test]
async fn the_cli_creates_lists_and_deletes_webhooks_and_shows_events() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let api_url = server.api_url();
    let env = [
        ("STELLA_SERVER", api_url.as_str()),
        ("STELLA_TOKEN", server.admin_token.as_str()),
    ];
    let run = |args: &'static [&'static str]| stella_tests::stella(args, &env);

    let (code, stdout, stderr) = stella_tests::stella(
        &[
            "webhook",
            "create",
            "https://hooks.example.com/a",
            "--event",
            "drift.detected",
            "--event",
            "promotion.failed,agent.unreachable",
            "-o",
            "json",
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout)?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        created["secret"].as_str().map(str::len),
        Some(64),
        "{created}"
    );
    assert_eq!(
        created["events"],
        json!(["promotion.failed", "drift.detected", "agent.unreachable"])
    );

    // For people: the id and the secret, and a note that it is shown once.
    let (code, stdout, stderr) = stella_tests::stella(
        &[
            "webhooks",
            "create",
            "https://hooks.example.com/b",
            "--event",
            "*",
        ],
        &env,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("secret"), "{stdout}");
    assert!(stderr.contains("shown only once"), "{stderr}");

    let (code, stdout, stderr) = run(&["webhook", "list", "-o", "json"]).await?;
    assert_eq!(code, 0, "{stderr}");
    let list: Value = serde_json::from_str(&stdout)?;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert!(!stdout.contains(created["secret"].as_str().unwrap_or("-")));

    server.running().app.emit(deployed_event()).await;
    let (code, stdout, stderr) = run(&["events", "--kind", "promotion.deployed"]).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("shop@1.4.2"), "{stdout}");
    let (code, stdout, stderr) = run(&["events", "--release", "shop@1.4.2", "-o", "json"]).await?;
    assert_eq!(code, 0, "{stderr}");
    let events: Value = serde_json::from_str(&stdout)?;
    assert_eq!(events[0]["event"], Value::Null);
    assert_eq!(events[0]["kind"], "promotion.deployed");

    let (code, stdout, stderr) =
        stella_tests::stella(&["webhook", "deliveries", &id, "-o", "json"], &env).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout)?, json!([]));

    // Refusals: one line naming the cause.
    let (code, _, stderr) = run(&[
        "webhook",
        "create",
        "https://hooks.example.com/c",
        "--event",
        "drift.detectd",
    ])
    .await?;
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown event `drift.detectd`"), "{stderr}");
    let (code, _, stderr) = run(&["events", "--release", "shop"]).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("NAME@VERSION"), "{stderr}");

    let (code, stdout, stderr) = stella_tests::stella(&["webhook", "delete", &id], &env).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
    let (code, _, stderr) = stella_tests::stella(&["webhook", "deliveries", &id], &env).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown webhook"), "{stderr}");
    Ok(())
}
