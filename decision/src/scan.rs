//! Trivy and Grype reports, OpenVEX documents, and the security verdict of a promotion.
//!
//! The control plane stores what `stella scan import --image REF_OR_DIGEST FILE` was given
//! and calls [`evaluate`] when it decides a promotion; the CLI links the same code so a
//! replayed decision can never disagree with it.
//!
//! - [`parse_document`] reads one imported file and tells, by its content, which of the
//!   three supported formats it is: a Trivy JSON report (`trivy image -f json`,
//!   SchemaVersion 2), a Grype JSON report (`grype -o json`) or an OpenVEX document
//!   (v0.0.x and v0.2.0, as `vexctl` writes them). Fields this crate does not use are
//!   ignored and `null` is read as absent, so reports of newer scanner versions still load.
//! - [`evaluate`] merges the reports of each image of a release, applies the VEX
//!   statements that name the image by digest, and blocks every unsuppressed finding at
//!   or above the environment's `--block-severity`.
//!
//! Architecture invariant: nothing here reads a file, the network or the clock. A
//! verdict depends only on its arguments and is sorted so that the same arguments give
//! the same bytes: it goes into a content-addressed decision record.

mod grype;
mod openvex;
mod purl;
mod trivy;
mod verdict;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::DecisionError;

pub use openvex::{VexDocument, VexProduct, VexStatement, VexStatus};
pub use verdict::{
    evaluate, EvaluatedFinding, ImageVerdict, ScannedImage, SecurityVerdict, Suppression,
};

/// How severe a finding is, in the order scanners rank them (`Unknown` lowest).
///
/// Serialised in lowercase; parsed case-insensitively, so Trivy's `CRITICAL` and Grype's
/// `Critical` are the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The scanner has no rating for it (Trivy `UNKNOWN`, Grype `Unknown`).
    Unknown,
    /// Rated below low (Grype only, from distributions' "unimportant").
    Negligible,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 6] = [
        Severity::Unknown,
        Severity::Negligible,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The lowercase name (`critical`), as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Negligible => "negligible",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The severity a scanner wrote, case-insensitively (`CRITICAL`, `Critical`); `None`
    /// when it is none of the six.
    pub fn parse(text: &str) -> Option<Severity> {
        let text = text.trim();
        Severity::ALL
            .into_iter()
            .find(|severity| severity.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The choices of `--block-severity`, as the error message lists them.
const BLOCK_SEVERITY_CHOICES: &str = "none, low, medium, high, critical";

/// Reads `--block-severity none|low|medium|high|critical` (case-insensitive): the lowest
/// severity that blocks a promotion, or `None` for `none` (nothing blocks).
pub fn parse_block_severity(text: &str) -> Result<Option<Severity>, DecisionError> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match Severity::parse(trimmed) {
        Some(
            severity @ (Severity::Low | Severity::Medium | Severity::High | Severity::Critical),
        ) => Ok(Some(severity)),
        _ => Err(DecisionError::new(format!(
            "block severity {text:?} is not one of {BLOCK_SEVERITY_CHOICES}"
        ))),
    }
}

/// One vulnerability a scanner found in one package of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The scanner's id for it (`CVE-2024-45491`, `GHSA-4v7x-pqxf-cx7m`, Debian's
    /// `TEMP-0841856-B18BAF`).
    pub vulnerability: String,
    /// Other ids of the same vulnerability, sorted (Grype's related vulnerabilities,
    /// Trivy's vendor ids such as `DSA-5749-1`).
    pub aliases: Vec<String>,
    /// How severe the scanner rates it.
    pub severity: Severity,
    /// The package name as the scanner names it (`libexpat1`, `golang.org/x/net`).
    pub package: String,
    /// The installed version of the package.
    pub installed_version: String,
    /// The version(s) that fix it, as the scanner writes them; `None` when there is no fix.
    pub fixed_version: Option<String>,
    /// The package URL of the package, when the scanner gives one.
    pub purl: Option<String>,
    /// A one-line title, when the scanner gives one (Trivy does, Grype does not).
    pub title: Option<String>,
}

/// The scanner that wrote a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scanner {
    /// Aqua Security's Trivy (`trivy image -f json`).
    Trivy,
    /// Anchore's Grype (`grype -o json`).
    Grype,
}

impl Scanner {
    /// `trivy` or `grype`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scanner::Trivy => "trivy",
            Scanner::Grype => "grype",
        }
    }
}

