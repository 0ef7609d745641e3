//! The world of the rollout tests: a server, an agent driving Docker targets and a
//! router (nginx or HAProxy), a registry with the web images, and a load generator
//! counting answers by the version they name. `bench-rollout` (tests/src/bin) includes
//! this module too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::images::{ContainerCleanup, WebImageOptions, WebImages, WEB_HEALTH_CMD};
use stella_tests::registry::TestRegistry;
use stella_tests::{free_port, stella, wait_until, ChildProcess, TestAgent, TestServer};

use crate::common::{Haproxy, Nginx};

pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Requests through the router, counted by the version the answer names.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_version: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
    pub fn count(&self, version: &str) -> u64 {
        self.by_version.get(version).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.by_version.values().sum::<u64>() + self.failed()
    }
}

/// One GET on a connection of its own: the body (the web image serves its version).
pub async fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
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

pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// `count` GETs with one header, one after the other.
pub async fn send_with_header(url: &str, count: usize, name: &str, value: &str) -> Tally {
    let client = fresh_client();
    let mut tally = Tally::default();
    for _ in 0..count {
        let answer = match client.get(url).header(name, value).send().await {
            Ok(response) if response.status().is_success() => response
                .text()
                .await
                .map(|body| body.trim().to_owned())
                .map_err(|e| format!("body: {e}")),
            Ok(response) => Err(format!("status {}", response.status())),
            Err(e) => Err(format!("request: {e}")),
        };
        match answer {
            Ok(v) => *tally.by_version.entry(v).or_default() += 1,
            Err(e) => *tally.failures.entry(e).or_default() += 1,
        }
    }
    tally
}

/// `count` GETs, four at a time.
pub async fn send(url: &str, count: usize) -> Tally {
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

/// When the requests of a [`Load`] were answered, and how fast.
#[derive(Debug, Default)]
pub struct Timings {
    /// The latency of every request answered with a version.
    pub answered: Vec<Duration>,
    /// When each failed request ended.
    pub failed_at: Vec<Instant>,
}

/// Four client loops through the router until stopped.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub workers: Vec<tokio::task::JoinHandle<(Tally, Timings)>>,
}

impl Load {
    pub fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = fresh_client();
        let workers = (0..4)
            .map(|_| {
                let (stop, client, url) = (stop.clone(), client.clone(), url.to_owned());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let mut timings = Timings::default();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        match get(&client, &url).await {
                            Ok(v) => {
                                timings.answered.push(sent.elapsed());
                                *tally.by_version.entry(v).or_default() += 1;
                            }
                            Err(e) => {
                                timings.failed_at.push(Instant::now());
                                *tally.failures.entry(e).or_default() += 1;
                            }
                        }
                    }
                    (tally, timings)
                })
            })
            .collect();
        Load { stop, workers }
    }

    pub async fn stop(self) -> Tally {
        self.stop_timed().await.0
    }

    /// Stops the load: the tally, and when and how fast requests were answered.
    pub async fn stop_timed(self) -> (Tally, Timings) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        let mut all = Timings::default();
        for worker in self.workers {
            let (tally, timings) = worker.await.expect("load worker");
            for (k, v) in tally.by_version {
                *total.by_version.entry(k).or_default() += v;
            }
            for (k, v) in tally.failures {
                *total.failures.entry(k).or_default() += v;
            }
            all.answered.extend(timings.answered);
            all.failed_at.extend(timings.failed_at);
        }
        (total, all)
    }
}

/// The router a world puts in front of its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterUnderTest {
    /// Debian's nginx, its route file rewritten and reloaded.
    Nginx,
    /// Debian's HAProxy, its server slots changed through the Runtime API.
    Haproxy,
}

/// The running router: route `web`, registered as router `edge`.
pub enum Router {
    Nginx(Nginx),
    Haproxy(Haproxy),
}

impl Router {
    /// Where requests go through it.
    pub fn url(&self) -> String {
        match self {
            Router::Nginx(nginx) => nginx.url(),
            Router::Haproxy(haproxy) => haproxy.url(),
        }
    }
}

/// A server, one agent driving two Docker targets with fixed host ports and a router
/// (nginx or HAProxy) in front of them, environment `web` (the route's name), and a release per
/// version published to a real registry.
pub struct World {
    pub server: TestServer,
    /// The agent `edge` in this process (none when it runs as a process).
    _agent: Option<TestAgent>,
    /// The agent `edge` as a `stella agent run` process, when the world was started so.
    pub agent_process: Option<ChildProcess>,
    pub router: Router,
    pub images: WebImages,
    pub targets: Vec<String>,
    /// Each target's fixed host port, in `targets` order.
    pub ports: Vec<u16>,
    _cleanup: ContainerCleanup,
    _registry: TestRegistry,
}

