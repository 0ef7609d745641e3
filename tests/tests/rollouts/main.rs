//! Progressive rollouts end to end (RFC 0005, increment 2): a real control plane and a
//! real agent that drives Docker targets on the real engine and Debian's nginx in front
//! of them. Promotions into an environment with a strategy run as rollouts; every claim
//! about traffic is measured with requests sent through nginx while the rollout runs.

#[path = "../../../routers/tests/common/mod.rs"]
mod common;
mod haproxy;
mod world;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use stella_tests::images::WEB_METRICS_PATH;
use world::{
    fresh_client, get, send, send_with_header, step_states, wait_rollout, Load, World,
    DEPLOY_TIMEOUT,
};

/// Blue-green with the old set kept in the stable slot: green starts on engine-picked
/// ports, all traffic moves to it, the stable containers (fixed host ports, so
/// stop-first) are replaced while they take none, traffic moves back and green is
/// retired. Under steady load through nginx, no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_behind_nginx_replaces_fixed_port_targets_with_no_failed_request(
) -> anyhow::Result<()> {
    let mut world = World::start().await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    let (status, _, stderr) = world
        .set_strategy(&["--strategy", "blue-green", "--router", "edge"])
        .await?;
    assert_eq!(status, 0, "{stderr}");
    let env = world.server.get("/api/v1/environments/web").await?;
    assert_eq!(env["rollout"]["strategy"], "blue-green", "{env}");

    let load = Load::start(&world.router.url());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = world.promote("v2").await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    println!("blue-green under load: {tally:?}");

    assert_eq!(done["state"], "succeeded", "{done:#}");
    let rollout = &done["rollout"];
    assert_eq!(rollout["state"], "succeeded", "{rollout:#}");
    assert_eq!(
        step_states(&done)
            .iter()
            .map(|(_, _, state)| state.as_str())
            .collect::<Vec<_>>(),
        ["succeeded"; 5],
        "{rollout:#}"
    );
    assert_eq!(
        rollout["weights"],
        json!([{"slot": "stable", "percent": 100}, {"slot": "green", "percent": 0}])
    );
    assert_eq!(
        tally.failed(),
        0,
        "failed requests during blue-green: {tally:?}"
    );
    assert!(tally.count("v1") > 0 && tally.count("v2") > 0, "{tally:?}");
    assert!(tally.total() > 100, "too little load to tell: {tally:?}");
    // Green was served from (it had all the traffic while stable was replaced), then
    // retired; the stable containers run v2 on their fixed ports.
    let kinds: Vec<(&str, &str)> = done["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["kind"].as_str().unwrap_or(""),
                t["slot"].as_str().unwrap_or("stable"),
            )
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == ("deploy", "green")).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == ("deploy", "stable")).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == ("retire", "green")).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(world.slot_containers("green").await?, 0);
    for port in &world.ports {
        let direct = get(&fresh_client(), &format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(direct.as_deref(), Ok("v2"), "stable on port {port}");
    }
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");

    // The promotion carried the strategy in its plan, and says deployed.
    let promotions = world.server.get("/api/v1/promotions").await?;
    let promotion = promotions
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["deployment_id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(promotion["state"], "deployed", "{promotion:#}");
    Ok(())
}

/// Canary at 10 % waits for `promote`; the measured split through nginx is 10 % ± 3 %
/// of 2,000 requests; `abort` (also what `cancel` does to a rollout) routes everything back to
/// the stable version and retires the canary; the deployment fails naming the abort.
/// A canary whose new version does not start is rolled back before any traffic moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_splits_traffic_waits_for_promote_and_rolls_back_on_abort_or_failure(
) -> anyhow::Result<()> {
    let mut world = World::start().await?;
    let v1 = world.serve_v1().await?;
    world.release("v2", true).await?;
    world.release("v3", false).await?;

    // Bad strategies are refused with one line, naming the flag, and change nothing.
    for (args, expected) in [
        (
            vec![
                "--strategy",
                "canary",
                "--steps",
                "50,10",
                "--router",
                "edge",
            ],
            "strictly increasing",
        ),
        (
            vec!["--strategy", "canary", "--steps", "50,100"],
            "--router",
        ),
        (
            vec![
                "--strategy",
                "canary",
                "--steps",
                "50,100",
                "--router",
                "nowhere",
            ],
            "nowhere",
        ),
        (
            vec![
                "--strategy",
                "canary",
                "--steps",
                "50,100",
                "--router",
                "edge",
                "--pause",
                "soon",
            ],
            "--pause",
        ),
    ] {
        let (status, _, stderr) = world.set_strategy(&args).await?;
        assert_ne!(status, 0, "{args:?} was taken");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let env = world.server.get("/api/v1/environments/web").await?;
    assert!(env["rollout"].is_null(), "{env}");

    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "canary",
            "--steps",
            "10,100",
            "--pause",
            "manual",
            "--router",
            "edge",
        ])
        .await?;
    assert_eq!(status, 0, "{stderr}");

    let id = world.promote("v2").await?;
    let paused = wait_rollout(&world, &id, "the canary at 10 % waiting for promote", |d| {
        d["rollout"]["weights"]
            == json!([{"slot": "stable", "percent": 90}, {"slot": "canary", "percent": 10}])
            && step_states(d).last().is_some_and(|(_, step, state)| {
                step == "pause until promoted" && state == "running"
            })
    })
    .await?;
    assert_eq!(paused["state"], "running", "{paused:#}");
    // One target runs the canary beside its stable container; stable keeps 90 % over
    // both targets (115 of 256 each), the canary 10 % on one (26): 10.2 % of requests.
    assert_eq!(world.slot_containers("canary").await?, 1);
    let split = send(&world.router.url(), 2_000).await;
    println!("canary 10 %: {split:?}");
    assert_eq!(split.failed(), 0, "{split:?}");
    let share = split.count("v2") as f64 / 2_000.0;
    assert!(
        (0.07..=0.13).contains(&share),
        "v2 share {share}: {split:?}"
    );

    // Promote is refused for an all-at-once deployment.
    let (status, body) = world
        .server
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{v1}/promote"),
            None,
        )
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("not_a_rollout")),
        "{body}"
    );

    let (status, stdout, stderr) = world.cli(&["deployment", "abort", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("abort requested"), "{stdout}");
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "failed", "{done:#}");
    assert_eq!(done["rollout"]["state"], "rolled_back", "{done:#}");
    let message = done["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("rolled back: aborted by admin"),
        "{message}"
    );
    assert_eq!(
        done["rollout"]["weights"],
        json!([{"slot": "stable", "percent": 100}, {"slot": "canary", "percent": 0}])
    );
    assert_eq!(world.slot_containers("canary").await?, 0);
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v1"), 40, "{after:?}");
    let (status, stdout, stderr) = world.cli(&["deployment", "show", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(
        stdout.contains("rolled_back") && stdout.contains("retire canary"),
        "{stdout}"
    );
    // The promotion's console page shows the rollout: its state, the weights the
    // router was left with, and every step with its result.
    let promotions = world.server.get("/api/v1/promotions").await?;
    let promotion = promotions
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["deployment_id"] == id.as_str())
        .and_then(|p| p["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    let page = world
        .console_page(&format!("/console/promotions/{promotion}"))
        .await?;
    assert!(
        page.contains(r#"id="rollout-state">rolled_back<"#),
        "{page}"
    );
    assert!(
        page.contains(r#"id="rollout-weights">stable 100%, canary 0%<"#),
        "{page}"
    );
    assert!(page.contains("retire canary"), "{page}");
    assert!(page.contains("aborted by admin"), "{page}");

    // v3 never becomes healthy: the canary deploy fails, nothing was routed, and the
    // rollback retires the slot.
    let id = world.promote("v3").await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "failed", "{done:#}");
    let message = done["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("rolled back: step 1 (deploy to canary of"),
        "{message}"
    );
    let phases: Vec<(String, String, String)> = step_states(&done);
    assert_eq!(phases[0].2, "failed", "{phases:?}");
    assert!(
        phases[1..]
            .iter()
            .all(|(phase, _, state)| phase == "rollback" && state == "succeeded"),
        "{phases:?}"
    );
    assert_eq!(world.slot_containers("canary").await?, 0);
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v1"), 40, "{after:?}");
    Ok(())
}

/// Canary analysis over HTTP probes: a new version that fails one request in twenty at
/// `/cgi-bin/app` is judged worse than the old one (Mann–Whitney U on the per-round
/// error ratios) and rolled back, the analysis saying why and keeping its samples; a
/// clean version passes both analyses and finishes. Then the same over the versions'
/// own Prometheus metrics, with traffic sent through the router: the failing version is
/// rolled back again, and another clean one passes (its one analysis, at 50 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_analysis_rolls_back_a_version_failing_five_percent_and_passes_a_clean_one(
) -> anyhow::Result<()> {
    let mut world = World::start().await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    world.release("v4", true).await?;
    world
        .release_with(
            "v3",
            &stella_tests::images::WebImageOptions {
                healthy: true,
                error_percent: 5,
                ..Default::default()
            },
        )
        .await?;
    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "canary",
            "--steps",
            "50,100",
            "--router",
            "edge",
            "--analysis",
            "smoke",
        ])
        .await?;
    assert_ne!(status, 0, "unknown checks were taken");
    assert!(stderr.contains("--analysis \"smoke\""), "{stderr}");
    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "canary",
            "--steps",
            "50,100",
            "--router",
            "edge",
            "--analysis",
            "http:/cgi-bin/app",
            "--analysis-for",
            "20s",
        ])
        .await?;
    assert_eq!(status, 0, "{stderr}");

    let id = world.promote("v3").await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "failed", "{done:#}");
    assert_eq!(done["rollout"]["state"], "rolled_back", "{done:#}");
    let message = done["message"].as_str().unwrap_or_default();
    println!("rolled back: {message}");
    assert!(
        message.contains("analysis `http:/cgi-bin/app` over")
            && message.contains("error_ratio: canary worse than baseline"),
        "{message}"
    );
    let analysed = done["rollout"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["step"].as_str().is_some_and(|t| t.starts_with("analyse")))
        .cloned()
        .unwrap_or_default();
    assert_eq!(analysed["state"], "failed", "{analysed:#}");
    let record = &analysed["detail"]["analysis"];
    assert_eq!(record["verdict"]["verdict"], "rollback", "{record:#}");
    let canary: Vec<f64> =
        serde_json::from_value(record["metrics"][0]["samples"]["canary"].clone())?;
    let baseline: Vec<f64> =
        serde_json::from_value(record["metrics"][0]["samples"]["baseline"].clone())?;
    assert!(
        canary.len() >= 15 && canary.iter().any(|r| *r > 0.0),
        "{canary:?}"
    );
    assert!(baseline.iter().all(|r| *r == 0.0), "{baseline:?}");
    // The recorded samples give the recorded verdict again.
    let replayed: stella_decision::analysis::StepRecord = serde_json::from_value(record.clone())?;
    assert_eq!(
        stella_decision::analysis::recompute(&replayed)?,
        replayed.verdict
    );
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v1"), 40, "{after:?}");
    assert_eq!(world.slot_containers("canary").await?, 0);

    // The evidence packet of the promotion carries the rollout with the analysis, and
    // verifies with no server (the analysis recomputed from its samples).
    let decision = done["decision_id"].as_str().unwrap_or_default().to_owned();
    let packet = world.server.dir.path().join("evidence.tar.gz");
    let packet_path = packet.display().to_string();
    let (status, _, stderr) = world
        .cli(&["evidence", "export", &decision, "--out", &packet_path])
        .await?;
    assert_eq!(status, 0, "{stderr}");
    let read = stella_decision::evidence::Packet::read(&std::fs::read(&packet)?)?;
    let rollout: serde_json::Value =
        serde_json::from_slice(&read.files[stella_decision::evidence::ROLLOUT])?;
    assert_eq!(rollout["state"], "rolled_back", "{rollout:#}");
    let (status, stdout, stderr) = world.cli(&["evidence", "verify", &packet_path]).await?;
    assert_eq!(status, 0, "{stdout}{stderr}");

    let id = world.promote("v2").await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let analyses: Vec<String> = done["rollout"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"].as_str().is_some_and(|t| t.starts_with("analyse")))
        .map(|s| format!("{}: {}", s["state"], s["message"]))
        .collect();
    assert_eq!(analyses.len(), 2, "{analyses:?}");
    assert!(
        analyses.iter().all(|a| a.starts_with("\"succeeded\"")),
        "{analyses:?}"
    );
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");

    prometheus_analysis(&world).await
}

