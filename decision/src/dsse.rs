//! DSSE v1 envelopes signed with Ed25519, and the keys that sign and verify them.
//!
//! Implements the Dead Simple Signing Envelope as specified in
//! `secure-systems-lab/dsse` `protocol.md` (the pre-authentication encoding, PAE) and
//! `envelope.md` (the JSON envelope: `payload`, `payloadType`, `signatures[].keyid`,
//! `signatures[].sig`). A signature is always over `PAE(payloadType, payload)`, never
//! over the payload alone, so a signature cannot be replayed under another type.
//!
//! Key ids are the lowercase hex SHA-256 of the raw 32-byte Ed25519 public key. The
//! `keyid` in an envelope is only a hint for which trusted key to try: trust comes
//! from the caller's list of [`PublicKey`]s, never from the envelope.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::DecisionError;

/// The DSSE `payloadType` of an in-toto Statement.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths as ASCII decimal byte
/// counts. This is what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(6 + 1 + 20 + 1 + payload_type.len() + 1 + 20 + 1 + payload.len());
    out.extend_from_slice(b"DSSEv1 ");
    push_decimal(&mut out, payload_type.len());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    push_decimal(&mut out, payload.len());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A DSSE envelope, with exactly the field names of the DSSE JSON envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The payload, standard base64 (URL-safe and unpadded forms are accepted on read,
    /// as DSSE allows).
    pub payload: String,
    /// How to interpret the payload, e.g. [`INTOTO_PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// One or more signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<Signature>,
}

/// One signature in a DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key signed: the hex SHA-256 of its raw public key. Unauthenticated; may be
    /// empty, in which case every trusted key is tried.
    #[serde(default)]
    pub keyid: String,
    /// The Ed25519 signature, standard base64.
    pub sig: String,
}

impl Envelope {
    /// The decoded payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DecisionError> {
        decode_base64("envelope payload", &self.payload)
    }

    /// Parses an envelope from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DecisionError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DecisionError::new(format!("not a DSSE envelope: {e}")))
    }

    /// The envelope as canonical JSON.
    pub fn to_canonical(&self) -> Result<Vec<u8>, DecisionError> {
        crate::canonical::canonical_via_value(self)
    }
}

/// An Ed25519 signing key. Its `Debug` shows only the key id.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.key_id)
            .field("secret", &"(redacted)")
            .finish()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key, the form the
    /// server keeps its signing key in. The error never contains key material.
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, DecisionError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| {
            DecisionError::new(format!(
                "signing key is not a PKCS#8 PEM Ed25519 private key: {e}"
            ))
        })?;
        Ok(SigningKey::from_dalek(key))
    }

    /// The key whose 32-byte secret seed is `seed` (RFC 8032). Callers that need a new
    /// key fill the seed from a cryptographic RNG.
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        SigningKey::from_dalek(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The key as PKCS#8 PEM (v2, with the public key), for storing a generated key.
    /// The returned string is secret.
    pub fn to_pkcs8_pem(&self) -> Result<String, DecisionError> {
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| DecisionError::new(format!("cannot encode signing key as PKCS#8: {e}")))?;
        Ok(pem.as_str().to_owned())
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> SigningKey {
        let public = PublicKey::from_dalek(key.verifying_key());
        SigningKey { key, public }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// The key id of the public half (see [`PublicKey::key_id`]).
    pub fn key_id(&self) -> &str {
        &self.public.key_id
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }

    /// A DSSE envelope of `payload` with one signature by this key over
    /// `PAE(payload_type, payload)`.
    pub fn sign_envelope(&self, payload_type: &str, payload: &[u8]) -> Envelope {
        let signature = self.key.sign(&pae(payload_type, payload));
        Envelope {
            payload: STANDARD.encode(payload),
            payload_type: payload_type.to_owned(),
            signatures: vec![Signature {
                keyid: self.public.key_id.clone(),
                sig: STANDARD.encode(signature.to_bytes()),
            }],
        }
    }
}

/// An Ed25519 public key, with its key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    key_id: String,
}

impl PublicKey {
    fn from_dalek(key: ed25519_dalek::VerifyingKey) -> PublicKey {
        let key_id = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        PublicKey { key, key_id }
    }

