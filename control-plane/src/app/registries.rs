//! Registries: where images are resolved and pulled, with sealed credentials.

use super::{not_found_as, now_ms, App};
use crate::domain::{DeploySpec, ImageRef, Registry};
use crate::error::{AppError, ErrorKind};
use crate::registry::RegistryAccess;

impl App {
    /// Adds or replaces a registry; the password is sealed before it is stored.
    pub async fn add_registry(
        &self,
        host: &str,
        insecure: bool,
        username: Option<String>,
        password: Option<String>,
    ) -> Result<Registry, AppError> {
        let probe = ImageRef::parse(&format!("{host}/probe")).map_err(|_| {
            AppError::invalid(format!("invalid registry host `{host}`: use HOST[:PORT]"))
        })?;
        if probe.registry != host {
            return Err(AppError::invalid(format!(
                "invalid registry host `{host}`: use HOST[:PORT]"
            )));
        }
        if username.is_some() != password.is_some() {
            return Err(AppError::invalid(
                "give both --username and a password, or neither",
            ));
        }
        let registry = Registry {
            host: host.to_owned(),
            insecure,
            username,
            password_sealed: password.map(|p| self.secrets.seal(&p)),
            updated_at_ms: now_ms(),
        };
        self.store.upsert_registry(&registry).await?;
        tracing::info!(registry = %host, insecure, authenticated = registry.username.is_some(), "registry saved");
        Ok(registry)
    }

    /// How to reach a registry: its stored settings, password unsealed.
    pub(super) async fn registry_access(&self, host: &str) -> Result<RegistryAccess, AppError> {
        let Some(registry) = self.store.get_registry(host).await? else {
            return Ok(RegistryAccess {
                insecure: false,
                credentials: None,
            });
        };
        let credentials = match (&registry.username, &registry.password_sealed) {
            (Some(user), Some(sealed)) => {
                let password = self
                    .secrets
                    .open(sealed)
                    .map_err(|e| AppError::internal("unsealing a registry password", &e))?;
                Some((user.clone(), password))
            }
            _ => None,
        };
        Ok(RegistryAccess {
            insecure: registry.insecure,
            credentials,
        })
    }

    /// Deletes a registry's settings and credentials. Refused while an unfinished
    /// deployment pulls from it (its agents would get no credentials).
    pub async fn delete_registry(&self, host: &str) -> Result<(), AppError> {
        for task in self.store.open_tasks_created_before(i64::MAX).await? {
            let Ok(spec) = serde_json::from_str::<DeploySpec>(&task.payload_json) else {
                continue;
            };
            if spec.registries().iter().any(|h| h == host) {
                return Err(AppError::new(
                    ErrorKind::Conflict,
                    "registry_in_use",
                    format!(
                        "cannot delete registry `{host}`: deployment {} pulls from it (wait for it or cancel it)",
                        task.deployment_id
                    ),
                ));
            }
        }
        self.store.delete_registry(host).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_registry",
                format!("no registry `{host}` is configured"),
            )
        })?;
        tracing::info!(registry = %host, "registry deleted");
        Ok(())
    }
}
