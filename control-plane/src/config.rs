//! Server configuration: a serde struct with units in field names, read from TOML
//! (`stella server --config FILE`) and overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything `stella server` needs to run. Defaults suit a single host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the CA, the signing key, `admin.token` and (by default) the SQLite file live.
    pub data_dir: PathBuf,
    /// REST API and UI listener.
    pub api_listen: SocketAddr,
    /// Agent gateway (mTLS gRPC) listener.
    pub grpc_listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data_dir>/stella.db`.
    pub database_url: Option<String>,
    /// SPIFFE trust domain of agent identities.
    pub trust_domain: String,
    /// Interval agents are told to heartbeat at; 3 missed make an agent `unreachable`.
    pub heartbeat_interval_seconds: u32,
    /// How often buffered heartbeats are written to the store.
    pub heartbeat_flush_interval_ms: u64,
    /// Lifetime of agent certificates (agents renew at half-life); at most 24.
    pub agent_cert_validity_hours: u32,
    /// Default lifetime of join tokens.
    pub join_token_ttl_seconds: u64,
    /// How often every replica re-reads revocations from the store and cuts revoked
    /// agents off. A revocation made on this replica acts at once.
    pub revocation_poll_seconds: u64,
    /// URL agents use to reach the gateway; default `https://<host the agent asked>:<grpc port>`.
    pub grpc_advertise_url: Option<String>,
    /// Extra DNS names or IP addresses for the gateway's TLS certificate.
    pub tls_sans: Vec<String>,
    /// Agent TLS handshakes the gateway runs at once. Further connections wait in the
    /// listen backlog (4,096) until one finishes, so a reconnect storm is served at the
    /// rate the CPU allows instead of every handshake starting at once and many timing
    /// out. Raise it when agents are far away (a handshake holds its slot for about two
    /// round trips).
    pub gateway_max_handshakes: usize,
    /// DNS names and IP addresses of the API's own certificate, issued by the server's
    /// CA at every start (and on SIGHUP); empty: this host's name, `localhost`,
    /// `127.0.0.1` and `::1`. Ignored when `api_cert` is set.
    pub api_names: Vec<String>,
    /// A certificate chain (PEM, leaf first) to serve the API with instead of one issued
    /// by the server's CA; read again on SIGHUP, without closing open connections.
    pub api_cert: Option<PathBuf>,
    /// The private key (PEM) of `api_cert`.
    pub api_key: Option<PathBuf>,
    /// Serves the API over plain HTTP instead of TLS: only behind a proxy that
    /// terminates TLS, or on loopback. `--dev` on loopback sets it.
    pub api_plain_http: bool,
    /// Lifetime of an API token created without an expiry.
    pub api_token_default_ttl_seconds: u64,
    /// Longest lifetime an API token may be given.
    pub api_token_max_ttl_seconds: u64,
    /// `iss` of OAuth2 access tokens and `issuer` of the authorization server metadata;
    /// default `<scheme>://<first API name>:<API port>`. Replicas behind one address
    /// must all be given that address.
    pub oauth_issuer: Option<String>,
    /// `aud` of OAuth2 access tokens, which the API requires.
    pub oauth_audience: String,
    /// Lifetime of OAuth2 access tokens.
    pub oauth_access_token_ttl_seconds: u64,
    /// Requests to `/oauth/token` and API token creation allowed per minute, per
    /// client IP address and per OAuth2 client id (token buckets in each replica).
    pub auth_rate_limit_per_minute: u32,
    /// How many of those requests may come at once before the rate applies.
    pub auth_rate_limit_burst: u32,
    /// A deployment task not finished by then fails (its agent may be offline).
    pub task_deadline_seconds: u64,
    /// How long a REST client may take to send a request's headers, counted from when
    /// its connection opens or its previous response is sent. Idle, half-open and
    /// slowly dripping connections are closed after it.
    pub api_header_read_timeout_ms: u64,
    /// How long a REST client may take to send a request body once its headers are in;
    /// after it the request gets 408 and the connection is closed.
    pub api_body_read_timeout_ms: u64,
    /// REST connections open at once; one more is answered 503 and closed at once.
    /// Keep it well under the process's open-file limit, which the database and the
    /// agent gateway share.
    pub api_max_connections: usize,
    /// Largest REST request body; a larger one gets 413.
    pub api_max_body_bytes: usize,
    /// Largest scan report or VEX document `POST /api/v1/scans` takes (scanner reports
    /// of large images run to megabytes); a larger one gets 413.
    pub api_max_scan_bytes: usize,
    /// How long a webhook receiver may take to answer a delivery; no answer by then is
    /// a failed attempt.
    pub webhook_timeout_seconds: u64,
    /// The shortest wait before a failed webhook delivery is tried again; the waits
    /// double (with full jitter) up to `webhook_retry_max_ms`.
    pub webhook_retry_initial_ms: u64,
    /// The longest wait between two attempts at a webhook delivery.
    pub webhook_retry_max_ms: u64,
    /// How long after an event its webhook deliveries are still tried; then they fail
    /// for good.
    pub webhook_give_up_after_seconds: u64,
    /// Pins the evaluation time (UTC milliseconds) of every promotion decision, so two
    /// servers given the same inputs produce the same decision ids. For reproducibility
    /// checks only: freeze windows and approval expiry are then read at this time.
    /// Deployments, their deadlines and stored records keep the wall clock.
    pub decision_clock_ms: Option<i64>,
    /// How often the audit entries this replica appended since its last checkpoint are
    /// covered by a new signed checkpoint. Entries after the newest checkpoint are
    /// protected by the hash chain alone: deleting them from the end leaves no trace.
    pub audit_checkpoint_interval_ms: u64,
    /// A checkpoint is also signed as soon as this replica appended this many audit
    /// entries since its last one, however soon that is.
    pub audit_checkpoint_every_entries: u64,
    /// How long a replica's claim on a task-pack run lasts without renewal; after a
    /// crash, another replica (or this one restarted) takes the run over this long
    /// after the last renewal.
    pub run_lease_ms: u64,
    /// How often each replica looks for runs to take over, approvals and cancellations
    /// decided on other replicas, and retries that came due.
    pub run_poll_interval_ms: u64,
    /// Largest file a run's `file` output may capture (bytes).
    pub run_max_artifact_bytes: usize,
    /// What `/downloads/` serves: agent binaries `stella-agent-linux-<arch>` (a plain
    /// `stella-agent` as this machine's arch) and `*.deb` files. Default:
    /// `/usr/lib/stella/downloads` if it exists, else the directory of the running
    /// executable (where `cargo build` puts `stella-agent` beside `stella`).
    pub downloads_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("/var/lib/stella"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            database_url: None,
            trust_domain: "stella.local".to_owned(),
            heartbeat_interval_seconds: 5,
            heartbeat_flush_interval_ms: 1000,
            agent_cert_validity_hours: 24,
            join_token_ttl_seconds: 30 * 60,
            revocation_poll_seconds: 5,
            grpc_advertise_url: None,
            tls_sans: Vec::new(),
            gateway_max_handshakes: 128,
            api_names: Vec::new(),
            api_cert: None,
            api_key: None,
            api_plain_http: false,
            api_token_default_ttl_seconds: 90 * 86_400,
            api_token_max_ttl_seconds: 365 * 86_400,
            oauth_issuer: None,
            oauth_audience: "stella".to_owned(),
            oauth_access_token_ttl_seconds: 900,
            auth_rate_limit_per_minute: 60,
            auth_rate_limit_burst: 20,
            task_deadline_seconds: 30 * 60,
            api_header_read_timeout_ms: 10_000,
            api_body_read_timeout_ms: 30_000,
            api_max_connections: 1024,
            api_max_body_bytes: 1024 * 1024,
            api_max_scan_bytes: 8 * 1024 * 1024,
            webhook_timeout_seconds: 10,
            webhook_retry_initial_ms: 1000,
            webhook_retry_max_ms: 5 * 60 * 1000,
            webhook_give_up_after_seconds: 24 * 3600,
            decision_clock_ms: None,
            audit_checkpoint_interval_ms: 5000,
            audit_checkpoint_every_entries: 256,
            run_lease_ms: 15_000,
            run_poll_interval_ms: 500,
            run_max_artifact_bytes: 8 * 1024 * 1024,
            downloads_dir: None,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`ServerConfig`].
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ServerConfig {
    /// Reads a TOML file; keys not given keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The database URL, defaulting to SQLite in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("stella.db").display()
            ),
        }
    }

    /// Checks ranges that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_seconds == 0 || self.heartbeat_interval_seconds > 300 {
            return Err(ConfigError::Invalid {
                key: "heartbeat_interval_seconds",
                reason: "must be between 1 and 300".into(),
            });
        }
        if self.agent_cert_validity_hours == 0 || self.agent_cert_validity_hours > 24 {
            return Err(ConfigError::Invalid {
                key: "agent_cert_validity_hours",
                reason: "must be between 1 and 24".into(),
            });
        }
        if self.join_token_ttl_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "join_token_ttl_seconds",
                reason: "must be positive".into(),
            });
        }
        if self.revocation_poll_seconds == 0 || self.revocation_poll_seconds > 10 {
            // Revoked agents must be cut off within 15 s on every replica.
            return Err(ConfigError::Invalid {
                key: "revocation_poll_seconds",
                reason: "must be between 1 and 10".into(),
            });
        }
        if self.heartbeat_flush_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "heartbeat_flush_interval_ms",
                reason: "must be positive".into(),
            });
        }
        for (key, value) in [
            (
                "api_header_read_timeout_ms",
                self.api_header_read_timeout_ms,
            ),
            ("api_body_read_timeout_ms", self.api_body_read_timeout_ms),
        ] {
            // Zero would mean "no time at all", not "no timeout": no request could pass.
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be positive".into(),
                });
            }
        }
        for (key, value) in [
            ("api_max_connections", self.api_max_connections),
            ("gateway_max_handshakes", self.gateway_max_handshakes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be positive".into(),
                });
            }
        }
        for (key, value) in [
            ("api_max_body_bytes", self.api_max_body_bytes),
            ("api_max_scan_bytes", self.api_max_scan_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be positive".into(),
                });
            }
        }
        self.validate_webhooks()?;
        self.validate_runs()?;
        self.validate_audit()?;
        self.validate_identity()
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        if self.api_cert.is_some() != self.api_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "api_cert",
                reason: "api_cert and api_key go together".into(),
            });
        }
        for (key, value, max) in [
            (
                "api_token_default_ttl_seconds",
                self.api_token_default_ttl_seconds,
                10 * 365 * 86_400,
            ),
            (
                "api_token_max_ttl_seconds",
                self.api_token_max_ttl_seconds,
                10 * 365 * 86_400,
            ),
            (
                "oauth_access_token_ttl_seconds",
                self.oauth_access_token_ttl_seconds,
                86_400,
            ),
            (
                "auth_rate_limit_per_minute",
                u64::from(self.auth_rate_limit_per_minute),
                1_000_000,
            ),
            (
                "auth_rate_limit_burst",
                u64::from(self.auth_rate_limit_burst),
                1_000_000,
            ),
        ] {
            if value == 0 || value > max {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be between 1 and {max}"),
                });
            }
        }
        if self.api_token_default_ttl_seconds > self.api_token_max_ttl_seconds {
            return Err(ConfigError::Invalid {
                key: "api_token_default_ttl_seconds",
                reason: "must not exceed api_token_max_ttl_seconds".into(),
            });
        }
        if self.oauth_audience.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "oauth_audience",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }

    fn validate_runs(&self) -> Result<(), ConfigError> {
        if self.run_poll_interval_ms == 0 || self.run_poll_interval_ms > 60_000 {
            return Err(ConfigError::Invalid {
                key: "run_poll_interval_ms",
                reason: "must be between 1 and 60000".into(),
            });
        }
        if self.run_lease_ms < 2 * self.run_poll_interval_ms.max(500) {
            return Err(ConfigError::Invalid {
                key: "run_lease_ms",
                reason: "must be at least twice run_poll_interval_ms (and at least 1000)".into(),
            });
        }
        if self.run_max_artifact_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "run_max_artifact_bytes",
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }

    fn validate_audit(&self) -> Result<(), ConfigError> {
        for (key, value, max) in [
            (
                "audit_checkpoint_interval_ms",
                self.audit_checkpoint_interval_ms,
                3_600_000,
            ),
            (
                "audit_checkpoint_every_entries",
                self.audit_checkpoint_every_entries,
                1_000_000,
            ),
        ] {
            if value == 0 || value > max {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be between 1 and {max}"),
                });
            }
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        // Upper bounds keep every product of these in i64 milliseconds.
        for (key, value, max) in [
            (
                "webhook_timeout_seconds",
                self.webhook_timeout_seconds,
                3600,
            ),
            (
                "webhook_retry_initial_ms",
                self.webhook_retry_initial_ms,
                86_400_000,
            ),
            (
                "webhook_retry_max_ms",
                self.webhook_retry_max_ms,
                86_400_000,
            ),
            (
                "webhook_give_up_after_seconds",
                self.webhook_give_up_after_seconds,
                365 * 86_400,
            ),
        ] {
            if value == 0 || value > max {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be between 1 and {max}"),
                });
            }
        }
        if self.webhook_retry_max_ms < self.webhook_retry_initial_ms {
            return Err(ConfigError::Invalid {
                key: "webhook_retry_max_ms",
                reason: "must not be less than webhook_retry_initial_ms".into(),
            });
        }
        Ok(())
    }

    /// Heartbeat interval in milliseconds.
    pub fn heartbeat_interval_ms(&self) -> i64 {
        i64::from(self.heartbeat_interval_seconds) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_only_what_it_names() {
        let config: ServerConfig =
            toml::from_str("heartbeat_interval_seconds = 2\ntrust_domain = \"example.org\"")
                .expect("valid toml");
        assert_eq!(config.heartbeat_interval_seconds, 2);
        assert_eq!(config.trust_domain, "example.org");
        assert_eq!(config.join_token_ttl_seconds, 1800);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let result: Result<ServerConfig, _> = toml::from_str("heartbeat_interval = 2");
        assert!(result.is_err());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let config = ServerConfig {
            agent_cert_validity_hours: 48,
            ..ServerConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                key: "agent_cert_validity_hours",
                ..
            })
        ));
    }
}
