//! Slots (RFC 0005): a release deployed beside the stable container on a port the engine
//! picks, reported as endpoints, invisible to the stable deployment and to drift, and
//! retired; slot names checked; a slot that fails leaves nothing behind.

use super::*;

use stella_agent_core::{ApplyOutcome, Endpoint};

impl World {
    /// [`World::task`] deploying to `slot`.
    fn slot_task(
        &self,
        version: &str,
        image: &str,
        settings: BTreeMap<String, String>,
        slot: &str,
    ) -> DeployTask {
        let mut task = self.task(version, image, settings);
        task.slot = Some(slot.to_owned());
        task
    }

    /// Retires `slot` of the target; the outcome (or the error chain) and the progress
    /// lines.
    async fn retire(
        &self,
        target: &TargetSpec,
        slot: &str,
    ) -> (Result<ApplyOutcome, String>, Vec<String>) {
        let (progress, mut lines) = Progress::channel("agent-test", format!("retire-{slot}"));
        let result = self.target.retire(target, slot, &progress).await;
        drop(progress);
        let mut collected = Vec::new();
        while let Some(line) = lines.recv().await {
            collected.push(line);
        }
        (
            result.map_err(|error| stella_agent_core::error_chain(&error)),
            collected,
        )
    }

    /// The id of the container `name`, if there is one.
    async fn container_id(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(inspect) => Ok(inspect.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The ports container `name` bound, read from the engine as `docker port` shows
    /// them: `(container port/protocol, host ip, host port)`, sorted.
    async fn bound_ports(&self, name: &str) -> anyhow::Result<Vec<(String, String, u16)>> {
        let inspect = self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await?;
        let ports = inspect
            .network_settings
            .and_then(|s| s.ports)
            .unwrap_or_default();
        let mut bound = Vec::new();
        for (key, bindings) in ports {
            for binding in bindings.unwrap_or_default() {
                bound.push((
                    key.clone(),
                    binding.host_ip.unwrap_or_default(),
                    binding.host_port.unwrap_or_default().parse()?,
                ));
            }
        }
        bound.sort();
        Ok(bound)
    }
}

/// The endpoints as `(container port/protocol, host ip, host port)`, sorted, to compare
/// with [`World::bound_ports`].
fn as_bound(endpoints: &[Endpoint]) -> Vec<(String, String, u16)> {
    let mut bound: Vec<_> = endpoints
        .iter()
        .map(|e| {
            (
                format!("{}/{}", e.container_port, e.protocol),
                e.host_ip.clone(),
                e.host_port,
            )
        })
        .collect();
    bound.sort();
    bound
}

#[tokio::test]
async fn a_slot_runs_beside_a_fixed_port_stable_container_until_it_is_retired() -> anyhow::Result<()>
{
    let world = World::new("dk-slot").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let port = free_port().await?;
    let mut settings = world.settings();
    settings.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));
    let fixed = format!("http://127.0.0.1:{port}/");
    let stable_name = world.container_name();
    let slot_name = format!("{stable_name}-canary");

    // The stable container on the fixed port, its endpoint reported.
    let stable_task = world.task("1.0.0", &v1, settings.clone());
    let (stable, _) = world
        .apply(&stable_task)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(stable.slot, None);
    assert_eq!(
        stable.endpoints,
        vec![Endpoint {
            component: "web".to_owned(),
            container_port: 8080,
            protocol: "tcp".to_owned(),
            host_ip: "127.0.0.1".to_owned(),
            host_port: port,
        }]
    );
    assert_eq!(
        as_bound(&stable.endpoints),
        world.bound_ports(&stable_name).await?
    );
    assert_eq!(get_text(&world.http, &fixed).await?, "v1");
    let stable_id = world
        .container_id(&stable_name)
        .await?
        .context("the stable container")?;

    // v2 in slot canary: a second container on a port the engine picked.
    let canary_task = world.slot_task("2.0.0", &v2, settings.clone(), "canary");
    let plan = world.target.plan(&canary_task).await?;
    assert!(
        plan.steps
            .iter()
            .any(|s| s.contains(&format!("create slot container {slot_name}"))),
        "{plan:?}"
    );
    let (canary, lines) = world
        .apply(&canary_task)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("slot deploy: {}\n{lines:#?}", canary.summary);
    assert_eq!(canary.slot.as_deref(), Some("canary"));
    assert!(canary.stickers.is_empty(), "a slot writes no sticker");
    assert!(
        canary.summary.contains("in slot canary") && canary.summary.contains("web deployed"),
        "{}",
        canary.summary
    );
    assert_eq!(canary.endpoints.len(), 1, "{:?}", canary.endpoints);
    let endpoint = canary.endpoints[0].clone();
    assert_eq!(
        (
            endpoint.component.as_str(),
            endpoint.container_port,
            endpoint.protocol.as_str(),
            endpoint.host_ip.as_str()
        ),
        ("web", 8080, "tcp", "127.0.0.1")
    );
    assert_ne!(endpoint.host_port, port, "the engine picked another port");
    assert_eq!(
        as_bound(&canary.endpoints),
        world.bound_ports(&slot_name).await?
    );
    let slot_url = format!("http://127.0.0.1:{}/", endpoint.host_port);
    assert_eq!(get_text(&world.http, &slot_url).await?, "v2");
    assert_eq!(get_text(&world.http, &fixed).await?, "v1");

    let slot_labels = labels_of(&world, &slot_name).await?;
    assert_eq!(
        slot_labels.get(labels::SLOT).map(String::as_str),
        Some("canary")
    );
    assert_eq!(
        slot_labels.get(labels::TARGET),
        Some(&world.name),
        "{slot_labels:?}"
    );
    assert_eq!(
        slot_labels.get(labels::VERSION).map(String::as_str),
        Some("2.0.0")
    );
    assert!(!slot_labels.contains_key(labels::STICKER_DIGEST));
    assert!(!labels_of(&world, &stable_name)
        .await?
        .contains_key(labels::SLOT));

