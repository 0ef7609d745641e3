//! Evidence packets: a deterministic `.tar.gz` holding a decision, what it was
//! computed from, and its signature, which verifies offline.
//!
//! Layout (all paths relative, `/`-separated):
//!
//! | file | what |
//! |---|---|
//! | `manifest.json` | canonical `{"schema":"stella.evidence/v1","decision_id":…,"files":{path:"sha256:<hex>"}}`, every other file with its content id |
//! | `decision.json` | the canonical decision record; the decision id is its content id |
//! | `inputs.json` | the canonical inputs the decision is computed from |
//! | `envelope.json` | DSSE envelope of the in-toto Statement whose predicate is the decision |
//! | `key.pem` | the signer's public key; informative only, never trusted by itself |
//! | `documents/<hex>` | raw input documents (scan reports, VEX, policy sources), named by the hex SHA-256 of their content |
//! | `deployment.json`, `stickers.json` | optional: what was deployed, and the stickers written |
//! | `rollout.json` | optional: a progressive deployment's steps; each analysis step's `detail.analysis` (judge, samples, verdict) must give its verdict again when recomputed |
//!
//! The archive is ustar, `manifest.json` first and then every other file in byte
//! order of its path (so a streaming reader meets the manifest first); regular files
//! only, mode 0644, uid and gid 0, empty user and group names, mtime 0; gzip with
//! mtime 0, no file name, OS byte 255 (unknown) and compression level 6. The same
//! packet always gives the same bytes with the same `flate2` backend; verification
//! never depends on the archive bytes, only on the files in it.
//!
//! What vouches for what: the signature covers `decision.json` (through the
//! envelope); recomputation ties `inputs.json` and the documents to it; `key.pem`
//! must name the signer. `manifest.sig.json`, written by [`Packet::write_signed`], is
//! a DSSE envelope over the manifest's bytes signed by the exporting server, which
//! vouches for every other file (`deployment.json`, `stickers.json`); without it those
//! files are only as good as the manifest and verification lists them as unattested.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::rc::Rc;

use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::{canonical_value, canonical_via_value, is_canonical, json_diff};
use crate::dsse::{verify_envelope_signer, Envelope, PublicKey, SigningKey, INTOTO_PAYLOAD_TYPE};
use crate::intoto::{Statement, Subject, DECISION_PREDICATE_TYPE};
use crate::{sha256_id, DecisionError};

/// The manifest: every other file and its content id.
pub const MANIFEST: &str = "manifest.json";
/// The exporting server's DSSE signature over the manifest's bytes.
pub const MANIFEST_SIGNATURE: &str = "manifest.sig.json";
/// The DSSE payload type of [`MANIFEST_SIGNATURE`].
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.stella.evidence-manifest+json";
/// The canonical decision record.
pub const DECISION: &str = "decision.json";
/// The canonical inputs the decision is computed from.
pub const INPUTS: &str = "inputs.json";
/// The DSSE envelope signing the decision.
pub const ENVELOPE: &str = "envelope.json";
/// The signer's public key (SPKI PEM), informative only.
pub const KEY: &str = "key.pem";
/// The directory of raw input documents, each named by the hex SHA-256 of its content.
pub const DOCUMENTS_DIR: &str = "documents/";
/// What was deployed (optional).
pub const DEPLOYMENT: &str = "deployment.json";
/// The version stickers written (optional).
pub const STICKERS: &str = "stickers.json";
/// The rollout's steps, with each analysis's samples and verdict (optional).
pub const ROLLOUT: &str = "rollout.json";

/// The manifest's `schema`.
pub const MANIFEST_SCHEMA: &str = "stella.evidence/v1";
/// The most entries a packet may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// The most bytes a packet may unpack to (sum of file sizes): 256 MiB.
pub const MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;

