//! Enrolment against the scripted control plane, over real TLS.

mod support;

use std::io::{Read, Write};

use stella_agent_core::identity::files;
use stella_agent_core::{enrol, AgentConfig, AgentError, Identity};
use stella_pki::{AgentIdentity, CertificateAuthority, JoinToken};
use support::{agent_config, init_tracing, DataDir, ScriptedControlPlane, TRUST_DOMAIN};

#[tokio::test]
async fn enrolment_writes_a_private_key_and_a_certificate_with_the_spiffe_id() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let config = agent_config(&control_plane, &data_dir);

    let identity = enrol(&config).await.expect("enrol");

    assert_eq!(identity.name, "test-agent");
    assert_eq!(identity.trust_domain, TRUST_DOMAIN);
    assert_eq!(identity.grpc_url, control_plane.grpc_url);
    let dir = data_dir.path();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(dir.join(name))
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o700, "data dir");
        assert_eq!(mode(files::AGENT_KEY), 0o600, "agent.key");
        assert_eq!(mode(files::JOURNAL_DIR), 0o700, "journal");
    }
    let key_pem = std::fs::read_to_string(dir.join(files::AGENT_KEY)).expect("agent.key");
    assert!(key_pem.contains("BEGIN PRIVATE KEY"), "PKCS#8 PEM");
    assert_eq!(key_pem, identity.key_pem);

    let cert_pem = std::fs::read_to_string(dir.join(files::AGENT_PEM)).expect("agent.pem");
    let der = stella_pki::pem_to_der_certs(&cert_pem).expect("pem");
    let in_cert = AgentIdentity::from_certificate_der(der[0].as_ref()).expect("spiffe id");
    assert_eq!(
        in_cert.spiffe_uri(),
        format!("spiffe://{TRUST_DOMAIN}/agent/{}", identity.agent_id)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(files::CA_PEM)).expect("ca.pem"),
        control_plane.script.ca.cert_pem()
    );
    let agent_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(files::AGENT_JSON)).expect("agent.json"))
            .expect("json");
    assert_eq!(agent_json["agent_id"], identity.agent_id.as_str());
    assert_eq!(agent_json["name"], "test-agent");
    assert_eq!(agent_json["trust_domain"], TRUST_DOMAIN);
    assert_eq!(agent_json["grpc_url"], control_plane.grpc_url.as_str());
    assert_eq!(
        agent_json["not_after_unix_seconds"],
        identity.not_after.unix_timestamp()
    );

    // The private key never left: the server got a CSR, the name and the labels.
    let enrolments = control_plane
        .script
        .enrolments
        .lock()
        .expect("lock")
        .clone();
    assert_eq!(enrolments.len(), 1);
    assert_eq!(enrolments[0].name, "test-agent");
    assert_eq!(
        enrolments[0].labels.get("zone").map(String::as_str),
        Some("a")
    );
    assert!(!enrolments[0].csr_der.is_empty());

    assert_eq!(
        Identity::load(&dir).expect("load"),
        Some(identity.clone()),
        "what enrol returns is what is on disk"
    );
    assert!(!format!("{identity:?}").contains(&identity.key_pem));

    // Enrolling again would replace the key of a working identity.
    let mut again = config.clone();
    again.join_token = Some(control_plane.script.join_token());
    assert!(matches!(
        enrol(&again).await,
        Err(AgentError::AlreadyEnrolled { .. })
    ));
    assert_eq!(Identity::load(&dir).expect("load"), Some(identity));
}

#[tokio::test]
async fn a_refused_join_token_surfaces_as_a_clear_error() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let mut config = agent_config(&control_plane, &data_dir);
    // Well-formed and pinned to the right CA, but unknown to the server.
    config.join_token = Some(JoinToken::generate(&control_plane.script.ca.fingerprint()).expose());

    let error = enrol(&config).await.expect_err("refused");
    match &error {
        AgentError::EnrolmentRefused { code, message } => {
            assert_eq!(*code, tonic::Code::Unauthenticated);
            assert!(message.contains("join token"), "{message}");
        }
        other => panic!("unexpected error: {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.starts_with("the control plane refused the enrolment"),
        "{text}"
    );
    assert!(!text.contains(config.join_token.as_deref().unwrap_or("-")));
    assert!(!data_dir.path().join(files::AGENT_JSON).exists());
}

