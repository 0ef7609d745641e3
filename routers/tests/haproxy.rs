//! The HAProxy router against Debian's HAProxy, with real backends behind it: weights,
//! addresses and A/B values change through the Runtime API only, and every assertion
//! is about requests sent through HAProxy.

mod common;

use std::time::{Duration, Instant};

use common::{send, Haproxy, HttpBackend, Load};
use stella_routers::haproxy::HaproxyRouter;
use stella_routers::{AbMatch, ApplyMethod, Backend, RouteSpec, Router, RouterError};

fn route() -> RouteSpec {
    RouteSpec::new("web").expect("route name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_weights_90_10_send_10_percent_to_the_second_over_2000_requests() {
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let haproxy = Haproxy::start("web", 4).await;
    let router = HaproxyRouter::new(&haproxy.settings());
    assert_eq!(
        router.current(&route()).await.expect("current"),
        [],
        "no slot is live yet"
    );

    let backends = [
        Backend::new(&v1.address(), 90).expect("backend"),
        Backend::new(&v2.address(), 10).expect("backend"),
    ];
    let started = Instant::now();
    let applied = router
        .apply(&route(), &backends)
        .await
        .expect("apply 90/10");
    println!(
        "haproxy apply through the runtime API: {:?}",
        started.elapsed()
    );
    assert_eq!(applied.method, ApplyMethod::Runtime);
    assert_eq!(applied.live, backends);

    let tally = send(&haproxy.url(), 2_000, 4, &[]).await;
    println!(
        "haproxy 90/10 over 2000 requests: {tally:?}, v2 share {:.2} %",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_weight_and_backend_changes_under_steady_load_fail_no_request_without_reload() {
    let (v1, v2, v3) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
        HttpBackend::start("v3").await,
    );
    let haproxy = Haproxy::start("web", 4).await;
    let pid = haproxy.pid();
    let router = HaproxyRouter::new(&haproxy.settings());
    router
        .apply(
            &route(),
            &[Backend::new(&v1.address(), 100).expect("backend")],
        )
        .await
        .expect("first apply");

    let load = Load::start(&haproxy.url(), 4, Duration::from_secs(60));
    load.wait_for_more(200).await;
    let steps: [&[(&HttpBackend, u16)]; 6] = [
        &[(&v1, 90), (&v2, 10)],
        &[(&v1, 50), (&v2, 50)],
        &[(&v1, 0), (&v2, 100)],
        &[(&v2, 100)],
        &[(&v2, 50), (&v3, 50)],
        &[(&v3, 100), (&v1, 0)],
    ];
    let mut times = Vec::new();
    for step in steps {
        let backends: Vec<Backend> = step
            .iter()
            .map(|(b, w)| Backend::new(&b.address(), *w).expect("backend"))
            .collect();
        let started = Instant::now();
        let applied = router
            .apply(&route(), &backends)
            .await
            .expect("apply under load");
        times.push(started.elapsed());
        assert_eq!(applied.method, ApplyMethod::Runtime);
        load.wait_for_more(300).await;
    }
    let tally = load.stop().await;
    println!(
        "haproxy under load (kept-alive connections, no retry): {tally:?}; applies took {times:?}"
    );
    assert_eq!(tally.failed(), 0, "failed requests: {tally:?}");
    for version in ["v1", "v2", "v3"] {
        assert!(
            tally.count(version) > 0,
            "{version} never answered: {tally:?}"
        );
    }
    assert_eq!(haproxy.pid(), pid, "haproxy was not restarted");

    // The last step leaves v3 alone with weight: only it answers.
    let after = send(&haproxy.url(), 200, 4, &[]).await;
    assert_eq!(after.count("v3"), 200, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_ab_header_or_cookie_routes_exactly_the_marked_requests() {
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let haproxy = Haproxy::start("web", 2).await;
    let router = HaproxyRouter::new(&haproxy.settings());
    let rule = AbMatch::header("X-Canary", "v2").or_cookie("canary", "yes");
    let backends = [
        Backend::new(&v1.address(), 1).expect("backend"),
        Backend::new(&v2.address(), 1)
            .expect("backend")
            .matching(rule),
    ];
    router.apply(&route(), &backends).await.expect("apply A/B");
    assert_eq!(router.current(&route()).await.expect("current"), backends);

    let url = haproxy.url();
    for (what, headers, version) in [
        ("header X-Canary: v2", &[("X-Canary", "v2")][..], "v2"),
        (
            "cookie canary=yes",
            &[("Cookie", "a=b; canary=yes")][..],
            "v2",
        ),
        ("no mark", &[][..], "v1"),
        ("X-Canary: v3", &[("X-Canary", "v3")][..], "v1"),
        ("X-Canary: V2", &[("X-Canary", "V2")][..], "v1"),
        ("X-Canary: v2x", &[("X-Canary", "v2x")][..], "v1"),
        (
            "cookies canary=no, xcanary=yes",
            &[("Cookie", "canary=no; xcanary=yes")][..],
            "v1",
        ),
    ] {
        let tally = send(&url, 200, 4, headers).await;
        assert_eq!(
            tally.count(version),
            200,
            "{what} should all go to {version}: {tally:?}"
        );
    }

    // Header names are case-insensitive: the same rule spelt in lowercase applies.
    let lowercase = [
        backends[0].clone(),
        Backend::new(&v2.address(), 1)
            .expect("backend")
            .matching(AbMatch::header("x-canary", "v2").or_cookie("canary", "yes")),
    ];
    router
        .apply(&route(), &lowercase)
        .await
        .expect("apply with x-canary");

    // A rule on a header the configuration has no map for is refused, and nothing moves.
    let other = [
        Backend::new(&v1.address(), 1).expect("backend"),
        Backend::new(&v2.address(), 1)
            .expect("backend")
            .matching(AbMatch::header("X-Beta", "1")),
    ];
    let error = router
        .apply(&route(), &other)
        .await
        .expect_err("no map for X-Beta");
    assert!(error.to_string().contains("X-Beta"), "{error}");
    assert_eq!(router.current(&route()).await.expect("current"), backends);

    // Without the rule, marked requests go to the default set again.
    router
        .apply(&route(), &backends[..1])
        .await
        .expect("apply without A/B");
    let after = send(&url, 100, 4, &[("X-Canary", "v2")]).await;
    assert_eq!(after.count("v1"), 100, "{after:?}");
    assert_eq!(
        router.current(&route()).await.expect("current"),
        backends[..1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_refuses_more_backends_than_slots_and_names_before_changing_anything() {
    let (v1, v2, v3) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
        HttpBackend::start("v3").await,
    );
    let haproxy = Haproxy::start("web", 2).await;
    let router = HaproxyRouter::new(&haproxy.settings());
    let first = [Backend::new(&v1.address(), 7).expect("backend")];
    router.apply(&route(), &first).await.expect("apply");

    let three = [
        Backend::new(&v1.address(), 1).expect("backend"),
        Backend::new(&v2.address(), 1).expect("backend"),
        Backend::new(&v3.address(), 1).expect("backend"),
    ];
    let error = router
        .apply(&route(), &three)
        .await
        .expect_err("two slots only");
    assert!(matches!(error, RouterError::HaproxyConfig(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("has 2 server slots and the route needs 3"),
        "{error}"
    );
    assert_eq!(router.current(&route()).await.expect("current"), first);

    let named = [Backend::new("localhost:8080", 1).expect("backend")];
    let error = router
        .apply(&route(), &named)
        .await
        .expect_err("names are refused");
    assert!(error.to_string().contains("IP addresses"), "{error}");

    let unknown = RouteSpec::new("api").expect("route name");
    let error = router
        .apply(&unknown, &first)
        .await
        .expect_err("no backend api");
    assert!(error.to_string().contains("no backend `api`"), "{error}");

    let tally = send(&haproxy.url(), 50, 2, &[]).await;
    assert_eq!(tally.count("v1"), 50, "{tally:?}");

    router.remove(&route()).await.expect("remove");
    assert_eq!(router.current(&route()).await.expect("current"), []);
    let tally = send(&haproxy.url(), 10, 1, &[]).await;
    assert_eq!(tally.failures.get("status 503"), Some(&10), "{tally:?}");
}
