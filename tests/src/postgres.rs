//! A private PostgreSQL 15 cluster for tests; each test gets a fresh database in it.
//!
//! One cluster per test process, started on first use from the Debian binaries in
//! `/usr/lib/postgresql/15/bin` in a new directory under the system temp dir, on a free
//! loopback port with `trust` authentication. Missing binaries are a panic naming the
//! package to install: the PostgreSQL half of a suite is never skipped silently.
//!
//! PostgreSQL refuses to run as root, and tests here usually do: the cluster then belongs
//! to the `postgres` user, and its programs run through `setpriv`, which switches user
//! and execs. (`runuser` would keep a PAM "watching parent" that answers SIGTERM by
//! killing its child after two seconds, defeating the cleanup below.)
//!
//! Lifetime: the cluster lives in a `static` and is never dropped, so it cannot be
//! stopped from a destructor. Instead `postgres` runs under a small watchdog shell whose
//! stdin is a pipe from this process. The pipe's only writer is this process, so the
//! shell reads EOF when this process ends *however* it ends (normal exit, panic, SIGKILL);
//! it then stops the server with SIGQUIT (immediate shutdown) and deletes the cluster
//! directory. No server outlives its test run. Set `STELLA_TEST_KEEP_POSTGRES=1` to keep
//! the directory (data and `postgres.log`) for a post-mortem; its path is printed when
//! the cluster starts.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sqlx::{Connection, Executor};

/// Where Debian's `postgresql-15` package puts the server programs.
pub const POSTGRES_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Set to keep the cluster directory after the test run.
pub const KEEP_ENV: &str = "STELLA_TEST_KEEP_POSTGRES";

/// How long a fresh cluster may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts, each on a new port: another process may take the free port we picked
/// before the server binds it.
const START_ATTEMPTS: usize = 3;

/// The watchdog: starts `postgres`, stops it when our stdin reaches EOF, then removes
/// the cluster directory unless asked to keep it (or the server failed on its own, so
/// that its log can be read). Arguments: root dir, port, bin dir, keep flag.
const WATCHDOG_SCRIPT: &str = r#"
root=$1 port=$2 bin=$3 keep=$4
# Survive a terminal's Ctrl-C long enough to clean up; postgres installs its own handlers.
trap '' INT HUP TERM
# Background jobs get /dev/null as stdin: keep the pipe on fd 3 for the watcher.
exec 3<&0
"$bin/postgres" -D "$root/data" -p "$port" -k "$root" \
    -c listen_addresses=127.0.0.1 -c max_connections=300 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    3<&- </dev/null >"$root/postgres.log" 2>&1 &
pg=$!
(cat >/dev/null; kill -QUIT "$pg" 2>/dev/null) <&3 &
exec 3<&-
wait "$pg"
status=$?
if [ "$status" -eq 0 ] && [ -z "$keep" ]; then rm -rf "$root"; fi
exit "$status"
"#;

static CLUSTER: OnceLock<Result<TestPostgres, String>> = OnceLock::new();

/// A PostgreSQL cluster private to this test process.
#[derive(Debug)]
pub struct TestPostgres {
    root: PathBuf,
    port: u16,
    /// The watchdog shell; its stdin is held open for as long as this process lives.
    _watchdog: Child,
}

/// A URL to a new, empty database in this process's test cluster (started on first use).
///
/// # Panics
/// If the PostgreSQL 15 server binaries are not installed.
pub async fn fresh_database_url() -> anyhow::Result<String> {
    require_binaries();
    let cluster = tokio::task::spawn_blocking(TestPostgres::shared)
        .await
        .context("starting the test postgresql cluster")??;
    cluster.fresh_database_url().await
}

impl TestPostgres {
    /// The cluster of this process, started on first call. Blocks while starting; call
    /// it from `spawn_blocking` in async code (as [`fresh_database_url`] does).
    ///
    /// # Panics
    /// If the PostgreSQL 15 server binaries are not installed.
    pub fn shared() -> anyhow::Result<&'static TestPostgres> {
        require_binaries();
        CLUSTER
            .get_or_init(|| TestPostgres::start().map_err(|error| format!("{error:#}")))
            .as_ref()
            .map_err(|error| anyhow!("the test postgresql cluster did not start: {error}"))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory: `data/`, `postgres.log` and the Unix socket.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A URL to the `postgres` maintenance database as the superuser.
    pub fn admin_url(&self) -> String {
        self.database_url("postgres")
    }

