//! Progressive rollouts end to end (RFC 0005, increment 2): a real control plane and a
//! real agent that drives Docker targets on the real engine and Debian's nginx in front
//! of them. Promotions into an environment with a strategy run as rollouts; every claim
//! about traffic is measured with requests sent through nginx while the rollout runs.

#[path = "../../routers/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Nginx;
use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::images::{ContainerCleanup, WebImages, WEB_HEALTH_CMD};
use stella_tests::registry::TestRegistry;
use stella_tests::{free_port, stella, wait_until, TestAgent, TestServer};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Requests through the router, counted by the version the answer names.
#[derive(Debug, Default, Clone)]
struct Tally {
    by_version: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
    fn count(&self, version: &str) -> u64 {
        self.by_version.get(version).copied().unwrap_or(0)
    }
    fn total(&self) -> u64 {
        self.by_version.values().sum::<u64>() + self.failed()
    }
}

/// One GET on a connection of its own: the body (the web image serves its version).
async fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("body: {e}"))?;
    if status.is_success() {
        Ok(body.trim().to_owned())
    } else {
        Err(format!("status {status}"))
    }
}

fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// `count` GETs, four at a time.
async fn send(url: &str, count: usize) -> Tally {
    let client = fresh_client();
    let mut tally = Tally::default();
    for chunk in (0..count).collect::<Vec<_>>().chunks(4) {
        let answers = futures::future::join_all(chunk.iter().map(|_| get(&client, url))).await;
        for answer in answers {
            match answer {
                Ok(v) => *tally.by_version.entry(v).or_default() += 1,
                Err(e) => *tally.failures.entry(e).or_default() += 1,
            }
        }
    }
    tally
}

/// Four client loops through the router until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = fresh_client();
        let workers = (0..4)
            .map(|_| {
                let (stop, client, url) = (stop.clone(), client.clone(), url.to_owned());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        match get(&client, &url).await {
                            Ok(v) => *tally.by_version.entry(v).or_default() += 1,
                            Err(e) => *tally.failures.entry(e).or_default() += 1,
                        }
                    }
                    tally
                })
            })
            .collect();
        Load { stop, workers }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            let tally = worker.await.expect("load worker");
            for (k, v) in tally.by_version {
                *total.by_version.entry(k).or_default() += v;
            }
            for (k, v) in tally.failures {
                *total.failures.entry(k).or_default() += v;
            }
        }
        total
    }
}

/// A server, one agent driving two Docker targets with fixed host ports and the nginx
/// router in front of them, environment `web` (the route's name), and a release per
/// version published to a real registry.
struct World {
    server: TestServer,
    _agent: TestAgent,
    nginx: Nginx,
    images: WebImages,
    targets: Vec<String>,
    /// Each target's fixed host port, in `targets` order.
    ports: Vec<u16>,
    _cleanup: ContainerCleanup,
    _registry: TestRegistry,
}

