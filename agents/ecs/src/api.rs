//! The ECS API calls this kind makes, through `aws-sdk-ecs`, and the plain views of what
//! they return (so the deploy and drift logic does not depend on the SDK's types).
//!
//! The HTTP client is the SDK's hyper 1 client with rustls on ring: no aws-lc and no
//! second TLS stack. Requests are signed with SigV4 by the SDK; the keys come from the
//! settings (see [`AwsKeys`]) and live only in the client's credentials provider.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecs::error::{DisplayErrorContext, SdkError};
use aws_sdk_ecs::types::{
    ContainerDefinition, ServiceField, Tag, TaskDefinition, TaskDefinitionField,
};
use aws_sdk_ecs::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::error::EcsError;
use crate::settings::{AwsKeys, EcsSettings};

/// How long one API call may take, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// An ECS client for one region, endpoint and set of keys.
pub(crate) fn client(settings: &EcsSettings) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let AwsKeys {
        access_key_id,
        secret_access_key,
        session_token,
        ..
    } = settings.keys.clone();
    let credentials = Credentials::new(
        access_key_id,
        secret_access_key,
        session_token,
        None,
        "stella-target-settings",
    );
    let mut config = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .credentials_provider(credentials)
        .http_client(http)
        .timeout_config(
            aws_sdk_ecs::config::timeout::TimeoutConfig::builder()
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if let Some(url) = &settings.endpoint_url {
        config = config.endpoint_url(url.clone());
    }
    Client::from_conf(config.build())
}

/// A service as `DescribeServices` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceView {
    pub arn: String,
    /// `ACTIVE`, `DRAINING` or `INACTIVE`.
    pub status: String,
    pub desired_count: i32,
    pub running_count: i32,
    /// The task definition the service runs (or rolls to).
    pub task_definition: String,
    pub deployments: Vec<DeploymentView>,
    pub tags: BTreeMap<String, String>,
}

impl ServiceView {
    /// The deployment of the service's `PRIMARY` task definition.
    pub fn primary(&self) -> Option<&DeploymentView> {
        self.deployments.iter().find(|d| d.status == "PRIMARY")
    }
}

/// One entry of a service's `deployments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeploymentView {
    pub id: String,
    /// `PRIMARY`, `ACTIVE` or `INACTIVE`.
    pub status: String,
    pub task_definition: String,
    /// `IN_PROGRESS`, `COMPLETED` or `FAILED`; absent for services whose deployment
    /// controller reports none.
    pub rollout_state: Option<String>,
    pub rollout_state_reason: Option<String>,
    pub desired_count: i32,
    pub running_count: i32,
    pub pending_count: i32,
    pub failed_tasks: i32,
}

/// A task definition revision with its tags.
#[derive(Debug, Clone)]
pub(crate) struct Revision {
    pub arn: String,
    pub definition: TaskDefinition,
    pub tags: BTreeMap<String, String>,
}

impl Revision {
    /// The image of the container named `name`.
    pub fn image_of(&self, name: &str) -> Option<&str> {
        self.containers()
            .iter()
            .find(|c| c.name() == Some(name))
            .and_then(ContainerDefinition::image)
    }

    pub fn containers(&self) -> &[ContainerDefinition] {
        self.definition.container_definitions()
    }
}

/// The calls on one service.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    client: Client,
    cluster: String,
    service: String,
}

impl Api {
    pub fn new(client: Client, settings: &EcsSettings) -> Api {
        Api {
            client,
            cluster: settings.cluster.clone(),
            service: settings.service.clone(),
        }
    }

    /// The service, or `None` when ECS reports it missing.
    pub async fn service(&self) -> Result<Option<ServiceView>, EcsError> {
        let output = self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .include(ServiceField::Tags)
            .send()
            .await
            .map_err(api_error("DescribeServices"))?;
        let Some(service) = output.services().first() else {
            return Ok(None);
        };
        let deployments = service
            .deployments()
            .iter()
            .map(|d| DeploymentView {
                id: d.id().unwrap_or_default().to_owned(),
                status: d.status().unwrap_or_default().to_owned(),
                task_definition: d.task_definition().unwrap_or_default().to_owned(),
                rollout_state: d.rollout_state().map(|s| s.as_str().to_owned()),
                rollout_state_reason: d.rollout_state_reason().map(str::to_owned),
                desired_count: d.desired_count(),
                running_count: d.running_count(),
                pending_count: d.pending_count(),
                failed_tasks: d.failed_tasks(),
            })
            .collect();
        Ok(Some(ServiceView {
            arn: service.service_arn().unwrap_or_default().to_owned(),
            status: service.status().unwrap_or_default().to_owned(),
            desired_count: service.desired_count(),
            running_count: service.running_count(),
            task_definition: service.task_definition().unwrap_or_default().to_owned(),
            deployments,
            tags: tag_map(service.tags()),
        }))
    }

