//! OAuth2 client credentials end to end: clients from the CLI, `POST /oauth/token` with
//! RFC 6749 errors, RFC 9068 JWTs accepted by the API and checked by PyJWT against the
//! served JWKS, forged and expired tokens refused, scopes that do not cover a call
//! refused; rate limits with `Retry-After`, the failure counter and the audit log.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::{stella, TestServer};

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

/// A client's `taskrunner.*` scopes are what the TaskRunner API checks: viewer reads
/// but may not create a run, operator creates one; neither grants a Stella role.
#[tokio::test]
async fn taskrunner_scopes_of_an_access_token_gate_the_task_runner_api() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut tokens = Vec::new();
    for (name, scope) in [
        ("runs-reader", "taskrunner.viewer"),
        ("runs-operator", "taskrunner.operator"),
    ] {
        let (code, stdout, stderr) = cli(
            &server,
            &server.admin_token,
            &["client", "create", name, "--scope", scope, "-o", "json"],
        )
        .await?;
        assert_eq!(code, 0, "{stderr}");
        let created: Value = serde_json::from_str(&stdout)?;
        let secret = created["client_secret"].as_str().unwrap_or_default();
        let (status, _, body) = token_request(
            &server,
            &[("grant_type", "client_credentials")],
            Some((name, secret)),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        tokens.push(body["access_token"].as_str().unwrap_or_default().to_owned());
    }
    let pack = "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata:\n  name: scoped\n  version: 1.0.0\nspec:\n  steps:\n    - id: pause\n      run:\n        uses: builtin:wait\n        with: {seconds: 0}\n";
    let create = |token: String, run_id: &'static str| {
        let server = &server;
        async move {
            let response = server
                .client()
                .post(format!("{}/v1/task-runner/runs", server.api_url()))
                .bearer_auth(token)
                .json(&serde_json::json!({"runId": run_id, "manifest": pack, "inputs": {}}))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body = response.text().await?;
            anyhow::Ok((status, body))
        }
    };
    let (status, body) = create(tokens[0].clone(), "scoped-by-viewer").await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("taskrunner.operator"), "{body}");
    let (status, body) = create(tokens[1].clone(), "scoped-by-operator").await?;
    assert_eq!(status, 201, "{body}");
    // The scope is checked before the body is read: a malformed approval from a viewer
    // is refused for the scope, not described as malformed.
    let refused = server
        .client()
        .post(format!(
            "{}/v1/task-runner/runs/scoped-by-operator/approvals/none",
            server.api_url()
        ))
        .bearer_auth(&tokens[0])
        .json(&serde_json::json!({"bogus": 1}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 403);
    let listed = server
        .client()
        .get(format!("{}/v1/task-runner/runs", server.api_url()))
        .bearer_auth(&tokens[0])
        .send()
        .await?;
    assert_eq!(listed.status().as_u16(), 200);
    // No Stella role comes with a TaskRunner scope.
    let environments = server
        .client()
        .get(format!("{}/api/v1/environments", server.api_url()))
        .bearer_auth(&tokens[1])
        .send()
        .await?;
    assert_eq!(environments.status().as_u16(), 403);
    Ok(())
}
