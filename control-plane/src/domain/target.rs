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

/// Settings of Compose targets (besides `service.<component>`).
const COMPOSE_KEYS: &[&str] = &[
    "compose_file",
    "project",
    "compose_version",
    "health_url",
    "health_timeout_seconds",
    "sticker_dir",
];
/// Settings of SSH targets (besides the Docker keys and `env.NAME`, used in docker mode).
const SSH_KEYS: &[&str] = &[
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
];

/// Settings of Nomad targets (besides `task.<component>`).
const NOMAD_KEYS: &[&str] = &[
    "address",
    "job",
    "job_file",
    "namespace",
    "region",
    "token_secret",
    "ca_file",
    "deploy_timeout_seconds",
];

/// Settings of WinRM targets (the `winrm` kind's `WINRM_KEYS` without `components`).
const WINRM_KEYS: &[&str] = &[
    "endpoint",
    "user",
    "password_secret",
    "auth",
    "ca_file",
    "script",
    "sticker_dir",
    "operation_timeout_seconds",
    "command_timeout_seconds",
];

/// Settings of ECS targets (besides `container.<component>`); the agent's crate
/// (`stella-target-ecs`) exports the same list.
const ECS_KEYS: &[&str] = &[
    "region",
    "cluster",
    "service",
    "endpoint_url",
    "access_key_secret",
    "secret_key_secret",
    "session_token_secret",
    "deploy_timeout_seconds",
    "poll_interval_ms",
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
            TargetKind::Compose => COMPOSE_KEYS,
            TargetKind::Ssh => SSH_KEYS,
            TargetKind::Winrm => WINRM_KEYS,
            TargetKind::Ecs => ECS_KEYS,
            TargetKind::Nomad => NOMAD_KEYS,
        }
    }

    /// Refuses unknown keys, values the kind cannot use, and a set of settings the kind
    /// cannot work with (a required key missing, keys that exclude each other).
    pub fn validate_settings(self, settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
        for (key, value) in settings {
            super::references(value)
                .map_err(|Invalid(e)| Invalid(format!("setting {key}: {e}")))?;
            let known = COMMON_KEYS.contains(&key.as_str())
                || self.own_keys().contains(&key.as_str())
                || (matches!(self, TargetKind::Docker | TargetKind::Ssh)
                    && key.starts_with("env.")
                    && key.len() > 4)
                || (self == TargetKind::Ssh && DOCKER_KEYS.contains(&key.as_str()))
                || (self == TargetKind::Compose && key.starts_with("service.") && key.len() > 8)
                || (self == TargetKind::Ecs && key.starts_with("container.") && key.len() > 10)
                || (self == TargetKind::Nomad && key.starts_with("task.") && key.len() > 5);
            if !known {
                return Err(Invalid(format!(
                    "unknown setting `{key}` for a {} target",
                    self.as_str()
                )));
            }
            if self == TargetKind::Winrm {
                validate_winrm_value(key, value)?;
            } else {
                validate_value(key, value)?;
            }
        }
        match self {
            TargetKind::Compose => validate_compose(settings),
            TargetKind::Ssh => validate_ssh(settings),
            TargetKind::Winrm => validate_winrm(settings),
            TargetKind::Ecs => validate_ecs(settings),
            TargetKind::Nomad => validate_nomad(settings),
            _ => Ok(()),
        }
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

/// Checks one value by its key (the same key means the same thing in every kind).
fn validate_value(key: &str, value: &str) -> Result<(), Invalid> {
    let seconds = |max: u64| -> Result<(), Invalid> {
        let seconds: u64 = value
            .parse()
            .map_err(|_| Invalid(format!("{key} `{value}` is not a whole number of seconds")))?;
        if seconds == 0 || seconds > max {
            return Err(Invalid(format!("{key} must be 1 to {max}, not {seconds}")));
        }
        Ok(())
    };
    match key {
        "ports" => validate_ports(value),
        "health_timeout_seconds" | "stop_timeout_seconds" | "command_timeout_seconds" => {
            seconds(3600)
        }
        "deploy_timeout_seconds" => seconds(86_400),
        "connect_timeout_seconds" => seconds(300),
        "container_name" => validate_container_name(value),
        "restart" if !matches!(value, "no" | "always" | "unless-stopped" | "on-failure") => {
            Err(Invalid(format!(
                "restart `{value}`: use no, always, unless-stopped or on-failure"
            )))
        }
        "compose_file" | "sticker_dir" | "key_file" | "job_file" | "ca_file"
            if !value.starts_with('/') =>
        {
            Err(Invalid(format!(
                "{key} `{value}` must be an absolute path on the agent's host"
            )))
        }
        "project" => validate_project(value),
        "compose_version" if !matches!(value, "auto" | "v1" | "v2") => Err(Invalid(format!(
            "compose_version `{value}`: use auto, v1 or v2"
        ))),
        "mode" if !matches!(value, "docker" | "script") => {
            Err(Invalid(format!("mode `{value}`: use docker or script")))
        }
        "port" => match value.parse::<u16>() {
            Ok(port) if port > 0 => Ok(()),
            _ => Err(Invalid(format!(
                "port `{value}` is not a TCP port (1-65535)"
            ))),
        },
        "host" | "user"
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '@') =>
        {
            Err(Invalid(format!(
                "{key} `{value}` must be non-empty, without spaces or '@'"
            )))
        }
        "host_key" => validate_host_key(value),
        "key_secret"
        | "token_secret"
        | "access_key_secret"
        | "secret_key_secret"
        | "session_token_secret" => validate_secret_reference(key, value),
        "poll_interval_ms" => match value.parse::<u64>() {
            Ok(ms) if (50..=60_000).contains(&ms) => Ok(()),
            _ => Err(Invalid(format!(
                "poll_interval_ms `{value}` must be a whole number from 50 to 60000"
            ))),
        },
        "region"
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
        {
            Err(Invalid(format!(
                "region `{value}`: lowercase letters, digits and '-' (e.g. eu-central-1)"
            )))
        }
        "endpoint_url" if !(value.starts_with("https://") || value.starts_with("http://")) => {
            Err(Invalid(format!(
                "endpoint_url `{value}` must be an http:// or https:// URL"
            )))
        }
        _ if key.starts_with("container.") && value.trim().is_empty() => Err(Invalid(format!(
            "{key}: name the task definition's container that runs the component"
        ))),
        _ if key.starts_with("service.") => validate_service_name(key, value),
        _ => Ok(()),
    }
}

