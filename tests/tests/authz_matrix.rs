//! The authorisation matrix: every operation of the OpenAPI document the server serves ×
//! every kind of caller → the outcome its rule in `tests/fixtures/authz-rules.json` allows.
//!
//! The operations come from the served document, so a new endpoint without a rule fails
//! here ("add a rule for …"), and so does a rule for an endpoint that is gone. Only the
//! authorisation outcome is checked: a caller that does not authenticate gets 401 with the
//! envelope, a role below the rule 403 with the envelope, anyone else anything but
//! 401/403/5xx (404, 400, 409 and 422 mean authorisation passed). Path parameters are ids
//! and names that do not exist, so no row changes what a later row sees; the principals
//! are dedicated users and clients, never the bootstrap admin.
//!
//! The same walk of the document checks that every operation with a body refuses one
//! of 10 MB with 413 and the envelope.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::{wait_until, TestServer};

const RULES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/authz-rules.json");
const SECURITY_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
const TABLE_BEGIN: &str = "<!-- authz-table begin: rendered from tests/fixtures/authz-rules.json; tests/tests/authz_matrix.rs checks it -->";
const TABLE_END: &str = "<!-- authz-table end -->";

/// Requests in flight at once.
const PARALLELISM: usize = 16;

/// The least a caller must be for an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// No token needed.
    Public,
    /// Any valid credential, even one that grants no Stella role.
    Authenticated,
    /// A user's API token (OAuth2 clients have no API tokens).
    User,
    Viewer,
    Operator,
    Approver,
    Admin,
    /// Admin in the `default` tenant: what is the server's (users, clients, tenants).
    ServerAdmin,
}

impl Level {
    const ALL: [Level; 8] = [
        Level::Public,
        Level::Authenticated,
        Level::User,
        Level::Viewer,
        Level::Operator,
        Level::Approver,
        Level::Admin,
        Level::ServerAdmin,
    ];

    fn parse(text: &str) -> anyhow::Result<Level> {
        Level::ALL
            .into_iter()
            .find(|level| level.name() == text)
            .ok_or_else(|| anyhow!("unknown level {text:?}"))
    }

    fn name(self) -> &'static str {
        match self {
            Level::Public => "public",
            Level::Authenticated => "authenticated",
            Level::User => "user",
            Level::Viewer => "viewer",
            Level::Operator => "operator",
            Level::Approver => "approver",
            Level::Admin => "admin",
            Level::ServerAdmin => "server-admin",
        }
    }

    /// Who passes, for the table in the security guide.
    fn who(self) -> &'static str {
        match self {
            Level::Public => "anyone, no token needed",
            Level::Authenticated => {
                "any valid API token or access token, even one with no `stella.*` scope"
            }
            Level::User => "any user's API token (an OAuth2 client is refused: `not_a_user`)",
            Level::Viewer => "`viewer`, `operator`, `approver`, `admin`",
            Level::Operator => "`operator`, `admin`",
            Level::Approver => "`approver`, `admin`",
            Level::Admin => "`admin`",
            Level::ServerAdmin => "`admin` in the `default` tenant",
        }
    }
}

/// A caller of the matrix.
#[derive(Clone, Debug)]
struct Principal {
    /// Its column label.
    label: &'static str,
    /// The `Authorization` header it sends.
    authorization: Option<String>,
    /// `None`: it does not authenticate. Otherwise its roles, and whether it is a user.
    identity: Option<(Vec<Level>, bool)>,
    /// The `X-StellaOps-Tenant` it sends, and whether it holds a role there; without
    /// one, every operation but the public ones is refused (`tenant_forbidden`).
    tenant: Option<(&'static str, bool)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Unauthenticated,
    Forbidden,
    Allowed,
}

impl Principal {
    fn expected(&self, level: Level) -> Outcome {
        if level == Level::Public {
            return Outcome::Allowed;
        }
        let Some((roles, is_user)) = &self.identity else {
            return Outcome::Unauthenticated;
        };
        if self.tenant.is_some_and(|(_, bound)| !bound) {
            return Outcome::Forbidden;
        }
        let has = |role: Level| roles.contains(&role) || roles.contains(&Level::Admin);
        let allowed = match level {
            Level::Public | Level::Authenticated => true,
            Level::User => *is_user,
            Level::Viewer => !roles.is_empty(),
            Level::ServerAdmin => has(Level::Admin) && self.tenant.is_none(),
            role => has(role),
        };
        if allowed {
            Outcome::Allowed
        } else {
            Outcome::Forbidden
        }
    }
}

/// One operation of the document.
#[derive(Clone, Debug)]
struct Operation {
    method: Method,
    path: String,
    has_body: bool,
    /// The first content type of its request body.
    content_type: Option<String>,
    /// A query string its parameters refuse (an unknown parameter, and a word where a
    /// number or a boolean belongs), if it has query parameters.
    invalid_query: Option<String>,
    /// This row sends `invalid_query`: the caller's role must be judged before the
    /// query, as before a body.
    bad_query: bool,
}

impl Operation {
    fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Its row label in the matrix.
    fn label(&self) -> String {
        if self.bad_query {
            format!("{}?bad", self.key())
        } else {
            self.key()
        }
    }

