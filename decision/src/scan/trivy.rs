//! Trivy JSON reports, SchemaVersion 2 (`trivy image -f json`, Trivy 0.20 and later).
//!
//! Read from Trivy's `pkg/types` report model: `Results[].Vulnerabilities[]` are the
//! findings; `Metadata.RepoDigests` (`repository@sha256:…`) name the scanned image.
//! Trivy omits empty lists (`omitempty`), older versions write them as `null`, and
//! results of other classes (`secret`, `config`, `license`) carry no vulnerabilities;
//! all of these read as "no findings". Fields not listed here are ignored.

use serde::Deserialize;

use super::{collect_digests, non_empty, Finding, Report, Scanner, Severity};
use crate::DecisionError;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyReport {
    /// Since Trivy 0.56: `{"Version": "0.61.0"}`.
    trivy: Option<TrivyInfo>,
    artifact_name: Option<String>,
    metadata: Option<Metadata>,
    results: Option<Vec<TrivyResult>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyInfo {
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Metadata {
    repo_digests: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyResult {
    target: Option<String>,
    /// Present with `--list-all-pkgs`; older reports give purls only here.
    packages: Option<Vec<Package>>,
    vulnerabilities: Option<Vec<Vulnerability>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Package {
    #[serde(rename = "ID")]
    id: Option<String>,
    identifier: Option<PackageIdentifier>,
}

#[derive(Deserialize)]
struct PackageIdentifier {
    #[serde(rename = "PURL")]
    purl: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Vulnerability {
    #[serde(rename = "VulnerabilityID")]
    vulnerability_id: Option<String>,
    #[serde(rename = "VendorIDs")]
    vendor_ids: Option<Vec<String>>,
    #[serde(rename = "PkgID")]
    pkg_id: Option<String>,
    pkg_name: Option<String>,
    pkg_identifier: Option<PackageIdentifier>,
    installed_version: Option<String>,
    fixed_version: Option<String>,
    title: Option<String>,
    severity: Option<String>,
}

/// Reads a Trivy report whose SchemaVersion the caller has checked.
pub(super) fn parse(text: &str) -> Result<Report, DecisionError> {
    let report: TrivyReport = serde_json::from_str(text)
        .map_err(|error| DecisionError::new(format!("Trivy JSON report: {error}")))?;

    let mut findings = Vec::new();
    for (result_index, result) in report.results.iter().flatten().enumerate() {
        let packages = result.packages.as_deref().unwrap_or_default();
        for (index, vulnerability) in result.vulnerabilities.iter().flatten().enumerate() {
            let place = || {
                let target = result.target.as_deref().unwrap_or("");
                format!("Trivy JSON report: Results[{result_index}] ({target}).Vulnerabilities[{index}]")
            };
            findings.push(finding(vulnerability, packages, place)?);
        }
    }

    let repo_digests = report
        .metadata
        .and_then(|metadata| metadata.repo_digests)
        .unwrap_or_default();
    let digests = collect_digests(
        repo_digests
            .iter()
            .map(String::as_str)
            .chain(report.artifact_name.as_deref()),
    );
    Ok(Report {
        scanner: Scanner::Trivy,
        scanner_version: non_empty(report.trivy.and_then(|trivy| trivy.version)),
        artifact_name: non_empty(report.artifact_name),
        digests,
        findings,
    })
}

fn finding(
    vulnerability: &Vulnerability,
    packages: &[Package],
    place: impl Fn() -> String,
) -> Result<Finding, DecisionError> {
    let Some(id) = non_empty(vulnerability.vulnerability_id.clone()) else {
        return Err(DecisionError::new(format!(
            "{} has no VulnerabilityID",
            place()
        )));
    };
    let Some(package) = non_empty(vulnerability.pkg_name.clone()) else {
        return Err(DecisionError::new(format!(
            "{} ({id}) has no PkgName",
            place()
        )));
    };
    let severity = match vulnerability.severity.as_deref().map(str::trim) {
        None | Some("") => Severity::Unknown,
        Some(text) => Severity::parse(text).ok_or_else(|| {
            DecisionError::new(format!(
                "{} ({id}): Severity {text:?} is not one of CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN",
                place()
            ))
        })?,
    };
    // Before PkgIdentifier (Trivy 0.47), the purl was only on the package list.
    let purl = non_empty(
        vulnerability
            .pkg_identifier
            .as_ref()
            .and_then(|identifier| identifier.purl.clone()),
    )
    .or_else(|| {
        let pkg_id = vulnerability.pkg_id.as_deref()?;
        packages
            .iter()
            .find(|package| package.id.as_deref() == Some(pkg_id))
            .and_then(|package| package.identifier.as_ref())
            .and_then(|identifier| non_empty(identifier.purl.clone()))
    });
    let mut aliases: Vec<String> = vulnerability
        .vendor_ids
        .iter()
        .flatten()
        .filter(|alias| !alias.trim().is_empty() && **alias != id)
        .cloned()
        .collect();
    aliases.sort();
    aliases.dedup();
    Ok(Finding {
        vulnerability: id,
        aliases,
        severity,
        package,
        installed_version: vulnerability.installed_version.clone().unwrap_or_default(),
        fixed_version: non_empty(vulnerability.fixed_version.clone()),
        purl,
        title: non_empty(vulnerability.title.clone()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn findings_are_read_with_the_purl_from_the_package_list_when_missing() {
        let report = parse(
            r#"{
              "SchemaVersion": 2,
              "ArtifactName": "alpine:3.18",
              "Results": [
                {"Target": "alpine:3.18 (alpine 3.18.4)", "Class": "os-pkgs", "Type": "alpine",
                 "Packages": [{"ID": "libcrypto3@3.1.3-r0", "Name": "libcrypto3",
                               "Identifier": {"PURL": "pkg:apk/alpine/libcrypto3@3.1.3-r0?arch=x86_64&distro=3.18.4"}}],
                 "Vulnerabilities": [
                   {"VulnerabilityID": "CVE-2023-5363", "VendorIDs": null, "PkgID": "libcrypto3@3.1.3-r0",
                    "PkgName": "libcrypto3", "InstalledVersion": "3.1.3-r0", "FixedVersion": "3.1.4-r0",
                    "Severity": "HIGH", "Title": null}
                 ]},
                {"Target": "Node.js", "Class": "lang-pkgs", "Type": "node-pkg", "Vulnerabilities": null},
                {"Target": "/etc/ssl/private/key.pem", "Class": "secret", "Secrets": [{"RuleID": "private-key"}]}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(report.digests, Vec::<String>::new());
        assert_eq!(report.findings.len(), 1);
        let finding = &report.findings[0];
        assert_eq!(finding.severity, Severity::High);
        assert_eq!(
            finding.purl.as_deref(),
            Some("pkg:apk/alpine/libcrypto3@3.1.3-r0?arch=x86_64&distro=3.18.4")
        );
        assert_eq!(finding.title, None);
        assert_eq!(finding.fixed_version.as_deref(), Some("3.1.4-r0"));
    }

    #[test]
    fn errors_name_the_result_and_the_vulnerability() {
        let error = parse(
            r#"{"SchemaVersion": 2, "Results": [{"Target": "web (debian 12.5)",
                "Vulnerabilities": [{"VulnerabilityID": "CVE-2024-1", "PkgName": "bash", "Severity": "SEVERE"}]}]}"#,
        )
        .unwrap_err();
        assert!(
            error
                .0
                .contains("Results[0] (web (debian 12.5)).Vulnerabilities[0] (CVE-2024-1)"),
            "{error}"
        );
        assert!(error.0.contains("\"SEVERE\""), "{error}");

        let error = parse(r#"{"SchemaVersion": 2, "Results": [{"Target": "x", "Vulnerabilities": [{"PkgName": "bash"}]}]}"#)
            .unwrap_err();
        assert!(error.0.contains("has no VulnerabilityID"), "{error}");

        let error = parse(r#"{"SchemaVersion": 2, "Results": {"Target": "x"}}"#).unwrap_err();
        assert!(
            error.0.starts_with("Trivy JSON report: invalid type"),
            "{error}"
        );
        assert!(error.0.contains("line 1 column"), "{error}");
    }
}
