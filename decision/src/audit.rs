//! The tamper-evident audit chain and its signed checkpoints.
//!
//! Every audited action is an [`AuditEntry`] whose `hash` is the content id of its
//! own canonical JSON (all fields but `hash`), and whose `prev_hash` is the hash of the
//! entry before it ([`GENESIS`] for the first). Editing an entry breaks its hash;
//! deleting or reordering entries breaks the sequence or the links. Rewriting the
//! whole chain from some entry on is only caught by a [`Checkpoint`]: a signature by
//! the server's key over `(seq, hash, at_ms)` of one entry, kept apart from the
//! chain. A checkpoint beyond the last entry shows truncation. Entries after the last
//! checkpoint (the unsigned tail) can be deleted from the end without trace; the
//! [`ChainSummary`] says how many there are.
//!
//! Entry hashing is on the server's hot path (one per audited request), so the
//! canonical form of an entry is written straight into the hasher, field by field,
//! without building a JSON value; a test pins it to [`crate::canonical`]'s output.

use std::collections::BTreeMap;
use std::io::{self, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::dsse::{decode_base64, key_ids, PublicKey, SigningKey};
use crate::DecisionError;

/// The `prev_hash` of the first entry: `sha256:` and 64 zeros.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The domain separator that starts every checkpoint's signed message, so a
/// checkpoint signature can never be mistaken for any other signature by the same key.
pub const CHECKPOINT_DOMAIN: &str = "stella.audit.checkpoint/v1\n";

/// One audited action, linked to the one before it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When, in UTC milliseconds.
    pub at_ms: i64,
    /// Who (a user, a token name, an agent id, `system`).
    pub actor: String,
    /// What, e.g. `POST /api/v1/promotions` or `promotion.approve`.
    pub action: String,
    /// On what, e.g. a promotion id.
    pub object: String,
    /// The content id of the request, so the entry commits to what was asked.
    pub request_digest: String,
    /// How it ended, e.g. `201` or `denied`.
    pub outcome: String,
    /// The `hash` of the previous entry, or [`GENESIS`].
    pub prev_hash: String,
    /// `sha256:<hex>` of the canonical JSON of every other field.
    pub hash: String,
}

impl AuditEntry {
    /// The entry after `prev` (or the first entry), with its hash computed.
    pub fn new(
        prev: Option<&AuditEntry>,
        at_ms: i64,
        actor: impl Into<String>,
        action: impl Into<String>,
        object: impl Into<String>,
        request_digest: impl Into<String>,
        outcome: impl Into<String>,
    ) -> AuditEntry {
        let mut entry = AuditEntry {
            seq: prev.map_or(1, |p| p.seq.saturating_add(1)),
            at_ms,
            actor: actor.into(),
            action: action.into(),
            object: object.into(),
            request_digest: request_digest.into(),
            outcome: outcome.into(),
            prev_hash: prev.map_or_else(|| GENESIS.to_owned(), |p| p.hash.clone()),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// `sha256:<hex>` of the RFC 8785 canonical JSON of every field but `hash`.
    ///
    /// Never fails today (the fields are strings and integers); it returns a `Result`
    /// so that a future field that can fail to canonicalise changes no caller.
    pub fn entry_hash(&self) -> Result<String, DecisionError> {
        Ok(self.compute_hash())
    }

    /// The canonical JSON that [`AuditEntry::entry_hash`] hashes.
    pub fn canonical_content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            128 + self.actor.len()
                + self.action.len()
                + self.object.len()
                + self.request_digest.len()
                + self.outcome.len()
                + self.prev_hash.len(),
        );
        // Writing into a Vec cannot fail.
        let _ = self.write_content(&mut out);
        out
    }

    fn compute_hash(&self) -> String {
        let mut hasher = HashWriter(sha2::Sha256::new());
        // Writing into a hasher cannot fail.
        let _ = self.write_content(&mut hasher);
        sha256_id_from(hasher.0)
    }

