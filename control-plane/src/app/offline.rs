//! Offline kits (docs/offline.md): the server assembles and signs a kit of releases,
//! their images fetched by digest, their scan reports and VEX and their decision
//! records; and keeps decision records imported from another server's kit.
//!
//! The format and its verification are `stella_decision::offline`, which the CLI links
//! too, so what this writes is what `stella offline verify` checks.

use std::collections::BTreeSet;

use stella_decision::canonical::canonical_via_value;
use stella_decision::dsse::PublicKey;
use stella_decision::evidence::verify_packet;
use stella_decision::offline::{
    blob_path, oci_index, release_path, Kit, KitComponent, KitDocument, KitDownload, KitRelease,
    DECISIONS_DIR, DOCUMENTS, DOCUMENTS_DIR, DOWNLOADS, DOWNLOADS_DIR, OCI_INDEX, OCI_LAYOUT,
    OCI_LAYOUT_CONTENT,
};

use super::{now_ms, App};
use crate::domain::{ImageRef, ImportedEvidence, Release, User};
use crate::error::{AppError, ErrorKind};
use crate::registry::RegistryError;
use crate::store::StoreError;

/// The most releases one kit may hold.
pub const MAX_KIT_RELEASES: usize = 64;

/// A signed kit and what it holds.
#[derive(Debug, Clone)]
pub struct BundledKit {
    /// The files, manifest and signature included.
    pub kit: Kit,
    /// Distinct images.
    pub images: usize,
    /// Distinct blobs in the OCI layout (manifests included).
    pub blobs: usize,
}

/// What importing one decision record did.
#[derive(Debug, Clone)]
pub struct EvidenceImport {
    /// The decision id.
    pub decision_id: String,
    /// The key that signed it.
    pub key_id: String,
    /// `false` when it was imported before.
    pub created: bool,
}

impl App {
    /// Assembles the offline kit of `releases` (`(name, version)`), signed with this
    /// server's key. `downloads` are the agent binaries and packages this server serves
    /// (`None` when it serves none): they go under `downloads/` with `downloads.json`.
    /// Deterministic: the same stored releases, documents, decisions, downloads and
    /// registry content give the same files and the same signature.
    pub async fn bundle_kit(
        &self,
        releases: &[(String, String)],
        downloads: Option<Vec<(KitDownload, Vec<u8>)>>,
    ) -> Result<BundledKit, AppError> {
        let wanted: BTreeSet<&(String, String)> = releases.iter().collect();
        if wanted.is_empty() {
            return Err(AppError::invalid(
                "a kit needs at least one --release NAME@VERSION",
            ));
        }
        if wanted.len() > MAX_KIT_RELEASES {
            return Err(AppError::invalid(format!(
                "a kit holds at most {MAX_KIT_RELEASES} releases"
            )));
        }
        let mut stored = Vec::with_capacity(wanted.len());
        for (name, version) in wanted {
            let release =
                self.store
                    .get_release(name, version)
                    .await
                    .map_err(|error| match error {
                        StoreError::NotFound { .. } => AppError::new(
                            ErrorKind::NotFound,
                            "unknown_release",
                            format!("no release {name}@{version}"),
                        ),
                        other => other.into(),
                    })?;
            stored.push(release);
        }

        let mut kit = Kit::default();
        let mut index: Vec<(String, String, u64, String)> = Vec::new();
        let mut have: BTreeSet<String> = BTreeSet::new();
        let mut image_digests: BTreeSet<String> = BTreeSet::new();
        for release in &stored {
            let kit_release = self
                .bundle_images(release, &mut kit, &mut index, &mut have)
                .await?;
            image_digests.extend(kit_release.components.iter().map(|c| c.digest.clone()));
            kit.files.insert(
                release_path(&release.name, &release.version),
                canonical(&kit_release)?,
            );
        }
        kit.files
            .insert(OCI_LAYOUT.to_owned(), OCI_LAYOUT_CONTENT.to_vec());
        kit.files.insert(OCI_INDEX.to_owned(), {
            oci_index(&index).map_err(|e| internal_kit(&e.0))?
        });

        // Scan reports of every image, and every VEX document (VEX applies by product).
        let mut documents: BTreeSet<KitDocument> = BTreeSet::new();
        for digest in &image_digests {
            for link in self.store.scan_reports(digest).await? {
                let document = self.store.get_document(&link.document_id).await?;
                documents.insert(KitDocument {
                    image_digest: Some(digest.clone()),
                    document: document.id.clone(),
                    kind: document.kind.clone(),
                });
                kit.files.insert(
                    format!("{DOCUMENTS_DIR}{}", hex_of(&document.id)),
                    document.content.into_bytes(),
                );
            }
        }
        for document in self.store.list_documents("openvex").await? {
            documents.insert(KitDocument {
                image_digest: None,
                document: document.id.clone(),
                kind: document.kind.clone(),
            });
            kit.files.insert(
                format!("{DOCUMENTS_DIR}{}", hex_of(&document.id)),
                document.content.into_bytes(),
            );
        }
        kit.files.insert(
            DOCUMENTS.to_owned(),
            canonical(&documents.into_iter().collect::<Vec<_>>())?,
        );

        // Each decision on these releases, as its evidence packet.
        for release in &stored {
            for id in self
                .store
                .decision_ids_of_release(&release.name, &release.version)
                .await?
            {
                let packet = self.evidence_packet(&id).await?;
                kit.files
                    .insert(format!("{DECISIONS_DIR}{}.tar.gz", hex_of(&id)), packet);
            }
        }

        if let Some(mut downloads) = downloads {
            downloads.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            for (download, bytes) in &downloads {
                kit.files
                    .insert(format!("{DOWNLOADS_DIR}{}", download.name), bytes.clone());
            }
            let listing: Vec<&KitDownload> = downloads.iter().map(|(d, _)| d).collect();
            kit.files.insert(DOWNLOADS.to_owned(), canonical(&listing)?);
        }

        kit.sign(&self.signer).map_err(|e| internal_kit(&e.0))?;
        let images = index.iter().map(|i| &i.0).collect::<BTreeSet<_>>().len();
        tracing::info!(
            releases = stored.len(),
            images,
            blobs = have.len(),
            "offline kit bundled"
        );
        Ok(BundledKit {
            kit,
            images,
            blobs: have.len(),
        })
    }

