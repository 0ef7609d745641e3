//! The `ssh` target's settings (`stella target create … --set key=value`), parsed and
//! validated before anything is sent to the host. The docker keys are the `docker`
//! kind's, parsed by [`DockerSettings`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use stella_target_docker::{DockerSettings, KNOWN_KEYS as DOCKER_KNOWN_KEYS};

use crate::error::SshError;

/// The keys of the `ssh` kind itself; the docker keys (and `env.NAME`) come on top in
/// docker mode, `components` in both modes.
pub const SSH_KEYS: &[&str] = &[
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

/// Default of `sticker_dir`.
pub const DEFAULT_STICKER_DIR: &str = "/var/lib/stella/stickers";
/// Default of `connect_timeout_seconds`.
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: u64 = 10;
/// Default of `command_timeout_seconds`.
pub const DEFAULT_COMMAND_TIMEOUT_SECONDS: u64 = 300;

/// How the host is deployed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through the host's `docker` CLI, with the `docker` kind's semantics.
    Docker,
    /// By running `script` with the release in environment variables.
    Script,
}

/// The private key the agent authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// `key_file`: a path on the agent's host.
    File(PathBuf),
    /// `key_secret`: the PEM itself, from the secret the control plane sent.
    Memory(String),
}

// By hand so no key reaches a log line.
impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::File(path) => f.debug_tuple("File").field(path).finish(),
            KeyMaterial::Memory(_) => f.write_str("Memory(<redacted>)"),
        }
    }
}

impl KeyMaterial {
    /// What identifies the key in the connection pool without holding it: the path, or
    /// the SHA-256 of the PEM.
    pub fn identity(&self) -> String {
        match self {
            KeyMaterial::File(path) => format!("file:{}", path.display()),
            KeyMaterial::Memory(pem) => {
                format!("secret:{}", hex::encode(Sha256::digest(pem.as_bytes())))
            }
        }
    }
}

/// Where and how to connect: also the key of the connection pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// The user's private key.
    pub key: KeyMaterial,
    /// The pinned host key fingerprint, `SHA256:…`.
    pub host_key: String,
    /// TCP connect and handshake timeout.
    pub connect_timeout: Duration,
}

impl Endpoint {
    /// `host:port` (IPv6 addresses in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The pool key: one connection per host, port, user, key and pinned host key.
    pub fn pool_key(&self) -> String {
        format!(
            "{}@{}|{}|{}",
            self.user,
            self.addr(),
            self.key.identity(),
            self.host_key
        )
    }
}

/// The settings of one `ssh` target.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// `mode`.
    pub mode: Mode,
    /// `script` (script mode).
    pub script: Option<String>,
    /// `sticker_dir` on the remote host.
    pub sticker_dir: String,
    /// How long one remote command may take.
    pub command_timeout: Duration,
    /// The docker keys (and `components`), as the `docker` kind parses them; in script
    /// mode only `components` is set.
    pub docker: DockerSettings,
}

