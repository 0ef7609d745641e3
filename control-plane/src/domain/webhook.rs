//! Webhooks: subscriptions to events, the deliveries of the outbox, how a delivery is
//! signed and when it is tried again.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{format_utc_ms, Event, EventKind, Invalid};

/// The subscription to every event kind, present and future.
pub const ALL_EVENTS: &str = "*";

string_enum!(
    /// Where a delivery stands.
    DeliveryState {
        /// Not delivered yet; tried again at `next_attempt_at_ms`.
        Pending = "pending",
        /// The receiver answered 2xx.
        Delivered = "delivered",
        /// Given up: no 2xx within the retry period.
        Failed = "failed",
    }
);

/// A webhook: a URL that receives the events it subscribes to, signed with its secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Id (UUID v7).
    pub id: String,
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: String,
    /// Event names ([`EventKind::as_str`]), or [`ALL_EVENTS`] alone.
    pub events: Vec<String>,
    /// The signing secret, sealed with the server's secrets key (never plain text).
    pub secret_sealed: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at_ms: i64,
}

impl Webhook {
    /// Whether it receives events of `kind`.
    pub fn subscribes(&self, kind: EventKind) -> bool {
        self.events
            .iter()
            .any(|event| event == ALL_EVENTS || event == kind.as_str())
    }
}

impl fmt::Debug for Webhook {
    // The URL may carry a token in its path (as chat services' hook URLs do), and the
    // sealed secret is nobody's business: show neither.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("events", &self.events)
            .field("created_by", &self.created_by)
            .finish_non_exhaustive()
    }
}

/// One event on its way to one webhook: stored before it is sent, kept after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Id (UUID v7); the `X-Stella-Delivery` header, the same on every attempt.
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event's kind name (`X-Stella-Event`).
    pub event: String,
    /// The JSON body, exactly as sent (and signed) on every attempt.
    pub payload: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: i64,
    /// When it is due next (while pending).
    pub next_attempt_at_ms: i64,
    /// A replica sending it holds it until then; 0 when nobody does.
    pub lease_until_ms: i64,
    /// The HTTP status of the last attempt, if one was received.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at_ms: i64,
    /// When the receiver took it.
    pub delivered_at_ms: Option<i64>,
}

/// A delivery about to be queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// Id (UUID v7).
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event's kind name.
    pub event: String,
    /// The JSON body.
    pub payload: String,
    /// When it was queued; also when it is first due.
    pub created_at_ms: i64,
}

/// How one attempt ended, as the store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryAttempt {
    /// The receiver answered 2xx.
    Delivered {
        /// Its status.
        status: i64,
        /// When.
        at_ms: i64,
    },
    /// No 2xx: tried again at `next_attempt_at_ms`.
    Retry {
        /// The status, if a response came.
        status: Option<i64>,
        /// What went wrong.
        error: String,
        /// When to try again.
        next_attempt_at_ms: i64,
    },
    /// No 2xx and the retry period is over: the delivery fails for good.
    GiveUp {
        /// The status, if a response came.
        status: Option<i64>,
        /// What went wrong.
        error: String,
    },
}

/// When failed deliveries are tried again: exponential backoff with full jitter. The
/// wait before retry `n` (after `n` failed attempts) is uniform in
/// `[initial, min(max, initial × 2^(n-1))]`, so no wait is shorter than `initial`
/// and receivers coming back are not hit by every sender in step. A delivery whose next
/// attempt would fall after `give_up_after_ms` from its creation fails for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Shortest wait.
    pub initial_ms: i64,
    /// Longest wait.
    pub max_ms: i64,
    /// How long after its creation a delivery is still tried.
    pub give_up_after_ms: i64,
}

impl RetryPolicy {
    /// The ceiling of the wait after `failed_attempts` (≥ 1) failed attempts.
    pub fn ceiling_ms(&self, failed_attempts: i64) -> i64 {
        let doublings = u32::try_from(failed_attempts.saturating_sub(1).clamp(0, 62)).unwrap_or(62);
        let factor = 1i64.checked_shl(doublings).unwrap_or(i64::MAX);
        self.initial_ms
            .saturating_mul(factor)
            .min(self.max_ms)
            .max(self.initial_ms)
    }

