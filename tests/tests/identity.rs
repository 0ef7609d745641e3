//! Identity end to end: the API over TLS (its own CA, an operator's certificate,
//! reload without dropping connections, the CLI's refusals), API tokens (expiry,
//! revocation on two PostgreSQL replicas, listing), OAuth2 client credentials (RFC 6749
//! errors, RFC 9068 JWTs checked by PyJWT against the served JWKS), rate limits and the
//! failure counter, and the upgrade of a data dir with the previous schema.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::{stella, wait_until, TestDir, TestServer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One `stella` run: (code, stdout, stderr).
async fn cli(
    server: &TestServer,
    token: &str,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let url = server.api_url();
    stella(
        args,
        &[("STELLA_SERVER", url.as_str()), ("STELLA_TOKEN", token)],
    )
    .await
}

/// The value of a metric line that starts with `prefix` (0 when absent).
async fn metric(server: &TestServer, prefix: &str) -> anyhow::Result<f64> {
    let text = server
        .client()
        .get(format!("{}/metrics", server.api_url()))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0))
}

/// A TLS connection to the API that trusts `ca_pem`, and the leaf it was shown.
async fn tls_connect(
    server: &TestServer,
    ca_pem: &str,
) -> anyhow::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
)> {
    let roots = stella_pki::pem_to_der_certs(ca_pem)?;
    let config = stella_pki::api_client_tls_config(stella_pki::ApiTrust::Roots(roots))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.config.api_listen).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    let stream = connector.connect(name, tcp).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    Ok((stream, leaf))
}

/// GET /healthz on an open connection (keep-alive); the status line.
async fn healthz_on(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut buffer = vec![0_u8; 4096];
    let read = stream.read(&mut buffer).await?;
    let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn the_api_is_tls_by_default_and_plain_http_only_when_asked() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    assert!(server.api_url().starts_with("https://"));
    let ok = server
        .client()
        .get(format!("{}/healthz", server.api_url()))
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.config.api_listen))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // A client that does not trust the CA refuses the server.
    let untrusting = reqwest::Client::new()
        .get(format!("{}/healthz", server.api_url()))
        .send()
        .await;
    assert!(untrusting.is_err());

    // The CLI sent to it over plain HTTP says what to do.
    let plain_url = format!("http://{}", server.config.api_listen);
    let (code, _, stderr) = stella(
        &["whoami"],
        &[
            ("STELLA_SERVER", plain_url.as_str()),
            ("STELLA_TOKEN", &server.admin_token),
        ],
    )
    .await?;
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("use https://"), "{stderr}");

    let plain_server = TestServer::start_plain().await?;
    assert!(plain_server.api_url().starts_with("http://"));
    let answer = reqwest::get(format!("{}/healthz", plain_server.api_url())).await?;
    assert_eq!(answer.status(), 200);
    Ok(())
}

#[tokio::test]
async fn the_cli_refuses_a_wrong_name_another_ca_and_a_changed_ca() -> anyhow::Result<()> {
    let named = TestServer::start_with(|config| {
        config.api_names = vec!["stella.example".to_owned()];
    })
    .await?;
    let (code, stdout, stderr) = cli(&named, &named.admin_token, &["whoami"]).await?;
    assert_ne!(code, 0, "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("stella.example"),
        "{stderr}"
    );

    let mut server = TestServer::start().await?;
    let other_ca = named.ca_file();
    let url = server.api_url();
    let other_ca_arg = other_ca.display().to_string();
    let (code, _, stderr) = stella(
        &["whoami", "--ca-file", &other_ca_arg],
        &[
            ("STELLA_SERVER", url.as_str()),
            ("STELLA_TOKEN", &server.admin_token),
        ],
    )
    .await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");

    // Trust on first use: `localhost` is not a URL the harness knows a CA file for.
    let admin_token = server.admin_token.clone();
    let config_dir = TestDir::new("tofu");
    let config_arg = config_dir.path().display().to_string();
    let tofu_url = format!("https://localhost:{}", server.config.api_listen.port());
    let env = [
        ("STELLA_SERVER", tofu_url.as_str()),
        ("STELLA_TOKEN", admin_token.as_str()),
        ("STELLA_CONFIG_DIR", config_arg.as_str()),
    ];
    let (code, stdout, stderr) = stella(&["whoami", "-o", "json"], &env).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"admin\""), "{stdout}");
    let fingerprint = server.running().app.pki.ca.fingerprint().to_string();
    assert!(
        stderr.contains("at first use") && stderr.contains(&fingerprint),
        "{stderr}"
    );
    let known = std::fs::read_to_string(config_dir.path().join("known-servers.json"))?;
    assert!(known.contains(&fingerprint), "{known}");
    let (code, _, stderr) = stella(&["whoami"], &env).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "a second use says nothing: {stderr}");

    // The server's CA is replaced: the pinned CLI refuses it, in one line.
    server.stop().await;
    for file in ["ca.pem", "ca.key"] {
        std::fs::remove_file(server.config.data_dir.join("pki").join(file))?;
    }
    server.restart().await?;
    let (code, stdout, stderr) = stella(&["whoami"], &env).await?;
    assert_ne!(code, 0, "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CA fingerprint is")
            && stderr.contains(&format!("not {fingerprint} as recorded at first use")),
        "{stderr}"
    );
    Ok(())
}

