//! `stella server` as a child process on fixed loopback ports, so it can be killed with
//! SIGKILL and started again on the same data dir and addresses, and a small REST client
//! for it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::Value;

use crate::{client_trusting, free_port, register_server_ca, wait_until, ChildProcess};

/// How long a (re)started server may take until `/readyz` answers.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `stella server` process.
#[derive(Debug)]
pub struct ServerProcess {
    /// Its data dir.
    pub data_dir: PathBuf,
    /// `127.0.0.1:PORT` of the API.
    pub api_addr: String,
    /// `127.0.0.1:PORT` of the gateway.
    pub grpc_addr: String,
    /// The REST client, as admin.
    pub api: Api,
    dir: PathBuf,
    config_file: PathBuf,
    child: Option<ChildProcess>,
    starts: u32,
}

impl ServerProcess {
    /// Starts a server in `dir` (data dir `dir/server`) whose TOML config is the
    /// addresses and data dir followed by `extra_config`, and waits until it is ready.
    pub async fn start(dir: &Path, extra_config: &str) -> anyhow::Result<Self> {
        Self::start_on(dir, &dir.join("server"), extra_config).await
    }

    /// Like [`ServerProcess::start`], with the gateway on `grpc_port` (a balancer in
    /// front of replicas must know their ports before they start).
    pub async fn start_with_ports(
        dir: &Path,
        extra_config: &str,
        grpc_port: u16,
    ) -> anyhow::Result<Self> {
        Self::launch(dir, &dir.join("server"), extra_config, Some(grpc_port)).await
    }

    /// Like [`ServerProcess::start`], with the data dir at `data_dir` (config and logs
    /// stay in `dir`).
    pub async fn start_on(dir: &Path, data_dir: &Path, extra_config: &str) -> anyhow::Result<Self> {
        Self::launch(dir, data_dir, extra_config, None).await
    }

    async fn launch(
        dir: &Path,
        data_dir: &Path,
        extra_config: &str,
        grpc_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let data_dir = data_dir.to_owned();
        let api_addr = format!("127.0.0.1:{}", free_port().await?);
        let grpc_port = match grpc_port {
            Some(port) => port,
            None => free_port().await?,
        };
        let grpc_addr = format!("127.0.0.1:{grpc_port}");
        let config_file = dir.join("server.toml");
        std::fs::write(
            &config_file,
            format!(
                "data_dir = {data:?}\napi_listen = {api_addr:?}\ngrpc_listen = {grpc_addr:?}\n\
                 heartbeat_interval_seconds = 1\nheartbeat_flush_interval_ms = 200\n{extra_config}\n",
                data = data_dir.display().to_string(),
            ),
        )?;
        let mut server = ServerProcess {
            data_dir,
            api: Api {
                base: format!("https://{api_addr}"),
                token: String::new(),
                http: reqwest::Client::new(),
            },
            api_addr,
            grpc_addr,
            dir: dir.to_owned(),
            config_file,
            child: None,
            starts: 0,
        };
        server.spawn()?;
        server.wait_ready().await?;
        // A replica of an existing control plane writes none: see `start_replica`.
        let token =
            std::fs::read_to_string(server.data_dir.join("admin.token")).unwrap_or_default();
        let ca = server.data_dir.join("pki").join("ca.pem");
        register_server_ca(&server.api.base, &ca);
        server.api = Api {
            base: server.api.base.clone(),
            token: token.trim().to_owned(),
            http: client_trusting(&ca)?,
        };
        Ok(server)
    }

    /// Another replica of this control plane, in `dir`: the same database (the
    /// `database_url` of `extra_config`, which must be PostgreSQL) and the same `pki/`
    /// material (as operators share it), its own ports and data dir.
    pub async fn start_replica(&self, dir: &Path, extra_config: &str) -> anyhow::Result<Self> {
        let port = free_port().await?;
        self.start_replica_with_port(dir, extra_config, port).await
    }

    /// Like [`ServerProcess::start_replica`], with the gateway on `grpc_port`.
    pub async fn start_replica_with_port(
        &self,
        dir: &Path,
        extra_config: &str,
        grpc_port: u16,
    ) -> anyhow::Result<Self> {
        let data_dir = dir.join("server");
        let pki = data_dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        for entry in std::fs::read_dir(self.data_dir.join("pki"))? {
            let entry = entry?;
            std::fs::copy(entry.path(), pki.join(entry.file_name()))?;
        }
        let mut replica = Self::launch(dir, &data_dir, extra_config, Some(grpc_port)).await?;
        replica.api.token = self.api.token.clone();
        Ok(replica)
    }

    /// `https://127.0.0.1:PORT` of the API.
    pub fn api_url(&self) -> String {
        self.api.base.clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|child| child.child.id())
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same data dir and addresses; returns how long until
    /// `/readyz` answered.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        self.kill().await?;
        let started = Instant::now();
        self.spawn()?;
        self.wait_ready().await?;
        Ok(started.elapsed())
    }

    /// Whether the process is still running (not exited or killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.child.try_wait(), Ok(None)))
    }

    /// What the current process logged.
    pub fn log_text(&self) -> String {
        self.child
            .as_ref()
            .map(ChildProcess::log_text)
            .unwrap_or_default()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = self.dir.join(format!("server-{}.log", self.starts));
        let config = self.config_file.display().to_string();
        let child = ChildProcess::spawn(
            &["server", "--config", &config],
            &[("RUST_LOG", "info")],
            log,
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/readyz` answers 200 (any certificate: the CA may not exist yet).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let probe = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/readyz", self.api.base);
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("the server is not running"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before it was ready; its log:\n{}",
                    child.log_text()
                );
            }
            if let Ok(response) = probe.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the server was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    child.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A REST client of one server, as admin.
#[derive(Debug, Clone)]
pub struct Api {
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The admin token.
    pub token: String,
    http: reqwest::Client,
}

impl Api {
    /// A request as admin: (status, JSON body or Null). An error only when no answer came.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// The `stella_agent_sessions` gauge of `/metrics`: sessions open on this replica.
    pub async fn agent_sessions(&self) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|line| line.strip_prefix("stella_agent_sessions "))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| anyhow!("no stella_agent_sessions in /metrics"))
    }

    /// GET, expecting 2xx.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        match self.call(reqwest::Method::GET, path, None).await? {
            (200..=299, body) => Ok(body),
            (status, body) => bail!("GET {path} answered {status}: {body}"),
        }
    }

    /// POST, expecting 2xx.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        match self.call(reqwest::Method::POST, path, Some(body)).await? {
            (200..=299, reply) => Ok(reply),
            (status, reply) => bail!("POST {path} answered {status}: {reply}"),
        }
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

    /// Waits until agent `name` shows `state`.
    pub async fn wait_agent_state(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_until(&format!("agent {name} is {state}"), timeout, || async {
            self.get(&format!("/api/v1/agents/{name}"))
                .await
                .ok()
                .filter(|agent| agent["state"] == state)
                .map(|_| ())
        })
        .await
    }
}
