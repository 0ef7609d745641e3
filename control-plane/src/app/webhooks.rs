//! Webhooks: subscriptions to events, and their deliveries from a durable outbox.
//!
//! [`App::emit`](super::App::emit) stores an event, then a delivery per subscribed
//! webhook; only then is anything sent. [`run_webhook_sender`] claims due deliveries
//! under a lease (so replicas sharing a database never send one twice at once), POSTs
//! them signed with the webhook's secret, and records each attempt: delivered on 2xx,
//! otherwise tried again with exponential backoff and full jitter until the retry period
//! is over. A delivery's id and body are the same on every attempt, so receivers can
//! drop repeats. The same loop announces agents that turned unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio_util::sync::CancellationToken;

use super::{not_found_as, now_ms, App, NewEvent};
use crate::domain::{
    format_utc_ms, parse_subscription, webhook_payload, webhook_signature, DeliveryAttempt, Event,
    EventKind, NewDelivery, RetryPolicy, User, Webhook, WebhookDelivery,
    LOST_SESSION_GRACE_INTERVALS, MISSED_HEARTBEATS_UNREACHABLE,
};
use crate::error::{AppError, ErrorChain, ErrorKind};

/// Deliveries claimed, and then sent, at once on one replica. All of a batch are in
/// flight together, so each is sent right after its claim and its lease need only
/// outlast one request.
const CLAIM_BATCH: usize = 8;
/// How often due deliveries are looked for without being told (retries come due, other
/// replicas queue deliveries).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a lease outlasts the request timeout, so that a slow attempt is recorded
/// before anyone else may take the delivery over.
const LEASE_MARGIN_MS: i64 = 30_000;
/// Longest URL accepted.
const MAX_URL_LEN: usize = 2048;
/// Longest error kept with a delivery.
const MAX_ERROR_LEN: usize = 500;

/// The `User-Agent` of deliveries.
const USER_AGENT: &str = concat!("stella/", env!("CARGO_PKG_VERSION"));

/// A webhook as created: the secret is in plain text here, and only here.
#[derive(Clone)]
pub struct CreatedWebhook {
    /// The stored webhook.
    pub webhook: Webhook,
    /// The signing secret (64 hex digits); shown once, stored sealed.
    pub secret: String,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook")
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Creates a webhook for `url` (http or https) receiving `events` (known event
    /// names, or `*` for all), with a new random secret, stored sealed and returned
    /// once.
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &[String],
        by: &User,
    ) -> Result<CreatedWebhook, AppError> {
        let url = validate_url(url)?;
        let events = parse_subscription(events).map_err(|invalid| {
            AppError::new(ErrorKind::InvalidArgument, "unknown_event", invalid.0)
        })?;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let secret = hex::encode(key);
        let webhook = Webhook {
            id: uuid::Uuid::now_v7().to_string(),
            url,
            events,
            secret_sealed: self.secrets.seal(&secret),
            created_by: by.name.clone(),
            created_at_ms: now_ms(),
        };
        self.store.create_webhook(&webhook).await?;
        tracing::info!(webhook_id = %webhook.id, events = ?webhook.events, user = %by.name, "webhook created");
        Ok(CreatedWebhook { webhook, secret })
    }