/// An operator's CA, and a certificate from it for 127.0.0.1 written to two files.
fn operator_certificate(
    ca: &stella_pki::CertificateAuthority,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let issued =
        ca.issue_server_certificate(&["127.0.0.1".to_owned()], Duration::from_secs(3600))?;
    std::fs::write(
        dir.join("api.pem"),
        format!("{}{}", issued.cert_pem, ca.cert_pem()),
    )?;
    std::fs::write(dir.join("api.key"), &issued.key_pem)?;
    Ok(())
}

#[tokio::test]
async fn a_reloaded_certificate_reaches_new_connections_and_spares_open_ones() -> anyhow::Result<()>
{
    let files = TestDir::new("operator-cert");
    let operator_ca = stella_pki::CertificateAuthority::generate("operator.test")?;
    operator_certificate(&operator_ca, files.path())?;
    let (cert, key) = (files.path().join("api.pem"), files.path().join("api.key"));
    let server = TestServer::start_with(|config| {
        config.api_cert = Some(cert.clone());
        config.api_key = Some(key.clone());
    })
    .await?;
    let ca_pem = operator_ca.cert_pem().to_owned();
    let (mut open, first_leaf) = tls_connect(&server, &ca_pem).await?;
    assert_eq!(healthz_on(&mut open).await?, "HTTP/1.1 200 OK");

    operator_certificate(&operator_ca, files.path())?;
    let reloaded = server.running().reload_api_certificate()?;
    let (_, second_leaf) = tls_connect(&server, &ca_pem).await?;
    assert_ne!(
        first_leaf, second_leaf,
        "new connections get the new certificate"
    );
    assert_eq!(
        reloaded.map(|f| f.to_string()),
        Some(stella_pki::Fingerprint::of_der(&second_leaf).to_string())
    );
    // The connection opened before the reload still answers.
    assert_eq!(healthz_on(&mut open).await?, "HTTP/1.1 200 OK");

    // A broken file is refused and the current certificate stays.
    std::fs::write(&key, "not a key")?;
    assert!(server.running().reload_api_certificate().is_err());
    let (_, third_leaf) = tls_connect(&server, &ca_pem).await?;
    assert_eq!(second_leaf, third_leaf);
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_a_server_process() -> anyhow::Result<()> {
    let dir = TestDir::new("sighup");
    let api = format!("127.0.0.1:{}", stella_tests::free_port().await?);
    let grpc = format!("127.0.0.1:{}", stella_tests::free_port().await?);
    let data = dir.path().join("server").display().to_string();
    let process = stella_tests::ChildProcess::spawn(
        &[
            "server",
            "--data-dir",
            &data,
            "--api-listen",
            &api,
            "--grpc-listen",
            &grpc,
        ],
        &[],
        dir.path().join("server.log"),
    )?;
    wait_until("the server is up", Duration::from_secs(20), || async {
        process
            .log_text()
            .contains("control plane started")
            .then_some(())
    })
    .await?;
    let pid = process
        .child
        .id()
        .ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    assert!(status.success());
    wait_until(
        "the certificate is reloaded",
        Duration::from_secs(10),
        || async {
            process
                .log_text()
                .contains("API certificate reloaded")
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn tokens_are_named_listed_expire_and_are_revoked() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (code, stdout, stderr) = cli(
        &server,
        &server.admin_token,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--expires-in",
            "30d",
            "-o",
            "json",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout)?;
    let token = created["token"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        token.starts_with("stk1_") && id.starts_with("tok_"),
        "{created}"
    );
    assert_eq!(created["name"], "ci");

    let (status, _) = server
        .request(Method::GET, "/api/v1/whoami", Some(&token), None)
        .await?;
    assert_eq!(status, 200);
    let listed = wait_until(
        "the last use is recorded",
        Duration::from_secs(5),
        || async {
            let (_, stdout, _) = cli(
                &server,
                &server.admin_token,
                &["token", "list", "-o", "json"],
            )
            .await
            .ok()?;
            let list: Value = serde_json::from_str(&stdout).ok()?;
            let entry = list
                .as_array()?
                .iter()
                .find(|t| t["id"] == id.as_str())?
                .clone();
            entry["last_used_at"].is_string().then_some(entry)
        },
    )
    .await?;
    assert_eq!(listed["name"], "ci");
    assert_eq!(listed["state"], "active");
    assert!(listed["expires_at"].is_string(), "{listed}");
    assert!(
        !listed.to_string().contains(&token),
        "a list never shows a token"
    );
    let (_, table, _) = cli(&server, &server.admin_token, &["token", "list"]).await?;
    assert!(table.contains("ci") && table.contains(&id), "{table}");

    // Expired: 401.
    let short = server
        .post(
            "/api/v1/tokens",
            json!({"name": "short", "expires_in_seconds": 1}),
        )
        .await?;
    let short = short["token"].as_str().unwrap_or_default().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = server
        .request(Method::GET, "/api/v1/whoami", Some(&short), None)
        .await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );
    // Beyond the maximum: 400.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"expires_in_seconds": 10u64 * 365 * 86_400})),
        )
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_expiry"))
    );

    // Revoked: 401; another user cannot see or revoke it.
    let viewer = server
        .post(
            "/api/v1/users",
            json!({"name": "vera", "roles": ["viewer"]}),
        )
        .await?;
    let viewer_token = viewer["token"].as_str().unwrap_or_default().to_owned();
    let (status, _) = server
        .request(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&viewer_token),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    let (status, _) = server
        .request(
            Method::GET,
            "/api/v1/tokens?all=true",
            Some(&viewer_token),
            None,
        )
        .await?;
    assert_eq!(status, 403);
    let (code, _, stderr) = cli(&server, &server.admin_token, &["token", "revoke", &id]).await?;
    assert_eq!(code, 0, "{stderr}");
    let (status, body) = server
        .request(Method::GET, "/api/v1/whoami", Some(&token), None)
        .await?;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
    // Admins see everyone's tokens.
    let all = server.get("/api/v1/tokens?all=true").await?;
    assert!(
        all.as_array()
            .is_some_and(|list| list.iter().any(|t| t["user"] == "vera")),
        "{all}"
    );
    Ok(())
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_both_postgres_replicas() -> anyhow::Result<()> {
    let url = stella_tests::postgres::fresh_database_url().await?;
    let first = TestServer::start_with(|config| config.database_url = Some(url)).await?;
    let second = first.start_replica().await?;
    let created = first
        .post("/api/v1/tokens", json!({"name": "shared"}))
        .await?;
    let token = created["token"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    for replica in [&first, &second] {
        let (status, _) = replica
            .request(Method::GET, "/api/v1/whoami", Some(&token), None)
            .await?;
        assert_eq!(status, 200);
    }
    let (status, _) = first
        .call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await?;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    for replica in [&first, &second] {
        wait_until("the token is refused", Duration::from_secs(5), || async {
            let (status, _) = replica
                .request(Method::GET, "/api/v1/whoami", Some(&token), None)
                .await
                .ok()?;
            (status == 401).then_some(())
        })
        .await?;
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

/// `POST /oauth/token` with a form and optional Basic credentials.
async fn token_request(
    server: &TestServer,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
    let mut request = server
        .client()
        .post(format!("{}/oauth/token", server.api_url()))
        .form(form);
    if let Some((id, secret)) = basic {
        request = request.header(
            "authorization",
            format!("Basic {}", B64.encode(format!("{id}:{secret}"))),
        );
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, headers, body))
}

/// A token request that must be refused: form, Basic credentials, status, `error`.
type RefusalCase<'a> = (
    Vec<(&'a str, &'a str)>,
    Option<(&'a str, &'a str)>,
    u16,
    &'a str,
);

/// Re-signs `claims` with `key_pem` under the server key's `kid` (or another).
fn forge(claims: &Value, key_pem: &str, kid: &str) -> anyhow::Result<String> {
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(serde_json::to_vec(&header)?),
        b64.encode(serde_json::to_vec(claims)?)
    );
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(
        rustls_pki_types::pem::PemObject::from_pem_slice(key_pem.as_bytes()).map(
            |der: rustls_pki_types::PrivatePkcs8KeyDer<'static>| der.secret_pkcs8_der().to_vec(),
        )?,
    );
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let signature = pair.sign(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        b64.encode(signature.as_ref())
    ))
}

