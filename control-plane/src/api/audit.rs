//! The audit log at the HTTP edge: the middleware that appends every mutating request
//! under `/api/v1/` once its handler ran, and `/api/v1/audit` to read the chain and its
//! checkpoints.
//!
//! The body is read here, within the route's own limit (`api_max_scan_bytes` for scan
//! imports, `api_max_body_bytes` for the rest) and `api_body_read_timeout_ms`, so a body
//! too large or too slow is refused (413, 408) before the handler, and authentication,
//! run.
//!
//! What an entry records of a request: the actor (the user the [`Caller`] extractor
//! authenticated, else `anonymous`), the action (`METHOD route-template`, e.g. `POST
//! /api/v1/promotions/{id}/approve`), the object (the request's path, never its query
//! string), the `sha256:` digest of the body (never the body, which may hold secrets;
//! `none` when the body was refused before it was read whole) and the outcome (the
//! response's status). Refused requests (401, 403, every 4xx) are recorded too.
//!
//! Break-glass: a `POST /api/v1/promotions` whose body has a `break_glass` reason
//! records it in the object, `/api/v1/promotions break-glass by <actor>: <reason>`,
//! whatever the outcome, so that the reason is in the log even when the promotion was
//! refused. The signed decision holds the same person and reason.
//!
//! The gateway (agents over gRPC) is not audited here.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use stella_decision::audit::{AuditEntry, Checkpoint};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::ApiState;
use super::tenancy::Scoped;
use crate::domain::TenantId;

/// The actor of a request that authenticated no one.
pub const ANONYMOUS: &str = "anonymous";

/// `request_digest` of a request whose body was refused before it was read whole.
pub const UNREAD_BODY: &str = "none";

/// Longest object recorded, in characters; a longer path or reason is cut.
const MAX_OBJECT_CHARS: usize = 1024;

/// Where the [`Caller`] extractor leaves the authenticated user's name for the audit
/// middleware, so that a request is authenticated once.
/// With it, the tenant the caller was let into: the entry goes to that tenant's chain
/// (to `default`'s when the request reached no tenant).
#[derive(Clone, Debug, Default)]
pub struct AuditActor(Arc<OnceLock<String>>, Arc<OnceLock<TenantId>>);

impl AuditActor {
    /// Records the authenticated user (the first one recorded stays).
    pub fn record(&self, name: &str) {
        let _ = self.0.set(name.to_owned());
    }

    /// Records the tenant the caller acts in (the first one recorded stays).
    pub fn record_tenant(&self, tenant: &TenantId) {
        let _ = self.1.set(tenant.clone());
    }

    fn name(&self) -> &str {
        self.0.get().map_or(ANONYMOUS, String::as_str)
    }
}

/// Appends every mutating request under `/api/v1/` and `/v1/task-runner/` to the audit log after its handler
/// ran. The body is read here, within the API's size and time limits (refusing it as
/// the handler would), digested, and handed on.
pub async fn record(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let app = state.app.clone();
    let mutating = matches!(
        *request.method(),
        http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE
    );
    let path = request.uri().path();
    let audited = path.starts_with("/api/v1/")
        || path.starts_with("/v1/task-runner/")
        || path.starts_with("/console/");
    if !mutating || !audited {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(unmatched)", MatchedPath::as_str);
    let action = format!("{} {route}", request.method());
    let path = request.uri().path().to_owned();
    let (limit, limit_key) = body_limit(route, &app.config);
    let (mut parts, body) = request.into_parts();
    let read = super::envelope::read_limited(&parts.headers, body, limit, limit_key, &app.config);
    let (response, actor, digest, break_glass) = match read.await {
        Ok(bytes) => {
            let actor = AuditActor::default();
            parts.extensions.insert(actor.clone());
            let digest = stella_decision::sha256_id(&bytes);
            let break_glass = (action == "POST /api/v1/promotions")
                .then(|| break_glass_reason(&bytes))
                .flatten();
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            (response, actor, digest, break_glass)
        }
        Err(refusal) => (
            refusal.into_response(),
            AuditActor::default(),
            UNREAD_BODY.to_owned(),
            None,
        ),
    };
    let tenant = actor.1.get().cloned();
    let actor = actor.name().to_owned();
    let app = match tenant {
        Some(tenant) => state.tenants.get(&tenant).await.unwrap_or(app),
        None => app,
    };
    let object = match break_glass {
        Some(reason) => format!("{path} break-glass by {actor}: {reason}"),
        None => path,
    };
    let object = cut(&object, MAX_OBJECT_CHARS);
    let outcome = response.status().as_u16().to_string();
    // On a task of its own, so that the entry is written even if this request's future
    // is dropped now (its client gone, the server's grace period over); the response
    // still waits for it, so a client that got an answer finds its call in the log.
    let append = tokio::spawn(
        async move { app.audit(&actor, &action, &object, &digest, &outcome).await }
            .instrument(tracing::Span::current()),
    );
    if let Err(error) = append.await {
        tracing::error!(%error, "the audit append task failed");
    }
    response
}

/// The largest body a route takes, and the setting that says so: the same limit its
/// handler enforces, so the audit middleware refuses nothing the handler would take.
fn body_limit(route: &str, config: &crate::config::ServerConfig) -> (usize, &'static str) {
    match route {
        "/api/v1/scans" => (config.api_max_scan_bytes, "api_max_scan_bytes"),
        _ => (config.api_max_body_bytes, "api_max_body_bytes"),
    }
}

/// The `break_glass` reason of a promotion request's body, on one line; `None` when the
/// body has none (or is not the JSON the handler will refuse anyway).
fn break_glass_reason(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        break_glass: Option<String>,
    }
    let reason = serde_json::from_slice::<Probe>(body).ok()?.break_glass?;
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    (!reason.is_empty()).then_some(reason)
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// One entry of the audit chain, as stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When, in UTC milliseconds: the value the hash covers.
    pub at_ms: i64,
    /// When, as RFC 3339.
    pub at: String,
    /// The authenticated user, or `anonymous`.
    pub actor: String,
    /// `METHOD route-template`, e.g. `POST /api/v1/promotions/{id}/approve`.
    pub action: String,
    /// The request's path; with a break-glass promotion, `… break-glass by <user>:
    /// <reason>`.
    pub object: String,
    /// `sha256:` of the request body, or `none` when it was refused unread.
    pub request_digest: String,
    /// The response's status code.
    pub outcome: String,
    /// The hash of the entry before (`sha256:` and 64 zeros for the first).
    pub prev_hash: String,
    /// `sha256:` of the entry's canonical JSON without this field.
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(entry: AuditEntry) -> Self {
        AuditEntryView {
            seq: entry.seq,
            at_ms: entry.at_ms,
            at: rfc3339(entry.at_ms),
            actor: entry.actor,
            action: entry.action,
            object: entry.object,
            request_digest: entry.request_digest,
            outcome: entry.outcome,
            prev_hash: entry.prev_hash,
            hash: entry.hash,
        }
    }
}

