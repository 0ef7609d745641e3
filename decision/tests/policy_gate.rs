//! The Rego policy gate: the contract (`deny`, `allow`), refusals when compiling,
//! errors when evaluating, determinism, and what evaluation costs.

use serde_json::{json, Value};
use stella_decision::policy::{Policy, PolicyOutcome, ALLOW_NOT_TRUE};

/// Monday 5 January 2026, 12:00 UTC.
const MONDAY_NOON_MS: i64 = 1_767_614_400_000;
/// Saturday 10 January 2026, 12:00 UTC.
const SATURDAY_NOON_MS: i64 = 1_768_046_400_000;

fn compile(source: &str) -> Policy {
    Policy::compile(source).expect("test policy compiles")
}

fn compile_error(source: &str) -> String {
    Policy::compile(source)
        .expect_err("policy is refused")
        .to_string()
}

fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

/// An input like the one the promotion gate builds: three images with twenty findings
/// each after VEX, one approval.
fn input() -> Value {
    let components: Vec<Value> = ["api", "web", "worker"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "name": name,
                "image": format!("registry.example/shop/{name}@{}", digest(i as u32 + 1)),
                "digest": digest(i as u32 + 1),
            })
        })
        .collect();
    let severities = ["low", "medium", "high", "medium", "low"];
    let mut findings = Vec::new();
    for i in 0..3u32 {
        for j in 0..20u32 {
            findings.push(json!({
                "digest": digest(i + 1),
                "id": format!("CVE-2025-{:04}", i * 100 + j),
                "package": format!("lib{j}"),
                "severity": severities[(j % 5) as usize],
                "fixed_version": if j % 2 == 0 { Value::from(format!("1.{j}.1")) } else { Value::Null },
            }));
        }
    }
    json!({
        "release": { "name": "shop", "version": "1.4.0", "components": components },
        "environment": { "name": "prod", "approvals_required": 1 },
        "targets": [ { "name": "prod-1", "kind": "docker" } ],
        "findings": findings,
        "approvals": [ { "user": "alice", "at": "2026-01-05T11:00:00.000Z" } ],
        "requester": { "user": "bob", "role": "operator" },
        "time": "2026-01-05T12:00:00.000Z",
    })
}

fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut slot = &mut base;
    for key in path {
        slot = slot.get_mut(*key).expect("path exists in the test input");
    }
    *slot = value;
    base
}

fn outcome(allowed: bool, reasons: &[&str]) -> PolicyOutcome {
    PolicyOutcome {
        allowed,
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
    }
}

const CRITICAL_FINDINGS: &str = r#"package stella.gate

deny contains msg if {
    some f in input.findings
    f.severity == "critical"
    msg := sprintf("%s: %s in %s", [f.id, f.severity, f.package])
}
"#;

#[test]
fn a_policy_whose_deny_is_empty_allows() {
    let policy = compile(CRITICAL_FINDINGS);
    assert_eq!(policy.package(), "stella.gate");
    assert!(!policy.defines_allow());
    let result = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect("evaluates");
    assert_eq!(result, outcome(true, &[]));
}

#[test]
fn every_deny_reason_is_reported_sorted() {
    let policy = compile(CRITICAL_FINDINGS);
    let mut findings = input()["findings"].clone();
    findings[7]["severity"] = json!("critical");
    findings[2]["severity"] = json!("critical");
    let result = policy
        .evaluate(&with(input(), &["findings"], findings), MONDAY_NOON_MS)
        .expect("evaluates");
    assert_eq!(
        result,
        outcome(
            false,
            &[
                "CVE-2025-0002: critical in lib2",
                "CVE-2025-0007: critical in lib7"
            ]
        )
    );
}

#[test]
fn allow_false_denies_with_its_own_reason_even_when_deny_is_empty() {
    let policy = compile(
        r#"package stella.gate
deny contains "never" if false
default allow := false
"#,
    );
    assert!(policy.defines_allow());
    let result = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect("evaluates");
    assert_eq!(result, outcome(false, &[ALLOW_NOT_TRUE]));
    assert_eq!(ALLOW_NOT_TRUE, "policy `allow` is not true");
}

