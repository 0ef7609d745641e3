//! Offline kits end to end (docs/offline.md): a release of two images sharing a layer,
//! with a scan report, VEX and a decision, bundled from one control plane and its
//! registry with the real `stella` binary; verified with both stopped; imported into a
//! second control plane and registry; deployed from there to the real Docker engine
//! through a real agent. Also: bundling is byte-for-byte deterministic, importing twice
//! changes nothing, and a kit with a byte changed, a file missing or a foreign
//! signature is refused naming the culprit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use stella_decision::dsse::SigningKey;
use stella_decision::offline::Kit;
use stella_tests::images::{docker_cli, push_image, ContainerCleanup, WebImages, WEB_HEALTH_CMD};
use stella_tests::registry::TestRegistry;
use stella_tests::{stella, stella_with_input, TestAgent, TestDir, TestServer};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

/// The manifest digest the web scan fixtures were written for.
const FIXTURE_WEB_HEX: &str = "e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn digest_of(reference: &str) -> String {
    reference
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_owned())
        .unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fixture_for(name: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../decision/tests/fixtures/scan")
        .join(name);
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .replace(FIXTURE_WEB_HEX, digest.trim_start_matches("sha256:"))
        .into_bytes())
}

/// A control plane, its registry, and a release `shop@1` of two images that share
/// their base layer (`web` by tag, `side` by digest), with a scan report on `web`, a
/// VEX document, and a blocked decision (`side` has no scan).
struct Source {
    _agent: TestAgent,
    _downloads: TestDir,
    server: TestServer,
    registry: TestRegistry,
    web: String,
    side: String,
    decision_id: String,
    cli_config: PathBuf,
}

