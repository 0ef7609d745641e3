//! The security verdict: the findings of each image of a release after VEX, and whether
//! any of them, or a missing scan, blocks the promotion.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::purl::{image_digest, Purl};
use super::{
    normalise_digest, Finding, ImageSubject, Report, Severity, VexDocument, VexProduct,
    VexStatement, VexStatus,
};

/// At most this many blocking findings of one image are reasons of their own.
const REASONS_PER_IMAGE: usize = 20;

/// The VEX statement that set a finding aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// The id of the VEX document the statement is in.
    pub document: String,
    /// Its status: `not_affected` or `fixed`.
    pub status: VexStatus,
    /// Its justification label, when it gives one.
    pub justification: Option<String>,
}

/// One image of a release with the scanner reports imported for its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScannedImage {
    /// The image.
    pub subject: ImageSubject,
    /// Every report imported for its digest; none when it was never scanned.
    pub reports: Vec<Report>,
}

/// Whether a release passes the security gate, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityVerdict {
    /// No image has a blocking finding, and every image was scanned (or may go unscanned).
    pub passed: bool,
    /// One verdict per image, sorted by component and digest.
    pub images: Vec<ImageVerdict>,
    /// One line per blocking finding (at most 20 per image, then a count), per missing
    /// scan, and per image allowed to go unscanned.
    pub reasons: Vec<String>,
}

/// The findings of one image after merging its reports and applying VEX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVerdict {
    /// The release component.
    pub component: String,
    /// The image digest, `sha256:<hex>`.
    pub digest: String,
    /// Whether any report was imported for it.
    pub scanned: bool,
    /// Its findings, most severe first, then by vulnerability, package and version.
    pub findings: Vec<EvaluatedFinding>,
}

/// A finding and what the gate made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluatedFinding {
    /// The finding, merged over every report of the image.
    #[serde(flatten)]
    pub finding: Finding,
    /// The VEX statement that sets it aside, if the latest applicable one does.
    pub suppressed_by: Option<Suppression>,
    /// Whether it blocks the promotion: not suppressed and at or above the block severity.
    pub blocking: bool,
}

