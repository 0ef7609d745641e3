//! `/api/v1/tokens`: the caller's API tokens (admins: anyone's) — list, create with a
//! name and an expiry, revoke one by one.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope};
use super::listener::ClientAddr;
use super::rfc3339;
use crate::app::{now_ms, App, TokenListing};
use crate::domain::ApiToken;

/// An API token as the API shows it (never the token itself).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Id (`tok_…`): what `DELETE /api/v1/tokens/{id}` takes.
    pub id: String,
    /// Its name (may be empty; `legacy` for tokens from before names existed).
    pub name: String,
    /// The user it authenticates as.
    pub user: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// When it stops working; absent for tokens without an expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Its last use (recorded at most once a minute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// When it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

impl From<ApiToken> for TokenInfo {
    fn from(token: ApiToken) -> Self {
        TokenInfo {
            state: token.state(now_ms()).as_str().to_owned(),
            id: token.id,
            name: token.name,
            user: token.user_name,
            created_at: rfc3339(token.created_at_ms),
            expires_at: token.expires_at_ms.map(rfc3339),
            last_used_at: token.last_used_at_ms.map(rfc3339),
            revoked_at: token.revoked_at_ms.map(rfc3339),
        }
    }
}

/// A new token, shown once, and what is stored of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The bearer token; only its hash is stored.
    pub token: String,
    /// The token's id, name and expiry.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// Body of token creation.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A name to tell it by (at most 64 characters).
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds; default `api_token_default_ttl_seconds`, at most
    /// `api_token_max_ttl_seconds`.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// Which tokens to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListTokensQuery {
    /// Another user's tokens (admins only).
    pub user: Option<String>,
    /// Every user's tokens (admins only).
    #[serde(default)]
    pub all: bool,
}

/// Lists API tokens.
///
/// The caller's own tokens, newest first, with name, expiry, last use and state;
/// admins may ask for one user's (`user`) or everyone's (`all=true`). Never a token's
/// secret. An OAuth2 client has no API tokens (`not_a_user`, 403).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", operation_id = "listTokens",
    params(ListTokensQuery),
    responses(
        (status = 200, description = "The tokens", body = Vec<TokenInfo>),
        (status = 403, description = "Another user's tokens without the admin role (`forbidden`), or the caller is an OAuth2 client (`not_a_user`)", body = ErrorEnvelope),
        (status = 404, description = "No such user (`unknown_user`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: Result<ApiQuery<ListTokensQuery>, ApiError>,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    refuse_clients(&caller)?;
    let ApiQuery(query) = query?;
    let listing = match (query.all, query.user) {
        (true, _) => TokenListing::All,
        (false, Some(user)) => TokenListing::OfUser(user),
        (false, None) => TokenListing::Own,
    };
    let tokens = app.list_api_tokens(&caller.principal(), listing).await?;
    Ok(Json(tokens.into_iter().map(TokenInfo::from).collect()))
}

/// Creates an API token for the caller.
///
/// Shown once: only its hash is stored. Rate-limited per client IP address
/// (`auth_rate_limit_per_minute`, `auth_rate_limit_burst`): 429 with `Retry-After`.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", operation_id = "createToken",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "The new token", body = CreatedToken),
        (status = 403, description = "The caller is an OAuth2 client (`not_a_user`)", body = ErrorEnvelope),
        (status = 429, description = "Too many token requests from this address (`rate_limited`); see `Retry-After`", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_token(
    State(app): State<Arc<App>>,
    addr: Option<Extension<ClientAddr>>,
    caller: Caller,
    body: Result<Option<ApiJson<CreateTokenRequest>>, ApiError>,
) -> Result<Response, Response> {
    if let Some(refusal) =
        super::auth::limit_by_ip(&app, addr.map(|Extension(a)| a), "token requests")
    {
        return Err(refusal);
    }
    refuse_clients(&caller).map_err(IntoResponse::into_response)?;
    let principal = caller.principal();
    let request = body
        .map_err(IntoResponse::into_response)?
        .map(|ApiJson(body)| body)
        .unwrap_or_default();
    issue(&app, &principal.user, request)
        .await
        .map_err(IntoResponse::into_response)
}

/// 403 (`not_a_user`) for an OAuth2 client, before its query or body is judged: API
/// tokens belong to users.
fn refuse_clients(caller: &Caller) -> Result<(), ApiError> {
    if let crate::auth::Credential::AccessToken { .. } = caller.1 {
        return Err(ApiError(crate::error::AppError::new(
            crate::error::ErrorKind::PermissionDenied,
            "not_a_user",
            "API tokens belong to users; an OAuth2 client gets access tokens at /oauth/token",
        )));
    }
    Ok(())
}

/// Issues a token for `user` as `request` asks: 201 with the token.
pub(super) async fn issue(
    app: &App,
    user: &crate::domain::User,
    request: CreateTokenRequest,
) -> ApiResult<Response> {
    let ttl = request.expires_in_seconds.map(Duration::from_secs);
    let name = request.name.unwrap_or_default();
    let (token, secret) = app.issue_token(user, &name, ttl).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(CreatedToken {
            token: secret,
            info: token.into(),
        }),
    )
        .into_response())
}

/// Revokes an API token.
///
/// One of the caller's own, or as an admin anyone's. It stops working at once on every
/// replica. Revoking a revoked token changes nothing.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "revokeToken",
    params(("id" = String, Path, description = "token id (`tok_…`)")),
    responses(
        (status = 200, description = "The revoked token", body = TokenInfo),
        (status = 403, description = "The caller is an OAuth2 client (`not_a_user`)", body = ErrorEnvelope),
        (status = 404, description = "No such token of the caller's (`unknown_token`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    let token = app.revoke_api_token(&caller.principal(), &id).await?;
    Ok(Json(token.into()))
}