    /// What to record after a failed attempt: when to retry, or to give up.
    pub fn after_failure<R: Rng + ?Sized>(
        &self,
        delivery: &WebhookDelivery,
        status: Option<i64>,
        error: String,
        now_ms: i64,
        rng: &mut R,
    ) -> DeliveryAttempt {
        let failed_attempts = delivery.attempts.saturating_add(1);
        let ceiling = self.ceiling_ms(failed_attempts);
        let wait = rng.gen_range(self.initial_ms.min(ceiling)..=ceiling);
        let next_attempt_at_ms = now_ms.saturating_add(wait);
        if next_attempt_at_ms > delivery.created_at_ms.saturating_add(self.give_up_after_ms) {
            DeliveryAttempt::GiveUp { status, error }
        } else {
            DeliveryAttempt::Retry {
                status,
                error,
                next_attempt_at_ms,
            }
        }
    }
}

/// The events of a new webhook as given: each a known event name, or `*` (every kind)
/// alone. Returned deduplicated, in the documented order of [`EventKind::ALL`].
pub fn parse_subscription(events: &[String]) -> Result<Vec<String>, Invalid> {
    let valid = || {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("{} or `{ALL_EVENTS}` for all", names.join(", "))
    };
    if events.is_empty() {
        return Err(Invalid(format!(
            "a webhook needs at least one event: {}",
            valid()
        )));
    }
    let mut kinds = Vec::new();
    let mut all = false;
    for event in events {
        let event = event.trim();
        if event == ALL_EVENTS {
            all = true;
            continue;
        }
        match EventKind::from_str(event) {
            Ok(kind) => kinds.push(kind),
            Err(_) => return Err(Invalid(format!("unknown event `{event}`: use {}", valid()))),
        }
    }
    if all {
        return Ok(vec![ALL_EVENTS.to_owned()]);
    }
    Ok(EventKind::ALL
        .iter()
        .filter(|kind| kinds.contains(kind))
        .map(|kind| kind.as_str().to_owned())
        .collect())
}

/// The JSON body every webhook subscribed to `event` receives:
/// `{"id","event","at","environment","release":{"name","version"}|null,"subject","message"}`.
pub fn webhook_payload(event: &Event) -> String {
    let release = event
        .release
        .as_ref()
        .map(|(name, version)| serde_json::json!({ "name": name, "version": version }));
    serde_json::json!({
        "id": event.id,
        "event": event.kind.as_str(),
        "at": format_utc_ms(event.at_ms),
        "environment": event.environment,
        "release": release,
        "subject": event.subject,
        "message": event.message,
    })
    .to_string()
}

