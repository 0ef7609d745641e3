//! The store suite: every case runs on SQLite (a temp file) and on PostgreSQL (a fresh
//! database in the private test cluster), as `<concern>::sqlite::<case>` and `<concern>::postgres::<case>`;
//! the cases live in one module per concern, the fixture and shared builders here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection};
use stella_control_plane::domain::{
    AgentState, Component, DeliveryAttempt, DeliveryState, Deployment, DeploymentKind,
    DeploymentState, Digest, DriftKind, DriftMode, DriftRecord, Environment, HelloRecord,
    HostFacts, JoinTokenRefusal, NewAgent, NewDelivery, NewJoinToken, Registry, Release, Role,
    Target, TargetKind, Task, TaskKind, TaskState, User, Variable, VariableKind, Webhook,
    WebhookDelivery,
};
use stella_control_plane::store::{
    Backend, DesiredPayload, ResultOutcome, Store, StoreError, TaskResultRecord,
};
use stella_tests::TestDir;

/// Generates `sqlite::<case>` and `postgres::<case>` for each `async fn <case>(&Fixture)`.
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = crate::Fixture::sqlite().await;
                    super::$case(&fixture).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = crate::Fixture::postgres().await;
                    super::$case(&fixture).await;
                }
            )*
        }
    };
}

mod agents;
mod audit_and_scans;
mod catalogue;
mod changes;
mod delivery;
mod deployments;
mod log_order;
mod promotions;
mod routers;
mod settle;
mod users;
mod webhooks;

/// A store on a fresh database, and how to reach that database again.
struct Fixture {
    store: Store,
    url: String,
    /// Holds the SQLite file; kept and printed if the test fails.
    dir: Option<TestDir>,
}

impl Fixture {
    async fn sqlite() -> Fixture {
        let dir = TestDir::new("store");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("stella.db").display()
        );
        let store = connect(&url).await;
        assert_eq!(store.backend(), Backend::Sqlite);
        Fixture {
            store,
            url,
            dir: Some(dir),
        }
    }

    async fn postgres() -> Fixture {
        let url = stella_tests::postgres::fresh_database_url()
            .await
            .unwrap_or_else(|error| panic!("test postgresql: {error:#}"));
        let store = connect(&url).await;
        assert_eq!(store.backend(), Backend::Postgres);
        Fixture {
            store,
            url,
            dir: None,
        }
    }

    /// A URL to another empty database of the same backend, for a case that must start
    /// from an older schema: a second file beside the first, or a fresh PostgreSQL
    /// database. Nothing is migrated there.
    async fn other_database_url(&self) -> String {
        match &self.dir {
            Some(dir) => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("other.db").display()
            ),
            None => stella_tests::postgres::fresh_database_url()
                .await
                .unwrap_or_else(|error| panic!("test postgresql: {error:#}")),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("store test failed on {}", self.url);
        }
    }
}

async fn connect(url: &str) -> Store {
    Store::connect(url)
        .await
        .unwrap_or_else(|error| panic!("connecting to {url}: {}", chain(&error)))
}

/// An error and its sources, for assertion messages.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Unwraps a store result, printing the whole error chain on failure.
trait Expect<T> {
    fn ok_or_panic(self, what: &str) -> T;
}

impl<T> Expect<T> for Result<T, StoreError> {
    fn ok_or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|error| panic!("{what}: {}", chain(&error)))
    }
}

const NOW: i64 = 1_750_000_000_000;
const HOUR_MS: i64 = 3_600_000;

fn token(hash: &str, expires_at_ms: i64) -> NewJoinToken {
    NewJoinToken {
        hash: hash.to_owned(),
        created_by: "admin-user-id".to_owned(),
        created_at_ms: NOW - HOUR_MS,
        expires_at_ms,
    }
}

fn new_agent(id: &str, name: &str) -> NewAgent {
    NewAgent {
        id: id.to_owned(),
        name: name.to_owned(),
        labels: BTreeMap::from([("zone".to_owned(), "eu-1".to_owned())]),
        cert_serial: format!("serial-{id}"),
        cert_not_after_ms: NOW + 24 * HOUR_MS,
        enrolled_at_ms: NOW,
    }
}

