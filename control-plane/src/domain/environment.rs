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
    /// Creation time.
    pub created_at_ms: i64,
}
