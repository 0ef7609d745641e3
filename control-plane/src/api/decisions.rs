//! `/api/v1/decisions` and `/api/v1/keys`: signed decision records, their replay and
//! evidence packets, and the public keys that verify them.

use axum::extract::Path;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;

/// A decision record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    /// `sha256:` of the canonical decision.
    pub id: String,
    /// The promotion it settles.
    pub promotion_id: String,
    /// `allowed`, `blocked` or `rejected`.
    pub outcome: String,
    /// The decision record (its canonical JSON is what the id hashes).
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
    /// The inputs it follows from.
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
    /// The DSSE envelope around the in-toto statement, signed by the server.
    #[schema(value_type = Object)]
    pub envelope: serde_json::Value,
    /// The signing key's id.
    pub key_id: String,
    /// When it was made.
    pub created_at: String,
}

/// Shows a decision.
///
/// The record, its inputs and its signed envelope. The id may be given with or without
/// `sha256:`. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/decisions/{id}", tag = "decisions", operation_id = "getDecision",
    params(("id" = String, Path, description = "decision id (`sha256:…`)")),
    responses(
        (status = 200, description = "The decision", body = DecisionView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such decision (`unknown_decision`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_decision(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DecisionView>> {
    caller.require(Permission::Read)?;
    let record = app.decision(&id).await?;
    let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    Ok(Json(DecisionView {
        decision: parse(&record.decision_json),
        inputs: parse(&record.inputs_json),
        envelope: parse(&record.envelope_json),
        id: record.id,
        promotion_id: record.promotion_id,
        outcome: record.outcome,
        key_id: record.key_id,
        created_at: rfc3339(record.created_at_ms),
    }))
}

/// A replay's result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayView {
    /// The decision replayed.
    pub decision_id: String,
    /// Whether recomputing it from its stored inputs gave the same bytes.
    pub identical: bool,
    /// The recomputed decision's id.
    pub recomputed_id: String,
    /// Each differing field.
    pub differences: Vec<DifferenceView>,
}

/// A field that differs between the stored and the recomputed decision.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DifferenceView {
    /// JSON pointer.
    pub path: String,
    /// Stored value (absent: `null`).
    #[schema(value_type = Object)]
    pub old: Option<serde_json::Value>,
    /// Recomputed value.
    #[schema(value_type = Object)]
    pub new: Option<serde_json::Value>,
}

/// Replays a decision.
///
/// Recomputes it from its stored inputs (the evaluation time is one of them) and
/// reports whether the bytes are identical, or each differing field. Needs the viewer
/// role.
#[utoipa::path(get, path = "/api/v1/decisions/{id}/replay", tag = "decisions", operation_id = "replayDecision",
    params(("id" = String, Path, description = "decision id (`sha256:…`)")),
    responses(
        (status = 200, description = "The replay", body = ReplayView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such decision (`unknown_decision`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn replay_decision(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ReplayView>> {
    caller.require(Permission::Read)?;
    let replay = app.replay_decision(&id).await?;
    Ok(Json(ReplayView {
        decision_id: replay.decision_id,
        identical: replay.identical,
        recomputed_id: replay.recomputed_id,
        differences: replay
            .differences
            .into_iter()
            .map(|d| DifferenceView {
                path: d.path,
                old: d.old,
                new: d.new,
            })
            .collect(),
    }))
}

/// Exports a decision's evidence packet.
///
/// A deterministic `.tar.gz` (sorted entries, fixed times and owners): the decision,
/// its inputs and input documents, the signed envelope, the public key, the
/// deployment's results and stickers, and a manifest of every file's sha256. It
/// verifies with no server (`stella evidence verify`). Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/decisions/{id}/evidence", tag = "decisions", operation_id = "exportEvidence",
    params(("id" = String, Path, description = "decision id (`sha256:…`)")),
    responses(
        (status = 200, description = "The packet", content_type = "application/gzip", body = Vec<u8>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such decision (`unknown_decision`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn export_evidence(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let packet = app.evidence_packet(&id).await?;
    Ok(([(http::header::CONTENT_TYPE, "application/gzip")], packet))
}

/// A public key that verifies decisions and audit checkpoints.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// Lowercase hex SHA-256 of the raw Ed25519 public key.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// SubjectPublicKeyInfo PEM.
    pub public_key_pem: String,
    /// When a server first used it.
    pub created_at: String,
}

/// Lists the signing keys.
///
/// Every server replica's decision-signing key, by id. Open to every authenticated
/// caller.
#[utoipa::path(get, path = "/api/v1/keys", tag = "decisions", operation_id = "listKeys",
    responses(
        (status = 200, description = "The keys", body = Vec<KeyView>),
        (status = 401, description = "No valid token (`unauthenticated`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_keys(Scoped(app): Scoped, caller: Caller) -> ApiResult<Json<Vec<KeyView>>> {
    caller.require(Permission::Read)?;
    Ok(Json(
        app.store
            .list_signing_keys()
            .await?
            .into_iter()
            .map(|(key_id, public_key_pem, created_at_ms)| KeyView {
                key_id,
                algorithm: "ed25519".to_owned(),
                public_key_pem,
                created_at: rfc3339(created_at_ms),
            })
            .collect(),
    ))
}
