//! The `compose` target's settings (`stella target create … --set key=value`), parsed and
//! validated before anything is changed on the host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ComposeError;

/// The keys a `compose` target accepts; `service.COMPONENT` is accepted for any component.
pub const KNOWN_KEYS: &[&str] = &[
    "components",
    "compose_file",
    "project",
    "service.COMPONENT",
    "compose_version",
    "health_timeout_seconds",
    "health_url",
    "sticker_dir",
];

/// Default of `health_timeout_seconds`.
pub const DEFAULT_HEALTH_TIMEOUT_SECONDS: u64 = 60;
/// Default of `sticker_dir`.
pub const DEFAULT_STICKER_DIR: &str = "/var/lib/stella/stickers";

/// Which Compose generation runs the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeVersion {
    /// `docker compose` (v2 and later) when it answers, else `docker-compose` (v1).
    Auto,
    /// `docker-compose` 1.x (Python).
    V1,
    /// `docker compose`, the CLI plugin (v2 and later).
    V2,
}

/// The settings of one `compose` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeSettings {
    /// `components`: the release components this target runs; `None` is all of them.
    pub components: Option<Vec<String>>,
    /// `compose_file`: the operator's Compose file, an absolute path on the agent's host.
    pub compose_file: PathBuf,
    /// `project`: the Compose project name (default: the target name, lowercased).
    pub project: String,
    /// `service.<component>=<service>`: the Compose service of a component, when it is
    /// not named like the component.
    pub services: BTreeMap<String, String>,
    /// `compose_version`: `auto` (default), `v1` or `v2`.
    pub compose_version: ComposeVersion,
    /// `health_timeout_seconds`: how long the project may take to be running and healthy.
    pub health_timeout: Duration,
    /// `health_url`: an HTTP URL the agent GETs until it answers 2xx, besides the
    /// services' own health checks.
    pub health_url: Option<String>,
    /// `sticker_dir`: sticker files go to `<sticker_dir>/<target>/<component>.json`.
    pub sticker_dir: PathBuf,
}

impl ComposeSettings {
    /// Parses and validates the settings of target `target`; unknown keys are refused.
    pub fn parse(
        target: &str,
        settings: &BTreeMap<String, String>,
    ) -> Result<ComposeSettings, ComposeError> {
        let mut compose_file = None;
        let mut project = None;
        let mut parsed = ComposeSettings {
            components: None,
            compose_file: PathBuf::new(),
            project: String::new(),
            services: BTreeMap::new(),
            compose_version: ComposeVersion::Auto,
            health_timeout: Duration::from_secs(DEFAULT_HEALTH_TIMEOUT_SECONDS),
            health_url: None,
            sticker_dir: PathBuf::from(DEFAULT_STICKER_DIR),
        };
        for (key, value) in settings {
            let value = value.trim();
            match key.as_str() {
                "components" => {
                    parsed.components = Some(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    );
                }
                "compose_file" => {
                    let path = PathBuf::from(value);
                    if value.is_empty() || !path.is_absolute() {
                        return Err(invalid(format!(
                            "compose_file {value:?} must be an absolute path on the agent's host"
                        )));
                    }
                    compose_file = Some(path);
                }
                "project" => project = Some(value.to_owned()),
                "compose_version" => {
                    parsed.compose_version = match value {
                        "" | "auto" => ComposeVersion::Auto,
                        "v1" => ComposeVersion::V1,
                        "v2" => ComposeVersion::V2,
                        other => {
                            return Err(invalid(format!(
                                "compose_version {other:?}: use auto, v1 (docker-compose) or v2 (docker compose)"
                            )))
                        }
                    }
                }
                "health_timeout_seconds" => {
                    let seconds = value.parse::<u64>().map_err(|_| {
                        invalid(format!(
                            "health_timeout_seconds {value:?} is not a whole number of seconds"
                        ))
                    })?;
                    if !(1..=3600).contains(&seconds) {
                        return Err(invalid(format!(
                            "health_timeout_seconds must be 1 to 3600, not {seconds}"
                        )));
                    }
                    parsed.health_timeout = Duration::from_secs(seconds);
                }
                "health_url" => {
                    let is_http = value.starts_with("http://") || value.starts_with("https://");
                    if !value.is_empty() && !is_http {
                        return Err(invalid(format!(
                            "health_url {value:?} is not an http:// or https:// url"
                        )));
                    }
                    parsed.health_url = (!value.is_empty()).then(|| value.to_owned());
                }
                "sticker_dir" => {
                    let path = PathBuf::from(value);
                    if value.is_empty() || !path.is_absolute() {
                        return Err(invalid(format!(
                            "sticker_dir {value:?} must be an absolute path on the agent's host"
                        )));
                    }
                    parsed.sticker_dir = path;
                }
                other => match other.strip_prefix("service.") {
                    Some(component) if !component.is_empty() => {
                        if !is_service_name(value) {
                            return Err(invalid(format!(
                                "{other}: {value:?} is not a Compose service name"
                            )));
                        }
                        parsed
                            .services
                            .insert(component.to_owned(), value.to_owned());
                    }
                    _ => {
                        return Err(invalid(format!(
                            "unknown key {other:?} for kind compose (known: {})",
                            KNOWN_KEYS.join(", ")
                        )));
                    }
                },
            }
        }
        parsed.compose_file = compose_file.ok_or_else(|| {
            invalid(
                "compose_file is required: the absolute path of the Compose file on the agent's host"
                    .to_owned(),
            )
        })?;
        parsed.project = match project.filter(|p| !p.is_empty()) {
            Some(project) => check_project(&project, "project")?,
            None => check_project(
                &target.to_lowercase(),
                "the target name (the default project)",
            )?,
        };
        Ok(parsed)
    }

