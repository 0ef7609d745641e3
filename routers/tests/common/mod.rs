//! What the router tests share: tiny HTTP backends that answer with their version name,
//! a load client that counts answers by version and failures by kind, and real nginx and
//! HAProxy processes, each in a temp dir of its own on a free port. A test that needs
//! nginx or HAProxy fails when the binary is missing (`cargo xtask test` installs both).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub const NGINX_BIN: &str = "/usr/sbin/nginx";
pub const HAPROXY_BIN: &str = "/usr/sbin/haproxy";

/// Fails the test when `binary` is missing.
pub fn require(binary: &str, package: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install Debian's `{package}` package (cargo xtask test installs it)"
    );
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every request with 200, its name as the
/// body and in `X-Version`, and keeps connections alive.
#[derive(Debug)]
pub struct HttpBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpBackend {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        let addr = listener.local_addr().expect("backend address");
        let hits = Arc::new(AtomicU64::new(0));
        let (task_name, task_hits) = (name.to_owned(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, task_name.clone(), task_hits.clone()));
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            hits,
            task,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, name: String, hits: Arc<AtomicU64>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        buffer.drain(..end);
        hits.fetch_add(1, Ordering::Relaxed);
        let close = head.contains("\r\nconnection: close");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Version: {name}\r\nContent-Length: {}\r\n{}\r\n{name}",
            name.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// The real uid of process `pid` (`self` for this one), from `/proc/PID/status`.
pub fn uid_of(pid: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("process status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a Uid line")
}

pub fn current_uid() -> u32 {
    uid_of("self")
}

/// A port nothing listens on now (bound and released; the OS does not hand it out again
/// at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `port` accepts connections.
pub async fn wait_for_port(port: u16, what: &str) {
    wait_until(Duration::from_secs(10), what, || async move {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
}

/// Polls `condition` every 20 ms until it holds; fails the test after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Answers counted by the version that gave them, and failures by message.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_version: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    /// First attempts that failed on a kept-alive connection and succeeded when sent
    /// again ([`Connections::KeepAliveRetryOnce`]).
    pub retried: u64,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.by_version.values().sum::<u64>() + self.failed()
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn count(&self, version: &str) -> u64 {
        self.by_version.get(version).copied().unwrap_or(0)
    }

    pub fn share(&self, version: &str) -> f64 {
        self.count(version) as f64 / self.total().max(1) as f64
    }

    fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.by_version {
            *self.by_version.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.retried += other.retried;
    }
}

/// How a load client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Kept alive and reused; a failure is a failure.
    KeepAlive,
    /// Kept alive; a GET whose connection failed is sent once more on a new one, as
    /// browsers do for idempotent requests (RFC 9110 §9.2.2): a server closing an idle
    /// kept-alive connection can cross a request already on its way.
    KeepAliveRetryOnce,
    /// A new connection per request.
    Fresh,
}

pub fn client() -> reqwest::Client {
    client_for(Connections::KeepAlive)
}

pub fn client_for(connections: Connections) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if connections == Connections::Fresh {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().expect("an HTTP client")
}

/// One GET through the router: the version that answered, or why it failed.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let version = response
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = response.bytes().await.map_err(|e| format!("body: {e}"))?;
    match (status.as_u16(), version) {
        (200, Some(version)) => Ok(version),
        (code, _) => Err(format!("status {code}")),
    }
}