/// A Compose project name as Compose accepts it: lowercase letters, digits, `_` and
/// `-`, starting with a letter or digit.
fn validate_project(value: &str) -> Result<(), Invalid> {
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if first_ok
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(Invalid(format!(
            "project `{value}`: use lowercase letters, digits, '_' and '-', starting with a letter or digit"
        )))
    }
}

/// `service.<component>=<service>`: a Compose service name.
fn validate_service_name(key: &str, value: &str) -> Result<(), Invalid> {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{key} `{value}`: a Compose service name (letters, digits, '_', '.', '-')"
        )))
    }
}

/// An SSH host key fingerprint as OpenSSH prints it: `SHA256:` and the unpadded base64
/// of the 32-byte hash (43 characters).
fn validate_host_key(value: &str) -> Result<(), Invalid> {
    use base64::Engine as _;
    let decoded = value.strip_prefix("SHA256:").and_then(|b64| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .ok()
    });
    match decoded {
        Some(hash) if hash.len() == 32 => Ok(()),
        _ => Err(Invalid(format!(
            "host_key `{value}`: use the SHA256 fingerprint as OpenSSH prints it \
             (`ssh-keyscan HOST | ssh-keygen -lf -`), e.g. SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"
        ))),
    }
}

/// A setting that must hold a secret, so it is never stored in plain text: its value is
/// exactly one `${secret.NAME}` reference.
fn validate_secret_reference(key: &str, value: &str) -> Result<(), Invalid> {
    let only_reference = matches!(
        super::references(value)?.as_slice(),
        [reference] if reference.kind == super::VariableKind::Secret
            && value == format!("${{secret.{}}}", reference.name)
    );
    if only_reference {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{key} must be a reference to an environment secret, `${{secret.NAME}}` \
             (stella env secret set ENV NAME): a key, token or password is never stored in a target's settings"
        )))
    }
}

/// What a Compose target needs: the file.
fn validate_compose(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if !settings.contains_key("compose_file") {
        return Err(Invalid(
            "a compose target needs compose_file, the absolute path of the Compose file on the agent's host"
                .to_owned(),
        ));
    }
    Ok(())
}