    /// Writes the canonical JSON of every field but `hash`: keys in RFC 8785 order
    /// (all ASCII, so byte order), strings with serde_json's escaping (which is
    /// RFC 8785's), integers as JCS numbers.
    fn write_content<W: Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(b"{\"action\":")?;
        write_json_str(w, &self.action)?;
        w.write_all(b",\"actor\":")?;
        write_json_str(w, &self.actor)?;
        w.write_all(b",\"at_ms\":")?;
        write_json_i64(w, self.at_ms)?;
        w.write_all(b",\"object\":")?;
        write_json_str(w, &self.object)?;
        w.write_all(b",\"outcome\":")?;
        write_json_str(w, &self.outcome)?;
        w.write_all(b",\"prev_hash\":")?;
        write_json_str(w, &self.prev_hash)?;
        w.write_all(b",\"request_digest\":")?;
        write_json_str(w, &self.request_digest)?;
        w.write_all(b",\"seq\":")?;
        write_json_i64(w, self.seq)?;
        w.write_all(b"}")
    }
}

/// A signed statement that the chain's entry `seq` had hash `hash` at `at_ms`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The entry signed.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// When the checkpoint was made, in UTC milliseconds.
    pub at_ms: i64,
    /// The signer's key id (see [`PublicKey::key_id`]).
    pub key_id: String,
    /// Ed25519 signature over [`CHECKPOINT_DOMAIN`] followed by the canonical JSON
    /// `{"at_ms":…,"hash":…,"seq":…}`, standard base64.
    pub signature: String,
}

impl Checkpoint {
    /// Signs `entry` as it is now.
    pub fn sign(key: &SigningKey, entry: &AuditEntry, at_ms: i64) -> Checkpoint {
        let message = checkpoint_message(entry.seq, &entry.hash, at_ms);
        Checkpoint {
            seq: entry.seq,
            hash: entry.hash.clone(),
            at_ms,
            key_id: key.key_id().to_owned(),
            signature: STANDARD.encode(key.sign(&message)),
        }
    }

    /// Checks the signature with the trusted key named by `key_id`.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<(), DecisionError> {
        let Some(key) = trusted.iter().find(|k| k.key_id() == self.key_id) else {
            return Err(DecisionError::new(format!(
                "checkpoint at entry {} is signed by key {}, which is not a trusted key (trusted: {})",
                self.seq,
                self.key_id,
                key_ids(trusted)
            )));
        };
        let signature = decode_base64(
            &format!("checkpoint at entry {} signature", self.seq),
            &self.signature,
        )?;
        key.verify(
            &checkpoint_message(self.seq, &self.hash, self.at_ms),
            &signature,
        )
        .map_err(|e| DecisionError::new(format!("checkpoint at entry {}: {e}", self.seq)))
    }
}

fn checkpoint_message(seq: i64, hash: &str, at_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 64 + hash.len());
    out.extend_from_slice(CHECKPOINT_DOMAIN.as_bytes());
    // Writing into a Vec cannot fail.
    let _ = (|| -> io::Result<()> {
        out.write_all(b"{\"at_ms\":")?;
        write_json_i64(&mut out, at_ms)?;
        out.write_all(b",\"hash\":")?;
        write_json_str(&mut out, hash)?;
        out.write_all(b",\"seq\":")?;
        write_json_i64(&mut out, seq)?;
        out.write_all(b"}")
    })();
    out
}

/// What a verified chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// How many entries.
    pub entries: usize,
    /// How many checkpoints were verified.
    pub checkpoints: usize,
    /// The highest entry a checkpoint signs, if any.
    pub last_checkpoint_seq: Option<i64>,
    /// Entries after the last checkpoint: these could be removed from the end
    /// without a trace.
    pub unsigned_tail: usize,
    /// The hash of the last entry, if any.
    pub last_hash: Option<String>,
}

