//! Tenants: the same names in two tenants, nothing of one visible or changeable from
//! another (404, no existence leak), callers without a role in a tenant refused, an
//! agent enrolled into one tenant invisible to the others and refused for their
//! targets, roles narrowed to one environment, and a tenant's database surviving a
//! restart of the server.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::{wait_until, TestAgent, TestServer};

/// A caller: its token and the tenant it names (`None`: no header, `default`).
struct As<'a> {
    server: &'a TestServer,
    token: String,
    tenant: Option<&'static str>,
}

impl As<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .server
            .client()
            .request(method, format!("{}{path}", self.server.api_url()))
            .bearer_auth(&self.token);
        if let Some(tenant) = self.tenant {
            request = request.header("X-StellaOps-Tenant", tenant);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, reply) = self.call(method.clone(), path, body).await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {path} as {:?}: {status} {reply}",
            self.tenant
        );
        Ok(reply)
    }
}

fn error_code(reply: &Value) -> &str {
    reply
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

async fn user(server: &TestServer, name: &str) -> anyhow::Result<String> {
    let created = server
        .post("/api/v1/users", json!({"name": name, "roles": ["viewer"]}))
        .await?;
    created["token"]
        .as_str()
        .map(str::to_owned)
        .context("no token")
}

async fn bind(server: &TestServer, user: &str, binding: Value) -> anyhow::Result<()> {
    server
        .post(&format!("/api/v1/users/{user}/bindings"), binding)
        .await?;
    Ok(())
}

#[tokio::test]
async fn tenants_are_isolated_spaces_with_their_own_names_agents_and_roles() -> anyhow::Result<()> {
    stella_tests::init_tracing();
    let mut server = TestServer::start().await?;
    for tenant in ["team-a", "team-b"] {
        let created = server
            .post("/api/v1/tenants", json!({"name": tenant}))
            .await?;
        assert_eq!(created["name"], tenant);
    }
    let (status, reply) = server
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(json!({"name": "team-a"})),
        )
        .await?;
    assert_eq!((status, error_code(&reply)), (409, "tenant_exists"));
    let (status, reply) = server
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(json!({"name": "Team_A"})),
        )
        .await?;
    assert_eq!(status, 400, "{reply}");

    let alice_token = user(&server, "alice").await?;
    let bob_token = user(&server, "bob").await?;
    bind(
        &server,
        "alice",
        json!({"tenant": "team-a", "role": "admin"}),
    )
    .await?;
    bind(&server, "bob", json!({"tenant": "team-b", "role": "admin"})).await?;
    let alice = As {
        server: &server,
        token: alice_token.clone(),
        tenant: Some("team-a"),
    };
    let bob = As {
        server: &server,
        token: bob_token.clone(),
        tenant: Some("team-b"),
    };
    let alice_in_b = As {
        server: &server,
        token: alice_token.clone(),
        tenant: Some("team-b"),
    };
    let admin = As {
        server: &server,
        token: server.admin_token.clone(),
        tenant: None,
    };
    let admin_in_a = As {
        server: &server,
        token: server.admin_token.clone(),
        tenant: Some("team-a"),
    };

    // The same names in both tenants, with their own settings.
    alice
        .ok(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "prod", "approvals": 2})),
        )
        .await?;
    bob.ok(
        Method::POST,
        "/api/v1/environments",
        Some(json!({"name": "prod", "approvals": 1})),
    )
    .await?;
    alice
        .ok(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "a-only"})),
        )
        .await?;
    let a_prod = alice
        .ok(Method::GET, "/api/v1/environments/prod", None)
        .await?;
    let b_prod = bob
        .ok(Method::GET, "/api/v1/environments/prod", None)
        .await?;
    assert_eq!(a_prod["approvals"], 2, "{a_prod}");
    assert_eq!(b_prod["approvals"], 1, "{b_prod}");
    let listed = bob.ok(Method::GET, "/api/v1/environments", None).await?;
    let names: Vec<&str> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["prod"], "team-b sees only its own: {listed}");
    let in_default = admin.ok(Method::GET, "/api/v1/environments", None).await?;
    assert_eq!(in_default, json!([]), "default holds none of them");

    // Another tenant's object is not found, for reads and writes alike.
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"approvals": 0}))),
        (Method::DELETE, None),
    ] {
        let (status, reply) = bob
            .call(method.clone(), "/api/v1/environments/a-only", body)
            .await?;
        assert_eq!(
            status, 404,
            "{method} of team-a's environment from team-b: {reply}"
        );
    }
    alice
        .ok(Method::GET, "/api/v1/environments/a-only", None)
        .await?;

    // No role in a tenant: refused, whatever the role elsewhere, and the same answer
    // for a tenant that does not exist.
    for (caller, tenant) in [(&alice_in_b, "team-b"), (&admin_in_a, "team-a")] {
        let (status, reply) = caller
            .call(Method::GET, "/api/v1/environments", None)
            .await?;
        assert_eq!(
            (status, error_code(&reply)),
            (403, "tenant_forbidden"),
            "{tenant}: {reply}"
        );
    }
    let nowhere = As {
        server: &server,
        token: alice_token.clone(),
        tenant: Some("no-such"),
    };
    let (status, reply) = nowhere
        .call(Method::GET, "/api/v1/environments", None)
        .await?;
    assert_eq!(
        (status, error_code(&reply)),
        (403, "tenant_forbidden"),
        "{reply}"
    );
    // A tenant admin does not manage the server's users or tenants.
    let (status, _) = alice.call(Method::GET, "/api/v1/users", None).await?;
    assert_eq!(status, 403);
    let (status, _) = alice
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(json!({"name": "team-z"})),
        )
        .await?;
    assert_eq!(status, 403);

    // An agent enrolled with team-a's join token belongs to team-a.
    let issued = alice
        .ok(Method::POST, "/api/v1/agents/join-tokens", Some(json!({})))
        .await?;
    let join_token = issued["token"].as_str().context("join token")?.to_owned();
    let agent = TestAgent::start_with(
        &server,
        server.dir.path().join("agent-host-a"),
        "host-a",
        Some(join_token),
    );
    wait_until(
        "host-a is connected in team-a",
        Duration::from_secs(20),
        || async {
            let (status, reply) = alice
                .call(Method::GET, "/api/v1/agents/host-a", None)
                .await
                .ok()?;
            (status == 200 && reply["state"] == "connected").then_some(())
        },
    )
    .await?;
    for caller in [&bob, &admin] {
        let (status, reply) = caller
            .call(Method::GET, "/api/v1/agents/host-a", None)
            .await?;
        assert_eq!(status, 404, "{reply}");
    }
    let target = |environment: &str| {
        json!({"name": "web-1", "environment": environment, "kind": "docker", "agent": "host-a",
               "settings": {}})
    };
    alice
        .ok(Method::POST, "/api/v1/targets", Some(target("prod")))
        .await?;
    let (status, reply) = bob
        .call(Method::POST, "/api/v1/targets", Some(target("prod")))
        .await?;
    assert_eq!(
        (status, error_code(&reply)),
        (400, "unknown_agent"),
        "{reply}"
    );

    // A role narrowed to one environment counts for that environment only.
    let carol_token = user(&server, "carol").await?;
    bind(
        &server,
        "carol",
        json!({"tenant": "team-a", "role": "operator", "environment": "a-only"}),
    )
    .await?;
    let carol = As {
        server: &server,
        token: carol_token,
        tenant: Some("team-a"),
    };
    let promote =
        |environment: &str| json!({"release": "web", "version": "1", "environment": environment});
    let (status, reply) = carol
        .call(Method::POST, "/api/v1/promotions", Some(promote("prod")))
        .await?;
    assert_eq!((status, error_code(&reply)), (403, "forbidden"), "{reply}");
    let (status, reply) = carol
        .call(Method::POST, "/api/v1/promotions", Some(promote("a-only")))
        .await?;
    assert!(
        status == 404 || status == 422,
        "authorised, then no such release: {status} {reply}"
    );
    let (status, _) = carol
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "x"})),
        )
        .await?;
    assert_eq!(status, 403, "a narrowed role does not cover the tenant");
    let whoami = carol.ok(Method::GET, "/api/v1/whoami", None).await?;
    assert_eq!(whoami["tenant"], "team-a");
    assert_eq!(whoami["roles"], json!([]));
    assert_eq!(
        whoami["bindings"],
        json!([{"tenant": "team-a", "role": "operator", "environment": "a-only"}])
    );

    // Each tenant's audit chain has its own entries and verifies on its own.
    let audit_a = alice.ok(Method::GET, "/api/v1/audit", None).await?;
    let objects: Vec<&str> = audit_a
        .as_array()
        .context("audit entries")?
        .iter()
        .filter_map(|e| e["object"].as_str())
        .collect();
    assert!(
        objects.contains(&"/api/v1/environments") && objects.contains(&"/api/v1/targets"),
        "team-a's own changes: {objects:?}"
    );
    assert!(
        !objects.iter().any(|o| o.starts_with("/api/v1/users")),
        "the server admin's user and binding changes stay in default's chain: {objects:?}"
    );
    let audit_default = admin.ok(Method::GET, "/api/v1/audit", None).await?;
    let default_objects: Vec<&str> = audit_default
        .as_array()
        .context("audit entries")?
        .iter()
        .filter_map(|e| e["object"].as_str())
        .collect();
    assert!(
        default_objects.contains(&"/api/v1/tenants"),
        "{default_objects:?}"
    );
    assert!(
        !default_objects.contains(&"/api/v1/targets"),
        "team-a's target is not in default's chain: {default_objects:?}"
    );

    // A tenant that still has environments or agents is not deleted; after a
    // restart its objects are all there.
    let (status, reply) = admin
        .call(Method::DELETE, "/api/v1/tenants/team-a", None)
        .await?;
    assert_eq!(
        (status, error_code(&reply)),
        (409, "tenant_not_empty"),
        "{reply}"
    );
    agent.stop().await?;
    server.restart().await?;
    let alice = As {
        server: &server,
        token: alice_token.clone(),
        tenant: Some("team-a"),
    };
    let a_prod = alice
        .ok(Method::GET, "/api/v1/environments/prod", None)
        .await?;
    assert_eq!(a_prod["approvals"], 2);
    alice.ok(Method::GET, "/api/v1/agents/host-a", None).await?;

    // An empty tenant is deleted, with its bindings; its name is free again.
    let bob = As {
        server: &server,
        token: bob_token,
        tenant: Some("team-b"),
    };
    bob.ok(Method::DELETE, "/api/v1/environments/prod", None)
        .await?;
    server
        .call(Method::DELETE, "/api/v1/tenants/team-b", None)
        .await?;
    let (status, reply) = bob.call(Method::GET, "/api/v1/environments", None).await?;
    assert_eq!(
        (status, error_code(&reply)),
        (403, "tenant_forbidden"),
        "{reply}"
    );
    let bindings = server.get("/api/v1/users/bob/bindings").await?;
    assert_eq!(bindings, json!([]));
    server
        .post("/api/v1/tenants", json!({"name": "team-b"}))
        .await?;
    let (status, reply) = server
        .call(Method::DELETE, "/api/v1/tenants/default", None)
        .await?;
    assert_eq!(status, 422, "{reply}");
    Ok(())
}

