//! One deployment to an ECS service: a new task definition revision with the release's
//! images, the service updated to it, the rollout followed to its end, stickers as tags.
//!
//! Every step first looks at what the service runs, so a task delivered again (after a
//! crash, or for remediation) does only what is left: a service that already runs the
//! images under this deployment's stickers is left alone, one that runs them under other
//! tags is only re-tagged.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ecs::types::ContainerDefinition;
use stella_agent_core::{
    CancellationToken, ComponentSpec, DeployTask, Progress, Sticker, StickerFields,
};
use tokio::time::Instant;

use crate::api::{Api, Revision, ServiceView};
use crate::error::EcsError;
use crate::settings::EcsSettings;
use crate::stickers;

/// What a deployment did.
#[derive(Debug)]
pub(crate) struct Deployed {
    pub stickers: Vec<Sticker>,
    pub summary: String,
}

/// One deployment, with what it needs.
pub(crate) struct Deploy<'a> {
    pub api: &'a Api,
    pub task: &'a DeployTask,
    pub settings: &'a EcsSettings,
    pub components: &'a [&'a ComponentSpec],
    pub progress: &'a Progress,
    pub cancel: &'a CancellationToken,
}

impl Deploy<'_> {
    pub async fn run(&self) -> Result<Deployed, EcsError> {
        let service = self.api.active_service().await?;
        let current = self.api.revision(&service.task_definition).await?;
        self.check_containers(&current)?;
        let restore_count = restore_count(&service);

        if self.runs_desired_images(&current) {
            return self.settle(service, current, restore_count).await;
        }

        let stickers = self.new_stickers();
        let tags = stickers::tags_of(&stickers)?;
        let revision = match self.previous_revision(&service).await? {
            Some(previous) => {
                self.progress.report(format!(
                    "{} already runs these images: the service goes back to it",
                    previous.arn
                ));
                stickers::check_count(&previous.tags, &tags)?;
                self.api.retag(&previous.arn, &previous.tags, &tags).await?;
                previous.arn
            }
            None => {
                stickers::check_count(&current.tags, &tags)?;
                let containers = self.containers_with_images(&current);
                let arn = self
                    .api
                    .register(&current.definition, containers, &tags)
                    .await?;
                self.progress.report(format!(
                    "registered {arn} from {} with {}",
                    current.arn,
                    self.describe_images()
                ));
                arn
            }
        };
        self.check_cancel()?;
        self.api.update(&revision, restore_count).await?;
        self.progress.report(format!(
            "updated service {} in cluster {} to {revision}{}",
            self.settings.service,
            self.settings.cluster,
            restore_count.map_or(String::new(), |n| format!(" (desired count back to {n})"))
        ));
        self.wait_for_rollout(&revision).await?;
        let mut service_tags = tags;
        service_tags.insert(
            stickers::PREVIOUS_TASK_DEFINITION.to_owned(),
            current.arn.clone(),
        );
        self.tag_service(&service, service_tags).await?;
        Ok(Deployed {
            summary: format!(
                "{} {} on {}: service {} runs {revision} (was {})",
                self.task.release,
                self.task.version,
                self.task.target.name,
                self.settings.service,
                current.arn
            ),
            stickers,
        })
    }

    /// The service already runs the images: wait for its rollout if one is under way,
    /// then make its tags and its revision's tags this deployment's stickers.
    async fn settle(
        &self,
        service: ServiceView,
        current: Revision,
        restore_count: Option<i32>,
    ) -> Result<Deployed, EcsError> {
        let existing: Option<Vec<Sticker>> = self
            .components
            .iter()
            .map(|c| {
                stickers::read(&service.tags, &self.task.target.name, &c.name)
                    .filter(|s| s.verify() && self.task.wrote(s))
            })
            .collect();
        let kept = existing.is_some();
        let stickers = existing.unwrap_or_else(|| self.new_stickers());
        let tags = stickers::tags_of(&stickers)?;
        if let Some(count) = restore_count {
            self.api.update(&current.arn, Some(count)).await?;
            self.progress.report(format!(
                "service {} was scaled to 0: desired count back to {count}",
                self.settings.service
            ));
        }
        self.wait_for_rollout(&current.arn).await?;
        let revision_tagged = self.components.iter().all(|c| {
            current.tags.get(&stickers::digest_key(&c.name))
                == tags.get(&stickers::digest_key(&c.name))
        });
        if !revision_tagged {
            stickers::check_count(&current.tags, &tags)?;
            self.api.retag(&current.arn, &current.tags, &tags).await?;
        }
        let mut service_tags = tags;
        if let Some(previous) = service.tags.get(stickers::PREVIOUS_TASK_DEFINITION) {
            service_tags.insert(
                stickers::PREVIOUS_TASK_DEFINITION.to_owned(),
                previous.clone(),
            );
        }
        let service_tagged = kept
            && service_tags
                .iter()
                .all(|(k, v)| service.tags.get(k) == Some(v))
            && restore_count.is_none();
        if !service_tagged {
            self.tag_service(&service, service_tags).await?;
        }
        let what = match (kept && revision_tagged, restore_count) {
            (true, None) => "already ran this deployment".to_owned(),
            (_, Some(count)) => format!("scaled back to {count}"),
            (false, None) => "already ran these images; stickers written".to_owned(),
        };
        self.progress.report(format!(
            "service {} runs {}: {what}",
            self.settings.service, current.arn
        ));
        Ok(Deployed {
            summary: format!(
                "{} {} on {}: service {} runs {} ({what})",
                self.task.release,
                self.task.version,
                self.task.target.name,
                self.settings.service,
                current.arn
            ),
            stickers,
        })
    }

    async fn tag_service(
        &self,
        service: &ServiceView,
        mut tags: BTreeMap<String, String>,
    ) -> Result<(), EcsError> {
        let count = if service.desired_count > 0 {
            Some(service.desired_count)
        } else {
            restore_count(service)
        };
        if let Some(count) = count {
            tags.insert(stickers::DESIRED_COUNT.to_owned(), count.to_string());
        }
        stickers::check_count(&service.tags, &tags)?;
        self.api.retag(&service.arn, &service.tags, &tags).await?;
        self.progress.report(format!(
            "stickers written as tags on service {} and its task definition",
            self.settings.service
        ));
        Ok(())
    }

    /// Follows the deployment of `revision` through `rolloutState` until it is
    /// `COMPLETED`, `FAILED` (with the circuit breaker's rollback named), replaced, or
    /// the deploy timeout is up.
    async fn wait_for_rollout(&self, revision: &str) -> Result<(), EcsError> {
        let timeout = self.settings.deploy_timeout;
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let service = self.api.active_service().await?;
            match rollout_of(&service, revision) {
                Rollout::Completed(line) => {
                    if line != last {
                        self.progress.report(line);
                    }
                    return Ok(());
                }
                Rollout::Failed(message) => {
                    self.progress.report(message.clone());
                    return Err(EcsError::Rollout(message));
                }
                Rollout::InProgress(line) => {
                    if line != last {
                        self.progress.report(line.clone());
                        last = line;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(EcsError::Rollout(format!(
                    "the rollout of {revision} did not complete within {} s (last seen: {last}); \
                     ECS goes on with it, the deployment is failed",
                    timeout.as_secs()
                )));
            }
            let wait = self
                .settings
                .poll_interval
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(10));
            tokio::select! {
                () = self.cancel.cancelled() => return Err(EcsError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn check_cancel(&self) -> Result<(), EcsError> {
        if self.cancel.is_cancelled() {
            Err(EcsError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn check_containers(&self, current: &Revision) -> Result<(), EcsError> {
        for component in self.components {
            let name = self.settings.container_of(&component.name);
            if !current.containers().iter().any(|c| c.name() == Some(name)) {
                let names: Vec<&str> = current
                    .containers()
                    .iter()
                    .filter_map(ContainerDefinition::name)
                    .collect();
                return Err(EcsError::Failed(format!(
                    "the task definition {} has no container {name} for component {} \
                     (it has {}); set container.{}=NAME",
                    current.arn,
                    component.name,
                    names.join(", "),
                    component.name
                )));
            }
        }
        Ok(())
    }

    fn runs_desired_images(&self, revision: &Revision) -> bool {
        self.components.iter().all(|c| {
            revision.image_of(self.settings.container_of(&c.name)) == Some(c.image.as_str())
        })
    }

    /// The revision the service ran before the last deploy, if it runs exactly the
    /// desired images (a rollback): the service goes back to it instead of a new
    /// revision.
    async fn previous_revision(&self, service: &ServiceView) -> Result<Option<Revision>, EcsError> {
        let Some(previous) = service.tags.get(stickers::PREVIOUS_TASK_DEFINITION) else {
            return Ok(None);
        };
        match self.api.revision(previous).await {
            Ok(revision) if self.runs_desired_images(&revision) => Ok(Some(revision)),
            Ok(_) => Ok(None),
            Err(error) => {
                tracing::info!(
                    revision = %previous,
                    error = %error,
                    "the previous task definition cannot be read; registering a new one"
                );
                Ok(None)
            }
        }
    }

    fn containers_with_images(&self, current: &Revision) -> Vec<ContainerDefinition> {
        current
            .containers()
            .iter()
            .map(|container| {
                let mut container = container.clone();
                if let Some(component) = self
                    .components
                    .iter()
                    .find(|c| container.name() == Some(self.settings.container_of(&c.name)))
                {
                    container.image = Some(component.image.clone());
                }
                container
            })
            .collect()
    }

    fn describe_images(&self) -> String {
        self.components
            .iter()
            .map(|c| format!("{}={}", self.settings.container_of(&c.name), c.image))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// This deployment's stickers, one `deployed_at` for all.
    fn new_stickers(&self) -> Vec<Sticker> {
        let agent_id = self.progress.agent_id();
        let mut deployed_at = None;
        self.components
            .iter()
            .map(|component| {
                let mut fields: StickerFields = self.task.sticker(component, agent_id).fields();
                let at = deployed_at.get_or_insert_with(|| fields.deployed_at.clone());
                fields.deployed_at = at.clone();
                Sticker::seal(fields)
            })
            .collect()
    }
}

/// A service scaled to 0 whose last deploy recorded a desired count: that count.
fn restore_count(service: &ServiceView) -> Option<i32> {
    if service.desired_count > 0 {
        return None;
    }
    service
        .tags
        .get(stickers::DESIRED_COUNT)
        .and_then(|count| count.parse::<i32>().ok())
        .filter(|count| *count > 0)
}

/// Where the rollout of `revision` stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rollout {
    InProgress(String),
    Completed(String),
    Failed(String),
}

/// Reads the rollout of `revision` from the service: its deployment's `rolloutState`.
/// A service whose deployments do not name the revision but which runs it (a deployment
/// controller that keeps one entry) is judged by its primary deployment.
pub(crate) fn rollout_of(service: &ServiceView, revision: &str) -> Rollout {
    let ours = service
        .deployments
        .iter()
        .find(|d| d.task_definition == revision)
        .or_else(|| {
            (service.task_definition == revision)
                .then(|| service.primary())
                .flatten()
        });
    let Some(deployment) = ours else {
        let now = service
            .primary()
            .map_or(service.task_definition.as_str(), |p| {
                p.task_definition.as_str()
            });
        return Rollout::Failed(format!(
            "the service no longer rolls to {revision}: its primary deployment runs {now} \
             (rolled back by the deployment circuit breaker, or updated by someone else)"
        ));
    };
    let state = deployment.rollout_state.as_deref();
    let line = format!(
        "rollout {}: {}/{} running, {} pending, {} failed tasks",
        state.unwrap_or("(no rollout state)"),
        deployment.running_count,
        deployment.desired_count,
        deployment.pending_count,
        deployment.failed_tasks
    );
    match state {
        Some("COMPLETED") => Rollout::Completed(line),
        Some("FAILED") => {
            let reason = deployment
                .rollout_state_reason
                .as_deref()
                .unwrap_or("no reason given");
            let back = service
                .primary()
                .filter(|p| p.task_definition != revision && p.id != deployment.id);
            Rollout::Failed(match back {
                Some(primary) => format!(
                    "rollout of {revision} FAILED: {reason}; the deployment circuit breaker \
                     rolled the service back to {}",
                    primary.task_definition
                ),
                None => format!("rollout of {revision} FAILED: {reason}"),
            })
        }
        None if deployment.running_count >= deployment.desired_count
            && service.deployments.len() == 1 =>
        {
            Rollout::Completed(line)
        }
        _ => Rollout::InProgress(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeploymentView;

    fn deployment(id: &str, status: &str, td: &str, state: &str) -> DeploymentView {
        DeploymentView {
            id: id.into(),
            status: status.into(),
            task_definition: td.into(),
            rollout_state: Some(state.into()),
            rollout_state_reason: Some(format!("{id} {state}")),
            desired_count: 2,
            running_count: 1,
            pending_count: 1,
            failed_tasks: 0,
        }
    }

    fn service(td: &str, deployments: Vec<DeploymentView>) -> ServiceView {
        ServiceView {
            arn: "arn:svc".into(),
            status: "ACTIVE".into(),
            desired_count: 2,
            running_count: 1,
            task_definition: td.into(),
            deployments,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn rollout_states_are_read_from_the_deployment_of_the_revision() {
        let rolling = service(
            "td:2",
            vec![
                deployment("d2", "PRIMARY", "td:2", "IN_PROGRESS"),
                deployment("d1", "ACTIVE", "td:1", "COMPLETED"),
            ],
        );
        assert!(
            matches!(rollout_of(&rolling, "td:2"), Rollout::InProgress(line) if line.contains("1/2 running"))
        );
        let done = service(
            "td:2",
            vec![deployment("d2", "PRIMARY", "td:2", "COMPLETED")],
        );
        assert!(matches!(rollout_of(&done, "td:2"), Rollout::Completed(_)));

        let failed = service("td:2", vec![deployment("d2", "PRIMARY", "td:2", "FAILED")]);
        assert!(
            matches!(rollout_of(&failed, "td:2"), Rollout::Failed(m) if m.contains("d2 FAILED") && !m.contains("rolled"))
        );

        let rolled_back = service(
            "td:1",
            vec![
                deployment("d3", "PRIMARY", "td:1", "IN_PROGRESS"),
                deployment("d2", "ACTIVE", "td:2", "FAILED"),
            ],
        );
        let Rollout::Failed(message) = rollout_of(&rolled_back, "td:2") else {
            panic!("failed expected")
        };
        assert!(
            message.contains("circuit breaker rolled the service back to td:1"),
            "{message}"
        );

        let replaced = service(
            "td:3",
            vec![deployment("d4", "PRIMARY", "td:3", "IN_PROGRESS")],
        );
        assert!(
            matches!(rollout_of(&replaced, "td:2"), Rollout::Failed(m) if m.contains("no longer rolls"))
        );

        // One deployment entry that still names the old revision while the service runs
        // the new one: the primary deployment speaks for it.
        let single = service(
            "td:2",
            vec![deployment("d1", "PRIMARY", "td:1", "COMPLETED")],
        );
        assert!(matches!(rollout_of(&single, "td:2"), Rollout::Completed(_)));
    }
}
