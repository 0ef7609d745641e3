//! `/api/v1/offline/kits` and `/api/v1/evidence/imports`: offline kits assembled and
//! signed by this server, and decision records imported from another server's kit
//! (docs/offline.md).

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::MAX_KIT_RELEASES;
use crate::error::AppError;
use stella_decision::offline::KitDownload;

/// Body of a kit request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleRequest {
    /// The releases, each `NAME@VERSION`.
    pub releases: Vec<String>,
}

/// Bundles an offline kit.
///
/// The kit of the releases named: an OCI image layout of every component image,
/// fetched by digest from its registry with the stored credentials; the releases;
/// their scan reports and every VEX document; each decision on them as its evidence
/// packet; the agent binaries and packages this server serves (from its own `GET
/// /api/v1/downloads`, with the caller's credentials; none when that answers 404); and
/// `manifest.json`, every file's sha256 and size, signed by this server's
/// key in `manifest.sig.json`. A plain tar with sorted entries and fixed metadata: the
/// same stored data and registry content give the same bytes. Needs the operator
/// role.
#[utoipa::path(post, path = "/api/v1/offline/kits", tag = "offline", operation_id = "bundleKit",
    request_body = BundleRequest,
    responses(
        (status = 200, description = "The kit", content_type = "application/x-tar", body = Vec<u8>),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such release (`unknown_release`)", body = ErrorEnvelope),
        (status = 422, description = "A registry does not hold an image, or refused access (`image_unavailable`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn bundle_kit(
    State(tenants): State<Arc<crate::tenants::Tenants>>,
    Scoped(app): Scoped,
    caller: Caller,
    headers: http::HeaderMap,
    body: Result<ApiJson<BundleRequest>, ApiError>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    if body.releases.len() > MAX_KIT_RELEASES {
        return Err(
            AppError::invalid(format!("a kit holds at most {MAX_KIT_RELEASES} releases")).into(),
        );
    }
    let mut releases = Vec::with_capacity(body.releases.len());
    for release in &body.releases {
        let Some((name, version)) = release.split_once('@') else {
            return Err(
                AppError::invalid(format!("release `{release}` is not NAME@VERSION")).into(),
            );
        };
        releases.push((name.to_owned(), version.to_owned()));
    }
    let downloads = served_downloads(&tenants, &headers).await?;
    let bundled = app.bundle_kit(&releases, downloads).await?;
    let tar = bundled.kit.to_tar().map_err(|e| {
        AppError::new(
            crate::error::ErrorKind::Internal,
            "kit",
            format!("cannot write the offline kit: {e}"),
        )
    })?;
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                http::HeaderName::from_static("x-stella-kit-images"),
                bundled.images.to_string(),
            ),
            (
                http::HeaderName::from_static("x-stella-kit-blobs"),
                bundled.blobs.to_string(),
            ),
        ],
        tar,
    ))
}

/// Body of an evidence import.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportEvidence {
    /// The evidence packet (`.tar.gz`), base64.
    pub packet: String,
    /// The public key (PEM) the kit was verified with; the packet must verify against it.
    pub key_pem: String,
    /// `sha256:` of the manifest of the kit it came in.
    pub kit_manifest: String,
}

/// What an evidence import did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportedEvidenceView {
    /// The decision id.
    pub decision_id: String,
    /// The key that signed it.
    pub key_id: String,
    /// `false` when it had been imported before.
    pub created: bool,
}

/// Imports a decision record.
///
/// Keeps a decision record another server made, as the evidence packet it came in:
/// verified against the key given (its signature, every file, and the decision
/// recomputed from its inputs), then stored by decision id. Served afterwards by
/// `GET /api/v1/decisions/{id}/evidence`, byte for byte, and listed by `GET
/// /api/v1/evidence/imports`. 201 when new, 200 when imported before. Needs the
/// operator role.
#[utoipa::path(post, path = "/api/v1/evidence/imports", tag = "offline", operation_id = "importEvidence",
    request_body = ImportEvidence,
    responses(
        (status = 201, description = "Imported", body = ImportedEvidenceView),
        (status = 200, description = "Imported before; nothing changed", body = ImportedEvidenceView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn import_evidence(
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<ImportEvidence>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<ImportedEvidenceView>)> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let packet = base64::engine::general_purpose::STANDARD
        .decode(body.packet.as_bytes())
        .map_err(|e| AppError::invalid(format!("packet is not base64: {e}")))?;
    let imported = app
        .import_evidence(&packet, &body.key_pem, &body.kit_manifest, &caller.0)
        .await?;
    let status = if imported.created {
        http::StatusCode::CREATED
    } else {
        http::StatusCode::OK
    };
    Ok((
        status,
        Json(ImportedEvidenceView {
            decision_id: imported.decision_id,
            key_id: imported.key_id,
            created: imported.created,
        }),
    ))
}

/// Filter by release name.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportedFilter {
    /// Release name.
    pub release: Option<String>,
}

/// An imported decision record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportedEvidenceItem {
    /// The decision id.
    pub decision_id: String,
    /// The key that signed it (the bundling server's).
    pub key_id: String,
    /// `allowed`, `blocked` or `rejected`.
    pub outcome: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// The environment it was decided for, on the bundling server.
    pub environment: String,
    /// `sha256:` of the manifest of the kit it came in.
    pub kit_manifest: String,
    /// Who imported it.
    pub imported_by: String,
    /// When.
    pub imported_at: String,
}

