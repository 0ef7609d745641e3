//! `cargo xtask bench decisions`: promotions decided per second, and the time of one
//! decision, on SQLite and on PostgreSQL.
//!
//! A control plane runs in this process; each decision is `App::promote` as the REST
//! handler calls it, without HTTP: the inputs gathered from the store (environment,
//! targets and their planned settings, the predecessor's deployments, two scan reports
//! per image and every VEX document, the policy), every gate evaluated (order, freeze,
//! security with VEX, the Rego policy, approvals), the decision signed (in-toto in DSSE,
//! Ed25519), the promotion and its decision stored in one transaction, its audit entry
//! appended to the hash chain, its event stored. The environment comes after one where
//! the release never ran, so each decision is `blocked` by the order gate after every
//! gate was evaluated, and no deployment starts.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;
use stella_control_plane::domain::{Component, Digest, Document, Release, Role};
use stella_tests::{TestAgent, TestServer};

const DIGEST: &str = "sha256:e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";
const TRIVY: &[u8] =
    include_bytes!("../../../decision/tests/fixtures/scan/trivy-0.55-web-debian12.json");
const GRYPE: &[u8] =
    include_bytes!("../../../decision/tests/fixtures/scan/grype-0.74-web-debian12.json");
const VEX: &[u8] = include_bytes!("../../../decision/tests/fixtures/scan/vex-vexctl-0.2-web.json");
const POLICY: &str = r#"package stella.bench

deny contains msg if {
    some f in input.findings
    f.severity == "critical"
    not f.fixed_version
    msg := sprintf("%s: %s is critical with no fix", [f.component, f.id])
}

deny contains msg if {
    input.requester == "mallory"
    msg := "mallory may not promote"
}
"#;

struct Args {
    decisions: usize,
    concurrency: usize,
    backends: Vec<&'static str>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        decisions: 20_000,
        concurrency: 16,
        backends: vec!["sqlite", "postgres"],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--decisions" => args.decisions = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--backend" => {
                args.backends = match value()?.as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "both" => vec!["sqlite", "postgres"],
                    other => bail!("--backend sqlite|postgres|both, not {other}"),
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    println!(
        "decisions: {} per backend, {} concurrent requests",
        args.decisions, args.concurrency
    );
    for backend in &args.backends {
        run(backend, &args).await?;
    }
    Ok(())
}

async fn run(backend: &str, args: &Args) -> anyhow::Result<()> {
    let database_url = match backend {
        "postgres" => Some(stella_tests::postgres::fresh_database_url().await?),
        _ => None,
    };
    let mut server = TestServer::start_with(|config| config.database_url = database_url).await?;
    let app = server.running().app.clone();
    let agent = TestAgent::start(&server, "bench-host").await?;
    server
        .wait_for_state("bench-host", "connected", Duration::from_secs(20))
        .await?;

    // The estate: stage → prod with every gate configured, three targets, a release of
    // three images with a Trivy and a Grype report each and a VEX document.
    server
        .post(
            "/api/v1/environments",
            json!({"name": "stage", "allow_unscanned": true}),
        )
        .await?;
    server
        .post(
            "/api/v1/environments",
            json!({"name": "prod", "after": "stage", "approvals": 0,
                   "freeze": ["0 3 1 1 */1h@Europe/Berlin"], "block_severity": "critical",
                   "policy": POLICY}),
        )
        .await?;
    for n in 1..=3 {
        server
            .post(
                "/api/v1/targets",
                json!({"name": format!("web-{n}"), "environment": "prod", "kind": "docker",
                       "agent": "bench-host", "settings": {"ports": format!("{}:80", 8080 + n)}}),
            )
            .await?;
    }
    let digest = Digest::parse(DIGEST).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let components = ["api", "web", "worker"]
        .iter()
        .map(|name| Component {
            name: (*name).to_owned(),
            source: format!("registry.example.com/shop/{name}:1.4.2"),
            image: format!("registry.example.com/shop/web@{DIGEST}"),
            digest: digest.clone(),
        })
        .collect();
    app.store
        .create_release(&Release {
            name: "shop".to_owned(),
            version: "1.4.2".to_owned(),
            components,
            created_by: "bench".to_owned(),
            created_at_ms: stella_control_plane::app::now_ms(),
        })
        .await?;
    for (kind, content) in [("trivy", TRIVY), ("grype", GRYPE), ("openvex", VEX)] {
        let content = String::from_utf8(content.to_vec())?;
        let id = stella_decision::sha256_id(content.as_bytes());
        app.store
            .put_document(&Document {
                id: id.clone(),
                kind: kind.to_owned(),
                content,
                created_by: "bench".to_owned(),
                created_at_ms: stella_control_plane::app::now_ms(),
            })
            .await?;
        if kind != "openvex" {
            app.store
                .add_scan_report(
                    DIGEST,
                    &id,
                    "registry.example.com/shop/web:1.4.2",
                    "bench",
                    stella_control_plane::app::now_ms(),
                )
                .await?;
        }
    }
    let (user, _) = app.create_user("release-bot", vec![Role::Operator]).await?;

    // One decision first: it must be what the bench claims to measure.
    let first = app
        .promote("shop", "1.4.2", "prod", &user, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let gates: Vec<String> = first.gates.iter().map(|g| g.gate.clone()).collect();
    if first.promotion.state.as_str() != "blocked" || first.promotion.decision_id.is_none() {
        bail!(
            "the bench's promotion is {} ({:?}), not blocked with a decision",
            first.promotion.state,
            first.promotion.message
        );
    }
    println!(
        "{backend}: each decision evaluates {} and is {}: {}",
        gates.join(", "),
        first.promotion.state,
        first.promotion.message.unwrap_or_default()
    );

    let started = Instant::now();
    let per_task = args.decisions.div_ceil(args.concurrency);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (app, user) = (app.clone(), user.clone());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let one = Instant::now();
                let decided = app
                    .promote("shop", "1.4.2", "prod", &user, None)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                // What the API's audit middleware appends for this request.
                app.audit(
                    &user.name,
                    "POST /api/v1/promotions",
                    "/api/v1/promotions",
                    &stella_decision::sha256_id(decided.promotion.id.as_bytes()),
                    "201",
                )
                .await;
                times.push(one.elapsed());
            }
            anyhow::Ok(times)
        }));
    }
    let mut times = Vec::with_capacity(per_task * args.concurrency);
    for task in tasks {
        times.extend(task.await??);
    }
    let elapsed = started.elapsed();
    times.sort_unstable();
    let at = |q: f64| {
        let index = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[index.min(times.len() - 1)]
    };
    println!(
        "{backend}: {} decisions in {:.2} s: {:.0} decisions/s; per decision p50 {:.2} ms, p99 {:.2} ms (at {} concurrent)",
        times.len(),
        elapsed.as_secs_f64(),
        times.len() as f64 / elapsed.as_secs_f64(),
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        args.concurrency
    );
    agent.stop().await?;
    server.stop().await;
    Ok(())
}
