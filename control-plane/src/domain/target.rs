//! Targets: the kinds, their settings, and the places an environment deploys to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Component, Invalid, Release};

/// The kinds of deployment target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A Docker engine.
    Docker,
    /// A Docker Compose project.
    Compose,
    /// A host over SSH.
    Ssh,
    /// A Windows host over WinRM.
    Winrm,
    /// An AWS ECS service.
    Ecs,
    /// A HashiCorp Nomad job.
    Nomad,
}

/// Settings every kind accepts.
const COMMON_KEYS: &[&str] = &["components"];
/// Settings of Docker containers (also used by `ssh` in `docker` mode).
const DOCKER_KEYS: &[&str] = &[
    "container_name",
    "ports",
    "volumes",
    "command",
    "restart",
    "network",
    "health_cmd",
    "health_url",
    "health_timeout_seconds",
    "stop_timeout_seconds",
];

impl TargetKind {
    /// All kinds, in documentation order.
    pub const ALL: [TargetKind; 6] = [
        TargetKind::Docker,
        TargetKind::Compose,
        TargetKind::Ssh,
        TargetKind::Winrm,
        TargetKind::Ecs,
        TargetKind::Nomad,
    ];

    /// The kind's name, as agents advertise it.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Docker => "docker",
            TargetKind::Compose => "compose",
            TargetKind::Ssh => "ssh",
            TargetKind::Winrm => "winrm",
            TargetKind::Ecs => "ecs",
            TargetKind::Nomad => "nomad",
        }
    }

    fn own_keys(self) -> &'static [&'static str] {
        match self {
            TargetKind::Docker => DOCKER_KEYS,
            TargetKind::Compose => &["compose_file", "project"],
            TargetKind::Ssh => &[
                "host",
                "port",
                "user",
                "key_file",
                "key_secret",
                "host_key",
                "mode",
                "script",
                "sticker_dir",
                "connect_timeout_seconds",
                "command_timeout_seconds",
            ],
            TargetKind::Winrm => &[
                "host",
                "port",
                "https",
                "user",
                "password_secret",
                "auth",
                "script",
            ],
            TargetKind::Ecs => &[
                "region",
                "cluster",
                "service",
                "endpoint_url",
                "credentials_secret",
            ],
            TargetKind::Nomad => &["address", "job_file", "namespace", "region", "token_secret"],
        }
    }

    /// Refuses unknown keys and values the kind cannot use.
    pub fn validate_settings(self, settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
        for (key, value) in settings {
            super::references(value)
                .map_err(|Invalid(e)| Invalid(format!("setting {key}: {e}")))?;
            let known = COMMON_KEYS.contains(&key.as_str())
                || self.own_keys().contains(&key.as_str())
                || (matches!(self, TargetKind::Docker | TargetKind::Ssh)
                    && key.starts_with("env.")
                    && key.len() > 4)
                || (self == TargetKind::Ssh && DOCKER_KEYS.contains(&key.as_str()));
            if !known {
                return Err(Invalid(format!(
                    "unknown setting `{key}` for a {} target",
                    self.as_str()
                )));
            }
            match key.as_str() {
                "ports" => validate_ports(value)?,
                "health_timeout_seconds" | "stop_timeout_seconds" => {
                    let seconds: u64 = value.parse().map_err(|_| {
                        Invalid(format!("{key} `{value}` is not a whole number of seconds"))
                    })?;
                    if seconds == 0 || seconds > 3600 {
                        return Err(Invalid(format!("{key} must be 1 to 3600, not {seconds}")));
                    }
                }
                "container_name" => validate_container_name(value)?,
                "restart"
                    if !matches!(
                        value.as_str(),
                        "no" | "always" | "unless-stopped" | "on-failure"
                    ) =>
                {
                    return Err(Invalid(format!(
                        "restart `{value}`: use no, always, unless-stopped or on-failure"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The components a target deploys: `components` (comma-separated) or all.
    pub fn selected_components<'a>(
        settings: &BTreeMap<String, String>,
        release: &'a Release,
    ) -> Vec<&'a Component> {
        match settings.get("components") {
            Some(list) => {
                let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
                release
                    .components
                    .iter()
                    .filter(|c| wanted.contains(&c.name.as_str()))
                    .collect()
            }
            None => release.components.iter().collect(),
        }
    }
}

/// A Docker container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters (no
/// path separators, so it is also safe in file names derived from it).
fn validate_container_name(value: &str) -> Result<(), Invalid> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok
        && value.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(Invalid(format!(
            "container_name `{value}`: use letters, digits, '_', '.' and '-', starting with a letter or digit, at most 128"
        )))
    }
}

/// `8080:80,127.0.0.1:9090:90/udp`.
fn validate_ports(value: &str) -> Result<(), Invalid> {
    for mapping in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (ports, proto) = mapping.split_once('/').unwrap_or((mapping, "tcp"));
        if !matches!(proto, "tcp" | "udp") {
            return Err(Invalid(format!(
                "port mapping `{mapping}`: protocol must be tcp or udp"
            )));
        }
        let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
        let numbers_ok = match parts.as_slice() {
            [container] => container.parse::<u16>().is_ok(),
            [container, host] | [container, host, _] => {
                container.parse::<u16>().is_ok() && (host.is_empty() || host.parse::<u16>().is_ok())
            }
            _ => false,
        };
        if !numbers_ok {
            return Err(Invalid(format!(
                "port mapping `{mapping}`: use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"
            )));
        }
    }
    Ok(())
}

impl FromStr for TargetKind {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        TargetKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                Invalid(format!(
                    "unknown target kind `{s}`: use docker, compose, ssh, winrm, ecs or nomad"
                ))
            })
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A place an environment deploys to, driven by one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Unique name.
    pub name: String,
    /// Its environment.
    pub environment: String,
    /// Its kind.
    pub kind: TargetKind,
    /// The agent that drives it.
    pub agent_id: String,
    /// Kind-specific settings.
    pub settings: BTreeMap<String, String>,
    /// Creation time.
    pub created_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_per_kind() {
        let mut settings = BTreeMap::new();
        settings.insert(
            "ports".to_owned(),
            "8080:80,127.0.0.1:9090:90/udp".to_owned(),
        );
        settings.insert("env.MODE".to_owned(), "prod".to_owned());
        assert!(TargetKind::Docker.validate_settings(&settings).is_ok());
        assert!(TargetKind::Compose.validate_settings(&settings).is_err());
        settings.insert("colour".to_owned(), "blue".to_owned());
        assert!(TargetKind::Docker.validate_settings(&settings).is_err());
        let bad_ports = BTreeMap::from([("ports".to_owned(), "80:http".to_owned())]);
        assert!(TargetKind::Docker.validate_settings(&bad_ports).is_err());
        assert!("kubernetes".parse::<TargetKind>().is_err());
    }

    #[test]
    fn setting_errors_name_the_setting() {
        let check = |key: &str, value: &str| {
            TargetKind::Docker
                .validate_settings(&BTreeMap::from([(key.to_owned(), value.to_owned())]))
                .map_err(|e| e.0)
        };
        let error = check("stop_timeout_seconds", "0").expect_err("zero");
        assert!(error.contains("stop_timeout_seconds"), "{error}");
        let error = check("stop_timeout_seconds", "soon").expect_err("not a number");
        assert!(error.starts_with("stop_timeout_seconds"), "{error}");
        for bad in ["../../x", "a/b", "-x", ".x", "", "x y"] {
            assert!(check("container_name", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check("container_name", "web-1.blue_2").is_ok());
        let error = check("env.X", "${nope}").expect_err("bad reference");
        assert!(error.contains("env.X"), "{error}");
        assert!(check("env.X", "${secret.db_password}").is_ok());
    }
}
