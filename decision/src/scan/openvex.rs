//! OpenVEX documents: statements that a vulnerability does or does not affect a product.
//!
//! Both shapes in use are read:
//!
//! - v0.2.0 (and the spec's v0.0.2 examples, `vexctl` 0.2.x output):
//!   `"vulnerability": {"@id"?, "name", "aliases"?}` and
//!   `"products": [{"@id", "identifiers": {"purl": …}, "hashes": {"sha-256": …},
//!   "subcomponents": [{"@id"}]}]`;
//! - v0.0.1 (`go-vex`'s legacy form): `"vulnerability": "CVE-…"`,
//!   `"products": ["pkg:…"]` and `"subcomponents": ["pkg:…"]` on the statement, applying
//!   to each of its products.
//!
//! A statement must be complete (spec, "Data Inheritance"): it names a vulnerability, at
//! least one product and a status, and a `not_affected` one gives a `justification` (one
//! of the five labels) or an `impact_statement`. Statements the spec only recommends
//! against (an `affected` one without an `action_statement`) are accepted: they can only
//! keep a finding blocking, never hide one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{sha256_id, DecisionError};

/// One OpenVEX document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VexDocument {
    /// The document's `@id`; when it has none, the `sha256:` id of its bytes.
    pub id: String,
    /// Who issued it.
    pub author: Option<String>,
    /// When it was issued (RFC 3339, as written).
    pub timestamp: Option<String>,
    /// Its statements, in the document's order.
    pub statements: Vec<VexStatement>,
}

/// One statement: the status of one vulnerability in some products.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VexStatement {
    /// The vulnerability's name (`CVE-2023-45853`).
    pub vulnerability: String,
    /// Other names of it (`GHSA-…`).
    pub aliases: Vec<String>,
    /// The products the statement is about.
    pub products: Vec<VexProduct>,
    /// What the statement says.
    pub status: VexStatus,
    /// Why a product is not affected: one of the spec's five labels.
    pub justification: Option<String>,
    /// Why a product is not affected, in words.
    pub impact_statement: Option<String>,
    /// What to do about an affected product.
    pub action_statement: Option<String>,
    /// When the statement was made (RFC 3339, as written); when absent, the document's
    /// timestamp applies.
    pub timestamp: Option<String>,
}

/// A product a statement is about, and the parts of it the statement is limited to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VexProduct {
    /// The product's `@id` (for an image, e.g. `pkg:oci/web@sha256%3A…`); when it has
    /// none, its purl or first identifier.
    pub id: String,
    /// Its other identifiers: `identifiers` values (purl, cpe22, cpe23) and a `sha-256`
    /// hash written as `sha256:<hex>`.
    pub identifiers: Vec<String>,
    /// The components of the product the statement is limited to (purls); empty means the
    /// whole product.
    pub subcomponents: Vec<String>,
}

/// The status a statement gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VexStatus {
    /// No remediation is required: the product is not affected.
    NotAffected,
    /// The product is affected.
    Affected,
    /// These product versions contain a fix.
    Fixed,
    /// Not yet known.
    UnderInvestigation,
}

impl VexStatus {
    /// Every status, as the spec lists them.
    pub const ALL: [VexStatus; 4] = [
        VexStatus::NotAffected,
        VexStatus::Affected,
        VexStatus::Fixed,
        VexStatus::UnderInvestigation,
    ];

    /// The spec's label (`not_affected`).
    pub fn as_str(self) -> &'static str {
        match self {
            VexStatus::NotAffected => "not_affected",
            VexStatus::Affected => "affected",
            VexStatus::Fixed => "fixed",
            VexStatus::UnderInvestigation => "under_investigation",
        }
    }

    /// Whether a finding with this status is set aside: `not_affected` and `fixed` are;
    /// `affected` and `under_investigation` are not.
    pub fn suppresses(self) -> bool {
        matches!(self, VexStatus::NotAffected | VexStatus::Fixed)
    }
}

/// The justification labels of the spec ("Status Justifications").
const JUSTIFICATIONS: [&str; 5] = [
    "component_not_present",
    "vulnerable_code_not_present",
    "vulnerable_code_not_in_execute_path",
    "vulnerable_code_cannot_be_controlled_by_adversary",
    "inline_mitigations_already_exist",
];