impl World {
    async fn start() -> anyhow::Result<World> {
        let registry = TestRegistry::start().await?;
        let images = WebImages::new(
            &registry.host(),
            &unique("stella-test/rollout"),
            &registry.docker_config(),
        );
        let server = TestServer::start().await?;
        let agent = TestAgent::start(&server, "edge").await?;
        wait_until(
            "agent edge drives docker with slots and nginx",
            Duration::from_secs(30),
            || async {
                server.agent("edge").await.ok().filter(|a| {
                    let has = |c: &str| {
                        a["capabilities"]
                            .as_array()
                            .is_some_and(|all| all.iter().any(|x| x == c))
                    };
                    a["state"] == "connected" && has("slots:docker") && has("router:nginx")
                })
            },
        )
        .await?;
        let nginx = Nginx::prepare("web");
        let settings = nginx.settings();
        let path = |p: &std::path::Path| p.display().to_string();
        server
            .post(
                "/api/v1/routers",
                json!({
                    "name": "edge", "kind": "nginx", "agent": "edge",
                    "settings": {
                        "nginx_bin": path(&settings.nginx_bin),
                        "conf_path": path(&settings.conf_path),
                        "prefix": path(settings.prefix.as_deref().expect("prefix")),
                        "error_log": path(settings.error_log.as_deref().expect("error log")),
                        "pid_file": path(&settings.pid_file),
                        "routes_dir": path(&settings.routes_dir),
                    },
                }),
            )
            .await?;
        server
            .post(
                "/api/v1/environments",
                json!({"name": "web", "allow_unscanned": true}),
            )
            .await?;
        let targets = vec![unique("web-a"), unique("web-b")];
        let mut ports = Vec::new();
        for target in &targets {
            let port = free_port().await?;
            ports.push(port);
            server
                .post(
                    "/api/v1/targets",
                    json!({"name": target, "environment": "web", "kind": "docker", "agent": "edge",
                           "settings": {"health_cmd": WEB_HEALTH_CMD, "health_timeout_seconds": "30",
                                        "ports": format!("127.0.0.1:{port}:8080")}}),
                )
                .await?;
        }
        let cleanup = ContainerCleanup::new(targets.clone());
        Ok(World {
            server,
            _agent: agent,
            nginx,
            images,
            targets,
            ports,
            _cleanup: cleanup,
            _registry: registry,
        })
    }

    async fn release(&self, version: &str, healthy: bool) -> anyhow::Result<()> {
        let image = self.images.publish(version, healthy).await?;
        self.server
            .post(
                "/api/v1/releases",
                json!({"name": "web", "version": version, "components": {"web": image}}),
            )
            .await?;
        Ok(())
    }

    /// Promotes `version` into `web`; returns the deployment id.
    async fn promote(&self, version: &str) -> anyhow::Result<String> {
        let promotion = self
            .server
            .post(
                "/api/v1/promotions",
                json!({"release": "web", "version": version, "environment": "web"}),
            )
            .await?;
        Ok(promotion["deployment_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no deployment: {promotion}"))?
            .to_owned())
    }

    async fn deployment(&self, id: &str) -> anyhow::Result<Value> {
        self.server.get(&format!("/api/v1/deployments/{id}")).await
    }

    /// v1 all at once, the route to the stable containers, then nginx started.
    async fn serve_v1(&mut self) -> anyhow::Result<String> {
        self.release("v1", true).await?;
        let id = self.promote("v1").await?;
        let done = self.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert!(done.get("rollout").is_none(), "all at once: {done}");
        let backends: Vec<Value> = self
            .ports
            .iter()
            .map(|port| json!({"address": format!("127.0.0.1:{port}"), "weight": 128, "slot": "stable"}))
            .collect();
        let (status, body) = self
            .server
            .call(
                Method::PUT,
                "/api/v1/routers/edge/routes/web",
                Some(json!({ "backends": backends })),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        self.nginx.start().await;
        let first = send(&self.nginx.url(), 20).await;
        assert_eq!(first.count("v1"), 20, "{first:?}");
        Ok(id)
    }

    async fn set_strategy(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let mut all = vec!["env", "update", "web"];
        all.extend_from_slice(args);
        self.cli(&all).await
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let (api, ca) = (
            self.server.api_url(),
            self.server.ca_file().display().to_string(),
        );
        let env = [
            ("STELLA_SERVER", api.as_str()),
            ("STELLA_TOKEN", self.server.admin_token.as_str()),
            ("STELLA_CA_FILE", ca.as_str()),
        ];
        stella(args, &env).await
    }

    /// Containers of the rollout's targets labelled with `slot`.
    async fn slot_containers(&self, slot: &str) -> anyhow::Result<usize> {
        let docker = bollard::Docker::connect_with_local_defaults()?;
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_owned(), vec![format!("ops.stella.slot={slot}")]);
        let all = docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        Ok(all
            .iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get("ops.stella.target"))
                    .is_some_and(|t| self.targets.contains(t))
            })
            .count())
    }
}

