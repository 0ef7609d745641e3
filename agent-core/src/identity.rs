//! The agent's identity on disk: who it is, its key and certificate, and the CA it trusts.
//!
//! Data dir layout:
//! ```text
//! agent.json     {"agent_id", "name", "trust_domain", "grpc_url", "not_after_unix_seconds"}
//! agent.key      PKCS#8 PEM private key, mode 0600, written before its CSR is sent
//! agent.pem      the agent certificate, PEM
//! ca.pem         the control plane CA, PEM
//! journal/       one JSON file per task id
//! desired.json   the desired state of the targets this agent drives (the deploy payload
//!                of each one's last successful deployment, without registry credentials)
//! ```
//! `agent.json` is written last at enrolment: it marks the data dir as enrolled.
//!
//! A renewal replaces key and certificate together through a commit record,
//! `renewal.json`: the new key goes to `agent.key.next` before its CSR is sent; the
//! answer is written to `renewal.json` (the commit point); then `agent.key.next` is
//! renamed over `agent.key`, `agent.pem`, `ca.pem` and `agent.json` are rewritten and
//! `renewal.json` is removed. [`Identity::recover`], run by the agent at startup, finishes
//! a renewal a crash interrupted after its commit point and discards one interrupted
//! before it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::AgentError;
use crate::fsutil;

/// File names in the data dir.
pub mod files {
    /// Who the agent is: id, name, trust domain, gateway URL, certificate expiry.
    pub const AGENT_JSON: &str = "agent.json";
    /// The private key, PKCS#8 PEM, mode 0600.
    pub const AGENT_KEY: &str = "agent.key";
    /// The agent certificate, PEM.
    pub const AGENT_PEM: &str = "agent.pem";
    /// The CA certificate, PEM.
    pub const CA_PEM: &str = "ca.pem";
    /// The task journal directory.
    pub const JOURNAL_DIR: &str = "journal";
    /// The desired state the drift loop compares the targets with.
    pub const DESIRED_JSON: &str = "desired.json";
    /// The key of a renewal in progress.
    pub const NEXT_KEY: &str = "agent.key.next";
    /// The commit record of a renewal in progress.
    pub const RENEWAL_JSON: &str = "renewal.json";
}

/// An enrolled agent's identity and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The id the control plane gave this agent (UUID v7).
    pub agent_id: String,
    /// The agent's name.
    pub name: String,
    /// The SPIFFE trust domain of the control plane.
    pub trust_domain: String,
    /// The gateway URL, `https://host:port`.
    pub grpc_url: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The agent certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Never logged.
    pub key_pem: String,
    /// When the certificate expires.
    pub not_after: OffsetDateTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct AgentJson {
    agent_id: String,
    name: String,
    trust_domain: String,
    grpc_url: String,
    not_after_unix_seconds: i64,
}

/// The commit record of a renewal: the new certificate, written once it is received.
#[derive(Debug, Serialize, Deserialize)]
struct RenewalRecord {
    cert_pem: String,
    ca_pem: String,
    not_after_unix_seconds: i64,
}

impl Identity {
    /// Loads the identity from `data_dir`; `Ok(None)` when the agent is not enrolled
    /// (no `agent.json`). Read-only, so safe next to a running agent (e.g. for a status
    /// command); it does not finish an interrupted renewal (see [`Identity::recover`]).
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, AgentError> {
        let json_path = data_dir.join(files::AGENT_JSON);
        let Some(json) = fsutil::read_optional(&json_path)? else {
            return Ok(None);
        };
        let agent: AgentJson = serde_json::from_str(&json).map_err(|e| AgentError::Corrupt {
            path: json_path.clone(),
            source: Box::new(e),
        })?;
        let not_after =
            unix_seconds(agent.not_after_unix_seconds).ok_or_else(|| AgentError::Corrupt {
                path: json_path.clone(),
                source: "not_after_unix_seconds is out of range".into(),
            })?;
        Ok(Some(Identity {
            agent_id: agent.agent_id,
            name: agent.name,
            trust_domain: agent.trust_domain,
            grpc_url: agent.grpc_url,
            ca_pem: fsutil::read_required(&data_dir.join(files::CA_PEM))?,
            cert_pem: fsutil::read_required(&data_dir.join(files::AGENT_PEM))?,
            key_pem: fsutil::read_required(&data_dir.join(files::AGENT_KEY))?,
            not_after,
        }))
    }

