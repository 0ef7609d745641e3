//! Routers end to end (RFC 0005, increment 1): router objects created through the REST
//! API of a real control plane, routes applied and read back through a real agent
//! (`RouteUpdate` / `RouteResult` on its stream), into Debian's real nginx and HAProxy,
//! with real HTTP backends behind them. Every split is measured with requests sent
//! through the router. A test that needs nginx or HAProxy fails when it is missing
//! (`cargo xtask test` installs both).

#[path = "../../routers/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{send, Haproxy, HttpBackend, Nginx};
use reqwest::Method;
use serde_json::{json, Value};
use stella_agent_core::TargetRegistry;
use stella_tests::{stella, wait_until, TestAgent, TestServer};

/// A real agent (the one `stella agent run` runs) connected to `server`, once it has
/// told the server it drives `capability`.
async fn router_agent(
    server: &TestServer,
    name: &str,
    capability: &str,
) -> anyhow::Result<TestAgent> {
    let agent = TestAgent::start(server, name).await?;
    wait_until(
        &format!("agent {name} advertises {capability}"),
        Duration::from_secs(30),
        || async {
            server.agent(name).await.ok().filter(|a| {
                a["state"] == "connected"
                    && a["capabilities"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c == capability))
            })
        },
    )
    .await?;
    Ok(agent)
}

fn backends(pairs: &[(&HttpBackend, u16, &str)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(backend, weight, slot)| {
                json!({"address": backend.address(), "weight": weight, "slot": slot})
            })
            .collect(),
    )
}

