//! The CLI-shaped settings of a strategy (`--strategy canary --steps 5,25,50,100 …`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    AnalysisSpec, BatchSize, HeaderOrCookie, PauseKind, RolloutError, Strategy, DEFAULT_ANALYSIS,
};

/// The settings each strategy takes, beside `strategy`.
fn allowed(strategy: &str) -> &'static [&'static str] {
    match strategy {
        "rolling" => &[
            "batch",
            "max-unavailable",
            "pause",
            "analysis",
            "analysis-for",
            "router",
        ],
        "blue-green" => &["router", "keep-old", "analysis", "analysis-for"],
        "canary" => &["steps", "pause", "analysis", "analysis-for", "router"],
        "a-b" => &["match", "router"],
        _ => &[],
    }
}

pub(super) fn from_args(args: &[&str]) -> Result<Strategy, RolloutError> {
    let mut settings = BTreeMap::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(RolloutError::new(format!(
                "unexpected `{arg}`: settings are `--name value`"
            )));
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, (*value).to_owned()),
            None => match rest.next() {
                Some(value) => (flag, (*value).to_owned()),
                None => return Err(RolloutError::new(format!("--{flag} needs a value"))),
            },
        };
        if settings.insert(name.to_owned(), value).is_some() {
            return Err(RolloutError::new(format!("--{name} is given twice")));
        }
    }
    from_settings(&settings)
}

pub(super) fn from_settings(settings: &BTreeMap<String, String>) -> Result<Strategy, RolloutError> {
    let kind = settings.get("strategy").map_or("all-at-once", |s| s.trim());
    let known = ["all-at-once", "rolling", "blue-green", "canary", "a-b"];
    if !known.contains(&kind) {
        return Err(RolloutError::new(format!(
            "unknown strategy `{kind}` (expected one of {})",
            known.join(", ")
        )));
    }
    let allowed = allowed(kind);
    if let Some(extra) = settings
        .keys()
        .find(|k| k.as_str() != "strategy" && !allowed.contains(&k.as_str()))
    {
        return Err(RolloutError::new(format!(
            "--{extra} does not apply to --strategy {kind}"
        )));
    }
    let get = |name: &str| settings.get(name).map(|v| v.trim());
    let router = || {
        get("router")
            .map(str::to_owned)
            .ok_or_else(|| RolloutError::new(format!("--strategy {kind} needs --router NAME")))
    };
    let pause = get("pause").map(parse_pause).transpose()?;
    let analysis = match get("analysis") {
        Some(checks) if !checks.is_empty() => Some(AnalysisSpec {
            checks: checks.to_owned(),
            duration: match get("analysis-for") {
                Some(d) => named_duration("analysis-for", d)?,
                None => DEFAULT_ANALYSIS,
            },
        }),
        Some(_) => return Err(RolloutError::new("--analysis needs the name of its checks")),
        None if get("analysis-for").is_some() => {
            return Err(RolloutError::new("--analysis-for needs --analysis"));
        }
        None => None,
    };
    let strategy = match kind {
        "rolling" => Strategy::Rolling {
            batch: parse_batch(get("batch").ok_or_else(|| {
                RolloutError::new("--strategy rolling needs --batch N or --batch P%")
            })?)?,
            max_unavailable: match get("max-unavailable") {
                Some(v) => v.parse().map_err(|_| {
                    RolloutError::new(format!(
                        "--max-unavailable `{v}` is not a whole number of targets"
                    ))
                })?,
                None => 1,
            },
            pause,
            analysis,
            router: get("router").map(str::to_owned),
        },
        "blue-green" => Strategy::BlueGreen {
            keep_old: match get("keep-old") {
                Some(d) => named_duration("keep-old", d)?,
                None => Duration::ZERO,
            },
            router: router()?,
            analysis,
        },
        "canary" => Strategy::Canary {
            steps: parse_steps(get("steps").ok_or_else(|| {
                RolloutError::new("--strategy canary needs --steps, e.g. 5,25,50,100")
            })?)?,
            pause,
            analysis,
            router: router()?,
        },
        "a-b" => Strategy::AB {
            match_: parse_match(get("match").ok_or_else(|| {
                RolloutError::new(
                    "--strategy a-b needs --match header:NAME=VALUE or cookie:NAME=VALUE",
                )
            })?)?,
            router: router()?,
        },
        _ => Strategy::AllAtOnce,
    };
    strategy.validate()?;
    Ok(strategy)
}

fn parse_steps(text: &str) -> Result<Vec<u8>, RolloutError> {
    text.split(',')
        .map(|w| {
            let w = w.trim().trim_end_matches('%');
            w.parse::<u8>().map_err(|_| {
                RolloutError::new(format!("--steps: `{w}` is not a weight between 1 and 100"))
            })
        })
        .collect()
}

fn parse_batch(text: &str) -> Result<BatchSize, RolloutError> {
    let bad = || {
        RolloutError::new(format!(
            "--batch `{text}` is neither a number of targets nor a percentage (3, 30%)"
        ))
    };
    match text.strip_suffix('%') {
        Some(p) => p.trim().parse().map(BatchSize::Percent).map_err(|_| bad()),
        None => text.parse().map(BatchSize::Count).map_err(|_| bad()),
    }
}

fn parse_pause(text: &str) -> Result<PauseKind, RolloutError> {
    if text == "manual" {
        return Ok(PauseKind::Manual);
    }
    named_duration("pause", text).map(PauseKind::For)
}

fn parse_match(text: &str) -> Result<HeaderOrCookie, RolloutError> {
    let bad = || {
        RolloutError::new(format!(
            "--match `{text}` is not header:NAME=VALUE or cookie:NAME=VALUE"
        ))
    };
    let (kind, rest) = text.split_once(':').ok_or_else(bad)?;
    let (name, value) = rest.split_once('=').ok_or_else(bad)?;
    let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
    if name.is_empty() || value.is_empty() {
        return Err(bad());
    }
    match kind.trim() {
        "header" => Ok(HeaderOrCookie::Header { name, value }),
        "cookie" => Ok(HeaderOrCookie::Cookie { name, value }),
        _ => Err(bad()),
    }
}

fn named_duration(flag: &str, text: &str) -> Result<Duration, RolloutError> {
    parse_duration(text).map_err(|e| RolloutError::new(format!("--{flag}: {e}")))
}

/// A duration as the CLI writes it: a whole number with a unit `s`, `m` or `h` (`30s`,
/// `2m`, `1h`); at most a week.
pub fn parse_duration(text: &str) -> Result<Duration, RolloutError> {
    let text = text.trim();
    let bad = || {
        RolloutError::new(format!(
            "`{text}` is not a duration (a whole number with s, m or h: 30s, 2m, 1h)"
        ))
    };
    let split = text.len().saturating_sub(1);
    let (number, unit) = (text.get(..split).ok_or_else(bad)?, text.get(split..));
    let scale = match unit {
        Some("s") => 1,
        Some("m") => 60,
        Some("h") => 3600,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = n.checked_mul(scale).ok_or_else(bad)?;
    if secs > 7 * 24 * 3600 {
        return Err(RolloutError::new(format!("`{text}` is longer than a week")));
    }
    Ok(Duration::from_secs(secs))
}