    /// Fetches every component image of `release` into the kit's layout.
    async fn bundle_images(
        &self,
        release: &Release,
        kit: &mut Kit,
        index: &mut Vec<(String, String, u64, String)>,
        have: &mut BTreeSet<String>,
    ) -> Result<KitRelease, AppError> {
        let mut components = Vec::with_capacity(release.components.len());
        for component in &release.components {
            let image = ImageRef::parse(&component.image).map_err(super::invalid)?;
            let source_tag = ImageRef::parse(&component.source)
                .ok()
                .and_then(|source| source.tag);
            let access = self.registry_access(&image.registry).await?;
            let pulled = self
                .registry
                .pull_image(&image, &access, have)
                .await
                .map_err(|error| {
                    let kind = match &error {
                        RegistryError::NotFound { .. } => ErrorKind::FailedPrecondition,
                        RegistryError::Unauthorized { .. } => ErrorKind::FailedPrecondition,
                        _ => ErrorKind::Unavailable,
                    };
                    AppError::new(
                        kind,
                        "image_unavailable",
                        format!(
                            "release {}@{} component `{}`: {error}",
                            release.name, release.version, component.name
                        ),
                    )
                })?;
            let digest = pulled.digest.to_string();
            index.push((
                digest.clone(),
                pulled.media_type.clone(),
                pulled.manifest.len() as u64,
                format!("{}/{}", image.registry, image.repository),
            ));
            for (blob_digest, bytes) in pulled.blobs {
                kit.files.insert(blob_path(&blob_digest), bytes);
                have.insert(blob_digest);
            }
            kit.files.insert(blob_path(&digest), pulled.manifest);
            have.insert(digest.clone());
            components.push(KitComponent {
                name: component.name.clone(),
                registry: image.registry.clone(),
                repository: image.repository.clone(),
                tag: source_tag,
                digest,
            });
        }
        Ok(KitRelease {
            name: release.name.clone(),
            version: release.version.clone(),
            components,
        })
    }

    /// Keeps a decision record from another server's kit: its evidence packet, verified
    /// against `key_pem` (the key the kit was verified with) and recomputed from its
    /// inputs. Importing the same record again changes nothing.
    pub async fn import_evidence(
        &self,
        packet: &[u8],
        key_pem: &str,
        kit_manifest: &str,
        imported_by: &User,
    ) -> Result<EvidenceImport, AppError> {
        let key = PublicKey::from_pem(key_pem).map_err(|e| {
            AppError::new(
                ErrorKind::InvalidArgument,
                "invalid_key",
                format!("the key: {e}"),
            )
        })?;
        let verified = verify_packet(packet, &[key], &|inputs, documents| {
            stella_decision::gates::recompute(inputs, documents)
        })
        .map_err(|fault| {
            AppError::new(
                ErrorKind::InvalidArgument,
                "evidence_invalid",
                format!("the evidence packet does not verify: {fault}"),
            )
        })?;
        let field = |name: &str| {
            verified.decision[name]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let evidence = ImportedEvidence {
            decision_id: verified.decision_id.clone(),
            key_id: verified.key_id.clone(),
            outcome: field("outcome"),
            release: field("release"),
            version: field("version"),
            environment: field("environment"),
            packet: packet.to_vec(),
            kit_manifest: kit_manifest.to_owned(),
            imported_by: imported_by.name.clone(),
            imported_at_ms: now_ms(),
        };
        let created = self.store.put_imported_evidence(&evidence).await?;
        tracing::info!(decision_id = %evidence.decision_id, created, "evidence imported");
        Ok(EvidenceImport {
            decision_id: verified.decision_id,
            key_id: verified.key_id,
            created,
        })
    }

    /// Imported decision records, newest first, optionally of one release.
    pub async fn imported_evidence(
        &self,
        release: Option<&str>,
    ) -> Result<Vec<ImportedEvidence>, AppError> {
        Ok(self.store.list_imported_evidence(release).await?)
    }
}

/// The hex of a `sha256:<hex>` id.
fn hex_of(id: &str) -> &str {
    id.trim_start_matches("sha256:")
}

fn canonical<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, AppError> {
    canonical_via_value(value).map_err(|e| internal_kit(&e.0))
}

fn internal_kit(message: &str) -> AppError {
    AppError::new(
        ErrorKind::Internal,
        "kit",
        format!("cannot write the offline kit: {message}"),
    )
}
