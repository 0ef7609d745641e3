//! Promotions: a request to run a release in an environment, its approvals, and the
//! signed decisions that settle it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Invalid;

string_enum!(
    /// Where a promotion is. A script tells them apart by `-o json` and by the exit
    /// status of `stella promote --wait`.
    PromotionState {
        /// Every other gate passed; approvals are missing.
        AwaitingApproval = "awaiting_approval",
        /// A gate failed (the decision says which and why).
        Blocked = "blocked",
        /// An approver rejected it.
        Rejected = "rejected",
        /// Allowed; its deployment runs.
        Deploying = "deploying",
        /// Its deployment succeeded.
        Deployed = "deployed",
        /// Its deployment failed or was cancelled.
        Failed = "failed",
    }
);

impl PromotionState {
    /// Whether nothing will change it any more.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            PromotionState::AwaitingApproval | PromotionState::Deploying
        )
    }
}

/// A promotion as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// Id (UUID v7).
    pub id: String,
    /// Environment.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Where it is.
    pub state: PromotionState,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at_ms: i64,
    /// The plan approvals are bound to (canonical JSON of `stella_decision::gates::Plan`).
    pub plan_json: String,
    /// Its hash.
    pub plan_hash: String,
    /// An admin's break-glass: who and why.
    pub break_glass: Option<(String, String)>,
    /// The last evaluation's gate results (JSON array).
    pub gates_json: String,
    /// Why it is where it is, in one line.
    pub message: Option<String>,
    /// The decision that settled it.
    pub decision_id: Option<String>,
    /// The deployment carrying it out.
    pub deployment_id: Option<String>,
    /// The run of the environment's promotion workflow carrying it out (tenant
    /// `default`), when the environment names one; its `builtin:promotion` step makes
    /// the deployment and its end settles the promotion.
    pub run_id: Option<String>,
    /// Last change.
    pub updated_at_ms: i64,
}

string_enum!(
    /// An approver's answer.
    Verdict {
        /// Go.
        Approved = "approved",
        /// Stop: ends the promotion.
        Rejected = "rejected",
    }
);

/// An approval or rejection, bound to the plan hash it was given for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The promotion.
    pub promotion_id: String,
    /// Who.
    pub user: String,
    /// The plan hash at the time.
    pub plan_hash: String,
    /// Approved or rejected.
    pub verdict: Verdict,
    /// Their roles at the time.
    pub roles: Vec<String>,
    /// Their comment.
    pub comment: Option<String>,
    /// When.
    pub at_ms: i64,
}

/// A decision record another Stella server made, imported from an offline kit as its
/// evidence packet. Immutable; verified against the bundling server's key on import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedEvidence {
    /// The decision id (`sha256:` of its canonical record).
    pub decision_id: String,
    /// The key that signed it.
    pub key_id: String,
    /// `allowed`, `blocked` or `rejected`.
    pub outcome: String,
    /// The release it decided on: name.
    pub release: String,
    /// Version.
    pub version: String,
    /// The environment it was for (on the bundling server).
    pub environment: String,
    /// The evidence packet exactly as bundled.
    pub packet: Vec<u8>,
    /// `sha256:` of the manifest of the kit it came in.
    pub kit_manifest: String,
    /// Who imported it.
    pub imported_by: String,
    /// When.
    pub imported_at_ms: i64,
}

/// A signed decision record as stored. Immutable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `sha256:` of `decision_json`.
    pub id: String,
    /// The promotion it settles.
    pub promotion_id: String,
    /// `allowed`, `blocked` or `rejected`.
    pub outcome: String,
    /// The canonical decision.
    pub decision_json: String,
    /// The canonical inputs it follows from.
    pub inputs_json: String,
    /// The DSSE envelope (in-toto statement) signed by the server.
    pub envelope_json: String,
    /// The signing key's id.
    pub key_id: String,
    /// When it was made.
    pub created_at_ms: i64,
}

/// A stored input document: a scan report, a VEX document or a policy source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// `sha256:` of the content.
    pub id: String,
    /// `trivy`, `grype`, `openvex` or `rego`.
    pub kind: String,
    /// The bytes as given (UTF-8).
    pub content: String,
    /// Who stored it.
    pub created_by: String,
    /// When.
    pub created_at_ms: i64,
}