/// A bound on the decompressed tar stream, headers and padding included, so a
/// crafted archive cannot make the reader inflate without end.
const MAX_TAR_STREAM_BYTES: u64 = MAX_UNPACKED_BYTES + (MAX_ENTRIES as u64 + 16) * 4096;
/// The gzip compression level: fixed, so the same packet gives the same bytes.
const GZIP_LEVEL: u32 = 6;
/// The gzip OS byte: 255, unknown.
const GZIP_OS_UNKNOWN: u8 = 255;

/// The files of an evidence packet, by relative `/`-separated path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packet {
    /// Content by path.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The parsed `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_SCHEMA`].
    pub schema: String,
    /// The decision's id: the content id of `decision.json`.
    pub decision_id: String,
    /// Every file but the manifest, with its content id.
    pub files: BTreeMap<String, String>,
}

/// Why a packet was refused: which file (when the fault is about one) and what.
pub type PacketFault = crate::FileFault;

/// What a verified packet holds.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedPacket {
    /// The decision id (content id of `decision.json`).
    pub decision_id: String,
    /// The id of the trusted key whose signature verified.
    pub key_id: String,
    /// How many files the manifest lists (every file but the manifest).
    pub files: usize,
    /// The decision record.
    pub decision: Value,
    /// Files the signature and the recomputation do not cover (`deployment.json`,
    /// `stickers.json`, anything else listed): only the unsigned manifest vouches for
    /// them, so they are informative.
    pub unattested: Vec<String>,
}

/// A decision with its id and its signature, ready to go into a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDecision {
    /// `sha256_id` of `decision`.
    pub decision_id: String,
    /// The canonical decision record (`decision.json`).
    pub decision: Vec<u8>,
    /// The DSSE envelope of the in-toto Statement whose predicate is the decision.
    pub envelope: Envelope,
}

/// Signs a decision given as its canonical JSON (the bytes of `decision.json`, whose
/// content id is the decision id): wraps it as the predicate of an in-toto Statement
/// about `subjects` and signs that as a DSSE envelope. Refuses bytes that are not
/// canonical JSON, as no packet holding them could verify.
pub fn sign_decision(
    key: &SigningKey,
    subjects: Vec<Subject>,
    decision: &[u8],
) -> Result<SignedDecision, DecisionError> {
    if !is_canonical(decision) {
        return Err(DecisionError::new(
            "decision to sign is not canonical JSON (RFC 8785)",
        ));
    }
    let statement = Statement::decision_canonical(subjects, decision)?;
    Ok(SignedDecision {
        decision_id: sha256_id(decision),
        envelope: key.sign_envelope(INTOTO_PAYLOAD_TYPE, &statement),
        decision: decision.to_vec(),
    })
}

/// `documents/<hex>`: where a raw input document with this content goes.
pub fn document_path(content: &[u8]) -> String {
    let id = sha256_id(content);
    format!("{DOCUMENTS_DIR}{}", &id["sha256:".len()..])
}

impl Packet {
    /// An empty packet.
    pub fn new() -> Packet {
        Packet::default()
    }

    /// A packet with a signed decision, its inputs, its documents and the signer's
    /// public key. Optional files (`deployment.json`, `stickers.json`) can be added to
    /// `files` afterwards.
    pub fn for_decision(
        signed: &SignedDecision,
        inputs: Vec<u8>,
        documents: impl IntoIterator<Item = Vec<u8>>,
        signer: &PublicKey,
    ) -> Result<Packet, DecisionError> {
        let mut packet = Packet::new();
        packet
            .files
            .insert(DECISION.to_owned(), signed.decision.clone());
        packet.files.insert(INPUTS.to_owned(), inputs);
        packet
            .files
            .insert(ENVELOPE.to_owned(), signed.envelope.to_canonical()?);
        packet
            .files
            .insert(KEY.to_owned(), signer.to_pem().into_bytes());
        for document in documents {
            packet.add_document(document);
        }
        Ok(packet)
    }

    /// Adds a raw input document under `documents/<hex>` and returns its content id.
    pub fn add_document(&mut self, content: Vec<u8>) -> String {
        let path = document_path(&content);
        let id = format!("sha256:{}", &path[DOCUMENTS_DIR.len()..]);
        self.files.insert(path, content);
        id
    }

