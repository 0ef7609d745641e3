//! Reading imported files: Trivy and Grype reports and OpenVEX documents, told apart by
//! content, and the refusal of everything else.

#![allow(clippy::unwrap_used)] // tests may unwrap

use stella_decision::scan::{
    parse_document, Report, ScanDocument, Scanner, Severity, VexDocument, VexStatus,
};

const WEB_DIGEST: &str = "sha256:e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";
const WORKER_DIGEST: &str =
    "sha256:023917ec6a886d0e8e15f28fb543515a5fcd8d938edb091e8147db4efed388ee";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/scan/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn report(name: &str) -> Report {
    match parse_document(&fixture(name)).unwrap() {
        ScanDocument::Report(report) => report,
        ScanDocument::Vex(_) => panic!("{name} read as VEX"),
    }
}

fn vex(name: &str) -> VexDocument {
    match parse_document(&fixture(name)).unwrap() {
        ScanDocument::Vex(document) => document,
        ScanDocument::Report(_) => panic!("{name} read as a report"),
    }
}

fn refusal(bytes: &[u8]) -> String {
    parse_document(bytes).unwrap_err().0
}

#[test]
fn each_format_is_recognised_by_its_content() {
    for (name, kind) in [
        ("trivy-0.55-web-debian12.json", "trivy"),
        ("trivy-0.65-worker-clean.json", "trivy"),
        ("grype-0.74-web-debian12.json", "grype"),
        ("vex-vexctl-0.2-web.json", "openvex"),
        ("vex-spec-0.0.2-web.json", "openvex"),
        ("vex-legacy-0.0.1-web.json", "openvex"),
    ] {
        assert_eq!(
            parse_document(&fixture(name)).unwrap().kind(),
            kind,
            "{name}"
        );
    }
}

#[test]
fn a_trivy_report_of_a_debian_image_is_read_with_every_result() {
    let report = report("trivy-0.55-web-debian12.json");
    assert_eq!(report.scanner, Scanner::Trivy);
    assert_eq!(
        report.scanner_version, None,
        "Trivy 0.55 does not record its version"
    );
    assert_eq!(
        report.artifact_name.as_deref(),
        Some("registry.example.com/shop/web:1.4.2")
    );
    assert_eq!(
        report.digests,
        vec![WEB_DIGEST],
        "RepoDigests, not the ImageID"
    );
    assert!(report.names_digest(WEB_DIGEST));
    assert!(!report
        .names_digest("sha256:614bf1fdfd6bfde68e76f8a8604eff0f599d79d8b73a8387b3906900e40d8f48"));

    // Seven from the Debian packages, none from the Python result (null), three from the
    // Go binary.
    assert_eq!(report.findings.len(), 10);
    let ids: Vec<(&str, &str)> = report
        .findings
        .iter()
        .map(|finding| (finding.vulnerability.as_str(), finding.package.as_str()))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("CVE-2011-3374", "apt"),
            ("TEMP-0841856-B18BAF", "bash"),
            ("CVE-2024-2961", "libc-bin"),
            ("CVE-2024-2961", "libc6"),
            ("CVE-2024-45491", "libexpat1"),
            ("CVE-2024-0727", "libssl3"),
            ("CVE-2023-45853", "zlib1g"),
            ("CVE-2023-39325", "golang.org/x/net"),
            ("CVE-2023-45288", "golang.org/x/net"),
            ("CVE-2023-45288", "stdlib"),
        ]
    );

    let zlib = &report.findings[6];
    assert_eq!(zlib.severity, Severity::Critical);
    assert_eq!(zlib.installed_version, "1:1.2.13.dfsg-1");
    assert_eq!(zlib.fixed_version, None, "will_not_fix has no FixedVersion");
    assert_eq!(
        zlib.purl.as_deref(),
        Some("pkg:deb/debian/zlib1g@1.2.13.dfsg-1?arch=amd64&distro=debian-12.5&epoch=1")
    );
    assert_eq!(
        zlib.title.as_deref(),
        Some("zlib: integer overflow and resultant heap-based buffer overflow in zipOpenNewFileInZip4_6")
    );

    let libc = &report.findings[3];
    assert_eq!(libc.aliases, vec!["DSA-5673-1"], "VendorIDs are aliases");
    assert_eq!(libc.severity, Severity::High);
    assert_eq!(libc.fixed_version.as_deref(), Some("2.36-9+deb12u6"));

    let stdlib = &report.findings[9];
    assert_eq!(stdlib.installed_version, "v1.21.5");
    assert_eq!(stdlib.fixed_version.as_deref(), Some("1.21.9, 1.22.2"));
    assert_eq!(report.findings[0].severity, Severity::Low);
}

#[test]
fn a_newer_trivy_report_of_a_clean_image_has_a_version_and_no_findings() {
    let report = report("trivy-0.65-worker-clean.json");
    assert_eq!(report.scanner_version.as_deref(), Some("0.65.0"));
    assert!(report.findings.is_empty());
    assert_eq!(
        report.digests,
        vec![WORKER_DIGEST],
        "named in RepoDigests and ArtifactName, listed once"
    );
}