/// What an SSH target needs: where, who, which host key, one user key; in script mode a
/// script and none of the container keys.
fn validate_ssh(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let missing: Vec<&str> = ["host", "user", "host_key"]
        .into_iter()
        .filter(|key| !settings.contains_key(*key))
        .collect();
    if !missing.is_empty() {
        return Err(Invalid(format!(
            "an ssh target needs {} (host_key pins the host: `stella target create` shows it for confirmation)",
            missing.join(", ")
        )));
    }
    match (
        settings.contains_key("key_file"),
        settings.contains_key("key_secret"),
    ) {
        (true, false) | (false, true) => {}
        (false, false) => {
            return Err(Invalid(
                "an ssh target needs key_file (a private key on the agent's host) or key_secret (${secret.NAME})"
                    .to_owned(),
            ))
        }
        (true, true) => {
            return Err(Invalid(
                "key_file and key_secret exclude each other: set one".to_owned(),
            ))
        }
    }
    let script_mode = settings.get("mode").is_some_and(|mode| mode == "script");
    if script_mode {
        if !settings.contains_key("script") {
            return Err(Invalid(
                "mode=script needs script, the command to run".to_owned(),
            ));
        }
        if let Some(key) = settings
            .keys()
            .find(|key| DOCKER_KEYS.contains(&key.as_str()) || key.starts_with("env."))
        {
            return Err(Invalid(format!(
                "{key} applies to mode=docker only; a script gets the release as environment variables"
            )));
        }
    } else if settings.contains_key("script") {
        return Err(Invalid(
            "script applies to mode=script only (set mode=script)".to_owned(),
        ));
    }
    Ok(())
}

/// What a Nomad target needs: the API's address and the job; a `task.<component>` is
/// `GROUP/TASK` or `TASK`.
fn validate_nomad(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let missing: Vec<&str> = ["address", "job"]
        .into_iter()
        .filter(|key| !settings.contains_key(*key))
        .collect();
    if !missing.is_empty() {
        return Err(Invalid(format!(
            "a nomad target needs {} (address: the Nomad HTTP API, http(s)://host:4646; job: the job's ID)",
            missing.join(" and ")
        )));
    }
    for (key, value) in settings {
        let plain = |v: &str| !v.is_empty() && !v.contains(char::is_whitespace);
        let ok = match key.as_str() {
            "address" => {
                let rest = value
                    .trim_end_matches('/')
                    .strip_prefix("http://")
                    .or_else(|| value.trim_end_matches('/').strip_prefix("https://"));
                rest.is_some_and(|a| plain(a) && !a.contains(['/', '?', '#', '@']))
            }
            "job" | "namespace" | "region" => {
                plain(value) && value.len() <= 128 && !value.contains(['/', '?', '#', '%', '&'])
            }
            _ if key.starts_with("task.") => match value.split_once('/') {
                Some((group, task)) => plain(group) && plain(task) && !task.contains('/'),
                None => plain(value),
            },
            _ => true,
        };
        if !ok {
            return Err(Invalid(match key.as_str() {
                "address" => format!(
                    "address `{value}`: use the Nomad HTTP API's URL, http(s)://host:port (e.g. http://127.0.0.1:4646)"
                ),
                _ if key.starts_with("task.") => format!(
                    "{key} `{value}`: use GROUP/TASK (a task group and one of its tasks) or TASK"
                ),
                _ => format!(
                    "{key} `{value}`: at most 128 characters, without spaces, '/', '?', '#', '%' or '&'"
                ),
            }));
        }
    }
    Ok(())
}