#[tokio::test]
async fn client_credentials_issue_jwts_that_the_api_and_pyjwt_accept() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (code, stdout, stderr) = cli(
        &server,
        &server.admin_token,
        &[
            "client",
            "create",
            "ci-reader",
            "--scope",
            "stella.viewer,taskrunner.viewer",
            "-o",
            "json",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout)?;
    let secret = created["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(secret.starts_with("stcs1_"), "{created}");
    let (_, listed, _) = cli(
        &server,
        &server.admin_token,
        &["client", "list", "-o", "json"],
    )
    .await?;
    assert!(
        listed.contains("ci-reader") && !listed.contains(&secret),
        "{listed}"
    );

    // Basic authentication.
    let (status, headers, body) = token_request(
        &server,
        &[("grant_type", "client_credentials")],
        Some(("ci-reader", &secret)),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "stella.viewer taskrunner.viewer");
    assert_eq!(body["expires_in"], 900);
    let jwt = body["access_token"].as_str().unwrap_or_default().to_owned();

    // The API takes it as a bearer token; a scope that does not cover the call is 403.
    let (status, whoami) = server
        .request(Method::GET, "/api/v1/whoami", Some(&jwt), None)
        .await?;
    assert_eq!(
        (status, whoami["name"].as_str()),
        (200, Some("client:ci-reader"))
    );
    let (status, _) = server
        .request(Method::GET, "/api/v1/environments", Some(&jwt), None)
        .await?;
    assert_eq!(status, 200);
    let (status, body) = server
        .request(
            Method::POST,
            "/api/v1/environments",
            Some(&jwt),
            Some(json!({"name": "dev"})),
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("stella.operator"),
        "{body}"
    );
    let (status, body) = server
        .request(Method::GET, "/api/v1/tokens", Some(&jwt), None)
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("not_a_user"))
    );

    // Form authentication, and a narrower scope.
    let (status, _, body) = token_request(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "ci-reader"),
            ("client_secret", &secret),
            ("scope", "taskrunner.viewer"),
        ],
        None,
    )
    .await?;
    assert_eq!(
        (status, body["scope"].as_str()),
        (200, Some("taskrunner.viewer"))
    );
    let narrow = body["access_token"].as_str().unwrap_or_default().to_owned();
    let (status, _) = server
        .request(Method::GET, "/api/v1/environments", Some(&narrow), None)
        .await?;
    assert_eq!(status, 403, "taskrunner scopes grant no Stella role");

    // RFC 6749 §5.2 refusals.
    let cases: Vec<RefusalCase> = vec![
        (
            vec![("grant_type", "client_credentials")],
            Some(("ci-reader", "wrong")),
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials")],
            Some(("nobody", &secret)),
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials")],
            None,
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", "password")],
            Some(("ci-reader", &secret)),
            400,
            "unsupported_grant_type",
        ),
        (vec![], Some(("ci-reader", &secret)), 400, "invalid_request"),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "stella.admin"),
            ],
            Some(("ci-reader", &secret)),
            400,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "ci-reader"),
                ("client_secret", &secret),
            ],
            Some(("ci-reader", &secret)),
            400,
            "invalid_request",
        ),
    ];
    for (form, basic, want_status, want_error) in cases {
        let (status, headers, body) = token_request(&server, &form, basic).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_error)),
            "{form:?}: {body}"
        );
        assert_eq!(headers["cache-control"], "no-store");
        if status == 401 {
            assert!(headers.contains_key("www-authenticate"));
        }
    }

    // Tokens the API must refuse: expired, signed by another key (with the server's kid,
    // and with its own), another audience.
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let jwks: Value = server
        .client()
        .get(format!("{}/.well-known/jwks.json", server.api_url()))
        .send()
        .await?
        .json()
        .await?;
    let kid = jwks["keys"][0]["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let own_key = std::fs::read_to_string(server.config.data_dir.join("pki").join("oauth.key"))?;
    let other_key = stella_pki::generate_ed25519_pkcs8_pem()?;
    let now = claims["iat"].as_i64().unwrap_or_default();
    let mut expired = claims.clone();
    expired["exp"] = json!(now - 120);
    expired["iat"] = json!(now - 1000);
    expired["nbf"] = json!(now - 1000);
    let mut elsewhere = claims.clone();
    elsewhere["aud"] = json!("another-api");
    let refused = [
        (forge(&expired, &own_key, &kid)?, "expired"),
        (forge(&claims, &other_key, &kid)?, "bad signature"),
        (forge(&claims, &other_key, "other")?, "does not publish"),
        (forge(&elsewhere, &own_key, &kid)?, "another audience"),
    ];
    let before = metric(
        &server,
        "stella_auth_failures_total{reason=\"invalid_jwt\"}",
    )
    .await?;
    for (token, why) in refused {
        let (status, body) = server
            .request(Method::GET, "/api/v1/whoami", Some(&token), None)
            .await?;
        assert_eq!(status, 401, "{why}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(why),
            "{why}: {body}"
        );
    }
    assert_eq!(
        metric(
            &server,
            "stella_auth_failures_total{reason=\"invalid_jwt\"}"
        )
        .await?
            - before,
        3.0
    );
    // The same claims signed with the server's own key pass: the refusals above are
    // the key's, the expiry's and the audience's, not the forging's.
    let (status, _) = server
        .request(
            Method::GET,
            "/api/v1/whoami",
            Some(&forge(&claims, &own_key, &kid)?),
            None,
        )
        .await?;
    assert_eq!(status, 200);

    // PyJWT verifies the token against the served key set, independently of this code.
    let metadata: Value = server
        .client()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            server.api_url()
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(metadata["issuer"], claims["iss"]);
    assert_eq!(
        metadata["grant_types_supported"],
        json!(["client_credentials"])
    );
    let script = r#"
import json, sys, jwt
jwks = json.load(open(sys.argv[1]))
token = sys.argv[2]
header = jwt.get_unverified_header(token)
assert header["typ"] == "at+jwt", header
key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
claims = jwt.decode(token, key=key, algorithms=["EdDSA"], audience=sys.argv[3], issuer=sys.argv[4],
                    options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})
