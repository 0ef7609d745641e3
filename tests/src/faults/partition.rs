//! A partition between the agents and the server's gateway, longer than the
//! unreachable threshold, then healed.
//!
//! The cut is made by the kernel: `iptables` rules drop every packet to and from the
//! gateway's port on the loopback interface, so established connections stall (TCP
//! retransmits, HTTP/2 keepalive PINGs go unanswered) and new ones time out, exactly as
//! with a cable pulled between two hosts, while the REST API (another port) stays
//! reachable for the scenario to watch. Needs root (`CAP_NET_ADMIN`) and `iptables`; the
//! scenario fails when it cannot cut.
//!
//! First every environment gets release 1. Then release 2 is promoted to most of them
//! with applies long enough to be in flight at the cut; during the cut the others are
//! changed behind the agents' backs (drift) and more promotions are made. After the
//! heal: every deployment succeeds, each task was applied once, and the drift of every
//! tampered target reaches the server.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::fleet::Fleet;
use super::server::ServerProcess;
use super::{estate, Figures};
use crate::registry::TestRegistry;
use crate::wait_until;

/// The size and timing of one run.
#[derive(Debug, Clone)]
pub struct PartitionOptions {
    /// Environments (one `sim` target each).
    pub environments: usize,
    /// Of which this many are not promoted again but tampered with during the cut.
    pub tampered: usize,
    /// Agents the targets are spread over.
    pub agents: usize,
    /// How long applying release 2 takes at a target (spread evenly).
    pub apply_ms: (u64, u64),
    /// How long the cut lasts.
    pub cut: Duration,
    /// Requests sent at once.
    pub concurrency: usize,
    /// How long everything may take after the heal.
    pub recovery_timeout: Duration,
}

impl PartitionOptions {
    /// The full run of `cargo xtask faults`: a cut longer than the agents' keepalive
    /// (20 s + 10 s), so their sessions die and they reconnect after the heal.
    pub fn full() -> Self {
        PartitionOptions {
            environments: 200,
            tampered: 20,
            agents: 10,
            apply_ms: (2_000, 20_000),
            cut: Duration::from_secs(45),
            concurrency: 8,
            recovery_timeout: Duration::from_secs(180),
        }
    }

    /// The short form the test suite runs: a cut well past the unreachable threshold
    /// (three heartbeats of 1 s), short enough that the stalled connections survive it.
    pub fn short() -> Self {
        PartitionOptions {
            environments: 40,
            tampered: 8,
            agents: 4,
            apply_ms: (1_000, 10_000),
            cut: Duration::from_secs(10),
            concurrency: 8,
            recovery_timeout: Duration::from_secs(90),
        }
    }
}

