//! The web console's passwords and sign-in sessions (in the default tenant's
//! database, beside users).

use super::error::database;
use super::{Store, StoreError};

/// A signed-in console session, found by the hash of its cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The user signed in.
    pub user_id: String,
    /// The token every form of this session must send back.
    pub csrf_token: String,
    /// The tenant the console shows.
    pub tenant: String,
    /// When it stops working, unix milliseconds.
    pub expires_at_ms: i64,
}

impl Store {
    /// Sets (or with `None` clears) a user's password hash; `NotFound` for no such user.
    pub async fn set_password_hash(
        &self,
        user_id: &str,
        hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(user_id)
            .execute(self.writer())
            .await
            .map_err(database("setting a password"))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "user",
                key: user_id.to_owned(),
            });
        }
        Ok(())
    }

    /// The user id and password hash of the user with this name, if it has a password.
    pub async fn password_hash(&self, name: &str) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT id, password_hash FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(database("reading a password"))?;
        Ok(row.and_then(|(id, hash)| hash.map(|hash| (id, hash))))
    }

    /// Stores a new session.
    pub async fn insert_console_session(
        &self,
        id_hash: &str,
        session: &ConsoleSession,
        created_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO console_sessions \
             (id_hash, user_id, csrf_token, tenant, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id_hash)
        .bind(session.user_id.as_str())
        .bind(session.csrf_token.as_str())
        .bind(session.tenant.as_str())
        .bind(created_at_ms)
        .bind(session.expires_at_ms)
        .execute(self.writer())
        .await
        .map_err(database("storing a console session"))?;
        Ok(())
    }

    /// The unexpired session with this hash.
    pub async fn console_session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT user_id, csrf_token, tenant, expires_at_ms FROM console_sessions \
             WHERE id_hash = $1 AND expires_at_ms > $2",
        )
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a console session"))?;
        Ok(row.map(
            |(user_id, csrf_token, tenant, expires_at_ms)| ConsoleSession {
                user_id,
                csrf_token,
                tenant,
                expires_at_ms,
            },
        ))
    }

    /// Switches the tenant a session shows.
    pub async fn set_console_tenant(&self, id_hash: &str, tenant: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE console_sessions SET tenant = $1 WHERE id_hash = $2")
            .bind(tenant)
            .bind(id_hash)
            .execute(self.writer())
            .await
            .map_err(database("switching a console session's tenant"))?;
        Ok(())
    }

    /// Ends a session (signing out), and every expired one.
    pub async fn delete_console_session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1 OR expires_at_ms <= $2")
            .bind(id_hash)
            .bind(now_ms)
            .execute(self.writer())
            .await
            .map_err(database("ending a console session"))?;
        Ok(())
    }
}
