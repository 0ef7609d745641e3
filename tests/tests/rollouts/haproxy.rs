//! The same rollouts through Debian's HAProxy: the router changes server slots through
//! the Runtime API instead of rewriting a file and reloading, so what moves traffic, and
//! when, is not nginx's. Backend `web` (the route's name) has four slots: a blue-green
//! rollout over the two targets has two stable and two green servers at once.

use std::time::Duration;

use serde_json::json;

use crate::world::{
    fresh_client, get, send, step_states, wait_rollout, Load, RouterUnderTest, World,
    DEPLOY_TIMEOUT,
};

/// Blue-green under steady load through HAProxy: green takes all traffic, the stable
/// containers (fixed host ports) are replaced while they take none, traffic moves back,
/// green is retired, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_behind_haproxy_replaces_fixed_port_targets_with_no_failed_request(
) -> anyhow::Result<()> {
    let mut world = World::start_with(RouterUnderTest::Haproxy).await?;
    world.serve_v1().await?;
    world.release("v2", true).await?;
    let (status, _, stderr) = world
        .set_strategy(&["--strategy", "blue-green", "--router", "edge"])
        .await?;
    assert_eq!(status, 0, "{stderr}");

    let load = Load::start(&world.router.url());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = world.promote("v2").await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    println!("blue-green through haproxy under load: {tally:?}");

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
        tally.failed(),
        0,
        "failed requests during blue-green: {tally:?}"
    );
    assert!(tally.count("v1") > 0 && tally.count("v2") > 0, "{tally:?}");
    assert!(tally.total() > 100, "too little load to tell: {tally:?}");
    assert_eq!(world.slot_containers("green").await?, 0);
    for port in &world.ports {
        let direct = get(&fresh_client(), &format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(direct.as_deref(), Ok("v2"), "stable on port {port}");
    }
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");
    Ok(())
}

/// Canary at 50 % through HAProxy with manual pauses: the measured split matches the
/// weights, and promoting the pauses (one `promote` per pause: at 50 %, then at 100 %)
/// finishes the rollout with every request on v2 and no canary container left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_behind_haproxy_splits_traffic_and_finishes_when_promoted() -> anyhow::Result<()> {
    let mut world = World::start_with(RouterUnderTest::Haproxy).await?;
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

    let id = world.promote("v2").await?;
    let paused_at = |percent: u8| {
        move |d: &serde_json::Value| {
            d["rollout"]["weights"]
                == json!([{"slot": "stable", "percent": 100 - percent}, {"slot": "canary", "percent": percent}])
                && step_states(d).last().is_some_and(|(_, step, state)| {
                    step == "pause until promoted" && state == "running"
                })
        }
    };
    wait_rollout(
        &world,
        &id,
        "the canary at 50 % waiting for promote",
        paused_at(50),
    )
    .await?;
    assert_eq!(world.slot_containers("canary").await?, 1);
    let split = send(&world.router.url(), 400).await;
    println!("canary 50 % through haproxy: {split:?}");
    assert_eq!(split.failed(), 0, "{split:?}");
    let share = split.count("v2") as f64 / 400.0;
    assert!(
        (0.40..=0.60).contains(&share),
        "v2 share {share}: {split:?}"
    );

    let (status, stdout, stderr) = world.cli(&["deployment", "promote", &id]).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("promote requested"), "{stdout}");
    // A promote ends the pause it finds; the canary then takes everything and waits
    // again at 100 %.
    wait_rollout(
        &world,
        &id,
        "the canary at 100 % waiting for promote",
        paused_at(100),
    )
    .await?;
    let (status, _, stderr) = world.cli(&["deployment", "promote", &id]).await?;
    assert_eq!(status, 0, "{stderr}");

    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["rollout"]["state"], "succeeded", "{done:#}");
    assert_eq!(
        done["rollout"]["weights"],
        json!([{"slot": "stable", "percent": 100}, {"slot": "canary", "percent": 0}])
    );
    assert_eq!(world.slot_containers("canary").await?, 0);
    let after = send(&world.router.url(), 40).await;
    assert_eq!(after.count("v2"), 40, "{after:?}");
    Ok(())
}
