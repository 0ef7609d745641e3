//! Progressive delivery strategies and the steps they compile to (RFC 0005, "Strategies,
//! as steps the rollout driver runs").
//!
//! An environment's strategy ([`Strategy`], parsed from the CLI-shaped settings by
//! [`Strategy::from_settings`] or [`Strategy::from_args`]) compiles with [`compile`] to a
//! list of [`Step`]s over the environment's targets. The list is a pure function of its
//! inputs: targets are taken in name order, so the same strategy over the same targets
//! always gives the same steps, and [`plan_fragment`] gives their canonical JSON for the
//! plan hash. [`rollback_of`] gives the steps that undo the steps done so far.
//!
//! Weights in [`Step::Route`] are percentages (0–100) per slot, the unit the operator
//! writes (`--steps 5,25,50,100`); [`backend_weight`] converts one to the 0–256 scale of a
//! router `Backend`.
//!
//! Pure: no IO, no clock. Durations are whole seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::canonical::canonical_bytes;
use crate::DecisionError;

mod parse;
mod rollback;

pub use parse::parse_duration;
pub use rollback::rollback_of;

/// Why a strategy was refused or could not be compiled; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RolloutError(pub String);

impl RolloutError {
    pub(crate) fn new(message: impl Into<String>) -> RolloutError {
        RolloutError(message.into())
    }
}

/// How an environment's targets receive a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "strategy")]
pub enum Strategy {
    /// Every target at once (today's behaviour).
    AllAtOnce,
    /// Batches of targets in name order.
    Rolling {
        /// Targets per batch.
        batch: BatchSize,
        /// At most this many targets out of service at once (≥ 1, fewer than the targets).
        max_unavailable: u32,
        /// The pause after each batch, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause: Option<PauseKind>,
        /// Checks after each batch, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analysis: Option<AnalysisSpec>,
        /// The router in front of the targets, if any: each group is drained out of it
        /// before it is replaced, and put back after.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        router: Option<String>,
    },
    /// Every target in a green slot, then all traffic to it.
    BlueGreen {
        /// How long the blue slot is kept after the switch (zero: retired at once).
        #[serde(with = "secs")]
        keep_old: Duration,
        /// The router in front of the targets.
        router: String,
        /// Checks before the switch, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analysis: Option<AnalysisSpec>,
    },
    /// A canary slot taking growing shares of the traffic.
    Canary {
        /// Canary weights in percent, strictly increasing, ending at 100.
        steps: Vec<u8>,
        /// The pause after each weight, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause: Option<PauseKind>,
        /// Checks after each weight, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analysis: Option<AnalysisSpec>,
        /// The router in front of the targets.
        router: String,
    },
    /// Requests matching a header or cookie go to a `b` slot until promoted or aborted.
    #[serde(rename = "a-b")]
    AB {
        /// Which requests go to `b`.
        #[serde(rename = "match")]
        match_: HeaderOrCookie,
        /// The router in front of the targets.
        router: String,
    },
}

/// The size of a rolling batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// This many targets (≥ 1).
    Count(u32),
    /// This percentage of the targets, rounded up (1–100).
    Percent(u8),
}

/// Which requests an A/B route sends to the `b` slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum HeaderOrCookie {
    /// Requests with this header set to this value.
    Header {
        /// Header name.
        name: String,
        /// Value.
        value: String,
    },
    /// Requests with this cookie set to this value.
    Cookie {
        /// Cookie name.
        name: String,
        /// Value.
        value: String,
    },
}

/// The checks of an `analyse` step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisSpec {
    /// The named set of checks (`--analysis errors-and-latency`).
    pub checks: String,
    /// How long the checks run (`--analysis-for`, default [`DEFAULT_ANALYSIS`]).
    #[serde(with = "secs")]
    pub duration: Duration,
}

impl AnalysisSpec {
    /// Whether the checks judge the traffic each version serves (`prometheus:`, its
    /// request counters and latency histograms) rather than requests the server sends
    /// itself (`http:`, `errors-and-latency:`). Such checks need both versions to take
    /// traffic: a canary is not analysed at 100 % (the old version serves nothing then),
    /// and blue-green, whose new version serves nothing before its switch, refuses them.
    pub fn compares_served_traffic(&self) -> bool {
        let kind = self
            .checks
            .split_once(':')
            .map_or(self.checks.as_str(), |(k, _)| k);
        kind.trim() == "prometheus"
    }
}

/// How long an analysis runs when `--analysis-for` is not given.
pub const DEFAULT_ANALYSIS: Duration = Duration::from_secs(60);

