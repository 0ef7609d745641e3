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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use stella_decision::offline::referenced_blobs;

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

/// An image fetched by digest: its manifest (or index) and what it references.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its bytes.
    pub manifest: Vec<u8>,
    /// Every blob under it that was fetched, by digest: child manifests of an index,
    /// configs and layers. Blobs the caller already had are not fetched again.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// What pushing one image did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Blobs and manifests uploaded.
    pub uploaded: usize,
    /// Blobs and manifests the registry already had (found by `HEAD`).
    pub present: usize,
    /// Whether the tag was set (or moved) now.
    pub tagged: bool,
}

impl RegistryClient {
    /// Fetches the image `image` pins by digest: the manifest or index kept whole, and
    /// every blob it reaches (child manifests, configs, layers), each checked against
    /// its descriptor's digest and size. Blobs whose digest is in `have` are not
    /// fetched (layers shared with images fetched before).
    pub async fn pull_image(
        &self,
        image: &ImageRef,
        access: &RegistryAccess,
        have: &BTreeSet<String>,
    ) -> Result<PulledImage, RegistryError> {
        let registry = image.registry.as_str();
        let Some(digest) = image.digest.clone() else {
            return Err(protocol(
                registry,
                format!("{image} is not pinned by digest"),
            ));
        };
        let (session, manifest) = Session::open(image, access, digest.as_str()).await?;
        let media_type = stella_decision::offline::declared_media_type(&manifest)
            .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_owned());
        let mut blobs = BTreeMap::new();
        let mut queue = referenced_blobs(&manifest).map_err(|e| protocol(registry, e.0))?;
        while let Some(blob) = queue.pop() {
            if have.contains(&blob.digest) || blobs.contains_key(&blob.digest) {
                continue;
            }
            let bytes = if blob.is_manifest {
                let (bytes, _) = session.manifest(&blob.digest).await?;
                queue.extend(referenced_blobs(&bytes).map_err(|e| protocol(registry, e.0))?);
                bytes
            } else {
                session.blob(&blob.digest).await?
            };
            if bytes.len() as u64 != blob.size {
                return Err(protocol(
                    registry,
                    format!(
                        "blob {} is {} bytes, its descriptor says {}",
                        blob.digest,
                        bytes.len(),
                        blob.size
                    ),
                ));
            }
            blobs.insert(blob.digest, bytes);
        }
        Ok(PulledImage {
            digest,
            media_type,
            manifest,
            blobs,
        })
    }

    /// Pushes an image into `target`'s registry and repository by digest: every blob
    /// (skipped when `HEAD` finds it), child manifests, then the manifest itself by
    /// digest; and the tag `target` names, if it names one. `blob` gives the bytes of
    /// a digest.
    pub async fn push_image(
        &self,
        target: &ImageRef,
        access: &RegistryAccess,
        manifest: &[u8],
        media_type: &str,
        blob: &(dyn Fn(&str) -> Option<Vec<u8>> + Sync),
    ) -> Result<PushOutcome, RegistryError> {
        let registry = target.registry.as_str();
        let digest = stella_decision::sha256_id(manifest);
        let session = Session::connect(target, access).await?;
        let mut outcome = PushOutcome::default();
        // Depth first, children before parents, so a registry never sees a manifest
        // whose blobs it lacks.
        let mut order: Vec<(String, Option<String>, bool)> = Vec::new();
        let mut stack = vec![(digest.clone(), Some(media_type.to_owned()), true, false)];
        let mut seen = BTreeSet::new();
        while let Some((blob_digest, blob_type, is_manifest, expanded)) = stack.pop() {
            if expanded {
                order.push((blob_digest, blob_type, is_manifest));
                continue;
            }
            if !seen.insert(blob_digest.clone()) {
                continue;
            }
            stack.push((blob_digest.clone(), blob_type, is_manifest, true));
            if is_manifest {
                let bytes = if blob_digest == digest {
                    manifest.to_vec()
                } else {
                    blob(&blob_digest)
                        .ok_or_else(|| protocol(registry, format!("no bytes for {blob_digest}")))?
                };
                for child in referenced_blobs(&bytes).map_err(|e| protocol(registry, e.0))? {
                    stack.push((child.digest, child.media_type, child.is_manifest, false));
                }
            }
        }
        for (blob_digest, blob_type, is_manifest) in order {
            let bytes = if blob_digest == digest {
                manifest.to_vec()
            } else {
                blob(&blob_digest)
                    .ok_or_else(|| protocol(registry, format!("no bytes for {blob_digest}")))?
            };
            if is_manifest {
                if session.manifest_exists(&blob_digest).await? {
                    outcome.present += 1;
                    continue;
                }
                let content_type = blob_type
                    .or_else(|| stella_decision::offline::declared_media_type(&bytes))
                    .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_owned());
                session
                    .put_manifest(Some(&blob_digest), None, bytes, &content_type)
                    .await?;
            } else {
                if session.blob_exists(&blob_digest).await? {
                    outcome.present += 1;
                    continue;
                }
                session.put_blob(&blob_digest, &bytes).await?;
            }
            outcome.uploaded += 1;
        }
        if let Some(tag) = &target.tag {
            let current = session.tag_digest(tag).await?;
            if current.as_deref() != Some(digest.as_str()) {
                session
                    .put_manifest(None, Some(tag), manifest.to_vec(), media_type)
                    .await?;
                outcome.tagged = true;
            }
        }
        Ok(outcome)
    }
}

