//! Waiting until a new container on the remote host is healthy, polling `docker
//! inspect` over the connection: Docker's health check reports `healthy`, `health_url`
//! (probed on the remote host) answers 2xx, or — with neither — it still runs after
//! [`SETTLE_TIME`]. A container that stops or restarts fails at once; one not healthy at
//! the timeout fails with the last health output. (The `docker` kind's rules.)

use std::time::{Duration, Instant};

use stella_agent_core::CancellationToken;

use crate::docker_cli::{self, RemoteContainer};
use crate::error::SshError;
use crate::pool::Host;

/// How long a container without any health check must keep running.
pub(crate) const SETTLE_TIME: Duration = Duration::from_secs(2);
const FIRST_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_millis(300);

/// What to wait for.
#[derive(Debug)]
pub(crate) struct HealthWait<'a> {
    pub(crate) container: &'a str,
    pub(crate) docker_health: bool,
    pub(crate) health_url: Option<&'a str>,
    pub(crate) network: Option<&'a str>,
    pub(crate) timeout: Duration,
}

impl HealthWait<'_> {
    pub(crate) fn describe(&self) -> String {
        match (self.docker_health, self.health_url) {
            (true, Some(url)) => format!("its Docker health check, then GET {url} on the host"),
            (true, None) => "its Docker health check".to_owned(),
            (false, Some(url)) => format!("GET {url} on the host"),
            (false, None) => format!(
                "no health check: it must keep running {} s",
                SETTLE_TIME.as_secs()
            ),
        }
    }

    /// Polls until healthy; returns how long it took.
    pub(crate) async fn wait(
        &self,
        host: &mut Host,
        cancel: &CancellationToken,
    ) -> Result<Duration, SshError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut last_detail = "no health check result yet".to_owned();
        let mut poll = FIRST_POLL;
        // The URL, once the container's address is known (`{ip}`).
        let mut url = self
            .health_url
            .filter(|template| !template.contains("{ip}"))
            .map(str::to_owned);
        loop {
            let (container, probe) = docker_cli::poll(host, self.container, url.as_deref()).await?;
            let Some(container) = container else {
                return Err(SshError::Failed(format!(
                    "container {} disappeared while waiting for it to become healthy",
                    self.container
                )));
            };
            self.check_still_running(host, &container).await?;
            let docker_ok = if self.docker_health {
                if let Some(detail) = &container.health_detail {
                    last_detail = detail.clone();
                }
                container.health_status.as_deref() == Some("healthy")
            } else {
                true
            };
            if url.is_none() {
                if let Some(template) = self.health_url {
                    match container.address(self.network) {
                        Some(ip) => url = Some(template.replace("{ip}", &ip)),
                        None => last_detail = "the container has no address".to_owned(),
                    }
                }
            }
            let url_ok = match (self.health_url, probe) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(_), Some(Ok(()))) => docker_ok,
                (Some(_), Some(Err(detail))) => {
                    if docker_ok {
                        last_detail = detail;
                    }
                    false
                }
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
                if container.health_status.as_deref() == Some("unhealthy") {
                    last_detail = format!("docker reports it unhealthy; {last_detail}");
                }
                return Err(SshError::Failed(format!(
                    "container {} did not become healthy within {} s: {last_detail}",
                    self.container,
                    self.timeout.as_secs()
                )));
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(SshError::Cancelled),
                () = tokio::time::sleep(poll) => {}
            }
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    async fn check_still_running(
        &self,
        host: &mut Host,
        container: &RemoteContainer,
    ) -> Result<(), SshError> {
        let restarted = container.restart_count > 0;
        if container.running && !container.restarting && !restarted {
            return Ok(());
        }
        let mut detail = if !restarted || !container.running {
            format!("exit code {}", container.exit_code)
        } else {
            "it exited and was restarted".to_owned()
        };
        if !container.error.is_empty() {
            detail.push_str(&format!(", {}", container.error));
        }
        let logs = docker_cli::log_tail(host, self.container, 5).await;
        if !logs.is_empty() {
            detail.push_str(&format!("; last output: {logs}"));
        }
        Err(SshError::Failed(format!(
            "container {} stopped before it became healthy: {detail}",
            self.container
        )))
    }
}
