//! The agent gateway against real agents: enrolment and its refusals, mTLS, revocation,
//! heartbeats, liveness, renewal and restarts.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;
use stella_agent_core::transport::{connect, GatewayUrl};
use stella_agent_core::Identity;
use stella_control_plane::domain::NewJoinToken;
use stella_pki::{AgentIdentity, AgentKey, CertificateAuthority, JoinToken};
use stella_proto::v1::agent_gateway_client::AgentGatewayClient;
use stella_proto::v1::{agent_message, AgentMessage, EnrollRequest, Hello, RenewRequest};
use stella_tests::{wait_until, ChildProcess, TestAgent, TestServer};

async fn enrolment_client(
    server: &TestServer,
) -> anyhow::Result<AgentGatewayClient<tonic::transport::Channel>> {
    let pin = server.running().app.pki.ca.fingerprint();
    let tls = stella_pki::enrolment_client_tls_config(&pin)?;
    let channel = connect(&GatewayUrl::parse(&server.grpc_url())?, tls).await?;
    Ok(AgentGatewayClient::new(channel))
}

fn enroll_request(token: &str, name: &str) -> anyhow::Result<EnrollRequest> {
    let key = AgentKey::generate()?;
    Ok(EnrollRequest {
        join_token: token.to_owned(),
        csr_der: key.csr_der(name)?,
        name: name.to_owned(),
        labels: Default::default(),
    })
}

async fn agent_count(server: &TestServer) -> anyhow::Result<usize> {
    Ok(server
        .get("/api/v1/agents")
        .await?
        .as_array()
        .map_or(0, Vec::len))
}

