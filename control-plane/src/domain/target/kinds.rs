//! The settings each kind names, and what each kind needs of them as a whole
//! (required keys, keys that exclude each other).

use std::collections::BTreeMap;

use super::values::{validate_secret_reference, validate_value};
use crate::domain::Invalid;

/// Settings every kind accepts.
pub(super) const COMMON_KEYS: &[&str] = &["components"];
/// Settings of Docker containers (also used by `ssh` in `docker` mode).
pub(super) const DOCKER_KEYS: &[&str] = &[
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
pub(super) const COMPOSE_KEYS: &[&str] = &[
    "compose_file",
    "project",
    "compose_version",
    "health_url",
    "health_timeout_seconds",
    "sticker_dir",
];
/// Settings of SSH targets (besides the Docker keys and `env.NAME`, used in docker mode).
pub(super) const SSH_KEYS: &[&str] = &[
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
pub(super) const NOMAD_KEYS: &[&str] = &[
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
pub(super) const WINRM_KEYS: &[&str] = &[
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
pub(super) const ECS_KEYS: &[&str] = &[
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

// The `sim` kind has no list: its settings are free-form, since only the simulated
// targets of the benches and the fault suite (`stella-tests`' `faults` module) read them.

/// What a Compose target needs: the file.
pub(super) fn validate_compose(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
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
pub(super) fn validate_ssh(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
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
pub(super) fn validate_nomad(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
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
pub(super) fn validate_winrm_value(key: &str, value: &str) -> Result<(), Invalid> {
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
pub(super) fn validate_winrm(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
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
pub(super) fn validate_ecs(settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
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
