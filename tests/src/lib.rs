//! Test harness: real control planes, real agents (in-process and as child processes)
//! and real services, each test with its own temp dir and port-0 listeners.
//!
//! A test's directory is kept when the test panics, and its path printed, so the
//! database, keys and logs can be read afterwards.

pub mod browser;
pub mod compose;
pub mod debian;
pub mod doubles;
pub mod faults;
pub mod images;
pub mod logs;
pub mod moto;
pub mod postgres;
pub mod registry;
pub mod sshd;
pub mod task_runner;
pub mod token_server;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use stella_agent_core::AgentConfig;
use stella_control_plane::{Listeners, RunningServer, ServerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Logs to the test's captured output; `STELLA_TEST_LOG=debug` for more.
pub fn init_tracing() {
    let filter = std::env::var("STELLA_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A temp dir kept (and printed) when the test fails.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// A new dir under the system temp dir.
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("stella-test-{prefix}-"))
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temp dir: {error}"));
        TestDir { dir: Some(dir) }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test failed: its state is kept in {}", kept.display());
            }
        }
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CA files of the servers tests started, by API URL: a `stella` command sent to one of
/// them trusts its CA (`STELLA_CA_FILE`), as an operator given the file would.
static SERVER_CAS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Lets `stella` commands aimed at `api_url` trust the CA in `ca_file`.
pub fn register_server_ca(api_url: &str, ca_file: &Path) {
    if let Ok(mut cas) = SERVER_CAS.lock() {
        cas.retain(|(url, _)| url != api_url);
        cas.push((api_url.to_owned(), ca_file.to_owned()));
    }
}

/// The CA file registered for the server a command names (`--server` or
/// `STELLA_SERVER`), unless the command names one itself.
fn ca_env_for(args: &[&str], envs: &[(&str, &str)]) -> Option<PathBuf> {
    if envs.iter().any(|(key, _)| *key == "STELLA_CA_FILE") || args.contains(&"--ca-file") {
        return None;
    }
    let from_args = args
        .windows(2)
        .find(|pair| pair[0] == "--server")
        .map(|pair| pair[1]);
    let server = from_args.or_else(|| {
        envs.iter()
            .find(|(key, _)| *key == "STELLA_SERVER")
            .map(|(_, value)| *value)
    })?;
    let cas = SERVER_CAS.lock().ok()?;
    cas.iter()
        .find(|(url, _)| url == server.trim_end_matches('/'))
        .map(|(_, ca)| ca.clone())
}

/// A reqwest client that trusts only the CA in `ca_pem_file` (HTTP/1.1, as the API).
pub fn client_trusting(ca_pem_file: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read_to_string(ca_pem_file)
        .with_context(|| format!("reading {}", ca_pem_file.display()))?;
    let roots = stella_pki::pem_to_der_certs(&pem)?;
    let config = stella_pki::api_client_tls_config(stella_pki::ApiTrust::Roots(roots))?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()?)
}

/// A control plane running in this process on loopback port-0 listeners, serving the
/// API over TLS under its own CA (as in production) unless started plain.
#[derive(Debug)]
pub struct TestServer {
    server: Option<RunningServer>,
    /// Its configuration (addresses are the bound ones after start).
    pub config: ServerConfig,
    /// The admin token written at first start.
    pub admin_token: String,
    /// The test's directory (data dir is `dir/server`).
    pub dir: TestDir,
    http: reqwest::Client,
}

impl TestServer {
    /// A server on SQLite with a 1 s heartbeat.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A server whose API is plain HTTP (`api_plain_http`).
    pub async fn start_plain() -> anyhow::Result<Self> {
        Self::start_with(|config| config.api_plain_http = true).await
    }

    /// A server whose config `adjust` may change (e.g. a PostgreSQL URL).
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> anyhow::Result<Self> {
        Self::start_prepared(|config| {
            adjust(config);
            Ok(())
        })
        .await
    }

