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

mod delivery;
mod events;
mod management;
