//! The sandbox of `builtin:script` steps: bubblewrap (`bwrap`) with every namespace
//! unshared, the host's `/usr`, `/bin`, `/lib*` and `/etc` read-only, a private
//! `/tmp`, `/proc` and `/dev`, and three writable directories: `/work` (the run's
//! working directory, shared by its steps), `/output` (where file outputs are written)
//! and `/stella` (the step's scratch: `$STELLA_OUTPUTS`, one `name=value` per line,
//! become the step's outputs). The environment is cleared.
//!
//! Network, as the pack's `sandbox.mode` says:
//! - `sealed`: a network namespace of its own with nothing but a loopback: no egress at
//!   all, the host's loopback included.
//! - `restricted`: a network namespace of its own (`ip netns`) whose only interface is
//!   its loopback, on which the server opens an HTTP proxy (CONNECT, and absolute-form
//!   requests) at `127.0.0.1:3128`; `HTTP(S)_PROXY` point at it. The proxy connects
//!   only to the hosts of `egressAllowlist` (`host` allows every port, `host:port` one)
//!   and answers 403 to the rest. A process that ignores the proxy has no route
//!   anywhere. Needs root (or `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and `ip`.
//!
//! Limits: with cgroups (v2 when `/sys/fs/cgroup/cgroup.controllers` exists, else the
//! v1 `memory` and `cpu` hierarchies, when writable) a group per step gets
//! `memoryLimitMiB` (an overrun is killed by the kernel and reported as such) and
//! `cpuLimitMillicores` (a CFS quota); the process joins its group before it runs
//! anything. Without cgroups, `prlimit` sets `RLIMIT_AS` to the memory limit and
//! `RLIMIT_CPU` to the CPU time the limits allow. `quotaSeconds` bounds each script's
//! wall-clock time: the whole sandbox is killed when it is over (see `kill_sandbox`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use stella_packs::manifest::{Sandbox, SandboxMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Port of the egress proxy inside a restricted sandbox.
pub const PROXY_PORT: u16 = 3128;
/// Most output kept of a script (its tail).
const MAX_OUTPUT: usize = 64 * 1024;

/// A script to run.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    /// Interpreter (`bash` default), split on whitespace.
    pub shell: String,
    /// The script (`shell -c SCRIPT`).
    pub script: String,
    /// Positional arguments (`$1`…).
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Bound at `/work`.
    pub work_dir: PathBuf,
    /// Bound at `/output`.
    pub output_dir: PathBuf,
    /// Bound at `/stella`.
    pub scratch_dir: PathBuf,
    /// Network and limits.
    pub sandbox: Sandbox,
    /// Where each line of output goes as it is written (stdout and stderr, cut at
    /// [`MAX_LINE`] bytes), besides the tail kept in [`ScriptResult::output`].
    pub live: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// Longest output line streamed; the rest of a longer line is cut.
pub const MAX_LINE: usize = 4096;

/// How a script ended.
#[derive(Debug, Clone)]
pub struct ScriptResult {
    /// Exit status (`None` when killed by a signal).
    pub exit_code: Option<i32>,
    /// The tail of stdout and stderr.
    pub output: String,
    /// `$STELLA_OUTPUTS`.
    pub outputs: Map<String, Value>,
    /// Why it was stopped, when the sandbox stopped it (a limit, a cancel).
    pub killed: Option<String>,
}

