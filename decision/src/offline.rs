//! Offline kits: what `stella offline bundle` writes, `verify` checks and `import`
//! reads. Pure: the server assembles a [`Kit`] from what it fetched and signs it here;
//! the CLI reads one from a directory or tar and verifies it here, so the two can never
//! disagree about what a valid kit is. docs/offline.md is the contract.
//!
//! Layout (all paths relative, `/`-separated):
//!
//! | path | what |
//! |---|---|
//! | `manifest.json` | canonical `{"schema":"stella.offline-kit/v1","files":{path:{"sha256","size"}}}`: every other file but the signature |
//! | `manifest.sig.json` | DSSE envelope over the manifest's bytes, signed by the bundling server |
//! | `oci/oci-layout`, `oci/index.json`, `oci/blobs/sha256/<hex>` | an OCI image layout (image-spec v1.1 `image-layout.md`) of every component image, by digest |
//! | `releases/<name>@<version>.json` | each release: components with registry, repository, tag and digest |
//! | `documents/<hex>` | scan reports and VEX documents, named by their content's hex SHA-256 |
//! | `documents.json` | which document belongs to which image digest, and its kind |
//! | `decisions/<hex>.tar.gz` | each decision's evidence packet ([`crate::evidence`]), named by the decision id's hex |
//! | `downloads/<name>`, `downloads.json` | agent binaries and `.deb` packages the server serves, with their listing |
//!
//! As a tar (`--out KIT.tar`): plain ustar (layers are compressed already), entries in
//! byte order of their path with `manifest.json` and `manifest.sig.json` first, regular
//! files only, mode 0644, uid and gid 0, mtime 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::canonical::{canonical_via_value, is_canonical};
use crate::dsse::{verify_envelope_signer, Envelope, PublicKey, SigningKey};
use crate::evidence::{check_path, is_sha256_id, verify_packet};
use crate::{sha256_id, DecisionError};

/// The manifest: every other file, its digest and size.
pub const MANIFEST: &str = "manifest.json";
/// The bundling server's DSSE signature over the manifest's bytes.
pub const MANIFEST_SIGNATURE: &str = "manifest.sig.json";
/// The DSSE payload type of [`MANIFEST_SIGNATURE`].
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.stella.offline-kit-manifest+json";
/// The manifest's `schema`.
pub const MANIFEST_SCHEMA: &str = "stella.offline-kit/v1";
/// The OCI image layout's directory.
pub const OCI_DIR: &str = "oci/";
/// The layout's marker file.
pub const OCI_LAYOUT: &str = "oci/oci-layout";
/// The layout's index.
pub const OCI_INDEX: &str = "oci/index.json";
/// Where blobs live.
pub const OCI_BLOBS: &str = "oci/blobs/sha256/";
/// The content of `oci-layout`.
pub const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Releases, one file each.
pub const RELEASES_DIR: &str = "releases/";
/// Scan reports and VEX documents by content.
pub const DOCUMENTS_DIR: &str = "documents/";
/// The documents' listing.
pub const DOCUMENTS: &str = "documents.json";
/// Decision evidence packets.
pub const DECISIONS_DIR: &str = "decisions/";
/// Agent binaries and packages.
pub const DOWNLOADS_DIR: &str = "downloads/";
/// The downloads' listing.
pub const DOWNLOADS: &str = "downloads.json";
/// The annotation naming the repository an image came from, on `index.json` entries.
pub const REPOSITORY_ANNOTATION: &str = "ops.stella.repository";

/// Image index and manifest media types whose children the layout must hold.
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The files of a kit, by relative `/`-separated path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kit {
    /// Content by path.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// One file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `sha256:<hex>` of the content.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// The parsed `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_SCHEMA`].
    pub schema: String,
    /// Every file but the manifest and its signature.
    pub files: BTreeMap<String, FileEntry>,
}

/// A release as the kit carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitRelease {
    /// Release name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Components by name order.
    pub components: Vec<KitComponent>,
}

/// One component of a [`KitRelease`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitComponent {
    /// Component name.
    pub name: String,
    /// The registry host it came from.
    pub registry: String,
    /// The repository in that registry.
    pub repository: String,
    /// The tag the release named, if it named one.
    pub tag: Option<String>,
    /// The manifest (or index) digest.
    pub digest: String,
}

