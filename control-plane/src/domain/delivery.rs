//! Releases, environments, targets, deployments and drift: the delivery model. Types
//! and rules only; no IO.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that breaks a domain rule; the message is fit for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A content digest, `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(text: &str) -> Result<Digest, Invalid> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| Invalid(format!("digest `{text}` must start with sha256:")))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Invalid(format!(
                "digest `{text}` must be sha256: and 64 lowercase hex digits"
            )));
        }
        Ok(Digest(text.to_owned()))
    }

    /// The text, `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = Invalid;
    fn try_from(text: String) -> Result<Self, Invalid> {
        Digest::parse(&text)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

/// An OCI image reference, `[registry/]repository[:tag][@digest]`, normalised as Docker
/// does: without a registry part it is `docker.io`, and `library/` is added to one-part
/// Docker Hub names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Registry host (and port): `registry.example.com:5000`, `127.0.0.1:5000`, `docker.io`.
    pub registry: String,
    /// Repository path: `team/app`.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference; refuses anything Docker would refuse.
    pub fn parse(text: &str) -> Result<ImageRef, Invalid> {
        let bad = |why: &str| Invalid(format!("invalid image reference `{text}`: {why}"));
        if text.is_empty() || text.len() > 512 || text.chars().any(char::is_whitespace) {
            return Err(bad("empty, too long or contains white space"));
        }
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest).map_err(|e| bad(&e.0))?)),
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (
                    &name_and_tag[..split],
                    Some(name_and_tag[split + 1..].to_owned()),
                )
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ if name.contains('/') => ("docker.io".to_owned(), name.to_owned()),
            _ => ("docker.io".to_owned(), format!("library/{name}")),
        };
        let valid_repository = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            });
        if !valid_repository {
            return Err(bad(
                "repository must be lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        if registry.is_empty() {
            return Err(bad("empty registry"));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository@digest`: the form a release pins.
    pub fn pinned(&self, digest: &Digest) -> String {
        format!("{}/{}@{}", self.registry, self.repository, digest)
    }

    /// The tag to resolve: the given one, or `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// Whether the registry is on a loopback address (plain HTTP allowed, as with Docker).
    pub fn is_loopback_registry(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => self.registry.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What an environment does when an agent reports drift.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftMode {
    /// Record and show it.
    #[default]
    Report,
    /// Also redeploy the promoted digests.
    Remediate,
}

impl FromStr for DriftMode {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "report" => Ok(DriftMode::Report),
            "remediate" => Ok(DriftMode::Remediate),
            other => Err(Invalid(format!(
                "unknown drift mode `{other}`: use report or remediate"
            ))),
        }
    }
}

impl fmt::Display for DriftMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriftMode::Report => "report",
            DriftMode::Remediate => "remediate",
        })
    }
}

/// An environment: a stage releases are promoted through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Unique name.
    pub name: String,
    /// The environment a release must reach before this one.
    pub after: Option<String>,
    /// What drift does here.
    pub drift_mode: DriftMode,
    /// Creation time.
    pub created_at_ms: i64,
}

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
                        Invalid(format!("health_timeout_seconds `{value}` is not a number"))
                    })?;
                    if seconds == 0 || seconds > 3600 {
                        return Err(Invalid("health_timeout_seconds must be 1 to 3600".into()));
                    }
                }
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

/// One component of a release: an image pinned by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Component name.
    pub name: String,
    /// The reference as given at creation (may carry a tag).
    pub source: String,
    /// `registry/repository@sha256:…`.
    pub image: String,
    /// The digest.
    pub digest: Digest,
}

/// An immutable release: named, versioned set of digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Release name.
    pub name: String,
    /// Version (free text, unique per name).
    pub version: String,
    /// Components, sorted by name.
    pub components: Vec<Component>,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at_ms: i64,
}

impl Release {
    /// Whether two releases pin the same components to the same digests.
    pub fn same_content(&self, other: &Release) -> bool {
        self.components.len() == other.components.len()
            && self
                .components
                .iter()
                .zip(&other.components)
                .all(|(a, b)| a.name == b.name && a.image == b.image)
    }
}

/// A registry Stella resolves tags against and agents pull from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Host and port, as in image references.
    pub host: String,
    /// Plain HTTP, or HTTPS without certificate verification, allowed (as Docker's
    /// insecure registries).
    pub insecure: bool,
    /// User name for basic or token auth.
    pub username: Option<String>,
    /// The password, sealed with the server's secrets key (never plain text).
    pub password_sealed: Option<String>,
    /// Creation or last change.
    pub updated_at_ms: i64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field(
                "password",
                &self.password_sealed.as_ref().map(|_| "<sealed>"),
            )
            .finish()
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The stored and shown name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self, Invalid> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(Invalid(format!("unknown {} `{other}`", stringify!($name)))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Why a deployment exists.
    DeploymentKind {
        /// A promotion to the environment.
        Promotion = "promotion",
        /// A rollback to an earlier version.
        Rollback = "rollback",
        /// A redeploy of the promoted digests after drift.
        Remediation = "remediation",
    }
);

string_enum!(
    /// Where a deployment is.
    DeploymentState {
        /// Tasks created, none finished.
        Pending = "pending",
        /// Some tasks finished.
        Running = "running",
        /// Every task succeeded.
        Succeeded = "succeeded",
        /// A task failed or expired.
        Failed = "failed",
    }
);

string_enum!(
    /// Where a task is.
    TaskState {
        /// Stored, not yet sent.
        Pending = "pending",
        /// Sent to its agent under the current epoch.
        Assigned = "assigned",
        /// The agent reported success.
        Succeeded = "succeeded",
        /// The agent reported failure, or the deadline passed.
        Failed = "failed",
    }
);

