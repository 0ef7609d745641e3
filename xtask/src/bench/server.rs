//! A `stella server` child process on loopback ports, with what the benches read from
//! it: its REST API, `/metrics`, and its memory and CPU from `/proc`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::cargo::{cargo, run_checked, step, target_dir};

/// How long a fresh server may take to answer `/healthz` (it creates its CA first).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running server; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    /// The server, or the wrapper it runs under.
    child: Child,
    /// The server itself (the child's descendant when a wrapper is used).
    pid: u32,
    launch: Launch,
    api_url: String,
    log_path: PathBuf,
    admin_token: String,
    http: reqwest::Client,
}

/// How the server was started: a restart runs it again the same way, on the same data
/// dir and ports.
#[derive(Debug, Clone)]
struct Launch {
    binary: PathBuf,
    data_dir: PathBuf,
    config_path: PathBuf,
    api_addr: SocketAddr,
    grpc_addr: SocketAddr,
    wrapper: Option<String>,
}

/// What `GET /api/v1/gateway` says about the agent gateway.
#[derive(Debug, Deserialize)]
pub struct GatewayInfo {
    /// `https://host:port` of the gRPC gateway.
    pub grpc_url: String,
    /// Hex SHA-256 of the CA certificate, pinned during `Enroll`.
    pub ca_fingerprint: String,
    /// SPIFFE trust domain (printed only).
    pub trust_domain: String,
}

#[derive(Debug, Deserialize)]
struct JoinTokenView {
    token: String,
}

/// Memory and CPU of a process, from `/proc/PID/{status,stat}`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Resident set size.
    pub rss_kib: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Threads of the process.
    pub threads: u64,
    /// When the sample was taken.
    pub at: Instant,
}

impl ProcSample {
    /// CPU use between two samples in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcSample, clock_ticks_per_second: u64) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 || clock_ticks_per_second == 0 {
            return 0.0;
        }
        let ticks = self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64;
        ticks / clock_ticks_per_second as f64 / wall * 100.0
    }
}

impl ServerProcess {
    /// Starts `binary server` with its data dir and config under `work_dir`, on free
    /// loopback ports, and waits until it is healthy and has written its admin token.
    ///
    /// `wrapper` (e.g. `heaptrack` or `taskset -c 1`) is a command the server runs under;
    /// it must exec or spawn the binary itself, which is then the process measured.
    pub async fn start(
        binary: &Path,
        work_dir: &Path,
        config_toml: &str,
        wrapper: Option<&str>,
    ) -> anyhow::Result<Self> {
        let data_dir = work_dir.join("data");
        let config_path = work_dir.join("server.toml");
        let log_path = work_dir.join("server.log");
        std::fs::write(&config_path, config_toml)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let launch = Launch {
            binary: binary.to_owned(),
            data_dir: data_dir.clone(),
            config_path,
            api_addr: free_loopback_addr()?,
            grpc_addr: free_loopback_addr()?,
            wrapper: wrapper.map(str::to_owned),
        };
        let (child, pid) = launch.spawn(&log_path).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut server = ServerProcess {
            child,
            pid,
            api_url: format!("http://{}", launch.api_addr),
            launch,
            log_path,
            admin_token: String::new(),
            http,
        };
        server.wait_healthy().await?;
        server.admin_token = server.read_admin_token(&data_dir).await?;
        Ok(server)
    }