/// Decides the security gate for the images of a release.
///
/// - The findings of all reports of an image are merged: one finding per vulnerability,
///   package and installed version, with the highest severity any report gives. A
///   vulnerability reported under a GHSA id by one scanner and under its CVE by another
///   (Grype's related vulnerabilities) is one finding, named by the CVE.
/// - A VEX statement applies to a finding when it names the vulnerability (by name or
///   alias, case-insensitively), one of its products names the image by digest (see
///   below) and, when that product lists subcomponents, one of them is the finding's
///   package. Of the applicable statements of all `vex` documents, the latest wins (its
///   timestamp, else its document's; RFC 3339 compared as instants; a statement with
///   neither is the earliest; ties go to the later document in `vex`, then the later
///   statement). `not_affected` and `fixed` set the finding aside; `affected` and
///   `under_investigation` do not — so a later `affected` revokes an earlier
///   `not_affected`.
/// - A product names the image when its `@id` or one of its identifiers is the digest,
///   the image's reference, any `name@sha256:<hex>` reference or a `pkg:oci` purl with the
///   same digest. Names, registries and tags are not compared: the digest identifies the
///   content. A tag-only reference never matches, since what it points to cannot be
///   checked offline.
/// - A finding blocks when it is not set aside and `block` is set and its severity is at
///   or above it; `None` blocks nothing.
/// - An image without any report blocks ("no verdict") unless `allow_unscanned`.
///
/// The result depends only on the arguments and is sorted (the order of `images` and of
/// their reports does not matter), so the same inputs serialise to the same bytes.
pub fn evaluate(
    images: &[ScannedImage],
    vex: &[VexDocument],
    block: Option<Severity>,
    allow_unscanned: bool,
) -> SecurityVerdict {
    // An image listed twice (the same component and digest) is one image with the reports of both.
    let mut subjects: BTreeMap<(String, String), Reported<'_>> = BTreeMap::new();
    for image in images {
        let digest =
            normalise_digest(&image.subject.digest).unwrap_or_else(|| image.subject.digest.clone());
        let (references, reports) = subjects
            .entry((image.subject.component.clone(), digest))
            .or_default();
        references.insert(image.subject.reference.as_str());
        reports.extend(image.reports.iter());
    }

    let mut passed = true;
    let mut verdicts = Vec::with_capacity(subjects.len());
    let mut reasons = Vec::new();
    for ((component, digest), (references, reports)) in subjects {
        let label = format!("{component} ({}…)", short_digest(&digest));
        if reports.is_empty() {
            if allow_unscanned {
                reasons.push(format!("{label}: unscanned, allowed"));
            } else {
                passed = false;
                reasons.push(format!("no verdict: {label} has no scan report"));
            }
            verdicts.push(ImageVerdict {
                component,
                digest,
                scanned: false,
                findings: Vec::new(),
            });
            continue;
        }

        let image = Image {
            digest: &digest,
            references: &references,
        };
        let mut findings: Vec<EvaluatedFinding> =
            merge(reports.iter().flat_map(|report| &report.findings))
                .into_iter()
                .map(|finding| {
                    let suppressed_by = suppression(&finding, &image, vex);
                    let blocking = suppressed_by.is_none()
                        && block.is_some_and(|block| finding.severity >= block);
                    EvaluatedFinding {
                        finding,
                        suppressed_by,
                        blocking,
                    }
                })
                .collect();
        findings.sort_by(|a, b| finding_order(&a.finding, &b.finding));

        let blocking: Vec<&Finding> = findings
            .iter()
            .filter(|finding| finding.blocking)
            .map(|finding| &finding.finding)
            .collect();
        if !blocking.is_empty() {
            passed = false;
        }
        for finding in blocking.iter().take(REASONS_PER_IMAGE) {
            let fixed = finding
                .fixed_version
                .as_deref()
                .map(|fixed| format!(" (fixed in {fixed})"))
                .unwrap_or_default();
            reasons.push(format!(
                "{label}: {} {} in {} {}{fixed}",
                finding.vulnerability, finding.severity, finding.package, finding.installed_version
            ));
        }
        if blocking.len() > REASONS_PER_IMAGE {
            reasons.push(format!(
                "{label}: … and {} more blocking findings",
                blocking.len() - REASONS_PER_IMAGE
            ));
        }
        verdicts.push(ImageVerdict {
            component,
            digest,
            scanned: true,
            findings,
        });
    }

    SecurityVerdict {
        passed,
        images: verdicts,
        reasons,
    }
}

/// The references an image was listed under and the reports imported for it.
type Reported<'a> = (BTreeSet<&'a str>, Vec<&'a Report>);

/// The image a statement must name.
struct Image<'a> {
    digest: &'a str,
    references: &'a BTreeSet<&'a str>,
}

/// `sha256:` and the first 12 hex digits, as image ids are usually shortened.
fn short_digest(digest: &str) -> String {
    digest.chars().take(19).collect()
}

/// The total order of findings: most severe first, then vulnerability, package and
/// version, then the remaining fields so that no two distinct findings tie.
fn finding_order(a: &Finding, b: &Finding) -> Ordering {
    let key = |finding: &Finding| {
        (
            Reverse(finding.severity),
            finding.vulnerability.clone(),
            finding.package.clone(),
            finding.installed_version.clone(),
            finding.fixed_version.clone(),
            finding.purl.clone(),
            finding.title.clone(),
            finding.aliases.clone(),
        )
    };
    key(a).cmp(&key(b))
}

/// The id under which reports of one vulnerability are merged: a CVE id when the finding
/// has one, as its id or an alias (scanners agree on CVE ids, not on GHSA or vendor ids).
fn merge_id(finding: &Finding) -> String {
    let is_cve = |id: &String| id.to_ascii_uppercase().starts_with("CVE-");
    if is_cve(&finding.vulnerability) {
        return finding.vulnerability.to_ascii_uppercase();
    }
    finding
        .aliases
        .iter()
        .filter(|alias| is_cve(alias))
        .map(|alias| alias.to_ascii_uppercase())
        .min()
        .unwrap_or_else(|| finding.vulnerability.to_ascii_uppercase())
}

