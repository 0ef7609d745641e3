//! Small secrets sealed at rest: registry passwords today, other credentials later.
//!
//! [`SecretBox`] seals with ChaCha20-Poly1305 under one 256-bit key kept in
//! `<data-dir>/pki/secrets.key` (mode 0600, 64 hex digits). Replicas of one control
//! plane share `pki/`, so they share this key and can open each other's secrets.
//!
//! A sealed secret is `base64(version 1 || 12-byte random nonce || ciphertext+tag)`; the
//! version byte is also the associated data, so it cannot be changed without detection.
//! Random 96-bit nonces are safe here: far fewer than 2^32 secrets are ever sealed under
//! one key.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::bootstrap::{self, BootstrapError};

/// The file under `<data-dir>/pki/` holding the key.
pub const KEY_FILE: &str = "secrets.key";

/// The format version written by [`SecretBox::seal`].
const VERSION: u8 = 1;
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// Poly1305 tag.
const TAG_LEN: usize = 16;

/// Seals and opens small secrets with the server's secrets key. `Debug` never shows
/// the key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

/// Why a key could not be loaded or a secret not opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file could not be read.
    #[error("cannot read the secrets key {path}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file could not be created.
    #[error("cannot create the secrets key")]
    Create(#[source] BootstrapError),
    /// The key file does not hold a key.
    #[error("the secrets key {path} is malformed: expected 64 hex digits")]
    MalformedKey {
        /// The key file.
        path: PathBuf,
    },
    /// The text is not something [`SecretBox::seal`] produced.
    #[error("sealed secret is malformed: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Authentication failed: another key sealed it, or it was altered.
    #[error(
        "sealed secret cannot be opened: it was sealed with another secrets key or has been altered"
    )]
    Undecryptable,
}

impl SecretBox {
    /// Loads the key from `<data_dir>/pki/secrets.key`, creating it (0600) on first use.
    /// When several processes create it at once, the first one to finish wins and
    /// every process uses its key.
    pub fn load_or_create(data_dir: &Path) -> Result<SecretBox, SecretsError> {
        let dir = data_dir.join("pki");
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            bootstrap::create_private_dir(&dir).map_err(SecretsError::Create)?;
            create_key_file(&dir, &path)?;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| SecretsError::Read {
            path: path.clone(),
            source,
        })?;
        let key = decode_key(text.trim()).ok_or(SecretsError::MalformedKey { path })?;
        Ok(SecretBox::from_key(&key))
    }

    /// A box over a given key (tests, and keys that come from elsewhere).
    pub fn from_key(key: &[u8; KEY_LEN]) -> SecretBox {
        SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Seals `plaintext` under a fresh random nonce.
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: &[VERSION],
        };
        let ciphertext = match self.cipher.encrypt(Nonce::from_slice(&nonce), payload) {
            Ok(ciphertext) => ciphertext,
            // ChaCha20-Poly1305 fails only beyond 256 GiB of plaintext.
            Err(_) => unreachable!("secrets are small"),
        };
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        BASE64.encode(sealed)
    }

    /// Opens what [`Self::seal`] produced with the same key.
    pub fn open(&self, sealed: &str) -> Result<String, SecretsError> {
        let bytes = BASE64
            .decode(sealed.trim())
            .map_err(|_| SecretsError::Malformed {
                reason: "not base64",
            })?;
        let (&version, rest) = bytes
            .split_first()
            .ok_or(SecretsError::Malformed { reason: "empty" })?;
        if version != VERSION {
            return Err(SecretsError::Malformed {
                reason: "unknown format version",
            });
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretsError::Malformed {
                reason: "too short",
            });
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: &[VERSION],
        };
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SecretsError::Undecryptable)?;
        // Authenticated, so it is what `seal` got: a `&str`.
        String::from_utf8(plaintext).map_err(|_| SecretsError::Malformed {
            reason: "not UTF-8",
        })
    }
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox").finish_non_exhaustive()
    }
}