    /// The documents, keyed by content id (`sha256:<hex>`), as `recompute` gets them.
    pub fn documents(&self) -> crate::gates::Documents {
        self.files
            .iter()
            .filter_map(|(path, content)| {
                let hex = path.strip_prefix(DOCUMENTS_DIR)?;
                Some((format!("sha256:{hex}"), content.as_slice().into()))
            })
            .collect()
    }

    /// The canonical `manifest.json` for this packet: every file but a manifest, with
    /// its content id.
    pub fn manifest(&self, decision_id: &str) -> Result<Vec<u8>, DecisionError> {
        if !is_sha256_id(decision_id) {
            return Err(DecisionError::new(format!(
                "evidence packet: decision id {decision_id:?} is not sha256:<64 lowercase hex>"
            )));
        }
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA.to_owned(),
            decision_id: decision_id.to_owned(),
            files: self
                .files
                .iter()
                .filter(|(path, _)| {
                    path.as_str() != MANIFEST && path.as_str() != MANIFEST_SIGNATURE
                })
                .map(|(path, content)| (path.clone(), sha256_id(content)))
                .collect(),
        };
        canonical_via_value(&manifest)
    }

    /// Like [`Packet::write`], with the manifest signed by `key` in
    /// `manifest.sig.json`, so every file the manifest lists is attested. Ed25519
    /// signatures are deterministic: two writes are still byte-identical.
    pub fn write_signed(
        &self,
        decision_id: &str,
        key: &SigningKey,
    ) -> Result<Vec<u8>, DecisionError> {
        let manifest = self.manifest(decision_id)?;
        let envelope = key.sign_envelope(MANIFEST_PAYLOAD_TYPE, &manifest);
        let signature = serde_json::to_vec(&envelope)
            .map_err(|e| DecisionError::new(format!("encoding the manifest signature: {e}")))?;
        let rest = self
            .files
            .iter()
            .filter(|(path, _)| path.as_str() != MANIFEST && path.as_str() != MANIFEST_SIGNATURE)
            .map(|(path, content)| (path.as_str(), content.as_slice()));
        pack_entries(
            [
                (MANIFEST, manifest.as_slice()),
                (MANIFEST_SIGNATURE, signature.as_slice()),
            ]
            .into_iter()
            .chain(rest),
        )
    }

    /// The packet as a `.tar.gz`, with a fresh `manifest.json` (any manifest in
    /// `files` is replaced). Two writes of the same packet are byte-identical.
    pub fn write(&self, decision_id: &str) -> Result<Vec<u8>, DecisionError> {
        let manifest = self.manifest(decision_id)?;
        let rest = self
            .files
            .iter()
            .filter(|(path, _)| path.as_str() != MANIFEST && path.as_str() != MANIFEST_SIGNATURE)
            .map(|(path, content)| (path.as_str(), content.as_slice()));
        pack_entries(std::iter::once((MANIFEST, manifest.as_slice())).chain(rest))
    }

    /// The files exactly as they are, as a `.tar.gz` in the packet layout (manifest
    /// first, if there is one), without computing a manifest. For tools that re-pack
    /// a packet they read; [`Packet::write`] is how packets are made.
    pub fn pack(&self) -> Result<Vec<u8>, DecisionError> {
        let manifest = self
            .files
            .get_key_value(MANIFEST)
            .map(|(path, content)| (path.as_str(), content.as_slice()));
        let rest = self
            .files
            .iter()
            .filter(|(path, _)| path.as_str() != MANIFEST)
            .map(|(path, content)| (path.as_str(), content.as_slice()));
        pack_entries(manifest.into_iter().chain(rest))
    }

    /// Unpacks a `.tar.gz` packet, refusing what is not a plain set of files: not
    /// gzip, not tar, absolute paths, `..`, unnormalised paths, anything but regular
    /// files, duplicate paths, more than [`MAX_ENTRIES`] entries or more than
    /// [`MAX_UNPACKED_BYTES`] unpacked, and data after the archive. Checks nothing
    /// about the content; see [`verify_packet`].
    pub fn read(bytes: &[u8]) -> Result<Packet, PacketFault> {
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            return Err(PacketFault::whole(
                "not a gzip file (an evidence packet is a .tar.gz)",
            ));
        }
        let exceeded = Rc::new(Cell::new(false));
        let stream = Capped {
            inner: flate2::bufread::GzDecoder::new(bytes),
            remaining: MAX_TAR_STREAM_BYTES,
            exceeded: Rc::clone(&exceeded),
        };
        let mut archive = tar::Archive::new(stream);
        let mut files = BTreeMap::new();
        let unpack_fault = |e: io::Error, file: Option<&str>| {
            let message = if exceeded.get() {
                "packet unpacks to more than 256 MiB".to_owned()
            } else if e.kind() == io::ErrorKind::UnexpectedEof {
                format!("packet is truncated: {e}")
            } else {
                format!("packet is not a valid .tar.gz: {e}")
            };
            PacketFault {
                file: file.map(str::to_owned),
                message,
            }
        };
        {
            let entries = archive.entries().map_err(|e| unpack_fault(e, None))?;
            let mut total: u64 = 0;
            let mut count: usize = 0;
            let mut last_path: Option<String> = None;
            for entry in entries {
                let mut entry = entry.map_err(|e| unpack_fault(e, last_path.as_deref()))?;
                count += 1;
                if count > MAX_ENTRIES {
                    return Err(PacketFault::whole(format!(
                        "packet has more than {MAX_ENTRIES} entries"
                    )));
                }
                let path = entry_path(&entry)?;
                if files.contains_key(&path) {
                    return Err(PacketFault::at(&path, "appears twice in the archive"));
                }
                let size = entry.size();
                total = total.saturating_add(size);
                if total > MAX_UNPACKED_BYTES {
                    return Err(PacketFault::at(
                        &path,
                        "packet unpacks to more than 256 MiB",
                    ));
                }
                // The size is bounded above; do not trust it for more than a start.
                let mut content =
                    Vec::with_capacity(usize::try_from(size.min(1 << 20)).unwrap_or(0));
                entry
                    .read_to_end(&mut content)
                    .map_err(|e| unpack_fault(e, Some(&path)))?;
                if content.len() as u64 != size {
                    return Err(PacketFault::at(
                        &path,
                        format!(
                            "packet is truncated: header says {size} bytes, archive holds {}",
                            content.len()
                        ),
                    ));
                }
                last_path = Some(path.clone());
                files.insert(path, content);
            }
        }
        // Read the rest of the stream so gzip's length and CRC are checked, and make
        // sure nothing hides after the end-of-archive marker or the gzip stream.
        let mut stream = archive.into_inner();
        let mut rest = [0u8; 8192];
        loop {
            let n = stream.read(&mut rest).map_err(|e| unpack_fault(e, None))?;
            if n == 0 {
                break;
            }
            if rest[..n].iter().any(|&b| b != 0) {
                return Err(PacketFault::whole(
                    "packet has data after the end of the tar archive",
                ));
            }
        }
        if !stream.inner.into_inner().is_empty() {
            return Err(PacketFault::whole(
                "packet has data after the end of the gzip stream",
            ));
        }
        Ok(Packet { files })
    }

    /// The packet's manifest, checked for form only (present, canonical, this
    /// schema, valid paths and ids); [`verify_packet`] checks it against the files.
    pub fn read_manifest(&self) -> Result<Manifest, PacketFault> {
        check_manifest(self)
    }

    /// The signer's public key from `key.pem`, if the packet has one. Informative: a
    /// packet proves nothing by the key it carries.
    pub fn embedded_key(&self) -> Result<Option<PublicKey>, PacketFault> {
        let Some(pem) = self.files.get(KEY) else {
            return Ok(None);
        };
        let pem = std::str::from_utf8(pem).map_err(|_| PacketFault::at(KEY, "not UTF-8 text"))?;
        PublicKey::from_pem(pem)
            .map(Some)
            .map_err(|e| PacketFault::at(KEY, e.0))
    }
}

