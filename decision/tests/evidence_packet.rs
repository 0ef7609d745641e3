//! Evidence packets end to end: write, read, verify, and every way a packet can be
//! tampered with or damaged.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{Read, Write};

use serde_json::{json, Value};
use stella_decision::canonical::canonical_bytes;
use stella_decision::dsse::{PublicKey, SigningKey, INTOTO_PAYLOAD_TYPE};
use stella_decision::evidence::{
    document_path, sign_decision, verify_packet, Packet, PacketFault, VerifiedPacket, DECISION,
    DEPLOYMENT, ENVELOPE, INPUTS, KEY, MANIFEST, MANIFEST_SIGNATURE, MAX_ENTRIES, STICKERS,
};
use stella_decision::intoto::{Statement, Subject};
use stella_decision::{sha256_id, DecisionError};

const IMAGE: &str = "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270";

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

fn scan_report() -> Vec<u8> {
    br#"{"scanner":"trivy","results":[{"id":"CVE-2024-0001","severity":"HIGH"}]}"#.to_vec()
}

fn vex_document() -> Vec<u8> {
    br#"{"@context":"https://openvex.dev/ns/v0.2.0","statements":[]}"#.to_vec()
}

fn inputs() -> Vec<u8> {
    canonical_bytes(&json!({
        "release": "shop@1.4.2",
        "environment": "prod",
        "max_critical": 0,
        "requested_at_ms": 1_767_000_000_000_i64,
        "images": {"web": format!("registry.example/shop/web@{IMAGE}")},
    }))
    .unwrap()
}

/// A toy decision function standing in for the gates: what matters here is that it
/// is a pure function of the inputs and documents.
fn recompute(
    inputs: &[u8],
    documents: &stella_decision::gates::Documents,
) -> Result<Vec<u8>, DecisionError> {
    let parsed: Value = serde_json::from_slice(inputs)
        .map_err(|e| DecisionError::new(format!("inputs are not JSON: {e}")))?;
    let max = parsed["max_critical"]
        .as_u64()
        .ok_or_else(|| DecisionError::new("inputs: max_critical is not a count"))?;
    let critical = documents
        .values()
        .map(|d| d.windows(8).filter(|w| w == b"CRITICAL").count() as u64)
        .sum::<u64>();
    let verdict = if critical > max { "fail" } else { "pass" };
    canonical_bytes(&json!({
        "schema": "stella.decision/v1",
        "release": parsed["release"],
        "environment": parsed["environment"],
        "inputs": sha256_id(inputs),
        "documents": documents.keys().collect::<Vec<_>>(),
        "gates": [{"gate": "security", "verdict": verdict, "reason": format!("{critical} critical findings")}],
        "verdict": verdict,
        "decided_at": stella_decision::format_time(parsed["requested_at_ms"].as_i64().unwrap_or(0)),
    }))
}

struct Sample {
    packet: Packet,
    decision_id: String,
    bytes: Vec<u8>,
}

fn sample_with(signer: &SigningKey) -> Sample {
    let inputs = inputs();
    let mut documents = Packet::new();
    documents.add_document(scan_report());
    documents.add_document(vex_document());
    let decision_bytes = recompute(&inputs, &documents.documents()).unwrap();
    let subjects = vec![Subject::image("registry.example/shop/web", IMAGE).unwrap()];
    let signed = sign_decision(signer, subjects, &decision_bytes).unwrap();
    assert_eq!(signed.decision_id, sha256_id(&decision_bytes));
    let mut packet = Packet::for_decision(
        &signed,
        inputs,
        [scan_report(), vex_document()],
        &signer.public_key(),
    )
    .unwrap();
    packet.files.insert(
        DEPLOYMENT.to_owned(),
        canonical_bytes(&json!({"deployment_id": "dep-1", "targets": ["host-a"]})).unwrap(),
    );
    packet.files.insert(
        STICKERS.to_owned(),
        canonical_bytes(&json!([{"target": "host-a", "decision_id": signed.decision_id}])).unwrap(),
    );
    let bytes = packet.write(&signed.decision_id).unwrap();
    Sample {
        packet,
        decision_id: signed.decision_id,
        bytes,
    }
}