/// `count` GETs, `concurrency` at a time, tallied.
pub async fn send(url: &str, count: u64, concurrency: u64, headers: &[(&str, &str)]) -> Tally {
    let client = client();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        workers.push(tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let mut tally = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                match get(&client, &url, &headers).await {
                    Ok(v) => *tally.by_version.entry(v).or_default() += 1,
                    Err(e) => *tally.failures.entry(e).or_default() += 1,
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for worker in workers {
        total.merge(&worker.await.expect("load worker"));
    }
    total
}

/// A client loop running until stopped (bounded at `max` seconds), over kept-alive
/// connections, `concurrency` requests in flight.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    pub fn start(url: &str, concurrency: usize, max: Duration) -> Self {
        Self::start_with(url, concurrency, max, Connections::KeepAlive)
    }

    pub fn start_with(
        url: &str,
        concurrency: usize,
        max: Duration,
        connections: Connections,
    ) -> Self {
        let client = client_for(connections);
        // The retry goes out on a connection of its own, never on another idle one of the
        // pool that the same old worker may be closing at that moment.
        let retry_client = client_for(Connections::Fresh);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers = (0..concurrency)
            .map(|_| {
                let (client, retry_client, stop, done, url) = (
                    client.clone(),
                    retry_client.clone(),
                    stop.clone(),
                    done.clone(),
                    url.to_owned(),
                );
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
                        let mut answer = get(&client, &url, &[]).await;
                        if connections == Connections::KeepAliveRetryOnce
                            && matches!(&answer, Err(e) if e.starts_with("request:"))
                        {
                            answer = get(&retry_client, &url, &[]).await;
                            if answer.is_ok() {
                                tally.retried += 1;
                            }
                        }
                        match answer {
                            Ok(v) => *tally.by_version.entry(v).or_default() += 1,
                            Err(e) => *tally.failures.entry(e).or_default() += 1,
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    tally
                })
            })
            .collect();
        Self {
            stop,
            done,
            workers,
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests have completed.
    pub async fn wait_for_more(&self, more: u64) {
        let target = self.done() + more;
        let done = self.done.clone();
        wait_until(Duration::from_secs(30), "the load to go on", move || {
            let done = done.clone();
            async move { done.load(Ordering::Relaxed) >= target }
        })
        .await;
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            total.merge(&worker.await.expect("load worker"));
        }
        total
    }
}

/// nginx from Debian's package, with its own prefix, configuration, error log and pid
/// file under a temp dir, in the foreground (`daemon off`), listening on a free port and
/// proxying `/` to route `route`'s variable. Route files go to `DIR/routes`.
#[derive(Debug)]
pub struct Nginx {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// What runs nginx: the binary, or a script running it as `nobody`.
    bin: PathBuf,
    child: Option<Child>,
}