impl Source {
    async fn start() -> anyhow::Result<Source> {
        let registry = TestRegistry::start().await?;
        let images = WebImages::new(
            &registry.host(),
            &unique("stella-test/offline"),
            &registry.docker_config(),
        );
        let web = images.publish("v1", true).await?;
        let side = derived_image(
            &format!("{}:v1", images.repository()),
            &format!("{}-side:v1", images.repository()),
            &registry.docker_config(),
        )
        .await?;
        // What the server serves to new hosts travels in the kit; the bytes are checked
        // there, never run, so small stand-ins do.
        let downloads_dir = TestDir::new("offline-downloads");
        let downloads = downloads_dir.path().to_owned();
        std::fs::write(
            downloads.join("stella-agent-linux-x86_64"),
            b"agent binary stand-in\n",
        )?;
        std::fs::write(
            downloads.join("stella-agent_0.1.0_amd64.deb"),
            b"package stand-in\n",
        )?;
        let server = TestServer::start_with(|config| {
            config.downloads_dir = Some(downloads.clone());
        })
        .await?;
        server
            .post(
                "/api/v1/releases",
                json!({"name": "shop", "version": "1", "components": {
                    "web": format!("{}:v1", images.repository()),
                    "side": side,
                }}),
            )
            .await?;
        let trivy = fixture_for("trivy-0.55-web-debian12.json", &digest_of(&web))?;
        post_document(
            &server,
            &format!("/api/v1/scans?image={}", digest_of(&web)),
            trivy,
        )
        .await?;
        let vex = fixture_for("vex-vexctl-0.2-web.json", &digest_of(&web))?;
        post_document(&server, "/api/v1/scans", vex).await?;
        // A gate that blocks (side has no scan): a signed decision, and nothing deployed.
        server
            .post("/api/v1/environments", json!({"name": "gate"}))
            .await?;
        let agent = TestAgent::start(&server, "source-host").await?;
        server
            .wait_for_state("source-host", "connected", Duration::from_secs(10))
            .await?;
        server
            .post(
                "/api/v1/targets",
                json!({"name": unique("gated"), "environment": "gate", "kind": "docker", "agent": "source-host"}),
            )
            .await?;
        let promotion = server
            .post(
                "/api/v1/promotions",
                json!({"release": "shop", "version": "1", "environment": "gate"}),
            )
            .await?;
        let decision_id = promotion["decision_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("the promotion was not decided: {promotion}"))?;
        let cli_config = server.dir.path().join("cli-config");
        Ok(Source {
            _agent: agent,
            _downloads: downloads_dir,
            server,
            registry,
            web,
            side,
            decision_id,
            cli_config,
        })
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        cli(&self.server, &self.cli_config, args).await
    }

    /// Bundles `shop@1` to `out`, checking the command succeeded.
    async fn bundle(&self, out: &Path) -> anyhow::Result<Value> {
        let out = out.display().to_string();
        let (code, stdout, stderr) = self
            .cli(&[
                "-o",
                "json",
                "offline",
                "bundle",
                "--release",
                "shop@1",
                "--out",
                &out,
            ])
            .await?;
        anyhow::ensure!(code == 0, "bundle failed: {stderr}");
        let summary: Value = serde_json::from_str(&stdout)?;
        // The agent binary and the package this server serves are in the kit.
        anyhow::ensure!(
            summary["downloads"] == json!(2) && !stderr.contains("holds none"),
            "the kit lacks the server's downloads: {summary} {stderr}"
        );
        Ok(summary)
    }

    /// The server's signing key as a PEM file under `dir`.
    async fn key_file(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let keys = self.server.get("/api/v1/keys").await?;
        let pem = keys[0]["public_key_pem"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no key: {keys}"))?;
        let file = dir.join("source-key.pem");
        std::fs::write(&file, pem)?;
        Ok(file)
    }
}

/// `stella ARGS…` against `server` as admin, with `config` as its config dir.
async fn cli(
    server: &TestServer,
    config: &Path,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    stella(
        args,
        &[
            ("STELLA_SERVER", &server.api_url()),
            ("STELLA_TOKEN", &server.admin_token),
            ("STELLA_CONFIG_DIR", &config.display().to_string()),
        ],
    )
    .await
}

/// `stella offline verify` with no server at all.
async fn verify(kit: &Path, key: &Path) -> anyhow::Result<(i32, String, String)> {
    let (kit, key) = (kit.display().to_string(), key.display().to_string());
    stella(&["offline", "verify", &kit, "--key", &key], &[]).await
}

async fn post_document(server: &TestServer, path: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let response = server
        .client()
        .post(format!("{}{path}", server.api_url()))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "POST {path}: {status}: {}",
        response.text().await?
    );
    Ok(())
}

/// An image made from `base` with one more layer (so the two share `base`'s layer),
/// pushed as `tag`; returns `repository@digest`.
async fn derived_image(base: &str, tag: &str, docker_config: &Path) -> anyhow::Result<String> {
    let container = docker_cli(&["create", base], None, None).await?;
    let container = container.trim().to_owned();
    let dir = TestDir::new("offline-image");
    let extra = dir.path().join("side.txt");
    std::fs::write(&extra, "side\n")?;
    let copied = docker_cli(
        &[
            "cp",
            &extra.display().to_string(),
            &format!("{container}:/www/side.txt"),
        ],
        None,
        None,
    )
    .await;
    let committed = match copied {
        Ok(_) => docker_cli(&["commit", &container, tag], None, None).await,
        Err(error) => Err(error),
    };
    docker_cli(&["rm", "-f", &container], None, None).await?;
    committed?;
    push_image(tag, docker_config).await
}

#[tokio::test]
async fn a_kit_bundled_on_one_server_verifies_offline_imports_into_another_and_deploys(
) -> anyhow::Result<()> {
    let mut source = Source::start().await?;
    let work = TestDir::new("offline-kits");
    let key = source.key_file(work.path()).await?;

    // Bundle as a tar, twice: byte-identical.
    let first = work.path().join("first.tar");
    let second = work.path().join("second.tar");
    let bundled = source.bundle(&first).await?;
    source.bundle(&second).await?;
    let first_bytes = std::fs::read(&first)?;
    assert_eq!(
        sha256_hex(&first_bytes),
        sha256_hex(&std::fs::read(&second)?),
        "two bundles of the same release differ"
    );
    assert_eq!(
        bundled["kit_sha256"],
        format!("sha256:{}", sha256_hex(&first_bytes))
    );
    assert_eq!(bundled["decisions"], json!([source.decision_id]));
    assert_eq!(bundled["documents"], 2, "{bundled}");

    // Shared layers once: every blob path appears once, and the two images' layer
    // lists overlap.
    let kit = Kit::from_tar(&first_bytes).map_err(|f| anyhow::anyhow!("{f}"))?;
    let layers = |digest: &str| -> anyhow::Result<Vec<String>> {
        let manifest: Value = serde_json::from_slice(
            kit.files
                .get(&format!(
                    "oci/blobs/sha256/{}",
                    digest.trim_start_matches("sha256:")
                ))
                .ok_or_else(|| anyhow::anyhow!("no manifest {digest} in the kit"))?,
        )?;
        Ok(manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str().map(str::to_owned))
            .collect())
    };
    let web_layers = layers(&digest_of(&source.web))?;
    let side_layers = layers(&digest_of(&source.side))?;
    assert!(
        web_layers.iter().any(|l| side_layers.contains(l)),
        "the images share no layer: {web_layers:?} {side_layers:?}"
    );
    let blobs = kit
        .files
        .keys()
        .filter(|p| p.starts_with("oci/blobs/"))
        .count();
    // Two manifests, two configs, the shared layer and side's own.
    assert_eq!(blobs, 6, "{:?}", kit.files.keys().collect::<Vec<_>>());

