//! Which scan report covers which image digest.

use std::collections::BTreeMap;

use super::error::database;
use super::{Store, StoreError};
use crate::domain::Document;

/// A scan report of an image digest, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReportRef {
    /// The image digest (`sha256:…`).
    pub digest: String,
    /// The report's document id.
    pub document_id: String,
    /// `trivy` or `grype`.
    pub kind: String,
    /// The image as given at import.
    pub image: String,
    /// Who imported it.
    pub imported_by: String,
    /// When.
    pub imported_at_ms: i64,
}

/// The image digest a report is imported for, with who imported it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanLink<'a> {
    /// The image digest (`sha256:…`).
    pub digest: &'a str,
    /// The image as given at import.
    pub image: &'a str,
}

impl Store {
    /// Stores an imported scan document and, for a report, its link to the image digest,
    /// in one transaction. Returns whether anything was new: `false` when the same
    /// content was imported before (for the same digest), which the store's keys decide.
    pub async fn import_scan_document(
        &self,
        document: &Document,
        link: Option<ScanLink<'_>>,
    ) -> Result<bool, StoreError> {
        const OP: &str = "importing a scan document";
        let mut tx = self.begin_write(OP).await?;
        let mut created = sqlx::query(
            "INSERT INTO documents (id, kind, content, created_by, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(document.id.as_str())
        .bind(document.kind.as_str())
        .bind(document.content.as_str())
        .bind(document.created_by.as_str())
        .bind(document.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?
        .rows_affected()
            > 0;
        if let Some(link) = link {
            created |= sqlx::query(
                "INSERT INTO scan_reports (digest, document_id, image, imported_by, \
                 imported_at_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (digest, document_id) DO NOTHING",
            )
            .bind(link.digest)
            .bind(document.id.as_str())
            .bind(link.image)
            .bind(document.created_by.as_str())
            .bind(document.created_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?
            .rows_affected()
                > 0;
        }
        tx.commit().await.map_err(database(OP))?;
        Ok(created)
    }

    /// Records that `document_id` (stored already) is a report on `digest`; importing the
    /// same report for the same digest again is a no-op.
    pub async fn add_scan_report(
        &self,
        digest: &str,
        document_id: &str,
        image: &str,
        imported_by: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO scan_reports (digest, document_id, image, imported_by, imported_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest, document_id) DO NOTHING",
        )
        .bind(digest)
        .bind(document_id)
        .bind(image)
        .bind(imported_by)
        .bind(at_ms)
        .execute(self.writer())
        .await
        .map_err(database("recording a scan report"))?;
        Ok(())
    }

    /// The newest report of this kind (`trivy`, `grype`) on `digest`, with its content.
    pub async fn latest_report(
        &self,
        digest: &str,
        kind: &str,
    ) -> Result<Option<Document>, StoreError> {
        let row = sqlx::query_as::<_, (String, String, String, String, i64)>(
            "SELECT d.id, d.kind, d.content, d.created_by, d.created_at_ms \
             FROM scan_reports r JOIN documents d ON d.id = r.document_id \
             WHERE r.digest = $1 AND d.kind = $2 \
             ORDER BY r.imported_at_ms DESC, d.id DESC LIMIT 1",
        )
        .bind(digest)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a scan report"))?;
        Ok(
            row.map(|(id, kind, content, created_by, created_at_ms)| Document {
                id,
                kind,
                content,
                created_by,
                created_at_ms,
            }),
        )
    }

    /// The id of the newest report of each scanner kind on each of `digests`, keyed by
    /// (digest, kind): what the security gate reads, in one statement and without the
    /// reports' contents (documents are content-addressed, so callers cache those).
    pub async fn latest_report_ids(
        &self,
        digests: &[&str],
    ) -> Result<BTreeMap<(String, String), String>, StoreError> {
        let mut latest = BTreeMap::new();
        if digests.is_empty() {
            return Ok(latest);
        }
        let placeholders: Vec<String> = (1..=digests.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT r.digest, d.kind, d.id FROM scan_reports r \
             JOIN documents d ON d.id = r.document_id \
             WHERE r.digest IN ({}) \
             ORDER BY r.imported_at_ms DESC, d.id DESC",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
        for digest in digests {
            query = query.bind(*digest);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(database("reading scan reports"))?;
        for (digest, kind, id) in rows {
            // Newest first: the first row of each (digest, kind) is the one.
            latest.entry((digest, kind)).or_insert(id);
        }
        Ok(latest)
    }

    /// Every report on `digest`, newest first.
    pub async fn scan_reports(&self, digest: &str) -> Result<Vec<ScanReportRef>, StoreError> {
        let rows = sqlx::query_as::<_, (String, String, String, String, String, i64)>(
            "SELECT r.digest, r.document_id, d.kind, r.image, r.imported_by, r.imported_at_ms \
             FROM scan_reports r JOIN documents d ON d.id = r.document_id \
             WHERE r.digest = $1 ORDER BY r.imported_at_ms DESC, r.document_id DESC",
        )
        .bind(digest)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing scan reports"))?;
        Ok(rows
            .into_iter()
            .map(
                |(digest, document_id, kind, image, imported_by, imported_at_ms)| ScanReportRef {
                    digest,
                    document_id,
                    kind,
                    image,
                    imported_by,
                    imported_at_ms,
                },
            )
            .collect())
    }
}

/// The security verdict of the release running in an environment, as last evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentVerdict {
    /// The environment.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Whether it passes the environment's security gate.
    pub passed: bool,
    /// Why it blocks; when it passes, the gate's summary.
    pub reasons: Vec<String>,
    /// When it was evaluated.
    pub at_ms: i64,
}

/// What [`Store::set_verdict`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictUpdate {
    /// The verdict is stored; it replaced this one, if any.
    Stored {
        /// The verdict it replaced.
        previous: Option<EnvironmentVerdict>,
    },
    /// A verdict evaluated later is stored already; this one was dropped.
    Stale {
        /// The stored verdict.
        current: EnvironmentVerdict,
    },
}

impl Store {
    /// Replaces an environment's verdict, unless the stored one was evaluated later
    /// (`at_ms` is when the evaluation read its inputs): of two evaluations racing, the
    /// one that read last saw every document stored before it, so it wins whichever
    /// writes last.
    pub async fn set_verdict(
        &self,
        verdict: &EnvironmentVerdict,
    ) -> Result<VerdictUpdate, StoreError> {
        const OP: &str = "recording a verdict";
        let mut tx = self.begin_write(OP).await?;
        let lock = match self.backend {
            super::Backend::Sqlite => "",
            super::Backend::Postgres => " FOR UPDATE",
        };
        let previous = sqlx::query_as::<_, VerdictRow>(&format!(
            "SELECT environment, release_name, release_version, passed, reasons_json, at_ms \
             FROM verdicts WHERE environment = $1{lock}"
        ))
        .bind(verdict.environment.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(database(OP))?
        .map(VerdictRow::into_verdict)
        .transpose()?;
        if let Some(current) = previous.as_ref().filter(|p| p.at_ms > verdict.at_ms) {
            return Ok(VerdictUpdate::Stale {
                current: current.clone(),
            });
        }
        sqlx::query(
            "INSERT INTO verdicts (environment, release_name, release_version, passed, \
             reasons_json, at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (environment) DO UPDATE SET release_name = excluded.release_name, \
             release_version = excluded.release_version, passed = excluded.passed, \
             reasons_json = excluded.reasons_json, at_ms = excluded.at_ms \
             WHERE verdicts.at_ms <= excluded.at_ms",
        )
        .bind(verdict.environment.as_str())
        .bind(verdict.release.as_str())
        .bind(verdict.version.as_str())
        .bind(i64::from(verdict.passed))
        .bind(super::environments::encode_json(
            "verdict reasons",
            &verdict.reasons,
        )?)
        .bind(verdict.at_ms)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        tx.commit().await.map_err(database(OP))?;
        Ok(VerdictUpdate::Stored { previous })
    }

    /// An environment's verdict, if one was evaluated.
    pub async fn get_verdict(
        &self,
        environment: &str,
    ) -> Result<Option<EnvironmentVerdict>, StoreError> {
        sqlx::query_as::<_, VerdictRow>(
            "SELECT environment, release_name, release_version, passed, reasons_json, at_ms \
             FROM verdicts WHERE environment = $1",
        )
        .bind(environment)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a verdict"))?
        .map(VerdictRow::into_verdict)
        .transpose()
    }
}

#[derive(sqlx::FromRow)]
struct VerdictRow {
    environment: String,
    release_name: String,
    release_version: String,
    passed: i64,
    reasons_json: String,
    at_ms: i64,
}

impl VerdictRow {
    fn into_verdict(self) -> Result<EnvironmentVerdict, StoreError> {
        let key = format!("verdict of {}", self.environment);
        Ok(EnvironmentVerdict {
            reasons: super::environments::decode_json("verdict reasons", &key, &self.reasons_json)?,
            environment: self.environment,
            release: self.release_name,
            version: self.release_version,
            passed: self.passed != 0,
            at_ms: self.at_ms,
        })
    }
}
