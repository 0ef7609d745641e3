//! The `ecs` target's settings (`stella target create … --set key=value`), parsed and
//! validated before any request is sent.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::EcsError;

/// The keys of the `ecs` kind, besides `container.<component>` and the `components` key
/// every kind takes.
pub const ECS_KEYS: &[&str] = &[
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

/// The prefix of the keys that map a component to the container that runs it.
pub const CONTAINER_KEY_PREFIX: &str = "container.";

/// Default of `deploy_timeout_seconds`: how long a rollout may take.
pub const DEFAULT_DEPLOY_TIMEOUT_SECONDS: u64 = 900;
/// Default of `poll_interval_ms`: how often the rollout state is read.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 5000;

/// The environment variables the agent's own credentials come from when the settings
/// name no secrets.
pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// See [`ENV_ACCESS_KEY_ID`].
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// See [`ENV_ACCESS_KEY_ID`].
pub const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// AWS credentials, in memory only.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsKeys {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
    /// Where they came from: `secrets` or `environment`.
    pub origin: &'static str,
}

// By hand so no key reaches a log line.
impl fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKeys")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl AwsKeys {
    /// What identifies the keys in the client cache without holding them.
    pub fn identity(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.access_key_id.as_bytes());
        hash.update([0]);
        hash.update(self.secret_access_key.as_bytes());
        hash.update([0]);
        hash.update(self.session_token.as_deref().unwrap_or("").as_bytes());
        hex::encode(hash.finalize())
    }
}

/// The settings of one `ecs` target.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    /// `region`, e.g. `eu-central-1`.
    pub region: String,
    /// `cluster`: name or ARN.
    pub cluster: String,
    /// `service`: name or ARN.
    pub service: String,
    /// `endpoint_url`: another ECS endpoint than the region's (a VPC endpoint, a test
    /// double).
    pub endpoint_url: Option<String>,
    /// The keys the requests are signed with.
    pub keys: AwsKeys,
    /// `container.<component>=NAME`.
    pub containers: BTreeMap<String, String>,
    /// `components`: the components this target deploys; `None` is all.
    pub components: Option<Vec<String>>,
    /// How long a rollout may take.
    pub deploy_timeout: Duration,
    /// How often the rollout state is read.
    pub poll_interval: Duration,
}

impl EcsSettings {
    /// Parses the settings to apply (`values`: secret references resolved) and checks
    /// that the credential settings are references (`references`: the settings as
    /// stored). `env` reads the agent's environment (a parameter so tests need not
    /// change the process's).
    pub fn parse(
        values: &BTreeMap<String, String>,
        references: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EcsSettings, EcsError> {
        for key in values.keys() {
            let known = ECS_KEYS.contains(&key.as_str())
                || key == "components"
                || (key.starts_with(CONTAINER_KEY_PREFIX)
                    && key.len() > CONTAINER_KEY_PREFIX.len());
            if !known {
                return Err(invalid(format!(
                    "unknown key {key} for kind ecs (known: {}, container.<component>, components)",
                    ECS_KEYS.join(", ")
                )));
            }
        }
        let get = |key: &str| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let required = |key: &str| {
            get(key)
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("{key} is required")))
        };
        let region = required("region")?;
        if !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(format!(
                "region {region:?} is not an AWS region name"
            )));
        }
        let cluster = required("cluster")?;
        let service = required("service")?;
        let endpoint_url = match get("endpoint_url") {
            None => None,
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                Some(url.trim_end_matches('/').to_owned())
            }
            Some(url) => {
                return Err(invalid(format!(
                    "endpoint_url {url:?} is not an http:// or https:// URL"
                )))
            }
        };
        let keys = keys(values, references, env)?;
        let containers = values
            .iter()
            .filter_map(|(key, value)| {
                key.strip_prefix(CONTAINER_KEY_PREFIX)
                    .map(|component| (component.to_owned(), value.trim().to_owned()))
            })
            .collect::<BTreeMap<_, _>>();
        if let Some((component, _)) = containers.iter().find(|(_, name)| name.is_empty()) {
            return Err(invalid(format!(
                "container.{component} is empty: name the container of the task definition"
            )));
        }
        let components = get("components").map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        });
        let deploy_timeout = Duration::from_secs(number(
            values,
            "deploy_timeout_seconds",
            DEFAULT_DEPLOY_TIMEOUT_SECONDS,
            1..=86_400,
        )?);
        let poll_interval = Duration::from_millis(number(
            values,
            "poll_interval_ms",
            DEFAULT_POLL_INTERVAL_MS,
            50..=60_000,
        )?);
        Ok(EcsSettings {
            region,
            cluster,
            service,
            endpoint_url,
            keys,
            containers,
            components,
            deploy_timeout,
            poll_interval,
        })
    }

    /// The container that runs `component`: `container.<component>`, or the container
    /// named like the component.
    pub fn container_of<'a>(&'a self, component: &'a str) -> &'a str {
        self.containers
            .get(component)
            .map_or(component, String::as_str)
    }

    /// The component a container runs, for containers no desired component names.
    pub fn component_of<'a>(&'a self, container: &'a str) -> &'a str {
        self.containers
            .iter()
            .find(|(_, name)| name.as_str() == container)
            .map_or(container, |(component, _)| component.as_str())
    }

    /// Whether `component` is one this target deploys.
    pub fn selects(&self, component: &str) -> bool {
        self.components
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == component))
    }

    /// What identifies the API endpoint and keys, for the client cache.
    pub fn client_key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.region,
            self.endpoint_url.as_deref().unwrap_or(""),
            self.keys.identity()
        )
    }
}

