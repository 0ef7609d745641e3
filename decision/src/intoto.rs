//! in-toto Statement v1 around a decision.
//!
//! Implements the Statement layer of the in-toto Attestation Framework v1
//! (`in-toto/attestation` `spec/v1/statement.md`): `_type`, `subject` (name and
//! digest set), `predicateType`, `predicate`. A Stella decision is the predicate, typed
//! [`DECISION_PREDICATE_TYPE`]; the subjects are the image digests it decides about.
//! The statement is what a DSSE envelope carries, as canonical JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canonical::{canonical_bytes, canonical_via_value};
use crate::DecisionError;

/// The `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// The `predicateType` of a Stella promotion decision.
pub const DECISION_PREDICATE_TYPE: &str = "https://stellaops.io/attestations/decision/v1";

/// A software artifact a statement is about: a name and its digests by algorithm.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subject {
    /// The artifact's name, e.g. an image repository (`registry.example/app`).
    pub name: String,
    /// Digests by algorithm (`{"sha256": "<hex>"}`), hex without prefix.
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    /// An image subject from a `sha256:<64 lowercase hex>` digest; other forms (other
    /// algorithms, uppercase, wrong length, a tag) are refused.
    pub fn image(name: impl Into<String>, digest: &str) -> Result<Subject, DecisionError> {
        let name = name.into();
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| {
                hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
            .ok_or_else(|| {
                DecisionError::new(format!(
                    "subject {name}: digest {digest:?} is not sha256:<64 lowercase hex>"
                ))
            })?;
        Ok(Subject {
            name,
            digest: BTreeMap::from([("sha256".to_owned(), hex.to_owned())]),
        })
    }
}

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// What the statement is about.
    pub subject: Vec<Subject>,
    /// What kind of predicate follows, e.g. [`DECISION_PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The claim itself.
    pub predicate: serde_json::Value,
}

impl Statement {
    /// The statement of a decision about `subjects` (sorted and deduplicated, so the
    /// same decision always gives the same bytes).
    pub fn decision(mut subjects: Vec<Subject>, predicate: serde_json::Value) -> Statement {
        subjects.sort();
        subjects.dedup();
        Statement {
            statement_type: STATEMENT_TYPE.to_owned(),
            subject: subjects,
            predicate_type: DECISION_PREDICATE_TYPE.to_owned(),
            predicate,
        }
    }

    /// The statement as canonical JSON: the DSSE payload.
    pub fn to_canonical(&self) -> Result<Vec<u8>, DecisionError> {
        canonical_bytes(self)
    }

    /// The canonical bytes of [`Statement::decision`]`(subjects, decision)`, given the
    /// decision already as canonical JSON: the predicate is spliced in rather than
    /// parsed and canonicalised again, as signing decisions is on the server's hot
    /// path. `decision` must be canonical JSON (from
    /// [`crate::canonical::canonical_bytes`]); a test pins the result to
    /// [`Statement::to_canonical`].
    pub(crate) fn decision_canonical(
        mut subjects: Vec<Subject>,
        decision: &[u8],
    ) -> Result<Vec<u8>, DecisionError> {
        subjects.sort();
        subjects.dedup();
        let subjects = canonical_via_value(&subjects)?;
        // Keys in RFC 8785 order: `_type` < `predicate` < `predicateType` < `subject`.
        let mut out = Vec::with_capacity(160 + decision.len() + subjects.len());
        out.extend_from_slice(b"{\"_type\":\"");
        out.extend_from_slice(STATEMENT_TYPE.as_bytes());
        out.extend_from_slice(b"\",\"predicate\":");
        out.extend_from_slice(decision);
        out.extend_from_slice(b",\"predicateType\":\"");
        out.extend_from_slice(DECISION_PREDICATE_TYPE.as_bytes());
        out.extend_from_slice(b"\",\"subject\":");
        out.extend_from_slice(&subjects);
        out.push(b'}');
        Ok(out)
    }