assert claims["client_id"] == "ci-reader" and claims["scope"] == "stella.viewer taskrunner.viewer", claims
try:
    jwt.decode(token[:-4] + "AAAA", key=key, algorithms=["EdDSA"], audience=sys.argv[3], issuer=sys.argv[4])
    sys.exit("a tampered token passed")
except jwt.InvalidSignatureError:
    pass
print("ok")
"#;
    let jwks_file = server.dir.path().join("jwks.json");
    std::fs::write(&jwks_file, serde_json::to_vec(&jwks)?)?;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&jwks_file)
        .arg(&jwt)
        .arg(claims["aud"].as_str().unwrap_or_default())
        .arg(claims["iss"].as_str().unwrap_or_default())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'jwt'"),
        "PyJWT is missing: `python3 -m pip install 'pyjwt[crypto]'` (`cargo xtask test` installs it)"
    );
    assert!(output.status.success(), "PyJWT refused the token: {stderr}");

    // A revoked client gets no token, and its tokens are refused within seconds.
    let (code, _, stderr) = cli(
        &server,
        &server.admin_token,
        &["client", "revoke", "ci-reader"],
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let (status, _) = server
        .request(Method::GET, "/api/v1/whoami", Some(&jwt), None)
        .await?;
    assert_eq!(status, 401);
    let (status, _, body) = token_request(
        &server,
        &[("grant_type", "client_credentials")],
        Some(("ci-reader", &secret)),
    )
    .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    Ok(())
}

