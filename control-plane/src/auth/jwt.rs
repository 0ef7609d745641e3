//! OAuth2 access tokens as signed JWTs (RFC 9068 profile): Ed25519 (`EdDSA`) under a
//! key kept in `<data-dir>/pki/oauth.key`, published as a JWK set.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::KeyPair as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `typ` header of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Clock skew allowed when checking `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// The claims of an access token (RFC 9068 §2.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the client id (no end user in the client credentials grant).
    pub sub: String,
    /// Audience: the API.
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issue time, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Unique id of this token.
    pub jti: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The tenant the client acts in (`default` for tokens issued before tenants).
    #[serde(default = "default_tenant_claim")]
    pub tenant: String,
}

fn default_tenant_claim() -> String {
    crate::domain::TenantId::DEFAULT.to_owned()
}

/// Why a JWT was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Past `exp` (with leeway).
    Expired,
    /// Anything else: signature, key, issuer, audience, type, shape.
    Invalid(String),
}

/// The signing key and the key set the API verifies against.
pub struct JwtKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_x: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// From an Ed25519 PKCS#8 PEM (`PRIVATE KEY`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PKCS#8 PEM key: {e}"))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("not an Ed25519 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex::encode(&Sha256::digest(&public)[..8]);
        Ok(JwtKeys {
            kid,
            encoding: EncodingKey::from_ed_der(der.secret_pkcs8_der()),
            decoding: DecodingKey::from_ed_der(&public),
            public_x: URL_SAFE_NO_PAD.encode(&public),
        })
    }

    /// The key id (`kid`) tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs claims as an access token.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verifies an access token: type, key id, signature, `exp` and `nbf` (with
    /// [`LEEWAY_SECONDS`]), issuer and audience.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<AccessClaims, JwtRefusal> {
        let invalid = |why: &str| JwtRefusal::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("not a JWT"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("not signed with EdDSA"));
        }
        if !header.typ.as_deref().is_some_and(|typ| {
            typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
                || typ.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(invalid("not an access token (typ must be at+jwt)"));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(invalid("signed by a key this server does not publish"));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtRefusal::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => invalid("bad signature"),
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => invalid("another issuer"),
                jsonwebtoken::errors::ErrorKind::InvalidAudience => invalid("another audience"),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => invalid("not valid yet"),
                _ => invalid("malformed claims"),
            })
    }

    /// The public key set (RFC 7517), as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": self.public_x,
                "kid": self.kid,
                "use": "sig",
                "alg": "EdDSA",
            }]
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://stella.test".into(),
            sub: "ci".into(),
            aud: "stella".into(),
            exp,
            iat: exp - 900,
            nbf: exp - 900,
            jti: "1".into(),
            client_id: "ci".into(),
            scope: "stella.viewer".into(),
            tenant: "default".into(),
        }
    }

    fn now() -> i64 {
        crate::app::now_ms() / 1000
    }

    #[test]
    fn signs_and_verifies_and_refuses_what_does_not_match() {
        let keys =
            JwtKeys::from_pkcs8_pem(&stella_pki::generate_ed25519_pkcs8_pem().unwrap()).unwrap();
        let other =
            JwtKeys::from_pkcs8_pem(&stella_pki::generate_ed25519_pkcs8_pem().unwrap()).unwrap();
        let token = keys.sign(&claims(now() + 600)).unwrap();
        assert_eq!(
            keys.verify(&token, "https://stella.test", "stella")
                .unwrap()
                .sub,
            "ci"
        );
        assert!(matches!(
            keys.verify(&token, "https://other", "stella"),
            Err(JwtRefusal::Invalid(_))
        ));
        assert!(matches!(
            keys.verify(&token, "https://stella.test", "other"),
            Err(JwtRefusal::Invalid(_))
        ));
        assert!(matches!(
            other.verify(&token, "https://stella.test", "stella"),
            Err(JwtRefusal::Invalid(_))
        ));
        let expired = keys.sign(&claims(now() - 120)).unwrap();
        assert_eq!(
            keys.verify(&expired, "https://stella.test", "stella"),
            Err(JwtRefusal::Expired)
        );
        // Within the leeway it still passes.
        let just = keys.sign(&claims(now() - 5)).unwrap();
        assert!(keys.verify(&just, "https://stella.test", "stella").is_ok());
        assert_eq!(keys.jwks()["keys"][0]["kid"], keys.kid());
    }
}