/// One scan report or VEX document and the image it is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitDocument {
    /// The image digest a scan report covers; none for a VEX document (VEX applies
    /// by its products).
    pub image_digest: Option<String>,
    /// `sha256:<hex>` of the document (its file is `documents/<hex>`).
    pub document: String,
    /// `trivy`, `grype` or `openvex`.
    pub kind: String,
}

/// One agent binary or package, as the server's `GET /api/v1/downloads` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KitDownload {
    /// File name (its file is `downloads/<name>`).
    pub name: String,
    /// `agent` or `deb`.
    pub kind: String,
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 as the server listed it.
    pub sha256: String,
}

/// Why a kit was refused: the file at fault, when there is one, and what.
pub type KitFault = crate::FileFault;

/// What a verified kit holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKit {
    /// The id of the trusted key that signed the manifest.
    pub key_id: String,
    /// Files listed in the manifest.
    pub files: usize,
    /// Bytes of all listed files.
    pub bytes: u64,
    /// The releases.
    pub releases: Vec<KitRelease>,
    /// The documents and the images they are about.
    pub documents: Vec<KitDocument>,
    /// The decision packets that verified, in path order.
    pub decisions: Vec<VerifiedDecision>,
    /// Blobs in the layout.
    pub blobs: usize,
    /// The downloads listed.
    pub downloads: Vec<KitDownload>,
}

/// A decision packet of a kit that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDecision {
    /// Its path in the kit.
    pub path: String,
    /// The decision id.
    pub decision_id: String,
    /// The id of the trusted key that signed it (a server's earlier key may have).
    pub key_id: String,
}

/// `releases/<name>@<version>.json`.
pub fn release_path(name: &str, version: &str) -> String {
    format!("{RELEASES_DIR}{name}@{version}.json")
}

/// `oci/blobs/sha256/<hex>` of a `sha256:<hex>` digest.
pub fn blob_path(digest: &str) -> String {
    format!("{OCI_BLOBS}{}", digest.trim_start_matches("sha256:"))
}

/// A descriptor's fields the layout needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    size: u64,
}

/// The parts of a manifest or index that reference other blobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct References {
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// A blob a manifest or index references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes, per the descriptor.
    pub size: u64,
    /// The descriptor's media type, when it gives one.
    pub media_type: Option<String>,
    /// Whether the blob is itself a manifest or index (a child of an index), fetched
    /// and pushed through the manifests endpoint and walked into.
    pub is_manifest: bool,
}

/// The blobs a manifest or index references: the children of an index, or the config
/// and layers of a manifest.
pub fn referenced_blobs(body: &[u8]) -> Result<Vec<BlobRef>, DecisionError> {
    let refs: References = serde_json::from_slice(body)
        .map_err(|e| DecisionError::new(format!("not a manifest or index: {e}")))?;
    let is_index = refs
        .media_type
        .as_deref()
        .is_some_and(|t| INDEX_TYPES.contains(&t))
        || !refs.manifests.is_empty();
    let mut out = Vec::new();
    if is_index {
        for child in refs.manifests {
            out.push(BlobRef {
                digest: child.digest,
                size: child.size,
                media_type: child.media_type,
                is_manifest: true,
            });
        }
    } else {
        for blob in refs.config.into_iter().chain(refs.layers) {
            out.push(BlobRef {
                digest: blob.digest,
                size: blob.size,
                media_type: blob.media_type,
                is_manifest: false,
            });
        }
    }
    Ok(out)
}

/// The media type a manifest or index declares in its `mediaType` field.
pub fn declared_media_type(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<References>(body).ok()?.media_type
}

