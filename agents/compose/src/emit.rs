//! Writes a YAML document in block style with every string double-quoted.
//!
//! Both Compose generations must read the lock exactly as Stella means it, and they read
//! YAML differently: v2 (Go) follows YAML 1.2, v1 (PyYAML) YAML 1.1, which turns plain
//! scalars such as `2024-05-01T12:00:00.000Z` (a timestamp), `1:30` (a base-60 integer)
//! or `on` (a boolean) into other types — a sticker's `deployed-at` label would no longer
//! be a string, and v1 refuses the file. serde_norway quotes only what YAML 1.2 would
//! misread, so the lock is emitted here: strings always in double quotes (JSON escapes
//! are valid YAML escapes), keys plain only when no YAML version can misread them.

use serde_norway::{Mapping, Value};

/// The document as YAML text, ending with a newline.
pub(crate) fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Mapping(map) if !map.is_empty() => mapping(map, 0, &mut out),
        Value::Sequence(seq) if !seq.is_empty() => sequence(seq, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn mapping(map: &Mapping, indent: usize, out: &mut String) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key_text(key));
        out.push(':');
        nested(value, indent + 2, out);
    }
}

fn sequence(seq: &[Value], indent: usize, out: &mut String) {
    for item in seq {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Mapping(map) if !map.is_empty() => {
                // The first key on the dash's line, the others aligned under it.
                let mut block = String::new();
                mapping(map, indent + 2, &mut block);
                out.push(' ');
                out.push_str(&block[indent + 2..]);
            }
            Value::Sequence(inner) if !inner.is_empty() => {
                let mut block = String::new();
                sequence(inner, indent + 2, &mut block);
                out.push(' ');
                out.push_str(&block[indent + 2..]);
            }
            other => nested(other, indent + 2, out),
        }
    }
}

/// What follows `key:` or `-`: a scalar on the same line, or a block below.
fn nested(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            out.push('\n');
            mapping(map, indent, out);
        }
        Value::Sequence(seq) if !seq.is_empty() => {
            out.push('\n');
            sequence(seq, indent, out);
        }
        Value::Tagged(tagged) => {
            out.push(' ');
            out.push_str(&tagged.tag.to_string());
            nested(&tagged.value, indent, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quoted(s),
        Value::Mapping(_) => "{}".to_owned(),
        Value::Sequence(_) => "[]".to_owned(),
        Value::Tagged(tagged) => format!("{} {}", tagged.tag, scalar(&tagged.value)),
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) if is_plain_key(s) => s.clone(),
        Value::String(s) => quoted(s),
        other => scalar(other),
    }
}

/// Identifiers like `services`, `x-common`, `com.example.label`, `web_1`: plain scalars
/// that are strings in YAML 1.1 and 1.2 alike.
fn is_plain_key(key: &str) -> bool {
    const AMBIGUOUS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    key.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !AMBIGUOUS.contains(&key.to_ascii_lowercase().as_str())
}

fn quoted(s: &str) -> String {
    // JSON string syntax is a subset of YAML's double-quoted style.
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_stay_strings_in_every_yaml_version() {
        let text = r#"
services:
  web:
    image: "r/web@sha256:00"
    labels:
      ops.stella.deployed-at: "2024-05-01T12:00:00.000Z"
      "on": "yes"
      ratio: "1:30"
    command: ["sh", "-c", "echo \"hi\"\nexit 0"]
    ports:
      - target: 80
        published: 8080
      - "127.0.0.1:9090:90"
    environment: {}
    healthcheck:
      disable: true
    deploy:
      replicas: 2
  db:
volumes:
  data:
"#;
        let value: Value = serde_norway::from_str(text).expect("parse");
        let yaml = to_yaml(&value);
        assert!(
            yaml.contains("ops.stella.deployed-at: \"2024-05-01T12:00:00.000Z\""),
            "{yaml}"
        );
        assert!(yaml.contains("\"on\": \"yes\""), "{yaml}");
        assert!(yaml.contains("ratio: \"1:30\""), "{yaml}");
        assert!(
            yaml.contains("      - target: 80\n        published: 8080\n"),
            "{yaml}"
        );
        assert!(yaml.contains("replicas: 2\n"), "{yaml}");
        assert!(yaml.contains("disable: true\n"), "{yaml}");
        assert!(yaml.contains("environment: {}\n"), "{yaml}");
        assert!(yaml.contains("  db: null\n"), "{yaml}");
        let back: Value = serde_norway::from_str(&yaml).expect("parse back");
        assert_eq!(back, value, "{yaml}");
    }
}
