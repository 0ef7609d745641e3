//! `stella offline bundle|verify|import`: offline kits (docs/offline.md).
//!
//! The server assembles and signs a kit (it holds the registry credentials and the
//! signing key); this writes it out, verifies it with no server, and imports it into an
//! air-gapped server and registry. Verification is `stella_decision::offline`, the code
//! the server wrote the kit with, so the two cannot disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Subcommand;
use serde_json::{json, Value};
use stella_control_plane::domain::ImageRef;
use stella_control_plane::registry::{RegistryAccess, RegistryClient, RegistryError};
use stella_decision::dsse::PublicKey;
use stella_decision::offline::{
    blob_path, declared_media_type, verify_kit, Kit, VerifiedKit, DOCUMENTS_DIR, MANIFEST,
    OCI_INDEX,
};

use super::{path, query, Context};
use crate::client::ClientError;
use crate::output::cell;
use crate::trust;

/// How long `bundle` waits for the server to fetch every image and answer the kit,
/// unless `--timeout` is longer.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `stella offline …`
#[derive(Debug, Subcommand)]
pub enum OfflineCommand {
    /// Bundle releases into an offline kit: their images by digest (an OCI image
    /// layout), scan reports, VEX and decision records, with a manifest signed by the
    /// server. Deterministic: the same releases give the same bytes.
    Bundle {
        /// A release, `NAME@VERSION` (repeatable).
        #[arg(long = "release", value_name = "NAME@VERSION", required = true)]
        releases: Vec<String>,
        /// Where to write the kit: a directory that does not exist yet (or is empty),
        /// or a plain tar when the name ends in `.tar`.
        #[arg(long, value_name = "KIT")]
        out: PathBuf,
    },
    /// Verify a kit with no server and no network: the manifest's signature, every
    /// file's sha256, every OCI blob against its descriptor, every release's digests,
    /// every decision record.
    Verify {
        /// The kit (directory or `.tar`).
        kit: PathBuf,
        /// A public key (PEM) that may have signed it; repeat for a server's earlier keys
        /// [default: the server keys this CLI recorded when it first talked to a server
        /// about decisions].
        #[arg(long, value_name = "PUBKEY")]
        key: Vec<PathBuf>,
    },
    /// Verify a kit, push its images by digest to an air-gapped registry, and create
    /// its releases (same digests), scan reports, VEX and decision records on the
    /// server `--server` names. Importing a kit twice changes nothing.
    Import {
        /// The kit (directory or `.tar`).
        kit: PathBuf,
        /// The registry to push to, `HOST[/PREFIX]`: each image goes to
        /// `HOST/PREFIX/<its repository>`.
        #[arg(long, value_name = "HOST[/PREFIX]")]
        registry: String,
        /// A public key (PEM) that may have signed the kit; repeat for a server's
        /// earlier keys [default: the recorded server keys].
        #[arg(long, value_name = "PUBKEY")]
        key: Vec<PathBuf>,
        /// Plain HTTP, or HTTPS without certificate checks, allowed (loopback
        /// registries always are).
        #[arg(long)]
        insecure: bool,
        /// User name at the registry.
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
}

/// `stella offline …`.
pub async fn offline(context: &Context, command: OfflineCommand) -> anyhow::Result<()> {
    match command {
        OfflineCommand::Bundle { releases, out } => bundle(context, &releases, &out).await,
        OfflineCommand::Verify { kit, key } => {
            let trusted = trusted_keys(&key)?;
            let loaded = read_kit(&kit)?;
            let verified = verify(&kit, &loaded, &trusted)?;
            let value = summary(&kit, &verified);
            context.print(&value, |v| {
                println!(
                    "{}: verified: {} files ({} bytes), {} releases, {} blobs, {} documents, {} decisions, signed by key {}",
                    cell(v, "/kit"),
                    cell(v, "/files"),
                    cell(v, "/bytes"),
                    v["releases"].as_array().map_or(0, Vec::len),
                    cell(v, "/blobs"),
                    cell(v, "/documents"),
                    v["decisions"].as_array().map_or(0, Vec::len),
                    cell(v, "/key_id"),
                );
            });
            Ok(())
        }
        OfflineCommand::Import {
            kit,
            registry,
            key,
            insecure,
            username,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(super::read_stdin("password")?)
            } else {
                None
            };
            let access = RegistryAccess {
                insecure,
                credentials: username.zip(password),
            };
            import(context, &kit, &registry, &key, &access).await
        }
    }
}

