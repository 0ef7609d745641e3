//! Stella's PKI: the certificate authority, agent certificates with SPIFFE identities,
//! gateway server certificates, join and API tokens, and the rustls configurations of
//! both ends of the agent gateway.
//!
//! A pure library: no IO besides the system random source, no async, no globals. See
//! `docs/rfcs/0001-foundation.md` for the identities and token formats.
//!
//! Architecture invariant: the gateway learns an agent's identity only from a client
//! certificate verified here ([`server_tls_config`], [`agent_identity_of_peer`]).

mod api_tls;
mod ca;
mod error;
mod identity;
mod pem;
mod secret;
mod tls;

pub use api_tls::{
    api_certified_key, api_client_tls_config, api_server_tls_config, public_key_pin, ApiTrust,
    FirstUse,
};
pub use ca::{AgentKey, CertificateAuthority, IssuedCertificate, KeyedCertificate};
pub use error::PkiError;
pub use identity::{agent_identity_of_peer, AgentIdentity, Fingerprint};
pub use pem::pem_to_der_certs;
pub use secret::{
    constant_time_eq, generate_ed25519_pkcs8_pem, hash_token, new_api_token, new_client_secret,
    JoinToken,
};
pub use tls::{
    agent_client_tls_config, enrolment_client_tls_config, server_tls_config, NoRevocations,
    RevocationList,
};

/// The crate's result type.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;