/// Reads an OpenVEX document whose `@context` the caller has recognised; `bytes` are the
/// file's, to name a document that has no `@id`.
pub(super) fn parse(value: &Value, bytes: &[u8]) -> Result<VexDocument, DecisionError> {
    let Some(object) = value.as_object() else {
        return Err(DecisionError::new("OpenVEX document is not a JSON object"));
    };
    let id = text_field(object, "@id", "OpenVEX document")?.unwrap_or_else(|| sha256_id(bytes));
    let place = format!("OpenVEX document {id}");
    let author = text_field(object, "author", &place)?;
    let timestamp = time_field(object, "timestamp", &place)?;
    let statements = match object.get("statements") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(statements)) => statements
            .iter()
            .enumerate()
            .map(|(index, statement)| {
                parse_statement(statement, &format!("{place}: statements[{index}]"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(DecisionError::new(format!(
                "{place}: statements is not a list"
            )))
        }
    };
    Ok(VexDocument {
        id,
        author,
        timestamp,
        statements,
    })
}

fn parse_statement(value: &Value, place: &str) -> Result<VexStatement, DecisionError> {
    let Some(object) = value.as_object() else {
        return Err(DecisionError::new(format!("{place} is not an object")));
    };
    let (vulnerability, aliases) = match object.get("vulnerability") {
        Some(Value::String(name)) if !name.trim().is_empty() => {
            (name.trim().to_owned(), Vec::new())
        }
        Some(Value::Object(vulnerability)) => {
            let place = format!("{place}.vulnerability");
            let Some(name) = text_field(vulnerability, "name", &place)? else {
                return Err(DecisionError::new(format!("{place} has no name")));
            };
            let aliases = match vulnerability.get("aliases") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(aliases)) => aliases
                    .iter()
                    .map(|alias| {
                        alias
                            .as_str()
                            .map(|alias| alias.trim().to_owned())
                            .ok_or_else(|| {
                                DecisionError::new(format!(
                                    "{place}.aliases holds something other than text"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => {
                    return Err(DecisionError::new(format!("{place}.aliases is not a list")))
                }
            };
            (name, aliases)
        }
        _ => return Err(DecisionError::new(format!("{place} has no vulnerability"))),
    };
    let place = format!("{place} ({vulnerability})");

    let status_text = text_field(object, "status", &place)?
        .ok_or_else(|| DecisionError::new(format!("{place} has no status")))?;
    let status = VexStatus::ALL
        .into_iter()
        .find(|status| status.as_str() == status_text)
        .ok_or_else(|| {
            DecisionError::new(format!(
                "{place}: status {status_text:?} is not one of not_affected, affected, fixed, under_investigation"
            ))
        })?;
    let justification = text_field(object, "justification", &place)?;
    if let Some(justification) = &justification {
        if !JUSTIFICATIONS.contains(&justification.as_str()) {
            return Err(DecisionError::new(format!(
                "{place}: justification {justification:?} is not one of {}",
                JUSTIFICATIONS.join(", ")
            )));
        }
    }
    let impact_statement = text_field(object, "impact_statement", &place)?;
    if status == VexStatus::NotAffected && justification.is_none() && impact_statement.is_none() {
        return Err(DecisionError::new(format!(
            "{place}: a not_affected statement needs a justification or an impact_statement \
             (OpenVEX spec); it has neither"
        )));
    }
    let action_statement = text_field(object, "action_statement", &place)?;
    let timestamp = time_field(object, "timestamp", &place)?;

    // v0.0.1 lists subcomponents on the statement, for every product in it.
    let shared_subcomponents = components(
        object.get("subcomponents"),
        &format!("{place}.subcomponents"),
    )?;
    let products = match object.get("products") {
        Some(Value::Array(products)) if !products.is_empty() => products
            .iter()
            .enumerate()
            .map(|(index, product)| {
                parse_product(
                    product,
                    &shared_subcomponents,
                    &format!("{place}.products[{index}]"),
                )
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(DecisionError::new(format!(
                "{place} names no products (a statement must, to apply to anything)"
            )))
        }
    };

    Ok(VexStatement {
        vulnerability,
        aliases,
        products,
        status,
        justification,
        impact_statement,
        action_statement,
        timestamp,
    })
}

fn parse_product(
    value: &Value,
    shared_subcomponents: &[String],
    place: &str,
) -> Result<VexProduct, DecisionError> {
    let (id, identifiers, mut subcomponents) = match value {
        Value::String(id) if !id.trim().is_empty() => {
            (Some(id.trim().to_owned()), Vec::new(), Vec::new())
        }
        Value::Object(object) => {
            let id = text_field(object, "@id", place)?;
            let identifiers = identifiers_of(object, place)?;
            let subcomponents = components(
                object.get("subcomponents"),
                &format!("{place}.subcomponents"),
            )?;
            (id, identifiers, subcomponents)
        }
        _ => {
            return Err(DecisionError::new(format!(
                "{place} is neither an identifier nor an object"
            )))
        }
    };
    subcomponents.extend(shared_subcomponents.iter().cloned());
    subcomponents.sort();
    subcomponents.dedup();
    let id = match id {
        Some(id) => id,
        None => identifiers
            .iter()
            .find(|identifier| identifier.starts_with("pkg:"))
            .or(identifiers.first())
            .cloned()
            .ok_or_else(|| {
                DecisionError::new(format!(
                    "{place} names nothing (no @id, identifiers or hashes)"
                ))
            })?,
    };
    Ok(VexProduct {
        id,
        identifiers,
        subcomponents,
    })
}

/// A component's `identifiers` values and its `sha-256` hash (as `sha256:<hex>`); other
/// hashes cannot name an image and are left out.
fn identifiers_of(object: &Map<String, Value>, place: &str) -> Result<Vec<String>, DecisionError> {
    let mut identifiers = Vec::new();
    match object.get("identifiers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (kind, identifier) in map {
                match identifier {
                    Value::String(identifier) if !identifier.trim().is_empty() => {
                        identifiers.push(identifier.trim().to_owned());
                    }
                    Value::String(_) | Value::Null => {}
                    _ => {
                        return Err(DecisionError::new(format!(
                            "{place}.identifiers.{kind} is not text"
                        )))
                    }
                }
            }
        }
        Some(_) => {
            return Err(DecisionError::new(format!(
                "{place}.identifiers is not an object"
            )))
        }
    }
    match object.get("hashes") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            if let Some(hash) = map.get("sha-256") {
                let Some(hash) = hash.as_str() else {
                    return Err(DecisionError::new(format!(
                        "{place}.hashes.sha-256 is not text"
                    )));
                };
                let hash = hash.trim();
                let hash = hash.strip_prefix("sha256:").unwrap_or(hash);
                identifiers.push(format!("sha256:{}", hash.to_ascii_lowercase()));
            }
        }
        Some(_) => {
            return Err(DecisionError::new(format!(
                "{place}.hashes is not an object"
            )))
        }
    }
    Ok(identifiers)
}

/// The identifiers of a list of components, written as strings (v0.0.1) or as objects
/// with an `@id` and/or `identifiers` (v0.2.0).
fn components(value: Option<&Value>, place: &str) -> Result<Vec<String>, DecisionError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(DecisionError::new(format!("{place} is not a list"))),
    };
    let mut names = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let place = format!("{place}[{index}]");
        match item {
            Value::String(id) if !id.trim().is_empty() => names.push(id.trim().to_owned()),
            Value::Object(object) => {
                let before = names.len();
                names.extend(text_field(object, "@id", &place)?);
                names.extend(identifiers_of(object, &place)?);
                if names.len() == before {
                    return Err(DecisionError::new(format!(
                        "{place} names nothing (no @id, identifiers or hashes)"
                    )));
                }
            }
            _ => {
                return Err(DecisionError::new(format!(
                    "{place} is neither an identifier nor an object"
                )))
            }
        }
    }
    names.dedup();
    Ok(names)
}

