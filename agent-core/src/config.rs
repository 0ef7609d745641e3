//! The agent's configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the agent finds and joins its control plane, and how it behaves while connected.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the identity (`agent.json`, `agent.key`, `agent.pem`, `ca.pem`), the task
    /// journal (`journal/`) and the desired state of the targets (`desired.json`) live.
    pub data_dir: PathBuf,
    /// REST URL of the control plane, used to discover the gateway: `GET
    /// {server_url}/api/v1/gateway` answers `{"grpc_url": "https://host:port",
    /// "ca_fingerprint": "<hex>"}` (unauthenticated JSON).
    #[serde(default)]
    pub server_url: Option<String>,
    /// The gateway URL (`https://host:port`); overrides discovery and the URL stored at
    /// enrolment.
    #[serde(default)]
    pub grpc_url: Option<String>,
    /// The one-time join token (`stj1.…`), needed only while the data dir holds no identity.
    /// Never logged.
    #[serde(default)]
    pub join_token: Option<String>,
    /// The agent's name; defaults to the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels sent at enrolment and in every `Hello`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Reconnect and retry delays.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// How often the drift loop compares what runs with the desired state and the
    /// stickers (at least every second); target kinds that watch their engine trigger
    /// rounds in between.
    #[serde(default = "default_drift_interval_seconds")]
    pub drift_interval_seconds: u64,
}

impl AgentConfig {
    /// A configuration with defaults for everything but the data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            data_dir: data_dir.into(),
            server_url: None,
            grpc_url: None,
            join_token: None,
            name: None,
            labels: BTreeMap::new(),
            backoff: BackoffConfig::default(),
            drift_interval_seconds: default_drift_interval_seconds(),
        }
    }
}

// By hand so the join token never reaches a log line.
impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("data_dir", &self.data_dir)
            .field("server_url", &self.server_url)
            .field("grpc_url", &self.grpc_url)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("backoff", &self.backoff)
            .field("drift_interval_seconds", &self.drift_interval_seconds)
            .finish()
    }
}

fn default_drift_interval_seconds() -> u64 {
    30
}

/// Exponential backoff with full jitter: before retry `n` the agent sleeps a uniformly
/// random time in `[0, min(max_delay_ms, initial_delay_ms * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    pub initial_delay_ms: u64,
    /// The largest ceiling.
    pub max_delay_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_delay_ms: 500,
            max_delay_ms: 30_000,
        }
    }
}
