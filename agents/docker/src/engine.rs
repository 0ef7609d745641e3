//! The calls this crate makes to the Docker engine, over bollard, each with the context
//! its error needs.

use std::collections::HashMap;

use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummaryStateEnum, PortMap,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use stella_agent_core::{CancellationToken, Endpoint, Progress};

use crate::error::DockerError;
use crate::image_ref::ImageRef;
use crate::labels;

/// How long the engine has to answer the first version request and ping.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a removal the engine refuses with a conflict is retried.
const REMOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection to one engine.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) docker: Docker,
}

/// A container labelled for a target, as `docker ps -a` lists it.
#[derive(Debug, Clone)]
pub(crate) struct ManagedContainer {
    pub(crate) id: String,
    /// Without Docker's leading `/`.
    pub(crate) name: String,
    pub(crate) running: bool,
    /// The local image ID (`sha256:…`) it was created from.
    pub(crate) image_id: String,
    pub(crate) labels: HashMap<String, String>,
}

impl ManagedContainer {
    pub(crate) fn component(&self) -> Option<&str> {
        self.labels.get(labels::COMPONENT).map(String::as_str)
    }

    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

impl Engine {
    /// Connects to `/var/run/docker.sock` (or `DOCKER_HOST`'s socket), settles on an API
    /// version both sides speak (bollard's default is newer than many installed
    /// engines), and pings.
    pub(crate) async fn connect_local() -> Result<Engine, DockerError> {
        let docker = crate::shared::connect_local(CONNECT_TIMEOUT)
            .await
            .map_err(|failure| match failure {
                crate::shared::ConnectFailure::Engine(action, source) => {
                    DockerError::engine(action)(source)
                }
                crate::shared::ConnectFailure::NoAnswer(seconds) => {
                    DockerError::NoAnswer { seconds }
                }
            })?;
        Ok(Engine { docker })
    }

    /// Every stable container (running or not) labelled for `target`, and for
    /// `component` when given: slot containers ([`labels::SLOT`]) are left out, so the
    /// stable deployment, inspect and drift never see, count or touch them.
    pub(crate) async fn containers(
        &self,
        target: &str,
        component: Option<&str>,
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        let mut label_filters = vec![format!("{}={target}", labels::TARGET)];
        if let Some(component) = component {
            label_filters.push(format!("{}={component}", labels::COMPONENT));
        }
        let mut containers = self
            .list(
                label_filters,
                &format!("list the containers of target {target}"),
            )
            .await?;
        // The engine can filter on a label's presence, not on its absence.
        containers.retain(|c| !c.labels.contains_key(labels::SLOT));
        Ok(containers)
    }

    /// Every container (running or not) of `slot` of `target`, and of `component` when
    /// given.
    pub(crate) async fn slot_containers(
        &self,
        target: &str,
        slot: &str,
        component: Option<&str>,
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        let mut label_filters = vec![
            format!("{}={target}", labels::TARGET),
            format!("{}={slot}", labels::SLOT),
        ];
        if let Some(component) = component {
            label_filters.push(format!("{}={component}", labels::COMPONENT));
        }
        self.list(
            label_filters,
            &format!("list the containers of slot {slot} of target {target}"),
        )
        .await
    }