async fn put_route(
    server: &TestServer,
    router: &str,
    route: &str,
    backends: Value,
) -> anyhow::Result<(u16, Value)> {
    server
        .call(
            Method::PUT,
            &format!("/api/v1/routers/{router}/routes/{route}"),
            Some(json!({ "backends": backends })),
        )
        .await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_router_takes_a_90_10_route_through_the_api_and_refuses_what_nginx_refuses(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let _agent = router_agent(&server, "edge", "router:nginx").await?;
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let mut nginx = Nginx::prepare("web");
    let settings = nginx.settings();
    let path = |p: &std::path::Path| p.display().to_string();
    let created = server
        .post(
            "/api/v1/routers",
            json!({
                "name": "edge",
                "kind": "nginx",
                "agent": "edge",
                "settings": {
                    "nginx_bin": path(&settings.nginx_bin),
                    "conf_path": path(&settings.conf_path),
                    "prefix": path(settings.prefix.as_deref().expect("prefix")),
                    "error_log": path(settings.error_log.as_deref().expect("error log")),
                    "pid_file": path(&settings.pid_file),
                    "routes_dir": path(&settings.routes_dir),
                },
            }),
        )
        .await?;
    assert_eq!(created["kind"], "nginx");
    assert_eq!(created["agent"], "edge");

    // The route file must be there before nginx reads its configuration: the first
    // apply finds no nginx running and leaves the file for its start.
    let (status, first) =
        put_route(&server, "edge", "web", backends(&[(&v1, 100, "stable")])).await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["method"], "not_running", "{first}");
    nginx.start().await;

    let split = backends(&[(&v1, 90, "stable"), (&v2, 10, "canary")]);
    let (status, applied) = put_route(&server, "edge", "web", split.clone()).await?;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["method"], "reload", "{applied}");
    assert_eq!(
        applied["backends"], split,
        "what the router reports after the change"
    );
    println!("nginx apply through the API: {} ms", applied["duration_ms"]);

    let tally = send(&nginx.url(), 1_000, 4, &[]).await;
    println!(
        "nginx 90/10 through the API, 1000 requests: {tally:?}, v2 share {:.1} %",
        tally.share("v2") * 100.0
    );
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(tally.total(), 1_000);
    let share = tally.share("v2");
    assert!(
        (0.07..=0.13).contains(&share),
        "v2 got {:.1} %: {tally:?}",
        share * 100.0
    );

    // `current` reads back what was applied.
    let current = server.get("/api/v1/routers/edge/routes/web").await?;
    assert_eq!(current["backends"], split, "{current}");
    assert!(current.get("method").is_none(), "{current}");

    // nginx refuses an upstream it cannot resolve: the error says so, and the previous
    // route keeps serving.
    let bad = json!([
        {"address": v1.address(), "weight": 50},
        {"address": "no-such-host.invalid:8080", "weight": 50},
    ]);
    let (status, refused) = put_route(&server, "edge", "web", bad).await?;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(code(&refused), "route_rejected", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("nginx -t refused") && message.contains("no-such-host.invalid"),
        "{message}"
    );
    println!("nginx -t failure as the API tells it: {message}");
    let current = server.get("/api/v1/routers/edge/routes/web").await?;
    assert_eq!(
        current["backends"], split,
        "the previous route is still there"
    );
    let after = send(&nginx.url(), 200, 4, &[]).await;
    assert_eq!(after.failed(), 0, "{after:?}");
    assert_eq!(after.count("v1") + after.count("v2"), 200, "{after:?}");

    // A route name or backend the router cannot take is refused before the agent.
    let (status, body) = put_route(&server, "edge", "Web_1", split.clone()).await?;
    assert_eq!((status, code(&body)), (400, "invalid_argument"), "{body}");
    let (status, body) = put_route(
        &server,
        "edge",
        "web",
        json!([{"address": v1.address(), "weight": 300}]),
    )
    .await?;
    assert_eq!((status, code(&body)), (400, "invalid_argument"), "{body}");
    // Only an A/B set, no default backend: the router's own check, through the agent.
    let (status, body) = put_route(
        &server,
        "edge",
        "web",
        json!([{"address": v1.address(), "weight": 1, "match": {"header": {"name": "X-Canary", "value": "v2"}}}]),
    )
    .await?;
    assert_eq!((status, code(&body)), (400, "route_invalid"), "{body}");

    // A viewer reads routers and routes but applies none.
    let created = server
        .post(
            "/api/v1/users",
            json!({"name": "vera", "roles": ["viewer"]}),
        )
        .await?;
    let viewer = created["token"].as_str().unwrap_or_default().to_owned();
    let (status, body) = server
        .request(
            Method::PUT,
            "/api/v1/routers/edge/routes/web",
            Some(&viewer),
            Some(json!({ "backends": backends(&[(&v2, 100, "canary")]) })),
        )
        .await?;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, body) = server
        .request(
            Method::GET,
            "/api/v1/routers/edge/routes/web",
            Some(&viewer),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .request(Method::GET, "/api/v1/routers", Some(&viewer), None)
        .await?;
    assert_eq!(
        (status, body[0]["name"].as_str()),
        (200, Some("edge")),
        "{body}"
    );
    let still = send(&nginx.url(), 100, 2, &[]).await;
    assert_eq!(still.failed(), 0, "{still:?}");
    assert!(
        still.share("v1") > 0.8,
        "the viewer changed nothing: {still:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_router_takes_a_90_10_route_through_the_api() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let _agent = router_agent(&server, "lb", "router:haproxy").await?;
    let (v1, v2) = (
        HttpBackend::start("v1").await,
        HttpBackend::start("v2").await,
    );
    let haproxy = Haproxy::start("web", 4).await;
    server
        .post(
            "/api/v1/routers",
            json!({
                "name": "lb",
                "kind": "haproxy",
                "agent": "lb",
                "settings": {"admin_socket": haproxy.settings().admin_socket.display().to_string()},
            }),
        )
        .await?;

    let split = backends(&[(&v1, 90, "stable"), (&v2, 10, "canary")]);
    let (status, applied) = put_route(&server, "lb", "web", split).await?;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["method"], "runtime", "{applied}");
    // HAProxy keeps no slot names: what it reports carries none.
    let unslotted = json!([
        {"address": v1.address(), "weight": 90},
        {"address": v2.address(), "weight": 10},
    ]);
    assert_eq!(applied["backends"], unslotted, "{applied}");
    println!(
        "haproxy apply through the API: {} ms",
        applied["duration_ms"]
    );

    let tally = send(&haproxy.url(), 1_000, 4, &[]).await;
    println!(
        "haproxy 90/10 through the API, 1000 requests: {tally:?}, v2 share {:.1} %",
        tally.share("v2") * 100.0
    );
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let share = tally.share("v2");
    assert!(
        (0.07..=0.13).contains(&share),
        "v2 got {:.1} %: {tally:?}",
        share * 100.0
    );

    let current = server.get("/api/v1/routers/lb/routes/web").await?;
    assert_eq!(current["backends"], unslotted, "{current}");

    // More backends than the configuration's slots: refused before anything moves.
    let five: Vec<Value> = (1..=5)
        .map(|n| json!({"address": format!("127.0.0.{n}:8080"), "weight": 1}))
        .collect();
    let (status, refused) = put_route(&server, "lb", "web", Value::Array(five)).await?;
    assert_eq!(
        (status, code(&refused)),
        (422, "route_rejected"),
        "{refused}"
    );
    let current = server.get("/api/v1/routers/lb/routes/web").await?;
    assert_eq!(current["backends"], unslotted, "nothing moved");

    // The same through the CLI: move every request to v2 (v1 stays known with weight 0),
    // read it back, list, and a refusal as one line on stderr with a non-zero exit.
    let ca = server.ca_file().display().to_string();
    let api = server.api_url();
    let env = [
        ("STELLA_SERVER", api.as_str()),
        ("STELLA_TOKEN", server.admin_token.as_str()),
        ("STELLA_CA_FILE", ca.as_str()),
    ];
    let (v1_backend, v2_backend) = (
        format!("{}=0@stable", v1.address()),
        format!("{}=100@canary", v2.address()),
    );
    let (status, stdout, stderr) = stella(
        &[
            "router",
            "route",
            "lb",
            "web",
            "--backend",
            &v1_backend,
            "--backend",
            &v2_backend,
            "-o",
            "json",
        ],
        &env,
    )
    .await?;
    assert_eq!(status, 0, "{stderr}");
    let applied: Value = serde_json::from_str(&stdout)?;
    let moved = json!([
        {"address": v1.address(), "weight": 0},
        {"address": v2.address(), "weight": 100},
    ]);
    assert_eq!(applied["backends"], moved, "{stdout}");
    let tally = send(&haproxy.url(), 200, 2, &[]).await;
    assert_eq!(
        (tally.count("v1"), tally.count("v2")),
        (0, 200),
        "{tally:?}"
    );
    let (status, stdout, stderr) = stella(&["router", "route", "lb", "web"], &env).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(
        stdout.contains(&v2.address()) && stdout.contains("100"),
        "{stdout}"
    );
    let (status, stdout, stderr) = stella(&["router", "list", "-o", "json"], &env).await?;
    assert_eq!(status, 0, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout)?;
    assert_eq!(listed[0]["kind"], "haproxy", "{stdout}");
    let (status, _, stderr) = stella(
        &[
            "router",
            "route",
            "lb",
            "web",
            "--backend",
            "127.0.0.1:1=300",
        ],
        &env,
    )
    .await?;
    assert_ne!(status, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("weight 300"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_are_refused_with_bad_settings_a_taken_name_or_an_agent_that_cannot_drive_them(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let edge = router_agent(&server, "edge", "router:nginx").await?;
    // An agent that drives nothing: it says hello with no capability.
    let _bare = TestAgent::start_driving(&server, "bare", TargetRegistry::new()).await?;
    server
        .wait_for_state("bare", "connected", Duration::from_secs(30))
        .await?;

    let create = |body: Value| {
        let server = &server;
        async move {
            server
                .call(Method::POST, "/api/v1/routers", Some(body))
                .await
        }
    };
    let nginx = |name: &str, agent: &str, settings: Value| json!({"name": name, "kind": "nginx", "agent": agent, "settings": settings});

    let (status, body) = create(nginx("edge", "edge", json!({"routes_dir": "routes"}))).await?;
    assert_eq!((status, code(&body)), (400, "invalid_argument"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("absolute path"),
        "{body}"
    );
    let (status, body) = create(nginx(
        "edge",
        "edge",
        json!({"routes_dir": "/r", "listen": "80"}),
    ))
    .await?;
    assert_eq!((status, code(&body)), (400, "invalid_argument"), "{body}");
    let (status, body) = create(nginx("edge", "edge", json!({}))).await?;
    assert_eq!((status, code(&body)), (400, "invalid_argument"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("routes_dir"),
        "{body}"
    );
    let (status, body) = create(json!({"name": "edge", "kind": "envoy", "agent": "edge"})).await?;
    assert_eq!((status, code(&body)), (400, "invalid_argument"), "{body}");
    let (status, body) = create(nginx("edge", "nobody", json!({"routes_dir": "/r"}))).await?;
    assert_eq!((status, code(&body)), (400, "unknown_agent"), "{body}");
    let (status, body) = create(nginx("edge", "bare", json!({"routes_dir": "/r"}))).await?;
    assert_eq!(
        (status, code(&body)),
        (400, "agent_cannot_drive_kind"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("router:nginx"),
        "{body}"
    );

    let (status, body) = create(nginx("edge", "edge", json!({"routes_dir": "/r"}))).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = create(nginx("edge", "edge", json!({"routes_dir": "/other"}))).await?;
    assert_eq!((status, code(&body)), (409, "router_exists"), "{body}");

    // Routers belong to their tenant: another tenant sees none, and its agents are its
    // own (the default tenant's `edge` is unknown there).
    server
        .post("/api/v1/tenants", json!({"name": "team-a"}))
        .await?;
    let me = server.get("/api/v1/whoami").await?;
    let me = me["name"].as_str().unwrap_or("admin").to_owned();
    server
        .post(
            &format!("/api/v1/users/{me}/bindings"),
            json!({"tenant": "team-a", "role": "admin"}),
        )
        .await?;
    let in_team_a = |method: Method, path: &'static str, body: Option<Value>| {
        let server = &server;
        async move {
            let mut request = server
                .client()
                .request(method, format!("{}{path}", server.api_url()))
                .bearer_auth(&server.admin_token)
                .header("X-StellaOps-Tenant", "team-a");
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body: Value =
                serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
            anyhow::Ok((status, body))
        }
    };
    let (status, body) = in_team_a(Method::GET, "/api/v1/routers", None).await?;
    assert_eq!((status, body), (200, json!([])));
    let (status, body) = in_team_a(Method::GET, "/api/v1/routers/edge", None).await?;
    assert_eq!((status, code(&body)), (404, "unknown_router"), "{body}");
    let (status, body) = in_team_a(
        Method::POST,
        "/api/v1/routers",
        Some(nginx("edge", "edge", json!({"routes_dir": "/r"}))),
    )
    .await?;
    assert_eq!((status, code(&body)), (400, "unknown_agent"), "{body}");

    let shown = server.get("/api/v1/routers/edge").await?;
    assert_eq!(shown["settings"], json!({"routes_dir": "/r"}));
    let (status, body) = server
        .call(Method::DELETE, "/api/v1/routers/edge", None)
        .await?;
    assert_eq!(status, 204, "{body}");
    let (status, body) = server
        .call(Method::GET, "/api/v1/routers/edge", None)
        .await?;
    assert_eq!((status, code(&body)), (404, "unknown_router"), "{body}");
    let (status, body) = server
        .call(Method::DELETE, "/api/v1/routers/edge", None)
        .await?;
    assert_eq!((status, code(&body)), (404, "unknown_router"), "{body}");

    // A router whose agent is not connected cannot take a route: said at once, not
    // after the 30 s wait.
    let (status, body) = create(nginx("edge", "edge", json!({"routes_dir": "/r"}))).await?;
    assert_eq!(status, 201, "{body}");
    edge.stop().await?;
    server
        .wait_for_state("edge", "disconnected", Duration::from_secs(30))
        .await?;
    let started = std::time::Instant::now();
    let (status, body) = put_route(
        &server,
        "edge",
        "web",
        json!([{"address": "127.0.0.1:8081", "weight": 1}]),
    )
    .await?;
    assert_eq!((status, code(&body)), (422, "agent_unavailable"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, body) = server
        .call(Method::GET, "/api/v1/routers/edge/routes/web", None)
        .await?;
    assert_eq!((status, code(&body)), (422, "agent_unavailable"), "{body}");
    Ok(())
}
