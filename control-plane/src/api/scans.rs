//! `/api/v1/scans`: scan reports (Trivy, Grype) and OpenVEX documents, imported as
//! they are; and what is known about one image digest.

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{
    ApiDocument, ApiError, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission,
};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::{Reevaluation, ScanDetail, ScanImport};

/// The image an import is for.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportTarget {
    /// The image the report covers: `sha256:<hex>`, `registry/repository@sha256:<hex>`,
    /// or a tag reference, resolved to a digest now. Required for a report; optional
    /// for a VEX document, which names its products itself.
    pub image: Option<String>,
}

/// What an import stored and which environments it evaluated again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScanImportView {
    /// `sha256:` of the document's bytes, as stored.
    pub document_id: String,
    /// `trivy`, `grype` or `openvex`.
    pub kind: String,
    /// The image digest the report covers (for VEX: the image given, if any).
    pub digest: Option<String>,
    /// The findings the report lists (0 for VEX).
    pub findings: usize,
    /// The statements of a VEX document (0 for a report).
    pub statements: usize,
    /// Whether anything was new (201); `false` when the same bytes were imported
    /// before, for the same image (200).
    pub created: bool,
    /// Every environment evaluated again: for a report, those whose current release
    /// contains the digest; for VEX, every environment with a current release.
    pub reevaluated: Vec<ReevaluationView>,
}

/// The security verdict of one environment after an import.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReevaluationView {
    /// The environment.
    pub environment: String,
    /// The release running there, `NAME@VERSION`.
    pub release: String,
    /// `passing` or `blocking`.
    pub state: String,
    /// Whether the verdict differs from the one before (or there was none).
    pub changed: bool,
}

impl From<Reevaluation> for ReevaluationView {
    fn from(done: Reevaluation) -> Self {
        ReevaluationView {
            environment: done.environment,
            release: format!("{}@{}", done.release, done.version),
            state: verdict_state(done.passed).to_owned(),
            changed: done.changed,
        }
    }
}

impl From<ScanImport> for ScanImportView {
    fn from(import: ScanImport) -> Self {
        ScanImportView {
            document_id: import.document_id,
            kind: import.kind.to_owned(),
            digest: import.digest,
            findings: import.findings,
            statements: import.statements,
            created: import.created,
            reevaluated: import.reevaluated.into_iter().map(Into::into).collect(),
        }
    }
}

/// `passing` or `blocking`, as `env show` says it.
pub fn verdict_state(passed: bool) -> &'static str {
    if passed {
        "passing"
    } else {
        "blocking"
    }
}

/// Imports a scan report or a VEX document.
///
/// The body is the document exactly as the tool wrote it (UTF-8 JSON, at most
/// `api_max_scan_bytes`): a Trivy JSON report (SchemaVersion 2), a Grype JSON report
/// or an OpenVEX document, told apart by content. It is stored under `sha256:` of its
/// bytes. A report needs `image`, and must name that image's digest when it names any.
/// Then every environment running a release the document concerns is evaluated again
/// by its security gate; a verdict that turns to blocking is a `verdict.changed` event.
/// 201 when something was new, 200 when the same bytes were imported before (for the
/// same image). Needs the operator role.
#[utoipa::path(post, path = "/api/v1/scans", tag = "scans", operation_id = "importScan",
    params(ImportTarget),
    request_body(content = Object, content_type = "application/json",
        description = "A Trivy or Grype JSON report or an OpenVEX document, as written"),
    responses(
        (status = 201, description = "The document was stored", body = ScanImportView),
        (status = 200, description = "The same document was imported before", body = ScanImportView),
        (status = 400, description = "Not a supported document (`invalid_scan`, with the reason), a report without `image` or an invalid image (`invalid_argument`), a report that names other digests than the image's (`report_mismatch`), or a tag the registry does not know (`image_unresolved`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 413, description = "The document is larger than `api_max_scan_bytes` (`payload_too_large`)", body = ErrorEnvelope),
        (status = 422, description = "The registry refused access to the image (`image_unresolved`)", body = ErrorEnvelope),
        (status = 503, description = "The registry did not answer and no release records the tag (`image_unresolved`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn import_scan(
    Scoped(app): Scoped,
    caller: Caller,
    target: Result<ApiQuery<ImportTarget>, ApiError>,
    bytes: Result<ApiDocument, ApiError>,
) -> ApiResult<(http::StatusCode, Json<ScanImportView>)> {
    caller.require(Permission::Operate)?;
    let (ApiQuery(target), ApiDocument(bytes)) = (target?, bytes?);
    let import = app
        .import_scan(&bytes, target.image.as_deref(), &caller.0)
        .await?;
    let status = if import.created {
        http::StatusCode::CREATED
    } else {
        http::StatusCode::OK
    };
    Ok((status, Json(import.into())))
}

/// What is known about one image digest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScanView {
    /// The digest.
    pub digest: String,
    /// Every report imported for it, newest first.
    pub reports: Vec<ReportView>,
    /// The findings of the reports that count (the newest of each scanner), merged
    /// (one per vulnerability, package and version), after VEX; most severe first. No
    /// block threshold is applied: each environment applies its own.
    pub findings: Vec<FindingView>,
}

/// A report on a digest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportView {
    /// `sha256:` of the report.
    pub document_id: String,
    /// `trivy` or `grype`.
    pub kind: String,
    /// The scanner's version, when the report records it.
    pub scanner_version: Option<String>,
    /// The image as given at import.
    pub image: String,
    /// The findings it lists.
    pub findings: usize,
    /// Whether the security gate reads it: the newest report of its scanner.
    pub current: bool,
    /// Who imported it.
    pub imported_by: String,
    /// When.
    pub imported_at: String,
}