impl Nginx {
    /// Prepares the directory (not started: the route file must exist first).
    pub fn prepare(route: &str) -> Self {
        require(NGINX_BIN, "nginx");
        let dir = tempfile::Builder::new()
            .prefix("stella-nginx-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let root = dir.path();
        std::fs::create_dir_all(root.join("routes")).expect("routes dir");
        std::fs::create_dir_all(root.join("tmp")).expect("tmp dir");
        let variable = format!("$stella_route_{}", route.replace('-', "_"));
        let conf = format!(
            "daemon off;
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/routes/*.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{variable};
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
            root = root.display()
        );
        std::fs::write(root.join("nginx.conf"), conf).expect("nginx.conf");
        Self {
            dir,
            port,
            bin: PathBuf::from(NGINX_BIN),
            child: None,
        }
    }

    /// Like [`Nginx::prepare`], with nginx (the instance and every command the router
    /// runs) as an unprivileged user: when the test runs as root, through a script that
    /// runs it as `nobody` with `setpriv`, the directory given to `nobody`.
    pub fn prepare_unprivileged(route: &str) -> Self {
        let mut nginx = Self::prepare(route);
        if current_uid() != 0 {
            return nginx;
        }
        let root = nginx.dir.path().to_owned();
        let script = root.join("nginx-as-nobody");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {NGINX_BIN} \"$@\"\n"
            ),
        )
        .expect("wrapper script");
        let status = std::process::Command::new("chmod")
            .args(["755"])
            .arg(&root)
            .arg(&script)
            .status()
            .expect("chmod");
        assert!(status.success(), "chmod failed");
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&root)
            .status()
            .expect("chown");
        assert!(status.success(), "chown failed");
        nginx.bin = script;
        nginx
    }

    pub fn settings(&self) -> stella_routers::nginx::NginxSettings {
        let root = self.dir.path();
        stella_routers::nginx::NginxSettings {
            nginx_bin: self.bin.clone(),
            conf_path: root.join("nginx.conf"),
            prefix: Some(root.to_owned()),
            error_log: Some(root.join("error.log")),
            pid_file: root.join("nginx.pid"),
            routes_dir: root.join("routes"),
            timeout_seconds: 30,
        }
    }

    pub async fn start(&mut self) {
        let root = self.dir.path();
        let child = Command::new(&self.bin)
            .arg("-p")
            .arg(root)
            .arg("-e")
            .arg(root.join("error.log"))
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        self.child = Some(child);
        wait_for_port(self.port, "nginx to listen").await;
        let pid_file = root.join("nginx.pid");
        wait_until(Duration::from_secs(10), "nginx's pid file", || {
            let exists = pid_file.exists();
            async move { exists }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The master's pid, from the pid file.
    pub fn master_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("nginx.pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Workers outlive a killed master: stop them through the master first.
        if self.child.is_some() {
            let root = self.dir.path();
            let _ = std::process::Command::new(&self.bin)
                .arg("-p")
                .arg(root)
                .arg("-e")
                .arg(root.join("error.log"))
                .arg("-c")
                .arg(root.join("nginx.conf"))
                .args(["-s", "stop"])
                .stderr(Stdio::null())
                .status();
            // The master stops its workers before it exits; killing it first (what
            // dropping the child does) would leave them running.
            if let Some(child) = self.child.as_mut() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if std::thread::panicking() {
            let path = self.dir.path().to_owned();
            eprintln!("nginx dir kept at {}", path.display());
            eprintln!("error log:\n{}", self.error_log());
            // Keep the directory for a look after a failure.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let _ = dir.keep();
        }
    }
}

/// HAProxy from Debian's package in the foreground (`-db`), with its own configuration
/// and admin socket under a temp dir, listening on a free port, with backends `ROUTE`
/// (`slots` slots) and `ROUTE__ab` (`slots` slots) and the A/B maps for header
/// `X-Canary` and cookie `canary`.
#[derive(Debug)]
pub struct Haproxy {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Haproxy {
    pub async fn start(route: &str, slots: u32) -> Self {
        require(HAPROXY_BIN, "haproxy");
        let dir = tempfile::Builder::new()
            .prefix("stella-haproxy-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let root = dir.path();
        let header_map = root.join(format!("{route}__ab.header.X-Canary.map"));
        let cookie_map = root.join(format!("{route}__ab.cookie.canary.map"));
        std::fs::write(&header_map, "").expect("header map");
        std::fs::write(&cookie_map, "").expect("cookie map");
        let conf = format!(
            "global
    stats socket {root}/admin.sock mode 600 level admin
    stats timeout 30s
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend www
    bind 127.0.0.1:{port}
    acl stella_ab req.hdr(X-Canary),map_str({header}) -m found
    acl stella_ab req.cook(canary),map_str({cookie}) -m found
    use_backend {route}__ab if stella_ab
    default_backend {route}
backend {route}
    balance roundrobin
    server-template s 1-{slots} 127.0.0.1:9 disabled
backend {route}__ab
    balance roundrobin
    server-template s 1-{slots} 127.0.0.1:9 disabled
",
            root = root.display(),
            header = header_map.display(),
            cookie = cookie_map.display(),
        );
        let cfg = root.join("haproxy.cfg");
        std::fs::write(&cfg, conf).expect("haproxy.cfg");
        let check = Command::new(HAPROXY_BIN)
            .args(["-c", "-f"])
            .arg(&cfg)
            .output()
            .await
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy -c refused the test's configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(HAPROXY_BIN)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        wait_for_port(port, "haproxy to listen").await;
        let socket = root.join("admin.sock");
        wait_until(Duration::from_secs(10), "haproxy's admin socket", || {
            let exists = socket.exists();
            async move { exists }
        })
        .await;
        Self { dir, port, child }
    }

    pub fn settings(&self) -> stella_routers::haproxy::HaproxySettings {
        stella_routers::haproxy::HaproxySettings::new(self.dir.path().join("admin.sock"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}
