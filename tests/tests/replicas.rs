//! Replicas over one PostgreSQL database: work created or cancelled through one
//! replica's API reaches an agent whose session another replica holds at once (a
//! dispatch notice), not at that replica's next periodic sweep (every 2 s), also after
//! the replicas' notice connections were cut.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;
use stella_control_plane::domain::{Component, Digest, Release, TenantId};
use stella_tests::faults::sim::{Ledger, SimTarget};
use stella_tests::{wait_until, TestServer};

/// Promotions measured.
const ROUNDS: usize = 20;
/// The periodic sweep of `gateway::run_background`, which notices must beat.
const SWEEP: Duration = Duration::from_secs(2);

/// Three replicas on one fresh PostgreSQL database, and an agent driving the `sim` kind
/// whose session is on the second; `dev` has one target of it (`apply_ms` as given) and
/// releases `app@1` to `app@{ROUNDS}` exist. All of it in `tenant` when given (a schema
/// of its own), else in `default`.
struct Cluster {
    first: TestServer,
    second: TestServer,
    third: TestServer,
    url: String,
    ledger: Arc<Ledger>,
    /// Who calls the API, and in which tenant.
    token: String,
    tenant: Option<&'static str>,
    _agent: tokio_util::sync::DropGuard,
}

impl Cluster {
    async fn start(apply_ms: u64) -> anyhow::Result<Cluster> {
        Cluster::start_in(None, apply_ms).await
    }

