//! `--analysis prometheus:PATH`: the new and the old version's own metrics, scraped from
//! their Prometheus endpoints once a round, turned into per-round samples of the error
//! ratio and the p99 latency for the judge (`decision::analysis`).
//!
//! **Scrape.** Each round, PATH (default `/metrics`) is fetched from every address of a
//! side and read as the Prometheus text format ([`exposition`]). Two metrics are read,
//! by the names client libraries and most exporters use, which the checks may override
//! ([`Names`]):
//! - the counter `http_requests_total`, summed over all its label sets; a series whose
//!   `code` or `status` label starts with `5` counts errors;
//! - the histogram `http_request_duration_seconds` (in seconds), its `_bucket` series
//!   summed per `le` over their other labels.
//!
//! **Deltas.** A round's sample is what changed since the side's previous complete
//! scrape (every address answered), summed over the side's addresses. Per series, the
//! increase is the new value minus the old; a value lower than the old one is a counter
//! reset (the process restarted), and the increase is the new value, as PromQL's
//! `rate()` counts it. A series that was not there before counts from 0 (client
//! libraries create a label set on its first use, e.g. the first 500). The first scrape
//! of an address only sets its baseline.
//!
//! **Samples.** Error ratio = Δ5xx / Δrequests; p99 latency = `histogram_quantile(0.99)`
//! of the Δ buckets, in milliseconds rounded to the nanosecond ([`quantile`]). A side
//! whose requests did not grow in a round gives no sample that round. A side with an
//! address whose scrape failed (refused, timed out, not 2xx, too large) gives no sample
//! that round either, and keeps its previous scrape as the base of the next round's
//! deltas; the failure is counted and named in the step's detail.

mod exposition;
mod quantile;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use exposition::Labels;
use quantile::bucket_quantile;

/// The quantile of the latency compared.
const QUANTILE: f64 = 0.99;
/// The most of a scrape body read; a larger one fails the scrape.
const MAX_BODY_BYTES: usize = 8 << 20;
/// What the scrape asks for: the text format (the protobuf one is not read).
const ACCEPT: &str =
    "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1";

/// The path scraped when the checks name none.
pub const DEFAULT_PATH: &str = "/metrics";

/// The metrics a `prometheus:` analysis reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Names {
    /// The requests counter (`requests=`). The samples of an OpenMetrics counter family
    /// named without `_total` are read too (`myapp_requests` → `myapp_requests_total`).
    pub requests: String,
    /// The latency histogram, in seconds (`latency=`); its `_bucket` series are read.
    pub latency: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            requests: "http_requests_total".to_owned(),
            latency: "http_request_duration_seconds".to_owned(),
        }
    }
}

impl Names {
    /// Reads the `key=value&…` after `?` in the checks: `requests=NAME` and
    /// `latency=NAME`, each at most once, NAME a Prometheus metric name. The error names
    /// the key or the value refused.
    pub fn from_query(query: &str) -> Result<Names, String> {
        let mut names = Names::default();
        let mut given = BTreeSet::new();
        for pair in query.split('&') {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!("`{pair}` is not KEY=NAME"));
            };
            let slot = match key {
                "requests" => &mut names.requests,
                "latency" => &mut names.latency,
                other => {
                    return Err(format!(
                        "unknown key `{other}` (use requests=NAME or latency=NAME)"
                    ))
                }
            };
            if !given.insert(key) {
                return Err(format!("`{key}` is given twice"));
            }
            if !is_metric_name(value) {
                return Err(format!("{key}=`{value}` is not a Prometheus metric name"));
            }
            value.clone_into(slot);
        }
        Ok(names)
    }

    fn is_requests(&self, name: &str) -> bool {
        name == self.requests
            || (!self.requests.ends_with("_total")
                && name.strip_suffix("_total") == Some(self.requests.as_str()))
    }

    fn is_bucket(&self, name: &str) -> bool {
        name.strip_suffix("_bucket") == Some(self.latency.as_str())
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// What one scrape of one address held of the two metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The requests counter, by label set.
    requests: BTreeMap<Labels, f64>,
    /// The histogram's buckets, by label set (`le` included).
    buckets: BTreeMap<Labels, f64>,
    /// Lines that did not read, and samples of the two metrics that were not usable (a
    /// negative or non-finite count, a bucket without a numeric `le`).
    skipped: usize,
    /// The first of them, with its line number.
    first_skipped: Option<String>,
}