/// Runs a script in the sandbox. `Err` when the sandbox cannot be set up.
pub async fn run_script(
    spec: &ScriptSpec,
    cancel: &CancellationToken,
) -> Result<ScriptResult, String> {
    for dir in [&spec.work_dir, &spec.output_dir, &spec.scratch_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let outputs_file = spec.scratch_dir.join("outputs");
    let _ = std::fs::remove_file(&outputs_file);
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let limits = &spec.sandbox;
    let cgroup = Cgroup::create(&id, limits.memory_limit_mib, limits.cpu_limit_millicores);

    let mut network = None;
    if limits.mode == SandboxMode::Restricted {
        network = Some(EgressNamespace::create(&id, &limits.egress_allowlist).await?);
    }
    let mut argv: Vec<String> = Vec::new();
    if let Some(cgroup) = &cgroup {
        argv.extend(["sh", "-c", JOIN_CGROUPS, "sh"].map(String::from));
        argv.push(cgroup.dirs.len().to_string());
        argv.extend(cgroup.dirs.iter().map(|d| d.display().to_string()));
    }
    if let Some(ns) = &network {
        argv.extend(["ip", "netns", "exec", ns.name.as_str()].map(String::from));
    }
    if cgroup.is_none() {
        argv.push("prlimit".into());
        if let Some(mib) = limits.memory_limit_mib {
            argv.push(format!("--as={}", mib.saturating_mul(1024 * 1024)));
        }
        if let Some(cpu) = cpu_seconds(limits) {
            argv.push(format!("--cpu={cpu}"));
        }
        argv.push("--".into());
    }
    argv.extend(bwrap_args(spec, network.is_some()));
    let shell: Vec<String> = spec.shell.split_whitespace().map(String::from).collect();
    if shell.is_empty() {
        return Err("`shell` is empty".into());
    }
    argv.extend(shell);
    argv.push("-c".into());
    argv.push(spec.script.clone());
    argv.push("stella-script".into());
    argv.extend(spec.args.iter().cloned());

    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the sandbox ({}): {e}", argv[0]))?;
    let pid = child.id();
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(collect(s, output.clone(), spec.live.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(collect(s, output.clone(), spec.live.clone()))),
    ];
    let quota = limits.quota_seconds.map(Duration::from_secs);
    let timeout = async {
        match quota {
            Some(quota) => tokio::time::sleep(quota).await,
            None => std::future::pending().await,
        }
    };
    let mut killed = None;
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        () = timeout => {
            killed = Some(format!(
                "time limit exceeded: the script ran longer than quotaSeconds ({}s) and was killed",
                quota.map_or(0, |q| q.as_secs())
            ));
            kill_sandbox(pid, cgroup.as_ref()).await;
            child.wait().await.ok()
        }
        () = cancel.cancelled() => {
            killed = Some("stopped: the run was cancelled".to_owned());
            kill_sandbox(pid, cgroup.as_ref()).await;
            child.wait().await.ok()
        }
    };
    for mut reader in readers.into_iter().flatten() {
        // A reader still open after this holds a pipe of a process that outlived the
        // sandbox; it is stopped so that the step (and its live-line sender) ends.
        if tokio::time::timeout(Duration::from_secs(2), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
    let exit_code = status.and_then(|s| s.code());
    let text = String::from_utf8_lossy(&output.lock()).into_owned();
    if killed.is_none() {
        killed = memory_reason(cgroup.as_ref(), exit_code, &text, limits.memory_limit_mib);
    }
    if exit_code == Some(125) && cgroup.is_some() && text.trim().is_empty() {
        return Err("cannot place the script in its control group".into());
    }
    if let Some(cgroup) = cgroup {
        cgroup.remove();
    }
    if let Some(ns) = network {
        ns.remove().await;
    }
    Ok(ScriptResult {
        exit_code,
        output: text,
        outputs: read_outputs(&outputs_file),
        killed,
    })
}

/// Joins every control group named in the arguments, then runs the rest.
const JOIN_CGROUPS: &str = "n=$1; shift; while [ \"$n\" -gt 0 ]; do \
    echo $$ > \"$1/cgroup.procs\" || exit 125; shift; n=$((n-1)); done; exec \"$@\"";

fn cpu_seconds(limits: &Sandbox) -> Option<u64> {
    let quota = limits.quota_seconds?;
    let millicores = limits.cpu_limit_millicores.unwrap_or(1000);
    Some((quota.saturating_mul(millicores)).div_ceil(1000).max(1))
}

fn bwrap_args(spec: &ScriptSpec, share_net: bool) -> Vec<String> {
    let mut args: Vec<String> = vec!["bwrap".into()];
    for dir in [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
    ] {
        let path = Path::new(dir);
        match std::fs::read_link(path) {
            Ok(target) => {
                args.extend(["--symlink".into(), target.display().to_string(), dir.into()]);
            }
            Err(_) if path.is_dir() => {
                args.extend(["--ro-bind".into(), dir.into(), dir.into()]);
            }
            Err(_) => {}
        }
    }
    let bind = |args: &mut Vec<String>, from: &Path, to: &str| {
        args.extend(["--bind".into(), from.display().to_string(), to.into()]);
    };
    args.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(String::from));
    bind(&mut args, &spec.work_dir, "/work");
    bind(&mut args, &spec.output_dir, "/output");
    bind(&mut args, &spec.scratch_dir, "/stella");
    args.extend(["--unshare-all".into()]);
    if share_net {
        // The network namespace is the restricted one the command was started in.
        args.push("--share-net".into());
    }
    args.extend(
        [
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--chdir",
            "/work",
            "--hostname",
            "stella-sandbox",
        ]
        .map(String::from),
    );
    let mut env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), "/work".to_owned()),
        ("STELLA_OUTPUTS".to_owned(), "/stella/outputs".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ];
    if share_net {
        let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
        ] {
            env.push((name.to_owned(), proxy.clone()));
        }
        env.push(("NO_PROXY".to_owned(), String::new()));
        env.push(("no_proxy".to_owned(), String::new()));
    }
    env.extend(spec.env.iter().cloned());
    for (name, value) in env {
        args.extend(["--setenv".into(), name, value]);
    }
    args.push("--".into());
    args
}

