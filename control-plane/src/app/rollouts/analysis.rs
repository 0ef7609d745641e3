//! The `analyse` step's checks: HTTP probes of the new version and of the old one, once
//! a second for the step's duration, judged by `decision::analysis` (Mann–Whitney U
//! between the two, as Kayenta compares a canary with its baseline).
//!
//! `--analysis http:PATH` compares the error ratio: each round sends
//! [`PROBES_PER_ENDPOINT`] GETs to PATH on every endpoint of each side, and a request
//! that fails or answers other than 2xx is an error; the round's ratio is one sample.
//! `errors-and-latency:PATH` also compares the round's p99 latency. The server sends the
//! probes itself, to the addresses the router is given, so it must reach them (agents
//! probing from the target's host are not built yet).

use std::time::{Duration, Instant};

use stella_decision::analysis::{Judge, Metric, MetricSamples, Samples, StepRecord, Thresholds};

/// Time between two probe rounds.
pub const PROBE_INTERVAL_MS: i64 = 1_000;
/// GETs per endpoint per round.
pub const PROBES_PER_ENDPOINT: usize = 20;
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What an `analyse` step checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// Compare the p99 latency too.
    pub latency: bool,
    /// The path probed on every endpoint.
    pub path: String,
}

/// Reads `--analysis`: `http[:PATH]` or `errors-and-latency[:PATH]` (PATH defaults to
/// `/`, and must start with `/`).
pub fn parse_checks(text: &str) -> Result<Checks, String> {
    let (name, path) = text.split_once(':').unwrap_or((text, "/"));
    let latency = match name {
        "http" => false,
        "errors-and-latency" => true,
        other => {
            return Err(format!(
                "--analysis {other:?}: use http:PATH (error ratio) or errors-and-latency:PATH (and p99 latency)"
            ))
        }
    };
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "--analysis {text:?}: the path must start with / and hold no spaces"
        ));
    }
    Ok(Checks {
        latency,
        path: path.to_owned(),
    })
}

/// The judge every analysis uses: α = 0.05, at least 5 rounds on each side, an effect
/// is the canary's mean over the baseline's by more than 10 % (any increase over a zero
/// baseline), no absolute limits.
pub fn judge() -> Judge {
    Judge {
        alpha: 0.05,
        min_samples: 5,
        tolerance: 0.1,
        thresholds: Thresholds::default(),
    }
}

/// The samples of one analysis so far.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// When it began (on this replica: a driver that takes a rollout over starts the
    /// analysis again).
    pub started_ms: i64,
    /// When the next round is due.
    pub next_ms: i64,
    /// Error ratio per round.
    pub errors: Samples,
    /// p99 latency per round, in milliseconds.
    pub latency: Samples,
    /// Requests sent, per side.
    pub requests: (u64, u64),
}

impl Sampling {
    /// A new analysis beginning at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Sampling {
            started_ms: now_ms,
            next_ms: now_ms,
            errors: Samples::default(),
            latency: Samples::default(),
            requests: (0, 0),
        }
    }

    /// Adds one round of each side.
    pub fn add(&mut self, baseline: Round, canary: Round) {
        self.errors.baseline.push(baseline.error_ratio);
        self.errors.canary.push(canary.error_ratio);
        self.latency.baseline.push(baseline.p99_ms);
        self.latency.canary.push(canary.p99_ms);
        self.requests.0 += baseline.requests;
        self.requests.1 += canary.requests;
    }

    /// The metrics `checks` compares.
    pub fn metrics(&self, checks: &Checks) -> Vec<MetricSamples> {
        let mut metrics = vec![MetricSamples {
            metric: Metric::ErrorRatio,
            samples: self.errors.clone(),
        }];
        if checks.latency {
            metrics.push(MetricSamples {
                metric: Metric::LatencyP99Ms,
                samples: self.latency.clone(),
            });
        }
        metrics
    }

    /// The judgement over the samples, as a step records it (the record replays with
    /// `decision::analysis::recompute`).
    pub fn judged(&self, checks: &Checks) -> Result<(StepRecord, serde_json::Value), String> {
        let judge = judge();
        let metrics = self.metrics(checks);
        let judgement = judge.judge(&metrics).map_err(|e| e.0)?;
        let record = StepRecord {
            judge,
            metrics,
            verdict: judgement.verdict.clone(),
        };
        let detail = serde_json::json!({
            "analysis": record,
            "results": judgement.metrics,
            "rounds": self.errors.canary.len(),
            "requests": {"baseline": self.requests.0, "canary": self.requests.1},
        });
        Ok((record, detail))
    }
}

