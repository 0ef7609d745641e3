//! The store suite: every case runs on SQLite (a temp file) and on PostgreSQL (a fresh
//! database in the private test cluster), as `sqlite::<case>` and `postgres::<case>`.

use std::collections::BTreeMap;

use stella_control_plane::domain::{
    AgentState, Component, Deployment, DeploymentKind, DeploymentState, Digest, DriftKind,
    DriftMode, DriftRecord, Environment, HelloRecord, HostFacts, JoinTokenRefusal, NewAgent,
    NewJoinToken, Registry, Release, Role, Target, TargetKind, Task, TaskState, User,
};
use stella_control_plane::store::{Backend, Store, StoreError};
use stella_tests::TestDir;

/// Generates `sqlite::<case>` and `postgres::<case>` for each `async fn <case>(&Fixture)`.
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::Fixture::sqlite().await;
                    super::$case(&fixture).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::Fixture::postgres().await;
                    super::$case(&fixture).await;
                }
            )*
        }
    };
}

store_suite!(
    migrations_create_an_empty_store,
    enrolment_consumes_the_token_once,
    concurrent_enrolments_share_one_token,
    expired_token_is_refused_and_nothing_written,
    unknown_token_is_refused,
    duplicate_agent_name_conflicts_and_keeps_the_token,
    agents_are_found_by_id_or_name,
    hello_and_heartbeats_move_last_seen_forward,
    certificate_renewal_is_recorded,
    revocation_is_idempotent_and_listed,
    users_and_tokens_round_trip,
    data_survives_reconnecting,
    environments_round_trip_and_names_are_unique,
    targets_need_an_environment_and_an_agent,
    releases_are_immutable,
    registry_upsert_keeps_the_sealed_password_opaque,
    claims_raise_the_epoch_and_stale_results_are_discarded,
    deployment_state_follows_its_tasks,
    expired_tasks_fail_their_deployment,
    desired_payloads_pick_the_latest_succeeded_task,
    deployments_are_listed_newest_first,
    logs_after_paginates_in_order,
    drift_is_upserted_resolved_and_listed,
    a_drift_finding_is_resolved_on_its_own,
    concurrent_results_finish_the_deployment_once,
);

/// A store on a fresh database, and how to reach that database again.
struct Fixture {
    store: Store,
    url: String,
    /// Holds the SQLite file; kept and printed if the test fails.
    _dir: Option<TestDir>,
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
            _dir: Some(dir),
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
            _dir: None,
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

async fn migrations_create_an_empty_store(f: &Fixture) {
    let store = &f.store;
    store.ping().await.ok_or_panic("ping");
    assert!(store
        .list_agents()
        .await
        .ok_or_panic("list agents")
        .is_empty());
    assert!(store
        .list_users()
        .await
        .ok_or_panic("list users")
        .is_empty());
    assert_eq!(store.count_users().await.ok_or_panic("count"), 0);
    assert!(store
        .revoked_agent_ids()
        .await
        .ok_or_panic("revoked")
        .is_empty());
}

async fn enrolment_consumes_the_token_once(f: &Fixture) {
    let store = &f.store;
    store
        .insert_join_token(&token("once", NOW + HOUR_MS))
        .await
        .ok_or_panic("insert token");
    let first = store
        .enroll_agent("once", NOW, &new_agent("agent-1", "web-1"))
        .await
        .ok_or_panic("first enrolment");
    assert_eq!(first, Ok(()));

    let second = store
        .enroll_agent("once", NOW + 1, &new_agent("agent-2", "web-2"))
        .await
        .ok_or_panic("second enrolment");
    assert_eq!(second, Err(JoinTokenRefusal::AlreadyUsed));

    let agents = store.list_agents().await.ok_or_panic("list");
    assert_eq!(agents.len(), 1, "{agents:?}");
    let agent = &agents[0];
    assert_eq!(agent.id, "agent-1");
    assert_eq!(agent.name, "web-1");
    assert_eq!(agent.labels.get("zone").map(String::as_str), Some("eu-1"));
    assert!(agent.capabilities.is_empty());
    assert_eq!(agent.host, None);
    assert_eq!(agent.agent_version, None);
    assert_eq!(agent.cert_serial, "serial-agent-1");
    assert_eq!(agent.cert_not_after_ms, NOW + 24 * HOUR_MS);
    assert_eq!(agent.enrolled_at_ms, NOW);
    assert_eq!(agent.last_seen_at_ms, None);
    assert_eq!(agent.revoked_at_ms, None);
    assert_eq!(agent.state(NOW, 5_000), AgentState::Enrolled);
    // A token inserted twice is a conflict, not a second chance.
    let again = store.insert_join_token(&token("once", NOW + HOUR_MS)).await;
    assert!(
        matches!(
            again,
            Err(StoreError::Conflict {
                entity: "join token",
                ..
            })
        ),
        "{again:?}"
    );
}

async fn concurrent_enrolments_share_one_token(f: &Fixture) {
    const CONTENDERS: usize = 8;
    f.store
        .insert_join_token(&token("contested", NOW + HOUR_MS))
        .await
        .ok_or_panic("insert token");
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|i| {
            let store = f.store.clone();
            tokio::spawn(async move {
                store
                    .enroll_agent(
                        "contested",
                        NOW,
                        &new_agent(&format!("agent-{i}"), &format!("web-{i}")),
                    )
                    .await
            })
        })
        .collect();
    let mut enrolled = 0;
    for task in tasks {
        match task
            .await
            .unwrap_or_else(|e| panic!("task: {e}"))
            .ok_or_panic("enrolment")
        {
            Ok(()) => enrolled += 1,
            Err(refusal) => assert_eq!(refusal, JoinTokenRefusal::AlreadyUsed),
        }
    }
    assert_eq!(enrolled, 1);
    assert_eq!(f.store.list_agents().await.ok_or_panic("list").len(), 1);
}

