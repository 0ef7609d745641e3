//! Checks of one setting's value by its key: the same key means the same thing in
//! every kind.

use crate::domain::Invalid;

pub(super) fn validate_value(key: &str, value: &str) -> Result<(), Invalid> {
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
pub(super) fn validate_project(value: &str) -> Result<(), Invalid> {
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
pub(super) fn validate_service_name(key: &str, value: &str) -> Result<(), Invalid> {
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
pub(super) fn validate_host_key(value: &str) -> Result<(), Invalid> {
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
pub(super) fn validate_secret_reference(key: &str, value: &str) -> Result<(), Invalid> {
    let only_reference = matches!(
        crate::domain::references(value)?.as_slice(),
        [reference] if reference.kind == crate::domain::VariableKind::Secret
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

/// A Docker container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters (no
/// path separators, so it is also safe in file names derived from it).
pub(super) fn validate_container_name(value: &str) -> Result<(), Invalid> {
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
pub(super) fn validate_ports(value: &str) -> Result<(), Invalid> {
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
