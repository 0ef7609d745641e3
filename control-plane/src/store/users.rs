//! Users and their API tokens.

use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{Role, User};

impl Store {
    /// Stores a new user; `Conflict` if the name (or id) is taken.
    pub async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO users (id, name, roles, created_at_ms) VALUES ($1, $2, $3, $4)")
            .bind(user.id.as_str())
            .bind(user.name.as_str())
            .bind(encode_roles(&user.roles))
            .bind(user.created_at_ms)
            .execute(self.writer())
            .await
            .map_err(unique("creating a user", "user", &user.name))?;
        Ok(())
    }

    /// Every user, ordered by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, name, roles, created_at_ms FROM users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing users"))?
        .into_iter()
        .map(UserRow::into_user)
        .collect()
    }

    /// The user with this id; `NotFound` if there is none.
    pub async fn get_user(&self, id: &str) -> Result<User, StoreError> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, name, roles, created_at_ms FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a user"))?
        .ok_or_else(|| StoreError::NotFound {
            entity: "user",
            key: id.to_owned(),
        })?
        .into_user()
    }

    /// The user with this name; `NotFound` if there is none.
    pub async fn find_user(&self, name: &str) -> Result<User, StoreError> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, name, roles, created_at_ms FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a user"))?
        .ok_or_else(|| StoreError::NotFound {
            entity: "user",
            key: name.to_owned(),
        })?
        .into_user()
    }

    /// Stores the hash of a new API token for a user; `NotFound` if there is no user with
    /// that id, `Conflict` if the hash is already stored.
    pub async fn insert_api_token(
        &self,
        token_hash: &str,
        user_id: &str,
        created_at_ms: i64,
    ) -> Result<(), StoreError> {
        const OP: &str = "storing an api token";
        // Named, expiring tokens are stored by `insert_token`; this one has neither.
        sqlx::query(
            "INSERT INTO api_tokens (hash, id, name, user_id, created_at_ms) VALUES ($1, $2, '', $3, $4)",
        )
            .bind(token_hash)
            .bind(super::tokens::legacy_id(token_hash))
            .bind(user_id)
            .bind(created_at_ms)
            .execute(self.writer())
            .await
            .map_err(|source| match &source {
                sqlx::Error::Database(e) if e.is_foreign_key_violation() => StoreError::NotFound {
                    entity: "user",
                    key: user_id.to_owned(),
                },
                _ => unique(OP, "api token", token_hash)(source),
            })?;
        Ok(())
    }

    /// The user owning the API token with this hash; `None` if no such token is stored
    /// or it is revoked (its expiry is the caller's to check: see `token_by_hash`).
    pub async fn user_for_token(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        sqlx::query_as::<_, UserRow>(
            "SELECT u.id, u.name, u.roles, u.created_at_ms \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.hash = $1 AND t.revoked_at_ms IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("authenticating an api token"))?
        .map(UserRow::into_user)
        .transpose()
    }

    /// Replaces a user's roles (`roles` = `Some`) or deletes the user with its API tokens
    /// (`None`), in one transaction that refuses (`Conflict`, entity `last admin`) to
    /// leave no admin. `NotFound` if there is no such user. On PostgreSQL the admins'
    /// rows are locked first, so two admins removing each other cannot both win.
    pub async fn change_user(&self, name: &str, roles: Option<&[Role]>) -> Result<(), StoreError> {
        const OP: &str = "changing a user";
        let mut tx = self.begin_write(OP).await?;
        let lock = match self.backend {
            super::Backend::Sqlite => "",
            super::Backend::Postgres => " FOR UPDATE",
        };
        let rows = sqlx::query_as::<_, UserRow>(&format!(
            "SELECT id, name, roles, created_at_ms FROM users ORDER BY id{lock}"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(database(OP))?;
        let users = rows
            .into_iter()
            .map(UserRow::into_user)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(user) = users.iter().find(|u| u.name == name) else {
            return Err(StoreError::NotFound {
                entity: "user",
                key: name.to_owned(),
            });
        };
        let stays_admin = roles.is_some_and(|roles| roles.contains(&Role::Admin));
        let other_admins = users
            .iter()
            .filter(|u| u.id != user.id && u.roles.contains(&Role::Admin))
            .count();
        if user.roles.contains(&Role::Admin) && !stays_admin && other_admins == 0 {
            return Err(StoreError::Conflict {
                entity: "last admin",
                key: name.to_owned(),
            });
        }
        match roles {
            Some(roles) => sqlx::query("UPDATE users SET roles = $1 WHERE id = $2")
                .bind(encode_roles(roles))
                .bind(user.id.as_str()),
            None => sqlx::query("DELETE FROM users WHERE id = $1").bind(user.id.as_str()),
        }
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        tx.commit().await.map_err(database(OP))
    }

    /// How many users exist (the first start creates an admin when there are none).
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(database("counting users"))
    }
}

/// A `users` row as stored.
#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) roles: String,
    pub(super) created_at_ms: i64,
}

impl UserRow {
    pub(super) fn into_user(self) -> Result<User, StoreError> {
        let roles = decode_roles(&self.roles).map_err(|e| StoreError::Corrupt {
            what: "user roles",
            detail: format!("user {}: {e}", self.id),
        })?;
        Ok(User {
            id: self.id,
            name: self.name,
            roles,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// Roles as stored: their names joined by commas, in the order given.
fn encode_roles(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_roles(stored: &str) -> Result<Vec<Role>, crate::domain::UnknownRole> {
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    stored.split(',').map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_stored_form() {
        for roles in [
            vec![],
            vec![Role::Admin],
            vec![Role::Viewer, Role::Approver, Role::Operator],
        ] {
            let stored = encode_roles(&roles);
            assert_eq!(decode_roles(&stored), Ok(roles));
        }
        assert_eq!(encode_roles(&[Role::Admin, Role::Viewer]), "admin,viewer");
        assert!(decode_roles("admin,root").is_err());
    }
}