impl SshSettings {
    /// Parses the settings to apply (`values`: secret references resolved) with the
    /// config digest taken over `references` (the settings as stored).
    pub fn parse(
        values: &BTreeMap<String, String>,
        references: &BTreeMap<String, String>,
    ) -> Result<SshSettings, SshError> {
        let get = |key: &str| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let host = get("host")
            .ok_or_else(|| invalid("host is required".to_owned()))?
            .to_owned();
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(invalid(format!(
                "host {host:?} is not a host name or address"
            )));
        }
        let port = match get("port") {
            None => 22,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(format!("port {port:?} is not a TCP port")))?,
        };
        let user = get("user")
            .ok_or_else(|| invalid("user is required".to_owned()))?
            .to_owned();
        let key = match (get("key_file"), values.get("key_secret")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "key_file and key_secret are both set; set exactly one".to_owned(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "one of key_file (a private key on the agent's host) or key_secret (${secret.NAME}) is required"
                        .to_owned(),
                ))
            }
            (Some(path), None) => {
                if !path.starts_with('/') {
                    return Err(invalid(format!("key_file {path:?} is not an absolute path")));
                }
                KeyMaterial::File(PathBuf::from(path))
            }
            (None, Some(pem)) => {
                let reference = references.get("key_secret").map(String::as_str).unwrap_or("");
                if !is_secret_reference(reference) {
                    return Err(invalid(
                        "key_secret must be a reference to a secret, ${secret.NAME}, not the key itself".to_owned(),
                    ));
                }
                if !pem.contains("PRIVATE KEY-----") {
                    return Err(invalid(format!(
                        "the secret key_secret references ({reference}) does not hold a PEM private key"
                    )));
                }
                KeyMaterial::Memory(pem.clone())
            }
        };
        let host_key = get("host_key").ok_or_else(|| {
            invalid("host_key is required: the host's key fingerprint, SHA256:… (ssh-keyscan -p PORT HOST | ssh-keygen -lf -)".to_owned())
        })?;
        check_fingerprint(host_key)?;
        let mode = match get("mode") {
            None | Some("docker") => Mode::Docker,
            Some("script") => Mode::Script,
            Some(other) => return Err(invalid(format!("mode {other:?} is not docker or script"))),
        };
        let script = get("script").map(str::to_owned);
        match (mode, &script) {
            (Mode::Script, None) => {
                return Err(invalid(
                    "mode script needs script (the command line to run)".to_owned(),
                ))
            }
            (Mode::Docker, Some(_)) => {
                return Err(invalid("script is only used with mode=script".to_owned()))
            }
            _ => {}
        }
        let sticker_dir = get("sticker_dir")
            .unwrap_or(DEFAULT_STICKER_DIR)
            .trim_end_matches('/')
            .to_owned();
        if !sticker_dir.starts_with('/') || sticker_dir.split('/').any(|part| part == "..") {
            return Err(invalid(format!(
                "sticker_dir {sticker_dir:?} is not an absolute path"
            )));
        }
        let connect_timeout = seconds(
            values,
            "connect_timeout_seconds",
            DEFAULT_CONNECT_TIMEOUT_SECONDS,
        )?;
        let command_timeout = seconds(
            values,
            "command_timeout_seconds",
            DEFAULT_COMMAND_TIMEOUT_SECONDS,
        )?;

        // The rest are the docker kind's keys.
        let docker_part = |map: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            map.iter()
                .filter(|(key, _)| !SSH_KEYS.contains(&key.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let docker_values = docker_part(values);
        if mode == Mode::Script {
            if let Some(key) = docker_values
                .keys()
                .find(|key| key.as_str() != "components")
            {
                return Err(invalid(format!(
                    "{key} is a docker-mode key; mode=script takes only script and components"
                )));
            }
        }
        let docker = DockerSettings::parse_values(&docker_values, &docker_part(references))
            .map_err(|error| {
                let message = error.to_string();
                if message.starts_with("unknown key") {
                    invalid(format!(
                        "{} for kind ssh (known: {}, and in docker mode {})",
                        message.split(" for kind").next().unwrap_or(&message),
                        SSH_KEYS.join(", "),
                        DOCKER_KNOWN_KEYS.join(", ")
                    ))
                } else {
                    invalid(message)
                }
            })?;
        Ok(SshSettings {
            endpoint: Endpoint {
                host,
                port,
                user,
                key,
                host_key: host_key.to_owned(),
                connect_timeout,
            },
            mode,
            script,
            sticker_dir,
            command_timeout,
            docker,
        })
    }
}

/// `${secret.NAME}` and nothing else.
fn is_secret_reference(value: &str) -> bool {
    value
        .strip_prefix("${secret.")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| !name.is_empty() && !name.contains(['{', '}', '$']))
}

/// `SHA256:` and the unpadded standard base64 of 32 bytes, as OpenSSH prints it.
fn check_fingerprint(value: &str) -> Result<(), SshError> {
    let decoded = value.strip_prefix("SHA256:").and_then(|b64| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .ok()
    });
    match decoded {
        Some(bytes) if bytes.len() == 32 => Ok(()),
        _ => Err(invalid(format!(
            "host_key {value:?} is not a SHA256:… fingerprint as ssh-keygen -l prints it"
        ))),
    }
}