fn hello(at_ms: i64) -> HelloRecord {
    HelloRecord {
        agent_version: "0.1.0".to_owned(),
        capabilities: vec!["docker".to_owned(), "compose".to_owned()],
        labels: BTreeMap::from([
            ("zone".to_owned(), "eu-2".to_owned()),
            ("tier".to_owned(), "web".to_owned()),
        ]),
        host: HostFacts {
            hostname: "web-1.example".to_owned(),
            os_name: "Debian GNU/Linux".to_owned(),
            os_version: "12".to_owned(),
            kernel_version: "6.1.0-18-amd64".to_owned(),
            arch: "x86_64".to_owned(),
            cpu_count: 8,
            // Above i64::MAX would not fit a BIGINT column; JSON keeps the full u64.
            memory_total_bytes: u64::MAX,
            boot_time_unix_seconds: 1_700_000_000,
        },
        at_ms,
    }
}

/// Enrols `name` with a fresh valid token, which must succeed.
async fn enrol(store: &Store, id: &str, name: &str) {
    let hash = format!("token-for-{id}");
    store
        .insert_join_token(&token(&hash, NOW + HOUR_MS))
        .await
        .ok_or_panic("inserting a join token");
    let outcome = store
        .enroll_agent(&hash, NOW, &new_agent(id, name))
        .await
        .ok_or_panic("enrolling");
    assert_eq!(outcome, Ok(()), "enrolling {name}");
}

// Compile-time check: every store future can cross threads (axum and tonic need it).
fn _store_futures_are_send(store: &Store) {
    fn send<T: Send>(_: T) {}
    send(store.ping());
    send(store.insert_join_token(&token("h", 0)));
    send(store.enroll_agent("h", 0, &new_agent("a", "a")));
    send(store.get_agent("a"));
    send(store.find_agent("a"));
    send(store.list_agents());
    send(store.record_hello("a", &hello(0)));
    send(store.touch_agents(&[]));
    send(store.update_agent_certificate("a", "s", 0));
    send(store.revoke_agent("a", 0, "r"));
    send(store.revoked_agent_ids());
    send(store.list_users());
    send(store.find_user("u"));
    send(store.insert_api_token("h", "u", 0));
    send(store.user_for_token("h"));
    send(store.count_users());
}

// --- Delivery: environments, targets, registries, releases, deployments, logs, drift ---

