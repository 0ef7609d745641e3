//! Waiting until a new container is healthy: its Docker health check reports `healthy`,
//! the `health_url` probe answers 2xx, or — with neither — it still runs after
//! [`SETTLE_TIME`].
//!
//! This wait decides, for up to `health_timeout_seconds`: the container is created with a
//! health-check start period of that length (see `deploy::healthcheck`), so Docker does
//! not count failed checks before the wait ends, and a status of `unhealthy` seen before
//! the deadline (a check that passed once and failed since) is not final either. Only a
//! container that stops or restarts fails early.

use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use stella_agent_core::{error_chain, CancellationToken};

use crate::engine::Engine;
use crate::error::DockerError;

/// How long a container without any health check must keep running to count as started.
pub(crate) const SETTLE_TIME: Duration = Duration::from_secs(2);
/// Polling starts fast (a small service is up within tens of milliseconds) and backs off
/// to [`MAX_POLL_INTERVAL`] so a slow one costs little.
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(20);
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What to wait for.
#[derive(Debug)]
pub(crate) struct HealthWait<'a> {
    pub(crate) container: &'a str,
    /// The container has a Docker health check (`health_cmd`, or the image's own).
    pub(crate) docker_health: bool,
    /// `health_url`, `{ip}` not yet replaced.
    pub(crate) health_url: Option<&'a str>,
    /// The network whose address replaces `{ip}` (default `bridge`).
    pub(crate) network: Option<&'a str>,
    pub(crate) timeout: Duration,
}

impl HealthWait<'_> {
    /// What is waited for, for progress lines: `its Docker health check and GET …`.
    pub(crate) fn describe(&self) -> String {
        match (self.docker_health, self.health_url) {
            (true, Some(url)) => format!("its Docker health check, then GET {url}"),
            (true, None) => "its Docker health check".to_owned(),
            (false, Some(url)) => format!("GET {url}"),
            (false, None) => format!(
                "no health check: it must keep running {} s",
                SETTLE_TIME.as_secs()
            ),
        }
    }

    /// Polls until healthy and returns how long that took; fails as soon as the
    /// container stops or restarts, or at the timeout with the last health output.
    pub(crate) async fn wait(
        &self,
        engine: &Engine,
        http: &reqwest::Client,
        cancel: &CancellationToken,
    ) -> Result<Duration, DockerError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut last_detail = "no health check result yet".to_owned();
        let mut docker_unhealthy = false;
        let mut poll_interval = FIRST_POLL_INTERVAL;
        loop {
            let inspect = engine.inspect(self.container).await?;
            self.check_still_running(engine, &inspect).await?;

            let docker_ok = if self.docker_health {
                let (status, detail) = docker_health(&inspect);
                if let Some(detail) = detail {
                    last_detail = detail;
                }
                docker_unhealthy = status == Some(HealthStatusEnum::UNHEALTHY);
                status == Some(HealthStatusEnum::HEALTHY)
            } else {
                true
            };

            // The URL is probed once the Docker health check passes (if there is one), so
            // the two never disagree for long.
            let url_ok = match self.health_url {
                None => true,
                Some(_) if !docker_ok => false,
                Some(template) => match self.probe(http, template, &inspect).await {
                    Ok(()) => true,
                    Err(detail) => {
                        last_detail = detail;
                        false
                    }
                },
            };

            let settled =
                self.docker_health || self.health_url.is_some() || started.elapsed() >= SETTLE_TIME;
            if docker_ok && url_ok && settled {
                return Ok(started.elapsed());
            }
            if Instant::now() >= deadline {
                if !self.docker_health && self.health_url.is_none() {
                    last_detail = "it did not keep running".to_owned();
                }
                if docker_unhealthy {
                    last_detail = format!("docker reports it unhealthy; {last_detail}");
                }
                return Err(DockerError::HealthTimeout {
                    container: self.container.to_owned(),
                    timeout_seconds: self.timeout.as_secs(),
                    detail: last_detail,
                });
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(DockerError::Cancelled),
                () = tokio::time::sleep(poll_interval) => {}
            }
            poll_interval = (poll_interval * 2).min(MAX_POLL_INTERVAL);
        }
    }

    async fn check_still_running(
        &self,
        engine: &Engine,
        inspect: &ContainerInspectResponse,
    ) -> Result<(), DockerError> {
        let state = inspect.state.clone().unwrap_or_default();
        let restarted = inspect.restart_count.unwrap_or(0) > 0;
        if state.running == Some(true) && state.restarting != Some(true) && !restarted {
            return Ok(());
        }
        let mut detail = match state.exit_code {
            Some(code) if !restarted || state.running != Some(true) => {
                format!("exit code {code}")
            }
            _ => "it exited and was restarted".to_owned(),
        };
        if let Some(error) = state.error.filter(|e| !e.is_empty()) {
            detail.push_str(&format!(", {error}"));
        }
        let logs = engine.log_tail(self.container, 5).await;
        if !logs.is_empty() {
            detail.push_str(&format!("; last output: {}", one_line(&logs)));
        }
        Err(DockerError::Exited {
            container: self.container.to_owned(),
            detail,
        })
    }

    async fn probe(
        &self,
        http: &reqwest::Client,
        template: &str,
        inspect: &ContainerInspectResponse,
    ) -> Result<(), String> {
        let url = if template.contains("{ip}") {
            let ip = container_ip(inspect, self.network).ok_or_else(|| {
                format!(
                    "the container has no address on network {}",
                    self.network.unwrap_or("bridge")
                )
            })?;
            template.replace("{ip}", &ip)
        } else {
            template.to_owned()
        };
        match http.get(&url).timeout(PROBE_TIMEOUT).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("GET {url} answered {}", response.status())),
            Err(error) => Err(format!("GET {url} failed: {}", error_chain(&error))),
        }
    }
}

/// The Docker health status and the last health check's output.
fn docker_health(inspect: &ContainerInspectResponse) -> (Option<HealthStatusEnum>, Option<String>) {
    let Some(health) = inspect.state.as_ref().and_then(|s| s.health.as_ref()) else {
        return (None, None);
    };
    let detail = health
        .log
        .as_ref()
        .and_then(|log| log.last())
        .map(|result| {
            let output = result.output.as_deref().map(one_line).unwrap_or_default();
            match result.exit_code {
                Some(code) if output.is_empty() => format!("health check exit code {code}"),
                Some(code) => format!("health check exit code {code}: {output}"),
                None => output,
            }
        });
    (health.status, detail)
}

/// The container's address on `network` (default `bridge`; `host` is loopback), else on
/// any network it has one on.
pub(crate) fn container_ip(
    inspect: &ContainerInspectResponse,
    network: Option<&str>,
) -> Option<String> {
    let network = network.unwrap_or("bridge");
    if network == "host" {
        return Some("127.0.0.1".to_owned());
    }
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let address = |name: &str| {
        networks
            .get(name)
            .and_then(|endpoint| endpoint.ip_address.clone())
            .filter(|ip| !ip.is_empty())
    };
    address(network).or_else(|| {
        let mut names: Vec<&String> = networks.keys().collect();
        names.sort();
        names.into_iter().find_map(|name| address(name))
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
