//! Scan reports and VEX documents: imported by content, linked to the image digest a
//! report covers, and followed by a new security verdict for every environment they
//! concern, computed by the same gate a promotion passes.

use std::collections::BTreeMap;
use std::sync::Arc;

use stella_decision::gates::{self, Documents, ReleaseInput};
use stella_decision::scan::{
    self, Finding, ImageSubject, Report, ScanDocument, ScannedImage, VexStatus,
};

use super::events::NewEvent;
use super::promotions::{gate_config, release_input, undecidable};
use super::{now_ms, sha256_id, App};
use crate::domain::{
    Deployment, Digest, Document, Environment, EventKind, ImageRef, Release, User,
};
use crate::error::{AppError, ErrorChain, ErrorKind};
use crate::store::{EnvironmentVerdict, ScanLink, ScanReportRef, VerdictUpdate};

/// Scan reports kept per image digest: the newest of each scanner counts.
const REPORT_KINDS: [&str; 2] = ["trivy", "grype"];

/// How many reasons a `verdict.changed` message names.
const REASONS_IN_EVENT: usize = 3;

/// What an import stored and what it changed.
#[derive(Debug, Clone)]
pub struct ScanImport {
    /// `sha256:` of the document's bytes.
    pub document_id: String,
    /// `trivy`, `grype` or `openvex`.
    pub kind: &'static str,
    /// The image digest a report covers (or the VEX document was imported for).
    pub digest: Option<String>,
    /// The findings of a report (0 for VEX).
    pub findings: usize,
    /// The statements of a VEX document (0 for a report).
    pub statements: usize,
    /// Whether anything was new; `false` when the same bytes were imported before.
    pub created: bool,
    /// The environments evaluated again.
    pub reevaluated: Vec<Reevaluation>,
}

/// The security verdict of one environment, evaluated again after an import.
#[derive(Debug, Clone)]
pub struct Reevaluation {
    /// The environment.
    pub environment: String,
    /// The release running there: name.
    pub release: String,
    /// The release running there: version.
    pub version: String,
    /// Whether it passes the environment's security gate.
    pub passed: bool,
    /// Whether the verdict differs from the one stored before (or there was none).
    pub changed: bool,
}

/// What is known about one image digest: its reports and its findings after VEX.
#[derive(Debug, Clone)]
pub struct ScanDetail {
    /// The digest.
    pub digest: String,
    /// Every report imported for it, newest first.
    pub reports: Vec<ReportDetail>,
    /// The findings of the reports that count (the newest of each scanner), merged,
    /// with what VEX makes of them; most severe first.
    pub findings: Vec<ShownFinding>,
}

/// One report on a digest.
#[derive(Debug, Clone)]
pub struct ReportDetail {
    /// Its link to the digest: id, kind, image as given, who imported it and when.
    pub link: ScanReportRef,
    /// The scanner's version, when the report records it.
    pub scanner_version: Option<String>,
    /// How many findings it lists.
    pub findings: usize,
    /// Whether it counts: the newest report of its scanner on this digest.
    pub current: bool,
}

/// A finding and the VEX statement that sets it aside, if one does.
#[derive(Debug, Clone)]
pub struct ShownFinding {
    /// The finding, merged over the reports that count.
    pub finding: Finding,
    /// What suppresses it.
    pub suppressed_by: Option<ShownSuppression>,
}

/// The VEX statement that suppresses a finding.
#[derive(Debug, Clone)]
pub struct ShownSuppression {
    /// The stored VEX document (`sha256:` of its bytes).
    pub document_id: String,
    /// The document's own `@id`.
    pub vex_id: String,
    /// `not_affected` or `fixed`.
    pub status: VexStatus,
    /// The statement's justification, when it gives one.
    pub justification: Option<String>,
}

/// The stored documents one security evaluation reads.
#[derive(Clone)]
pub(super) struct ScanInputs {
    /// Report ids per image digest: the newest of each scanner.
    pub reports: BTreeMap<String, Vec<String>>,
    /// Every VEX document id, oldest first.
    pub vex: Vec<String>,
    /// The documents by id.
    pub documents: Documents,
}

