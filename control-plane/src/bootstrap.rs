//! First-start material in the data dir: the CA, the decision-signing key and the
//! gateway's server certificate.
//!
//! Layout: `<data-dir>/pki/ca.pem`, `ca.key` (0600), `signing.key` (0600), `oauth.key`
//! (0600, Ed25519: signs OAuth2 access tokens). The gateway
//! certificate is issued anew from the CA at every start, for the names in
//! [`server_sans`], so a changed host name or `tls_sans` needs only a restart.
//! Replicas of one control plane share the `pki/` directory (copy it, or mount it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stella_pki::{CertificateAuthority, KeyedCertificate};

/// Validity of the gateway certificate issued at start.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the data dir could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stored key is unusable.
    #[error("unusable key in {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Stored key material is unusable, or a certificate could not be made.
    #[error("pki material in {path}")]
    Pki {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: stella_pki::PkiError,
    },
}

/// The key material a running server holds.
pub struct ServerPki {
    /// The CA that signs agent and gateway certificates.
    pub ca: CertificateAuthority,
    /// The gateway's TLS certificate, issued at this start.
    pub server_cert: KeyedCertificate,
    /// Ed25519 PKCS#8 PEM that signs decision records.
    pub signing_key_pem: String,
    /// Ed25519 PKCS#8 PEM that signs OAuth2 access tokens.
    pub oauth_key_pem: String,
}

impl ServerPki {
    /// The access-token keys. The key was checked when loaded, so this cannot fail
    /// short of memory corruption; a fresh key stands in then (tokens of the file's
    /// key are refused, none are accepted that should not be).
    pub fn oauth_keys(&self) -> crate::auth::jwt::JwtKeys {
        crate::auth::jwt::JwtKeys::from_pkcs8_pem(&self.oauth_key_pem).unwrap_or_else(|_| {
            let fresh = stella_pki::generate_ed25519_pkcs8_pem().unwrap_or_default();
            match crate::auth::jwt::JwtKeys::from_pkcs8_pem(&fresh) {
                Ok(keys) => keys,
                Err(error) => panic!("no usable access-token key: {error}"),
            }
        })
    }
}

impl std::fmt::Debug for ServerPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPki")
            .field("ca", &self.ca.fingerprint().to_string())
            .finish_non_exhaustive()
    }
}

/// Loads the CA and signing key from the data dir, creating them on first start, and
/// issues the gateway certificate.
pub fn load_or_create(
    data_dir: &Path,
    trust_domain: &str,
    sans: &[String],
) -> Result<ServerPki, BootstrapError> {
    let dir = data_dir.join("pki");
    create_private_dir(&dir)?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let ca = if ca_cert_path.exists() {
        let cert_pem = read(&ca_cert_path)?;
        let key_pem = read(&ca_key_path)?;
        CertificateAuthority::from_pem(trust_domain, &cert_pem, &key_pem).map_err(|source| {
            BootstrapError::Pki {
                path: ca_cert_path.clone(),
                source,
            }
        })?
    } else {
        let ca =
            CertificateAuthority::generate(trust_domain).map_err(|source| BootstrapError::Pki {
                path: ca_cert_path.clone(),
                source,
            })?;
        // Key first: a crash between the two writes leaves no CA cert without its key.
        write_secret(&ca_key_path, &ca.key_pem())?;
        write_secret(&ca_cert_path, ca.cert_pem())?;
        tracing::info!(fingerprint = %ca.fingerprint(), "created certificate authority");
        ca
    };
    let signing_key_path = dir.join("signing.key");
    let signing_key_pem = if signing_key_path.exists() {
        read(&signing_key_path)?
    } else {
        let pem =
            stella_pki::generate_ed25519_pkcs8_pem().map_err(|source| BootstrapError::Pki {
                path: signing_key_path.clone(),
                source,
            })?;
        write_secret(&signing_key_path, &pem)?;
        tracing::info!("created decision signing key");
        pem
    };
    let oauth_key_path = dir.join("oauth.key");
    let oauth_key_pem = if oauth_key_path.exists() {
        read(&oauth_key_path)?
    } else {
        let pem =
            stella_pki::generate_ed25519_pkcs8_pem().map_err(|source| BootstrapError::Pki {
                path: oauth_key_path.clone(),
                source,
            })?;
        write_secret(&oauth_key_path, &pem)?;
        tracing::info!("created access-token signing key");
        pem
    };
    if let Err(reason) = crate::auth::jwt::JwtKeys::from_pkcs8_pem(&oauth_key_pem) {
        return Err(BootstrapError::Key {
            path: oauth_key_path,
            reason,
        });
    }
    let server_cert = ca
        .issue_server_certificate(sans, SERVER_CERT_VALIDITY)
        .map_err(|source| BootstrapError::Pki {
            path: dir.clone(),
            source,
        })?;
    Ok(ServerPki {
        ca,
        server_cert,
        signing_key_pem,
        oauth_key_pem,
    })
}

/// Names for the gateway certificate: loopback, this host's name, configured extras.
pub fn server_sans(extra: &[String], listen: std::net::SocketAddr) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(name) = hostname() {
        sans.push(name);
    }
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    sans.extend(extra.iter().cloned());
    sans.sort();
    sans.dedup();
    sans
}

fn hostname() -> std::io::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_owned())
}

/// Creates a directory (and parents) readable only by its owner.
pub fn create_private_dir(dir: &Path) -> Result<(), BootstrapError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BootstrapError::Io {
            path: dir.to_owned(),
            source,
        })
}

fn read(path: &Path) -> Result<String, BootstrapError> {
    std::fs::read_to_string(path).map_err(|source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file with mode 0600 atomically (temp file, fsync, rename).
pub fn write_secret(path: &Path, contents: &str) -> Result<(), BootstrapError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_error = |source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error)?;
    file.write_all(contents.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&tmp, path).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_start_reuses_the_ca_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sans = vec!["localhost".to_owned()];
        let first = load_or_create(dir.path(), "stella.local", &sans).expect("first start");
        let second = load_or_create(dir.path(), "stella.local", &sans).expect("second start");
        assert_eq!(first.ca.fingerprint(), second.ca.fingerprint());
        assert_eq!(first.signing_key_pem, second.signing_key_pem);
        for name in ["ca.key", "signing.key"] {
            let mode = std::fs::metadata(dir.path().join("pki").join(name))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
}