/// Runs the scenario in `dir`.
pub async fn run(options: &PartitionOptions, dir: &Path) -> anyhow::Result<Figures> {
    let n = options.environments;
    let mut figures = Figures {
        scenario: format!(
            "partition of the agents from the gateway for {} s, then healed",
            options.cut.as_secs()
        ),
        n,
        ..Figures::default()
    };
    let registry = TestRegistry::start().await?;
    let v1 = registry.push_inert_image("faults/app", "1", "one").await?;
    let v2 = registry.push_inert_image("faults/app", "2", "two").await?;
    let server = ServerProcess::start(dir, "").await?;
    let grpc_port: u16 = server
        .grpc_addr
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .context("the gateway's port")?;
    let fleet = Fleet::start(&server.api, dir, options.agents).await?;
    let api = server.api.clone();
    for (version, image) in [("1", &v1), ("2", &v2)] {
        api.post(
            "/api/v1/releases",
            json!({"name": "app", "version": version, "components": {"app": image}}),
        )
        .await?;
    }
    let environments: Vec<String> = (0..n).map(|i| format!("p-{i:04}")).collect();
    // Release 1 applies at once: only release 2 is slow.
    estate::create(&api, &fleet, &environments, (0, 1), options.concurrency).await?;
    let first = estate::promote_all(&api, "app", "1", &environments, options.concurrency).await?;
    let done = estate::wait_finished(
        &api,
        first.clone(),
        options.concurrency,
        options.recovery_timeout,
    )
    .await;
    if !done.open.is_empty() {
        bail!("release 1 did not reach every target: {:?}", done.open);
    }
    // Release 2, slow, to the first part; the rest is tampered with during the cut.
    let split = n - options.tampered.min(n);
    let (promoted, tampered) = environments.split_at(split);
    let slow = options.apply_ms;
    set_apply_ms(&api, promoted, slow, options.concurrency).await?;
    let (before_cut, during_cut) = promoted.split_at(promoted.len() * 3 / 4);
    let mut second = estate::promote_all(&api, "app", "2", before_cut, options.concurrency).await?;
    wait_until(
        "release 2 reaches the agents",
        Duration::from_secs(60),
        || async { (fleet.ledger.len() > first.len()).then_some(()) },
    )
    .await?;

    let mut cut = Partition::cut(grpc_port)?;
    let cut_at = Instant::now();
    for (index, environment) in tampered.iter().enumerate() {
        let target = estate::target_of(environment);
        let agent = fleet.agent_for(split + index);
        if !agent.sim.tamper(&target) {
            figures.problem(format!("{target} had nothing running to tamper with"));
        }
    }
    second.extend(estate::promote_all(&api, "app", "2", during_cut, options.concurrency).await?);
    let names: Vec<String> = fleet.agents.iter().map(|a| a.name.clone()).collect();
    let unreachable = wait_until("every agent is unreachable", options.cut, || async {
        for name in &names {
            let agent = api.get(&format!("/api/v1/agents/{name}")).await.ok()?;
            if agent["state"] != "unreachable" {
                return None;
            }
        }
        Some(cut_at.elapsed())
    })
    .await;
    match &unreachable {
        Ok(after) => figures.extra.push((
            "unreachable after".to_owned(),
            format!("{:.2} s", after.as_secs_f64()),
        )),
        Err(error) => figures.problem(format!("{error:#}")),
    }
    tokio::time::sleep(options.cut.saturating_sub(cut_at.elapsed())).await;
    cut.heal()?;
    let healed = Instant::now();

    let reconnected = wait_until(
        "every agent is connected again",
        options.recovery_timeout,
        || async {
            for name in &names {
                let agent = api.get(&format!("/api/v1/agents/{name}")).await.ok()?;
                if agent["state"] != "connected" {
                    return None;
                }
            }
            Some(healed.elapsed())
        },
    )
    .await;
    match reconnected {
        Ok(after) => figures.extra.push((
            "reconnected after".to_owned(),
            format!("{:.2} s", after.as_secs_f64()),
        )),
        Err(error) => figures.problem(format!("{error:#}")),
    }
    let finished =
        estate::wait_finished(&api, second, options.concurrency, options.recovery_timeout).await;
    if finished.open.is_empty() {
        figures.recovered_after = Some(healed.elapsed());
    }
    // Release 1's deployments count too: each of their tasks applied once.
    let mut all = finished;
    all.finished.extend(done.finished);
    let reassigned = estate::count(&mut figures, &all, &fleet, true);

    // Every tampered target's drift reached the server.
    let wanted: HashSet<String> = tampered.iter().map(|e| estate::target_of(e)).collect();
    let drift = wait_until(
        "the drift of every tampered target is reported",
        options.recovery_timeout,
        || async {
            let open = api.get("/api/v1/drift").await.ok()?;
            let found: HashSet<String> = open
                .as_array()?
                .iter()
                .filter(|f| f["kind"] == "image_changed")
                .filter_map(|f| f["target"].as_str().map(str::to_owned))
                .collect();
            wanted.is_subset(&found).then(|| healed.elapsed())
        },
    )
    .await;
    match drift {
        Ok(after) => figures.extra.push((
            "drift reported".to_owned(),
            format!(
                "within {:.2} s of the heal (looked at once the deployments finished)",
                after.as_secs_f64()
            ),
        )),
        Err(error) => {
            figures.lost += 1;
            figures.problem(format!("drift lost: {error:#}"));
        }
    }
    figures.extra.extend([
        ("agents".to_owned(), options.agents.to_string()),
        (
            "promoted in the cut".to_owned(),
            during_cut.len().to_string(),
        ),
        ("tampered".to_owned(), tampered.len().to_string()),
        (
            "re-leased".to_owned(),
            format!("{reassigned} tasks ended under epoch > 1"),
        ),
        ("side effects".to_owned(), fleet.ledger.len().to_string()),
    ]);
    fleet.stop().await;
    drop(server);
    drop(registry);
    Ok(figures)
}

async fn set_apply_ms(
    api: &super::server::Api,
    environments: &[String],
    apply_ms: (u64, u64),
    concurrency: usize,
) -> anyhow::Result<()> {
    use futures::{stream, StreamExt};
    let span = apply_ms.1.saturating_sub(apply_ms.0).max(1);
    let results: Vec<anyhow::Result<()>> = stream::iter(environments.iter().enumerate())
        .map(|(index, environment)| {
            let api = api.clone();
            let ms = apply_ms.0 + (index as u64 * 7919) % span;
            async move {
                api.call(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/targets/{}", estate::target_of(environment)),
                    Some(json!({"set": {"apply_ms": ms.to_string()}})),
                )
                .await
                .and_then(|(status, body)| {
                    if (200..300).contains(&status) {
                        Ok(())
                    } else {
                        bail!("PATCH target of {environment}: {status} {body}")
                    }
                })
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Packets to and from a loopback port dropped by the kernel until healed (or dropped).
#[derive(Debug)]
pub struct Partition {
    port: u16,
    active: bool,
}

impl Partition {
    /// Drops every packet to and from `port` on the loopback interface.
    pub fn cut(port: u16) -> anyhow::Result<Self> {
        let mut partition = Partition {
            port,
            active: false,
        };
        for rule in partition.rules() {
            iptables("-I", &rule).context("cutting the network (needs root and iptables)")?;
            partition.active = true;
        }
        Ok(partition)
    }

    /// Lets the packets through again.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        if self.active {
            self.active = false;
            for rule in self.rules() {
                iptables("-D", &rule)?;
            }
        }
        Ok(())
    }

    fn rules(&self) -> [Vec<String>; 2] {
        let port = self.port.to_string();
        let rule = |direction: &str| {
            [
                "INPUT", "-i", "lo", "-p", "tcp", direction, &port, "-j", "DROP",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        [rule("--dport"), rule("--sport")]
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(error) = self.heal() {
            eprintln!(
                "could not heal the partition of port {}: {error:#}",
                self.port
            );
        }
    }
}

fn iptables(action: &str, rule: &[String]) -> anyhow::Result<()> {
    let output = Command::new("iptables")
        .arg(action)
        .args(rule)
        .output()
        .context("running iptables")?;
    if !output.status.success() {
        bail!(
            "iptables {action} {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
