//! Real TLS handshakes over loopback sockets with the configs of `stella-pki`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use stella_pki::{
    agent_client_tls_config, agent_identity_of_peer, enrolment_client_tls_config,
    server_tls_config, AgentIdentity, AgentKey, CertificateAuthority, Fingerprint,
    KeyedCertificate, NoRevocations, RevocationList,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TRUST_DOMAIN: &str = "stella.local";
const HOUR: Duration = Duration::from_secs(3600);
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
struct Revoked(Mutex<HashSet<AgentIdentity>>);

impl RevocationList for Revoked {
    fn is_revoked(&self, identity: &AgentIdentity) -> bool {
        self.0.lock().unwrap().contains(identity)
    }
}

struct Gateway {
    ca: CertificateAuthority,
    server: KeyedCertificate,
}

impl Gateway {
    fn new() -> Self {
        let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
        let server = ca
            .issue_server_certificate(&["localhost".to_owned(), "127.0.0.1".to_owned()], HOUR)
            .unwrap();
        Self { ca, server }
    }

    fn server_config(&self, revocations: Arc<dyn RevocationList>) -> rustls::ServerConfig {
        server_tls_config(self.ca.cert_pem(), TRUST_DOMAIN, &self.server, revocations).unwrap()
    }
}

/// An agent key and a certificate for it from `ca`.
fn enrol(ca: &CertificateAuthority, agent_id: &str) -> (AgentIdentity, String, String) {
    let key = AgentKey::generate().unwrap();
    let identity = AgentIdentity::new(ca.trust_domain(), agent_id).unwrap();
    let issued = ca
        .sign_agent_csr(&key.csr_der(agent_id).unwrap(), &identity, HOUR)
        .unwrap();
    (identity, issued.cert_pem, key.key_pem())
}

#[derive(Debug)]
struct Outcome {
    /// What the server saw: the peer identity (if any) or the handshake error.
    server: Result<Option<AgentIdentity>, String>,
    /// Whether the client got through the handshake and a one-byte echo.
    client: Result<(), String>,
}

/// One connection on a fresh loopback listener: the server accepts, reads a byte and
/// echoes it; the client connects, writes a byte and reads the echo.
async fn handshake(
    server_config: rustls::ServerConfig,
    client_config: rustls::ClientConfig,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let connector = TlsConnector::from(Arc::new(client_config));
    let server_name = ServerName::try_from(server_name.to_owned()).unwrap();

    let server = async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let identity = conn.peer_certificates().and_then(agent_identity_of_peer);
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(identity)
    };
    let client = async move {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        assert_eq!(&byte, b"x");
        Ok(())
    };
    let (server, client) = tokio::time::timeout(DEADLINE, async { tokio::join!(server, client) })
        .await
        .expect("handshake test timed out");
    Outcome { server, client }
}

#[tokio::test]
async fn agent_certificate_is_accepted_and_identity_is_seen() {
    let gw = Gateway::new();
    let (identity, cert_pem, key_pem) = enrol(&gw.ca, "0190aaaa-agent-1");
    let client = agent_client_tls_config(gw.ca.cert_pem(), &cert_pem, &key_pem).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "localhost",
    )
    .await;
    assert_eq!(outcome.server, Ok(Some(identity)), "{outcome:?}");
    assert_eq!(outcome.client, Ok(()));
}

#[tokio::test]
async fn agent_reaches_the_gateway_by_ip_address() {
    let gw = Gateway::new();
    let (identity, cert_pem, key_pem) = enrol(&gw.ca, "a2");
    let client = agent_client_tls_config(gw.ca.cert_pem(), &cert_pem, &key_pem).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "127.0.0.1",
    )
    .await;
    assert_eq!(outcome.server, Ok(Some(identity)), "{outcome:?}");
}

#[tokio::test]
async fn client_without_certificate_is_accepted() {
    let gw = Gateway::new();
    let client = enrolment_client_tls_config(&gw.ca.fingerprint()).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "localhost",
    )
    .await;
    assert_eq!(outcome.server, Ok(None), "{outcome:?}");
    assert_eq!(outcome.client, Ok(()));
}