/// Why a chain does not verify, naming the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuditFault {
    /// The first bad (or missing) entry, when the fault is about one.
    pub seq: Option<i64>,
    /// What is wrong, naming the entry.
    pub message: String,
}

impl AuditFault {
    fn at(seq: i64, message: impl Into<String>) -> AuditFault {
        AuditFault {
            seq: Some(seq),
            message: message.into(),
        }
    }
}

/// Verifies a chain stored in ascending `seq` order against its checkpoints.
///
/// Checks, entry by entry from the first: the sequence starts at 1 and has no gaps,
/// duplicates or reorderings; each hash recomputes from the entry's content; each
/// `prev_hash` is the previous entry's hash ([`GENESIS`] for the first); every
/// checkpoint at that entry is signed by a trusted key and signs that entry's hash.
/// Then, checkpoints beyond the last entry mean the chain was truncated. The fault
/// names the first bad entry.
pub fn verify_chain(
    entries: &[AuditEntry],
    checkpoints: &[Checkpoint],
    trusted: &[PublicKey],
) -> Result<ChainSummary, AuditFault> {
    let mut by_seq: BTreeMap<i64, Vec<&Checkpoint>> = BTreeMap::new();
    for checkpoint in checkpoints {
        by_seq.entry(checkpoint.seq).or_default().push(checkpoint);
    }
    if let Some((&seq, _)) = by_seq.range(..1).next() {
        return Err(AuditFault::at(
            seq,
            format!("checkpoint at entry {seq}: there is no such entry (entries start at 1)"),
        ));
    }

    let mut prev: Option<&AuditEntry> = None;
    for (index, entry) in entries.iter().enumerate() {
        let expected = match prev {
            None => 1,
            Some(p) => p.seq.checked_add(1).ok_or_else(|| {
                AuditFault::at(p.seq, format!("entry {}: seq cannot be followed", p.seq))
            })?,
        };
        if entry.seq != expected {
            return Err(sequence_fault(entries, index, expected, prev));
        }
        let seq = entry.seq;
        if entry.compute_hash() != entry.hash {
            return Err(AuditFault::at(
                seq,
                format!("entry {seq} was altered: its hash does not match its content"),
            ));
        }
        match prev {
            None if entry.prev_hash != GENESIS => {
                return Err(AuditFault::at(
                    seq,
                    format!("entry {seq}: prev_hash is not the genesis hash"),
                ));
            }
            Some(p) if entry.prev_hash != p.hash => {
                return Err(AuditFault::at(
                    seq,
                    format!("entry {seq}: prev_hash does not match entry {}", p.seq),
                ));
            }
            _ => {}
        }
        for checkpoint in by_seq.get(&seq).into_iter().flatten() {
            checkpoint
                .verify(trusted)
                .map_err(|e| AuditFault::at(seq, e.0))?;
            if checkpoint.hash != entry.hash {
                return Err(AuditFault::at(
                    seq,
                    format!(
                        "entry {seq} does not match the checkpoint signed at it (the chain was rewritten from entry {seq} or before)"
                    ),
                ));
            }
        }
        prev = Some(entry);
    }

    let last_seq = prev.map_or(0, |p| p.seq);
    let beyond: Vec<&Checkpoint> = by_seq
        .range(last_seq.saturating_add(1)..)
        .flat_map(|(_, list)| list.iter().copied())
        .collect();
    for checkpoint in &beyond {
        checkpoint
            .verify(trusted)
            .map_err(|e| AuditFault::at(checkpoint.seq, e.0))?;
    }
    if let Some(highest) = beyond.last() {
        let last = if entries.is_empty() {
            "the chain is empty".to_owned()
        } else {
            format!("last entry is {last_seq}")
        };
        return Err(AuditFault::at(
            last_seq + 1,
            format!(
                "chain truncated: checkpoint signed at entry {}, {last}",
                highest.seq
            ),
        ));
    }

    let last_checkpoint_seq = by_seq.keys().next_back().copied();
    let unsigned_tail = usize::try_from(last_seq - last_checkpoint_seq.unwrap_or(0)).unwrap_or(0);
    Ok(ChainSummary {
        entries: entries.len(),
        checkpoints: checkpoints.len(),
        last_checkpoint_seq,
        unsigned_tail,
        last_hash: prev.map(|p| p.hash.clone()),
    })
}

