//! Environments, and the decoding helpers the delivery tables share.

use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{DriftMode, Environment, Invalid};

impl Store {
    /// Stores a new environment; `Conflict` if the name is taken, `NotFound` if `after`
    /// names no environment.
    pub async fn create_environment(&self, env: &Environment) -> Result<(), StoreError> {
        const OP: &str = "creating an environment";
        sqlx::query(
            "INSERT INTO environments (name, after_environment, drift_mode, created_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(env.name.as_str())
        .bind(env.after.as_deref())
        .bind(env.drift_mode.to_string())
        .bind(env.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|source| match &source {
            sqlx::Error::Database(e) if e.is_foreign_key_violation() => {
                not_found_environment(env.after.as_deref().unwrap_or_default())
            }
            _ => unique(OP, "environment", &env.name)(source),
        })?;
        Ok(())
    }

    /// The environment with this name; `NotFound` if there is none.
    pub async fn get_environment(&self, name: &str) -> Result<Environment, StoreError> {
        sqlx::query_as::<_, EnvironmentRow>(
            "SELECT name, after_environment, drift_mode, created_at_ms \
             FROM environments WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading an environment"))?
        .ok_or_else(|| not_found_environment(name))?
        .into_environment()
    }

    /// Every environment, oldest first (then by name).
    pub async fn list_environments(&self) -> Result<Vec<Environment>, StoreError> {
        sqlx::query_as::<_, EnvironmentRow>(
            "SELECT name, after_environment, drift_mode, created_at_ms \
             FROM environments ORDER BY created_at_ms, name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing environments"))?
        .into_iter()
        .map(EnvironmentRow::into_environment)
        .collect()
    }

    /// Replaces the `after` and `drift_mode` of the environment named `env.name` (the
    /// creation time is kept); `NotFound` if there is no such environment, or if `after`
    /// names none.
    pub async fn update_environment(&self, env: &Environment) -> Result<(), StoreError> {
        const OP: &str = "updating an environment";
        let updated = sqlx::query(
            "UPDATE environments SET after_environment = $1, drift_mode = $2 WHERE name = $3",
        )
        .bind(env.after.as_deref())
        .bind(env.drift_mode.to_string())
        .bind(env.name.as_str())
        .execute(&self.pool)
        .await
        .map_err(|source| match &source {
            sqlx::Error::Database(e) if e.is_foreign_key_violation() => {
                not_found_environment(env.after.as_deref().unwrap_or_default())
            }
            _ => StoreError::Database { op: OP, source },
        })?
        .rows_affected();
        if updated == 0 {
            return Err(not_found_environment(&env.name));
        }
        Ok(())
    }
}

pub(super) fn not_found_environment(key: &str) -> StoreError {
    StoreError::NotFound {
        entity: "environment",
        key: key.to_owned(),
    }
}

/// An `environments` row as stored.
#[derive(sqlx::FromRow)]
struct EnvironmentRow {
    name: String,
    after_environment: Option<String>,
    drift_mode: String,
    created_at_ms: i64,
}

impl EnvironmentRow {
    fn into_environment(self) -> Result<Environment, StoreError> {
        let row = format!("environment {}", self.name);
        let drift_mode: DriftMode = decode_enum("environment drift mode", &row, &self.drift_mode)?;
        Ok(Environment {
            name: self.name,
            after: self.after_environment,
            drift_mode,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// Parses a stored enum name; `row` names the row for the error.
pub(super) fn decode_enum<T: FromStr<Err = Invalid>>(
    what: &'static str,
    row: &str,
    stored: &str,
) -> Result<T, StoreError> {
    stored.parse().map_err(|Invalid(e)| StoreError::Corrupt {
        what,
        detail: format!("{row}: {e}"),
    })
}

/// A value as a JSON document.
pub(super) fn encode_json<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    // Cannot fail for the plain maps, lists and structs stored here; kept as an error
    // rather than a panic all the same.
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what,
        detail: format!("cannot encode: {e}"),
    })
}

/// A stored JSON document; `row` names the row for the error.
pub(super) fn decode_json<T: DeserializeOwned>(
    what: &'static str,
    row: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        what,
        detail: format!("{row}: {e}"),
    })
}
