//! What other target kinds that drive the local engine share with this one: connecting,
//! pulling an image by digest with per-layer progress, and watching container events by
//! label.

use std::collections::HashMap;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptions, EventsOptions};
use bollard::Docker;
use futures::StreamExt;
use stella_agent_core::{error_chain, CancellationToken, Progress};
use tokio::sync::mpsc;

use crate::image_ref::ImageRef;

/// Container events that can change what runs.
const WATCHED_EVENTS: &[&str] = &["start", "stop", "die", "destroy", "rename"];
/// Longest wait before the event stream is opened again.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// How connecting to the local engine failed.
#[derive(Debug)]
pub enum ConnectFailure {
    /// A step of the handshake failed: `connect to the local socket`, `negotiate the api
    /// version` or `ping`.
    Engine(&'static str, bollard::errors::Error),
    /// The engine did not answer within this many seconds.
    NoAnswer(u64),
}

/// Connects to `/var/run/docker.sock` (or `DOCKER_HOST`'s socket), settles on an API
/// version both sides speak (bollard's default is newer than many installed engines),
/// and pings, within `timeout`: a hung engine must not hold up the agent's start for
/// bollard's 2 minutes.
pub async fn connect_local(timeout: Duration) -> Result<Docker, ConnectFailure> {
    let docker = Docker::connect_with_socket_defaults()
        .map_err(|e| ConnectFailure::Engine("connect to the local socket", e))?;
    let handshake = async {
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| ConnectFailure::Engine("negotiate the api version", e))?;
        docker
            .ping()
            .await
            .map_err(|e| ConnectFailure::Engine("ping", e))?;
        Ok(docker)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ConnectFailure::NoAnswer(timeout.as_secs()))?
}

/// How a pull ended without the image.
#[derive(Debug)]
pub enum PullFailure {
    /// The task was cancelled.
    Cancelled,
    /// The engine refused or failed.
    Engine(bollard::errors::Error),
}

/// Pulls `image` by digest, reporting each layer's state changes as progress lines
/// (after `prefix`). The credentials go to the engine only (`X-Registry-Auth`).
pub async fn pull_by_digest(
    docker: &Docker,
    image: &ImageRef,
    credentials: Option<DockerCredentials>,
    prefix: &str,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(), PullFailure> {
    let options = CreateImageOptions {
        from_image: Some(image.repository.clone()),
        tag: Some(image.digest.clone()),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(options), None, credentials);
    let mut last_status: HashMap<String, String> = HashMap::new();
    loop {
        let item = tokio::select! {
            () = cancel.cancelled() => return Err(PullFailure::Cancelled),
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        let info = item.map_err(PullFailure::Engine)?;
        let Some(status) = info.status else { continue };
        let layer = info.id.unwrap_or_default();
        // Byte counters change many times a second; report only state changes.
        if last_status.get(&layer) == Some(&status) {
            continue;
        }
        last_status.insert(layer.clone(), status.clone());
        if layer.is_empty() {
            progress.report(format!("{prefix}pull: {status}"));
        } else {
            progress.report(format!("{prefix}pull: {layer}: {status}"));
        }
    }
    Ok(())
}

/// Follows the engine's events of containers carrying `label`; for each, sends on
/// `notify` the target `target_of` names for the label's value (if any). Reconnects with
/// backoff; ends when `notify` closes.
pub async fn watch_labelled(
    docker: Docker,
    label: &'static str,
    notify: mpsc::UnboundedSender<String>,
    target_of: impl Fn(&str) -> Option<String> + Send,
) {
    let mut retry = Duration::from_secs(1);
    loop {
        let options = EventsOptions {
            filters: Some(HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                (
                    "event".to_owned(),
                    WATCHED_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
                ),
                ("label".to_owned(), vec![label.to_owned()]),
            ])),
            ..Default::default()
        };
        let mut events = docker.events(Some(options));
        loop {
            let event = tokio::select! {
                () = notify.closed() => return,
                event = events.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    retry = Duration::from_secs(1);
                    let target = event
                        .actor
                        .and_then(|actor| actor.attributes)
                        .and_then(|attributes| attributes.get(label).and_then(|v| target_of(v)));
                    if let Some(target) = target {
                        tracing::debug!(target = %target, action = ?event.action, "container event");
                        if notify.send(target).is_err() {
                            return;
                        }
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %error_chain(&error), "docker event stream failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("docker event stream ended; reconnecting");
                    break;
                }
            }
        }
        tokio::select! {
            () = notify.closed() => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(WATCH_RETRY_MAX);
    }
}