/// The fault for entry `index` whose seq is not `expected`: a gap, a reordering or a
/// duplicate.
fn sequence_fault(
    entries: &[AuditEntry],
    index: usize,
    expected: i64,
    prev: Option<&AuditEntry>,
) -> AuditFault {
    let found = entries[index].seq;
    if found > expected {
        if entries[index + 1..].iter().any(|e| e.seq == expected) {
            return AuditFault::at(
                expected,
                format!("entry {expected} is out of order (stored after entry {found})"),
            );
        }
        if found == expected + 1 {
            return AuditFault::at(expected, format!("entry {expected} is missing (deleted?)"));
        }
        return AuditFault::at(
            expected,
            format!("entries {expected} to {} are missing (deleted?)", found - 1),
        );
    }
    match prev {
        Some(p) => AuditFault::at(
            found,
            format!(
                "entry {found} appears again after entry {} (duplicated or reordered?)",
                p.seq
            ),
        ),
        None => AuditFault::at(
            found,
            format!("the chain starts at entry {found}, not at entry 1"),
        ),
    }
}

/// Feeds written bytes to a SHA-256 hasher.
struct HashWriter(sha2::Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `sha256:<hex>` of a finished hasher, in one allocation.
fn sha256_id_from(hasher: sha2::Sha256) -> String {
    let digest = hasher.finalize();
    let mut hex_digits = [0u8; 64];
    // A 32-byte digest always fits 64 hex digits.
    let _ = hex::encode_to_slice(digest, &mut hex_digits);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    out.extend(hex_digits.iter().map(|&b| char::from(b)));
    out
}

/// A JSON string with serde_json's escaping, which is RFC 8785's (`\b \t \n \f \r`,
/// `\"`, `\\`, other controls as lowercase `\u00xx`, everything else literal).
fn write_json_str<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    serde_json::to_writer(w, s).map_err(io::Error::other)
}