    /// Parses a statement, refusing anything whose `_type` is not [`STATEMENT_TYPE`].
    pub fn parse(bytes: &[u8]) -> Result<Statement, DecisionError> {
        let statement: Statement = serde_json::from_slice(bytes)
            .map_err(|e| DecisionError::new(format!("not an in-toto statement: {e}")))?;
        if statement.statement_type != STATEMENT_TYPE {
            return Err(DecisionError::new(format!(
                "in-toto statement _type is {:?}, expected {STATEMENT_TYPE:?}",
                statement.statement_type
            )));
        }
        Ok(statement)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_subject_takes_only_sha256() {
        let subject = Subject::image("registry.example/app", D1).unwrap();
        assert_eq!(subject.digest.len(), 1);
        assert_eq!(subject.digest["sha256"], &D1[7..]);
        for bad in [
            "sha512:1111",
            "1111111111111111111111111111111111111111111111111111111111111111",
            "sha256:111",
            "sha256:AAAA111111111111111111111111111111111111111111111111111111111111",
            "latest",
        ] {
            let err = Subject::image("registry.example/app", bad).unwrap_err();
            assert!(
                err.0.starts_with("subject registry.example/app: digest"),
                "{err}"
            );
        }
    }

    #[test]
    fn decision_statement_has_the_v1_shape_and_sorted_unique_subjects() {
        let subjects = vec![
            Subject::image("b", D2).unwrap(),
            Subject::image("a", D1).unwrap(),
            Subject::image("b", D2).unwrap(),
        ];
        let statement = Statement::decision(subjects, json!({"verdict": "pass"}));
        let text = String::from_utf8(statement.to_canonical().unwrap()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"_type\":\"https://in-toto.io/Statement/v1\",\
                 \"predicate\":{{\"verdict\":\"pass\"}},\
                 \"predicateType\":\"https://stellaops.io/attestations/decision/v1\",\
                 \"subject\":[{{\"digest\":{{\"sha256\":\"{}\"}},\"name\":\"a\"}},\
                 {{\"digest\":{{\"sha256\":\"{}\"}},\"name\":\"b\"}}]}}",
                &D1[7..],
                &D2[7..]
            )
        );
    }

    #[test]
    fn spliced_decision_statement_equals_the_canonical_statement() {
        let subjects = vec![
            Subject::image("z", D2).unwrap(),
            Subject::image("a", D1).unwrap(),
            Subject::image("z", D2).unwrap(),
        ];
        for predicate in [
            json!({"b": [1, 2.5, "\u{1}é"], "a": {"y": null, "x": true}}),
            json!({}),
            json!([]),
            json!("text"),
        ] {
            let decision = canonical_bytes(&predicate).unwrap();
            let spliced = Statement::decision_canonical(subjects.clone(), &decision).unwrap();
            let whole = Statement::decision(subjects.clone(), predicate)
                .to_canonical()
                .unwrap();
            assert_eq!(
                String::from_utf8(spliced).unwrap(),
                String::from_utf8(whole).unwrap()
            );
        }
        let none = Statement::decision_canonical(vec![], b"{}").unwrap();
        assert_eq!(
            none,
            Statement::decision(vec![], json!({}))
                .to_canonical()
                .unwrap()
        );
    }

    #[test]
    fn subject_order_does_not_change_the_bytes() {
        let a = Subject::image("a", D1).unwrap();
        let b = Subject::image("b", D2).unwrap();
        let one = Statement::decision(vec![a.clone(), b.clone()], json!(1));
        let two = Statement::decision(vec![b, a], json!(1));
        assert_eq!(one.to_canonical().unwrap(), two.to_canonical().unwrap());
    }

    #[test]
    fn parse_round_trips_and_checks_type() {
        let statement =
            Statement::decision(vec![Subject::image("a", D1).unwrap()], json!({"x": [1]}));
        let bytes = statement.to_canonical().unwrap();
        assert_eq!(Statement::parse(&bytes).unwrap(), statement);

        let mut other = statement;
        other.statement_type = "https://in-toto.io/Statement/v0.1".into();
        let err = Statement::parse(&other.to_canonical().unwrap()).unwrap_err();
        assert!(
            err.0
                .contains("_type is \"https://in-toto.io/Statement/v0.1\""),
            "{err}"
        );

        let err = Statement::parse(b"{\"_type\":1}").unwrap_err();
        assert!(err.0.starts_with("not an in-toto statement"), "{err}");
    }
}