async fn expired_token_is_refused_and_nothing_written(f: &Fixture) {
    let store = &f.store;
    store
        .insert_join_token(&token("stale", NOW - 1))
        .await
        .ok_or_panic("insert token");
    // Expiry is exclusive: a token expiring exactly now is expired.
    store
        .insert_join_token(&token("edge", NOW))
        .await
        .ok_or_panic("insert token");
    for hash in ["stale", "edge"] {
        let outcome = store
            .enroll_agent(hash, NOW, &new_agent("agent-1", "web-1"))
            .await
            .ok_or_panic("enrolment");
        assert_eq!(outcome, Err(JoinTokenRefusal::Expired), "{hash}");
    }
    assert!(store.list_agents().await.ok_or_panic("list").is_empty());
    // Still unused, so still expired rather than used.
    let outcome = store
        .enroll_agent("stale", NOW + 1, &new_agent("agent-1", "web-1"))
        .await
        .ok_or_panic("enrolment");
    assert_eq!(outcome, Err(JoinTokenRefusal::Expired));
}

async fn unknown_token_is_refused(f: &Fixture) {
    let outcome = f
        .store
        .enroll_agent("never-issued", NOW, &new_agent("agent-1", "web-1"))
        .await
        .ok_or_panic("enrolment");
    assert_eq!(outcome, Err(JoinTokenRefusal::Unknown));
    assert!(f.store.list_agents().await.ok_or_panic("list").is_empty());
}

async fn duplicate_agent_name_conflicts_and_keeps_the_token(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "web-1").await;
    store
        .insert_join_token(&token("second", NOW + HOUR_MS))
        .await
        .ok_or_panic("insert token");

    let taken = store
        .enroll_agent("second", NOW, &new_agent("agent-2", "web-1"))
        .await;
    match taken {
        Err(StoreError::Conflict { entity, key }) => {
            assert_eq!((entity, key.as_str()), ("agent", "web-1"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.list_agents().await.ok_or_panic("list").len(), 1);

    // The failed enrolment rolled back: the same token still enrols under a free name.
    let outcome = store
        .enroll_agent("second", NOW, &new_agent("agent-2", "web-2"))
        .await
        .ok_or_panic("retry");
    assert_eq!(outcome, Ok(()));
    let names: Vec<_> = store
        .list_agents()
        .await
        .ok_or_panic("list")
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);
}

async fn agents_are_found_by_id_or_name(f: &Fixture) {
    let store = &f.store;
    // Enrolled out of name order: the list is ordered by name.
    enrol(store, "id-b", "beta").await;
    enrol(store, "id-a", "alpha").await;
    // An agent whose name is another agent's id: the id wins.
    enrol(store, "id-c", "id-a").await;

    let names: Vec<_> = store
        .list_agents()
        .await
        .ok_or_panic("list")
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["alpha", "beta", "id-a"]);

    assert_eq!(
        store.get_agent("id-b").await.ok_or_panic("get").name,
        "beta"
    );
    assert_eq!(
        store.find_agent("id-b").await.ok_or_panic("by id").name,
        "beta"
    );
    assert_eq!(
        store.find_agent("beta").await.ok_or_panic("by name").id,
        "id-b"
    );
    assert_eq!(
        store.find_agent("id-a").await.ok_or_panic("id wins").name,
        "alpha"
    );

    for missing in [
        store.get_agent("beta").await,
        store.find_agent("gamma").await,
    ] {
        assert!(
            matches!(
                &missing,
                Err(StoreError::NotFound {
                    entity: "agent",
                    ..
                })
            ),
            "{missing:?}"
        );
    }
}

async fn hello_and_heartbeats_move_last_seen_forward(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "web-1").await;
    enrol(store, "agent-2", "web-2").await;

    let greeting = hello(NOW + 1_000);
    store
        .record_hello("agent-1", &greeting)
        .await
        .ok_or_panic("hello");
    let agent = store.get_agent("agent-1").await.ok_or_panic("get");
    assert_eq!(agent.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(agent.capabilities, ["docker", "compose"]);
    assert_eq!(
        agent.labels, greeting.labels,
        "hello labels replace enrolment labels"
    );
    assert_eq!(agent.host.as_ref(), Some(&greeting.host));
    assert_eq!(agent.last_seen_at_ms, Some(NOW + 1_000));
    assert_eq!(agent.state(NOW + 1_000, 5_000), AgentState::Connected);

    // One batch: the latest time per agent wins; unknown agents are ignored.
    store
        .touch_agents(&[
            ("agent-1".to_owned(), NOW + 5_000),
            ("agent-1".to_owned(), NOW + 9_000),
            ("agent-1".to_owned(), NOW + 7_000),
            ("agent-2".to_owned(), NOW + 2_000),
            ("gone".to_owned(), NOW + 2_000),
        ])
        .await
        .ok_or_panic("touch");
    let seen = |id: &'static str| async move {
        store.get_agent(id).await.ok_or_panic("get").last_seen_at_ms
    };
    assert_eq!(seen("agent-1").await, Some(NOW + 9_000));
    assert_eq!(seen("agent-2").await, Some(NOW + 2_000));

    // A late, older batch never moves last_seen backwards; nor does an older hello.
    store
        .touch_agents(&[("agent-1".to_owned(), NOW + 3_000)])
        .await
        .ok_or_panic("touch");
    store
        .record_hello("agent-1", &hello(NOW + 2_000))
        .await
        .ok_or_panic("hello");
    assert_eq!(seen("agent-1").await, Some(NOW + 9_000));
    store.touch_agents(&[]).await.ok_or_panic("empty touch");

    let agent = store.get_agent("agent-1").await.ok_or_panic("get");
    assert_eq!(
        agent.state(NOW + 9_000 + 15_000, 5_000),
        AgentState::Connected
    );
    assert_eq!(
        agent.state(NOW + 9_000 + 15_001, 5_000),
        AgentState::Unreachable
    );

    let missing = store.record_hello("nobody", &hello(NOW)).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
}