impl App {
    /// Imports a Trivy or Grype report or an OpenVEX document, told apart by content.
    ///
    /// A report needs `image` (a digest, a reference pinned by digest, or a tag, which is
    /// resolved now) and must name that digest when it names any. The bytes are stored
    /// as given under `sha256:` of them; importing them again changes nothing. Then every
    /// environment the document concerns is evaluated again, and one whose verdict turns
    /// to blocking gets a `verdict.changed` event.
    pub async fn import_scan(
        self: &Arc<Self>,
        bytes: &[u8],
        image: Option<&str>,
        imported_by: &User,
    ) -> Result<ScanImport, AppError> {
        let document = scan::parse_document(bytes).map_err(|error| {
            AppError::new(
                ErrorKind::InvalidArgument,
                "invalid_scan",
                error.to_string(),
            )
        })?;
        let content = std::str::from_utf8(bytes).map_err(|_| {
            AppError::new(
                ErrorKind::InvalidArgument,
                "invalid_scan",
                "the document is UTF-16: it is stored as given, so send it as UTF-8 \
                 (`stella scan import` converts it)",
            )
        })?;
        let image = image.map(str::trim).filter(|image| !image.is_empty());
        let digest = match (&document, image) {
            (ScanDocument::Report(_), None) => {
                return Err(AppError::invalid(
                    "a scan report needs the image it covers: give --image REF_OR_DIGEST",
                ))
            }
            (_, Some(image)) => Some(self.image_digest(image).await?),
            (ScanDocument::Vex(_), None) => None,
        };
        if let (ScanDocument::Report(report), Some(digest)) = (&document, &digest) {
            check_report_names(report, image.unwrap_or_default(), digest)?;
        }
        let (findings, statements) = match &document {
            ScanDocument::Report(report) => (report.findings.len(), 0),
            ScanDocument::Vex(vex) => (0, vex.statements.len()),
        };
        let kind = document.kind();
        let stored = Document {
            id: sha256_id(bytes),
            kind: kind.to_owned(),
            content: content.to_owned(),
            created_by: imported_by.name.clone(),
            created_at_ms: now_ms(),
        };
        let link = match (&document, &digest, image) {
            (ScanDocument::Report(_), Some(digest), Some(image)) => Some(ScanLink {
                digest: digest.as_str(),
                image,
            }),
            _ => None,
        };
        let created = self.store.import_scan_document(&stored, link).await?;
        tracing::info!(document_id = %stored.id, kind, digest = ?digest, created, "scan document imported");

        let subject = digest.clone().unwrap_or_else(|| stored.id.clone());
        let concerns = match &document {
            ScanDocument::Report(_) => digest.as_deref(),
            // VEX applies by its products: every running release may be concerned.
            ScanDocument::Vex(_) => None,
        };
        let reevaluated = self.reevaluate_running(concerns, &subject).await?;
        Ok(ScanImport {
            document_id: stored.id,
            kind,
            digest,
            findings,
            statements,
            created,
            reevaluated,
        })
    }

    /// The reports on a digest and its findings after VEX, with no block threshold
    /// applied; 404 `not_scanned` when no report was imported for it.
    pub async fn scan_detail(&self, digest: &str) -> Result<ScanDetail, AppError> {
        let digest = Digest::parse(digest.trim()).map_err(super::invalid)?;
        let links = self.store.scan_reports(digest.as_str()).await?;
        if links.is_empty() {
            return Err(AppError::new(
                ErrorKind::NotFound,
                "not_scanned",
                format!(
                    "no scan report was imported for {digest}: import one with `stella scan import --image {digest} FILE`"
                ),
            ));
        }
        let mut reports = Vec::with_capacity(links.len());
        let mut counting = Vec::new();
        for link in links {
            let stored = self.store.get_document(&link.document_id).await?;
            let report = match scan::parse_document(stored.content.as_bytes()) {
                Ok(ScanDocument::Report(report)) => report,
                Ok(ScanDocument::Vex(_)) | Err(_) => {
                    return Err(AppError::new(
                        ErrorKind::Internal,
                        "unreadable_document",
                        format!("stored scan report {} cannot be read", link.document_id),
                    ))
                }
            };
            // Listed newest first, in the order the gate picks the newest: the first of
            // each scanner counts.
            let current = !reports
                .iter()
                .any(|r: &ReportDetail| r.link.kind == link.kind);
            reports.push(ReportDetail {
                scanner_version: report.scanner_version.clone(),
                findings: report.findings.len(),
                current,
                link,
            });
            if current {
                counting.push(report);
            }
        }

        // Each VEX document goes in under its stored id, so a suppression names the
        // stored document rather than an `@id` several documents may share.
        let mut vex_ids = BTreeMap::new();
        let mut vex = Vec::new();
        for stored in self.store.list_documents("openvex").await? {
            if let Ok(ScanDocument::Vex(mut document)) =
                scan::parse_document(stored.content.as_bytes())
            {
                vex_ids.insert(stored.id.clone(), document.id.clone());
                document.id = stored.id;
                vex.push(document);
            }
        }
        let image = ScannedImage {
            subject: ImageSubject {
                component: digest.to_string(),
                digest: digest.to_string(),
                reference: digest.to_string(),
            },
            reports: counting,
        };
        let verdict = scan::evaluate(&[image], &vex, None, true);
        let findings = verdict
            .images
            .into_iter()
            .flat_map(|image| image.findings)
            .map(|evaluated| ShownFinding {
                finding: evaluated.finding,
                suppressed_by: evaluated.suppressed_by.map(|s| ShownSuppression {
                    vex_id: vex_ids.get(&s.document).cloned().unwrap_or_default(),
                    document_id: s.document,
                    status: s.status,
                    justification: s.justification,
                }),
            })
            .collect();
        Ok(ScanDetail {
            digest: digest.to_string(),
            reports,
            findings,
        })
    }

