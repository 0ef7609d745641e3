//! The security verdict over real-shaped reports of one Debian 12 image (`web`): what
//! blocks, what VEX sets aside, and that the same inputs always give the same bytes.

#![allow(clippy::unwrap_used)] // tests may unwrap

use stella_decision::scan::{
    evaluate, parse_block_severity, parse_document, ImageSubject, Report, ScanDocument,
    ScannedImage, SecurityVerdict, Severity, VexDocument, VexStatus,
};

const HEX: &str = "e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";
const OTHER_HEX: &str = "4da82e891e3cf4a5ae2c560fe9473102e3e368501a093bfaa98331b83d214692";
const WORKER_HEX: &str = "023917ec6a886d0e8e15f28fb543515a5fcd8d938edb091e8147db4efed388ee";
const LABEL: &str = "web (sha256:e93b60634151…)";

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

fn trivy() -> Report {
    report("trivy-0.55-web-debian12.json")
}

fn grype() -> Report {
    report("grype-0.74-web-debian12.json")
}

fn vex_bytes(bytes: &[u8]) -> VexDocument {
    match parse_document(bytes).unwrap() {
        ScanDocument::Vex(document) => document,
        ScanDocument::Report(_) => panic!("read as a report"),
    }
}

fn vex_fixture(name: &str) -> VexDocument {
    vex_bytes(&fixture(name))
}

fn web(reports: Vec<Report>) -> ScannedImage {
    ScannedImage {
        subject: ImageSubject {
            component: "web".to_owned(),
            digest: format!("sha256:{HEX}"),
            reference: format!("registry.example.com/shop/web@sha256:{HEX}"),
        },
        reports,
    }
}

fn worker(reports: Vec<Report>) -> ScannedImage {
    ScannedImage {
        subject: ImageSubject {
            component: "worker".to_owned(),
            digest: format!("sha256:{WORKER_HEX}"),
            reference: format!("registry.example.com/shop/worker@sha256:{WORKER_HEX}"),
        },
        reports,
    }
}

/// A v0.2.0 document with one statement per vulnerability, all about `product`.
fn statements_about(
    id: &str,
    timestamp: &str,
    product: &serde_json::Value,
    status: &str,
    vulnerabilities: &[&str],
) -> VexDocument {
    let reason = match status {
        "not_affected" => {
            serde_json::json!({"justification": "vulnerable_code_not_in_execute_path"})
        }
        "affected" => {
            serde_json::json!({"action_statement": "Rebuild on the current Debian 12 base image"})
        }
        _ => serde_json::json!({}),
    };
    let statements: Vec<serde_json::Value> = vulnerabilities
        .iter()
        .map(|vulnerability| {
            let mut statement = serde_json::json!({
                "vulnerability": {"name": vulnerability},
                "timestamp": timestamp,
                "products": [product],
                "status": status,
            });
            for (key, value) in reason.as_object().unwrap() {
                statement[key] = value.clone();
            }
            statement
        })
        .collect();
    let document = serde_json::json!({
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": id,
        "author": "Shop Platform Team <platform@shop.example.com>",
        "timestamp": timestamp,
        "version": 1,
        "statements": statements,
    });
    vex_bytes(&serde_json::to_vec_pretty(&document).unwrap())
}

const CRITICALS: [&str; 2] = ["CVE-2023-45853", "CVE-2024-45491"];

fn critical() -> Option<Severity> {
    parse_block_severity("critical").unwrap()
}

fn blocking(verdict: &SecurityVerdict) -> Vec<(String, String)> {
    verdict
        .images
        .iter()
        .flat_map(|image| &image.findings)
        .filter(|finding| finding.blocking)
        .map(|finding| {
            (
                finding.finding.vulnerability.clone(),
                finding.finding.package.clone(),
            )
        })
        .collect()
}

fn pair(vulnerability: &str, package: &str) -> (String, String) {
    (vulnerability.to_owned(), package.to_owned())
}