async fn certificate_renewal_is_recorded(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "web-1").await;
    store
        .update_agent_certificate("agent-1", "renewed-serial", NOW + 48 * HOUR_MS)
        .await
        .ok_or_panic("renew");
    let agent = store.get_agent("agent-1").await.ok_or_panic("get");
    assert_eq!(agent.cert_serial, "renewed-serial");
    assert_eq!(agent.cert_not_after_ms, NOW + 48 * HOUR_MS);
    let missing = store.update_agent_certificate("nobody", "s", NOW).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
}

async fn revocation_is_idempotent_and_listed(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-2", "web-2").await;
    enrol(store, "agent-1", "web-1").await;
    enrol(store, "agent-3", "web-3").await;

    assert!(store
        .revoke_agent("agent-2", NOW + 10, "key leaked")
        .await
        .ok_or_panic("revoke"));
    assert!(store
        .revoke_agent("agent-1", NOW + 20, "retired")
        .await
        .ok_or_panic("revoke"));
    // Again: not newly revoked, and the first time and reason stay.
    assert!(!store
        .revoke_agent("agent-2", NOW + 30, "again")
        .await
        .ok_or_panic("revoke again"));

    let agent = store.get_agent("agent-2").await.ok_or_panic("get");
    assert_eq!(agent.revoked_at_ms, Some(NOW + 10));
    assert_eq!(agent.revoke_reason.as_deref(), Some("key leaked"));
    assert_eq!(agent.state(NOW + 10, 5_000), AgentState::Revoked);

    assert_eq!(
        store.revoked_agent_ids().await.ok_or_panic("revoked ids"),
        ["agent-1", "agent-2"]
    );
    let missing = store.revoke_agent("nobody", NOW, "x").await;
    assert!(
        matches!(&missing, Err(StoreError::NotFound { entity: "agent", key }) if key == "nobody"),
        "{missing:?}"
    );
}

