//! Waiting until a project is up: every service `up` starts has a container that runs —
//! healthy where it has a health check (the operator's `healthcheck:` or the image's
//! own), still running [`SETTLE_TIME`] after its start where it has none — the services
//! the release covers run the pinned image under this deployment's sticker, and
//! `health_url`, when set, answers 2xx.
//!
//! A container that exits with a non-zero code, or restarts, fails the wait at once; one
//! that exits 0 without a restart policy counts as a finished one-shot service. One that
//! is still `starting` or `unhealthy` at the deadline fails it with its last health
//! output. The failure names the service and its container, so the caller can show its
//! logs.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use stella_agent_core::{error_chain, CancellationToken};
use stella_target_docker::labels;

use crate::engine::{Engine, ProjectContainer};
use crate::error::ComposeError;

/// How long a container without any health check must have been running to count.
pub(crate) const SETTLE_TIME: Duration = Duration::from_secs(2);
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(20);
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a covered service must run.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    /// The local image ID of the pinned image.
    pub(crate) image_id: String,
    /// The sticker digest its labels must carry.
    pub(crate) sticker_digest: String,
}

/// What to wait for.
#[derive(Debug)]
pub(crate) struct ProjectWait<'a> {
    pub(crate) project: &'a str,
    /// The services `up` starts.
    pub(crate) services: &'a [String],
    /// The covered services, by service name.
    pub(crate) covered: &'a BTreeMap<String, Expected>,
    pub(crate) health_url: Option<&'a str>,
    pub(crate) timeout: Duration,
}

/// Why the wait failed, and the container whose logs tell more.
#[derive(Debug)]
pub(crate) struct WaitFailure {
    pub(crate) error: ComposeError,
    /// The failing service and its container id.
    pub(crate) container: Option<(String, String)>,
}

/// The state of one service in one poll.
enum Verdict {
    Ready,
    Pending {
        detail: String,
        container: Option<String>,
    },
    Failed {
        detail: String,
        container: String,
    },
}

impl ProjectWait<'_> {
    /// Whether the project is up right now (no waiting): for a re-delivered task.
    pub(crate) async fn is_up(
        &self,
        engine: &Engine,
        http: &reqwest::Client,
    ) -> Result<Result<(), String>, ComposeError> {
        let mut restarts = HashMap::new();
        let containers = engine.project_containers(self.project).await?;
        if let Some(orphan) = containers
            .iter()
            .find(|c| !self.services.contains(&c.service))
        {
            return Ok(Err(format!(
                "container {} of service {} is not in the lock",
                orphan.name, orphan.service
            )));
        }
        for service in self.services {
            match self
                .judge(engine, service, &containers, &mut restarts)
                .await?
            {
                Verdict::Ready => {}
                Verdict::Pending { detail, .. } | Verdict::Failed { detail, .. } => {
                    return Ok(Err(format!("service {service} {detail}")))
                }
            }
        }
        if let Some(url) = self.health_url {
            if let Err(detail) = probe(http, url).await {
                return Ok(Err(detail));
            }
        }
        Ok(Ok(()))
    }

    /// Polls until the project is up; returns how long that took.
    pub(crate) async fn wait(
        &self,
        engine: &Engine,
        http: &reqwest::Client,
        cancel: &CancellationToken,
    ) -> Result<Duration, WaitFailure> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut poll_interval = FIRST_POLL_INTERVAL;
        // Restart counts as first seen: one that grows is a crash loop.
        let mut restarts: HashMap<String, i64> = HashMap::new();
        let plain = |error: ComposeError| WaitFailure {
            error,
            container: None,
        };
        loop {
            let containers = engine
                .project_containers(self.project)
                .await
                .map_err(plain)?;
            let mut pending = None;
            for service in self.services {
                match self
                    .judge(engine, service, &containers, &mut restarts)
                    .await
                    .map_err(plain)?
                {
                    Verdict::Ready => {}
                    Verdict::Failed { detail, container } => {
                        return Err(WaitFailure {
                            error: ComposeError::Unhealthy {
                                service: service.clone(),
                                detail,
                            },
                            container: Some((service.clone(), container)),
                        })
                    }
                    Verdict::Pending { detail, container } => {
                        if pending.is_none() {
                            pending = Some((service.clone(), detail, container));
                        }
                    }
                }
            }
            let url_failure = match (self.health_url, &pending) {
                (Some(url), None) => probe(http, url).await.err(),
                _ => None,
            };
            if pending.is_none() && url_failure.is_none() {
                return Ok(started.elapsed());
            }
            if Instant::now() >= deadline {
                let seconds = self.timeout.as_secs();
                return Err(match pending {
                    Some((service, detail, container)) => WaitFailure {
                        error: ComposeError::Unhealthy {
                            service: service.clone(),
                            detail: format!(
                                "did not become running and healthy within {seconds} s: {detail}"
                            ),
                        },
                        container: container.map(|id| (service, id)),
                    },
                    None => WaitFailure {
                        error: ComposeError::HealthUrl {
                            url: self.health_url.unwrap_or_default().to_owned(),
                            timeout_seconds: seconds,
                            detail: url_failure.unwrap_or_default(),
                        },
                        container: None,
                    },
                });
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(plain(ComposeError::Cancelled)),
                () = tokio::time::sleep(poll_interval) => {}
            }
            poll_interval = (poll_interval * 2).min(MAX_POLL_INTERVAL);
        }
    }

    async fn judge(
        &self,
        engine: &Engine,
        service: &str,
        containers: &[ProjectContainer],
        restarts: &mut HashMap<String, i64>,
    ) -> Result<Verdict, ComposeError> {
        let mine: Vec<&ProjectContainer> =
            containers.iter().filter(|c| c.service == service).collect();
        if mine.is_empty() {
            return Ok(Verdict::Pending {
                detail: "has no container".to_owned(),
                container: None,
            });
        }
        for container in mine {
            if let Some(expected) = self.covered.get(service) {
                if container.image_id != expected.image_id
                    || container.label(labels::STICKER_DIGEST)
                        != Some(expected.sticker_digest.as_str())
                {
                    return Ok(Verdict::Pending {
                        detail: format!(
                            "container {} does not run the pinned image under this deployment's sticker",
                            container.name
                        ),
                        container: Some(container.id.clone()),
                    });
                }
            }
            let inspect = engine.inspect(&container.id).await?;
            let verdict = container_verdict(container, &inspect, restarts);
            if !matches!(verdict, Verdict::Ready) {
                return Ok(verdict);
            }
        }
        Ok(Verdict::Ready)
    }
}

