//! The audit chain as a store keeps it: entries and checkpoints written as JSON and
//! read back, checkpoints taken as the chain grows, and the faults `audit verify`
//! reports after tampering with the stored rows.
#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use stella_decision::audit::{verify_chain, AuditEntry, Checkpoint, GENESIS};
use stella_decision::dsse::{PublicKey, SigningKey};

fn server_key() -> SigningKey {
    SigningKey::from_seed([42; 32])
}

/// A chain of `n` entries with a checkpoint every `every` entries, as JSON lines.
fn stored_chain(n: i64, every: i64) -> (Vec<String>, Vec<String>) {
    let key = server_key();
    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut checkpoints = Vec::new();
    for i in 1..=n {
        let entry = AuditEntry::new(
            entries.last(),
            1_767_000_000_000 + i * 250,
            if i % 3 == 0 { "agent:host-a" } else { "alice" },
            if i % 2 == 0 {
                "promotion.approve"
            } else {
                "POST /api/v1/promotions"
            },
            format!("promotion/p-{}", i / 2),
            stella_decision::sha256_id(format!("request body {i}").as_bytes()),
            if i % 5 == 0 { "denied" } else { "201" },
        );
        if i % every == 0 {
            checkpoints.push(Checkpoint::sign(&key, &entry, entry.at_ms + 1));
        }
        entries.push(entry);
    }
    (
        entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect(),
        checkpoints
            .iter()
            .map(|c| serde_json::to_string(c).unwrap())
            .collect(),
    )
}

fn load(rows: &[String]) -> Vec<AuditEntry> {
    rows.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

fn load_checkpoints(rows: &[String]) -> Vec<Checkpoint> {
    rows.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

fn trusted() -> Vec<PublicKey> {
    vec![server_key().public_key()]
}

#[test]
fn stored_chain_verifies_after_a_json_round_trip() {
    let (rows, checkpoint_rows) = stored_chain(250, 100);
    let entries = load(&rows);
    let checkpoints = load_checkpoints(&checkpoint_rows);
    let summary = verify_chain(&entries, &checkpoints, &trusted()).unwrap();
    assert_eq!(summary.entries, 250);
    assert_eq!(summary.checkpoints, 2);
    assert_eq!(summary.last_checkpoint_seq, Some(200));
    assert_eq!(summary.unsigned_tail, 50);
    assert_eq!(entries[0].prev_hash, GENESIS);

    let row: Value = serde_json::from_str(&rows[0]).unwrap();
    let mut fields: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "action",
            "actor",
            "at_ms",
            "hash",
            "object",
            "outcome",
            "prev_hash",
            "request_digest",
            "seq"
        ]
    );
}

#[test]
fn editing_a_stored_row_is_found() {
    let (mut rows, checkpoint_rows) = stored_chain(50, 25);
    rows[30] = rows[30].replace("\"outcome\":\"201\"", "\"outcome\":\"200\"");
    let fault = verify_chain(
        &load(&rows),
        &load_checkpoints(&checkpoint_rows),
        &trusted(),
    )
    .unwrap_err();
    assert_eq!(fault.seq, Some(31));
    assert_eq!(
        fault.to_string(),
        "entry 31 was altered: its hash does not match its content"
    );
}

#[test]
fn deleting_rows_is_found() {
    let (mut rows, checkpoint_rows) = stored_chain(50, 25);
    rows.remove(10);
    let fault = verify_chain(
        &load(&rows),
        &load_checkpoints(&checkpoint_rows),
        &trusted(),
    )
    .unwrap_err();
    assert_eq!(fault.to_string(), "entry 11 is missing (deleted?)");

    let (mut rows, checkpoint_rows) = stored_chain(50, 25);
    rows.truncate(40);
    let fault = verify_chain(
        &load(&rows),
        &load_checkpoints(&checkpoint_rows),
        &trusted(),
    )
    .unwrap_err();
    assert_eq!(
        fault.to_string(),
        "chain truncated: checkpoint signed at entry 50, last entry is 40"
    );
}

#[test]
fn checkpoints_from_another_key_are_refused() {
    let (rows, checkpoint_rows) = stored_chain(30, 10);
    let entries = load(&rows);
    let other = SigningKey::from_seed([7; 32]);
    let mut checkpoints = load_checkpoints(&checkpoint_rows);
    checkpoints.push(Checkpoint::sign(&other, &entries[14], 0));
    let fault = verify_chain(&entries, &checkpoints, &trusted()).unwrap_err();
    assert_eq!(fault.seq, Some(15));
    assert!(
        fault.message.contains("which is not a trusted key"),
        "{fault}"
    );
    // Trusting both keys (say, across a key rotation) accepts both.
    let both = [server_key().public_key(), other.public_key()];
    assert!(verify_chain(&entries, &checkpoints, &both).is_ok());
}