/// A client bound to one registry, repository, credentials and the transport that
/// answered.
struct Session {
    client: Client,
    auth: RegistryAuth,
    transport: Transport,
    image: ImageRef,
    http: reqwest::Client,
    /// The `Authorization` header `HEAD`s send, once asked (`Some(None)`: none needed).
    authorization: tokio::sync::Mutex<Option<Option<String>>>,
}

impl Session {
    /// Finds the transport that answers (Docker's rule, as [`RegistryClient::resolve`])
    /// by fetching the manifest `digest`, and returns it with the session.
    async fn open(
        image: &ImageRef,
        access: &RegistryAccess,
        digest: &str,
    ) -> Result<(Session, Vec<u8>), RegistryError> {
        let mut last = None;
        for transport in transports(image, access) {
            let session = Session::new(image, access, transport)?;
            match session.manifest(digest).await {
                Ok((bytes, _)) => return Ok((session, bytes)),
                Err(error @ RegistryError::Unreachable { .. }) => last = Some(error),
                Err(other) => return Err(other),
            }
        }
        Err(last.unwrap_or_else(|| protocol(&image.registry, "no transport to try".to_owned())))
    }

    /// Finds the transport that answers with a ping of `/v2/`.
    async fn connect(image: &ImageRef, access: &RegistryAccess) -> Result<Session, RegistryError> {
        let mut last = None;
        for transport in transports(image, access) {
            let session = Session::new(image, access, transport)?;
            let url = format!("{}/v2/", session.base());
            match session.http.get(&url).send().await {
                Ok(_) => return Ok(session),
                Err(error) => {
                    last = Some(RegistryError::Unreachable {
                        registry: image.registry.clone(),
                        source: Box::new(error),
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| protocol(&image.registry, "no transport to try".to_owned())))
    }

    fn new(
        image: &ImageRef,
        access: &RegistryAccess,
        transport: Transport,
    ) -> Result<Session, RegistryError> {
        let config = ClientConfig {
            protocol: match transport {
                Transport::Http => ClientProtocol::Http,
                Transport::Https | Transport::HttpsUnverified => ClientProtocol::Https,
            },
            accept_invalid_certificates: transport == Transport::HttpsUnverified,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(DEFAULT_TIMEOUT),
            platform_resolver: None,
            // The distribution spec's monolithic upload (POST, then one PUT): what
            // every registry supports.
            use_monolithic_push: true,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|error| classify(error, image))?;
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(transport == Transport::HttpsUnverified)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|error| RegistryError::Unreachable {
                registry: image.registry.clone(),
                source: Box::new(error),
            })?;
        let auth = match &access.credentials {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Session {
            client,
            auth,
            transport,
            image: image.clone(),
            http,
            authorization: tokio::sync::Mutex::new(None),
        })
    }

    fn base(&self) -> String {
        let scheme = match self.transport {
            Transport::Http => "http",
            Transport::Https | Transport::HttpsUnverified => "https",
        };
        format!("{scheme}://{}", self.image.registry)
    }

    fn reference(&self, digest: Option<&str>, tag: Option<&str>) -> Reference {
        let registry = self.image.registry.clone();
        let repository = self.image.repository.clone();
        match (digest, tag) {
            (Some(digest), _) => Reference::with_digest(registry, repository, digest.to_owned()),
            (None, tag) => {
                Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
            }
        }
    }

    /// A manifest by digest, checked against it.
    async fn manifest(&self, digest: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let reference = self.reference(Some(digest), None);
        let (bytes, got) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|error| classify(error, &self.image))?;
        check_manifest(&bytes).map_err(|detail| protocol(&self.image.registry, detail))?;
        if stella_decision::sha256_id(&bytes) != digest {
            return Err(protocol(
                &self.image.registry,
                format!("manifest {digest} does not match its digest (registry said {got})"),
            ));
        }
        Ok((bytes, got))
    }

    /// A blob by digest, checked against it by the client.
    async fn blob(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let reference = self.reference(Some(digest), None);
        let mut bytes = Vec::new();
        self.client
            .pull_blob(&reference, digest, &mut bytes)
            .await
            .map_err(|error| classify(error, &self.image))?;
        Ok(bytes)
    }

    /// The `Authorization` header for a `HEAD`, if the registry wants one: asked once
    /// per session, again after a 401 (a bearer token expired).
    async fn authorization(&self, fresh: bool) -> Result<Option<String>, RegistryError> {
        let mut cached = self.authorization.lock().await;
        if let (Some(value), false) = (cached.as_ref(), fresh) {
            return Ok(value.clone());
        }
        let value = self.ask_authorization().await?;
        *cached = Some(value.clone());
        Ok(value)
    }

    async fn ask_authorization(&self) -> Result<Option<String>, RegistryError> {
        let reference = self.reference(None, None);
        let token = self
            .client
            .auth(&reference, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|error| classify(error, &self.image))?;
        Ok(match (token, &self.auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(user, password)) => {
                use base64::Engine as _;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {encoded}"))
            }
            (None, _) => None,
        })
    }