    async fn start_in(tenant: Option<&'static str>, apply_ms: u64) -> anyhow::Result<Cluster> {
        let url = stella_tests::postgres::fresh_database_url().await?;
        let first = {
            let url = url.clone();
            TestServer::start_with(|config| config.database_url = Some(url)).await?
        };
        let second = first.start_replica().await?;
        let third = first.start_replica().await?;
        let token = match tenant {
            None => first.admin_token.clone(),
            Some(tenant) => {
                first
                    .post("/api/v1/tenants", json!({"name": tenant}))
                    .await?;
                let created = first
                    .post(
                        "/api/v1/users",
                        json!({"name": "alice", "roles": ["viewer"]}),
                    )
                    .await?;
                first
                    .post(
                        "/api/v1/users/alice/bindings",
                        json!({"tenant": tenant, "role": "admin"}),
                    )
                    .await?;
                created["token"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("no token in {created}"))?
                    .to_owned()
            }
        };
        let mut cluster = Cluster {
            first,
            second,
            third,
            url,
            ledger: Ledger::new(),
            token,
            tenant,
            _agent: tokio_util::sync::CancellationToken::new().drop_guard(),
        };

        // No wait for the other replicas to open a tenant made on the first: a join
        // token they cannot place makes them read the tenant list again at once.
        // The agent enrols and connects through the second replica; every call goes
        // through the first; the third stands by (it must neither take nor disturb the
        // work).
        let join = cluster
            .call(
                &cluster.first,
                Method::POST,
                "/api/v1/agents/join-tokens",
                Some(json!({})),
            )
            .await?;
        let mut config = stella_tests::test_agent_config(&cluster.second.dir.path().join("agent"));
        config.server_url = Some(cluster.second.api_url());
        config.join_token = join["token"].as_str().map(str::to_owned);
        config.name = Some("far".to_owned());
        let sim = SimTarget::new(Arc::clone(&cluster.ledger));
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(stella_agent_core::run(
            config,
            sim.registry(),
            shutdown.clone(),
        ));
        cluster._agent = shutdown.drop_guard();
        let shown = wait_until("far is connected", Duration::from_secs(20), || async {
            let agent = cluster
                .call(&cluster.first, Method::GET, "/api/v1/agents/far", None)
                .await
                .ok()?;
            (agent["state"] == "connected").then_some(agent)
        })
        .await?;
        let agent_id = shown["id"].as_str().unwrap_or_default().to_owned();
        assert!(cluster.second.running().app.sessions.is_open(&agent_id));
        assert!(!cluster.first.running().app.sessions.is_open(&agent_id));
        assert!(!cluster.third.running().app.sessions.is_open(&agent_id));

        cluster
            .call(
                &cluster.first,
                Method::POST,
                "/api/v1/environments",
                Some(json!({"name": "dev", "allow_unscanned": true})),
            )
            .await?;
        cluster
            .call(
                &cluster.first,
                Method::POST,
                "/api/v1/targets",
                Some(json!({"name": "t-far", "environment": "dev", "kind": "sim",
                            "agent": "far", "settings": {"apply_ms": apply_ms.to_string()}})),
            )
            .await?;
        // Releases straight into the shared store: resolving tags would need a
        // registry, and the path measured starts at the promotion.
        let tenant_id: TenantId = tenant
            .unwrap_or(TenantId::DEFAULT)
            .parse()
            .map_err(|e| anyhow::anyhow!("tenant name: {e}"))?;
        let store = cluster
            .first
            .running()
            .tenants
            .get(&tenant_id)
            .await?
            .store
            .clone();
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64)))?;
        for round in 1..=ROUNDS {
            store
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
        Ok(cluster)
    }

    /// A call to `server`'s API as this cluster's user in its tenant, expecting 2xx.
    async fn call(
        &self,
        server: &TestServer,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = server
            .client()
            .request(method.clone(), format!("{}{path}", server.api_url()))
            .bearer_auth(&self.token);
        if let Some(tenant) = self.tenant {
            request = request.header("X-StellaOps-Tenant", tenant);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let reply: Value = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {reply}");
        Ok(reply)
    }

    /// GET through the first replica.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(&self.first, Method::GET, path, None).await
    }

    /// Waits until deployment `id` finished; returns it.
    async fn finished(&self, id: &str) -> anyhow::Result<Value> {
        wait_until(
            &format!("deployment {id} finishes"),
            Duration::from_secs(20),
            || async {
                let deployment = self.get(&format!("/api/v1/deployments/{id}")).await.ok()?;
                matches!(
                    deployment["state"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
                .then_some(deployment)
            },
        )
        .await
    }

    /// Promotes `app@round` to `dev` through the first replica; returns the deployment
    /// id and when the call was made.
    async fn promote(&self, round: usize) -> anyhow::Result<(String, Instant)> {
        let asked = Instant::now();
        let reply = self
            .call(
                &self.first,
                Method::POST,
                "/api/v1/promotions",
                Some(json!({"release": "app", "version": round.to_string(), "environment": "dev"})),
            )
            .await?;
        let id = reply["deployment_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no deployment id in {reply}"))?
            .to_owned();
        Ok((id, asked))
    }

    /// Promotes `app@round` and waits until the agent applied it; returns the time from
    /// the call to the apply, once the deployment succeeded.
    async fn promote_and_measure(&self, round: usize) -> anyhow::Result<Duration> {
        let (id, asked) = self.promote(round).await?;
        let applied = wait_until(
            &format!("round {round} reaches the agent"),
            Duration::from_secs(20),
            || async {
                self.ledger
                    .effects()
                    .into_iter()
                    .find(|effect| effect.deployment_id == id)
                    .map(|effect| effect.at)
            },
        )
        .await?;
        let finished = self.finished(&id).await?;
        assert_eq!(finished["state"], "succeeded", "{finished}");
        Ok(applied.saturating_duration_since(asked))
    }

    /// The server process ids of the database sessions listening for dispatch notices.
    async fn listeners(&self) -> anyhow::Result<Vec<i32>> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%stella_dispatch%' \
             ORDER BY pid",
        )
        .fetch_all(&mut conn)
        .await?;
        conn.close().await.ok();
        Ok(pids)
    }
}