    // The stable container is untouched, its sticker still v1's, and neither inspect nor
    // drift sees the slot.
    assert_eq!(
        world.container_id(&stable_name).await?.as_deref(),
        Some(stable_id.as_str())
    );
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?.image,
        v1
    );
    let observed = world.target.inspect(&stable_task.target).await?;
    assert_eq!(observed.len(), 1, "{observed:?}");
    assert_eq!(observed[0].image_digest, digest_of(&v1));
    assert_eq!(world.target.detect_drift(&stable_task).await?, vec![]);

    // The same slot task again: up to date, the same endpoint.
    let (again, _) = world
        .apply(&canary_task)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        again.summary.contains("web already up to date"),
        "{}",
        again.summary
    );
    assert_eq!(again.endpoints, canary.endpoints);
    let slot_id = world
        .container_id(&slot_name)
        .await?
        .context("the slot container")?;

    // The stable task again is up to date too and leaves the slot alone.
    let (stable_again, _) = world
        .apply(&stable_task)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        stable_again.summary.contains("web already up to date"),
        "{}",
        stable_again.summary
    );
    assert_eq!(stable_again.endpoints, stable.endpoints);
    assert_eq!(
        world.container_id(&slot_name).await?.as_deref(),
        Some(slot_id.as_str())
    );
    assert_eq!(get_text(&world.http, &slot_url).await?, "v2");

    // Another image in the slot replaces its container.
    let back_task = world.slot_task("1.0.0", &v1, settings.clone(), "canary");
    let (back, _) = world.apply(&back_task).await.map_err(anyhow::Error::msg)?;
    assert!(back.summary.contains("web replaced"), "{}", back.summary);
    let replaced_id = world
        .container_id(&slot_name)
        .await?
        .context("the new slot container")?;
    assert_ne!(replaced_id, slot_id);
    assert_eq!(
        as_bound(&back.endpoints),
        world.bound_ports(&slot_name).await?
    );
    let back_url = format!("http://127.0.0.1:{}/", back.endpoints[0].host_port);
    assert_eq!(get_text(&world.http, &back_url).await?, "v1");
    assert_eq!(
        world.container_id(&stable_name).await?.as_deref(),
        Some(stable_id.as_str())
    );

    // Retire: the slot container goes, the stable one keeps serving.
    let (retired, lines) = world.retire(&stable_task.target, "canary").await;
    let retired = retired.map_err(anyhow::Error::msg)?;
    println!("retire: {}\n{lines:#?}", retired.summary);
    assert_eq!(retired.summary, "retired slot canary: removed 1 container");
    assert_eq!(retired.slot.as_deref(), Some("canary"));
    assert!(retired.stickers.is_empty() && retired.endpoints.is_empty());
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("web: stopping slot container {slot_name}, up to 10 s")),
        "{lines:#?}"
    );
    assert_eq!(world.container_id(&slot_name).await?, None);
    assert_eq!(
        world.only_container().await?.id.as_deref(),
        Some(stable_id.as_str())
    );
    assert_eq!(get_text(&world.http, &fixed).await?, "v1");
    assert_eq!(world.target.detect_drift(&stable_task).await?, vec![]);

    // Retiring again: nothing to remove, and that is fine.
    let (again, _) = world.retire(&stable_task.target, "canary").await;
    assert_eq!(
        again.map_err(anyhow::Error::msg)?.summary,
        "retired slot canary: nothing to remove"
    );
    Ok(())
}

#[tokio::test]
async fn bad_slot_names_are_refused_and_a_failing_slot_leaves_nothing() -> anyhow::Result<()> {
    let world = World::new("dk-slotfail").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    let stable_task = world.task("1.0.0", &v1, world.settings());
    world
        .apply(&stable_task)
        .await
        .map_err(anyhow::Error::msg)?;
    let stable = world.only_container().await?;

    for (slot, expected) in [
        ("Bad!", "is not a valid slot name"),
        ("stable", "names the target's own deployment"),
        ("next", "cannot be used on a docker target"),
    ] {
        let task = world.slot_task("1.0.0", &v1, world.settings(), slot);
        let error = world.apply(&task).await.expect_err(slot);
        assert!(error.contains(expected), "{slot}: {error}");
        let error = world.target.plan(&task).await.expect_err(slot).to_string();
        assert!(error.contains(expected), "{slot}: {error}");
        let (retired, _) = world.retire(&stable_task.target, slot).await;
        let error = retired.expect_err(slot);
        assert!(error.contains(expected), "{slot}: {error}");
    }
    assert_eq!(world.only_container().await?.id, stable.id);

    // v3 never becomes healthy: the slot container is removed and the task fails.
    let task = world.slot_task("3.0.0", &v3, world.settings_with_timeout(3), "canary");
    let (result, lines) = world.apply_with_lines(&task).await;
    let error = result.expect_err("v3 is unhealthy");
    println!("unhealthy slot: {error}");
    assert!(
        error.contains(&format!(
            "container {}-canary did not become healthy within 3 s",
            world.container_name()
        )),
        "{error}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("removed the failed slot container")),
        "{lines:#?}"
    );
    let after = world.only_container().await?;
    assert_eq!(after.id, stable.id, "only the stable container is left");
    assert_eq!(world.served_version(&after).await?, "v1");
    assert_eq!(world.target.detect_drift(&stable_task).await?, vec![]);
    Ok(())
}