/// A slot: which container of a target a step acts on (RFC 0005, "Slots").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The target's own container, serving before and after a rollout.
    Stable,
    /// The canary container.
    Canary,
    /// The slot serving before a blue-green switch. Blue-green as [`compile`] writes it
    /// keeps the old set in the stable slot, so only rollbacks of steps recorded before
    /// that name it.
    Blue,
    /// The new slot of a blue-green deployment.
    Green,
    /// The new slot of an A/B deployment.
    B,
}

/// A pause between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseKind {
    /// Continue after this long.
    For(#[serde(with = "secs")] Duration),
    /// Continue on `stella deployment promote`.
    Manual,
}

/// One step of a rollout, as the driver runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Deploy the release to these targets' slot.
    Deploy {
        /// Target names, sorted.
        targets: Vec<String>,
        /// The slot.
        slot: Slot,
    },
    /// Set the router's weights (percent per slot, summing to 100), and for A/B the
    /// requests that go to one slot whatever the weights.
    Route {
        /// Percent per slot.
        weights: Vec<(Slot, u8)>,
        /// A/B: requests matching go to this slot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        matched: Option<(HeaderOrCookie, Slot)>,
        /// Rolling behind a router: these targets' stable backends are kept listed at
        /// weight 0 (drained) whatever the weights say. Sorted.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        drained: Vec<String>,
    },
    /// Wait.
    Pause(PauseKind),
    /// Run the checks and judge (continue, pause or roll back).
    Analyse {
        /// The named set of checks.
        checks: String,
        /// How long they run.
        #[serde(with = "secs")]
        duration: Duration,
    },
    /// Remove this slot's containers from every target that has one, and its backends
    /// from the router.
    Retire {
        /// The slot.
        slot: Slot,
    },
    /// Rollback only: redeploy the previous release's payload (which the desired state
    /// holds) to this slot of these targets.
    Restore {
        /// Target names.
        targets: Vec<String>,
        /// The slot: stable, or blue when a finished blue-green is rolled back.
        slot: Slot,
    },
}

/// The 0–256 weight of a router `Backend` for a percentage, rounded to nearest
/// (100 → 256, 5 → 13).
pub fn backend_weight(percent: u8) -> u16 {
    let p = u32::from(percent.min(100));
    // (p * 256 + 50) / 100 ≤ 256, so the conversion cannot fail.
    u16::try_from((p * 256 + 50) / 100).unwrap_or(256)
}

