//! Routers (RFC 0005): what sends a service's traffic to its versions, driven by one
//! agent. A router has a kind and settings, kept as `key=value` strings as target
//! settings are, and checked here per kind by turning them into the very settings
//! struct of `stella-routers` the agent drives the router with, so the control plane
//! cannot accept settings the agent would refuse to read.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stella_routers::{alb, haproxy, nginx, traefik};

use super::Invalid;

/// The kinds of router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// nginx: one file per route, checked with `nginx -t`, reloaded gracefully.
    Nginx,
    /// HAProxy: server slots set through the Runtime API on the admin socket.
    Haproxy,
    /// Traefik's file provider (the generator only; no agent drives it yet).
    Traefik,
    /// AWS ALB weighted forward actions (the generator only; no agent drives it yet).
    Alb,
}

/// The prefix of a router kind among an agent's capabilities (`router:nginx`), which
/// keeps router kinds apart from target kinds.
pub const ROUTER_CAPABILITY_PREFIX: &str = "router:";

const NGINX_KEYS: &[&str] = &[
    "routes_dir",
    "nginx_bin",
    "conf_path",
    "prefix",
    "error_log",
    "pid_file",
    "timeout_seconds",
];
const HAPROXY_KEYS: &[&str] = &["admin_socket", "command_timeout_ms"];
const TRAEFIK_KEYS: &[&str] = &["dynamic_file", "rule", "entry_points", "version", "scheme"];
const ALB_KEYS: &[&str] = &[
    "listener_arn",
    "region",
    "stickiness_seconds",
    "ab_header_rule_arn",
    "ab_cookie_rule_arn",
];
/// ALB: `target_group.SLOT=ARN`, one per slot.
const ALB_TARGET_GROUP_PREFIX: &str = "target_group.";

impl RouterKind {
    /// All kinds, in documentation order.
    pub const ALL: [RouterKind; 4] = [
        RouterKind::Nginx,
        RouterKind::Haproxy,
        RouterKind::Traefik,
        RouterKind::Alb,
    ];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Nginx => nginx::KIND,
            RouterKind::Haproxy => haproxy::KIND,
            RouterKind::Traefik => traefik::KIND,
            RouterKind::Alb => alb::KIND,
        }
    }

    /// The capability an agent advertises when it can drive this kind: `router:KIND`.
    pub fn capability(self) -> String {
        format!("{ROUTER_CAPABILITY_PREFIX}{}", self.as_str())
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            RouterKind::Nginx => NGINX_KEYS,
            RouterKind::Haproxy => HAPROXY_KEYS,
            RouterKind::Traefik => TRAEFIK_KEYS,
            RouterKind::Alb => ALB_KEYS,
        }
    }

    /// Refuses unknown keys, values the kind cannot use and missing required keys.
    pub fn validate_settings(self, settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
        self.settings_json(settings).map(|_| ())
    }

    /// The settings as the JSON object the agent's router reads (the `stella-routers`
    /// settings struct of the kind, defaults filled in), after checking them.
    pub fn settings_json(self, settings: &BTreeMap<String, String>) -> Result<Value, Invalid> {
        let mut object = Map::new();
        let mut target_groups = Map::new();
        for (key, value) in settings {
            if value.chars().any(char::is_control) {
                return Err(Invalid(format!(
                    "setting {key}: control characters are not allowed"
                )));
            }
            if self == RouterKind::Alb {
                if let Some(slot) = key.strip_prefix(ALB_TARGET_GROUP_PREFIX) {
                    if slot.is_empty() {
                        return Err(Invalid(
                            "setting target_group.SLOT: name the slot (e.g. target_group.canary)"
                                .to_owned(),
                        ));
                    }
                    arn(key, value)?;
                    target_groups.insert(slot.to_owned(), Value::String(value.clone()));
                    continue;
                }
            }
            if !self.keys().contains(&key.as_str()) {
                return Err(Invalid(format!(
                    "unknown setting `{key}` for a {self} router (known: {})",
                    self.known_keys()
                )));
            }
            object.insert(key.clone(), typed_value(key, value)?);
        }
        if self == RouterKind::Alb {
            if target_groups.is_empty() {
                return Err(Invalid(
                    "an alb router needs at least one target_group.SLOT=ARN setting".to_owned(),
                ));
            }
            object.insert("target_groups".to_owned(), Value::Object(target_groups));
        }
        let value = Value::Object(object);
        let typed = match self {
            RouterKind::Nginx => reparse::<nginx::NginxSettings>(self, value),
            RouterKind::Haproxy => reparse::<haproxy::HaproxySettings>(self, value),
            RouterKind::Traefik => reparse::<traefik::TraefikSettings>(self, value),
            RouterKind::Alb => reparse::<alb::AlbSettings>(self, value),
        }?;
        Ok(typed)
    }

    fn known_keys(self) -> String {
        let mut keys = self.keys().join(", ");
        if self == RouterKind::Alb {
            keys.push_str(", target_group.SLOT");
        }
        keys
    }
}

