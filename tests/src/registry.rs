//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.x) on a free
//! loopback port, storing blobs in a temp dir, optionally behind htpasswd basic auth.
//! Docker treats 127.0.0.0/8 registries as insecure (plain HTTP) without configuration.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use crate::{free_port, TestDir};

/// Where Debian's `docker-registry` package installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry, killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    port: u16,
    dir: TestDir,
    credentials: Option<(String, String)>,
    _child: tokio::process::Child,
}

impl TestRegistry {
    /// A registry open to anyone.
    pub async fn start() -> anyhow::Result<Self> {
        Self::launch(None).await
    }

    /// A registry that wants `user`/`password` (htpasswd, bcrypt); the docker CLI config
    /// of [`docker_config`](Self::docker_config) is logged in to it.
    pub async fn start_with_basic_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        let registry = Self::launch(Some((user.to_owned(), password.to_owned()))).await?;
        crate::images::docker_cli(
            &["login", &registry.host(), "-u", user, "--password-stdin"],
            Some(&registry.docker_config()),
            Some(password),
        )
        .await
        .context("docker login")?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The basic-auth user and password, if the registry wants them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// A docker CLI config dir (`docker --config DIR`) of this registry's own, so logins
    /// do not leak between tests or into the user's `~/.docker`.
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config")
    }

    /// The registry's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    async fn launch(credentials: Option<(String, String)>) -> anyhow::Result<Self> {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install the Debian package docker-registry (cargo xtask test provisions it)"
        );
        let dir = TestDir::new("registry");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        std::fs::create_dir_all(dir.path().join("docker-config"))?;
        let auth = match &credentials {
            None => String::new(),
            Some((user, password)) => {
                let hash = bcrypt::hash_with_result(password, 5)?
                    .format_for_version(bcrypt::Version::TwoY);
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: stella-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        // A port free a moment ago may be taken by the time the registry binds it: retry.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port().await?;
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                    storage.display()
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let mut child = tokio::process::Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting docker-registry")?;
            match wait_ready(port, &mut child).await {
                Ok(()) => {
                    return Ok(TestRegistry {
                        port,
                        dir,
                        credentials,
                        _child: child,
                    })
                }
                Err(error) => {
                    let _ = child.kill().await;
                    last_error = Some(error);
                }
            }
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("registry did not start"))
            .context(format!("docker-registry did not start; its log: {log}")))
    }
}

/// Waits until `GET /v2/` answers 200 (open) or 401 (basic auth).
async fn wait_ready(port: u16, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v2/");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("docker-registry exited: {status}");
        }
        let response = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        if let Ok(response) = response {
            if matches!(response.status().as_u16(), 200 | 401) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after 20 s waiting until the registry answers {url}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestRegistry {
    /// Pushes a one-layer OCI image (a few bytes of `content`, not a runnable file
    /// system) as `repository:tag` over the distribution API, without Docker, for
    /// targets that never run it (the `sim` kind); returns `HOST/REPOSITORY@DIGEST`.
    /// Only for a registry open to anyone.
    pub async fn push_inert_image(
        &self,
        repository: &str,
        tag: &str,
        content: &str,
    ) -> anyhow::Result<String> {
        const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
        let http = reqwest::Client::new();
        let base = format!("http://{}", self.host());
        let layer = format!("stella test layer: {content}").into_bytes();
        let layer_digest = push_blob(&http, &base, repository, &layer).await?;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))?;
        let config_digest = push_blob(&http, &base, repository, &config).await?;
        let manifest = serde_json::to_vec(&serde_json::json!({
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
        let url = format!("{base}/v2/{repository}/manifests/{tag}");
        let response = http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == reqwest::StatusCode::CREATED,
            "PUT {url}: {}",
            response.status()
        );
        Ok(format!(
            "{}/{repository}@{}",
            self.host(),
            sha256_digest(&manifest)
        ))
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A monolithic blob upload: POST for a session, PUT the bytes with their digest.
async fn push_blob(
    http: &reqwest::Client,
    base: &str,
    repository: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let digest = sha256_digest(bytes);
    let start = format!("{base}/v2/{repository}/blobs/uploads/");
    let response = http.post(&start).send().await?;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::ACCEPTED,
        "POST {start}: {}",
        response.status()
    );
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .context("no Location for the upload")?
        .to_str()?;
    let mut url = reqwest::Url::parse(&start)?.join(location)?;
    url.query_pairs_mut().append_pair("digest", &digest);
    let response = http
        .put(url.as_str())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::CREATED,
        "PUT blob {digest}: {}",
        response.status()
    );
    Ok(digest)
}