fn sample() -> Sample {
    sample_with(&key(1))
}

fn verify(bytes: &[u8], trusted: &[PublicKey]) -> Result<VerifiedPacket, PacketFault> {
    verify_packet(bytes, trusted, &recompute)
}

fn fault_of(bytes: &[u8]) -> PacketFault {
    verify(bytes, &[key(1).public_key()]).unwrap_err()
}

#[test]
fn sample_packet_verifies() {
    let sample = sample();
    let verified = verify(&sample.bytes, &[key(9).public_key(), key(1).public_key()]).unwrap();
    assert_eq!(verified.decision_id, sample.decision_id);
    assert_eq!(verified.key_id, key(1).key_id());
    assert_eq!(verified.files, 8);
    assert_eq!(verified.decision["verdict"], "pass");
    assert_eq!(verified.unattested, [DEPLOYMENT, STICKERS]);
    assert_eq!(
        sha256_id(&canonical_bytes(&verified.decision).unwrap()),
        sample.decision_id
    );
}

#[test]
fn write_then_read_round_trips() {
    let sample = sample();
    let read = Packet::read(&sample.bytes).unwrap();
    let mut expected = sample.packet.clone();
    expected.files.insert(
        MANIFEST.to_owned(),
        sample.packet.manifest(&sample.decision_id).unwrap(),
    );
    assert_eq!(read, expected);

    let parsed = read.read_manifest().unwrap();
    assert_eq!(parsed.decision_id, sample.decision_id);
    assert_eq!(parsed.files.len(), sample.packet.files.len());
    let manifest: Value = serde_json::from_slice(&read.files[MANIFEST]).unwrap();
    assert_eq!(manifest["schema"], "stella.evidence/v1");
    assert_eq!(manifest["decision_id"], sample.decision_id.as_str());
    let listed: Vec<&String> = manifest["files"].as_object().unwrap().keys().collect();
    let present: Vec<&String> = sample.packet.files.keys().collect();
    assert_eq!(listed, present);
    assert_eq!(
        manifest["files"][DECISION],
        sha256_id(&sample.packet.files[DECISION]).as_str()
    );
}

#[test]
fn two_writes_are_byte_identical() {
    let sample = sample();
    assert_eq!(
        sample.packet.write(&sample.decision_id).unwrap(),
        sample.bytes
    );
    assert_eq!(sample_with(&key(1)).bytes, sample.bytes);
    // Re-writing a packet as read (its manifest included) gives the same bytes again.
    let read = Packet::read(&sample.bytes).unwrap();
    assert_eq!(read.write(&sample.decision_id).unwrap(), sample.bytes);
    assert_eq!(read.pack().unwrap(), sample.bytes);
}

#[test]
fn archive_layout_is_fixed() {
    let sample = sample();
    let bytes = &sample.bytes;
    // gzip: deflate, no flags (so no file name), mtime 0, OS 255.
    assert_eq!(&bytes[..4], &[0x1f, 0x8b, 0x08, 0x00]);
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
    assert_eq!(bytes[9], 255);

    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut paths = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        assert!(header.as_ustar().is_some());
        assert_eq!(header.entry_type(), tar::EntryType::Regular);
        assert_eq!(header.mode().unwrap(), 0o644);
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        assert_eq!(header.mtime().unwrap(), 0);
        assert_eq!(header.username().unwrap(), Some(""));
        paths.push(String::from_utf8(entry.path_bytes().into_owned()).unwrap());
    }
    assert_eq!(paths[0], MANIFEST);
    let mut rest = paths[1..].to_vec();
    rest.sort();
    assert_eq!(rest, paths[1..]);
    assert_eq!(paths.len(), 9);
    assert!(paths.contains(&document_path(&scan_report())));
}

