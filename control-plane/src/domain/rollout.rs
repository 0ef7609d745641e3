//! Rollouts: a deployment into an environment with a progressive strategy, run as the
//! steps `decision::rollout::compile` gave (RFC 0005), and the record of each step.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use stella_decision::rollout::{Slot, Step, Strategy};

use super::Invalid;

string_enum!(
    /// Where a rollout is.
    RolloutState {
        /// The driver takes the steps.
        Running = "running",
        /// An operator paused it: the driver waits for `resume` (or `abort`).
        Paused = "paused",
        /// Every step ran.
        Succeeded = "succeeded",
        /// A step failed (or an operator aborted) and the rollback ran.
        RolledBack = "rolled_back",
        /// A rollback step failed too: an operator must look.
        Failed = "failed",
    }
);

impl RolloutState {
    /// Whether the rollout is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded | RolloutState::RolledBack | RolloutState::Failed
        )
    }
}

string_enum!(
    /// Which list of steps a rollout takes.
    RolloutPhase {
        /// The strategy's steps.
        Forward = "forward",
        /// The steps that undo what the forward steps did.
        Rollback = "rollback",
    }
);

string_enum!(
    /// What an operator asked a rollout to do (`stella deployment promote|pause|resume|abort`).
    RolloutRequest {
        /// End the current pause (a manual one, or a timed one early).
        Promote = "promote",
        /// Stop before the next step.
        Pause = "pause",
        /// Go on after a pause.
        Resume = "resume",
        /// Roll back now.
        Abort = "abort",
    }
);

string_enum!(
    /// Where one step is.
    StepState {
        /// Started, not finished.
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Failed: the rollout rolls back (or, in a rollback, stops).
        Failed = "failed",
    }
);

/// A rollout as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The deployment it carries out.
    pub deployment_id: String,
    /// Its environment.
    pub environment: String,
    /// The strategy, as the plan bound it.
    pub strategy: Strategy,
    /// The strategy's steps over the environment's targets.
    pub steps: Vec<Step>,
    /// Per target: the deploy payload (JSON, as a task stores it) of the new release.
    pub payloads: BTreeMap<String, String>,
    /// Per target: the payload of what ran before, if anything did.
    pub previous: BTreeMap<String, Option<String>>,
    /// Where it is.
    pub state: RolloutState,
    /// Which steps it takes.
    pub phase: RolloutPhase,
    /// The rollback's steps, once one started.
    pub rollback: Vec<Step>,
    /// The index, in the phase's steps, of the step to run next (or running).
    pub next_step: usize,
    /// An operator's request not yet acted on, and who made it.
    pub requested: Option<(RolloutRequest, String)>,
    /// The weights the router was last given, percent per slot.
    pub weights: Vec<(Slot, u8)>,
    /// Why it rolled back or failed; what it waits for.
    pub message: Option<String>,
    /// The replica driving it.
    pub lease_owner: Option<String>,
    /// When that replica's claim lapses.
    pub lease_expires_at_ms: Option<i64>,
    /// Raised by every claim; a driver writes only under the epoch it claimed.
    pub lease_epoch: i64,
    /// Creation time.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
    /// When it ended.
    pub finished_at_ms: Option<i64>,
}

impl Rollout {
    /// The steps of the current phase.
    pub fn phase_steps(&self) -> &[Step] {
        match self.phase {
            RolloutPhase::Forward => &self.steps,
            RolloutPhase::Rollback => &self.rollback,
        }
    }

    /// The step record number of step `index` of `phase`: forward steps are 1…n, the
    /// rollback's follow them.
    pub fn seq_of(&self, phase: RolloutPhase, index: usize) -> i64 {
        let index = i64::try_from(index).unwrap_or(i64::MAX - 1);
        match phase {
            RolloutPhase::Forward => index + 1,
            RolloutPhase::Rollback => {
                let forward = i64::try_from(self.steps.len()).unwrap_or(0);
                forward + index + 1
            }
        }
    }

    /// The targets a forward `deploy` put `slot` on (for `route` and `retire`); every
    /// target of the rollout for the stable slot.
    pub fn targets_with(&self, slot: Slot) -> Vec<String> {
        if slot == Slot::Stable {
            return self.payloads.keys().cloned().collect();
        }
        let mut targets: Vec<String> = self
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::Deploy { targets, slot: s } | Step::Restore { targets, slot: s }
                    if *s == slot =>
                {
                    Some(targets.iter().cloned())
                }
                _ => None,
            })
            .flatten()
            .collect();
        targets.sort();
        targets.dedup();
        targets
    }
}

/// One step a rollout ran or runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStepRecord {
    /// Its rollout's deployment.
    pub deployment_id: String,
    /// Its number (forward steps first, then the rollback's).
    pub seq: i64,
    /// Its phase.
    pub phase: RolloutPhase,
    /// The step.
    pub step: Step,
    /// Where it is.
    pub state: StepState,
    /// What happened, for the operator.
    pub message: Option<String>,
    /// What it found or did: backends applied, endpoints, how long it took.
    pub detail: Option<serde_json::Value>,
    /// Start time.
    pub started_at_ms: i64,
    /// End time.
    pub finished_at_ms: Option<i64>,
}

/// The name of a slot as tasks, containers and routers carry it.
pub fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::Stable => "stable",
        Slot::Canary => "canary",
        Slot::Blue => "blue",
        Slot::Green => "green",
        Slot::B => "b",
    }
}

/// A short description of a step for logs and `deployment show`.
pub fn describe_step(step: &Step) -> String {
    fn weights(w: &[(Slot, u8)]) -> String {
        w.iter()
            .map(|(slot, percent)| format!("{} {percent}%", slot_name(*slot)))
            .collect::<Vec<_>>()
            .join(", ")
    }
    match step {
        Step::Deploy { targets, slot } => {
            format!("deploy to {} of {}", slot_name(*slot), targets.join(", "))
        }
        Step::Restore { targets, slot } => format!(
            "restore the previous release to {} of {}",
            slot_name(*slot),
            targets.join(", ")
        ),
        Step::Route {
            weights: w,
            matched,
            drained,
        } => match matched {
            None if drained.is_empty() => format!("route {}", weights(w)),
            None => format!("route {}; drain {}", weights(w), drained.join(", ")),
            Some((rule, slot)) => format!(
                "route {}; requests matching {} to {}",
                weights(w),
                describe_match(rule),
                slot_name(*slot)
            ),
        },
        Step::Pause(stella_decision::rollout::PauseKind::Manual) => {
            "pause until promoted".to_owned()
        }
        Step::Pause(stella_decision::rollout::PauseKind::For(d)) => {
            format!("pause {}", humantime::format_duration(*d))
        }
        Step::Analyse { checks, duration } => format!(
            "analyse `{checks}` for {}",
            humantime::format_duration(*duration)
        ),
        Step::Retire { slot } => format!("retire {}", slot_name(*slot)),
    }
}

fn describe_match(rule: &stella_decision::rollout::HeaderOrCookie) -> String {
    use stella_decision::rollout::HeaderOrCookie;
    match rule {
        HeaderOrCookie::Header { name, value } => format!("header {name}: {value}"),
        HeaderOrCookie::Cookie { name, value } => format!("cookie {name}={value}"),
    }
}