/// `value` read into the kind's settings struct and written back: a missing required
/// key or a wrong shape is refused in the struct's own terms, and defaults are filled.
fn reparse<T>(kind: RouterKind, value: Value) -> Result<Value, Invalid>
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let typed: T = serde_json::from_value(value)
        .map_err(|e| Invalid(format!("settings of a {kind} router: {e}")))?;
    serde_json::to_value(typed).map_err(|e| Invalid(format!("settings of a {kind} router: {e}")))
}

/// One setting as JSON of the type its struct field has, checked by its key.
fn typed_value(key: &str, value: &str) -> Result<Value, Invalid> {
    let number = |max: u64| -> Result<Value, Invalid> {
        match value.parse::<u64>() {
            Ok(n) if n >= 1 && n <= max => Ok(Value::from(n)),
            _ => Err(Invalid(format!(
                "{key} `{value}` must be a whole number from 1 to {max}"
            ))),
        }
    };
    match key {
        "routes_dir" | "nginx_bin" | "conf_path" | "prefix" | "error_log" | "pid_file"
        | "admin_socket" | "dynamic_file" => {
            if !value.starts_with('/') || value.split('/').any(|part| part == "..") {
                return Err(Invalid(format!(
                    "{key} `{value}` must be an absolute path on the agent's host, without `..`"
                )));
            }
            Ok(Value::String(value.to_owned()))
        }
        "timeout_seconds" => number(3_600),
        "command_timeout_ms" => number(600_000),
        "stickiness_seconds" => number(u64::from(alb::MAX_STICKINESS_SECONDS)),
        "entry_points" => {
            let points: Vec<Value> = value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_owned()))
                .collect();
            if points.is_empty() {
                return Err(Invalid(
                    "entry_points: name at least one entry point (comma-separated)".to_owned(),
                ));
            }
            Ok(Value::Array(points))
        }
        "version" if !matches!(value, "v2" | "v3") => {
            Err(Invalid(format!("version `{value}`: use v2 or v3")))
        }
        "scheme" if !matches!(value, "http" | "https") => {
            Err(Invalid(format!("scheme `{value}`: use http or https")))
        }
        "listener_arn" | "ab_header_rule_arn" | "ab_cookie_rule_arn" => {
            arn(key, value)?;
            Ok(Value::String(value.to_owned()))
        }
        "region" | "rule"
            if value.trim().is_empty()
                || (key == "region" && value.contains(char::is_whitespace)) =>
        {
            Err(Invalid(format!("{key} must not be empty")))
        }
        _ => Ok(Value::String(value.to_owned())),
    }
}

fn arn(key: &str, value: &str) -> Result<(), Invalid> {
    if value.starts_with("arn:") && !value.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{key} `{value}` is not an ARN (arn:aws:elasticloadbalancing:…)"
        )))
    }
}

impl FromStr for RouterKind {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        RouterKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                Invalid(format!(
                    "unknown router kind `{s}`: use nginx, haproxy, traefik or alb"
                ))
            })
    }
}