#[test]
fn flipping_any_byte_of_any_file_fails_naming_that_file() {
    let sample = sample();
    let read = Packet::read(&sample.bytes).unwrap();
    for (path, content) in &read.files {
        // The first and last bytes and about two dozen in between: every byte of
        // every file takes too long unoptimised, and no position is special.
        let step = (content.len() / 24).max(1);
        let positions = (0..content.len()).step_by(step).chain([content.len() - 1]);
        for index in positions {
            let mut tampered = read.clone();
            tampered.files.get_mut(path).unwrap()[index] ^= 0x01;
            let bytes = tampered.pack().unwrap();
            let fault = fault_of(&bytes);
            if path == MANIFEST {
                // A changed manifest may blame itself or the file whose listed id it
                // changed; it must never verify.
                continue;
            }
            assert_eq!(
                fault.file.as_deref(),
                Some(path.as_str()),
                "byte {index}: {fault}"
            );
            assert!(
                fault
                    .message
                    .starts_with("sha256 mismatch: manifest says sha256:"),
                "{fault}"
            );
        }
    }
}

#[test]
fn manifest_damage_is_named() {
    let sample = sample();
    let read = Packet::read(&sample.bytes).unwrap();
    let manifest = String::from_utf8(read.files[MANIFEST].clone()).unwrap();

    let with_manifest = |text: String| {
        let mut tampered = read.clone();
        tampered
            .files
            .insert(MANIFEST.to_owned(), text.into_bytes());
        fault_of(&tampered.pack().unwrap())
    };

    let fault = with_manifest(manifest.replace("stella.evidence/v1", "stella.evidence/v2"));
    assert_eq!(
        fault.to_string(),
        "manifest.json: schema is \"stella.evidence/v2\", expected \"stella.evidence/v1\""
    );

    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&manifest).unwrap()).unwrap();
    let fault = with_manifest(pretty);
    assert_eq!(
        fault.to_string(),
        "manifest.json: not canonical JSON (RFC 8785)"
    );

    let fault = with_manifest(manifest.replace("\"schema\"", "\"schemb\""));
    assert_eq!(fault.file.as_deref(), Some(MANIFEST));
    assert!(fault.message.starts_with("not a valid manifest"), "{fault}");

    let other_id = sha256_id(b"another decision");
    let fault = with_manifest(manifest.replacen(
        &format!("\"decision_id\":\"{}\"", sample.decision_id),
        &format!("\"decision_id\":\"{other_id}\""),
        1,
    ));
    assert_eq!(
        fault.to_string(),
        format!(
            "manifest.json: decision_id is {other_id}, but decision.json's id is {}",
            sample.decision_id
        )
    );

    let mut missing = read.clone();
    missing.files.remove(MANIFEST);
    let fault = fault_of(&missing.pack().unwrap());
    assert_eq!(fault.file.as_deref(), Some(MANIFEST));
    assert!(fault.message.starts_with("missing"), "{fault}");
}

#[test]
fn extra_and_missing_files_are_named() {
    let sample = sample();
    let read = Packet::read(&sample.bytes).unwrap();

    let mut extra = read.clone();
    extra
        .files
        .insert("notes.txt".to_owned(), b"trust me".to_vec());
    let fault = fault_of(&extra.pack().unwrap());
    assert_eq!(fault.to_string(), "notes.txt: not listed in manifest.json");

    let mut missing = read;
    missing.files.remove(INPUTS);
    let fault = fault_of(&missing.pack().unwrap());
    assert_eq!(
        fault.to_string(),
        "inputs.json: missing from the packet (manifest.json lists it)"
    );

    // Dropping a file and rewriting the manifest still fails when the file is required.
    let mut no_envelope = sample.packet.clone();
    no_envelope.files.remove(ENVELOPE);
    let fault = fault_of(&no_envelope.write(&sample.decision_id).unwrap());
    assert_eq!(fault.file.as_deref(), Some(ENVELOPE));
}

