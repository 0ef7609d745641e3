//! The certificate authority, the certificates it issues and the agent's own key.

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::RngCore as _;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use rustls_pki_types::{CertificateDer, DnsName};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer as _;

use crate::error::x509_error;
use crate::identity::{validate_agent_id, validate_trust_domain};
use crate::pem::{encode_pem, pem_to_der_certs};
use crate::{AgentIdentity, Fingerprint, PkiError, Result};

/// How long a new CA certificate is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// Leaf certificates start this far in the past, so a peer whose clock runs a little
/// behind ours still accepts them.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// Subject CN of gateway server certificates.
const SERVER_COMMON_NAME: &str = "Stella gateway";

/// The Stella certificate authority of one trust domain: an ECDSA P-256 key and its
/// self-signed certificate.
pub struct CertificateAuthority {
    trust_domain: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// New self-signed CA: ECDSA P-256, valid 10 years, CN "Stella CA <trust_domain>", basic
    /// constraints CA (path length 0: it signs leaves only), key usage certSign+crlSign.
    pub fn generate(trust_domain: &str) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Rcgen {
                action: "generate ca key",
                source,
            })?;
        let now = now_whole_seconds();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!("Stella CA {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(|source| PkiError::Rcgen {
            action: "self-sign ca certificate",
            source,
        })?;
        let cert_der = cert.der().clone();
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            cert_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate PEM (exactly one certificate) and PKCS#8 P-256 key PEM.
    ///
    /// Refuses a certificate that is not a CA or whose public key is not the key's.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let mut certs = pem_to_der_certs(cert_pem)?;
        if certs.len() != 1 {
            return Err(PkiError::InvalidCa {
                reason: "expected exactly one certificate",
            });
        }
        let cert_der = certs.remove(0);
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(key_pem, &PKCS_ECDSA_P256_SHA256).map_err(
            |source| PkiError::Rcgen {
                action: "read ca key (expected pkcs#8 ecdsa p-256)",
                source,
            },
        )?;
        {
            let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
                .map_err(|e| x509_error("ca certificate", e))?;
            if !cert.is_ca() {
                return Err(PkiError::InvalidCa {
                    reason: "certificate is not a ca (basic constraints)",
                });
            }
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(PkiError::InvalidCa {
                    reason: "certificate and key do not match",
                });
            }
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| PkiError::Rcgen {
                action: "read ca certificate",
                source,
            })?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: encode_pem("CERTIFICATE", &cert_der),
            cert_der,
            issuer,
        })
    }

    /// The trust domain this CA certifies agents of.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// PKCS#8 PEM of the CA key; a secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate DER: what join tokens pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// A server certificate for the gateway: SANs are DNS names or IP literals; EKU
    /// serverAuth; fresh P-256 key.
    pub fn issue_server_certificate(
        &self,
        sans: &[String],
        validity: Duration,
    ) -> Result<KeyedCertificate> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Rcgen {
                action: "generate server key",
                source,
            })?;
        self.issue_server_certificate_with(sans, validity, &key)
    }

    /// Like [`CertificateAuthority::issue_server_certificate`], for a key the caller
    /// keeps (PKCS#8 PEM, ECDSA P-256), so that what clients pin of the key survives a
    /// new certificate.
    pub fn issue_server_certificate_for_key(
        &self,
        sans: &[String],
        validity: Duration,
        key_pem: &str,
    ) -> Result<KeyedCertificate> {
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(key_pem, &PKCS_ECDSA_P256_SHA256).map_err(
            |source| PkiError::Rcgen {
                action: "read server key (expected pkcs#8 ecdsa p-256)",
                source,
            },
        )?;
        self.issue_server_certificate_with(sans, validity, &key)
    }

    fn issue_server_certificate_with(
        &self,
        sans: &[String],
        validity: Duration,
        key: &KeyPair,
    ) -> Result<KeyedCertificate> {
        if sans.is_empty() {
            return Err(PkiError::NoServerNames);
        }
        let subject_alt_names = sans
            .iter()
            .map(|name| server_san(name))
            .collect::<Result<Vec<_>>>()?;
        let (not_before, not_after) = validity_window(validity)?;
        let mut params = leaf_params(not_before, not_after);
        params.distinguished_name = common_name(SERVER_COMMON_NAME);
        params.subject_alt_names = subject_alt_names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|source| PkiError::Rcgen {
                action: "sign server certificate",
                source,
            })?;
        Ok(KeyedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: SystemTime::from(not_after),
        })
    }

    /// Signs an agent's PKCS#10 CSR (DER).
    ///
    /// Ignores every name and extension the CSR asks for and uses only its public key
    /// (ECDSA P-256), after checking the CSR's self-signature. Subject CN = agent id,
    /// single SAN URI = `identity.spiffe_uri()`, EKU clientAuth, random 16-byte serial,
    /// not_before = now - 5 min, not_after = now + validity. Refuses an identity whose
    /// trust domain is not the CA's.
    pub fn sign_agent_csr(
        &self,
        csr_der: &[u8],
        identity: &AgentIdentity,
        validity: Duration,
    ) -> Result<IssuedCertificate> {
        // The fields are public, so re-check what `AgentIdentity::new` would have.
        validate_trust_domain(&identity.trust_domain)?;
        validate_agent_id(&identity.agent_id)?;
        if identity.trust_domain != self.trust_domain {
            return Err(PkiError::ForeignTrustDomain {
                identity: identity.spiffe_uri(),
                ca_trust_domain: self.trust_domain.clone(),
            });
        }
        let public_key = verified_csr_public_key(csr_der)?;
        let (not_before, not_after) = validity_window(validity)?;
        let uri = Ia5String::try_from(identity.spiffe_uri()).map_err(|source| PkiError::Rcgen {
            action: "encode spiffe uri",
            source,
        })?;
        let serial = random_serial();
        let mut params = leaf_params(not_before, not_after);
        params.distinguished_name = common_name(&identity.agent_id);
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| PkiError::Rcgen {
                action: "sign agent certificate",
                source,
            })?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            serial_hex: hex::encode(serial),
            not_after: SystemTime::from(not_after),
        })
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint().as_str())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A certificate with its private key (server side).
#[derive(Clone)]
pub struct KeyedCertificate {
    /// The leaf certificate PEM (without the CA).
    pub cert_pem: String,
    /// PKCS#8 PEM of the private key; a secret.
    pub key_pem: String,
    /// When the certificate expires (whole seconds, as encoded in it).
    pub not_after: SystemTime,
}