#[tokio::test]
async fn certificate_from_another_ca_fails_the_handshake() {
    let gw = Gateway::new();
    let other_ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let (_, cert_pem, key_pem) = enrol(&other_ca, "intruder");
    // The intruder trusts the real CA, so only the server side can refuse.
    let client = agent_client_tls_config(gw.ca.cert_pem(), &cert_pem, &key_pem).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "localhost",
    )
    .await;
    let err = outcome.server.unwrap_err();
    // Both CAs are named "Stella CA stella.local", so webpki finds an issuer by name and
    // then rejects its signature.
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn server_certificate_is_not_a_client_certificate() {
    let gw = Gateway::new();
    // Same CA, but EKU serverAuth and no SPIFFE URI.
    let client =
        agent_client_tls_config(gw.ca.cert_pem(), &gw.server.cert_pem, &gw.server.key_pem).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "localhost",
    )
    .await;
    assert!(outcome.server.is_err(), "{outcome:?}");
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn certificate_of_another_trust_domain_fails_the_handshake() {
    let gw = Gateway::new();
    // The same CA key, loaded for another trust domain, certifies a foreign identity.
    let foreign_ca =
        CertificateAuthority::from_pem("other.example", gw.ca.cert_pem(), &gw.ca.key_pem())
            .unwrap();
    let (_, cert_pem, key_pem) = enrol(&foreign_ca, "a3");
    let client = agent_client_tls_config(gw.ca.cert_pem(), &cert_pem, &key_pem).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "localhost",
    )
    .await;
    let err = outcome.server.unwrap_err();
    assert!(err.contains("ForeignTrustDomain"), "{err}");
}

#[tokio::test]
async fn revoked_identity_fails_the_handshake() {
    let gw = Gateway::new();
    let (identity, cert_pem, key_pem) = enrol(&gw.ca, "a4");
    let (other, other_cert, other_key) = enrol(&gw.ca, "a5");
    let revoked = Arc::new(Revoked::default());
    revoked.0.lock().unwrap().insert(identity);
    let config = gw.server_config(revoked);

    let client = agent_client_tls_config(gw.ca.cert_pem(), &cert_pem, &key_pem).unwrap();
    let outcome = handshake(config.clone(), client, "localhost").await;
    let err = outcome.server.unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    assert!(outcome.client.is_err());

    // Revocation is per identity: another agent of the same CA still gets in.
    let client = agent_client_tls_config(gw.ca.cert_pem(), &other_cert, &other_key).unwrap();
    let outcome = handshake(config, client, "localhost").await;
    assert_eq!(outcome.server, Ok(Some(other)), "{outcome:?}");
}

#[tokio::test]
async fn enrolment_with_the_right_pin_succeeds() {
    let gw = Gateway::new();
    let client = enrolment_client_tls_config(&gw.ca.fingerprint()).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "127.0.0.1",
    )
    .await;
    assert_eq!(outcome.client, Ok(()), "{outcome:?}");
}

#[tokio::test]
async fn enrolment_with_a_wrong_pin_fails() {
    let gw = Gateway::new();
    let other_ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let client = enrolment_client_tls_config(&other_ca.fingerprint()).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "localhost",
    )
    .await;
    let err = outcome.client.unwrap_err();
    assert!(err.contains("PinMismatch"), "{err}");
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn enrolment_checks_the_server_name() {
    let gw = Gateway::new();
    let client = enrolment_client_tls_config(&gw.ca.fingerprint()).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "gateway.example",
    )
    .await;
    let err = outcome.client.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn enrolment_pin_of_the_leaf_is_not_enough() {
    // Pinning the leaf would make it a trust anchor for itself; only the CA may be pinned.
    let gw = Gateway::new();
    let leaf = stella_pki::pem_to_der_certs(&gw.server.cert_pem).unwrap();
    let client = enrolment_client_tls_config(&Fingerprint::of_der(&leaf[0])).unwrap();
    let outcome = handshake(
        gw.server_config(Arc::new(NoRevocations)),
        client,
        "localhost",
    )
    .await;
    assert!(outcome.client.is_err(), "{outcome:?}");
}