    /// The path with every parameter filled by something valid that does not exist.
    fn concrete_path(&self) -> String {
        let mut path = String::new();
        for segment in self.path.split('/').skip(1) {
            path.push('/');
            let value = match segment {
                "{digest}" => format!("sha256:{}", "0".repeat(64)),
                "{version}" => "0.0.0-matrix".to_owned(),
                "{host}" => "registry.matrix.invalid".to_owned(),
                "{variable}" => "MATRIX_MISSING".to_owned(),
                "{id}" if self.path.starts_with("/api/v1/tokens/") => {
                    "tok_matrixmissing".to_owned()
                }
                "{id}" => "00000000-0000-4000-8000-000000000000".to_owned(),
                parameter if parameter.starts_with('{') => "matrix-missing".to_owned(),
                literal => literal.to_owned(),
            };
            path.push_str(&value);
        }
        if let (true, Some(query)) = (self.bad_query, &self.invalid_query) {
            path.push('?');
            path.push_str(query);
        }
        path
    }
}

/// Every (method, path) of the document, and whether it takes a body.
fn operations(document: &Value) -> anyhow::Result<Vec<Operation>> {
    let paths = document["paths"]
        .as_object()
        .ok_or_else(|| anyhow!("the document has no paths"))?;
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (name, method) in [
            ("get", Method::GET),
            ("put", Method::PUT),
            ("post", Method::POST),
            ("delete", Method::DELETE),
            ("patch", Method::PATCH),
            ("head", Method::HEAD),
            ("options", Method::OPTIONS),
            ("trace", Method::TRACE),
        ] {
            if let Some(operation) = item.get(name) {
                operations.push(Operation {
                    method,
                    path: path.clone(),
                    has_body: operation.get("requestBody").is_some(),
                    content_type: operation
                        .pointer("/requestBody/content")
                        .and_then(Value::as_object)
                        .and_then(|content| content.keys().next().cloned()),
                    invalid_query: invalid_query(operation),
                    bad_query: false,
                });
            }
        }
    }
    Ok(operations)
}

/// A query string that the operation's query parameters refuse, if it has any.
fn invalid_query(operation: &Value) -> Option<String> {
    let parameters = operation["parameters"].as_array()?;
    let mut query = vec!["matrix-unknown=1".to_owned()];
    let mut any = false;
    for parameter in parameters.iter().filter(|p| p["in"] == "query") {
        any = true;
        let kind = parameter
            .pointer("/schema/type")
            .map(|kind| match kind {
                Value::Array(kinds) => kinds.first().cloned().unwrap_or(Value::Null),
                kind => kind.clone(),
            })
            .unwrap_or(Value::Null);
        if matches!(kind.as_str(), Some("integer" | "number" | "boolean")) {
            let name = parameter["name"].as_str().unwrap_or_default();
            query.push(format!("{name}=matrix-not-a-number"));
        }
    }
    any.then(|| query.join("&"))
}

fn read_rules() -> anyhow::Result<BTreeMap<String, Level>> {
    let text =
        std::fs::read_to_string(RULES_FILE).with_context(|| format!("reading {RULES_FILE}"))?;
    let file: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {RULES_FILE}"))?;
    let rules = file["rules"]
        .as_object()
        .ok_or_else(|| anyhow!("{RULES_FILE} has no `rules` object"))?;
    rules
        .iter()
        .map(|(key, level)| {
            let level = level
                .as_str()
                .ok_or_else(|| anyhow!("the rule of {key} is not a string"))
                .and_then(Level::parse)
                .with_context(|| format!("rule of {key}"))?;
            Ok((key.clone(), level))
        })
        .collect()
}