#[test]
fn document_named_by_another_hash_is_refused() {
    let sample = sample();
    let mut packet = sample.packet.clone();
    let path = document_path(&scan_report());
    let content = packet.files.remove(&path).unwrap();
    let wrong = document_path(b"something else");
    packet.files.insert(wrong.clone(), content);
    let fault = fault_of(&packet.write(&sample.decision_id).unwrap());
    assert_eq!(fault.file.as_deref(), Some(wrong.as_str()));
    assert!(fault.message.starts_with("named for sha256:"), "{fault}");

    let mut packet = sample.packet.clone();
    packet
        .files
        .insert("documents/report.json".to_owned(), b"{}".to_vec());
    let fault = fault_of(&packet.write(&sample.decision_id).unwrap());
    assert_eq!(fault.file.as_deref(), Some("documents/report.json"));
}

#[test]
fn packet_resigned_with_another_key_fails_even_carrying_that_key() {
    let sample = sample();
    let mallory = key(66);
    let mut packet = sample.packet.clone();
    // Re-sign the very same statement, and ship Mallory's key in key.pem.
    let subjects = vec![Subject::image("registry.example/shop/web", IMAGE).unwrap()];
    let resigned = sign_decision(&mallory, subjects, &packet.files[DECISION]).unwrap();
    packet.files.insert(
        ENVELOPE.to_owned(),
        resigned.envelope.to_canonical().unwrap(),
    );
    packet
        .files
        .insert(KEY.to_owned(), mallory.public_key().to_pem().into_bytes());
    let bytes = packet.write(&sample.decision_id).unwrap();

    let fault = fault_of(&bytes);
    assert_eq!(
        fault.to_string(),
        format!(
            "envelope.json: signed by key {}, which is not a trusted key (trusted: {})",
            mallory.key_id(),
            key(1).key_id()
        )
    );
    // Trust is the verifier's choice: trusting Mallory makes the same bytes verify.
    let verified = verify(&bytes, &[mallory.public_key()]).unwrap();
    assert_eq!(verified.key_id, mallory.key_id());
    // And with no trusted key at all, nothing verifies.
    let fault = verify(&bytes, &[]).unwrap_err();
    assert!(fault.message.ends_with("(trusted: none)"), "{fault}");
}

#[test]
fn key_pem_must_name_the_signer() {
    let sample = sample();
    let mut packet = sample.packet.clone();
    packet
        .files
        .insert(KEY.to_owned(), key(2).public_key().to_pem().into_bytes());
    let fault = fault_of(&packet.write(&sample.decision_id).unwrap());
    assert_eq!(
        fault.to_string(),
        format!(
            "key.pem: holds key {}, but envelope.json is signed by key {}",
            key(2).key_id(),
            key(1).key_id()
        )
    );
    // key.pem is optional.
    packet.files.remove(KEY);
    verify(
        &packet.write(&sample.decision_id).unwrap(),
        &[key(1).public_key()],
    )
    .unwrap();
}

#[test]
fn decision_rewritten_with_its_manifest_fails_against_the_signature() {
    let sample = sample();
    let mut packet = sample.packet;
    let mut decision: Value = serde_json::from_slice(&packet.files[DECISION]).unwrap();
    decision["verdict"] = json!("override");
    let bytes = canonical_bytes(&decision).unwrap();
    let id = sha256_id(&bytes);
    packet.files.insert(DECISION.to_owned(), bytes);
    let fault = fault_of(&packet.write(&id).unwrap());
    assert_eq!(
        fault.to_string(),
        "decision.json: differs from the decision signed in envelope.json: /verdict: \"pass\" → \"override\""
    );
}

#[test]
fn files_outside_the_signature_are_reported_unattested() {
    // The manifest is not signed: a deployment.json rewritten together with the
    // manifest still verifies. Today's behaviour, reported through `unattested` so a
    // verifier can say so; signing the manifest as well would close it.
    let sample = sample();
    let mut packet = sample.packet.clone();
    packet.files.insert(
        DEPLOYMENT.to_owned(),
        canonical_bytes(&json!({"deployment_id": "dep-forged", "targets": []})).unwrap(),
    );
    let verified = verify(
        &packet.write(&sample.decision_id).unwrap(),
        &[key(1).public_key()],
    )
    .unwrap();
    assert_eq!(verified.unattested, [DEPLOYMENT, STICKERS]);
}