    /// Whether any report was imported for this digest.
    pub async fn is_scanned(&self, digest: &str) -> Result<bool, AppError> {
        for kind in REPORT_KINDS {
            if self.store.latest_report(digest, kind).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The reports (the newest of each scanner per digest) and VEX documents the
    /// security gate reads for `release`, with their contents.
    pub(super) async fn scan_inputs(&self, release: &ReleaseInput) -> Result<ScanInputs, AppError> {
        let digests: Vec<&str> = release
            .components
            .iter()
            .map(|c| c.digest.as_str())
            .collect();
        let latest = self.store.latest_report_ids(&digests).await?;
        let mut reports = BTreeMap::new();
        for component in &release.components {
            let ids: Vec<String> = REPORT_KINDS
                .iter()
                .filter_map(|kind| {
                    latest
                        .get(&(component.digest.clone(), (*kind).to_owned()))
                        .cloned()
                })
                .collect();
            if !ids.is_empty() {
                reports.insert(component.digest.clone(), ids);
            }
        }
        let vex = self.store.document_ids("openvex").await?;
        let ids: Vec<&str> = reports
            .values()
            .flatten()
            .chain(&vex)
            .map(String::as_str)
            .collect();
        let documents = self.documents(&ids).await?;
        Ok(ScanInputs {
            reports,
            vex,
            documents,
        })
    }

    /// Stores the verdict of what a succeeded deployment now runs; said by `env show`,
    /// not as an event. A failure is logged: the deployment succeeded regardless.
    pub(super) async fn record_deployed_verdict(&self, deployment: &Deployment) {
        let result = async {
            let env = self.environment(&deployment.environment).await?;
            let release = self
                .release_named(&deployment.release, &deployment.version)
                .await?;
            let verdict = self.security_verdict(&env, &release).await?;
            self.store.set_verdict(&verdict).await?;
            Ok::<_, AppError>(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(deployment_id = %deployment.id, %error, "cannot record the security verdict of a deployment");
        }
    }

    /// Evaluates again every environment whose current release contains `digest` (every
    /// environment with a current release when `None`), stores each verdict and emits
    /// `verdict.changed` about `subject` where one turned to blocking.
    async fn reevaluate_running(
        self: &Arc<Self>,
        digest: Option<&str>,
        subject: &str,
    ) -> Result<Vec<Reevaluation>, AppError> {
        let mut reevaluated = Vec::new();
        for env in self.store.list_environments().await? {
            let Some(current) = self
                .store
                .succeeded_deployments(&env.name, 1)
                .await?
                .into_iter()
                .next()
            else {
                continue;
            };
            let release = match self.release_named(&current.release, &current.version).await {
                Ok(release) => release,
                Err(error) => {
                    tracing::warn!(environment = %env.name, %error, "cannot read the release an environment runs");
                    continue;
                }
            };
            if let Some(digest) = digest {
                if !release
                    .components
                    .iter()
                    .any(|c| c.digest.as_str() == digest)
                {
                    continue;
                }
            }
            match self.reevaluate_environment(&env, &release, subject).await {
                Ok(done) => reevaluated.push(done),
                Err(error) => {
                    tracing::warn!(environment = %env.name, %error, "cannot evaluate the security verdict again");
                }
            }
        }
        Ok(reevaluated)
    }

    async fn reevaluate_environment(
        self: &Arc<Self>,
        env: &Environment,
        release: &Release,
        subject: &str,
    ) -> Result<Reevaluation, AppError> {
        let verdict = self.security_verdict(env, release).await?;
        let same_release = |stored: &EnvironmentVerdict| {
            stored.release == verdict.release && stored.version == verdict.version
        };
        let (passed, changed, turned_blocking) = match self.store.set_verdict(&verdict).await? {
            VerdictUpdate::Stored { previous } => {
                let before = previous
                    .as_ref()
                    .filter(|p| same_release(p))
                    .map(|p| p.passed);
                (
                    verdict.passed,
                    before != Some(verdict.passed),
                    !verdict.passed && before != Some(false),
                )
            }
            // A later evaluation is stored already: it stands, and said what changed.
            VerdictUpdate::Stale { current } => (current.passed, false, false),
        };
        tracing::info!(environment = %env.name, release = %release.name, version = %release.version, passed, changed, "security verdict evaluated");
        if turned_blocking {
            let mut reasons: Vec<&str> = verdict
                .reasons
                .iter()
                .take(REASONS_IN_EVENT)
                .map(String::as_str)
                .collect();
            let more = verdict.reasons.len().saturating_sub(REASONS_IN_EVENT);
            let and_more = format!("and {more} more");
            if more > 0 {
                reasons.push(&and_more);
            }
            self.emit(NewEvent {
                kind: EventKind::VerdictChanged,
                environment: Some(env.name.clone()),
                release: Some((release.name.clone(), release.version.clone())),
                subject: Some(subject.to_owned()),
                message: format!(
                    "{}@{} in {} is now blocked by its security gate: {}",
                    release.name,
                    release.version,
                    env.name,
                    reasons.join("; ")
                ),
            })
            .await;
        }
        Ok(Reevaluation {
            environment: env.name.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            passed,
            changed,
        })
    }

    /// The security gate of `env` over `release`, with the documents stored now. Its
    /// time is taken before anything is read, so a later evaluation wins a race.
    async fn security_verdict(
        &self,
        env: &Environment,
        release: &Release,
    ) -> Result<EnvironmentVerdict, AppError> {
        let at_ms = now_ms();
        let input = release_input(release);
        let ScanInputs {
            reports,
            vex,
            documents,
        } = self.scan_inputs(&input).await?;
        let (gate, verdict) =
            gates::security(&input, &gate_config(env), &reports, &vex, &documents)
                .map_err(undecidable)?;
        Ok(EnvironmentVerdict {
            environment: env.name.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            passed: verdict.passed,
            // Blocking: every reason; passing: the gate's summary line.
            reasons: if verdict.passed {
                vec![gate.reason]
            } else {
                verdict.reasons
            },
            at_ms,
        })
    }

    /// The digest an import names: `sha256:<hex>` as is, `repo@sha256:<hex>` its digest,
    /// a tag resolved through its registry now — or, when the registry cannot say, the
    /// digest a release recorded for that reference when it was created.
    async fn image_digest(&self, image: &str) -> Result<String, AppError> {
        if image.starts_with("sha256:") {
            return Digest::parse(image)
                .map(|digest| digest.to_string())
                .map_err(super::invalid);
        }
        let reference = ImageRef::parse(image).map_err(super::invalid)?;
        if let Some(digest) = &reference.digest {
            return Ok(digest.to_string());
        }
        let access = self.registry_access(&reference.registry).await?;
        let error = match self.registry.resolve(&reference, &access).await {
            Ok(digest) => return Ok(digest.to_string()),
            Err(error) => error,
        };
        if let Some(digest) = self.released_digest(&reference).await? {
            tracing::info!(image, %digest, error = %ErrorChain(&error), "registry did not resolve the image; using the digest a release recorded");
            return Ok(digest);
        }
        use crate::registry::RegistryError;
        let kind = match &error {
            RegistryError::NotFound { .. } => ErrorKind::InvalidArgument,
            RegistryError::Unauthorized { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Unavailable,
        };
        Err(AppError::new(
            kind,
            "image_unresolved",
            format!(
                "cannot resolve {image} to a digest ({}), and no release has it as a component: give the digest",
                ErrorChain(&error)
            ),
        ))
    }

    /// The digest the newest release with a component created from `reference` (the
    /// same registry, repository and tag) recorded.
    async fn released_digest(&self, reference: &ImageRef) -> Result<Option<String>, AppError> {
        for release in self.store.list_releases(None).await? {
            for component in &release.components {
                let Ok(source) = ImageRef::parse(&component.source) else {
                    continue;
                };
                if source.registry == reference.registry
                    && source.repository == reference.repository
                    && source.tag_or_latest() == reference.tag_or_latest()
                {
                    return Ok(Some(component.digest.to_string()));
                }
            }
        }
        Ok(None)
    }
}

/// Refuses a report that names digests for the image it scanned, none of them `digest`:
/// it was filed against the wrong image. A report that names none cannot be checked.
fn check_report_names(report: &Report, image: &str, digest: &str) -> Result<(), AppError> {
    if report.digests.is_empty() || report.names_digest(digest) {
        return Ok(());
    }
    let scanned = report
        .artifact_name
        .as_deref()
        .map(|name| format!(" (scanned as {name})"))
        .unwrap_or_default();
    let given = if image == digest {
        digest.to_owned()
    } else {
        format!("{image} ({digest})")
    };
    Err(AppError::new(
        ErrorKind::InvalidArgument,
        "report_mismatch",
        format!(
            "the report is of {}{scanned}, not of {given}: import it for the image it scanned",
            report.digests.join(", ")
        ),
    ))
}