#[test]
fn allow_undefined_for_the_input_denies_and_true_allows() {
    let policy = compile(
        r#"package stella.gate
deny contains "requester approved their own promotion" if {
    some a in input.approvals
    a.user == input.requester.user
}
allow if input.requester.role == "admin"
"#,
    );
    let operator = input();
    assert_eq!(
        policy
            .evaluate(&operator, MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(false, &[ALLOW_NOT_TRUE])
    );
    let admin = with(input(), &["requester", "role"], json!("admin"));
    assert_eq!(
        policy.evaluate(&admin, MONDAY_NOON_MS).expect("evaluates"),
        outcome(true, &[])
    );
    // Both reasons at once, sorted.
    let self_approved = with(admin, &["requester", "user"], json!("alice"));
    let self_approved = with(self_approved, &["requester", "role"], json!("operator"));
    assert_eq!(
        policy
            .evaluate(&self_approved, MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(
            false,
            &[ALLOW_NOT_TRUE, "requester approved their own promotion"]
        )
    );
}

#[test]
fn allow_must_be_exactly_true() {
    let policy = compile("package p\ndeny contains \"x\" if false\nallow := \"yes\"\n");
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(false, &[ALLOW_NOT_TRUE])
    );
}

#[test]
fn deny_holding_a_non_string_is_an_error_naming_the_type() {
    let policy = compile("package p\ndeny contains 3 if true\n");
    let error = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect_err("not strings")
        .to_string();
    assert!(
        error.contains("policy `p`: `deny` holds a number (`3`)"),
        "{error}"
    );

    let policy = compile("package p\ndeny contains {\"reason\": \"x\"} if true\n");
    let error = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect_err("not strings")
        .to_string();
    assert!(error.contains("`deny` holds an object"), "{error}");

    let policy = compile("package p\ndeny := \"just one\"\n");
    let error = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect_err("not a set")
        .to_string();
    assert!(
        error.contains("`deny` is a string (`\"just one\"`), expected a set of strings"),
        "{error}"
    );
}

#[test]
fn deny_may_be_an_array_and_may_be_undefined() {
    let policy = compile("package p\ndeny := [\"b\", \"a\", \"b\"]\n");
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(false, &["a", "b"])
    );
    let policy = compile("package p\ndeny := {\"frozen\"} if input.frozen\n");
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(true, &[])
    );
    let frozen = with(input(), &["time"], json!("x"));
    let mut frozen = frozen;
    frozen["frozen"] = json!(true);
    assert_eq!(
        policy.evaluate(&frozen, MONDAY_NOON_MS).expect("evaluates"),
        outcome(false, &["frozen"])
    );
}

#[test]
fn a_parse_error_names_its_line_and_column_on_one_line() {
    let error =
        compile_error("package stella.gate\n\ndeny contains msg if {\n    msg := \"x\" +\n}\n");
    assert!(error.starts_with("policy: line 4, column "), "{error}");
    assert!(!error.contains('\n'), "{error}");
    let error = compile_error("package stella.gate\ndeny contains msg if {\n  msg := 1\n");
    assert!(error.starts_with("policy: line "), "{error}");
    let error = compile_error("");
    assert!(error.starts_with("policy: "), "{error}");
}

#[test]
fn a_module_without_deny_is_refused() {
    let error = compile_error("package stella.gate\nallow := true\n");
    assert_eq!(error, "policy `stella.gate` defines no `deny` rule");
}

#[test]
fn deny_and_allow_must_be_rules_of_their_own() {
    let error = compile_error("package p\ndeny(x) := x\n");
    assert_eq!(
        error,
        "policy `p` line 2, column 1: `deny` is a function; Stella evaluates the rule `deny` (`deny contains msg if { … }`)"
    );
    let error = compile_error("package p\ndeny contains \"x\" if false\n\nallow(x) if x\n");
    assert!(
        error.starts_with("policy `p` line 4, column 1: `allow` is a function"),
        "{error}"
    );
    for source in [
        "package p\ndeny.high := {\"x\"}\n",
        "package p\ndeny[x] := 1 if x := \"a\"\n",
    ] {
        let error = compile_error(source);
        assert!(
            error.starts_with("policy `p` line 2, column 1: this rule defines part of `deny`"),
            "{error}"
        );
    }
    // Rules whose names only start with deny or allow are other rules.
    let policy = compile("package p\ndeny_list := {\"x\"}\nallowed := false\ndeny contains m if { some m in deny_list; input.nope }\n");
    assert!(!policy.defines_allow());
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(true, &[])
    );
}

