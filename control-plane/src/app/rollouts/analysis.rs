//! The `analyse` step's checks: a round on the new version and on the old one once a
//! second for the step's duration (HTTP probes, or scrapes of their metrics), judged by
//! `decision::analysis` (Mann–Whitney U between the two, as Kayenta compares a canary
//! with its baseline).
//!
//! `--analysis http:PATH` compares the error ratio: each round sends
//! [`PROBES_PER_ENDPOINT`] GETs to PATH on every endpoint of each side, and a request
//! that fails or answers other than 2xx is an error; the round's ratio is one sample.
//! `errors-and-latency:PATH` also compares the round's p99 latency.
//!
//! `--analysis prometheus[:PATH][?requests=NAME&latency=NAME]` compares the traffic each
//! side serves instead: each round scrapes PATH (default `/metrics`) on every endpoint
//! of each side, and the round's samples are the error ratio and the p99 latency of what
//! the side's counters and histogram grew by since the round before (see
//! [`super::prometheus`]).
//!
//! The server sends the probes and the scrapes itself, to the addresses the router is
//! given, so it must reach them (agents probing from the target's host are not built
//! yet).

use std::time::{Duration, Instant};

use stella_decision::analysis::{Judge, Metric, MetricSamples, Samples, StepRecord, Thresholds};

use super::prometheus;

/// Time between two probe rounds.
pub const PROBE_INTERVAL_MS: i64 = 1_000;
/// GETs per endpoint per round.
pub const PROBES_PER_ENDPOINT: usize = 20;
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What an `analyse` step checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// Where the samples come from.
    pub source: Source,
    /// Compare the p99 latency too.
    pub latency: bool,
    /// The path probed or scraped on every endpoint.
    pub path: String,
}

/// Where an analysis' samples come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Requests the server sends to each side ([`probe_round`]).
    Probes,
    /// Each side's own metrics, scraped from its Prometheus endpoint.
    Prometheus(prometheus::Names),
}

