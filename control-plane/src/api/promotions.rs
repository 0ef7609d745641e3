//! `/api/v1/promotions`: promotion requests, their gates and approvals.

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::PromotionDetail;
use crate::domain::PromotionState;
use crate::error::AppError;

/// Body of a promotion request.
#[derive(Debug, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// Release name.
    pub release: String,
    /// Version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// An admin's reason to promote inside a freeze window; it goes into the decision
    /// and the audit log.
    #[serde(default)]
    pub break_glass: Option<String>,
}

/// One gate's result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GateView {
    /// `order`, `freeze`, `security`, `policy`, `approvals`.
    pub gate: String,
    /// `passed`, `failed`, `waiting`, `overridden`, `not_configured`.
    pub status: String,
    /// One line.
    pub reason: String,
    /// Further lines: findings, policy reasons, void approvals.
    pub details: Vec<String>,
}

/// An approval or rejection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    /// Who.
    pub user: String,
    /// `approved` or `rejected`.
    pub verdict: String,
    /// The plan hash it was given for.
    pub plan_hash: String,
    /// Whether it is bound to the promotion's current plan.
    pub current: bool,
    /// Their comment.
    pub comment: Option<String>,
    /// When.
    pub at: String,
}

/// A promotion and where it stands.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromotionView {
    /// Id.
    pub id: String,
    /// Release name.
    pub release: String,
    /// Version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// `awaiting_approval`, `blocked`, `rejected`, `deploying`, `deployed`, `failed`.
    pub state: String,
    /// Why it is where it is.
    pub message: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: String,
    /// The hash of the plan approvals are bound to.
    pub plan_hash: String,
    /// Each gate, as last evaluated.
    pub gates: Vec<GateView>,
    /// Approvals and rejections.
    pub approvals: Vec<ApprovalView>,
    /// The signed decision, once decided (allowed, blocked or rejected).
    pub decision_id: Option<String>,
    /// The deployment carrying it out, once allowed (with a promotion workflow: once its
    /// `builtin:promotion` step has made it).
    pub deployment_id: Option<String>,
    /// The environment's promotion workflow run carrying it out (TaskRunner run id, tenant
    /// `default`), when the environment names a workflow.
    pub run_id: Option<String>,
    /// An admin's break-glass: who and why.
    pub break_glass: Option<BreakGlassView>,
    /// Last change.
    pub updated_at: String,
}

/// Who broke the glass, and why.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BreakGlassView {
    /// The admin.
    pub by: String,
    /// Their reason.
    pub reason: String,
}

