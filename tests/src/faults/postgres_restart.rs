//! PostgreSQL restarted under load: a `stella server` on a PostgreSQL cluster of the
//! scenario's own, clients writing all along, the cluster stopped (`pg_ctl stop -m
//! fast`, as an operator's restart), left down for a while, started again.
//!
//! Checked: the server process rides it out (never exits); `/readyz` answers not ready
//! (503) throughout the time the database is down and ready again after; every write
//! acknowledged (2xx) before, during or after is stored; a write refused meanwhile is
//! refused with 503 (the database is unavailable, not a bug); writes work again after
//! the restart, and how long that took.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::server::{Api, ServerProcess};
use super::Figures;
use crate::postgres::RestartablePostgres;

/// The size and timing of one run.
#[derive(Debug, Clone)]
pub struct PostgresRestartOptions {
    /// Clients writing at once.
    pub writers: usize,
    /// Load before the database goes down.
    pub before: Duration,
    /// How long it stays down.
    pub down: Duration,
    /// Load after it is back.
    pub after: Duration,
}

impl PostgresRestartOptions {
    /// The full run of `cargo xtask faults`.
    pub fn full() -> Self {
        PostgresRestartOptions {
            writers: 16,
            before: Duration::from_secs(10),
            down: Duration::from_secs(20),
            after: Duration::from_secs(15),
        }
    }

    /// The short form the test suite runs.
    pub fn short() -> Self {
        PostgresRestartOptions {
            writers: 4,
            before: Duration::from_secs(3),
            down: Duration::from_secs(5),
            after: Duration::from_secs(5),
        }
    }
}

/// One answer of `/readyz`.
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    ready: bool,
}

/// What the writers saw.
#[derive(Debug, Default)]
struct Writes {
    acknowledged: Vec<(String, Instant)>,
    refused: Vec<(u16, String)>,
    unanswered: usize,
}

/// Runs the scenario in `dir`.
pub async fn run(options: &PostgresRestartOptions, dir: &Path) -> anyhow::Result<Figures> {
    let mut figures = Figures {
        scenario: format!(
            "PostgreSQL restarted under load (down {} s)",
            options.down.as_secs()
        ),
        ..Figures::default()
    };
    let cluster = tokio::task::spawn_blocking(RestartablePostgres::start)
        .await
        .context("starting postgresql")??;
    let cluster = Arc::new(cluster);
    let url = cluster.fresh_database_url().await?;
    let mut server = ServerProcess::start(dir, &format!("database_url = {url:?}")).await?;
    let api = server.api.clone();

    let stop = CancellationToken::new();
    let writes = Arc::new(Mutex::new(Writes::default()));
    let probes = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let mut load = Vec::new();
    for writer in 0..options.writers {
        load.push(tokio::spawn(write_until(
            api.clone(),
            writer,
            Arc::clone(&writes),
            stop.clone(),
        )));
    }
    load.push(tokio::spawn(probe_until(
        api.clone(),
        Arc::clone(&probes),
        stop.clone(),
    )));

    tokio::time::sleep(options.before).await;
    let stopping = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || stopping.stop("fast")).await??;
    let down_at = Instant::now();
    tokio::time::sleep(options.down).await;
    let starting = Arc::clone(&cluster);
    let up_begin = Instant::now();
    tokio::task::spawn_blocking(move || starting.start_server()).await??;
    let up_at = Instant::now();
    tokio::time::sleep(options.after).await;
    stop.cancel();
    join_all(load).await;

    if !server.is_running() {
        figures.problem("the server exited while the database was down");
    }
    let probes = lock(&probes).clone();
    // Not ready throughout the outage (a probe in flight when it began may still have
    // been answered ready: one second of slack), and ready again after.
    let lied: Vec<f64> = probes
        .iter()
        .filter(|p| p.ready && p.at > down_at + Duration::from_secs(1) && p.at < up_begin)
        .map(|p| (p.at - down_at).as_secs_f64())
        .collect();
    if !lied.is_empty() {
        figures.problem(format!(
            "/readyz said ready {} times while the database was down (at {lied:?} s)",
            lied.len()
        ));
    }
    let not_ready_seen = probes
        .iter()
        .any(|p| !p.ready && p.at > down_at && p.at < up_begin);
    if !not_ready_seen {
        figures.problem("/readyz never said not ready while the database was down");
    }
    match probes.iter().find(|p| p.at > up_at && p.ready) {
        Some(probe) => figures.ready_after = Some(probe.at - up_at),
        None => figures.problem("/readyz did not say ready after the database was back"),
    }

    let writes = std::mem::take(&mut *lock(&writes));
    figures.n = writes.acknowledged.len();
    let first_write_after = writes
        .acknowledged
        .iter()
        .filter(|(_, at)| *at > up_at)
        .map(|(_, at)| *at - up_at)
        .min();
    match first_write_after {
        Some(after) => figures.recovered_after = Some(after),
        None => figures.problem("no write succeeded after the database was back"),
    }
    let during = writes
        .acknowledged
        .iter()
        .filter(|(_, at)| *at > down_at + Duration::from_secs(1) && *at < up_begin)
        .count();
    let listed: HashSet<String> = api
        .get("/api/v1/environments")
        .await?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    for (name, _) in &writes.acknowledged {
        if !listed.contains(name) {
            figures.lost += 1;
            figures.problem(format!("environment {name} was acknowledged and is gone"));
        }
    }
    let unaudited = unaudited(&api, &writes.acknowledged).await?;
    let unclear = writes
        .refused
        .iter()
        .filter(|(status, _)| *status != 503)
        .count();
    if unclear > 0 {
        figures.problem(format!(
            "{unclear} writes refused with another status than 503 during the outage"
        ));
    }
    let mut codes: Vec<String> = writes
        .refused
        .iter()
        .map(|(status, code)| format!("{status} {code}"))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    codes.sort();
    figures.extra = vec![
        (
            "writes".to_owned(),
            format!(
                "{} acknowledged ({during} while down), {} refused, {} unanswered",
                writes.acknowledged.len(),
                writes.refused.len(),
                writes.unanswered
            ),
        ),
        ("refused with".to_owned(), codes.join(", ")),
        (
            "not in the audit".to_owned(),
            format!("{} acknowledged writes: {unaudited:?}", unaudited.len()),
        ),
        (
            "readyz probes".to_owned(),
            format!(
                "{} ({} not ready)",
                probes.len(),
                probes.iter().filter(|p| !p.ready).count()
            ),
        ),
    ];
    server.kill().await?;
    Ok(figures)
}