async fn bundle(context: &Context, releases: &[String], out: &Path) -> anyhow::Result<()> {
    for release in releases {
        if !release.contains('@') {
            bail!("--release {release}: expected NAME@VERSION");
        }
    }
    check_out(out)?;
    context.note(&format!(
        "bundling {} on {}: the server fetches every image by digest…",
        releases.join(", "),
        context.client.base()
    ));
    let bytes = context
        .client
        .post_for_bytes(
            "/offline/kits",
            json!({ "releases": releases }),
            context.client.timeout().max(BUNDLE_TIMEOUT),
        )
        .await?;
    trust::record_server_keys(context).await?;
    let kit =
        Kit::from_tar(&bytes).map_err(|fault| anyhow::anyhow!("the server's kit: {fault}"))?;
    // The kit is checked here as `verify` would, against the keys recorded for the
    // server, before anything is written.
    let trusted = trust::recorded_keys()?;
    let verified = verify(out, &kit, &trusted)?;
    if verified.downloads.is_empty() {
        context.note(
            "note: the server serves no agent binaries or .deb packages (GET /api/v1/downloads), so the kit holds none",
        );
    }
    write_kit(out, &kit, &bytes)?;
    let mut value = summary(out, &verified);
    value["kit_sha256"] = json!(stella_decision::sha256_id(&bytes));
    context.print(&value, |v| {
        println!(
            "wrote {}: {} releases, {} blobs, {} documents, {} decisions, {} bytes ({})",
            cell(v, "/kit"),
            v["releases"].as_array().map_or(0, Vec::len),
            cell(v, "/blobs"),
            cell(v, "/documents"),
            v["decisions"].as_array().map_or(0, Vec::len),
            cell(v, "/bytes"),
            cell(v, "/kit_sha256"),
        );
    });
    Ok(())
}