impl From<PromotionDetail> for PromotionView {
    fn from(detail: PromotionDetail) -> Self {
        let p = detail.promotion;
        PromotionView {
            approvals: detail
                .approvals
                .into_iter()
                .map(|a| ApprovalView {
                    current: a.plan_hash == p.plan_hash,
                    user: a.user,
                    verdict: a.verdict.to_string(),
                    plan_hash: a.plan_hash,
                    comment: a.comment,
                    at: rfc3339(a.at_ms),
                })
                .collect(),
            gates: detail
                .gates
                .into_iter()
                .map(|g| GateView {
                    gate: g.gate,
                    status: serde_json::to_value(g.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    reason: g.reason,
                    details: g.details,
                })
                .collect(),
            id: p.id,
            release: p.release,
            version: p.version,
            environment: p.environment,
            state: p.state.to_string(),
            message: p.message,
            requested_by: p.requested_by,
            requested_at: rfc3339(p.requested_at_ms),
            plan_hash: p.plan_hash,
            decision_id: p.decision_id,
            deployment_id: p.deployment_id,
            run_id: p.run_id,
            break_glass: p
                .break_glass
                .map(|(by, reason)| BreakGlassView { by, reason }),
            updated_at: rfc3339(p.updated_at_ms),
        }
    }
}

/// Requests a promotion.
///
/// Evaluates the environment's gates at once: promotion order, freeze windows, the
/// security verdict of every image, the Rego policy, approvals. An allowed decision is
/// signed and creates the deployment (`deploying`); a failed gate gives a signed
/// `blocked` decision; missing approvals leave it `awaiting_approval`. All three are
/// 201: the promotion exists and its state says what happened. Needs the operator role;
/// `break_glass` needs admin.
#[utoipa::path(post, path = "/api/v1/promotions", tag = "promotions", operation_id = "promoteRelease",
    request_body = Promote,
    responses(
        (status = 201, description = "The promotion: deploying, blocked or awaiting approval", body = PromotionView),
        (status = 400, description = "An empty break-glass reason (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`), or breaks the glass without being admin (`break_glass_forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such release or environment (`unknown_release`, `unknown_environment`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment to this environment is in progress (`deployment_in_progress`)", body = ErrorEnvelope),
        (status = 422, description = "The environment has no targets (`no_targets`), a target's agent is revoked (`agent_revoked`), or a stored input cannot be read (`undecidable`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn promote(
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<Promote>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<PromotionView>)> {
    let ApiJson(body) = match caller.require(Permission::Operate) {
        Ok(()) => body?,
        // A role narrowed to the environment may promote into it: the body says which.
        Err(refused) => match body {
            Ok(body)
                if caller
                    .require_in(Permission::Operate, &body.0.environment)
                    .is_ok() =>
            {
                body
            }
            _ => return Err(refused),
        },
    };
    let detail = app
        .promote(
            &body.release,
            &body.version,
            &body.environment,
            &caller.0,
            body.break_glass,
        )
        .await?;
    Ok((http::StatusCode::CREATED, Json(detail.into())))
}

/// Filter of promotion lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PromotionFilter {
    /// Environment name.
    pub environment: Option<String>,
    /// State: `awaiting_approval`, `blocked`, `rejected`, `deploying`, `deployed`, `failed`.
    pub state: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<i64>,
}

/// Lists promotions.
///
/// Newest first, with their gates and approvals. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/promotions", tag = "promotions", operation_id = "listPromotions",
    params(PromotionFilter),
    responses(
        (status = 200, description = "The promotions", body = Vec<PromotionView>),
        (status = 400, description = "An unknown state (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_promotions(
    Scoped(app): Scoped,
    caller: Caller,
    filter: Result<ApiQuery<PromotionFilter>, ApiError>,
) -> ApiResult<Json<Vec<PromotionView>>> {
    caller.require(Permission::Read)?;
    let ApiQuery(filter) = filter?;
    let state = filter
        .state
        .as_deref()
        .map(|s| {
            s.parse::<PromotionState>()
                .map_err(|e: crate::domain::Invalid| AppError::invalid(e.0))
        })
        .transpose()?;
    if let Some(environment) = &filter.environment {
        app.environment(environment).await?;
    }
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
    let promotions = app
        .store
        .list_promotions(filter.environment.as_deref(), state, limit)
        .await?;
    let mut views = Vec::with_capacity(promotions.len());
    for promotion in promotions {
        views.push(app.promotion_detail(&promotion.id).await?.into());
    }
    Ok(Json(views))
}

/// Shows a promotion.
///
/// Its state, every gate's result, approvals (and whether each is bound to the current
/// plan) and, once decided, the decision. The id may be a unique prefix of at least 8
/// characters. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/promotions/{id}", tag = "promotions", operation_id = "getPromotion",
    params(("id" = String, Path, description = "promotion id or unique prefix")),
    responses(
        (status = 200, description = "The promotion", body = PromotionView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such promotion (`unknown_promotion`)", body = ErrorEnvelope),
        (status = 409, description = "The prefix matches several promotions (`ambiguous_id`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_promotion(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PromotionView>> {
    caller.require(Permission::Read)?;
    Ok(Json(app.promotion_detail(&id).await?.into()))
}

/// Body of an approval or rejection.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// A comment, kept with the answer and in the decision.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Approves a promotion.
///
/// Bound to the promotion's current plan hash. The requester can never approve their
/// own promotion (admins neither); one user counts once. The last approval needed
/// settles the promotion. Needs the approver role (or admin).
#[utoipa::path(post, path = "/api/v1/promotions/{id}/approve", tag = "promotions", operation_id = "approvePromotion",
    request_body = Answer,
    params(("id" = String, Path, description = "promotion id or unique prefix")),
    responses(
        (status = 200, description = "The promotion after the approval", body = PromotionView),
        (status = 403, description = "Not an approver (`forbidden`), or the requester (`self_approval`)", body = ErrorEnvelope),
        (status = 404, description = "No such promotion (`unknown_promotion`)", body = ErrorEnvelope),
        (status = 409, description = "Already answered by this user for this plan, and not expired (`already_answered`), no longer waiting (`promotion_settled`), or allowed while a deployment is in progress (`deployment_in_progress`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn approve_promotion(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<ApiJson<Answer>, ApiError>,
) -> ApiResult<Json<PromotionView>> {
    require_for_promotion(&app, &caller, &id).await?;
    let ApiJson(body) = body?;
    Ok(Json(
        app.approve_promotion(&id, &caller.0, body.comment)
            .await?
            .into(),
    ))
}

/// Rejects a promotion.
///
/// Ends it with a signed `rejected` decision. Needs the approver role (or admin).
#[utoipa::path(post, path = "/api/v1/promotions/{id}/reject", tag = "promotions", operation_id = "rejectPromotion",
    request_body = Answer,
    params(("id" = String, Path, description = "promotion id or unique prefix")),
    responses(
        (status = 200, description = "The rejected promotion", body = PromotionView),
        (status = 403, description = "Not an approver (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such promotion (`unknown_promotion`)", body = ErrorEnvelope),
        (status = 409, description = "Already answered (`already_answered`) or no longer waiting (`promotion_settled`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn reject_promotion(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<ApiJson<Answer>, ApiError>,
) -> ApiResult<Json<PromotionView>> {
    require_for_promotion(&app, &caller, &id).await?;
    let ApiJson(body) = body?;
    Ok(Json(
        app.reject_promotion(&id, &caller.0, body.comment)
            .await?
            .into(),
    ))
}

/// 403 unless the caller may approve in the promotion's tenant, or holds the approver
/// role narrowed to the promotion's environment.
async fn require_for_promotion(
    app: &crate::app::App,
    caller: &Caller,
    id: &str,
) -> Result<(), ApiError> {
    let refused = match caller.require(Permission::Approve) {
        Ok(()) => return Ok(()),
        Err(refused) => refused,
    };
    if caller.2.narrowed.is_empty() {
        return Err(refused);
    }
    match app.find_promotion(id).await {
        Ok(promotion) => caller.require_in(Permission::Approve, &promotion.environment),
        Err(_) => Err(refused),
    }
}
