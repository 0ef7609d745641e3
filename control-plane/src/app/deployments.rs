//! Promotions, rollbacks and the deployments they create: one stored task per target
//! before anything is sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{not_found_as, now_ms, App};
use crate::domain::{
    DeploySpec, Deployment, DeploymentKind, DeploymentState, Environment, Release, Target, Task,
    TaskState, User,
};
use crate::error::{AppError, ErrorKind};

/// RFC 8785 canonical JSON of a value whose numbers are integers: sorted keys, no
/// white space (serde_json's map is ordered and prints integers canonically).
pub fn canonical_json(value: &serde_json::Value) -> String {
    value.to_string()
}

/// `sha256:<hex>` of bytes.
pub fn sha256_id(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl App {
    /// Promotes a release to an environment. Without gates the decision is to deploy:
    /// the decision record is content-addressed, and one task per target is stored
    /// before anything is sent.
    pub async fn promote(
        self: &Arc<Self>,
        release: &str,
        version: &str,
        environment: &str,
        requested_by: &User,
    ) -> Result<Deployment, AppError> {
        let release = self
            .store
            .get_release(release, version)
            .await
            .map_err(|e| {
                not_found_as(
                    e,
                    ErrorKind::NotFound,
                    "unknown_release",
                    format!("unknown release {release}@{version}"),
                )
            })?;
        let env = self.store.get_environment(environment).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_environment",
                format!("unknown environment `{environment}`"),
            )
        })?;
        self.deploy(
            &release,
            &env,
            DeploymentKind::Promotion,
            &requested_by.name,
            None,
        )
        .await
    }

    /// Creates a deployment of `release` to `env` (all its targets, or one) and
    /// dispatches it.
    pub(super) async fn deploy(
        self: &Arc<Self>,
        release: &Release,
        env: &Environment,
        kind: DeploymentKind,
        requested_by: &str,
        only_target: Option<&Target>,
    ) -> Result<Deployment, AppError> {
        if let Some(active) = self.store.active_deployment(&env.name).await? {
            return Err(AppError::new(
                ErrorKind::Conflict,
                "deployment_in_progress",
                format!(
                    "deployment {} to {} is still {}",
                    active.id, env.name, active.state
                ),
            ));
        }
        let targets = match only_target {
            Some(target) => vec![target.clone()],
            None => self.store.list_targets(Some(&env.name)).await?,
        };
        if targets.is_empty() {
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "no_targets",
                format!(
                    "environment `{}` has no targets: add one with `stella target create`",
                    env.name
                ),
            ));
        }
        let now = now_ms();
        let decision = serde_json::json!({
            "kind": kind.as_str(),
            "release": release.name,
            "version": release.version,
            "components": release.components.iter().map(|c| (c.name.clone(), c.image.clone())).collect::<BTreeMap<_, _>>(),
            "environment": env.name,
            "targets": targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            "gates": [],
            "outcome": "allowed",
            "requested_by": requested_by,
            "requested_at_ms": now,
        });
        let decision_id = sha256_id(canonical_json(&decision).as_bytes());
        let deployment = Deployment {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            environment: env.name.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            decision_id,
            state: DeploymentState::Pending,
            message: None,
            created_by: requested_by.to_owned(),
            created_at_ms: now,
            finished_at_ms: None,
        };
        let deadline =
            now + i64::try_from(self.config.task_deadline_seconds).unwrap_or(3600) * 1000;
        let mut tasks = Vec::with_capacity(targets.len());
        for target in &targets {
            let spec = DeploySpec::new(&deployment, release, target);
            if spec.components.is_empty() {
                return Err(AppError::invalid(format!(
                    "target `{}` selects no component of {}@{}",
                    target.name, release.name, release.version
                )));
            }
            let payload_json = serde_json::to_string(&spec)
                .map_err(|e| AppError::internal("encoding a deploy payload", &e))?;
            tasks.push(Task {
                id: uuid::Uuid::now_v7().to_string(),
                deployment_id: deployment.id.clone(),
                target: target.name.clone(),
                agent_id: target.agent_id.clone(),
                epoch: 0,
                state: TaskState::Pending,
                payload_json,
                message: None,
                deadline_at_ms: deadline,
                created_at_ms: now,
                finished_at_ms: None,
            });
        }
        self.store.create_deployment(&deployment, &tasks).await?;
        self.store
            .append_log(
                &deployment.id,
                "",
                now,
                &format!(
                    "{} of {}@{} to {} ({} target{}) requested by {requested_by}",
                    kind,
                    release.name,
                    release.version,
                    env.name,
                    tasks.len(),
                    if tasks.len() == 1 { "" } else { "s" }
                ),
            )
            .await?;
        tracing::info!(deployment_id = %deployment.id, release = %release.name, version = %release.version, environment = %env.name, %kind, "deployment created");
        let mut agents: Vec<&str> = tasks.iter().map(|t| t.agent_id.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        for agent in agents {
            self.dispatch_to(agent).await;
        }
        Ok(deployment)
    }

    /// Redeploys the version deployed successfully before the current one (or `to`).
    pub async fn rollback(
        self: &Arc<Self>,
        environment: &str,
        to: Option<&str>,
        requested_by: &User,
    ) -> Result<Deployment, AppError> {
        let env = self.store.get_environment(environment).await?;
        let history = self.store.succeeded_deployments(&env.name, 100).await?;
        let Some(current) = history.first() else {
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "nothing_to_roll_back",
                format!("nothing was deployed successfully to `{}` yet", env.name),
            ));
        };
        let target_version = match to {
            Some(version) => version.to_owned(),
            None => history
                .iter()
                .find(|d| d.release != current.release || d.version != current.version)
                .map(|d| d.version.clone())
                .ok_or_else(|| {
                    AppError::new(
                        ErrorKind::FailedPrecondition,
                        "nothing_to_roll_back",
                        format!(
                            "`{}` has no earlier successful version than {}",
                            env.name, current.version
                        ),
                    )
                })?,
        };
        let release_name = history
            .iter()
            .find(|d| d.version == target_version)
            .map_or_else(|| current.release.clone(), |d| d.release.clone());
        let release = self
            .store
            .get_release(&release_name, &target_version)
            .await
            .map_err(|e| {
                not_found_as(
                    e,
                    ErrorKind::NotFound,
                    "unknown_release",
                    format!("unknown release {release_name}@{target_version}"),
                )
            })?;
        self.deploy(
            &release,
            &env,
            DeploymentKind::Rollback,
            &requested_by.name,
            None,
        )
        .await
    }
}