    /// The containers (running or not) that carry every label of `label_filters`
    /// (`key=value`), sorted by name; `action` names the listing in an error.
    async fn list(
        &self,
        label_filters: Vec<String>,
        action: &str,
    ) -> Result<Vec<ManagedContainer>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), label_filters)])),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(DockerError::engine(action.to_owned()))?;
        let mut containers: Vec<ManagedContainer> = summaries
            .into_iter()
            .filter_map(|summary| {
                let id = summary.id?;
                let name = summary
                    .names
                    .unwrap_or_default()
                    .into_iter()
                    .next()
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_else(|| id.clone());
                Some(ManagedContainer {
                    running: matches!(summary.state, Some(ContainerSummaryStateEnum::RUNNING)),
                    image_id: summary.image_id.unwrap_or_default(),
                    labels: summary.labels.unwrap_or_default(),
                    name,
                    id,
                })
            })
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    /// The published ports of a running container, as the engine bound them
    /// (`NetworkSettings.Ports`), one [`Endpoint`] per binding, for `component`.
    pub(crate) async fn endpoints(
        &self,
        component: &str,
        container: &str,
    ) -> Result<Vec<Endpoint>, DockerError> {
        let inspect = self.inspect(container).await?;
        let ports = inspect
            .network_settings
            .and_then(|settings| settings.ports)
            .unwrap_or_default();
        endpoints_of(component, container, &ports)
    }
    /// A container by name or id; `None` when there is none.
    pub(crate) async fn find_container(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(container) => Ok(Some(container)),
            Err(error) if DockerError::is_not_found(&error) => Ok(None),
            Err(source) => Err(DockerError::Engine {
                action: format!("inspect container {name}"),
                source,
            }),
        }
    }

    /// The container that holds `name`, whatever its labels; `None` when there is none.
    pub(crate) async fn container_named(
        &self,
        name: &str,
    ) -> Result<Option<ManagedContainer>, DockerError> {
        let Some(inspect) = self.find_container(name).await? else {
            return Ok(None);
        };
        let Some(id) = inspect.id else {
            return Ok(None);
        };
        Ok(Some(ManagedContainer {
            name: inspect
                .name
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| name.to_owned()),
            running: inspect.state.and_then(|s| s.running).unwrap_or(false),
            image_id: inspect.image.unwrap_or_default(),
            labels: inspect.config.and_then(|c| c.labels).unwrap_or_default(),
            id,
        }))
    }

    /// A container that must exist.
    pub(crate) async fn inspect(
        &self,
        name: &str,
    ) -> Result<ContainerInspectResponse, DockerError> {
        self.docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(DockerError::engine(format!("inspect container {name}")))
    }

    /// The local image ID of `image` (a reference or an ID); `None` when the engine does
    /// not have it.
    pub(crate) async fn local_image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(inspect.id),
            Err(error) if DockerError::is_not_found(&error) => Ok(None),
            Err(source) => Err(DockerError::Engine {
                action: format!("inspect image {image}"),
                source,
            }),
        }
    }

    /// The `RepoDigests` (`repo@sha256:…`) of a local image.
    pub(crate) async fn repo_digests(&self, image_id: &str) -> Result<Vec<String>, DockerError> {
        match self.docker.inspect_image(image_id).await {
            Ok(inspect) => Ok(inspect.repo_digests.unwrap_or_default()),
            Err(error) if DockerError::is_not_found(&error) => Ok(Vec::new()),
            Err(source) => Err(DockerError::Engine {
                action: format!("inspect image {image_id}"),
                source,
            }),
        }
    }

    /// Whether the image defines its own `HEALTHCHECK`.
    pub(crate) async fn image_has_healthcheck(&self, image: &str) -> Result<bool, DockerError> {
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(DockerError::engine(format!("inspect image {image}")))?;
        Ok(inspect
            .config
            .and_then(|config| config.healthcheck)
            .and_then(|health| health.test)
            .is_some_and(|test| !test.is_empty() && test[0] != "NONE"))
    }

    /// Pulls `image` by digest, reporting each layer's state changes as progress lines
    /// (after `prefix`).
    pub(crate) async fn pull(
        &self,
        image: &ImageRef,
        credentials: Option<DockerCredentials>,
        prefix: &str,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<(), DockerError> {
        crate::shared::pull_by_digest(&self.docker, image, credentials, prefix, progress, cancel)
            .await
            .map_err(|failure| match failure {
                crate::shared::PullFailure::Cancelled => DockerError::Cancelled,
                crate::shared::PullFailure::Engine(source) => DockerError::Pull {
                    image: image.to_string(),
                    source,
                },
            })
    }

    /// Creates a container; returns its id.
    pub(crate) async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(DockerError::engine(format!("create container {name}")))?;
        Ok(created.id)
    }

    pub(crate) async fn start(&self, name: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(DockerError::engine(format!("start container {name}")))
    }

    /// Stops a container (SIGTERM, then SIGKILL after `timeout_seconds`); stopping a
    /// stopped container is fine.
    pub(crate) async fn stop(&self, name: &str, timeout_seconds: u64) -> Result<(), DockerError> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(timeout_seconds).unwrap_or(i32::MAX)),
            ..Default::default()
        };
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(source) => Err(DockerError::Engine {
                action: format!("stop container {name}"),
                source,
            }),
        }
    }

    /// Removes a container, killing it if it runs, and returns once it is gone; a
    /// missing container is fine. The engine refuses (409) while another operation holds
    /// the container — e.g. a start that an aborted agent left running in the engine —
    /// so a conflict is retried until [`REMOVE_TIMEOUT`].
    pub(crate) async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let deadline = tokio::time::Instant::now() + REMOVE_TIMEOUT;
        loop {
            let options = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            match self.docker.remove_container(name, Some(options)).await {
                // Gone for sure only when the engine no longer knows the name.
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    if self.find_container(name).await?.is_none() {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(DockerError::StillPresent {
                            container: name.to_owned(),
                        });
                    }
                    tracing::debug!(container = name, "removed container still listed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(container = name, %message, "removal refused for now; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(source) => {
                    return Err(DockerError::Engine {
                        action: format!("remove container {name}"),
                        source,
                    })
                }
            }
        }
    }

    pub(crate) async fn rename(&self, name: &str, new_name: &str) -> Result<(), DockerError> {
        let options = RenameContainerOptions {
            name: new_name.to_owned(),
        };
        self.docker
            .rename_container(name, options)
            .await
            .map_err(DockerError::engine(format!(
                "rename container {name} to {new_name}"
            )))
    }

    /// The last `lines` lines of a container's output, for error messages; empty when
    /// they cannot be read.
    pub(crate) async fn log_tail(&self, name: &str, lines: usize) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(name, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
        text.trim().to_owned()
    }
}

