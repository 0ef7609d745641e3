//! The REST listener and the HTTP edge against a real in-process server: timeouts for
//! idle, half-open and slow connections, the connection cap, every error status with
//! the envelope and a trace id (header, body and log line), unknown JSON fields, and
//! the request latency metric.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use stella_control_plane::ServerConfig;
use stella_tests::logs::LogCapture;
use stella_tests::{wait_until, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Small limits so that the tests see them act within a second.
fn tight_limits(config: &mut ServerConfig) {
    // The listener's limits are tested on plain HTTP, where raw sockets can speak it;
    // over TLS the same limits hold (the handshake counts against the header timeout).
    config.api_plain_http = true;
    config.api_header_read_timeout_ms = 400;
    config.api_body_read_timeout_ms = 400;
    config.api_max_connections = 40;
    config.api_max_body_bytes = 64 * 1024;
}

/// Reads until the server closes the connection (EOF or reset); fails if it has not
/// after `within`. Returns what was read and how long the close took.
async fn read_until_closed(
    stream: &mut TcpStream,
    within: Duration,
) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => bail!(
                "the server kept the connection open for {within:?}; read so far: {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    Ok((
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    ))
}

/// The status code and JSON body of a raw HTTP/1.1 response.
fn parse_response(raw: &str) -> anyhow::Result<(u16, Value)> {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {raw:?}"))?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message missing: {body}"
    );
    assert!(
        body["error"]["traceId"]
            .as_str()
            .is_some_and(|t| t.len() >= 16),
        "traceId missing: {body}"
    );
}

/// A response's status, `content-type`, `x-trace-id` and JSON body.
async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, String, String, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, trace_id) = (header("content-type"), header("x-trace-id"));
    let body = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
    Ok((status, content_type, trace_id, body))
}

async fn healthz_latency(server: &TestServer) -> anyhow::Result<Duration> {
    let started = Instant::now();
    // A fresh connection each time: a pooled one would not show a starved listener.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = client
        .get(format!("{}/healthz", server.api_url()))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    Ok(started.elapsed())
}

#[tokio::test]
async fn half_open_connections_are_closed_after_the_header_timeout() -> anyhow::Result<()> {
    let server = TestServer::start_with(tight_limits).await?;
    let mut idle = TcpStream::connect(server.config.api_listen).await?;
    let (_, took) = read_until_closed(&mut idle, Duration::from_secs(3)).await?;
    assert!(
        took >= Duration::from_millis(300),
        "closed too early: {took:?}"
    );
    eprintln!("half-open connection closed after {took:?} (timeout 400 ms)");

    // A keep-alive connection that goes quiet after a request is closed too.
    let mut quiet = TcpStream::connect(server.config.api_listen).await?;
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: stella\r\n\r\n")
        .await?;
    let (reply, took) = read_until_closed(&mut quiet, Duration::from_secs(3)).await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    eprintln!("idle keep-alive connection closed after {took:?}");
    Ok(())
}

#[tokio::test]
async fn slow_headers_are_cut_off() -> anyhow::Result<()> {
    let server = TestServer::start_with(tight_limits).await?;
    let mut slow = TcpStream::connect(server.config.api_listen).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: stella\r\n")
        .await?;
    // One header line every 100 ms: never idle, never finished.
    let started = Instant::now();
    let mut closed = false;
    for n in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow
            .write_all(format!("x-drip-{n}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
    }
    if !closed {
        read_until_closed(&mut slow, Duration::from_millis(500)).await?;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "slow headers lasted {took:?}"
    );
    eprintln!("dripped headers cut off after {took:?} (timeout 400 ms)");
    Ok(())
}

#[tokio::test]
async fn a_slow_body_gets_408_with_the_envelope() -> anyhow::Result<()> {
    let server = TestServer::start_with(tight_limits).await?;
    let mut slow = TcpStream::connect(server.config.api_listen).await?;
    let head = format!(
        "POST /api/v1/environments HTTP/1.1\r\nhost: stella\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\":",
        server.admin_token
    );
    slow.write_all(head.as_bytes()).await?;
    let (raw, took) = read_until_closed(&mut slow, Duration::from_secs(3)).await?;
    let (status, body) = parse_response(&raw)?;
    assert_eq!(status, 408, "{raw}");
    assert_envelope(&body, "request_timeout");
    eprintln!("stalled body answered 408 and closed after {took:?} (timeout 400 ms)");
    let environments = server.get("/api/v1/environments").await?;
    assert_eq!(environments, json!([]));
    Ok(())
}

#[tokio::test]
async fn healthz_answers_while_hundreds_of_idle_connections_are_held() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        config.api_plain_http = true;
        config.api_max_connections = 400;
        config.api_header_read_timeout_ms = 20_000;
    })
    .await?;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.config.api_listen).await?);
    }
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        worst = worst.max(healthz_latency(&server).await?);
    }
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?}");
    eprintln!("/healthz with 300 idle connections held: worst of 20 {worst:?}");
    drop(idle);
    Ok(())
}