/// The `X-Stella-Signature` of a body: `sha256=` and the lowercase hex HMAC-SHA256 of
/// the body's bytes, keyed with the webhook's secret as printed (its ASCII bytes).
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    format!("sha256={}", hex::encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;

    fn delivery(attempts: i64) -> WebhookDelivery {
        WebhookDelivery {
            id: "d".to_owned(),
            webhook_id: "w".to_owned(),
            event: "drift.detected".to_owned(),
            payload: "{}".to_owned(),
            state: DeliveryState::Pending,
            attempts,
            next_attempt_at_ms: 0,
            lease_until_ms: 0,
            last_status: None,
            last_error: None,
            created_at_ms: 0,
            delivered_at_ms: None,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        initial_ms: 1_000,
        max_ms: 300_000,
        give_up_after_ms: 86_400_000,
    };

    #[test]
    fn waits_double_from_the_initial_up_to_the_maximum() {
        assert_eq!(POLICY.ceiling_ms(1), 1_000);
        assert_eq!(POLICY.ceiling_ms(2), 2_000);
        assert_eq!(POLICY.ceiling_ms(9), 256_000);
        assert_eq!(POLICY.ceiling_ms(10), 300_000);
        assert_eq!(POLICY.ceiling_ms(10_000), 300_000);
    }

    #[test]
    fn every_wait_is_between_the_initial_and_the_ceiling() {
        let mut rng = rand::thread_rng();
        for attempts in 0..40 {
            for _ in 0..50 {
                match POLICY.after_failure(&delivery(attempts), None, "x".into(), 10, &mut rng) {
                    DeliveryAttempt::Retry {
                        next_attempt_at_ms, ..
                    } => {
                        let wait = next_attempt_at_ms - 10;
                        assert!(wait >= 1_000, "{attempts}: {wait}");
                        assert!(
                            wait <= POLICY.ceiling_ms(attempts + 1),
                            "{attempts}: {wait}"
                        );
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_delivery_is_given_up_after_the_retry_period() {
        let mut rng = StepRng::new(0, 0);
        let late = POLICY.give_up_after_ms;
        assert!(matches!(
            POLICY.after_failure(&delivery(30), Some(503), "down".into(), late, &mut rng),
            DeliveryAttempt::GiveUp {
                status: Some(503),
                ..
            }
        ));
        assert!(matches!(
            POLICY.after_failure(&delivery(30), None, "down".into(), late - 1_000, &mut rng),
            DeliveryAttempt::Retry { .. }
        ));
    }

    #[test]
    fn subscriptions_are_known_names_or_everything() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_subscription(&names(&[
                "drift.detected",
                "promotion.approved",
                "drift.detected"
            ])),
            Ok(names(&["promotion.approved", "drift.detected"]))
        );
        assert_eq!(
            parse_subscription(&names(&["drift.detected", "*"])),
            Ok(names(&["*"]))
        );
        let error = parse_subscription(&names(&["drift.detectd"])).expect_err("unknown");
        assert!(error.0.contains("unknown event `drift.detectd`"), "{error}");
        assert!(error.0.contains("agent.unreachable"), "{error}");
        assert!(parse_subscription(&[]).is_err());
    }

    #[test]
    fn a_webhook_receives_what_it_subscribes_to() {
        let hook = |events: &[&str]| Webhook {
            id: "w".to_owned(),
            url: "http://127.0.0.1:1/".to_owned(),
            events: events.iter().map(|s| (*s).to_owned()).collect(),
            secret_sealed: "sealed".to_owned(),
            created_by: "admin".to_owned(),
            created_at_ms: 0,
        };
        assert!(hook(&["drift.detected"]).subscribes(EventKind::DriftDetected));
        assert!(!hook(&["drift.detected"]).subscribes(EventKind::DriftResolved));
        assert!(hook(&["*"]).subscribes(EventKind::AgentUnreachable));
        let shown = format!("{:?}", hook(&["*"]));
        assert!(
            !shown.contains("sealed") && !shown.contains("127.0.0.1"),
            "{shown}"
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        let signature = webhook_signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            signature,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_payload_names_event_release_and_time() {
        let event = Event {
            id: "e1".to_owned(),
            kind: EventKind::PromotionDeployed,
            environment: Some("prod".to_owned()),
            release: Some(("shop".to_owned(), "1.2.0".to_owned())),
            subject: Some("p1".to_owned()),
            message: "deployed".to_owned(),
            at_ms: 1_000,
        };
        let payload: serde_json::Value =
            serde_json::from_str(&webhook_payload(&event)).expect("json");
        assert_eq!(
            payload,
            serde_json::json!({
                "id": "e1", "event": "promotion.deployed", "at": "1970-01-01T00:00:01.000Z",
                "environment": "prod", "release": {"name": "shop", "version": "1.2.0"},
                "subject": "p1", "message": "deployed",
            })
        );
        let bare = Event {
            release: None,
            environment: None,
            ..event
        };
        let payload: serde_json::Value =
            serde_json::from_str(&webhook_payload(&bare)).expect("json");
        assert!(payload["release"].is_null() && payload["environment"].is_null());
    }
}