/// Reads a script's stream into the kept tail and, when `live` is given, sends each
/// complete line (and the unterminated rest at the end) as it comes.
async fn collect(
    mut stream: impl AsyncRead + Unpin,
    into: Arc<Mutex<Vec<u8>>>,
    live: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    let mut buffer = [0_u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let send = |line: &mut Vec<u8>| {
        if let Some(live) = &live {
            line.truncate(MAX_LINE);
            let _ = live.send(
                String::from_utf8_lossy(line)
                    .trim_end_matches('\r')
                    .to_owned(),
            );
        }
        line.clear();
    };
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        {
            let mut out = into.lock();
            out.extend_from_slice(&buffer[..n]);
            if out.len() > MAX_OUTPUT {
                let cut = out.len() - MAX_OUTPUT;
                out.drain(..cut);
            }
        }
        if live.is_some() {
            for &byte in &buffer[..n] {
                if byte == b'\n' {
                    send(&mut line);
                } else if line.len() <= MAX_LINE {
                    line.push(byte);
                }
            }
        }
    }
    if !line.is_empty() {
        send(&mut line);
    }
}

/// Kills everything the sandbox started. `pid` is bwrap's outer process (the shells
/// before it `exec` it), the leader of its own process group; bwrap's child, the init
/// of the script's PID namespace, runs in a session of its own (`--new-session`), so
/// killing the group alone would leave it to `--die-with-parent`, which a child that
/// has not yet armed it misses (a cancel in the first milliseconds of a script). So the
/// outer process is stopped first (it can fork no more), its children are killed (the
/// namespace's init: the kernel then kills every process in the namespace), then its
/// group; with control groups, every process left in them too.
async fn kill_sandbox(pid: Option<u32>, cgroup: Option<&Cgroup>) {
    use rustix::process::{kill_process, kill_process_group, Pid, Signal};
    let outer = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw);
    if let Some(outer) = outer {
        let raw = outer.as_raw_nonzero().get();
        if kill_process(outer, Signal::STOP).is_ok() {
            // The signal is delivered asynchronously: a fork under way completes first.
            for _ in 0..200 {
                if !matches!(process_state(raw), Some(state) if state != 'T' && state != 't' && state != 'Z')
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for child in children_of(raw) {
            if let Some(child) = Pid::from_raw(child) {
                let _ = kill_process(child, Signal::KILL);
            }
        }
        let _ = kill_process_group(outer, Signal::KILL);
    }
    if let Some(cgroup) = cgroup {
        cgroup.kill_all();
    }
}

/// The state letter of a process (`R`, `S`, `T`, `Z`, …), `None` when it is gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The processes whose parent is `parent` (from `/proc/PID/stat`).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn read_outputs(path: &Path) -> Map<String, Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Map::new();
    };
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| !name.trim().is_empty())
        .map(|(name, value)| (name.trim().to_owned(), Value::String(value.to_owned())))
        .collect()
}