/// How many differences a recompute mismatch lists before summarising the rest.
const MAX_LISTED_DIFFERENCES: usize = 20;

/// How [`verify_packet`] recomputes a decision: from `inputs.json` and the documents
/// keyed by content id, to the canonical decision bytes.
pub type Recompute<'a> =
    dyn Fn(&[u8], &crate::gates::Documents) -> Result<Vec<u8>, DecisionError> + 'a;

/// Verifies an evidence packet offline.
///
/// `trusted` are the keys whose signatures count (the packet's own `key.pem` proves
/// nothing by itself). `recompute` gets `inputs.json` and the documents keyed by
/// content id (`sha256:<hex>`), and returns the canonical decision those inputs give.
///
/// Checks, in order, each failure naming the file: the archive unpacks cleanly; the
/// manifest is present, canonical and of this schema; every file is listed, none
/// extra, none missing, each with its content id; each document is named by its own
/// hash; `decision.json` is canonical and its id is the manifest's `decision_id`;
/// `envelope.json` is an in-toto DSSE envelope signed by a trusted key; its statement
/// is a decision statement whose predicate is `decision.json`; `key.pem`, when
/// present, is the key that signed; and the decision recomputed from the inputs is
/// `decision.json`, byte for byte.
pub fn verify_packet(
    bytes: &[u8],
    trusted: &[PublicKey],
    recompute: &Recompute<'_>,
) -> Result<VerifiedPacket, PacketFault> {
    let packet = Packet::read(bytes)?;
    let manifest = check_manifest(&packet)?;
    check_listing(&packet, &manifest)?;
    check_documents(&packet)?;

    let decision_bytes = required(&packet, DECISION)?;
    if !is_canonical(decision_bytes) {
        return Err(PacketFault::at(DECISION, "not canonical JSON (RFC 8785)"));
    }
    let decision_id = sha256_id(decision_bytes);
    if decision_id != manifest.decision_id {
        return Err(PacketFault::at(
            MANIFEST,
            format!(
                "decision_id is {}, but decision.json's id is {decision_id}",
                manifest.decision_id
            ),
        ));
    }
    let decision: Value = serde_json::from_slice(decision_bytes)
        .map_err(|e| PacketFault::at(DECISION, format!("not JSON: {e}")))?;

    let key_id = check_signature(&packet, trusted, decision_bytes)?;

    let inputs = required(&packet, INPUTS)?;
    let recomputed = recompute(inputs, &packet.documents()).map_err(|e| {
        PacketFault::at(
            INPUTS,
            format!("the decision cannot be recomputed from these inputs: {e}"),
        )
    })?;
    if recomputed != decision_bytes {
        return Err(PacketFault::at(
            DECISION,
            format!(
                "differs from the decision recomputed from inputs.json: {}",
                describe_difference(&decision, &recomputed)
            ),
        ));
    }

    check_rollout(&packet)?;
    let manifest_signed = check_manifest_signature(&packet, trusted)?;
    let unattested = if manifest_signed {
        Vec::new()
    } else {
        manifest
            .files
            .keys()
            .filter(|path| {
                ![DECISION, INPUTS, ENVELOPE, KEY].contains(&path.as_str())
                    && !path.starts_with(DOCUMENTS_DIR)
            })
            .cloned()
            .collect()
    };
    Ok(VerifiedPacket {
        decision_id,
        key_id,
        files: manifest.files.len(),
        decision,
        unattested,
    })
}