    /// The components of `release_components` this target runs, in release order; an
    /// error names a selected component the release does not have.
    pub fn select<'a>(&self, release_components: &[&'a str]) -> Result<Vec<&'a str>, ComposeError> {
        let Some(wanted) = &self.components else {
            return Ok(release_components.to_vec());
        };
        if let Some(missing) = wanted
            .iter()
            .find(|name| !release_components.contains(&name.as_str()))
        {
            return Err(invalid(format!(
                "components names {missing:?}, which the release does not have (it has: {})",
                release_components.join(", ")
            )));
        }
        Ok(release_components
            .iter()
            .copied()
            .filter(|name| wanted.iter().any(|w| w == name))
            .collect())
    }

    /// The Compose service of a component: `service.<component>` or the component's name.
    pub fn service_of<'a>(&'a self, component: &'a str) -> &'a str {
        self.services
            .get(component)
            .map_or(component, String::as_str)
    }
}

/// A project name both Compose generations keep as given: lowercase letters, digits,
/// `-` and `_`, starting with a letter or digit (v2's rule; v1 would silently drop
/// other characters, and two targets could then share a project).
fn check_project(name: &str, what: &str) -> Result<String, ComposeError> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if valid_chars && valid_start {
        Ok(name.to_owned())
    } else {
        Err(invalid(format!(
            "{what} {name:?} cannot be a Compose project name: use lowercase letters, digits, - and _, starting with a letter or digit (set project=…)"
        )))
    }
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn invalid(message: String) -> ComposeError {
    ComposeError::InvalidSettings(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ComposeSettings, ComposeError> {
        let settings = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ComposeSettings::parse("Shop-Web", &settings)
    }

    #[test]
    fn defaults_and_overrides() {
        let settings = parse(&[("compose_file", "/srv/shop/compose.yml")]).expect("parse");
        assert_eq!(settings.project, "shop-web");
        assert_eq!(settings.compose_version, ComposeVersion::Auto);
        assert_eq!(settings.health_timeout, Duration::from_secs(60));
        assert_eq!(settings.sticker_dir, PathBuf::from(DEFAULT_STICKER_DIR));
        assert_eq!(settings.service_of("web"), "web");

        let settings = parse(&[
            ("compose_file", "/srv/shop/compose.yml"),
            ("project", "shop_1"),
            ("service.api", "backend"),
            ("compose_version", "v1"),
            ("health_timeout_seconds", "5"),
            ("health_url", "http://127.0.0.1:8080/health"),
            ("sticker_dir", "/tmp/stickers"),
            ("components", "api, web"),
        ])
        .expect("parse");
        assert_eq!(settings.project, "shop_1");
        assert_eq!(settings.service_of("api"), "backend");
        assert_eq!(settings.compose_version, ComposeVersion::V1);
        assert_eq!(settings.health_timeout, Duration::from_secs(5));
        assert_eq!(
            settings.select(&["web", "db", "api"]).expect("select"),
            ["web", "api"]
        );
        assert!(settings.select(&["web"]).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (pairs, expected) in [
            (vec![], "compose_file is required"),
            (vec![("compose_file", "compose.yml")], "absolute path"),
            (
                vec![("compose_file", "/c.yml"), ("project", "Shop")],
                "cannot be a Compose project name",
            ),
            (
                vec![("compose_file", "/c.yml"), ("project", "-x")],
                "cannot be a Compose project name",
            ),
            (
                vec![("compose_file", "/c.yml"), ("compose_version", "v3")],
                "compose_version",
            ),
            (
                vec![("compose_file", "/c.yml"), ("health_timeout_seconds", "0")],
                "1 to 3600",
            ),
            (
                vec![("compose_file", "/c.yml"), ("sticker_dir", "rel")],
                "sticker_dir",
            ),
            (
                vec![("compose_file", "/c.yml"), ("service.web", "a b")],
                "service.web",
            ),
            (
                vec![("compose_file", "/c.yml"), ("ports", "80")],
                "unknown key",
            ),
        ] {
            let error = parse(&pairs).expect_err("refused").to_string();
            assert!(error.contains(expected), "{pairs:?}: {error}");
        }
        let error = ComposeSettings::parse(
            "web.1",
            &BTreeMap::from([("compose_file".to_owned(), "/c.yml".to_owned())]),
        )
        .expect_err("a dot")
        .to_string();
        assert!(error.contains("the target name"), "{error}");
    }
}