    // A directory kit holds the same files.
    let dir_kit = work.path().join("kit-dir");
    source.bundle(&dir_kit).await?;

    // Stop the source and its registry: verification needs neither.
    let source_web = source.web.clone();
    let source_side = source.side.clone();
    source.server.stop().await;
    let Source { registry, .. } = source;
    drop(registry);
    let (code, stdout, stderr) = verify(&first, &key).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("verified"), "{stdout}");
    let (code, _, stderr) = verify(&dir_kit, &key).await?;
    assert_eq!(code, 0, "{stderr}");

    // The air-gapped side: another control plane, registry and agent.
    let target_registry = TestRegistry::start().await?;
    let target = TestServer::start().await?;
    let agent = TestAgent::start(&target, "docker-host").await?;
    target
        .wait_for_state("docker-host", "connected", Duration::from_secs(10))
        .await?;
    let config = target.dir.path().join("cli-config");
    let registry_arg = format!("{}/mirror", target_registry.host());
    let kit_arg = first.display().to_string();
    let key_arg = key.display().to_string();
    let import_args = [
        "-o",
        "json",
        "offline",
        "import",
        kit_arg.as_str(),
        "--registry",
        registry_arg.as_str(),
        "--key",
        key_arg.as_str(),
    ];
    let (code, stdout, stderr) = cli(&target, &config, &import_args).await?;
    assert_eq!(code, 0, "import failed: {stderr}");
    let imported: Value = serde_json::from_str(&stdout)?;
    assert_eq!(imported["changed"], true, "{imported}");
    assert_eq!(imported["releases_created"], 1, "{imported}");
    assert_eq!(imported["decisions_imported"], 1, "{imported}");
    assert_eq!(imported["documents_imported"], 2, "{imported}");
    assert!(
        imported["blobs_uploaded"].as_u64().unwrap_or(0) >= 6,
        "{imported}"
    );
    assert_eq!(imported["tags_set"], 1, "only web names a tag: {imported}");

    // The same digests, in the new registry.
    let release = target.get("/api/v1/releases/shop/1").await?;
    let components = release["components"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let by_name = |name: &str| {
        components
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_name("web")["digest"], digest_of(&source_web));
    assert!(
        by_name("web")["image"]
            .as_str()
            .is_some_and(|i| i.starts_with(&format!("{registry_arg}/"))),
        "{release}"
    );
    assert_eq!(by_name("side")["digest"], digest_of(&source_side));

    // Evidence: the scan report, and the decision record served as it was bundled.
    let scan = target
        .get(&format!("/api/v1/scans/{}", digest_of(&source_web)))
        .await?;
    assert!(
        !scan["reports"].as_array().is_some_and(Vec::is_empty),
        "{scan}"
    );
    let imports = target.get("/api/v1/evidence/imports").await?;
    let decision_id = imports["items"][0]["decision_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(bundled["decisions"][0], decision_id.as_str());
    let packet_file = work.path().join("imported-evidence.tar.gz");
    let packet_arg = packet_file.display().to_string();
    let (code, _, stderr) = cli(
        &target,
        &config,
        &["evidence", "export", &decision_id, "--out", &packet_arg],
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) =
        stella(&["evidence", "verify", &packet_arg, "--key", &key_arg], &[]).await?;
    assert_eq!(
        code, 0,
        "the imported record verifies against the source key: {stderr}"
    );

    // Twice: nothing changes, and it says so.
    let (code, stdout, stderr) = cli(&target, &config, &import_args).await?;
    assert_eq!(code, 0, "{stderr}");
    let again: Value = serde_json::from_str(&stdout)?;
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["blobs_uploaded"], 0, "{again}");
    let (code, stdout, _) = cli(
        &target,
        &config,
        &[
            "offline",
            "import",
            &kit_arg,
            "--registry",
            &registry_arg,
            "--key",
            &key_arg,
        ],
    )
    .await?;
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to import"), "{stdout}");

    // Deploy from the air-gapped server: the agent pulls from its registry by digest.
    target
        .post(
            "/api/v1/environments",
            json!({"name": "prod", "allow_unscanned": true, "block_severity": "none"}),
        )
        .await?;
    let target_name = unique("offline-web");
    let _cleanup = ContainerCleanup::new([target_name.clone()]);
    target
        .post(
            "/api/v1/targets",
            json!({"name": target_name, "environment": "prod", "kind": "docker", "agent": "docker-host",
                   "settings": {"health_cmd": WEB_HEALTH_CMD, "health_timeout_seconds": "30"}}),
        )
        .await?;
    let promotion = target
        .post(
            "/api/v1/promotions",
            json!({"release": "shop", "version": "1", "environment": "prod"}),
        )
        .await?;
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no deployment: {promotion}"))?;
    let deployed = target
        .wait_deployment(deployment_id, DEPLOY_TIMEOUT)
        .await?;
    assert_eq!(deployed["state"], "succeeded", "{deployed}");
    let running = docker_cli(
        &[
            "inspect",
            "--format",
            r#"{{.State.Running}} {{index .Config.Labels "ops.stella.digest"}} {{.Config.Image}}"#,
            &format!("{target_name}-web"),
        ],
        None,
        None,
    )
    .await?;
    let expected_digest = digest_of(&source_web);
    assert_eq!(
        running.split_whitespace().take(2).collect::<Vec<_>>(),
        vec!["true", expected_digest.as_str()],
        "{running}"
    );
    assert!(
        running.contains(&registry_arg),
        "pulled from the mirror: {running}"
    );
    agent.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_changed_incomplete_or_foreign_signed_kit_is_refused_naming_the_culprit(
) -> anyhow::Result<()> {
    let source = Source::start().await?;
    let work = TestDir::new("offline-refusals");
    let key = source.key_file(work.path()).await?;
    let tar = work.path().join("kit.tar");
    source.bundle(&tar).await?;
    let kit = Kit::from_tar(&std::fs::read(&tar)?).map_err(|f| anyhow::anyhow!("{f}"))?;
    let blob = kit
        .files
        .keys()
        .find(|p| p.starts_with("oci/blobs/sha256/"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no blob"))?;

    // Each case: a changed copy of the kit, written as a directory, and what the
    // refusal must name.
    let mut cases: Vec<(&str, Kit, String, &str)> = Vec::new();
    let mut flipped = kit.clone();
    if let Some(bytes) = flipped.files.get_mut(&blob) {
        bytes[0] ^= 0x01;
    }
    cases.push((
        "a byte flipped in a blob",
        flipped,
        blob.clone(),
        "expected sha256:",
    ));
    let mut manifest = kit.clone();
    if let Some(bytes) = manifest.files.get_mut("manifest.json") {
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
    }
    cases.push((
        "a byte flipped in the manifest",
        manifest,
        "manifest.json".to_owned(),
        "signature",
    ));
    let mut missing = kit.clone();
    missing.files.remove(&blob);
    cases.push(("a blob removed", missing, blob.clone(), "missing"));
    let mut extra = kit.clone();
    extra
        .files
        .insert("oci/blobs/sha256/extra".to_owned(), b"x".to_vec());
    cases.push((
        "a file added",
        extra,
        "oci/blobs/sha256/extra".to_owned(),
        "not listed",
    ));
    let mut foreign = kit.clone();
    foreign
        .sign(&SigningKey::from_seed([7; 32]))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    cases.push((
        "re-signed by another key",
        foreign,
        "manifest.sig.json".to_owned(),
        "trusted key",
    ));

    for (index, (what, changed, culprit, says)) in cases.into_iter().enumerate() {
        let dir = work.path().join(format!("case-{index}"));
        for (path, content) in &changed.files {
            let file = dir.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(file, content)?;
        }
        let (code, stdout, stderr) = verify(&dir, &key).await?;
        assert_ne!(code, 0, "{what}: accepted: {stdout}");
        assert!(
            stderr.contains(&culprit) && stderr.contains(says),
            "{what}: the refusal must name {culprit} and say {says:?}: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
    }

    // Import verifies first: a foreign-signed kit touches neither registry nor server.
    let foreign_dir = work.path().join("case-4").display().to_string();
    let key_arg = key.display().to_string();
    let registry_arg = format!("{}/mirror", source.registry.host());
    let (code, _, stderr) = source
        .cli(&[
            "offline",
            "import",
            &foreign_dir,
            "--registry",
            &registry_arg,
            "--key",
            &key_arg,
        ])
        .await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("manifest.sig.json"), "{stderr}");
    let imports = source.server.get("/api/v1/evidence/imports").await?;
    assert_eq!(imports["items"], json!([]), "{imports}");

    // The API's refusals: an unknown release; a decision packet under the wrong key.
    let (status, body) = source
        .server
        .request(
            reqwest::Method::POST,
            "/api/v1/offline/kits",
            Some(&source.server.admin_token),
            Some(json!({"releases": ["shop@9"]})),
        )
        .await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("unknown_release")),
        "{body}"
    );
    let packet = kit
        .files
        .iter()
        .find(|(path, _)| path.starts_with("decisions/"))
        .map(|(_, bytes)| bytes.clone())
        .ok_or_else(|| anyhow::anyhow!("no decision packet in the kit"))?;
    let other_key = SigningKey::from_seed([9; 32]).public_key().to_pem();
    let (status, body) = source
        .server
        .request(
            reqwest::Method::POST,
            "/api/v1/evidence/imports",
            Some(&source.server.admin_token),
            Some(json!({
                "packet": base64::engine::general_purpose::STANDARD.encode(&packet),
                "key_pem": other_key,
                "kit_manifest": "sha256:00",
            })),
        )
        .await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("evidence_invalid")),
        "{body}"
    );

    // The untouched kit verifies, as a tar and against the recorded key.
    let (code, _, stderr) = verify(&tar, &key).await?;
    assert_eq!(code, 0, "{stderr}");
    let tar_arg = tar.display().to_string();
    let (code, _, stderr) = source.cli(&["offline", "verify", &tar_arg]).await?;
    assert_eq!(code, 0, "against the key recorded at bundle time: {stderr}");
    Ok(())
}

