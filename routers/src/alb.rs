//! AWS Application Load Balancer: weighted forward actions — a generator only.
//!
//! **Untested against AWS**: nothing here calls the Elastic Load Balancing API. The
//! documents are the request shapes of `ModifyListener` (`ListenerArn`,
//! `DefaultActions`) and `ModifyRule` (`RuleArn`, `Conditions`, `Actions`) in the
//! Elastic Load Balancing API reference (`Action`, `ForwardActionConfig`,
//! `TargetGroupTuple`, `TargetGroupStickinessConfig`, `RuleCondition`,
//! `HttpHeaderConditionConfig`), as the AWS CLI's `--cli-input-json` and the SDKs take
//! them; `tests/fixtures/alb-*.json` hold the expected documents. The limits are the
//! reference's: 1–5 target groups per forward action, weights 0–999, stickiness 1–604800
//! seconds.
//!
//! An ALB balances between target groups, not addresses: each deployment slot is a
//! target group (its targets are registered elsewhere), and a slot's weight is the sum of
//! its backends' weights. Backends must therefore carry a slot, and
//! [`AlbSettings::target_groups`] maps each slot to its target group's ARN.
//!
//! A/B: an ALB rule's conditions are ANDed, so "header or cookie" is two rules, one
//! per test, each forwarding to the A/B set's target groups. The header test is an
//! `http-header` condition (ALB compares header values case-insensitively, unlike the
//! nginx and HAProxy routers); the cookie test is an `http-header` condition on `Cookie`
//! with the wildcard value `*NAME=VALUE*` (ALB has no cookie condition), which also
//! matches a cookie whose name ends in NAME.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::RouterError;
use crate::model::{AbMatch, Backend, Split};

/// The kind name.
pub const KIND: &str = "alb";

/// The most target groups one forward action takes.
pub const MAX_TARGET_GROUPS: usize = 5;
/// The largest weight of a target group in a forward action.
pub const MAX_WEIGHT: u32 = 999;
/// The longest stickiness the API takes, in seconds (7 days).
pub const MAX_STICKINESS_SECONDS: u32 = 604_800;

/// The listener, its rules and the target group of each slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlbSettings {
    /// The listener whose default action forwards to the default set.
    pub listener_arn: String,
    /// The region (for whatever sends the documents).
    pub region: String,
    /// The target group of each slot.
    pub target_groups: BTreeMap<String, String>,
    /// Target group stickiness, in seconds; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness_seconds: Option<u32>,
    /// The rule that carries the A/B header test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_header_rule_arn: Option<String>,
    /// The rule that carries the A/B cookie test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_cookie_rule_arn: Option<String>,
}

/// A target group and its weight in a forward action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedTargetGroup {
    /// The target group's ARN.
    pub arn: String,
    /// Its weight, 0–999.
    pub weight: u32,
}

/// The documents that apply a route to an ALB.
#[derive(Debug, Clone, PartialEq)]
pub struct AlbRequests {
    /// The `ModifyListener` request: the default set.
    pub modify_listener: Value,
    /// The `ModifyRule` requests of the A/B tests (header, then cookie), when the route
    /// has an A/B rule.
    pub modify_rules: Vec<Value>,
}

/// A `forward` action over `groups` (the API's `Action` with a `ForwardConfig`).
pub fn forward_action(
    groups: &[WeightedTargetGroup],
    stickiness_seconds: Option<u32>,
) -> Result<Value, RouterError> {
    if groups.is_empty() || groups.len() > MAX_TARGET_GROUPS {
        return Err(RouterError::Invalid(format!(
            "alb: a forward action takes 1–{MAX_TARGET_GROUPS} target groups, not {}",
            groups.len()
        )));
    }
    for group in groups {
        if group.weight > MAX_WEIGHT {
            return Err(RouterError::Invalid(format!(
                "alb: target group {} weight {}: at most {MAX_WEIGHT}",
                group.arn, group.weight
            )));
        }
        if !group.arn.starts_with("arn:") {
            return Err(RouterError::Invalid(format!(
                "alb: {:?} is not a target group ARN",
                group.arn
            )));
        }
    }
    let stickiness = match stickiness_seconds {
        None => json!({ "Enabled": false }),
        Some(seconds) if (1..=MAX_STICKINESS_SECONDS).contains(&seconds) => {
            json!({ "Enabled": true, "DurationSeconds": seconds })
        }
        Some(seconds) => {
            return Err(RouterError::Invalid(format!(
                "alb: stickiness {seconds} s: 1–{MAX_STICKINESS_SECONDS}"
            )))
        }
    };
    let target_groups: Vec<Value> = groups
        .iter()
        .map(|g| json!({ "TargetGroupArn": g.arn, "Weight": g.weight }))
        .collect();
    Ok(json!({
        "Type": "forward",
        "ForwardConfig": {
            "TargetGroups": target_groups,
            "TargetGroupStickinessConfig": stickiness,
        }
    }))
}

