use serde_json::json;

use super::*;

fn ctx() -> Value {
    let inputs = json!({"target": "registry.example.com/app:v1", "env": "prod", "regions": ["eu", "us"], "replicas": 3});
    let outputs = json!({"scan-image": {"critical": 0, "digest": "sha256:abc"}});
    context(
        inputs.as_object().expect("object"),
        outputs.as_object().expect("object"),
        &[("item", json!({"name": "eu"})), ("index", json!(1))],
    )
}

fn eval(text: &str) -> Value {
    parse(text)
        .expect("parses")
        .eval(&ctx())
        .expect("evaluates")
}

#[test]
fn evaluates_paths_literals_and_operators() {
    let cases: Vec<(&str, Value)> = vec![
        ("inputs.target", json!("registry.example.com/app:v1")),
        ("steps.scan-image.outputs.critical == 0", json!(true)),
        (
            "inputs.env == 'prod' && !(inputs.replicas < 2)",
            json!(true),
        ),
        ("inputs.env != \"prod\" || false", json!(false)),
        ("inputs.regions[1]", json!("us")),
        ("inputs['env']", json!("prod")),
        ("inputs.regions[index]", json!("us")),
        ("item.name", json!("eu")),
        ("inputs.missing", Value::Null),
        ("len(inputs.regions) >= 2", json!(true)),
        ("contains(inputs.regions, 'eu')", json!(true)),
        ("startsWith(inputs.target, 'registry.')", json!(true)),
        ("endsWith(inputs.target, ':v1')", json!(true)),
        ("upper(inputs.env)", json!("PROD")),
        ("lower('ABC')", json!("abc")),
        ("default(inputs.missing, 'x')", json!("x")),
        ("join(inputs.regions, ',')", json!("eu,us")),
        ("toJson(inputs.regions)", json!("[\"eu\",\"us\"]")),
        ("-1.5 < 0", json!(true)),
        ("null", Value::Null),
        ("1 == 1.0", json!(true)),
        ("true || false && false", json!(true)),
    ];
    for (text, want) in cases {
        assert_eq!(eval(text), want, "{text}");
    }
}

#[test]
fn parse_errors_say_what_is_wrong() {
    let cases = [
        ("", "empty expression"),
        ("inputs.", "expected a name after `.`"),
        ("a == b == c", "comparisons do not chain"),
        ("nope(1)", "unknown function `nope`"),
        ("len(1, 2)", "len() takes 1 argument(s), found 2"),
        ("'open", "unterminated string"),
        ("a # b", "unexpected character `#`"),
        ("(a", "expected `)` at the end"),
        ("a b", "unexpected `b` after the expression"),
    ];
    for (text, want) in cases {
        let err = parse(text).expect_err(text);
        assert!(err.0.contains(want), "{text}: {err}");
    }
}

#[test]
fn ordering_needs_numbers_or_strings() {
    let err = parse("inputs.regions < 1")
        .expect("parses")
        .eval(&ctx())
        .expect_err("fails");
    assert!(err.0.contains("cannot order"), "{err}");
}

#[test]
fn references_are_extracted_from_every_part() {
    let e =
        parse("steps.build.outputs.image[inputs.i] == item && foo.bar || steps.x").expect("parses");
    assert_eq!(
        e.references(),
        vec![
            Reference::StepOutput {
                step: "build".into(),
                output: "image".into()
            },
            Reference::Input { name: "i".into() },
            Reference::Variable {
                name: "item".into()
            },
            Reference::Variable { name: "foo".into() },
            Reference::Invalid {
                text: "steps.x".into(),
                reason: "a step reference is steps.<id>.outputs.<name>".into()
            },
        ]
    );
}

#[test]
fn templates_keep_the_type_of_a_lone_expression() {
    let t = Template::parse("{{ inputs.regions }}").expect("parses");
    assert_eq!(t.render(&ctx()).expect("renders"), json!(["eu", "us"]));
    let t = Template::parse("deploy {{ inputs.replicas }}x to {{inputs.env}}{{ inputs.none }}!")
        .expect("parses");
    assert_eq!(
        t.render(&ctx()).expect("renders"),
        json!("deploy 3x to prod!")
    );
    assert!(Template::parse("{{ inputs.x").is_err());
    assert_eq!(t.references().len(), 3);
}

#[test]
fn conditions_may_be_wrapped() {
    let a = parse_condition("{{ inputs.env == 'prod' }}").expect("parses");
    let b = parse_condition("inputs.env == 'prod'").expect("parses");
    assert_eq!(a, b);
}

#[test]
fn truthiness() {
    for v in [
        json!(null),
        json!(false),
        json!(0),
        json!(""),
        json!([]),
        json!({}),
    ] {
        assert!(!truthy(&v), "{v}");
    }
    for v in [
        json!(true),
        json!(1),
        json!("x"),
        json!([0]),
        json!({"a": 1}),
    ] {
        assert!(truthy(&v), "{v}");
    }
}

#[test]
fn a_literal_open_brace_pair_is_an_expression() {
    let t = Template::parse("echo {{ '{{' }} .Name }}").expect("parses");
    assert_eq!(
        t.render(&ctx()).expect("renders"),
        json!("echo {{ .Name }}")
    );
}