/// Imported decision records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportedEvidenceList {
    /// Newest import first.
    pub items: Vec<ImportedEvidenceItem>,
}

/// Lists imported decision records.
///
/// Decision records imported from offline kits, newest first. Their packets are at
/// `GET /api/v1/decisions/{id}/evidence`. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/evidence/imports", tag = "offline", operation_id = "listImportedEvidence",
    params(ImportedFilter),
    responses(
        (status = 200, description = "The records", body = ImportedEvidenceList),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_imported_evidence(
    Scoped(app): Scoped,
    caller: Caller,
    filter: Result<ApiQuery<ImportedFilter>, ApiError>,
) -> ApiResult<Json<ImportedEvidenceList>> {
    caller.require(Permission::Read)?;
    let ApiQuery(filter) = filter?;
    let items = app
        .imported_evidence(filter.release.as_deref())
        .await?
        .into_iter()
        .map(|e| ImportedEvidenceItem {
            decision_id: e.decision_id,
            key_id: e.key_id,
            outcome: e.outcome,
            release: e.release,
            version: e.version,
            environment: e.environment,
            kit_manifest: e.kit_manifest,
            imported_by: e.imported_by,
            imported_at: rfc3339(e.imported_at_ms),
        })
        .collect();
    Ok(Json(ImportedEvidenceList { items }))
}

/// The most bytes one download may have when it goes into a kit: 512 MiB.
const MAX_DOWNLOAD_BYTES: usize = 512 * 1024 * 1024;

/// The agent binaries and packages this server serves, asked of its own routes
/// (`GET /api/v1/downloads`, then each `GET /downloads/{name}`) in process, with the
/// caller's credentials: the kit then carries exactly what the server hands out, each
/// file checked against the listing's size and sha256. `None` when the listing answers
/// 404 (this server serves no downloads).
async fn served_downloads(
    tenants: &Arc<crate::tenants::Tenants>,
    headers: &http::HeaderMap,
) -> Result<Option<Vec<(KitDownload, Vec<u8>)>>, ApiError> {
    let listing = own_get(tenants, headers, "/api/v1/downloads").await?;
    let (status, bytes) = match listing {
        Some(answer) => answer,
        None => return Ok(None),
    };
    if status != http::StatusCode::OK {
        return Err(downloads_error(format!("GET /api/v1/downloads answered {status}")).into());
    }
    #[derive(Deserialize)]
    struct Listing {
        items: Vec<ListedDownload>,
    }
    #[derive(Deserialize)]
    struct ListedDownload {
        #[serde(flatten)]
        download: KitDownload,
        url: String,
    }
    let listing: Listing = serde_json::from_slice(&bytes)
        .map_err(|e| downloads_error(format!("GET /api/v1/downloads: not a listing: {e}")))?;
    let mut downloads = Vec::with_capacity(listing.items.len());
    for item in listing.items {
        let name = &item.download.name;
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(
                downloads_error(format!("the listing names {name:?}, not a file name")).into(),
            );
        }
        if !item.url.starts_with("/downloads/") {
            return Err(downloads_error(format!(
                "{name}: url {:?} is not under /downloads/",
                item.url
            ))
            .into());
        }
        let (status, bytes) = own_get(tenants, headers, &item.url)
            .await?
            .ok_or_else(|| downloads_error(format!("GET {}: 404", item.url)))?;
        if status != http::StatusCode::OK {
            return Err(downloads_error(format!("GET {} answered {status}", item.url)).into());
        }
        let actual = stella_decision::sha256_id(&bytes);
        if actual != format!("sha256:{}", item.download.sha256)
            || bytes.len() as u64 != item.download.size
        {
            return Err(downloads_error(format!(
                "{name}: the file served is {actual} ({} bytes), the listing says sha256:{} ({} bytes)",
                bytes.len(),
                item.download.sha256,
                item.download.size
            ))
            .into());
        }
        downloads.push((item.download, bytes.to_vec()));
    }
    Ok(Some(downloads))
}

/// `GET path` through this server's own router, as the caller; `None` on 404.
async fn own_get(
    tenants: &Arc<crate::tenants::Tenants>,
    headers: &http::HeaderMap,
    path: &str,
) -> Result<Option<(http::StatusCode, axum::body::Bytes)>, ApiError> {
    use tower::ServiceExt as _;
    let mut request = http::Request::get(path);
    if let Some(authorization) = headers.get(http::header::AUTHORIZATION) {
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    let request = request
        .body(axum::body::Body::empty())
        .map_err(|e| downloads_error(format!("GET {path}: {e}")))?;
    let response = match super::router(tenants.clone()).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status();
    if status == http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let bytes = axum::body::to_bytes(response.into_body(), MAX_DOWNLOAD_BYTES)
        .await
        .map_err(|e| downloads_error(format!("GET {path}: {e}")))?;
    Ok(Some((status, bytes)))
}

fn downloads_error(message: impl Into<String>) -> AppError {
    let message = message.into();
    AppError::new(
        crate::error::ErrorKind::Internal,
        "kit_downloads",
        format!("cannot add this server's downloads to the kit: {message}"),
    )
}
