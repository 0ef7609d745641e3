//! The OAuth2 authorization server of machine clients: `POST /oauth/token` (client
//! credentials grant, RFC 6749 §4.4), the key set `/.well-known/jwks.json` (RFC 7517)
//! and the metadata `/.well-known/oauth-authorization-server` (RFC 8414).
//!
//! The token endpoint answers errors as RFC 6749 §5.2 says — `{"error":
//! "invalid_client", "error_description": …}` — not with the API's envelope, since
//! OAuth2 clients read that shape; every answer has `Cache-Control: no-store`. It is
//! rate-limited per client IP address and per client id (429 with `Retry-After`), and
//! every request is audited (actor: the client id it named, or `anonymous`; never a
//! digest of the body, which holds the secret).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Serialize;
use utoipa::ToSchema;

use super::envelope::Enveloped;
use super::listener::ClientAddr;
use crate::app::{App, OAuthError};
use crate::domain::Scope;

/// Largest token request body: a grant type, a scope list and client credentials.
const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// A signed JWT (RFC 9068): `typ` `at+jwt`, `iss`, `sub`, `aud`, `exp`, `iat`,
    /// `nbf`, `jti`, `client_id`, `scope`.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The scopes granted, space-separated.
    pub scope: String,
}

/// A token endpoint error (RFC 6749 §5.2).
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type`, `invalid_scope`,
    /// `server_error`, or `slow_down` (rate limited).
    pub error: String,
    /// What went wrong.
    pub error_description: String,
}

/// Issues an access token (client credentials grant).
///
/// `application/x-www-form-urlencoded` with `grant_type=client_credentials` and
/// optionally `scope` (space-separated; default: every scope of the client). The client
/// authenticates with HTTP Basic (`client_id:client_secret`, form-encoded as RFC 6749
/// §2.3.1 says) or with `client_id` and `client_secret` in the body, not both.
#[utoipa::path(post, path = "/oauth/token", tag = "oauth", operation_id = "oauthToken",
    request_body(content_type = "application/x-www-form-urlencoded", content = String,
        description = "`grant_type=client_credentials[&scope=…][&client_id=…&client_secret=…]`"),
    responses(
        (status = 200, description = "The access token", body = TokenResponse),
        (status = 400, description = "`invalid_request`, `unsupported_grant_type`, `invalid_scope`", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`: unknown client, wrong secret, revoked client", body = OAuthErrorBody),
        (status = 413, description = "The body is larger than 16 KiB (`invalid_request`)", body = OAuthErrorBody),
        (status = 429, description = "Too many requests from this address or for this client (`slow_down`); see `Retry-After`", body = OAuthErrorBody),
    ))]
pub async fn token(State(app): State<Arc<App>>, request: Request) -> Response {
    let addr = request.extensions().get::<ClientAddr>().copied();
    let ip = addr.map_or_else(|| "unknown".to_owned(), |addr| addr.0.to_string());
    let (client_id, response) = token_inner(&app, &ip, request).await;
    let status = response.status().as_u16();
    if status != 200 {
        let reason = match status {
            429 => "rate_limited",
            401 => "invalid_client",
            _ => "invalid_token_request",
        };
        app.metrics.auth_failure(reason);
    }
    let actor = client_id.map_or_else(
        || super::audit::ANONYMOUS.to_owned(),
        |id| format!("client:{id}"),
    );
    app.audit(
        &actor,
        "POST /oauth/token",
        "/oauth/token",
        super::audit::UNREAD_BODY,
        &status.to_string(),
    )
    .await;
    response
}

