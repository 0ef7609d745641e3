//! `/api/v1/webhooks` and `/api/v1/events`: webhooks, their deliveries, and the
//! events they are sent.

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::domain::{DeliveryState, Event, Webhook, WebhookDelivery};

/// A webhook (never with its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// Id.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Event names it receives, or `["*"]` for every kind.
    pub events: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: String,
}

impl From<Webhook> for WebhookView {
    fn from(webhook: Webhook) -> Self {
        WebhookView {
            id: webhook.id,
            url: webhook.url,
            events: webhook.events,
            created_by: webhook.created_by,
            created_at: rfc3339(webhook.created_at_ms),
        }
    }
}

/// A webhook as created, with its secret: shown this once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhookView {
    /// Id.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Event names it receives, or `["*"]` for every kind.
    pub events: Vec<String>,
    /// The signing secret (64 hex digits): `X-Stella-Signature` is
    /// `sha256=<hex HMAC-SHA256 of the body keyed with this text>`. Stored sealed and
    /// never shown again.
    pub secret: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: String,
}

impl std::fmt::Debug for CreatedWebhookView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhookView")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Body of a webhook creation.
#[derive(Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An `http` or `https` URL, without credentials.
    pub url: String,
    /// Event names (`promotion.awaiting_approval`, `promotion.approved`,
    /// `promotion.rejected`, `promotion.blocked`, `promotion.deployed`,
    /// `promotion.failed`, `drift.detected`, `drift.resolved`, `verdict.changed`,
    /// `agent.unreachable`), or `*` for every kind.
    pub events: Vec<String>,
}

impl std::fmt::Debug for CreateWebhook {
    // The URL may carry a token in its path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateWebhook")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// A delivery of an event to a webhook.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// Id; the `X-Stella-Delivery` header, the same on every attempt.
    pub id: String,
    /// Event name.
    pub event: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// HTTP status of the last attempt, if a response came.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<String>,
    /// When it was queued.
    pub created_at: String,
    /// When the receiver took it.
    pub delivered_at: Option<String>,
}

impl From<WebhookDelivery> for DeliveryView {
    fn from(delivery: WebhookDelivery) -> Self {
        DeliveryView {
            next_attempt_at: (delivery.state == DeliveryState::Pending)
                .then(|| rfc3339(delivery.next_attempt_at_ms)),
            id: delivery.id,
            event: delivery.event,
            state: delivery.state.to_string(),
            attempts: delivery.attempts,
            last_status: delivery.last_status,
            last_error: delivery.last_error,
            created_at: rfc3339(delivery.created_at_ms),
            delivered_at: delivery.delivered_at_ms.map(rfc3339),
        }
    }
}

/// Page size of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    /// At most this many (default 50, at most 1000).
    pub limit: Option<i64>,
}

/// Creates a webhook.
///
/// The URL receives a signed `POST` for every event of the kinds named, from an outbox
/// that survives restarts and retries with backoff for 24 hours. The response holds the
/// signing secret, shown only this once. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", operation_id = "createWebhook",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The webhook with its secret", body = CreatedWebhookView),
        (status = 400, description = "The body is malformed JSON (`malformed_json`) or does not match the schema (`invalid_body`), the URL is not http(s) or carries credentials (`invalid_url`), or an event name is unknown (`unknown_event`, the message lists the valid ones)", body = ErrorEnvelope),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_webhook(
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<CreateWebhook>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<CreatedWebhookView>)> {
    caller.require(Permission::Administer)?;
    let ApiJson(body) = body?;
    let created = app
        .create_webhook(&body.url, &body.events, &caller.0)
        .await?;
    let webhook = created.webhook;
    Ok((
        http::StatusCode::CREATED,
        Json(CreatedWebhookView {
            id: webhook.id,
            url: webhook.url,
            events: webhook.events,
            secret: created.secret,
            created_by: webhook.created_by,
            created_at: rfc3339(webhook.created_at_ms),
        }),
    ))
}

/// Lists webhooks.
///
/// Every webhook, oldest first, never with its secret. Needs the admin role.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", operation_id = "listWebhooks",
    responses(
        (status = 200, description = "Every webhook", body = Vec<WebhookView>),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_webhooks(
    Scoped(app): Scoped,
    caller: Caller,
) -> ApiResult<Json<Vec<WebhookView>>> {
    caller.require(Permission::Administer)?;
    Ok(Json(
        app.store
            .list_webhooks()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Deletes a webhook.
///
/// With its deliveries: what is not delivered yet never will be. Needs the admin role.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", operation_id = "deleteWebhook",
    params(("id" = String, Path, description = "webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such webhook (`unknown_webhook`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_webhook(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Administer)?;
    app.delete_webhook(&id, &caller.0).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// Lists a webhook's deliveries.
///
/// The newest first, at most `limit` (default 50, at most 1000): where each stands,
/// its attempts, the last status or error, and when it is tried next. Needs the admin
/// role.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "listWebhookDeliveries",
    params(("id" = String, Path, description = "webhook id"), DeliveryFilter),
    responses(
        (status = 200, description = "The deliveries, newest first", body = Vec<DeliveryView>),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such webhook (`unknown_webhook`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
    filter: Result<ApiQuery<DeliveryFilter>, ApiError>,
) -> ApiResult<Json<Vec<DeliveryView>>> {
    caller.require(Permission::Administer)?;
    let ApiQuery(filter) = filter?;
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
    let deliveries = app.webhook_deliveries(&id, limit).await?;
    Ok(Json(deliveries.into_iter().map(Into::into).collect()))
}

/// An event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Id.
    pub id: String,
    /// What happened: `promotion.awaiting_approval`, `drift.detected`, ….
    pub kind: String,
    /// The environment concerned.
    pub environment: Option<String>,
    /// The release concerned.
    pub release: Option<ReleaseRef>,
    /// The object concerned: a promotion id, a target, an agent.
    pub subject: Option<String>,
    /// One line for a person.
    pub message: String,
    /// When.
    pub at: String,
}

/// A release by name and version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReleaseRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        EventView {
            id: event.id,
            kind: event.kind.to_string(),
            environment: event.environment,
            release: event
                .release
                .map(|(name, version)| ReleaseRef { name, version }),
            subject: event.subject,
            message: event.message,
            at: rfc3339(event.at_ms),
        }
    }
}

/// Event filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// Environment name.
    pub environment: Option<String>,
    /// Release as `NAME@VERSION`.
    pub release: Option<String>,
    /// Event kind, e.g. `drift.detected`.
    pub kind: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<i64>,
}

/// Lists events.
///
/// What operators are told about, newest first: of an environment, a release, a kind,
/// or all; at most `limit` (default 50, at most 1000). Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", operation_id = "listEvents",
    params(EventFilter),
    responses(
        (status = 200, description = "The events, newest first", body = Vec<EventView>),
        (status = 400, description = "The query string does not match its parameters (`invalid_query`), the release is not `NAME@VERSION` (`invalid_argument`) or the kind is unknown (`unknown_event`)", body = ErrorEnvelope),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_events(
    Scoped(app): Scoped,
    caller: Caller,
    filter: Result<ApiQuery<EventFilter>, ApiError>,
) -> ApiResult<Json<Vec<EventView>>> {
    caller.require(Permission::Read)?;
    let ApiQuery(filter) = filter?;
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
    let events = app
        .list_events(
            filter.environment.as_deref(),
            filter.release.as_deref(),
            filter.kind.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(events.into_iter().map(Into::into).collect()))
}