/// The `index.json` of a layout holding these images: `(digest, media type, size,
/// repository)`, one entry per digest, sorted by digest.
pub fn oci_index(images: &[(String, String, u64, String)]) -> Result<Vec<u8>, DecisionError> {
    let mut by_digest: BTreeMap<&str, (&str, u64, BTreeSet<&str>)> = BTreeMap::new();
    for (digest, media_type, size, repository) in images {
        by_digest
            .entry(digest)
            .or_insert_with(|| (media_type, *size, BTreeSet::new()))
            .2
            .insert(repository);
    }
    let manifests: Vec<serde_json::Value> = by_digest
        .into_iter()
        .map(|(digest, (media_type, size, repositories))| {
            serde_json::json!({
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {
                    REPOSITORY_ANNOTATION: repositories.into_iter().collect::<Vec<_>>().join(","),
                },
            })
        })
        .collect();
    canonical_via_value(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
}

impl Kit {
    /// The canonical manifest of every file but a manifest and its signature.
    pub fn manifest(&self) -> Result<Vec<u8>, DecisionError> {
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA.to_owned(),
            files: self
                .files
                .iter()
                .filter(|(path, _)| !is_manifest(path))
                .map(|(path, content)| {
                    (
                        path.clone(),
                        FileEntry {
                            sha256: sha256_id(content),
                            size: content.len() as u64,
                        },
                    )
                })
                .collect(),
        };
        canonical_via_value(&manifest)
    }

    /// Adds `manifest.json` and `manifest.sig.json` signed by `key`. Ed25519 signatures
    /// are deterministic: the same files always give the same kit.
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), DecisionError> {
        for path in self.files.keys() {
            check_path(path).map_err(|m| DecisionError::new(format!("kit file {path:?}: {m}")))?;
        }
        let manifest = self.manifest()?;
        let envelope = key.sign_envelope(MANIFEST_PAYLOAD_TYPE, &manifest);
        self.files.insert(MANIFEST.to_owned(), manifest);
        self.files
            .insert(MANIFEST_SIGNATURE.to_owned(), envelope.to_canonical()?);
        Ok(())
    }

    /// Paths in tar order: the manifest, its signature, then every other file in byte
    /// order.
    pub fn ordered(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let head = [MANIFEST, MANIFEST_SIGNATURE]
            .into_iter()
            .filter_map(|p| self.files.get_key_value(p));
        let rest = self.files.iter().filter(|(path, _)| !is_manifest(path));
        head.chain(rest).map(|(p, c)| (p.as_str(), c.as_slice()))
    }

    /// The kit as a plain ustar archive with fixed metadata.
    pub fn to_tar(&self) -> Result<Vec<u8>, DecisionError> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in self.ordered() {
            crate::evidence::append_file(&mut builder, path, content, "kit file")?;
        }
        builder
            .into_inner()
            .map_err(|e| DecisionError::new(format!("kit: cannot finish the archive: {e}")))
    }

    /// Reads a kit from a plain tar, refusing anything but regular files and
    /// directories with normal relative paths, and duplicates.
    pub fn from_tar(bytes: &[u8]) -> Result<Kit, KitFault> {
        let mut archive = tar::Archive::new(bytes);
        let mut files = BTreeMap::new();
        let entries = archive
            .entries()
            .map_err(|e| KitFault::whole(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| KitFault::whole(format!("not a tar archive: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| KitFault::whole(format!("unreadable path in the archive: {e}")))?
                .to_string_lossy()
                .into_owned();
            let path = raw
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular => {}
                other => {
                    return Err(KitFault::at(
                        &path,
                        format!("is a {other:?} entry; a kit holds regular files only"),
                    ))
                }
            }
            check_path(&path).map_err(|m| KitFault::at(&path, m))?;
            let mut content = Vec::new();
            entry
                .read_to_end(&mut content)
                .map_err(|e| KitFault::at(&path, format!("cannot be read: {e}")))?;
            if files.insert(path.clone(), content).is_some() {
                return Err(KitFault::at(&path, "appears twice in the archive"));
            }
        }
        Ok(Kit { files })
    }
}

fn is_manifest(path: &str) -> bool {
    path == MANIFEST || path == MANIFEST_SIGNATURE
}

/// Verifies a kit offline against `trusted` keys (a key that comes in the kit proves
/// nothing). Checks, each failure naming the file: the manifest is present, canonical,
/// of this schema and signed by a trusted key; every file is listed with its digest and
/// size, none missing, none extra; the OCI layout's marker and index; every blob the
/// index reaches (children, configs, layers) is present and matches its descriptor's
/// digest and size; every release component's digest is in the index; every document
/// listed is present; and each decision packet verifies ([`verify_packet`], the decision
/// recomputed from its inputs).
pub fn verify_kit(kit: &Kit, trusted: &[PublicKey]) -> Result<VerifiedKit, KitFault> {
    let manifest_bytes = kit
        .files
        .get(MANIFEST)
        .ok_or_else(|| KitFault::at(MANIFEST, "missing"))?;
    let signature = kit
        .files
        .get(MANIFEST_SIGNATURE)
        .ok_or_else(|| KitFault::at(MANIFEST_SIGNATURE, "missing: the kit is not signed"))?;
    let envelope = Envelope::from_json(signature)
        .map_err(|e| KitFault::at(MANIFEST_SIGNATURE, format!("not a DSSE envelope: {e}")))?;
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE {
        return Err(KitFault::at(
            MANIFEST_SIGNATURE,
            format!(
                "payload type is {:?}, expected {MANIFEST_PAYLOAD_TYPE:?}",
                envelope.payload_type
            ),
        ));
    }
    let (payload, key) = verify_envelope_signer(&envelope, trusted).map_err(|e| {
        KitFault::at(
            MANIFEST_SIGNATURE,
            format!("not signed by a trusted key ({}): {e}", key_list(trusted)),
        )
    })?;
    if payload != *manifest_bytes {
        return Err(KitFault::at(
            MANIFEST,
            format!(
                "is not what the signature covers: expected {}, actual {}",
                sha256_id(&payload),
                sha256_id(manifest_bytes)
            ),
        ));
    }
    if !is_canonical(manifest_bytes) {
        return Err(KitFault::at(MANIFEST, "not canonical JSON (RFC 8785)"));
    }
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| KitFault::at(MANIFEST, format!("not a kit manifest: {e}")))?;
    if manifest.schema != MANIFEST_SCHEMA {
        return Err(KitFault::at(
            MANIFEST,
            format!(
                "schema is {:?}, expected {MANIFEST_SCHEMA:?}",
                manifest.schema
            ),
        ));
    }

    // Listing: every file has its entry, every entry its file, byte for byte.
    for path in kit.files.keys().filter(|p| !is_manifest(p)) {
        if !manifest.files.contains_key(path) {
            return Err(KitFault::at(
                path,
                "is not listed in manifest.json (extra file)",
            ));
        }
    }
    let mut bytes = 0u64;
    for (path, entry) in &manifest.files {
        check_path(path).map_err(|m| KitFault::at(path, m))?;
        let content = kit
            .files
            .get(path)
            .ok_or_else(|| KitFault::at(path, format!("missing (expected {})", entry.sha256)))?;
        let actual = sha256_id(content);
        if actual != entry.sha256 || content.len() as u64 != entry.size {
            return Err(KitFault::at(
                path,
                format!(
                    "content differs from the manifest: expected {} ({} bytes), actual {actual} ({} bytes)",
                    entry.sha256,
                    entry.size,
                    content.len()
                ),
            ));
        }
        bytes += entry.size;
    }

    let blobs = check_layout(kit)?;
    let index_digests = index_digests(kit)?;

    let mut releases = Vec::new();
    for (path, content) in kit.files.range(RELEASES_DIR.to_owned()..) {
        let Some(_) = path.strip_prefix(RELEASES_DIR) else {
            break;
        };
        let release: KitRelease = serde_json::from_slice(content)
            .map_err(|e| KitFault::at(path, format!("not a release: {e}")))?;
        if *path != release_path(&release.name, &release.version) {
            return Err(KitFault::at(
                path,
                format!(
                    "holds release {}@{}, not the one its name says",
                    release.name, release.version
                ),
            ));
        }
        for component in &release.components {
            if !index_digests.contains(&component.digest) {
                return Err(KitFault::at(
                    path,
                    format!(
                        "component {} ({}) is not in the OCI layout's index.json",
                        component.name, component.digest
                    ),
                ));
            }
        }
        releases.push(release);
    }

    let documents: Vec<KitDocument> = match kit.files.get(DOCUMENTS) {
        Some(content) => serde_json::from_slice(content)
            .map_err(|e| KitFault::at(DOCUMENTS, format!("not a document listing: {e}")))?,
        None => Vec::new(),
    };
    for document in &documents {
        let path = format!(
            "{DOCUMENTS_DIR}{}",
            document.document.trim_start_matches("sha256:")
        );
        let content = kit
            .files
            .get(&path)
            .ok_or_else(|| KitFault::at(DOCUMENTS, format!("lists {path}, which is missing")))?;
        if sha256_id(content) != document.document {
            return Err(KitFault::at(&path, "is not named by its content's sha256"));
        }
    }

    let mut decisions = Vec::new();
    for (path, content) in kit.files.range(DECISIONS_DIR.to_owned()..) {
        if !path.starts_with(DECISIONS_DIR) {
            break;
        }
        let verified = verify_packet(content, trusted, &|inputs, documents| {
            crate::gates::recompute(inputs, documents)
        })
        .map_err(|fault| KitFault::at(path, format!("decision record does not verify: {fault}")))?;
        let expected = format!(
            "{DECISIONS_DIR}{}.tar.gz",
            verified.decision_id.trim_start_matches("sha256:")
        );
        if *path != expected {
            return Err(KitFault::at(
                path,
                format!(
                    "holds decision {}, not the one its name says",
                    verified.decision_id
                ),
            ));
        }
        decisions.push(VerifiedDecision {
            path: path.clone(),
            decision_id: verified.decision_id,
            key_id: verified.key_id,
        });
    }

    let downloads: Vec<KitDownload> = match kit.files.get(DOWNLOADS) {
        Some(content) => serde_json::from_slice(content)
            .map_err(|e| KitFault::at(DOWNLOADS, format!("not a download listing: {e}")))?,
        None => Vec::new(),
    };
    for download in &downloads {
        let path = format!("{DOWNLOADS_DIR}{}", download.name);
        let content = kit
            .files
            .get(&path)
            .ok_or_else(|| KitFault::at(DOWNLOADS, format!("lists {path}, which is missing")))?;
        if download.name.contains('/') {
            return Err(KitFault::at(
                DOWNLOADS,
                format!("lists {:?}, not a file name", download.name),
            ));
        }
        if sha256_id(content) != format!("sha256:{}", download.sha256)
            || content.len() as u64 != download.size
        {
            return Err(KitFault::at(
                &path,
                format!(
                    "differs from downloads.json: expected sha256:{} ({} bytes), actual {} ({} bytes)",
                    download.sha256,
                    download.size,
                    sha256_id(content),
                    content.len()
                ),
            ));
        }
    }

    Ok(VerifiedKit {
        key_id: key.key_id().to_owned(),
        files: manifest.files.len(),
        bytes,
        releases,
        documents,
        decisions,
        blobs,
        downloads,
    })
}