/// What one scanner report says about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The scanner that wrote it.
    pub scanner: Scanner,
    /// The scanner's version, when the report records it (Grype always; Trivy since 0.56).
    pub scanner_version: Option<String>,
    /// What the scanner was pointed at (Trivy `ArtifactName`, Grype `source.target.userInput`).
    pub artifact_name: Option<String>,
    /// Every `sha256:<hex>` manifest digest the report names for the image it scanned,
    /// sorted: Trivy `Metadata.RepoDigests`, Grype `source.target.repoDigests` and
    /// `manifestDigest`, and a digest in the scanned reference itself. Never the image
    /// (config) id, which is not what a release pins.
    pub digests: Vec<String>,
    /// The findings in the report's order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether the report names this `sha256:<hex>` digest for the image it scanned. The
    /// import command can use it to catch a report filed against the wrong image; a report
    /// that names no digest at all (an image built and scanned locally) cannot be checked.
    pub fn names_digest(&self, digest: &str) -> bool {
        self.digests
            .iter()
            .any(|named| named.eq_ignore_ascii_case(digest.trim()))
    }
}

/// One imported file: a scanner report or a VEX document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanDocument {
    /// A Trivy or Grype report.
    Report(Report),
    /// An OpenVEX document.
    Vex(VexDocument),
}

impl ScanDocument {
    /// `trivy`, `grype` or `openvex`.
    pub fn kind(&self) -> &'static str {
        match self {
            ScanDocument::Report(report) => report.scanner.as_str(),
            ScanDocument::Vex(_) => "openvex",
        }
    }
}

/// The `@context` prefix of every OpenVEX version (`https://openvex.dev/ns`,
/// `https://openvex.dev/ns/v0.0.1`, `https://openvex.dev/ns/v0.2.0`).
const OPENVEX_CONTEXT: &str = "https://openvex.dev/ns";

/// The refusal of a document in none of the supported formats.
const NOT_SUPPORTED: &str =
    "not a Trivy JSON report (SchemaVersion 2), a Grype JSON report or an OpenVEX document";

/// Reads one imported file, telling its format by its content (never by its name):
///
/// - an `@context` starting with `https://openvex.dev/ns` is an OpenVEX document;
/// - a `SchemaVersion` field is a Trivy report, of which only SchemaVersion 2 (Trivy 0.20
///   and later) is supported;
/// - `matches` with a `descriptor.name` of `grype` (or with a `source`) is a Grype report;
/// - anything else is refused, as is JSON that does not parse (with its line and column).
pub fn parse_document(bytes: &[u8]) -> Result<ScanDocument, DecisionError> {
    let text = decode_text(bytes)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| DecisionError::new(format!("scan document is not valid JSON: {error}")))?;
    let Some(object) = value.as_object() else {
        if looks_like_legacy_trivy(&value) {
            return Err(DecisionError::new(
                "a Trivy JSON report without SchemaVersion (Trivy before 0.20) is not supported \
                 (SchemaVersion 2 is)",
            ));
        }
        return Err(DecisionError::new(format!(
            "{NOT_SUPPORTED}: the top level is not an object"
        )));
    };

    if has_openvex_context(object.get("@context")) {
        return openvex::parse(&value, bytes).map(ScanDocument::Vex);
    }
    if let Some(schema_version) = object.get("SchemaVersion") {
        if schema_version.as_u64() != Some(2) {
            return Err(DecisionError::new(format!(
                "Trivy JSON SchemaVersion {schema_version} is not supported (2 is)"
            )));
        }
        return trivy::parse(&text).map(ScanDocument::Report);
    }
    if object.contains_key("matches") {
        let descriptor_name = object
            .get("descriptor")
            .and_then(|descriptor| descriptor.get("name"))
            .and_then(serde_json::Value::as_str);
        if descriptor_name == Some("grype") || object.contains_key("source") {
            return grype::parse(&text).map(ScanDocument::Report);
        }
    }
    Err(DecisionError::new(NOT_SUPPORTED))
}

/// The image a release pins for one component: what VEX statements must name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageSubject {
    /// The release component (`web`).
    pub component: String,
    /// The manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// The pinned reference, `registry/repository@sha256:<hex>`.
    pub reference: String,
}

/// The text of a file: UTF-8 (a byte-order mark is dropped) or UTF-16 with a byte-order
/// mark, which is what `trivy … > report.json` writes in Windows PowerShell 5.
fn decode_text(bytes: &[u8]) -> Result<String, DecisionError> {
    let utf16 = |little_endian: bool, body: &[u8]| -> Result<String, DecisionError> {
        if body.len() % 2 != 0 {
            return Err(DecisionError::new(
                "scan document is not valid UTF-16: odd number of bytes",
            ));
        }
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|pair| {
                if little_endian {
                    u16::from_le_bytes([pair[0], pair[1]])
                } else {
                    u16::from_be_bytes([pair[0], pair[1]])
                }
            })
            .collect();
        String::from_utf16(&units).map_err(|error| {
            DecisionError::new(format!("scan document is not valid UTF-16: {error}"))
        })
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => utf8(rest),
        [0xFF, 0xFE, rest @ ..] => utf16(true, rest),
        [0xFE, 0xFF, rest @ ..] => utf16(false, rest),
        _ => utf8(bytes),
    }
}

