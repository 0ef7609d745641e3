//! The `docker` target's settings (`stella target create … --set key=value`), parsed and
//! validated before anything is changed on the engine.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::DockerError;

/// The keys a `docker` target accepts; `env.NAME` is accepted for any `NAME`.
pub const KNOWN_KEYS: &[&str] = &[
    "components",
    "container_name",
    "ports",
    "env.NAME",
    "volumes",
    "command",
    "restart",
    "network",
    "health_cmd",
    "health_url",
    "health_timeout_seconds",
    "stop_timeout_seconds",
];

/// Default of `health_timeout_seconds`.
pub const DEFAULT_HEALTH_TIMEOUT_SECONDS: u64 = 60;
/// Default of `stop_timeout_seconds` (Docker's own default).
pub const DEFAULT_STOP_TIMEOUT_SECONDS: u64 = 10;

/// The settings of one `docker` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// `components`: the release components this target runs; `None` is all of them.
    pub components: Option<Vec<String>>,
    /// `container_name`: overrides `<target>-<component>`; only with one component.
    pub container_name: Option<String>,
    /// `ports`: `[host_ip:][host_port:]container_port[/protocol]`, comma separated.
    pub ports: Vec<PortSpec>,
    /// `env.NAME=value`: the container's environment, sorted by name.
    pub env: BTreeMap<String, String>,
    /// `volumes`: `src:dst[:ro|:rw]`, comma separated, passed to Docker as binds.
    pub volumes: Vec<String>,
    /// `command`: the container command, split on whitespace (no quoting).
    pub command: Option<Vec<String>>,
    /// `restart`: `no`, `always`, `unless-stopped` (default) or `on-failure[:N]`.
    pub restart: RestartSetting,
    /// `network`: the network the container joins (default: Docker's `bridge`).
    pub network: Option<String>,
    /// `health_cmd`: a Docker `HEALTHCHECK CMD-SHELL` run every second.
    pub health_cmd: Option<String>,
    /// `health_url`: an HTTP URL the agent GETs until it answers 2xx; `{ip}` is replaced
    /// by the new container's address on its network.
    pub health_url: Option<String>,
    /// `health_timeout_seconds`: how long a new container may take to become healthy —
    /// also its health check's start period, so Docker counts no failed check before
    /// Stella's wait ends. Not part of `config_digest`: changing it replaces nothing.
    pub health_timeout: Duration,
    /// `stop_timeout_seconds`: how long `docker stop` waits before it kills (extension).
    pub stop_timeout_seconds: u64,
    /// Digest of the settings that shape the container (not the health wait or the
    /// component selection); a container made under other settings is replaced.
    pub config_digest: String,
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Host address to bind, if not all addresses.
    pub host_ip: Option<String>,
    /// Host port; `None` lets Docker pick a free one.
    pub host_port: Option<u16>,
    /// Port inside the container.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

impl PortSpec {
    /// The `port/protocol` key Docker uses in `ExposedPorts` and `PortBindings`.
    pub fn container_key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol)
    }
}

/// The restart policy of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartSetting {
    /// `no`.
    No,
    /// `always`.
    Always,
    /// `unless-stopped`.
    UnlessStopped,
    /// `on-failure[:N]`.
    OnFailure(Option<i64>),
}

/// How an existing container is replaced (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStrategy {
    /// The new container starts and becomes healthy beside the old one, then the old one
    /// is removed: no downtime.
    StartFirst,
    /// A fixed host port is published, so both cannot run at once: the old container is
    /// stopped (and kept) first, and started again if the new one fails.
    StopFirst,
}

impl DockerSettings {
    /// Parses and validates a target's settings; unknown keys are refused.
    pub fn parse(settings: &BTreeMap<String, String>) -> Result<DockerSettings, DockerError> {
        Self::parse_values(settings, settings)
    }

