//! Routers (RFC 0005), each driven by one agent.

use std::collections::BTreeMap;

use super::environments::{decode_enum, decode_json, encode_json};
use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{Router, RouterKind};

/// `SELECT <every router column> FROM routers <tail>`, as one literal.
macro_rules! select_routers {
    ($tail:literal) => {
        concat!(
            "SELECT name, kind, agent_id, settings_json, created_at_ms, updated_at_ms ",
            "FROM routers ",
            $tail
        )
    };
}

impl Store {
    /// Stores a new router; `Conflict` (entity `router`) if the name is taken. The
    /// primary key decides, so two creations racing for one name cannot both succeed.
    pub async fn create_router(&self, router: &Router) -> Result<(), StoreError> {
        const OP: &str = "creating a router";
        let settings_json = encode_json("router settings", &router.settings)?;
        sqlx::query(
            "INSERT INTO routers (name, kind, agent_id, settings_json, created_at_ms, \
             updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(router.name.as_str())
        .bind(router.kind.as_str())
        .bind(router.agent_id.as_str())
        .bind(settings_json)
        .bind(router.created_at_ms)
        .bind(router.updated_at_ms)
        .execute(self.writer())
        .await
        .map_err(unique(OP, "router", &router.name))?;
        Ok(())
    }

    /// The router with this name; `NotFound` if there is none.
    pub async fn get_router(&self, name: &str) -> Result<Router, StoreError> {
        sqlx::query_as::<_, RouterRow>(select_routers!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a router"))?
            .ok_or_else(|| not_found_router(name))?
            .into_router()
    }

    /// Every router, ordered by name.
    pub async fn list_routers(&self) -> Result<Vec<Router>, StoreError> {
        sqlx::query_as::<_, RouterRow>(select_routers!("ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(database("listing routers"))?
            .into_iter()
            .map(RouterRow::into_router)
            .collect()
    }

    /// Deletes a router; `NotFound` if there is none. What it routes is left as it is.
    pub async fn delete_router(&self, name: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM routers WHERE name = $1")
            .bind(name)
            .execute(self.writer())
            .await
            .map_err(database("deleting a router"))?
            .rows_affected();
        if deleted == 0 {
            return Err(not_found_router(name));
        }
        Ok(())
    }
}

fn not_found_router(name: &str) -> StoreError {
    StoreError::NotFound {
        entity: "router",
        key: name.to_owned(),
    }
}

/// A `routers` row as stored.
#[derive(sqlx::FromRow)]
struct RouterRow {
    name: String,
    kind: String,
    agent_id: String,
    settings_json: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl RouterRow {
    fn into_router(self) -> Result<Router, StoreError> {
        let row = format!("router {}", self.name);
        let kind: RouterKind = decode_enum("router kind", &row, &self.kind)?;
        let settings: BTreeMap<String, String> =
            decode_json("router settings", &row, &self.settings_json)?;
        Ok(Router {
            name: self.name,
            kind,
            agent_id: self.agent_id,
            settings,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        })
    }
}