/// The digests `index.json` names.
fn index_digests(kit: &Kit) -> Result<BTreeSet<String>, KitFault> {
    let index = kit
        .files
        .get(OCI_INDEX)
        .ok_or_else(|| KitFault::at(OCI_INDEX, "missing"))?;
    let refs: References = serde_json::from_slice(index)
        .map_err(|e| KitFault::at(OCI_INDEX, format!("not an image index: {e}")))?;
    Ok(refs.manifests.into_iter().map(|d| d.digest).collect())
}

/// Walks the layout from `index.json`; returns how many blobs it holds. Every blob
/// reached must match its descriptor, and no blob may be unreached.
fn check_layout(kit: &Kit) -> Result<usize, KitFault> {
    let layout = kit
        .files
        .get(OCI_LAYOUT)
        .ok_or_else(|| KitFault::at(OCI_LAYOUT, "missing"))?;
    let version: serde_json::Value = serde_json::from_slice(layout)
        .map_err(|e| KitFault::at(OCI_LAYOUT, format!("not JSON: {e}")))?;
    if version["imageLayoutVersion"] != "1.0.0" {
        return Err(KitFault::at(OCI_LAYOUT, "imageLayoutVersion is not 1.0.0"));
    }
    let index = kit
        .files
        .get(OCI_INDEX)
        .ok_or_else(|| KitFault::at(OCI_INDEX, "missing"))?;
    let roots = referenced_blobs(index).map_err(|e| KitFault::at(OCI_INDEX, e.0))?;
    let mut seen = BTreeSet::new();
    let mut queue: Vec<(String, String, u64, bool)> = roots
        .into_iter()
        .map(|b| (OCI_INDEX.to_owned(), b.digest, b.size, b.is_manifest))
        .collect();
    while let Some((parent, digest, size, walk)) = queue.pop() {
        if !is_sha256_id(&digest) {
            return Err(KitFault::at(
                &parent,
                format!("names digest {digest:?}, not sha256:<hex>"),
            ));
        }
        let path = blob_path(&digest);
        let content = kit.files.get(&path).ok_or_else(|| {
            KitFault::at(
                &path,
                format!("missing (referenced by {parent} as {digest})"),
            )
        })?;
        let actual = sha256_id(content);
        if actual != digest || content.len() as u64 != size {
            return Err(KitFault::at(
                &path,
                format!(
                    "does not match its descriptor in {parent}: expected {digest} ({size} bytes), actual {actual} ({} bytes)",
                    content.len()
                ),
            ));
        }
        if !seen.insert(digest.clone()) {
            continue;
        }
        if walk {
            let children = referenced_blobs(content).map_err(|e| KitFault::at(&path, e.0))?;
            queue.extend(
                children
                    .into_iter()
                    .map(|b| (path.clone(), b.digest, b.size, b.is_manifest)),
            );
        }
    }
    for path in kit.files.keys().filter(|p| p.starts_with(OCI_DIR)) {
        if path == OCI_LAYOUT || path == OCI_INDEX {
            continue;
        }
        let Some(hex) = path.strip_prefix(OCI_BLOBS) else {
            return Err(KitFault::at(path, "is not part of an OCI image layout"));
        };
        if !seen.contains(&format!("sha256:{hex}")) {
            return Err(KitFault::at(path, "is a blob no image references"));
        }
    }
    Ok(seen.len())
}