/// The second half of the test above: `--analysis prometheus:` over the web images'
/// `/cgi-bin/metrics`, while four clients send requests to `/cgi-bin/app` through nginx.
async fn prometheus_analysis(world: &World) -> anyhow::Result<()> {
    let canary = |analysis: &str| {
        [
            "--strategy",
            "canary",
            "--steps",
            "50,100",
            "--router",
            "edge",
            "--analysis",
            analysis,
            "--analysis-for",
            "10s",
        ]
        .map(str::to_owned)
    };
    let unknown = canary("prometheus:/cgi-bin/metrics?rate=5m");
    let (status, _, stderr) = world
        .set_strategy(&unknown.each_ref().map(String::as_str))
        .await?;
    assert_ne!(status, 0, "an unknown key was taken");
    assert!(
        stderr.contains("unknown key `rate`") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "blue-green",
            "--router",
            "edge",
            "--analysis",
            "prometheus",
        ])
        .await?;
    assert_ne!(status, 0, "blue-green took checks of served traffic");
    assert!(
        stderr.contains("blue-green sends the new version none"),
        "{stderr}"
    );
    let checks = format!("prometheus:{WEB_METRICS_PATH}");
    let (status, _, stderr) = world
        .set_strategy(&canary(&checks).each_ref().map(String::as_str))
        .await?;
    assert_eq!(status, 0, "{stderr}");

    let load = Load::start(&format!("{}cgi-bin/app", world.router.url()));
    let id = world.promote("v3").await?;
    let failed = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    let id = world.promote("v4").await?;
    let passed = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    let tally = load.stop().await;
    println!("load through nginx during both rollouts: {tally:?}");

    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert_eq!(failed["rollout"]["state"], "rolled_back", "{failed:#}");
    let message = failed["message"].as_str().unwrap_or_default();
    println!("rolled back: {message}");
    assert!(
        message.contains(&format!("analysis `{checks}` over"))
            && message.contains("error_ratio: canary worse than baseline"),
        "{message}"
    );
    let analysed = analyse_steps(&failed);
    assert_eq!(analysed.len(), 1, "{analysed:#?}");
    let detail = &analysed[0]["detail"];
    println!(
        "analysis detail: rounds {}, requests {}, results {}, scraped {}",
        detail["rounds"], detail["requests"], detail["results"], detail["scraped"]
    );
    let record: stella_decision::analysis::StepRecord =
        serde_json::from_value(detail["analysis"].clone())?;
    assert_eq!(
        stella_decision::analysis::recompute(&record)?,
        record.verdict
    );
    let errors = &record.metrics[0];
    assert_eq!(errors.metric, stella_decision::analysis::Metric::ErrorRatio);
    assert!(
        errors.samples.canary.len() >= 5 && errors.samples.canary.iter().any(|r| *r > 0.0),
        "{errors:?}"
    );
    assert!(
        errors.samples.baseline.iter().all(|r| *r == 0.0),
        "{errors:?}"
    );
    // Every request of the image is in its first bucket (≤ 5 ms): PromQL's p99 of that
    // is 0.99 × 5 ms on both sides.
    let latency = &record.metrics[1];
    assert_eq!(
        latency.metric,
        stella_decision::analysis::Metric::LatencyP99Ms
    );
    for side in [&latency.samples.baseline, &latency.samples.canary] {
        assert!(
            !side.is_empty() && side.iter().all(|ms| *ms == 4.95),
            "{latency:?}"
        );
    }
    let scraped = &detail["scraped"];
    assert_eq!(scraped["path"], WEB_METRICS_PATH);
    assert_eq!(scraped["metrics"]["requests"], "http_requests_total");
    for side in ["baseline", "canary"] {
        assert_eq!(scraped[side]["scrapes_failed"], 0, "{scraped:#}");
        assert_eq!(scraped[side]["lines_skipped"], 0, "{scraped:#}");
        assert!(scraped[side]["requests"].as_u64() > Some(0), "{scraped:#}");
    }
    assert!(
        scraped["canary"]["errors"].as_u64() > Some(0),
        "{scraped:#}"
    );

    // The evidence packet verifies with no server, the analysis recomputed.
    let decision = failed["decision_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let packet = world.server.dir.path().join("evidence-prometheus.tar.gz");
    let packet_path = packet.display().to_string();
    let (status, _, stderr) = world
        .cli(&["evidence", "export", &decision, "--out", &packet_path])
        .await?;
    assert_eq!(status, 0, "{stderr}");
    let (status, stdout, stderr) = world.cli(&["evidence", "verify", &packet_path]).await?;
    assert_eq!(status, 0, "{stdout}{stderr}");

    assert_eq!(passed["state"], "succeeded", "{passed:#}");
    let analysed = analyse_steps(&passed);
    // At 100 % the old version serves nothing: the one analysis is at 50 %.
    assert_eq!(analysed.len(), 1, "{analysed:#?}");
    assert_eq!(analysed[0]["state"], "succeeded", "{analysed:#?}");
    println!("clean: {}", analysed[0]["message"]);
    // The load saw the failing version's 500s and nothing else fail.
    assert!(
        tally
            .failures
            .keys()
            .all(|k| k == "status 500 Internal Server Error"),
        "{tally:?}"
    );
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v4"), 40, "{after:?}");
    Ok(())
}

