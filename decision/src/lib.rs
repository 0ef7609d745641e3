//! What decides a promotion, and the evidence format.
//!
//! Pure: no store, no network, no clock (every time is an input, in UTC milliseconds).
//! The control plane calls it to decide; the CLI links the same code, so `decision
//! replay`, `evidence verify` and `audit verify` need no server and can never disagree
//! with it.
//!
//! - [`canonical`]: RFC 8785 canonical JSON and `sha256:` content ids.
//! - [`dsse`]: DSSE envelopes signed with Ed25519, and the public keys that verify them.
//! - [`intoto`]: in-toto Statement v1 around a decision.
//! - [`scan`]: Trivy and Grype reports, OpenVEX documents, the security verdict.
//! - [`freeze`]: freeze windows (`CRON/DURATION[@TZ]`).
//! - [`policy`]: the Rego policy gate (regorus).
//! - [`gates`]: the decision: every gate over one set of inputs.
//! - [`evidence`]: evidence packets (write, read, verify).
//! - [`audit`]: the tamper-evident audit chain and its signed checkpoints.
//! - [`offline`]: offline kits (OCI layout, releases, evidence; signed manifest; verify).
//! - [`rollout`]: progressive delivery strategies compiled to rollout steps, and their rollback.
//! - [`analysis`]: the canary judge (Mann–Whitney U test and absolute thresholds).

pub mod analysis;
pub mod audit;
pub mod canonical;
pub mod dsse;
pub mod evidence;
pub mod freeze;
pub mod gates;
pub mod intoto;
mod memo;
pub mod offline;
pub mod plan;
pub mod policy;
pub mod rollout;
pub mod scan;

/// Why an input was refused or a check failed; the message names what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecisionError(pub String);

impl DecisionError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> DecisionError {
        DecisionError(message.into())
    }
}

/// `sha256:<hex>` of bytes: the form of every content id.
pub fn sha256_id(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A UTC time in milliseconds as RFC 3339 with milliseconds and `Z`
/// (`2026-12-02T12:00:00.000Z`); out-of-range values print as the raw number.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// Why a file set (an evidence packet, an offline kit) was refused: the file at fault,
/// by its path in the set, when the fault is about one, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFault {
    /// The file at fault, by its path in the set.
    pub file: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl FileFault {
    pub(crate) fn at(file: &str, message: impl Into<String>) -> FileFault {
        FileFault {
            file: Some(file.to_owned()),
            message: message.into(),
        }
    }

    pub(crate) fn whole(message: impl Into<String>) -> FileFault {
        FileFault {
            file: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FileFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FileFault {}