#[tokio::test]
async fn token_endpoints_are_rate_limited_and_failures_counted_and_audited() -> anyhow::Result<()> {
    let server = TestServer::start_with(|config| {
        config.auth_rate_limit_burst = 3;
        config.auth_rate_limit_per_minute = 6;
    })
    .await?;
    let before = metric(
        &server,
        "stella_auth_failures_total{reason=\"invalid_client\"}",
    )
    .await?;
    for _ in 0..3 {
        let (status, _, _) = token_request(
            &server,
            &[("grant_type", "client_credentials")],
            Some(("ghost", "nope")),
        )
        .await?;
        assert_eq!(status, 401);
    }
    let (status, headers, body) = token_request(
        &server,
        &[("grant_type", "client_credentials")],
        Some(("ghost", "nope")),
    )
    .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("slow_down")),
        "{body}"
    );
    let retry: u64 = headers["retry-after"].to_str()?.parse()?;
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(
        metric(
            &server,
            "stella_auth_failures_total{reason=\"invalid_client\"}"
        )
        .await?
            - before,
        3.0
    );
    assert!(
        metric(
            &server,
            "stella_auth_failures_total{reason=\"rate_limited\"}"
        )
        .await?
            >= 1.0
    );
    // Token creation shares the per-address bucket: 429 with the envelope.
    let (status, body) = server
        .call(Method::POST, "/api/v1/tokens", Some(json!({})))
        .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // Every token request is audited, by the client id it named; never its secret.
    let entries = server.get("/api/v1/audit?limit=1000").await?;
    let oauth: Vec<&Value> = entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["action"] == "POST /oauth/token")
        .collect();
    assert_eq!(oauth.len(), 4, "{entries:#}");
    let outcomes: Vec<(&str, &str)> = oauth
        .iter()
        .map(|entry| {
            (
                entry["actor"].as_str().unwrap_or_default(),
                entry["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    // The address's limit is checked before the body is read: that refusal names no client.
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ("client:ghost", "401"))
            .count(),
        3,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ("anonymous", "429"))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(!entries.to_string().contains("nope"));
    // A bad bearer token on a read is counted too.
    let before = metric(
        &server,
        "stella_auth_failures_total{reason=\"unknown_token\"}",
    )
    .await?;
    let (status, _) = server
        .request(Method::GET, "/api/v1/whoami", Some("stk1_nonsense"), None)
        .await?;
    assert_eq!(status, 401);
    assert_eq!(
        metric(
            &server,
            "stella_auth_failures_total{reason=\"unknown_token\"}"
        )
        .await?
            - before,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_data_dir_of_the_previous_schema_upgrades_and_its_admin_token_works() -> anyhow::Result<()>
{
    use sqlx::ConnectOptions as _;
    let dir = TestDir::new("upgrade");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    // The schema as it was: migrations 0001 to 0004 only.
    let old = dir.path().join("migrations");
    std::fs::create_dir_all(&old)?;
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../control-plane/migrations/sqlite");
    for entry in std::fs::read_dir(&source)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0005" {
            std::fs::copy(entry.path(), old.join(&name))?;
        }
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("stella.db"))
        .create_if_missing(true);
    let mut connection = options.connect().await?;
    sqlx::migrate::Migrator::new(old.as_path())
        .await?
        .run(&mut connection)
        .await?;
    // The admin and its token as the previous version wrote them.
    let token = "stk1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    sqlx::query(
        "INSERT INTO users (id, name, roles, created_at_ms) VALUES ('u1', 'admin', 'admin', 1)",
    )
    .execute(&mut connection)
    .await?;
    sqlx::query("INSERT INTO api_tokens (hash, user_id, created_at_ms) VALUES ($1, 'u1', 1)")
        .bind(stella_pki::hash_token(token))
        .execute(&mut connection)
        .await?;
    drop(connection);
    std::fs::write(data_dir.join("admin.token"), format!("{token}\n"))?;

    let moved = data_dir.clone();
    let server = TestServer::start_with(move |config| config.data_dir = moved).await?;
    assert_eq!(server.admin_token, token);
    let whoami = server.get("/api/v1/whoami").await?;
    assert_eq!(whoami["name"], "admin");
    let tokens = server.get("/api/v1/tokens").await?;
    let legacy = &tokens[0];
    assert_eq!(legacy["name"], "legacy");
    assert_eq!(legacy["state"], "active");
    assert!(
        legacy["expires_at"].is_null(),
        "old tokens keep no expiry: {legacy}"
    );
    // And it can be revoked like any other.
    let id = legacy["id"].as_str().unwrap_or_default().to_owned();
    let fresh = server
        .post("/api/v1/tokens", json!({"name": "new-admin"}))
        .await?;
    let fresh = fresh["token"].as_str().unwrap_or_default().to_owned();
    let (status, _) = server
        .request(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&fresh),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = server
        .request(Method::GET, "/api/v1/whoami", Some(token), None)
        .await?;
    assert_eq!(status, 401);
    Ok(())
}
