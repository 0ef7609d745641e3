//! The canary judge of an `analyse` step (RFC 0005, "Analysis"): a two-sided
//! Mann–Whitney U test between the baseline (old) and canary (new) samples of each
//! metric, plus absolute thresholds.
//!
//! [`mann_whitney`] is the test as R's `wilcox.test(x, y, exact = FALSE, correct = TRUE)`
//! computes it: average ranks for ties, the normal approximation with the tie-corrected
//! variance and a continuity correction of ½ towards the mean. [`Judge::judge`] turns the
//! test and the thresholds into a [`Verdict`] (continue, pause, roll back), and
//! [`recompute`] replays a recorded step: the same samples and the same judge always give
//! the same verdict.
//!
//! Why no crate: the widely used Rust statistics crate, `statrs`, is mostly
//! distributions (a normal CDF among them). Small crates do carry this test (`hypors`,
//! `stattest`, others), but each differs in the details that set the p-value (which U is
//! reported, the tie correction, the continuity correction, exact or approximate), and
//! would need the same checks against R as the code here. The test and the one CDF it
//! needs are about sixty lines below, pinned to R's definition and tested against its
//! published output: less to audit than a dependency.
//! The normal CDF uses Abramowitz and Stegun's formula 7.1.26 for `erf`, whose absolute
//! error is at most 1.5 × 10⁻⁷, so a p-value here is within 1.5 × 10⁻⁷ of the exact
//! normal approximation's.
//!
//! Pure: no IO, no clock. A NaN or infinite sample is an error, never a panic.

use serde::{Deserialize, Serialize};

/// Why samples or a judge were refused; the message names what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnalysisError(pub String);

impl AnalysisError {
    fn new(message: impl Into<String>) -> AnalysisError {
        AnalysisError(message.into())
    }
}

/// The result of a Mann–Whitney U test of `x` against `y`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// U of `x`: the pairs (x, y) with x > y, plus half the pairs with x = y (R's `W`).
    pub u: f64,
    /// The standardised statistic, continuity-corrected (0 when every value ties).
    pub z: f64,
    /// The two-sided p-value of the normal approximation (1 when every value ties).
    pub p: f64,
}