    /// Parses the values to apply (`values`: secret references resolved), with the
    /// config digest taken over `references` (the settings as stored, secrets as
    /// `${secret.NAME}`), so the digest on the container equals the one a drift check
    /// computes from the desired state, which holds no secret values.
    pub fn parse_values(
        values: &BTreeMap<String, String>,
        references: &BTreeMap<String, String>,
    ) -> Result<DockerSettings, DockerError> {
        let settings = values;
        let mut parsed = DockerSettings {
            components: None,
            container_name: None,
            ports: Vec::new(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            command: None,
            restart: RestartSetting::UnlessStopped,
            network: None,
            health_cmd: None,
            health_url: None,
            health_timeout: Duration::from_secs(DEFAULT_HEALTH_TIMEOUT_SECONDS),
            stop_timeout_seconds: DEFAULT_STOP_TIMEOUT_SECONDS,
            config_digest: String::new(),
        };
        for (key, value) in settings {
            let value = value.trim();
            match key.as_str() {
                "components" => parsed.components = Some(parse_list(value)),
                "container_name" => {
                    if !is_container_name(value) {
                        return Err(invalid(format!(
                            "container_name {value:?} is not a valid container name"
                        )));
                    }
                    parsed.container_name = Some(value.to_owned());
                }
                "ports" => {
                    parsed.ports = parse_list(value)
                        .iter()
                        .map(|port| parse_port(port))
                        .collect::<Result<_, _>>()?;
                }
                "volumes" => {
                    parsed.volumes = parse_list(value)
                        .into_iter()
                        .map(parse_volume)
                        .collect::<Result<_, _>>()?;
                }
                "command" => {
                    let words: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
                    parsed.command = (!words.is_empty()).then_some(words);
                }
                "restart" => parsed.restart = parse_restart(value)?,
                "network" => parsed.network = non_empty(value),
                "health_cmd" => parsed.health_cmd = non_empty(value),
                "health_url" => {
                    let is_http = value.starts_with("http://") || value.starts_with("https://");
                    if !value.is_empty() && !is_http {
                        return Err(invalid(format!(
                            "health_url {value:?} is not an http:// or https:// url"
                        )));
                    }
                    parsed.health_url = non_empty(value);
                }
                "health_timeout_seconds" => {
                    let seconds = parse_seconds(key, value)?;
                    parsed.health_timeout = Duration::from_secs(seconds);
                }
                "stop_timeout_seconds" => parsed.stop_timeout_seconds = parse_seconds(key, value)?,
                other => match other.strip_prefix("env.") {
                    Some(name) if is_env_name(name) => {
                        parsed.env.insert(name.to_owned(), value.to_owned());
                    }
                    Some(name) => {
                        return Err(invalid(format!("env.{name}: invalid variable name")));
                    }
                    None => {
                        return Err(invalid(format!(
                            "unknown key {other:?} for kind docker (known: {})",
                            KNOWN_KEYS.join(", ")
                        )));
                    }
                },
            }
        }
        parsed.config_digest = config_digest(references);
        Ok(parsed)
    }

    /// The components of `release_components` this target runs, in release order; an
    /// error names a selected component the release does not have.
    pub fn select<'a>(&self, release_components: &[&'a str]) -> Result<Vec<&'a str>, DockerError> {
        let selected: Vec<&'a str> = match &self.components {
            None => release_components.to_vec(),
            Some(wanted) => {
                if let Some(missing) = wanted
                    .iter()
                    .find(|name| !release_components.contains(&name.as_str()))
                {
                    return Err(invalid(format!(
                        "components names {missing:?}, which the release does not have (it has: {})",
                        release_components.join(", ")
                    )));
                }
                release_components
                    .iter()
                    .copied()
                    .filter(|name| wanted.iter().any(|w| w == name))
                    .collect()
            }
        };
        if self.container_name.is_some() && selected.len() > 1 {
            return Err(invalid(format!(
                "container_name is set but the target runs {} components ({}); it needs exactly one",
                selected.len(),
                selected.join(", ")
            )));
        }
        Ok(selected)
    }

    /// The container name of a component: `container_name` or `<target>-<component>`.
    pub fn container_name(&self, target: &str, component: &str) -> String {
        self.container_name
            .clone()
            .unwrap_or_else(|| format!("{target}-{component}"))
    }

    /// Start-first unless a fixed host port is published.
    pub fn strategy(&self) -> UpdateStrategy {
        if self.ports.iter().any(|port| port.host_port.is_some()) {
            UpdateStrategy::StopFirst
        } else {
            UpdateStrategy::StartFirst
        }
    }
}

