//! Identity end to end: the API over TLS (its own CA, an operator's certificate,
//! reload without dropping connections, the CLI's refusals), API tokens (expiry,
//! revocation on two PostgreSQL replicas, listing), and the upgrade of a data dir with
//! the previous schema. OAuth2 clients and rate limits are in `oauth.rs`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::{stella, wait_until, TestDir, TestServer};

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

#[tokio::test]
async fn the_issued_api_certificate_keeps_its_key_across_restarts_and_reloads() -> anyhow::Result<()>
{
    let mut server = TestServer::start().await?;
    let ca_pem = server.running().app.pki.ca.cert_pem().to_owned();
    let pin = |server: &TestServer| {
        server
            .running()
            .app
            .api_tls
            .as_ref()
            .and_then(|tls| tls.public_key_pin())
    };
    let first_pin = pin(&server).expect("the API serves TLS");
    let (_, first_leaf) = tls_connect(&server, &ca_pem).await?;
    let key_file = server.config.data_dir.join("api-key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the API key is private");

    server.running().reload_api_certificate()?;
    let (_, reloaded_leaf) = tls_connect(&server, &ca_pem).await?;
    assert_ne!(
        first_leaf, reloaded_leaf,
        "a reload issues a new certificate"
    );
    assert_eq!(pin(&server).as_deref(), Some(first_pin.as_str()));

    server.stop().await;
    server.restart().await?;
    let (_, restarted_leaf) = tls_connect(&server, &ca_pem).await?;
    assert_ne!(
        first_leaf, restarted_leaf,
        "a start issues a new certificate"
    );
    assert_eq!(
        pin(&server).as_deref(),
        Some(first_pin.as_str()),
        "for the same key: a printed install command stays valid"
    );
    let (status, body) = server
        .request(Method::GET, "/api/v1/gateway", None, None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["api_key_pin"], json!(first_pin));
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