#[test]
fn a_signed_manifest_attests_every_file() {
    let sample = sample();
    let signed = sample
        .packet
        .write_signed(&sample.decision_id, &key(1))
        .unwrap();
    // Deterministic: Ed25519 signatures depend on the key and the message only.
    assert_eq!(
        signed,
        sample
            .packet
            .write_signed(&sample.decision_id, &key(1))
            .unwrap()
    );
    let verified = verify(&signed, &[key(1).public_key()]).unwrap();
    assert!(verified.unattested.is_empty(), "{:?}", verified.unattested);

    // deployment.json rewritten with a fresh manifest, the old signature kept: refused.
    let mut forged = Packet::read(&signed).unwrap();
    forged.files.insert(
        DEPLOYMENT.to_owned(),
        canonical_bytes(&json!({"deployment_id": "dep-forged", "targets": []})).unwrap(),
    );
    let manifest = forged.manifest(&sample.decision_id).unwrap();
    forged.files.insert(MANIFEST.to_owned(), manifest);
    let fault = verify(&forged.pack().unwrap(), &[key(1).public_key()]).unwrap_err();
    assert_eq!(fault.file.as_deref(), Some(MANIFEST), "{fault}");

    // Re-signed by another key: refused unless that key is trusted.
    let resigned = sample
        .packet
        .write_signed(&sample.decision_id, &key(2))
        .unwrap();
    let fault = verify(&resigned, &[key(1).public_key()]).unwrap_err();
    assert_eq!(fault.file.as_deref(), Some(MANIFEST_SIGNATURE), "{fault}");
}

#[test]
fn recompute_mismatch_names_decision_and_the_field() {
    let sample = sample();
    let stricter = |inputs: &[u8], documents: &stella_decision::gates::Documents| {
        let decision = recompute(inputs, documents)?;
        let mut value: Value = serde_json::from_slice(&decision).unwrap();
        value["gates"][0]["verdict"] = json!("fail");
        canonical_bytes(&value)
    };
    let fault = verify_packet(&sample.bytes, &[key(1).public_key()], &stricter).unwrap_err();
    assert_eq!(fault.file.as_deref(), Some(DECISION));
    assert_eq!(
        fault.message,
        "differs from the decision recomputed from inputs.json: /gates/0/verdict: \"pass\" → \"fail\""
    );

    let failing = |_: &[u8], _: &stella_decision::gates::Documents| {
        Err(DecisionError::new("policy.rego: parse error at 3:1"))
    };
    let fault = verify_packet(&sample.bytes, &[key(1).public_key()], &failing).unwrap_err();
    assert_eq!(
        fault.to_string(),
        "inputs.json: the decision cannot be recomputed from these inputs: policy.rego: parse error at 3:1"
    );
}

#[test]
fn recompute_sees_inputs_and_documents_by_content_id() {
    let sample = sample();
    let seen = std::cell::RefCell::new(None);
    let spy = |inputs: &[u8], documents: &stella_decision::gates::Documents| {
        *seen.borrow_mut() = Some((inputs.to_vec(), documents.clone()));
        recompute(inputs, documents)
    };
    verify_packet(&sample.bytes, &[key(1).public_key()], &spy).unwrap();
    let (inputs_seen, documents) = seen.into_inner().unwrap();
    assert_eq!(inputs_seen, inputs());
    assert_eq!(documents.keys().cloned().collect::<Vec<_>>(), {
        let mut ids = vec![sha256_id(&scan_report()), sha256_id(&vex_document())];
        ids.sort();
        ids
    });
    assert_eq!(
        &documents[&sha256_id(&scan_report())][..],
        &scan_report()[..]
    );
}