    /// Kills the server with SIGKILL (no shutdown of its sessions, as a crash or an OOM
    /// kill would) and starts it again on the same data dir and ports. Returns once the
    /// new process runs, with how long that took from the kill; [`Self::wait_healthy`]
    /// tells when it answers.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<Duration> {
        let killed = Instant::now();
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
            .await;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let (child, pid) = self.launch.spawn(&self.log_path).await?;
        self.child = child;
        self.pid = pid;
        Ok(killed.elapsed())
    }

    /// `http://127.0.0.1:PORT` of its REST API.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The admin token it wrote at first start.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Reads the server's memory and CPU counters.
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        sample_process(&self.pid.to_string())
    }

    /// `GET /api/v1/gateway`.
    pub async fn gateway_info(&self) -> anyhow::Result<GatewayInfo> {
        let response = self
            .http
            .get(format!("{}/api/v1/gateway", self.api_url))
            .send()
            .await?;
        json_or_error(response, "GET /api/v1/gateway").await
    }

    /// `POST /api/v1/agents/join-tokens` as the admin.
    pub async fn create_join_token(&self, ttl_seconds: u64) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/v1/agents/join-tokens", self.api_url))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({ "ttl_seconds": ttl_seconds }))
            .send()
            .await?;
        let view: JoinTokenView =
            json_or_error(response, "POST /api/v1/agents/join-tokens").await?;
        Ok(view.token)
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let response = self
            .http
            .get(format!("{}/metrics", self.api_url))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /metrics answered {}", response.status());
        }
        Ok(Metrics(response.text().await?))
    }

    /// `GET path` of the REST API as the admin, as JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        json_or_error(response, &format!("GET {path}")).await
    }

    /// `POST path` of the REST API as the admin with a JSON body, as JSON.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.post_json_within(path, body, Duration::from_secs(30))
            .await
    }

    /// [`ServerProcess::post_json`] for a call that may take up to `timeout`.
    pub async fn post_json_within(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&self.admin_token)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        json_or_error(response, &format!("POST {path}")).await
    }

    /// Stops the server with SIGTERM (so wrappers like heaptrack can finish their
    /// output), and kills it if it takes longer than [`STOP_TIMEOUT`].
    pub async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            eprintln!("the server did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = tokio::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status()
                .await;
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until the server answers `/healthz`, for at most [`STARTUP_TIMEOUT`].
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let url = format!("{}/healthz", self.api_url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited during startup ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            let healthy = self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            if healthy {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the server did not answer {url} within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn read_admin_token(&self, data_dir: &Path) -> anyhow::Result<String> {
        let path = data_dir.join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let token = text.trim();
                if !token.is_empty() {
                    return Ok(token.to_owned());
                }
            }
            if Instant::now() >= deadline {
                bail!("the server wrote no admin token to {}", path.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Launch {
    /// Starts the server (appending to its log); returns the child and the server's pid.
    async fn spawn(&self, log_path: &Path) -> anyhow::Result<(Child, u32)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut wrapper_words = self.wrapper.iter().flat_map(|w| w.split_whitespace());
        let mut command = match wrapper_words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(wrapper_words).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        let mut child = command
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api-listen")
            .arg(self.api_addr.to_string())
            .arg("--grpc-listen")
            .arg(self.grpc_addr.to_string())
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        let child_pid = child.id().context("the server exited at once")?;
        let pid = match self.wrapper {
            Some(_) => find_descendant(&mut child, child_pid, &self.binary).await?,
            None => child_pid,
        };
        Ok((child, pid))
    }
}

/// A `/metrics` page (OpenMetrics text).
#[derive(Debug)]
pub struct Metrics(String);

impl Metrics {
    /// The value of an unlabelled sample, e.g. `stella_heartbeats_total`.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// The cumulative buckets of a histogram without other labels, e.g.
    /// `stella_task_dispatch_latency_seconds`: `(le, count)` in the page's order.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        self.0
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (le, rest) = rest.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, rest.split_whitespace().next()?.parse().ok()?))
            })
            .collect()
    }
}

/// The server's and this process's counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// The server's.
    pub server: ProcSample,
    /// The bench client's.
    pub client: ProcSample,
}

impl Snapshot {
    /// Samples both processes now.
    pub fn take(server: &ServerProcess) -> anyhow::Result<Self> {
        Ok(Snapshot {
            server: server.sample()?,
            client: sample_self()?,
        })
    }
}

/// The `stella` release binary of the workspace, built first unless `no_build`.
pub fn server_binary(no_build: bool) -> anyhow::Result<PathBuf> {
    if no_build {
        step("release build: skipped (--no-build)");
    } else {
        step("release build");
        run_checked(cargo().args(["build", "--release", "-p", "stella-cli"]))?;
    }
    let binary = target_dir()?.join("release").join("stella");
    if !binary.exists() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p stella-cli`",
            binary.display()
        );
    }
    Ok(binary)
}

/// Memory and CPU of this process.
pub fn sample_self() -> anyhow::Result<ProcSample> {
    sample_process("self")
}

/// `getconf CLK_TCK`: the unit of the CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> anyhow::Result<u64> {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("cannot run `getconf CLK_TCK`")?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("`getconf CLK_TCK` printed no number")
}

fn sample_process(pid: &str) -> anyhow::Result<ProcSample> {
    let at = Instant::now();
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("cannot read {status_path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("no {name} in {status_path}"))
    };
    let rss_kib = field("VmRSS:")?;
    let threads = field("Threads:")?;
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    // The command name (field 2) may hold spaces; count fields after its `)`. The first
    // of those is field 3 (state); utime and stime are fields 14 and 15.
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unexpected {stat_path}"))?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("unexpected {stat_path}"))
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    Ok(ProcSample {
        rss_kib,
        cpu_ticks,
        threads,
        at,
    })
}

/// The process running `binary` below `root` (a wrapper's child), once it exists.
async fn find_descendant(child: &mut Child, root: u32, binary: &Path) -> anyhow::Result<u32> {
    let binary = binary.canonicalize()?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server wrapper exited ({status})");
        }
        let entries = std::fs::read_dir("/proc").context("cannot list /proc")?;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let runs_binary =
                std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == binary);
            if runs_binary && descends_from(pid, root) {
                return Ok(pid);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no process running {} appeared under the wrapper",
                binary.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    // A process tree is shallow; the bound only guards against a racing /proc.
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // Field 4 (ppid) is the second field after the command name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse().ok());
        match parent {
            Some(0) | None => return false,
            Some(parent) => pid = parent,
        }
    }
    false
}

fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    // Closed again before the server binds it; nothing else on this host races for
    // ports often enough to matter for a bench.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

async fn json_or_error<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<T> {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("{what} answered {status}: {body}");
    }
    response
        .json()
        .await
        .with_context(|| format!("{what} answered invalid json"))
}