/// Writes a new key to a private temp file, then links it into place: linking fails if
/// another process got there first, and then its key is the one used.
fn create_key_file(dir: &Path, path: &Path) -> Result<(), SecretsError> {
    let mut key = [0u8; KEY_LEN];
    rand::thread_rng().fill_bytes(&mut key);
    let mut tag = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut tag);
    let candidate = dir.join(format!(".secrets-{}.key", hex::encode(tag)));
    bootstrap::write_secret(&candidate, &format!("{}\n", hex::encode(key)))
        .map_err(SecretsError::Create)?;
    let linked = std::fs::hard_link(&candidate, path);
    let _ = std::fs::remove_file(&candidate);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created secrets key");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(SecretsError::Create(BootstrapError::Io {
            path: path.to_owned(),
            source,
        })),
    }
}

fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn new_box() -> SecretBox {
        let mut key = [0u8; KEY_LEN];
        rand::thread_rng().fill_bytes(&mut key);
        SecretBox::from_key(&key)
    }

    #[test]
    fn sealed_secrets_open_to_the_same_text() {
        let secrets = new_box();
        for plaintext in ["", "hunter2", "pässwörd with spaces and ✓"] {
            let sealed = secrets.seal(plaintext);
            assert!(!sealed.contains(plaintext) || plaintext.is_empty());
            assert_eq!(secrets.open(&sealed).expect("opens"), plaintext);
        }
        // A fresh nonce each time: the same secret seals differently.
        assert_ne!(secrets.seal("same"), secrets.seal("same"));
    }

    #[test]
    fn altered_secrets_are_refused() {
        let secrets = new_box();
        let sealed = BASE64.decode(secrets.seal("hunter2")).expect("base64");
        for index in [1, NONCE_LEN + 1, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[index] ^= 0x01;
            let error = secrets.open(&BASE64.encode(&altered)).expect_err("altered");
            assert!(matches!(error, SecretsError::Undecryptable), "{error}");
        }
        let mut other_version = sealed.clone();
        other_version[0] = 2;
        assert!(matches!(
            secrets.open(&BASE64.encode(&other_version)),
            Err(SecretsError::Malformed { .. })
        ));
        let truncated = BASE64.encode(&sealed[..NONCE_LEN]);
        assert!(matches!(
            secrets.open(&truncated),
            Err(SecretsError::Malformed { .. })
        ));
        assert!(matches!(
            secrets.open("not base64!"),
            Err(SecretsError::Malformed { .. })
        ));
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = new_box().seal("hunter2");
        let error = new_box().open(&sealed).expect_err("wrong key");
        assert!(matches!(error, SecretsError::Undecryptable));
        assert!(error.to_string().contains("another secrets key"), "{error}");
    }

    #[test]
    fn the_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = SecretBox::load_or_create(dir.path()).expect("first load");
        let path = dir.path().join("pki").join(KEY_FILE);
        let mode = std::fs::metadata(&path)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_text = std::fs::read_to_string(&path).expect("key text");
        let sealed = first.seal("hunter2");
        let second = SecretBox::load_or_create(dir.path()).expect("second load");
        assert_eq!(second.open(&sealed).expect("same key"), "hunter2");
        assert_eq!(std::fs::read_to_string(&path).expect("key text"), key_text);
        // Only the key file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("pki"))
            .expect("pki dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);
    }

    #[test]
    fn a_malformed_key_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        std::fs::write(pki.join(KEY_FILE), "not a key\n").expect("write");
        let error = SecretBox::load_or_create(dir.path()).expect_err("malformed");
        assert!(
            matches!(error, SecretsError::MalformedKey { .. }),
            "{error}"
        );
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let key = [0xabu8; KEY_LEN];
        let shown = format!("{:?}", SecretBox::from_key(&key));
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.to_lowercase().contains("171"), "{shown}");
    }
}