/// `rollout.json`, when present: canonical, and every recorded analysis gives its
/// verdict again from its samples (`decision::analysis::recompute`).
fn check_rollout(packet: &Packet) -> Result<(), PacketFault> {
    let Some(bytes) = packet.files.get(ROLLOUT) else {
        return Ok(());
    };
    if !is_canonical(bytes) {
        return Err(PacketFault::at(ROLLOUT, "not canonical JSON (RFC 8785)"));
    }
    let rollout: Value = serde_json::from_slice(bytes)
        .map_err(|e| PacketFault::at(ROLLOUT, format!("not JSON: {e}")))?;
    for step in rollout["steps"].as_array().into_iter().flatten() {
        let Some(analysis) = step.get("detail").and_then(|d| d.get("analysis")) else {
            continue;
        };
        let seq = &step["seq"];
        let record: crate::analysis::StepRecord = serde_json::from_value(analysis.clone())
            .map_err(|e| {
                PacketFault::at(ROLLOUT, format!("step {seq}: not an analysis record: {e}"))
            })?;
        let again = crate::analysis::recompute(&record).map_err(|e| {
            PacketFault::at(
                ROLLOUT,
                format!("step {seq}: the analysis cannot be recomputed: {e}"),
            )
        })?;
        if again != record.verdict {
            return Err(PacketFault::at(
                ROLLOUT,
                format!(
                    "step {seq}: the recorded verdict {:?} does not follow from its samples (recomputed: {again:?})",
                    record.verdict
                ),
            ));
        }
    }
    Ok(())
}