    /// The webhook with this id.
    pub async fn webhook(&self, id: &str) -> Result<Webhook, AppError> {
        self.store.get_webhook(id).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_webhook",
                format!("unknown webhook `{id}`"),
            )
        })
    }

    /// Deletes a webhook with its deliveries; what is not sent yet never will be.
    pub async fn delete_webhook(&self, id: &str, by: &User) -> Result<(), AppError> {
        self.store.delete_webhook(id).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_webhook",
                format!("unknown webhook `{id}`"),
            )
        })?;
        tracing::info!(webhook_id = %id, user = %by.name, "webhook deleted");
        Ok(())
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub async fn webhook_deliveries(
        &self,
        id: &str,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, AppError> {
        let webhook = self.webhook(id).await?;
        Ok(self.store.list_deliveries(&webhook.id, limit).await?)
    }

    /// Events, newest first: of an environment, of a release (`NAME@VERSION`), of a
    /// kind, or all; at most `limit`.
    pub async fn list_events(
        &self,
        environment: Option<&str>,
        release: Option<&str>,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, AppError> {
        let release = release
            .map(|release| match release.split_once('@') {
                Some((name, version)) if !name.is_empty() && !version.is_empty() => {
                    Ok((name, version))
                }
                _ => Err(AppError::invalid(format!(
                    "invalid release `{release}`: name it as NAME@VERSION"
                ))),
            })
            .transpose()?;
        let kind = kind
            .map(|kind| {
                kind.parse::<EventKind>().map_err(|_| {
                    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    AppError::new(
                        ErrorKind::InvalidArgument,
                        "unknown_event",
                        format!("unknown event `{kind}`: use {}", names.join(", ")),
                    )
                })
            })
            .transpose()?;
        if let Some(environment) = environment {
            self.environment(environment).await?;
        }
        Ok(self
            .store
            .list_events(environment, release, kind.map(EventKind::as_str), limit)
            .await?)
    }

    /// Queues the deliveries of a stored event to every webhook that subscribes to its
    /// kind, and marks it fanned out, in one transaction (so a replica that stops in
    /// between loses nothing: [`App::fan_out_stragglers`] finds it). An event another
    /// replica fanned out already is left alone.
    pub(super) async fn enqueue_webhooks(&self, event: &Event) {
        let Some(deliveries) = self.deliveries_of(event).await else {
            return;
        };
        match self.store.fan_out_event(&event.id, &deliveries).await {
            Ok(Some(queued)) if queued > 0 => {
                tracing::debug!(event_id = %event.id, kind = %event.kind, queued, "webhook deliveries queued");
                self.webhook_wake.notify_one();
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(event_id = %event.id, kind = %event.kind, error = %ErrorChain(&error), "cannot queue webhook deliveries now; the sweep tries again");
            }
        }
    }

    /// Queues the deliveries of an event that could not be stored (there is nothing to
    /// mark; a later failure loses them).
    pub(super) async fn enqueue_unstored(&self, event: &Event) {
        let Some(deliveries) = self.deliveries_of(event).await else {
            return;
        };
        match self.store.enqueue_deliveries(&deliveries).await {
            Ok(queued) if queued > 0 => self.webhook_wake.notify_one(),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(event_id = %event.id, kind = %event.kind, error = %ErrorChain(&error), "cannot queue webhook deliveries; the event is not delivered");
            }
        }
    }

    /// The deliveries an event makes: one per webhook subscribing to its kind. `None`
    /// when the webhooks cannot be read now.
    async fn deliveries_of(&self, event: &Event) -> Option<Vec<NewDelivery>> {
        let webhooks = match self.store.list_webhooks().await {
            Ok(webhooks) => webhooks,
            Err(error) => {
                tracing::warn!(event_id = %event.id, kind = %event.kind, error = %ErrorChain(&error), "cannot read webhooks now; the sweep tries again");
                return None;
            }
        };
        Some(deliveries_for(event, &webhooks))
    }

    /// Fans out events stored more than [`FAN_OUT_GRACE`] ago and never fanned out: the
    /// replica that stored one stopped before it queued the deliveries, or could not
    /// read the webhooks then.
    pub async fn fan_out_stragglers(&self) {
        let before = now_ms() - i64::try_from(FAN_OUT_GRACE.as_millis()).unwrap_or(0);
        match self.store.unfanned_events(before, 100).await {
            Ok(events) => {
                for event in events {
                    tracing::info!(event_id = %event.id, kind = %event.kind, "fanning out an event its replica left");
                    self.enqueue_webhooks(&event).await;
                }
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "cannot list events to fan out; will retry");
            }
        }
    }

    /// Emits `agent.unreachable` once for each agent that turned unreachable (three
    /// heartbeat intervals of silence, plus the heartbeat flush interval so that a late
    /// batch write does not make an outage; or a session lost without a goodbye one
    /// interval ago, with nothing heard since) since it was last seen.
    pub async fn announce_unreachable_agents(&self) -> Result<(), AppError> {
        let now = now_ms();
        let flush_ms = i64::try_from(self.config.heartbeat_flush_interval_ms).unwrap_or(0);
        let silent_since = now
            .saturating_sub(self.config.heartbeat_interval_ms() * MISSED_HEARTBEATS_UNREACHABLE)
            .saturating_sub(flush_ms);
        let lost_before =
            now.saturating_sub(self.config.heartbeat_interval_ms() * LOST_SESSION_GRACE_INTERVALS);
        for agent in self
            .store
            .mark_unreachable_agents(silent_since, lost_before, now)
            .await?
        {
            let last_seen = agent
                .last_seen_at_ms
                .map_or_else(|| "never".to_owned(), format_utc_ms);
            tracing::warn!(agent_id = %agent.id, agent = %agent.name, %last_seen, "agent unreachable");
            self.emit(NewEvent {
                kind: EventKind::AgentUnreachable,
                environment: None,
                release: None,
                subject: Some(agent.name.clone()),
                message: format!(
                    "agent {} is unreachable: not heard from since {last_seen}",
                    agent.name
                ),
            })
            .await;
        }
        Ok(())
    }

    fn retry_policy(&self) -> RetryPolicy {
        let config = &self.config;
        RetryPolicy {
            initial_ms: i64::try_from(config.webhook_retry_initial_ms).unwrap_or(i64::MAX),
            max_ms: i64::try_from(config.webhook_retry_max_ms).unwrap_or(i64::MAX),
            give_up_after_ms: i64::try_from(config.webhook_give_up_after_seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        }
    }

    /// Sends every due delivery, in batches, until none is left or `shutdown`; then
    /// what is claimed but not attempted is let go for any replica to send.
    async fn send_due_webhooks(
        &self,
        client: &reqwest::Client,
        shutdown: &CancellationToken,
    ) -> Result<(), AppError> {
        let lease_ms = i64::try_from(self.config.webhook_timeout_seconds)
            .unwrap_or(i64::MAX / 2_000)
            .saturating_mul(1000)
            .saturating_add(LEASE_MARGIN_MS);
        loop {
            let now = now_ms();
            let lease_until_ms = now.saturating_add(lease_ms);
            let claimed = self
                .store
                .claim_deliveries(now, lease_until_ms, CLAIM_BATCH as i64)
                .await?;
            if claimed.is_empty() {
                return Ok(());
            }
            let more = claimed.len() >= CLAIM_BATCH;
            let claims: Vec<(String, i64)> = claimed
                .iter()
                .map(|delivery| (delivery.id.clone(), lease_until_ms))
                .collect();
            let mut hooks: HashMap<String, Option<Arc<Webhook>>> = HashMap::new();
            for delivery in &claimed {
                if !hooks.contains_key(&delivery.webhook_id) {
                    let hook = match self.store.get_webhook(&delivery.webhook_id).await {
                        Ok(hook) => Some(Arc::new(hook)),
                        // Deleted meanwhile, and its deliveries with it.
                        Err(error) if error.is_not_found() => None,
                        Err(error) => return Err(error.into()),
                    };
                    hooks.insert(delivery.webhook_id.clone(), hook);
                }
            }
            let attempts = futures::future::join_all(claimed.into_iter().filter_map(|delivery| {
                let hook = hooks.get(&delivery.webhook_id).cloned().flatten()?;
                Some(self.attempt(client, hook, delivery, lease_until_ms))
            }));
            tokio::select! {
                _ = attempts => {}
                () = shutdown.cancelled() => {
                    // Attempts already recorded no longer carry this lease and stay as
                    // they are.
                    self.store.release_deliveries(&claims).await?;
                    return Ok(());
                }
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// One attempt at one claimed delivery, recorded.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        webhook: Arc<Webhook>,
        delivery: WebhookDelivery,
        lease_until_ms: i64,
    ) {
        let host = reqwest::Url::parse(&webhook.url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default();
        let sent = match self.secrets.open(&webhook.secret_sealed) {
            Ok(secret) => {
                let signature = webhook_signature(&secret, delivery.payload.as_bytes());
                client
                    .post(&webhook.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("X-Stella-Event", &delivery.event)
                    .header("X-Stella-Delivery", &delivery.id)
                    .header("X-Stella-Signature", signature)
                    .body(delivery.payload.clone())
                    .send()
                    .await
                    .map_err(|error| {
                        describe_send_error(&error, self.config.webhook_timeout_seconds)
                    })
            }
            Err(error) => {
                tracing::error!(webhook_id = %webhook.id, error = %ErrorChain(&error), "cannot unseal a webhook secret");
                Err(
                    "the webhook's secret cannot be unsealed (was the secrets key replaced?)"
                        .to_owned(),
                )
            }
        };
        let now = now_ms();
        let outcome = match sent {
            Ok(response) if response.status().is_success() => DeliveryAttempt::Delivered {
                status: i64::from(response.status().as_u16()),
                at_ms: now,
            },
            Ok(response) => {
                let status = response.status();
                let error = match status.canonical_reason() {
                    Some(reason) => format!("the receiver answered {} {reason}", status.as_u16()),
                    None => format!("the receiver answered {}", status.as_u16()),
                };
                self.retry_policy().after_failure(
                    &delivery,
                    Some(i64::from(status.as_u16())),
                    error,
                    now,
                    &mut rand::thread_rng(),
                )
            }
            Err(error) => self.retry_policy().after_failure(
                &delivery,
                None,
                truncate(error, MAX_ERROR_LEN),
                now,
                &mut rand::thread_rng(),
            ),
        };
        let attempt = delivery.attempts + 1;
        match &outcome {
            DeliveryAttempt::Delivered { status, .. } => {
                tracing::info!(delivery_id = %delivery.id, webhook_id = %webhook.id, event = %delivery.event, %host, status, attempt, "webhook delivered");
            }
            DeliveryAttempt::Retry {
                error,
                next_attempt_at_ms,
                ..
            } => {
                tracing::warn!(delivery_id = %delivery.id, webhook_id = %webhook.id, event = %delivery.event, %host, attempt, %error, next_attempt_at = %format_utc_ms(*next_attempt_at_ms), "webhook delivery failed; will retry");
            }
            DeliveryAttempt::GiveUp { error, .. } => {
                tracing::error!(delivery_id = %delivery.id, webhook_id = %webhook.id, event = %delivery.event, %host, attempt, %error, "webhook delivery failed for good: its retry period is over");
            }
        }
        crate::metrics::Metrics::count(
            &self.metrics.webhook_deliveries,
            match &outcome {
                DeliveryAttempt::Delivered { .. } => "delivered",
                DeliveryAttempt::Retry { .. } => "retry",
                DeliveryAttempt::GiveUp { .. } => "failed",
            },
        );
        match self
            .store
            .record_delivery_attempt(&delivery.id, lease_until_ms, &outcome)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(delivery_id = %delivery.id, "webhook delivery was taken over or deleted while being sent; its attempt is not recorded");
            }
            Err(error) => {
                // The lease runs out and the delivery is sent again: receivers drop
                // repeats by `X-Stella-Delivery`.
                tracing::warn!(delivery_id = %delivery.id, error = %ErrorChain(&error), "cannot record a webhook delivery attempt");
            }
        }
    }
}

/// How long an event may wait for its own replica to fan it out before the sweep does.
const FAN_OUT_GRACE: Duration = Duration::from_secs(2);
/// How often the sweep looks for events left unfanned.
const FAN_OUT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Sends due webhook deliveries until `shutdown`: woken by every queued delivery and
/// every second; also announces agents that turned unreachable, every heartbeat
/// interval once the server has run long enough for connected agents to be heard.
pub async fn run_webhook_sender(app: Arc<App>, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(app.config.webhook_timeout_seconds))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "cannot build the webhook client; webhooks are not sent");
            return;
        }
    };
    let started = Instant::now();
    let heartbeat = Duration::from_secs(u64::from(app.config.heartbeat_interval_seconds));
    // Agents reconnect to a replica that just started within a few heartbeats; before
    // that, their last-seen times say nothing about an outage.
    let unreachable_grace =
        heartbeat * 3 + Duration::from_millis(app.config.heartbeat_flush_interval_ms);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut agents = tokio::time::interval(heartbeat);
    agents.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(FAN_OUT_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = app.webhook_wake.notified() => {}
            _ = poll.tick() => {}
            _ = sweep.tick() => app.fan_out_stragglers().await,
            _ = agents.tick() => {
                if started.elapsed() >= unreachable_grace {
                    if let Err(error) = app.announce_unreachable_agents().await {
                        tracing::warn!(%error, "unreachable agent check failed; will retry");
                    }
                }
                continue;
            }
        }
        if let Err(error) = app.send_due_webhooks(&client, &shutdown).await {
            tracing::warn!(%error, "webhook sending failed; will retry");
        }
    }
}

