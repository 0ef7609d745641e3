//! TLS of the REST API: the server's config over a certificate that can be swapped
//! while connections stay open, and the client configs of the CLI, the agents' gateway
//! discovery and tests (ALPN `http/1.1`: the API speaks HTTP/1.1 only).
//!
//! A client trusts the API in one of three ways ([`ApiTrust`]): given CA certificates
//! (`--ca-file`), a pinned CA fingerprint (a join token's), or system roots with the
//! server's own CA pinned at first use, like an SSH client's known hosts.

use std::fmt;
use std::sync::Arc;

use parking_lot_free::Slot;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::pem::{pem_to_der_certs, pem_to_private_key};
use crate::tls::{rejected, ring_provider, root_store};
use crate::{Fingerprint, PkiError, Result};

const ALPN_HTTP1: &[u8] = b"http/1.1";

/// curl's `--pinnedpubkey` value of a certificate (DER): `sha256//` and the base64 of
/// the SHA-256 of its SubjectPublicKeyInfo. A pin of the key rather than of the
/// certificate holds across re-issues of the certificate for the same key.
pub fn public_key_pin(cert_der: &[u8]) -> Result<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|error| crate::error::x509_error("certificate", error))?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// A certificate chain (leaf first) and its private key, both PEM, ready to serve.
pub fn api_certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>> {
    let chain = pem_to_der_certs(chain_pem)?;
    let key = pem_to_private_key(key_pem)?;
    let provider = ring_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|source| PkiError::Tls {
            what: "api certificate",
            source,
        })
}

/// The API server's config: no client certificates, the certificate `resolver` picks
/// at each handshake (so a reload reaches new connections and leaves open ones alone).
pub fn api_server_tls_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls {
            what: "api server config",
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// How a client decides to trust the API's certificate.
pub enum ApiTrust {
    /// Only these CA certificates.
    Roots(Vec<CertificateDer<'static>>),
    /// The presented CA certificate whose SHA-256 is this (a join token's pin).
    Pinned(Fingerprint),
    /// The pinned CA if the server presents it, else system roots; with no pin yet, the
    /// CA the server presents, pinned at its first use.
    FirstUse(FirstUse),
}

impl fmt::Debug for ApiTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiTrust::Roots(roots) => f.debug_tuple("Roots").field(&roots.len()).finish(),
            ApiTrust::Pinned(pin) => f.debug_tuple("Pinned").field(&pin.as_str()).finish(),
            ApiTrust::FirstUse(first) => first.fmt(f),
        }
    }
}

impl fmt::Debug for FirstUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirstUse")
            .field("pinned", &self.pinned)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Trust on first use: what is recorded, and how a first use is recorded.
pub struct FirstUse {
    /// Publicly trusted roots (e.g. the Mozilla set); a server they vouch for is
    /// trusted without a pin.
    pub system_roots: RootCertStore,
    /// The CA fingerprint recorded for this server, if any: then only it and the
    /// system roots are trusted.
    pub pinned: Option<Fingerprint>,
    /// Called with the CA's fingerprint when a server is trusted for the first time.
    pub record: Arc<dyn Fn(&Fingerprint) + Send + Sync>,
    /// Where pins are kept, named in the error of a changed CA.
    pub store: String,
}

/// A client config (ALPN `http/1.1`) for the REST API.
pub fn api_client_tls_config(trust: ApiTrust) -> Result<ClientConfig> {
    let provider = ring_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls {
            what: "api client config",
            source,
        })?;
    let mut config = match trust {
        ApiTrust::Roots(roots) => builder
            .with_root_certificates(root_store(&roots)?)
            .with_no_client_auth(),
        ApiTrust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ApiVerifier {
                mode: Mode::Pinned(pin),
                provider,
            }))
            .with_no_client_auth(),
        ApiTrust::FirstUse(first) => {
            let system = if first.system_roots.is_empty() {
                None
            } else {
                Some(
                    WebPkiServerVerifier::builder_with_provider(
                        Arc::new(first.system_roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|source| PkiError::Verifier {
                        what: "server",
                        source,
                    })?,
                )
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ApiVerifier {
                    mode: Mode::FirstUse {
                        system,
                        pinned: Slot::new(first.pinned),
                        record: first.record,
                        store: first.store,
                    },
                    provider,
                }))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

enum Mode {
    Pinned(Fingerprint),
    FirstUse {
        system: Option<Arc<WebPkiServerVerifier>>,
        pinned: Slot<Fingerprint>,
        record: Arc<dyn Fn(&Fingerprint) + Send + Sync>,
        store: String,
    },
}

struct ApiVerifier {
    mode: Mode,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ApiVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiVerifier").finish_non_exhaustive()
    }
}

