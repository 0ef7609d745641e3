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
    for (_, data) in inputs("evidence_packet") {
        let _ = stella_decision::evidence::Packet::read(&data);
    }
    for (path, data) in inputs("offline_kit") {
        if let Ok(kit) = stella_decision::offline::Kit::from_tar(&data) {
            assert!(
                stella_decision::offline::verify_kit(&kit, &[]).is_err(),
                "{path}"
            );
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
