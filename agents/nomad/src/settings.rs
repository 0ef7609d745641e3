//! The settings of a `nomad` target (`--set key=value`), parsed and checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::NomadError;

/// Every key a `nomad` target accepts (`task.COMPONENT` stands for the `task.` keys).
pub const NOMAD_KEYS: &[&str] = &[
    "components",
    "address",
    "job",
    "job_file",
    "namespace",
    "region",
    "token_secret",
    "ca_file",
    "task.COMPONENT",
    "deploy_timeout_seconds",
];

/// Default of `namespace`.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default of `deploy_timeout_seconds`.
pub const DEFAULT_DEPLOY_TIMEOUT_SECONDS: u64 = 600;

/// Where one component runs in the job: a task of a task group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRef {
    /// The task group; `None`: whichever group has the task (it must be one).
    pub group: Option<String>,
    /// The task.
    pub task: String,
}

/// A `nomad` target's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct NomadSettings {
    /// `http(s)://host:port`, without a trailing slash.
    pub address: String,
    /// The job ID.
    pub job: String,
    /// A job specification on the agent's host (JSON, or HCL parsed by Nomad): the base
    /// of every registration instead of the job as it runs.
    pub job_file: Option<PathBuf>,
    /// The namespace (`default`).
    pub namespace: String,
    /// The region, when not the agent's Nomad server's own.
    pub region: Option<String>,
    /// The ACL token (the resolved secret). Never logged: `Debug` hides it.
    pub token: Option<String>,
    /// A PEM CA bundle to trust for `https` addresses.
    pub ca_file: Option<PathBuf>,
    /// `task.<component>=GROUP/TASK` (or `TASK`).
    pub tasks: BTreeMap<String, TaskRef>,
    /// `components`: the release's components this target runs; `None`: all.
    pub components: Option<Vec<String>>,
    /// How long a deployment may take before Stella gives up on it and reverts.
    pub deploy_timeout: Duration,
}

impl std::fmt::Debug for NomadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadSettings")
            .field("address", &self.address)
            .field("job", &self.job)
            .field("job_file", &self.job_file)
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("tasks", &self.tasks)
            .field("components", &self.components)
            .field("deploy_timeout", &self.deploy_timeout)
            .finish()
    }
}

fn invalid(message: impl Into<String>) -> NomadError {
    NomadError::InvalidSettings(message.into())
}

impl NomadSettings {
    /// Parses `values` (secret references resolved); `references` are the settings as
    /// configured, to tell a token that came from a secret from one written in plain text.
    pub fn parse(
        values: &BTreeMap<String, String>,
        references: &BTreeMap<String, String>,
    ) -> Result<NomadSettings, NomadError> {
        let mut address = None;
        let mut job = None;
        let mut settings = NomadSettings {
            address: String::new(),
            job: String::new(),
            job_file: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            region: None,
            token: None,
            ca_file: None,
            tasks: BTreeMap::new(),
            components: None,
            deploy_timeout: Duration::from_secs(DEFAULT_DEPLOY_TIMEOUT_SECONDS),
        };
        for (key, value) in values {
            match key.as_str() {
                "address" => address = Some(check_address(value)?),
                "job" => job = Some(check_name("job", value)?),
                "job_file" => settings.job_file = Some(absolute(key, value)?),
                "namespace" => settings.namespace = check_name("namespace", value)?,
                "region" => settings.region = Some(check_name("region", value)?),
                "token_secret" => {
                    let reference = references.get(key).map(String::as_str).unwrap_or("");
                    if !(reference.starts_with("${secret.") && reference.ends_with('}')) {
                        return Err(invalid(
                            "token_secret must be a reference to an environment secret, ${secret.NAME}: \
                             an ACL token is never stored in a target's settings",
                        ));
                    }
                    settings.token = Some(value.clone());
                }
                "ca_file" => settings.ca_file = Some(absolute(key, value)?),
                "components" => {
                    settings.components = Some(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    );
                }
                "deploy_timeout_seconds" => {
                    let seconds = value
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=86_400).contains(s))
                        .ok_or_else(|| {
                            invalid(format!(
                                "deploy_timeout_seconds `{value}`: a whole number of seconds, 1 to 86400"
                            ))
                        })?;
                    settings.deploy_timeout = Duration::from_secs(seconds);
                }
                _ => match key.strip_prefix("task.").filter(|c| !c.is_empty()) {
                    Some(component) => {
                        settings
                            .tasks
                            .insert(component.to_owned(), parse_task_ref(key, value)?);
                    }
                    None => {
                        return Err(invalid(format!(
                            "unknown setting `{key}` for a nomad target (known: {})",
                            NOMAD_KEYS.join(", ")
                        )))
                    }
                },
            }
        }
        settings.address = address.ok_or_else(|| {
            invalid("a nomad target needs address, the Nomad HTTP API (http(s)://host:4646)")
        })?;
        settings.job = job.ok_or_else(|| invalid("a nomad target needs job, the job's ID"))?;
        Ok(settings)
    }

    /// Where `component` runs: `task.<component>`, or a task named like it.
    pub fn task_of(&self, component: &str) -> TaskRef {
        self.tasks.get(component).cloned().unwrap_or(TaskRef {
            group: None,
            task: component.to_owned(),
        })
    }

    /// Whether this target runs `component`.
    pub fn runs(&self, component: &str) -> bool {
        self.components
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == component))
    }
}