/// The answer, and the client id the request named (for the audit log).
async fn token_inner(app: &App, ip: &str, request: Request) -> (Option<String>, Response) {
    if let Err(wait) = app.identity.by_ip.check(&format!("ip:{ip}")) {
        crate::metrics::Metrics::count(&app.metrics.auth_rate_limited, "ip");
        return (None, slow_down(wait));
    }
    let (parts, body) = request.into_parts();
    let form = match read_form(app, &parts.headers, body).await {
        Ok(form) => form,
        Err(response) => return (None, response),
    };
    let basic = match basic_credentials(&parts.headers) {
        Ok(basic) => basic,
        Err(error) => return (None, oauth_error(&error)),
    };
    let field = |name: &str| {
        let mut values = form
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, v)| v.as_str());
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(OAuthError::InvalidRequest(format!(
                "`{name}` is given more than once"
            ))),
            (value, None) => Ok(value),
        }
    };
    let fields = (|| {
        Ok::<_, OAuthError>((
            field("grant_type")?,
            field("scope")?,
            field("client_id")?,
            field("client_secret")?,
        ))
    })();
    let (grant_type, scope, body_id, body_secret) = match fields {
        Ok(fields) => fields,
        Err(error) => return (None, oauth_error(&error)),
    };
    let credentials = match (basic, body_id, body_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method: HTTP Basic or the body, not both".to_owned(),
        )),
        (Some((id, secret)), None, None) => Ok((id, secret)),
        (None, Some(id), Some(secret)) => Ok((id.to_owned(), secret.to_owned())),
        (None, _, _) => Err(OAuthError::InvalidClient(
            "client authentication is missing: HTTP Basic, or client_id and client_secret in the body".to_owned(),
        )),
    };
    let (client_id, secret) = match credentials {
        Ok(credentials) => credentials,
        Err(error) => return (None, oauth_error(&error)),
    };
    let named = Some(client_id.chars().take(64).collect::<String>());
    if let Err(wait) = app.identity.by_client.check(&format!("client:{client_id}")) {
        crate::metrics::Metrics::count(&app.metrics.auth_rate_limited, "client");
        return (named, slow_down(wait));
    }
    match grant_type {
        Some("client_credentials") => {}
        Some(other) => {
            return (
                named,
                oauth_error(&OAuthError::UnsupportedGrantType(format!(
                    "grant type `{}` is not supported: use client_credentials",
                    other.chars().take(64).collect::<String>()
                ))),
            )
        }
        None => {
            return (
                named,
                oauth_error(&OAuthError::InvalidRequest(
                    "`grant_type` is missing".to_owned(),
                )),
            )
        }
    }
    match app.client_credentials(&client_id, &secret, scope).await {
        Ok(issued) => (
            named,
            no_store(
                http::StatusCode::OK,
                Json(TokenResponse {
                    access_token: issued.access_token,
                    token_type: "Bearer".to_owned(),
                    expires_in: issued.expires_in,
                    scope: issued.scope,
                }),
            ),
        ),
        Err(error) => (named, oauth_error(&error)),
    }
}

async fn read_form(
    app: &App,
    headers: &http::HeaderMap,
    body: Body,
) -> Result<Vec<(String, String)>, Response> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(oauth_error(&OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".to_owned(),
        )));
    }
    let bytes = super::envelope::read_limited(
        headers,
        body,
        MAX_TOKEN_REQUEST_BYTES,
        "16 KiB for token requests",
        &app.config,
    )
    .await
    .map_err(|refusal| {
        let status = refusal.0.kind.http_status();
        let mut response = oauth_error(&OAuthError::InvalidRequest(refusal.0.message));
        *response.status_mut() = status;
        response
    })?;
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes).map_err(|_| {
        oauth_error(&OAuthError::InvalidRequest(
            "the body is not a valid form".to_owned(),
        ))
    })
}

/// `Authorization: Basic` credentials, each part form-decoded (RFC 6749 §2.3.1).
fn basic_credentials(headers: &http::HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::InvalidClient("malformed HTTP Basic credentials".to_owned());
    let text = value.to_str().map_err(|_| malformed())?;
    let Some(encoded) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Err(malformed());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let form_decode = |part: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={part}"))
            .ok()
            .and_then(|mut pairs| pairs.pop())
            .map(|(_, value)| value)
            .ok_or_else(malformed)
    };
    Ok(Some((form_decode(id)?, form_decode(secret)?)))
}

/// An RFC 6749 §5.2 error with its status: 401 (with `WWW-Authenticate`) for
/// `invalid_client`, 500 for `server_error`, 400 otherwise.
fn oauth_error(error: &OAuthError) -> Response {
    let status = match error {
        OAuthError::InvalidClient(_) => http::StatusCode::UNAUTHORIZED,
        OAuthError::Server => http::StatusCode::INTERNAL_SERVER_ERROR,
        _ => http::StatusCode::BAD_REQUEST,
    };
    let mut response = no_store(
        status,
        Json(OAuthErrorBody {
            error: error.code().to_owned(),
            error_description: error.description().to_owned(),
        }),
    );
    if status == http::StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"stella\""),
        );
    }
    response
}

fn slow_down(wait: std::time::Duration) -> Response {
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut response = no_store(
        http::StatusCode::TOO_MANY_REQUESTS,
        Json(OAuthErrorBody {
            error: "slow_down".to_owned(),
            error_description: format!("too many token requests; retry in {seconds} s"),
        }),
    );
    if let Ok(value) = http::HeaderValue::from_str(&seconds.to_string()) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// A response that caches must not keep (RFC 6749 §5.1), marked as needing no envelope.
fn no_store(status: http::StatusCode, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::PRAGMA,
        http::HeaderValue::from_static("no-cache"),
    );
    response.extensions_mut().insert(Enveloped);
    response
}

/// The access-token keys.
///
/// The public keys that verify access tokens (RFC 7517 JWK set; Ed25519, `EdDSA`).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oauth", operation_id = "jwks",
    responses((status = 200, description = "The JWK set", body = Object)))]
pub async fn jwks(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(app.identity.jwt.jwks())
}

/// The authorization server's metadata.
///
/// RFC 8414: issuer, token endpoint, key set, grant types, client authentication
/// methods and scopes.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth",
    operation_id = "oauthMetadata",
    responses((status = 200, description = "The metadata", body = Object)))]
pub async fn metadata(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let issuer = &app.identity.issuer;
    Json(serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "service_documentation": format!("{issuer}/api/v1/openapi.json"),
    }))
}
