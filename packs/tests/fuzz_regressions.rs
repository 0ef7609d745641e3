//! Replays the fuzz seeds and the inputs the fuzz targets once failed on
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the calls those
//! targets make, so what was fixed stays fixed without a fuzzing toolchain.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, String)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut found = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let bytes = std::fs::read(&path).expect("a readable fuzz input");
            found.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    found
}

#[test]
fn pack_manifests() {
    let seeds = inputs("pack_manifest");
    assert!(!seeds.is_empty(), "the seeds are where this test looks");
    for (path, text) in seeds {
        if let Ok(plan) = stella_packs::plan_text(&text, &serde_json::Map::new()) {
            assert_eq!(
                stella_packs::plan_hash(&plan.plan).as_deref(),
                Ok(plan.plan_hash.as_str()),
                "{path}"
            );
            let _ = stella_packs::simulate(&plan, &stella_packs::SimulationContext::default());
        }
    }
}

#[test]
fn pack_expressions() {
    for (path, text) in inputs("pack_expression") {
        let template = stella_packs::expr::Template::parse(&text);
        let _ = stella_packs::expr::parse_condition(&text);
        if path.ends_with("template") {
            assert!(template.is_ok(), "{path}: {template:?}");
        }
    }
}
