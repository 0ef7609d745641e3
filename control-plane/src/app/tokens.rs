//! API tokens: issued with a name and an expiry, listed, revoked one by one; and the
//! authentication of every bearer credential (API tokens and OAuth2 access tokens).

use std::time::Duration;

use super::{now_ms, App};
use crate::auth::{AuthFailure, Credential, Principal};
use crate::domain::{roles_of, ApiToken, Role, TokenState, User};
use crate::error::{AppError, ErrorKind};

/// Longest token name.
const MAX_TOKEN_NAME: usize = 64;

/// Which tokens a listing shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenListing {
    /// The caller's own.
    Own,
    /// One user's (admins only).
    OfUser(String),
    /// Everyone's (admins only).
    All,
}

impl App {
    /// A new API token for `user`, named `name`, expiring after `ttl` (default
    /// `api_token_default_ttl_seconds`, at most `api_token_max_ttl_seconds`); the
    /// token is returned once, only its hash is stored.
    pub async fn issue_token(
        &self,
        user: &User,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<(ApiToken, String), AppError> {
        let max = self.config.api_token_max_ttl_seconds;
        let ttl = ttl.unwrap_or(Duration::from_secs(
            self.config.api_token_default_ttl_seconds,
        ));
        if ttl.is_zero() || ttl.as_secs() > max {
            return Err(AppError::new(
                ErrorKind::InvalidArgument,
                "invalid_expiry",
                format!("a token's lifetime must be between 1 second and {max} seconds (`api_token_max_ttl_seconds`)"),
            ));
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.store_token(user, name, Some(now_ms().saturating_add(ttl_ms)))
            .await
    }

    /// The first admin's token, written to `admin.token`: no expiry, like tokens from
    /// before expiries existed, until it is revoked.
    pub(crate) async fn issue_bootstrap_token(&self, user: &User) -> Result<String, AppError> {
        Ok(self.store_token(user, "bootstrap", None).await?.1)
    }

    async fn store_token(
        &self,
        user: &User,
        name: &str,
        expires_at_ms: Option<i64>,
    ) -> Result<(ApiToken, String), AppError> {
        if name.chars().count() > MAX_TOKEN_NAME || name.chars().any(char::is_control) {
            return Err(AppError::invalid(format!(
                "a token name is at most {MAX_TOKEN_NAME} printable characters"
            )));
        }
        let secret = stella_pki::new_api_token();
        let id = format!("tok_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
        let token = ApiToken {
            id,
            user_id: user.id.clone(),
            user_name: user.name.clone(),
            name: name.to_owned(),
            created_at_ms: now_ms(),
            expires_at_ms,
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        self.store
            .insert_token(&token, &stella_pki::hash_token(&secret))
            .await?;
        tracing::info!(user = %user.name, token = %token.id, "api token issued");
        Ok((token, secret))
    }

    /// API tokens `caller` may see: its own, or as an admin anyone's.
    pub async fn list_api_tokens(
        &self,
        caller: &Principal,
        listing: TokenListing,
    ) -> Result<Vec<ApiToken>, AppError> {
        let user = token_owner(caller)?;
        let user_id = match listing {
            TokenListing::Own => Some(user.id.clone()),
            TokenListing::OfUser(name) => {
                require_admin(user)?;
                Some(
                    self.store
                        .find_user(&name)
                        .await
                        .map_err(|error| {
                            super::not_found_as(
                                error,
                                ErrorKind::NotFound,
                                "unknown_user",
                                format!("unknown user `{name}`"),
                            )
                        })?
                        .id,
                )
            }
            TokenListing::All => {
                require_admin(user)?;
                None
            }
        };
        Ok(self.store.list_tokens(user_id.as_deref()).await?)
    }

    /// Revokes a token of the caller's own, or as an admin anyone's; it stops working
    /// at once on every replica (tokens are looked up at every request).
    pub async fn revoke_api_token(
        &self,
        caller: &Principal,
        id: &str,
    ) -> Result<ApiToken, AppError> {
        let user = token_owner(caller)?;
        let unknown = || {
            AppError::new(
                ErrorKind::NotFound,
                "unknown_token",
                format!("no token `{id}` of yours"),
            )
        };
        let token = match self.store.find_token(id).await {
            Ok(token) => token,
            Err(crate::store::StoreError::NotFound { .. }) => return Err(unknown()),
            Err(error) => return Err(error.into()),
        };
        // Another user's token is as unknown as a missing one, unless the caller is an admin.
        if token.user_id != user.id && !user.roles.contains(&Role::Admin) {
            return Err(unknown());
        }
        self.store.revoke_token(id, now_ms()).await?;
        tracing::info!(token = %id, owner = %token.user_name, by = %user.name, "api token revoked");
        Ok(self.store.find_token(id).await?)
    }

    /// Authenticates a bearer credential: an API token (looked up by its hash) or an
    /// OAuth2 access token (a JWT verified against this server's key). `Ok(Err(_))` is
    /// a refusal; `Err(_)` a failure of the store.
    pub async fn authenticate(
        &self,
        bearer: &str,
    ) -> Result<Result<Principal, AuthFailure>, AppError> {
        if bearer.starts_with("eyJ") && bearer.matches('.').count() == 2 {
            return self.authenticate_jwt(bearer).await;
        }
        let now = now_ms();
        let Some((token, user)) = self
            .store
            .token_by_hash(&stella_pki::hash_token(bearer))
            .await?
        else {
            return Ok(Err(AuthFailure::new("unknown_token", "unknown token")));
        };
        match token.state(now) {
            TokenState::Active => {}
            TokenState::Expired => {
                return Ok(Err(AuthFailure::new(
                    "expired_token",
                    "the token has expired",
                )))
            }
            TokenState::Revoked => {
                return Ok(Err(AuthFailure::new(
                    "revoked_token",
                    "the token was revoked",
                )))
            }
        }
        if self
            .identity
            .should_write_last_use(&token.id, token.last_used_at_ms, now)
        {
            // Not awaited: a request never waits for this bookkeeping write.
            let store = self.store.clone();
            let id = token.id.clone();
            tokio::spawn(async move {
                if let Err(error) = store.touch_token(&id, now).await {
                    tracing::warn!(error = %crate::error::ErrorChain(&error), token = %id, "cannot record a token's last use");
                }
            });
        }
        Ok(Ok(Principal {
            user,
            credential: Credential::ApiToken(token.id),
        }))
    }

    async fn authenticate_jwt(
        &self,
        jwt: &str,
    ) -> Result<Result<Principal, AuthFailure>, AppError> {
        use crate::auth::jwt::JwtRefusal;
        let claims =
            match self
                .identity
                .jwt
                .verify(jwt, &self.identity.issuer, &self.config.oauth_audience)
            {
                Ok(claims) => claims,
                Err(JwtRefusal::Expired) => {
                    return Ok(Err(AuthFailure::new(
                        "expired_jwt",
                        "the access token has expired",
                    )))
                }
                Err(JwtRefusal::Invalid(why)) => {
                    return Ok(Err(AuthFailure::new(
                        "invalid_jwt",
                        format!("invalid access token: {why}"),
                    )))
                }
            };
        if self.client_is_revoked(&claims.client_id).await? {
            return Ok(Err(AuthFailure::new(
                "revoked_client",
                "the access token's client was revoked",
            )));
        }
        let Ok(scopes) = crate::domain::parse_scopes(&claims.scope) else {
            return Ok(Err(AuthFailure::new(
                "invalid_jwt",
                "invalid access token: unknown scope",
            )));
        };
        let Ok(tenant) = claims.tenant.parse::<crate::domain::TenantId>() else {
            return Ok(Err(AuthFailure::new(
                "invalid_jwt",
                "invalid access token: invalid tenant",
            )));
        };
        Ok(Ok(Principal {
            user: User {
                id: claims.client_id.clone(),
                name: format!("client:{}", claims.client_id),
                roles: roles_of(&scopes),
                created_at_ms: claims.iat.saturating_mul(1000),
            },
            credential: Credential::AccessToken {
                client_id: claims.client_id,
                scopes,
                tenant,
            },
        }))
    }
}

/// The user whose tokens these are: API tokens belong to users, not to OAuth2 clients.
fn token_owner(caller: &Principal) -> Result<&User, AppError> {
    match caller.credential {
        Credential::ApiToken(_) | Credential::Session => Ok(&caller.user),
        Credential::AccessToken { .. } => Err(AppError::new(
            ErrorKind::PermissionDenied,
            "not_a_user",
            "API tokens belong to users; an OAuth2 client gets access tokens at /oauth/token",
        )),
    }
}

fn require_admin(user: &User) -> Result<(), AppError> {
    if user.roles.contains(&Role::Admin) {
        Ok(())
    } else {
        Err(AppError::new(
            ErrorKind::PermissionDenied,
            "forbidden",
            "only an admin may see or revoke other users' tokens",
        ))
    }
}
