//! rustls configurations for the gateway and the agent, and the verifiers behind them.
//!
//! Every config is built on `rustls::crypto::ring::default_provider()` explicitly: the
//! process-default provider is never consulted, so which crates enable which rustls
//! features elsewhere in the build cannot change what Stella trusts.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::validate_trust_domain;
use crate::pem::{pem_to_der_certs, pem_to_private_key};
use crate::{AgentIdentity, Fingerprint, KeyedCertificate, PkiError, Result};

/// The only ALPN protocol Stella's gRPC speaks.
const ALPN_H2: &[u8] = b"h2";

/// What the gateway asks at every TLS handshake.
pub trait RevocationList: Send + Sync + fmt::Debug {
    /// Whether certificates of `identity` must be refused.
    fn is_revoked(&self, identity: &AgentIdentity) -> bool;
}

/// A [`RevocationList`] that revokes nobody (tools and tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRevocations;

impl RevocationList for NoRevocations {
    fn is_revoked(&self, _identity: &AgentIdentity) -> bool {
        false
    }
}

/// Gateway server config: presents `[server leaf, CA]` (so enrolling agents can pin the CA),
/// ALPN `h2`.
///
/// Client certificates are optional (Enroll is open to clients without one), but one that
/// is presented must chain to a certificate of `ca_cert_pem`, carry a valid agent SPIFFE URI
/// of `trust_domain` and not be revoked per `revocations`; otherwise the handshake fails.
/// Takes the CA certificate rather than the CA so replicas without the CA key can serve.
/// Every certificate in `ca_cert_pem` is trusted and presented (room for CA rotation).
pub fn server_tls_config(
    ca_cert_pem: &str,
    trust_domain: &str,
    server: &KeyedCertificate,
    revocations: Arc<dyn RevocationList>,
) -> Result<ServerConfig> {
    validate_trust_domain(trust_domain)?;
    let provider = ring_provider();
    let ca_certs = pem_to_der_certs(ca_cert_pem)?;
    let roots = root_store(&ca_certs)?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|source| PkiError::Verifier {
            what: "client",
            source,
        })?;
    let verifier = Arc::new(AgentCertVerifier {
        inner,
        trust_domain: trust_domain.to_owned(),
        revocations,
    });
    let mut chain = pem_to_der_certs(&server.cert_pem)?;
    for ca in ca_certs {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = pem_to_private_key(&server.key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls {
            what: "server config",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| PkiError::Tls {
            what: "server certificate",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No TLS resumption: a resumed TLS 1.3 session skips the client certificate check,
    // so a revoked agent could come back on an old ticket. Every handshake runs the
    // verifier (and no ticket state is held per agent).
    config.send_tls13_tickets = 0;
    config.session_storage = std::sync::Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// Agent's mTLS client config (ALPN `h2`), trusting only `ca_pem`.
pub fn agent_client_tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig> {
    let roots = root_store(&pem_to_der_certs(ca_pem)?)?;
    let chain = pem_to_der_certs(cert_pem)?;
    let key = pem_to_private_key(key_pem)?;
    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls {
            what: "client config",
            source,
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| PkiError::Tls {
            what: "client certificate",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Client config for Enroll and the CA-less bootstrap (ALPN `h2`, no client certificate).
///
/// Accepts the server chain only if one of the presented certificates has SHA-256 == `pin`
/// and the leaf verifies against that certificate as the only root, server name included.
pub fn enrolment_client_tls_config(pin: &Fingerprint) -> Result<ClientConfig> {
    let provider = ring_provider();
    let verifier = Arc::new(PinnedCaVerifier {
        pin: pin.clone(),
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls {
            what: "client config",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.clone()).map_err(|source| PkiError::Tls {
            what: "trust anchor",
            source,
        })?;
    }
    Ok(roots)
}

pub(crate) fn rejected(err: PkiError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// WebPKI client verification (chain to the CA, EKU clientAuth, validity) plus the agent
/// identity and revocation checks.
#[derive(Debug)]
struct AgentCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    revocations: Arc<dyn RevocationList>,
}

impl ClientCertVerifier for AgentCertVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = AgentIdentity::from_certificate_der(end_entity).map_err(rejected)?;
        if identity.trust_domain != self.trust_domain {
            return Err(rejected(PkiError::ForeignTrustDomain {
                identity: identity.spiffe_uri(),
                ca_trust_domain: self.trust_domain.clone(),
            }));
        }
        if self.revocations.is_revoked(&identity) {
            tracing::debug!(agent_id = %identity.agent_id, "refused the certificate of a revoked agent");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusts the one presented certificate whose SHA-256 is the pin, then verifies the
/// chain against it like any WebPKI server verification.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|cert| self.pin.matches(cert))
            .ok_or_else(|| {
                rejected(PkiError::PinMismatch {
                    pin: self.pin.clone(),
                })
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|source| {
                    rejected(PkiError::Verifier {
                        what: "server",
                        source,
                    })
                })?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