#[tokio::test]
async fn the_cli_and_oauth2_clients_act_in_a_tenant() -> anyhow::Result<()> {
    stella_tests::init_tracing();
    let server = TestServer::start().await?;
    let url = server.api_url();
    let admin = [
        ("STELLA_SERVER", url.as_str()),
        ("STELLA_TOKEN", server.admin_token.as_str()),
    ];
    let run = |args: &'static [&'static str], env: Vec<(&'static str, String)>| async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        stella_tests::stella(args, &env).await
    };
    let env = |extra: &[(&'static str, &str)]| {
        let mut all: Vec<(&'static str, String)> =
            admin.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        all.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        all
    };

    let (code, stdout, stderr) = run(&["tenant", "create", "ops"], env(&[])).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("created tenant ops"), "{stdout}");
    let (code, _, stderr) = run(&["tenant", "create", "Bad_Name"], env(&[])).await?;
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // The admin holds nothing in `ops` until bound there (with `--tenant` or
    // STELLA_TENANT, both naming the binding's tenant for `user bind`).
    let (code, _, stderr) = run(&["env", "list"], env(&[("STELLA_TENANT", "ops")])).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("no role in tenant `ops`"), "{stderr}");
    let (code, stdout, stderr) = run(
        &[
            "user", "bind", "admin", "--role", "admin", "--tenant", "ops",
        ],
        env(&[]),
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("admin is admin in tenant ops"), "{stdout}");
    let (code, _, stderr) = run(&["env", "create", "prod", "--tenant", "ops"], env(&[])).await?;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, _) = run(
        &["-o", "json", "env", "list"],
        env(&[("STELLA_TENANT", "ops")]),
    )
    .await?;
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let (code, stdout, _) = run(&["-o", "json", "env", "list"], env(&[])).await?;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout)?,
        json!([]),
        "default has none"
    );
    let (code, stdout, stderr) =
        run(&["-o", "json", "whoami", "--tenant", "ops"], env(&[])).await?;
    assert_eq!(code, 0, "{stderr}");
    let me: Value = serde_json::from_str(&stdout)?;
    assert_eq!(me["tenant"], "ops");
    assert_eq!(me["roles"], json!(["admin"]));
    let (code, stdout, _) = run(&["-o", "json", "tenant", "list"], env(&[])).await?;
    assert_eq!(code, 0);
    let names: Vec<String> = serde_json::from_str::<Value>(&stdout)?
        .as_array()
        .context("tenants")?
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["default", "ops"]);

    // An OAuth2 client of `ops`: its access token carries the tenant and acts there.
    let (code, stdout, stderr) = run(
        &[
            "-o",
            "json",
            "client",
            "create",
            "deployer",
            "--scope",
            "stella.viewer",
            "--tenant",
            "ops",
        ],
        env(&[]),
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_str(&stdout)?;
    assert_eq!(created["client"]["tenant"], "ops");
    let secret = created["client_secret"].as_str().context("secret")?;
    let token: Value = server
        .client()
        .post(format!("{url}/oauth/token"))
        .basic_auth("deployer", Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?
        .json()
        .await?;
    let access = token["access_token"]
        .as_str()
        .context("access token")?
        .to_owned();
    let claims = access.split('.').nth(1).context("claims")?;
    use base64::Engine as _;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims)?)?;
    assert_eq!(claims["tenant"], "ops");
    let client = As {
        server: &server,
        token: access.clone(),
        tenant: None,
    };
    let listed = client.ok(Method::GET, "/api/v1/environments", None).await?;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "its own tenant's: {listed}"
    );
    let elsewhere = As {
        server: &server,
        token: access,
        tenant: Some("default"),
    };
    let (status, reply) = elsewhere
        .call(Method::GET, "/api/v1/environments", None)
        .await?;
    assert_eq!(
        (status, error_code(&reply)),
        (403, "tenant_forbidden"),
        "{reply}"
    );

    // Unbinding takes the role away at once.
    let (code, _, stderr) = run(
        &[
            "user", "unbind", "admin", "--role", "admin", "--tenant", "ops",
        ],
        env(&[]),
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&["env", "list", "--tenant", "ops"], env(&[])).await?;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("tenant_forbidden") || stderr.contains("no role"),
        "{stderr}"
    );
    Ok(())
}

