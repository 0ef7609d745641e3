//! Targets: the kinds, their settings, and the places an environment deploys to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Component, Invalid, Release};
use kinds::{
    validate_compose, validate_ecs, validate_nomad, validate_ssh, validate_winrm,
    validate_winrm_value, COMMON_KEYS, COMPOSE_KEYS, DOCKER_KEYS, ECS_KEYS, NOMAD_KEYS, SSH_KEYS,
    WINRM_KEYS,
};
use values::validate_value;

mod kinds;
#[cfg(test)]
mod tests;
mod values;

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
    /// A simulated target that changes nothing anywhere: it exists for the benches and
    /// the fault suite only (their in-process agents drive it), and its settings are
    /// free-form. No shipped agent advertises it, so no real target can be given to it.
    Sim,
}

impl TargetKind {
    /// All kinds, in documentation order.
    pub const ALL: [TargetKind; 7] = [
        TargetKind::Docker,
        TargetKind::Compose,
        TargetKind::Ssh,
        TargetKind::Winrm,
        TargetKind::Ecs,
        TargetKind::Nomad,
        TargetKind::Sim,
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
            TargetKind::Sim => "sim",
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
            TargetKind::Sim => &[],
        }
    }

    /// Refuses unknown keys, values the kind cannot use, and a set of settings the kind
    /// cannot work with (a required key missing, keys that exclude each other).
    pub fn validate_settings(self, settings: &BTreeMap<String, String>) -> Result<(), Invalid> {
        for (key, value) in settings {
            super::references(value)
                .map_err(|Invalid(e)| Invalid(format!("setting {key}: {e}")))?;
            if self == TargetKind::Sim {
                // Free-form: the simulator reads what it wants (see `kinds.rs`).
                continue;
            }
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
impl FromStr for TargetKind {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        TargetKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                Invalid(format!(
                    "unknown target kind `{s}`: use docker, compose, ssh, winrm, ecs or nomad (or sim, for benches and the fault suite)"
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