impl World {
    /// A world behind nginx.
    pub async fn start() -> anyhow::Result<World> {
        World::start_opts(RouterUnderTest::Nginx, 2, false).await
    }

    /// A world behind `kind`.
    pub async fn start_with(kind: RouterUnderTest) -> anyhow::Result<World> {
        World::start_opts(kind, 2, false).await
    }

    /// A world behind nginx with `count` Docker targets, each on a fixed host port.
    pub async fn start_targets(count: usize) -> anyhow::Result<World> {
        World::start_opts(RouterUnderTest::Nginx, count, false).await
    }

    /// A world behind nginx whose agent is a `stella agent run` process, which
    /// [`World::kill_agent`] kills with SIGKILL.
    pub async fn start_with_agent_process() -> anyhow::Result<World> {
        World::start_opts(RouterUnderTest::Nginx, 2, true).await
    }

    async fn start_opts(
        kind: RouterUnderTest,
        count: usize,
        agent_process: bool,
    ) -> anyhow::Result<World> {
        let registry = TestRegistry::start().await?;
        let images = WebImages::new(
            &registry.host(),
            &unique("stella-test/rollout"),
            &registry.docker_config(),
        );
        let server = TestServer::start().await?;
        let (agent, process) = if agent_process {
            let token = server.join_token().await?;
            let process = spawn_agent(&server, Some(&token))?;
            (None, Some(process))
        } else {
            (Some(TestAgent::start(&server, "edge").await?), None)
        };
        let capability = match kind {
            RouterUnderTest::Nginx => "router:nginx",
            RouterUnderTest::Haproxy => "router:haproxy",
        };
        wait_until(
            &format!("agent edge drives docker with slots and {capability}"),
            Duration::from_secs(30),
            || async {
                server.agent("edge").await.ok().filter(|a| {
                    let has = |c: &str| {
                        a["capabilities"]
                            .as_array()
                            .is_some_and(|all| all.iter().any(|x| x == c))
                    };
                    a["state"] == "connected" && has("slots:docker") && has(capability)
                })
            },
        )
        .await?;
        let (router, settings) = match kind {
            RouterUnderTest::Nginx => {
                let nginx = Nginx::prepare("web");
                let settings = nginx.settings();
                let path = |p: &std::path::Path| p.display().to_string();
                let settings = json!({
                    "nginx_bin": path(&settings.nginx_bin),
                    "conf_path": path(&settings.conf_path),
                    "prefix": path(settings.prefix.as_deref().expect("prefix")),
                    "error_log": path(settings.error_log.as_deref().expect("error log")),
                    "pid_file": path(&settings.pid_file),
                    "routes_dir": path(&settings.routes_dir),
                });
                (Router::Nginx(nginx), settings)
            }
            RouterUnderTest::Haproxy => {
                // A blue-green rollout has two servers per target in the backend at
                // once (stable and green).
                let haproxy =
                    Haproxy::start("web", u32::try_from(2 * count).unwrap_or(u32::MAX)).await;
                let socket = haproxy.settings().admin_socket.display().to_string();
                (Router::Haproxy(haproxy), json!({ "admin_socket": socket }))
            }
        };
        let router_kind = match kind {
            RouterUnderTest::Nginx => "nginx",
            RouterUnderTest::Haproxy => "haproxy",
        };
        server
            .post(
                "/api/v1/routers",
                json!({"name": "edge", "kind": router_kind, "agent": "edge", "settings": settings}),
            )
            .await?;
        server
            .post(
                "/api/v1/environments",
                json!({"name": "web", "allow_unscanned": true}),
            )
            .await?;
        let targets: Vec<String> = (0..count).map(|i| unique(&format!("web-{i:02}"))).collect();
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
            agent_process: process,
            router,
            images,
            targets,
            ports,
            _cleanup: cleanup,
            _registry: registry,
        })
    }

    /// Kills the agent process with SIGKILL (a world started with
    /// [`World::start_with_agent_process`]).
    pub async fn kill_agent(&mut self) -> anyhow::Result<()> {
        let mut process = self
            .agent_process
            .take()
            .ok_or_else(|| anyhow::anyhow!("the agent does not run as a process here"))?;
        process.kill().await
    }

    /// Starts the agent process again on its data dir (enrolled already).
    pub fn restart_agent(&mut self) -> anyhow::Result<()> {
        self.agent_process = Some(spawn_agent(&self.server, None)?);
        Ok(())
    }

    pub async fn release(&self, version: &str, healthy: bool) -> anyhow::Result<()> {
        self.release_with(
            version,
            &WebImageOptions {
                healthy,
                ..WebImageOptions::default()
            },
        )
        .await
    }

    pub async fn release_with(
        &self,
        version: &str,
        options: &WebImageOptions,
    ) -> anyhow::Result<()> {
        let image = self.images.publish_with(version, options).await?;
        self.server
            .post(
                "/api/v1/releases",
                json!({"name": "web", "version": version, "components": {"web": image}}),
            )
            .await?;
        Ok(())
    }

    /// Promotes `version` into `web`; returns the deployment id.
    pub async fn promote(&self, version: &str) -> anyhow::Result<String> {
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

    pub async fn deployment(&self, id: &str) -> anyhow::Result<Value> {
        self.server.get(&format!("/api/v1/deployments/{id}")).await
    }

    /// v1 all at once, then the route to the stable containers (nginx is started once
    /// its route file exists; HAProxy runs from the start).
    pub async fn serve_v1(&mut self) -> anyhow::Result<String> {
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
        if let Router::Nginx(nginx) = &mut self.router {
            nginx.start().await;
        }
        let first = send(&self.router.url(), 20).await;
        assert_eq!(first.count("v1"), 20, "{first:?}");
        Ok(id)
    }

    pub async fn set_strategy(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let mut all = vec!["env", "update", "web"];
        all.extend_from_slice(args);
        self.cli(&all).await
    }

    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
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

    /// A console page as the admin sees it, signed in with a password.
    pub async fn console_page(&self, path: &str) -> anyhow::Result<String> {
        const PASSWORD: &str = "rollout-console-password";
        let (status, body) = self
            .server
            .call(
                Method::PUT,
                "/api/v1/users/admin/password",
                Some(json!({ "password": PASSWORD })),
            )
            .await?;
        anyhow::ensure!(status == 204, "setting the admin password: {status} {body}");
        let pem = std::fs::read_to_string(self.server.ca_file())?;
        let roots = stella_pki::pem_to_der_certs(&pem)?;
        let config = stella_pki::api_client_tls_config(stella_pki::ApiTrust::Roots(roots))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let url = self.server.api_url();
        let signed_in = client
            .post(format!("{url}/console/login"))
            .header("sec-fetch-site", "same-origin")
            .form(&[("username", "admin"), ("password", PASSWORD)])
            .send()
            .await?;
        let cookie = signed_in
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("stella_session="))
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| anyhow::anyhow!("no session cookie: {}", signed_in.status()))?
            .to_owned();
        let page = client
            .get(format!("{url}{path}"))
            .header("cookie", format!("stella_session={cookie}"))
            .send()
            .await?;
        anyhow::ensure!(page.status() == 200, "{path}: {}", page.status());
        Ok(page.text().await?)
    }

    /// Containers of the rollout's targets labelled with `slot`.
    pub async fn slot_containers(&self, slot: &str) -> anyhow::Result<usize> {
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

/// `stella agent run` as agent `edge` of `server` (enrolling with `token`, if given).
fn spawn_agent(server: &TestServer, token: Option<&str>) -> anyhow::Result<ChildProcess> {
    let data_dir = server.dir.path().join("agent-edge-process");
    let api = server.api_url();
    let data = data_dir.display().to_string();
    let mut args = vec![
        "agent",
        "run",
        "--server",
        &api,
        "--data-dir",
        &data,
        "--name",
        "edge",
    ];
    if let Some(token) = token {
        args.extend(["--join-token", token]);
    }
    let log = server
        .dir
        .path()
        .join(format!("agent-edge-{}.log", uuid::Uuid::new_v4().simple()));
    ChildProcess::spawn(&args, &[], log)
}

pub async fn wait_rollout<F>(world: &World, id: &str, what: &str, check: F) -> anyhow::Result<Value>
where
    F: Fn(&Value) -> bool,
{
    wait_until(what, DEPLOY_TIMEOUT, || async {
        world.deployment(id).await.ok().filter(|d| check(d))
    })
    .await
}

pub fn step_states(deployment: &Value) -> Vec<(String, String, String)> {
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