/// Keys that shape the container itself; the others only steer the deployment.
const CONTAINER_KEYS: &[&str] = &[
    "container_name",
    "ports",
    "volumes",
    "command",
    "restart",
    "network",
    "health_cmd",
    "stop_timeout_seconds",
];

fn config_digest(settings: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in settings {
        if CONTAINER_KEYS.contains(&key.as_str()) || key.starts_with("env.") {
            // Length-prefixed so that no two different maps hash the same bytes.
            for part in [key.as_str(), value.trim()] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part.as_bytes());
            }
        }
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn invalid(message: String) -> DockerError {
    DockerError::InvalidSettings(message)
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_seconds(key: &str, value: &str) -> Result<u64, DockerError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|seconds| *seconds > 0)
        .ok_or_else(|| {
            invalid(format!(
                "{key} {value:?} is not a positive number of seconds"
            ))
        })
}

fn parse_port(spec: &str) -> Result<PortSpec, DockerError> {
    let bad = |reason: &str| invalid(format!("port {spec:?}: {reason}"));
    let (address, protocol) = match spec.split_once('/') {
        Some((address, protocol)) => (address, protocol.to_ascii_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("the protocol must be tcp, udp or sctp"));
    }
    // From the right: container port, host port, host address (which may itself hold
    // colons when it is a bracketed IPv6 address).
    let mut parts = address.rsplitn(3, ':');
    let container = parts.next().unwrap_or_default();
    let host = parts.next();
    let ip = parts.next();
    let container_port = parse_port_number(container).ok_or_else(|| bad("bad container port"))?;
    let host_port = match host {
        None | Some("") => None,
        Some(port) => Some(parse_port_number(port).ok_or_else(|| bad("bad host port"))?),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(bad("the host address is not an ip address"));
            }
            Some(ip.to_owned())
        }
    };
    Ok(PortSpec {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

fn parse_port_number(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|port| *port > 0)
}

fn parse_volume(spec: String) -> Result<String, DockerError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let valid = match parts.as_slice() {
        [source, destination] => !source.is_empty() && destination.starts_with('/'),
        [source, destination, mode] => {
            !source.is_empty()
                && destination.starts_with('/')
                && matches!(
                    *mode,
                    "ro" | "rw" | "z" | "Z" | "ro,z" | "ro,Z" | "rw,z" | "rw,Z"
                )
        }
        _ => false,
    };
    if valid {
        Ok(spec)
    } else {
        Err(invalid(format!(
            "volume {spec:?} is not src:/dst or src:/dst:ro"
        )))
    }
}