/// The migrations of `backend` (`sqlite` or `postgres`) from before tenants (0001 to
/// 0009), copied into `dir`.
fn migrations_before_tenants(backend: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../control-plane/migrations")
        .join(backend);
    for entry in std::fs::read_dir(&source)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0010" {
            std::fs::copy(entry.path(), dir.join(&name))?;
        }
    }
    Ok(())
}

/// What the previous release held: an environment, and an OAuth2 client.
const BEFORE_TENANTS: [&str; 2] = [
    "INSERT INTO environments (name, drift_mode, created_at_ms) VALUES ('prod', 'report', 1)",
    "INSERT INTO oauth_clients (id, name, secret_hash, scopes, created_by, created_at_ms) \
     VALUES ('ci', 'ci', 'x', 'stella.viewer', 'admin', 1)",
];

/// A server over a database written by the previous release finds everything in
/// `default`, and tenants work beside it.
async fn upgraded_into_default(server: &TestServer) -> anyhow::Result<()> {
    let environments = server.get("/api/v1/environments").await?;
    assert_eq!(environments[0]["name"], "prod", "{environments}");
    let clients = server.get("/api/v1/clients").await?;
    assert_eq!(clients[0]["tenant"], "default", "{clients}");
    let tenants = server.get("/api/v1/tenants").await?;
    assert_eq!(tenants.as_array().map(Vec::len), Some(1), "{tenants}");
    assert_eq!(tenants[0]["name"], "default");
    server
        .post("/api/v1/tenants", json!({"name": "later"}))
        .await?;
    server
        .post(
            "/api/v1/users/admin/bindings",
            json!({"tenant": "later", "role": "admin"}),
        )
        .await?;
    let later = As {
        server,
        token: server.admin_token.clone(),
        tenant: Some("later"),
    };
    later
        .ok(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "prod"})),
        )
        .await?;
    let listed = later.ok(Method::GET, "/api/v1/environments", None).await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn a_sqlite_data_dir_from_before_tenants_upgrades_into_default() -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    stella_tests::init_tracing();
    let dir = stella_tests::TestDir::new("tenants-upgrade");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let old = dir.path().join("migrations");
    migrations_before_tenants("sqlite", &old)?;
    let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("stella.db"))
        .create_if_missing(true)
        .connect()
        .await?;
    sqlx::migrate::Migrator::new(old.as_path())
        .await?
        .run(&mut connection)
        .await?;
    for statement in BEFORE_TENANTS {
        sqlx::query(statement).execute(&mut connection).await?;
    }
    drop(connection);
    let moved = data_dir.clone();
    let server = TestServer::start_with(move |config| config.data_dir = moved).await?;
    upgraded_into_default(&server).await?;
    assert!(data_dir.join("tenants").join("later.db").exists());
    Ok(())
}

