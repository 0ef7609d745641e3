//! What offline kits read and write: the decisions of a release, and decision records
//! imported from another server.

use base64::Engine as _;

use super::error::database;
use super::{Store, StoreError};
use crate::domain::ImportedEvidence;

impl Store {
    /// The ids of every decision on promotions of this release, in id order.
    pub async fn decision_ids_of_release(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT d.id FROM decisions d JOIN promotions p ON p.id = d.promotion_id \
             WHERE p.release_name = $1 AND p.release_version = $2 ORDER BY d.id",
        )
        .bind(name)
        .bind(version)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing the decisions of a release"))
    }

    /// Stores an imported decision record; `false` when it was imported before (the
    /// packet is content-addressed by its decision id, so nothing changes).
    pub async fn put_imported_evidence(
        &self,
        evidence: &ImportedEvidence,
    ) -> Result<bool, StoreError> {
        let packet = base64::engine::general_purpose::STANDARD.encode(&evidence.packet);
        let done = sqlx::query(
            "INSERT INTO imported_evidence (decision_id, key_id, outcome, release_name, \
             release_version, environment, packet_base64, kit_manifest, imported_by, \
             imported_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (decision_id) DO NOTHING",
        )
        .bind(evidence.decision_id.as_str())
        .bind(evidence.key_id.as_str())
        .bind(evidence.outcome.as_str())
        .bind(evidence.release.as_str())
        .bind(evidence.version.as_str())
        .bind(evidence.environment.as_str())
        .bind(packet)
        .bind(evidence.kit_manifest.as_str())
        .bind(evidence.imported_by.as_str())
        .bind(evidence.imported_at_ms)
        .execute(self.writer())
        .await
        .map_err(database("storing imported evidence"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Every imported decision record, newest import first, optionally of one release.
    pub async fn list_imported_evidence(
        &self,
        release: Option<&str>,
    ) -> Result<Vec<ImportedEvidence>, StoreError> {
        sqlx::query_as::<_, ImportedRow>(
            "SELECT decision_id, key_id, outcome, release_name, release_version, environment, \
             packet_base64, kit_manifest, imported_by, imported_at_ms FROM imported_evidence \
             WHERE ($1 IS NULL OR release_name = $1) \
             ORDER BY imported_at_ms DESC, decision_id",
        )
        .bind(release)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing imported evidence"))?
        .into_iter()
        .map(ImportedRow::into_evidence)
        .collect()
    }

    /// The imported decision record with this id; `NotFound` if there is none.
    pub async fn get_imported_evidence(
        &self,
        decision_id: &str,
    ) -> Result<ImportedEvidence, StoreError> {
        sqlx::query_as::<_, ImportedRow>(
            "SELECT decision_id, key_id, outcome, release_name, release_version, environment, \
             packet_base64, kit_manifest, imported_by, imported_at_ms FROM imported_evidence \
             WHERE decision_id = $1",
        )
        .bind(decision_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading imported evidence"))?
        .ok_or_else(|| StoreError::NotFound {
            entity: "imported evidence",
            key: decision_id.to_owned(),
        })?
        .into_evidence()
    }
}

#[derive(sqlx::FromRow)]
struct ImportedRow {
    decision_id: String,
    key_id: String,
    outcome: String,
    release_name: String,
    release_version: String,
    environment: String,
    packet_base64: String,
    kit_manifest: String,
    imported_by: String,
    imported_at_ms: i64,
}

impl ImportedRow {
    fn into_evidence(self) -> Result<ImportedEvidence, StoreError> {
        let packet = base64::engine::general_purpose::STANDARD
            .decode(&self.packet_base64)
            .map_err(|e| StoreError::Corrupt {
                what: "imported evidence packet",
                detail: format!("{}: not base64: {e}", self.decision_id),
            })?;
        Ok(ImportedEvidence {
            decision_id: self.decision_id,
            key_id: self.key_id,
            outcome: self.outcome,
            release: self.release_name,
            version: self.release_version,
            environment: self.environment,
            packet,
            kit_manifest: self.kit_manifest,
            imported_by: self.imported_by,
            imported_at_ms: self.imported_at_ms,
        })
    }
}