#[test]
fn rego_v0_syntax_is_refused_with_a_hint() {
    let error = compile_error("package stella.gate\n\ndeny[msg] {\n  msg := \"x\"\n}\n");
    assert!(
        error.starts_with("policy: line 3, column 11: `if` keyword is required"),
        "{error}"
    );
    assert!(error.contains("the module is Rego v0 syntax"), "{error}");
    assert!(error.contains("deny contains msg if"), "{error}");
    // A plain syntax error gets no v0 hint.
    let error = compile_error("package stella.gate\ndeny contains msg if {\n  msg := \n}\n");
    assert!(!error.contains("v0"), "{error}");
    // `import rego.v1`, as OPA 0.x wrote v1 modules, is accepted.
    let policy =
        compile("package stella.gate\nimport rego.v1\ndeny contains \"x\" if input.nope\n");
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(true, &[])
    );
}

#[test]
fn the_whole_input_is_there_for_rules_to_use() {
    let policy = compile(
        r#"package stella.gate

allowed_registry := "registry.example/"

deny contains sprintf("%s is not from %s", [c.image, allowed_registry]) if {
    some c in input.release.components
    not startswith(c.image, allowed_registry)
}

deny contains sprintf("%s does not name its digest %s", [c.name, c.digest]) if {
    some c in input.release.components
    not endswith(c.image, concat("@", ["", c.digest]))
}

deny contains "prod needs two approvals" if {
    input.environment.name == "prod"
    count(input.approvals) < 2
}

deny contains sprintf("%s may not promote", [input.requester.user]) if input.requester.role == "viewer"

deny contains sprintf("%d high findings with a fix", [n]) if {
    n := count([f | some f in input.findings; f.severity == "high"; f.fixed_version != null])
    n > 5
}

deny contains "no promotions at weekends" if {
    time.weekday(time.now_ns()) in {"Saturday", "Sunday"}
}

deny contains "the input time is not the evaluation time" if {
    time.parse_rfc3339_ns(input.time) != time.now_ns()
}
"#,
    );
    // Monday, one approval, 3 images x 2 high findings with a fix (6).
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(
            false,
            &["6 high findings with a fix", "prod needs two approvals"]
        )
    );
    let mut staging = with(input(), &["environment", "name"], json!("staging"));
    staging["findings"] = json!([]);
    assert_eq!(
        policy
            .evaluate(&staging, MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(true, &[])
    );
    // The evaluation time is what time.now_ns() returns.
    let saturday = with(
        staging.clone(),
        &["time"],
        json!("2026-01-10T12:00:00.000Z"),
    );
    assert_eq!(
        policy
            .evaluate(&saturday, SATURDAY_NOON_MS)
            .expect("evaluates"),
        outcome(false, &["no promotions at weekends"])
    );
    assert_eq!(
        policy
            .evaluate(&staging, SATURDAY_NOON_MS)
            .expect("evaluates"),
        outcome(
            false,
            &[
                "no promotions at weekends",
                "the input time is not the evaluation time"
            ]
        )
    );
    // Digests, registry and requester.
    let mut components = staging["release"]["components"].clone();
    components[1]["image"] = json!(format!("docker.io/library/web@{}", digest(2)));
    components[2]["digest"] = json!(digest(9));
    let tampered = with(staging.clone(), &["release", "components"], components);
    let tampered = with(tampered, &["requester", "role"], json!("viewer"));
    assert_eq!(
        policy
            .evaluate(&tampered, MONDAY_NOON_MS)
            .expect("evaluates")
            .reasons,
        vec![
            "bob may not promote".to_string(),
            format!(
                "docker.io/library/web@{} is not from registry.example/",
                digest(2)
            ),
            format!("worker does not name its digest {}", digest(9)),
        ]
    );
}

