//! `cargo xtask bench ui`: the console's dashboard over a populated estate — 200
//! releases × 10 environments × 1,000 targets (100 per environment, each environment's
//! driven by an in-process agent of its own, of the `sim` kind) with the newest releases deployed along the
//! whole promotion order — measured three ways:
//!
//! - server time: `GET /` signed in, back to back on one kept-alive connection, p50
//!   and p99 (on loopback, this is the server's rendering time plus a few tens of µs);
//! - page weight: the HTML and the stylesheet and script it loads;
//! - first contentful paint in headless Chromium (the browser's own
//!   `first-contentful-paint` entry), median of several loads.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;
use stella_control_plane::domain::{Component, Digest, Release};
use stella_tests::browser::Driver;
use stella_tests::faults::sim::{Ledger, SimTarget};
use stella_tests::{TestAgent, TestServer};

const DIGEST: &str = "sha256:e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";
const PASSWORD: &str = "bench console password";

struct Args {
    releases: usize,
    environments: usize,
    targets: usize,
    deployed: usize,
    requests: usize,
    loads: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        releases: 200,
        environments: 10,
        targets: 1000,
        deployed: 3,
        requests: 200,
        loads: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || -> anyhow::Result<usize> {
            Ok(it
                .next()
                .with_context(|| format!("{arg} needs a value"))?
                .parse()?)
        };
        match arg.as_str() {
            "--releases" => args.releases = value()?,
            "--environments" => args.environments = value()?,
            "--targets" => args.targets = value()?,
            "--deployed" => args.deployed = value()?,
            "--requests" => args.requests = value()?,
            "--loads" => args.loads = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if args.environments == 0 || args.targets < args.environments {
        bail!("at least one environment, and a target for each");
    }
    Ok(args)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let server = TestServer::start_plain().await?;
    let app = server.running().app.clone();
    let url = server.api_url();
    // One agent per environment, as hosts would be.
    let sim = SimTarget::new(Ledger::new());
    let mut agents = Vec::new();
    for n in 0..args.environments {
        let name = format!("sim-{n:02}");
        agents.push(TestAgent::start_driving(&server, &name, sim.registry()).await?);
        server
            .wait_for_state(&name, "connected", Duration::from_secs(20))
            .await?;
    }

    // The estate.
    let started = Instant::now();
    let envs: Vec<String> = (0..args.environments)
        .map(|n| format!("env-{n:02}"))
        .collect();
    for (n, env) in envs.iter().enumerate() {
        let after = n.checked_sub(1).map(|p| envs[p].clone());
        server
            .post(
                "/api/v1/environments",
                json!({"name": env, "after": after, "allow_unscanned": true}),
            )
            .await?;
    }
    for n in 0..args.targets {
        let env = n % envs.len();
        server
            .post(
                "/api/v1/targets",
                json!({"name": format!("t-{n:04}"), "environment": envs[env], "kind": "sim",
                       "agent": format!("sim-{env:02}"), "settings": {}}),
            )
            .await?;
    }
    let digest = Digest::parse(DIGEST).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    for n in 0..args.releases {
        app.store
            .create_release(&Release {
                name: "shop".to_owned(),
                version: format!("1.{n}.0"),
                components: ["api", "web"]
                    .iter()
                    .map(|name| Component {
                        name: (*name).to_owned(),
                        source: format!("registry.example.com/shop/{name}:1.{n}.0"),
                        image: format!("registry.example.com/shop/{name}@{DIGEST}"),
                        digest: digest.clone(),
                    })
                    .collect(),
                created_by: "bench".to_owned(),
                created_at_ms: stella_control_plane::app::now_ms() + i64::try_from(n)?,
            })
            .await?;
    }
    // The newest releases, each deployed along the whole order.
    for n in args.releases.saturating_sub(args.deployed)..args.releases {
        let version = format!("1.{n}.0");
        for env in &envs {
            let promotion = server
                .post(
                    "/api/v1/promotions",
                    json!({"release": "shop", "version": version, "environment": env}),
                )
                .await?;
            let id = promotion["deployment_id"]
                .as_str()
                .with_context(|| format!("no deployment for {version} in {env}: {promotion}"))?
                .to_owned();
            let done = server
                .wait_deployment(&id, Duration::from_secs(300))
                .await?;
            if done["state"] != "succeeded" {
                bail!("deployment of {version} to {env}: {done}");
            }
        }
    }
    println!(
        "bench ui: {} releases × {} environments × {} targets ({} releases deployed everywhere), estate built in {:.1} s",
        args.releases,
        args.environments,
        args.targets,
        args.deployed,
        started.elapsed().as_secs_f64()
    );

    // Signed in, over one kept-alive connection.
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            "/api/v1/users/admin/password",
            Some(json!({ "password": PASSWORD })),
        )
        .await?;
    if status != 204 {
        bail!("setting the password: {status}");
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let signed = client
        .post(format!("{url}/console/login"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await?;
    let cookie = signed
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_owned();
    let mut times = Vec::with_capacity(args.requests);
    let mut html_bytes = 0;
    for _ in 0..args.requests {
        let one = Instant::now();
        let response = client
            .get(format!("{url}/"))
            .header("cookie", &cookie)
            .send()
            .await?;
        let body = response.bytes().await?;
        times.push(one.elapsed().as_secs_f64() * 1000.0);
        html_bytes = body.len();
    }
    times.sort_by(f64::total_cmp);
    let mut assets = 0;
    for asset in ["/console/assets/console.css", "/console/assets/console.js"] {
        assets += client
            .get(format!("{url}{asset}"))
            .send()
            .await?
            .bytes()
            .await?
            .len();
    }

    // First contentful paint, in a real browser.
    let driver = Driver::start().await?;
    let browser = driver.browser().await?;
    browser.goto(&format!("{url}/console/login")).await?;
    browser.fill("#username", "admin").await?;
    browser.fill("#password", PASSWORD).await?;
    browser.click("#sign-in").await?;
    browser
        .wait_text("nav", "Dashboard", Duration::from_secs(20))
        .await?;
    let mut paints = Vec::new();
    for _ in 0..args.loads {
        browser.goto(&format!("{url}/")).await?;
        // The entry is there once the browser painted; wait for it a little.
        for _ in 0..40 {
            let fcp = browser
                .run(
                    "const e = performance.getEntriesByType('paint')\
                       .find(p => p.name === 'first-contentful-paint'); \
                     return e ? e.startTime : null;",
                )
                .await?;
            if let Some(ms) = fcp.as_f64() {
                paints.push(ms);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    browser.close().await;
    paints.sort_by(f64::total_cmp);

    let weight_kb = (html_bytes + assets) as f64 / 1024.0;
    println!("case                               figure        target");
    println!(
        "dashboard server time p50        {:7.1} ms     ≤ 50 ms",
        percentile(&times, 50.0)
    );
    println!(
        "dashboard server time p99        {:7.1} ms",
        percentile(&times, 99.0)
    );
    println!(
        "page weight (HTML + CSS + JS)    {weight_kb:7.1} KiB    ≤ 300 KB  (HTML {:.1} KiB)",
        html_bytes as f64 / 1024.0
    );
    println!(
        "first contentful paint, median   {:7.1} ms     ≤ 500 ms  ({} loads)",
        percentile(&paints, 50.0),
        paints.len()
    );
    for agent in agents {
        let _ = agent.stop().await;
    }
    Ok(())
}