/// A text field: `None` when absent, `null` or empty; an error naming it when it is not text.
fn text_field(
    object: &Map<String, Value>,
    key: &str,
    place: &str,
) -> Result<Option<String>, DecisionError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            Ok(Some(text.trim().to_owned()).filter(|text| !text.is_empty()))
        }
        Some(_) => Err(DecisionError::new(format!("{place}: {key} is not text"))),
    }
}

/// A timestamp field, checked to be RFC 3339 and kept as written.
fn time_field(
    object: &Map<String, Value>,
    key: &str,
    place: &str,
) -> Result<Option<String>, DecisionError> {
    let Some(time) = text_field(object, key, place)? else {
        return Ok(None);
    };
    if chrono::DateTime::parse_from_rfc3339(&time).is_err() {
        return Err(DecisionError::new(format!(
            "{place}: {key} {time:?} is not an RFC 3339 time"
        )));
    }
    Ok(Some(time))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn parse_json(text: &str) -> Result<VexDocument, DecisionError> {
        parse(&serde_json::from_str(text).unwrap(), text.as_bytes())
    }

    #[test]
    fn the_legacy_shape_puts_statement_subcomponents_on_every_product() {
        let document = parse_json(
            r#"{"@context": "https://openvex.dev/ns/v0.0.1", "timestamp": "2023-01-08T18:02:03.647787998-06:00",
                "statements": [{"vulnerability": "CVE-2023-12345",
                  "products": ["pkg:oci/a@sha256%3A00", "pkg:oci/b@sha256%3A11"],
                  "subcomponents": ["pkg:apk/wolfi/git@2.39.0-r1"], "status": "fixed"}]}"#,
        )
        .unwrap();
        assert!(
            document.id.starts_with("sha256:"),
            "no @id: named by content"
        );
        let statement = &document.statements[0];
        assert_eq!(statement.status, VexStatus::Fixed);
        assert_eq!(statement.products.len(), 2);
        for product in &statement.products {
            assert_eq!(product.subcomponents, vec!["pkg:apk/wolfi/git@2.39.0-r1"]);
        }
    }

    #[test]
    fn products_without_an_id_are_named_by_identifiers_and_hashes() {
        let document = parse_json(
            r#"{"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/vex/1",
                "statements": [{"vulnerability": {"name": "CVE-2021-44228", "aliases": ["GHSA-jfh8-c2jp-5v3q"]},
                  "products": [{"identifiers": {"purl": "pkg:oci/web@sha256%3A00", "cpe23": "cpe:2.3:a:shop:web:1.4.2:*:*:*:*:*:*:*"},
                                "hashes": {"sha-256": "AB12", "sha-512": "ff"},
                                "subcomponents": [{"identifiers": {"purl": "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"}}]}],
                  "status": "not_affected", "impact_statement": "log4j-core is never loaded"}]}"#,
        )
        .unwrap();
        let statement = &document.statements[0];
        assert_eq!(statement.aliases, vec!["GHSA-jfh8-c2jp-5v3q"]);
        let product = &statement.products[0];
        assert_eq!(product.id, "pkg:oci/web@sha256%3A00");
        assert_eq!(
            product.identifiers,
            vec![
                "cpe:2.3:a:shop:web:1.4.2:*:*:*:*:*:*:*",
                "pkg:oci/web@sha256%3A00",
                "sha256:ab12"
            ]
        );
        assert_eq!(
            product.subcomponents,
            vec!["pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"]
        );
    }

    #[test]
    fn incomplete_statements_are_refused_with_their_place() {
        let refused = [
            (
                r#"{"@id": "d", "statements": [{"vulnerability": {"name": "CVE-1"}, "products": [{"@id": "p"}], "status": "not_affected"}]}"#,
                "OpenVEX document d: statements[0] (CVE-1): a not_affected statement needs a justification or an impact_statement",
            ),
            (
                r#"{"@id": "d", "statements": [{"vulnerability": {"name": "CVE-1"}, "products": [{"@id": "p"}], "status": "not_affected", "justification": "trust_me"}]}"#,
                "statements[0] (CVE-1): justification \"trust_me\" is not one of component_not_present",
            ),
            (
                r#"{"@id": "d", "statements": [{"vulnerability": {"name": "CVE-1"}, "products": [{"@id": "p"}], "status": "wontfix"}]}"#,
                "status \"wontfix\" is not one of not_affected, affected, fixed, under_investigation",
            ),
            (
                r#"{"@id": "d", "statements": [{"vulnerability": {"name": "CVE-1"}, "status": "fixed"}]}"#,
                "statements[0] (CVE-1) names no products",
            ),
            (
                r#"{"@id": "d", "statements": [{"products": [{"@id": "p"}], "status": "fixed"}]}"#,
                "statements[0] has no vulnerability",
            ),
            (
                r#"{"@id": "d", "statements": [{"vulnerability": "CVE-1", "products": [{}], "status": "fixed"}]}"#,
                "statements[0] (CVE-1).products[0] names nothing",
            ),
            (
                r#"{"@id": "d", "timestamp": "yesterday", "statements": []}"#,
                "OpenVEX document d: timestamp \"yesterday\" is not an RFC 3339 time",
            ),
        ];
        for (document, expected) in refused {
            let error = parse_json(document).unwrap_err();
            assert!(error.0.contains(expected), "{error}\nexpected: {expected}");
        }
    }

    #[test]
    fn an_affected_statement_without_an_action_statement_is_accepted() {
        let document = parse_json(
            r#"{"@id": "d", "statements": [{"vulnerability": "CVE-1", "products": ["p"], "status": "affected"}]}"#,
        )
        .unwrap();
        assert_eq!(document.statements[0].status, VexStatus::Affected);
        assert!(!VexStatus::Affected.suppresses());
        assert!(!VexStatus::UnderInvestigation.suppresses());
        assert!(VexStatus::NotAffected.suppresses());
        assert!(VexStatus::Fixed.suppresses());
    }
}
