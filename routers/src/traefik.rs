//! Traefik: the file provider's dynamic configuration for a route — a generator only.
//!
//! **Untested against a real Traefik**: no Traefik binary is installed where the tests
//! run. The documents are checked against the shapes in Traefik's documentation
//! ("Routing & Load Balancing → HTTP → Services → Weighted Round Robin", "Routers →
//! Rule", "File provider"), copied into `tests/fixtures/traefik-*.yml`.
//!
//! For a route `web` the document holds:
//!
//! - `http.services.web`: `weighted.services[]` with one entry `{name, weight}` per
//!   backend of the default set whose weight is above 0;
//! - `http.services.web-N`: a `loadBalancer` with that backend's one server URL, for
//!   every backend (weight 0 included, so giving it weight again touches only the
//!   weighted list). Traefik's weighted round robin is between services, not servers,
//!   hence one service per backend; a weight of 0 is left out of the list rather than
//!   written, since Traefik's scheduler divides by the weight;
//! - `http.routers.web`: the operator's rule and entry points, to `web`;
//! - with an A/B rule, `http.routers.web-ab`: the same rule `&&` the header test (v3
//!   `Header`, v2 `Headers`) `||` the cookie test (a `HeaderRegexp` / `HeadersRegexp` on
//!   `Cookie`, Traefik having no cookie matcher), to the weighted service `web-ab` over
//!   the A/B set's `web-ab-N` services. Its rule is longer than the main router's, and
//!   Traefik's default priority is the rule's length, so it is tried first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::RouterError;
use crate::model::{AbMatch, Backend, RouteName, Split};

/// The kind name.
pub const KIND: &str = "traefik";

/// Which Traefik's rule syntax to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraefikVersion {
    /// Traefik v2: `Headers`, `HeadersRegexp`.
    V2,
    /// Traefik v3: `Header`, `HeaderRegexp`.
    V3,
}

/// What the generated routers match and where they listen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraefikSettings {
    /// The file the dynamic configuration is written to (the file provider's
    /// `filename`, or a file in its `directory`).
    pub dynamic_file: std::path::PathBuf,
    /// The rule of the route's router, e.g. ``Host(`shop.example.com`)``.
    pub rule: String,
    /// The entry points the routers listen on.
    pub entry_points: Vec<String>,
    /// The rule syntax.
    pub version: TraefikVersion,
    /// The scheme of the server URLs.
    #[serde(default = "default_scheme")]
    pub scheme: String,
}

fn default_scheme() -> String {
    "http".to_owned()
}

/// The dynamic configuration of `route` with `backends`, as a JSON value (the same tree
/// the YAML and TOML forms hold).
pub fn dynamic_config(
    route: &RouteName,
    backends: &[Backend],
    settings: &TraefikSettings,
) -> Result<Value, RouterError> {
    let split = Split::new(backends)?;
    if settings.rule.trim().is_empty() {
        return Err(RouterError::Invalid(
            "traefik: the router rule is empty".to_owned(),
        ));
    }
    if !matches!(settings.scheme.as_str(), "http" | "https" | "h2c") {
        return Err(RouterError::Invalid(format!(
            "traefik: scheme {:?}: http, https or h2c",
            settings.scheme
        )));
    }
    let mut services = BTreeMap::new();
    let mut routers = BTreeMap::new();
    weighted(
        &mut services,
        route.as_str(),
        &split.default,
        &settings.scheme,
    )?;
    routers.insert(
        route.to_string(),
        json!({
            "entryPoints": settings.entry_points,
            "rule": settings.rule,
            "service": route.as_str(),
        }),
    );
    if let Some((rule, set)) = &split.ab {
        let name = format!("{route}-ab");
        weighted(&mut services, &name, set, &settings.scheme)?;
        routers.insert(
            name.clone(),
            json!({
                "entryPoints": settings.entry_points,
                "rule": format!("({}) && ({})", settings.rule, ab_rule(rule, settings.version)),
                "service": name,
            }),
        );
    }
    Ok(json!({ "http": { "routers": routers, "services": services } }))
}

/// [`dynamic_config`] as the YAML the file provider reads.
pub fn dynamic_config_yaml(
    route: &RouteName,
    backends: &[Backend],
    settings: &TraefikSettings,
) -> Result<String, RouterError> {
    let value = dynamic_config(route, backends, settings)?;
    serde_norway::to_string(&value)
        .map_err(|e| RouterError::Invalid(format!("traefik: the document does not serialize: {e}")))
}

fn weighted(
    services: &mut BTreeMap<String, Value>,
    name: &str,
    set: &[&Backend],
    scheme: &str,
) -> Result<(), RouterError> {
    let mut entries = Vec::new();
    for (index, backend) in set.iter().enumerate() {
        let service = format!("{name}-{index}");
        services.insert(
            service.clone(),
            json!({ "loadBalancer": { "servers": [ { "url": format!("{scheme}://{}", backend.address) } ] } }),
        );
        if backend.weight.get() > 0 {
            entries.push(json!({ "name": service, "weight": backend.weight.get() }));
        }
    }
    if entries.is_empty() {
        return Err(RouterError::Invalid(format!(
            "traefik: every backend of `{name}` has weight 0; Traefik's weighted service needs one above 0"
        )));
    }
    services.insert(
        name.to_owned(),
        json!({ "weighted": { "services": entries } }),
    );
    Ok(())
}

/// The A/B test in Traefik's rule language. Names and values were checked by the model
/// (no backquote can occur); `.` in a cookie value is escaped for the regular expression.
fn ab_rule(rule: &AbMatch, version: TraefikVersion) -> String {
    let (header, header_regexp) = match version {
        TraefikVersion::V2 => ("Headers", "HeadersRegexp"),
        TraefikVersion::V3 => ("Header", "HeaderRegexp"),
    };
    let mut tests = Vec::new();
    if let Some(h) = &rule.header {
        tests.push(format!("{header}(`{}`, `{}`)", h.name, h.value));
    }
    if let Some(c) = &rule.cookie {
        tests.push(format!(
            "{header_regexp}(`Cookie`, `(^|;\\s*){}={}(;|$)`)",
            c.name,
            c.value.replace('.', "\\.")
        ));
    }
    tests.join(" || ")
}
