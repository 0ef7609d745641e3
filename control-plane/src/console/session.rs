//! Signing in and out of the console, and who a console request is.
//!
//! A session is 256 random bits in the `stella_session` cookie (`HttpOnly`,
//! `SameSite=Strict`, `Path=/`, and `Secure` when the API serves TLS); only its SHA-256
//! is stored, in the `default` tenant's database, so every replica knows it and signing
//! out ends it everywhere. Every form carries the session's CSRF token, and every post
//! must come from this origin (`Sec-Fetch-Site`, else `Origin`): a cross-site form is
//! refused before it is looked at. Passwords are argon2id PHC strings; a user without
//! one cannot sign in to the console (API tokens keep working for the API).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore as _;

use crate::api::envelope::Caller;
use crate::api::listener::ClientAddr;
use crate::api::tenancy::{self, ApiState};
use crate::app::{now_ms, App};
use crate::auth::Credential;
use crate::domain::TenantId;
use crate::error::{AppError, ErrorKind};
use crate::store::ConsoleSession;

/// The session cookie's name.
pub const COOKIE: &str = "stella_session";
/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// The shortest password `stella user password` takes.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// A signed-in console request: the caller (with its roles in the session's tenant),
/// that tenant's core, and the session's CSRF token and cookie hash.
#[derive(Clone, Debug)]
pub struct Signed {
    /// Who, with what roles in the tenant shown.
    pub caller: Caller,
    /// The tenant's core.
    pub app: Arc<App>,
    /// The token the session's forms carry.
    pub csrf: String,
    /// The SHA-256 of the cookie.
    pub id_hash: String,
    /// The `default` tenant's core, where sessions are.
    pub home: Arc<App>,
}

impl FromRequestParts<ApiState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let to_login = || Redirect::to("/console/login").into_response();
        let Some(cookie) = cookie(&parts.headers, COOKIE) else {
            return Err(to_login());
        };
        let id_hash = stella_pki::hash_token(&cookie);
        let app = state.tenants.default_app();
        let session = match app.store.console_session(&id_hash, now_ms()).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(to_login()),
            Err(error) => return Err(crate::api::envelope::ApiError(error.into()).into_response()),
        };
        let user = match app.store.get_user(&session.user_id).await {
            Ok(user) => user,
            Err(_) => return Err(to_login()),
        };
        if let Some(actor) = parts.extensions.get::<crate::api::audit::AuditActor>() {
            actor.record(&user.name);
        }
        let credential = Credential::Session;
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&session.tenant) {
            headers.insert(tenancy::TENANT_HEADER, value);
        }
        // A tenant the user lost its roles in (or that was deleted) falls back to
        // `default`, where every user may look.
        let resolved = match tenancy::resolve(app, &headers, &credential, user.clone()).await {
            Ok(resolved) => resolved,
            Err(_) => tenancy::resolve(app, &http::HeaderMap::new(), &credential, user)
                .await
                .map_err(IntoResponse::into_response)?,
        };
        let (user, tenancy) = resolved;
        if let Some(actor) = parts.extensions.get::<crate::api::audit::AuditActor>() {
            actor.record_tenant(&tenancy.tenant);
        }
        let tenant_app = state
            .tenants
            .get(&tenancy.tenant)
            .await
            .map_err(|e| crate::api::envelope::ApiError(e).into_response())?;
        Ok(Signed {
            caller: Caller(user, credential, tenancy),
            app: tenant_app,
            csrf: session.csrf_token,
            id_hash,
            home: app.clone(),
        })
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Refuses a post that did not come from a page of this server: `Sec-Fetch-Site`
/// other than `same-origin` (or absent, `Origin` naming another host).
pub fn same_origin(headers: &http::HeaderMap) -> Result<(), AppError> {
    let refused = |why: &str| {
        AppError::new(
            ErrorKind::PermissionDenied,
            "cross_site_request",
            format!("refused a form posted from another site ({why})"),
        )
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return match site {
            "same-origin" | "none" => Ok(()),
            other => Err(refused(&format!("Sec-Fetch-Site: {other}"))),
        };
    }
    let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(refused(&format!("Origin: {origin}")))
    }
}

/// Checks a form's CSRF token against the session's, in constant time.
pub fn check_csrf(signed: &Signed, sent: &str) -> Result<(), AppError> {
    use subtle::ConstantTimeEq as _;
    let same: bool = signed.csrf.as_bytes().ct_eq(sent.as_bytes()).into();
    if same && !sent.is_empty() {
        Ok(())
    } else {
        Err(AppError::new(
            ErrorKind::PermissionDenied,
            "csrf_token_invalid",
            "this form is out of date or was not sent by the console; reload the page",
        ))
    }
}

/// An argon2id PHC string of `password`.
pub fn hash_password(password: &str) -> Result<String, AppError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AppError::invalid(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    let mut bytes = [0_u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let salt = SaltString::encode_b64(&bytes).map_err(|e| AppError::internal("salt", &e))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AppError::internal("hashing a password", &e))
}

/// Whether `password` is the one `phc` was made from. A malformed stored hash is a
/// mismatch.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a random password, verified against when the user does not exist, so that
/// the time taken does not tell which names exist.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

/// Signs a user in: a new session, its cookie and CSRF token. `None` for a wrong name
/// or password (the same answer for both).
pub async fn sign_in(
    app: &App,
    name: &str,
    password: &str,
    tls: bool,
) -> Result<Option<(String, String)>, AppError> {
    let stored = app.store.password_hash(name).await?;
    let (user_id, phc) = match stored {
        Some(found) => found,
        None => {
            let password = password.to_owned();
            let _ =
                tokio::task::spawn_blocking(move || verify_password(&password, dummy_hash())).await;
            return Ok(None);
        }
    };
    let password = password.to_owned();
    let checked = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .map_err(|e| AppError::internal("verifying a password", &e))?;
    if !checked {
        return Ok(None);
    }
    let id = create_session(app, &user_id).await?;
    Ok(Some((set_cookie(&id, tls, SESSION_TTL_MS / 1000), id)))
}

/// A new session of a user; its id (the cookie's value), which is not stored.
pub async fn create_session(app: &App, user_id: &str) -> Result<String, AppError> {
    let id = random_token();
    let now = now_ms();
    app.store
        .insert_console_session(
            &stella_pki::hash_token(&id),
            &ConsoleSession {
                user_id: user_id.to_owned(),
                csrf_token: random_token(),
                tenant: TenantId::DEFAULT.to_owned(),
                expires_at_ms: now + SESSION_TTL_MS,
            },
            now,
        )
        .await?;
    Ok(id)
}

/// The `Set-Cookie` value of a session (`max_age` 0 deletes it).
pub fn set_cookie(id: &str, tls: bool, max_age: i64) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}")
}

/// 32 random bytes, base64url.
fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Takes one sign-in attempt from the client address's bucket; the refusal when empty.
pub fn limit(app: &App, addr: Option<ClientAddr>) -> Result<(), AppError> {
    let ip = addr.map_or_else(|| "unknown".to_owned(), |addr| addr.0.to_string());
    app.identity
        .by_ip
        .check(&format!("console-login:{ip}"))
        .map_err(|wait| {
            crate::metrics::Metrics::count(&app.metrics.auth_rate_limited, "console");
            AppError::new(
                ErrorKind::TooManyRequests,
                "rate_limited",
                format!(
                    "too many sign-in attempts from this address; retry in {} s",
                    wait.as_secs().max(1)
                ),
            )
        })
}