/// One probe round of one side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Failed or non-2xx over all requests.
    pub error_ratio: f64,
    /// Nearest-rank p99 of the requests' durations, in milliseconds.
    pub p99_ms: f64,
    /// Requests sent.
    pub requests: u64,
}

/// Sends [`PROBES_PER_ENDPOINT`] GETs to `path` on each of `addresses` (`host:port`),
/// the endpoints one after the other's first request (all at once), each endpoint's
/// requests in sequence.
pub async fn probe_round(client: &reqwest::Client, addresses: &[String], path: &str) -> Round {
    let per_endpoint = addresses.iter().map(|address| async move {
        let url = format!("http://{address}{path}");
        let mut results = Vec::with_capacity(PROBES_PER_ENDPOINT);
        for _ in 0..PROBES_PER_ENDPOINT {
            let started = Instant::now();
            let ok = match client.get(&url).timeout(PROBE_TIMEOUT).send().await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    // The body is read so the timing covers the whole answer.
                    response.bytes().await.is_ok() && ok
                }
                Err(_) => false,
            };
            results.push((ok, started.elapsed().as_secs_f64() * 1000.0));
        }
        results
    });
    let all: Vec<(bool, f64)> = futures::future::join_all(per_endpoint)
        .await
        .into_iter()
        .flatten()
        .collect();
    summarise(&all)
}

/// The round of `(ok, milliseconds)` results.
pub fn summarise(results: &[(bool, f64)]) -> Round {
    if results.is_empty() {
        return Round {
            error_ratio: 1.0,
            p99_ms: 0.0,
            requests: 0,
        };
    }
    let errors = results.iter().filter(|(ok, _)| !ok).count();
    let mut durations: Vec<f64> = results.iter().map(|(_, ms)| *ms).collect();
    durations.sort_by(f64::total_cmp);
    // Nearest rank: the smallest value with at least 99 % of the values at or below it.
    let rank = (durations.len() * 99).div_ceil(100).max(1);
    Round {
        error_ratio: errors as f64 / results.len() as f64,
        p99_ms: durations[rank - 1],
        requests: results.len() as u64,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use stella_decision::analysis::Verdict;

    use super::*;

    #[test]
    fn checks_are_read_or_refused_with_the_flag_named() {
        assert_eq!(
            parse_checks("http:/cgi-bin/app"),
            Ok(Checks {
                latency: false,
                path: "/cgi-bin/app".into()
            })
        );
        assert_eq!(
            parse_checks("errors-and-latency"),
            Ok(Checks {
                latency: true,
                path: "/".into()
            })
        );
        for bad in ["smoke", "http:health", "http:/a b", ""] {
            let error = parse_checks(bad).unwrap_err();
            assert!(error.starts_with("--analysis"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_round_counts_errors_and_takes_the_nearest_rank_p99() {
        let mut results: Vec<(bool, f64)> = (1..=100).map(|ms| (true, f64::from(ms))).collect();
        results[3].0 = false;
        results[50].0 = false;
        let round = summarise(&results);
        assert_eq!(round.requests, 100);
        assert!((round.error_ratio - 0.02).abs() < 1e-12);
        assert_eq!(round.p99_ms, 99.0);
        assert_eq!(summarise(&[(true, 7.0)]).p99_ms, 7.0);
        assert_eq!(summarise(&[]).error_ratio, 1.0);
    }

    #[test]
    fn a_canary_failing_one_request_in_twenty_is_judged_worse_than_a_clean_baseline() {
        let mut sampling = Sampling::new(0);
        let clean = Round {
            error_ratio: 0.0,
            p99_ms: 5.0,
            requests: 40,
        };
        // Rounds of 20 requests with 5 % errors: about two rounds in three see one.
        for errors in [1, 0, 2, 1, 0, 1, 1, 0, 1, 2, 0, 1, 1, 0, 1] {
            let canary = Round {
                error_ratio: f64::from(errors) / 20.0,
                p99_ms: 5.0,
                requests: 20,
            };
            sampling.add(clean, canary);
        }
        let checks = parse_checks("http:/").unwrap();
        let (record, detail) = sampling.judged(&checks).unwrap();
        assert!(
            matches!(&record.verdict, Verdict::Rollback { reason } if reason.starts_with("error_ratio: canary worse")),
            "{record:?}"
        );
        assert_eq!(
            stella_decision::analysis::recompute(&record).unwrap(),
            record.verdict
        );
        assert_eq!(detail["rounds"], 15);
        // The same clean on both sides goes on.
        let mut same = Sampling::new(0);
        for _ in 0..6 {
            same.add(clean, clean);
        }
        assert_eq!(same.judged(&checks).unwrap().0.verdict, Verdict::Continue);
    }
}
