//! The SQLite data dir runs out of space under a single-node server, then space is
//! freed.
//!
//! The data dir is on a small tmpfs mounted for the scenario (needs root:
//! `CAP_SYS_ADMIN`; the scenario fails when it cannot mount). Environments are created,
//! the file system is filled to the last byte, and API writes are sent: each must be
//! answered, within a bound, by a 5xx error envelope (no hang, no crash, no 2xx for
//! what was not stored) whose code is `storage_full`, while reads and `/healthz` keep working. After the filler is
//! removed, writes succeed again; then the database passes `PRAGMA integrity_check`,
//! the audit chain verifies (`stella audit verify`), and everything acknowledged before,
//! during and after is there.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::server::ServerProcess;
use super::Figures;

/// The size and timing of one run.
#[derive(Debug, Clone)]
pub struct DiskFullOptions {
    /// The size of the file system the data dir is on.
    pub size_mib: u64,
    /// Environments created before the disk fills.
    pub before: usize,
    /// Writes sent while it is full.
    pub attempts: usize,
    /// How long one request may take before it counts as hung.
    pub request_timeout: Duration,
}

impl DiskFullOptions {
    /// The full run of `cargo xtask faults`.
    pub fn full() -> Self {
        DiskFullOptions {
            size_mib: 64,
            before: 200,
            attempts: 50,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// The short form the test suite runs.
    pub fn short() -> Self {
        DiskFullOptions {
            size_mib: 32,
            before: 30,
            attempts: 10,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs the scenario in `dir`.
pub async fn run(options: &DiskFullOptions, dir: &Path) -> anyhow::Result<Figures> {
    let mut figures = Figures {
        scenario: format!(
            "disk full under the SQLite data dir ({} MiB tmpfs)",
            options.size_mib
        ),
        n: options.attempts,
        ..Figures::default()
    };
    let mount = Tmpfs::mount(&dir.join("small"), options.size_mib)?;
    let data_dir = mount.path.join("server");
    let mut server = ServerProcess::start_on(dir, &data_dir, "").await?;
    let api = server.api.clone();
    let mut stored: Vec<String> = Vec::new();
    for index in 0..options.before {
        let name = format!("before-{index:04}");
        api.post("/api/v1/environments", json!({"name": name}))
            .await?;
        stored.push(name);
    }

    let filler = mount.path.join("filler");
    let filled = fill(&filler)?;
    figures.extra.push((
        "filled".to_owned(),
        format!("{} MiB of filler", filled >> 20),
    ));
    let mut refused: Vec<String> = Vec::new();
    let mut codes: HashSet<String> = HashSet::new();
    let mut slowest = Duration::ZERO;
    for index in 0..options.attempts {
        let name = format!("full-{index:04}");
        let started = Instant::now();
        let answer = tokio::time::timeout(
            options.request_timeout,
            api.call(
                reqwest::Method::POST,
                "/api/v1/environments",
                Some(json!({"name": name})),
            ),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        match answer {
            Err(_) => figures.problem(format!(
                "POST {name} hung: no answer within {:?}",
                options.request_timeout
            )),
            Ok(Err(error)) => figures.problem(format!("POST {name}: no answer: {error:#}")),
            Ok(Ok((status, body))) if (200..300).contains(&status) => {
                // Stored after all (space freed inside SQLite's files): it must stay.
                stored.push(name);
                let _ = body;
            }
            Ok(Ok((status, body))) => {
                let code = body["error"]["code"].as_str().unwrap_or_default();
                let message = body["error"]["message"].as_str().unwrap_or_default();
                // A full disk is the operator's to fix, not a bug: the envelope says so.
                if status < 500 || code != "storage_full" || message.is_empty() {
                    figures.problem(format!(
                        "POST {name} answered {status} without a 5xx storage_full envelope: {body}"
                    ));
                }
                codes.insert(format!("{status} {code}: {message}"));
                refused.push(name);
            }
        }
    }
    let health = api.call(reqwest::Method::GET, "/healthz", None).await;
    if !matches!(health, Ok((200, _))) {
        figures.problem(format!("/healthz while full: {health:?}"));
    }
    if let Err(error) = api.get("/api/v1/environments").await {
        figures.problem(format!("reads failed while full: {error:#}"));
    }
    if !server.is_running() {
        figures.problem("the server exited while the disk was full");
        bail!(
            "the server crashed on a full disk; its log:\n{}",
            server.log_text()
        );
    }
    figures.extra.push((
        "while full".to_owned(),
        format!(
            "{} of {} writes refused, slowest answer {:.2} s",
            refused.len(),
            options.attempts,
            slowest.as_secs_f64()
        ),
    ));
    for code in &codes {
        figures.extra.push(("answered".to_owned(), code.clone()));
    }

    // Free the space: writes work again.
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    let mut after = 0;
    loop {
        let name = format!("after-{after:04}");
        match api
            .call(
                reqwest::Method::POST,
                "/api/v1/environments",
                Some(json!({"name": name})),
            )
            .await
        {
            Ok((200..=299, _)) => {
                stored.push(name);
                after += 1;
                if after == 5 {
                    break;
                }
            }
            other => {
                if freed.elapsed() > options.request_timeout {
                    figures.problem(format!(
                        "writes still fail after space was freed: {other:?}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    figures.recovered_after = Some(freed.elapsed());

    // Nothing lost, nothing refused stored, nothing corrupt.
    let listed: HashSet<String> = api
        .get("/api/v1/environments")
        .await?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    for name in &stored {
        if !listed.contains(name) {
            figures.lost += 1;
            figures.problem(format!("environment {name} was acknowledged and is gone"));
        }
    }
    for name in &refused {
        if listed.contains(name) {
            figures.problem(format!("environment {name} was refused and is there"));
        }
    }
    match audit_verify(&server, dir).await {
        Ok(summary) => figures.extra.push(("audit verify".to_owned(), summary)),
        Err(error) => figures.problem(format!("the audit chain does not verify: {error:#}")),
    }
    server.kill().await?;
    let integrity = integrity_check(&data_dir.join("stella.db")).await?;
    if integrity != "ok" {
        figures.problem(format!("PRAGMA integrity_check: {integrity}"));
    }
    figures
        .extra
        .push(("integrity_check".to_owned(), integrity));
    let ready_after = server.restart().await?;
    figures.ready_after = Some(ready_after);
    server.kill().await?;
    Ok(figures)
}

/// Writes zeros to `path` until the file system refuses, in shrinking chunks so the
/// last free block is taken too; returns the bytes written.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1 << 20, 1 << 12, 1] {
        let zeros = vec![0u8; chunk];
        loop {
            match file.write(&zeros) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => return Err(error).context("filling the disk"),
            }
        }
    }
    // Flushing may itself hit ENOSPC; what was written stays.
    let _ = file.sync_all();
    Ok(written)
}

/// `stella audit verify` against the server: its summary line.
async fn audit_verify(server: &ServerProcess, dir: &Path) -> anyhow::Result<String> {
    let config_dir = dir.join("cli-config").display().to_string();
    let url = server.api_url();
    let (code, stdout, stderr) = crate::stella(
        &["audit", "verify"],
        &[
            ("STELLA_SERVER", url.as_str()),
            ("STELLA_TOKEN", server.api.token.as_str()),
            ("STELLA_CONFIG_DIR", config_dir.as_str()),
        ],
    )
    .await?;
    if code != 0 {
        bail!("exit {code}: {}", stderr.trim());
    }
    Ok(stdout.trim().to_owned())
}

/// `PRAGMA integrity_check` of a SQLite file, read-only.
async fn integrity_check(path: &Path) -> anyhow::Result<String> {
    use sqlx::ConnectOptions;
    let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut connection)
        .await?;
    Ok(rows.join("; "))
}

/// A tmpfs of a given size, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `path` (created).
    pub fn mount(path: &Path, size_mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .context("running mount")?;
        if !output.status.success() {
            bail!(
                "mounting a {size_mib} MiB tmpfs at {} (needs root): {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.path).status();
        if !matches!(unmounted, Ok(status) if status.success()) {
            eprintln!("could not unmount {}", self.path.display());
        }
    }
}