/// An integer as an RFC 8785 number. Up to 2^53 that is its decimal form; beyond,
/// JCS goes through an IEEE double, so defer to the canonical serialiser.
fn write_json_i64<W: Write>(w: &mut W, n: i64) -> io::Result<()> {
    const EXACT: u64 = 1 << 53;
    if n.unsigned_abs() <= EXACT {
        write!(w, "{n}")
    } else {
        serde_jcs::to_writer(w, &n).map_err(io::Error::other)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::canonical::canonical_bytes;
    use serde_json::json;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32])
    }

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let entry = AuditEntry::new(
                out.last(),
                1_700_000_000_000 + i as i64 * 1000,
                "alice",
                "POST /api/v1/promotions",
                format!("promotion/{i}"),
                crate::sha256_id(format!("request {i}").as_bytes()),
                "201",
            );
            out.push(entry);
        }
        out
    }

    #[test]
    fn genesis_is_sha256_of_zeros() {
        assert_eq!(GENESIS.len(), 7 + 64);
        assert!(GENESIS.starts_with("sha256:"));
        assert!(GENESIS[7..].bytes().all(|b| b == b'0'));
    }

    #[test]
    fn new_links_to_prev() {
        let entries = chain(3);
        assert_eq!(entries[0].seq, 1);
        assert_eq!(entries[0].prev_hash, GENESIS);
        assert_eq!(entries[1].seq, 2);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(entries[2].prev_hash, entries[1].hash);
        assert_ne!(entries[1].hash, entries[2].hash);
    }

    #[test]
    fn entry_hash_is_sha256_of_the_canonical_json_without_hash() {
        let entries = chain(2);
        let mut value = serde_json::to_value(&entries[1]).unwrap();
        value.as_object_mut().unwrap().remove("hash");
        let expected = crate::sha256_id(&canonical_bytes(&value).unwrap());
        assert_eq!(entries[1].entry_hash().unwrap(), expected);
        assert_eq!(entries[1].hash, expected);
    }

    #[test]
    fn hand_written_canonical_form_matches_jcs_for_awkward_values() {
        let awkward = [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "controls \u{0}\u{1}\u{8}\u{9}\u{a}\u{c}\u{d}\u{1f}\u{7f}",
            "unicode é € 😀 \u{2028}\u{2029}",
        ];
        let numbers = [
            0,
            1,
            -1,
            1_700_000_000_000,
            (1 << 53) - 1,
            1 << 53,
            (1 << 53) + 1,
            -(1 << 53) - 3,
            i64::MAX,
            i64::MIN,
        ];
        for (i, text) in awkward.iter().enumerate() {
            for &n in &numbers {
                let entry = AuditEntry {
                    seq: n,
                    at_ms: numbers[(i + 3) % numbers.len()],
                    actor: (*text).to_owned(),
                    action: format!("{text}{text}"),
                    object: text.to_uppercase(),
                    request_digest: (*text).to_owned(),
                    outcome: "denied".to_owned(),
                    prev_hash: (*text).to_owned(),
                    hash: String::new(),
                };
                let value = json!({
                    "seq": entry.seq, "at_ms": entry.at_ms, "actor": entry.actor,
                    "action": entry.action, "object": entry.object,
                    "request_digest": entry.request_digest, "outcome": entry.outcome,
                    "prev_hash": entry.prev_hash,
                });
                assert_eq!(
                    String::from_utf8(entry.canonical_content()).unwrap(),
                    String::from_utf8(canonical_bytes(&value).unwrap()).unwrap(),
                    "text {text:?} number {n}"
                );
            }
        }
    }

    #[test]
    fn entry_hash_is_pinned() {
        // Golden value: changing the canonical form of entries breaks every stored chain.
        let entry = AuditEntry::new(None, 0, "a", "b", "c", "d", "e");
        assert_eq!(
            String::from_utf8(entry.canonical_content()).unwrap(),
            format!(
                "{{\"action\":\"b\",\"actor\":\"a\",\"at_ms\":0,\"object\":\"c\",\"outcome\":\"e\",\"prev_hash\":\"{GENESIS}\",\"request_digest\":\"d\",\"seq\":1}}"
            )
        );
        assert_eq!(entry.hash, crate::sha256_id(&entry.canonical_content()));
    }

    #[test]
    fn intact_chain_verifies_and_reports_the_unsigned_tail() {
        let signer = key(1);
        let entries = chain(10);
        let checkpoints = vec![
            Checkpoint::sign(&signer, &entries[3], 5),
            Checkpoint::sign(&signer, &entries[6], 9),
        ];
        let summary = verify_chain(&entries, &checkpoints, &[signer.public_key()]).unwrap();
        assert_eq!(
            summary,
            ChainSummary {
                entries: 10,
                checkpoints: 2,
                last_checkpoint_seq: Some(7),
                unsigned_tail: 3,
                last_hash: Some(entries[9].hash.clone()),
            }
        );
        let bare = verify_chain(&entries, &[], &[]).unwrap();
        assert_eq!(bare.unsigned_tail, 10);
        assert_eq!(bare.last_checkpoint_seq, None);
        let empty = verify_chain(&[], &[], &[]).unwrap();
        assert_eq!(empty.entries, 0);
        assert_eq!(empty.last_hash, None);
    }

    #[test]
    fn edited_entry_is_named() {
        let mut entries = chain(10);
        entries[4].outcome = "403".into();
        let fault = verify_chain(&entries, &[], &[]).unwrap_err();
        assert_eq!(fault.seq, Some(5));
        assert_eq!(
            fault.message,
            "entry 5 was altered: its hash does not match its content"
        );
    }

    #[test]
    fn edited_and_rehashed_entry_breaks_the_next_link() {
        let mut entries = chain(10);
        entries[4].actor = "mallory".into();
        entries[4].hash = entries[4].entry_hash().unwrap();
        let fault = verify_chain(&entries, &[], &[]).unwrap_err();
        assert_eq!(fault.seq, Some(6));
        assert_eq!(fault.message, "entry 6: prev_hash does not match entry 5");
    }

    #[test]
    fn rewritten_chain_is_caught_by_a_checkpoint() {
        let signer = key(1);
        let entries = chain(10);
        let checkpoints = vec![Checkpoint::sign(&signer, &entries[7], 1)];
        // Rewrite from entry 5 on, relinking every entry so the chain is self-consistent.
        let mut forged: Vec<AuditEntry> = entries[..4].to_vec();
        for original in &entries[4..] {
            let outcome = if original.seq == 5 {
                "denied"
            } else {
                original.outcome.as_str()
            };
            let entry = AuditEntry::new(
                forged.last(),
                original.at_ms,
                original.actor.clone(),
                original.action.clone(),
                original.object.clone(),
                original.request_digest.clone(),
                outcome,
            );
            forged.push(entry);
        }
        verify_chain(&forged, &[], &[]).unwrap();
        let fault = verify_chain(&forged, &checkpoints, &[signer.public_key()]).unwrap_err();
        assert_eq!(fault.seq, Some(8));
        assert!(
            fault
                .message
                .starts_with("entry 8 does not match the checkpoint"),
            "{fault}"
        );
    }

    #[test]
    fn deleted_middle_entry_is_named() {
        let mut entries = chain(10);
        entries.remove(6);
        let fault = verify_chain(&entries, &[], &[]).unwrap_err();
        assert_eq!(fault.seq, Some(7));
        assert_eq!(fault.message, "entry 7 is missing (deleted?)");

        let mut entries = chain(10);
        entries.drain(2..5);
        let fault = verify_chain(&entries, &[], &[]).unwrap_err();
        assert_eq!(fault.message, "entries 3 to 5 are missing (deleted?)");

        let entries = chain(10);
        let fault = verify_chain(&entries[1..], &[], &[]).unwrap_err();
        assert_eq!(fault.message, "entry 1 is missing (deleted?)");
    }

    #[test]
    fn deleted_tail_before_a_checkpoint_is_truncation() {
        let signer = key(1);
        let entries = chain(120);
        let checkpoints = vec![
            Checkpoint::sign(&signer, &entries[49], 1),
            Checkpoint::sign(&signer, &entries[119], 2),
        ];
        let fault = verify_chain(&entries[..97], &checkpoints, &[signer.public_key()]).unwrap_err();
        assert_eq!(fault.seq, Some(98));
        assert_eq!(
            fault.message,
            "chain truncated: checkpoint signed at entry 120, last entry is 97"
        );

        let fault = verify_chain(&[], &checkpoints, &[signer.public_key()]).unwrap_err();
        assert_eq!(
            fault.message,
            "chain truncated: checkpoint signed at entry 120, the chain is empty"
        );

        // Deleting only entries after the last checkpoint is not detectable: the
        // summary's unsigned tail says how exposed the chain is.
        let summary =
            verify_chain(&entries[..110], &checkpoints[..1], &[signer.public_key()]).unwrap();
        assert_eq!(summary.unsigned_tail, 60);
    }

    #[test]
    fn reordered_entries_are_named() {
        let mut entries = chain(10);
        entries.swap(2, 3);
        let fault = verify_chain(&entries, &[], &[]).unwrap_err();
        assert_eq!(fault.seq, Some(3));
        assert_eq!(
            fault.message,
            "entry 3 is out of order (stored after entry 4)"
        );

        let mut entries = chain(10);
        let dup = entries[3].clone();
        entries.insert(5, dup);
        let fault = verify_chain(&entries, &[], &[]).unwrap_err();
        assert_eq!(fault.seq, Some(4));
        assert_eq!(
            fault.message,
            "entry 4 appears again after entry 5 (duplicated or reordered?)"
        );
    }

    #[test]
    fn first_entry_must_link_to_genesis() {
        let mut entries = chain(3);
        entries[0].prev_hash = crate::sha256_id(b"x");
        entries[0].hash = entries[0].entry_hash().unwrap();
        let fault = verify_chain(&entries, &[], &[]).unwrap_err();
        assert_eq!(fault.message, "entry 1: prev_hash is not the genesis hash");
    }

    #[test]
    fn forged_checkpoint_is_named() {
        let signer = key(1);
        let entries = chain(10);
        let mut checkpoint = Checkpoint::sign(&signer, &entries[4], 1);
        checkpoint.at_ms += 1;
        let fault = verify_chain(&entries, &[checkpoint], &[signer.public_key()]).unwrap_err();
        assert_eq!(fault.seq, Some(5));
        assert_eq!(
            fault.message,
            format!(
                "checkpoint at entry 5: signature by key {} does not verify",
                signer.key_id()
            )
        );

        // A forged claim of a longer chain is reported as forged, not as truncation.
        let mut beyond = Checkpoint::sign(&signer, &entries[9], 1);
        beyond.seq = 50;
        let fault = verify_chain(&entries, &[beyond], &[signer.public_key()]).unwrap_err();
        assert!(fault.message.contains("does not verify"), "{fault}");

        let mut garbled = Checkpoint::sign(&signer, &entries[4], 1);
        garbled.signature = "***".into();
        let fault = verify_chain(&entries, &[garbled], &[signer.public_key()]).unwrap_err();
        assert!(
            fault
                .message
                .starts_with("checkpoint at entry 5 signature is not base64"),
            "{fault}"
        );
    }

    #[test]
    fn checkpoint_by_untrusted_key_is_refused() {
        let entries = chain(5);
        let checkpoint = Checkpoint::sign(&key(2), &entries[2], 1);
        let fault = verify_chain(&entries, &[checkpoint], &[key(1).public_key()]).unwrap_err();
        assert_eq!(fault.seq, Some(3));
        assert_eq!(
            fault.message,
            format!(
                "checkpoint at entry 3 is signed by key {}, which is not a trusted key (trusted: {})",
                key(2).key_id(),
                key(1).key_id()
            )
        );
    }

    #[test]
    fn first_fault_wins() {
        let signer = key(1);
        let mut entries = chain(10);
        let checkpoint = Checkpoint::sign(&key(2), &entries[7], 1);
        entries[2].object = "x".into();
        let fault = verify_chain(&entries, &[checkpoint], &[signer.public_key()]).unwrap_err();
        assert_eq!(fault.seq, Some(3));
    }

    #[test]
    fn checkpoint_at_zero_is_refused() {
        let signer = key(1);
        let entries = chain(2);
        let mut checkpoint = Checkpoint::sign(&signer, &entries[0], 1);
        checkpoint.seq = 0;
        let fault = verify_chain(&entries, &[checkpoint], &[signer.public_key()]).unwrap_err();
        assert_eq!(fault.seq, Some(0));
    }

    #[test]
    fn checkpoint_message_is_domain_separated_and_pinned() {
        let message = checkpoint_message(7, "sha256:ab", 1234);
        assert_eq!(
            String::from_utf8(message).unwrap(),
            "stella.audit.checkpoint/v1\n{\"at_ms\":1234,\"hash\":\"sha256:ab\",\"seq\":7}"
        );
        let signer = key(1);
        let entries = chain(1);
        let checkpoint = Checkpoint::sign(&signer, &entries[0], 1);
        checkpoint.verify(&[signer.public_key()]).unwrap();
        let json = serde_json::to_value(&checkpoint).unwrap();
        assert_eq!(json["key_id"], signer.key_id());
    }
}