/// The acknowledged writes whose audit entry is missing, found by the digest of the body
/// (the audit log keeps the body's SHA-256, never the body).
async fn unaudited(api: &Api, acknowledged: &[(String, Instant)]) -> anyhow::Result<Vec<String>> {
    use sha2::Digest as _;
    let mut digests = HashSet::new();
    let mut after = 0;
    loop {
        let page = api
            .get(&format!("/api/v1/audit?after={after}&limit=10000"))
            .await?;
        let entries = page.as_array().cloned().unwrap_or_default();
        let Some(last) = entries.last().and_then(|e| e["seq"].as_i64()) else {
            break;
        };
        for entry in &entries {
            if let Some(digest) = entry["request_digest"].as_str() {
                digests.insert(digest.to_owned());
            }
        }
        after = last;
    }
    let mut missing = Vec::new();
    for (name, _) in acknowledged {
        let body = serde_json::to_vec(&json!({"name": name}))?;
        let hex: String = sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !digests.contains(&format!("sha256:{hex}")) {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

/// Creates environments `w<writer>-<n>` one after the other until `stop`.
async fn write_until(api: Api, writer: usize, writes: Arc<Mutex<Writes>>, stop: CancellationToken) {
    let mut count = 0;
    while !stop.is_cancelled() {
        let name = format!("w{writer}-{count:05}");
        count += 1;
        let answer = api
            .call(
                reqwest::Method::POST,
                "/api/v1/environments",
                Some(json!({"name": name})),
            )
            .await;
        {
            let mut writes = lock(&writes);
            match answer {
                Ok((200..=299, _)) => writes.acknowledged.push((name, Instant::now())),
                Ok((status, body)) => {
                    let code = body["error"]["code"]
                        .as_str()
                        .unwrap_or("no envelope")
                        .to_owned();
                    writes.refused.push((status, code));
                }
                Err(_) => writes.unanswered += 1,
            }
        }
        // Refusals come fast while the database is down: do not spin.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks `/readyz` every 100 ms until `stop`.
async fn probe_until(api: Api, probes: Arc<Mutex<Vec<Probe>>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let answer = api.call(reqwest::Method::GET, "/readyz", None).await;
        let ready = matches!(answer, Ok((200, _)));
        lock(&probes).push(Probe {
            at: Instant::now(),
            ready,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
