//! What a router is asked to do: a named route and its backends, each checked once when
//! it is made so the renderers can embed them in nginx, HAProxy, Traefik and ALB text
//! without quoting (RFC 0005, "Routers on the agent side").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::RouterError;

/// The largest weight a backend may have: HAProxy's bound (0–256), the tightest of the
/// four routers (nginx has no upper bound, Traefik takes any int, ALB 0–999).
pub const MAX_WEIGHT: u16 = 256;

/// A route's name: the service it fronts. Lowercase letters and digits in groups joined
/// by single hyphens, starting with a letter, at most 63 characters, so that it is a
/// file name, an nginx upstream and (with `-` as `_`) variable name, and a HAProxy
/// backend name, and so that the suffixes the renderers add (`__ab`, `__cookie`) can
/// never collide with another route's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RouteName(String);

impl RouteName {
    /// Checks `name` (see the type's documentation).
    pub fn new(name: &str) -> Result<Self, RouterError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.split('-').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(RouterError::Invalid(format!(
                "route name {name:?}: use lowercase letters and digits joined by single hyphens, starting with a letter, at most 63 characters"
            )))
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with `-` written `_`: an identifier for nginx variables (`[A-Za-z0-9_]`).
    pub(crate) fn identifier(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RouteName {
    type Error = RouterError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<RouteName> for String {
    fn from(value: RouteName) -> Self {
        value.0
    }
}

/// The route a router applies backends to (RFC 0005's `RouteSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// The route's name.
    pub name: RouteName,
}

impl RouteSpec {
    /// The route named `name`.
    pub fn new(name: &str) -> Result<Self, RouterError> {
        Ok(Self {
            name: RouteName::new(name)?,
        })
    }
}

/// An upstream's `host:port`. The host is a DNS name or IPv4 address (letters, digits,
/// `.`, `-`) or an IPv6 address (written `[…]:port`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    host: String,
    port: u16,
}

impl Address {
    /// The address `host:port`, checked.
    pub fn new(host: &str, port: u16) -> Result<Self, RouterError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ipv6 = host.contains(':');
        let valid = !host.is_empty()
            && host.len() <= 253
            && if ipv6 {
                host.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                host.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                    && !host.starts_with(['-', '.'])
            };
        if !valid {
            return Err(RouterError::Invalid(format!(
                "upstream host {host:?}: a DNS name, an IPv4 address or a bracketed IPv6 address"
            )));
        }
        if port == 0 {
            return Err(RouterError::Invalid(format!("upstream {host}: port 0")));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host, without brackets for IPv6.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Address {
    type Err = RouterError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (host, port) = value.rsplit_once(':').ok_or_else(|| {
            RouterError::Invalid(format!("upstream {value:?}: expected host:port"))
        })?;
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(RouterError::Invalid(format!(
                "upstream {value:?}: write an IPv6 address as [address]:port"
            )));
        }
        let port = port.parse::<u16>().map_err(|_| {
            RouterError::Invalid(format!(
                "upstream {value:?}: port {port:?} is not a number 1–65535"
            ))
        })?;
        Self::new(host, port)
    }
}

impl TryFrom<String> for Address {
    type Error = RouterError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Address> for String {
    fn from(value: Address) -> Self {
        value.to_string()
    }
}

/// A backend's share of its set's traffic, 0–[`MAX_WEIGHT`]. Weight 0 keeps the backend
/// known to the router but sends it no new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Weight(u16);

impl Weight {
    /// The weight `value`, checked.
    pub fn new(value: u16) -> Result<Self, RouterError> {
        if value > MAX_WEIGHT {
            return Err(RouterError::Invalid(format!(
                "weight {value}: at most {MAX_WEIGHT}"
            )));
        }
        Ok(Self(value))
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for Weight {
    type Error = RouterError;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Weight> for u16 {
    fn from(value: Weight) -> Self {
        value.0
    }
}

/// One header or cookie test of an A/B rule: its name and the exact value that selects
/// the A/B set. Header names are `[A-Za-z0-9-]`, cookie names `[A-Za-z0-9_]` (nginx
/// reaches a cookie through the variable `$cookie_NAME`), values `[A-Za-z0-9._~-]`, so
/// each is safe inside every router's configuration language without quoting rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MatchValue {
    /// The header's or cookie's name.
    pub name: String,
    /// The value that selects the A/B set (compared exactly, case-sensitively).
    pub value: String,
}

/// An A/B rule: requests whose header `header.name` equals `header.value`, **or** whose
/// cookie `cookie.name` equals `cookie.value`, go to the backends carrying the rule; all
/// other requests go to the backends without one. At least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AbMatch {
    /// The header test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<MatchValue>,
    /// The cookie test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<MatchValue>,
}

impl AbMatch {
    /// Requests with header `name: value` match.
    pub fn header(name: &str, value: &str) -> Self {
        Self {
            header: Some(MatchValue {
                name: name.to_owned(),
                value: value.to_owned(),
            }),
            cookie: None,
        }
    }