impl fmt::Debug for KeyedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A certificate issued for an agent's CSR; the key stays with the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate PEM.
    pub cert_pem: String,
    /// The certificate DER.
    pub cert_der: CertificateDer<'static>,
    /// The serial number, lowercase hex (32 characters).
    pub serial_hex: String,
    /// When the certificate expires (whole seconds, as encoded in it).
    pub not_after: SystemTime,
}

/// The agent's own key pair (generated on the agent's host; never leaves it).
pub struct AgentKey {
    key: KeyPair,
}

impl AgentKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Rcgen {
                action: "generate agent key",
                source,
            })?;
        Ok(Self { key })
    }

    /// Loads a PKCS#8 PEM ECDSA P-256 key.
    pub fn from_pem(key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(key_pem, &PKCS_ECDSA_P256_SHA256).map_err(
            |source| PkiError::Rcgen {
                action: "read agent key (expected pkcs#8 ecdsa p-256)",
                source,
            },
        )?;
        Ok(Self { key })
    }

    /// PKCS#8 PEM of the key; a secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// DER PKCS#10 CSR with CN = `common_name`.
    pub fn csr_der(&self, common_name_value: &str) -> Result<Vec<u8>> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(common_name_value);
        let csr = params
            .serialize_request(&self.key)
            .map_err(|source| PkiError::Rcgen {
                action: "create certificate signing request",
                source,
            })?;
        Ok(csr.der().to_vec())
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKey")
            .field("algorithm", &"ecdsa-p256")
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Checks the CSR's self-signature and returns its public key; nothing else of the CSR is
/// looked at, so no requested name or extension can reach the certificate.
fn verified_csr_public_key(csr_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| x509_error("certificate signing request", e))?;
    if !rest.is_empty() {
        return Err(PkiError::CsrRefused {
            reason: "trailing data after the request",
        });
    }
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|params| params.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(PkiError::CsrRefused {
            reason: "only ecdsa p-256 keys are accepted",
        });
    }
    if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(PkiError::CsrRefused {
            reason: "only ecdsa-with-sha256 signatures are accepted",
        });
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki.subject_public_key.data)
        .verify(
            csr.certification_request_info.raw,
            &csr.signature_value.data,
        )
        .map_err(|_| PkiError::CsrRefused {
            reason: "signature does not verify",
        })?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|source| PkiError::Rcgen {
        action: "read csr public key",
        source,
    })
}

