//! Releases: immutable, named and versioned sets of pinned images.

use super::environments::{decode_json, encode_json};
use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{Component, Release};

/// `SELECT <every release column> FROM releases <tail>`, as one literal.
macro_rules! select_releases {
    ($tail:literal) => {
        concat!(
            "SELECT name, version, components_json, created_by, created_at_ms FROM releases ",
            $tail
        )
    };
}

impl Store {
    /// Stores a new release; `Conflict` (key `name@version`) if that version of the name
    /// exists, which is then kept unchanged: releases are never updated.
    pub async fn create_release(&self, release: &Release) -> Result<(), StoreError> {
        let components_json = encode_json("release components", &release.components)?;
        let key = format!("{}@{}", release.name, release.version);
        sqlx::query(
            "INSERT INTO releases (name, version, components_json, created_by, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(release.name.as_str())
        .bind(release.version.as_str())
        .bind(components_json)
        .bind(release.created_by.as_str())
        .bind(release.created_at_ms)
        .execute(self.writer())
        .await
        .map_err(unique("creating a release", "release", &key))?;
        Ok(())
    }

    /// Version `version` of release `name`; `NotFound` (key `name@version`) if there is
    /// none.
    pub async fn get_release(&self, name: &str, version: &str) -> Result<Release, StoreError> {
        sqlx::query_as::<_, ReleaseRow>(select_releases!("WHERE name = $1 AND version = $2"))
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a release"))?
            .ok_or_else(|| StoreError::NotFound {
                entity: "release",
                key: format!("{name}@{version}"),
            })?
            .into_release()
    }

    /// Every release, or every version of one name, newest first.
    pub async fn list_releases(&self, name: Option<&str>) -> Result<Vec<Release>, StoreError> {
        const OP: &str = "listing releases";
        let rows = match name {
            Some(name) => {
                sqlx::query_as::<_, ReleaseRow>(select_releases!(
                    "WHERE name = $1 ORDER BY created_at_ms DESC, version DESC"
                ))
                .bind(name)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as::<_, ReleaseRow>(select_releases!(
                    "ORDER BY created_at_ms DESC, name, version DESC"
                ))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(database(OP))?;
        rows.into_iter().map(ReleaseRow::into_release).collect()
    }
}

/// A `releases` row as stored.
#[derive(sqlx::FromRow)]
struct ReleaseRow {
    name: String,
    version: String,
    components_json: String,
    created_by: String,
    created_at_ms: i64,
}

impl ReleaseRow {
    fn into_release(self) -> Result<Release, StoreError> {
        let components: Vec<Component> = decode_json(
            "release components",
            &format!("release {}@{}", self.name, self.version),
            &self.components_json,
        )?;
        Ok(Release {
            name: self.name,
            version: self.version,
            components,
            created_by: self.created_by,
            created_at_ms: self.created_at_ms,
        })
    }
}
