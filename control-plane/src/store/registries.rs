//! Container registries and their (sealed) credentials.

use super::error::database;
use super::{Store, StoreError};
use crate::domain::Registry;

impl Store {
    /// Stores a registry, or replaces every field of the one with the same host. The
    /// sealed password is stored and returned as given: the store never opens it.
    pub async fn upsert_registry(&self, registry: &Registry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registries (host, insecure, username, password_sealed, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (host) DO UPDATE SET insecure = excluded.insecure, \
             username = excluded.username, password_sealed = excluded.password_sealed, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(registry.host.as_str())
        .bind(i64::from(registry.insecure))
        .bind(registry.username.as_deref())
        .bind(registry.password_sealed.as_deref())
        .bind(registry.updated_at_ms)
        .execute(self.writer())
        .await
        .map_err(database("storing a registry"))?;
        Ok(())
    }

    /// The registry with this host, if stored.
    pub async fn get_registry(&self, host: &str) -> Result<Option<Registry>, StoreError> {
        Ok(sqlx::query_as::<_, RegistryRow>(
            "SELECT host, insecure, username, password_sealed, updated_at_ms \
             FROM registries WHERE host = $1",
        )
        .bind(host)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a registry"))?
        .map(RegistryRow::into_registry))
    }

    /// Deletes a registry's settings and credentials; `NotFound` if none is stored.
    pub async fn delete_registry(&self, host: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM registries WHERE host = $1")
            .bind(host)
            .execute(self.writer())
            .await
            .map_err(database("deleting a registry"))?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound {
                entity: "registry",
                key: host.to_owned(),
            });
        }
        Ok(())
    }

    /// Every registry, ordered by host.
    pub async fn list_registries(&self) -> Result<Vec<Registry>, StoreError> {
        Ok(sqlx::query_as::<_, RegistryRow>(
            "SELECT host, insecure, username, password_sealed, updated_at_ms \
             FROM registries ORDER BY host",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing registries"))?
        .into_iter()
        .map(RegistryRow::into_registry)
        .collect())
    }
}

/// A `registries` row as stored.
#[derive(sqlx::FromRow)]
struct RegistryRow {
    host: String,
    insecure: i64,
    username: Option<String>,
    password_sealed: Option<String>,
    updated_at_ms: i64,
}

impl RegistryRow {
    fn into_registry(self) -> Registry {
        Registry {
            host: self.host,
            insecure: self.insecure != 0,
            username: self.username,
            password_sealed: self.password_sealed,
            updated_at_ms: self.updated_at_ms,
        }
    }
}