#[test]
fn time_now_ns_is_the_evaluation_time_to_the_nanosecond() {
    let policy = compile("package p\ndeny contains sprintf(\"%d\", [time.now_ns()]) if true\n");
    assert_eq!(
        policy
            .evaluate(&json!({}), MONDAY_NOON_MS + 1)
            .expect("evaluates"),
        outcome(false, &["1767614400001000000"])
    );
    // Beyond what nanoseconds in an i64 can hold: an error, not a wrapped-around time.
    let error = policy
        .evaluate(&json!({}), i64::MAX)
        .expect_err("out of range")
        .to_string();
    assert!(error.contains("out of range"), "{error}");
}

#[test]
fn random_numbers_are_not_available() {
    let policy = compile("package p\ndeny contains \"lottery\" if rand.intn(\"seed\", 10) == 3\n");
    let error = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect_err("refused")
        .to_string();
    assert!(error.contains("rand.intn is not available"), "{error}");
    assert!(error.starts_with("policy `p`: line 2, column "), "{error}");
    assert!(!error.contains('\n'), "{error}");
}

#[test]
fn builtins_that_reach_outside_do_not_exist() {
    for call in [
        "http.send({\"method\": \"get\", \"url\": \"http://127.0.0.1/\"})",
        "uuid.rfc4122(\"x\")",
        "opa.runtime()",
        "net.lookup_ip_addr(\"example.com\")",
    ] {
        let source = format!("package p\ndeny contains \"x\" if {{\n  r := {call}\n  r == 1\n}}\n");
        let result = Policy::compile(&source).and_then(|p| p.evaluate(&input(), MONDAY_NOON_MS));
        let error = result.expect_err(call).to_string();
        assert!(error.contains("could not find function"), "{call}: {error}");
    }
}

#[test]
fn the_host_time_zone_is_refused() {
    let error = compile_error(
        "package p\ndeny contains \"late\" if {\n  [h, _, _] := time.clock([time.now_ns(), \"Local\"])\n  h > 17\n}\n",
    );
    assert!(error.starts_with("policy `p` line 3, column "), "{error}");
    assert!(error.contains("\"Local\" is the host's"), "{error}");
    // Named zones are fine, and "Local" in a comment is not a literal.
    let policy = compile(
        "package p\n# not \"Local\"\ndeny contains \"late\" if {\n  [h, _, _] := time.clock([time.now_ns(), \"Europe/Berlin\"])\n  h > 17\n}\n",
    );
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(true, &[])
    );
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS + 6 * 3_600_000)
            .expect("evaluates"),
        outcome(false, &["late"]),
        "18:00 UTC is 19:00 in Berlin"
    );
}

#[test]
fn runtime_errors_are_errors_not_denials() {
    let policy = compile(
        "package p\nlevel := 1 if input.requester\nlevel := 2 if input.release\ndeny contains \"x\" if level > 1\n",
    );
    let error = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect_err("conflict")
        .to_string();
    assert!(
        error.starts_with("policy `p`: line 3, column 1:"),
        "{error}"
    );
    assert!(error.contains("conflict"), "{error}");
    assert!(!error.contains('\n'), "{error}");
}

#[test]
fn errors_found_by_analysis_or_evaluation_read_on_one_line() {
    let error = compile_error("package p\ndeny contains \"x\" if { x := 1; x := 2 }\n");
    assert!(error.starts_with("policy `p`: line 2, column "), "{error}");
    let policy = compile("package p\na if b\nb if a\ndeny contains \"x\" if a\n");
    let error = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect_err("recursion")
        .to_string();
    assert!(
        error.starts_with("policy `p`: line 2, column 1: recursion detected"),
        "{error}"
    );
    assert!(error.contains("depends on"), "{error}");
    assert!(!error.contains('\n') && !error.contains(" | "), "{error}");
    let policy = compile("package p\ndeny contains x if { y := 1 }\n");
    let error = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect_err("unsafe")
        .to_string();
    assert!(error.contains("var x is unsafe"), "{error}");
}

