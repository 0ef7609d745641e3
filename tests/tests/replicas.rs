//! Replicas over one PostgreSQL database: work created through one replica's API reaches
//! an agent whose session another replica holds at once (a dispatch notice), not at that
//! replica's next periodic sweep (every 2 s).

use std::time::{Duration, Instant};

use serde_json::json;
use stella_control_plane::domain::{Component, Digest, Release};
use stella_tests::faults::sim::{Ledger, SimTarget};
use stella_tests::{wait_until, TestAgent, TestServer};

/// Promotions measured.
const ROUNDS: usize = 20;
/// The periodic sweep of `gateway::run_background`, which notices must beat.
const SWEEP: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_through_one_replica_reaches_an_agent_on_another_without_the_sweep_delay(
) -> anyhow::Result<()> {
    let url = stella_tests::postgres::fresh_database_url().await?;
    let first = TestServer::start_with(|config| config.database_url = Some(url)).await?;
    let second = first.start_replica().await?;
    let third = first.start_replica().await?;

    // The agent's session is on the second replica; every promotion goes through the
    // first, and the third stands by (it must neither take nor disturb the work).
    let ledger = Ledger::new();
    let sim = SimTarget::new(std::sync::Arc::clone(&ledger));
    let _agent = TestAgent::start_driving(&second, "far", sim.registry()).await?;
    let shown = second
        .wait_for_state("far", "connected", Duration::from_secs(20))
        .await?;
    let agent_id = shown["id"].as_str().unwrap_or_default().to_owned();
    assert!(second.running().app.sessions.is_open(&agent_id));
    assert!(!first.running().app.sessions.is_open(&agent_id));
    assert!(!third.running().app.sessions.is_open(&agent_id));

    first
        .post(
            "/api/v1/environments",
            json!({"name": "dev", "allow_unscanned": true}),
        )
        .await?;
    first
        .post(
            "/api/v1/targets",
            json!({"name": "t-far", "environment": "dev", "kind": "sim", "agent": "far",
                   "settings": {}}),
        )
        .await?;
    // Releases straight into the shared store: resolving tags would need a registry,
    // and the path measured starts at the promotion.
    let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64)))?;
    for round in 1..=ROUNDS {
        first
            .running()
            .app
            .store
            .create_release(&Release {
                name: "app".to_owned(),
                version: round.to_string(),
                components: vec![Component {
                    name: "app".to_owned(),
                    source: "registry.example.com/app:v1".to_owned(),
                    image: format!("registry.example.com/app@{digest}"),
                    digest: digest.clone(),
                }],
                created_by: "test".to_owned(),
                created_at_ms: 0,
            })
            .await?;
    }

    let mut latencies = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let asked = Instant::now();
        let reply = first
            .post(
                "/api/v1/promotions",
                json!({"release": "app", "version": round.to_string(), "environment": "dev"}),
            )
            .await?;
        let id = reply["deployment_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no deployment id in {reply}"))?
            .to_owned();
        let applied = wait_until(
            &format!("round {round} reaches the agent"),
            Duration::from_secs(20),
            || async {
                ledger
                    .effects()
                    .into_iter()
                    .find(|effect| effect.deployment_id == id)
                    .map(|effect| effect.at)
            },
        )
        .await?;
        latencies.push(applied.saturating_duration_since(asked));
        let finished = first.wait_deployment(&id, Duration::from_secs(20)).await?;
        assert_eq!(finished["state"], "succeeded", "{finished}");
    }

    latencies.sort();
    let p50 = latencies[ROUNDS / 2];
    let p90 = latencies[ROUNDS * 9 / 10];
    let max = latencies[ROUNDS - 1];
    println!(
        "promotion on replica 1 -> task applied by an agent on replica 2, {ROUNDS} rounds: \
         p50 {} ms, p90 {} ms, max {} ms",
        p50.as_millis(),
        p90.as_millis(),
        max.as_millis()
    );
    assert!(
        p50 < Duration::from_millis(500),
        "p50 {p50:?}: dispatch waited for the sweep ({SWEEP:?}) instead of the notice"
    );
    assert_eq!(ledger.len(), ROUNDS, "every round applied once");
    assert!(ledger.duplicated().is_empty(), "{:?}", ledger.duplicated());
    Ok(())
}