impl ApiVerifier {
    /// WebPKI verification of the chain against `anchor` as the only root.
    fn verify_against(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|source| {
                    rejected(PkiError::Verifier {
                        what: "server",
                        source,
                    })
                })?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now)
    }
}

/// The certificate a Stella server presents last: its CA.
fn presented_ca<'a>(
    end_entity: &'a CertificateDer<'a>,
    intermediates: &'a [CertificateDer<'a>],
) -> &'a CertificateDer<'a> {
    intermediates.last().unwrap_or(end_entity)
}

impl ServerCertVerifier for ApiVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let find = |pin: &Fingerprint| {
            std::iter::once(end_entity)
                .chain(intermediates)
                .find(|cert| pin.matches(cert))
        };
        match &self.mode {
            Mode::Pinned(pin) => {
                let anchor = find(pin)
                    .ok_or_else(|| rejected(PkiError::PinMismatch { pin: pin.clone() }))?;
                self.verify_against(anchor, end_entity, intermediates, server_name, now)
            }
            Mode::FirstUse {
                system,
                pinned,
                record,
                store,
            } => {
                let pin = pinned.get();
                if let Some(anchor) = pin.as_ref().and_then(find) {
                    return self.verify_against(
                        anchor,
                        end_entity,
                        intermediates,
                        server_name,
                        now,
                    );
                }
                let public = system.as_ref().map(|system| {
                    system.verify_server_cert(
                        end_entity,
                        intermediates,
                        server_name,
                        ocsp_response,
                        now,
                    )
                });
                if let Some(Ok(verified)) = public {
                    return Ok(verified);
                }
                let anchor = presented_ca(end_entity, intermediates);
                if let Some(pin) = pin {
                    return Err(rejected(PkiError::ServerCaChanged {
                        pinned: pin,
                        presented: Fingerprint::of_der(anchor),
                        store: store.clone(),
                    }));
                }
                let verified =
                    self.verify_against(anchor, end_entity, intermediates, server_name, now)?;
                let fingerprint = Fingerprint::of_der(anchor);
                record(&fingerprint);
                pinned.set(fingerprint);
                Ok(verified)
            }
        }
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

/// A value set at most a few times and read at every handshake (a std mutex: this
/// crate has no lock crate, and handshakes are rare).
mod parking_lot_free {
    use std::sync::Mutex;

    pub struct Slot<T>(Mutex<Option<T>>);

    impl<T: Clone> Slot<T> {
        pub fn new(value: Option<T>) -> Self {
            Slot(Mutex::new(value))
        }

        pub fn get(&self) -> Option<T> {
            self.0.lock().map_or(None, |value| value.clone())
        }

        pub fn set(&self, value: T) {
            if let Ok(mut slot) = self.0.lock() {
                *slot = Some(value);
            }
        }
    }
}

#[cfg(test)]
mod pin_tests {
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;
    use sha2::Digest as _;

    use super::public_key_pin;
    use crate::CertificateAuthority;

    #[test]
    fn the_pin_is_the_sha256_of_the_key_curl_sees() {
        let ca = CertificateAuthority::generate("pin.test").expect("a CA");
        let hour = std::time::Duration::from_secs(3600);
        let issued = ca
            .issue_server_certificate(&["localhost".to_owned()], hour)
            .expect("a certificate");
        let key = rcgen::KeyPair::from_pem(&issued.key_pem).expect("the key");
        let expected = format!(
            "sha256//{}",
            base64::engine::general_purpose::STANDARD
                .encode(sha2::Sha256::digest(key.subject_public_key_info()))
        );
        let der = |pem: &str| crate::pem_to_der_certs(pem).expect("a certificate")[0].to_vec();
        assert_eq!(public_key_pin(&der(&issued.cert_pem)).ok(), Some(expected));
        let other = ca
            .issue_server_certificate(&["localhost".to_owned()], hour)
            .expect("another certificate");
        assert_ne!(
            public_key_pin(&der(&issued.cert_pem)).ok(),
            public_key_pin(&der(&other.cert_pem)).ok()
        );
        assert!(public_key_pin(b"not a certificate").is_err());
    }
}
