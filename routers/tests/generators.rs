//! The Traefik and ALB generators against documents written from the public
//! documentation (`tests/fixtures`). Neither is tested against a real Traefik or AWS.

use std::collections::BTreeMap;

use serde_json::Value;
use stella_routers::alb::{self, AlbSettings, WeightedTargetGroup};
use stella_routers::traefik::{self, TraefikSettings, TraefikVersion};
use stella_routers::{AbMatch, Backend, RouteName};

const LISTENER: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/shop/50dc6c495c0c9188/f2f7dc8efc522ab2";
const STABLE: &str =
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop-stable/2453ed029918f21f";
const CANARY: &str =
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop-canary/73e2d6bc24d8a067";
const HEADER_RULE: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener-rule/app/shop/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";
const COOKIE_RULE: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener-rule/app/shop/50dc6c495c0c9188/f2f7dc8efc522ab2/1a2b3c4d5e6f7a8b";

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).expect("fixture YAML parses")
}

fn web() -> RouteName {
    RouteName::new("web").expect("route name")
}

fn traefik_settings(version: TraefikVersion, entry_point: &str) -> TraefikSettings {
    TraefikSettings {
        dynamic_file: "/etc/traefik/dynamic/web.yml".into(),
        rule: "Host(`shop.example.com`)".to_owned(),
        entry_points: vec![entry_point.to_owned()],
        version,
        scheme: "http".to_owned(),
    }
}

#[test]
fn traefik_weighted_services_match_the_documented_shape() {
    let backends = [
        Backend::new("10.0.0.5:8080", 90)
            .expect("backend")
            .in_slot("stable"),
        Backend::new("10.0.0.6:8080", 10)
            .expect("backend")
            .in_slot("canary"),
        Backend::new("10.0.0.7:8080", 0).expect("backend"),
    ];
    let settings = traefik_settings(TraefikVersion::V3, "websecure");
    let document = traefik::dynamic_config(&web(), &backends, &settings).expect("generate");
    assert_eq!(document, yaml(&fixture("traefik-canary-v3.yml")));
    // The YAML written is the same tree.
    let written = traefik::dynamic_config_yaml(&web(), &backends, &settings).expect("yaml");
    assert_eq!(yaml(&written), document);
}

#[test]
fn traefik_ab_router_matches_the_documented_v2_rule_syntax() {
    let rule = AbMatch::header("X-Canary", "v2").or_cookie("canary", "yes");
    let backends = [
        Backend::new("10.0.0.5:8080", 1).expect("backend"),
        Backend::new("10.0.0.6:8080", 1)
            .expect("backend")
            .matching(rule),
    ];
    let settings = traefik_settings(TraefikVersion::V2, "web");
    let document = traefik::dynamic_config(&web(), &backends, &settings).expect("generate");
    assert_eq!(document, yaml(&fixture("traefik-ab-v2.yml")));
    let v3 = traefik::dynamic_config(
        &web(),
        &backends,
        &traefik_settings(TraefikVersion::V3, "web"),
    )
    .expect("generate v3");
    assert_eq!(
        v3["http"]["routers"]["web-ab"]["rule"],
        "(Host(`shop.example.com`)) && (Header(`X-Canary`, `v2`) || HeaderRegexp(`Cookie`, `(^|;\\s*)canary=yes(;|$)`))"
    );
}

#[test]
fn traefik_refuses_a_set_with_no_weight() {
    let backends = [Backend::new("10.0.0.5:8080", 0).expect("backend")];
    let error = traefik::dynamic_config(
        &web(),
        &backends,
        &traefik_settings(TraefikVersion::V3, "web"),
    )
    .expect_err("all zero");
    assert!(error.to_string().contains("weight 0"), "{error}");
}

fn alb_settings() -> AlbSettings {
    AlbSettings {
        listener_arn: LISTENER.to_owned(),
        region: "eu-west-1".to_owned(),
        target_groups: BTreeMap::from([
            ("stable".to_owned(), STABLE.to_owned()),
            ("canary".to_owned(), CANARY.to_owned()),
        ]),
        stickiness_seconds: Some(300),
        ab_header_rule_arn: Some(HEADER_RULE.to_owned()),
        ab_cookie_rule_arn: Some(COOKIE_RULE.to_owned()),
    }
}

#[test]
fn alb_modify_listener_matches_the_documented_shape_with_weights_summed_per_slot() {
    let backends = [
        Backend::new("10.0.0.5:8080", 45)
            .expect("backend")
            .in_slot("stable"),
        Backend::new("10.0.0.6:8080", 45)
            .expect("backend")
            .in_slot("stable"),
        Backend::new("10.0.0.7:8080", 10)
            .expect("backend")
            .in_slot("canary"),
    ];
    let requests = alb::requests(&backends, &alb_settings()).expect("generate");
    let expected: Value =
        serde_json::from_str(&fixture("alb-canary-modify-listener.json")).expect("fixture");
    assert_eq!(requests.modify_listener, expected);
    assert!(requests.modify_rules.is_empty());
}

#[test]
fn alb_ab_rules_match_the_documented_shape() {
    let rule = AbMatch::header("X-Canary", "v2").or_cookie("canary", "yes");
    let backends = [
        Backend::new("10.0.0.5:8080", 1)
            .expect("backend")
            .in_slot("stable"),
        Backend::new("10.0.0.6:8080", 1)
            .expect("backend")
            .in_slot("canary")
            .matching(rule),
    ];
    let settings = AlbSettings {
        stickiness_seconds: None,
        ..alb_settings()
    };
    let requests = alb::requests(&backends, &settings).expect("generate");
    let expected: Value =
        serde_json::from_str(&fixture("alb-ab-modify-rules.json")).expect("fixture");
    assert_eq!(Value::Array(requests.modify_rules), expected);
}

#[test]
fn alb_limits_from_the_api_reference_are_enforced() {
    let group = |weight| WeightedTargetGroup {
        arn: STABLE.to_owned(),
        weight,
    };
    assert!(alb::forward_action(&[group(999)], None).is_ok());
    assert!(alb::forward_action(&[group(1000)], None).is_err());
    assert!(alb::forward_action(&[], None).is_err());
    assert!(alb::forward_action(&vec![group(1); 6], None).is_err());
    assert!(alb::forward_action(&[group(1)], Some(604_800)).is_ok());
    assert!(alb::forward_action(&[group(1)], Some(604_801)).is_err());
    assert!(alb::forward_action(&[group(1)], Some(0)).is_err());
    let no_slot = [Backend::new("10.0.0.5:8080", 1).expect("backend")];
    let error = alb::requests(&no_slot, &alb_settings()).expect_err("no slot");
    assert!(error.to_string().contains("has no slot"), "{error}");
}