#[tokio::test]
async fn at_the_cap_the_oldest_idle_connections_make_room_for_healthz() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        config.api_plain_http = true;
        config.api_max_connections = 20;
        config.api_header_read_timeout_ms = 20_000;
    })
    .await?;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(server.config.api_listen).await?);
    }
    // Probes that stay open after their answer, so that each new one finds the cap
    // full and must take the place of one of the idle connections.
    let mut probes = Vec::new();
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let mut probe = TcpStream::connect(server.config.api_listen).await?;
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: stella\r\n\r\n")
            .await?;
        let mut buffer = [0_u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), probe.read(&mut buffer))
            .await
            .context("/healthz did not answer")??;
        let raw = String::from_utf8_lossy(&buffer[..n]).into_owned();
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        worst = worst.max(started.elapsed());
        probes.push(probe);
    }
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?}");
    eprintln!("/healthz with the cap (20) full of idle connections: worst of 10 {worst:?}");
    // Each probe took the place of the oldest idle connection.
    for (n, connection) in idle.iter_mut().take(10).enumerate() {
        read_until_closed(connection, Duration::from_secs(2))
            .await
            .with_context(|| format!("idle connection {n} was not closed"))?;
    }
    let metrics = reqwest::get(format!("{}/metrics", server.api_url()))
        .await?
        .text()
        .await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("stella_http_connections_evicted_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_gets_503_at_once() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        config.api_plain_http = true;
        config.api_max_connections = 10;
        config.api_header_read_timeout_ms = 20_000;
        config.api_body_read_timeout_ms = 1_500;
    })
    .await?;
    // Requests whose bodies are on their way: in flight, so not to be closed for room.
    let mut busy = Vec::new();
    for _ in 0..10 {
        let mut connection = TcpStream::connect(server.config.api_listen).await?;
        let head = format!(
            "POST /api/v1/environments HTTP/1.1\r\nhost: stella\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
            server.admin_token
        );
        connection.write_all(head.as_bytes()).await?;
        busy.push(connection);
    }
    let started = Instant::now();
    let raw = wait_until(
        "a new connection is refused",
        Duration::from_secs(3),
        || async {
            let mut probe = TcpStream::connect(server.config.api_listen).await.ok()?;
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: stella\r\n\r\n")
                .await
                .ok()?;
            let (raw, _) = read_until_closed(&mut probe, Duration::from_millis(500))
                .await
                .ok()?;
            raw.starts_with("HTTP/1.1 503").then_some(raw)
        },
    )
    .await?;
    let (_, body) = parse_response(&raw)?;
    assert_envelope(&body, "too_many_connections");
    assert!(raw.contains("x-trace-id: "), "{raw}");

    // The busy ones end with 408 at the body timeout; then /healthz answers again.
    wait_until("/healthz answers again", Duration::from_secs(5), || async {
        healthz_latency(&server).await.ok()
    })
    .await?;
    eprintln!(
        "/healthz answered again {:?} after the cap was full of busy connections",
        started.elapsed()
    );
    for connection in &mut busy {
        let (raw, _) = read_until_closed(connection, Duration::from_secs(2)).await?;
        assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    }
    Ok(())
}

/// A server with tight limits, a client, and the admin token.
async fn tight_server() -> anyhow::Result<(TestServer, reqwest::Client, String)> {
    let server = TestServer::start_with(tight_limits).await?;
    let token = server.admin_token.clone();
    Ok((server, reqwest::Client::new(), token))
}

#[tokio::test]
async fn wrong_method_is_405_with_the_envelope_and_allow() -> anyhow::Result<()> {
    let (server, http, token) = tight_server().await?;
    let url = format!("{}/api/v1/agents", server.api_url());
    let response = http.delete(&url).bearer_auth(&token).send().await?;
    assert_eq!(response.status().as_u16(), 405);
    let allow = response.headers().get("allow").cloned();
    assert!(allow.is_some(), "no allow header");
    let (status, content_type, trace_id, body) =
        send(http.delete(&url).bearer_auth(&token)).await?;
    assert_eq!((status, content_type.as_str()), (405, "application/json"));
    assert_envelope(&body, "method_not_allowed");
    assert_eq!(body["error"]["traceId"], trace_id.as_str());
    Ok(())
}

