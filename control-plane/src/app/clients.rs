//! OAuth2 clients (service accounts) and the client credentials grant (RFC 6749 §4.4)
//! that gives them short-lived access tokens (RFC 9068 JWTs).

use super::{now_ms, validate_name, App};
use crate::auth::jwt::AccessClaims;
use crate::domain::{format_scopes, parse_scopes, OAuthClient, Scope, User};
use crate::error::{AppError, ErrorKind};

/// An access token as the token endpoint returns it.
#[derive(Clone, Debug)]
pub struct IssuedAccessToken {
    /// The JWT.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The scopes granted, space-separated.
    pub scope: String,
}

/// A refusal of the token endpoint, as RFC 6749 §5.2 names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OAuthError {
    /// `invalid_request` (400).
    InvalidRequest(String),
    /// `invalid_client` (401).
    InvalidClient(String),
    /// `unsupported_grant_type` (400).
    UnsupportedGrantType(String),
    /// `invalid_scope` (400).
    InvalidScope(String),
    /// `server_error` (500).
    Server,
}

impl OAuthError {
    /// The `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::Server => "server_error",
        }
    }

    /// The `error_description`.
    pub fn description(&self) -> &str {
        match self {
            OAuthError::InvalidRequest(text)
            | OAuthError::InvalidClient(text)
            | OAuthError::UnsupportedGrantType(text)
            | OAuthError::InvalidScope(text) => text,
            OAuthError::Server => "internal error",
        }
    }
}

impl App {
    /// Creates a client allowed `scopes`; returns it with its secret, shown once (only
    /// its hash is stored). The client id is its name.
    pub async fn create_client(
        &self,
        caller: &User,
        name: &str,
        scopes: Vec<Scope>,
        tenant: crate::domain::TenantId,
    ) -> Result<(OAuthClient, String), AppError> {
        validate_name("client", name)?;
        if scopes.is_empty() {
            return Err(AppError::invalid("a client needs at least one scope"));
        }
        let mut scopes = scopes;
        scopes.sort();
        scopes.dedup();
        let secret = stella_pki::new_client_secret();
        let client = OAuthClient {
            id: name.to_owned(),
            name: name.to_owned(),
            secret_hash: stella_pki::hash_token(&secret),
            scopes,
            created_by: caller.name.clone(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            tenant,
        };
        self.store.insert_client(&client).await.map_err(|error| {
            super::conflict_as(
                error,
                "client_exists",
                format!("a client named `{name}` exists (revoked clients keep their name)"),
            )
        })?;
        tracing::info!(client = %client.id, by = %caller.name, "oauth client created");
        Ok((client, secret))
    }

    /// Revokes a client: it gets no more tokens, and the ones it has stop working on
    /// every replica within [`crate::auth::REVOKED_CLIENTS_MAX_AGE`].
    pub async fn revoke_client(&self, id: &str) -> Result<OAuthClient, AppError> {
        let Some(client) = self.store.find_client(id).await? else {
            return Err(AppError::new(
                ErrorKind::NotFound,
                "unknown_client",
                format!("no client `{id}`"),
            ));
        };
        self.store.revoke_client(&client.id, now_ms()).await?;
        self.identity.add_revoked_client(&client.id);
        tracing::info!(client = %client.id, "oauth client revoked");
        self.store.find_client(&client.id).await?.ok_or_else(|| {
            AppError::new(
                ErrorKind::NotFound,
                "unknown_client",
                format!("no client `{id}`"),
            )
        })
    }

    /// Whether a client is revoked, from a cache at most a few seconds old.
    pub(crate) async fn client_is_revoked(&self, client_id: &str) -> Result<bool, AppError> {
        if let Some(revoked) = self.identity.revoked_clients_if_fresh(client_id) {
            return Ok(revoked);
        }
        let ids = self.store.revoked_client_ids().await?;
        let revoked = ids.iter().any(|id| id == client_id);
        self.identity.set_revoked_clients(ids);
        Ok(revoked)
    }

    /// The client credentials grant: checks the client's secret and the scopes asked
    /// for (all the client's scopes when none are), and signs an access token.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<IssuedAccessToken, OAuthError> {
        let unknown = || OAuthError::InvalidClient("unknown client or wrong secret".to_owned());
        let client = match self.store.find_client(client_id).await {
            Ok(Some(client)) if client.id == client_id => client,
            Ok(_) => return Err(unknown()),
            Err(error) => {
                tracing::error!(error = %crate::error::ErrorChain(&error), "reading an oauth client");
                return Err(OAuthError::Server);
            }
        };
        if !stella_pki::constant_time_eq(&stella_pki::hash_token(secret), &client.secret_hash) {
            return Err(unknown());
        }
        if client.revoked_at_ms.is_some() {
            return Err(OAuthError::InvalidClient(
                "the client was revoked".to_owned(),
            ));
        }
        let granted = match scope {
            None => client.scopes.clone(),
            Some(text) => {
                let asked = parse_scopes(text)
                    .map_err(|error| OAuthError::InvalidScope(error.to_string()))?;
                if asked.is_empty() {
                    return Err(OAuthError::InvalidScope("the scope is empty".to_owned()));
                }
                if let Some(beyond) = asked.iter().find(|s| !client.scopes.contains(s)) {
                    return Err(OAuthError::InvalidScope(format!(
                        "the client may not have the scope `{beyond}`"
                    )));
                }
                asked
            }
        };
        let now = now_ms() / 1000;
        let ttl = self.config.oauth_access_token_ttl_seconds;
        let claims = AccessClaims {
            iss: self.identity.issuer.clone(),
            sub: client.id.clone(),
            aud: self.config.oauth_audience.clone(),
            exp: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: client.id,
            scope: format_scopes(&granted),
            tenant: client.tenant.to_string(),
        };
        let access_token = self.identity.jwt.sign(&claims).map_err(|error| {
            tracing::error!(%error, "signing an access token");
            OAuthError::Server
        })?;
        Ok(IssuedAccessToken {
            access_token,
            expires_in: ttl,
            scope: claims.scope,
        })
    }
}
