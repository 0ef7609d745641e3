//! `cargo xtask bench api`: what authentication costs per request. The same cheap GET
//! handler shape is timed without authentication (`/api/v1/gateway`), with an API token
//! (`/api/v1/whoami`: one indexed lookup of the token's hash joined with its user) and
//! with an OAuth2 access token (`/api/v1/whoami`: an Ed25519 JWT verified, the revoked
//! client set read from a cache at most 3 s old).
//!
//! A control plane runs in this process on SQLite, serving plain HTTP on loopback so
//! that TLS (paid once per kept-alive connection) does not hide the per-request cost;
//! `--tls` measures over TLS instead. N clients send requests back to back on kept-alive
//! connections for a fixed time; p50 and p99 are of every request's latency.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use stella_tests::TestServer;

struct Args {
    seconds: u64,
    concurrency: usize,
    tls: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 5,
        concurrency: 4,
        tls: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--tls" => args.tls = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// Latencies of every request of `concurrency` clients over `seconds`.
async fn run(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    args: &Args,
) -> anyhow::Result<Vec<Duration>> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let http = server.client();
        let url = format!("{}{path}", server.api_url());
        let token = token.map(str::to_owned);
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let mut request = http.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "{url}: {}",
                    response.status()
                );
                response.bytes().await?;
                latencies.push(started.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await??);
    }
    all.sort();
    Ok(all)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let server = if args.tls {
        TestServer::start().await?
    } else {
        TestServer::start_plain().await?
    };
    let created = server
        .post(
            "/api/v1/clients",
            json!({"name": "bench", "scopes": ["stella.viewer"]}),
        )
        .await?;
    let secret = created["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let issued: serde_json::Value = server
        .client()
        .post(format!("{}/oauth/token", server.api_url()))
        .basic_auth("bench", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?
        .json()
        .await?;
    let jwt = issued["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let token = server.admin_token.clone();
    println!(
        "bench api: {} clients, {} s per case, {}, {} build",
        args.concurrency,
        args.seconds,
        if args.tls { "TLS" } else { "plain HTTP" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "{:<28} {:>9} {:>9} {:>10}",
        "case", "p50 ms", "p99 ms", "req/s"
    );
    let mut baseline = None;
    for (case, path, bearer) in [
        ("no authentication", "/api/v1/gateway", None),
        ("API token", "/api/v1/whoami", Some(token.as_str())),
        (
            "OAuth2 access token (JWT)",
            "/api/v1/whoami",
            Some(jwt.as_str()),
        ),
    ] {
        // A short warm-up: connections opened, caches filled.
        let warm = Args { seconds: 1, ..args };
        run(&server, path, bearer, &warm).await?;
        let latencies = run(&server, path, bearer, &args).await?;
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        let rate = latencies.len() as f64 / args.seconds as f64;
        let extra = match baseline {
            None => {
                baseline = Some(p50);
                String::new()
            }
            Some(base) => format!("  (+{:.3} ms p50)", p50 - base),
        };
        println!("{case:<28} {p50:>9.3} {p99:>9.3} {rate:>10.0}{extra}");
    }
    Ok(())
}
