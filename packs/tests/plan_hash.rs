//! The plan hash is a function of what the pack says and its inputs, nothing else: not
//! key order, not YAML versus JSON, not comments, not map iteration order.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use stella_packs::plan_text;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn seed_inputs() -> Map<String, Value> {
    serde_json::from_str(&fixture("scan-deploy.inputs.json")).expect("a JSON object")
}

fn hash(text: &str, inputs: &Map<String, Value>) -> String {
    plan_text(text, inputs)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .plan_hash
}

/// The hash of the contract's `basic-simulation` example. It changes only when the plan
/// format does, and such a change must be deliberate: plans stored or approved under
/// the old hash no longer match.
const SCAN_DEPLOY_PLAN_HASH: &str =
    "sha256:a89d4d9fde95088181048ca6d264e73c799523e7e695cfb1802fc314dd662eea";

#[test]
fn the_seed_example_has_its_pinned_hash() {
    assert_eq!(
        hash(&fixture("scan-deploy.yaml"), &seed_inputs()),
        SCAN_DEPLOY_PLAN_HASH
    );
}

#[test]
fn key_order_comments_and_layout_do_not_change_the_hash() {
    let reordered = r#"
# The same pack, keys in another order, flow style, comments.
spec:
  steps:
    - run:
        with: {target: "{{ inputs.target }}"}   # resolved at plan time
        uses: builtin:scanner
      id: scan
  slo: {maxQueueDepth: 100, approvalP95Seconds: 900, runP95Seconds: 300}
  sandbox:
    quotaSeconds: 60
    memoryLimitMiB: 128
    cpuLimitMillicores: 100
    egressAllowlist: []
    mode: sealed
  inputs: [{required: true, type: string, name: target}]
metadata: {version: 1.0.0, name: scan-deploy}
kind: TaskPack
apiVersion: stellaops.io/pack.v1
"#;
    assert_eq!(hash(reordered, &seed_inputs()), SCAN_DEPLOY_PLAN_HASH);
}

#[test]
fn json_gives_the_same_hash_as_yaml() {
    let value: Value = serde_yaml_ng::from_str(&fixture("scan-deploy.yaml")).expect("YAML");
    let compact = serde_json::to_string(&value).expect("JSON");
    let pretty = serde_json::to_string_pretty(&value).expect("JSON");
    assert_eq!(hash(&compact, &seed_inputs()), SCAN_DEPLOY_PLAN_HASH);
    assert_eq!(hash(&pretty, &seed_inputs()), SCAN_DEPLOY_PLAN_HASH);
    let by_hand = r#"{"kind":"TaskPack","apiVersion":"stellaops.io/pack.v1",
      "metadata":{"version":"1.0.0","name":"scan-deploy"},
      "spec":{"steps":[{"id":"scan","run":{"uses":"builtin:scanner","with":{"target":"{{ inputs.target }}"}}}],
        "inputs":[{"name":"target","type":"string","required":true}],
        "slo":{"runP95Seconds":300,"approvalP95Seconds":900,"maxQueueDepth":100},
        "sandbox":{"mode":"sealed","egressAllowlist":[],"cpuLimitMillicores":100,"memoryLimitMiB":128,"quotaSeconds":60}}}"#;
    assert_eq!(hash(by_hand, &seed_inputs()), SCAN_DEPLOY_PLAN_HASH);
}

#[test]
fn input_map_order_does_not_change_the_hash() {
    let text = fixture("more/release-train.yaml");
    let values = [
        ("images", json!(["a", "b"])),
        ("regions", json!(["eu", "us", "ap"])),
        ("environment", json!("prod")),
        ("smokeTest", json!(false)),
    ];
    let mut hashes = std::collections::BTreeSet::new();
    for rotation in 0..values.len() {
        // A HashMap iterates in a per-process random order; rotations vary the
        // insertion order as well.
        let mut map: HashMap<String, Value> = HashMap::new();
        for i in 0..values.len() {
            let (k, v) = &values[(i + rotation) % values.len()];
            map.insert((*k).to_owned(), v.clone());
        }
        let inputs: Map<String, Value> = map.into_iter().collect();
        hashes.insert(hash(&text, &inputs));
    }
    assert_eq!(hashes.len(), 1, "{hashes:?}");
}

#[test]
fn what_runs_changes_the_hash() {
    let text = fixture("scan-deploy.yaml");
    let mut other = seed_inputs();
    other.insert("target".into(), json!("registry.example.com/app:v1.2.4"));
    assert_ne!(
        hash(&text, &other),
        SCAN_DEPLOY_PLAN_HASH,
        "another input value"
    );
    let other_limit = text.replace("quotaSeconds: 60", "quotaSeconds: 61");
    assert_ne!(
        hash(&other_limit, &seed_inputs()),
        SCAN_DEPLOY_PLAN_HASH,
        "another sandbox limit"
    );
}

#[test]
fn the_hash_is_of_the_canonical_json_of_the_plan() {
    let plan = plan_text(&fixture("scan-deploy.yaml"), &seed_inputs()).expect("plans");
    let bytes = stella_decision::canonical::canonical_bytes(&plan.plan).expect("canonical");
    assert_eq!(stella_decision::sha256_id(&bytes), plan.plan_hash);
    let text = String::from_utf8(bytes).expect("UTF-8");
    assert!(text.starts_with(r#"{"approvals":[],"failurePolicy":{"backoffSeconds":0,"continueOnError":false,"maxAttempts":1},"inputs":{"target":"registry.example.com/app:v1.2.3"}"#), "{text}");
}