/// The steps `strategy` runs over `targets` (target names; taken in name order, so the
/// order given does not matter). Fails on no targets, duplicate names, or a
/// `max_unavailable` not below the number of targets.
pub fn compile(strategy: &Strategy, targets: &[String]) -> Result<Vec<Step>, RolloutError> {
    strategy.validate()?;
    let mut all: Vec<String> = targets.to_vec();
    all.sort();
    if all.is_empty() {
        return Err(RolloutError::new("a rollout needs at least one target"));
    }
    if let Some(pair) = all.windows(2).find(|w| w[0] == w[1]) {
        return Err(RolloutError::new(format!(
            "target `{}` is named twice",
            pair[0]
        )));
    }
    let n = all.len();
    let mut steps = Vec::new();
    match strategy {
        Strategy::AllAtOnce => steps.push(Step::Deploy {
            targets: all,
            slot: Slot::Stable,
        }),
        Strategy::Rolling {
            batch,
            max_unavailable,
            pause,
            analysis,
            router,
        } => {
            let max = *max_unavailable as usize;
            if max >= n {
                return Err(RolloutError::new(format!(
                    "--max-unavailable {max} must be below the number of targets ({n}); \
                     use --strategy all-at-once to replace them all at once"
                )));
            }
            let size = match batch {
                BatchSize::Count(c) => *c as usize,
                BatchSize::Percent(p) => (usize::from(*p) * n).div_ceil(100),
            }
            .clamp(1, n);
            for group in all.chunks(size) {
                for chunk in group.chunks(max.max(1)) {
                    // Behind a router, a group leaves it before it is replaced (the
                    // driver waits for requests in flight to finish) and comes back after.
                    if router.is_some() {
                        steps.push(drain(chunk.to_vec()));
                    }
                    steps.push(Step::Deploy {
                        targets: chunk.to_vec(),
                        slot: Slot::Stable,
                    });
                    if router.is_some() {
                        steps.push(drain(Vec::new()));
                    }
                }
                push_analysis(&mut steps, analysis.as_ref());
                push_pause(&mut steps, *pause);
            }
        }
        Strategy::BlueGreen {
            keep_old, analysis, ..
        } => {
            steps.push(Step::Deploy {
                targets: all.clone(),
                slot: Slot::Green,
            });
            push_analysis(&mut steps, analysis.as_ref());
            steps.push(Step::Route {
                weights: vec![(Slot::Stable, 0), (Slot::Green, 100)],
                matched: None,
                drained: Vec::new(),
            });
            if !keep_old.is_zero() {
                steps.push(Step::Pause(PauseKind::For(*keep_old)));
            }
            // The old set (the stable containers, taking no traffic now) is replaced by
            // the new release, traffic goes back to it, and green is retired: between
            // rollouts only stable containers run, on the ports the targets publish.
            steps.push(Step::Deploy {
                targets: all,
                slot: Slot::Stable,
            });
            steps.push(Step::Route {
                weights: vec![(Slot::Stable, 100), (Slot::Green, 0)],
                matched: None,
                drained: Vec::new(),
            });
            steps.push(Step::Retire { slot: Slot::Green });
        }
        Strategy::Canary {
            steps: weights,
            pause,
            analysis,
            ..
        } => {
            // The canary subset: enough targets, in name order, to take the first weight
            // on a per-target basis (rounded up), at least one.
            let first = weights.first().copied().unwrap_or(100);
            let subset = (usize::from(first) * n).div_ceil(100).clamp(1, n);
            steps.push(Step::Deploy {
                targets: all[..subset].to_vec(),
                slot: Slot::Canary,
            });
            for w in weights {
                steps.push(Step::Route {
                    weights: vec![(Slot::Stable, 100 - w), (Slot::Canary, *w)],
                    matched: None,
                    drained: Vec::new(),
                });
                // At 100 % the old version serves nothing to compare the canary's traffic
                // with.
                let analysis = analysis
                    .as_ref()
                    .filter(|a| *w < 100 || !a.compares_served_traffic());
                push_analysis(&mut steps, analysis);
                push_pause(&mut steps, *pause);
            }
            steps.push(Step::Deploy {
                targets: all,
                slot: Slot::Stable,
            });
            steps.push(Step::Route {
                weights: vec![(Slot::Stable, 100), (Slot::Canary, 0)],
                matched: None,
                drained: Vec::new(),
            });
            steps.push(Step::Retire { slot: Slot::Canary });
        }
        Strategy::AB { match_, .. } => {
            // The `b` slot runs on the first target by name; the rest of the traffic
            // stays on stable until the operator promotes.
            steps.push(Step::Deploy {
                targets: all[..1].to_vec(),
                slot: Slot::B,
            });
            steps.push(Step::Route {
                weights: vec![(Slot::Stable, 100), (Slot::B, 0)],
                matched: Some((match_.clone(), Slot::B)),
                drained: Vec::new(),
            });
            steps.push(Step::Pause(PauseKind::Manual));
            steps.push(Step::Deploy {
                targets: all,
                slot: Slot::Stable,
            });
            steps.push(Step::Route {
                weights: vec![(Slot::Stable, 100), (Slot::B, 0)],
                matched: None,
                drained: Vec::new(),
            });
            steps.push(Step::Retire { slot: Slot::B });
        }
    }
    Ok(steps)
}

/// A route giving all the weight to the stable slot, with `drained` (sorted) at 0.
fn drain(drained: Vec<String>) -> Step {
    Step::Route {
        weights: vec![(Slot::Stable, 100)],
        matched: None,
        drained,
    }
}

fn push_analysis(steps: &mut Vec<Step>, analysis: Option<&AnalysisSpec>) {
    if let Some(a) = analysis {
        steps.push(Step::Analyse {
            checks: a.checks.clone(),
            duration: a.duration,
        });
    }
}

fn push_pause(steps: &mut Vec<Step>, pause: Option<PauseKind>) {
    match pause {
        Some(PauseKind::For(d)) if d.is_zero() => {}
        Some(p) => steps.push(Step::Pause(p)),
        None => {}
    }
}

/// The canonical JSON (RFC 8785) of a strategy and its compiled steps, as the plan hash
/// covers them: `{"steps":[…],"strategy":{…}}`.
pub fn plan_fragment(strategy: &Strategy, steps: &[Step]) -> Result<Vec<u8>, DecisionError> {
    #[derive(Serialize)]
    struct Fragment<'a> {
        strategy: &'a Strategy,
        steps: &'a [Step],
    }
    canonical_bytes(&Fragment { strategy, steps })
}