/// The role → operations table of `docs/security.md`, between its markers.
fn render_table(rules: &BTreeMap<String, Level>) -> String {
    let mut table = String::from("| least role | who passes | operations |\n|---|---|---|\n");
    for level in Level::ALL {
        let mut keys: Vec<&String> = rules
            .iter()
            .filter(|(_, rule)| **rule == level)
            .map(|(key, _)| key)
            .collect();
        // By path, then method: the operations on one resource stand together.
        keys.sort_by_key(|key| key.split_once(' ').map(|(method, path)| (path, method)));
        let operations: Vec<String> = keys.iter().map(|key| format!("`{key}`")).collect();
        if operations.is_empty() {
            continue;
        }
        let _ = writeln!(
            table,
            "| `{}` | {} | {} |",
            level.name(),
            level.who(),
            operations.join(", ")
        );
    }
    table
}

#[test]
fn the_security_guide_shows_the_rules_file() -> anyhow::Result<()> {
    let rules = read_rules()?;
    let doc = std::fs::read_to_string(SECURITY_DOC)?;
    let expected = render_table(&rules);
    let section = doc
        .split_once(TABLE_BEGIN)
        .and_then(|(_, rest)| rest.split_once(TABLE_END))
        .map(|(inside, _)| inside.trim_start_matches('\n'))
        .ok_or_else(|| {
            anyhow!("docs/security.md has no `{TABLE_BEGIN}` … `{TABLE_END}` section")
        })?;
    assert!(
        section == expected,
        "docs/security.md's role table differs from {RULES_FILE}; put this between its markers:\n\n{expected}"
    );
    Ok(())
}

/// Re-signs `claims` with the PKCS#8 Ed25519 key `key_pem` under `kid`.
fn forge(claims: &Value, key_pem: &str, kid: &str) -> anyhow::Result<String> {
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(serde_json::to_vec(&header)?),
        b64.encode(serde_json::to_vec(claims)?)
    );
    let der: rustls_pki_types::PrivatePkcs8KeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(key_pem.as_bytes())?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| anyhow!("{e}"))?;
    let signature = pair.sign(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        b64.encode(signature.as_ref())
    ))
}

fn string_at(value: &Value, pointer: &str) -> anyhow::Result<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {pointer} in {value}"))
}

async fn create_user(server: &TestServer, name: &str, role: &str) -> anyhow::Result<String> {
    let created = server
        .post("/api/v1/users", json!({"name": name, "roles": [role]}))
        .await?;
    string_at(&created, "/token")
}

async fn access_token(
    server: &TestServer,
    client: &str,
    secret: &str,
    scope: &str,
) -> anyhow::Result<String> {
    let response = server
        .client()
        .post(format!("{}/oauth/token", server.api_url()))
        .basic_auth(client, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("token request for {scope} answered {status}: {body}");
    }
    string_at(&body, "/access_token")
}

