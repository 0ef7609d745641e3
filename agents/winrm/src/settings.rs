//! The `winrm` target's settings (`stella target create … --set key=value`), parsed and
//! validated before anything is sent to the host.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::WinrmError;

/// The keys of the `winrm` kind (`components` included).
pub const WINRM_KEYS: &[&str] = &[
    "endpoint",
    "user",
    "password_secret",
    "auth",
    "ca_file",
    "script",
    "sticker_dir",
    "operation_timeout_seconds",
    "command_timeout_seconds",
    "components",
];

/// Default of `sticker_dir`.
pub const DEFAULT_STICKER_DIR: &str = r"C:\ProgramData\Stella\stickers";
/// Default of `operation_timeout_seconds`: how long one WS-Management call may wait on
/// the host (the `OperationTimeout` header) before the host answers "poll again".
pub const DEFAULT_OPERATION_TIMEOUT_SECONDS: u64 = 20;
/// Default of `command_timeout_seconds`.
pub const DEFAULT_COMMAND_TIMEOUT_SECONDS: u64 = 300;

/// How the agent authenticates to the WinRM listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// HTTP Basic: user and password in every request; only over HTTPS.
    Basic,
    /// NTLM (MS-NLMP) three-leg handshake on one connection.
    Ntlm,
}

impl Auth {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Basic => "basic",
            Auth::Ntlm => "ntlm",
        }
    }
}

/// The user's password: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host:5986/wsman` or `http://host:5985/wsman`.
    pub url: String,
    /// Whether `url` is HTTPS.
    pub https: bool,
    /// `user`, `DOMAIN\user` for NTLM.
    pub user: String,
    /// From the secret `password_secret` names.
    pub password: Password,
    /// `auth`.
    pub auth: Auth,
    /// `ca_file`: a PEM file on the agent's host whose certificates are trusted for the
    /// listener (besides the public roots), for self-signed listeners.
    pub ca_file: Option<PathBuf>,
    /// `operation_timeout_seconds`.
    pub operation_timeout: Duration,
}

impl Endpoint {
    /// `host:port` of the URL, for messages.
    pub fn addr(&self) -> &str {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest);
        rest.split('/').next().unwrap_or(rest)
    }
}

/// The settings of one `winrm` target.
#[derive(Debug, Clone)]
pub struct WinrmSettings {
    /// Where and how to connect.
    pub endpoint: Endpoint,
    /// `script`: PowerShell run for each deployment.
    pub script: String,
    /// `sticker_dir` on the host, without a trailing `\`.
    pub sticker_dir: String,
    /// How long one command (the script, a sticker read) may take.
    pub command_timeout: Duration,
    /// `components`, if set: the release's components this target deploys.
    pub components: Option<Vec<String>>,
}

impl WinrmSettings {
    /// Parses the settings to apply (`values`: secret references resolved); `references`
    /// are the settings as stored, to check that the password is a secret reference.
    pub fn parse(
        values: &BTreeMap<String, String>,
        references: &BTreeMap<String, String>,
    ) -> Result<WinrmSettings, WinrmError> {
        if let Some(key) = values.keys().find(|k| !WINRM_KEYS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown key {key} for kind winrm (known: {})",
                WINRM_KEYS.join(", ")
            )));
        }
        let get = |key: &str| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let url = get("endpoint")
            .ok_or_else(|| {
                invalid(
                    "endpoint is required: https://HOST:5986/wsman or http://HOST:5985/wsman"
                        .to_owned(),
                )
            })?
            .to_owned();
        let https = check_endpoint(&url)?;
        let user = get("user")
            .ok_or_else(|| invalid("user is required (DOMAIN\\user for ntlm)".to_owned()))?
            .to_owned();
        let reference = references
            .get("password_secret")
            .map(String::as_str)
            .unwrap_or("");
        if !is_secret_reference(reference) {
            return Err(invalid(
                "password_secret is required and must be a reference to a secret, ${secret.NAME}, not the password itself"
                    .to_owned(),
            ));
        }
        let password = values.get("password_secret").cloned().unwrap_or_default();
        let auth = match get("auth") {
            None | Some("ntlm") => Auth::Ntlm,
            Some("basic") => Auth::Basic,
            Some(other) => return Err(invalid(format!("auth {other:?} is not ntlm or basic"))),
        };
        if auth == Auth::Basic && !https {
            return Err(invalid(format!(
                "auth=basic sends the password in every request: it is refused over http ({url}); use an https endpoint or auth=ntlm"
            )));
        }
        let ca_file = match get("ca_file") {
            None => None,
            Some(path) if path.starts_with('/') => Some(PathBuf::from(path)),
            Some(path) => {
                return Err(invalid(format!(
                    "ca_file {path:?} is not an absolute path on the agent's host"
                )))
            }
        };
        if ca_file.is_some() && !https {
            return Err(invalid(
                "ca_file is only used with an https endpoint".to_owned(),
            ));
        }
        let script = get("script")
            .ok_or_else(|| {
                invalid("script is required: the PowerShell that deploys a release".to_owned())
            })?
            .to_owned();
        let sticker_dir = get("sticker_dir")
            .unwrap_or(DEFAULT_STICKER_DIR)
            .trim_end_matches('\\')
            .to_owned();
        check_windows_dir(&sticker_dir)?;
        let operation_timeout = seconds(
            values,
            "operation_timeout_seconds",
            DEFAULT_OPERATION_TIMEOUT_SECONDS,
        )?;
        let command_timeout = seconds(
            values,
            "command_timeout_seconds",
            DEFAULT_COMMAND_TIMEOUT_SECONDS,
        )?;
        let components = get("components").map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Ok(WinrmSettings {
            endpoint: Endpoint {
                url,
                https,
                user,
                password: Password(password),
                auth,
                ca_file,
                operation_timeout,
            },
            script,
            sticker_dir,
            command_timeout,
            components,
        })
    }
}