    /// The service, which must exist and be `ACTIVE`.
    pub async fn active_service(&self) -> Result<ServiceView, EcsError> {
        match self.service().await? {
            Some(service) if service.status == "ACTIVE" => Ok(service),
            Some(service) => Err(self.not_found(format!("is {}", service.status))),
            None => Err(self.not_found("does not exist".to_owned())),
        }
    }

    pub fn not_found(&self, state: String) -> EcsError {
        EcsError::ServiceNotFound {
            cluster: self.cluster.clone(),
            service: self.service.clone(),
            state,
        }
    }

    /// A task definition revision and its tags.
    pub async fn revision(&self, task_definition: &str) -> Result<Revision, EcsError> {
        let output = self
            .client
            .describe_task_definition()
            .task_definition(task_definition)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(api_error("DescribeTaskDefinition"))?;
        let definition = output.task_definition().cloned().ok_or_else(|| {
            EcsError::Failed(format!(
                "ecs DescribeTaskDefinition returned no task definition for {task_definition}"
            ))
        })?;
        Ok(Revision {
            arn: definition
                .task_definition_arn()
                .unwrap_or(task_definition)
                .to_owned(),
            tags: tag_map(output.tags()),
            definition,
        })
    }

    /// Registers a new revision of `base`'s family: `base` with `containers` and `tags`.
    pub async fn register(
        &self,
        base: &TaskDefinition,
        containers: Vec<ContainerDefinition>,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, EcsError> {
        let output = self
            .client
            .register_task_definition()
            .set_family(base.family.clone())
            .set_task_role_arn(base.task_role_arn.clone())
            .set_execution_role_arn(base.execution_role_arn.clone())
            .set_network_mode(base.network_mode.clone())
            .set_container_definitions(Some(containers))
            .set_volumes(base.volumes.clone())
            .set_placement_constraints(base.placement_constraints.clone())
            .set_requires_compatibilities(base.requires_compatibilities.clone())
            .set_cpu(base.cpu.clone())
            .set_memory(base.memory.clone())
            .set_pid_mode(base.pid_mode.clone())
            .set_ipc_mode(base.ipc_mode.clone())
            .set_proxy_configuration(base.proxy_configuration.clone())
            .set_ephemeral_storage(base.ephemeral_storage.clone())
            .set_runtime_platform(base.runtime_platform.clone())
            .set_enable_fault_injection(base.enable_fault_injection)
            .set_tags(Some(to_tags(tags)))
            .send()
            .await
            .map_err(api_error("RegisterTaskDefinition"))?;
        output
            .task_definition()
            .and_then(TaskDefinition::task_definition_arn)
            .map(str::to_owned)
            .ok_or_else(|| {
                EcsError::Failed(
                    "ecs RegisterTaskDefinition returned no task definition ARN".into(),
                )
            })
    }

    /// Points the service at `task_definition` (and, when given, sets its desired count);
    /// returns the service as the call left it.
    pub async fn update(
        &self,
        task_definition: &str,
        desired_count: Option<i32>,
    ) -> Result<(), EcsError> {
        self.client
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .task_definition(task_definition)
            .set_desired_count(desired_count)
            .send()
            .await
            .map_err(api_error("UpdateService"))?;
        Ok(())
    }

    /// Sets `tags` on a resource (service or task definition) and removes the `stella:`
    /// tags it has that `tags` does not name (`current`: its tags now).
    pub async fn retag(
        &self,
        arn: &str,
        current: &BTreeMap<String, String>,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), EcsError> {
        let stale: Vec<String> = current
            .keys()
            .filter(|key| key.starts_with(crate::stickers::PREFIX) && !tags.contains_key(*key))
            .cloned()
            .collect();
        if !stale.is_empty() {
            self.client
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(stale))
                .send()
                .await
                .map_err(api_error("UntagResource"))?;
        }
        if !tags.is_empty() {
            self.client
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(to_tags(tags)))
                .send()
                .await
                .map_err(api_error("TagResource"))?;
        }
        Ok(())
    }
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|tag| Some((tag.key()?.to_owned(), tag.value().unwrap_or("").to_owned())))
        .collect()
}

fn to_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect()
}

/// The SDK error of an operation as an [`EcsError`]: ECS's error code and message, or the
/// transport's error chain. Requests and credentials are not part of either.
fn api_error<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> EcsError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |error| EcsError::Api {
        operation,
        reason: DisplayErrorContext(&error).to_string(),
    }
}
