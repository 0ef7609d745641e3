//! Drift findings from agents, and remediation in `remediate` environments.

use std::sync::Arc;

use stella_proto::v1;

use super::{invalid, now_ms, App, NewEvent};
use crate::domain::{
    DeploySpec, Deployment, DeploymentKind, DriftKind, DriftMode, DriftRecord, Environment,
    EventKind, Target,
};
use crate::error::{AppError, ErrorKind};

/// Who remediation deployments are created by.
pub const DRIFT_ACTOR: &str = "stella:drift";

impl App {
    /// A drift finding from an agent: stored; in a `remediate` environment the
    /// promoted digests are redeployed to the target.
    pub async fn record_drift(
        self: &Arc<Self>,
        agent_id: &str,
        report: &v1::DriftReport,
    ) -> Result<(), AppError> {
        let target = self.store.get_target(&report.target).await?;
        if target.agent_id != agent_id {
            return Err(AppError::new(
                ErrorKind::PermissionDenied,
                "not_your_target",
                "target belongs to another agent",
            ));
        }
        let now = now_ms();
        if report.kind == "resolved" {
            // With `resolved_kind`, one finding ended while others of the target may last;
            // without (as agents before it always send), the whole target is clean.
            if report.resolved_kind.is_empty() {
                let resolved = self.store.resolve_drift(&target.name, now).await?;
                if !resolved.is_empty() {
                    tracing::info!(target = %target.name, "drift resolved");
                }
                for finding in &resolved {
                    self.emit_drift(
                        EventKind::DriftResolved,
                        &target,
                        &finding.component,
                        finding.kind,
                        None,
                    )
                    .await;
                }
            } else {
                let kind: DriftKind = report.resolved_kind.parse().map_err(invalid)?;
                let resolved = self
                    .store
                    .resolve_drift_finding(&target.name, &report.component, kind, now)
                    .await?;
                if resolved > 0 {
                    tracing::info!(target = %target.name, component = %report.component, kind = %kind, "drift finding resolved");
                    self.emit_drift(
                        EventKind::DriftResolved,
                        &target,
                        &report.component,
                        kind,
                        None,
                    )
                    .await;
                }
            }
            return Ok(());
        }
        let kind: DriftKind = report.kind.parse().map_err(invalid)?;
        let observed = if report.observed_at_unix_ms > 0 {
            report.observed_at_unix_ms
        } else {
            now
        };
        let opened = self
            .store
            .upsert_drift(&DriftRecord {
                target: target.name.clone(),
                component: report.component.clone(),
                kind,
                detail: report.detail.clone(),
                environment: target.environment.clone(),
                agent_id: agent_id.to_owned(),
                first_seen_at_ms: observed,
                last_seen_at_ms: observed,
                resolved_at_ms: None,
            })
            .await?;
        tracing::warn!(target = %target.name, component = %report.component, kind = %kind, detail = %report.detail, "drift reported");
        self.metrics.delivery.drift_found(kind.as_str());
        if opened {
            self.emit_drift(
                EventKind::DriftDetected,
                &target,
                &report.component,
                kind,
                Some(&report.detail),
            )
            .await;
        }
        let env = self.store.get_environment(&target.environment).await?;
        if env.drift_mode == DriftMode::Remediate {
            self.remediate(&env, &target).await;
        }
        Ok(())
    }

    /// Emits one drift event for one finding of a target: the environment, the release
    /// last deployed there, the target as subject, and what drifted.
    async fn emit_drift(
        &self,
        kind: EventKind,
        target: &Target,
        component: &str,
        drift: DriftKind,
        detail: Option<&str>,
    ) {
        // The release the target should run: its latest succeeded deployment's.
        let release = match self.store.latest_succeeded_task(&target.name).await {
            Ok(Some(task)) => serde_json::from_str::<DeploySpec>(&task.payload_json)
                .ok()
                .map(|spec| (spec.release, spec.version)),
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(%error, target = %target.name, "drift event: cannot read the target's release");
                None
            }
        };
        let what = if component.is_empty() {
            drift.as_str().to_owned()
        } else {
            format!("component {component}: {drift}")
        };
        let message = match (kind, detail) {
            (EventKind::DriftResolved, _) => {
                format!("drift resolved on target {} ({what})", target.name)
            }
            (_, Some(detail)) if !detail.is_empty() => {
                format!("drift on target {}: {what} ({detail})", target.name)
            }
            _ => format!("drift on target {}: {what}", target.name),
        };
        self.emit(NewEvent {
            kind,
            environment: Some(target.environment.clone()),
            release,
            subject: Some(target.name.clone()),
            message,
        })
        .await;
    }

    /// Redeploys to one target what was last deployed to it successfully (its desired
    /// state), as a `remediation` deployment: what a `remediate` environment does by
    /// itself, asked for by an operator. Refused with 422 `nothing_deployed` when nothing
    /// was, and 409 `deployment_in_progress` while a deployment to its environment runs.
    pub async fn remediate_target(
        self: &Arc<Self>,
        name: &str,
        requested_by: &str,
    ) -> Result<Deployment, AppError> {
        let target = self.target(name).await?;
        let env = self.environment(&target.environment).await?;
        self.redeploy_desired(&env, &target, requested_by).await
    }

    async fn redeploy_desired(
        self: &Arc<Self>,
        env: &Environment,
        target: &Target,
        requested_by: &str,
    ) -> Result<Deployment, AppError> {
        let Some(desired) = self.store.latest_succeeded_task(&target.name).await? else {
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "nothing_deployed",
                format!(
                    "nothing was deployed to target `{}` yet: there is no desired state to restore",
                    target.name
                ),
            ));
        };
        let spec: DeploySpec = serde_json::from_str(&desired.payload_json)
            .map_err(|error| AppError::internal("decoding a target's desired state", &error))?;
        let release = self.store.get_release(&spec.release, &spec.version).await?;
        self.deploy(
            &release,
            env,
            DeploymentKind::Remediation,
            requested_by,
            Some(target),
        )
        .await
    }

    async fn remediate(self: &Arc<Self>, env: &Environment, target: &Target) {
        match self.redeploy_desired(env, target, DRIFT_ACTOR).await {
            Ok(deployment) => {
                tracing::info!(deployment_id = %deployment.id, target = %target.name, "drift remediation started");
            }
            Err(error) if error.code == "deployment_in_progress" => {
                tracing::debug!(target = %target.name, "remediation waits for the running deployment");
            }
            Err(error) if error.code == "nothing_deployed" => {}
            Err(error) => {
                tracing::warn!(target = %target.name, %error, "drift remediation failed to start");
            }
        }
    }
}