/// The endpoints of `container` (running `component`) from the engine's port map
/// (`"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}]`): one per binding, sorted;
/// ports exposed but not published have no binding and no endpoint. A binding whose
/// ports do not parse is an error that names it, since a router pointed at a wrong port
/// would send traffic nowhere.
pub(crate) fn endpoints_of(
    component: &str,
    container: &str,
    ports: &PortMap,
) -> Result<Vec<Endpoint>, DockerError> {
    let unreadable = |detail: String| DockerError::UnreadablePorts {
        container: container.to_owned(),
        detail,
    };
    let mut endpoints = Vec::new();
    for (key, bindings) in ports {
        let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let container_port: u16 = port
            .parse()
            .map_err(|_| unreadable(format!("container port {key:?}")))?;
        for binding in bindings.iter().flatten() {
            let host_port = binding.host_port.as_deref().unwrap_or_default();
            let host_port: u16 = host_port
                .parse()
                .map_err(|_| unreadable(format!("host port {host_port:?} of {key}")))?;
            let host_ip = binding
                .host_ip
                .clone()
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "0.0.0.0".to_owned());
            endpoints.push(Endpoint {
                component: component.to_owned(),
                container_port,
                protocol: protocol.to_owned(),
                host_ip,
                host_port,
            });
        }
    }
    endpoints.sort_by(|a, b| {
        (a.container_port, &a.protocol, &a.host_ip, a.host_port).cmp(&(
            b.container_port,
            &b.protocol,
            &b.host_ip,
            b.host_port,
        ))
    });
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::PortBinding;

    #[test]
    fn endpoints_are_the_bindings_the_engine_reports() {
        let binding = |ip: Option<&str>, port: &str| PortBinding {
            host_ip: ip.map(str::to_owned),
            host_port: Some(port.to_owned()),
        };
        let ports: PortMap = HashMap::from([
            (
                "8080/tcp".to_owned(),
                Some(vec![
                    binding(Some("0.0.0.0"), "32768"),
                    binding(Some("::"), "32768"),
                ]),
            ),
            ("53/udp".to_owned(), Some(vec![binding(None, "5353")])),
            ("9000/tcp".to_owned(), None),
        ]);
        let endpoints = endpoints_of("web", "app-web", &ports).expect("endpoints");
        let found: Vec<(u16, &str, &str, u16)> = endpoints
            .iter()
            .map(|e| {
                assert_eq!(e.component, "web");
                (
                    e.container_port,
                    e.protocol.as_str(),
                    e.host_ip.as_str(),
                    e.host_port,
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                (53, "udp", "0.0.0.0", 5353),
                (8080, "tcp", "0.0.0.0", 32768),
                (8080, "tcp", "::", 32768)
            ]
        );

        let broken: PortMap = HashMap::from([(
            "8080/tcp".to_owned(),
            Some(vec![binding(Some("0.0.0.0"), "")]),
        )]);
        let error = endpoints_of("web", "app-web", &broken).expect_err("no host port");
        assert!(error.to_string().contains("app-web"), "{error}");
    }
}