#[tokio::test]
async fn a_bad_query_string_is_400_with_the_envelope_as_json() -> anyhow::Result<()> {
    let (server, http, token) = tight_server().await?;
    let url = format!("{}/api/v1/deployments?limit=many", server.api_url());
    let (status, content_type, _, body) = send(http.get(&url).bearer_auth(&token)).await?;
    assert_eq!((status, content_type.as_str()), (400, "application/json"));
    assert_envelope(&body, "invalid_query");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("limit"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_wrong_content_type_is_415() -> anyhow::Result<()> {
    let (server, http, token) = tight_server().await?;
    let url = format!("{}/api/v1/environments", server.api_url());
    let (status, _, _, body) = send(
        http.post(&url)
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("{\"name\":\"dev\"}"),
    )
    .await?;
    assert_eq!(status, 415);
    assert_envelope(&body, "unsupported_media_type");
    assert_eq!(server.get("/api/v1/environments").await?, json!([]));
    // The body was never read, so the server closes the connection after the answer,
    // and says so: a client must not send its next request on it.
    let response = http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{\"name\":\"dev\"}")
        .send()
        .await?;
    assert_eq!(
        response
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    // An answer that read its body keeps the connection.
    let listed = http.get(&url).bearer_auth(&token).send().await?;
    assert!(listed.headers().get("connection").is_none());
    Ok(())
}

#[tokio::test]
async fn malformed_json_is_400_and_says_where() -> anyhow::Result<()> {
    let (server, http, token) = tight_server().await?;
    let url = format!("{}/api/v1/environments", server.api_url());
    let (status, _, _, body) = send(
        http.post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{\"name\": \"dev\",,}"),
    )
    .await?;
    assert_eq!(status, 400);
    assert_envelope(&body, "malformed_json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("line 1 column"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_it_is_read() -> anyhow::Result<()> {
    let (server, _, token) = tight_server().await?;
    let mut big = TcpStream::connect(server.config.api_listen).await?;
    let head = format!(
        "POST /api/v1/environments HTTP/1.1\r\nhost: stella\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 3000000\r\n\r\n"
    );
    big.write_all(head.as_bytes()).await?;
    let (raw, _) = read_until_closed(&mut big, Duration::from_secs(3)).await?;
    let (status, body) = parse_response(&raw)?;
    assert_eq!(status, 413, "{raw}");
    assert_envelope(&body, "payload_too_large");
    Ok(())
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() -> anyhow::Result<()> {
    let (server, http, token) = tight_server().await?;
    let url = format!("{}/api/v1/environments", server.api_url());
    let oversized = format!(
        "{{\"name\":\"dev\",\"after\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(oversized)];
    let (status, _, _, body) = send(
        http.post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_stream(chunks))),
    )
    .await?;
    assert_eq!(status, 413, "{body}");
    assert_envelope(&body, "payload_too_large");
    assert_eq!(server.get("/api/v1/environments").await?, json!([]));
    Ok(())
}

#[tokio::test]
async fn an_unknown_route_is_404_with_the_envelope() -> anyhow::Result<()> {
    let (server, http, token) = tight_server().await?;
    let url = format!("{}/api/v1/nothing-here", server.api_url());
    let (status, content_type, trace_id, body) = send(http.get(&url).bearer_auth(&token)).await?;
    assert_eq!((status, content_type.as_str()), (404, "application/json"));
    assert_envelope(&body, "not_found");
    assert_eq!(body["error"]["traceId"], trace_id.as_str());
    Ok(())
}

/// A body stream of the given chunks (so reqwest sends it chunked, without a length).
fn futures_stream(
    chunks: Vec<Result<String, std::io::Error>>,
) -> impl tokio_stream::Stream<Item = Result<String, std::io::Error>> {
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn failed_requests_are_logged_with_their_trace_id() -> anyhow::Result<()> {
    let (logs, _guard) = LogCapture::start();
    let server = TestServer::start_plain().await?;
    let http = reqwest::Client::new();
    let (status, _, trace_id, body) = send(
        http.get(format!(
            "{}/api/v1/agents/nobody?token=hunter2",
            server.api_url()
        ))
        .bearer_auth(&server.admin_token),
    )
    .await?;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["traceId"], trace_id.as_str());
    let lines = wait_until("the request is logged", Duration::from_secs(3), || async {
        Some(logs.lines_with(&trace_id)).filter(|lines| !lines.is_empty())
    })
    .await?;
    let line = lines
        .iter()
        .find(|line| line.contains("status=404"))
        .with_context(|| format!("no request line among {lines:#?}"))?;
    for part in ["GET", "/api/v1/agents/nobody", "duration_ms="] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
    assert!(line.contains(" INFO "), "a 4xx is logged at info: {line}");
    assert!(
        !logs.text().contains("hunter2"),
        "the query string was logged"
    );

    // A success is logged at debug, with its trace id as well.
    let (status, _, trace_id, _) = send(
        http.get(format!("{}/api/v1/whoami", server.api_url()))
            .bearer_auth(&server.admin_token),
    )
    .await?;
    assert_eq!(status, 200);
    let lines = wait_until("the success is logged", Duration::from_secs(3), || async {
        Some(logs.lines_with(&trace_id)).filter(|lines| !lines.is_empty())
    })
    .await?;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" DEBUG ") && l.contains("status=200")),
        "{lines:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_json_fields_are_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let server = TestServer::start_plain().await?;
    for (path, body, field) in [
        (
            "/api/v1/environments",
            json!({"name": "dev", "colour": "red"}),
            "colour",
        ),
        (
            "/api/v1/users",
            json!({"name": "ursula", "roles": ["viewer"], "role": "admin"}),
            "role",
        ),
        ("/api/v1/agents/join-tokens", json!({"ttl": 60}), "ttl"),
        (
            "/api/v1/releases",
            json!({"name": "web", "version": "1", "components": {}, "tag": "x"}),
            "tag",
        ),
    ] {
        let (status, reply) = server
            .request(Method::POST, path, Some(&server.admin_token), Some(body))
            .await?;
        assert_eq!(status, 400, "{path}: {reply}");
        assert_envelope(&reply, "invalid_body");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("unknown field `{field}`")),
            "{path}: {message}"
        );
    }
    let (status, reply) = server
        .request(
            Method::PATCH,
            "/api/v1/environments/dev",
            Some(&server.admin_token),
            Some(json!({"drfit": "remediate"})),
        )
        .await?;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(server.get("/api/v1/environments").await?, json!([]));
    let users = server.get("/api/v1/users").await?;
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
    Ok(())
}