/// Why a script that ended badly ended: its memory limit, when the cgroup saw the
/// kernel kill it for memory, or (under rlimits) when it failed to allocate.
fn memory_reason(
    cgroup: Option<&Cgroup>,
    exit_code: Option<i32>,
    output: &str,
    limit: Option<u64>,
) -> Option<String> {
    let limit = limit?;
    if exit_code == Some(0) {
        return None;
    }
    let hit = match cgroup {
        Some(cgroup) => cgroup.oom_killed(),
        None => {
            let lower = output.to_ascii_lowercase();
            [
                "cannot allocate memory",
                "memoryerror",
                "out of memory",
                "xmalloc",
                "bad_alloc",
            ]
            .iter()
            .any(|needle| lower.contains(needle))
        }
    };
    hit.then(|| format!("memory limit exceeded: the script used more than memoryLimitMiB ({limit} MiB) and was stopped"))
}

/// The control groups of one script.
#[derive(Debug)]
struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    /// Groups with the limits, or `None` when the host lets this process create none.
    fn create(id: &str, memory_mib: Option<u64>, millicores: Option<u64>) -> Option<Cgroup> {
        if memory_mib.is_none() && millicores.is_none() {
            return None;
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let root = Path::new("/sys/fs/cgroup");
        let name = format!("stella-sandbox-{id}");
        if root.join("cgroup.controllers").exists() {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            let dir = root.join(path.trim_start_matches('/')).join(&name);
            std::fs::create_dir(&dir).ok()?;
            let group = Cgroup {
                dirs: vec![dir.clone()],
                v2: true,
            };
            let mut ok = true;
            if let Some(mib) = memory_mib {
                ok &=
                    std::fs::write(dir.join("memory.max"), (mib * 1024 * 1024).to_string()).is_ok();
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            }
            if let Some(mc) = millicores {
                ok &= std::fs::write(
                    dir.join("cpu.max"),
                    format!("{} 100000", (mc * 100).max(1000)),
                )
                .is_ok();
            }
            if !ok {
                group.remove();
                return None;
            }
            return Some(group);
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then_some(path)
            })?;
            let dir = root
                .join(controller)
                .join(path.trim_start_matches('/'))
                .join(&name);
            std::fs::create_dir(&dir).ok().map(|()| dir)
        };
        let mut group = Cgroup {
            dirs: Vec::new(),
            v2: false,
        };
        if let Some(mib) = memory_mib {
            let dir = v1("memory")?;
            group.dirs.push(dir.clone());
            let bytes = (mib * 1024 * 1024).to_string();
            if std::fs::write(dir.join("memory.limit_in_bytes"), &bytes).is_err() {
                group.remove();
                return None;
            }
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &bytes);
        }
        if let Some(mc) = millicores {
            let Some(dir) = v1("cpu") else {
                group.remove();
                return None;
            };
            group.dirs.push(dir.clone());
            let ok = std::fs::write(dir.join("cpu.cfs_period_us"), "100000").is_ok()
                && std::fs::write(
                    dir.join("cpu.cfs_quota_us"),
                    (mc * 100).max(1000).to_string(),
                )
                .is_ok();
            if !ok {
                group.remove();
                return None;
            }
        }
        Some(group)
    }

    /// Whether the kernel killed a process of the group for memory.
    fn oom_killed(&self) -> bool {
        let count = |file: PathBuf, key: &str| -> u64 {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|text| {
                    text.lines().find_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        (k == key).then(|| v.trim().parse().ok()).flatten()
                    })
                })
                .unwrap_or(0)
        };
        self.dirs.iter().any(|dir| {
            if self.v2 {
                count(dir.join("memory.events"), "oom_kill") > 0
            } else {
                count(dir.join("memory.oom_control"), "oom_kill") > 0
                    || std::fs::read_to_string(dir.join("memory.failcnt"))
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                        && dir.join("memory.failcnt").exists()
            }
        })
    }

    /// Kills every process in the groups.
    fn kill_all(&self) {
        for dir in &self.dirs {
            if self.v2 && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }

    fn remove(&self) {
        for dir in &self.dirs {
            // Empty once its processes are gone; retried briefly while they are reaped.
            for _ in 0..20 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A network namespace whose only way out is the egress proxy.
struct EgressNamespace {
    name: String,
    proxy: tokio::task::JoinHandle<()>,
}

impl EgressNamespace {
    async fn create(id: &str, allowlist: &[String]) -> Result<EgressNamespace, String> {
        let name = format!("stella-{id}");
        ip(&["netns", "add", &name]).await?;
        let created = EgressNamespace {
            name: name.clone(),
            proxy: tokio::spawn(async {}),
        };
        if let Err(error) = ip(&["-n", &name, "link", "set", "lo", "up"]).await {
            created.remove().await;
            return Err(error);
        }
        let path = PathBuf::from("/run/netns").join(&name);
        let bound = tokio::task::spawn_blocking(move || bind_in_namespace(&path)).await;
        let listener = match bound {
            Ok(Ok(listener)) => listener,
            Ok(Err(error)) => {
                created.remove().await;
                return Err(error);
            }
            Err(error) => {
                created.remove().await;
                return Err(format!("cannot open the egress proxy: {error}"));
            }
        };
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                created.remove().await;
                return Err(format!("cannot open the egress proxy: {error}"));
            }
        };
        let allow = Arc::new(allowlist.to_vec());
        let proxy = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(proxy_connection(stream, allow.clone()));
            }
        });
        Ok(EgressNamespace { name, proxy })
    }

    async fn remove(self) {
        self.proxy.abort();
        if let Err(error) = ip(&["netns", "delete", &self.name]).await {
            tracing::warn!(namespace = %self.name, %error, "removing a sandbox network namespace failed");
        }
    }
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("restricted egress needs `ip` (iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "restricted egress needs root (ip {}): {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Opens the proxy's listening socket inside the namespace at `path`, from a thread
/// that moves into it (the socket stays there; the thread ends).
fn bind_in_namespace(path: &Path) -> Result<std::net::TcpListener, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsFd;
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| format!("cannot enter the sandbox network namespace: {e}"))?;
                let listener = std::net::TcpListener::bind(("127.0.0.1", PROXY_PORT))
                    .map_err(|e| format!("cannot open the egress proxy: {e}"))?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| format!("cannot open the egress proxy: {e}"))?;
                Ok(listener)
            })
            .join()
            .map_err(|_| "the egress proxy thread failed".to_owned())?
    })
}