async fn users_and_tokens_round_trip(f: &Fixture) {
    let store = &f.store;
    let alice = User {
        id: "user-alice".to_owned(),
        name: "alice".to_owned(),
        roles: vec![Role::Operator, Role::Approver],
        created_at_ms: NOW,
    };
    let bob = User {
        id: "user-bob".to_owned(),
        name: "bob".to_owned(),
        roles: vec![],
        created_at_ms: NOW + 1,
    };
    // Created out of name order: listed by name.
    store.create_user(&bob).await.ok_or_panic("create bob");
    store.create_user(&alice).await.ok_or_panic("create alice");
    assert_eq!(store.count_users().await.ok_or_panic("count"), 2);
    assert_eq!(
        store.list_users().await.ok_or_panic("list"),
        [alice.clone(), bob.clone()]
    );
    assert_eq!(store.find_user("alice").await.ok_or_panic("find"), alice);
    let missing = store.find_user("carol").await;
    assert!(
        matches!(&missing, Err(StoreError::NotFound { entity: "user", .. })),
        "{missing:?}"
    );

    let duplicate = User {
        id: "user-alice-2".to_owned(),
        roles: vec![Role::Admin],
        ..alice.clone()
    };
    match store.create_user(&duplicate).await {
        Err(StoreError::Conflict { entity, key }) => {
            assert_eq!((entity, key.as_str()), ("user", "alice"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.count_users().await.ok_or_panic("count"), 2);

    store
        .insert_api_token("hash-a1", &alice.id, NOW)
        .await
        .ok_or_panic("token a1");
    store
        .insert_api_token("hash-a2", &alice.id, NOW)
        .await
        .ok_or_panic("token a2");
    store
        .insert_api_token("hash-b1", &bob.id, NOW)
        .await
        .ok_or_panic("token b1");
    let owner = |hash: &'static str| async move {
        store
            .user_for_token(hash)
            .await
            .ok_or_panic("user for token")
    };
    assert_eq!(owner("hash-a1").await, Some(alice.clone()));
    assert_eq!(owner("hash-a2").await, Some(alice.clone()));
    assert_eq!(owner("hash-b1").await, Some(bob.clone()));
    assert_eq!(owner("unknown").await, None);

    let reused = store.insert_api_token("hash-a1", &bob.id, NOW).await;
    assert!(
        matches!(
            reused,
            Err(StoreError::Conflict {
                entity: "api token",
                ..
            })
        ),
        "{reused:?}"
    );
    let orphan = store.insert_api_token("hash-x", "no-such-user", NOW).await;
    assert!(
        matches!(&orphan, Err(StoreError::NotFound { entity: "user", key }) if key == "no-such-user"),
        "{orphan:?}"
    );
}

async fn data_survives_reconnecting(f: &Fixture) {
    enrol(&f.store, "agent-1", "web-1").await;
    f.store
        .record_hello("agent-1", &hello(NOW + 1_000))
        .await
        .ok_or_panic("hello");
    f.store
        .revoke_agent("agent-1", NOW + 2_000, "moved")
        .await
        .ok_or_panic("revoke");
    let admin = User {
        id: "user-admin".to_owned(),
        name: "admin".to_owned(),
        roles: vec![Role::Admin],
        created_at_ms: NOW,
    };
    f.store.create_user(&admin).await.ok_or_panic("create user");
    f.store
        .insert_api_token("admin-hash", &admin.id, NOW)
        .await
        .ok_or_panic("token");
    let before = f.store.list_agents().await.ok_or_panic("list");
    f.store.close().await;

    // A new pool on the same file or database; migrations are already applied.
    let reopened = connect(&f.url).await;
    assert_eq!(reopened.list_agents().await.ok_or_panic("list"), before);
    assert_eq!(
        reopened
            .user_for_token("admin-hash")
            .await
            .ok_or_panic("token"),
        Some(admin)
    );
    assert_eq!(
        reopened.revoked_agent_ids().await.ok_or_panic("revoked"),
        ["agent-1"]
    );
    // The consumed token stays consumed.
    let outcome = reopened
        .enroll_agent("token-for-agent-1", NOW, &new_agent("agent-9", "web-9"))
        .await
        .ok_or_panic("enrolment");
    assert_eq!(outcome, Err(JoinTokenRefusal::AlreadyUsed));
    reopened.close().await;
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
}

const TASK_DEADLINE_MS: i64 = 10 * 60_000;

fn environment(name: &str, after: Option<&str>, created_at_ms: i64) -> Environment {
    Environment {
        name: name.to_owned(),
        after: after.map(str::to_owned),
        drift_mode: DriftMode::Report,
        deployment_timeout_seconds: None,
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
/// target)`, all for `agent-1`, created in the order given.
async fn deploy(
    store: &Store,
    id: &str,
    version: &str,
    created_at_ms: i64,
    tasks: &[(&str, &str)],
) {
    let tasks: Vec<Task> = tasks
        .iter()
        .enumerate()
        .map(|(i, (task_id, target))| {
            task(
                task_id,
                id,
                target,
                "agent-1",
                created_at_ms - NOW + i as i64,
                &format!(r#"{{"version":"{version}","target":"{target}"}}"#),
            )
        })
        .collect();
    store
        .create_deployment(&deployment(id, "staging", version, created_at_ms), &tasks)
        .await
        .ok_or_panic("create deployment");
}

/// Claims `agent-1`'s tasks and completes each listed one under its new epoch.
async fn claim_and_complete(store: &Store, results: &[(&str, TaskState, &str)], now_ms: i64) {
    let claimed = store
        .claim_tasks_for_agent("agent-1", now_ms)
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

async fn environments_round_trip_and_names_are_unique(f: &Fixture) {
    let store = &f.store;
    assert!(store
        .list_environments()
        .await
        .ok_or_panic("list")
        .is_empty());
    // Listed by creation time, then name.
    let production = environment("production", Some("staging"), NOW + 1);
    let staging = environment("staging", None, NOW);
    let qa = environment("qa", None, NOW);
    store
        .create_environment(&staging)
        .await
        .ok_or_panic("staging");
    store
        .create_environment(&production)
        .await
        .ok_or_panic("production");
    store.create_environment(&qa).await.ok_or_panic("qa");
    assert_eq!(
        store.list_environments().await.ok_or_panic("list"),
        [qa.clone(), staging.clone(), production.clone()]
    );
    assert_eq!(
        store.get_environment("production").await.ok_or_panic("get"),
        production
    );

    assert_conflict(
        store
            .create_environment(&environment("staging", Some("qa"), NOW + 5))
            .await,
        "environment",
        "staging",
    );
    assert_eq!(
        store.get_environment("staging").await.ok_or_panic("get"),
        staging,
        "the first one is kept"
    );
    assert_not_found(
        store
            .create_environment(&environment("canary", Some("nowhere"), NOW))
            .await,
        "environment",
        "nowhere",
    );

    // Update: `after` and drift mode change, the creation time does not.
    let updated = Environment {
        after: Some("qa".to_owned()),
        drift_mode: DriftMode::Remediate,
        created_at_ms: NOW + 999,
        ..production.clone()
    };
    store
        .update_environment(&updated)
        .await
        .ok_or_panic("update");
    let stored = store.get_environment("production").await.ok_or_panic("get");
    assert_eq!(
        stored,
        Environment {
            created_at_ms: production.created_at_ms,
            ..updated
        }
    );
    assert_not_found(
        store.get_environment("nowhere").await,
        "environment",
        "nowhere",
    );
    assert_not_found(
        store
            .update_environment(&environment("nowhere", None, NOW))
            .await,
        "environment",
        "nowhere",
    );
}

async fn targets_need_an_environment_and_an_agent(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "host-1").await;
    enrol(store, "agent-2", "host-2").await;
    assert_not_found(
        store
            .create_target(&target("web-1", "staging", "agent-1"))
            .await,
        "environment",
        "staging",
    );
    store
        .create_environment(&environment("staging", None, NOW))
        .await
        .ok_or_panic("staging");
    store
        .create_environment(&environment("production", None, NOW))
        .await
        .ok_or_panic("production");
    assert_not_found(
        store
            .create_target(&target("web-1", "staging", "agent-9"))
            .await,
        "agent",
        "agent-9",
    );

    let web_2 = target("web-2", "staging", "agent-1");
    let web_1 = Target {
        kind: TargetKind::Compose,
        settings: BTreeMap::from([("project".to_owned(), "shop".to_owned())]),
        ..target("web-1", "staging", "agent-1")
    };
    let db_1 = target("db-1", "production", "agent-2");
    for t in [&web_2, &web_1, &db_1] {
        store.create_target(t).await.ok_or_panic("create target");
    }
    assert_conflict(
        store
            .create_target(&target("web-1", "production", "agent-2"))
            .await,
        "target",
        "web-1",
    );

    assert_eq!(store.get_target("web-1").await.ok_or_panic("get"), web_1);
    assert_not_found(store.get_target("web-9").await, "target", "web-9");
    assert_eq!(
        store.list_targets(None).await.ok_or_panic("all"),
        [db_1.clone(), web_1.clone(), web_2.clone()]
    );
    assert_eq!(
        store
            .list_targets(Some("staging"))
            .await
            .ok_or_panic("staging"),
        [web_1.clone(), web_2.clone()]
    );
    assert!(store
        .list_targets(Some("qa"))
        .await
        .ok_or_panic("qa")
        .is_empty());
    assert_eq!(
        store
            .targets_for_agent("agent-1")
            .await
            .ok_or_panic("agent-1"),
        [web_1, web_2]
    );
    assert_eq!(
        store
            .targets_for_agent("agent-2")
            .await
            .ok_or_panic("agent-2"),
        [db_1]
    );
    assert!(store
        .targets_for_agent("agent-9")
        .await
        .ok_or_panic("agent-9")
        .is_empty());
}

async fn releases_are_immutable(f: &Fixture) {
    let store = &f.store;
    let v1 = release("app", "1.0", 'a', NOW);
    let v2 = release("app", "2.0", 'b', NOW + 10);
    let other = release("api", "1.0", 'c', NOW + 5);
    for r in [&v1, &v2, &other] {
        store.create_release(r).await.ok_or_panic("create release");
    }
    // The same name@version again, with other digests: refused, the first kept.
    assert_conflict(
        store
            .create_release(&release("app", "1.0", 'd', NOW + 20))
            .await,
        "release",
        "app@1.0",
    );
    assert_eq!(store.get_release("app", "1.0").await.ok_or_panic("get"), v1);
    assert_not_found(store.get_release("app", "9.9").await, "release", "app@9.9");

    assert_eq!(
        store.list_releases(None).await.ok_or_panic("all"),
        [v2.clone(), other.clone(), v1.clone()]
    );
    assert_eq!(
        store.list_releases(Some("app")).await.ok_or_panic("app"),
        [v2, v1]
    );
    assert!(store
        .list_releases(Some("none"))
        .await
        .ok_or_panic("none")
        .is_empty());
}

async fn registry_upsert_keeps_the_sealed_password_opaque(f: &Fixture) {
    let store = &f.store;
    // Sealed text as the secrets box might write it: stored and returned byte for byte.
    let sealed = "v1:nonce-Zm9v:cGFzc3dvcmQ/+=\u{e9}";
    let private = registry("registry.example.com", Some(sealed));
    let local = Registry {
        insecure: true,
        ..registry("127.0.0.1:5000", None)
    };
    store.upsert_registry(&private).await.ok_or_panic("private");
    store.upsert_registry(&local).await.ok_or_panic("local");
    let stored = store
        .get_registry("registry.example.com")
        .await
        .ok_or_panic("get");
    assert_eq!(stored.as_ref(), Some(&private));
    assert_eq!(
        stored.and_then(|r| r.password_sealed).as_deref(),
        Some(sealed)
    );
    assert!(
        !format!("{private:?}").contains(sealed),
        "Debug must not show the sealed password"
    );
    assert_eq!(
        store.list_registries().await.ok_or_panic("list"),
        [local.clone(), private]
    );

    // Upsert replaces every field.
    let rotated = Registry {
        insecure: false,
        username: Some("deployer".to_owned()),
        password_sealed: Some("v1:other".to_owned()),
        updated_at_ms: NOW + HOUR_MS,
        ..local.clone()
    };
    store.upsert_registry(&rotated).await.ok_or_panic("rotate");
    assert_eq!(
        store
            .get_registry("127.0.0.1:5000")
            .await
            .ok_or_panic("get"),
        Some(rotated)
    );
    let cleared = registry("registry.example.com", None);
    store.upsert_registry(&cleared).await.ok_or_panic("clear");
    assert_eq!(
        store
            .get_registry("registry.example.com")
            .await
            .ok_or_panic("get"),
        Some(cleared)
    );
    assert_eq!(store.list_registries().await.ok_or_panic("list").len(), 2);
    assert_eq!(
        store
            .get_registry("unknown.example")
            .await
            .ok_or_panic("get"),
        None
    );
}

async fn claims_raise_the_epoch_and_stale_results_are_discarded(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("task-b", "web-2"), ("task-a", "web-1")],
    )
    .await;
    let stored = store.get_task("task-a").await.ok_or_panic("get task");
    assert_eq!((stored.epoch, stored.state), (0, TaskState::Pending));
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Pending
    );
    assert_not_found(store.get_task("task-z").await, "task", "task-z");

    // Oldest first (task-b was created first), epoch 1, assigned.
    let first = store
        .claim_tasks_for_agent("agent-1", NOW + 1_000)
        .await
        .ok_or_panic("claim");
    let summary = |tasks: &[Task]| {
        tasks
            .iter()
            .map(|t| (t.id.clone(), t.epoch, t.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(&first),
        [
            ("task-b".to_owned(), 1, TaskState::Assigned),
            ("task-a".to_owned(), 1, TaskState::Assigned),
        ]
    );
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    // Another agent has nothing to claim.
    assert!(store
        .claim_tasks_for_agent("agent-2", NOW + 1_000)
        .await
        .ok_or_panic("claim")
        .is_empty());

    // A reconnecting agent claims the same tasks again under a new epoch.
    let second = store
        .claim_tasks_for_agent("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("claim again");
    assert_eq!(
        summary(&second),
        [
            ("task-b".to_owned(), 2, TaskState::Assigned),
            ("task-a".to_owned(), 2, TaskState::Assigned),
        ]
    );
    assert_eq!(
        store.get_task("task-a").await.ok_or_panic("get").epoch,
        2,
        "claims are stored"
    );

    // A result under the old epoch is stale: ignored, nothing changes.
    let stale = store
        .complete_task("task-a", 1, TaskState::Succeeded, "ok", NOW + 3_000)
        .await
        .ok_or_panic("stale");
    assert_eq!(stale, None);
    assert_eq!(
        store.get_task("task-a").await.ok_or_panic("get").state,
        TaskState::Assigned
    );

    let done = store
        .complete_task(
            "task-a",
            2,
            TaskState::Succeeded,
            "started web",
            NOW + 3_000,
        )
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("current epoch must be accepted"));
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.epoch, 2);
    assert_eq!(done.message.as_deref(), Some("started web"));
    assert_eq!(done.finished_at_ms, Some(NOW + 3_000));
    assert_eq!(store.get_task("task-a").await.ok_or_panic("get"), done);

    // The same result again, or a late one: duplicates are ignored; so are unknown tasks.
    for (epoch, state) in [
        (2, TaskState::Succeeded),
        (2, TaskState::Failed),
        (3, TaskState::Failed),
    ] {
        let again = store
            .complete_task("task-a", epoch, state, "again", NOW + 4_000)
            .await
            .ok_or_panic("duplicate");
        assert_eq!(again, None);
    }
    assert_eq!(store.get_task("task-a").await.ok_or_panic("get"), done);
    assert_eq!(
        store
            .complete_task("task-z", 1, TaskState::Succeeded, "", NOW)
            .await
            .ok_or_panic("unknown"),
        None
    );

    // Finished tasks are not claimed again.
    let third = store
        .claim_tasks_for_agent("agent-1", NOW + 5_000)
        .await
        .ok_or_panic("claim");
    assert_eq!(
        summary(&third),
        [("task-b".to_owned(), 3, TaskState::Assigned)]
    );
    // Nor are tasks past their deadline.
    assert!(store
        .claim_tasks_for_agent("agent-1", NOW + TASK_DEADLINE_MS)
        .await
        .ok_or_panic("claim late")
        .is_empty());
    assert_eq!(store.get_task("task-b").await.ok_or_panic("get").epoch, 3);
}

async fn deployment_state_follows_its_tasks(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;

    // Both succeed: running after the first, succeeded after the second.
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1-web-1", "web-1"), ("t1-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[("t1-web-1", TaskState::Succeeded, "ok")],
        NOW + 1_000,
    )
    .await;
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(
        (dep.state, dep.finished_at_ms),
        (DeploymentState::Running, None)
    );
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-1".to_owned())
    );
    claim_and_complete(
        store,
        &[("t1-web-2", TaskState::Succeeded, "")],
        NOW + 2_000,
    )
    .await;
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Succeeded);
    assert_eq!(dep.finished_at_ms, Some(NOW + 2_000));
    assert_eq!(dep.message, None);
    assert_eq!(
        store.get_task("t1-web-2").await.ok_or_panic("get").message,
        None,
        "an empty message is no message"
    );
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None
    );

    // One fails: the deployment fails with that task's target and message, once every
    // task has finished.
    deploy(
        store,
        "dep-2",
        "2.0",
        NOW + 10_000,
        &[("t2-web-1", "web-1"), ("t2-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[("t2-web-2", TaskState::Failed, "pull denied")],
        NOW + 11_000,
    )
    .await;
    assert_eq!(
        store.get_deployment("dep-2").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    claim_and_complete(
        store,
        &[("t2-web-1", TaskState::Succeeded, "ok")],
        NOW + 12_000,
    )
    .await;
    let dep = store.get_deployment("dep-2").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Failed);
    assert_eq!(dep.message.as_deref(), Some("web-2: pull denied"));
    assert_eq!(dep.finished_at_ms, Some(NOW + 12_000));

    let tasks = store
        .tasks_of_deployment("dep-2")
        .await
        .ok_or_panic("tasks");
    let states: Vec<_> = tasks
        .iter()
        .map(|t| (t.target.as_str(), t.state, t.message.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            ("web-1", TaskState::Succeeded, Some("ok")),
            ("web-2", TaskState::Failed, Some("pull denied")),
        ]
    );
    assert!(store
        .tasks_of_deployment("dep-9")
        .await
        .ok_or_panic("none")
        .is_empty());

    // Only dep-1 succeeded.
    let succeeded: Vec<_> = store
        .succeeded_deployments("staging", 10)
        .await
        .ok_or_panic("succeeded")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(succeeded, ["dep-1"]);
}

async fn expired_tasks_fail_their_deployment(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let late = Task {
        deadline_at_ms: NOW + 1_000,
        ..task("late", "dep-1", "web-1", "agent-1", 0, "{}")
    };
    let on_time = task("on-time", "dep-1", "web-2", "agent-1", 1, "{}");
    store
        .create_deployment(
            &deployment("dep-1", "staging", "1.0", NOW),
            &[late, on_time],
        )
        .await
        .ok_or_panic("create");
    assert!(store
        .expire_tasks(NOW + 999, |_| "deadline passed".to_owned())
        .await
        .ok_or_panic("expire early")
        .is_empty());

    // The deadline is inclusive: at NOW + 1000 it has passed.
    let expired = store
        .expire_tasks(NOW + 1_000, |_| "deadline passed".to_owned())
        .await
        .ok_or_panic("expire");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].id, "late");
    assert_eq!(expired[0].state, TaskState::Failed);
    assert_eq!(expired[0].message.as_deref(), Some("deadline passed"));
    assert_eq!(expired[0].finished_at_ms, Some(NOW + 1_000));
    assert_eq!(store.get_task("late").await.ok_or_panic("get"), expired[0]);
    // The other task is unfinished, so the deployment is still going.
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    assert!(store
        .expire_tasks(NOW + 2_000, |_| "deadline passed".to_owned())
        .await
        .ok_or_panic("again")
        .is_empty());

    // The agent claims and starts the other task but never answers.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "on-time");
    let expired = store
        .expire_tasks(NOW + TASK_DEADLINE_MS + 5, |_| "deadline passed".to_owned())
        .await
        .ok_or_panic("expire");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, "on-time");
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Failed);
    assert_eq!(dep.message.as_deref(), Some("web-1: deadline passed"));
    assert_eq!(dep.finished_at_ms, Some(NOW + TASK_DEADLINE_MS + 5));
    // A result arriving after expiry is discarded.
    assert_eq!(
        store
            .complete_task("on-time", claimed[0].epoch, TaskState::Succeeded, "ok", NOW)
            .await
            .ok_or_panic("late result"),
        None
    );
}

