//! Events: what operators are told about, in the console, in `env show` / `release
//! show`, and through webhooks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Invalid;

string_enum!(
    /// What happened. The names are what webhooks subscribe to.
    EventKind {
        /// A promotion waits for approvals.
        PromotionAwaitingApproval = "promotion.awaiting_approval",
        /// A promotion got its last approval and was allowed.
        PromotionApproved = "promotion.approved",
        /// An approver rejected a promotion.
        PromotionRejected = "promotion.rejected",
        /// A gate blocked a promotion.
        PromotionBlocked = "promotion.blocked",
        /// A promotion's deployment succeeded.
        PromotionDeployed = "promotion.deployed",
        /// A promotion's deployment failed or was cancelled.
        PromotionFailed = "promotion.failed",
        /// An agent reported drift on a target.
        DriftDetected = "drift.detected",
        /// Drift on a target was resolved.
        DriftResolved = "drift.resolved",
        /// The security verdict of what runs in an environment turned to blocking.
        VerdictChanged = "verdict.changed",
        /// An agent stopped heartbeating.
        AgentUnreachable = "agent.unreachable",
    }
);

impl EventKind {
    /// Every kind, in the order documented.
    pub const ALL: [EventKind; 10] = [
        EventKind::PromotionAwaitingApproval,
        EventKind::PromotionApproved,
        EventKind::PromotionRejected,
        EventKind::PromotionBlocked,
        EventKind::PromotionDeployed,
        EventKind::PromotionFailed,
        EventKind::DriftDetected,
        EventKind::DriftResolved,
        EventKind::VerdictChanged,
        EventKind::AgentUnreachable,
    ];
}

/// Something that happened, as stored and sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Id (UUID v7).
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The environment concerned.
    pub environment: Option<String>,
    /// The release concerned: name and version.
    pub release: Option<(String, String)>,
    /// The object concerned: a promotion id, a target, an agent, a digest.
    pub subject: Option<String>,
    /// One line for a person.
    pub message: String,
    /// When.
    pub at_ms: i64,
}