    /// Requests carrying cookie `name=value` match.
    pub fn cookie(name: &str, value: &str) -> Self {
        Self {
            header: None,
            cookie: Some(MatchValue {
                name: name.to_owned(),
                value: value.to_owned(),
            }),
        }
    }

    /// Adds a cookie test to a header test (either matches).
    pub fn or_cookie(mut self, name: &str, value: &str) -> Self {
        self.cookie = Some(MatchValue {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    fn check(&self) -> Result<(), RouterError> {
        if self.header.is_none() && self.cookie.is_none() {
            return Err(RouterError::Invalid(
                "an A/B match needs a header or a cookie".to_owned(),
            ));
        }
        if let Some(header) = &self.header {
            if header.name.is_empty()
                || !header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(RouterError::Invalid(format!(
                    "A/B header name {:?}: letters, digits and '-'",
                    header.name
                )));
            }
            check_match_value(&header.value)?;
        }
        if let Some(cookie) = &self.cookie {
            if cookie.name.is_empty()
                || !cookie
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(RouterError::Invalid(format!(
                    "A/B cookie name {:?}: letters, digits and '_'",
                    cookie.name
                )));
            }
            check_match_value(&cookie.value)?;
        }
        Ok(())
    }
}

fn check_match_value(value: &str) -> Result<(), RouterError> {
    if value.is_empty()
        || value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
    {
        return Err(RouterError::Invalid(format!(
            "A/B match value {value:?}: 1–128 letters, digits and '.', '_', '~', '-'"
        )));
    }
    Ok(())
}

/// One upstream of a route (RFC 0005's `Backend`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Backend {
    /// Where it listens.
    pub address: Address,
    /// Its share of its set's traffic.
    pub weight: Weight,
    /// The deployment slot it belongs to (`stable`, `canary`, `green`, …), where the
    /// router can keep it: nginx keeps it in its file; HAProxy's runtime API has nowhere
    /// to keep it, so HAProxy's `current` returns `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// With a rule, the backend belongs to the route's A/B set, which receives exactly
    /// the requests the rule matches; without one, to the default set.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub r#match: Option<AbMatch>,
}

impl Backend {
    /// A backend of the default set.
    pub fn new(address: &str, weight: u16) -> Result<Self, RouterError> {
        Ok(Self {
            address: address.parse()?,
            weight: Weight::new(weight)?,
            slot: None,
            r#match: None,
        })
    }

    /// The same backend, in `slot`.
    pub fn in_slot(mut self, slot: &str) -> Self {
        self.slot = Some(slot.to_owned());
        self
    }

