//! The calls this crate makes to the Docker engine, over bollard: a project's containers
//! are found by Compose's own labels (`com.docker.compose.project`,
//! `com.docker.compose.service`), never by container name, which the generations spell
//! differently (`proj_web_1` in v1, `proj-web-1` in v2).

use std::collections::HashMap;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::models::{ContainerInspectResponse, ContainerSummaryStateEnum};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions, LogsOptions};
use bollard::Docker;
use futures::StreamExt;
use stella_agent_core::{CancellationToken, Progress};
use stella_target_docker::ImageRef;

use crate::error::ComposeError;

/// The label Compose puts the project name in.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// The label Compose puts the service name in.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// `True` on containers of `compose run`, which are not the service's.
const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";

/// How long the engine has to answer the first version request and ping.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one engine.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) docker: Docker,
}

/// A container of a Compose project.
#[derive(Debug, Clone)]
pub(crate) struct ProjectContainer {
    pub(crate) id: String,
    /// Without Docker's leading `/`.
    pub(crate) name: String,
    pub(crate) service: String,
    pub(crate) running: bool,
    /// The local image ID (`sha256:…`) it was created from.
    pub(crate) image_id: String,
    pub(crate) labels: HashMap<String, String>,
}

impl ProjectContainer {
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

impl Engine {
    /// Connects to `/var/run/docker.sock` (or `DOCKER_HOST`'s socket), settles on an API
    /// version both sides speak, and pings.
    pub(crate) async fn connect_local() -> Result<Engine, ComposeError> {
        let docker = stella_target_docker::shared::connect_local(CONNECT_TIMEOUT)
            .await
            .map_err(|failure| match failure {
                stella_target_docker::shared::ConnectFailure::Engine(action, source) => {
                    ComposeError::engine(action)(source)
                }
                stella_target_docker::shared::ConnectFailure::NoAnswer(seconds) => {
                    ComposeError::NoAnswer { seconds }
                }
            })?;
        Ok(Engine { docker })
    }

    /// Every container (running or not) of a project, `compose run` ones left out,
    /// sorted by service and name.
    pub(crate) async fn project_containers(
        &self,
        project: &str,
    ) -> Result<Vec<ProjectContainer>, ComposeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{PROJECT_LABEL}={project}")],
            )])),
            ..Default::default()
        };
        let summaries =
            self.docker
                .list_containers(Some(options))
                .await
                .map_err(ComposeError::engine(format!(
                    "list the containers of compose project {project}"
                )))?;
        let mut containers: Vec<ProjectContainer> = summaries
            .into_iter()
            .filter_map(|summary| {
                let id = summary.id?;
                let labels = summary.labels.unwrap_or_default();
                if labels
                    .get(ONEOFF_LABEL)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                {
                    return None;
                }
                let service = labels.get(SERVICE_LABEL).cloned().unwrap_or_default();
                let name = summary
                    .names
                    .unwrap_or_default()
                    .into_iter()
                    .next()
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_else(|| id.clone());
                Some(ProjectContainer {
                    running: matches!(summary.state, Some(ContainerSummaryStateEnum::RUNNING)),
                    image_id: summary.image_id.unwrap_or_default(),
                    labels,
                    service,
                    name,
                    id,
                })
            })
            .collect();
        containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(containers)
    }

    /// A container that must exist.
    pub(crate) async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, ComposeError> {
        self.docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(ComposeError::engine(format!("inspect container {id}")))
    }

    /// The local image ID of `image` (a reference or an ID); `None` when the engine does
    /// not have it.
    pub(crate) async fn local_image_id(&self, image: &str) -> Result<Option<String>, ComposeError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(inspect.id),
            Err(error) if ComposeError::is_not_found(&error) => Ok(None),
            Err(source) => Err(ComposeError::Engine {
                action: format!("inspect image {image}"),
                source,
            }),
        }
    }

    /// The digest a container runs, as the docker target resolves it: `pinned`'s digest
    /// when the local image of `pinned` is the container's image, else the first of the
    /// image's `RepoDigests` (preferring `pinned`'s repository), else the image ID.
    pub(crate) async fn running_digest(
        &self,
        container: &ProjectContainer,
        pinned: Option<&ImageRef>,
    ) -> Result<String, ComposeError> {
        if let Some(image) = pinned {
            let local = self.local_image_id(&image.to_string()).await?;
            if local.as_deref() == Some(container.image_id.as_str()) {
                return Ok(image.digest.clone());
            }
        }
        let repo_digests = match self.docker.inspect_image(&container.image_id).await {
            Ok(inspect) => inspect.repo_digests.unwrap_or_default(),
            Err(error) if ComposeError::is_not_found(&error) => Vec::new(),
            Err(source) => {
                return Err(ComposeError::Engine {
                    action: format!("inspect image {}", container.image_id),
                    source,
                })
            }
        };
        let preferred = pinned.and_then(|image| {
            repo_digests
                .iter()
                .find(|d| d.starts_with(&format!("{}@", image.repository)))
        });
        let digest = preferred
            .or(repo_digests.first())
            .and_then(|d| d.split_once('@'))
            .map(|(_, digest)| digest.to_owned());
        Ok(digest.unwrap_or_else(|| container.image_id.clone()))
    }

    /// Pulls `image` by digest, reporting each layer's state changes as progress lines
    /// (after `prefix`). The credentials go to the engine only (`X-Registry-Auth`).
    pub(crate) async fn pull(
        &self,
        image: &ImageRef,
        credentials: Option<DockerCredentials>,
        prefix: &str,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<(), ComposeError> {
        stella_target_docker::shared::pull_by_digest(
            &self.docker,
            image,
            credentials,
            prefix,
            progress,
            cancel,
        )
        .await
        .map_err(|failure| match failure {
            stella_target_docker::shared::PullFailure::Cancelled => ComposeError::Cancelled,
            stella_target_docker::shared::PullFailure::Engine(source) => ComposeError::Pull {
                image: image.to_string(),
                source,
            },
        })
    }

    /// The last `lines` lines of a container's output; empty when they cannot be read.
    pub(crate) async fn log_tail(&self, id: &str, lines: usize) -> Vec<String> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        let mut text = String::new();
        let read = async {
            while let Some(Ok(chunk)) = stream.next().await {
                text.push_str(&chunk.to_string());
            }
        };
        // A wedged engine must not hold up the failure report.
        let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
        text.lines()
            .map(str::trim_end)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