fn check_manifest(packet: &Packet) -> Result<Manifest, PacketFault> {
    let bytes = packet.files.get(MANIFEST).ok_or_else(|| {
        PacketFault::at(MANIFEST, "missing: every evidence packet has a manifest")
    })?;
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| PacketFault::at(MANIFEST, format!("not a valid manifest: {e}")))?;
    if !is_canonical(bytes) {
        return Err(PacketFault::at(MANIFEST, "not canonical JSON (RFC 8785)"));
    }
    if manifest.schema != MANIFEST_SCHEMA {
        return Err(PacketFault::at(
            MANIFEST,
            format!(
                "schema is {:?}, expected {MANIFEST_SCHEMA:?}",
                manifest.schema
            ),
        ));
    }
    if !is_sha256_id(&manifest.decision_id) {
        return Err(PacketFault::at(
            MANIFEST,
            format!(
                "decision_id {:?} is not sha256:<64 lowercase hex>",
                manifest.decision_id
            ),
        ));
    }
    for (path, id) in &manifest.files {
        if path == MANIFEST {
            return Err(PacketFault::at(MANIFEST, "lists itself"));
        }
        check_path(path).map_err(|message| {
            PacketFault::at(
                MANIFEST,
                format!("lists {path:?}, which is not a valid path: {message}"),
            )
        })?;
        if !is_sha256_id(id) {
            return Err(PacketFault::at(
                MANIFEST,
                format!("gives {path} the id {id:?}, which is not sha256:<64 lowercase hex>"),
            ));
        }
    }
    Ok(manifest)
}

/// When `manifest.sig.json` is present: it must be a DSSE envelope over exactly the
/// manifest's bytes, signed by a trusted key. Returns whether the manifest is signed.
fn check_manifest_signature(packet: &Packet, trusted: &[PublicKey]) -> Result<bool, PacketFault> {
    let Some(bytes) = packet.files.get(MANIFEST_SIGNATURE) else {
        return Ok(false);
    };
    let envelope =
        Envelope::from_json(bytes).map_err(|e| PacketFault::at(MANIFEST_SIGNATURE, e.0))?;
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE {
        return Err(PacketFault::at(
            MANIFEST_SIGNATURE,
            format!(
                "payloadType is {:?}, expected {MANIFEST_PAYLOAD_TYPE:?}",
                envelope.payload_type
            ),
        ));
    }
    let (payload, _) = verify_envelope_signer(&envelope, trusted)
        .map_err(|e| PacketFault::at(MANIFEST_SIGNATURE, e.0))?;
    let manifest = required(packet, MANIFEST)?;
    if payload != manifest {
        return Err(PacketFault::at(
            MANIFEST,
            "differs from the manifest signed in manifest.sig.json",
        ));
    }
    Ok(true)
}