#[test]
fn envelope_with_another_payload_or_predicate_type_is_refused() {
    let signer = key(1);
    let sample = sample();
    let decision: Value = serde_json::from_slice(&sample.packet.files[DECISION]).unwrap();

    let statement = Statement::decision(vec![], decision.clone())
        .to_canonical()
        .unwrap();
    let mut packet = sample.packet.clone();
    let envelope = signer.sign_envelope("application/json", &statement);
    packet
        .files
        .insert(ENVELOPE.to_owned(), envelope.to_canonical().unwrap());
    let fault = fault_of(&packet.write(&sample.decision_id).unwrap());
    assert_eq!(
        fault.to_string(),
        "envelope.json: payloadType is \"application/json\", expected \"application/vnd.in-toto+json\""
    );

    let mut statement = Statement::decision(vec![], decision);
    statement.predicate_type = "https://slsa.dev/provenance/v1".into();
    let envelope = signer.sign_envelope(INTOTO_PAYLOAD_TYPE, &statement.to_canonical().unwrap());
    packet
        .files
        .insert(ENVELOPE.to_owned(), envelope.to_canonical().unwrap());
    let fault = fault_of(&packet.write(&sample.decision_id).unwrap());
    assert_eq!(fault.file.as_deref(), Some(ENVELOPE));
    assert!(
        fault
            .message
            .starts_with("predicateType is \"https://slsa.dev/provenance/v1\""),
        "{fault}"
    );

    packet.files.insert(ENVELOPE.to_owned(), b"{}".to_vec());
    let fault = fault_of(&packet.write(&sample.decision_id).unwrap());
    assert_eq!(fault.file.as_deref(), Some(ENVELOPE));
    assert!(fault.message.starts_with("not a DSSE envelope"), "{fault}");
}

#[test]
fn non_canonical_decision_is_refused() {
    let sample = sample();
    let mut packet = sample.packet;
    let pretty = serde_json::to_vec_pretty(
        &serde_json::from_slice::<Value>(&packet.files[DECISION]).unwrap(),
    )
    .unwrap();
    let id = sha256_id(&pretty);
    packet.files.insert(DECISION.to_owned(), pretty);
    let fault = fault_of(&packet.write(&id).unwrap());
    assert_eq!(
        fault.to_string(),
        "decision.json: not canonical JSON (RFC 8785)"
    );
}

#[test]
fn every_truncation_fails_cleanly() {
    let sample = sample();
    for len in 0..sample.bytes.len() {
        let result = Packet::read(&sample.bytes[..len]);
        assert!(
            result.is_err(),
            "truncated to {len} bytes, the packet still read"
        );
    }
    let fault = Packet::read(&sample.bytes[..sample.bytes.len() / 2]).unwrap_err();
    assert!(fault.message.starts_with("packet is truncated"), "{fault}");
    let fault = Packet::read(&sample.bytes[..sample.bytes.len() - 4]).unwrap_err();
    assert!(fault.message.starts_with("packet is"), "{fault}");
}