async fn desired_payloads_pick_the_latest_succeeded_task(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    assert!(store
        .desired_payloads_for_agent("agent-1")
        .await
        .ok_or_panic("desired")
        .is_empty());
    assert_eq!(
        store
            .latest_succeeded_task("web-1")
            .await
            .ok_or_panic("latest"),
        None
    );

    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1-web-1", "web-1"), ("t1-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[
            ("t1-web-1", TaskState::Succeeded, "ok"),
            ("t1-web-2", TaskState::Succeeded, "ok"),
        ],
        NOW + 1_000,
    )
    .await;
    // 2.0 reaches web-1 only; 3.0 fails on web-1.
    deploy(
        store,
        "dep-2",
        "2.0",
        NOW + 10_000,
        &[("t2-web-1", "web-1"), ("t2-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[
            ("t2-web-1", TaskState::Succeeded, "ok"),
            ("t2-web-2", TaskState::Failed, "no space left"),
        ],
        NOW + 11_000,
    )
    .await;
    deploy(
        store,
        "dep-3",
        "3.0",
        NOW + 20_000,
        &[("t3-web-1", "web-1")],
    )
    .await;
    claim_and_complete(
        store,
        &[("t3-web-1", TaskState::Failed, "crashed")],
        NOW + 21_000,
    )
    .await;

    let desired = store
        .desired_payloads_for_agent("agent-1")
        .await
        .ok_or_panic("desired");
    assert_eq!(
        desired
            .iter()
            .map(|d| (
                d.target.as_str(),
                d.deployed.as_ref().map(|(p, _)| p.as_str())
            ))
            .collect::<Vec<_>>(),
        [
            ("web-1", Some(r#"{"version":"2.0","target":"web-1"}"#)),
            ("web-2", Some(r#"{"version":"1.0","target":"web-2"}"#)),
        ]
    );
    let latest = store
        .latest_succeeded_task("web-1")
        .await
        .ok_or_panic("latest")
        .unwrap_or_else(|| panic!("web-1 has succeeded tasks"));
    assert_eq!(latest.id, "t2-web-1");
    assert_eq!(latest.deployment_id, "dep-2");
    // agent-2's target never had a deployment.
    assert!(store
        .desired_payloads_for_agent("agent-2")
        .await
        .ok_or_panic("desired")
        .is_empty());
}

async fn deployments_are_listed_newest_first(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    deploy(store, "dep-2", "2.0", NOW + 10, &[("t2", "web-1")]).await;
    let prod = Deployment {
        kind: DeploymentKind::Rollback,
        message: Some("back to 1.0".to_owned()),
        ..deployment("dep-3", "production", "1.0", NOW + 20)
    };
    store
        .create_deployment(&prod, &[task("t3", "dep-3", "db-1", "agent-2", 20, "{}")])
        .await
        .ok_or_panic("prod");
    assert_eq!(store.get_deployment("dep-3").await.ok_or_panic("get"), prod);
    assert_not_found(store.get_deployment("dep-9").await, "deployment", "dep-9");

    let ids =
        |deployments: Vec<Deployment>| deployments.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_deployments(None, 10).await.ok_or_panic("all")),
        ["dep-3", "dep-2", "dep-1"]
    );
    assert_eq!(
        ids(store.list_deployments(None, 2).await.ok_or_panic("limited")),
        ["dep-3", "dep-2"]
    );
    assert_eq!(
        ids(store
            .list_deployments(Some("staging"), 10)
            .await
            .ok_or_panic("staging")),
        ["dep-2", "dep-1"]
    );
    // The newest pending or running one is active.
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-2".to_owned())
    );

    // dep-2 finishes before dep-1: newest by finish time first.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 100)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 2);
    for (task_id, at) in [("t2", NOW + 200), ("t1", NOW + 300)] {
        store
            .complete_task(task_id, 1, TaskState::Succeeded, "ok", at)
            .await
            .ok_or_panic("complete")
            .unwrap_or_else(|| panic!("{task_id} completes"));
    }
    assert_eq!(
        ids(store
            .succeeded_deployments("staging", 10)
            .await
            .ok_or_panic("succeeded")),
        ["dep-1", "dep-2"]
    );
    assert_eq!(
        ids(store
            .succeeded_deployments("staging", 1)
            .await
            .ok_or_panic("succeeded")),
        ["dep-1"]
    );
    assert!(store
        .succeeded_deployments("production", 10)
        .await
        .ok_or_panic("prod")
        .is_empty());
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None
    );

    // A deployment needs its environment and release; ids are unique; nothing is
    // written when any of it fails.
    assert_not_found(
        store
            .create_deployment(&deployment("dep-4", "qa", "1.0", NOW), &[])
            .await,
        "environment",
        "qa",
    );
    assert_not_found(
        store
            .create_deployment(&deployment("dep-4", "staging", "9.9", NOW), &[])
            .await,
        "release",
        "app@9.9",
    );
    assert_conflict(
        store
            .create_deployment(&deployment("dep-1", "staging", "1.0", NOW), &[])
            .await,
        "deployment",
        "dep-1",
    );
    assert_conflict(
        store
            .create_deployment(
                &deployment("dep-4", "staging", "1.0", NOW + 50),
                &[
                    task("t4", "dep-4", "web-1", "agent-1", 50, "{}"),
                    task("t1", "dep-4", "web-2", "agent-1", 50, "{}"),
                ],
            )
            .await,
        "task",
        "t1",
    );
    assert_not_found(store.get_deployment("dep-4").await, "deployment", "dep-4");
    assert_not_found(store.get_task("t4").await, "task", "t4");
}