    /// A URL to database `name` as the superuser.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn fresh_database_url(&self) -> anyhow::Result<String> {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::postgres::PgConnection::connect(&self.admin_url())
            .await
            .with_context(|| format!("connecting to the test cluster on port {}", self.port))?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await.ok();
        Ok(self.database_url(&name))
    }

    fn start() -> anyhow::Result<TestPostgres> {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match TestPostgres::start_once() {
                Ok(cluster) => return Ok(cluster),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        bail!(
            "{START_ATTEMPTS} attempts failed:\n{}",
            failures.join("\n---\n")
        )
    }

    fn start_once() -> anyhow::Result<TestPostgres> {
        let root = tempfile::Builder::new()
            .prefix("stella-test-postgres-")
            .tempdir()
            .context("creating the cluster directory")?
            .keep();
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&root)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown postgres {} failed: {status}", root.display());
            }
        }

        let initdb = as_postgres(&Path::new(POSTGRES_BIN_DIR).join("initdb"))
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--no-locale"])
            .current_dir(&root)
            .output()
            .context("running initdb")?;
        if !initdb.status.success() {
            let _ = std::fs::remove_dir_all(&root);
            bail!(
                "initdb failed ({}): {}{}",
                initdb.status,
                String::from_utf8_lossy(&initdb.stdout),
                String::from_utf8_lossy(&initdb.stderr)
            );
        }

        let port = free_port()?;
        let keep = if std::env::var_os(KEEP_ENV).is_some() {
            "1"
        } else {
            ""
        };
        let mut watchdog = as_postgres(Path::new("/bin/sh"))
            .args(["-c", WATCHDOG_SCRIPT, "stella-test-postgres"])
            .arg(&root)
            .arg(port.to_string())
            .arg(POSTGRES_BIN_DIR)
            .arg(keep)
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;

        if let Err(error) = wait_until_ready(&mut watchdog, port) {
            let log = read_log(&root);
            // Closing stdin stops a server that is still starting; the watchdog then
            // removes the directory. One that failed by itself leaves it to us.
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
            let _ = std::fs::remove_dir_all(&root);
            bail!("postgres on port {port}: {error:#}\npostgres.log:\n{log}");
        }
        eprintln!(
            "test postgresql: port {port}, directory {} (removed at exit unless {KEEP_ENV}=1)",
            root.display()
        );
        Ok(TestPostgres {
            root,
            port,
            _watchdog: watchdog,
        })
    }
}

/// Panics unless the PostgreSQL 15 server programs are installed.
fn require_binaries() {
    for program in ["initdb", "postgres", "pg_isready"] {
        let path = Path::new(POSTGRES_BIN_DIR).join(program);
        assert!(
            path.exists(),
            "{} is missing: the PostgreSQL store tests need a PostgreSQL 15 server; \
             install the Debian package `postgresql-15`",
            path.display()
        );
    }
}

fn wait_until_ready(watchdog: &mut Child, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = watchdog.try_wait().context("watching postgres")? {
            bail!("postgres exited during startup ({status})");
        }
        let ready = Command::new(Path::new(POSTGRES_BIN_DIR).join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .arg("-p")
            .arg(port.to_string())
            .status()
            .context("running pg_isready")?;
        if ready.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not ready after {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `program` run as the `postgres` user when we are root, else as ourselves.
fn as_postgres(program: &Path) -> Command {
    if !running_as_root() {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
    command
}

fn running_as_root() -> bool {
    // `/proc/self` belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn read_log(root: &Path) -> String {
    let mut log = String::new();
    if let Ok(mut file) = std::fs::File::open(root.join("postgres.log")) {
        let _ = file.read_to_string(&mut log);
    }
    log
}

/// A PostgreSQL cluster of one test's own that can be stopped and started again (the
/// shared cluster cannot: other tests use it). Run with `pg_ctl`; stopped
/// (`-m immediate`) and removed on drop. Unlike the shared cluster it does not outlive
/// a test process killed with SIGKILL cleanly: its directory says `stella-test-pg-`.
#[derive(Debug)]
pub struct RestartablePostgres {
    root: PathBuf,
    port: u16,
}

impl RestartablePostgres {
    /// Creates and starts a cluster on a free loopback port.
    ///
    /// # Panics
    /// If the PostgreSQL 15 server binaries are not installed.
    pub fn start() -> anyhow::Result<Self> {
        require_binaries();
        let root = tempfile::Builder::new()
            .prefix("stella-test-pg-")
            .tempdir()
            .context("creating the cluster directory")?
            .keep();
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&root)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown postgres {} failed: {status}", root.display());
            }
        }
        let initdb = as_postgres(&Path::new(POSTGRES_BIN_DIR).join("initdb"))
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--no-locale"])
            .current_dir(&root)
            .output()
            .context("running initdb")?;
        if !initdb.status.success() {
            bail!(
                "initdb failed ({}): {}",
                initdb.status,
                String::from_utf8_lossy(&initdb.stderr)
            );
        }
        let cluster = RestartablePostgres {
            root,
            port: free_port()?,
        };
        cluster.start_server()?;
        Ok(cluster)
    }

    /// A URL to database `name` as the superuser.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn fresh_database_url(&self) -> anyhow::Result<String> {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::postgres::PgConnection::connect(&self.database_url("postgres"))
            .await
            .context("connecting to the test cluster")?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await.ok();
        Ok(self.database_url(&name))
    }

    /// Stops the server: `fast` (what a restart by an operator does: clients are
    /// disconnected, the server shuts down cleanly) or `immediate` (as a crash).
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let output = as_postgres(&Path::new(POSTGRES_BIN_DIR).join("pg_ctl"))
            .args(["stop", "-w", "-m", mode, "-D"])
            .arg(self.root.join("data"))
            .output()
            .context("running pg_ctl stop")?;
        if !output.status.success() {
            bail!(
                "pg_ctl stop: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts the stopped server again on the same port; waits until it accepts
    /// connections.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            self.port,
            self.root.display()
        );
        let output = as_postgres(&Path::new(POSTGRES_BIN_DIR).join("pg_ctl"))
            .args(["start", "-w", "-t", "30", "-o", &options, "-l"])
            .arg(self.root.join("postgres.log"))
            .arg("-D")
            .arg(self.root.join("data"))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl start")?;
        if !output.status.success() {
            bail!(
                "pg_ctl start: {}\npostgres.log:\n{}",
                String::from_utf8_lossy(&output.stderr).trim(),
                read_log(&self.root)
            );
        }
        Ok(())
    }
}

impl Drop for RestartablePostgres {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        if std::env::var_os(KEEP_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
