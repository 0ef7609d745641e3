//! Replays the fuzz seeds and the inputs the control plane's fuzz targets once failed
//! on (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through
//! `stella_control_plane::fuzzing`, the functions those targets call, so what was fixed
//! stays fixed without a fuzzing toolchain; the seeds must also decode.

use std::path::Path;

use stella_control_plane::fuzzing;

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
    assert!(
        found.iter().any(|(path, _)| seed(path)),
        "the seeds of {target} are where this test looks"
    );
    found
}

fn seed(path: &str) -> bool {
    path.contains("/seeds/")
}

#[test]
fn image_references() {
    for (path, data) in inputs("image_reference") {
        let parsed = fuzzing::image_reference(&data);
        if seed(&path) {
            assert!(parsed.is_some(), "{path}");
        }
    }
}

#[test]
fn registry_responses() {
    for (path, data) in inputs("registry_response") {
        let decoded = fuzzing::registry_response(&data);
        if !seed(&path) {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or_default();
        let expected = if name.contains("manifest") || name.contains("index") {
            decoded.manifest && decoded.blobs.is_some()
        } else if name.contains("digest") {
            decoded.digest
        } else if name.contains("bearer") {
            decoded.challenge
        } else if name.contains("token") {
            decoded.token
        } else {
            true
        };
        assert!(expected, "{path}: {decoded:?}");
    }
}

#[test]
fn target_settings() {
    for (path, data) in inputs("target_settings") {
        let accepted = fuzzing::target_settings(&data);
        if seed(&path) && !path.ends_with("no-kind") {
            assert_eq!(accepted, Some(true), "{path}");
        }
    }
}

#[test]
fn api_bodies() {
    for (path, data) in inputs("api_bodies") {
        let (accepted, planned) = fuzzing::api_bodies(&data);
        if !seed(&path) {
            continue;
        }
        if path.contains("task-runner") {
            assert!(planned, "{path}");
        } else {
            // A JSON object, and at least one request body.
            assert!(accepted >= 2, "{path}: {accepted}");
        }
    }
}
