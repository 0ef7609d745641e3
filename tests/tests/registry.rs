//! The registry client (`stella_control_plane::registry`) against the real Debian
//! `docker-registry`: open, behind htpasswd basic auth, and behind token auth served by
//! the [`TokenServer`] test double. Content is pushed by hand over the distribution API
//! (blobs, then a manifest), so each test knows the digest to expect: the SHA-256 of the
//! manifest bytes it PUT.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use stella_control_plane::domain::ImageRef;
use stella_control_plane::registry::{RegistryAccess, RegistryClient, RegistryError};
use stella_tests::registry::{TestRegistry, REGISTRY_BIN};
use stella_tests::token_server::TokenServer;
use stella_tests::{free_port, init_tracing, TestDir};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MISSING_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn a_tag_resolves_to_the_digest_of_the_manifest_pushed() -> anyhow::Result<()> {
    init_tracing();
    let registry = TestRegistry::start().await?;
    let host = registry.host();
    let pusher = Pusher::new(&host, None);
    let v1 = pusher.image("team/app", "v1", "one").await?;
    let client = RegistryClient::new();

    let resolved = client
        .resolve(&image(&format!("{host}/team/app:v1")), &open())
        .await?;
    assert_eq!(resolved.as_str(), v1);

    // The tag moves; the resolution follows it (a release pins whatever it was then).
    let v2 = pusher.image("team/app", "v1", "two").await?;
    assert_ne!(v1, v2);
    let moved = client
        .resolve(&image(&format!("{host}/team/app:v1")), &open())
        .await?;
    assert_eq!(moved.as_str(), v2);

    // No tag means `latest`.
    let latest = pusher.image("team/app", "latest", "latest").await?;
    let resolved = client
        .resolve(&image(&format!("{host}/team/app")), &open())
        .await?;
    assert_eq!(resolved.as_str(), latest);
    Ok(())
}

