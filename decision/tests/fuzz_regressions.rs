//! Replays the fuzz seeds and the inputs the fuzz targets once failed on
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the calls those
//! targets make, so what was fixed stays fixed without a fuzzing toolchain.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut found = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let bytes = std::fs::read(&path).expect("a readable fuzz input");
            found.push((path.display().to_string(), bytes));
        }
    }
    found
}

#[test]
fn scan_documents() {
    let seeds = inputs("scan_document");
    assert!(!seeds.is_empty(), "the seeds are where this test looks");
    for (path, data) in seeds {
        let parsed = stella_decision::scan::parse_document(&data);
        if path.contains("/seeds/") && !path.contains("sbom") {
            assert!(parsed.is_ok(), "{path}: {parsed:?}");
        }
    }
}

#[test]
fn evidence_packets_offline_kits_and_envelopes() {
    use stella_decision::evidence::{Packet, MANIFEST, MANIFEST_SIGNATURE};
    use stella_decision::offline::{self, verify_kit, Kit};

    let packets = inputs("evidence_packet");
    assert!(
        packets.iter().any(|(path, _)| path.contains("/seeds/")),
        "the evidence packet seeds are where this test looks"
    );
    for (path, data) in packets {
        let read = Packet::read(&data);
        if !path.contains("/seeds/") {
            continue;
        }
        // A seed is a packet as `Packet::write` makes it: it unpacks, its manifest has
        // the right form and lists every other file with its content id, and it names
        // the decision in `decision.json`. The signatures are not checked: no key is
        // trusted here.
        let packet = read.unwrap_or_else(|fault| panic!("{path}: {fault}"));
        let manifest = packet
            .read_manifest()
            .unwrap_or_else(|fault| panic!("{path}: {fault}"));
        let listed: Vec<(&str, String)> = packet
            .files
            .iter()
            .filter(|(file, _)| *file != MANIFEST && *file != MANIFEST_SIGNATURE)
            .map(|(file, content)| (file.as_str(), stella_decision::sha256_id(content)))
            .collect();
        let in_manifest: Vec<(&str, String)> = manifest
            .files
            .iter()
            .map(|(file, id)| (file.as_str(), id.clone()))
            .collect();
        assert_eq!(listed, in_manifest, "{path}");
        let decision = packet
            .files
            .get(stella_decision::evidence::DECISION)
            .unwrap_or_else(|| panic!("{path}: no decision.json"));
        assert_eq!(
            stella_decision::sha256_id(decision),
            manifest.decision_id,
            "{path}"
        );
    }

    let kits = inputs("offline_kit");
    assert!(
        kits.iter().any(|(path, _)| path.contains("/seeds/")),
        "the offline kit seeds are where this test looks"
    );
    for (path, data) in kits {
        let read = Kit::from_tar(&data);
        if path.contains("/seeds/") {
            assert!(read.is_ok(), "{path}: {read:?}");
        }
        let Ok(kit) = read else {
            continue;
        };
        let verified = verify_kit(&kit, &[]);
        assert!(verified.is_err(), "{path}");
        if path.contains("/seeds/") {
            // With no key trusted, a whole kit is refused at its signature, and
            // nowhere earlier; its decision packets unpack.
            let fault = verified.expect_err("refused");
            assert_eq!(
                fault.file.as_deref(),
                Some(offline::MANIFEST_SIGNATURE),
                "{path}: {fault}"
            );
            for (file, content) in kit.files.range("decisions/".to_owned()..) {
                if !file.starts_with("decisions/") {
                    break;
                }
                let packet = Packet::read(content);
                assert!(packet.is_ok(), "{path}: {file}: {packet:?}");
            }
        }
    }
    for (_, data) in inputs("dsse_envelope") {
        if let Ok(envelope) = stella_decision::dsse::Envelope::from_json(&data) {
            if let Ok(payload) = envelope.payload_bytes() {
                let _ = stella_decision::intoto::Statement::parse(&payload);
            }
        }
    }
}

#[test]
fn freeze_windows_and_canonical_json() {
    for (path, data) in inputs("freeze_window") {
        let spec = String::from_utf8_lossy(&data);
        let parsed = stella_decision::freeze::FreezeWindow::parse(&spec);
        if path.contains("/seeds/") {
            assert!(parsed.is_ok(), "{path}: {parsed:?}");
        }
    }
    for (path, data) in inputs("canonical_json") {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data) else {
            continue;
        };
        let once = stella_decision::canonical::canonical_value(&value).expect("canonicalises");
        let again: serde_json::Value = serde_json::from_slice(&once).expect("JSON");
        let twice = stella_decision::canonical::canonical_value(&again).expect("again");
        assert_eq!(once, twice, "{path}");
    }
}