impl Strategy {
    /// The strategy's name as the CLI writes it (`all-at-once`, `rolling`, `blue-green`,
    /// `canary`, `a-b`).
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::AllAtOnce => "all-at-once",
            Strategy::Rolling { .. } => "rolling",
            Strategy::BlueGreen { .. } => "blue-green",
            Strategy::Canary { .. } => "canary",
            Strategy::AB { .. } => "a-b",
        }
    }

    /// The router the strategy names, if any.
    pub fn router(&self) -> Option<&str> {
        match self {
            Strategy::AllAtOnce => None,
            Strategy::Rolling { router, .. } => router.as_deref(),
            Strategy::BlueGreen { router, .. }
            | Strategy::Canary { router, .. }
            | Strategy::AB { router, .. } => Some(router),
        }
    }

    /// Checks what does not depend on the targets (a strategy read back from storage
    /// is checked again): canary steps strictly increasing, 1–100, ending at 100; a batch
    /// of at least 1 (a percentage 1–100); `max_unavailable` ≥ 1; a router named; checks
    /// that compare served traffic ([`AnalysisSpec::compares_served_traffic`]) only where
    /// both versions serve some: not with blue-green, not with a canary of `--steps 100`.
    pub fn validate(&self) -> Result<(), RolloutError> {
        match self {
            Strategy::AllAtOnce => {}
            Strategy::Rolling {
                batch,
                max_unavailable,
                router,
                ..
            } => {
                match batch {
                    BatchSize::Count(0) => {
                        return Err(RolloutError::new("--batch must be at least 1"));
                    }
                    BatchSize::Percent(p) if *p == 0 || *p > 100 => {
                        return Err(RolloutError::new(format!(
                            "--batch {p}% must be between 1% and 100%"
                        )));
                    }
                    _ => {}
                }
                if *max_unavailable == 0 {
                    return Err(RolloutError::new("--max-unavailable must be at least 1"));
                }
                if let Some(router) = router {
                    check_router(router)?;
                }
            }
            Strategy::Canary {
                steps,
                router,
                analysis,
                ..
            } => {
                check_router(router)?;
                if steps.is_empty() {
                    return Err(RolloutError::new("--steps needs at least one weight"));
                }
                for w in steps {
                    if *w == 0 || *w > 100 {
                        return Err(RolloutError::new(format!(
                            "--steps: weight {w} is not between 1 and 100"
                        )));
                    }
                }
                if let Some(pair) = steps.windows(2).find(|p| p[0] >= p[1]) {
                    return Err(RolloutError::new(format!(
                        "--steps must be strictly increasing ({} then {})",
                        pair[0], pair[1]
                    )));
                }
                if steps.last() != Some(&100) {
                    return Err(RolloutError::new("--steps must end at 100"));
                }
                if steps.len() == 1
                    && analysis
                        .as_ref()
                        .is_some_and(AnalysisSpec::compares_served_traffic)
                {
                    return Err(RolloutError::new(
                        "--analysis prometheus compares the traffic each version serves, and with --steps 100 the old version serves none: add a weight below 100",
                    ));
                }
            }
            Strategy::BlueGreen {
                router, analysis, ..
            } => {
                check_router(router)?;
                if analysis
                    .as_ref()
                    .is_some_and(AnalysisSpec::compares_served_traffic)
                {
                    return Err(RolloutError::new(
                        "--analysis prometheus compares the traffic each version serves, and blue-green sends the new version none before its switch: use http:PATH",
                    ));
                }
            }
            Strategy::AB { router, .. } => {
                check_router(router)?;
            }
        }
        Ok(())
    }

    /// The strategy from CLI-shaped settings: keys are the flags without `--`
    /// (`strategy`, `steps`, `pause`, `analysis`, `analysis-for`, `batch`,
    /// `max-unavailable`, `router`, `keep-old`, `match`). A setting the strategy does not
    /// take is refused, naming it.
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<Strategy, RolloutError> {
        parse::from_settings(settings)
    }

    /// The strategy from flags as the CLI receives them:
    /// `["--strategy", "canary", "--steps", "5,25,50,100", "--pause", "2m"]`
    /// (or `--steps=5,25,50,100`).
    pub fn from_args(args: &[&str]) -> Result<Strategy, RolloutError> {
        parse::from_args(args)
    }
}

fn check_router(router: &str) -> Result<(), RolloutError> {
    if router.trim().is_empty() {
        return Err(RolloutError::new("this strategy needs --router NAME"));
    }
    Ok(())
}

/// Durations as whole seconds in JSON.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;