async fn import(
    context: &Context,
    kit_path: &Path,
    registry: &str,
    key: &[PathBuf],
    access: &RegistryAccess,
) -> anyhow::Result<()> {
    let trusted = trusted_keys(key)?;
    let kit = read_kit(kit_path)?;
    let verified = verify(kit_path, &kit, &trusted)?;
    let pem_of = |key_id: &str| {
        trusted
            .iter()
            .find(|k| k.key_id() == key_id)
            .map(PublicKey::to_pem)
            .context("the verifying key is not among the trusted keys")
    };
    let kit_manifest = kit
        .files
        .get(MANIFEST)
        .map(|m| stella_decision::sha256_id(m))
        .unwrap_or_default();
    let (host, prefix) = match registry.split_once('/') {
        Some((host, prefix)) => (host, prefix.trim_matches('/')),
        None => (registry, ""),
    };
    if host.is_empty() {
        bail!("--registry {registry}: expected HOST[/PREFIX]");
    }
    let media_types = index_media_types(&kit)?;
    let client = RegistryClient::new();
    let mut changes = Changes::default();

    // Images, by digest, into HOST/PREFIX/<repository>.
    let mut pushed: BTreeSet<(String, String)> = BTreeSet::new();
    for release in &verified.releases {
        for component in &release.components {
            let repository = if prefix.is_empty() {
                component.repository.clone()
            } else {
                format!("{prefix}/{}", component.repository)
            };
            let key = (repository.clone(), component.digest.clone());
            if pushed.contains(&key) && component.tag.is_none() {
                continue;
            }
            let reference = match &component.tag {
                Some(tag) => format!("{host}/{repository}:{tag}"),
                None => format!("{host}/{repository}"),
            };
            let target = ImageRef::parse(&reference)
                .map_err(|e| anyhow::anyhow!("component {}: {}", component.name, e.0))?;
            let manifest = kit
                .files
                .get(&blob_path(&component.digest))
                .context("a verified kit holds every component's manifest")?;
            let media_type = media_types
                .get(&component.digest)
                .cloned()
                .or_else(|| declared_media_type(manifest))
                .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
            let outcome = client
                .push_image(&target, access, manifest, &media_type, &|digest| {
                    kit.files.get(&blob_path(digest)).cloned()
                })
                .await
                .map_err(|error| match error {
                    RegistryError::Unauthorized { registry } => anyhow::anyhow!(
                        "pushing {reference}@{}: registry {registry} refused access: pass --username U --password-stdin",
                        component.digest
                    ),
                    other => anyhow::anyhow!("pushing {reference}@{}: {other}", component.digest),
                })?;
            context.note(&format!(
                "{reference}@{}: {} uploaded, {} present{}",
                component.digest,
                outcome.uploaded,
                outcome.present,
                if outcome.tagged { ", tagged" } else { "" }
            ));
            changes.blobs_uploaded += outcome.uploaded;
            changes.blobs_present += outcome.present;
            changes.tags += usize::from(outcome.tagged);
            pushed.insert(key);
        }
    }

    // Releases, with the same digests in the new registry.
    for release in &verified.releases {
        let mut components = serde_json::Map::new();
        for component in &release.components {
            let repository = if prefix.is_empty() {
                component.repository.clone()
            } else {
                format!("{prefix}/{}", component.repository)
            };
            let image = match &component.tag {
                Some(tag) => format!("{host}/{repository}:{tag}@{}", component.digest),
                None => format!("{host}/{repository}@{}", component.digest),
            };
            components.insert(component.name.clone(), json!(image));
        }
        let existing = context
            .client
            .get(&format!(
                "/releases/{}/{}",
                path(&release.name),
                path(&release.version)
            ))
            .await;
        match existing {
            Ok(_) => {}
            Err(ClientError::Api { status: 404, .. }) => changes.releases += 1,
            Err(other) => return Err(other.into()),
        }
        // Posted either way: the server refuses the same name and version with other
        // digests (release_immutable) and answers the same release as it is.
        context
            .client
            .post(
                "/releases",
                json!({"name": release.name, "version": release.version, "components": components}),
            )
            .await
            .with_context(|| format!("creating release {}@{}", release.name, release.version))?;
    }

    // Scan reports and VEX through the scan import.
    for document in &verified.documents {
        let file = format!(
            "{DOCUMENTS_DIR}{}",
            document.document.trim_start_matches("sha256:")
        );
        let bytes = kit
            .files
            .get(&file)
            .cloned()
            .context("a verified kit holds every listed document")?;
        let answer = context
            .client
            .post_document(
                &format!(
                    "/scans{}",
                    query(&[("image", document.image_digest.as_deref())])
                ),
                bytes,
            )
            .await
            .with_context(|| format!("importing {file}"))?;
        if answer["created"].as_bool().unwrap_or(false) {
            changes.documents += 1;
        }
    }

    // Decision records, kept as imported evidence.
    for decision in &verified.decisions {
        let file = &decision.path;
        let packet = kit
            .files
            .get(file)
            .context("a verified kit holds every decision it verified")?;
        let key_pem = pem_of(&decision.key_id)?;
        let answer = context
            .client
            .post(
                "/evidence/imports",
                json!({
                    "packet": base64::engine::general_purpose::STANDARD.encode(packet),
                    "key_pem": key_pem,
                    "kit_manifest": kit_manifest,
                }),
            )
            .await
            .with_context(|| format!("importing {file}"))?;
        if answer["created"].as_bool().unwrap_or(false) {
            changes.decisions += 1;
        }
    }

    let changed = changes.blobs_uploaded
        + changes.tags
        + changes.releases
        + changes.documents
        + changes.decisions
        > 0;
    let value = json!({
        "kit": kit_path.display().to_string(),
        "registry": registry,
        "changed": changed,
        "blobs_uploaded": changes.blobs_uploaded,
        "blobs_present": changes.blobs_present,
        "tags_set": changes.tags,
        "releases_created": changes.releases,
        "documents_imported": changes.documents,
        "decisions_imported": changes.decisions,
        "releases": verified.releases.iter().map(|r| format!("{}@{}", r.name, r.version)).collect::<Vec<_>>(),
    });
    context.print(&value, |v| {
        if changed {
            println!(
                "imported {}: {} blobs uploaded ({} present), {} tags, {} releases, {} documents, {} decisions",
                cell(v, "/kit"),
                cell(v, "/blobs_uploaded"),
                cell(v, "/blobs_present"),
                cell(v, "/tags_set"),
                cell(v, "/releases_created"),
                cell(v, "/documents_imported"),
                cell(v, "/decisions_imported"),
            );
        } else {
            println!(
                "nothing to import: everything in {} is already on the server and in {}",
                cell(v, "/kit"),
                cell(v, "/registry"),
            );
        }
    });
    Ok(())
}