/// A fingerprint as OpenSSH prints it: `SHA256:` and unpadded standard base64.
pub fn fingerprint(sha256: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha256)
    )
}

fn seconds(
    values: &BTreeMap<String, String>,
    key: &str,
    default: u64,
) -> Result<Duration, SshError> {
    match values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(Duration::from_secs(default)),
        Some(value) => value
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                invalid(format!(
                    "{key} {value:?} is not a number of seconds from 1 to 86400"
                ))
            }),
    }
}

fn invalid(message: String) -> SshError {
    SshError::InvalidSettings(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("host", "10.0.0.5"),
            ("user", "deploy"),
            ("key_file", "/etc/stella/id_ed25519"),
            ("host_key", FP),
        ]
    }

    #[test]
    fn defaults_and_docker_keys() {
        let mut pairs = base();
        pairs.extend([("ports", "8080:80"), ("env.A", "1"), ("components", "web")]);
        let settings = map(&pairs);
        let parsed = SshSettings::parse(&settings, &settings).expect("parse");
        assert_eq!(parsed.endpoint.port, 22);
        assert_eq!(parsed.endpoint.addr(), "10.0.0.5:22");
        assert_eq!(parsed.mode, Mode::Docker);
        assert_eq!(parsed.sticker_dir, DEFAULT_STICKER_DIR);
        assert_eq!(parsed.command_timeout, Duration::from_secs(300));
        assert_eq!(parsed.endpoint.connect_timeout, Duration::from_secs(10));
        assert_eq!(parsed.docker.env["A"], "1");
        assert_eq!(
            parsed.docker.select(&["web", "api"]).expect("select"),
            vec!["web"]
        );
    }

    #[test]
    fn refusals_name_the_key() {
        for (change, needle) in [
            (("port", "0"), "port"),
            (("host_key", "SHA256:short"), "host_key"),
            (("host_key", "MD5:aa"), "host_key"),
            (("mode", "ansible"), "mode"),
            (("colour", "blue"), "colour"),
            (("sticker_dir", "relative"), "sticker_dir"),
            (("command_timeout_seconds", "0"), "command_timeout_seconds"),
            (("script", "./deploy.sh"), "script"),
            (("key_secret", "${secret.k}"), "key_file and key_secret"),
        ] {
            let mut pairs = base();
            pairs.push(change);
            let settings = map(&pairs);
            let error = SshSettings::parse(&settings, &settings)
                .expect_err("refused")
                .to_string();
            assert!(error.contains(needle), "{change:?}: {error}");
        }
        let mut pairs = base();
        pairs.retain(|(k, _)| *k != "host_key");
        let settings = map(&pairs);
        assert!(SshSettings::parse(&settings, &settings).is_err());
    }

    #[test]
    fn script_mode_and_key_secret() {
        let mut pairs = base();
        pairs.retain(|(k, _)| *k != "key_file");
        pairs.extend([
            ("mode", "script"),
            ("script", "/opt/deploy.sh"),
            ("key_secret", "${secret.k}"),
        ]);
        let references = map(&pairs);
        let mut values = references.clone();
        values.insert(
            "key_secret".into(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n".into(),
        );
        let parsed = SshSettings::parse(&values, &references).expect("parse");
        assert_eq!(parsed.mode, Mode::Script);
        assert!(matches!(parsed.endpoint.key, KeyMaterial::Memory(_)));
        assert!(!format!("{parsed:?}").contains("BEGIN"));
        // A literal key instead of a reference is refused.
        let error = SshSettings::parse(&values, &values)
            .expect_err("literal")
            .to_string();
        assert!(error.contains("reference"), "{error}");
        // Docker keys do not go with script mode.
        let mut with_ports = values.clone();
        with_ports.insert("ports".into(), "80".into());
        assert!(SshSettings::parse(&with_ports, &with_ports).is_err());
    }

    #[test]
    fn fingerprints_print_as_openssh_does() {
        assert_eq!(fingerprint(&Sha256::digest(b"")), FP);
    }
}