async fn logs_after_paginates_in_order(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    deploy(store, "dep-2", "2.0", NOW, &[("t2", "web-1")]).await;
    // Interleaved with another deployment's lines.
    for i in 0..5_i64 {
        store
            .append_log(
                "dep-1",
                if i == 0 { "" } else { "t1" },
                None,
                NOW + i,
                &format!("line {i}"),
            )
            .await
            .ok_or_panic("append");
        store
            .append_log("dep-2", "t2", None, NOW + i, &format!("other {i}"))
            .await
            .ok_or_panic("append other");
    }
    assert_not_found(
        store.append_log("dep-9", "", None, NOW, "lost").await,
        "deployment",
        "dep-9",
    );

    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = store
            .logs_after("dep-1", after, 2)
            .await
            .ok_or_panic("logs");
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(page.iter().map(|l| l.message.clone()).collect::<Vec<_>>());
        assert!(page.iter().all(|l| l.deployment_id == "dep-1"));
        assert!(page.windows(2).all(|w| w[0].seq < w[1].seq));
    }
    assert_eq!(
        pages,
        [
            vec!["line 0", "line 1"],
            vec!["line 2", "line 3"],
            vec!["line 4"],
        ]
    );
    let all = store.logs_after("dep-1", 0, 100).await.ok_or_panic("all");
    assert_eq!(all.len(), 5);
    assert_eq!((all[0].task_id.as_str(), all[0].at_ms), ("", NOW));
    assert_eq!((all[4].task_id.as_str(), all[4].at_ms), ("t1", NOW + 4));
    // Following from the middle.
    let rest = store
        .logs_after("dep-1", all[2].seq, 100)
        .await
        .ok_or_panic("rest");
    assert_eq!(rest, all[3..]);
    assert!(store
        .logs_after("dep-9", 0, 100)
        .await
        .ok_or_panic("none")
        .is_empty());
}