/// The `analyse` steps of a deployment's rollout.
fn analyse_steps(deployment: &serde_json::Value) -> Vec<serde_json::Value> {
    deployment["rollout"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"].as_str().is_some_and(|t| t.starts_with("analyse")))
        .cloned()
        .collect()
}

/// Targets of `world` whose own (stable) container is not running now.
async fn stable_down(world: &World) -> anyhow::Result<usize> {
    let docker = bollard::Docker::connect_with_local_defaults()?;
    let all = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await?;
    let running: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
        .filter_map(|c| {
            let labels = c.labels.as_ref()?;
            if labels.contains_key("ops.stella.slot") {
                return None;
            }
            labels.get("ops.stella.target").cloned()
        })
        .collect();
    Ok(world
        .targets
        .iter()
        .filter(|t| !running.contains(*t))
        .count())
}

/// Rolling over ten targets in batches of three behind nginx, one target out of service
/// at a time: each is drained out of the router before it is replaced and put back
/// after, so no request through the router fails, and a sampler of the engine never
/// sees more than one target down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_behind_nginx_over_ten_targets_keeps_at_most_one_down_and_fails_no_request(
) -> anyhow::Result<()> {
    let mut world = World::start_targets(10).await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "rolling",
            "--batch",
            "3",
            "--max-unavailable",
            "1",
            "--router",
            "edge",
        ])
        .await?;
    assert_eq!(status, 0, "{stderr}");

    let load = Load::start(&world.router.url());
    let id = world.promote("v2").await?;
    let mut most_down = 0;
    let mut samples = 0;
    let done = loop {
        most_down = most_down.max(stable_down(&world).await?);
        samples += 1;
        let deployment = world.deployment(&id).await?;
        if deployment["finished_at"].is_string() {
            break deployment;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tally = load.stop().await;
    println!("rolling: {samples} samples, at most {most_down} down; {tally:?}");
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let steps = step_states(&done);
    // Per target: drain it, deploy it, put it back.
    assert_eq!(steps.len(), 30, "three steps per target: {steps:?}");
    assert!(
        steps.iter().all(|(_, _, state)| state == "succeeded"),
        "{steps:?}"
    );
    let first = &steps[0].1;
    assert!(
        first.contains("drain") && first.contains(&world.targets[0]),
        "{steps:?}"
    );
    assert!(samples > 20, "too few samples to tell: {samples}");
    assert!(most_down <= 1, "{most_down} targets were down at once");
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(tally.count("v1") > 0 && tally.count("v2") > 0, "{tally:?}");
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");
    Ok(())
}

/// A rolling rollout behind nginx aborted after its first target: the rollback drains
/// that target again, restores the previous release there and puts it back, with no
/// request through the router failing; every target ends on v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_rolling_rollout_behind_nginx_is_undone_without_a_failed_request(
) -> anyhow::Result<()> {
    let mut world = World::start_targets(3).await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "rolling",
            "--batch",
            "1",
            "--pause",
            "manual",
            "--router",
            "edge",
        ])
        .await?;
    assert_eq!(status, 0, "{stderr}");
    let load = Load::start(&world.router.url());
    let id = world.promote("v2").await?;
    wait_rollout(
        &world,
        &id,
        "the first target done, waiting for promote",
        |d| {
            step_states(d).last().is_some_and(|(_, step, state)| {
                step == "pause until promoted" && state == "running"
            })
        },
    )
    .await?;
    let (status, _, stderr) = world.cli(&["deployment", "abort", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    let tally = load.stop().await;
    println!("aborted rolling: {tally:?}");
    assert_eq!(done["state"], "failed", "{done:#}");
    assert_eq!(done["rollout"]["state"], "rolled_back", "{done:#}");
    let rollback: Vec<String> = step_states(&done)
        .into_iter()
        .filter(|(phase, _, _)| phase == "rollback")
        .map(|(_, step, state)| {
            assert_eq!(state, "succeeded", "{step}");
            step
        })
        .collect();
    let first = &world.targets[0];
    assert_eq!(rollback.len(), 3, "{rollback:?}");
    assert!(
        rollback[0].ends_with(&format!("drain {first}")),
        "{rollback:?}"
    );
    assert!(rollback[1].starts_with("restore") && rollback[1].ends_with(first.as_str()));
    assert!(!rollback[2].contains("drain"), "{rollback:?}");
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(
        tally.count("v2") > 0,
        "the first target served v2: {tally:?}"
    );
    let after = send(&world.router.url(), 60).await;
    assert_eq!(after.count("v1"), 60, "{after:?}");
    Ok(())
}

/// A canary survives its agent crashing and its server restarting: the rollout waits
/// at its pause, the promote is taken by the restarted server, the route step waits
/// for the agent to come back, and the rollout finishes. Requests through nginx never
/// fail meanwhile: the router keeps the last weights it was given, which point at
/// running containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_survives_its_agent_crashing_and_its_server_restarting() -> anyhow::Result<()> {
    let mut world = World::start_with_agent_process().await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "canary",
            "--steps",
            "50,100",
            "--pause",
            "manual",
            "--router",
            "edge",
        ])
        .await?;
    assert_eq!(status, 0, "{stderr}");
    let load = Load::start(&world.router.url());
    let id = world.promote("v2").await?;
    wait_rollout(&world, &id, "the canary paused at 50 %", |d| {
        step_states(d)
            .last()
            .is_some_and(|(_, step, state)| step == "pause until promoted" && state == "running")
    })
    .await?;

    world.kill_agent().await?;
    world.server.restart().await?;
    let (status, _, stderr) = world.cli(&["deployment", "promote", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    // The route to 100 % cannot be applied while the agent is gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = world.deployment(&id).await?;
    assert_eq!(waiting["state"], "running", "{waiting:#}");
    assert_eq!(
        waiting["rollout"]["weights"],
        json!([{"slot": "stable", "percent": 50}, {"slot": "canary", "percent": 50}]),
        "{waiting:#}"
    );
    world.restart_agent()?;
    // At 100 % the canary pauses again (a pause follows every weight).
    wait_rollout(&world, &id, "the canary paused at 100 %", |d| {
        d["rollout"]["weights"]
            == json!([{"slot": "stable", "percent": 0}, {"slot": "canary", "percent": 100}])
            && step_states(d).last().is_some_and(|(_, step, state)| {
                step == "pause until promoted" && state == "running"
            })
    })
    .await?;
    let (status, _, stderr) = world.cli(&["deployment", "promote", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    let tally = load.stop().await;
    println!("canary across an agent crash and a server restart: {tally:?}");
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");
    assert_eq!(world.slot_containers("canary").await?, 0);
    Ok(())
}

/// A-b through nginx: while the rollout waits, exactly the requests carrying the header
/// go to the new version, on one target's `b` slot; `promote` finishes it on every
/// target and retires `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b_routes_exactly_the_marked_requests_until_promoted() -> anyhow::Result<()> {
    let mut world = World::start().await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    let (status, _, stderr) = world
        .set_strategy(&[
            "--strategy",
            "a-b",
            "--match",
            "header:X-Canary=v2",
            "--router",
            "edge",
        ])
        .await?;
    assert_eq!(status, 0, "{stderr}");
    let id = world.promote("v2").await?;
    wait_rollout(&world, &id, "the a-b rollout waiting for promote", |d| {
        step_states(d)
            .last()
            .is_some_and(|(_, step, state)| step == "pause until promoted" && state == "running")
    })
    .await?;
    assert_eq!(world.slot_containers("b").await?, 1);
    let url = world.router.url();
    let marked = send_with_header(&url, 100, "X-Canary", "v2").await;
    let other = send_with_header(&url, 100, "X-Canary", "v3").await;
    let unmarked = send(&url, 100).await;
    println!("a-b: marked {marked:?}, other value {other:?}, unmarked {unmarked:?}");
    assert_eq!(marked.count("v2"), 100, "{marked:?}");
    assert_eq!(other.count("v1"), 100, "{other:?}");
    assert_eq!(unmarked.count("v1"), 100, "{unmarked:?}");

    let (status, _, stderr) = world.cli(&["deployment", "promote", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(world.slot_containers("b").await?, 0);
    let after = send(&url, 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");
    let marked = send_with_header(&url, 20, "X-Canary", "v2").await;
    assert_eq!(marked.count("v2"), 20, "{marked:?}");
    Ok(())
}