impl Snapshot {
    /// Reads an exposition.
    pub fn read(text: &str, names: &Names) -> Snapshot {
        let exposition = exposition::parse(text, |name| {
            names.is_requests(name) || names.is_bucket(name)
        });
        let mut snapshot = Snapshot {
            skipped: exposition.skipped,
            first_skipped: exposition
                .first_skipped
                .map(|(line, why)| format!("line {line}: {why}")),
            ..Snapshot::default()
        };
        for sample in exposition.samples {
            // A count is finite and not negative.
            let usable = sample.value.is_finite() && sample.value >= 0.0;
            let into = if names.is_bucket(&sample.name) {
                let le = sample
                    .label("le")
                    .and_then(|le| le.trim().parse::<f64>().ok());
                (usable && le.is_some_and(|le| !le.is_nan())).then_some(&mut snapshot.buckets)
            } else {
                usable.then_some(&mut snapshot.requests)
            };
            match into {
                Some(series) => {
                    series.insert(sample.labels, sample.value);
                }
                None => {
                    snapshot.skipped += 1;
                    snapshot
                        .first_skipped
                        .get_or_insert_with(|| format!("{}: not a usable count", sample.name));
                }
            }
        }
        snapshot
    }
}

/// What a side's metrics grew by in a round, summed over its addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Requests.
    pub requests: f64,
    /// Requests whose `code` or `status` starts with 5.
    pub errors: f64,
    /// (upper bound, count) per bucket series; [`bucket_quantile`] merges equal bounds.
    pub buckets: Vec<(f64, f64)>,
}

impl Delta {
    /// Adds what grew from `previous` to `current` (of one address).
    pub fn add(&mut self, previous: &Snapshot, current: &Snapshot) {
        for (labels, value) in &current.requests {
            let grown = increase(previous.requests.get(labels).copied(), *value);
            self.requests += grown;
            if is_error(labels) {
                self.errors += grown;
            }
        }
        for (labels, value) in &current.buckets {
            let le = labels
                .iter()
                .find(|(name, _)| name == "le")
                .and_then(|(_, le)| le.trim().parse::<f64>().ok());
            if let Some(le) = le {
                self.buckets
                    .push((le, increase(previous.buckets.get(labels).copied(), *value)));
            }
        }
    }

    /// Errors over requests, when there were requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }

    /// The p99 of the buckets' increase, in milliseconds, when there is one. It is
    /// rounded to the nanosecond: the interpolation's float noise (0.99 × n / n is not
    /// always 0.99) would otherwise rank equal latencies apart in the judge's test.
    pub fn p99_ms(&self) -> Option<f64> {
        bucket_quantile(QUANTILE, &self.buckets)
            .map(|seconds| (seconds * 1e9).round() / 1e6)
            .filter(|ms| ms.is_finite())
    }
}

/// A counter's increase from `previous` to `current`: a lower value is a reset, and the
/// whole new value is the increase (as PromQL's `rate()`); a new series counts from 0.
pub fn increase(previous: Option<f64>, current: f64) -> f64 {
    match previous {
        Some(previous) if current >= previous => current - previous,
        _ => current,
    }
}

/// A series of 5xx answers: its `code` or `status` label starts with `5`.
fn is_error(labels: &Labels) -> bool {
    labels
        .iter()
        .any(|(name, value)| (name == "code" || name == "status") && value.starts_with('5'))
}

/// One address's scrape: what it held, or why it failed.
pub type Scrape = (String, Result<Snapshot, String>);

/// Scrapes `path` on every one of `addresses` (`host:port`) at once.
pub async fn scrape_all(
    client: &reqwest::Client,
    addresses: &[String],
    path: &str,
    names: &Names,
    timeout: Duration,
) -> Vec<Scrape> {
    let scrapes = addresses.iter().map(|address| async move {
        let result = scrape(client, address, path, names, timeout).await;
        (address.clone(), result)
    });
    futures::future::join_all(scrapes).await
}

