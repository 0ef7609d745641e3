//! Join tokens, API tokens, hashing and the decision-record signing key.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::pem::encode_pem;
use crate::{Fingerprint, PkiError, Result};

const JOIN_TOKEN_PREFIX: &str = "stj1";
const API_TOKEN_PREFIX: &str = "stk1_";
const SECRET_BYTES: usize = 32;

/// A one-time join token, printed `stj1.<secret>.<ca-fingerprint>`.
///
/// `secret` is 32 random bytes, base64url without padding; the fingerprint pins the CA
/// during enrolment. The server stores only [`JoinToken::secret_hash`].
#[derive(Clone)]
pub struct JoinToken {
    secret: String,
    ca: Fingerprint,
}

impl JoinToken {
    /// A fresh token for the CA with fingerprint `ca`.
    pub fn generate(ca: &Fingerprint) -> Self {
        Self {
            secret: random_secret(),
            ca: ca.clone(),
        }
    }

    /// Parses a printed token; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| PkiError::InvalidJoinToken { reason };
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [prefix, secret, fingerprint] = parts.as_slice() else {
            if parts.first() != Some(&JOIN_TOKEN_PREFIX) {
                return Err(invalid("expected the prefix stj1"));
            }
            return Err(invalid(
                "expected three dot-separated parts: stj1.<secret>.<ca-fingerprint>",
            ));
        };
        if *prefix != JOIN_TOKEN_PREFIX {
            return Err(invalid("expected the prefix stj1"));
        }
        let decoded = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| invalid("secret is not unpadded base64url"))?;
        if decoded.len() != SECRET_BYTES {
            return Err(invalid("secret is not 32 bytes"));
        }
        let ca = Fingerprint::parse(fingerprint)
            .map_err(|_| invalid("ca fingerprint is not 64 lowercase hex characters"))?;
        Ok(Self {
            secret: (*secret).to_owned(),
            ca,
        })
    }

    /// The fingerprint of the CA the enrolling agent must pin.
    pub fn ca_fingerprint(&self) -> &Fingerprint {
        &self.ca
    }

    /// sha256(secret) lowercase hex: the only form the server stores.
    ///
    /// The hash is taken over the printed (base64url) secret.
    pub fn secret_hash(&self) -> String {
        hash_token(&self.secret)
    }

    /// The printable token, `stj1.<secret>.<ca-fingerprint>`; a secret.
    pub fn expose(&self) -> String {
        format!("{JOIN_TOKEN_PREFIX}.{}.{}", self.secret, self.ca)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"[redacted]")
            .field("ca", &self.ca.as_str())
            .finish()
    }
}

/// A new API bearer token: `stk1_<32 random bytes base64url>`.
pub fn new_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_secret())
}

/// A new OAuth2 client secret: `stcs1_<32 random bytes base64url>`.
pub fn new_client_secret() -> String {
    format!("stcs1_{}", random_secret())
}

/// sha256(token) lowercase hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time string equality (for equal lengths; the length itself is not secret).
///
/// A manual fold because `ring::constant_time` is deprecated.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A new Ed25519 signing key for decision records, as PKCS#8 PEM (`PRIVATE KEY`); a secret.
pub fn generate_ed25519_pkcs8_pem() -> Result<String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| {
        PkiError::KeyGeneration {
            what: "ed25519 signing key",
        }
    })?;
    Ok(encode_pem("PRIVATE KEY", pkcs8.as_ref()))
}

fn random_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::PrivatePkcs8KeyDer;

    use super::*;

    fn fingerprint() -> Fingerprint {
        Fingerprint::of_der(b"ca certificate")
    }

    #[test]
    fn join_token_round_trip() {
        let token = JoinToken::generate(&fingerprint());
        let printed = token.expose();
        assert!(printed.starts_with("stj1."));
        assert!(printed.ends_with(fingerprint().as_str()));
        let parsed = JoinToken::parse(&format!("  {printed}\n")).unwrap();
        assert_eq!(parsed.expose(), printed);
        assert_eq!(parsed.ca_fingerprint(), &fingerprint());
        assert_eq!(parsed.secret_hash(), token.secret_hash());
        assert_eq!(parsed.secret_hash().len(), 64);
        assert_ne!(
            JoinToken::generate(&fingerprint()).secret_hash(),
            token.secret_hash()
        );
        let secret = printed.split('.').nth(1).unwrap();
        assert_eq!(secret.len(), 43);
        assert_eq!(token.secret_hash(), hash_token(secret));
        assert!(!format!("{token:?}").contains(secret));
    }

    #[test]
    fn join_token_errors() {
        let fp = fingerprint();
        let secret = random_secret();
        let reason = |s: &str| match JoinToken::parse(s) {
            Err(PkiError::InvalidJoinToken { reason }) => reason,
            other => panic!("expected an invalid join token error, got {other:?}"),
        };
        assert_eq!(
            reason(&format!("stj2.{secret}.{fp}")),
            "expected the prefix stj1"
        );
        assert_eq!(reason("hello"), "expected the prefix stj1");
        assert_eq!(reason(""), "expected the prefix stj1");
        assert!(reason(&format!("stj1.{secret}")).starts_with("expected three"));
        assert!(reason(&format!("stj1.{secret}.{fp}.x")).starts_with("expected three"));
        assert_eq!(
            reason(&format!("stj1.{secret}.{}", fp.as_str().to_uppercase())),
            "ca fingerprint is not 64 lowercase hex characters"
        );
        assert_eq!(
            reason(&format!("stj1.{secret}.abc")),
            "ca fingerprint is not 64 lowercase hex characters"
        );
        assert_eq!(
            reason(&format!("stj1.{secret}=.{fp}")),
            "secret is not unpadded base64url"
        );
        assert_eq!(reason(&format!("stj1.abcd.{fp}")), "secret is not 32 bytes");
        let err = JoinToken::parse("stj1.x").unwrap_err();
        assert!(err.to_string().starts_with("invalid join token: "));
    }

    #[test]
    fn api_tokens_and_hashes() {
        let token = new_api_token();
        assert!(token.starts_with("stk1_"));
        assert_eq!(token.len(), 5 + 43);
        assert_ne!(new_api_token(), token);
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_equality() {
        assert!(constant_time_eq("", ""));
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
        assert!(!constant_time_eq("", "a"));
    }

    #[test]
    fn ed25519_key_is_usable_pkcs8() {
        let pem = generate_ed25519_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    }
}
