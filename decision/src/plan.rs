//! The plan a promotion's approvals and decision are bound to: the release with its
//! digests, the gate configuration, every target with its planned settings, the secrets
//! they reference, and the environment's promotion workflow compiled for it — and its
//! hash.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::canonical::canonical_via_value as canonical_bytes;
use crate::{sha256_id, DecisionError};

/// The schema of [`Plan`].
pub const PLAN_SCHEMA: &str = "stella.plan/v1";

/// A release as the decision sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInput {
    /// Release name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Components, sorted by name.
    pub components: Vec<ComponentInput>,
}

/// One component of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInput {
    /// Component name.
    pub name: String,
    /// `registry/repository@sha256:<hex>`.
    pub image: String,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// An environment's gate configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateConfig {
    /// Environment name.
    pub environment: String,
    /// The environment the release must have run in first.
    pub after: Option<String>,
    /// Distinct approvals needed.
    pub approvals_required: u32,
    /// How long an approval counts; `None`: until the deployment starts.
    pub approval_ttl_seconds: Option<u64>,
    /// Freeze windows (`CRON/DURATION[@TZ]`).
    pub freeze: Vec<String>,
    /// `none`, `low`, `medium`, `high` or `critical`.
    pub block_severity: String,
    /// Whether an image without a scan report may pass.
    pub allow_unscanned: bool,
    /// The policy source's document id, if any (its version).
    pub policy: Option<String>,
}

/// A target as planned: settings with variables substituted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInput {
    /// Target name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// The agent's name.
    pub agent: String,
    /// Settings, variables substituted, secrets still referenced.
    pub settings: BTreeMap<String, String>,
}

/// What approvals are bound to: the release digests, every target and its planned
/// settings, the secrets they reference (by version), and the gate configuration with
/// the policy's version. Its hash is [`Plan::hash`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_SCHEMA`].
    pub schema: String,
    /// The release.
    pub release: ReleaseInput,
    /// The gates.
    pub gates: GateConfig,
    /// Targets, sorted by name.
    pub targets: Vec<TargetInput>,
    /// Secrets referenced by the targets' settings, with the time each was last set.
    pub secrets: BTreeMap<String, i64>,
    /// The environment's promotion workflow, compiled for this promotion; absent when the
    /// environment runs the built-in one (gates, then the deployment and its health
    /// checks). Absent fields leave the hash of plans made before workflows unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowInput>,
    /// How the release reaches the targets, when not all at once: the environment's
    /// strategy and the steps it compiles to over these targets. Absent for all-at-once,
    /// which leaves the hash of plans made before rollouts unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutInput>,
}

/// A progressive rollout as a plan binds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutInput {
    /// The environment's strategy.
    pub strategy: crate::rollout::Strategy,
    /// The steps it compiles to over the plan's targets ([`crate::rollout::compile`]).
    pub steps: Vec<crate::rollout::Step>,
}

/// A task pack an environment names as its promotion workflow, compiled for one
/// promotion. The compiled plan's input `promotion.deploymentPlanHash` is the hash of the
/// rest of the [`Plan`] ([`Plan::deployment_hash`]), so the workflow's plan hash covers
/// what will be deployed as well as every step around it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowInput {
    /// `sha256:` of the manifest as the environment stores it.
    pub id: String,
    /// The compiled task-pack plan (`stella.pack-plan.v1`), as the workflow's run holds it.
    pub plan: serde_json::Value,
}

impl Plan {
    /// The plan's canonical JSON (what a promotion stores) and its [`Plan::hash`], from
    /// one serialisation when there is no workflow.
    pub fn canonical_and_hash(&self) -> Result<(Vec<u8>, String), DecisionError> {
        let bytes = canonical_bytes(self)?;
        let hash = match self.workflow {
            None => sha256_id(&bytes),
            Some(_) => self.hash()?,
        };
        Ok((bytes, hash))
    }