/// One finding per (vulnerability, package, installed version): the highest severity of
/// any report, every id as an alias, and the fix, purl and title of the most severe
/// report that gives them (ties broken by content, never by input order).
fn merge<'a>(findings: impl Iterator<Item = &'a Finding>) -> Vec<Finding> {
    let mut groups: BTreeMap<(String, &str, &str), Vec<&Finding>> = BTreeMap::new();
    for finding in findings {
        groups
            .entry((
                merge_id(finding),
                &finding.package,
                &finding.installed_version,
            ))
            .or_default()
            .push(finding);
    }
    let mut merged = Vec::with_capacity(groups.len());
    for ((merge_id, _, _), mut members) in groups {
        members.sort_by(|a, b| finding_order(a, b));
        let Some(first) = members.first() else {
            continue;
        };
        let vulnerability = members
            .iter()
            .find(|member| member.vulnerability.eq_ignore_ascii_case(&merge_id))
            .unwrap_or(first)
            .vulnerability
            .clone();
        let aliases: BTreeSet<String> = members
            .iter()
            .flat_map(|member| std::iter::once(&member.vulnerability).chain(&member.aliases))
            .filter(|id| !id.eq_ignore_ascii_case(&vulnerability))
            .cloned()
            .collect();
        merged.push(Finding {
            vulnerability,
            aliases: aliases.into_iter().collect(),
            severity: first.severity,
            package: first.package.clone(),
            installed_version: first.installed_version.clone(),
            fixed_version: members
                .iter()
                .find_map(|member| member.fixed_version.clone()),
            purl: members.iter().find_map(|member| member.purl.clone()),
            title: members.iter().find_map(|member| member.title.clone()),
        });
    }
    merged
}

/// The suppression of the latest statement that applies to `finding` in `image`, if that
/// statement sets it aside.
fn suppression(
    finding: &Finding,
    image: &Image<'_>,
    documents: &[VexDocument],
) -> Option<Suppression> {
    let ids: Vec<String> = std::iter::once(&finding.vulnerability)
        .chain(&finding.aliases)
        .map(|id| id.to_ascii_lowercase())
        .collect();
    let package = finding.purl.as_deref().and_then(Purl::parse);

    type Rank = (Option<DateTime<FixedOffset>>, usize, usize);
    let mut latest: Option<(Rank, &VexDocument, &VexStatement)> = None;
    for (document_index, document) in documents.iter().enumerate() {
        let document_time = document.timestamp.as_deref().and_then(parse_time);
        for (statement_index, statement) in document.statements.iter().enumerate() {
            let names_vulnerability = std::iter::once(&statement.vulnerability)
                .chain(&statement.aliases)
                .any(|name| ids.contains(&name.to_ascii_lowercase()));
            if !names_vulnerability
                || !statement.products.iter().any(|product| {
                    names_image(product, image) && covers(product, finding, package.as_ref())
                })
            {
                continue;
            }
            let time = statement
                .timestamp
                .as_deref()
                .and_then(parse_time)
                .or(document_time);
            let rank = (time, document_index, statement_index);
            if latest.as_ref().is_none_or(|(best, _, _)| rank > *best) {
                latest = Some((rank, document, statement));
            }
        }
    }
    let (_, document, statement) = latest?;
    statement.status.suppresses().then(|| Suppression {
        document: document.id.clone(),
        status: statement.status,
        justification: statement.justification.clone(),
    })
}

fn parse_time(time: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(time).ok()
}

/// Whether the product's `@id` or an identifier names the image by its digest.
fn names_image(product: &VexProduct, image: &Image<'_>) -> bool {
    std::iter::once(&product.id)
        .chain(&product.identifiers)
        .any(|identifier| {
            image.references.contains(identifier.as_str())
                || image_digest(identifier).is_some_and(|digest| digest == image.digest)
        })
}