// Compile-time check, as above, for the delivery methods.
fn _delivery_store_futures_are_send(store: &Store) {
    fn send<T: Send>(_: T) {}
    let env = environment("e", None, NOW);
    send(store.create_environment(&env));
    send(store.get_environment("e"));
    send(store.list_environments());
    send(store.update_environment(&env));
    let t = target("t", "e", "a");
    send(store.create_target(&t));
    send(store.get_target("t"));
    send(store.list_targets(Some("e")));
    send(store.targets_for_agent("a"));
    let r = registry("h", None);
    send(store.upsert_registry(&r));
    send(store.get_registry("h"));
    send(store.list_registries());
    let rel = release("r", "1", 'a', NOW);
    send(store.create_release(&rel));
    send(store.get_release("r", "1"));
    send(store.list_releases(None));
    let d = deployment("d", "e", "1", NOW);
    let tasks = [task("k", "d", "t", "a", 0, "{}")];
    send(store.create_deployment(&d, &tasks));
    send(store.get_deployment("d"));
    send(store.list_deployments(None, 1));
    send(store.active_deployment("e"));
    send(store.succeeded_deployments("e", 1));
    send(store.tasks_of_deployment("d"));
    send(store.get_task("k"));
    send(store.claim_tasks_for_agent("a", 0));
    send(store.complete_task("k", 1, TaskState::Succeeded, "", 0));
    send(store.expire_tasks(0, |_| "deadline passed".to_owned()));
    send(store.desired_payloads_for_agent("a"));
    send(store.latest_succeeded_task("t"));
    send(store.append_log("d", "k", None, 0, "m"));
    send(store.logs_after("d", 0, 1));
    let drift = drift_record("t", "c", DriftKind::Missing, NOW);
    send(store.upsert_drift(&drift));
    send(store.resolve_drift("t", 0));
    send(store.resolve_drift_finding("t", "c", DriftKind::Missing, 0));
    send(store.list_drift(None, false));
    // Delivery hardening.
    send(store.find_deployment("d"));
    send(store.cancel_deployment("d", "m", 0));
    send(store.cancelled_tasks_since(0));
    send(store.open_tasks_created_before(0));
    send(store.succeeded_deployment_of_version("e", "1"));
    send(store.agents_with_expired_tasks(0));
    send(store.delete_environment("e", false));
    let v = variable("e", VariableKind::Var, "V", "x", "u", 0);
    send(store.set_variable(&v));
    send(store.list_variables("e"));
    send(store.delete_variable("e", VariableKind::Var, "V"));
    send(store.update_target(&t));
    send(store.delete_target("t", 0));
    send(store.change_user("u", None));
    send(store.record_goodbye("a", 0));
    send(store.delete_revoked_agent("a", 0));
    send(store.delete_registry("h"));
    // Webhooks and events.
    let hook = webhook("w", &["*"], 0);
    send(store.create_webhook(&hook));
    send(store.list_webhooks());
    send(store.get_webhook("w"));
    send(store.delete_webhook("w"));
    send(store.enqueue_deliveries(&[]));
    send(store.claim_deliveries(0, 0, 1));
    send(store.record_delivery_attempt(
        "d",
        0,
        &DeliveryAttempt::GiveUp {
            status: None,
            error: String::new(),
        },
    ));
    send(store.release_deliveries(&[]));
    send(store.list_deliveries("w", 1));
    send(store.mark_unreachable_agents(0, 0, 0));
}

const TASK_DEADLINE_MS: i64 = 10 * 60_000;

fn environment(name: &str, after: Option<&str>, created_at_ms: i64) -> Environment {
    Environment {
        name: name.to_owned(),
        after: after.map(str::to_owned),
        drift_mode: DriftMode::Report,
        deployment_timeout_seconds: None,
        gates: Default::default(),
        created_at_ms,
    }
}

fn target(name: &str, environment: &str, agent_id: &str) -> Target {
    Target {
        name: name.to_owned(),
        environment: environment.to_owned(),
        kind: TargetKind::Docker,
        agent_id: agent_id.to_owned(),
        settings: BTreeMap::from([
            ("ports".to_owned(), "8080:80".to_owned()),
            ("env.MODE".to_owned(), "prod".to_owned()),
        ]),
        created_at_ms: NOW,
    }
}

fn registry(host: &str, password_sealed: Option<&str>) -> Registry {
    Registry {
        host: host.to_owned(),
        insecure: false,
        username: password_sealed.map(|_| "robot".to_owned()),
        password_sealed: password_sealed.map(str::to_owned),
        updated_at_ms: NOW,
    }
}

/// A release of one component whose digest is `fill` repeated.
fn release(name: &str, version: &str, fill: char, created_at_ms: i64) -> Release {
    let digest = Digest::parse(&format!("sha256:{}", fill.to_string().repeat(64)))
        .unwrap_or_else(|e| panic!("digest: {e}"));
    Release {
        name: name.to_owned(),
        version: version.to_owned(),
        components: vec![Component {
            name: "web".to_owned(),
            source: "registry.example.com/team/web:v1".to_owned(),
            image: format!("registry.example.com/team/web@{digest}"),
            digest,
        }],
        created_by: "user-alice".to_owned(),
        created_at_ms,
    }
}

/// A pending promotion of `app@version` to `environment`.
fn deployment(id: &str, environment: &str, version: &str, created_at_ms: i64) -> Deployment {
    Deployment {
        id: id.to_owned(),
        kind: DeploymentKind::Promotion,
        environment: environment.to_owned(),
        release: "app".to_owned(),
        version: version.to_owned(),
        decision_id: format!("sha256:decision-{id}"),
        generation: 0,
        state: DeploymentState::Pending,
        message: None,
        created_by: "user-alice".to_owned(),
        created_at_ms,
        finished_at_ms: None,
    }
}