#[test]
fn criticals_without_vex_block_and_say_why() {
    let verdict = evaluate(&[web(vec![trivy()])], &[], critical(), false);
    assert!(!verdict.passed);
    assert_eq!(
        blocking(&verdict),
        vec![
            pair("CVE-2023-45853", "zlib1g"),
            pair("CVE-2024-45491", "libexpat1")
        ]
    );
    assert_eq!(
        verdict.reasons,
        vec![
            format!("{LABEL}: CVE-2023-45853 critical in zlib1g 1:1.2.13.dfsg-1"),
            format!(
                "{LABEL}: CVE-2024-45491 critical in libexpat1 2.5.0-1 (fixed in 2.5.0-1+deb12u1)"
            ),
        ]
    );
    let image = &verdict.images[0];
    assert!(image.scanned);
    assert_eq!(
        image.findings.len(),
        10,
        "every finding is listed, blocking or not"
    );
    let severities: Vec<Severity> = image.findings.iter().map(|f| f.finding.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(severities, sorted, "most severe first");
}

#[test]
fn a_lower_block_severity_blocks_more() {
    let high = evaluate(
        &[web(vec![trivy()])],
        &[],
        parse_block_severity("high").unwrap(),
        false,
    );
    assert_eq!(
        blocking(&high),
        vec![
            pair("CVE-2023-45853", "zlib1g"),
            pair("CVE-2024-45491", "libexpat1"),
            pair("CVE-2023-39325", "golang.org/x/net"),
            pair("CVE-2024-2961", "libc-bin"),
            pair("CVE-2024-2961", "libc6"),
        ]
    );
    let low = evaluate(
        &[web(vec![trivy()])],
        &[],
        parse_block_severity("low").unwrap(),
        false,
    );
    assert_eq!(blocking(&low).len(), 10);
}

#[test]
fn block_none_blocks_nothing_but_still_lists_findings() {
    let verdict = evaluate(
        &[web(vec![trivy()])],
        &[],
        parse_block_severity("none").unwrap(),
        false,
    );
    assert!(verdict.passed);
    assert!(verdict.reasons.is_empty());
    assert_eq!(verdict.images[0].findings.len(), 10);
    assert!(blocking(&verdict).is_empty());
}

#[test]
fn not_affected_from_vexctl_on_the_image_purl_lets_it_pass() {
    let document = vex_fixture("vex-vexctl-0.2-web.json");
    let verdict = evaluate(
        &[web(vec![trivy()])],
        std::slice::from_ref(&document),
        critical(),
        false,
    );
    assert!(verdict.passed, "{:?}", verdict.reasons);
    assert!(verdict.reasons.is_empty());
    let zlib = verdict.images[0]
        .findings
        .iter()
        .find(|finding| finding.finding.package == "zlib1g")
        .unwrap();
    let suppression = zlib.suppressed_by.as_ref().unwrap();
    assert_eq!(suppression.document, document.id);
    assert_eq!(suppression.status, VexStatus::NotAffected);
    assert_eq!(
        suppression.justification.as_deref(),
        Some("vulnerable_code_not_present")
    );
    assert!(!zlib.blocking);
}

#[test]
fn every_way_of_naming_the_image_by_digest_suppresses() {
    for product in [
        serde_json::json!({"@id": format!("sha256:{HEX}")}),
        serde_json::json!({"@id": format!("registry.example.com/shop/web@sha256:{HEX}")}),
        serde_json::json!({"@id": format!("mirror.example.net/web:1.4.2@sha256:{HEX}")}),
        serde_json::json!({"@id": format!("pkg:oci/web@sha256%3A{HEX}?repository_url=registry.example.com%2Fshop%2Fweb&tag=1.4.2")}),
        serde_json::json!({"@id": format!("pkg:oci/web@sha256:{HEX}")}),
        serde_json::json!({"@id": "https://shop.example.com/products/web", "identifiers": {"purl": format!("pkg:oci/web@sha256%3A{HEX}")}}),
        serde_json::json!({"identifiers": {"purl": format!("pkg:oci/web@sha256%3A{HEX}")}}),
        serde_json::json!({"@id": "https://shop.example.com/products/web", "hashes": {"sha-256": HEX}}),
        serde_json::json!(format!("pkg:oci/web@sha256%3A{HEX}")),
    ] {
        let document = statements_about(
            "https://vex.shop.example.com/1",
            "2024-09-13T10:00:00Z",
            &product,
            "not_affected",
            &CRITICALS,
        );
        let verdict = evaluate(&[web(vec![trivy()])], &[document], critical(), false);
        assert!(verdict.passed, "{product}: {:?}", verdict.reasons);
    }
}

#[test]
fn vex_about_another_image_or_a_tag_does_not_suppress() {
    for product in [
        serde_json::json!({"@id": format!("sha256:{OTHER_HEX}")}),
        serde_json::json!({"@id": format!("registry.example.com/shop/web@sha256:{OTHER_HEX}")}),
        serde_json::json!({"@id": format!("pkg:oci/web@sha256%3A{OTHER_HEX}?repository_url=registry.example.com%2Fshop%2Fweb")}),
        serde_json::json!({"@id": "registry.example.com/shop/web:1.4.2"}),
        serde_json::json!({"@id": "pkg:oci/web?repository_url=registry.example.com%2Fshop%2Fweb&tag=1.4.2"}),
        serde_json::json!({"@id": format!("pkg:deb/debian/zlib1g@sha256%3A{HEX}")}),
    ] {
        let document = statements_about(
            "https://vex.shop.example.com/1",
            "2024-09-13T10:00:00Z",
            &product,
            "not_affected",
            &CRITICALS,
        );
        let verdict = evaluate(&[web(vec![trivy()])], &[document], critical(), false);
        assert!(!verdict.passed, "{product}");
        assert_eq!(blocking(&verdict).len(), 2, "{product}");
    }
}

#[test]
fn affected_and_under_investigation_do_not_suppress() {
    let product = serde_json::json!({"@id": format!("pkg:oci/web@sha256%3A{HEX}")});
    for status in ["affected", "under_investigation"] {
        let document = statements_about(
            "https://vex.shop.example.com/1",
            "2024-09-13T10:00:00Z",
            &product,
            status,
            &CRITICALS,
        );
        let verdict = evaluate(&[web(vec![trivy()])], &[document], critical(), false);
        assert!(!verdict.passed, "{status}");
        assert_eq!(blocking(&verdict).len(), 2, "{status}");
        assert!(verdict.images[0]
            .findings
            .iter()
            .all(|finding| finding.suppressed_by.is_none()));
    }

    // The v0.0.1 document puts libssl3 under investigation: it still blocks at medium.
    let verdict = evaluate(
        &[web(vec![trivy()])],
        &[vex_fixture("vex-legacy-0.0.1-web.json")],
        parse_block_severity("medium").unwrap(),
        false,
    );
    assert!(blocking(&verdict).contains(&pair("CVE-2024-0727", "libssl3")));
}

#[test]
fn fixed_suppresses() {
    let document = statements_about(
        "https://vex.shop.example.com/1",
        "2024-09-13T10:00:00Z",
        &serde_json::json!({"@id": format!("sha256:{HEX}")}),
        "fixed",
        &CRITICALS,
    );
    let verdict = evaluate(&[web(vec![trivy()])], &[document], critical(), false);
    assert!(verdict.passed);
    assert_eq!(
        verdict.images[0].findings[0]
            .suppressed_by
            .as_ref()
            .unwrap()
            .status,
        VexStatus::Fixed
    );
}

#[test]
fn the_latest_statement_wins_compared_as_instants() {
    let product = serde_json::json!({"@id": format!("sha256:{HEX}")});
    // 10:00+02:00 is 08:00Z.
    let not_affected = statements_about(
        "https://vex.shop.example.com/triage",
        "2024-09-13T10:00:00+02:00",
        &product,
        "not_affected",
        &CRITICALS,
    );
    // 08:30Z is later than 10:00+02:00 although it reads earlier.
    let later_affected = statements_about(
        "https://vex.shop.example.com/revoked",
        "2024-09-13T08:30:00Z",
        &product,
        "affected",
        &CRITICALS,
    );
    for order in [
        vec![not_affected.clone(), later_affected.clone()],
        vec![later_affected, not_affected.clone()],
    ] {
        let verdict = evaluate(&[web(vec![trivy()])], &order, critical(), false);
        assert!(
            !verdict.passed,
            "a later affected revokes an earlier not_affected"
        );
    }

    let earlier_affected = statements_about(
        "https://vex.shop.example.com/first-look",
        "2024-09-13T07:30:00Z",
        &product,
        "affected",
        &CRITICALS,
    );
    for order in [
        vec![not_affected.clone(), earlier_affected.clone()],
        vec![earlier_affected, not_affected],
    ] {
        let verdict = evaluate(&[web(vec![trivy()])], &order, critical(), false);
        assert!(verdict.passed, "{:?}", verdict.reasons);
    }
}

#[test]
fn statements_at_the_same_instant_go_to_the_later_document() {
    let product = serde_json::json!({"@id": format!("sha256:{HEX}")});
    let not_affected = statements_about(
        "https://vex.shop.example.com/a",
        "2024-09-13T08:00:00Z",
        &product,
        "not_affected",
        &CRITICALS,
    );
    let affected = statements_about(
        "https://vex.shop.example.com/b",
        "2024-09-13T10:00:00+02:00",
        &product,
        "affected",
        &CRITICALS,
    );
    let verdict = evaluate(
        &[web(vec![trivy()])],
        &[not_affected.clone(), affected.clone()],
        critical(),
        false,
    );
    assert!(!verdict.passed);
    let verdict = evaluate(
        &[web(vec![trivy()])],
        &[affected, not_affected],
        critical(),
        false,
    );
    assert!(verdict.passed);
}

#[test]
fn a_statement_without_a_timestamp_inherits_its_documents() {
    // The v0.0.2 document's statement has no timestamp; its document says 2024-09-14.
    let glibc = vex_fixture("vex-spec-0.0.2-web.json");
    let earlier_affected = statements_about(
        "https://vex.shop.example.com/early",
        "2024-09-14T12:00:00Z",
        &serde_json::json!({"@id": format!("sha256:{HEX}")}),
        "affected",
        &["CVE-2024-2961"],
    );
    let verdict = evaluate(
        &[web(vec![trivy()])],
        &[glibc, earlier_affected],
        parse_block_severity("high").unwrap(),
        false,
    );
    let blocked = blocking(&verdict);
    assert!(
        !blocked.contains(&pair("CVE-2024-2961", "libc6")),
        "{blocked:?}"
    );
    assert!(
        !blocked.contains(&pair("CVE-2024-2961", "libc-bin")),
        "{blocked:?}"
    );
}

#[test]
fn subcomponents_limit_a_statement_to_their_packages() {
    let statement_for = |subcomponents: serde_json::Value| {
        statements_about(
            "https://vex.shop.example.com/expat",
            "2024-09-13T10:00:00Z",
            &serde_json::json!({"@id": format!("pkg:oci/web@sha256%3A{HEX}"), "subcomponents": subcomponents}),
            "not_affected",
            &["CVE-2024-45491"],
        )
    };
    let expat_blocks = |document: VexDocument| {
        let verdict = evaluate(&[web(vec![trivy()])], &[document], critical(), false);
        blocking(&verdict).contains(&pair("CVE-2024-45491", "libexpat1"))
    };
    assert!(!expat_blocks(statement_for(
        serde_json::json!([{"@id": "pkg:deb/debian/libexpat1@2.5.0-1?arch=amd64"}])
    )));
    assert!(!expat_blocks(statement_for(
        serde_json::json!([{"@id": "pkg:deb/debian/libexpat1"}])
    )));
    assert!(!expat_blocks(statement_for(serde_json::json!([
        {"@id": "pkg:deb/debian/zlib1g"},
        {"identifiers": {"purl": "pkg:deb/debian/libexpat1@2.5.0-1"}}
    ]))));
    assert!(expat_blocks(statement_for(
        serde_json::json!([{"@id": "pkg:deb/debian/libexpat1@2.5.0-1+deb12u1"}])
    )));
    assert!(expat_blocks(statement_for(
        serde_json::json!([{"@id": "pkg:deb/debian/expat@2.5.0-1"}])
    )));
    assert!(expat_blocks(statement_for(
        serde_json::json!([{"@id": "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1"}])
    )));

    // The v0.0.2 document covers libc6 and libc-bin, and nothing else of the image.
    let verdict = evaluate(
        &[web(vec![trivy()])],
        &[vex_fixture("vex-spec-0.0.2-web.json")],
        parse_block_severity("high").unwrap(),
        false,
    );
    assert_eq!(
        blocking(&verdict),
        vec![
            pair("CVE-2023-45853", "zlib1g"),
            pair("CVE-2024-45491", "libexpat1"),
            pair("CVE-2023-39325", "golang.org/x/net"),
        ]
    );
}

#[test]
fn vulnerabilities_match_by_alias_and_case_insensitively() {
    let product = serde_json::json!({"@id": format!("sha256:{HEX}")});
    // Grype reports the rapid-reset issue as a GHSA whose related CVE is what VEX names.
    let by_cve = statements_about(
        "https://vex.shop.example.com/1",
        "2024-09-13T10:00:00Z",
        &product,
        "not_affected",
        &["cve-2023-39325"],
    );
    let verdict = evaluate(
        &[web(vec![grype()])],
        &[by_cve],
        parse_block_severity("high").unwrap(),
        false,
    );
    let rapid_reset = verdict.images[0]
        .findings
        .iter()
        .find(|finding| finding.finding.vulnerability == "GHSA-4374-p667-p6c8")
        .unwrap();
    assert!(rapid_reset.suppressed_by.is_some());

    // A statement naming the GHSA reaches Trivy's CVE once Grype's report tells they are one.
    let by_ghsa = statements_about(
        "https://vex.shop.example.com/2",
        "2024-09-13T10:00:00Z",
        &product,
        "not_affected",
        &["GHSA-4374-p667-p6c8"],
    );
    let trivy_alone = evaluate(
        &[web(vec![trivy()])],
        std::slice::from_ref(&by_ghsa),
        parse_block_severity("high").unwrap(),
        false,
    );
    assert!(blocking(&trivy_alone).contains(&pair("CVE-2023-39325", "golang.org/x/net")));
    let both = evaluate(
        &[web(vec![trivy(), grype()])],
        &[by_ghsa],
        parse_block_severity("high").unwrap(),
        false,
    );
    assert!(!blocking(&both).contains(&pair("CVE-2023-39325", "golang.org/x/net")));
}

#[test]
fn reports_of_trivy_and_grype_merge_into_one_finding_each() {
    let verdict = evaluate(&[web(vec![trivy(), grype()])], &[], None, false);
    let findings = &verdict.images[0].findings;
    // Ten from Trivy; Grype adds only stdlib, which it versions `go1.21.5` where Trivy
    // writes `v1.21.5`.
    assert_eq!(findings.len(), 11);
    let find = |vulnerability: &str, package: &str, version: &str| {
        let matching: Vec<_> = findings
            .iter()
            .filter(|f| {
                f.finding.vulnerability == vulnerability
                    && f.finding.package == package
                    && f.finding.installed_version == version
            })
            .collect();
        assert_eq!(matching.len(), 1, "{vulnerability} {package} {version}");
        matching[0].finding.clone()
    };
    let zlib = find("CVE-2023-45853", "zlib1g", "1:1.2.13.dfsg-1");
    assert_eq!(
        zlib.severity,
        Severity::Critical,
        "Trivy's critical over Grype's negligible"
    );
    assert!(zlib.title.is_some(), "Trivy's title is kept");
    let apt = find("CVE-2011-3374", "apt", "2.6.1");
    assert_eq!(apt.severity, Severity::Low);
    let rapid_reset = find("CVE-2023-39325", "golang.org/x/net", "v0.15.0");
    assert_eq!(rapid_reset.aliases, vec!["GHSA-4374-p667-p6c8"]);
    let continuation = find("CVE-2023-45288", "golang.org/x/net", "v0.15.0");
    assert_eq!(continuation.aliases, vec!["GHSA-4v7x-pqxf-cx7m"]);
    assert_eq!(continuation.fixed_version.as_deref(), Some("0.23.0"));
    let libc = find("CVE-2024-2961", "libc6", "2.36-9+deb12u4");
    assert_eq!(libc.aliases, vec!["DSA-5673-1"]);
    find("CVE-2023-45288", "stdlib", "v1.21.5");
    let grype_stdlib = find("CVE-2023-45288", "stdlib", "go1.21.5");
    assert_eq!(grype_stdlib.severity, Severity::High);

    // The same report twice changes nothing.
    let twice = evaluate(&[web(vec![trivy(), trivy()])], &[], None, false);
    assert_eq!(twice.images[0].findings.len(), 10);
}

#[test]
fn grype_alone_blocks_on_its_own_criticals() {
    let verdict = evaluate(&[web(vec![grype()])], &[], critical(), false);
    assert_eq!(
        verdict.reasons,
        vec![format!(
            "{LABEL}: CVE-2024-45491 critical in libexpat1 2.5.0-1 (fixed in 2.5.0-1+deb12u1)"
        )]
    );
    let with_vex = evaluate(
        &[web(vec![grype()])],
        &[vex_fixture("vex-vexctl-0.2-web.json")],
        critical(),
        false,
    );
    assert!(
        with_vex.passed,
        "the epoch in Grype's purl matches the subcomponent"
    );
}

#[test]
fn an_image_without_a_report_has_no_verdict() {
    let verdict = evaluate(&[web(Vec::new())], &[], critical(), false);
    assert!(!verdict.passed);
    assert_eq!(
        verdict.reasons,
        vec!["no verdict: web (sha256:e93b60634151…) has no scan report"]
    );
    assert!(!verdict.images[0].scanned);

    let none = evaluate(&[web(Vec::new())], &[], None, false);
    assert!(!none.passed, "block none does not excuse a missing scan");
}

#[test]
fn allow_unscanned_lets_an_image_without_a_report_pass() {
    let verdict = evaluate(
        &[
            web(Vec::new()),
            worker(vec![report("trivy-0.65-worker-clean.json")]),
        ],
        &[],
        critical(),
        true,
    );
    assert!(verdict.passed);
    assert_eq!(
        verdict.reasons,
        vec![format!("{LABEL}: unscanned, allowed")]
    );
    assert!(!verdict.images[0].scanned);
    assert!(verdict.images[1].scanned);

    // It does not excuse findings of scanned images.
    let verdict = evaluate(
        &[web(vec![trivy()]), worker(Vec::new())],
        &[],
        critical(),
        true,
    );
    assert!(!verdict.passed);
    assert_eq!(verdict.reasons.len(), 3);
    assert_eq!(
        verdict.reasons[2],
        "worker (sha256:023917ec6a88…): unscanned, allowed"
    );
}

#[test]
fn the_same_inputs_give_the_same_bytes_whatever_their_order() {
    let documents = [
        vex_fixture("vex-vexctl-0.2-web.json"),
        vex_fixture("vex-spec-0.0.2-web.json"),
        vex_fixture("vex-legacy-0.0.1-web.json"),
    ];
    let block = parse_block_severity("medium").unwrap();
    let worker_report = report("trivy-0.65-worker-clean.json");
    let first = evaluate(
        &[
            web(vec![trivy(), grype()]),
            worker(vec![worker_report.clone()]),
        ],
        &documents,
        block,
        false,
    );
    let again = evaluate(
        &[
            web(vec![trivy(), grype()]),
            worker(vec![worker_report.clone()]),
        ],
        &documents,
        block,
        false,
    );
    let reordered = evaluate(
        &[worker(vec![worker_report]), web(vec![grype(), trivy()])],
        &documents,
        block,
        false,
    );
    let bytes = serde_json::to_vec(&first).unwrap();
    assert_eq!(bytes, serde_json::to_vec(&again).unwrap());
    assert_eq!(bytes, serde_json::to_vec(&reordered).unwrap());
    assert_eq!(first.images[0].component, "web");
    assert_eq!(first.images[1].component, "worker");
}

#[test]
fn the_verdict_serialises_flat_and_reads_back() {
    let verdict = evaluate(
        &[web(vec![trivy()])],
        &[vex_fixture("vex-vexctl-0.2-web.json")],
        critical(),
        false,
    );
    let json = serde_json::to_value(&verdict).unwrap();
    let zlib = json["images"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|finding| finding["package"] == "zlib1g")
        .unwrap();
    assert_eq!(zlib["vulnerability"], "CVE-2023-45853");
    assert_eq!(zlib["severity"], "critical");
    assert_eq!(zlib["blocking"], false);
    assert_eq!(zlib["suppressed_by"]["status"], "not_affected");
    assert_eq!(json["images"][0]["digest"], format!("sha256:{HEX}"));
    let back: SecurityVerdict = serde_json::from_value(json).unwrap();
    assert_eq!(back, verdict);
}
