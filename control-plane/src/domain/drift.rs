//! Drift: what agents find different from the desired state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Invalid;

string_enum!(
    /// What an agent found different from the desired state.
    DriftKind {
        /// The container runs another image than the promoted digest.
        ImageChanged = "image_changed",
        /// The component is not running.
        Missing = "missing",
        /// Something runs under the target's labels that was not deployed.
        Unexpected = "unexpected",
        /// The configuration differs from the target's settings.
        ConfigChanged = "config_changed",
        /// The sticker does not match its digest or the container.
        StickerTampered = "sticker_tampered",
    }
);

/// A drift finding, open until the agent reports the target clean again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRecord {
    /// Target name.
    pub target: String,
    /// Component name (may be empty for target-wide findings).
    pub component: String,
    /// What differs.
    pub kind: DriftKind,
    /// Details from the agent.
    pub detail: String,
    /// The target's environment.
    pub environment: String,
    /// The reporting agent.
    pub agent_id: String,
    /// First report.
    pub first_seen_at_ms: i64,
    /// Latest report.
    pub last_seen_at_ms: i64,
    /// When the agent reported the target clean again.
    pub resolved_at_ms: Option<i64>,
}
