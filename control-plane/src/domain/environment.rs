//! Environments: the stages releases are promoted through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Invalid;

/// What an environment does when an agent reports drift.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftMode {
    /// Record and show it.
    #[default]
    Report,
    /// Also redeploy the promoted digests.
    Remediate,
}

impl FromStr for DriftMode {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "report" => Ok(DriftMode::Report),
            "remediate" => Ok(DriftMode::Remediate),
            other => Err(Invalid(format!(
                "unknown drift mode `{other}`: use report or remediate"
            ))),
        }
    }
}

impl fmt::Display for DriftMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriftMode::Report => "report",
            DriftMode::Remediate => "remediate",
        })
    }
}

/// An environment: a stage releases are promoted through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Unique name.
    pub name: String,
    /// The environment a release must reach before this one.
    pub after: Option<String>,
    /// What drift does here.
    pub drift_mode: DriftMode,
    /// How long a deployment's tasks may take here; `None`: the server's default
    /// (`task_deadline_seconds`).
    pub deployment_timeout_seconds: Option<u64>,
    /// Approvals, freeze windows, security and policy gates.
    pub gates: Gates,
    /// Creation time.
    pub created_at_ms: i64,
}

/// The gates a promotion into an environment passes (besides `after`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gates {
    /// Distinct approvals needed (0: none).
    pub approvals_required: u32,
    /// How long an approval counts; `None`: until the deployment starts.
    pub approval_ttl_seconds: Option<u64>,
    /// Freeze windows, `CRON/DURATION[@TZ]`.
    pub freeze: Vec<String>,
    /// `none`, `low`, `medium`, `high` or `critical`: unsuppressed findings at or above
    /// it block.
    pub block_severity: String,
    /// Whether an image without a scan report may pass.
    pub allow_unscanned: bool,
    /// The Rego policy's document id (`sha256:` of its source), if any.
    pub policy_id: Option<String>,
    /// The promotion workflow's document id (`sha256:` of the task-pack manifest), if
    /// the environment names one; `None` runs the built-in workflow.
    pub workflow_id: Option<String>,
    /// How a release reaches the targets when not all at once (RFC 0005); `None`:
    /// every target at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<stella_decision::rollout::Strategy>,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            approvals_required: 0,
            approval_ttl_seconds: None,
            freeze: Vec::new(),
            block_severity: "critical".to_owned(),
            allow_unscanned: false,
            policy_id: None,
            workflow_id: None,
            rollout: None,
        }
    }
}