/// Every file listed, none extra, each with the listed content id; the first fault
/// in path order.
fn check_listing(packet: &Packet, manifest: &Manifest) -> Result<(), PacketFault> {
    let mut paths: Vec<&String> = packet
        .files
        .keys()
        .filter(|path| path.as_str() != MANIFEST && path.as_str() != MANIFEST_SIGNATURE)
        .chain(manifest.files.keys())
        .collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        match (packet.files.get(path), manifest.files.get(path)) {
            (Some(content), Some(listed)) => {
                let actual = sha256_id(content);
                if &actual != listed {
                    return Err(PacketFault::at(
                        path,
                        format!("sha256 mismatch: manifest says {listed}, content is {actual}"),
                    ));
                }
            }
            (Some(_), None) => {
                return Err(PacketFault::at(path, "not listed in manifest.json"));
            }
            (None, _) => {
                return Err(PacketFault::at(
                    path,
                    "missing from the packet (manifest.json lists it)",
                ));
            }
        }
    }
    Ok(())
}

/// Each `documents/<hex>` is named by its own SHA-256.
fn check_documents(packet: &Packet) -> Result<(), PacketFault> {
    for (path, content) in &packet.files {
        let Some(name) = path.strip_prefix(DOCUMENTS_DIR) else {
            continue;
        };
        if !is_lower_hex_64(name) {
            return Err(PacketFault::at(
                path,
                "documents are named documents/<64 lowercase hex of their sha256>",
            ));
        }
        let actual = sha256_id(content);
        if actual["sha256:".len()..] != *name {
            return Err(PacketFault::at(
                path,
                format!("named for sha256:{name}, but its content is {actual}"),
            ));
        }
    }
    Ok(())
}

/// The envelope is an in-toto DSSE envelope signed by a trusted key, over a decision
/// statement whose predicate is `decision.json`; `key.pem` names the same key.
/// Returns the signer's key id.
fn check_signature(
    packet: &Packet,
    trusted: &[PublicKey],
    decision_bytes: &[u8],
) -> Result<String, PacketFault> {
    let envelope = Envelope::from_json(required(packet, ENVELOPE)?)
        .map_err(|e| PacketFault::at(ENVELOPE, e.0))?;
    if envelope.payload_type != INTOTO_PAYLOAD_TYPE {
        return Err(PacketFault::at(
            ENVELOPE,
            format!(
                "payloadType is {:?}, expected {INTOTO_PAYLOAD_TYPE:?}",
                envelope.payload_type
            ),
        ));
    }
    let (payload, signer) =
        verify_envelope_signer(&envelope, trusted).map_err(|e| PacketFault::at(ENVELOPE, e.0))?;
    let statement = Statement::parse(&payload)
        .map_err(|e| PacketFault::at(ENVELOPE, format!("payload: {e}")))?;
    if statement.predicate_type != DECISION_PREDICATE_TYPE {
        return Err(PacketFault::at(
            ENVELOPE,
            format!(
                "predicateType is {:?}, expected {DECISION_PREDICATE_TYPE:?}",
                statement.predicate_type
            ),
        ));
    }
    let signed = canonical_value(&statement.predicate)
        .map_err(|e| PacketFault::at(ENVELOPE, format!("predicate: {e}")))?;
    if signed != decision_bytes {
        return Err(PacketFault::at(
            DECISION,
            format!(
                "differs from the decision signed in envelope.json: {}",
                describe_difference(&statement.predicate, decision_bytes)
            ),
        ));
    }
    if let Some(embedded) = packet.embedded_key()? {
        if embedded.key_id() != signer.key_id() {
            return Err(PacketFault::at(
                KEY,
                format!(
                    "holds key {}, but envelope.json is signed by key {}",
                    embedded.key_id(),
                    signer.key_id()
                ),
            ));
        }
    }
    Ok(signer.key_id().to_owned())
}

