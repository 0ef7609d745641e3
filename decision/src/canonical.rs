//! RFC 8785 canonical JSON (JCS), `sha256:` content ids, and leaf-by-leaf JSON diffs.
//!
//! Everything Stella hashes or signs is canonical JSON: object keys sorted by UTF-16
//! code units, no insignificant whitespace, numbers in their shortest ECMAScript form,
//! strings with the minimal escapes. The same value therefore always gives the same
//! bytes, and a content id (`sha256:<hex>` of those bytes) names a value, not a
//! particular serialisation of it.
//!
//! Numbers follow JCS: they are IEEE 754 doubles, so integers beyond 2^53 lose
//! precision. Decisions carry times in milliseconds and counts, all far below that.

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::DecisionError;

pub use crate::sha256_id;

/// The RFC 8785 canonical JSON bytes of a value.
///
/// Fails when the value cannot be JSON (a map with keys that are not strings or
/// numbers, a NaN or infinite float), naming the reason. For a
/// [`serde_json::Value`], [`canonical_value`] gives the same bytes several times
/// faster.
pub fn canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DecisionError> {
    serde_jcs::to_vec(value)
        .map_err(|e| DecisionError::new(format!("value cannot be canonical JSON: {e}")))
}

/// The RFC 8785 canonical JSON of a parsed JSON value: the same bytes as
/// [`canonical_bytes`], written directly (serde_jcs buffers every token and re-parses
/// every key, which dominates signing a decision).
pub fn canonical_value(value: &Value) -> Result<Vec<u8>, DecisionError> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), DecisionError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out)?,
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| utf16_order(a.0, b.0));
            out.push(b'{');
            for (index, (key, item)) in members.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out)?;
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Strings with serde_json's escaping, which is RFC 8785's: `\"`, `\\`, `\b \t \n \f \r`,
/// other controls as lowercase `\u00xx`, everything else as is.
fn write_string(s: &str, out: &mut Vec<u8>) -> Result<(), DecisionError> {
    serde_json::to_writer(out, s)
        .map_err(|e| DecisionError::new(format!("string cannot be canonical JSON: {e}")))
}

/// Integers up to 2^53 in decimal (what RFC 8785's double formatting gives for them);
/// anything else through serde_jcs's ECMAScript double formatting.
fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), DecisionError> {
    const EXACT: u64 = 1 << 53;
    if let Some(u) = n.as_u64().filter(|u| *u <= EXACT) {
        let _ = write!(ByteWriter(out), "{u}");
        return Ok(());
    }
    if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= EXACT) {
        let _ = write!(ByteWriter(out), "{i}");
        return Ok(());
    }
    let double = n
        .as_f64()
        .ok_or_else(|| DecisionError::new(format!("number {n} cannot be canonical JSON")))?;
    serde_jcs::to_writer(out, &double)
        .map_err(|e| DecisionError::new(format!("number {n} cannot be canonical JSON: {e}")))
}

/// Key order of RFC 8785: by UTF-16 code units. That is code point order except that
/// U+E000..U+FFFF sort after the supplementary planes (whose UTF-16 starts with a
/// surrogate, 0xD800..0xDBFF); comparing (first code unit, code point) gives it.
fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(c: char) -> (u32, u32) {
        let mut units = [0u16; 2];
        (u32::from(c.encode_utf16(&mut units)[0]), u32::from(c))
    }
    for (x, y) in a.chars().zip(b.chars()) {
        if x != y {
            return key(x).cmp(&key(y));
        }
    }
    a.len().cmp(&b.len())
}

/// `fmt::Write` into a byte buffer (for ASCII number formatting).
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Canonical JSON through [`serde_json::to_value`] and [`canonical_value`]: the same
/// bytes as [`canonical_bytes`] for types made of strings, integers, booleans,
/// sequences and string-keyed maps (no floats, which `to_value` would turn to `null`
/// when not finite). For the crate's own record types on hot paths.
pub fn canonical_via_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DecisionError> {
    let value = serde_json::to_value(value)
        .map_err(|e| DecisionError::new(format!("value cannot be canonical JSON: {e}")))?;
    canonical_value(&value)
}

/// Whether `bytes` are JSON already in RFC 8785 canonical form (parsing them and
/// canonicalising again gives the same bytes).
pub fn is_canonical(bytes: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    canonical_value(&value).is_ok_and(|again| again == bytes)
}

/// One leaf that differs between two JSON documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Where, as an RFC 6901 JSON pointer (`/gates/2/reason`; the empty string is the
    /// whole document).
    pub path: String,
    /// The value in the old document, `None` when absent there.
    pub old: Option<Value>,
    /// The value in the new document, `None` when absent there.
    pub new: Option<Value>,
}

