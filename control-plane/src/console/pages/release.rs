//! A release's page: components, scan findings with their VEX suppression, its
//! promotions, and their evidence packets.

#[allow(clippy::wildcard_imports)]
use super::*;

struct ComponentRow {
    name: String,
    image: String,
    digest: String,
    scan: String,
}

struct PromotionRow {
    id: String,
    environment: String,
    state: String,
    state_text: String,
    requested: String,
    decision: String,
}

#[derive(Template)]
#[template(path = "release.html")]
pub(super) struct ReleasePage {
    name: String,
    version: String,
    created_by: String,
    created_at: String,
    components: Vec<ComponentRow>,
    findings: Vec<(String, String, String, String, String)>,
    promotions: Vec<PromotionRow>,
    operator: bool,
    csrf: String,
}

pub(super) async fn release(
    signed: &Signed,
    name: &str,
    version: &str,
) -> Result<ReleasePage, AppError> {
    let app = &signed.app;
    let release = app.store.get_release(name, version).await.map_err(|e| {
        if e.is_not_found() {
            AppError::new(
                ErrorKind::NotFound,
                "unknown_release",
                format!("no release {name}@{version}"),
            )
        } else {
            e.into()
        }
    })?;
    let mut components = Vec::new();
    let mut findings = Vec::new();
    for component in &release.components {
        let digest = component.digest.to_string();
        let scan = match app.scan_detail(&digest).await {
            Ok(detail) => {
                let open = detail
                    .findings
                    .iter()
                    .filter(|f| f.suppressed_by.is_none())
                    .count();
                for shown in &detail.findings {
                    findings.push((
                        component.name.clone(),
                        shown.finding.vulnerability.clone(),
                        format!("{:?}", shown.finding.severity).to_lowercase(),
                        format!(
                            "{} {}",
                            shown.finding.package, shown.finding.installed_version
                        ),
                        shown.suppressed_by.as_ref().map_or_else(
                            || "not suppressed".to_owned(),
                            |s| format!("suppressed by {}", s.vex_id),
                        ),
                    ));
                }
                format!(
                    "{} report(s), {} finding(s), {open} not suppressed",
                    detail.reports.len(),
                    detail.findings.len()
                )
            }
            Err(error) if error.kind == ErrorKind::NotFound => "not scanned".to_owned(),
            Err(error) => return Err(error),
        };
        components.push(ComponentRow {
            name: component.name.clone(),
            image: component.image.clone(),
            digest,
            scan,
        });
    }
    let promotions = app
        .store
        .list_promotions(None, None, 500)
        .await?
        .into_iter()
        .filter(|p| p.release == release.name && p.version == release.version)
        .map(|p| PromotionRow {
            state: p.state.as_str().to_owned(),
            state_text: state_text(p.state),
            requested: format!("{} by {}", format_utc_ms(p.requested_at_ms), p.requested_by),
            decision: p.decision_id.clone().unwrap_or_default(),
            environment: p.environment,
            id: p.id,
        })
        .collect();
    Ok(ReleasePage {
        name: release.name.clone(),
        version: release.version.clone(),
        created_by: release.created_by.clone(),
        created_at: format_utc_ms(release.created_at_ms),
        components,
        findings,
        promotions,
        operator: signed.caller.require(Permission::Operate).is_ok(),
        csrf: signed.csrf.clone(),
    })
}

/// `GET /console/releases/{name}/{version}`
pub async fn release_page(
    State(state): State<ApiState>,
    signed: Signed,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let view = View::Release(name, version);
    show(&state, &signed, &view).await
}

/// `GET /console/decisions/{id}/evidence`: the evidence packet, as `GET
/// /api/v1/decisions/{id}/evidence` (viewer).
pub async fn evidence(signed: Signed, Path(id): Path<String>) -> Response {
    if let Err(error) = signed.caller.require(Permission::Read) {
        return error.into_response();
    }
    match signed.app.evidence_packet(&id).await {
        Ok(bytes) => {
            let file = format!(
                "attachment; filename=\"evidence-{}.tar.gz\"",
                id.trim_start_matches("sha256:")
                    .chars()
                    .take(16)
                    .collect::<String>()
            );
            (
                [
                    (http::header::CONTENT_TYPE, "application/gzip".to_owned()),
                    (http::header::CONTENT_DISPOSITION, file),
                ],
                bytes,
            )
                .into_response()
        }
        Err(error) => crate::api::envelope::ApiError(error).into_response(),
    }
}

/// The scan-import form of a release's page.
#[derive(Debug, Deserialize)]
pub struct ScanForm {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// The digest a report covers (empty for a VEX document).
    #[serde(default)]
    pub image: String,
    /// The document: Trivy or Grype JSON, or OpenVEX.
    #[serde(default)]
    pub document: String,
}

/// `POST /console/releases/{name}/{version}/scans`: as `POST /api/v1/scans` (operator):
/// a Trivy or Grype report for one of the release's digests, or an OpenVEX document.
pub async fn import_scan(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Form(form): Form<ScanForm>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let view = View::Release(name, version);
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        caller.require(Permission::Operate).map_err(|e| e.0)?;
        if form.document.trim().is_empty() {
            return Err(AppError::invalid(
                "paste a Trivy or Grype report or an OpenVEX document",
            ));
        }
        let image = Some(form.image.trim()).filter(|i| !i.is_empty());
        let imported = app
            .import_scan(form.document.as_bytes(), image, &caller.0)
            .await?;
        let what = if imported.kind == "openvex" {
            format!("{} statement(s)", imported.statements)
        } else {
            format!("{} finding(s)", imported.findings)
        };
        Ok((
            format!(
                "{} document {} {}: {what}",
                imported.kind,
                imported.document_id,
                if imported.created {
                    "imported"
                } else {
                    "was imported before"
                }
            ),
            Extra::default(),
        ))
    })
    .await
}
