//! Task-pack manifests (YAML or JSON) as the TaskRunner API takes them: parsed,
//! validated and compiled with no inputs, then simulated; errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(plan) = stella_packs::plan_text(text, &serde_json::Map::new()) {
        // The hash a plan carries is the hash of the plan it carries.
        assert_eq!(
            stella_packs::plan_hash(&plan.plan).as_deref(),
            Ok(plan.plan_hash.as_str())
        );
        let _ = stella_packs::simulate(&plan, &stella_packs::SimulationContext::default());
    }
});