    /// The same backend, in the A/B set of `rule`.
    pub fn matching(mut self, rule: AbMatch) -> Self {
        self.r#match = Some(rule);
        self
    }
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The backends read back from the router after the change.
    pub live: Vec<Backend>,
    /// How the change reached the running router.
    pub method: ApplyMethod,
}

/// How a change reached the running router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMethod {
    /// A graceful reload of the configuration (nginx), confirmed by new worker processes.
    Reload,
    /// The router was not running: the file is in place and is read when it starts.
    NotRunning,
    /// Runtime commands, no reload (HAProxy).
    Runtime,
}

/// A route's backends split into the default set and the A/B set, checked: the form
/// every implementation renders from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split<'a> {
    pub default: Vec<&'a Backend>,
    pub ab: Option<(&'a AbMatch, Vec<&'a Backend>)>,
}

impl<'a> Split<'a> {
    /// Checks `backends`: at least one in the default set, one A/B rule at most (every
    /// backend with a rule carries the same one), no address twice in a set, slot names
    /// of letters, digits, `-` and `_`.
    pub fn new(backends: &'a [Backend]) -> Result<Self, RouterError> {
        let mut default: Vec<&Backend> = Vec::new();
        let mut ab: Option<(&AbMatch, Vec<&Backend>)> = None;
        for backend in backends {
            if let Some(slot) = &backend.slot {
                if slot.is_empty()
                    || slot.len() > 63
                    || !slot
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(RouterError::Invalid(format!(
                        "slot {slot:?}: 1–63 letters, digits, '-' and '_'"
                    )));
                }
            }
            let set = match &backend.r#match {
                None => &mut default,
                Some(rule) => {
                    rule.check()?;
                    match &mut ab {
                        None => &mut ab.insert((rule, Vec::new())).1,
                        Some((existing, set)) => {
                            if *existing != rule {
                                return Err(RouterError::Invalid(
                                    "a route has one A/B rule: every backend with a match must carry the same one".to_owned(),
                                ));
                            }
                            set
                        }
                    }
                }
            };
            if set.iter().any(|b| b.address == backend.address) {
                return Err(RouterError::Invalid(format!(
                    "upstream {} is listed twice in the same set",
                    backend.address
                )));
            }
            set.push(backend);
        }
        if default.is_empty() {
            return Err(RouterError::Invalid(
                "a route needs at least one backend without an A/B match (the default set)"
                    .to_owned(),
            ));
        }
        Ok(Self { default, ab })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_identifiers_without_double_hyphens() {
        for good in ["web", "web-2", "a", "api-v1-eu"] {
            assert!(RouteName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Web",
            "2web",
            "web-",
            "web--ab",
            "web_ab",
            "web.ab",
            &"a".repeat(64),
        ] {
            assert!(RouteName::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RouteName::new("api-v1").map(|n| n.identifier()).ok(),
            Some("api_v1".to_owned())
        );
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for text in ["127.0.0.1:8080", "web.internal:80", "[::1]:9000"] {
            let address: Address = text.parse().expect("valid address");
            assert_eq!(address.to_string(), text);
        }
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:70000",
            "::1:80",
            "a b:80",
            "x;y:80",
            ":80",
            "-a:80",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_stop_at_256() {
        assert!(Weight::new(256).is_ok());
        assert!(Weight::new(257).is_err());
        assert!(serde_json::from_str::<Weight>("300").is_err());
    }

    #[test]
    fn split_checks_the_sets() {
        let ab = AbMatch::header("X-Canary", "v2");
        let backends = vec![
            Backend::new("127.0.0.1:1", 90).expect("backend"),
            Backend::new("127.0.0.1:2", 10).expect("backend"),
            Backend::new("127.0.0.1:2", 1)
                .expect("backend")
                .matching(ab.clone()),
        ];
        let split = Split::new(&backends).expect("valid split");
        assert_eq!(split.default.len(), 2);
        assert_eq!(split.ab.as_ref().map(|(_, set)| set.len()), Some(1));

        let only_ab = vec![Backend::new("127.0.0.1:2", 1)
            .expect("backend")
            .matching(ab.clone())];
        assert!(Split::new(&only_ab).is_err());
        let twice = vec![
            Backend::new("127.0.0.1:1", 1).expect("backend"),
            Backend::new("127.0.0.1:1", 2).expect("backend"),
        ];
        assert!(Split::new(&twice).is_err());
        let two_rules = vec![
            Backend::new("127.0.0.1:1", 1).expect("backend"),
            Backend::new("127.0.0.1:2", 1)
                .expect("backend")
                .matching(ab),
            Backend::new("127.0.0.1:3", 1)
                .expect("backend")
                .matching(AbMatch::cookie("canary", "yes")),
        ];
        assert!(Split::new(&two_rules).is_err());
        let bad_value = vec![
            Backend::new("127.0.0.1:1", 1).expect("backend"),
            Backend::new("127.0.0.1:2", 1)
                .expect("backend")
                .matching(AbMatch::header("X-Canary", "a\"; b")),
        ];
        assert!(Split::new(&bad_value).is_err());
    }

    #[test]
    fn backends_round_trip_as_json_with_match_named_match() {
        let backend = Backend::new("127.0.0.1:8081", 10)
            .expect("backend")
            .in_slot("canary")
            .matching(AbMatch::header("X-Canary", "v2").or_cookie("canary", "v2"));
        let json = serde_json::to_value(&backend).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "address": "127.0.0.1:8081",
                "weight": 10,
                "slot": "canary",
                "match": {"header": {"name": "X-Canary", "value": "v2"}, "cookie": {"name": "canary", "value": "v2"}}
            })
        );
        let back: Backend = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, backend);
    }
}