#[tokio::test]
async fn a_refused_permission_names_the_role_needed() -> anyhow::Result<()> {
    let server = TestServer::start_plain().await?;
    let viewer = server
        .post("/api/v1/users", json!({"name": "vic", "roles": ["viewer"]}))
        .await?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, body) = server
        .request(
            Method::POST,
            "/api/v1/environments",
            Some(&viewer),
            Some(json!({"name": "dev"})),
        )
        .await?;
    assert_eq!(status, 403);
    assert_envelope(&body, "forbidden");
    assert_eq!(
        body["error"]["message"],
        "this needs the operator role; you are viewer"
    );
    let (_, body) = server
        .request(Method::GET, "/api/v1/users", Some(&viewer), None)
        .await?;
    assert_eq!(
        body["error"]["message"],
        "this needs the admin role; you are viewer"
    );
    Ok(())
}

#[tokio::test]
async fn request_latency_is_a_histogram_by_route_template() -> anyhow::Result<()> {
    let server = TestServer::start_plain().await?;
    let (status, _) = server
        .request(
            Method::GET,
            "/api/v1/agents/a-name-that-is-not-a-label",
            Some(&server.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    server.get("/api/v1/whoami").await?;
    let metrics = reqwest::get(format!("{}/metrics", server.api_url()))
        .await?
        .text()
        .await?;
    let buckets: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("stella_http_request_duration_seconds_bucket"))
        .collect();
    assert!(
        buckets
            .iter()
            .any(|l| l.contains("route=\"/api/v1/agents/{agent}\"")
                && l.contains("status_class=\"4xx\"")
                && l.contains("method=\"GET\"")),
        "{metrics}"
    );
    assert!(
        buckets
            .iter()
            .any(|l| l.contains("route=\"/api/v1/whoami\"") && l.contains("status_class=\"2xx\"")),
        "{metrics}"
    );
    assert!(
        !metrics.contains("a-name-that-is-not-a-label"),
        "raw path in a label"
    );
    Ok(())
}

#[tokio::test]
async fn timestamps_have_millisecond_precision() -> anyhow::Result<()> {
    let server = TestServer::start_plain().await?;
    for n in 0..5 {
        server
            .post(
                "/api/v1/users",
                json!({"name": format!("u{n}"), "roles": ["viewer"]}),
            )
            .await?;
    }
    let users = server.get("/api/v1/users").await?;
    for user in users.as_array().into_iter().flatten() {
        let created = user["created_at"].as_str().unwrap_or_default();
        // `YYYY-MM-DDTHH:MM:SS.mmmZ`, always 24 characters.
        assert_eq!(created.len(), 24, "{created}");
        assert_eq!(created.as_bytes()[19], b'.', "{created}");
        assert!(created.ends_with('Z'), "{created}");
    }
    Ok(())
}
