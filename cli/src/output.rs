//! `-o table` and `-o json`. JSON prints exactly one document on stdout; tables and
//! details are for people. Timestamps leave the CLI as RFC 3339 UTC with exactly three
//! fractional digits (`2026-12-02T19:16:20.480Z`), whatever precision the server sent,
//! so that columns line up and scripts can compare them as strings.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Output format chosen with `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// Prints a JSON document (pretty, timestamps normalised).
pub fn json(value: &Value) {
    let mut value = value.clone();
    normalise_times(&mut value);
    match serde_json::to_string_pretty(&value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("error: cannot print json: {error}"),
    }
}

/// Prints a JSON document on one line (NDJSON), timestamps normalised.
pub fn json_line(value: &Value) {
    let mut value = value.clone();
    normalise_times(&mut value);
    match serde_json::to_string(&value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("error: cannot print json: {error}"),
    }
}

/// Prints rows under headers with aligned columns.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    for line in table_lines(headers, rows) {
        println!("{line}");
    }
}

/// The lines of [`table`]: upper-case headers, columns two spaces apart, the last column
/// not padded, no trailing blanks.
pub fn table_lines(headers: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(|cell| one_line(&cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let header: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    std::iter::once(line(&header))
        .chain(rows.iter().map(|row| line(row)))
        .collect()
}

/// A JSON field as text for a table cell (`-` when absent); timestamps normalised.
pub fn cell(value: &Value, pointer: &str) -> String {
    let key = pointer.rsplit('/').next().unwrap_or_default();
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) if is_time_key(key) => timestamp(s),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(map)) if map.is_empty() => "-".to_owned(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Prints `key: value` lines for one object.
pub fn details(value: &Value, fields: &[(&str, &str)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (label, pointer) in fields {
        println!("{label:<width$}  {}", one_line(&cell(value, pointer)));
    }
}

/// An RFC 3339 time as UTC with millisecond precision; other text unchanged.
pub fn timestamp(text: &str) -> String {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .and_then(|t| format_time(t).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// Now, as [`timestamp`] prints it.
pub fn now() -> String {
    format_time(OffsetDateTime::now_utc()).unwrap_or_default()
}

fn format_time(t: OffsetDateTime) -> Result<String, time::error::Format> {
    t.to_offset(UtcOffset::UTC).format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
}

/// Whether a field holds a time: `at`, `…_at`, `…_not_after`.
fn is_time_key(key: &str) -> bool {
    key == "at" || key.ends_with("_at") || key.ends_with("_not_after")
}

/// Rewrites every time field of a document with [`timestamp`].
fn normalise_times(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match field {
                    Value::String(text) if is_time_key(key) => *text = timestamp(text),
                    _ => normalise_times(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_times),
        _ => {}
    }
}

/// A cell on one line: control characters (newlines, tabs, escapes) become spaces, so
/// that a message cannot break a table or smuggle terminal escapes.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_have_exactly_three_fractional_digits() {
        assert_eq!(
            timestamp("2026-12-02T19:16:20.48Z"),
            "2026-12-02T19:16:20.480Z"
        );
        assert_eq!(
            timestamp("2026-12-02T19:16:20Z"),
            "2026-12-02T19:16:20.000Z"
        );
        assert_eq!(
            timestamp("2026-12-02T20:16:20.123456+01:00"),
            "2026-12-02T19:16:20.123Z"
        );
        assert_eq!(timestamp("not a time"), "not a time");
        assert_eq!(now().len(), "2026-12-02T19:16:20.480Z".len());
    }

    #[test]
    fn json_documents_get_normalised_times_and_keep_the_rest() {
        let mut value = json!({
            "created_at": "2026-12-02T19:16:20.4Z",
            "name": "2026-12-02T19:16:20.4Z",
            "tasks": [{"finished_at": "2026-12-02T19:16:21Z", "finished": null}],
            "lines": [{"at": "2026-12-02T19:16:22.5Z"}],
        });
        normalise_times(&mut value);
        assert_eq!(value["created_at"], "2026-12-02T19:16:20.400Z");
        assert_eq!(value["name"], "2026-12-02T19:16:20.4Z");
        assert_eq!(value["tasks"][0]["finished_at"], "2026-12-02T19:16:21.000Z");
        assert_eq!(value["lines"][0]["at"], "2026-12-02T19:16:22.500Z");
    }

    #[test]
    fn tables_align_and_keep_cells_on_one_line() {
        let lines = table_lines(
            &["name", "message"],
            vec![
                vec!["a".into(), "two\nlines".into()],
                vec!["longer".into(), "\u{1b}[31mred".into()],
            ],
        );
        assert_eq!(
            lines,
            vec!["NAME    MESSAGE", "a       two lines", "longer   [31mred",]
        );
    }

    #[test]
    fn cells_show_a_dash_for_nothing() {
        let value = json!({"a": null, "b": [], "c": {}, "d": "", "e": ["x", "y"], "f": {"k": "v"}});
        for p in ["/a", "/b", "/c", "/d", "/missing"] {
            assert_eq!(cell(&value, p), "-", "{p}");
        }
        assert_eq!(cell(&value, "/e"), "x,y");
        assert_eq!(cell(&value, "/f"), "k=v");
    }
}
