//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in `stella-pki`.
///
/// Messages are lowercase and never repeat their source; print the whole chain with `{:#}`
/// (anyhow) or walk [`std::error::Error::source`] where the error is handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A trust domain is not a lowercase DNS-like name.
    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        /// The rejected value.
        trust_domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An agent id has characters or a length outside `[A-Za-z0-9._-]{1,128}`.
    #[error("invalid agent id {agent_id:?}: {reason}")]
    InvalidAgentId {
        /// The rejected value.
        agent_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A URI is not `spiffe://<trust-domain>/agent/<agent-id>`.
    #[error("invalid agent spiffe uri {uri:?}: {reason}")]
    InvalidSpiffeUri {
        /// The rejected value.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A certificate fingerprint is not 64 lowercase hex characters.
    #[error("invalid certificate fingerprint: {reason}")]
    InvalidFingerprint {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A join token does not have the form `stj1.<secret>.<ca-fingerprint>`.
    #[error("invalid join token: {reason}")]
    InvalidJoinToken {
        /// What is wrong with it (never the secret itself).
        reason: &'static str,
    },
    /// PEM text could not be decoded.
    #[error("could not decode {what} pem")]
    Pem {
        /// What the PEM should have held, e.g. "certificate".
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// PEM text held no item of the expected kind.
    #[error("no {what} found in pem")]
    PemEmpty {
        /// What the PEM should have held.
        what: &'static str,
    },
    /// DER could not be parsed as X.509 or PKCS#10.
    #[error("could not parse {what}")]
    X509 {
        /// What was being parsed.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// A certificate does not carry exactly one valid agent SPIFFE URI.
    #[error("certificate carries no agent identity: {reason}")]
    NoAgentIdentity {
        /// What is missing or wrong.
        reason: &'static str,
    },
    /// Certificate or key generation failed in rcgen.
    #[error("could not {action}")]
    Rcgen {
        /// What was being done, e.g. "sign agent certificate".
        action: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A CSR was refused before signing.
    #[error("certificate signing request refused: {reason}")]
    CsrRefused {
        /// Why.
        reason: &'static str,
    },
    /// A CA was asked to certify an identity of another trust domain.
    #[error("identity {identity} is outside the ca trust domain {ca_trust_domain:?}")]
    ForeignTrustDomain {
        /// The requested identity's URI.
        identity: String,
        /// The CA's trust domain.
        ca_trust_domain: String,
    },
    /// A CA certificate or key cannot be used as this crate's CA.
    #[error("invalid ca: {reason}")]
    InvalidCa {
        /// Why.
        reason: &'static str,
    },
    /// A server certificate subject alternative name is neither a DNS name nor an IP literal.
    #[error("invalid server name {name:?}: expected a dns name or an ip address")]
    InvalidServerName {
        /// The rejected name.
        name: String,
    },
    /// A server certificate was requested without any name.
    #[error("a server certificate needs at least one subject alternative name")]
    NoServerNames,
    /// A validity period is zero or too large to represent.
    #[error("invalid certificate validity {validity:?}: {reason}")]
    InvalidValidity {
        /// The rejected validity.
        validity: Duration,
        /// Why.
        reason: &'static str,
    },
    /// Key material could not be generated (the system random source failed).
    #[error("could not generate {what}")]
    KeyGeneration {
        /// What was being generated.
        what: &'static str,
    },
    /// No certificate the server presented has the pinned CA fingerprint.
    #[error("no certificate presented by the server matches the pinned ca fingerprint {pin}")]
    PinMismatch {
        /// The pinned fingerprint.
        pin: crate::Fingerprint,
    },
    /// The server's CA is not the one recorded for it at first use.
    #[error("the server's CA fingerprint is {presented}, not {pinned} as recorded at first use: refusing to connect (if the server's CA was replaced on purpose, remove its entry from {store})")]
    ServerCaChanged {
        /// The fingerprint recorded at first use.
        pinned: crate::Fingerprint,
        /// The fingerprint of the CA the server presented now.
        presented: crate::Fingerprint,
        /// Where the recorded fingerprint is kept.
        store: String,
    },
    /// A rustls config could not be built.
    #[error("could not build tls {what}")]
    Tls {
        /// Which part, e.g. "server config".
        what: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// A rustls certificate verifier could not be built.
    #[error("could not build {what} certificate verifier")]
    Verifier {
        /// Which verifier, "client" or "server".
        what: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Flattens x509-parser's nom error into its [`x509_parser::error::X509Error`].
pub(crate) fn x509_error(
    what: &'static str,
    err: x509_parser::nom::Err<x509_parser::error::X509Error>,
) -> PkiError {
    use x509_parser::error::X509Error;
    let source = match err {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
        x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
    };
    PkiError::X509 { what, source }
}
