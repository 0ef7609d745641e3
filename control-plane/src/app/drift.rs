//! Drift findings from agents, and remediation in `remediate` environments.

use std::sync::Arc;

use stella_proto::v1;

use super::{invalid, now_ms, App};
use crate::domain::{
    DeploySpec, DeploymentKind, DriftKind, DriftMode, DriftRecord, Environment, Target,
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
                if resolved > 0 {
                    tracing::info!(target = %target.name, "drift resolved");
                }
            } else {
                let kind: DriftKind = report.resolved_kind.parse().map_err(invalid)?;
                let resolved = self
                    .store
                    .resolve_drift_finding(&target.name, &report.component, kind, now)
                    .await?;
                if resolved > 0 {
                    tracing::info!(target = %target.name, component = %report.component, kind = %kind, "drift finding resolved");
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
        self.store
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
        let env = self.store.get_environment(&target.environment).await?;
        if env.drift_mode == DriftMode::Remediate {
            self.remediate(&env, &target).await;
        }
        Ok(())
    }

    async fn remediate(self: &Arc<Self>, env: &Environment, target: &Target) {
        let desired = match self.store.latest_succeeded_task(&target.name).await {
            Ok(Some(task)) => task,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "remediation: cannot read the desired state");
                return;
            }
        };
        let spec: DeploySpec = match serde_json::from_str(&desired.payload_json) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(%error, "remediation: undecodable desired state");
                return;
            }
        };
        let release = match self.store.get_release(&spec.release, &spec.version).await {
            Ok(release) => release,
            Err(error) => {
                tracing::warn!(%error, "remediation: release gone");
                return;
            }
        };
        match self
            .deploy(
                &release,
                env,
                DeploymentKind::Remediation,
                DRIFT_ACTOR,
                Some(target),
            )
            .await
        {
            Ok(deployment) => {
                tracing::info!(deployment_id = %deployment.id, target = %target.name, "drift remediation started");
            }
            Err(error) if error.code == "deployment_in_progress" => {
                tracing::debug!(target = %target.name, "remediation waits for the running deployment");
            }
            Err(error) => {
                tracing::warn!(target = %target.name, %error, "drift remediation failed to start");
            }
        }
    }
}