fn keys(
    values: &BTreeMap<String, String>,
    references: &BTreeMap<String, String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AwsKeys, EcsError> {
    let secret = |key: &str| -> Result<Option<String>, EcsError> {
        let Some(value) = values.get(key) else {
            return Ok(None);
        };
        let reference = references.get(key).map(String::as_str).unwrap_or("");
        if !is_secret_reference(reference) {
            return Err(invalid(format!(
                "{key} must be a reference to a secret, ${{secret.NAME}}, not the key itself"
            )));
        }
        if value.trim().is_empty() {
            return Err(invalid(format!(
                "the secret {key} references ({reference}) is empty"
            )));
        }
        Ok(Some(value.trim().to_owned()))
    };
    let access = secret("access_key_secret")?;
    let secret_key = secret("secret_key_secret")?;
    let token = secret("session_token_secret")?;
    match (access, secret_key) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(AwsKeys {
            access_key_id,
            secret_access_key,
            session_token: token,
            origin: "secrets",
        }),
        (None, None) => {
            if token.is_some() {
                return Err(invalid(
                    "session_token_secret needs access_key_secret and secret_key_secret".to_owned(),
                ));
            }
            let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
            match (var(ENV_ACCESS_KEY_ID), var(ENV_SECRET_ACCESS_KEY)) {
                (Some(access_key_id), Some(secret_access_key)) => Ok(AwsKeys {
                    access_key_id,
                    secret_access_key,
                    session_token: var(ENV_SESSION_TOKEN),
                    origin: "environment",
                }),
                _ => Err(invalid(format!(
                    "no AWS credentials: set access_key_secret and secret_key_secret (${{secret.NAME}}), \
                     or {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY} in the agent's environment"
                ))),
            }
        }
        _ => Err(invalid(
            "access_key_secret and secret_key_secret go together: set both or neither".to_owned(),
        )),
    }
}