    /// A server whose config and data dir `prepare` may change before it starts.
    async fn start_prepared(
        prepare: impl FnOnce(&mut ServerConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        init_tracing();
        let dir = TestDir::new("server");
        let mut config = ServerConfig {
            data_dir: dir.path().join("server"),
            api_listen: "127.0.0.1:0".parse()?,
            grpc_listen: "127.0.0.1:0".parse()?,
            heartbeat_interval_seconds: 1,
            heartbeat_flush_interval_ms: 200,
            revocation_poll_seconds: 2,
            ..ServerConfig::default()
        };
        prepare(&mut config)?;
        let listeners = Listeners::bind(&config).await?;
        let server = stella_control_plane::start(config.clone(), listeners).await?;
        config.api_listen = server.api_addr;
        config.grpc_listen = server.grpc_addr;
        // A replica of an existing control plane writes no admin token.
        let admin_token = std::fs::read_to_string(config.data_dir.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        let http = if config.api_plain_http {
            reqwest::Client::new()
        } else {
            let ca = config.data_dir.join("pki").join("ca.pem");
            register_server_ca(&server.api_url(), &ca);
            client_trusting(&ca)?
        };
        Ok(TestServer {
            server: Some(server),
            config,
            admin_token,
            dir,
            http,
        })
    }

    /// The running server.
    pub fn running(&self) -> &RunningServer {
        match &self.server {
            Some(server) => server,
            None => panic!("the test server is stopped"),
        }
    }

    /// `https://127.0.0.1:PORT` (`http://` when started plain).
    pub fn api_url(&self) -> String {
        let scheme = if self.config.api_plain_http {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.config.api_listen)
    }

    /// The server's CA certificate (PEM file), which its API certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.config.data_dir.join("pki").join("ca.pem")
    }

    /// An HTTP client that trusts the server's CA.
    pub fn client(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.config.grpc_listen)
    }

    /// A second replica of this control plane: same database (which must be
    /// PostgreSQL), same `pki/` material (as operators share it), its own listeners and
    /// data dir.
    pub async fn start_replica(&self) -> anyhow::Result<TestServer> {
        let source = self.config.data_dir.join("pki");
        let database_url = self.config.database_url.clone();
        let admin_token = self.admin_token.clone();
        let replica = Self::start_prepared(|config| {
            config.database_url = database_url;
            let target = config.data_dir.join("pki");
            std::fs::create_dir_all(&target)?;
            for entry in std::fs::read_dir(&source)? {
                let entry = entry?;
                std::fs::copy(entry.path(), target.join(entry.file_name()))?;
            }
            Ok(())
        })
        .await?;
        Ok(TestServer {
            admin_token,
            ..replica
        })
    }

    /// Stops the server (as a crash would, but with a final heartbeat flush).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Starts it again on the same data dir and addresses.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let listeners = Listeners::bind(&self.config).await?;
        self.server = Some(stella_control_plane::start(self.config.clone(), listeners).await?);
        if !self.config.api_plain_http {
            self.http = client_trusting(&self.ca_file())?;
        }
        Ok(())
    }

    /// A REST request as admin; returns status and JSON body (Null if none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api_url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// GET as admin, expecting 2xx.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .request(reqwest::Method::GET, path, Some(&self.admin_token), None)
            .await?;
        if !(200..300).contains(&status) {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// POST as admin, expecting 2xx.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, reply) = self
            .request(
                reqwest::Method::POST,
                path,
                Some(&self.admin_token),
                Some(body),
            )
            .await?;
        if !(200..300).contains(&status) {
            bail!("POST {path} answered {status}: {reply}");
        }
        Ok(reply)
    }

    /// A new join token.
    pub async fn join_token(&self) -> anyhow::Result<String> {
        let issued = self
            .post("/api/v1/agents/join-tokens", serde_json::json!({}))
            .await?;
        issued["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no token in {issued}"))
    }

    /// A request as admin: (status, JSON body or Null).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.request(method, path, Some(&self.admin_token), body)
            .await
    }

    /// Waits until a deployment is `succeeded`, `failed` or `cancelled`; returns it.
    pub async fn wait_deployment(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        wait_until(&format!("deployment {id} finishes"), timeout, || async {
            self.get(&format!("/api/v1/deployments/{id}"))
                .await
                .ok()
                .filter(|d| {
                    matches!(
                        d["state"].as_str(),
                        Some("succeeded" | "failed" | "cancelled")
                    )
                })
        })
        .await
    }

    /// One agent as the API shows it, by name or id.
    pub async fn agent(&self, name: &str) -> anyhow::Result<Value> {
        self.get(&format!("/api/v1/agents/{name}")).await
    }

    /// Waits until an agent's `state` is `state`.
    pub async fn wait_for_state(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        wait_until(&format!("agent {name} is {state}"), timeout, || async {
            self.agent(name)
                .await
                .ok()
                .filter(|agent| agent["state"] == state)
        })
        .await
    }
}