    /// Reads an SPKI PEM (`-----BEGIN PUBLIC KEY-----`) Ed25519 public key.
    pub fn from_pem(pem: &str) -> Result<PublicKey, DecisionError> {
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|e| {
            DecisionError::new(format!(
                "public key is not an SPKI PEM Ed25519 public key: {e}"
            ))
        })?;
        Ok(PublicKey::from_dalek(key))
    }

    /// The key from its 32 raw bytes.
    pub fn from_raw(bytes: &[u8; 32]) -> Result<PublicKey, DecisionError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|e| {
            DecisionError::new(format!("raw public key is not an Ed25519 point: {e}"))
        })?;
        Ok(PublicKey::from_dalek(key))
    }

    /// The key from its 32 raw bytes in hex (securesystemslib's `keyval.public`).
    pub fn from_raw_hex(text: &str) -> Result<PublicKey, DecisionError> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut raw).map_err(|e| {
            DecisionError::new(format!(
                "raw public key is not 64 hex digits ({} characters given): {e}",
                text.trim().len()
            ))
        })?;
        PublicKey::from_raw(&raw)
    }

    /// The key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`, LF line endings).
    pub fn to_pem(&self) -> String {
        // Encoding a valid 32-byte key into SPKI cannot fail; the fallback is never used.
        self.key
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap_or_default()
    }

    /// The key id: lowercase hex SHA-256 of the raw 32-byte key, no prefix.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The 32 raw key bytes as lowercase hex.
    pub fn raw_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Checks an Ed25519 signature of `message` by this key (strict verification: no
    /// malleable or small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), DecisionError> {
        let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| {
            DecisionError::new(format!(
                "signature by key {} is {} bytes, not an Ed25519 signature (64 bytes)",
                self.key_id,
                signature.len()
            ))
        })?;
        self.key.verify_strict(message, &signature).map_err(|_| {
            DecisionError::new(format!("signature by key {} does not verify", self.key_id))
        })
    }
}

/// Verifies a DSSE envelope against trusted keys and returns its payload.
///
/// Succeeds when at least one signature whose `keyid` names a trusted key (or, with an
/// empty `keyid`, any trusted key) verifies over `PAE(payloadType, payload)`. The
/// payload type is not checked here; callers check it is the one they expect.
pub fn verify_envelope(
    envelope: &Envelope,
    trusted: &[PublicKey],
) -> Result<Vec<u8>, DecisionError> {
    verify_envelope_signer(envelope, trusted).map(|(payload, _)| payload)
}

/// Like [`verify_envelope`], also returning the trusted key whose signature verified.
pub fn verify_envelope_signer<'k>(
    envelope: &Envelope,
    trusted: &'k [PublicKey],
) -> Result<(Vec<u8>, &'k PublicKey), DecisionError> {
    if envelope.signatures.is_empty() {
        return Err(DecisionError::new("envelope has no signatures"));
    }
    let payload = envelope.payload_bytes()?;
    let message = pae(&envelope.payload_type, &payload);
    let mut failures = Vec::new();
    for (index, signature) in envelope.signatures.iter().enumerate() {
        match verify_one(&message, signature, index, trusted) {
            Ok(key) => return Ok((payload, key)),
            Err(e) => failures.push(e.0),
        }
    }
    Err(DecisionError::new(failures.join("; ")))
}

fn verify_one<'k>(
    message: &[u8],
    signature: &Signature,
    index: usize,
    trusted: &'k [PublicKey],
) -> Result<&'k PublicKey, DecisionError> {
    let sig = decode_base64(&format!("envelope signatures[{index}].sig"), &signature.sig)?;
    if signature.keyid.is_empty() {
        if let Some(key) = trusted.iter().find(|key| key.verify(message, &sig).is_ok()) {
            return Ok(key);
        }
        return Err(DecisionError::new(format!(
            "signature {index} names no key and verifies with no trusted key (trusted: {})",
            key_ids(trusted)
        )));
    }
    let Some(key) = trusted.iter().find(|key| key.key_id == signature.keyid) else {
        return Err(DecisionError::new(format!(
            "signed by key {}, which is not a trusted key (trusted: {})",
            signature.keyid,
            key_ids(trusted)
        )));
    };
    key.verify(message, &sig)?;
    Ok(key)
}

/// The ids of `keys`, comma-separated, or `none`.
pub(crate) fn key_ids(keys: &[PublicKey]) -> String {
    if keys.is_empty() {
        return "none".to_owned();
    }
    keys.iter()
        .map(PublicKey::key_id)
        .collect::<Vec<_>>()
        .join(", ")
}