/// A signed statement that entry `seq` had hash `hash`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckpointView {
    /// The entry signed.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// When it was signed, in UTC milliseconds: the value the signature covers.
    pub at_ms: i64,
    /// When it was signed, as RFC 3339.
    pub at: String,
    /// The signing key's id (see `/api/v1/keys`).
    pub key_id: String,
    /// Ed25519 signature, standard base64, over `stella.audit.checkpoint/v1\n` and the
    /// canonical JSON `{"at_ms":…,"hash":…,"seq":…}`.
    pub signature: String,
}

impl From<Checkpoint> for CheckpointView {
    fn from(checkpoint: Checkpoint) -> Self {
        CheckpointView {
            seq: checkpoint.seq,
            hash: checkpoint.hash,
            at_ms: checkpoint.at_ms,
            at: rfc3339(checkpoint.at_ms),
            key_id: checkpoint.key_id,
            signature: checkpoint.signature,
        }
    }
}

/// A page of the audit log or of its checkpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditPage {
    /// Only what has a seq above this (default 0: from the start).
    pub after: Option<i64>,
    /// At most this many (default 1000, at most 10000).
    pub limit: Option<i64>,
}

impl AuditPage {
    fn bounds(&self) -> (i64, i64) {
        (
            self.after.unwrap_or(0).max(0),
            self.limit.unwrap_or(1000).clamp(1, 10_000),
        )
    }
}

/// Lists the audit log.
///
/// Entries in seq order, after `after`, at most `limit` (default 1000, at most 10000):
/// every mutating API call with its actor, action, object, request digest and outcome,
/// each linked to the one before by its hash. Page through with `after` = the last seq
/// seen. Needs the admin role.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", operation_id = "listAuditLog",
    params(AuditPage),
    responses(
        (status = 200, description = "The entries, in seq order", body = Vec<AuditEntryView>),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_audit(
    Scoped(app): Scoped,
    caller: Caller,
    page: Result<ApiQuery<AuditPage>, ApiError>,
) -> ApiResult<Json<Vec<AuditEntryView>>> {
    caller.require(Permission::Administer)?;
    let ApiQuery(page) = page?;
    let (after, limit) = page.bounds();
    let entries = app.store.list_audit_entries(after, limit).await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}

/// Lists the audit checkpoints.
///
/// Signed checkpoints of the chain in seq order, after `after`, at most `limit`
/// (default 1000, at most 10000). Each is signed by the key of the replica that
/// appended the entry; the keys are at `/api/v1/keys`. Needs the admin role.
#[utoipa::path(get, path = "/api/v1/audit/checkpoints", tag = "audit", operation_id = "listAuditCheckpoints",
    params(AuditPage),
    responses(
        (status = 200, description = "The checkpoints, in seq order", body = Vec<CheckpointView>),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_audit_checkpoints(
    Scoped(app): Scoped,
    caller: Caller,
    page: Result<ApiQuery<AuditPage>, ApiError>,
) -> ApiResult<Json<Vec<CheckpointView>>> {
    caller.require(Permission::Administer)?;
    let ApiQuery(page) = page?;
    let (after, limit) = page.bounds();
    let checkpoints = app.store.list_audit_checkpoints(after, limit).await?;
    Ok(Json(checkpoints.into_iter().map(Into::into).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn break_glass_reason_is_found_on_one_line() {
        let body = br#"{"release":"web","version":"1","environment":"prod","break_glass":" fix\n  outage "}"#;
        assert_eq!(break_glass_reason(body).as_deref(), Some("fix outage"));
        assert_eq!(break_glass_reason(br#"{"release":"web"}"#), None);
        assert_eq!(break_glass_reason(br#"{"break_glass":"  "}"#), None);
        assert_eq!(break_glass_reason(br#"{"break_glass":5}"#), None);
        assert_eq!(break_glass_reason(b"not json"), None);
    }

    #[test]
    fn long_objects_are_cut() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
        assert_eq!(cut("ééé", 2), "éé…");
    }
}