/// Values longer than this many characters are shortened in [`Difference`]'s `Display`.
const DISPLAY_VALUE_MAX_CHARS: usize = 200;

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(
            f,
            "{path}: {} → {}",
            show_value(self.old.as_ref()),
            show_value(self.new.as_ref())
        )
    }
}

fn show_value(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(absent)".to_owned();
    };
    let text = value.to_string();
    if text.chars().count() <= DISPLAY_VALUE_MAX_CHARS {
        return text;
    }
    let mut short: String = text.chars().take(DISPLAY_VALUE_MAX_CHARS).collect();
    short.push('…');
    short
}

/// Every leaf difference between `old` and `new`, in a deterministic order: object
/// members by key, array elements by index. A member or element present on one side
/// only is one difference with the other side absent (not one per leaf beneath it); a
/// value whose type changed is one difference at its path. Numbers compare by value
/// (`1` equals `1.0`), as canonical JSON writes them the same.
pub fn json_diff(old: &Value, new: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut path = String::new();
    diff_into(old, new, &mut path, &mut out);
    out
}

fn diff_into(old: &Value, new: &Value, path: &mut String, out: &mut Vec<Difference>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let len = path.len();
                push_pointer_token(path, key);
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_into(x, y, path, out),
                    (x, y) => out.push(Difference {
                        path: path.clone(),
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for index in 0..a.len().max(b.len()) {
                let len = path.len();
                // Writing to a String cannot fail.
                let _ = write!(path, "/{index}");
                match (a.get(index), b.get(index)) {
                    (Some(x), Some(y)) => diff_into(x, y, path, out),
                    (x, y) => out.push(Difference {
                        path: path.clone(),
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
                path.truncate(len);
            }
        }
        (Value::Number(a), Value::Number(b)) if a == b || a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: path.clone(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
    }
}

/// Appends `/token` with RFC 6901 escaping (`~` as `~0`, `/` as `~1`).
fn push_pointer_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_and_strips_whitespace() {
        let value = json!({"b": 1, "a": [true, null, "x"], "c": {"z": 1.5, "y": -0.0}});
        let bytes = canonical_bytes(&value).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":0,"z":1.5}}"#
        );
    }

    #[test]
    fn canonical_follows_rfc8785_examples() {
        // RFC 8785 §3.2.2.3 numbers and §3.2.3 key order by UTF-16 code units.
        let value: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],
                "\u20ac":"Euro Sign","\r":"Carriage Return","1":"One","\u0080":"Control",
                "\ud83d\ude00":"Smiley","\u00f6":"Latin Small Letter O With Diaeresis",
                "\ufb33":"Hebrew Letter Dalet With Dagesh"}"#,
        )
        .unwrap();
        let text = String::from_utf8(canonical_bytes(&value).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\
             \"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"\u{80}\":\"Control\",\
             \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
             \"\u{1f600}\":\"Smiley\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    /// A random JSON value over the awkward corners: keys across Unicode planes,
    /// escapes, integers either side of 2^53, doubles of every magnitude.
    fn random_value(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
        use rand::Rng as _;
        const CHARS: [char; 19] = [
            'a',
            'b',
            'Z',
            '0',
            '"',
            '\\',
            '\n',
            '\u{1}',
            '\u{1f}',
            '\u{7f}',
            'é',
            '\u{2028}',
            '\u{e000}',
            '\u{ffff}',
            '\u{fb33}',
            '😀',
            '\u{10000}',
            '\u{10ffff}',
            '/',
        ];
        let text = |rng: &mut rand::rngs::StdRng| -> String {
            (0..rng.gen_range(0..5))
                .map(|_| CHARS[rng.gen_range(0..CHARS.len())])
                .collect()
        };
        match rng.gen_range(0..if depth > 3 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.gen()),
            2 => match rng.gen_range(0..4) {
                0 => json!(rng.gen_range(-1000i64..1000)),
                1 => json!(rng.gen_range(-(1i64 << 54)..(1i64 << 54))),
                2 => json!(rng.gen::<u64>()),
                _ => json!(rng.gen::<i64>()),
            },
            3 => {
                let double = match rng.gen_range(0..3) {
                    0 => f64::from_bits(rng.gen()),
                    1 => rng.gen_range(-1e6..1e6),
                    _ => f64::from(rng.gen_range(-1000i32..1000)) / 8.0,
                };
                if double.is_finite() {
                    json!(double)
                } else {
                    json!(0.5)
                }
            }
            4 => Value::String(text(rng)),
            5 => Value::Array(
                (0..rng.gen_range(0..5))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.gen_range(0..6))
                    .map(|_| (text(rng), random_value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn canonical_value_equals_serde_jcs() {
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(8785);
        for _ in 0..5000 {
            let value = random_value(&mut rng, 0);
            let fast = canonical_value(&value).unwrap();
            let reference = serde_jcs::to_vec(&value).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference).unwrap(),
                "value {value}"
            );
        }
    }

    #[test]
    fn canonical_via_value_equals_canonical_bytes_for_plain_records() {
        #[derive(Serialize)]
        struct Record {
            z: &'static str,
            a: Vec<i64>,
            m: std::collections::BTreeMap<String, Option<bool>>,
        }
        let record = Record {
            z: "\u{e000}\u{10000}",
            a: vec![1, -(1 << 60)],
            m: [("\u{ffff}".to_owned(), Some(true)), ("😀".to_owned(), None)].into(),
        };
        assert_eq!(
            canonical_via_value(&record).unwrap(),
            canonical_bytes(&record).unwrap()
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        use std::cmp::Ordering;
        assert_eq!(utf16_order("a", "b"), Ordering::Less);
        assert_eq!(utf16_order("ab", "a"), Ordering::Greater);
        assert_eq!(utf16_order("\u{ffff}", "\u{10000}"), Ordering::Greater);
        assert_eq!(utf16_order("\u{d7ff}", "\u{10000}"), Ordering::Less);
        assert_eq!(utf16_order("\u{10001}", "\u{10000}"), Ordering::Greater);
        assert_eq!(utf16_order("x😀", "x😀"), Ordering::Equal);
    }

    #[test]
    fn canonical_refuses_non_finite_numbers() {
        let err = canonical_bytes(&f64::NAN).unwrap_err();
        assert!(err.0.contains("canonical JSON"), "{err}");
    }

    #[test]
    fn is_canonical_tells_canonical_from_not() {
        assert!(is_canonical(br#"{"a":1,"b":[2,3]}"#));
        assert!(!is_canonical(br#"{"b":1,"a":2}"#));
        assert!(!is_canonical(br#"{"a": 1}"#));
        assert!(!is_canonical(br#"{"a":1.0}"#));
        assert!(!is_canonical(b"{\"a\":1}\n"));
        assert!(!is_canonical(b"not json"));
        assert!(!is_canonical(b""));
    }

    #[test]
    fn diff_lists_every_leaf_in_order() {
        let old = json!({"gates": [{"reason": "a", "ok": true}, {"x": 1}], "id": "d1", "gone": {"deep": 1}});
        let new = json!({"gates": [{"reason": "b", "ok": true}], "id": "d1", "added": [1]});
        let diffs = json_diff(&old, &new);
        let shown: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "/added: (absent) → [1]",
                "/gates/0/reason: \"a\" → \"b\"",
                "/gates/1: {\"x\":1} → (absent)",
                "/gone: {\"deep\":1} → (absent)",
            ]
        );
    }

    #[test]
    fn diff_of_equal_documents_is_empty_and_numbers_compare_by_value() {
        let a = json!({"n": 1, "f": 2.5, "l": [1, 2]});
        let b: Value = serde_json::from_str(r#"{"l":[1,2],"f":2.5,"n":1.0}"#).unwrap();
        assert!(json_diff(&a, &b).is_empty());
        assert_eq!(json_diff(&json!(1), &json!(2)).len(), 1);
    }

    #[test]
    fn diff_escapes_pointer_tokens_and_reports_type_changes_once() {
        let old = json!({"a/b": {"c~d": 1}, "t": [1, 2]});
        let new = json!({"a/b": {"c~d": 2}, "t": {"0": 1}});
        let diffs = json_diff(&old, &new);
        assert_eq!(diffs.len(), 2);
        assert_eq!(diffs[0].path, "/a~1b/c~0d");
        assert_eq!(diffs[1].path, "/t");
        assert_eq!(diffs[1].old, Some(json!([1, 2])));
    }

    #[test]
    fn diff_at_root_displays_as_root() {
        let diffs = json_diff(&json!("a"), &json!(null));
        assert_eq!(diffs[0].to_string(), "(root): \"a\" → null");
    }

    #[test]
    fn long_values_are_shortened_in_display() {
        let long = "x".repeat(500);
        let d = Difference {
            path: "/a".into(),
            old: Some(json!(long)),
            new: None,
        };
        let shown = d.to_string();
        assert!(shown.ends_with("… → (absent)"), "{shown}");
        assert!(shown.chars().count() < 230);
    }
}