/// Whether the statement's product covers the finding's package: always when it lists no
/// subcomponents, else when one of them is the package (compared as purls; a finding
/// without a purl cannot be shown to be one of them).
fn covers(product: &VexProduct, finding: &Finding, package: Option<&Purl>) -> bool {
    if product.subcomponents.is_empty() {
        return true;
    }
    product
        .subcomponents
        .iter()
        .any(|subcomponent| match (Purl::parse(subcomponent), package) {
            (Some(subcomponent), Some(package)) => subcomponent.names_package(package),
            _ => finding.purl.as_deref() == Some(subcomponent.as_str()),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::scan::Scanner;

    const DIGEST: &str = "sha256:e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";

    fn finding(id: &str, severity: Severity, package: &str) -> Finding {
        Finding {
            vulnerability: id.to_owned(),
            aliases: Vec::new(),
            severity,
            package: package.to_owned(),
            installed_version: "1.0".to_owned(),
            fixed_version: None,
            purl: Some(format!("pkg:deb/debian/{package}@1.0?arch=amd64")),
            title: None,
        }
    }

    fn image(findings: Vec<Finding>) -> ScannedImage {
        ScannedImage {
            subject: ImageSubject {
                component: "web".to_owned(),
                digest: DIGEST.to_owned(),
                reference: format!("registry.example.com/shop/web@{DIGEST}"),
            },
            reports: vec![Report {
                scanner: Scanner::Trivy,
                scanner_version: None,
                artifact_name: None,
                digests: vec![DIGEST.to_owned()],
                findings,
            }],
        }
    }

    #[test]
    fn reasons_stop_after_twenty_findings_per_image_with_a_count() {
        let findings = (0..23)
            .map(|n| finding(&format!("CVE-2024-{n:04}"), Severity::High, "libfoo"))
            .collect();
        let verdict = evaluate(&[image(findings)], &[], Some(Severity::High), false);
        assert!(!verdict.passed);
        assert_eq!(verdict.reasons.len(), 21);
        assert_eq!(
            verdict.reasons[0],
            "web (sha256:e93b60634151…): CVE-2024-0000 high in libfoo 1.0"
        );
        assert_eq!(
            verdict.reasons[20],
            "web (sha256:e93b60634151…): … and 3 more blocking findings"
        );
    }

    #[test]
    fn a_ghsa_and_its_cve_merge_under_the_cve() {
        let mut ghsa = finding("GHSA-4v7x-pqxf-cx7m", Severity::Medium, "net");
        ghsa.aliases = vec!["CVE-2023-45288".to_owned()];
        ghsa.fixed_version = Some("0.23.0".to_owned());
        let mut cve = finding("CVE-2023-45288", Severity::High, "net");
        cve.title = Some("x/net/http2: unlimited CONTINUATION frames".to_owned());
        let merged = merge([&ghsa, &cve].into_iter());
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].vulnerability, "CVE-2023-45288");
        assert_eq!(merged[0].aliases, vec!["GHSA-4v7x-pqxf-cx7m"]);
        assert_eq!(merged[0].severity, Severity::High);
        assert_eq!(merged[0].fixed_version.as_deref(), Some("0.23.0"));
        assert!(merged[0].title.is_some());

        // A GHSA without its CVE scanned elsewhere keeps its own id.
        let alone = merge([&ghsa].into_iter());
        assert_eq!(alone[0].vulnerability, "GHSA-4v7x-pqxf-cx7m");
        assert_eq!(alone[0].aliases, vec!["CVE-2023-45288"]);
    }

    #[test]
    fn statements_without_any_time_lose_to_timed_ones_whatever_the_order() {
        let statement = |status: VexStatus, timestamp: Option<&str>| VexStatement {
            vulnerability: "CVE-2024-0001".to_owned(),
            aliases: Vec::new(),
            products: vec![VexProduct {
                id: DIGEST.to_owned(),
                identifiers: Vec::new(),
                subcomponents: Vec::new(),
            }],
            status,
            justification: Some("component_not_present".to_owned())
                .filter(|_| status == VexStatus::NotAffected),
            impact_statement: None,
            action_statement: None,
            timestamp: timestamp.map(str::to_owned),
        };
        let document = VexDocument {
            id: "https://example.com/vex".to_owned(),
            author: None,
            timestamp: None,
            statements: vec![
                statement(VexStatus::NotAffected, Some("2024-01-01T00:00:00Z")),
                statement(VexStatus::Affected, None),
            ],
        };
        let scanned = image(vec![finding("CVE-2024-0001", Severity::Critical, "libfoo")]);
        let verdict = evaluate(&[scanned], &[document], Some(Severity::Critical), false);
        assert!(verdict.passed, "{:?}", verdict.reasons);
    }
}