#[test]
fn a_trivy_report_without_results_has_no_findings() {
    let document = parse_document(
        br#"{"SchemaVersion": 2, "CreatedAt": "2024-09-12T08:41:17Z", "ArtifactName": "scratch-app:dev",
             "ArtifactType": "container_image", "Metadata": {"ImageID": "sha256:11", "RepoTags": ["scratch-app:dev"]}}"#,
    )
    .unwrap();
    let ScanDocument::Report(report) = document else {
        panic!("not a report")
    };
    assert!(report.findings.is_empty());
    assert!(
        report.digests.is_empty(),
        "a local image has no repo digest"
    );
}

#[test]
fn a_grype_report_of_the_same_image_is_read() {
    let report = report("grype-0.74-web-debian12.json");
    assert_eq!(report.scanner, Scanner::Grype);
    assert_eq!(report.scanner_version.as_deref(), Some("0.74.7"));
    assert_eq!(
        report.artifact_name.as_deref(),
        Some("registry.example.com/shop/web:1.4.2")
    );
    assert_eq!(
        report.digests,
        vec![WEB_DIGEST],
        "repoDigests and manifestDigest name one digest; imageID is not one"
    );
    assert_eq!(report.findings.len(), 8);

    let rapid_reset = report
        .findings
        .iter()
        .find(|finding| finding.vulnerability == "GHSA-4374-p667-p6c8")
        .unwrap();
    assert_eq!(rapid_reset.aliases, vec!["CVE-2023-39325"]);
    assert_eq!(rapid_reset.package, "golang.org/x/net");
    assert_eq!(rapid_reset.installed_version, "v0.15.0");
    assert_eq!(rapid_reset.fixed_version.as_deref(), Some("0.17.0"));
    assert_eq!(rapid_reset.severity, Severity::High);
    assert_eq!(rapid_reset.title, None);

    let zlib = report
        .findings
        .iter()
        .find(|finding| finding.package == "zlib1g")
        .unwrap();
    assert_eq!(zlib.severity, Severity::Negligible);
    assert_eq!(zlib.fixed_version, None, "wont-fix lists no versions");
    assert_eq!(
        zlib.purl.as_deref(),
        Some("pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&upstream=zlib&distro=debian-12")
    );

    let stdlib = report
        .findings
        .iter()
        .find(|finding| finding.package == "stdlib")
        .unwrap();
    assert_eq!(stdlib.fixed_version.as_deref(), Some("1.21.9, 1.22.2"));
    assert!(stdlib.aliases.is_empty());
}

#[test]
fn a_grype_report_of_a_clean_image_has_no_findings() {
    let document = parse_document(
        br#"{
 "matches": [],
 "source": {"type": "image", "target": {"userInput": "registry.example.com/shop/worker:2.0.1",
   "imageID": "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741",
   "manifestDigest": "sha256:023917ec6a886d0e8e15f28fb543515a5fcd8d938edb091e8147db4efed388ee",
   "mediaType": "application/vnd.oci.image.manifest.v1+json", "tags": ["registry.example.com/shop/worker:2.0.1"],
   "imageSize": 78412288, "layers": [], "repoDigests": [], "architecture": "amd64", "os": "linux"}},
 "distro": {"name": "debian", "version": "12", "idLike": []},
 "descriptor": {"name": "grype", "version": "0.86.1", "db": {"built": "2025-01-20T01:30:43Z", "schemaVersion": 5}}
}"#,
    )
    .unwrap();
    assert_eq!(document.kind(), "grype");
    let ScanDocument::Report(report) = document else {
        panic!("not a report")
    };
    assert!(report.findings.is_empty());
    assert_eq!(report.digests, vec![WORKER_DIGEST]);
}

#[test]
fn an_openvex_v0_2_0_document_from_vexctl_is_read() {
    let document = vex("vex-vexctl-0.2-web.json");
    assert_eq!(
        document.id,
        "https://openvex.dev/docs/public/vex-cfe2baae9dccb40e8b902dae85a142394093152a15946e22b5e25ed2816e9379"
    );
    assert_eq!(
        document.author.as_deref(),
        Some("Shop Platform Team <platform@shop.example.com>")
    );
    assert_eq!(
        document.timestamp.as_deref(),
        Some("2024-09-13T10:02:41.561843217+02:00")
    );
    assert_eq!(document.statements.len(), 2);
    let zlib = &document.statements[0];
    assert_eq!(zlib.vulnerability, "CVE-2023-45853");
    assert_eq!(zlib.status, VexStatus::NotAffected);
    assert_eq!(
        zlib.justification.as_deref(),
        Some("vulnerable_code_not_present")
    );
    assert_eq!(zlib.products.len(), 1);
    assert!(zlib.products[0]
        .id
        .starts_with("pkg:oci/web@sha256%3Ae93b6063"));
    assert_eq!(
        zlib.products[0].subcomponents,
        vec!["pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64"]
    );
}