async fn drift_is_upserted_resolved_and_listed(f: &Fixture) {
    let store = &f.store;
    let web_missing = drift_record("web-1", "web", DriftKind::Missing, NOW);
    let web_image = drift_record("web-1", "web", DriftKind::ImageChanged, NOW + 10);
    let db_config = DriftRecord {
        environment: "production".to_owned(),
        agent_id: "agent-2".to_owned(),
        ..drift_record("db-1", "", DriftKind::ConfigChanged, NOW + 20)
    };
    for record in [&web_missing, &web_image, &db_config] {
        store.upsert_drift(record).await.ok_or_panic("upsert");
    }
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("list"),
        [db_config.clone(), web_image.clone(), web_missing.clone()]
    );
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("staging"),
        [web_image.clone(), web_missing.clone()]
    );

    // Reported again: one finding, refreshed; first seen kept.
    let again = DriftRecord {
        detail: "still missing".to_owned(),
        agent_id: "agent-3".to_owned(),
        first_seen_at_ms: NOW + 30,
        last_seen_at_ms: NOW + 30,
        ..web_missing.clone()
    };
    store.upsert_drift(&again).await.ok_or_panic("refresh");
    let refreshed = DriftRecord {
        first_seen_at_ms: NOW,
        ..again.clone()
    };
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("staging"),
        [refreshed.clone(), web_image.clone()]
    );

    // The target is clean again: both its findings resolve, the other target's stays.
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 40)
            .await
            .ok_or_panic("resolve"),
        2
    );
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 50)
            .await
            .ok_or_panic("resolve again"),
        0
    );
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("open"),
        [db_config]
    );
    let resolved = |r: &DriftRecord| DriftRecord {
        resolved_at_ms: Some(NOW + 40),
        ..r.clone()
    };
    assert_eq!(
        store
            .list_drift(Some("staging"), true)
            .await
            .ok_or_panic("with resolved"),
        [resolved(&refreshed), resolved(&web_image)]
    );
    assert_eq!(
        store.list_drift(None, true).await.ok_or_panic("all").len(),
        3
    );

    // Reported after resolution: open again, as a new finding.
    let back = drift_record("web-1", "web", DriftKind::Missing, NOW + 60);
    store.upsert_drift(&back).await.ok_or_panic("reopen");
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("reopened"),
        [back]
    );
    assert!(store
        .list_drift(Some("qa"), true)
        .await
        .ok_or_panic("qa")
        .is_empty());
}