impl DeploymentState {
    /// Whether nothing will change it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, DeploymentState::Succeeded | DeploymentState::Failed)
    }
}

impl TaskState {
    /// Whether nothing will change it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed)
    }
}

/// A deployment: one release version rolled out to the targets of one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Id (UUID v7).
    pub id: String,
    /// Why it exists.
    pub kind: DeploymentKind,
    /// Environment name.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// The decision record it carries out (`sha256:…`).
    pub decision_id: String,
    /// Where it is.
    pub state: DeploymentState,
    /// Why it failed, or a summary.
    pub message: Option<String>,
    /// Who asked for it (`stella:drift` for remediation).
    pub created_by: String,
    /// Creation time.
    pub created_at_ms: i64,
    /// When it reached a terminal state.
    pub finished_at_ms: Option<i64>,
}

/// One target's share of a deployment, delivered to its agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Id (UUID v7); the agent's journal key.
    pub id: String,
    /// Its deployment.
    pub deployment_id: String,
    /// Target name.
    pub target: String,
    /// The agent that drives the target.
    pub agent_id: String,
    /// Lease epoch: increases at every (re)assignment; older results are discarded.
    pub epoch: i64,
    /// Where it is.
    pub state: TaskState,
    /// The `deploy` payload without registry credentials (added when sending).
    pub payload_json: String,
    /// The agent's message or the failure reason.
    pub message: Option<String>,
    /// After this the task fails if unfinished.
    pub deadline_at_ms: i64,
    /// Creation time.
    pub created_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
}

/// A progress or log line of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Increasing per store (use it to follow).
    pub seq: i64,
    /// Its deployment.
    pub deployment_id: String,
    /// The task that reported it (empty for server lines).
    pub task_id: String,
    /// When.
    pub at_ms: i64,
    /// The line.
    pub message: String,
}

string_enum!(
    /// What an agent found different from the desired state.
    DriftKind {
        /// The container runs another image than the promoted digest.
        ImageChanged = "image_changed",
        /// The component is not running.
        Missing = "missing",
        /// Something runs under the target's labels that was not deployed.
        Unexpected = "unexpected",
        /// The configuration differs from the target's settings.
        ConfigChanged = "config_changed",
        /// The sticker does not match its digest or the container.
        StickerTampered = "sticker_tampered",
    }
);

/// A drift finding, open until the agent reports the target clean again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRecord {
    /// Target name.
    pub target: String,
    /// Component name (may be empty for target-wide findings).
    pub component: String,
    /// What differs.
    pub kind: DriftKind,
    /// Details from the agent.
    pub detail: String,
    /// The target's environment.
    pub environment: String,
    /// The reporting agent.
    pub agent_id: String,
    /// First report.
    pub first_seen_at_ms: i64,
    /// Latest report.
    pub last_seen_at_ms: i64,
    /// When the agent reported the target clean again.
    pub resolved_at_ms: Option<i64>,
}

/// What one target must run: the `deploy` task payload (JSON in `TaskAssignment`), and
/// the record of what a succeeded task put there (the agent's desired state). The JSON
/// shape is a contract with agents (docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    /// The deployment this task belongs to.
    pub deployment_id: String,
    /// The decision being carried out.
    pub decision_id: String,
    /// Environment name.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// The target.
    pub target: TargetSpec,
    /// Components to run, pinned by digest.
    pub components: Vec<ComponentSpec>,
}

/// A target as an agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Target name.
    pub name: String,
    /// Kind (`docker`, …).
    pub kind: String,
    /// Settings.
    pub settings: BTreeMap<String, String>,
}

/// A component as an agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Component name.
    pub name: String,
    /// `registry/repository@sha256:…`.
    pub image: String,
}

impl DeploySpec {
    /// The spec of one target's share of a deployment.
    pub fn new(deployment: &Deployment, release: &Release, target: &Target) -> DeploySpec {
        DeploySpec {
            deployment_id: deployment.id.clone(),
            decision_id: deployment.decision_id.clone(),
            environment: deployment.environment.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            target: TargetSpec {
                name: target.name.clone(),
                kind: target.kind.as_str().to_owned(),
                settings: target.settings.clone(),
            },
            components: TargetKind::selected_components(&target.settings, release)
                .into_iter()
                .map(|c| ComponentSpec {
                    name: c.name.clone(),
                    image: c.image.clone(),
                })
                .collect(),
        }
    }

    /// Registries the components are pulled from (`host[:port]`), sorted, unique.
    pub fn registries(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .components
            .iter()
            .filter_map(|c| ImageRef::parse(&c.image).ok().map(|r| r.registry))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_references_parse_as_docker_does() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").expect("valid");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback_registry());
        let r = ImageRef::parse("busybox").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.tag_or_latest(), "latest");
        assert!(!r.is_loopback_registry());
        let r = ImageRef::parse(&format!("localhost:5000/app@{D}")).expect("valid");
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(
            r.pinned(&Digest::parse(D).expect("digest")),
            format!("localhost:5000/app@{D}")
        );
        let r = ImageRef::parse(&format!("registry.example.com/app:v2@{D}")).expect("valid");
        assert_eq!(r.tag.as_deref(), Some("v2"));
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "Upper/Case",
            "app:",
            "app:bad tag",
            "app@sha256:123",
            "app@md5:0123",
            "registry.example.com/",
            "a//b",
            "app:-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} should be refused");
        }
    }

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
}
