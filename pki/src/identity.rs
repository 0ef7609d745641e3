//! Names: certificate fingerprints and agent SPIFFE identities.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use crate::error::x509_error;
use crate::{PkiError, Result};

/// Lowercase hex SHA-256 of a certificate's DER.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(der)))
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse(hex: &str) -> Result<Self> {
        if hex.len() != 64 {
            return Err(PkiError::InvalidFingerprint {
                reason: "expected 64 hex characters",
            });
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(PkiError::InvalidFingerprint {
                reason: "expected lowercase hex characters only",
            });
        }
        Ok(Self(hex.to_owned()))
    }

    /// The fingerprint as 64 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `der` hashes to this fingerprint.
    pub fn matches(&self, der: &[u8]) -> bool {
        crate::constant_time_eq(&Self::of_der(der).0, &self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Fingerprint {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

const SPIFFE_SCHEME: &str = "spiffe://";
const AGENT_PATH: &str = "agent/";
const MAX_AGENT_ID_LEN: usize = 128;
const MAX_TRUST_DOMAIN_LEN: usize = 253;

/// An agent's identity, `spiffe://<trust-domain>/agent/<agent-id>`.
///
/// The gateway takes it from the verified client certificate only, never from a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentIdentity {
    /// The trust domain, a lowercase DNS-like name such as `stella.local`.
    pub trust_domain: String,
    /// The agent id, `[A-Za-z0-9._-]{1,128}` (a UUID v7 in practice).
    pub agent_id: String,
}

impl AgentIdentity {
    /// Validates both parts and builds the identity.
    pub fn new(trust_domain: &str, agent_id: &str) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        validate_agent_id(agent_id)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            agent_id: agent_id.to_owned(),
        })
    }

    /// `spiffe://<trust-domain>/agent/<agent-id>`.
    pub fn spiffe_uri(&self) -> String {
        format!(
            "{SPIFFE_SCHEME}{}/{AGENT_PATH}{}",
            self.trust_domain, self.agent_id
        )
    }

    /// Parses `spiffe://<trust-domain>/agent/<agent-id>`; nothing may follow the agent id.
    pub fn parse_uri(uri: &str) -> Result<Self> {
        let invalid = |reason| PkiError::InvalidSpiffeUri {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or_else(|| invalid("expected the spiffe:// scheme"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("expected a path after the trust domain"))?;
        let agent_id = path
            .strip_prefix(AGENT_PATH)
            .ok_or_else(|| invalid("expected the path /agent/<agent-id>"))?;
        if validate_trust_domain(trust_domain).is_err() {
            return Err(invalid("invalid trust domain"));
        }
        if validate_agent_id(agent_id).is_err() {
            return Err(invalid("invalid agent id"));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            agent_id: agent_id.to_owned(),
        })
    }

    /// Reads the (single) spiffe URI SAN of a DER certificate.
    ///
    /// Like an X.509-SVID, the certificate must carry exactly one URI SAN; it does not
    /// check the certificate's signature or validity (the TLS verifier does that).
    pub fn from_certificate_der(der: &[u8]) -> Result<Self> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| x509_error("certificate", e))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|source| PkiError::X509 {
                what: "subject alternative name extension",
                source,
            })?
            .ok_or(PkiError::NoAgentIdentity {
                reason: "no subject alternative name extension",
            })?;
        let mut uris = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let uri = uris.next().ok_or(PkiError::NoAgentIdentity {
            reason: "no uri subject alternative name",
        })?;
        if uris.next().is_some() {
            return Err(PkiError::NoAgentIdentity {
                reason: "more than one uri subject alternative name",
            });
        }
        Self::parse_uri(uri)
    }
}

impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_uri())
    }
}

/// The identity in the first (end-entity) certificate a peer presented, if it has one.
///
/// Meant for the gateway after the handshake, when the verifier has already accepted
/// the chain.
pub fn agent_identity_of_peer(certs: &[CertificateDer<'_>]) -> Option<AgentIdentity> {
    let leaf = certs.first()?;
    AgentIdentity::from_certificate_der(leaf).ok()
}

/// Checks a trust domain: lowercase letters, digits, dots and hyphens, in non-empty labels.
pub(crate) fn validate_trust_domain(trust_domain: &str) -> Result<()> {
    let invalid = |reason| PkiError::InvalidTrustDomain {
        trust_domain: trust_domain.to_owned(),
        reason,
    };
    if trust_domain.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(invalid("longer than 253 characters"));
    }
    if !trust_domain
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
    {
        return Err(invalid(
            "only lowercase letters, digits, '.' and '-' are allowed",
        ));
    }
    let labels_ok = trust_domain
        .split('.')
        .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if !labels_ok {
        return Err(invalid(
            "labels must be non-empty and not start or end with '-'",
        ));
    }
    Ok(())
}

/// Checks an agent id: `[A-Za-z0-9._-]{1,128}`.
pub(crate) fn validate_agent_id(agent_id: &str) -> Result<()> {
    let invalid = |reason| PkiError::InvalidAgentId {
        agent_id: agent_id.to_owned(),
        reason,
    };
    if agent_id.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if agent_id.len() > MAX_AGENT_ID_LEN {
        return Err(invalid("longer than 128 characters"));
    }
    if !agent_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parse_accepts_only_lowercase_hex() {
        let fp = Fingerprint::of_der(b"certificate");
        assert_eq!(fp.as_str().len(), 64);
        assert_eq!(Fingerprint::parse(fp.as_str()).unwrap(), fp);
        assert_eq!(fp.to_string(), fp.as_str());
        assert!(fp.matches(b"certificate"));
        assert!(!fp.matches(b"other"));
        assert!(Fingerprint::parse(&fp.as_str().to_uppercase()).is_err());
        assert!(Fingerprint::parse(&fp.as_str()[1..]).is_err());
        assert!(Fingerprint::parse(&"g".repeat(64)).is_err());
    }

    #[test]
    fn identity_uri_round_trip() {
        let id = AgentIdentity::new("stella.local", "0190-abc_D.e").unwrap();
        let uri = id.spiffe_uri();
        assert_eq!(uri, "spiffe://stella.local/agent/0190-abc_D.e");
        assert_eq!(AgentIdentity::parse_uri(&uri).unwrap(), id);
        assert_eq!(id.to_string(), uri);
    }

    #[test]
    fn identity_validation() {
        assert!(AgentIdentity::new("Stella.local", "a").is_err());
        assert!(AgentIdentity::new("", "a").is_err());
        assert!(AgentIdentity::new("stella..local", "a").is_err());
        assert!(AgentIdentity::new("stella.local", "").is_err());
        assert!(AgentIdentity::new("stella.local", "a/b").is_err());
        assert!(AgentIdentity::new("stella.local", &"a".repeat(129)).is_err());
        assert!(AgentIdentity::new("stella.local", &"a".repeat(128)).is_ok());
        for bad in [
            "https://stella.local/agent/a",
            "spiffe://stella.local/agents/a",
            "spiffe://stella.local/agent/a/b",
            "spiffe://stella.local/agent/",
            "spiffe://stella.local",
            "spiffe://stella.local/agent/a?x=1",
            "spiffe://STELLA/agent/a",
        ] {
            assert!(AgentIdentity::parse_uri(bad).is_err(), "{bad}");
        }
    }
}