/// What an import changed.
#[derive(Debug, Default)]
struct Changes {
    blobs_uploaded: usize,
    blobs_present: usize,
    tags: usize,
    releases: usize,
    documents: usize,
    decisions: usize,
}

/// The media type `index.json` gives each image digest.
fn index_media_types(kit: &Kit) -> anyhow::Result<BTreeMap<String, String>> {
    let index: Value = kit
        .files
        .get(OCI_INDEX)
        .map(|bytes| serde_json::from_slice(bytes))
        .transpose()
        .context("oci/index.json")?
        .unwrap_or(Value::Null);
    Ok(index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["digest"].as_str()?.to_owned(),
                m["mediaType"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

fn verify(path: &Path, kit: &Kit, trusted: &[PublicKey]) -> anyhow::Result<VerifiedKit> {
    verify_kit(kit, trusted)
        .map_err(|fault| anyhow::anyhow!("{} does not verify: {fault}", path.display()))
}

fn summary(path: &Path, verified: &VerifiedKit) -> Value {
    json!({
        "kit": path.display().to_string(),
        "verified": true,
        "key_id": verified.key_id,
        "files": verified.files,
        "bytes": verified.bytes,
        "blobs": verified.blobs,
        "releases": verified.releases.iter().map(|r| json!({
            "name": r.name,
            "version": r.version,
            "components": r.components.iter().map(|c| json!({
                "name": c.name,
                "repository": format!("{}/{}", c.registry, c.repository),
                "tag": c.tag,
                "digest": c.digest,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "documents": verified.documents.len(),
        "decisions": verified.decisions.iter().map(|d| d.decision_id.as_str()).collect::<Vec<_>>(),
        "downloads": verified.downloads.len(),
    })
}

fn trusted_keys(keys: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    if keys.is_empty() {
        let recorded = trust::recorded_keys()?;
        if recorded.is_empty() {
            bail!("no trusted key: pass --key PUBKEY, or talk to the bundling server once (e.g. `stella decision show`) so its key is recorded");
        }
        return Ok(recorded);
    }
    keys.iter()
        .map(|key| {
            let pem = std::fs::read_to_string(key)
                .with_context(|| format!("reading the key {}", key.display()))?;
            PublicKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("the key {}: {e}", key.display()))
        })
        .collect()
}

fn is_tar(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tar")
}

/// Refuses to write over anything but an empty directory.
fn check_out(out: &Path) -> anyhow::Result<()> {
    if is_tar(out) {
        if out.exists() {
            bail!("{} exists; choose a new name", out.display());
        }
        return Ok(());
    }
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} is not empty; choose a new directory", out.display());
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("reading {}", out.display())),
    }
}

/// Writes the kit: the server's tar as it came, or its files under a directory.
fn write_kit(out: &Path, kit: &Kit, tar: &[u8]) -> anyhow::Result<()> {
    if is_tar(out) {
        return std::fs::write(out, tar).with_context(|| format!("writing {}", out.display()));
    }
    for (name, content) in &kit.files {
        let file = out.join(name);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&file, content).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// Reads a kit from a `.tar` or a directory (regular files only; symbolic links are
/// refused so a kit cannot point outside itself).
fn read_kit(path: &Path) -> anyhow::Result<Kit> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Kit::from_tar(&bytes)
            .map_err(|fault| anyhow::anyhow!("{} does not verify: {fault}", path.display()));
    }
    let mut kit = Kit::default();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let file = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", file.display()))?;
            let relative = file
                .strip_prefix(path)
                .with_context(|| format!("{} is outside the kit", file.display()))?
                .to_str()
                .with_context(|| format!("{} is not a UTF-8 path", file.display()))?
                .replace(std::path::MAIN_SEPARATOR, "/");
            if kind.is_dir() {
                pending.push(file);
            } else if kind.is_file() {
                let content =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                kit.files.insert(relative, content);
            } else {
                bail!(
                    "{} does not verify: {relative}: not a regular file",
                    path.display()
                );
            }
        }
    }
    Ok(kit)
}
