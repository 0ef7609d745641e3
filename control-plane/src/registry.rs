//! The only code that speaks the OCI distribution protocol: resolving an image
//! reference to the digest a release pins.
//!
//! [`oci_client`] does the protocol: URLs, `Accept` headers, the `/v2/` ping, the
//! `WWW-Authenticate` challenge (basic, or the bearer token flow with basic credentials
//! at the token endpoint) and checking a manifest's bytes against its digest. This
//! module adds what it lacks:
//!
//! - Docker's transport rule: HTTPS always; for loopback registries and registries
//!   added with `--insecure`, HTTPS without certificate checks first and plain HTTP
//!   when that fails at the transport level. `oci_client`'s `ClientProtocol` is one
//!   scheme per host with no fallback.
//! - A fresh `oci_client::Client` per call: it keeps the first credentials it sees for
//!   a registry for its whole life, so a shared client would ignore a changed password.
//! - One deadline over the whole resolution (it has per-connection timeouts only).
//! - A check that what came back is a schema 2 manifest or index.
//! - Errors an operator can act on.

use std::fmt;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::domain::{Digest, ImageRef};

/// How long one resolution may take, all attempts and round trips included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for a TCP connection (and TLS handshake) to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a tag may resolve to: image indexes and manifest lists first, so a
/// multi-platform image pins to its index (what `docker pull repo@digest` wants).
const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

/// Resolves image references against registries. Holds no connections or credentials;
/// cheap to share.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    timeout: Duration,
}

/// How to reach one registry: its transport setting and credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAccess {
    /// Plain HTTP allowed (and HTTPS certificates not checked), as Docker's
    /// `insecure-registries`.
    pub insecure: bool,
    /// User name and password, for basic auth or at the token endpoint.
    pub credentials: Option<(String, String)>,
}

/// Why a reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such tag, digest or repository.
    #[error("image {reference} not found in the registry")]
    NotFound {
        /// The reference as given.
        reference: String,
    },
    /// The registry refused the credentials, or asked for some and none are stored.
    #[error("registry {registry} refused access: add credentials with `stella registry add {registry} --username U --password-stdin`")]
    Unauthorized {
        /// Registry host.
        registry: String,
    },
    /// No answer: refused, reset, TLS failure or timeout.
    #[error("registry {registry} is unreachable")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry answered something this client cannot use.
    #[error("registry {registry} answered unexpectedly: {detail}")]
    Protocol {
        /// Registry host.
        registry: String,
        /// What was wrong.
        detail: String,
    },
}

impl RegistryClient {
    /// A client with the [`DEFAULT_TIMEOUT`].
    pub fn new() -> Self {
        Self::with_timeout(DEFAULT_TIMEOUT)
    }

    /// A client whose resolutions give up after `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        RegistryClient { timeout }
    }

    /// Resolves `image` to the digest of its manifest (or index): a tag (default
    /// `latest`) is looked up once; a digest is checked to exist. The manifest's bytes
    /// are hashed and must match the digest the registry names.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        access: &RegistryAccess,
    ) -> Result<Digest, RegistryError> {
        let registry = image.registry.clone();
        let resolution = async {
            if !(access.insecure || image.is_loopback_registry()) {
                return fetch_digest(image, access, Transport::Https).await;
            }
            match fetch_digest(image, access, Transport::HttpsUnverified).await {
                Err(RegistryError::Unreachable { source, .. }) => {
                    tracing::debug!(%registry, error = %source, "no HTTPS answer; trying plain HTTP");
                    fetch_digest(image, access, Transport::Http).await
                }
                other => other,
            }
        };
        let digest = tokio::time::timeout(self.timeout, resolution)
            .await
            .map_err(|_| RegistryError::Unreachable {
                registry: registry.clone(),
                source: format!("no answer within {} s", self.timeout.as_secs_f32()).into(),
            })??;
        tracing::debug!(%registry, image = %image, %digest, "resolved image");
        Ok(digest)
    }
}

impl Default for RegistryClient {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("insecure", &self.insecure)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user.as_str(), "<redacted>")),
            )
            .finish()
    }
}

/// How one attempt reaches the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// HTTPS, certificate checked against the system roots.
    Https,
    /// HTTPS, any certificate (insecure and loopback registries, as Docker).
    HttpsUnverified,
    /// Plain HTTP.
    Http,
}