#[tokio::test]
async fn a_postgresql_database_from_before_tenants_upgrades_into_default() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    stella_tests::init_tracing();
    let url = stella_tests::postgres::fresh_database_url().await?;
    let dir = stella_tests::TestDir::new("tenants-upgrade-pg");
    let old = dir.path().join("migrations");
    migrations_before_tenants("postgres", &old)?;
    let mut connection = sqlx::postgres::PgConnection::connect(&url).await?;
    sqlx::migrate::Migrator::new(old.as_path())
        .await?
        .run(&mut connection)
        .await?;
    for statement in BEFORE_TENANTS {
        sqlx::query(statement).execute(&mut connection).await?;
    }
    connection.close().await?;
    let database = url.clone();
    let server = TestServer::start_with(move |config| config.database_url = Some(database)).await?;
    upgraded_into_default(&server).await?;
    // The tenant's tables are in a schema of their own.
    let mut connection = sqlx::postgres::PgConnection::connect(&url).await?;
    let (in_schema,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM tenant_later.environments WHERE name = 'prod'")
            .fetch_one(&mut connection)
            .await?;
    assert_eq!(in_schema, 1);
    Ok(())
}

#[tokio::test]
async fn tenants_on_postgresql_reach_every_replica_and_are_dropped_whole() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    stella_tests::init_tracing();
    let url = stella_tests::postgres::fresh_database_url().await?;
    let database = url.clone();
    let first = TestServer::start_with(move |config| config.database_url = Some(database)).await?;
    let second = first.start_replica().await?;
    first
        .post("/api/v1/tenants", json!({"name": "team-a"}))
        .await?;
    let alice_token = user(&first, "alice").await?;
    bind(
        &first,
        "alice",
        json!({"tenant": "team-a", "role": "admin"}),
    )
    .await?;
    // Created on the first replica, used at once on the second.
    let on_second = As {
        server: &second,
        token: alice_token.clone(),
        tenant: Some("team-a"),
    };
    on_second
        .ok(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "prod", "approvals": 3})),
        )
        .await?;
    second
        .post(
            "/api/v1/environments",
            json!({"name": "prod", "approvals": 1}),
        )
        .await?;
    let on_first = As {
        server: &first,
        token: alice_token,
        tenant: Some("team-a"),
    };
    let prod = on_first
        .ok(Method::GET, "/api/v1/environments/prod", None)
        .await?;
    assert_eq!(prod["approvals"], 3, "{prod}");
    let default_prod = first.get("/api/v1/environments/prod").await?;
    assert_eq!(default_prod["approvals"], 1, "{default_prod}");
    // An agent enrolled through one replica into team-a connects through the other.
    let issued = on_first
        .ok(Method::POST, "/api/v1/agents/join-tokens", Some(json!({})))
        .await?;
    let join_token = issued["token"].as_str().context("join token")?.to_owned();
    let agent = TestAgent::start_with(
        &second,
        second.dir.path().join("agent-pg-a"),
        "pg-a",
        Some(join_token),
    );
    wait_until(
        "pg-a is connected in team-a",
        Duration::from_secs(20),
        || async {
            let (status, reply) = on_first
                .call(Method::GET, "/api/v1/agents/pg-a", None)
                .await
                .ok()?;
            (status == 200 && reply["state"] == "connected").then_some(())
        },
    )
    .await?;
    agent.stop().await?;
    on_first
        .ok(Method::POST, "/api/v1/agents/pg-a/revoke", Some(json!({})))
        .await?;
    on_first
        .ok(Method::DELETE, "/api/v1/agents/pg-a", None)
        .await?;
    on_first
        .ok(Method::DELETE, "/api/v1/environments/prod", None)
        .await?;
    let (status, reply) = second
        .call(Method::DELETE, "/api/v1/tenants/team-a", None)
        .await?;
    assert_eq!(status, 204, "{reply}");
    let mut connection = sqlx::postgres::PgConnection::connect(&url).await?;
    let (schemas,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'tenant_team_a'",
    )
    .fetch_one(&mut connection)
    .await?;
    assert_eq!(schemas, 0, "the tenant's schema is dropped");
    wait_until(
        "the first replica forgets team-a",
        Duration::from_secs(20),
        || async {
            let (status, _) = on_first
                .call(Method::GET, "/api/v1/environments", None)
                .await
                .ok()?;
            (status == 403).then_some(())
        },
    )
    .await?;
    Ok(())
}