impl fmt::Display for RouterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A router, driven by one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// Unique name in its tenant.
    pub name: String,
    /// Its kind.
    pub kind: RouterKind,
    /// The agent that drives it.
    pub agent_id: String,
    /// Kind-specific settings, as given.
    pub settings: BTreeMap<String, String>,
    /// Creation time.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nginx_settings_become_the_routers_struct_with_defaults() {
        let json = RouterKind::Nginx
            .settings_json(&settings(&[
                ("routes_dir", "/etc/nginx/stella"),
                ("timeout_seconds", "10"),
            ]))
            .expect("valid");
        let typed: nginx::NginxSettings = serde_json::from_value(json).expect("reads back");
        assert_eq!(typed.routes_dir, std::path::Path::new("/etc/nginx/stella"));
        assert_eq!(typed.timeout_seconds, 10);
        assert_eq!(typed.nginx_bin, std::path::Path::new("/usr/sbin/nginx"));
    }

    #[test]
    fn bad_settings_are_refused_per_kind() {
        let refused = |kind: RouterKind, pairs: &[(&str, &str)], says: &str| {
            let Invalid(message) = kind
                .validate_settings(&settings(pairs))
                .expect_err("refused");
            assert!(message.contains(says), "{message:?} should say {says:?}");
        };
        refused(RouterKind::Nginx, &[], "routes_dir");
        refused(RouterKind::Nginx, &[("routes_dir", "stella")], "absolute");
        refused(
            RouterKind::Nginx,
            &[("routes_dir", "/a/../b")],
            "without `..`",
        );
        refused(
            RouterKind::Nginx,
            &[("routes_dir", "/r"), ("listen", "80")],
            "unknown setting `listen`",
        );
        refused(
            RouterKind::Nginx,
            &[("routes_dir", "/r"), ("timeout_seconds", "0")],
            "1 to 3600",
        );
        refused(RouterKind::Haproxy, &[], "admin_socket");
        refused(
            RouterKind::Traefik,
            &[
                ("dynamic_file", "/d.yml"),
                ("rule", "Host(`a`)"),
                ("entry_points", "web"),
                ("version", "v4"),
            ],
            "v2 or v3",
        );
        refused(
            RouterKind::Alb,
            &[("listener_arn", "arn:aws:x"), ("region", "eu-west-1")],
            "target_group.SLOT",
        );
        refused(
            RouterKind::Alb,
            &[
                ("listener_arn", "listener"),
                ("region", "eu-west-1"),
                ("target_group.stable", "arn:aws:tg"),
            ],
            "not an ARN",
        );
    }

    #[test]
    fn every_kind_accepts_its_documented_settings() {
        RouterKind::Haproxy
            .validate_settings(&settings(&[("admin_socket", "/run/haproxy/admin.sock")]))
            .expect("haproxy");
        RouterKind::Traefik
            .validate_settings(&settings(&[
                ("dynamic_file", "/etc/traefik/dynamic/web.yml"),
                ("rule", "Host(`shop.example.com`)"),
                ("entry_points", "web, websecure"),
                ("version", "v3"),
            ]))
            .expect("traefik");
        let json = RouterKind::Alb
            .settings_json(&settings(&[
                (
                    "listener_arn",
                    "arn:aws:elasticloadbalancing:eu-west-1:1:listener/app/x",
                ),
                ("region", "eu-west-1"),
                (
                    "target_group.stable",
                    "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/s",
                ),
                (
                    "target_group.canary",
                    "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/c",
                ),
            ]))
            .expect("alb");
        let typed: alb::AlbSettings = serde_json::from_value(json).expect("reads back");
        assert_eq!(typed.target_groups.len(), 2);
    }

    #[test]
    fn kinds_read_and_name_their_capability() {
        assert_eq!(
            "haproxy".parse::<RouterKind>().ok(),
            Some(RouterKind::Haproxy)
        );
        assert!("envoy".parse::<RouterKind>().is_err());
        assert_eq!(RouterKind::Nginx.capability(), "router:nginx");
    }
}