/// Reads `--analysis`: `http[:PATH]` or `errors-and-latency[:PATH]` (PATH defaults to
/// `/`), or `prometheus[:PATH][?requests=NAME&latency=NAME]` (PATH defaults to
/// `/metrics`). PATH must start with `/`. The error is one line naming what is wrong.
pub fn parse_checks(text: &str) -> Result<Checks, String> {
    let (name, path) = text.split_once(':').unwrap_or((text, ""));
    let (source, latency, path) = match name {
        "http" => (Source::Probes, false, path),
        "errors-and-latency" => (Source::Probes, true, path),
        "prometheus" => {
            let (path, names) = match path.split_once('?') {
                Some((path, query)) => (
                    path,
                    prometheus::Names::from_query(query)
                        .map_err(|e| format!("--analysis {text:?}: {e}"))?,
                ),
                None => (path, prometheus::Names::default()),
            };
            let path = if path.is_empty() {
                prometheus::DEFAULT_PATH
            } else {
                path
            };
            (Source::Prometheus(names), true, path)
        }
        other => {
            return Err(format!(
                "--analysis {other:?}: use http:PATH (error ratio), errors-and-latency:PATH (and p99 latency) or prometheus:PATH (both, from the versions' own metrics)"
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
        source,
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
    /// Requests sent (probes) or served (scraped counters), per side.
    pub requests: (u64, u64),
    /// Rounds taken.
    pub rounds: u64,
    /// The scrapes of each side so far (a `prometheus:` analysis).
    pub scraped: Scraped,
}

/// The scrapes of a `prometheus:` analysis, per side.
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    /// The old version's.
    pub baseline: prometheus::Side,
    /// The new version's.
    pub canary: prometheus::Side,
}

/// One round of an analysis on both sides, before it is recorded.
#[derive(Debug)]
pub enum RoundTaken {
    /// Probes sent to each side.
    Probed {
        /// The old version's round.
        baseline: Round,
        /// The new version's round.
        canary: Round,
    },
    /// Each side's endpoints scraped.
    Scraped {
        /// The old version's scrapes.
        baseline: Vec<prometheus::Scrape>,
        /// The new version's scrapes.
        canary: Vec<prometheus::Scrape>,
    },
}

/// Takes one round of `checks` on both sides at once: probes or scrapes.
pub async fn take_round(
    client: &reqwest::Client,
    checks: &Checks,
    baseline: &[String],
    canary: &[String],
) -> RoundTaken {
    match &checks.source {
        Source::Probes => {
            let (baseline, canary) = futures::future::join(
                probe_round(client, baseline, &checks.path),
                probe_round(client, canary, &checks.path),
            )
            .await;
            RoundTaken::Probed { baseline, canary }
        }
        Source::Prometheus(names) => {
            let (baseline, canary) = futures::future::join(
                prometheus::scrape_all(client, baseline, &checks.path, names, PROBE_TIMEOUT),
                prometheus::scrape_all(client, canary, &checks.path, names, PROBE_TIMEOUT),
            )
            .await;
            RoundTaken::Scraped { baseline, canary }
        }
    }
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
            rounds: 0,
            scraped: Scraped::default(),
        }
    }

    /// Records a round: probes give a sample of each side, scrapes a sample of each side
    /// that served requests (see [`prometheus::Side::record`]).
    pub fn record(&mut self, round: RoundTaken) {
        match round {
            RoundTaken::Probed { baseline, canary } => self.add(baseline, canary),
            RoundTaken::Scraped { baseline, canary } => {
                let baseline = self.scraped.baseline.record(baseline);
                let canary = self.scraped.canary.record(canary);
                self.add_scraped(baseline, canary);
            }
        }
    }

    /// Adds one probe round of each side.
    pub fn add(&mut self, baseline: Round, canary: Round) {
        self.errors.baseline.push(baseline.error_ratio);
        self.errors.canary.push(canary.error_ratio);
        self.latency.baseline.push(baseline.p99_ms);
        self.latency.canary.push(canary.p99_ms);
        self.requests.0 += baseline.requests;
        self.requests.1 += canary.requests;
        self.rounds += 1;
    }

    /// Adds one scrape round: each side's samples when it has them.
    pub fn add_scraped(&mut self, baseline: prometheus::SideRound, canary: prometheus::SideRound) {
        for (side, errors, latency, requests) in [
            (
                baseline,
                &mut self.errors.baseline,
                &mut self.latency.baseline,
                &mut self.requests.0,
            ),
            (
                canary,
                &mut self.errors.canary,
                &mut self.latency.canary,
                &mut self.requests.1,
            ),
        ] {
            errors.extend(side.error_ratio);
            latency.extend(side.p99_ms);
            *requests += side.requests;
        }
        self.rounds += 1;
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
        let mut detail = serde_json::json!({
            "analysis": record,
            "results": judgement.metrics,
            "rounds": self.rounds,
            "requests": {"baseline": self.requests.0, "canary": self.requests.1},
        });
        if let Source::Prometheus(names) = &checks.source {
            detail["scraped"] = serde_json::json!({
                "path": checks.path,
                "metrics": names,
                "baseline": self.scraped.baseline.detail(),
                "canary": self.scraped.canary.detail(),
            });
        }
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
                source: Source::Probes,
                latency: false,
                path: "/cgi-bin/app".into()
            })
        );
        assert_eq!(
            parse_checks("errors-and-latency"),
            Ok(Checks {
                source: Source::Probes,
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
    fn prometheus_checks_take_a_path_and_metric_names_or_refuse_the_key() {
        let defaults = prometheus::Names::default();
        for (text, path) in [
            ("prometheus", "/metrics"),
            ("prometheus:", "/metrics"),
            ("prometheus:/cgi-bin/metrics", "/cgi-bin/metrics"),
        ] {
            assert_eq!(
                parse_checks(text),
                Ok(Checks {
                    source: Source::Prometheus(defaults.clone()),
                    latency: true,
                    path: path.into()
                }),
                "{text}"
            );
        }
        let checks = parse_checks(
            "prometheus:/m?requests=myapp_requests_total&latency=myapp:latency_seconds",
        )
        .unwrap();
        assert_eq!(
            checks.source,
            Source::Prometheus(prometheus::Names {
                requests: "myapp_requests_total".into(),
                latency: "myapp:latency_seconds".into()
            })
        );
        assert_eq!(checks.path, "/m");
        let checks = parse_checks("prometheus:?latency=rpc_seconds").unwrap();
        assert_eq!(checks.path, "/metrics");
        for (bad, says) in [
            ("prometheus:/m?rate=x", "unknown key `rate`"),
            ("prometheus:/m?requests", "`requests` is not KEY=NAME"),
            ("prometheus:/m?", "`` is not KEY=NAME"),
            (
                "prometheus:/m?latency=a&latency=b",
                "`latency` is given twice",
            ),
            (
                "prometheus:/m?requests=9lives",
                "not a Prometheus metric name",
            ),
            ("prometheus:/m?requests=a-b", "not a Prometheus metric name"),
            ("prometheus:/m?requests=", "not a Prometheus metric name"),
            ("prometheus:metrics", "must start with /"),
            ("prometheus:/a b", "must start with /"),
        ] {
            let error = parse_checks(bad).unwrap_err();
            assert!(
                error.starts_with(&format!("--analysis {bad:?}")) && error.contains(says),
                "{bad}: {error}"
            );
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn a_scraped_round_adds_only_the_samples_each_side_has() {
        let mut sampling = Sampling::new(0);
        let served = |ratio: f64| prometheus::SideRound {
            error_ratio: Some(ratio),
            p99_ms: Some(4.95),
            requests: 100,
        };
        sampling.add_scraped(prometheus::SideRound::default(), served(0.05));
        sampling.add_scraped(served(0.0), served(0.04));
        assert_eq!(sampling.rounds, 2);
        assert_eq!(sampling.errors.baseline, [0.0]);
        assert_eq!(sampling.errors.canary, [0.05, 0.04]);
        assert_eq!(sampling.latency.canary, [4.95, 4.95]);
        assert_eq!(sampling.requests, (100, 200));
        let checks = parse_checks("prometheus").unwrap();
        let (record, detail) = sampling.judged(&checks).unwrap();
        assert_eq!(record.metrics.len(), 2);
        assert_eq!(detail["rounds"], 2);
        assert_eq!(
            detail["scraped"]["metrics"]["requests"],
            "http_requests_total"
        );
        assert_eq!(detail["scraped"]["path"], "/metrics");
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
