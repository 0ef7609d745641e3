//! Operator commands over the REST API, one module per concern; and the helpers they
//! share.

pub mod agents;
pub mod deployments;
pub mod drift;
pub mod environments;
pub mod promote;
pub mod registries;
pub mod releases;
pub mod targets;
pub mod users;

use anyhow::bail;
use serde_json::Value;

use crate::output::{self, cell, Format};

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

fn split_release(release: &str, version: Option<String>) -> anyhow::Result<(String, String)> {
    match (release.split_once('@'), version) {
        (Some((name, version)), None) if !name.is_empty() && !version.is_empty() => {
            Ok((name.to_owned(), version.to_owned()))
        }
        (None, Some(version)) => Ok((release.to_owned(), version)),
        _ => bail!("name the release as NAME@VERSION"),
    }
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", path(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn print(format: Format, value: &Value, table: impl FnOnce(&Value)) {
    match format {
        Format::Json => output::json(value),
        Format::Table => table(value),
    }
}

fn rows(value: &Value, columns: &[&str], pointers: &[&str]) {
    let items = value.as_array().cloned().unwrap_or_default();
    output::table(
        columns,
        items
            .iter()
            .map(|item| pointers.iter().map(|p| cell(item, p)).collect())
            .collect(),
    );
}

/// Escapes a name for a URL path segment.
pub fn path(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