/// p50, p90 and max of `latencies`, sorted in place.
fn figures(latencies: &mut [Duration]) -> (Duration, Duration, Duration) {
    latencies.sort();
    let n = latencies.len();
    (latencies[n / 2], latencies[n * 9 / 10], latencies[n - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_through_one_replica_reaches_an_agent_on_another_without_the_sweep_delay(
) -> anyhow::Result<()> {
    let cluster = Cluster::start(0).await?;
    let mut latencies = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        latencies.push(cluster.promote_and_measure(round).await?);
    }
    let (p50, p90, max) = figures(&mut latencies);
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
    let notices = cluster
        .second
        .running()
        .app
        .metrics
        .delivery
        .dispatch_notices
        .get();
    assert!(notices >= ROUNDS as u64, "{notices} notices acted on");
    assert_eq!(cluster.ledger.len(), ROUNDS, "every round applied once");
    assert!(
        cluster.ledger.duplicated().is_empty(),
        "{:?}",
        cluster.ledger.duplicated()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_through_one_replica_stops_the_task_on_another_without_the_sweep_delay(
) -> anyhow::Result<()> {
    const CANCELS: usize = 5;
    let cluster = Cluster::start(60_000).await?;
    let mut latencies = Vec::with_capacity(CANCELS);
    for round in 1..=CANCELS {
        let (id, _) = cluster.promote(round).await?;
        let task_id = wait_until(
            &format!("round {round}'s task runs"),
            Duration::from_secs(20),
            || async {
                let logs = cluster
                    .get(&format!("/api/v1/deployments/{id}/logs"))
                    .await
                    .ok()?;
                let applying = logs.as_array()?.iter().any(|line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("applying"))
                });
                let deployment = cluster
                    .get(&format!("/api/v1/deployments/{id}"))
                    .await
                    .ok()?;
                let task_id = deployment["tasks"][0]["id"].as_str().map(str::to_owned);
                task_id.filter(|_| applying)
            },
        )
        .await?;
        let asked = Instant::now();
        cluster
            .call(
                &cluster.first,
                Method::POST,
                &format!("/api/v1/deployments/{id}/cancel"),
                Some(json!({})),
            )
            .await?;
        let stopped = wait_until(
            &format!("round {round}'s task stops"),
            Duration::from_secs(20),
            || async { cluster.ledger.stopped_at(&task_id) },
        )
        .await?;
        latencies.push(stopped.saturating_duration_since(asked));
        let finished = cluster.finished(&id).await?;
        assert_eq!(finished["state"], "cancelled", "{finished}");
    }
    let (p50, p90, max) = figures(&mut latencies);
    println!(
        "cancel on replica 1 -> apply stopped on an agent on replica 2, {CANCELS} rounds: \
         p50 {} ms, p90 {} ms, max {} ms",
        p50.as_millis(),
        p90.as_millis(),
        max.as_millis()
    );
    assert!(
        p50 < Duration::from_millis(500),
        "p50 {p50:?}: the cancel waited for the sweep ({SWEEP:?}) instead of the notice"
    );
    assert!(cluster.ledger.is_empty(), "no cancelled task was applied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_listen_again_after_their_notice_connections_are_cut() -> anyhow::Result<()> {
    let cluster = Cluster::start(0).await?;
    let replicas = [&cluster.first, &cluster.second, &cluster.third].len();
    let cut = wait_until("every replica listens", Duration::from_secs(10), || async {
        Some(cluster.listeners().await.ok()?).filter(|pids| pids.len() == replicas)
    })
    .await?;
    // As a failover or an idle-connection reaper of the database would.
    let mut admin = sqlx::PgConnection::connect(&cluster.url).await?;
    for pid in &cut {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await?;
    }
    admin.close().await.ok();
    wait_until(
        "every replica listens again, on new connections",
        Duration::from_secs(10),
        || async {
            let pids = cluster.listeners().await.ok()?;
            (pids.len() == replicas && pids.iter().all(|pid| !cut.contains(pid))).then_some(())
        },
    )
    .await?;
    let mut latencies = Vec::new();
    for round in 1..=5 {
        latencies.push(cluster.promote_and_measure(round).await?);
    }
    let reconnects = cluster
        .second
        .running()
        .app
        .metrics
        .delivery
        .dispatch_listener_reconnects
        .get();
    assert_eq!(reconnects, 1, "the second replica counted its reconnect");
    let (p50, _, max) = figures(&mut latencies);
    println!(
        "after the notice connections were cut: p50 {} ms, max {} ms",
        p50.as_millis(),
        max.as_millis()
    );
    assert!(
        p50 < Duration::from_millis(500),
        "p50 {p50:?}: the notices did not come back after the cut"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_promotion_through_one_replica_reaches_its_agent_on_another() -> anyhow::Result<()>
{
    let cluster = Cluster::start_in(Some("team-a"), 0).await?;
    let mut latencies = Vec::new();
    for round in 1..=5 {
        latencies.push(cluster.promote_and_measure(round).await?);
    }
    let (p50, _, max) = figures(&mut latencies);
    println!(
        "in tenant team-a (schema tenant_team_a): p50 {} ms, max {} ms",
        p50.as_millis(),
        max.as_millis()
    );
    assert!(
        p50 < Duration::from_millis(500),
        "p50 {p50:?}: the tenant's notices were not routed to its core"
    );
    Ok(())
}