/// A pending task created at `NOW + created_offset_ms`, due ten minutes after `NOW`.
fn task(
    id: &str,
    deployment_id: &str,
    target: &str,
    agent_id: &str,
    created_offset_ms: i64,
    payload_json: &str,
) -> Task {
    Task {
        id: id.to_owned(),
        deployment_id: deployment_id.to_owned(),
        target: target.to_owned(),
        agent_id: agent_id.to_owned(),
        kind: TaskKind::Deploy,
        epoch: 0,
        generation: 0,
        state: TaskState::Pending,
        payload_json: payload_json.to_owned(),
        message: None,
        deadline_at_ms: NOW + TASK_DEADLINE_MS,
        created_at_ms: NOW + created_offset_ms,
        finished_at_ms: None,
    }
}

fn drift_record(target: &str, component: &str, kind: DriftKind, seen_at_ms: i64) -> DriftRecord {
    DriftRecord {
        target: target.to_owned(),
        component: component.to_owned(),
        kind,
        detail: format!("{component} differs"),
        environment: "staging".to_owned(),
        agent_id: "agent-1".to_owned(),
        first_seen_at_ms: seen_at_ms,
        last_seen_at_ms: seen_at_ms,
        resolved_at_ms: None,
    }
}

/// Agents `agent-1` (targets `web-1`, `web-2` in `staging`) and `agent-2` (target `db-1` in
/// `production`), and releases `app@1.0`, `app@2.0` and `app@3.0`.
async fn delivery_fixture(store: &Store) {
    enrol(store, "agent-1", "host-1").await;
    enrol(store, "agent-2", "host-2").await;
    store
        .create_environment(&environment("staging", None, NOW))
        .await
        .ok_or_panic("staging");
    store
        .create_environment(&environment("production", Some("staging"), NOW + 1))
        .await
        .ok_or_panic("production");
    for (name, env, agent) in [
        ("web-1", "staging", "agent-1"),
        ("web-2", "staging", "agent-1"),
        ("db-1", "production", "agent-2"),
    ] {
        store
            .create_target(&target(name, env, agent))
            .await
            .ok_or_panic("create target");
    }
    for (i, (version, fill)) in [("1.0", 'a'), ("2.0", 'b'), ("3.0", 'c')]
        .into_iter()
        .enumerate()
    {
        store
            .create_release(&release("app", version, fill, NOW + i as i64))
            .await
            .ok_or_panic("create release");
    }
}

/// Creates deployment `id` of `app@version` to staging with one task per `(task id,
/// target)`, all for `agent-1`, created in the order given; returns its generation.
async fn deploy(
    store: &Store,
    id: &str,
    version: &str,
    created_at_ms: i64,
    tasks: &[(&str, &str)],
) -> i64 {
    let tasks: Vec<_> = tasks
        .iter()
        .map(|&(task_id, target)| (task_id, target, "agent-1"))
        .collect();
    deploy_to(store, "staging", id, version, created_at_ms, &tasks).await
}

/// Creates deployment `id` of `app@version` to `environment` with one task per `(task
/// id, target, agent)`, created in the order given; returns its generation.
async fn deploy_to(
    store: &Store,
    environment: &str,
    id: &str,
    version: &str,
    created_at_ms: i64,
    tasks: &[(&str, &str, &str)],
) -> i64 {
    let tasks: Vec<Task> = tasks
        .iter()
        .enumerate()
        .map(|(i, (task_id, target, agent_id))| {
            task(
                task_id,
                id,
                target,
                agent_id,
                created_at_ms - NOW + i as i64,
                &payload(version, target),
            )
        })
        .collect();
    store
        .create_deployment(&deployment(id, environment, version, created_at_ms), &tasks)
        .await
        .ok_or_panic("create deployment")
}

