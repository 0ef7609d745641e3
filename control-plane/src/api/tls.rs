//! TLS of the REST API. The certificate is either issued by the server's own CA for
//! `api_names` (again at every start and on reload, always for the same key, kept in
//! `<data_dir>/api-key.pem`, so the key an agent install command pins stays valid across
//! restarts), or the operator's (`api_cert`,
//! `api_key`, read again on reload). It sits behind a rustls certificate resolver, so a
//! reload swaps what new handshakes get while open connections keep theirs.
//!
//! The issued chain is `[leaf, CA]`: a client that pins the CA at first use (the CLI)
//! finds it in the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use stella_pki::{CertificateAuthority, Fingerprint};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::error::{AppError, ErrorKind};

/// The key of the API certificate the server issues itself, in its data dir.
const ISSUED_KEY_FILE: &str = "api-key.pem";

/// Validity of the API certificate the server issues itself.
const ISSUED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the API's certificate comes from.
#[derive(Debug, Clone)]
enum Source {
    /// Issued by the server's CA for these names, for the key in this file (made on
    /// first use).
    Issued { names: Vec<String>, key: PathBuf },
    /// The operator's files.
    Files { cert: PathBuf, key: PathBuf },
}

/// The API's TLS: the acceptor and the certificate it presents.
pub struct ApiTls {
    resolver: Arc<Resolver>,
    source: Source,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls")
            .field("source", &self.source)
            .field("certificate", &self.certificate_fingerprint().as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Resolver {
    current: parking_lot::RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

impl ApiTls {
    /// The API's TLS per `config`; `None` when it serves plain HTTP. `listen` is the
    /// bound address (a specific IP is added to the default names).
    pub fn load(
        config: &ServerConfig,
        ca: &CertificateAuthority,
        listen: std::net::SocketAddr,
    ) -> Result<Option<Self>, AppError> {
        if config.api_plain_http {
            return Ok(None);
        }
        let key = config.data_dir.join(ISSUED_KEY_FILE);
        let source = match (&config.api_cert, &config.api_key) {
            (Some(cert), Some(key)) => Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if config.api_names.is_empty() => Source::Issued {
                names: crate::bootstrap::server_sans(&[], listen),
                key,
            },
            _ => Source::Issued {
                names: config.api_names.clone(),
                key,
            },
        };
        let key = certified_key(&source, ca)?;
        let resolver = Arc::new(Resolver {
            current: parking_lot::RwLock::new(key),
        });
        let server_config = stella_pki::api_server_tls_config(resolver.clone())
            .map_err(|error| AppError::internal("building the API's TLS config", &error))?;
        Ok(Some(ApiTls {
            resolver,
            source,
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
        }))
    }

    /// Reads the operator's certificate again (or issues a new one from the CA) and
    /// serves it to new connections; open ones keep theirs. On error the current
    /// certificate stays. Returns the new leaf's fingerprint.
    pub fn reload(&self, ca: &CertificateAuthority) -> Result<Fingerprint, AppError> {
        let key = certified_key(&self.source, ca)?;
        *self.resolver.current.write() = key;
        let fingerprint = self.certificate_fingerprint();
        tracing::info!(certificate = %fingerprint, "API certificate reloaded");
        Ok(fingerprint)
    }

    /// SHA-256 of the leaf certificate served now.
    pub fn certificate_fingerprint(&self) -> Fingerprint {
        let current = self.resolver.current.read().clone();
        current.cert.first().map_or_else(
            || Fingerprint::of_der(&[]),
            |leaf| Fingerprint::of_der(leaf),
        )
    }

    /// curl's `--pinnedpubkey` value of the key served now (see
    /// [`stella_pki::public_key_pin`]); what the agent install command pins.
    pub fn public_key_pin(&self) -> Option<String> {
        let current = self.resolver.current.read().clone();
        let leaf = current.cert.first()?;
        stella_pki::public_key_pin(leaf).ok()
    }

    /// The acceptor the listener wraps connections in.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

fn certified_key(
    source: &Source,
    ca: &CertificateAuthority,
) -> Result<Arc<CertifiedKey>, AppError> {
    match source {
        Source::Issued { names, key } => {
            let kept = match std::fs::read_to_string(key) {
                Ok(pem) => Some(pem),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => {
                    return Err(AppError::internal(
                        &format!("reading the API key {}", key.display()),
                        &error,
                    ))
                }
            };
            let issued = match &kept {
                Some(pem) => ca.issue_server_certificate_for_key(names, ISSUED_VALIDITY, pem),
                None => ca.issue_server_certificate(names, ISSUED_VALIDITY),
            }
            .map_err(|error| {
                AppError::new(
                    ErrorKind::InvalidArgument,
                    "api_certificate",
                    format!("cannot issue the API certificate for {names:?}: {error}"),
                )
            })?;
            if kept.is_none() {
                crate::bootstrap::write_secret(key, &issued.key_pem).map_err(|error| {
                    AppError::internal(&format!("writing the API key {}", key.display()), &error)
                })?;
            }
            let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
            stella_pki::api_certified_key(&chain, &issued.key_pem)
                .map_err(|error| AppError::internal("loading the issued API certificate", &error))
        }
        Source::Files { cert, key } => {
            let chain = read(cert)?;
            let key_pem = read(key)?;
            // The key's text is never part of an error: only the file's name.
            stella_pki::api_certified_key(&chain, &key_pem).map_err(|error| {
                AppError::new(
                    ErrorKind::InvalidArgument,
                    "api_certificate",
                    format!(
                        "cannot use {} with {} as the API certificate: {error}",
                        cert.display(),
                        key.display()
                    ),
                )
            })
        }
    }
}

fn read(path: &Path) -> Result<String, AppError> {
    std::fs::read_to_string(path).map_err(|error| {
        AppError::new(
            ErrorKind::InvalidArgument,
            "api_certificate",
            format!("cannot read {}: {error}", path.display()),
        )
    })
}
