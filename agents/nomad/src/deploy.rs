//! One deployment: register the job with the release's images and the stickers, then
//! follow Nomad's evaluation and deployment until the deployment ends.

use std::collections::BTreeMap;

use serde_json::Value;
use stella_agent_core::{
    ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, Progress, Sticker,
};
use tokio::time::Instant;

use crate::client::{job_modify_index, job_stopped, job_version, NomadClient};
use crate::error::NomadError;
use crate::jobspec::{self, TaskAt};
use crate::settings::NomadSettings;

/// One deploy task against one job.
#[derive(Debug)]
pub(crate) struct JobDeploy<'a> {
    pub(crate) task: &'a DeployTask,
    pub(crate) settings: &'a NomadSettings,
    pub(crate) client: &'a NomadClient,
    pub(crate) components: Vec<&'a ComponentSpec>,
    pub(crate) progress: &'a Progress,
    pub(crate) cancel: &'a CancellationToken,
}

/// How a deployment that Nomad ran ended.
enum Ended {
    Successful(String),
    Failed(String),
    Cancelled(String),
    TimedOut,
}

impl JobDeploy<'_> {
    pub(crate) async fn run(&self) -> Result<ApplyOutcome, NomadError> {
        let started = Instant::now();
        let job_id = &self.settings.job;
        self.progress.report(format!(
            "job {job_id} in namespace {} at {}",
            self.settings.namespace,
            self.client.address()
        ));
        let current = self.client.job(job_id).await?;
        let base = match &self.settings.job_file {
            Some(path) => self.load_job_file(path).await?,
            None => current.clone().ok_or_else(|| NomadError::JobNotFound {
                job: job_id.clone(),
                namespace: self.settings.namespace.clone(),
            })?,
        };
        let (desired, stickers) = self.desired_job(base, current.as_ref())?;
        let prior_version = current.as_ref().map(job_version);
        let modify_index = current.as_ref().map_or(0, job_modify_index);

        let registered = self.client.register(&desired, modify_index).await?;
        let after = self.client.job(job_id).await?.ok_or_else(|| {
            NomadError::Failed(format!(
                "job {job_id} vanished right after it was registered"
            ))
        })?;
        let version = job_version(&after);
        let unchanged = prior_version == Some(version)
            && registered.job_modify_index == modify_index
            && current.as_ref().is_some_and(|c| !job_stopped(c));
        if unchanged {
            self.progress.report(format!(
                "job {job_id} already runs this specification (version {version}): Nomad made no new version"
            ));
        } else {
            self.progress.report(format!(
                "registered job {job_id} version {version}{}",
                prior_version.map_or(String::new(), |p| format!(" (was {p})"))
            ));
            if !registered.eval_id.is_empty() {
                self.follow_evaluation(&registered.eval_id, started).await?;
            }
        }
        let describe = |what: &str| {
            format!(
                "{} {} on {}: job {job_id} version {version}, {what}",
                self.task.release, self.task.version, self.task.target.name
            )
        };
        match self.follow_deployment(version, started).await? {
            Ended::Successful(line) => Ok(ApplyOutcome {
                summary: describe(&line),
                stickers,
                ..ApplyOutcome::default()
            }),
            Ended::Cancelled(reason) => Err(NomadError::Failed(format!(
                "the Nomad deployment of job {job_id} version {version} was cancelled: {reason}"
            ))),
            Ended::Failed(reason) => {
                let message = format!(
                    "the Nomad deployment of job {job_id} version {version} failed: {reason}"
                );
                self.progress.report(message.clone());
                Err(NomadError::Failed(self.revert(version, &message).await))
            }
            Ended::TimedOut => {
                let message = format!(
                    "the Nomad deployment of job {job_id} version {version} did not finish within {} s",
                    self.settings.deploy_timeout.as_secs()
                );
                self.progress.report(message.clone());
                Err(NomadError::Failed(self.revert(version, &message).await))
            }
        }
    }

    /// The job file's specification, the job ID, namespace and region set from the settings.
    async fn load_job_file(&self, path: &std::path::Path) -> Result<Value, NomadError> {
        let text = tokio::fs::read_to_string(path).await.map_err(|e| {
            NomadError::InvalidSettings(format!("job_file {}: cannot read it: {e}", path.display()))
        })?;
        let parsed = match serde_json::from_str::<Value>(&text) {
            Ok(value) => value,
            // Not JSON: HCL, which only Nomad parses.
            Err(_) => self.client.parse_hcl(&text).await?,
        };
        let mut job = match parsed.get("Job") {
            Some(job) => job.clone(),
            None => parsed,
        };
        let Some(object) = job.as_object_mut() else {
            return Err(NomadError::InvalidSettings(format!(
                "job_file {} does not hold a job",
                path.display()
            )));
        };
        object.insert("ID".into(), Value::String(self.settings.job.clone()));
        object
            .entry("Name")
            .or_insert_with(|| Value::String(self.settings.job.clone()));
        object.insert(
            "Namespace".into(),
            Value::String(self.settings.namespace.clone()),
        );
        if let Some(region) = &self.settings.region {
            object.insert("Region".into(), Value::String(region.clone()));
        }
        Ok(job)
    }

    /// `base` with each component's image pinned and the stickers in `Meta`. A sticker
    /// this deployment already wrote (a re-delivery) is kept as is, so that the spec is
    /// unchanged and Nomad makes no new version.
    fn desired_job(
        &self,
        base: Value,
        current: Option<&Value>,
    ) -> Result<(Value, Vec<Sticker>), NomadError> {
        let mut job = base;
        let mut stickers = Vec::new();
        let mut at: Vec<(TaskAt, &ComponentSpec)> = Vec::new();
        for component in &self.components {
            let task_ref = self.settings.task_of(&component.name);
            at.push((
                jobspec::find_task(&job, &component.name, &task_ref)?,
                component,
            ));
        }
        for (task_at, component) in &at {
            jobspec::set_image(&mut job, *task_at, &component.image)?;
            let key = jobspec::sticker_key(&component.name);
            let kept = current
                .and_then(|c| jobspec::meta(c, &key))
                .and_then(|json| Sticker::from_json(json.as_bytes()).ok())
                .filter(|s| s.verify() && self.task.wrote(s) && s.component == component.name);
            let sticker =
                kept.unwrap_or_else(|| self.task.sticker(component, self.progress.agent_id()));
            jobspec::set_meta(&mut job, &key, &sticker.to_canonical_json());
            stickers.push(sticker);
        }
        // Stickers of components this target no longer runs go.
        if let Some(meta) = job.get_mut("Meta").and_then(Value::as_object_mut) {
            meta.retain(|key, _| {
                key.strip_prefix(jobspec::META_STICKER_PREFIX)
                    .is_none_or(|c| self.components.iter().any(|s| s.name == c))
            });
        }
        jobspec::set_meta(&mut job, jobspec::META_RELEASE, &self.task.release);
        jobspec::set_meta(&mut job, jobspec::META_VERSION, &self.task.version);
        jobspec::set_meta(&mut job, jobspec::META_DEPLOYMENT, &self.task.deployment_id);
        let digest = jobspec::spec_digest(&job);
        jobspec::set_meta(&mut job, jobspec::META_SPEC, &digest);
        if let Some(object) = job.as_object_mut() {
            // A stopped job is started again: the desired state runs.
            object.insert("Stop".into(), Value::Bool(false));
        }
        Ok((job, stickers))
    }

    /// Waits for a blocking answer, or cancellation.
    async fn cancellable<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, NomadError>>,
    ) -> Result<T, NomadError> {
        tokio::select! {
            result = call => result,
            () = self.cancel.cancelled() => Err(NomadError::Cancelled),
        }
    }

    /// Follows the evaluation until the scheduler is done with it.
    async fn follow_evaluation(&self, eval_id: &str, started: Instant) -> Result<(), NomadError> {
        let mut index = 0;
        let mut reported = String::new();
        loop {
            let (eval, next) = self
                .cancellable(self.client.evaluation(eval_id, index))
                .await?;
            index = next.max(index);
            let status = eval.get("Status").and_then(Value::as_str).unwrap_or("");
            if status != reported {
                self.progress
                    .report(format!("evaluation {}: {status}", short(eval_id)));
                reported = status.to_owned();
            }
            match status {
                "complete" => {
                    if let Some(failed) = eval.get("FailedTGAllocs").and_then(Value::as_object) {
                        let groups: Vec<&String> = failed.keys().collect();
                        if !groups.is_empty() {
                            self.progress.report(format!(
                                "some allocations could not be placed (groups {groups:?}); Nomad keeps trying"
                            ));
                        }
                    }
                    return Ok(());
                }
                "failed" | "canceled" => {
                    let description = eval
                        .get("StatusDescription")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    return Err(NomadError::Failed(format!(
                        "Nomad's evaluation {eval_id} {status}: {description}"
                    )));
                }
                _ => {}
            }
            if started.elapsed() >= self.settings.deploy_timeout {
                return Err(NomadError::Failed(format!(
                    "Nomad's evaluation {eval_id} was still {status} after {} s",
                    self.settings.deploy_timeout.as_secs()
                )));
            }
        }
    }

    /// Follows the job's latest deployment of `version` until it ends, reporting the
    /// allocations of each task group when they change.
    async fn follow_deployment(&self, version: u64, started: Instant) -> Result<Ended, NomadError> {
        let mut index = 0;
        let mut reported = String::new();
        loop {
            let (deployment, next) = self
                .cancellable(self.client.latest_deployment(&self.settings.job, index))
                .await?;
            index = next.max(index);
            let ours = deployment
                .as_ref()
                .filter(|d| d.get("JobVersion").and_then(Value::as_u64) == Some(version));
            if let Some(deployment) = ours {
                let id = deployment.get("ID").and_then(Value::as_str).unwrap_or("");
                let status = deployment
                    .get("Status")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let description = deployment
                    .get("StatusDescription")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let groups = groups_line(deployment);
                let line = format!("deployment {}: {status}; {groups}", short(id));
                if line != reported {
                    self.progress.report(line.clone());
                    reported = line;
                }
                match status {
                    "successful" => {
                        return Ok(Ended::Successful(format!(
                            "deployment {} successful ({groups})",
                            short(id)
                        )))
                    }
                    "failed" => return Ok(Ended::Failed(format!("{description} ({groups})"))),
                    "cancelled" => return Ok(Ended::Cancelled(description)),
                    _ => {}
                }
            }
            if started.elapsed() >= self.settings.deploy_timeout {
                return Ok(Ended::TimedOut);
            }
        }
    }

    /// Registers the last stable version before `failed` again; returns `message` with
    /// what was done.
    async fn revert(&self, failed: u64, message: &str) -> String {
        let job_id = &self.settings.job;
        let versions = match self.client.versions(job_id).await {
            Ok(versions) => versions,
            Err(error) => {
                return format!("{message}; could not list its versions to revert: {error}")
            }
        };
        let older: Vec<&Value> = versions
            .iter()
            .filter(|v| job_version(v) < failed)
            .collect();
        let Some(target) = older
            .iter()
            .find(|v| v.get("Stable").and_then(Value::as_bool) == Some(true))
            .or_else(|| older.iter().max_by_key(|v| job_version(v)))
            .map(|v| job_version(v))
        else {
            return format!("{message}; there is no earlier version to revert to");
        };
        match self.client.revert(job_id, target, failed).await {
            Ok(_) => {
                let line = format!("reverted job {job_id} to version {target}");
                self.progress.report(line.clone());
                format!("{message}; {line}")
            }
            Err(error) => format!("{message}; reverting to version {target} failed: {error}"),
        }
    }
}

/// `web: 2 placed, 1 healthy, 0 unhealthy of 3` for each task group.
fn groups_line(deployment: &Value) -> String {
    let Some(groups) = deployment.get("TaskGroups").and_then(Value::as_object) else {
        return "no task groups".to_owned();
    };
    let count = |group: &Value, key: &str| group.get(key).and_then(Value::as_u64).unwrap_or(0);
    let sorted: BTreeMap<&String, &Value> = groups.iter().collect();
    sorted
        .into_iter()
        .map(|(name, group)| {
            format!(
                "{name}: {} placed, {} healthy, {} unhealthy of {}",
                count(group, "PlacedAllocs"),
                count(group, "HealthyAllocs"),
                count(group, "UnhealthyAllocs"),
                count(group, "DesiredTotal"),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first 8 characters of a Nomad UUID, as the `nomad` CLI shows them.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