#[test]
fn the_policy_version_is_the_sha256_of_its_source() {
    let policy = compile(CRITICAL_FINDINGS);
    assert_eq!(
        policy.sha256(),
        stella_decision::sha256_id(CRITICAL_FINDINGS.as_bytes())
    );
    assert_eq!(policy.source(), CRITICAL_FINDINGS);
    let edited = CRITICAL_FINDINGS.replace("critical", "high");
    assert_ne!(compile(&edited).sha256(), policy.sha256());
    assert!(format!("{policy:?}").contains("stella.gate"));
}

#[test]
fn the_same_input_gives_the_same_outcome_every_time_and_on_every_thread() {
    let policy = compile(
        r#"package stella.gate
deny contains sprintf("%s %s", [f.id, f.severity]) if {
    some f in input.findings
    f.severity in {"high", "medium"}
}
default allow := false
allow if count(input.approvals) >= input.environment.approvals_required
"#,
    );
    let first = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect("evaluates");
    assert_eq!(first.reasons.len(), 36);
    assert!(!first.allowed);
    let mut sorted = first.reasons.clone();
    sorted.sort();
    assert_eq!(first.reasons, sorted);
    let again = policy
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect("evaluates");
    assert_eq!(
        serde_json::to_vec(&first).expect("serializes"),
        serde_json::to_vec(&again).expect("serializes")
    );
    let recompiled = compile(policy.source())
        .evaluate(&input(), MONDAY_NOON_MS)
        .expect("evaluates");
    assert_eq!(recompiled, first);
    let shared = std::sync::Arc::new(policy);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let policy = shared.clone();
            std::thread::spawn(move || policy.evaluate(&input(), MONDAY_NOON_MS))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().expect("thread").expect("evaluates"), first);
    }
}

#[test]
fn print_output_does_not_change_the_outcome() {
    let policy = compile("package p\ndeny contains \"x\" if {\n  print(\"checking\", input.requester.user)\n  false\n}\n");
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(true, &[])
    );
}

#[test]
fn packages_with_several_parts_and_quoted_parts_work() {
    let policy = compile("package stella.teams.shop\ndeny contains \"x\" if input.nope\n");
    assert_eq!(policy.package(), "stella.teams.shop");
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(true, &[])
    );
    let policy = compile("package stella[\"shop-team\"]\ndeny contains \"quoted\" if true\n");
    assert_eq!(policy.package(), "stella.shop-team");
    assert_eq!(
        policy
            .evaluate(&input(), MONDAY_NOON_MS)
            .expect("evaluates"),
        outcome(false, &["quoted"])
    );
}

/// Prints the median time of one evaluation of a 20-line policy over three images with
/// twenty findings each (no assertion: timing depends on machine and build profile).
#[test]
fn prints_the_time_an_evaluation_takes() {
    let policy = compile(
        r#"package stella.gate

default allow := false

allow if count(input.approvals) >= input.environment.approvals_required

deny contains sprintf("%s in %s is %s", [f.id, f.digest, f.severity]) if {
    some f in input.findings
    f.severity in {"critical"}
}

deny contains sprintf("%s: %d high findings with a fix", [c.name, n]) if {
    some c in input.release.components
    n := count([f | some f in input.findings; f.digest == c.digest; f.severity == "high"; f.fixed_version != null])
    n > 5
}

deny contains "no promotions at weekends" if time.weekday(time.now_ns()) in {"Saturday", "Sunday"}

deny contains sprintf("%s is not pinned", [c.name]) if {
    some c in input.release.components
    not startswith(c.digest, "sha256:")
}
"#,
    );
    assert_eq!(policy.source().lines().count(), 23);
    let input = input();
    let expected = policy.evaluate(&input, MONDAY_NOON_MS).expect("evaluates");
    assert_eq!(expected, outcome(true, &[]));
    let mut samples = Vec::new();
    for _ in 0..201 {
        let started = std::time::Instant::now();
        let result = policy.evaluate(std::hint::black_box(&input), MONDAY_NOON_MS);
        samples.push(started.elapsed());
        assert_eq!(result.as_ref(), Ok(&expected));
    }
    samples.sort();
    println!(
        "policy evaluate (20-line policy, 3 images x 20 findings): median {:?}, min {:?}",
        samples[samples.len() / 2],
        samples[0]
    );
}
