//! Grype JSON reports (`grype -o json`).
//!
//! Read from Grype's presenter model (`grype/presenter/models`): `matches[]` are the
//! findings, each a `vulnerability` (id, severity, `fix.versions`), its
//! `relatedVulnerabilities` (the same vulnerability under other ids, e.g. the CVE of a
//! GHSA) and the matched `artifact` (name, version, purl). For an image, `source.target`
//! names it (`repoDigests`, `manifestDigest`); for other sources `target` is a plain
//! string. `ignoredMatches` are matches the user's Grype configuration set aside and are
//! not findings. Fields not listed here are ignored; `null` reads as absent.

use serde::Deserialize;

use super::{collect_digests, non_empty, Finding, Report, Scanner, Severity};
use crate::DecisionError;

#[derive(Deserialize)]
struct GrypeReport {
    matches: Option<Vec<Match>>,
    source: Option<Source>,
    descriptor: Option<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Match {
    vulnerability: Option<Vulnerability>,
    related_vulnerabilities: Option<Vec<RelatedVulnerability>>,
    artifact: Option<Artifact>,
}

#[derive(Deserialize)]
struct Vulnerability {
    id: Option<String>,
    severity: Option<String>,
    fix: Option<Fix>,
}

#[derive(Deserialize)]
struct Fix {
    versions: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RelatedVulnerability {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Artifact {
    name: Option<String>,
    version: Option<String>,
    purl: Option<String>,
}

#[derive(Deserialize)]
struct Source {
    #[serde(rename = "type")]
    kind: Option<String>,
    target: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Descriptor {
    version: Option<String>,
}

/// Reads a Grype report.
pub(super) fn parse(text: &str) -> Result<Report, DecisionError> {
    let report: GrypeReport = serde_json::from_str(text)
        .map_err(|error| DecisionError::new(format!("Grype JSON report: {error}")))?;

    let findings = report
        .matches
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, found)| finding(found, index))
        .collect::<Result<Vec<_>, _>>()?;

    let (artifact_name, digests) = match &report.source {
        Some(Source {
            kind: Some(kind),
            target: Some(serde_json::Value::Object(target)),
        }) if kind == "image" => {
            let text_field = |name: &str| target.get(name).and_then(serde_json::Value::as_str);
            let repo_digests = target
                .get("repoDigests")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str);
            let user_input = text_field("userInput");
            let digests = collect_digests(
                repo_digests
                    .chain(text_field("manifestDigest"))
                    .chain(user_input),
            );
            (non_empty(user_input.map(str::to_owned)), digests)
        }
        // A directory, file or SBOM scan: the target is a path, and no image digest.
        Some(Source {
            target: Some(serde_json::Value::String(target)),
            ..
        }) => (non_empty(Some(target.clone())), Vec::new()),
        _ => (None, Vec::new()),
    };