/// `http(s)://host[:port]`, with nothing after the authority but an optional `/`.
fn check_address(value: &str) -> Result<String, NomadError> {
    let trimmed = value.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(authority)
            if !authority.is_empty()
                && !authority.contains(['/', '?', '#', '@'])
                && !authority.contains(char::is_whitespace) =>
        {
            Ok(trimmed.to_owned())
        }
        _ => Err(invalid(format!(
            "address `{value}`: use the Nomad HTTP API's URL, http(s)://host:port (e.g. http://127.0.0.1:4646)"
        ))),
    }
}

/// A job ID, namespace or region: non-empty, printable, no `/`, `?`, `#` or whitespace
/// (they become URL path segments and query values).
fn check_name(key: &str, value: &str) -> Result<String, NomadError> {
    if value.is_empty()
        || value.len() > 128
        || value.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%' | '&')
        })
    {
        return Err(invalid(format!(
            "{key} `{value}`: at most 128 characters, without spaces, '/', '?', '#', '%' or '&'"
        )));
    }
    Ok(value.to_owned())
}

fn absolute(key: &str, value: &str) -> Result<PathBuf, NomadError> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(invalid(format!(
            "{key} `{value}` must be an absolute path on the agent's host"
        )))
    }
}

/// `GROUP/TASK` or `TASK`.
fn parse_task_ref(key: &str, value: &str) -> Result<TaskRef, NomadError> {
    let bad = || {
        invalid(format!(
            "{key} `{value}`: use GROUP/TASK (a task group and one of its tasks) or TASK"
        ))
    };
    let ok = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    match value.split_once('/') {
        Some((group, task)) if ok(group) && ok(task) && !task.contains('/') => Ok(TaskRef {
            group: Some(group.to_owned()),
            task: task.to_owned(),
        }),
        None if ok(value) => Ok(TaskRef {
            group: None,
            task: value.to_owned(),
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<NomadSettings, NomadError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        NomadSettings::parse(&map, &map)
    }

    #[test]
    fn address_and_job_are_required_and_checked() {
        let error = parse(&[("job", "web")])
            .expect_err("no address")
            .to_string();
        assert!(error.contains("address"), "{error}");
        let error = parse(&[("address", "http://n:4646")])
            .expect_err("no job")
            .to_string();
        assert!(error.contains("job"), "{error}");
        for bad in [
            "n:4646",
            "ftp://n",
            "http://",
            "http://n:4646/v1",
            "http://a b",
        ] {
            assert!(parse(&[("address", bad), ("job", "web")]).is_err(), "{bad}");
        }
        let settings =
            parse(&[("address", "https://n.example:4646/"), ("job", "web")]).expect("valid");
        assert_eq!(settings.address, "https://n.example:4646");
        assert_eq!(settings.namespace, "default");
        assert_eq!(
            settings.deploy_timeout,
            Duration::from_secs(DEFAULT_DEPLOY_TIMEOUT_SECONDS)
        );
        assert!(parse(&[("address", "http://n"), ("job", "a/b")]).is_err());
    }

    #[test]
    fn the_token_comes_from_a_secret_and_is_never_shown() {
        let values = BTreeMap::from([
            ("address".to_owned(), "http://n:4646".to_owned()),
            ("job".to_owned(), "web".to_owned()),
            ("token_secret".to_owned(), "s3cr3t-token".to_owned()),
        ]);
        let mut references = values.clone();
        let error = NomadSettings::parse(&values, &references).expect_err("plain text");
        assert!(error.to_string().contains("${secret.NAME}"), "{error}");
        references.insert("token_secret".into(), "${secret.nomad_token}".into());
        let settings = NomadSettings::parse(&values, &references).expect("from a secret");
        assert_eq!(settings.token.as_deref(), Some("s3cr3t-token"));
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }

    #[test]
    fn task_mapping_defaults_to_the_component_name() {
        let settings = parse(&[
            ("address", "http://n:4646"),
            ("job", "shop"),
            ("task.api", "backend/server"),
            ("task.worker", "jobs"),
            ("components", "api, worker"),
        ])
        .expect("valid");
        assert_eq!(
            settings.task_of("api"),
            TaskRef {
                group: Some("backend".into()),
                task: "server".into()
            }
        );
        assert_eq!(settings.task_of("worker").group, None);
        assert_eq!(settings.task_of("web").task, "web");
        assert!(settings.runs("api") && !settings.runs("web"));
        for bad in ["a/b/c", "/b", "a/", ""] {
            assert!(
                parse(&[("address", "http://n"), ("job", "j"), ("task.x", bad)]).is_err(),
                "{bad}"
            );
        }
        let error =
            parse(&[("address", "http://n"), ("job", "j"), ("image", "x")]).expect_err("unknown");
        assert!(
            error.to_string().contains("unknown setting `image`"),
            "{error}"
        );
    }
}