/// A URL webhooks may be sent to: absolute http or https with a host, without
/// credentials (receivers check the signature instead), at most 2048 bytes.
fn validate_url(url: &str) -> Result<String, AppError> {
    let invalid = |why: &str| {
        AppError::new(
            ErrorKind::InvalidArgument,
            "invalid_url",
            format!("invalid webhook url: {why}"),
        )
    };
    let url = url.trim();
    if url.len() > MAX_URL_LEN {
        return Err(invalid(&format!("longer than {MAX_URL_LEN} bytes")));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| invalid(&format!("`{url}` is not an absolute URL ({error})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "`{}` is not http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "credentials in the URL are not supported: receivers check the X-Stella-Signature header",
        ));
    }
    Ok(parsed.to_string())
}

/// Why a request got no response, without its URL (which may carry a token).
fn describe_send_error(error: &reqwest::Error, timeout_seconds: u64) -> String {
    if error.is_timeout() {
        return format!("no answer within {timeout_seconds} s");
    }
    let mut text = String::from(if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    // The chain below reqwest's own error: hyper's and the OS's words, no URL.
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The deliveries `event` makes: one per webhook of `webhooks` subscribing to its kind.
pub(super) fn deliveries_for(event: &Event, webhooks: &[Webhook]) -> Vec<NewDelivery> {
    let payload = webhook_payload(event);
    webhooks
        .iter()
        .filter(|webhook| webhook.subscribes(event.kind))
        .map(|webhook| NewDelivery {
            id: uuid::Uuid::now_v7().to_string(),
            webhook_id: webhook.id.clone(),
            event: event.kind.as_str().to_owned(),
            payload: payload.clone(),
            created_at_ms: now_ms(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_http_or_https_without_credentials() {
        assert_eq!(
            validate_url(" https://hooks.example.com/stella ").map_err(|e| e.message),
            Ok("https://hooks.example.com/stella".to_owned())
        );
        assert!(validate_url("http://127.0.0.1:9000").is_ok());
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "https://user:pw@example.com/",
            "http://",
            "",
        ] {
            let error = validate_url(bad).expect_err(bad);
            assert_eq!(error.code, "invalid_url", "{bad}");
        }
        assert!(validate_url(&format!("https://e.com/{}", "a".repeat(3000))).is_err());
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("é".repeat(10), 5), "éé…");
        assert_eq!(truncate("short".to_owned(), 10), "short");
    }
}