const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64 in the standard or URL-safe alphabet, padded or not (DSSE accepts
/// both); `field` names what is decoded in the error.
pub(crate) fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, DecisionError> {
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE_ANY_PADDING
    } else {
        &STANDARD_ANY_PADDING
    };
    engine
        .decode(text)
        .map_err(|e| DecisionError::new(format!("{field} is not base64: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32])
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
        let long = vec![b'x'; 1234];
        assert!(pae("t", &long).starts_with(b"DSSEv1 1 t 1234 xx"));
    }

    #[test]
    fn envelope_uses_dsse_field_names() {
        let envelope = key(1).sign_envelope(INTOTO_PAYLOAD_TYPE, b"{}");
        let json: serde_json::Value = serde_json::to_value(&envelope).unwrap();
        let object = json.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["payload", "payloadType", "signatures"]);
        assert_eq!(json["payload"], "e30=");
        assert_eq!(json["payloadType"], INTOTO_PAYLOAD_TYPE);
        assert_eq!(json["signatures"][0]["keyid"], key(1).key_id());
        assert!(json["signatures"][0]["sig"].is_string());
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let signer = key(1);
        let envelope = signer.sign_envelope(INTOTO_PAYLOAD_TYPE, b"payload bytes");
        let payload =
            verify_envelope(&envelope, &[key(2).public_key(), signer.public_key()]).unwrap();
        assert_eq!(payload, b"payload bytes");
        let sig = decode_base64("sig", &envelope.signatures[0].sig).unwrap();
        signer
            .public_key()
            .verify(&pae(INTOTO_PAYLOAD_TYPE, b"payload bytes"), &sig)
            .unwrap();
    }

    #[test]
    fn signature_is_deterministic_and_matches_rfc8032() {
        // RFC 8032 §7.1 TEST 1: empty message.
        let mut seed = [0u8; 32];
        hex::decode_to_slice(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            &mut seed,
        )
        .unwrap();
        let signer = SigningKey::from_seed(seed);
        assert_eq!(
            signer.public_key().raw_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex::encode(signer.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn flipped_payload_byte_fails() {
        let signer = key(1);
        let mut envelope = signer.sign_envelope(INTOTO_PAYLOAD_TYPE, b"payload bytes");
        let mut payload = envelope.payload_bytes().unwrap();
        payload[0] ^= 1;
        envelope.payload = STANDARD.encode(&payload);
        let err = verify_envelope(&envelope, &[signer.public_key()]).unwrap_err();
        assert_eq!(
            err.0,
            format!("signature by key {} does not verify", signer.key_id())
        );
    }

    #[test]
    fn changed_payload_type_fails() {
        let signer = key(1);
        let mut envelope = signer.sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        envelope.payload_type = "text/plain".into();
        assert!(verify_envelope(&envelope, &[signer.public_key()]).is_err());
    }

    #[test]
    fn untrusted_key_fails_naming_both() {
        let envelope = key(1).sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        let err = verify_envelope(&envelope, &[key(2).public_key()]).unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "signed by key {}, which is not a trusted key (trusted: {})",
                key(1).key_id(),
                key(2).key_id()
            )
        );
        let err = verify_envelope(&envelope, &[]).unwrap_err();
        assert!(err.0.ends_with("(trusted: none)"), "{err}");
    }

    #[test]
    fn keyid_lying_about_the_signer_fails() {
        // A signature by key 1 carrying key 2's id is checked against key 2 and fails.
        let mut envelope = key(1).sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        envelope.signatures[0].keyid = key(2).key_id().to_owned();
        let err = verify_envelope(&envelope, &[key(2).public_key()]).unwrap_err();
        assert!(err.0.contains("does not verify"), "{err}");
    }

    #[test]
    fn empty_keyid_tries_every_trusted_key() {
        let mut envelope = key(1).sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        envelope.signatures[0].keyid.clear();
        assert!(verify_envelope(&envelope, &[key(2).public_key(), key(1).public_key()]).is_ok());
        let err = verify_envelope(&envelope, &[key(2).public_key()]).unwrap_err();
        assert!(err.0.contains("names no key"), "{err}");
    }

    #[test]
    fn one_good_signature_among_bad_ones_suffices() {
        let mut envelope = key(1).sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        let other = key(2).sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        envelope.signatures.insert(0, other.signatures[0].clone());
        assert!(verify_envelope(&envelope, &[key(1).public_key()]).is_ok());
        let err = verify_envelope(&envelope, &[key(3).public_key()]).unwrap_err();
        assert_eq!(err.0.matches("not a trusted key").count(), 2, "{err}");
    }

    #[test]
    fn no_signatures_and_bad_base64_are_named() {
        let mut envelope = key(1).sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        let signatures = std::mem::take(&mut envelope.signatures);
        assert_eq!(
            verify_envelope(&envelope, &[key(1).public_key()])
                .unwrap_err()
                .0,
            "envelope has no signatures"
        );
        envelope.signatures = signatures;
        envelope.signatures[0].sig = "!!!".into();
        let err = verify_envelope(&envelope, &[key(1).public_key()]).unwrap_err();
        assert!(
            err.0
                .starts_with("envelope signatures[0].sig is not base64"),
            "{err}"
        );
        envelope.payload = "@@".into();
        let err = verify_envelope(&envelope, &[key(1).public_key()]).unwrap_err();
        assert!(err.0.starts_with("envelope payload is not base64"), "{err}");
    }

    #[test]
    fn url_safe_and_unpadded_base64_are_accepted() {
        let signer = key(1);
        let payload = [0xfbu8, 0xff, 0xfe, 0x01];
        let mut envelope = signer.sign_envelope(INTOTO_PAYLOAD_TYPE, &payload);
        assert_eq!(envelope.payload, "+//+AQ==");
        envelope.payload = "-__-AQ".into();
        assert_eq!(
            verify_envelope(&envelope, &[signer.public_key()]).unwrap(),
            payload
        );
    }

    #[test]
    fn envelope_json_round_trip() {
        let envelope = key(1).sign_envelope(INTOTO_PAYLOAD_TYPE, b"x");
        let bytes = envelope.to_canonical().unwrap();
        assert_eq!(Envelope::from_json(&bytes).unwrap(), envelope);
        let err = Envelope::from_json(b"{\"payload\":1}").unwrap_err();
        assert!(err.0.starts_with("not a DSSE envelope"), "{err}");
    }

    #[test]
    fn key_pem_round_trips() {
        let signer = key(7);
        let pem = signer.public_key().to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        let back = PublicKey::from_pem(&pem).unwrap();
        assert_eq!(back, signer.public_key());
        assert_eq!(back.key_id(), signer.key_id());
        assert_eq!(PublicKey::from_raw_hex(&back.raw_hex()).unwrap(), back);

        let private = signer.to_pkcs8_pem().unwrap();
        assert!(
            private.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{private}"
        );
        let again = SigningKey::from_pkcs8_pem(&private).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert_eq!(again.sign(b"m"), signer.sign(b"m"));
    }

    #[test]
    fn openssl_style_pkcs8_v1_key_is_read() {
        // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1, seed only), the
        // RFC 8410 §10.3 example key.
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let signer = SigningKey::from_pkcs8_pem(pem).unwrap();
        assert_eq!(
            signer.public_key().raw_hex(),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
    }

    #[test]
    fn key_id_is_sha256_of_raw_key() {
        let public = key(3).public_key();
        let raw = hex::decode(public.raw_hex()).unwrap();
        assert_eq!(public.key_id(), hex::encode(sha2::Sha256::digest(&raw)));
        assert_eq!(public.key_id().len(), 64);
    }

    #[test]
    fn bad_keys_are_refused_with_clear_errors() {
        let err = SigningKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(
            err.0
                .starts_with("signing key is not a PKCS#8 PEM Ed25519 private key"),
            "{err}"
        );
        let err = PublicKey::from_pem("nope").unwrap_err();
        assert!(err.0.starts_with("public key is not an SPKI PEM"), "{err}");
        let err = PublicKey::from_raw_hex("abc").unwrap_err();
        assert!(err.0.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn debug_redacts_the_secret() {
        let signer = key(9);
        let shown = format!("{signer:?}");
        assert!(shown.contains(signer.key_id()), "{shown}");
        assert!(!shown.contains(&hex::encode([9u8; 32])), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn short_signature_is_refused() {
        let err = key(1).public_key().verify(b"m", &[0u8; 10]).unwrap_err();
        assert!(err.0.contains("10 bytes"), "{err}");
    }
}