/// Checks one value of a WinRM target: Windows paths and URLs where the other kinds have
/// Unix paths and host names.
fn validate_winrm_value(key: &str, value: &str) -> Result<(), Invalid> {
    match key {
        "endpoint" => {
            let rest = value
                .strip_prefix("https://")
                .or_else(|| value.strip_prefix("http://"));
            match rest.map(|rest| rest.split('/').next().unwrap_or_default()) {
                Some(host) if !host.is_empty() && !value.contains(char::is_whitespace) => Ok(()),
                _ => Err(Invalid(format!(
                    "endpoint `{value}`: use https://HOST:5986/wsman (or http://HOST:5985/wsman)"
                ))),
            }
        }
        "user" if value.is_empty() || value.contains(char::is_whitespace) => Err(Invalid(format!(
            "user `{value}` must be non-empty, without spaces (DOMAIN\\user for ntlm)"
        ))),
        "auth" if !matches!(value, "ntlm" | "basic") => {
            Err(Invalid(format!("auth `{value}`: use ntlm or basic")))
        }
        "password_secret" => validate_secret_reference(key, value),
        "ca_file" if !value.starts_with('/') => Err(Invalid(format!(
            "ca_file `{value}` must be an absolute path on the agent's host"
        ))),
        "sticker_dir" => {
            let bytes = value.as_bytes();
            let absolute = bytes.len() >= 3
                && bytes[0].is_ascii_alphabetic()
                && bytes[1] == b':'
                && bytes[2] == b'\\';
            if absolute
                && !value.split('\\').any(|part| part == "..")
                && !value.contains(['/', '\'', '"', '`', '$'])
            {
                Ok(())
            } else {
                Err(Invalid(format!(
                    "sticker_dir `{value}` must be an absolute Windows directory, e.g. C:\\ProgramData\\Stella\\stickers"
                )))
            }
        }
        "operation_timeout_seconds" | "command_timeout_seconds" => validate_value(key, value),
        _ => Ok(()),
    }
}

/// What a WinRM target needs: where, who, the password as a secret, the script; Basic
/// authentication only over HTTPS (NTLM over HTTP encrypts every message).
fn validate_winrm(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let missing: Vec<&str> = ["endpoint", "user", "password_secret", "script"]
        .into_iter()
        .filter(|key| !settings.contains_key(*key))
        .collect();
    if !missing.is_empty() {
        return Err(Invalid(format!(
            "a winrm target needs {} (password_secret as ${{secret.NAME}})",
            missing.join(", ")
        )));
    }
    let https = settings
        .get("endpoint")
        .is_some_and(|endpoint| endpoint.starts_with("https://"));
    if !https && settings.get("auth").is_some_and(|auth| auth == "basic") {
        return Err(Invalid(
            "auth=basic sends the password with every request: it needs an https endpoint"
                .to_owned(),
        ));
    }
    if !https && settings.contains_key("ca_file") {
        return Err(Invalid(
            "ca_file applies to https endpoints only".to_owned(),
        ));
    }
    Ok(())
}