#[test]
fn garbage_is_refused() {
    let fault = Packet::read(b"PK\x03\x04 a zip file").unwrap_err();
    assert_eq!(
        fault.to_string(),
        "not a gzip file (an evidence packet is a .tar.gz)"
    );

    let not_tar = gzip(b"just some text that is not a tar header at all");
    let fault = Packet::read(&not_tar).unwrap_err();
    assert!(fault.message.starts_with("packet is"), "{fault}");

    let sample = sample();
    let mut trailing = sample.bytes.clone();
    trailing.extend_from_slice(b"hidden");
    let fault = Packet::read(&trailing).unwrap_err();
    assert_eq!(
        fault.to_string(),
        "packet has data after the end of the gzip stream"
    );

    let mut corrupt = sample.bytes;
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    assert!(Packet::read(&corrupt).is_err());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A `.tar.gz` with raw header names and types, for archives `Packet::write` refuses
/// to make.
fn raw_targz(entries: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut tar_bytes = Vec::new();
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.as_mut_bytes()[..name.len()].copy_from_slice(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(*kind);
        header.set_cksum();
        tar_bytes.extend_from_slice(header.as_bytes());
        tar_bytes.extend_from_slice(data);
        tar_bytes.resize(tar_bytes.len().div_ceil(512) * 512, 0);
    }
    tar_bytes.extend_from_slice(&[0u8; 1024]);
    gzip(&tar_bytes)
}

#[test]
fn unsafe_entries_are_refused() {
    let regular = tar::EntryType::Regular;
    let cases: Vec<(&[u8], tar::EntryType, &str)> = vec![
        (
            b"/etc/passwd",
            regular,
            "/etc/passwd: absolute path; packet paths are relative",
        ),
        (
            b"documents/../../x",
            regular,
            "documents/../../x: path contains `..`",
        ),
        (
            b"./manifest.json",
            regular,
            "./manifest.json: path is not normalised (empty or `.` segment)",
        ),
        (
            b"a//b",
            regular,
            "a//b: path is not normalised (empty or `.` segment)",
        ),
        (b"a\\b", regular, "a\\b: path contains a backslash or NUL"),
        (
            b"link",
            tar::EntryType::Symlink,
            "link: is a symbolic link, not a regular file; a packet holds regular files only",
        ),
        (
            b"hard",
            tar::EntryType::Link,
            "hard: is a hard link, not a regular file; a packet holds regular files only",
        ),
        (
            b"documents/",
            tar::EntryType::Directory,
            "documents/: path is not normalised (empty or `.` segment)",
        ),
        (
            b"documents",
            tar::EntryType::Directory,
            "documents: is a directory, not a regular file; a packet holds regular files only",
        ),
        (
            b"fifo",
            tar::EntryType::Fifo,
            "fifo: is a FIFO, not a regular file; a packet holds regular files only",
        ),
        (b"\xff\xfe", regular, "\u{fffd}\u{fffd}: path is not UTF-8"),
    ];
    for (name, kind, expected) in cases {
        let bytes = raw_targz(&[(b"ok.json", regular, b"{}"), (name, kind, b"")]);
        let fault = Packet::read(&bytes).unwrap_err();
        assert_eq!(fault.to_string(), expected);
    }
}

#[test]
fn duplicate_paths_are_refused() {
    let regular = tar::EntryType::Regular;
    let bytes = raw_targz(&[(b"a.json", regular, b"{}"), (b"a.json", regular, b"[]")]);
    assert_eq!(
        Packet::read(&bytes).unwrap_err().to_string(),
        "a.json: appears twice in the archive"
    );
}

#[test]
fn oversized_packets_are_refused_before_reading() {
    let mut tar_bytes = Vec::new();
    let mut header = tar::Header::new_ustar();
    header.set_path("big.bin").unwrap();
    header.set_size(300 * 1024 * 1024);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar_bytes.extend_from_slice(header.as_bytes());
    tar_bytes.extend_from_slice(&[0u8; 1024]);
    let fault = Packet::read(&gzip(&tar_bytes)).unwrap_err();
    assert_eq!(
        fault.to_string(),
        "big.bin: packet unpacks to more than 256 MiB"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let mut packet = Packet::new();
    for i in 0..MAX_ENTRIES {
        packet.files.insert(format!("f/{i}"), Vec::new());
    }
    let at_limit = packet.pack().unwrap();
    assert_eq!(Packet::read(&at_limit).unwrap().files.len(), MAX_ENTRIES);
    packet.files.insert("one-more".to_owned(), Vec::new());
    let over = packet.pack().unwrap();
    assert_eq!(
        Packet::read(&over).unwrap_err().to_string(),
        "packet has more than 10000 entries"
    );
}

#[test]
fn write_refuses_paths_a_reader_would_refuse() {
    for bad in ["../x", "/abs", "a//b", "", "./a"] {
        let mut packet = Packet::new();
        packet.files.insert(bad.to_owned(), Vec::new());
        let err = packet.write(&sha256_id(b"d")).unwrap_err();
        assert!(
            err.0.starts_with(&format!("evidence file {bad:?}")),
            "{err}"
        );
    }
    let err = Packet::new().write("sha256:nothex").unwrap_err();
    assert!(err.0.contains("is not sha256:<64 lowercase hex>"), "{err}");
}

#[test]
fn long_paths_fit_the_ustar_prefix() {
    let mut packet = Packet::new();
    let path = format!("{}/{}", "d".repeat(120), "f".repeat(90));
    packet.files.insert(path.clone(), b"x".to_vec());
    let bytes = packet.pack().unwrap();
    assert_eq!(Packet::read(&bytes).unwrap().files[&path], b"x");
}

#[test]
fn fault_display_names_the_file_when_there_is_one() {
    let with_file = PacketFault {
        file: Some("decision.json".into()),
        message: "not canonical".into(),
    };
    assert_eq!(with_file.to_string(), "decision.json: not canonical");
    let without = PacketFault {
        file: None,
        message: "not a gzip file".into(),
    };
    assert_eq!(without.to_string(), "not a gzip file");
}

#[test]
fn embedded_key_is_read_but_not_trusted() {
    let sample = sample();
    let read = Packet::read(&sample.bytes).unwrap();
    assert_eq!(read.embedded_key().unwrap(), Some(key(1).public_key()));
    let mut broken = read;
    broken.files.insert(KEY.to_owned(), b"not a key".to_vec());
    let fault = broken.embedded_key().unwrap_err();
    assert_eq!(fault.file.as_deref(), Some(KEY));
    assert_eq!(Packet::new().embedded_key().unwrap(), None);
}

/// A packet with `rollout.json` whose analysis step records a judge, samples and a
/// verdict: the verdict must follow from the samples.
fn with_rollout(verdict: &serde_json::Value) -> Vec<u8> {
    let mut sample = sample();
    let rollout = json!({
        "strategy": {"strategy": "canary", "steps": [50, 100], "router": "edge"},
        "state": "rolled_back",
        "steps": [{
            "seq": 3,
            "phase": "forward",
            "state": "failed",
            "detail": {"analysis": {
                "judge": {"alpha": 0.05, "min_samples": 5, "tolerance": 0.1, "thresholds": {}},
                "metrics": [{"metric": "error_ratio", "samples": {
                    "baseline": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                    "canary": [0.05, 0.1, 0.05, 0.05, 0.1, 0.05],
                }}],
                "verdict": verdict,
            }},
        }],
    });
    sample.packet.files.insert(
        stella_decision::evidence::ROLLOUT.to_owned(),
        canonical_bytes(&rollout).unwrap(),
    );
    sample.packet.write(&sample.decision_id).unwrap()
}

#[test]
fn a_rollout_analysis_must_give_its_verdict_again_from_its_samples() {
    let verdict = {
        let record: stella_decision::analysis::StepRecord = serde_json::from_value(json!({
            "judge": {"alpha": 0.05, "min_samples": 5, "tolerance": 0.1, "thresholds": {}},
            "metrics": [{"metric": "error_ratio", "samples": {
                "baseline": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                "canary": [0.05, 0.1, 0.05, 0.05, 0.1, 0.05],
            }}],
            "verdict": {"verdict": "continue"},
        }))
        .unwrap();
        stella_decision::analysis::recompute(&record).unwrap()
    };
    assert!(matches!(
        verdict,
        stella_decision::analysis::Verdict::Rollback { .. }
    ));
    let honest = with_rollout(&serde_json::to_value(&verdict).unwrap());
    verify(&honest, &[key(1).public_key()]).unwrap();
    // The same samples recorded as a pass: named, with both verdicts.
    let fault = fault_of(&with_rollout(&json!({"verdict": "continue"})));
    assert_eq!(
        fault.file.as_deref(),
        Some(stella_decision::evidence::ROLLOUT),
        "{fault}"
    );
    assert!(
        fault
            .message
            .contains("step 3: the recorded verdict Continue does not follow from its samples"),
        "{fault}"
    );
}
