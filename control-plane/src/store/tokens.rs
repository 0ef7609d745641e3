//! API tokens (named, expiring, revocable) and OAuth2 clients.

use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{parse_scopes, ApiToken, OAuthClient, Scope, User};

/// The id given to a token stored without one (before migration 0005, or by
/// `insert_api_token`): derived from its hash, which is public.
pub(super) fn legacy_id(token_hash: &str) -> String {
    format!("tok_{}", token_hash.get(..24).unwrap_or(token_hash))
}

const TOKEN_COLUMNS: &str = "t.id, t.user_id, u.name AS user_name, t.name, t.created_at_ms, \
     t.expires_at_ms, t.last_used_at_ms, t.revoked_at_ms";

impl Store {
    /// Stores a new API token under the hash of its secret; `NotFound` if the user is
    /// gone, `Conflict` if the id or hash is taken.
    pub async fn insert_token(&self, token: &ApiToken, token_hash: &str) -> Result<(), StoreError> {
        const OP: &str = "storing an api token";
        sqlx::query(
            "INSERT INTO api_tokens (hash, id, user_id, name, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash)
        .bind(token.id.as_str())
        .bind(token.user_id.as_str())
        .bind(token.name.as_str())
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .execute(self.writer())
        .await
        .map_err(|source| match &source {
            sqlx::Error::Database(e) if e.is_foreign_key_violation() => StoreError::NotFound {
                entity: "user",
                key: token.user_id.clone(),
            },
            _ => unique(OP, "api token", &token.id)(source),
        })?;
        Ok(())
    }

    /// The token with this hash and its owner, whatever its state; `None` if unknown.
    pub async fn token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(ApiToken, User)>, StoreError> {
        let row = sqlx::query_as::<_, TokenUserRow>(&format!(
            "SELECT {TOKEN_COLUMNS}, u.roles, u.created_at_ms AS user_created_at_ms \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("authenticating an api token"))?;
        let Some(row) = row else { return Ok(None) };
        let user = super::users::UserRow {
            id: row.token.user_id.clone(),
            name: row.token.user_name.clone(),
            roles: row.roles,
            created_at_ms: row.user_created_at_ms,
        }
        .into_user()?;
        Ok(Some((row.token.into(), user)))
    }

    /// API tokens, newest first: of one user, or of everyone.
    pub async fn list_tokens(&self, user_id: Option<&str>) -> Result<Vec<ApiToken>, StoreError> {
        let base =
            format!("SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id");
        let order = "ORDER BY t.created_at_ms DESC, t.id";
        let sql = match user_id {
            Some(_) => format!("{base} WHERE t.user_id = $1 {order}"),
            None => format!("{base} {order}"),
        };
        let mut query = sqlx::query_as::<_, TokenRow>(&sql);
        if let Some(id) = user_id {
            query = query.bind(id);
        }
        Ok(query
            .fetch_all(&self.pool)
            .await
            .map_err(database("listing api tokens"))?
            .into_iter()
            .map(ApiToken::from)
            .collect())
    }

    /// The token with this id; `NotFound` if there is none.
    pub async fn find_token(&self, id: &str) -> Result<ApiToken, StoreError> {
        sqlx::query_as::<_, TokenRow>(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading an api token"))?
        .map(ApiToken::from)
        .ok_or_else(|| StoreError::NotFound {
            entity: "api token",
            key: id.to_owned(),
        })
    }

    /// Marks a token revoked (once: a second revocation keeps the first time).
    pub async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
        )
        .bind(at_ms)
        .bind(id)
        .execute(self.writer())
        .await
        .map_err(database("revoking an api token"))?;
        Ok(())
    }

    /// Records a token's last use (callers coalesce these writes).
    pub async fn touch_token(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_tokens SET last_used_at_ms = $1 WHERE id = $2")
            .bind(at_ms)
            .bind(id)
            .execute(self.writer())
            .await
            .map_err(database("recording an api token's use"))?;
        Ok(())
    }

    /// Stores a new OAuth2 client; `Conflict` if the name is taken.
    pub async fn insert_client(&self, client: &OAuthClient) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_clients (id, name, secret_hash, scopes, created_by, created_at_ms, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(client.id.as_str())
        .bind(client.name.as_str())
        .bind(client.secret_hash.as_str())
        .bind(crate::domain::format_scopes(&client.scopes))
        .bind(client.created_by.as_str())
        .bind(client.created_at_ms)
        .bind(client.tenant.as_str())
        .execute(self.writer())
        .await
        .map_err(unique("creating an oauth client", "client", &client.name))?;
        Ok(())
    }

    /// Every OAuth2 client, by name.
    pub async fn list_clients(&self) -> Result<Vec<OAuthClient>, StoreError> {
        sqlx::query_as::<_, ClientRow>(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing oauth clients"))?
        .into_iter()
        .map(ClientRow::into_client)
        .collect()
    }

    /// The client with this id or name; `None` if there is none.
    pub async fn find_client(&self, id_or_name: &str) -> Result<Option<OAuthClient>, StoreError> {
        sqlx::query_as::<_, ClientRow>(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = $1 OR name = $1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading an oauth client"))?
        .map(ClientRow::into_client)
        .transpose()
    }

    /// Marks a client revoked (once).
    pub async fn revoke_client(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE oauth_clients SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
        )
        .bind(at_ms)
        .bind(id)
        .execute(self.writer())
        .await
        .map_err(database("revoking an oauth client"))?;
        Ok(())
    }

    /// Ids of the revoked clients.
    pub async fn revoked_client_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM oauth_clients WHERE revoked_at_ms IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading revoked oauth clients"))
    }
}

const CLIENT_COLUMNS: &str =
    "id, name, secret_hash, scopes, created_by, created_at_ms, revoked_at_ms, tenant";

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    user_id: String,
    user_name: String,
    name: String,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    last_used_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
}

impl From<TokenRow> for ApiToken {
    fn from(row: TokenRow) -> Self {
        ApiToken {
            id: row.id,
            user_id: row.user_id,
            user_name: row.user_name,
            name: row.name,
            created_at_ms: row.created_at_ms,
            expires_at_ms: row.expires_at_ms,
            last_used_at_ms: row.last_used_at_ms,
            revoked_at_ms: row.revoked_at_ms,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TokenUserRow {
    #[sqlx(flatten)]
    token: TokenRow,
    roles: String,
    user_created_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    name: String,
    secret_hash: String,
    scopes: String,
    created_by: String,
    created_at_ms: i64,
    revoked_at_ms: Option<i64>,
    tenant: String,
}

impl ClientRow {
    fn into_client(self) -> Result<OAuthClient, StoreError> {
        let scopes: Vec<Scope> = parse_scopes(&self.scopes).map_err(|e| StoreError::Corrupt {
            what: "client scopes",
            detail: format!("client {}: {e}", self.id),
        })?;
        let tenant = self.tenant.parse().map_err(|e| StoreError::Corrupt {
            what: "client tenant",
            detail: format!("client {}: {e}", self.id),
        })?;
        Ok(OAuthClient {
            id: self.id,
            name: self.name,
            secret_hash: self.secret_hash,
            scopes,
            created_by: self.created_by,
            created_at_ms: self.created_at_ms,
            revoked_at_ms: self.revoked_at_ms,
            tenant,
        })
    }
}
