//! SIGKILL of one of three replicas over one PostgreSQL database while deployments are
//! in flight.
//!
//! The agents reach the gateways through a TCP load balancer ([`Balancer`]: the URL the
//! replicas advertise), so their sessions are spread over the three replicas. Once the
//! deployments are in flight, the busier of the first two replicas gets SIGKILL (the
//! third is watched): the sessions it held break, its
//! agents reconnect through the balancer to the two others, and the tasks it had sent
//! are sent again under a new epoch by the replica that takes each agent's new session
//! (the agent's journal answers those it finished). Counted as in `server_kill`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::balancer::Balancer;
use super::fleet::Fleet;
use super::server::ServerProcess;
use super::{estate, Figures};
use crate::registry::TestRegistry;

/// The size and timing of one run.
#[derive(Debug, Clone)]
pub struct ReplicaKillOptions {
    /// Deployments (one environment with one target each).
    pub deployments: usize,
    /// Agents.
    pub agents: usize,
    /// How long an apply takes (spread evenly).
    pub apply_ms: (u64, u64),
    /// Requests sent at once.
    pub concurrency: usize,
    /// How long every deployment may take after the kill.
    pub recovery_timeout: Duration,
}

impl ReplicaKillOptions {
    /// The full run of `cargo xtask faults`.
    pub fn full() -> Self {
        ReplicaKillOptions {
            deployments: 300,
            agents: 12,
            apply_ms: (3_000, 15_000),
            concurrency: 8,
            recovery_timeout: Duration::from_secs(300),
        }
    }

    /// The short form the test suite runs.
    pub fn short() -> Self {
        ReplicaKillOptions {
            deployments: 60,
            agents: 6,
            apply_ms: (1_000, 8_000),
            concurrency: 8,
            recovery_timeout: Duration::from_secs(120),
        }
    }
}

/// Runs the scenario in `dir`.
pub async fn run(options: &ReplicaKillOptions, dir: &Path) -> anyhow::Result<Figures> {
    let n = options.deployments;
    let mut figures = Figures {
        scenario: "SIGKILL of one of three replicas (PostgreSQL) during deployments".to_owned(),
        n,
        ..Figures::default()
    };
    let registry = TestRegistry::start().await?;
    let image = registry
        .push_inert_image("faults/app", "1", "replicas")
        .await?;
    let url = crate::postgres::fresh_database_url().await?;

    // The balancer's port first: the replicas advertise it to the agents.
    let mut gateways = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = crate::free_port().await?;
        ports.push(port);
        gateways.push(format!("127.0.0.1:{port}"));
    }
    let balancer = Balancer::start(gateways.clone()).await?;
    let config = |index: usize| {
        format!(
            "database_url = {url:?}\ngrpc_advertise_url = \"https://{}\"\n# gateway of replica {index}\n",
            balancer.addr
        )
    };
    let first_dir = dir.join("replica-0");
    std::fs::create_dir_all(&first_dir)?;
    let mut replicas =
        vec![ServerProcess::start_with_ports(&first_dir, &config(0), ports[0]).await?];
    for (index, port) in ports.iter().enumerate().skip(1) {
        let replica_dir = dir.join(format!("replica-{index}"));
        std::fs::create_dir_all(&replica_dir)?;
        let replica = replicas[0]
            .start_replica_with_port(&replica_dir, &config(index), *port)
            .await?;
        replicas.push(replica);
    }
    // Watched and driven through the replica that stays up.
    let api = replicas[2].api.clone();
    let fleet = Fleet::start(&api, dir, options.agents).await?;
    api.post(
        "/api/v1/releases",
        json!({"name": "app", "version": "1", "components": {"app": image}}),
    )
    .await?;
    let environments: Vec<String> = (0..n).map(|i| format!("r-{i:04}")).collect();
    estate::create(
        &api,
        &fleet,
        &environments,
        options.apply_ms,
        options.concurrency,
    )
    .await?;
    // Promotions through every replica in turn.
    let mut ids = Vec::with_capacity(n);
    for (index, chunk) in environments.chunks(options.concurrency).enumerate() {
        let via = &replicas[index % 3].api;
        ids.extend(estate::promote_all(via, "app", "1", chunk, options.concurrency).await?);
    }
    let mut sessions = Vec::new();
    for replica in &replicas {
        sessions.push(replica.api.agent_sessions().await?);
    }
    // The busier of the first two is killed; the third is the one watched.
    let victim = if sessions[1] > sessions[0] { 1 } else { 0 };
    if sessions[victim] == 0 {
        figures.problem(format!(
            "no replica to kill held an agent session (sessions per replica: {sessions:?})"
        ));
    }
    let killed_at = Instant::now();
    replicas[victim].kill().await?;
    let applied_at_kill = fleet.ledger.len();

    let finished =
        estate::wait_finished(&api, ids, options.concurrency, options.recovery_timeout).await;
    if finished.open.is_empty() {
        figures.recovered_after = Some(killed_at.elapsed());
    }
    let reassigned = estate::count(&mut figures, &finished, &fleet, true);
    figures.extra = vec![
        ("agents".to_owned(), options.agents.to_string()),
        (
            "sessions".to_owned(),
            format!("{sessions:?} per replica before the kill; replica {victim} killed"),
        ),
        ("applied at kill".to_owned(), applied_at_kill.to_string()),
        (
            "re-leased".to_owned(),
            format!("{reassigned} tasks ended under epoch > 1"),
        ),
        ("side effects".to_owned(), fleet.ledger.len().to_string()),
    ];
    fleet.stop().await;
    for replica in &mut replicas {
        replica.kill().await?;
    }
    drop(balancer);
    Ok(figures)
}
