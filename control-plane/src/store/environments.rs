//! Environments, and the decoding helpers the delivery tables share.

use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{DriftMode, Environment, Gates, Invalid};

impl Store {
    /// Stores a new environment; `Conflict` if the name is taken, `NotFound` if `after`
    /// names no environment.
    pub async fn create_environment(&self, env: &Environment) -> Result<(), StoreError> {
        const OP: &str = "creating an environment";
        sqlx::query(
            "INSERT INTO environments (name, after_environment, drift_mode, deployment_timeout_seconds, \
             approvals_required, approval_ttl_seconds, freeze_json, block_severity, \
             allow_unscanned, policy_id, workflow_id, rollout_json, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(env.name.as_str())
        .bind(env.after.as_deref())
        .bind(env.drift_mode.to_string())
        .bind(env.deployment_timeout_seconds.map(seconds_to_i64))
        .bind(i64::from(env.gates.approvals_required))
        .bind(env.gates.approval_ttl_seconds.map(seconds_to_i64))
        .bind(encode_json("freeze windows", &env.gates.freeze)?)
        .bind(env.gates.block_severity.as_str())
        .bind(i64::from(env.gates.allow_unscanned))
        .bind(env.gates.policy_id.as_deref())
        .bind(env.gates.workflow_id.as_deref())
        .bind(encode_rollout(env)?)
        .bind(env.created_at_ms)
        .execute(self.writer())
        .await
        .map_err(|source| match &source {
            sqlx::Error::Database(e) if e.is_foreign_key_violation() => {
                not_found_environment(env.after.as_deref().unwrap_or_default())
            }
            _ => unique(OP, "environment", &env.name)(source),
        })?;
        Ok(())
    }

    /// The configuration generations (migration 0016): `configuration`, bumped in the
    /// same transaction by every write to environments, targets, variables, releases,
    /// scan reports, documents, and to what a plan uses of agents; `succeeded`, by every
    /// write that makes a deployment succeeded or touches one that is. `None` on
    /// PostgreSQL, which keeps none: what is read there is never cached.
    pub async fn config_generation(&self) -> Result<Option<ConfigGeneration>, StoreError> {
        if self.backend != super::Backend::Sqlite {
            return Ok(None);
        }
        let (configuration, succeeded): (i64, i64) =
            sqlx::query_as("SELECT generation, succeeded FROM config_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(database("reading the configuration generation"))?;
        Ok(Some(ConfigGeneration {
            configuration,
            succeeded,
        }))
    }

    /// The environment with this name; `NotFound` if there is none.
    pub async fn get_environment(&self, name: &str) -> Result<Environment, StoreError> {
        sqlx::query_as::<_, EnvironmentRow>(
            "SELECT name, after_environment, drift_mode, deployment_timeout_seconds, \
             approvals_required, approval_ttl_seconds, freeze_json, block_severity, \
             allow_unscanned, policy_id, workflow_id, rollout_json, created_at_ms FROM environments WHERE name = $1",
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
            "SELECT name, after_environment, drift_mode, deployment_timeout_seconds, \
             approvals_required, approval_ttl_seconds, freeze_json, block_severity, \
             allow_unscanned, policy_id, workflow_id, rollout_json, created_at_ms FROM environments ORDER BY created_at_ms, name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing environments"))?
        .into_iter()
        .map(EnvironmentRow::into_environment)
        .collect()
    }

    /// Replaces the `after`, `drift_mode` and `deployment_timeout_seconds` of the
    /// environment named `env.name` (the creation time is kept); `NotFound` if there is no
    /// such environment, or if `after` names none.
    pub async fn update_environment(&self, env: &Environment) -> Result<(), StoreError> {
        const OP: &str = "updating an environment";
        let updated = sqlx::query(
            "UPDATE environments SET after_environment = $1, drift_mode = $2, \
             deployment_timeout_seconds = $3, approvals_required = $4, \
             approval_ttl_seconds = $5, freeze_json = $6, block_severity = $7, \
             allow_unscanned = $8, policy_id = $9, workflow_id = $10, rollout_json = $11 \
             WHERE name = $12",
        )
        .bind(env.after.as_deref())
        .bind(env.drift_mode.to_string())
        .bind(env.deployment_timeout_seconds.map(seconds_to_i64))
        .bind(i64::from(env.gates.approvals_required))
        .bind(env.gates.approval_ttl_seconds.map(seconds_to_i64))
        .bind(encode_json("freeze windows", &env.gates.freeze)?)
        .bind(env.gates.block_severity.as_str())
        .bind(i64::from(env.gates.allow_unscanned))
        .bind(env.gates.policy_id.as_deref())
        .bind(env.gates.workflow_id.as_deref())
        .bind(encode_rollout(env)?)
        .bind(env.name.as_str())
        .execute(self.writer())
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

    /// Deletes an environment with its variables and secrets, in one transaction.
    /// `NotFound` if there is none; `Conflict` if something depends on it: a target
    /// (entity `target`), an environment that comes after it (entity `environment`), or,
    /// unless `with_history`, a deployment (entity `deployment`: its history). With
    /// `with_history` its deployments, tasks, logs and drift findings go too.
    pub async fn delete_environment(
        &self,
        name: &str,
        with_history: bool,
    ) -> Result<(), StoreError> {
        const OP: &str = "deleting an environment";
        let mut tx = self.begin_write(OP).await?;
        let exists =
            sqlx::query_scalar::<_, String>("SELECT name FROM environments WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(database(OP))?;
        if exists.is_none() {
            return Err(not_found_environment(name));
        }
        let dependents: [(&'static str, &'static str); 3] = [
            ("target", "SELECT name FROM targets WHERE environment = $1 ORDER BY name LIMIT 1"),
            (
                "environment",
                "SELECT name FROM environments WHERE after_environment = $1 ORDER BY name LIMIT 1",
            ),
            (
                "deployment",
                "SELECT id FROM deployments WHERE environment = $1 ORDER BY created_at_ms DESC LIMIT 1",
            ),
        ];
        for (entity, query) in dependents {
            if entity == "deployment" && with_history {
                continue;
            }
            let found = sqlx::query_scalar::<_, String>(query)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(database(OP))?;
            if let Some(key) = found {
                return Err(StoreError::Conflict { entity, key });
            }
        }
        for statement in [
            "DELETE FROM drift WHERE environment = $1",
            "DELETE FROM deployments WHERE environment = $1",
            "DELETE FROM environment_variables WHERE environment = $1",
            "DELETE FROM environments WHERE name = $1",
        ] {
            sqlx::query(statement)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(database(OP))?;
        }
        tx.commit().await.map_err(database(OP))
    }
}

/// Seconds as stored (the store binds `i64`); values beyond `i64` saturate.
fn seconds_to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
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
    deployment_timeout_seconds: Option<i64>,
    approvals_required: i64,
    approval_ttl_seconds: Option<i64>,
    freeze_json: String,
    block_severity: String,
    allow_unscanned: i64,
    policy_id: Option<String>,
    workflow_id: Option<String>,
    rollout_json: Option<String>,
    created_at_ms: i64,
}

/// The environment's strategy as stored (NULL: all at once).
fn encode_rollout(env: &Environment) -> Result<Option<String>, StoreError> {
    env.gates
        .rollout
        .as_ref()
        .map(|strategy| encode_json("rollout strategy", strategy))
        .transpose()
}

impl EnvironmentRow {
    fn into_environment(self) -> Result<Environment, StoreError> {
        let row = format!("environment {}", self.name);
        let drift_mode: DriftMode = decode_enum("environment drift mode", &row, &self.drift_mode)?;
        Ok(Environment {
            name: self.name,
            after: self.after_environment,
            drift_mode,
            deployment_timeout_seconds: self
                .deployment_timeout_seconds
                .and_then(|seconds| u64::try_from(seconds).ok()),
            gates: Gates {
                approvals_required: u32::try_from(self.approvals_required).unwrap_or(u32::MAX),
                approval_ttl_seconds: self
                    .approval_ttl_seconds
                    .and_then(|seconds| u64::try_from(seconds).ok()),
                freeze: decode_json("environment freeze windows", &row, &self.freeze_json)?,
                block_severity: self.block_severity,
                allow_unscanned: self.allow_unscanned != 0,
                policy_id: self.policy_id,
                workflow_id: self.workflow_id,
                rollout: self
                    .rollout_json
                    .as_deref()
                    .map(|json| decode_json("environment rollout strategy", &row, json))
                    .transpose()?,
            },
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

/// The configuration generations at one moment (see [`Store::config_generation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigGeneration {
    /// Moves with the configuration a promotion's plan and scan inputs are read from.
    pub configuration: i64,
    /// Moves with the deployments that succeeded (the order gate's facts).
    pub succeeded: i64,
}