/// Every principal of the matrix, made on `server`.
async fn principals(server: &TestServer) -> anyhow::Result<Vec<Principal>> {
    let bearer = |token: &str| Some(format!("Bearer {token}"));
    let user = |label, token: &str, roles: Vec<Level>| Principal {
        label,
        authorization: bearer(token),
        identity: Some((roles, true)),
        tenant: None,
    };
    let refused = |label, authorization| Principal {
        label,
        authorization,
        identity: None,
        tenant: None,
    };
    let viewer = create_user(server, "matrix-viewer", "viewer").await?;
    let operator = create_user(server, "matrix-operator", "operator").await?;
    let approver = create_user(server, "matrix-approver", "approver").await?;
    let admin = create_user(server, "matrix-admin", "admin").await?;
    // An admin of tenant `matrix-b` (a viewer in `default`), calling into `matrix-b`,
    // and into `matrix-c` where it holds nothing.
    let tenant_admin = create_user(server, "matrix-tenant-admin", "viewer").await?;
    for tenant in ["matrix-b", "matrix-c"] {
        server
            .post("/api/v1/tenants", json!({ "name": tenant }))
            .await?;
    }
    server
        .post(
            "/api/v1/users/matrix-tenant-admin/bindings",
            json!({"tenant": "matrix-b", "role": "admin"}),
        )
        .await?;

    // An admin's tokens that no longer work: the strongest credentials to refuse.
    let expiring = server
        .post(
            "/api/v1/users/matrix-admin/tokens",
            json!({"name": "expiring", "expires_in_seconds": 1}),
        )
        .await?;
    let expired = string_at(&expiring, "/token")?;
    let revocable = server
        .post(
            "/api/v1/users/matrix-admin/tokens",
            json!({"name": "revoked"}),
        )
        .await?;
    let revoked = string_at(&revocable, "/token")?;
    let revoked_id = string_at(&revocable, "/id")?;
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{revoked_id}"),
            None,
        )
        .await?;
    anyhow::ensure!(status == 200, "revoking {revoked_id}: {status} {body}");

    let client = server
        .post(
            "/api/v1/clients",
            json!({"name": "matrix-client", "scopes": [
                "stella.viewer", "stella.operator", "stella.approver", "stella.admin",
                "taskrunner.admin"
            ]}),
        )
        .await?;
    let secret = string_at(&client, "/client_secret")?;
    let jwt = |scope| access_token(server, "matrix-client", &secret, scope);
    let jwt_viewer = jwt("stella.viewer").await?;
    let jwt_operator = jwt("stella.operator").await?;
    let jwt_approver = jwt("stella.approver").await?;
    let jwt_admin = jwt("stella.admin").await?;
    let jwt_taskrunner = jwt("taskrunner.admin").await?;

    // The admin access token's claims, signed by a key the server does not know, and
    // expired under the server's own key.
    let payload = jwt_admin.split('.').nth(1).unwrap_or_default();
    let mut claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let jwks: Value = server
        .client()
        .get(format!("{}/.well-known/jwks.json", server.api_url()))
        .send()
        .await?
        .json()
        .await?;
    let kid = string_at(&jwks, "/keys/0/kid")?;
    let other_key = stella_pki::generate_ed25519_pkcs8_pem()?;
    let jwt_foreign = forge(&claims, &other_key, &kid)?;
    let own_key = std::fs::read_to_string(server.config.data_dir.join("pki").join("oauth.key"))?;
    let now = claims["iat"].as_i64().unwrap_or_default();
    claims["exp"] = json!(now - 120);
    claims["iat"] = json!(now - 1000);
    claims["nbf"] = json!(now - 1000);
    let jwt_expired = forge(&claims, &own_key, &kid)?;

    wait_until(
        "the 1 s token has expired",
        Duration::from_secs(10),
        || async {
            let (status, _) = server
                .request(Method::GET, "/api/v1/whoami", Some(&expired), None)
                .await
                .ok()?;
            (status == 401).then_some(())
        },
    )
    .await?;

    Ok(vec![
        refused("none", None),
        refused("malformed", Some("Basic bWF0cml4OnNlY3JldA==".to_owned())),
        refused(
            "unknown",
            bearer("stk1_matrixUnknownTokenThatWasNeverIssued"),
        ),
        refused("expired", bearer(&expired)),
        refused("revoked", bearer(&revoked)),
        user("viewer", &viewer, vec![Level::Viewer]),
        user("operator", &operator, vec![Level::Operator]),
        user("approver", &approver, vec![Level::Approver]),
        user("admin", &admin, vec![Level::Admin]),
        Principal {
            label: "tenant:admin",
            authorization: bearer(&tenant_admin),
            identity: Some((vec![Level::Admin], true)),
            tenant: Some(("matrix-b", true)),
        },
        Principal {
            label: "tenant:other",
            authorization: bearer(&tenant_admin),
            identity: Some((vec![Level::Admin], true)),
            tenant: Some(("matrix-c", false)),
        },
        Principal {
            label: "jwt:viewer",
            authorization: bearer(&jwt_viewer),
            identity: Some((vec![Level::Viewer], false)),
            tenant: None,
        },
        Principal {
            label: "jwt:operator",
            authorization: bearer(&jwt_operator),
            identity: Some((vec![Level::Operator], false)),
            tenant: None,
        },
        Principal {
            label: "jwt:approver",
            authorization: bearer(&jwt_approver),
            identity: Some((vec![Level::Approver], false)),
            tenant: None,
        },
        Principal {
            label: "jwt:admin",
            authorization: bearer(&jwt_admin),
            identity: Some((vec![Level::Admin], false)),
            tenant: None,
        },
        Principal {
            label: "jwt:taskrunner",
            authorization: bearer(&jwt_taskrunner),
            identity: Some((vec![], false)),
            tenant: None,
        },
        refused("jwt:foreign", bearer(&jwt_foreign)),
        refused("jwt:expired", bearer(&jwt_expired)),
    ])
}