    /// What approvals and the decision are bound to. Without a workflow: `sha256:` of the
    /// plan's canonical JSON. With one: the workflow's plan hash (`sha256:` of the
    /// compiled task-pack plan's canonical JSON, as the task runner computes it), after
    /// checking that the workflow binds this plan's deployment part; a workflow plan
    /// compiled for another deployment plan is an error.
    pub fn hash(&self) -> Result<String, DecisionError> {
        let Some(workflow) = &self.workflow else {
            return Ok(sha256_id(&canonical_bytes(self)?));
        };
        let deployment = self.deployment_hash()?;
        let bound = workflow
            .plan
            .pointer("/inputs/promotion/deploymentPlanHash")
            .and_then(serde_json::Value::as_str);
        if bound != Some(deployment.as_str()) {
            return Err(DecisionError::new(format!(
                "the workflow plan binds deployment plan {}, not this plan's {deployment}",
                bound.unwrap_or("(none)")
            )));
        }
        Ok(sha256_id(&canonical_bytes(&workflow.plan)?))
    }

    /// `sha256:` of the canonical JSON of the plan without its workflow: the release,
    /// gates, targets and secrets that the workflow's deployment step deploys.
    pub fn deployment_hash(&self) -> Result<String, DecisionError> {
        if self.workflow.is_none() {
            return Ok(sha256_id(&canonical_bytes(self)?));
        }
        let bare = Plan {
            workflow: None,
            ..self.clone()
        };
        Ok(sha256_id(&canonical_bytes(&bare)?))
    }

    /// What changed from `earlier` to this plan, one line per change, for the message
    /// that voids approvals.
    pub fn changes_since(&self, earlier: &Plan) -> Vec<String> {
        let mut changes = Vec::new();
        if self.release != earlier.release {
            changes.push("the release changed".to_owned());
        }
        if self.gates != earlier.gates {
            let mut what = Vec::new();
            let (a, b) = (&earlier.gates, &self.gates);
            if a.after != b.after {
                what.push("promotion order");
            }
            if a.approvals_required != b.approvals_required
                || a.approval_ttl_seconds != b.approval_ttl_seconds
            {
                what.push("approvals");
            }
            if a.freeze != b.freeze {
                what.push("freeze windows");
            }
            if a.block_severity != b.block_severity || a.allow_unscanned != b.allow_unscanned {
                what.push("security gate");
            }
            if a.policy != b.policy {
                what.push("policy");
            }
            changes.push(format!(
                "the gate configuration of `{}` changed ({})",
                self.gates.environment,
                what.join(", ")
            ));
        }
        let before: BTreeMap<&str, &TargetInput> = earlier
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let after: BTreeMap<&str, &TargetInput> =
            self.targets.iter().map(|t| (t.name.as_str(), t)).collect();
        for (name, target) in &after {
            match before.get(name) {
                None => changes.push(format!("target `{name}` was added")),
                Some(old) if old.settings != target.settings => {
                    changes.push(format!("target `{name}` settings changed"));
                }
                Some(old) if old != target => changes.push(format!("target `{name}` changed")),
                Some(_) => {}
            }
        }
        for name in before.keys() {
            if !after.contains_key(name) {
                changes.push(format!("target `{name}` was removed"));
            }
        }
        match (&earlier.workflow, &self.workflow) {
            (None, Some(_)) => changes.push("a promotion workflow was set".to_owned()),
            (Some(_), None) => changes.push("the promotion workflow was removed".to_owned()),
            (Some(a), Some(b)) if a.id != b.id => {
                changes.push("the promotion workflow changed".to_owned());
            }
            _ => {}
        }
        if self.rollout != earlier.rollout {
            changes.push(format!(
                "the rollout strategy of `{}` changed",
                self.gates.environment
            ));
        }
        if self.secrets != earlier.secrets {
            let names: BTreeSet<&String> = self
                .secrets
                .iter()
                .filter(|(k, v)| earlier.secrets.get(*k) != Some(v))
                .map(|(k, _)| k)
                .chain(
                    earlier
                        .secrets
                        .keys()
                        .filter(|k| !self.secrets.contains_key(*k)),
                )
                .collect();
            changes.push(format!(
                "secret{} {} changed",
                if names.len() == 1 { "" } else { "s" },
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        changes
    }
}