fn key_list(trusted: &[PublicKey]) -> String {
    if trusted.is_empty() {
        return "none given".to_owned();
    }
    trusted
        .iter()
        .map(|k| k.key_id().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed([seed; 32])
    }

    /// A kit with two images sharing a layer, a release naming both, signed by key 1.
    fn kit() -> Kit {
        let mut kit = Kit::default();
        let shared = b"shared layer".to_vec();
        let mut images = Vec::new();
        for name in ["api", "web"] {
            let config = format!("{{\"config\":\"{name}\"}}").into_bytes();
            let own = format!("layer of {name}").into_bytes();
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_id(&config), "size": config.len()},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_id(&shared), "size": shared.len()},
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_id(&own), "size": own.len()},
                ],
            }))
            .expect("json");
            images.push((
                sha256_id(&manifest),
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
                manifest.len() as u64,
                format!("shop/{name}"),
            ));
            for blob in [config, own, shared.clone(), manifest] {
                kit.files.insert(blob_path(&sha256_id(&blob)), blob);
            }
        }
        kit.files
            .insert(OCI_LAYOUT.to_owned(), OCI_LAYOUT_CONTENT.to_vec());
        kit.files
            .insert(OCI_INDEX.to_owned(), oci_index(&images).expect("index"));
        let release = KitRelease {
            name: "shop".to_owned(),
            version: "1.0".to_owned(),
            components: images
                .iter()
                .map(|(digest, _, _, repository)| KitComponent {
                    name: repository.trim_start_matches("shop/").to_owned(),
                    registry: "127.0.0.1:5000".to_owned(),
                    repository: repository.clone(),
                    tag: None,
                    digest: digest.clone(),
                })
                .collect(),
        };
        kit.files.insert(
            release_path("shop", "1.0"),
            canonical_via_value(&release).expect("release"),
        );
        kit.sign(&key(1)).expect("sign");
        kit
    }

    fn refused(kit: &Kit, trusted: &[PublicKey]) -> KitFault {
        verify_kit(kit, trusted).expect_err("the kit must be refused")
    }

    #[test]
    fn a_signed_kit_verifies_and_shares_blobs() {
        let kit = kit();
        let verified = verify_kit(&kit, &[key(1).public_key()]).expect("verifies");
        assert_eq!(verified.releases.len(), 1);
        // Two manifests, two configs, two own layers, one shared layer.
        assert_eq!(verified.blobs, 7);
        // Built and signed again from the same files: the same bytes.
        assert_eq!(
            kit.to_tar().expect("tar"),
            super::tests::kit().to_tar().expect("tar")
        );
        let back = Kit::from_tar(&kit.to_tar().expect("tar")).expect("reads");
        assert_eq!(back, kit);
    }

    #[test]
    fn tampering_is_refused_naming_the_file() {
        let trusted = [key(1).public_key()];
        let blob = kit()
            .files
            .keys()
            .find(|p| p.starts_with(OCI_BLOBS))
            .cloned()
            .expect("a blob");

        let mut flipped = kit();
        if let Some(content) = flipped.files.get_mut(&blob) {
            content[0] ^= 1;
        }
        let fault = refused(&flipped, &trusted);
        assert_eq!(fault.file.as_deref(), Some(blob.as_str()));
        assert!(fault.message.contains("expected sha256:"), "{fault}");

        let mut manifest = kit();
        if let Some(content) = manifest.files.get_mut(MANIFEST) {
            content[10] ^= 1;
        }
        assert_eq!(refused(&manifest, &trusted).file.as_deref(), Some(MANIFEST));

        let mut missing = kit();
        missing.files.remove(&blob);
        let fault = refused(&missing, &trusted);
        assert_eq!(fault.file.as_deref(), Some(blob.as_str()));
        assert!(fault.message.starts_with("missing"), "{fault}");

        let mut extra = kit();
        extra.files.insert("notes.txt".to_owned(), b"hi".to_vec());
        assert_eq!(refused(&extra, &trusted).file.as_deref(), Some("notes.txt"));

        let mut other = kit();
        other.sign(&key(2)).expect("sign");
        let fault = refused(&other, &trusted);
        assert_eq!(fault.file.as_deref(), Some(MANIFEST_SIGNATURE));
        assert!(fault.message.contains("trusted"), "{fault}");
    }

    #[test]
    fn downloads_are_checked_against_their_listing() {
        let agent = b"agent binary".to_vec();
        let listing = |size: usize| {
            serde_json::to_vec(&[KitDownload {
                name: "stella-agent-linux-amd64".to_owned(),
                kind: "agent".to_owned(),
                os: "linux".to_owned(),
                arch: "amd64".to_owned(),
                size: size as u64,
                sha256: sha256_id(&agent).trim_start_matches("sha256:").to_owned(),
            }])
            .expect("json")
        };
        let mut kit = kit();
        kit.files.insert(DOWNLOADS.to_owned(), listing(agent.len()));
        kit.files.insert(
            format!("{DOWNLOADS_DIR}stella-agent-linux-amd64"),
            agent.clone(),
        );
        kit.sign(&key(1)).expect("sign");
        let verified = verify_kit(&kit, &[key(1).public_key()]).expect("verifies");
        assert_eq!(verified.downloads.len(), 1);

        // Signed, yet not what the listing says: refused naming the file.
        kit.files
            .insert(DOWNLOADS.to_owned(), listing(agent.len() + 1));
        kit.sign(&key(1)).expect("sign");
        let fault = refused(&kit, &[key(1).public_key()]);
        assert_eq!(
            fault.file.as_deref(),
            Some("downloads/stella-agent-linux-amd64")
        );
    }

    #[test]
    fn a_release_whose_digest_is_not_in_the_layout_is_refused() {
        let mut kit = kit();
        let path = release_path("shop", "1.0");
        let mut release: KitRelease = serde_json::from_slice(&kit.files[&path]).expect("release");
        release.components[0].digest = sha256_id(b"elsewhere");
        kit.files
            .insert(path.clone(), canonical_via_value(&release).expect("json"));
        kit.sign(&key(1)).expect("sign");
        let fault = refused(&kit, &[key(1).public_key()]);
        assert_eq!(fault.file.as_deref(), Some(path.as_str()));
        assert!(fault.message.contains("not in the OCI layout"), "{fault}");
    }
}