    /// Finishes a renewal a crash interrupted after its commit point, or discards one
    /// interrupted before it. Only the agent process owning the data dir may call this
    /// ([`crate::run`] does, at startup): it moves files a running renewal is using.
    pub fn recover(data_dir: &Path) -> Result<(), AgentError> {
        recover_renewal(data_dir)
    }

    /// Writes the identity to `data_dir`, each file atomically, `agent.json` last.
    pub fn save(&self, data_dir: &Path) -> Result<(), AgentError> {
        fsutil::create_private_dir(data_dir)?;
        fsutil::write_atomic(&data_dir.join(files::AGENT_KEY), self.key_pem.as_bytes())?;
        self.save_certificates(data_dir)
    }

    /// Writes everything but the key (which enrolment and renewal write themselves,
    /// before the CSR leaves the host).
    pub(crate) fn save_certificates(&self, data_dir: &Path) -> Result<(), AgentError> {
        fsutil::write_atomic(&data_dir.join(files::AGENT_PEM), self.cert_pem.as_bytes())?;
        fsutil::write_atomic(&data_dir.join(files::CA_PEM), self.ca_pem.as_bytes())?;
        self.save_agent_json(data_dir)
    }

    pub(crate) fn save_agent_json(&self, data_dir: &Path) -> Result<(), AgentError> {
        let agent = AgentJson {
            agent_id: self.agent_id.clone(),
            name: self.name.clone(),
            trust_domain: self.trust_domain.clone(),
            grpc_url: self.grpc_url.clone(),
            not_after_unix_seconds: self.not_after.unix_timestamp(),
        };
        let mut json = serde_json::to_vec_pretty(&agent).map_err(|e| AgentError::Corrupt {
            path: data_dir.join(files::AGENT_JSON),
            source: Box::new(e),
        })?;
        json.push(b'\n');
        fsutil::write_atomic(&data_dir.join(files::AGENT_JSON), &json)
    }

    /// When to renew: half of the remaining lifetime from `now`.
    pub fn renew_at(&self, now: OffsetDateTime) -> OffsetDateTime {
        let remaining = self.not_after - now;
        if remaining.is_negative() {
            return now;
        }
        now + remaining / 2
    }
}

// By hand so the private key never reaches a log line.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .field("trust_domain", &self.trust_domain)
            .field("grpc_url", &self.grpc_url)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Step 1 of a renewal: the new key is on disk before its CSR leaves the host.
pub(crate) fn stage_renewal_key(data_dir: &Path, key_pem: &str) -> Result<(), AgentError> {
    fsutil::write_atomic(&data_dir.join(files::NEXT_KEY), key_pem.as_bytes())
}

/// Step 2: the new certificate is on disk (commit point), then it is installed.
pub(crate) fn commit_renewal(
    data_dir: &Path,
    cert_pem: &str,
    ca_pem: &str,
    not_after: OffsetDateTime,
) -> Result<(), AgentError> {
    let record = RenewalRecord {
        cert_pem: cert_pem.to_owned(),
        ca_pem: ca_pem.to_owned(),
        not_after_unix_seconds: not_after.unix_timestamp(),
    };
    let path = data_dir.join(files::RENEWAL_JSON);
    let json = serde_json::to_vec(&record).map_err(|e| AgentError::Corrupt {
        path: path.clone(),
        source: Box::new(e),
    })?;
    fsutil::write_atomic(&path, &json)?;
    recover_renewal(data_dir)
}

/// Finishes a committed renewal, or drops the staged key of an uncommitted one.
fn recover_renewal(data_dir: &Path) -> Result<(), AgentError> {
    let record_path = data_dir.join(files::RENEWAL_JSON);
    let next_key = data_dir.join(files::NEXT_KEY);
    let Some(json) = fsutil::read_optional(&record_path)? else {
        // Interrupted before the commit point: the old key and certificate still hold.
        return fsutil::remove_if_exists(&next_key);
    };
    let record: RenewalRecord = serde_json::from_str(&json).map_err(|e| AgentError::Corrupt {
        path: record_path.clone(),
        source: Box::new(e),
    })?;
    // Without `agent.key.next` the key was already moved into place.
    if next_key.exists() {
        fsutil::rename_durable(&next_key, &data_dir.join(files::AGENT_KEY))?;
    }
    fsutil::write_atomic(&data_dir.join(files::AGENT_PEM), record.cert_pem.as_bytes())?;
    fsutil::write_atomic(&data_dir.join(files::CA_PEM), record.ca_pem.as_bytes())?;
    update_not_after(data_dir, record.not_after_unix_seconds)?;
    fsutil::remove_if_exists(&record_path)
}

