//! Logs of the long-running processes (`stella server`, `stella agent run`,
//! `stella-agent`) and of the CLI: to stderr, as text for people or as JSON lines for
//! journald and log shippers.
//!
//! Colour only when stderr is a terminal and `NO_COLOR` is unset (<https://no-color.org>),
//! so that files, pipes and the journal never hold escape sequences. Levels come from
//! `STELLA_LOG`, else `RUST_LOG`, else the caller's default.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter, fields flattened).
    Json,
}

/// The logging flags of the long-running commands.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr: `text` (coloured only on a terminal) or `json` (one object
    /// per line, for journald or a log shipper).
    #[arg(
        long,
        env = "STELLA_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// `--help` text for the environment variables that shape the logs.
pub const LOG_ENV_HELP: &str = "\
Logging environment:
  STELLA_LOG   log levels, e.g. `debug` or `info,stella_agent_core=debug` (RUST_LOG is read when unset)
  NO_COLOR     no colour in text logs (colour is used only when stderr is a terminal)";

/// Installs the global subscriber: stderr, `format`, levels from `STELLA_LOG` or
/// `RUST_LOG` or else `default_level`. An invalid level directive is reported, not fatal.
pub fn init(default_level: &str, format: LogFormat) {
    let (filter, invalid) = filter(default_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour_on_stderr()).init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    if let Some((variable, error)) = invalid {
        tracing::warn!(%error, "ignoring {variable}: not a valid log filter");
    }
}

/// Whether text logs on stderr may be coloured.
pub fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The filter, and the variable that was set but could not be parsed.
fn filter(default_level: &str) -> (EnvFilter, Option<(&'static str, String)>) {
    let mut invalid = None;
    let mut filter = None;
    for variable in ["STELLA_LOG", "RUST_LOG"] {
        let Ok(value) = std::env::var(variable) else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        match EnvFilter::try_new(&value) {
            Ok(parsed) => {
                filter = Some(parsed);
                break;
            }
            Err(error) => {
                invalid = Some((variable, error.to_string()));
                break;
            }
        }
    }
    let filter = filter.unwrap_or_else(|| EnvFilter::new(default_level));
    // oci-client logs registry token responses (bearer tokens) at debug: never show them.
    let filter = match "oci_client=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    (filter, invalid)
}