/// Parameters every leaf shares: validity, digitalSignature, an authority key identifier.
fn leaf_params(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn server_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || PkiError::InvalidServerName {
        name: name.to_owned(),
    };
    DnsName::try_from(name).map_err(|_| invalid())?;
    Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|_| invalid())
}

/// 16 random bytes, positive and without a leading zero byte, so the DER INTEGER is
/// exactly these bytes and `serial_hex` matches what X.509 tools print.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f).max(1);
    serial
}

/// Now, cut to whole seconds (what X.509 times hold), so `not_after` equals the
/// certificate's own value.
fn now_whole_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now - time::Duration::nanoseconds(i64::from(now.nanosecond()))
}

fn validity_window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime)> {
    let invalid = |reason| PkiError::InvalidValidity { validity, reason };
    if validity < Duration::from_secs(1) {
        return Err(invalid("must be at least one second"));
    }
    let span = time::Duration::try_from(validity).map_err(|_| invalid("too long"))?;
    let now = now_whole_seconds();
    let not_after = now.checked_add(span).ok_or_else(|| invalid("too long"))?;
    Ok((now - BACKDATE, not_after))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use x509_parser::extensions::GeneralName;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let again =
            CertificateAuthority::from_pem("stella.local", ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(again.key_pem(), ca.key_pem());
        assert_eq!(again.trust_domain(), "stella.local");

        let cert = parse(ca.cert_der());
        assert!(cert.is_ca());
        assert_eq!(
            cert.subject().to_string(),
            "CN=Stella CA stella.local",
            "subject"
        );
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());

        // A CA loaded from PEM issues certificates that chain the same way.
        let key = AgentKey::generate().unwrap();
        let id = AgentIdentity::new("stella.local", "a1").unwrap();
        let issued = again
            .sign_agent_csr(&key.csr_der("a1").unwrap(), &id, HOUR)
            .unwrap();
        assert_eq!(parse(&issued.cert_der).issuer(), cert.subject());
    }

    #[test]
    fn from_pem_refuses_mismatched_key_and_non_ca() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let other = CertificateAuthority::generate("stella.local").unwrap();
        let err = CertificateAuthority::from_pem("stella.local", ca.cert_pem(), &other.key_pem())
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidCa { .. }), "{err}");

        let server = ca
            .issue_server_certificate(&["localhost".to_owned()], HOUR)
            .unwrap();
        let err = CertificateAuthority::from_pem("stella.local", &server.cert_pem, &server.key_pem)
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidCa { .. }), "{err}");
    }

    #[test]
    fn debug_output_hides_keys() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let server = ca
            .issue_server_certificate(&["localhost".to_owned()], HOUR)
            .unwrap();
        let key = AgentKey::generate().unwrap();
        for (debug, secret) in [
            (format!("{ca:?}"), ca.key_pem()),
            (format!("{server:?}"), server.key_pem),
            (format!("{key:?}"), key.key_pem()),
        ] {
            let body = secret.lines().nth(1).unwrap();
            assert!(!debug.contains(body), "{debug}");
            assert!(debug.contains("[redacted]"), "{debug}");
        }
    }

    #[test]
    fn signed_agent_certificate_has_only_the_spiffe_san() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let key = AgentKey::generate().unwrap();
        // A CSR asking for names, a CA bit and serverAuth: all of it must be ignored.
        let mut wish = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        wish.subject_alt_names.push(SanType::URI(
            Ia5String::try_from("spiffe://stella.local/agent/someone-else").unwrap(),
        ));
        wish.distinguished_name = common_name("someone-else");
        wish.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        wish.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = wish.serialize_request(&key.key).unwrap();

        let id = AgentIdentity::new("stella.local", "0190a1b2-agent").unwrap();
        let before = SystemTime::now();
        let issued = ca.sign_agent_csr(csr.der(), &id, HOUR).unwrap();

        let cert = parse(&issued.cert_der);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            names,
            &vec![GeneralName::URI(
                "spiffe://stella.local/agent/0190a1b2-agent"
            )]
        );
        assert_eq!(cert.subject().to_string(), "CN=0190a1b2-agent");
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            cert.public_key().subject_public_key.data,
            key.key.public_key_raw()
        );
        assert_eq!(cert.raw_serial(), hex::decode(&issued.serial_hex).unwrap());
        assert_eq!(issued.serial_hex.len(), 32);
        assert_eq!(
            SystemTime::from(cert.validity().not_after.to_datetime()),
            issued.not_after
        );
        let not_before = SystemTime::from(cert.validity().not_before.to_datetime());
        assert!(not_before <= before - Duration::from_secs(299));
        assert!(issued.not_after >= before + HOUR - Duration::from_secs(1));
        assert_eq!(
            AgentIdentity::from_certificate_der(&issued.cert_der).unwrap(),
            id
        );
        assert_eq!(
            crate::pem_to_der_certs(&issued.cert_pem).unwrap(),
            vec![issued.cert_der.clone()]
        );
    }

    #[test]
    fn serials_differ() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let key = AgentKey::generate().unwrap();
        let csr = key.csr_der("a").unwrap();
        let id = AgentIdentity::new("stella.local", "a").unwrap();
        let a = ca.sign_agent_csr(&csr, &id, HOUR).unwrap();
        let b = ca.sign_agent_csr(&csr, &id, HOUR).unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let key = AgentKey::generate().unwrap();
        let mut csr = key.csr_der("agent-honest").unwrap();
        let at = csr
            .windows(b"honest".len())
            .position(|w| w == b"honest")
            .unwrap();
        csr[at..at + 6].copy_from_slice(b"forged");
        let id = AgentIdentity::new("stella.local", "a").unwrap();
        let err = ca.sign_agent_csr(&csr, &id, HOUR).unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::CsrRefused {
                    reason: "signature does not verify"
                }
            ),
            "{err}"
        );
        assert!(ca.sign_agent_csr(b"not a csr", &id, HOUR).is_err());
    }

    #[test]
    fn wrong_trust_domain_is_refused() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let key = AgentKey::generate().unwrap();
        let id = AgentIdentity::new("other.example", "a").unwrap();
        let err = ca
            .sign_agent_csr(&key.csr_der("a").unwrap(), &id, HOUR)
            .unwrap_err();
        assert!(matches!(err, PkiError::ForeignTrustDomain { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "identity spiffe://other.example/agent/a is outside the ca trust domain \"stella.local\""
        );
    }

    #[test]
    fn non_p256_csr_is_refused() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let id = AgentIdentity::new("stella.local", "a").unwrap();
        let err = ca.sign_agent_csr(csr.der(), &id, HOUR).unwrap_err();
        assert!(matches!(err, PkiError::CsrRefused { .. }), "{err}");
    }

    #[test]
    fn server_certificate_names_and_usage() {
        let ca = CertificateAuthority::generate("stella.local").unwrap();
        let server = ca
            .issue_server_certificate(&["localhost".to_owned(), "127.0.0.1".to_owned()], HOUR)
            .unwrap();
        let der = crate::pem_to_der_certs(&server.cert_pem).unwrap().remove(0);
        let cert = parse(&der);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            names,
            &vec![
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1])
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        AgentKey::from_pem(&server.key_pem).unwrap();

        assert!(matches!(
            ca.issue_server_certificate(&[], HOUR),
            Err(PkiError::NoServerNames)
        ));
        assert!(matches!(
            ca.issue_server_certificate(&["bad name".to_owned()], HOUR),
            Err(PkiError::InvalidServerName { .. })
        ));
        assert!(matches!(
            ca.issue_server_certificate(&["localhost".to_owned()], Duration::ZERO),
            Err(PkiError::InvalidValidity { .. })
        ));
        assert!(matches!(
            ca.issue_server_certificate(&["localhost".to_owned()], Duration::MAX),
            Err(PkiError::InvalidValidity { .. })
        ));
    }

    #[test]
    fn agent_key_round_trips_through_pem() {
        let key = AgentKey::generate().unwrap();
        let again = AgentKey::from_pem(&key.key_pem()).unwrap();
        assert_eq!(again.key.public_key_raw(), key.key.public_key_raw());
        assert!(AgentKey::from_pem("garbage").is_err());
    }

    #[test]
    fn bad_trust_domain_is_refused() {
        assert!(matches!(
            CertificateAuthority::generate("Not Valid"),
            Err(PkiError::InvalidTrustDomain { .. })
        ));
    }
}