fn parse_restart(value: &str) -> Result<RestartSetting, DockerError> {
    match value {
        "" | "unless-stopped" => Ok(RestartSetting::UnlessStopped),
        "no" => Ok(RestartSetting::No),
        "always" => Ok(RestartSetting::Always),
        "on-failure" => Ok(RestartSetting::OnFailure(None)),
        other => other
            .strip_prefix("on-failure:")
            .and_then(|count| count.parse::<i64>().ok())
            .filter(|count| *count >= 0)
            .map(|count| RestartSetting::OnFailure(Some(count)))
            .ok_or_else(|| {
                invalid(format!(
                    "restart {value:?} is not no, always, unless-stopped or on-failure[:N]"
                ))
            }),
    }
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub(crate) fn is_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.chars().any(char::is_whitespace)
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
    fn defaults() {
        let parsed = DockerSettings::parse(&BTreeMap::new()).expect("parse");
        assert_eq!(parsed.restart, RestartSetting::UnlessStopped);
        assert_eq!(parsed.health_timeout, Duration::from_secs(60));
        assert_eq!(parsed.strategy(), UpdateStrategy::StartFirst);
        assert_eq!(parsed.container_name("app", "web"), "app-web");
        assert_eq!(
            parsed.select(&["web", "api"]).expect("select"),
            vec!["web", "api"]
        );
    }

    #[test]
    fn ports() {
        let parsed = DockerSettings::parse(&settings(&[(
            "ports",
            "8080:80, 127.0.0.1:9090:90/udp,443,[::1]:8443:443,127.0.0.1::53/udp",
        )]))
        .expect("parse");
        assert_eq!(
            parsed.ports,
            vec![
                PortSpec {
                    host_ip: None,
                    host_port: Some(8080),
                    container_port: 80,
                    protocol: "tcp".into()
                },
                PortSpec {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(9090),
                    container_port: 90,
                    protocol: "udp".into()
                },
                PortSpec {
                    host_ip: None,
                    host_port: None,
                    container_port: 443,
                    protocol: "tcp".into()
                },
                PortSpec {
                    host_ip: Some("::1".into()),
                    host_port: Some(8443),
                    container_port: 443,
                    protocol: "tcp".into()
                },
                PortSpec {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: None,
                    container_port: 53,
                    protocol: "udp".into()
                },
            ]
        );
        assert_eq!(parsed.strategy(), UpdateStrategy::StopFirst);
        let ephemeral = DockerSettings::parse(&settings(&[("ports", "80")])).expect("parse");
        assert_eq!(ephemeral.strategy(), UpdateStrategy::StartFirst);
        for bad in ["x:80", "80:0", "8080:80/icmp", "host:8080:80", "70000"] {
            assert!(
                DockerSettings::parse(&settings(&[("ports", bad)])).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn env_volumes_command_restart() {
        let parsed = DockerSettings::parse(&settings(&[
            ("env.GREETING", "hello world"),
            ("env.EMPTY", ""),
            ("volumes", "/srv/data:/data,cache:/cache:ro"),
            ("command", "  httpd -f   -p 8080 "),
            ("restart", "on-failure:3"),
            ("network", "backend"),
        ]))
        .expect("parse");
        assert_eq!(parsed.env["GREETING"], "hello world");
        assert_eq!(parsed.env["EMPTY"], "");
        assert_eq!(parsed.volumes, vec!["/srv/data:/data", "cache:/cache:ro"]);
        assert_eq!(
            parsed.command,
            Some(vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "8080".into()
            ])
        );
        assert_eq!(parsed.restart, RestartSetting::OnFailure(Some(3)));
        assert_eq!(parsed.network.as_deref(), Some("backend"));
        for (key, value) in [
            ("volumes", "/data"),
            ("volumes", "a:relative"),
            ("restart", "sometimes"),
            ("health_timeout_seconds", "0"),
            ("health_url", "ftp://x"),
            ("container_name", "-bad"),
            ("colour", "blue"),
        ] {
            let error = DockerSettings::parse(&settings(&[(key, value)]))
                .expect_err("should be refused")
                .to_string();
            assert!(error.contains(key) || error.contains(value), "{error}");
        }
    }

    #[test]
    fn selection_and_container_name() {
        let parsed = DockerSettings::parse(&settings(&[("components", "api")])).expect("parse");
        assert_eq!(parsed.select(&["web", "api"]).expect("select"), vec!["api"]);
        let missing = DockerSettings::parse(&settings(&[("components", "db")])).expect("parse");
        assert!(missing.select(&["web"]).is_err());
        let named = DockerSettings::parse(&settings(&[("container_name", "shop")])).expect("parse");
        assert!(named.select(&["web", "api"]).is_err());
        assert_eq!(named.select(&["web"]).expect("select"), vec!["web"]);
        assert_eq!(named.container_name("app", "web"), "shop");
    }

    #[test]
    fn config_digest_covers_container_keys_only() {
        let base = DockerSettings::parse(&settings(&[("ports", "80")])).expect("parse");
        let health = DockerSettings::parse(&settings(&[
            ("ports", "80"),
            ("health_timeout_seconds", "5"),
            ("components", "web"),
        ]))
        .expect("parse");
        assert_eq!(base.config_digest, health.config_digest);
        let env =
            DockerSettings::parse(&settings(&[("ports", "80"), ("env.A", "1")])).expect("parse");
        assert_ne!(base.config_digest, env.config_digest);
    }
}