#[tokio::test]
async fn a_digest_reference_is_checked_to_exist() -> anyhow::Result<()> {
    init_tracing();
    let registry = TestRegistry::start().await?;
    let host = registry.host();
    let pusher = Pusher::new(&host, None);
    let v1 = pusher.image("team/app", "v1", "one").await?;
    let v2 = pusher.image("team/app", "v2", "two").await?;
    let client = RegistryClient::new();

    let resolved = client
        .resolve(&image(&format!("{host}/team/app@{v1}")), &open())
        .await?;
    assert_eq!(resolved.as_str(), v1);
    // With both, the digest wins, as with Docker: the tag is not consulted.
    let both = client
        .resolve(&image(&format!("{host}/team/app:v2@{v1}")), &open())
        .await?;
    assert_eq!(both.as_str(), v1);
    assert_ne!(both.as_str(), v2);

    let missing = format!("{host}/team/app@{MISSING_DIGEST}");
    let error = client
        .resolve(&image(&missing), &open())
        .await
        .expect_err("missing digest");
    assert!(matches!(error, RegistryError::NotFound { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("image {missing} not found in the registry")
    );
    Ok(())
}

#[tokio::test]
async fn missing_tags_and_repositories_are_not_found() -> anyhow::Result<()> {
    init_tracing();
    let registry = TestRegistry::start().await?;
    let host = registry.host();
    Pusher::new(&host, None)
        .image("team/app", "v1", "one")
        .await?;
    let client = RegistryClient::new();
    for missing in [
        format!("{host}/team/app:v9"),
        format!("{host}/team/app"),
        format!("{host}/team/nothing:v1"),
    ] {
        let error = client
            .resolve(&image(&missing), &open())
            .await
            .expect_err(&missing);
        assert!(
            matches!(error, RegistryError::NotFound { .. }),
            "{missing}: {error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("image {missing} not found in the registry")
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_index_tag_resolves_to_the_index_digest() -> anyhow::Result<()> {
    init_tracing();
    let registry = TestRegistry::start().await?;
    let host = registry.host();
    let pusher = Pusher::new(&host, None);
    let amd64 = pusher.image("team/multi", "amd64", "amd64").await?;
    let arm64 = pusher.image("team/multi", "arm64", "arm64").await?;
    let index = pusher
        .index("team/multi", "v1", &[(&amd64, "amd64"), (&arm64, "arm64")])
        .await?;

    let resolved = RegistryClient::new()
        .resolve(&image(&format!("{host}/team/multi:v1")), &open())
        .await?;
    assert_eq!(
        resolved.as_str(),
        index,
        "an index pins as itself, not as one platform"
    );
    Ok(())
}

#[tokio::test]
async fn basic_auth_needs_the_credentials() -> anyhow::Result<()> {
    init_tracing();
    let registry = TestRegistry::start_with_basic_auth("ci", "s3cret-pass").await?;
    let host = registry.host();
    let pusher = Pusher::new(&host, Some(basic("ci", "s3cret-pass")));
    let v1 = pusher.image("team/app", "v1", "one").await?;
    let client = RegistryClient::new();
    let reference = image(&format!("{host}/team/app:v1"));

    let resolved = client
        .resolve(&reference, &with_credentials("ci", "s3cret-pass"))
        .await?;
    assert_eq!(resolved.as_str(), v1);

    for (what, access) in [
        ("no credentials", open()),
        ("a wrong password", with_credentials("ci", "wrong")),
    ] {
        let error = client.resolve(&reference, &access).await.expect_err(what);
        assert!(
            matches!(error, RegistryError::Unauthorized { .. }),
            "{what}: {error:?}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("registry {host} refused access")),
            "{error}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn token_auth_goes_through_the_token_server() -> anyhow::Result<()> {
    init_tracing();
    let tokens = TokenServer::start(&[("ci", "s3cret-pass")]).await?;
    let dir = TestDir::new("registry-token");
    let auth = tokens.registry_auth_config(&dir.path().join("token-ca.pem"))?;
    let registry = ConfiguredRegistry::start(&dir, "127.0.0.1".parse()?, &auth).await?;
    let host = registry.host.clone();
    let push_token = tokens.mint("ci", "team/app", &["pull", "push"]);
    let pusher = Pusher::new(&host, Some(format!("Bearer {push_token}")));
    let v1 = pusher.image("team/app", "v1", "one").await?;
    let client = RegistryClient::new();
    let reference = image(&format!("{host}/team/app:v1"));

    let resolved = client
        .resolve(&reference, &with_credentials("ci", "s3cret-pass"))
        .await?;
    assert_eq!(resolved.as_str(), v1);
    let asked = tokens.requests();
    assert!(
        asked.iter().any(|r| r.subject.as_deref() == Some("ci")
            && r.issued
            && r.scopes == ["repository:team/app:pull"]),
        "the client should ask for a pull token with its credentials: {asked:?}"
    );

    for (what, access) in [
        ("no credentials", open()),
        ("a wrong password", with_credentials("ci", "wrong")),
    ] {
        let error = client.resolve(&reference, &access).await.expect_err(what);
        assert!(
            matches!(error, RegistryError::Unauthorized { .. }),
            "{what}: {error:?}"
        );
    }
    let asked = tokens.requests();
    assert!(
        asked.iter().any(|r| r.subject.is_none() && r.issued),
        "an anonymous token (granting nothing) should have been asked for: {asked:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_registry_fails_fast() -> anyhow::Result<()> {
    init_tracing();
    let port = free_port().await?;
    let reference = image(&format!("127.0.0.1:{port}/team/app:v1"));
    let started = Instant::now();
    let error = RegistryClient::new()
        .resolve(&reference, &open())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(error, RegistryError::Unreachable { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("registry 127.0.0.1:{port} is unreachable")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_registry_times_out() -> anyhow::Result<()> {
    init_tracing();
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let error = RegistryClient::with_timeout(Duration::from_secs(1))
        .resolve(&image(&format!("{addr}/team/app:v1")), &open())
        .await
        .expect_err("no answer");
    silent.abort();
    assert!(
        matches!(error, RegistryError::Unreachable { .. }),
        "{error:?}"
    );
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert!(chain.contains("no answer within 1 s"), "{chain}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn plain_http_needs_loopback_or_insecure() -> anyhow::Result<()> {
    init_tracing();
    let ip = non_loopback_ip().context("this test needs a non-loopback IPv4 address")?;
    let dir = TestDir::new("registry-remote");
    let registry = ConfiguredRegistry::start(&dir, ip, "").await?;
    let host = registry.host.clone();
    let v1 = Pusher::new(&host, None)
        .image("team/app", "v1", "one")
        .await?;
    let reference = image(&format!("{host}/team/app:v1"));
    assert!(!reference.is_loopback_registry());
    let client = RegistryClient::new();

    // HTTPS only: the registry speaks plain HTTP, so the TLS handshake fails.
    let error = client
        .resolve(&reference, &open())
        .await
        .expect_err("https only");
    assert!(
        matches!(error, RegistryError::Unreachable { .. }),
        "{error:?}"
    );

    let insecure = RegistryAccess {
        insecure: true,
        credentials: None,
    };
    assert_eq!(client.resolve(&reference, &insecure).await?.as_str(), v1);
    Ok(())
}

#[tokio::test]
async fn the_digest_is_checked_against_the_manifest_bytes() -> anyhow::Result<()> {
    init_tracing();
    let double = ManifestDouble::start().await?;
    let host = double.addr.to_string();
    let client = RegistryClient::new();
    let body_digest = sha256_digest(ManifestDouble::BODY.as_bytes());

    // Named by the header, or computed from the body when there is none.
    for tag in ["honest", "headerless"] {
        let resolved = client
            .resolve(&image(&format!("{host}/team/app:{tag}")), &open())
            .await?;
        assert_eq!(resolved.as_str(), body_digest, "{tag}");
    }
    // A header naming other bytes, or a body that is not the digest asked for.
    for reference in [
        format!("{host}/team/app:lying"),
        format!("{host}/team/app@{MISSING_DIGEST}"),
    ] {
        let error = client
            .resolve(&image(&reference), &open())
            .await
            .expect_err(&reference);
        assert!(
            matches!(error, RegistryError::Protocol { .. }),
            "{reference}: {error:?}"
        );
        assert!(
            error.to_string().contains("does not match its digest"),
            "{error}"
        );
    }
    // Every manifest kind Docker pulls is acceptable.
    let accept = double
        .accept
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for media_type in [
        OCI_INDEX,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(accept.contains(media_type), "Accept: {accept}");
    }
    Ok(())
}

fn image(text: &str) -> ImageRef {
    ImageRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn open() -> RegistryAccess {
    RegistryAccess::default()
}

fn with_credentials(user: &str, password: &str) -> RegistryAccess {
    RegistryAccess {
        insecure: false,
        credentials: Some((user.to_owned(), password.to_owned())),
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This host's address on its default route (no packet is sent).
fn non_loopback_ip() -> anyhow::Result<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket
        .connect("192.0.2.255:9")
        .or_else(|_| socket.connect("198.51.100.1:9"))?;
    let ip = socket.local_addr()?.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        bail!("only loopback addresses here ({ip})");
    }
    Ok(ip)
}

/// Pushes content over the distribution API, as `docker push` would, with an optional
/// `Authorization` header.
struct Pusher {
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Pusher {
    fn new(host: &str, authorization: Option<String>) -> Self {
        Pusher {
            http: reqwest::Client::new(),
            base: format!("http://{host}"),
            authorization,
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.authorization {
            Some(value) => request.header(reqwest::header::AUTHORIZATION, value),
            None => request,
        }
    }

    /// A one-layer OCI image under `tag`; returns the manifest digest.
    async fn image(&self, repository: &str, tag: &str, content: &str) -> anyhow::Result<String> {
        let layer = format!("stella test layer: {content}").into_bytes();
        let layer_digest = self.blob(repository, &layer).await?;
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))?;
        let config_digest = self.blob(repository, &config).await?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        self.manifest(repository, tag, OCI_MANIFEST, &manifest)
            .await
    }

    /// An OCI index of `(manifest digest, architecture)` under `tag`; returns its digest.
    async fn index(
        &self,
        repository: &str,
        tag: &str,
        manifests: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let mut entries = Vec::new();
        for (digest, architecture) in manifests {
            let size = self.manifest_size(repository, digest).await?;
            entries.push(json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": {"architecture": architecture, "os": "linux"},
            }));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        }))?;
        self.manifest(repository, tag, OCI_INDEX, &index).await
    }

    /// Monolithic upload: POST for a session, PUT the bytes with their digest.
    async fn blob(&self, repository: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let start = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let response = self.request(reqwest::Method::POST, &start).send().await?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "POST {start}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .context("no Location for the upload")?
            .to_str()?;
        let mut url = reqwest::Url::parse(&start)?.join(location)?;
        url.query_pairs_mut().append_pair("digest", &digest);
        let response = self
            .request(reqwest::Method::PUT, url.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!(
                "PUT blob {digest}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        Ok(digest)
    }

    /// PUTs a manifest; checks the registry names the digest we computed.
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let response = self
            .request(reqwest::Method::PUT, &url)
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!(
                "PUT {url}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        let named = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(named, digest, "the registry's digest of what we PUT");
        Ok(digest)
    }

    async fn manifest_size(&self, repository: &str, digest: &str) -> anyhow::Result<u64> {
        let url = format!("{}/v2/{repository}/manifests/{digest}", self.base);
        let response = self
            .request(reqwest::Method::GET, &url)
            .header(reqwest::header::ACCEPT, OCI_MANIFEST)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.bytes().await?.len() as u64)
    }
}

/// A `docker-registry` with a given `auth:` section on a given address, for what
/// [`TestRegistry`] does not offer (token auth, a non-loopback address). Killed on drop.
struct ConfiguredRegistry {
    host: String,
    _child: tokio::process::Child,
}

impl ConfiguredRegistry {
    async fn start(dir: &TestDir, ip: IpAddr, auth: &str) -> anyhow::Result<Self> {
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let log_path = dir.path().join("registry.log");
        // A port free a moment ago may be taken when the registry binds it: retry.
        for _ in 0..5 {
            let port = {
                let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
                listener.local_addr()?.port()
            };
            let host = format!("{ip}:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n{auth}",
                    storage.display()
                ),
            )?;
            let log = std::fs::File::create(&log_path)?;
            let mut child = tokio::process::Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting docker-registry")?;
            if wait_ready(&host, &mut child).await {
                return Ok(ConfiguredRegistry {
                    host,
                    _child: child,
                });
            }
            let _ = child.kill().await;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("docker-registry did not start; its log:\n{log}")
    }
}

/// Whether `GET /v2/` answers 200 or 401 within 20 s (false if the registry exits).
async fn wait_ready(host: &str, child: &mut tokio::process::Child) -> bool {
    let http = reqwest::Client::new();
    let url = format!("http://{host}/v2/");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let response = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        if response.is_ok_and(|r| matches!(r.status().as_u16(), 200 | 401)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A registry double that serves one manifest with an honest, a lying or no
/// `Docker-Content-Digest` header, and remembers the `Accept` header it was sent.
struct ManifestDouble {
    addr: std::net::SocketAddr,
    accept: std::sync::Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl ManifestDouble {
    const BODY: &'static str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

    async fn start() -> anyhow::Result<Self> {
        use axum::extract::{Path, State};
        use axum::http::{header, HeaderMap, StatusCode};
        use axum::response::IntoResponse;

        type Seen = std::sync::Arc<std::sync::Mutex<String>>;
        async fn manifest(
            State(seen): State<Seen>,
            Path(reference): Path<String>,
            headers: HeaderMap,
        ) -> axum::response::Response {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            *seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = accept.to_owned();
            let body = ManifestDouble::BODY;
            let named = match reference.as_str() {
                "headerless" => None,
                "lying" => Some(sha256_digest(b"other bytes")),
                _ => Some(sha256_digest(body.as_bytes())),
            };
            let mut response =
                (StatusCode::OK, [(header::CONTENT_TYPE, OCI_MANIFEST)], body).into_response();
            if let Some(named) = named {
                if let Ok(value) = named.parse() {
                    response
                        .headers_mut()
                        .insert("docker-content-digest", value);
                }
            }
            response
        }

        let accept = Seen::default();
        let app = axum::Router::new()
            .route("/v2/", axum::routing::get(|| async { "{}" }))
            .route(
                "/v2/team/app/manifests/{reference}",
                axum::routing::get(manifest),
            )
            .with_state(accept.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ManifestDouble { addr, accept, task })
    }
}

impl Drop for ManifestDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}