/// One attempt over one transport.
async fn fetch_digest(
    image: &ImageRef,
    access: &RegistryAccess,
    transport: Transport,
) -> Result<Digest, RegistryError> {
    let registry = image.registry.as_str();
    let reference = match &image.digest {
        Some(digest) => Reference::with_digest(
            registry.to_owned(),
            image.repository.clone(),
            digest.to_string(),
        ),
        None => Reference::with_tag(
            registry.to_owned(),
            image.repository.clone(),
            image.tag_or_latest().to_owned(),
        ),
    };
    let config = ClientConfig {
        protocol: match transport {
            Transport::Http => ClientProtocol::Http,
            Transport::Https | Transport::HttpsUnverified => ClientProtocol::Https,
        },
        accept_invalid_certificates: transport == Transport::HttpsUnverified,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(DEFAULT_TIMEOUT),
        // Resolution never picks a platform: an index pins as itself.
        platform_resolver: None,
        ..ClientConfig::default()
    };
    // `Client::new` would fall back to a default (HTTPS, no timeouts) client on error.
    let client = Client::try_from(config).map_err(|error| classify(error, image))?;
    let auth = match &access.credentials {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let (manifest, digest) = client
        .pull_manifest_raw(&reference, &auth, ACCEPTED_MANIFESTS)
        .await
        .map_err(|error| classify(error, image))?;
    check_manifest(&manifest).map_err(|detail| RegistryError::Protocol {
        registry: registry.to_owned(),
        detail,
    })?;
    Digest::parse(&digest).map_err(|invalid| RegistryError::Protocol {
        registry: registry.to_owned(),
        detail: invalid.0,
    })
}

/// Accepts schema 2 image manifests and indexes (OCI or Docker). Schema 1 manifests
/// are refused: Docker no longer pulls them.
fn check_manifest(body: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        schema_version: i64,
        media_type: Option<String>,
    }
    let versioned: Versioned = serde_json::from_slice(body)
        .map_err(|error| format!("the manifest is not schema 2 JSON: {error}"))?;
    if versioned.schema_version != 2 {
        return Err(format!(
            "manifest schema version {} is not supported (only 2)",
            versioned.schema_version
        ));
    }
    match versioned.media_type {
        Some(media_type) if !ACCEPTED_MANIFESTS.contains(&media_type.as_str()) => Err(format!(
            "manifest media type {media_type} is not an image manifest or index"
        )),
        _ => Ok(()),
    }
}

/// Maps what `oci_client` reports to what the operator can act on.
fn classify(error: OciDistributionError, image: &ImageRef) -> RegistryError {
    let registry = image.registry.clone();
    let not_found = || RegistryError::NotFound {
        reference: image.to_string(),
    };
    match error {
        OciDistributionError::RequestError(source) => RegistryError::Unreachable {
            registry,
            source: Box::new(source),
        },
        OciDistributionError::IoError(source) => RegistryError::Unreachable {
            registry,
            source: Box::new(source),
        },
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            RegistryError::Unauthorized { registry }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|code| {
                matches!(
                    code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else if codes
                .iter()
                .any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                RegistryError::Unauthorized { registry }
            } else {
                let messages: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect();
                RegistryError::Protocol {
                    registry,
                    detail: messages.join("; "),
                }
            }
        }
        OciDistributionError::ServerError { code, message, .. } => match code {
            404 => not_found(),
            401 | 403 => RegistryError::Unauthorized { registry },
            _ => RegistryError::Protocol {
                registry,
                detail: format!("HTTP {code}: {}", first_line(&message)),
            },
        },
        OciDistributionError::DigestError(error) => RegistryError::Protocol {
            registry,
            detail: format!("the manifest does not match its digest: {error}"),
        },
        other => RegistryError::Protocol {
            registry,
            detail: other.to_string(),
        },
    }
}

/// Error pages can be long HTML; one line of them is enough.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    fn image() -> ImageRef {
        ImageRef::parse("127.0.0.1:5000/app:v9").expect("reference")
    }

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: "message".to_owned(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://127.0.0.1:5000/v2/app/manifests/v9".to_owned(),
        }
    }

    #[test]
    fn registry_answers_map_to_operator_errors() {
        let not_found = classify(envelope(OciErrorCode::ManifestUnknown), &image());
        assert_eq!(
            not_found.to_string(),
            "image 127.0.0.1:5000/app:v9 not found in the registry"
        );
        assert!(matches!(
            classify(envelope(OciErrorCode::NameUnknown), &image()),
            RegistryError::NotFound { .. }
        ));
        assert!(matches!(
            classify(envelope(OciErrorCode::Denied), &image()),
            RegistryError::Unauthorized { .. }
        ));
        assert!(matches!(
            classify(envelope(OciErrorCode::Toomanyrequests), &image()),
            RegistryError::Protocol { .. }
        ));
        let head_404 = OciDistributionError::ServerError {
            code: 404,
            url: String::new(),
            message: String::new(),
        };
        assert!(matches!(
            classify(head_404, &image()),
            RegistryError::NotFound { .. }
        ));
        let unauthorized = OciDistributionError::UnauthorizedError { url: String::new() };
        let error = classify(unauthorized, &image());
        assert!(matches!(error, RegistryError::Unauthorized { .. }));
        assert!(error
            .to_string()
            .contains("stella registry add 127.0.0.1:5000"));
        let gateway = OciDistributionError::ServerError {
            code: 502,
            url: String::new(),
            message: "<html>bad gateway\n<body>…".to_owned(),
        };
        assert_eq!(
            classify(gateway, &image()).to_string(),
            "registry 127.0.0.1:5000 answered unexpectedly: HTTP 502: <html>bad gateway"
        );
    }

    #[test]
    fn only_schema_2_manifests_and_indexes_are_accepted() {
        let oci =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert!(check_manifest(oci).is_ok());
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert!(check_manifest(index).is_ok());
        assert!(check_manifest(br#"{"schemaVersion":2}"#).is_ok());
        assert!(check_manifest(br#"{"schemaVersion":1,"name":"app"}"#).is_err());
        let artifact = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert!(check_manifest(artifact).is_err());
        assert!(check_manifest(b"<html>").is_err());
    }

    #[test]
    fn debug_redacts_the_password() {
        let access = RegistryAccess {
            insecure: false,
            credentials: Some(("ci".to_owned(), "hunter2".to_owned())),
        };
        let shown = format!("{access:?}");
        assert!(
            shown.contains("ci") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