    Ok(Report {
        scanner: Scanner::Grype,
        scanner_version: non_empty(report.descriptor.and_then(|descriptor| descriptor.version)),
        artifact_name,
        digests,
        findings,
    })
}

fn finding(found: &Match, index: usize) -> Result<Finding, DecisionError> {
    let place = format!("Grype JSON report: matches[{index}]");
    let vulnerability = found
        .vulnerability
        .as_ref()
        .ok_or_else(|| DecisionError::new(format!("{place} has no vulnerability")))?;
    let Some(id) = non_empty(vulnerability.id.clone()) else {
        return Err(DecisionError::new(format!(
            "{place}.vulnerability has no id"
        )));
    };
    let artifact = found
        .artifact
        .as_ref()
        .ok_or_else(|| DecisionError::new(format!("{place} ({id}) has no artifact")))?;
    let Some(package) = non_empty(artifact.name.clone()) else {
        return Err(DecisionError::new(format!(
            "{place} ({id}).artifact has no name"
        )));
    };
    let severity = match vulnerability.severity.as_deref().map(str::trim) {
        None | Some("") => Severity::Unknown,
        Some(text) => Severity::parse(text).ok_or_else(|| {
            DecisionError::new(format!(
                "{place} ({id}).vulnerability.severity {text:?} is not one of \
                 Critical, High, Medium, Low, Negligible, Unknown"
            ))
        })?,
    };
    let fixed_versions: Vec<&str> = vulnerability
        .fix
        .as_ref()
        .and_then(|fix| fix.versions.as_ref())
        .into_iter()
        .flatten()
        .map(|version| version.trim())
        .filter(|version| !version.is_empty())
        .collect();
    let mut aliases: Vec<String> = found
        .related_vulnerabilities
        .iter()
        .flatten()
        .filter_map(|related| non_empty(related.id.clone()))
        .filter(|alias| *alias != id)
        .collect();
    aliases.sort();
    aliases.dedup();
    Ok(Finding {
        vulnerability: id,
        aliases,
        severity,
        package,
        installed_version: artifact.version.clone().unwrap_or_default(),
        fixed_version: (!fixed_versions.is_empty()).then(|| fixed_versions.join(", ")),
        purl: non_empty(artifact.purl.clone()),
        title: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn a_clean_image_and_a_directory_scan_are_read() {
        let clean = parse(
            r#"{"matches": [], "source": {"type": "image", "target": {"userInput": "busybox:1.36",
                "imageID": "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741",
                "manifestDigest": "sha256:023917ec6a886d0e8e15f28fb543515a5fcd8d938edb091e8147db4efed388ee",
                "repoDigests": [], "tags": ["busybox:1.36"]}},
                "descriptor": {"name": "grype", "version": "0.86.1"}}"#,
        )
        .unwrap();
        assert!(clean.findings.is_empty());
        assert_eq!(
            clean.digests,
            vec!["sha256:023917ec6a886d0e8e15f28fb543515a5fcd8d938edb091e8147db4efed388ee"]
        );
        assert_eq!(clean.scanner_version.as_deref(), Some("0.86.1"));

        let directory = parse(
            r#"{"matches": null, "source": {"type": "directory", "target": "./rootfs"},
                "descriptor": {"name": "grype", "version": "0.74.7"}}"#,
        )
        .unwrap();
        assert_eq!(directory.artifact_name.as_deref(), Some("./rootfs"));
        assert!(directory.digests.is_empty());
    }

    #[test]
    fn fix_versions_are_joined_and_a_missing_fix_is_none() {
        let report = parse(
            r#"{"matches": [
                {"vulnerability": {"id": "CVE-2024-2961", "severity": "High",
                                   "fix": {"versions": ["2.36-9+deb12u6", "2.37-15"], "state": "fixed"}},
                 "relatedVulnerabilities": [{"id": "CVE-2024-2961"}],
                 "artifact": {"name": "libc6", "version": "2.36-9+deb12u4", "purl": ""}},
                {"vulnerability": {"id": "CVE-2011-3374", "severity": "Negligible",
                                   "fix": {"versions": null, "state": "not-fixed"}},
                 "artifact": {"name": "apt", "version": "2.6.1"}}
               ], "source": null, "descriptor": {"name": "grype"}}"#,
        )
        .unwrap();
        let libc = &report.findings[0];
        assert_eq!(
            libc.fixed_version.as_deref(),
            Some("2.36-9+deb12u6, 2.37-15")
        );
        assert!(libc.aliases.is_empty(), "the id itself is not an alias");
        assert_eq!(libc.purl, None);
        assert_eq!(report.findings[1].fixed_version, None);
        assert_eq!(report.findings[1].severity, Severity::Negligible);
    }

    #[test]
    fn errors_name_the_match() {
        let error = parse(
            r#"{"matches": [{"vulnerability": {"id": "CVE-2024-1"}, "artifact": {"version": "1"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            error.0,
            "Grype JSON report: matches[0] (CVE-2024-1).artifact has no name"
        );
    }
}