/// The two-sided Mann–Whitney U test of `x` against `y`, as R's
/// `wilcox.test(x, y, exact = FALSE, correct = TRUE)`: with n = n₁ + n₂ and tᵢ the sizes
/// of the groups of tied values,
/// U = R₁ − n₁(n₁+1)/2, σ² = n₁n₂/12 · ((n+1) − Σ(tᵢ³ − tᵢ)/(n(n−1))),
/// z = (U − n₁n₂/2 − ½·sign(U − n₁n₂/2)) / σ, p = 2·min(Φ(z), 1 − Φ(z)).
/// Fails when either side is empty or holds a NaN or infinite value.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Result<MannWhitney, AnalysisError> {
    if x.is_empty() || y.is_empty() {
        return Err(AnalysisError::new(
            "the Mann–Whitney test needs samples on both sides",
        ));
    }
    finite("x", x)?;
    finite("y", y)?;
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|v| (*v, true))
        .chain(y.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len() as f64;
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let (mut rank_sum_x, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let rank = (i + j + 2) as f64 / 2.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_x += rank * all[i..=j].iter().filter(|v| v.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_x - n1 * (n1 + 1.0) / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let shift = u - n1 * n2 / 2.0;
    if variance <= 0.0 || !variance.is_finite() {
        return Ok(MannWhitney { u, z: 0.0, p: 1.0 });
    }
    let z = (shift - 0.5 * sign(shift)) / variance.sqrt();
    let p = (2.0 * normal_cdf(z).min(normal_cdf(-z))).clamp(0.0, 1.0);
    Ok(MannWhitney { u, z, p })
}

fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Φ(z), the standard normal CDF, as ½·(1 + erf(z/√2)) with `erf` from Abramowitz and
/// Stegun 7.1.26 (|error| ≤ 1.5 × 10⁻⁷).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// Abramowitz and Stegun 7.1.26: erf(x) = 1 − (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵)·e^(−x²),
/// t = 1/(1 + px), for x ≥ 0; odd for x < 0.
fn erf(x: f64) -> f64 {
    const P: f64 = 0.327_591_1;
    const A: [f64; 5] = [
        0.254_829_592,
        -0.284_496_736,
        1.421_413_741,
        -1.453_152_027,
        1.061_405_429,
    ];
    let s = sign(x);
    let x = x.abs();
    let t = 1.0 / (1.0 + P * x);
    let poly = A.iter().rev().fold(0.0, |acc, a| (acc + a) * t);
    s * (1.0 - poly * (-x * x).exp())
}

fn finite(side: &str, values: &[f64]) -> Result<(), AnalysisError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(AnalysisError::new(format!(
            "{side} sample {i} is {}, not a finite number",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// A metric the judge compares; for both, higher is worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Errors over requests, 0–1.
    ErrorRatio,
    /// The 99th percentile latency, in milliseconds.
    LatencyP99Ms,
}

impl Metric {
    /// Its name in records and reasons.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ErrorRatio => "error_ratio",
            Metric::LatencyP99Ms => "latency_p99_ms",
        }
    }
}

/// The samples of one metric: one value per scrape of each slot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// From the baseline (old) slot.
    pub baseline: Vec<f64>,
    /// From the canary (new) slot.
    pub canary: Vec<f64>,
}

/// One metric's samples, as a step records them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSamples {
    /// The metric.
    pub metric: Metric,
    /// Its samples.
    pub samples: Samples,
}

/// Absolute limits on the canary, checked on the median of its samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The highest error ratio allowed (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_ratio: Option<f64>,
    /// The highest p99 latency allowed, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
}

/// What the judge decides for a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// The canary is no worse: go on.
    Continue,
    /// Not enough to decide: keep collecting until the step's deadline.
    Pause {
        /// Why.
        reason: String,
    },
    /// The canary is worse: roll back.
    Rollback {
        /// Why: the metric, its U and p, the medians.
        reason: String,
    },
}

/// The judge's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    /// The significance level (0 < α < 1), e.g. 0.05.
    pub alpha: f64,
    /// Samples needed on each side before a metric is judged (≥ 1).
    pub min_samples: usize,
    /// The relative increase of the canary's mean over the baseline's that counts as an
    /// effect (0.1: 10 %); over a zero baseline any increase counts.
    pub tolerance: f64,
    /// Absolute limits.
    pub thresholds: Thresholds,
}

/// One metric as judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    /// The metric.
    pub metric: Metric,
    /// Baseline samples.
    pub baseline_n: usize,
    /// Canary samples.
    pub canary_n: usize,
    /// The test of canary against baseline (U of the canary), when there were enough
    /// samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<MannWhitney>,
    /// Median of the baseline samples, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_baseline: Option<f64>,
    /// Median of the canary samples, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_canary: Option<f64>,
}

/// The verdict and what it rests on, per metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Each metric, in the order given.
    pub metrics: Vec<MetricResult>,
}

/// A step's analysis as recorded in `rollout_steps` and the evidence packet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The judge's settings.
    pub judge: Judge,
    /// The samples.
    pub metrics: Vec<MetricSamples>,
    /// The verdict given.
    pub verdict: Verdict,
}

/// The verdict the judge gives over a recorded step's samples, so a rollback decision
/// replays like a promotion decision: compare it with `record.verdict`.
pub fn recompute(record: &StepRecord) -> Result<Verdict, AnalysisError> {
    record.judge.judge(&record.metrics).map(|j| j.verdict)
}