async fn scrape(
    client: &reqwest::Client,
    address: &str,
    path: &str,
    names: &Names,
    timeout: Duration,
) -> Result<Snapshot, String> {
    let url = format!("http://{address}{path}");
    let mut response = client
        .get(&url)
        .header(reqwest::header::ACCEPT, ACCEPT)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| without_url(&e))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| without_url(&e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("more than {} MiB", MAX_BODY_BYTES >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    let names = names.clone();
    // A large exposition takes milliseconds to read: off the async threads.
    tokio::task::spawn_blocking(move || Snapshot::read(&String::from_utf8_lossy(&body), &names))
        .await
        .map_err(|e| format!("reading the scrape: {e}"))
}

/// A reqwest error as one line, without the URL (the detail names the address).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut source = std::error::Error::source(error);
    let mut deepest = None;
    while let Some(cause) = source {
        deepest = Some(cause.to_string());
        source = cause.source();
    }
    match deepest {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

/// The samples one side gave in a round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SideRound {
    /// Error ratio, when the side served requests and every address answered.
    pub error_ratio: Option<f64>,
    /// p99 latency in milliseconds, when the histogram gave one too.
    pub p99_ms: Option<f64>,
    /// Requests served in the round.
    pub requests: u64,
}

/// One side's scrapes over an analysis: the base of the next deltas, and counts for the
/// step's detail.
#[derive(Debug, Clone, Default)]
pub struct Side {
    /// The last complete scrape (every address answered), by address.
    previous: Option<BTreeMap<String, Snapshot>>,
    addresses: BTreeSet<String>,
    scrapes_ok: u64,
    scrapes_failed: u64,
    rounds_sampled: u64,
    rounds_without_requests: u64,
    rounds_with_failures: u64,
    rounds_without_latency: u64,
    requests: f64,
    errors: f64,
    skipped: u64,
    first_skipped: Option<String>,
    last_failure: Option<String>,
}

impl Side {
    /// Takes in a round's scrapes of this side's addresses: its samples, if any.
    pub fn record(&mut self, scrapes: Vec<Scrape>) -> SideRound {
        let mut current = BTreeMap::new();
        let mut failed = false;
        for (address, result) in scrapes {
            self.addresses.insert(address.clone());
            match result {
                Ok(snapshot) => {
                    self.scrapes_ok += 1;
                    self.skipped += snapshot.skipped as u64;
                    if self.first_skipped.is_none() {
                        self.first_skipped = snapshot
                            .first_skipped
                            .as_ref()
                            .map(|why| format!("{address}: {why}"));
                    }
                    current.insert(address, snapshot);
                }
                Err(error) => {
                    self.scrapes_failed += 1;
                    self.last_failure = Some(format!("{address}: {error}"));
                    failed = true;
                }
            }
        }
        if failed {
            self.rounds_with_failures += 1;
            return SideRound::default();
        }
        let Some(previous) = self.previous.take() else {
            self.previous = Some(current);
            return SideRound::default();
        };
        let mut delta = Delta::default();
        for (address, now) in &current {
            // An address new to the side sets its baseline.
            if let Some(before) = previous.get(address) {
                delta.add(before, now);
            }
        }
        self.previous = Some(current);
        let Some(error_ratio) = delta.error_ratio() else {
            self.rounds_without_requests += 1;
            return SideRound::default();
        };
        let p99_ms = delta.p99_ms();
        if p99_ms.is_none() {
            self.rounds_without_latency += 1;
        }
        self.rounds_sampled += 1;
        self.requests += delta.requests;
        self.errors += delta.errors;
        SideRound {
            error_ratio: Some(error_ratio),
            p99_ms,
            requests: delta.requests.round() as u64,
        }
    }

    /// What the side's scrapes came to, for the step's detail.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "addresses": self.addresses,
            "scrapes_ok": self.scrapes_ok,
            "scrapes_failed": self.scrapes_failed,
            "last_failure": self.last_failure,
            "rounds_sampled": self.rounds_sampled,
            "rounds_without_requests": self.rounds_without_requests,
            "rounds_with_failed_scrapes": self.rounds_with_failures,
            "rounds_without_latency": self.rounds_without_latency,
            "requests": self.requests.round() as u64,
            "errors": self.errors.round() as u64,
            "lines_skipped": self.skipped,
            "first_skipped": self.first_skipped,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;