/// An agent running in this process.
#[derive(Debug)]
pub struct TestAgent {
    /// Its data dir.
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), stella_agent_core::AgentError>>>,
}

impl TestAgent {
    /// Enrols (with a fresh join token) and connects an agent named `name`.
    pub async fn start(server: &TestServer, name: &str) -> anyhow::Result<Self> {
        let token = server.join_token().await?;
        let data_dir = server.dir.path().join(format!("agent-{name}"));
        Ok(Self::start_with(server, data_dir, name, Some(token)))
    }

    /// Enrols and connects an agent that drives only the kinds of `targets` (none:
    /// an agent no target can be given to).
    pub async fn start_driving(
        server: &TestServer,
        name: &str,
        targets: stella_agent_core::TargetRegistry,
    ) -> anyhow::Result<Self> {
        let token = server.join_token().await?;
        let data_dir = server.dir.path().join(format!("agent-{name}"));
        let mut config = test_agent_config(&data_dir);
        config.server_url = Some(server.api_url());
        config.join_token = Some(token);
        config.name = Some(name.to_owned());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stella_agent_core::run(config, targets, shutdown.clone()));
        Ok(TestAgent {
            data_dir,
            shutdown,
            task: Some(task),
        })
    }

    /// Starts an agent on a data dir (enrolled already when `join_token` is None).
    pub fn start_with(
        server: &TestServer,
        data_dir: PathBuf,
        name: &str,
        join_token: Option<String>,
    ) -> Self {
        let mut config = test_agent_config(&data_dir);
        config.server_url = Some(server.api_url());
        config.join_token = join_token;
        config.name = Some(name.to_owned());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stella_agent::run(config, shutdown.clone()));
        TestAgent {
            data_dir,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the agent and returns how it ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => Ok(task.await??),
            None => Ok(()),
        }
    }

    /// Whether its task has ended (an error, or told to stop).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Agent config for tests: fast reconnects.
pub fn test_agent_config(data_dir: &Path) -> AgentConfig {
    let mut config = AgentConfig::new(data_dir);
    config.backoff.initial_delay_ms = 100;
    config.backoff.max_delay_ms = 1000;
    config.drift_interval_seconds = 3;
    config
}

/// The `stella` binary next to this test binary (`cargo xtask test` builds it first).
pub fn stella_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test> → target/<profile>/stella; xtask runs from
    // target/<profile>/xtask itself.
    let bin = exe
        .parent()
        .and_then(|dir| {
            if dir.file_name().is_some_and(|name| name == "deps") {
                dir.parent()
            } else {
                Some(dir)
            }
        })
        .map(|dir| dir.join("stella"))
        .unwrap_or_else(|| PathBuf::from("stella"));
    assert!(
        bin.exists(),
        "the stella binary is missing at {}: build it with `cargo build -p stella-cli` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A process started from the `stella` binary, killed on drop.
#[derive(Debug)]
pub struct ChildProcess {
    /// The child.
    pub child: tokio::process::Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl ChildProcess {
    /// Runs `stella ARGS…` in the background, stderr to `log`.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], log: PathBuf) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(stella_bin());
        if let Some(ca) = ca_env_for(args, envs) {
            command.env("STELLA_CA_FILE", ca);
        }
        command
            .args(args)
            .env_remove("STELLA_TOKEN")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command.spawn().context("spawning stella")?;
        Ok(ChildProcess { child, log })
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `stella ARGS…` to completion: (exit code, stdout, stderr).
pub async fn stella(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<(i32, String, String)> {
    stella_with_input(args, envs, None).await
}

/// Runs `stella ARGS…` with `input` on stdin: (exit code, stdout, stderr).
pub async fn stella_with_input(
    args: &[&str],
    envs: &[(&str, &str)],
    input: Option<&str>,
) -> anyhow::Result<(i32, String, String)> {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(stella_bin());
    if let Some(ca) = ca_env_for(args, envs) {
        command.env("STELLA_CA_FILE", ca);
    }
    let mut child = command
        .args(args)
        .env_remove("STELLA_TOKEN")
        .env_remove("STELLA_SERVER")
        .envs(envs.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running stella")?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await?;
    }
    let output = child.wait_with_output().await.context("running stella")?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A loopback port that was free a moment ago.
pub async fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?.port())
}