#[tokio::test]
async fn enrolled_agent_is_listed_with_capabilities_and_host_facts() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let agent = TestAgent::start(&server, "alpha").await?;
    let shown = server
        .wait_for_state("alpha", "connected", Duration::from_secs(10))
        .await?;
    assert!(shown["capabilities"].is_array(), "{shown}");
    assert!(
        shown["host"]["hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{shown}"
    );
    assert!(
        shown["host"]["cpu_count"].as_u64().is_some_and(|c| c > 0),
        "{shown}"
    );
    assert!(
        shown["host"]["memory_total_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "{shown}"
    );
    assert_eq!(shown["agent_version"], env!("CARGO_PKG_VERSION"));
    let id = shown["id"].as_str().expect("id");
    assert_eq!(
        shown["spiffe_id"],
        format!("spiffe://stella.local/agent/{id}")
    );
    // The private key stays on the agent's host, readable by its owner only.
    let mode = std::fs::metadata(agent.data_dir.join("agent.key"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    agent.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_join_token_works_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut client = enrolment_client(&server).await?;
    let token = server.join_token().await?;
    let first = client
        .enroll(enroll_request(&token, "once")?)
        .await?
        .into_inner();
    assert!(first.certificate_pem.contains("BEGIN CERTIFICATE"));

    let status = client
        .enroll(enroll_request(&token, "twice")?)
        .await
        .expect_err("a reused token must be refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("already used"), "{status:?}");
    assert_eq!(agent_count(&server).await?, 1);
    Ok(())
}

#[tokio::test]
async fn expired_unknown_and_foreign_tokens_are_refused_and_issue_nothing() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let app = &server.running().app;
    let fingerprint = app.pki.ca.fingerprint();

    let expired = JoinToken::generate(&fingerprint);
    let now = stella_control_plane::app::now_ms();
    app.store
        .insert_join_token(&NewJoinToken {
            hash: expired.secret_hash(),
            created_by: "test".into(),
            created_at_ms: now - 60_000,
            expires_at_ms: now - 1,
        })
        .await?;
    let unknown = JoinToken::generate(&fingerprint);
    let foreign_ca = CertificateAuthority::generate("stella.local")?;
    let foreign = JoinToken::generate(&foreign_ca.fingerprint());

    let mut client = enrolment_client(&server).await?;
    for (token, expected) in [
        (expired.expose(), "expired"),
        (unknown.expose(), "unknown"),
        (foreign.expose(), "another control plane"),
        ("stj1.garbage".to_owned(), "join token refused"),
    ] {
        let status = client
            .enroll(enroll_request(&token, "intruder")?)
            .await
            .expect_err("token must be refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains(expected),
            "{expected}: {status:?}"
        );
    }
    assert_eq!(agent_count(&server).await?, 0);
    // The expired token was not consumed by the attempt either.
    let metrics = server
        .client()
        .get(format!("{}/metrics", server.api_url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("outcome=\"join_token_expired\""),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn connect_and_renew_need_a_client_certificate() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut client = enrolment_client(&server).await?;
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello::default())),
    };
    let status = client
        .connect(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("connect without a certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let key = AgentKey::generate()?;
    let status = client
        .renew(RenewRequest {
            csr_der: key.csr_der("x")?,
        })
        .await
        .expect_err("renew without a certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // Enroll is the one call open to such a client.
    let token = server.join_token().await?;
    client.enroll(enroll_request(&token, "open")?).await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let app = &server.running().app;
    let other_ca = CertificateAuthority::generate("stella.local")?;
    let key = AgentKey::generate()?;
    let identity = AgentIdentity::new("stella.local", "0192f0c0-0000-7000-8000-000000000001")?;
    let cert =
        other_ca.sign_agent_csr(&key.csr_der("rogue")?, &identity, Duration::from_secs(3600))?;
    let tls =
        stella_pki::agent_client_tls_config(app.pki.ca.cert_pem(), &cert.cert_pem, &key.key_pem())?;
    let before = app.metrics.tls_handshake_failures.get();
    let result = async {
        let channel = connect(&GatewayUrl::parse(&server.grpc_url())?, tls).await?;
        AgentGatewayClient::new(channel)
            .renew(RenewRequest {
                csr_der: key.csr_der("rogue")?,
            })
            .await?;
        anyhow::Ok(())
    }
    .await;
    assert!(
        result.is_err(),
        "a foreign certificate must not get through"
    );
    wait_until(
        "the server counts the refused handshake",
        Duration::from_secs(5),
        || async { (app.metrics.tls_handshake_failures.get() > before).then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_agent_is_cut_off_within_15s_and_cannot_come_back() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let agent = TestAgent::start(&server, "doomed").await?;
    let shown = server
        .wait_for_state("doomed", "connected", Duration::from_secs(10))
        .await?;
    let id = shown["id"].as_str().expect("id").to_owned();
    let app = server.running().app.clone();
    assert!(app.sessions.is_open(&id));

    let revoked_at = Instant::now();
    let revoked = server
        .post(
            "/api/v1/agents/doomed/revoke",
            json!({"reason": "lost laptop"}),
        )
        .await?;
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoke_reason"], "lost laptop");
    wait_until("the session is closed", Duration::from_secs(15), || async {
        (!app.sessions.is_open(&id)).then_some(())
    })
    .await?;
    assert!(revoked_at.elapsed() < Duration::from_secs(15));

    // The agent stops instead of retrying: it was told it is revoked.
    wait_until(
        "the revoked agent stops",
        Duration::from_secs(10),
        || async { agent.is_finished().then_some(()) },
    )
    .await?;
    assert!(
        !app.sessions.is_open(&id),
        "a revoked agent got a session back"
    );

    // Its credentials cannot renew either.
    let identity = Identity::load(&agent.data_dir)?.expect("enrolled identity");
    let renewal = stella_agent_core::renew(&identity, &agent.data_dir).await;
    assert!(renewal.is_err(), "renewal by a revoked agent must fail");
    assert_eq!(server.agent("doomed").await?["state"], "revoked");
    let ended = agent.stop().await;
    let error = ended.expect_err("a revoked agent ends with an error");
    assert!(error.to_string().contains("revoked"), "{error:#}");
    Ok(())
}

#[tokio::test]
async fn a_revocation_made_by_another_replica_closes_the_session() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let _agent = TestAgent::start(&server, "elsewhere").await?;
    let shown = server
        .wait_for_state("elsewhere", "connected", Duration::from_secs(10))
        .await?;
    let id = shown["id"].as_str().expect("id").to_owned();
    let app = server.running().app.clone();
    // Straight into the store, as a replica sharing the database would.
    app.store
        .revoke_agent(
            &id,
            stella_control_plane::app::now_ms(),
            "revoked on replica 2",
        )
        .await?;
    let started = Instant::now();
    wait_until("the session is closed", Duration::from_secs(15), || async {
        (!app.sessions.is_open(&id)).then_some(())
    })
    .await?;
    assert!(started.elapsed() < Duration::from_secs(15));
    Ok(())
}

#[tokio::test]
async fn heartbeats_move_last_seen() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let _agent = TestAgent::start(&server, "beating").await?;
    let first = server
        .wait_for_state("beating", "connected", Duration::from_secs(10))
        .await?;
    let seen = first["last_seen_at"]
        .as_str()
        .expect("last seen")
        .to_owned();
    wait_until("last_seen_at moves", Duration::from_secs(10), || async {
        let agent = server.agent("beating").await.ok()?;
        let now = agent["last_seen_at"].as_str()?.to_owned();
        (now > seen).then_some(())
    })
    .await?;
    assert!(server.running().app.metrics.heartbeats.get() > 0);
    Ok(())
}

#[tokio::test]
async fn a_killed_agent_turns_unreachable_one_interval_after_its_session_is_lost(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let token = server.join_token().await?;
    let data_dir = server.dir.path().join("agent-victim");
    let mut child = ChildProcess::spawn(
        &[
            "agent",
            "run",
            "--server",
            &server.api_url(),
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--join-token",
            &token,
            "--name",
            "victim",
        ],
        &[],
        server.dir.path().join("victim.log"),
    )?;
    if let Err(error) = server
        .wait_for_state("victim", "connected", Duration::from_secs(20))
        .await
    {
        panic!("{error}\nagent log:\n{}", child.log_text());
    }
    child.kill().await?;
    let killed = Instant::now();
    server
        .wait_for_state("victim", "unreachable", Duration::from_secs(15))
        .await?;
    // The kernel closed the killed process's connection, so the session ended without
    // a goodbye: unreachable once one interval (1 s) passed without a new hello, where
    // three missed heartbeats would take at least 2 s (3 intervals, less up to one since
    // the last heartbeat).
    let elapsed = killed.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(2000),
        "unreachable {elapsed:?} after the kill"
    );
    let agent = server.agent("victim").await?;
    assert!(
        agent["last_seen_at"].is_string(),
        "the agent keeps its last-seen time: {agent}"
    );
    Ok(())
}

#[tokio::test]
async fn renewal_issues_a_new_certificate_for_the_same_identity() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let agent = TestAgent::start(&server, "renewer").await?;
    server
        .wait_for_state("renewer", "connected", Duration::from_secs(10))
        .await?;
    let before = Identity::load(&agent.data_dir)?.expect("identity");
    let after = stella_agent_core::renew(&before, &agent.data_dir).await?;
    assert_eq!(after.agent_id, before.agent_id);
    assert_ne!(after.cert_pem, before.cert_pem);
    let stored = Identity::load(&agent.data_dir)?.expect("identity");
    assert_eq!(stored.cert_pem, after.cert_pem);
    let metrics = server
        .client()
        .get(format!("{}/metrics", server.api_url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("stella_renewals_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_server_restart_loses_nothing_and_agents_come_back() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let _agent = TestAgent::start(&server, "survivor").await?;
    let before = server
        .wait_for_state("survivor", "connected", Duration::from_secs(10))
        .await?;
    server
        .post(
            "/api/v1/users",
            json!({"name": "keeper", "roles": ["viewer"]}),
        )
        .await?;
    let ca_before = server.running().app.pki.ca.fingerprint();

    server.restart().await?;
    let app = server.running().app.clone();
    assert_eq!(
        app.pki.ca.fingerprint(),
        ca_before,
        "the CA survives a restart"
    );
    let id = before["id"].as_str().expect("id").to_owned();
    wait_until(
        "the agent reconnects by itself",
        Duration::from_secs(20),
        || async { app.sessions.is_open(&id).then_some(()) },
    )
    .await?;
    let after = server.agent("survivor").await?;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["enrolled_at"], before["enrolled_at"]);
    assert_eq!(after["host"], before["host"]);
    let users = server.get("/api/v1/users").await?;
    assert!(users
        .as_array()
        .is_some_and(|u| u.iter().any(|u| u["name"] == "keeper")));
    Ok(())
}

#[tokio::test]
async fn a_postgres_backed_server_enrols_revokes_and_survives_a_restart() -> anyhow::Result<()> {
    let url = stella_tests::postgres::fresh_database_url().await?;
    let mut server = TestServer::start_with(|config| config.database_url = Some(url)).await?;
    assert_eq!(
        server.running().app.store.backend(),
        stella_control_plane::store::Backend::Postgres
    );
    let _stays = TestAgent::start(&server, "pg-stays").await?;
    let _goes = TestAgent::start(&server, "pg-goes").await?;
    let stays = server
        .wait_for_state("pg-stays", "connected", Duration::from_secs(10))
        .await?;
    server
        .wait_for_state("pg-goes", "connected", Duration::from_secs(10))
        .await?;
    server
        .post("/api/v1/agents/pg-goes/revoke", json!({}))
        .await?;

    server.restart().await?;
    let app = server.running().app.clone();
    let id = stays["id"].as_str().expect("id").to_owned();
    wait_until(
        "the agent reconnects by itself",
        Duration::from_secs(20),
        || async { app.sessions.is_open(&id).then_some(()) },
    )
    .await?;
    assert_eq!(server.agent("pg-goes").await?["state"], "revoked");
    assert!(app
        .revocations
        .contains(server.agent("pg-goes").await?["id"].as_str().expect("id")));
    Ok(())
}