fn container_verdict(
    container: &ProjectContainer,
    inspect: &ContainerInspectResponse,
    restarts: &mut HashMap<String, i64>,
) -> Verdict {
    let state = inspect.state.clone().unwrap_or_default();
    let restart_count = inspect.restart_count.unwrap_or(0);
    let first_seen = *restarts
        .entry(container.id.clone())
        .or_insert(restart_count);
    let name = &container.name;
    let failed = |detail: String| Verdict::Failed {
        detail,
        container: container.id.clone(),
    };
    if state.restarting == Some(true) || restart_count > first_seen {
        return failed(format!(
            "container {name} exited (code {}) and is being restarted",
            state.exit_code.unwrap_or_default()
        ));
    }
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING) => {}
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            let code = state.exit_code.unwrap_or(-1);
            let policy = inspect
                .host_config
                .as_ref()
                .and_then(|h| h.restart_policy.as_ref())
                .and_then(|p| p.name)
                .map(|n| n.to_string())
                .unwrap_or_default();
            if code == 0 && matches!(policy.as_str(), "" | "no") {
                return Verdict::Ready;
            }
            let mut detail = format!("container {name} exited with code {code}");
            if let Some(error) = state.error.filter(|e| !e.is_empty()) {
                detail.push_str(&format!(": {error}"));
            }
            return failed(detail);
        }
        other => {
            return Verdict::Pending {
                detail: format!(
                    "container {name} is {}",
                    other.map_or("in no known state".to_owned(), |s| s.to_string())
                ),
                container: Some(container.id.clone()),
            }
        }
    }
    match state.health.as_ref().and_then(|h| h.status) {
        Some(HealthStatusEnum::HEALTHY) => Verdict::Ready,
        Some(status @ (HealthStatusEnum::STARTING | HealthStatusEnum::UNHEALTHY)) => {
            let last = state
                .health
                .as_ref()
                .and_then(|h| h.log.as_ref())
                .and_then(|log| log.last())
                .map(|result| {
                    let output = result.output.as_deref().map(one_line).unwrap_or_default();
                    format!(
                        "; last check exit code {}{}",
                        result.exit_code.unwrap_or_default(),
                        if output.is_empty() {
                            String::new()
                        } else {
                            format!(": {output}")
                        }
                    )
                })
                .unwrap_or_default();
            Verdict::Pending {
                detail: format!("container {name} is {status}{last}"),
                container: Some(container.id.clone()),
            }
        }
        // No health check: it must have kept running a moment.
        _ => {
            let running_for = state
                .started_at
                .as_deref()
                .and_then(|at| {
                    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|at| time::OffsetDateTime::now_utc() - at);
            match running_for {
                Some(elapsed) if elapsed >= SETTLE_TIME => Verdict::Ready,
                _ => Verdict::Pending {
                    detail: format!(
                        "container {name} has no health check and has not run {} s yet",
                        SETTLE_TIME.as_secs()
                    ),
                    container: Some(container.id.clone()),
                },
            }
        }
    }
}

async fn probe(http: &reqwest::Client, url: &str) -> Result<(), String> {
    match http.get(url).timeout(PROBE_TIMEOUT).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("GET {url} answered {}", response.status())),
        Err(error) => Err(format!("GET {url} failed: {}", error_chain(&error))),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