impl Judge {
    /// Judges the metrics. Per metric, with fewer than `min_samples` on either side it
    /// asks for a pause ("not enough samples: n of m"); otherwise it rolls back when the
    /// canary is worse at p < α with its mean over the baseline's by more than the
    /// tolerance, or when the canary's median exceeds the metric's absolute threshold.
    /// Over all metrics, a rollback wins over a pause, a pause over continue; reasons of
    /// the same verdict are joined in the order given.
    pub fn judge(&self, metrics: &[MetricSamples]) -> Result<Judgement, AnalysisError> {
        self.validate()?;
        let (mut rollback, mut pause, mut results) = (Vec::new(), Vec::new(), Vec::new());
        for m in metrics {
            let name = m.metric.name();
            let (b, c) = (&m.samples.baseline, &m.samples.canary);
            finite(&format!("{name} baseline"), b)?;
            finite(&format!("{name} canary"), c)?;
            let mut result = MetricResult {
                metric: m.metric,
                baseline_n: b.len(),
                canary_n: c.len(),
                test: None,
                median_baseline: median(b),
                median_canary: median(c),
            };
            let have = b.len().min(c.len());
            if have < self.min_samples {
                pause.push(format!(
                    "{name}: not enough samples: {have} of {}",
                    self.min_samples
                ));
                results.push(result);
                continue;
            }
            let test = mann_whitney(c, b)?;
            result.test = Some(test);
            let (mb, mc) = (
                result.median_baseline.unwrap_or(0.0),
                result.median_canary.unwrap_or(0.0),
            );
            let (mean_b, mean_c) = (mean(b), mean(c));
            let worse = test.u > (b.len() * c.len()) as f64 / 2.0;
            let effect = mean_c - mean_b > self.tolerance * mean_b.abs();
            if worse && test.p < self.alpha && effect {
                rollback.push(format!(
                    "{name}: canary worse than baseline (U = {}, p = {:.3e} < {}; median {} vs {}, mean {} vs {})",
                    test.u,
                    test.p,
                    self.alpha,
                    short(mc),
                    short(mb),
                    short(mean_c),
                    short(mean_b)
                ));
            }
            let limit = match m.metric {
                Metric::ErrorRatio => self.thresholds.max_error_ratio,
                Metric::LatencyP99Ms => self.thresholds.max_p99_ms,
            };
            if let Some(limit) = limit.filter(|l| mc > *l) {
                rollback.push(format!(
                    "{name}: canary median {} over the limit {limit} (U = {}, p = {:.3e})",
                    short(mc),
                    test.u,
                    test.p
                ));
            }
            results.push(result);
        }
        let verdict = if !rollback.is_empty() {
            Verdict::Rollback {
                reason: rollback.join("; "),
            }
        } else if !pause.is_empty() {
            Verdict::Pause {
                reason: pause.join("; "),
            }
        } else {
            Verdict::Continue
        };
        Ok(Judgement {
            verdict,
            metrics: results,
        })
    }

    fn validate(&self) -> Result<(), AnalysisError> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(AnalysisError::new(format!(
                "alpha {} is not between 0 and 1",
                self.alpha
            )));
        }
        if self.min_samples == 0 {
            return Err(AnalysisError::new("min_samples must be at least 1"));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(AnalysisError::new(format!(
                "tolerance {} is not a non-negative number",
                self.tolerance
            )));
        }
        for (name, limit) in [
            ("max_error_ratio", self.thresholds.max_error_ratio),
            ("max_p99_ms", self.thresholds.max_p99_ms),
        ] {
            if let Some(l) = limit.filter(|l| !(l.is_finite() && *l >= 0.0)) {
                return Err(AnalysisError::new(format!(
                    "{name} {l} is not a non-negative number"
                )));
            }
        }
        Ok(())
    }
}

/// The median (mean of the middle two for an even count); `None` when empty. The
/// values are finite (checked before).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

/// A value for a reason: six decimals at most, trailing zeros dropped.
fn short(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;