/// One finding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FindingView {
    /// The vulnerability (`CVE-2024-45491`, `GHSA-…`).
    pub id: String,
    /// Other ids of it.
    pub aliases: Vec<String>,
    /// `unknown`, `negligible`, `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// The package.
    pub package: String,
    /// Its installed version.
    pub installed_version: String,
    /// The version(s) that fix it, if any.
    pub fixed_version: Option<String>,
    /// The package URL, when the scanner gives one.
    pub purl: Option<String>,
    /// A one-line title, when the scanner gives one.
    pub title: Option<String>,
    /// The VEX statement that sets it aside, if the latest one that applies does.
    pub suppressed_by: Option<SuppressionView>,
}

/// The VEX statement that suppresses a finding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SuppressionView {
    /// The stored VEX document, `sha256:` of its bytes.
    pub document_id: String,
    /// The document's own `@id`.
    pub vex_id: String,
    /// `not_affected` or `fixed`.
    pub status: String,
    /// The statement's justification, when it gives one.
    pub justification: Option<String>,
}

impl From<ScanDetail> for ScanView {
    fn from(detail: ScanDetail) -> Self {
        ScanView {
            digest: detail.digest,
            reports: detail
                .reports
                .into_iter()
                .map(|r| ReportView {
                    document_id: r.link.document_id,
                    kind: r.link.kind,
                    scanner_version: r.scanner_version,
                    image: r.link.image,
                    findings: r.findings,
                    current: r.current,
                    imported_by: r.link.imported_by,
                    imported_at: rfc3339(r.link.imported_at_ms),
                })
                .collect(),
            findings: detail
                .findings
                .into_iter()
                .map(|shown| FindingView {
                    id: shown.finding.vulnerability,
                    aliases: shown.finding.aliases,
                    severity: shown.finding.severity.as_str().to_owned(),
                    package: shown.finding.package,
                    installed_version: shown.finding.installed_version,
                    fixed_version: shown.finding.fixed_version,
                    purl: shown.finding.purl,
                    title: shown.finding.title,
                    suppressed_by: shown.suppressed_by.map(|s| SuppressionView {
                        document_id: s.document_id,
                        vex_id: s.vex_id,
                        status: s.status.as_str().to_owned(),
                        justification: s.justification,
                    }),
                })
                .collect(),
        }
    }
}

/// Shows the scan reports and findings of an image digest.
///
/// Every report imported for the digest, and the findings of those the security gate
/// reads (the newest of each scanner), merged, with the VEX statement that suppresses
/// each, if any. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/scans/{digest}", tag = "scans", operation_id = "getScan",
    params(("digest" = String, Path, description = "image digest, `sha256:<hex>`")),
    responses(
        (status = 200, description = "The reports and findings", body = ScanView),
        (status = 400, description = "Not a `sha256:<hex>` digest (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No report was imported for the digest (`not_scanned`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_scan(
    Scoped(app): Scoped,
    caller: Caller,
    Path(digest): Path<String>,
) -> ApiResult<Json<ScanView>> {
    caller.require(Permission::Read)?;
    Ok(Json(app.scan_detail(&digest).await?.into()))
}