/// `http(s)://host[:port]/path`; says whether it is https.
fn check_endpoint(url: &str) -> Result<bool, WinrmError> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(invalid(format!(
            "endpoint {url:?} is not an http:// or https:// URL (https://HOST:5986/wsman)"
        )));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.chars().any(char::is_whitespace) || host.contains('@') {
        return Err(invalid(format!(
            "endpoint {url:?} names no host (https://HOST:5986/wsman)"
        )));
    }
    Ok(https)
}

/// An absolute Windows directory: `X:\…`, no `..`, nothing a PowerShell single-quoted
/// string or a file name cannot hold.
pub(crate) fn check_windows_dir(dir: &str) -> Result<(), WinrmError> {
    let bytes = dir.as_bytes();
    let absolute =
        bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'\\';
    let clean = !dir.split('\\').any(|part| part == "..")
        && !dir.contains(['/', '\'', '"', '\n', '\r', '\0', '`', '$']);
    if absolute && clean {
        Ok(())
    } else {
        Err(invalid(format!(
            "sticker_dir {dir:?} is not an absolute Windows directory (C:\\ProgramData\\Stella\\stickers)"
        )))
    }
}

/// `${secret.NAME}` and nothing else.
fn is_secret_reference(value: &str) -> bool {
    value
        .strip_prefix("${secret.")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| !name.is_empty() && !name.contains(['{', '}', '$']))
}

fn seconds(
    values: &BTreeMap<String, String>,
    key: &str,
    default: u64,
) -> Result<Duration, WinrmError> {
    match values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(Duration::from_secs(default)),
        Some(value) => value
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                invalid(format!(
                    "{key} {value:?} is not a number of seconds from 1 to 3600"
                ))
            }),
    }
}

fn invalid(message: String) -> WinrmError {
    WinrmError::InvalidSettings(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("endpoint", "https://win1.example:5986/wsman"),
            ("user", r"CORP\deploy"),
            ("password_secret", "${secret.win_password}"),
            ("script", r"C:\deploy\deploy.ps1"),
        ]
    }

    fn resolved(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut values = map(pairs);
        if values.contains_key("password_secret") {
            values.insert("password_secret".into(), "s3cret".into());
        }
        values
    }

    #[test]
    fn defaults() {
        let parsed = WinrmSettings::parse(&resolved(&base()), &map(&base())).expect("parse");
        assert_eq!(parsed.endpoint.auth, Auth::Ntlm);
        assert!(parsed.endpoint.https);
        assert_eq!(parsed.endpoint.addr(), "win1.example:5986");
        assert_eq!(parsed.sticker_dir, DEFAULT_STICKER_DIR);
        assert_eq!(parsed.command_timeout, Duration::from_secs(300));
        assert_eq!(parsed.endpoint.password.0, "s3cret");
        assert!(!format!("{parsed:?}").contains("s3cret"));
    }

    #[test]
    fn refusals_name_the_key() {
        for (change, needle) in [
            (("endpoint", "win1:5986"), "endpoint"),
            (("endpoint", "https:///wsman"), "endpoint"),
            (("auth", "kerberos"), "auth"),
            (("colour", "blue"), "colour"),
            (("sticker_dir", "/var/lib"), "sticker_dir"),
            (("sticker_dir", r"C:\a\..\b"), "sticker_dir"),
            (("command_timeout_seconds", "0"), "command_timeout_seconds"),
            (("ca_file", "ca.pem"), "ca_file"),
        ] {
            let mut pairs = base();
            pairs.retain(|(k, _)| *k != change.0);
            pairs.push(change);
            let error = WinrmSettings::parse(&resolved(&pairs), &map(&pairs))
                .expect_err("refused")
                .to_string();
            assert!(error.contains(needle), "{change:?}: {error}");
        }
        for missing in ["endpoint", "user", "password_secret", "script"] {
            let mut pairs = base();
            pairs.retain(|(k, _)| *k != missing);
            let error = WinrmSettings::parse(&resolved(&pairs), &map(&pairs))
                .expect_err("missing")
                .to_string();
            assert!(error.contains(missing), "{missing}: {error}");
        }
    }

    #[test]
    fn basic_only_over_https_and_the_password_only_from_a_secret() {
        let mut pairs = base();
        pairs.push(("auth", "basic"));
        assert!(WinrmSettings::parse(&resolved(&pairs), &map(&pairs)).is_ok());
        pairs.retain(|(k, _)| *k != "endpoint");
        pairs.push(("endpoint", "http://win1:5985/wsman"));
        let error = WinrmSettings::parse(&resolved(&pairs), &map(&pairs))
            .expect_err("basic over http")
            .to_string();
        assert!(error.contains("refused over http"), "{error}");
        let literal = resolved(&base());
        let error = WinrmSettings::parse(&literal, &literal)
            .expect_err("literal password")
            .to_string();
        assert!(error.contains("reference"), "{error}");
    }
}