fn update_not_after(data_dir: &Path, not_after_unix_seconds: i64) -> Result<(), AgentError> {
    let path = data_dir.join(files::AGENT_JSON);
    let Some(json) = fsutil::read_optional(&path)? else {
        return Ok(());
    };
    let mut agent: AgentJson = serde_json::from_str(&json).map_err(|e| AgentError::Corrupt {
        path: path.clone(),
        source: Box::new(e),
    })?;
    agent.not_after_unix_seconds = not_after_unix_seconds;
    let mut json = serde_json::to_vec_pretty(&agent).map_err(|e| AgentError::Corrupt {
        path: path.clone(),
        source: Box::new(e),
    })?;
    json.push(b'\n');
    fsutil::write_atomic(&path, &json)
}

pub(crate) fn unix_seconds(seconds: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(seconds).ok()
}

/// The journal directory of a data dir.
pub(crate) fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(files::JOURNAL_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            agent_id: "0190-agent".into(),
            name: "web-1".into(),
            trust_domain: "stella.local".into(),
            grpc_url: "https://127.0.0.1:7443".into(),
            ca_pem: "CA".into(),
            cert_pem: "CERT-1".into(),
            key_pem: "KEY-1".into(),
            not_after: unix_seconds(1_900_000_000).expect("time"),
        }
    }

    #[test]
    fn save_and_load_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        assert!(Identity::load(&data_dir).expect("load").is_none());
        identity().save(&data_dir).expect("save");
        assert_eq!(Identity::load(&data_dir).expect("load"), Some(identity()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode(&data_dir), 0o700);
            assert_eq!(mode(&data_dir.join(files::AGENT_KEY)), 0o600);
        }
        assert!(!format!("{:?}", identity()).contains("KEY-1"));
    }

    #[test]
    fn a_renewal_interrupted_after_its_commit_point_is_finished_by_recover() {
        let dir = tempfile::tempdir().expect("tempdir");
        identity().save(dir.path()).expect("save");
        stage_renewal_key(dir.path(), "KEY-2").expect("stage");
        // Crash between the commit record and the installation.
        let record = RenewalRecord {
            cert_pem: "CERT-2".into(),
            ca_pem: "CA".into(),
            not_after_unix_seconds: 1_900_000_100,
        };
        fsutil::write_atomic(
            &dir.path().join(files::RENEWAL_JSON),
            &serde_json::to_vec(&record).expect("json"),
        )
        .expect("write");
        let loaded = Identity::load(dir.path()).expect("load").expect("identity");
        assert_eq!(loaded, identity(), "load alone changes nothing");
        Identity::recover(dir.path()).expect("recover");
        let loaded = Identity::load(dir.path()).expect("load").expect("identity");
        assert_eq!(loaded.key_pem, "KEY-2");
        assert_eq!(loaded.cert_pem, "CERT-2");
        assert_eq!(loaded.not_after.unix_timestamp(), 1_900_000_100);
        assert!(!dir.path().join(files::RENEWAL_JSON).exists());
        assert!(!dir.path().join(files::NEXT_KEY).exists());
    }

    #[test]
    fn a_renewal_interrupted_before_its_commit_point_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        identity().save(dir.path()).expect("save");
        stage_renewal_key(dir.path(), "KEY-2").expect("stage");
        Identity::recover(dir.path()).expect("recover");
        let loaded = Identity::load(dir.path()).expect("load").expect("identity");
        assert_eq!(loaded, identity());
        assert!(!dir.path().join(files::NEXT_KEY).exists());
    }

    #[test]
    fn renews_at_half_the_remaining_lifetime() {
        let now = unix_seconds(1_000).expect("time");
        let mut id = identity();
        id.not_after = unix_seconds(1_000 + 86_400).expect("time");
        assert_eq!(id.renew_at(now).unix_timestamp(), 1_000 + 43_200);
        id.not_after = unix_seconds(10).expect("time");
        assert_eq!(id.renew_at(now), now);
    }
}