async fn a_drift_finding_is_resolved_on_its_own(f: &Fixture) {
    let store = &f.store;
    let web_missing = drift_record("web-1", "web", DriftKind::Missing, NOW);
    let web_image = drift_record("web-1", "web", DriftKind::ImageChanged, NOW + 10);
    let api_missing = drift_record("web-1", "api", DriftKind::Missing, NOW + 20);
    let other = drift_record("web-2", "web", DriftKind::Missing, NOW + 30);
    for record in [&web_missing, &web_image, &api_missing, &other] {
        store.upsert_drift(record).await.ok_or_panic("upsert");
    }

    // The container came back with the wrong image: `missing` ends, the rest stays.
    assert_eq!(
        store
            .resolve_drift_finding("web-1", "web", DriftKind::Missing, NOW + 40)
            .await
            .ok_or_panic("resolve"),
        1
    );
    assert_eq!(
        store
            .resolve_drift_finding("web-1", "web", DriftKind::Missing, NOW + 50)
            .await
            .ok_or_panic("resolve again"),
        0,
        "already resolved"
    );
    assert_eq!(
        store
            .resolve_drift_finding("web-1", "web", DriftKind::Unexpected, NOW + 50)
            .await
            .ok_or_panic("resolve unknown"),
        0,
        "never reported"
    );
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("open"),
        [other.clone(), api_missing.clone(), web_image.clone()]
    );
    let all = store.list_drift(None, true).await.ok_or_panic("all");
    let resolved: Vec<&DriftRecord> = all.iter().filter(|r| r.resolved_at_ms.is_some()).collect();
    assert_eq!(
        resolved,
        [&DriftRecord {
            resolved_at_ms: Some(NOW + 40),
            ..web_missing.clone()
        }]
    );

    // Reported again: open again, as a new finding; the target-wide resolution still
    // ends every finding of the target.
    let back = drift_record("web-1", "web", DriftKind::Missing, NOW + 60);
    store.upsert_drift(&back).await.ok_or_panic("reopen");
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 70)
            .await
            .ok_or_panic("resolve target"),
        3
    );
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("open"),
        [other]
    );
}

async fn concurrent_results_finish_the_deployment_once(f: &Fixture) {
    const TASKS: usize = 8;
    let store = &f.store;
    delivery_fixture(store).await;
    let ids: Vec<String> = (0..TASKS).map(|i| format!("task-{i}")).collect();
    let tasks: Vec<Task> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| task(id, "dep-1", &format!("web-{i}"), "agent-1", 0, "{}"))
        .collect();
    store
        .create_deployment(&deployment("dep-1", "staging", "1.0", NOW), &tasks)
        .await
        .ok_or_panic("create");
    assert_eq!(
        store
            .claim_tasks_for_agent("agent-1", NOW)
            .await
            .ok_or_panic("claim")
            .len(),
        TASKS
    );
    // Every result at once, each twice: each task completes once, and whichever result
    // comes last sees all the others and finishes the deployment.
    let results: Vec<_> = ids
        .iter()
        .chain(&ids)
        .enumerate()
        .map(|(i, id)| {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move {
                store
                    .complete_task(&id, 1, TaskState::Succeeded, "ok", NOW + i as i64)
                    .await
            })
        })
        .collect();
    let mut completed = 0;
    for result in results {
        let outcome = result
            .await
            .unwrap_or_else(|e| panic!("task: {e}"))
            .ok_or_panic("complete");
        completed += usize::from(outcome.is_some());
    }
    assert_eq!(completed, TASKS);
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Succeeded, "{dep:?}");
    assert!(dep.finished_at_ms.is_some());
}