async fn wait_rollout<F>(world: &World, id: &str, what: &str, check: F) -> anyhow::Result<Value>
where
    F: Fn(&Value) -> bool,
{
    wait_until(what, DEPLOY_TIMEOUT, || async {
        world.deployment(id).await.ok().filter(|d| check(d))
    })
    .await
}

fn step_states(deployment: &Value) -> Vec<(String, String, String)> {
    deployment["rollout"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["phase"].as_str().unwrap_or_default().to_owned(),
                s["step"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Blue-green with the old set kept in the stable slot: green starts on engine-picked
/// ports, all traffic moves to it, the stable containers (fixed host ports, so
/// stop-first) are replaced while they take none, traffic moves back and green is
/// retired. Under steady load through nginx, no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_behind_nginx_replaces_fixed_port_targets_with_no_failed_request(
) -> anyhow::Result<()> {
    let mut world = World::start().await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    let (status, _, stderr) = world
        .set_strategy(&["--strategy", "blue-green", "--router", "edge"])
        .await?;
    assert_eq!(status, 0, "{stderr}");
    let env = world.server.get("/api/v1/environments/web").await?;
    assert_eq!(env["rollout"]["strategy"], "blue-green", "{env}");

    let load = Load::start(&world.nginx.url());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = world.promote("v2").await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    println!("blue-green under load: {tally:?}");

    assert_eq!(done["state"], "succeeded", "{done:#}");
    let rollout = &done["rollout"];
    assert_eq!(rollout["state"], "succeeded", "{rollout:#}");
    assert_eq!(
        step_states(&done)
            .iter()
            .map(|(_, _, state)| state.as_str())
            .collect::<Vec<_>>(),
        ["succeeded"; 5],
        "{rollout:#}"
    );
    assert_eq!(
        rollout["weights"],
        json!([{"slot": "stable", "percent": 100}, {"slot": "green", "percent": 0}])
    );
    assert_eq!(
        tally.failed(),
        0,
        "failed requests during blue-green: {tally:?}"
    );
    assert!(tally.count("v1") > 0 && tally.count("v2") > 0, "{tally:?}");
    assert!(tally.total() > 100, "too little load to tell: {tally:?}");
    // Green was served from (it had all the traffic while stable was replaced), then
    // retired; the stable containers run v2 on their fixed ports.
    let kinds: Vec<(&str, &str)> = done["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["kind"].as_str().unwrap_or(""),
                t["slot"].as_str().unwrap_or("stable"),
            )
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == ("deploy", "green")).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == ("deploy", "stable")).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == ("retire", "green")).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(world.slot_containers("green").await?, 0);
    for port in &world.ports {
        let direct = get(&fresh_client(), &format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(direct.as_deref(), Ok("v2"), "stable on port {port}");
    }
    let after = send(&world.nginx.url(), 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");

    // The promotion carried the strategy in its plan, and says deployed.
    let promotions = world.server.get("/api/v1/promotions").await?;
    let promotion = promotions
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["deployment_id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(promotion["state"], "deployed", "{promotion:#}");
    Ok(())
}

/// Canary at 50 % waits for `promote`; the measured split through nginx matches the
/// weights; `abort` (also what `cancel` does to a rollout) routes everything back to
/// the stable version and retires the canary; the deployment fails naming the abort.
/// A canary whose new version does not start is rolled back before any traffic moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_splits_traffic_waits_for_promote_and_rolls_back_on_abort_or_failure(
) -> anyhow::Result<()> {
    let mut world = World::start().await?;
    let v1 = world.serve_v1().await?;
    world.release("v2", true).await?;
    world.release("v3", false).await?;

    // Bad strategies are refused with one line, naming the flag, and change nothing.
    for (args, expected) in [
        (
            vec![
                "--strategy",
                "canary",
                "--steps",
                "50,10",
                "--router",
                "edge",
            ],
            "strictly increasing",
        ),
        (
            vec!["--strategy", "canary", "--steps", "50,100"],
            "--router",
        ),
        (
            vec![
                "--strategy",
                "canary",
                "--steps",
                "50,100",
                "--router",
                "nowhere",
            ],
            "nowhere",
        ),
        (
            vec![
                "--strategy",
                "canary",
                "--steps",
                "50,100",
                "--router",
                "edge",
                "--pause",
                "soon",
            ],
            "--pause",
        ),
    ] {
        let (status, _, stderr) = world.set_strategy(&args).await?;
        assert_ne!(status, 0, "{args:?} was taken");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let env = world.server.get("/api/v1/environments/web").await?;
    assert!(env["rollout"].is_null(), "{env}");

    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "canary",
            "--steps",
            "50,100",
            "--pause",
            "manual",
            "--router",
            "edge",
        ])
        .await?;
    assert_eq!(status, 0, "{stderr}");

    let id = world.promote("v2").await?;
    let paused = wait_rollout(&world, &id, "the canary at 50 % waiting for promote", |d| {
        d["rollout"]["weights"]
            == json!([{"slot": "stable", "percent": 50}, {"slot": "canary", "percent": 50}])
            && step_states(d).last().is_some_and(|(_, step, state)| {
                step == "pause until promoted" && state == "running"
            })
    })
    .await?;
    assert_eq!(paused["state"], "running", "{paused:#}");
    // One target runs the canary beside its stable container; stable keeps 50 % over
    // both targets, the canary 50 % on one.
    assert_eq!(world.slot_containers("canary").await?, 1);
    let split = send(&world.nginx.url(), 400).await;
    println!("canary 50 %: {split:?}");
    assert_eq!(split.failed(), 0, "{split:?}");
    let share = split.count("v2") as f64 / 400.0;
    assert!(
        (0.40..=0.60).contains(&share),
        "v2 share {share}: {split:?}"
    );

    // Promote is refused for an all-at-once deployment.
    let (status, body) = world
        .server
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{v1}/promote"),
            None,
        )
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("not_a_rollout")),
        "{body}"
    );

    let (status, stdout, stderr) = world.cli(&["deployment", "abort", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("abort requested"), "{stdout}");
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "failed", "{done:#}");
    assert_eq!(done["rollout"]["state"], "rolled_back", "{done:#}");
    let message = done["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("rolled back: aborted by admin"),
        "{message}"
    );
    assert_eq!(
        done["rollout"]["weights"],
        json!([{"slot": "stable", "percent": 100}, {"slot": "canary", "percent": 0}])
    );
    assert_eq!(world.slot_containers("canary").await?, 0);
    let after = send(&world.nginx.url(), 40).await;
    assert_eq!(after.count("v1"), 40, "{after:?}");
    let (status, stdout, stderr) = world.cli(&["deployment", "show", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(
        stdout.contains("rolled_back") && stdout.contains("retire canary"),
        "{stdout}"
    );

    // v3 never becomes healthy: the canary deploy fails, nothing was routed, and the
    // rollback retires the slot.
    let id = world.promote("v3").await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "failed", "{done:#}");
    let message = done["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("rolled back: step 1 (deploy to canary of"),
        "{message}"
    );
    let phases: Vec<(String, String, String)> = step_states(&done);
    assert_eq!(phases[0].2, "failed", "{phases:?}");
    assert!(
        phases[1..]
            .iter()
            .all(|(phase, _, state)| phase == "rollback" && state == "succeeded"),
        "{phases:?}"
    );
    assert_eq!(world.slot_containers("canary").await?, 0);
    let after = send(&world.nginx.url(), 40).await;
    assert_eq!(after.count("v1"), 40, "{after:?}");
    Ok(())
}