/// One cell: what came back.
#[derive(Debug)]
struct Cell {
    status: u16,
    body: Value,
}

async fn send(
    server: &TestServer,
    operation: &Operation,
    principal: &Principal,
) -> anyhow::Result<Cell> {
    let url = format!("{}{}", server.api_url(), operation.concrete_path());
    let mut request = server.client().request(operation.method.clone(), url);
    if let Some(authorization) = &principal.authorization {
        request = request.header("authorization", authorization);
    }
    if let Some((tenant, _)) = principal.tenant {
        request = request.header("x-stellaops-tenant", tenant);
    }
    if operation.has_body {
        request = request.json(&json!({}));
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{} as {}", operation.label(), principal.label))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Cell { status, body })
}

/// Why a cell is wrong, if it is.
fn judge(expected: Outcome, cell: &Cell) -> Option<String> {
    let code = cell.body.pointer("/error/code").and_then(Value::as_str);
    let has_trace = cell
        .body
        .pointer("/error/traceId")
        .and_then(Value::as_str)
        .is_some_and(|id| !id.is_empty());
    match (expected, cell.status) {
        (Outcome::Unauthenticated, 401) if code == Some("unauthenticated") && has_trace => None,
        (Outcome::Forbidden, 403) if code.is_some() && has_trace => None,
        (Outcome::Unauthenticated | Outcome::Forbidden, 401 | 403) => Some(format!(
            "{} without the error envelope: {}",
            cell.status, cell.body
        )),
        (Outcome::Unauthenticated, status) => {
            Some(format!("expected 401, got {status}: {}", cell.body))
        }
        (Outcome::Forbidden, status) => Some(format!("expected 403, got {status}: {}", cell.body)),
        (Outcome::Allowed, status @ (401 | 403 | 500..)) => Some(format!(
            "expected authorisation to pass, got {status}: {}",
            cell.body
        )),
        (Outcome::Allowed, _) => None,
    }
}

fn render_matrix(
    operations: &[(Operation, Level)],
    principals: &[Principal],
    cells: &BTreeMap<(usize, usize), Cell>,
    wrong: &BTreeSet<(usize, usize)>,
) -> String {
    let width = operations
        .iter()
        .map(|(operation, _)| operation.label().len())
        .max()
        .unwrap_or(0);
    let mut text = format!("{:width$} {:13}", "operation", "rule");
    for principal in principals {
        let _ = write!(text, " {:>14}", principal.label);
    }
    text.push('\n');
    for (row, (operation, level)) in operations.iter().enumerate() {
        let _ = write!(text, "{:width$} {:13}", operation.label(), level.name());
        for column in 0..principals.len() {
            let status = cells
                .get(&(row, column))
                .map_or_else(|| "-".to_owned(), |cell| cell.status.to_string());
            let mark = if wrong.contains(&(row, column)) {
                "!"
            } else {
                " "
            };
            let _ = write!(text, " {:>13}{mark}", status);
        }
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_every_principal_as_its_rule_says() -> anyhow::Result<()> {
    // The matrix sends hundreds of token requests from one address: the abuse limits
    // have their own tests (oauth.rs), and a 429 would hide an authorisation answer.
    let server = TestServer::start_with(|config| {
        config.auth_rate_limit_burst = 100_000;
        config.auth_rate_limit_per_minute = 100_000;
    })
    .await?;
    let started = std::time::Instant::now();
    let document = server.get("/api/v1/openapi.json").await?;
    let rules = read_rules()?;

    let operations = operations(&document)?;
    let keys: BTreeSet<String> = operations.iter().map(Operation::key).collect();
    let mut problems: Vec<String> = operations
        .iter()
        .filter(|operation| !rules.contains_key(&operation.key()))
        .map(|operation| format!("add a rule for {} to {RULES_FILE}", operation.key()))
        .collect();
    problems.extend(rules.keys().filter(|key| !keys.contains(*key)).map(|key| {
        format!("{key} is no longer in the OpenAPI document: remove its rule from {RULES_FILE}")
    }));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let operations: Vec<(Operation, Level)> = operations
        .into_iter()
        .filter_map(|operation| {
            let level = *rules.get(&operation.key())?;
            Some((operation, level))
        })
        .flat_map(|(operation, level)| {
            let bad_query = operation.invalid_query.is_some().then(|| Operation {
                bad_query: true,
                ..operation.clone()
            });
            std::iter::once((operation, level)).chain(bad_query.map(|bad| (bad, level)))
        })
        .collect();

    let principals = principals(&server).await?;
    let jobs = (0..operations.len())
        .flat_map(|row| (0..principals.len()).map(move |column| (row, column)));
    let results: Vec<((usize, usize), anyhow::Result<Cell>)> = futures::stream::iter(jobs)
        .map(|(row, column)| {
            let server = &server;
            let operation = &operations[row].0;
            let principal = &principals[column];
            async move { ((row, column), send(server, operation, principal).await) }
        })
        .buffer_unordered(PARALLELISM)
        .collect()
        .await;

    let mut cells = BTreeMap::new();
    let mut wrong = BTreeSet::new();
    let mut failures = Vec::new();
    for ((row, column), result) in results {
        let (operation, level) = &operations[row];
        let principal = &principals[column];
        let cell = result?;
        if let Some(problem) = judge(principal.expected(*level), &cell) {
            wrong.insert((row, column));
            failures.push(format!(
                "{} (rule {}) as {}: {problem}",
                operation.label(),
                level.name(),
                principal.label
            ));
        }
        cells.insert((row, column), cell);
    }
    failures.sort();
    let elapsed = started.elapsed();
    eprintln!(
        "authorisation matrix: {} operations × {} principals in {elapsed:?}",
        operations.len(),
        principals.len()
    );
    assert!(
        failures.is_empty(),
        "{} cells are wrong:\n{}\n\nThe matrix (! marks a wrong cell):\n{}",
        failures.len(),
        failures.join("\n"),
        render_matrix(&operations, &principals, &cells, &wrong)
    );
    Ok(())
}

/// Sends `head` (a request declaring a body it never sends) and reads the answer until
/// the server closes the connection: (status, JSON body or Null).
async fn declared_only(server: &TestServer, head: &str) -> anyhow::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(server.config.api_listen).await?;
    stream.write_all(head.as_bytes()).await?;
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .context("the server kept the connection open")?
        .ok();
    let raw = String::from_utf8_lossy(&received);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("no status line in {raw:?}"))?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Body limits are the listener's and the extractors', not TLS's: a plain server lets
/// the test declare 10 MB and send none of it (a client that sent them all would see
/// its connection closed under it).
#[tokio::test]
async fn every_operation_with_a_body_refuses_10_mb_with_413() -> anyhow::Result<()> {
    let server = TestServer::start_plain().await?;
    let document = server.get("/api/v1/openapi.json").await?;
    let operations: Vec<Operation> = operations(&document)?
        .into_iter()
        .filter(|operation| operation.has_body)
        .collect();
    anyhow::ensure!(!operations.is_empty(), "no operation takes a body");
    let mut failures = Vec::new();
    for operation in &operations {
        let content_type = operation
            .content_type
            .as_deref()
            .unwrap_or("application/json");
        // Larger than every limit: `api_max_body_bytes` (1 MiB), `api_max_scan_bytes`
        // (8 MiB) and the token endpoint's 16 KiB.
        let head = format!(
            "{} {} HTTP/1.1\r\nhost: stella\r\nauthorization: Bearer {}\r\n\
             content-type: {content_type}\r\ncontent-length: 10000000\r\n\r\n",
            operation.method,
            operation.concrete_path(),
            server.admin_token
        );
        let (status, body) = declared_only(&server, &head)
            .await
            .with_context(|| operation.key())?;
        // The token endpoint answers in RFC 6749's shape, not the envelope.
        let refused = status == 413
            && (operation.path.starts_with("/oauth/")
                || body.pointer("/error/code").and_then(Value::as_str)
                    == Some("payload_too_large"));
        if !refused {
            failures.push(format!("{}: {status} {body}", operation.key()));
        }
    }
    assert!(
        failures.is_empty(),
        "these operations did not refuse a 10 MB body with 413 and the envelope:\n{}",
        failures.join("\n")
    );
    Ok(())
}