/// The differences from `expected` to the JSON in `other`, listed.
fn describe_difference(expected: &Value, other: &[u8]) -> String {
    let other: Value = match serde_json::from_slice(other) {
        Ok(value) => value,
        Err(e) => return format!("the other side is not JSON ({e})"),
    };
    let differences = json_diff(expected, &other);
    if differences.is_empty() {
        return "same content, different bytes (not canonical JSON?)".to_owned();
    }
    let mut listed: Vec<String> = differences
        .iter()
        .take(MAX_LISTED_DIFFERENCES)
        .map(ToString::to_string)
        .collect();
    if differences.len() > MAX_LISTED_DIFFERENCES {
        listed.push(format!(
            "and {} more",
            differences.len() - MAX_LISTED_DIFFERENCES
        ));
    }
    listed.join("; ")
}

fn required<'p>(packet: &'p Packet, file: &str) -> Result<&'p [u8], PacketFault> {
    packet
        .files
        .get(file)
        .map(Vec::as_slice)
        .ok_or_else(|| PacketFault::at(file, "missing: every evidence packet has one"))
}

/// The path of a tar entry that may be in a packet: UTF-8, relative, normalised, a
/// regular file.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, PacketFault> {
    let raw_path = entry.path_bytes();
    let Ok(path) = std::str::from_utf8(&raw_path) else {
        return Err(PacketFault::at(
            &String::from_utf8_lossy(&raw_path),
            "path is not UTF-8",
        ));
    };
    check_path(path).map_err(|message| PacketFault::at(path, message))?;
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        return Err(PacketFault::at(
            path,
            format!(
                "is {}, not a regular file; a packet holds regular files only",
                entry_kind_name(kind)
            ),
        ));
    }
    Ok(path.to_owned())
}

/// Appends one regular file with fixed metadata (mode 0644, uid and gid 0, mtime 0), so
/// the same files make the same bytes; errors name the file as `what PATH`. Shared by
/// evidence packets and offline kits.
pub(crate) fn append_file<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    content: &[u8],
    what: &str,
) -> Result<(), DecisionError> {
    check_path(path)
        .map_err(|message| DecisionError::new(format!("{what} {path:?}: {message}")))?;
    let mut header = tar::Header::new_ustar();
    header
        .set_path(path)
        .map_err(|e| DecisionError::new(format!("{what} {path:?}: {e}")))?;
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder
        .append(&header, content)
        .map_err(|e| DecisionError::new(format!("{what} {path:?}: cannot archive: {e}")))
}

/// Why a path cannot be in a packet, if it cannot.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    if path.starts_with('/') {
        return Err("absolute path; packet paths are relative".to_owned());
    }
    if path.contains(['\\', '\0']) {
        return Err("path contains a backslash or NUL".to_owned());
    }
    for segment in path.split('/') {
        match segment {
            ".." => return Err("path contains `..`".to_owned()),
            "" | "." => return Err("path is not normalised (empty or `.` segment)".to_owned()),
            _ => {}
        }
    }
    Ok(())
}

fn is_lower_hex_64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn is_sha256_id(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(is_lower_hex_64)
}

fn entry_kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Directory => "a directory",
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        tar::EntryType::Fifo => "a FIFO",
        tar::EntryType::Continuous => "a contiguous file",
        tar::EntryType::GNUSparse => "a sparse file",
        _ => "a special entry",
    }
}

/// Writes `entries`, in the order given, as a deterministic `.tar.gz`.
fn pack_entries<'a>(
    entries: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, DecisionError> {
    let gzip = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    let mut builder = tar::Builder::new(gzip);
    for (path, content) in entries {
        append_file(&mut builder, path, content, "evidence file")?;
    }
    let gzip = builder.into_inner().map_err(|e| {
        DecisionError::new(format!("evidence packet: cannot finish the archive: {e}"))
    })?;
    gzip.finish()
        .map_err(|e| DecisionError::new(format!("evidence packet: cannot finish gzip: {e}")))
}

/// A reader that fails once more than `remaining` bytes have been read through it,
/// and says so in `exceeded`.
struct Capped<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.exceeded.set(true);
            return Err(io::Error::other("packet unpacks to more than 256 MiB"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}