/// The requests that make `backends` the listener's traffic split.
pub fn requests(backends: &[Backend], settings: &AlbSettings) -> Result<AlbRequests, RouterError> {
    let split = Split::new(backends)?;
    let default = forward_action(
        &groups(&split.default, settings)?,
        settings.stickiness_seconds,
    )?;
    let modify_listener = json!({
        "ListenerArn": settings.listener_arn,
        "DefaultActions": [default],
    });
    let mut modify_rules = Vec::new();
    if let Some((rule, set)) = &split.ab {
        let action = forward_action(&groups(set, settings)?, settings.stickiness_seconds)?;
        for (arn, condition) in conditions(rule, settings)? {
            modify_rules.push(json!({
                "RuleArn": arn,
                "Conditions": [condition],
                "Actions": [action],
            }));
        }
    }
    Ok(AlbRequests {
        modify_listener,
        modify_rules,
    })
}

/// The slots of `set` as target groups, each weighted by the sum of its backends'
/// weights, in the order the slots first appear.
fn groups(
    set: &[&Backend],
    settings: &AlbSettings,
) -> Result<Vec<WeightedTargetGroup>, RouterError> {
    let mut groups: Vec<(String, WeightedTargetGroup)> = Vec::new();
    for backend in set {
        let slot = backend.slot.as_deref().ok_or_else(|| {
            RouterError::Invalid(format!(
                "alb: backend {} has no slot; an ALB weights target groups, one per slot",
                backend.address
            ))
        })?;
        let arn = settings.target_groups.get(slot).ok_or_else(|| {
            RouterError::Invalid(format!("alb: no target group for slot {slot:?}"))
        })?;
        match groups.iter_mut().find(|(s, _)| s == slot) {
            Some((_, group)) => group.weight += u32::from(backend.weight.get()),
            None => groups.push((
                slot.to_owned(),
                WeightedTargetGroup {
                    arn: arn.clone(),
                    weight: u32::from(backend.weight.get()),
                },
            )),
        }
    }
    Ok(groups.into_iter().map(|(_, g)| g).collect())
}

fn conditions(rule: &AbMatch, settings: &AlbSettings) -> Result<Vec<(String, Value)>, RouterError> {
    let mut out = Vec::new();
    if let Some(header) = &rule.header {
        let arn = settings.ab_header_rule_arn.as_ref().ok_or_else(|| {
            RouterError::Invalid(
                "alb: the A/B rule tests a header and no ab_header_rule_arn is set".to_owned(),
            )
        })?;
        out.push((
            arn.clone(),
            json!({
                "Field": "http-header",
                "HttpHeaderConfig": { "HttpHeaderName": header.name, "Values": [header.value] }
            }),
        ));
    }
    if let Some(cookie) = &rule.cookie {
        let arn = settings.ab_cookie_rule_arn.as_ref().ok_or_else(|| {
            RouterError::Invalid(
                "alb: the A/B rule tests a cookie and no ab_cookie_rule_arn is set".to_owned(),
            )
        })?;
        out.push((
            arn.clone(),
            json!({
                "Field": "http-header",
                "HttpHeaderConfig": {
                    "HttpHeaderName": "Cookie",
                    "Values": [format!("*{}={}*", cookie.name, cookie.value)]
                }
            }),
        ));
    }
    Ok(out)
}