/// Whether `host:port` is allowed: an entry `host` allows every port, `host:port` one.
pub fn egress_allowed(allowlist: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    allowlist.iter().any(|entry| {
        let (entry_host, entry_port) = match entry.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, p.parse::<u16>().ok()),
            _ => (entry.as_str(), None),
        };
        let entry_host = entry_host.trim_start_matches('[').trim_end_matches(']');
        entry_host.eq_ignore_ascii_case(host) && entry_port.is_none_or(|p| p == port)
    })
}

async fn proxy_connection(mut client: TcpStream, allow: Arc<Vec<String>>) {
    let mut head = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), client.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buffer[..n]),
            _ => return,
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let rest = head[end + 4..].to_vec();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let (host, port, forward_head) = if method.eq_ignore_ascii_case("CONNECT") {
        let Some((host, port)) = split_host_port(target, 443) else {
            return refuse(client, 400, "bad CONNECT target").await;
        };
        (host, port, None)
    } else if let Some(after) = target.strip_prefix("http://") {
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, "/"),
        };
        let Some((host, port)) = split_host_port(authority, 80) else {
            return refuse(client, 400, "bad request target").await;
        };
        let mut forward = format!("{method} {path} {version}\r\n");
        for line in lines {
            let lower = line.to_ascii_lowercase();
            if !lower.starts_with("proxy-") {
                forward.push_str(line);
                forward.push_str("\r\n");
            }
        }
        forward.push_str("\r\n");
        (host, port, Some(forward))
    } else {
        return refuse(
            client,
            400,
            "the egress proxy takes CONNECT or absolute http:// requests",
        )
        .await;
    };
    if !egress_allowed(&allow, &host, port) {
        return refuse(
            client,
            403,
            &format!("egress to {host}:{port} is not in the sandbox's egressAllowlist"),
        )
        .await;
    }
    let mut upstream = match TcpStream::connect((host.as_str(), port)).await {
        Ok(stream) => stream,
        Err(error) => {
            return refuse(client, 502, &format!("cannot reach {host}:{port}: {error}")).await
        }
    };
    match forward_head {
        None => {
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        Some(forward) => {
            if upstream.write_all(forward.as_bytes()).await.is_err() {
                return;
            }
        }
    }
    if !rest.is_empty() && upstream.write_all(&rest).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

async fn refuse(mut client: TcpStream, status: u16, message: &str) {
    let reason = match status {
        403 => "Forbidden",
        502 => "Bad Gateway",
        _ => "Bad Request",
    };
    let body = format!("{message}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::{egress_allowed, run_script, ScriptSpec};
    use std::time::{Duration, Instant};
    use stella_packs::manifest::Sandbox;
    use tokio_util::sync::CancellationToken;

    /// A cancel at any moment of a script's start, bwrap's own set-up included, stops
    /// the whole sandbox (needs bwrap, as every script step does).
    #[tokio::test]
    async fn a_cancel_while_the_sandbox_starts_stops_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for delay_ms in (0u64..=24).chain([40, 80]) {
            let marker = format!("stella-cancel-test-{}-{delay_ms}", std::process::id());
            let spec = ScriptSpec {
                shell: "sh".into(),
                script: "sleep 30".into(),
                args: vec![marker.clone()],
                env: Vec::new(),
                work_dir: dir.path().join("work"),
                output_dir: dir.path().join("output"),
                scratch_dir: dir.path().join(format!("tmp-{delay_ms}")),
                sandbox: Sandbox::default(),
                live: None,
            };
            let cancel = CancellationToken::new();
            let started = Instant::now();
            let stopper = {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    cancel.cancel();
                })
            };
            let result = tokio::time::timeout(Duration::from_secs(20), run_script(&spec, &cancel))
                .await
                .unwrap_or_else(|_| panic!("a cancel after {delay_ms} ms did not stop the script"))
                .expect("the sandbox starts (is bwrap installed?)");
            stopper.await.expect("the stopper ends");
            assert_eq!(
                result.killed.as_deref(),
                Some("stopped: the run was cancelled"),
                "cancel after {delay_ms} ms"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a cancel after {delay_ms} ms took {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                survivors(&marker),
                Vec::<String>::new(),
                "processes left by a cancel after {delay_ms} ms"
            );
        }
    }

    /// Processes whose command line holds `marker`.
    fn survivors(marker: &str) -> Vec<String> {
        let entries = std::fs::read_dir("/proc").expect("/proc");
        entries
            .flatten()
            .filter_map(|entry| {
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                text.contains(marker)
                    .then(|| format!("{}: {text}", entry.file_name().to_string_lossy()))
            })
            .collect()
    }

    #[test]
    fn allowlist_entries_match_host_and_port() {
        let allow = vec!["example.com".to_owned(), "127.0.0.1:8080".to_owned()];
        assert!(egress_allowed(&allow, "example.com", 443));
        assert!(egress_allowed(&allow, "EXAMPLE.com", 80));
        assert!(egress_allowed(&allow, "127.0.0.1", 8080));
        assert!(!egress_allowed(&allow, "127.0.0.1", 8081));
        assert!(!egress_allowed(&allow, "example.org", 443));
    }
}
