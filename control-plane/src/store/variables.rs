//! Per-environment variables and secrets (secrets arrive sealed; the store never sees a
//! plain secret).

use super::environments::{decode_enum, not_found_environment};
use super::error::database;
use super::{Store, StoreError};
use crate::domain::{Variable, VariableKind};

impl Store {
    /// Sets a variable or secret (insert or replace). `NotFound` if the environment does
    /// not exist.
    pub async fn set_variable(&self, variable: &Variable) -> Result<(), StoreError> {
        const OP: &str = "setting a variable";
        sqlx::query(
            "INSERT INTO environment_variables (environment, kind, name, value, updated_by, \
             updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (environment, kind, name) DO UPDATE SET value = excluded.value, \
             updated_by = excluded.updated_by, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(variable.environment.as_str())
        .bind(variable.kind.as_str())
        .bind(variable.name.as_str())
        .bind(variable.stored_value.as_str())
        .bind(variable.updated_by.as_str())
        .bind(variable.updated_at_ms)
        .execute(self.writer())
        .await
        .map_err(|source| match &source {
            sqlx::Error::Database(e) if e.is_foreign_key_violation() => {
                not_found_environment(&variable.environment)
            }
            _ => StoreError::Database { op: OP, source },
        })?;
        Ok(())
    }

    /// The variables and secrets of an environment (secrets sealed), by kind then name.
    pub async fn list_variables(&self, environment: &str) -> Result<Vec<Variable>, StoreError> {
        let rows = sqlx::query_as::<_, (String, String, String, String, String, i64)>(
            "SELECT environment, kind, name, value, updated_by, updated_at_ms \
             FROM environment_variables WHERE environment = $1 ORDER BY kind, name",
        )
        .bind(environment)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing variables"))?;
        rows.into_iter()
            .map(
                |(environment, kind, name, stored_value, updated_by, updated_at_ms)| {
                    let row = format!("variable {environment}/{name}");
                    Ok(Variable {
                        kind: decode_enum("variable kind", &row, &kind)?,
                        environment,
                        name,
                        stored_value,
                        updated_by,
                        updated_at_ms,
                    })
                },
            )
            .collect()
    }

    /// Deletes a variable or secret; `NotFound` (entity `variable` or `secret`) if the
    /// environment has none by that name.
    pub async fn delete_variable(
        &self,
        environment: &str,
        kind: VariableKind,
        name: &str,
    ) -> Result<(), StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM environment_variables WHERE environment = $1 AND kind = $2 AND name = $3",
        )
        .bind(environment)
        .bind(kind.as_str())
        .bind(name)
        .execute(self.writer())
        .await
        .map_err(database("deleting a variable"))?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound {
                entity: match kind {
                    VariableKind::Var => "variable",
                    VariableKind::Secret => "secret",
                },
                key: format!("{environment}/{name}"),
            });
        }
        Ok(())
    }
}