fn utf8(bytes: &[u8]) -> Result<String, DecisionError> {
    String::from_utf8(bytes.to_vec()).map_err(|error| {
        DecisionError::new(format!(
            "scan document is not valid UTF-8 (at byte {})",
            error.utf8_error().valid_up_to()
        ))
    })
}

fn has_openvex_context(context: Option<&serde_json::Value>) -> bool {
    // JSON-LD allows an array of contexts; OpenVEX writes a single string.
    match context {
        Some(serde_json::Value::String(context)) => context.starts_with(OPENVEX_CONTEXT),
        Some(serde_json::Value::Array(contexts)) => contexts.iter().any(|context| {
            context
                .as_str()
                .is_some_and(|c| c.starts_with(OPENVEX_CONTEXT))
        }),
        _ => false,
    }
}

/// Trivy before 0.20 wrote a bare array of results (`[{"Target": …, "Vulnerabilities": …}]`).
fn looks_like_legacy_trivy(value: &serde_json::Value) -> bool {
    value
        .as_array()
        .and_then(|results| results.first())
        .and_then(serde_json::Value::as_object)
        .is_some_and(|result| result.contains_key("Target"))
}

/// `sha256:<64 hex>` in lowercase, or `None` when `text` is not exactly that.
fn normalise_digest(text: &str) -> Option<String> {
    let (algorithm, hex) = text.trim().split_once(':')?;
    if !algorithm.eq_ignore_ascii_case("sha256")
        || hex.len() != 64
        || !hex.bytes().all(|byte| byte.is_ascii_hexdigit())
    {
        return None;
    }
    Some(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The digest of an image reference pinned by digest (`registry/repo@sha256:<hex>`,
/// `repo:tag@sha256:<hex>`); `None` for a tag-only reference.
fn reference_digest(reference: &str) -> Option<String> {
    let (name, digest) = reference.trim().rsplit_once('@')?;
    if name.is_empty() {
        return None;
    }
    normalise_digest(digest)
}

/// The digests a report names, sorted and without repeats.
fn collect_digests<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut digests: Vec<String> = candidates
        .into_iter()
        .filter_map(|candidate| normalise_digest(candidate).or_else(|| reference_digest(candidate)))
        .collect();
    digests.sort();
    digests.dedup();
    digests
}

/// `Some(text)` unless it is empty or only blanks (scanners write `""` for "none").
fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|text| !text.trim().is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn severities_parse_case_insensitively_and_rank_in_order() {
        assert_eq!(Severity::parse("CRITICAL"), Some(Severity::Critical));
        assert_eq!(Severity::parse("Critical"), Some(Severity::Critical));
        assert_eq!(Severity::parse("negligible"), Some(Severity::Negligible));
        assert_eq!(Severity::parse("UNKNOWN"), Some(Severity::Unknown));
        assert_eq!(Severity::parse("moderate"), None);
        assert!(Severity::Unknown < Severity::Negligible);
        assert!(Severity::Negligible < Severity::Low);
        assert!(Severity::High < Severity::Critical);
        assert_eq!(
            serde_json::to_string(&Severity::Critical).unwrap(),
            "\"critical\""
        );
    }

    #[test]
    fn block_severity_accepts_the_five_choices_and_names_them_when_refusing() {
        assert_eq!(parse_block_severity("none").unwrap(), None);
        assert_eq!(parse_block_severity("low").unwrap(), Some(Severity::Low));
        assert_eq!(parse_block_severity("High").unwrap(), Some(Severity::High));
        assert_eq!(
            parse_block_severity("critical").unwrap(),
            Some(Severity::Critical)
        );
        for refused in ["negligible", "unknown", "severe", ""] {
            let error = parse_block_severity(refused).unwrap_err();
            assert!(
                error.0.contains("none, low, medium, high, critical"),
                "{error}"
            );
        }
    }

    #[test]
    fn digests_are_recognised_only_in_full() {
        let hex = "e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";
        assert_eq!(
            normalise_digest(&format!("sha256:{}", hex.to_uppercase())),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(normalise_digest("sha256:e93b6063"), None);
        assert_eq!(normalise_digest(&format!("sha512:{hex}")), None);
        assert_eq!(
            reference_digest(&format!("registry.example.com/shop/web:1.4.2@sha256:{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            reference_digest("registry.example.com/shop/web:1.4.2"),
            None
        );
    }

    #[test]
    fn utf16_with_a_byte_order_mark_is_read() {
        let mut bytes = vec![0xFF, 0xFE];
        for unit in "{\"a\":1}".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(decode_text(&bytes).unwrap(), "{\"a\":1}");
        assert_eq!(decode_text(b"\xEF\xBB\xBF{}").unwrap(), "{}");
    }
}