#[tokio::test]
async fn a_token_used_twice_is_refused_the_second_time() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let (first, second) = (DataDir::new(), DataDir::new());
    let config = agent_config(&control_plane, &first);
    enrol(&config).await.expect("first enrolment");
    let mut again = config.clone();
    again.data_dir = second.path();
    assert!(matches!(
        enrol(&again).await,
        Err(AgentError::EnrolmentRefused { .. })
    ));
}

#[tokio::test]
async fn a_wrong_ca_pin_fails_the_handshake() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let mut config = agent_config(&control_plane, &data_dir);
    let other_ca = CertificateAuthority::generate(TRUST_DOMAIN).expect("ca");
    let token = JoinToken::generate(&other_ca.fingerprint()).expose();
    // Even a token the server would accept must not be sent to an unpinned server.
    control_plane.script.accept_token(&token);
    config.join_token = Some(token);

    let error = enrol(&config).await.expect_err("pin mismatch");
    match &error {
        AgentError::EnrolmentServerUntrusted { pinned, url, .. } => {
            assert_eq!(*pinned, other_ca.fingerprint().to_string());
            assert_eq!(*url, control_plane.grpc_url);
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(control_plane
        .script
        .enrolments
        .lock()
        .expect("lock")
        .is_empty());
    assert!(!data_dir.path().join(files::AGENT_JSON).exists());
}

#[tokio::test]
async fn enrolment_needs_a_token_and_a_server() {
    let data_dir = DataDir::new();
    let config = AgentConfig::new(data_dir.path());
    assert!(matches!(
        enrol(&config).await,
        Err(AgentError::MissingJoinToken { .. })
    ));
    let mut config = AgentConfig::new(data_dir.path());
    config.join_token = Some("stj1.bad".to_owned());
    assert!(matches!(
        enrol(&config).await,
        Err(AgentError::InvalidJoinToken(_))
    ));
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).expect("ca");
    config.join_token = Some(JoinToken::generate(&ca.fingerprint()).expose());
    assert!(matches!(enrol(&config).await, Err(AgentError::NoServer)));
    assert!(!format!("{config:?}").contains(config.join_token.as_deref().unwrap_or("-")));
}

/// A one-shot HTTP/1.1 server answering the discovery request with `body`.
fn serve_discovery(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut request = [0u8; 4096];
        let read = stream.read(&mut request).unwrap_or(0);
        let request = String::from_utf8_lossy(&request[..read]);
        let (status, body) = if request.starts_with("GET /api/v1/gateway ") {
            ("200 OK", body)
        } else {
            ("404 Not Found", String::new())
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    url
}

#[tokio::test]
async fn discovery_finds_the_gateway_and_checks_the_pin() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let mut config = agent_config(&control_plane, &data_dir);
    config.grpc_url = None;
    config.server_url = Some(serve_discovery(
        serde_json::json!({
            "grpc_url": control_plane.grpc_url,
            "ca_fingerprint": control_plane.script.ca.fingerprint().to_string(),
        })
        .to_string(),
    ));
    let identity = enrol(&config).await.expect("enrol via discovery");
    assert_eq!(identity.grpc_url, control_plane.grpc_url);

    let other_ca = CertificateAuthority::generate(TRUST_DOMAIN).expect("ca");
    let second = DataDir::new();
    let mut config = agent_config(&control_plane, &second);
    config.grpc_url = None;
    config.server_url = Some(serve_discovery(
        serde_json::json!({
            "grpc_url": control_plane.grpc_url,
            "ca_fingerprint": other_ca.fingerprint().to_string(),
        })
        .to_string(),
    ));
    match enrol(&config).await {
        Err(AgentError::CaPinMismatch { presented, .. }) => {
            assert_eq!(presented, other_ca.fingerprint().to_string());
        }
        other => panic!("unexpected: {other:?}"),
    }
}