    /// `HEAD` on a URL under the repository: 200 means present, 404 absent.
    async fn head(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Option<reqwest::header::HeaderMap>, RegistryError> {
        let url = format!("{}/v2/{}/{path}", self.base(), self.image.repository);
        let mut response = None;
        for fresh in [false, true] {
            let mut request = self.http.head(&url);
            if let Some(value) = self.authorization(fresh).await? {
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            let answer = request
                .send()
                .await
                .map_err(|error| RegistryError::Unreachable {
                    registry: self.image.registry.clone(),
                    source: Box::new(error),
                })?;
            let unauthorized = answer.status() == reqwest::StatusCode::UNAUTHORIZED;
            response = Some(answer);
            if !unauthorized {
                break;
            }
        }
        let Some(response) = response else {
            return Err(protocol(
                &self.image.registry,
                format!("HEAD {url}: no answer"),
            ));
        };
        match response.status().as_u16() {
            200 => Ok(Some(response.headers().clone())),
            404 => Ok(None),
            401 | 403 => Err(RegistryError::Unauthorized {
                registry: self.image.registry.clone(),
            }),
            code => Err(protocol(
                &self.image.registry,
                format!("HEAD {url}: HTTP {code}"),
            )),
        }
    }

    async fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        Ok(self.head(&format!("blobs/{digest}"), None).await?.is_some())
    }

    async fn manifest_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let accept = ACCEPTED_MANIFESTS.join(", ");
        Ok(self
            .head(&format!("manifests/{digest}"), Some(&accept))
            .await?
            .is_some())
    }

    /// The digest a tag points at, if the tag exists.
    async fn tag_digest(&self, tag: &str) -> Result<Option<String>, RegistryError> {
        let accept = ACCEPTED_MANIFESTS.join(", ");
        Ok(self
            .head(&format!("manifests/{tag}"), Some(&accept))
            .await?
            .and_then(|headers| {
                headers
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            }))
    }

    async fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let reference = self.reference(Some(digest), None);
        self.client
            .push_blob(&reference, bytes, digest)
            .await
            .map_err(|error| classify(error, &self.image))?;
        Ok(())
    }

    async fn put_manifest(
        &self,
        digest: Option<&str>,
        tag: Option<&str>,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let reference = self.reference(digest, tag);
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|_| {
            protocol(
                &self.image.registry,
                format!("media type {media_type:?} is not a header value"),
            )
        })?;
        self.client
            .push_manifest_raw(&reference, bytes, content_type)
            .await
            .map_err(|error| classify(error, &self.image))?;
        Ok(())
    }
}

/// The transports to try, in order: Docker's rule.
fn transports(image: &ImageRef, access: &RegistryAccess) -> Vec<Transport> {
    if access.insecure || image.is_loopback_registry() {
        vec![Transport::HttpsUnverified, Transport::Http]
    } else {
        vec![Transport::Https]
    }
}

fn protocol(registry: &str, detail: String) -> RegistryError {
    RegistryError::Protocol {
        registry: registry.to_owned(),
        detail,
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
pub(crate) fn check_manifest(body: &[u8]) -> Result<(), String> {
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