/// What an ECS target needs: where the service is; credentials as secret references
/// that come in pairs (or none: the agent's environment).
fn validate_ecs(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let missing: Vec<&str> = ["region", "cluster", "service"]
        .into_iter()
        .filter(|key| !settings.contains_key(*key))
        .collect();
    if !missing.is_empty() {
        return Err(Invalid(format!(
            "an ecs target needs {}",
            missing.join(", ")
        )));
    }
    match (
        settings.contains_key("access_key_secret"),
        settings.contains_key("secret_key_secret"),
    ) {
        (true, true) => {}
        (false, false) if !settings.contains_key("session_token_secret") => {}
        (false, false) => {
            return Err(Invalid(
                "session_token_secret needs access_key_secret and secret_key_secret".to_owned(),
            ))
        }
        _ => {
            return Err(Invalid(
                "access_key_secret and secret_key_secret go together: set both \
                 (${secret.NAME} each) or neither (the agent's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .to_owned(),
            ))
        }
    }
    Ok(())
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

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const FINGERPRINT: &str = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8";

    #[test]
    fn compose_targets_need_a_file_and_take_service_mappings() {
        let check = |pairs: &[(&str, &str)]| {
            TargetKind::Compose
                .validate_settings(&settings(pairs))
                .map_err(|e| e.0)
        };
        assert!(check(&[
            ("compose_file", "/srv/shop/compose.yml"),
            ("project", "shop_prod-1"),
            ("service.api", "backend"),
            ("compose_version", "v1"),
            ("sticker_dir", "/var/lib/stella/stickers"),
            ("health_timeout_seconds", "90"),
        ])
        .is_ok());
        let error = check(&[("project", "shop")]).expect_err("no file");
        assert!(error.contains("compose_file"), "{error}");
        for (key, value) in [
            ("compose_file", "compose.yml"),
            ("project", "Shop"),
            ("project", "-shop"),
            ("compose_version", "v3"),
            ("service.api", "back end"),
            ("service.", "x"),
            ("ports", "80:80"),
        ] {
            let result = check(&[("compose_file", "/srv/c.yml"), (key, value)]);
            assert!(result.is_err(), "{key}={value} accepted");
        }
    }

    #[test]
    fn nomad_targets_need_an_address_and_a_job_and_take_the_token_from_a_secret() {
        let check = |pairs: &[(&str, &str)]| {
            TargetKind::Nomad
                .validate_settings(&settings(pairs))
                .map_err(|e| e.0)
        };
        let base = [("address", "https://nomad.internal:4646"), ("job", "shop")];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            check(&pairs)
        };
        assert!(with(&[
            ("namespace", "prod"),
            ("region", "eu"),
            ("token_secret", "${secret.nomad_token}"),
            ("ca_file", "/etc/stella/nomad-ca.pem"),
            ("task.api", "web/api"),
            ("task.worker", "worker"),
            ("deploy_timeout_seconds", "900"),
            ("components", "api,worker"),
        ])
        .is_ok());
        let error = check(&[("job", "shop")]).expect_err("no address");
        assert!(error.contains("needs address"), "{error}");
        let error = check(&[]).expect_err("nothing");
        assert!(error.contains("address and job"), "{error}");
        let error = with(&[("token_secret", "s.0123-plain")]).expect_err("plain token");
        assert!(error.contains("${secret.NAME}"), "{error}");
        let error = with(&[("image", "x")]).expect_err("unknown");
        assert!(error.contains("unknown setting `image`"), "{error}");
        for (key, value) in [
            ("address", "nomad:4646"),
            ("address", "http://nomad:4646/v1"),
            ("job", "a/b"),
            ("namespace", "has space"),
            ("task.api", "a/b/c"),
            ("task.api", "/api"),
            ("job_file", "job.hcl"),
            ("ca_file", "ca.pem"),
            ("deploy_timeout_seconds", "0"),
            ("host", "n"),
        ] {
            let mut pairs = base.to_vec();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            assert!(check(&pairs).is_err(), "{key}={value} accepted");
        }
    }

    #[test]
    fn ssh_targets_pin_the_host_key_and_never_hold_a_key_in_plain_text() {
        let check = |pairs: &[(&str, &str)]| {
            TargetKind::Ssh
                .validate_settings(&settings(pairs))
                .map_err(|e| e.0)
        };
        let base = [
            ("host", "10.0.0.7"),
            ("user", "deploy"),
            ("host_key", FINGERPRINT),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            check(&pairs)
        };
        assert!(with(&[("key_file", "/etc/stella/id_ed25519"), ("ports", "8080:80")]).is_ok());
        assert!(with(&[
            ("key_secret", "${secret.deploy_key}"),
            ("mode", "script"),
            ("script", "/opt/deploy.sh"),
            ("port", "2222"),
        ])
        .is_ok());
        let error = check(&[("host", "h"), ("key_file", "/k")]).expect_err("missing");
        assert!(
            error.contains("user") && error.contains("host_key"),
            "{error}"
        );
        let error = with(&[]).expect_err("no key");
        assert!(
            error.contains("key_file") && error.contains("key_secret"),
            "{error}"
        );
        let error = with(&[("key_file", "/k"), ("key_secret", "${secret.k}")]).expect_err("both");
        assert!(error.contains("exclude"), "{error}");
        for secret in [
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "${var.k}",
            "x${secret.k}",
        ] {
            let error = with(&[("key_secret", secret)]).expect_err(secret);
            assert!(error.contains("${secret.NAME}"), "{error}");
        }
        for fingerprint in [
            "nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8",
            "SHA256:short",
            "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
        ] {
            let mut pairs = vec![("host", "h"), ("user", "u"), ("key_file", "/k")];
            pairs.push(("host_key", fingerprint));
            let error = check(&pairs).expect_err(fingerprint);
            assert!(error.contains("host_key"), "{error}");
        }
        let error = with(&[("key_file", "/k"), ("mode", "script")]).expect_err("no script");
        assert!(error.contains("script"), "{error}");
        let error = with(&[
            ("key_file", "/k"),
            ("mode", "script"),
            ("script", "x"),
            ("ports", "80:80"),
        ])
        .expect_err("docker key in script mode");
        assert!(error.contains("ports"), "{error}");
        let error = with(&[("key_file", "/k"), ("script", "x")]).expect_err("script without mode");
        assert!(error.contains("mode=script"), "{error}");
        assert!(with(&[("key_file", "/k"), ("port", "0")]).is_err());
        assert!(with(&[("key_file", "relative/key")]).is_err());
    }

    #[test]
    fn winrm_targets_take_the_password_from_a_secret_and_basic_only_over_https() {
        let check = |pairs: &[(&str, &str)]| {
            TargetKind::Winrm
                .validate_settings(&settings(pairs))
                .map_err(|e| e.0)
        };
        let base = [
            ("endpoint", "https://win1.example:5986/wsman"),
            ("user", r"CORP\deploy"),
            ("password_secret", "${secret.win_password}"),
            ("script", r"& C:\deploy\deploy.ps1"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs: Vec<(&str, &str)> = base
                .iter()
                .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
                .copied()
                .collect();
            pairs.extend_from_slice(extra);
            check(&pairs)
        };
        assert!(with(&[]).is_ok());
        assert!(with(&[
            ("auth", "basic"),
            ("ca_file", "/etc/stella/win1.pem"),
            ("sticker_dir", r"D:\Stella\stickers"),
            ("operation_timeout_seconds", "30"),
            ("command_timeout_seconds", "600"),
            ("components", "web"),
        ])
        .is_ok());
        let error = check(&[("endpoint", "https://w:5986/wsman")]).expect_err("missing");
        assert!(
            error.contains("user") && error.contains("password_secret") && error.contains("script"),
            "{error}"
        );
        for (key, value, needle) in [
            ("password_secret", "hunter2", "${secret.NAME}"),
            ("endpoint", "win1:5986", "endpoint"),
            ("auth", "kerberos", "auth"),
            ("sticker_dir", "/var/lib/stella", "sticker_dir"),
            ("ca_file", "ca.pem", "ca_file"),
            ("command_timeout_seconds", "0", "command_timeout_seconds"),
            ("host", "win1", "unknown setting"),
            ("https", "true", "unknown setting"),
        ] {
            let error = with(&[(key, value)]).expect_err(key);
            assert!(error.contains(needle), "{key}={value}: {error}");
        }
        let error = with(&[("endpoint", "http://win1:5985/wsman"), ("auth", "basic")])
            .expect_err("basic over http");
        assert!(error.contains("https"), "{error}");
        assert!(with(&[("endpoint", "http://win1:5985/wsman")]).is_ok());
        assert!(with(&[
            ("endpoint", "http://win1:5985/wsman"),
            ("ca_file", "/c.pem")
        ])
        .is_err());
    }

    #[test]
    fn ecs_targets_name_their_service_and_hold_credentials_only_as_secret_references() {
        let check = |pairs: &[(&str, &str)]| {
            TargetKind::Ecs
                .validate_settings(&settings(pairs))
                .map_err(|e| e.0)
        };
        let base = [
            ("region", "eu-central-1"),
            ("cluster", "prod"),
            ("service", "shop"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            check(&pairs)
        };
        assert!(with(&[]).is_ok(), "the agent's environment holds the keys");
        assert!(with(&[
            ("access_key_secret", "${secret.aws_id}"),
            ("secret_key_secret", "${secret.aws_key}"),
            ("session_token_secret", "${secret.aws_token}"),
            ("endpoint_url", "http://127.0.0.1:5000"),
            ("container.api", "shop-api"),
            ("components", "api"),
            ("deploy_timeout_seconds", "600"),
            ("poll_interval_ms", "500"),
        ])
        .is_ok());
        let error = check(&[("region", "eu-central-1")]).expect_err("missing");
        assert!(
            error.contains("cluster") && error.contains("service"),
            "{error}"
        );
        let error = with(&[("access_key_secret", "${secret.aws_id}")]).expect_err("half");
        assert!(error.contains("together"), "{error}");
        let error = with(&[("session_token_secret", "${secret.t}")]).expect_err("token alone");
        assert!(error.contains("needs"), "{error}");
        for key in ["access_key_secret", "secret_key_secret"] {
            let error = with(&[
                ("access_key_secret", "${secret.aws_id}"),
                ("secret_key_secret", "${secret.aws_key}"),
                (key, "AKIAIOSFODNN7EXAMPLE"),
            ])
            .expect_err(key);
            assert!(error.contains("${secret.NAME}"), "{error}");
        }
        for (key, value) in [
            ("region", "EU Central"),
            ("endpoint_url", "ecs.local"),
            ("deploy_timeout_seconds", "0"),
            ("poll_interval_ms", "10"),
            ("container.api", ""),
            ("container.", "x"),
            ("credentials_secret", "${secret.x}"),
            ("ports", "80:80"),
        ] {
            assert!(with(&[(key, value)]).is_err(), "{key}={value} accepted");
        }
    }
}