#[test]
fn an_openvex_v0_0_2_document_from_the_spec_is_read() {
    let document = vex("vex-spec-0.0.2-web.json");
    let statement = &document.statements[0];
    assert_eq!(statement.vulnerability, "CVE-2024-2961");
    assert_eq!(statement.aliases, vec!["DSA-5673-1"]);
    assert_eq!(
        statement.products[0].id,
        format!("registry.example.com/shop/web@{WEB_DIGEST}")
    );
    assert_eq!(
        statement.products[0].identifiers,
        vec![format!(
            "pkg:oci/web@sha256%3A{}?repository_url=registry.example.com%2Fshop%2Fweb",
            &WEB_DIGEST[7..]
        )]
    );
    assert_eq!(statement.products[0].subcomponents.len(), 2);
    assert_eq!(statement.timestamp, None, "inherits the document's");
}

#[test]
fn an_openvex_v0_0_1_document_with_plain_strings_is_read() {
    let document = vex("vex-legacy-0.0.1-web.json");
    let statement = &document.statements[0];
    assert_eq!(statement.vulnerability, "CVE-2024-0727");
    assert_eq!(statement.status, VexStatus::UnderInvestigation);
    assert_eq!(
        statement.products[0].id,
        format!("pkg:oci/web@sha256%3A{}", &WEB_DIGEST[7..])
    );
    assert_eq!(
        statement.products[0].subcomponents,
        vec!["pkg:deb/debian/libssl3@3.0.11-1~deb12u2"]
    );
}

#[test]
fn a_not_affected_statement_without_a_reason_is_refused() {
    let error = refusal(
        br#"{"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/vex/7",
            "author": "someone", "timestamp": "2024-09-13T10:02:41Z", "version": 1,
            "statements": [{"vulnerability": {"name": "CVE-2024-45491"},
              "products": [{"@id": "pkg:oci/web@sha256%3Ae93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454"}],
              "status": "not_affected"}]}"#,
    );
    assert_eq!(
        error,
        "OpenVEX document https://example.com/vex/7: statements[0] (CVE-2024-45491): a not_affected \
         statement needs a justification or an impact_statement (OpenVEX spec); it has neither"
    );
}

#[test]
fn other_json_is_refused() {
    const NOT_SUPPORTED: &str =
        "not a Trivy JSON report (SchemaVersion 2), a Grype JSON report or an OpenVEX document";
    assert_eq!(refusal(&fixture("sbom-web.spdx.json")), NOT_SUPPORTED);
    assert_eq!(
        refusal(
            br#"{"$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json", "bomFormat": "CycloneDX",
                 "specVersion": "1.5", "serialNumber": "urn:uuid:5e1b0d52-0a0c-4f41-9c5d-6d4c5b7e2a31", "version": 1,
                 "metadata": {"tools": {"components": [{"type": "application", "group": "aquasecurity", "name": "trivy", "version": "0.55.0"}]}},
                 "components": [], "vulnerabilities": []}"#
        ),
        NOT_SUPPORTED
    );
    assert_eq!(
        refusal(br#"{"matches": []}"#),
        NOT_SUPPORTED,
        "matches alone are not a Grype report"
    );
    assert_eq!(
        refusal(br#"{"@context": "https://www.w3.org/2018/credentials/v1", "type": ["VerifiableCredential"]}"#),
        NOT_SUPPORTED
    );
    assert!(refusal(b"[1, 2]").starts_with(NOT_SUPPORTED));
}

#[test]
fn trivy_reports_of_other_schema_versions_are_refused() {
    assert_eq!(
        refusal(br#"{"SchemaVersion": 1, "ArtifactName": "alpine:3.12", "Results": []}"#),
        "Trivy JSON SchemaVersion 1 is not supported (2 is)"
    );
    assert_eq!(
        refusal(br#"{"SchemaVersion": 3, "ArtifactName": "alpine:3.20", "Results": []}"#),
        "Trivy JSON SchemaVersion 3 is not supported (2 is)"
    );
    assert_eq!(
        refusal(br#"[{"Target": "alpine:3.12 (alpine 3.12.0)", "Vulnerabilities": null}]"#),
        "a Trivy JSON report without SchemaVersion (Trivy before 0.20) is not supported (SchemaVersion 2 is)"
    );
}

#[test]
fn invalid_json_is_refused_with_its_line_and_column() {
    let mut truncated = fixture("trivy-0.55-web-debian12.json");
    truncated.truncate(400);
    let error = refusal(&truncated);
    assert!(
        error.starts_with("scan document is not valid JSON: "),
        "{error}"
    );
    assert!(
        error.contains(" line ") && error.contains(" column "),
        "{error}"
    );

    let error = refusal(b"{\"SchemaVersion\": 2,\n  \"Results\": [,]}");
    assert!(error.contains("line 2 column 15"), "{error}");
    assert!(refusal(b"").starts_with("scan document is not valid JSON"));
}

#[test]
fn a_report_with_a_wrongly_typed_field_is_refused_with_where() {
    let error = refusal(br#"{"SchemaVersion": 2, "Results": [{"Target": "x", "Vulnerabilities": [{"VulnerabilityID": 7}]}]}"#);
    assert!(
        error.starts_with("Trivy JSON report: invalid type: integer `7`"),
        "{error}"
    );
    assert!(error.contains("line 1 column"), "{error}");
}