/// The payload [`deploy_to`] stores for a target.
fn payload(version: &str, target: &str) -> String {
    format!(r#"{{"version":"{version}","target":"{target}"}}"#)
}

/// Claims `agent-1`'s tasks and completes each listed one under its new epoch.
async fn claim_and_complete(store: &Store, results: &[(&str, TaskState, &str)], now_ms: i64) {
    claim_and_complete_for(store, "agent-1", results, now_ms).await;
}

/// Claims the agent's tasks and completes each listed one under its new epoch.
async fn claim_and_complete_for(
    store: &Store,
    agent_id: &str,
    results: &[(&str, TaskState, &str)],
    now_ms: i64,
) {
    let claimed = store
        .claim_tasks_for_agent(agent_id, now_ms)
        .await
        .ok_or_panic("claim");
    for (task_id, state, message) in results {
        let epoch = claimed
            .iter()
            .find(|t| t.id == *task_id)
            .unwrap_or_else(|| panic!("{task_id} not claimed: {claimed:?}"))
            .epoch;
        let done = store
            .complete_task(task_id, epoch, *state, message, now_ms)
            .await
            .ok_or_panic("complete");
        assert!(done.is_some(), "completing {task_id}");
    }
}

/// Why an agent did not finish its tasks, as [`Store::expire_tasks`] is told.
fn unanswered(agent_id: &str) -> String {
    format!("{agent_id} did not answer")
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, entity: &str, key: &str) {
    match result {
        Err(StoreError::NotFound { entity: e, key: k }) if e == entity && k == key => {}
        other => panic!("expected {entity} {key:?} not found, got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, entity: &str, key: &str) {
    match result {
        Err(StoreError::Conflict { entity: e, key: k }) if e == entity && k == key => {}
        other => panic!("expected a conflict on {entity} {key:?}, got {other:?}"),
    }
}

// --- Webhooks: the outbox and its leases; events' bookkeeping (outages, drift) ---

fn webhook(id: &str, events: &[&str], created_at_ms: i64) -> Webhook {
    Webhook {
        id: id.to_owned(),
        url: format!("https://hooks.example.com/{id}"),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        secret_sealed: format!("sealed-secret-of-{id}"),
        created_by: "admin".to_owned(),
        created_at_ms,
    }
}

fn new_delivery(id: &str, webhook_id: &str, created_at_ms: i64) -> NewDelivery {
    NewDelivery {
        id: id.to_owned(),
        webhook_id: webhook_id.to_owned(),
        event: "drift.detected".to_owned(),
        payload: format!("{{\"id\":\"{id}\"}}"),
        created_at_ms,
    }
}

fn ids(deliveries: &[WebhookDelivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.id.as_str()).collect()
}

// --- Delivery hardening: one active deployment, generations, cancel, updates, deletes ---

/// A variable (or sealed secret) of an environment.
fn variable(
    environment: &str,
    kind: VariableKind,
    name: &str,
    stored_value: &str,
    updated_by: &str,
    updated_at_ms: i64,
) -> Variable {
    Variable {
        environment: environment.to_owned(),
        kind,
        name: name.to_owned(),
        stored_value: stored_value.to_owned(),
        updated_by: updated_by.to_owned(),
        updated_at_ms,
    }
}

fn user(name: &str, roles: &[Role]) -> User {
    User {
        id: format!("user-{name}"),
        name: name.to_owned(),
        roles: roles.to_vec(),
        created_at_ms: NOW,
    }
}

/// Ids of the tasks, sorted (for results whose order the store does not define).
fn sorted_ids(tasks: &[Task]) -> Vec<&str> {
    let mut ids: Vec<_> = tasks.iter().map(|t| t.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// Rows as the 0002 schema held them: in staging, a finished deployment and two active
/// ones (the race 0003 closes let both in); in production, one active deployment created
/// at the same millisecond as staging's older one (the id breaks the tie).
const ROWS_BEFORE_0003: &str = "
INSERT INTO environments (name, after_environment, drift_mode, created_at_ms) VALUES
    ('staging', NULL, 'report', 1750000000000),
    ('production', 'staging', 'report', 1750000000001);
INSERT INTO releases (name, version, components_json, created_by, created_at_ms) VALUES
    ('app', '1.0', '[]', 'user-alice', 1750000000000),
    ('app', '2.0', '[]', 'user-alice', 1750000000000),
    ('app', '3.0', '[]', 'user-alice', 1750000000000);
INSERT INTO deployments (id, kind, environment, release_name, release_version, decision_id,
    state, message, created_by, created_at_ms, finished_at_ms) VALUES
    ('dep-done', 'promotion', 'staging', 'app', '1.0', 'sha256:d1', 'succeeded', NULL,
        'user-alice', 1750000000000, 1750000000500),
    ('dep-old', 'promotion', 'staging', 'app', '2.0', 'sha256:d2', 'running', NULL,
        'user-alice', 1750000001000, NULL),
    ('dep-new', 'promotion', 'staging', 'app', '3.0', 'sha256:d3', 'pending', NULL,
        'user-alice', 1750000002000, NULL),
    ('dep-prod', 'promotion', 'production', 'app', '1.0', 'sha256:d4', 'running', NULL,
        'user-alice', 1750000001000, NULL);
INSERT INTO tasks (id, deployment_id, target, agent_id, epoch, state, payload_json, message,
    deadline_at_ms, created_at_ms, finished_at_ms) VALUES
    ('t-done', 'dep-done', 'web-1', 'agent-1', 1, 'succeeded', '{\"v\":\"1.0\"}', 'ok',
        1750000600000, 1750000000000, 1750000000500),
    ('t-old-ok', 'dep-old', 'web-1', 'agent-1', 1, 'succeeded', '{\"v\":\"2.0\"}', 'ok',
        1750000601000, 1750000001000, 1750000001500),
    ('t-old-running', 'dep-old', 'web-2', 'agent-1', 1, 'assigned', '{\"v\":\"2.0\"}', NULL,
        1750000601000, 1750000001000, NULL),
    ('t-old-waiting', 'dep-old', 'web-3', 'agent-2', 0, 'pending', '{\"v\":\"2.0\"}', NULL,
        1750000601000, 1750000001000, NULL),
    ('t-new', 'dep-new', 'web-1', 'agent-1', 0, 'pending', '{\"v\":\"3.0\"}', NULL,
        1750000602000, 1750000002000, NULL),
    ('t-prod', 'dep-prod', 'db-1', 'agent-3', 1, 'assigned', '{\"v\":\"1.0\"}', NULL,
        1750000601000, 1750000001000, NULL);
";

/// Migrates the empty database at `url` to version 0002, as a release before the
/// hardening did, and stores [`ROWS_BEFORE_0003`].
async fn database_at_0002(url: &str, backend: Backend) {
    // The store embeds every migration; a migrator over a copy of the first two applies
    // just those, under the same versions and checksums.
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../control-plane/migrations")
        .join(backend.as_str());
    let before = TestDir::new("migrations-0002");
    for name in ["0001_foundation.sql", "0002_delivery.sql"] {
        std::fs::copy(migrations.join(name), before.path().join(name))
            .unwrap_or_else(|e| panic!("copying migration {name}: {e}"));
    }
    let migrator = Migrator::new(before.path())
        .await
        .unwrap_or_else(|e| panic!("reading migrations: {e}"));
    assert_eq!(
        migrator.iter().map(|m| m.version).collect::<Vec<_>>(),
        [1, 2]
    );
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    migrator
        .run(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("migrating {url} to 0002: {e}"));
    sqlx::raw_sql(ROWS_BEFORE_0003)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("storing rows at 0002: {e}"));
    conn.close()
        .await
        .unwrap_or_else(|e| panic!("closing {url}: {e}"));
}

fn scan_document(content: &str, kind: &str, at_ms: i64) -> stella_control_plane::domain::Document {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(content.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    stella_control_plane::domain::Document {
        id: format!("sha256:{hex}"),
        kind: kind.to_owned(),
        content: content.to_owned(),
        created_by: "alice".to_owned(),
        created_at_ms: at_ms,
    }
}