#[tokio::test]
async fn an_image_index_travels_whole_by_digest() -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use stella_control_plane::domain::ImageRef;
    use stella_control_plane::registry::{RegistryAccess, RegistryClient};

    // Two images, made into a two-platform index in a repository of their own.
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &unique("stella-test/offline-index"),
        &registry.docker_config(),
    );
    let amd64 = images.publish("v1", true).await?;
    let arm64 = derived_image(
        &format!("{}:v1", images.repository()),
        &format!("{}:v1-arm64", images.repository()),
        &registry.docker_config(),
    )
    .await?;
    let client = RegistryClient::new();
    let access = RegistryAccess::default();
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut children = Vec::new();
    for (image, arch) in [(&amd64, "amd64"), (&arm64, "arm64")] {
        let reference = ImageRef::parse(image).map_err(|e| anyhow::anyhow!(e.0))?;
        let pulled = client
            .pull_image(&reference, &access, &Default::default())
            .await?;
        children.push(json!({
            "mediaType": pulled.media_type,
            "digest": pulled.digest.to_string(),
            "size": pulled.manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
        blobs.extend(pulled.blobs);
        blobs.insert(pulled.digest.to_string(), pulled.manifest);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": children,
    }))?;
    let index_digest = format!("sha256:{}", sha256_hex(&index));
    let multi = ImageRef::parse(&format!("{}:multi", images.repository()))
        .map_err(|e| anyhow::anyhow!(e.0))?;
    client
        .push_image(
            &multi,
            &access,
            &index,
            "application/vnd.docker.distribution.manifest.list.v2+json",
            &|digest| blobs.get(digest).cloned(),
        )
        .await?;

    // A release of the index, by tag: it pins the index, not one platform.
    let source = TestServer::start().await?;
    let release = source
        .post(
            "/api/v1/releases",
            json!({"name": "multi", "version": "1",
                   "components": {"app": format!("{}:multi", images.repository())}}),
        )
        .await?;
    assert_eq!(release["components"][0]["digest"], index_digest.as_str());
    let work = TestDir::new("offline-index");
    let tar = work.path().join("kit.tar");
    let out = tar.display().to_string();
    let config = source.dir.path().join("cli-config");
    let (code, _, stderr) = cli(
        &source,
        &config,
        &["offline", "bundle", "--release", "multi@1", "--out", &out],
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let kit = Kit::from_tar(&std::fs::read(&tar)?).map_err(|f| anyhow::anyhow!("{f}"))?;
    for digest in std::iter::once(&index_digest).chain(blobs.keys()) {
        let path = format!("oci/blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        assert!(kit.files.contains_key(&path), "{path} is not in the kit");
    }

    // Imported elsewhere, into a registry that wants a password (the target server has
    // it too, to resolve the release): the index itself, by the same digest, with its tag.
    let target_registry = TestRegistry::start_with_basic_auth("mirror", "s3cret").await?;
    let target = TestServer::start().await?;
    target
        .post(
            "/api/v1/registries",
            json!({"host": target_registry.host(), "username": "mirror", "password": "s3cret"}),
        )
        .await?;
    let key = work.path().join("key.pem");
    let keys = source.get("/api/v1/keys").await?;
    std::fs::write(&key, keys[0]["public_key_pem"].as_str().unwrap_or_default())?;
    let registry_arg = target_registry.host();
    let key_arg = key.display().to_string();
    let import = [
        "offline",
        "import",
        out.as_str(),
        "--registry",
        registry_arg.as_str(),
        "--key",
        key_arg.as_str(),
        "--username",
        "mirror",
        "--password-stdin",
    ];
    let config = target.dir.path().join("cli-config").display().to_string();
    let envs = [
        ("STELLA_SERVER", target.api_url()),
        ("STELLA_TOKEN", target.admin_token.clone()),
        ("STELLA_CONFIG_DIR", config),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, stderr) = stella_with_input(&import, &envs, Some("s3cret\n")).await?;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = stella_with_input(&import, &envs, Some("s3cret\n")).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("nothing to import"), "{stdout}");
    // Without the password, the registry refuses and the import says so.
    let (code, _, stderr) = stella(&import[..7], &envs).await?;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("refused access") && stderr.contains("--password-stdin"),
        "{stderr}"
    );
    let imported = target.get("/api/v1/releases/multi/1").await?;
    assert_eq!(imported["components"][0]["digest"], index_digest.as_str());
    let repository = images.repository().split_once('/').map_or("", |(_, r)| r);
    let served = reqwest::Client::new()
        .get(format!(
            "http://{registry_arg}/v2/{repository}/manifests/multi"
        ))
        .basic_auth("mirror", Some("s3cret"))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .await?
        .bytes()
        .await?;
    assert_eq!(
        served.as_ref(),
        index.as_slice(),
        "the tag names the same index"
    );
    Ok(())
}
