//! Operator commands over the REST API, one module per concern; and what they share:
//! the [`Context`] every command gets, and small helpers for paths, queries and output.

pub mod agents;
pub mod audit;
pub mod completions;
pub mod decisions;
pub mod deployments;
pub mod drift;
pub mod environments;
pub mod offline;
pub mod promote;
pub mod registries;
pub mod releases;
pub mod routers;
pub mod runs;
pub mod scans;
pub mod targets;
pub mod tokens;
pub mod users;
pub mod webhooks;

use anyhow::bail;
use serde_json::Value;

use crate::client::Client;
use crate::output::{self, cell, Format};
use crate::progress::Progress;

/// What an API command gets: the client, the output format, and how to show progress.
#[derive(Debug)]
pub struct Context {
    /// The REST client (`--server`, `--token`, `--timeout`).
    pub client: Client,
    /// `-o`.
    pub format: Format,
    /// `--quiet`: no progress and no notes on stderr.
    pub quiet: bool,
}

impl Context {
    /// From the client flags; fails when `--server` is not an http(s) URL.
    pub fn new(args: &crate::ClientArgs) -> anyhow::Result<Self> {
        Ok(Context {
            client: Client::with_trust(
                &args.server,
                args.token.clone(),
                args.timeout,
                args.ca_file.as_deref(),
            )?
            .in_tenant(args.tenant.clone()),
            format: args.output,
            quiet: args.quiet,
        })
    }

    /// Prints `value` as JSON, or with `table` for people.
    pub fn print(&self, value: &Value, table: impl FnOnce(&Value)) {
        print(self.format, value, table);
    }

    /// A note for people on stderr (never with `--quiet`); stdout stays for results.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// Prints what a delete removed: one line, or `{"deleted": {"kind", "name"}}`.
    pub fn deleted(&self, kind: &str, name: &str) {
        let value = serde_json::json!({ "deleted": { "kind": kind, "name": name } });
        self.print(&value, |_| println!("deleted {kind} {name}"));
    }

    /// How to show a wait: live on a terminal, plain lines otherwise, nothing with
    /// `--quiet`.
    pub fn progress(&self) -> Progress {
        Progress::choose(self.format, self.quiet)
    }
}

/// A secret read from standard input (so it stays out of the shell history and the
/// process list), without its trailing newline; refused when empty.
pub fn read_stdin(what: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .with_context(|| format!("reading the {what} from standard input"))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.is_empty() {
        bail!("no {what} on standard input");
    }
    Ok(text)
}

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

/// A query string of the pairs that have a value (`?a=1&b=2`; empty for none).
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
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

/// A kind of target or router as `--help` describes it.
pub(super) struct Kind {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    /// `(key, what it does [default])`.
    pub(super) settings: &'static [(&'static str, &'static str)],
}

/// A `--kind` parser offering `kinds`, each with its one-line help.
pub(super) fn kind_parser(kinds: &'static [Kind]) -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        kinds
            .iter()
            .map(|kind| clap::builder::PossibleValue::new(kind.name).help(kind.about)),
    )
}

/// `heading`, then each of `kinds` with its settings, aligned: the `--help` text of a
/// `create` command.
pub(super) fn kinds_help(heading: &str, kinds: &[Kind]) -> String {
    let width = kinds
        .iter()
        .flat_map(|kind| kind.settings.iter().map(|(key, _)| key.len()))
        .max()
        .unwrap_or(0);
    let mut text = heading.to_owned();
    for kind in kinds {
        text.push_str(&format!("\n\n{} — {}", kind.name, kind.about));
        for (key, about) in kind.settings {
            text.push_str(&format!("\n  {key:<width$}  {about}"));
        }
    }
    text
}
