//! The nginx router against Debian's nginx, with real backends behind it: every
//! assertion is about requests sent through nginx.

mod common;

use std::time::{Duration, Instant};

use common::{send, Connections, HttpBackend, Load, Nginx, Tally};
use stella_routers::nginx::NginxRouter;
use stella_routers::{AbMatch, ApplyMethod, Backend, RouteSpec, Router, RouterError};

fn route() -> RouteSpec {
    RouteSpec::new("web").expect("route name")
}

/// nginx started with `backends` applied first (the file is in place before nginx
/// reads its configuration, so the first apply reports `NotRunning`).
async fn started(backends: &[Backend]) -> (Nginx, NginxRouter) {
    let mut nginx = Nginx::prepare("web");
    let router = NginxRouter::new(nginx.settings());
    let applied = router
        .apply(&route(), backends)
        .await
        .expect("apply before start");
    assert_eq!(applied.method, ApplyMethod::NotRunning);
    nginx.start().await;
    (nginx, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_weights_90_10_send_10_percent_to_the_second_over_2000_requests() {
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let (nginx, router) = started(&[Backend::new(&v1.address(), 100).expect("backend")]).await;

    let backends = [
        Backend::new(&v1.address(), 90)
            .expect("backend")
            .in_slot("stable"),
        Backend::new(&v2.address(), 10)
            .expect("backend")
            .in_slot("canary"),
    ];
    let started = Instant::now();
    let applied = router
        .apply(&route(), &backends)
        .await
        .expect("apply 90/10");
    println!("nginx apply with reload: {:?}", started.elapsed());
    assert_eq!(applied.method, ApplyMethod::Reload);
    assert_eq!(applied.live, backends);
    assert_eq!(router.current(&route()).await.expect("current"), backends);

    let tally = send(&nginx.url(), 2_000, 4, &[]).await;
    println!(
        "nginx 90/10 over 2000 requests: {tally:?}, v2 share {:.2} %",
        tally.share("v2") * 100.0
    );
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(tally.total(), 2_000);
    let share = tally.share("v2");
    assert!(
        (0.07..=0.13).contains(&share),
        "v2 got {:.2} % of requests: {tally:?}",
        share * 100.0
    );
}

/// Moves weights six times under a steady client loop and returns what the loop saw.
async fn move_weights_under_load(connections: Connections) -> Tally {
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let (nginx, router) = started(&[
        Backend::new(&v1.address(), 100).expect("backend"),
        Backend::new(&v2.address(), 0).expect("backend"),
    ])
    .await;

    let load = Load::start_with(&nginx.url(), 4, Duration::from_secs(60), connections);
    load.wait_for_more(200).await;
    let mut reloads = Vec::new();
    for (w1, w2) in [(90, 10), (50, 50), (10, 90), (0, 100), (100, 0), (50, 50)] {
        let backends = [
            Backend::new(&v1.address(), w1).expect("backend"),
            Backend::new(&v2.address(), w2).expect("backend"),
        ];
        let started = Instant::now();
        let applied = router
            .apply(&route(), &backends)
            .await
            .expect("apply under load");
        reloads.push(started.elapsed());
        assert_eq!(applied.method, ApplyMethod::Reload);
        load.wait_for_more(300).await;
    }
    let tally = load.stop().await;
    println!("nginx under load ({connections:?}): {tally:?}; apply with confirmed reload took {reloads:?}");
    assert!(tally.count("v1") > 0 && tally.count("v2") > 0, "{tally:?}");
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_weight_changes_under_steady_load_fail_no_request() {
    let tally = move_weights_under_load(Connections::Fresh).await;
    assert_eq!(
        tally.failed(),
        0,
        "failed requests during reloads: {tally:?}"
    );
}

/// A client that keeps connections alive can have a request cross nginx closing an idle
/// connection as an old worker shuts down; sent again, it is served. No request fails
/// for a client that retries idempotent requests, as browsers do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_weight_changes_under_keep_alive_load_fail_no_request_with_one_retry() {
    let tally = move_weights_under_load(Connections::KeepAliveRetryOnce).await;
    assert_eq!(
        tally.failed(),
        0,
        "failed requests during reloads: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_ab_header_or_cookie_routes_exactly_the_marked_requests() {
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let (nginx, router) = started(&[Backend::new(&v1.address(), 1).expect("backend")]).await;
    let rule = AbMatch::header("X-Canary", "v2").or_cookie("canary", "yes");
    let backends = [
        Backend::new(&v1.address(), 1).expect("backend"),
        Backend::new(&v2.address(), 1)
            .expect("backend")
            .matching(rule),
    ];
    router.apply(&route(), &backends).await.expect("apply A/B");
    assert_eq!(router.current(&route()).await.expect("current"), backends);

    let url = nginx.url();
    let marked_header = send(&url, 200, 4, &[("X-Canary", "v2")]).await;
    let marked_cookie = send(&url, 200, 4, &[("Cookie", "a=b; canary=yes")]).await;
    let unmarked = send(&url, 200, 4, &[]).await;
    let other_value = send(&url, 200, 4, &[("X-Canary", "v3")]).await;
    let other_case = send(&url, 200, 4, &[("X-Canary", "V2")]).await;
    let prefix = send(&url, 200, 4, &[("X-Canary", "v2x")]).await;
    let other_cookie = send(&url, 200, 4, &[("Cookie", "canary=no; xcanary=yes")]).await;
    for (what, tally, version) in [
        ("header X-Canary: v2", &marked_header, "v2"),
        ("cookie canary=yes", &marked_cookie, "v2"),
        ("no mark", &unmarked, "v1"),
        ("X-Canary: v3", &other_value, "v1"),
        ("X-Canary: V2", &other_case, "v1"),
        ("X-Canary: v2x", &prefix, "v1"),
        ("cookies canary=no, xcanary=yes", &other_cookie, "v1"),
    ] {
        assert_eq!(
            tally.count(version),
            200,
            "{what} should all go to {version}: {tally:?}"
        );
    }

    // Without the rule, marked requests go to the default set again.
    router
        .apply(&route(), &backends[..1])
        .await
        .expect("apply without A/B");
    let after = send(&url, 100, 4, &[("X-Canary", "v2")]).await;
    assert_eq!(after.count("v1"), 100, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refuses_a_config_it_cannot_load_and_keeps_serving_the_old_one() {
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let good = [Backend::new(&v1.address(), 1).expect("backend")];
    let (nginx, router) = started(&good).await;
    let path = router.route_file(&route().name);
    let before = std::fs::read_to_string(&path).expect("route file");

    // A name nginx cannot resolve when it reads the configuration: the model takes it,
    // `nginx -t` does not.
    let bad = [
        Backend::new(&v2.address(), 1).expect("backend"),
        Backend::new("no-such-host.invalid:80", 1).expect("backend"),
    ];
    let load = Load::start(&nginx.url(), 2, Duration::from_secs(30));
    load.wait_for_more(50).await;
    let error = router
        .apply(&route(), &bad)
        .await
        .expect_err("nginx -t refuses");
    println!("refused: {error}");
    assert!(
        matches!(error, RouterError::NginxRejected { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("host not found in upstream"), "{message}");
    assert!(message.contains("no-such-host.invalid"), "{message}");
    assert_eq!(std::fs::read_to_string(&path).expect("route file"), before);
    assert_eq!(router.current(&route()).await.expect("current"), good);
    load.wait_for_more(100).await;
    let tally = load.stop().await;
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(
        tally.count("v2"),
        0,
        "the refused route must not serve: {tally:?}"
    );
    let after = send(&nginx.url(), 100, 2, &[]).await;
    assert_eq!(after.count("v1"), 100, "{after:?}");

    // Removing the route is refused too while the server block proxies to it.
    let error = router
        .remove(&route())
        .await
        .expect_err("route still in use");
    assert!(error.to_string().contains("stella_route_web"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).expect("route file"), before);

    // A hand-edited file is reported, not read as if it were the router's.
    std::fs::write(&path, before.replace("weight=1", "weight=2")).expect("edit");
    let error = router.current(&route()).await.expect_err("edited by hand");
    assert!(error.to_string().contains("edited by hand"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_run_by_an_unprivileged_user_with_its_own_prefix_takes_routes() {
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let mut nginx = Nginx::prepare_unprivileged("web");
    let router = NginxRouter::new(nginx.settings());
    let first = [Backend::new(&v1.address(), 1).expect("backend")];
    let applied = router
        .apply(&route(), &first)
        .await
        .expect("apply before start");
    assert_eq!(applied.method, ApplyMethod::NotRunning);
    nginx.start().await;
    let master = nginx.master_pid();
    assert_ne!(common::uid_of(&master.to_string()), 0, "nginx runs as root");

    let backends = [
        Backend::new(&v1.address(), 3).expect("backend"),
        Backend::new(&v2.address(), 1).expect("backend"),
    ];
    let applied = router
        .apply(&route(), &backends)
        .await
        .expect("apply 75/25");
    assert_eq!(applied.method, ApplyMethod::Reload);
    let tally = send(&nginx.url(), 400, 4, &[]).await;
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let share = tally.share("v2");
    assert!(
        (0.20..=0.30).contains(&share),
        "v2 got {:.1} %: {tally:?}",
        share * 100.0
    );
}