fn number(
    values: &BTreeMap<String, String>,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, EcsError> {
    match values.get(key).map(|v| v.trim()) {
        None => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "{key} {text:?} must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

/// `${secret.NAME}` and nothing else.
fn is_secret_reference(value: &str) -> bool {
    value
        .strip_prefix("${secret.")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| !name.is_empty() && !name.contains(['{', '}', '$']))
}

fn invalid(message: String) -> EcsError {
    EcsError::InvalidSettings(message)
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

    const BASE: &[(&str, &str)] = &[
        ("region", "eu-central-1"),
        ("cluster", "prod"),
        ("service", "shop"),
    ];

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn aws_env(name: &str) -> Option<String> {
        match name {
            ENV_ACCESS_KEY_ID => Some("AKIAENV".into()),
            ENV_SECRET_ACCESS_KEY => Some("env-secret".into()),
            _ => None,
        }
    }

    #[test]
    fn credentials_come_from_secrets_or_the_environment() {
        let mut references = map(BASE);
        references.insert("access_key_secret".into(), "${secret.aws_id}".into());
        references.insert("secret_key_secret".into(), "${secret.aws_key}".into());
        let mut values = references.clone();
        values.insert("access_key_secret".into(), "AKIASECRET".into());
        values.insert("secret_key_secret".into(), "hunter2".into());
        let settings = EcsSettings::parse(&values, &references, aws_env).expect("secrets");
        assert_eq!(settings.keys.origin, "secrets");
        assert_eq!(settings.keys.access_key_id, "AKIASECRET");
        assert!(!format!("{settings:?}").contains("hunter2"));

        let settings = EcsSettings::parse(&map(BASE), &map(BASE), aws_env).expect("env");
        assert_eq!(settings.keys.origin, "environment");
        assert_eq!(settings.keys.secret_access_key, "env-secret");
        assert!(!format!("{settings:?}").contains("env-secret"));

        let error = EcsSettings::parse(&map(BASE), &map(BASE), no_env).expect_err("none");
        assert!(error.to_string().contains(ENV_ACCESS_KEY_ID), "{error}");

        // A key written into the settings instead of a reference is refused.
        let mut plain = map(BASE);
        plain.insert("access_key_secret".into(), "AKIA".into());
        plain.insert("secret_key_secret".into(), "plain".into());
        let error = EcsSettings::parse(&plain, &plain, no_env).expect_err("plain");
        assert!(error.to_string().contains("${secret.NAME}"), "{error}");
        assert!(!error.to_string().contains("plain\""), "{error}");

        let mut half = map(BASE);
        half.insert("access_key_secret".into(), "${secret.a}".into());
        let error = EcsSettings::parse(&half, &half, aws_env).expect_err("half");
        assert!(error.to_string().contains("both or neither"), "{error}");
    }

    #[test]
    fn required_keys_defaults_and_containers() {
        for key in ["region", "cluster", "service"] {
            let mut values = map(BASE);
            values.remove(key);
            let error = EcsSettings::parse(&values, &values, aws_env).expect_err(key);
            assert!(error.to_string().contains(key), "{error}");
        }
        let mut values = map(BASE);
        values.insert("container.api".into(), "shop-api".into());
        values.insert("components".into(), "api, web".into());
        values.insert("endpoint_url".into(), "http://127.0.0.1:4566/".into());
        let settings = EcsSettings::parse(&values, &values, aws_env).expect("parse");
        assert_eq!(settings.container_of("api"), "shop-api");
        assert_eq!(settings.container_of("web"), "web");
        assert_eq!(settings.component_of("shop-api"), "api");
        assert!(settings.selects("web") && !settings.selects("worker"));
        assert_eq!(
            settings.endpoint_url.as_deref(),
            Some("http://127.0.0.1:4566")
        );
        assert_eq!(
            settings.deploy_timeout,
            Duration::from_secs(DEFAULT_DEPLOY_TIMEOUT_SECONDS)
        );

        for (key, value) in [
            ("endpoint_url", "ftp://x"),
            ("deploy_timeout_seconds", "0"),
            ("poll_interval_ms", "ten"),
            ("region", "EU Central"),
            ("nope", "1"),
        ] {
            let mut values = map(BASE);
            values.insert(key.into(), value.into());
            let error = EcsSettings::parse(&values, &values, aws_env).expect_err(key);
            assert!(error.to_string().contains(key), "{key}: {error}");
        }
    }
}
