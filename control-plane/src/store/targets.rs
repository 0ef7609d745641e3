//! Deployment targets.

use std::collections::BTreeMap;

use super::environments::{decode_enum, decode_json, encode_json, not_found_environment};
use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{Target, TargetKind};

/// `SELECT <every target column> FROM targets <tail>`, as one literal.
macro_rules! select_targets {
    ($tail:literal) => {
        concat!(
            "SELECT name, environment, kind, agent_id, settings_json, created_at_ms ",
            "FROM targets ",
            $tail
        )
    };
}

impl Store {
    /// Stores a new target; `Conflict` if the name is taken, `NotFound` (entity
    /// `environment` or `agent`) if its environment or agent does not exist.
    pub async fn create_target(&self, target: &Target) -> Result<(), StoreError> {
        const OP: &str = "creating a target";
        let settings_json = encode_json("target settings", &target.settings)?;
        let mut tx = self.begin_write(OP).await?;
        let environment =
            sqlx::query_scalar::<_, String>("SELECT name FROM environments WHERE name = $1")
                .bind(target.environment.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(database(OP))?;
        if environment.is_none() {
            return Err(not_found_environment(&target.environment));
        }
        let agent = sqlx::query_scalar::<_, String>("SELECT id FROM agents WHERE id = $1")
            .bind(target.agent_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(database(OP))?;
        if agent.is_none() {
            return Err(StoreError::NotFound {
                entity: "agent",
                key: target.agent_id.clone(),
            });
        }
        sqlx::query(
            "INSERT INTO targets (name, environment, kind, agent_id, settings_json, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(target.name.as_str())
        .bind(target.environment.as_str())
        .bind(target.kind.as_str())
        .bind(target.agent_id.as_str())
        .bind(settings_json)
        .bind(target.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(unique(OP, "target", &target.name))?;
        tx.commit().await.map_err(database(OP))
    }

    /// The target with this name; `NotFound` if there is none.
    pub async fn get_target(&self, name: &str) -> Result<Target, StoreError> {
        sqlx::query_as::<_, TargetRow>(select_targets!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a target"))?
            .ok_or_else(|| not_found_target(name))?
            .into_target()
    }

    /// Every target, or those of one environment, ordered by name.
    pub async fn list_targets(&self, environment: Option<&str>) -> Result<Vec<Target>, StoreError> {
        const OP: &str = "listing targets";
        let rows = match environment {
            Some(environment) => {
                sqlx::query_as::<_, TargetRow>(select_targets!(
                    "WHERE environment = $1 ORDER BY name"
                ))
                .bind(environment)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as::<_, TargetRow>(select_targets!("ORDER BY name"))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(database(OP))?;
        rows.into_iter().map(TargetRow::into_target).collect()
    }

    /// Replaces a target's agent and settings (its name, environment, kind and creation
    /// time are kept). `NotFound` (entity `target` or `agent`) if the target or the agent
    /// does not exist; `Conflict` (entity `deployment`, key: its id) while a deployment
    /// has an unfinished task on the target. Checks and write are one transaction.
    pub async fn update_target(&self, target: &Target) -> Result<(), StoreError> {
        const OP: &str = "updating a target";
        let settings_json = encode_json("target settings", &target.settings)?;
        let mut tx = self.begin_write(OP).await?;
        busy_target(&mut tx, &target.name, OP).await?;
        let agent = sqlx::query_scalar::<_, String>("SELECT id FROM agents WHERE id = $1")
            .bind(target.agent_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(database(OP))?;
        if agent.is_none() {
            return Err(StoreError::NotFound {
                entity: "agent",
                key: target.agent_id.clone(),
            });
        }
        let updated =
            sqlx::query("UPDATE targets SET agent_id = $1, settings_json = $2 WHERE name = $3")
                .bind(target.agent_id.as_str())
                .bind(settings_json)
                .bind(target.name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(database(OP))?
                .rows_affected();
        if updated == 0 {
            return Err(not_found_target(&target.name));
        }
        tx.commit().await.map_err(database(OP))
    }

    /// Deletes a target; its task history is kept and its open drift findings are
    /// resolved at `now_ms`. `NotFound` if
    /// there is none; `Conflict` (entity `deployment`) while a deployment has an
    /// unfinished task on it.
    pub async fn delete_target(&self, name: &str, now_ms: i64) -> Result<(), StoreError> {
        const OP: &str = "deleting a target";
        let mut tx = self.begin_write(OP).await?;
        busy_target(&mut tx, name, OP).await?;
        let deleted = sqlx::query("DELETE FROM targets WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?
            .rows_affected();
        if deleted == 0 {
            return Err(not_found_target(name));
        }
        sqlx::query(
            "UPDATE drift SET resolved_at_ms = $1 WHERE target = $2 AND resolved_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        tx.commit().await.map_err(database(OP))
    }

    /// The targets an agent drives, ordered by name.
    pub async fn targets_for_agent(&self, agent_id: &str) -> Result<Vec<Target>, StoreError> {
        sqlx::query_as::<_, TargetRow>(select_targets!("WHERE agent_id = $1 ORDER BY name"))
            .bind(agent_id)
            .fetch_all(&self.pool)
            .await
            .map_err(database("listing the targets of an agent"))?
            .into_iter()
            .map(TargetRow::into_target)
            .collect()
    }
}

fn not_found_target(name: &str) -> StoreError {
    StoreError::NotFound {
        entity: "target",
        key: name.to_owned(),
    }
}

/// `Conflict` (entity `deployment`) if a deployment has an unfinished task on the target.
async fn busy_target(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    target: &str,
    op: &'static str,
) -> Result<(), StoreError> {
    let busy = sqlx::query_scalar::<_, String>(
        "SELECT deployment_id FROM tasks WHERE target = $1 AND state IN ('pending', 'assigned') \
         ORDER BY created_at_ms LIMIT 1",
    )
    .bind(target)
    .fetch_optional(&mut **tx)
    .await
    .map_err(database(op))?;
    match busy {
        Some(deployment_id) => Err(StoreError::Conflict {
            entity: "deployment",
            key: deployment_id,
        }),
        None => Ok(()),
    }
}

/// A `targets` row as stored.
#[derive(sqlx::FromRow)]
struct TargetRow {
    name: String,
    environment: String,
    kind: String,
    agent_id: String,
    settings_json: String,
    created_at_ms: i64,
}

impl TargetRow {
    fn into_target(self) -> Result<Target, StoreError> {
        let row = format!("target {}", self.name);
        let kind: TargetKind = decode_enum("target kind", &row, &self.kind)?;
        let settings: BTreeMap<String, String> =
            decode_json("target settings", &row, &self.settings_json)?;
        Ok(Target {
            name: self.name,
            environment: self.environment,
            kind,
            agent_id: self.agent_id,
            settings,
            created_at_ms: self.created_at_ms,
        })
    }
}
