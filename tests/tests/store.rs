//! The store suite: every case runs on SQLite (a temp file) and on PostgreSQL (a fresh
//! database in the private test cluster), as `sqlite::<case>` and `postgres::<case>`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection};
use stella_control_plane::domain::{
    AgentState, Component, DeliveryAttempt, DeliveryState, Deployment, DeploymentKind,
    DeploymentState, Digest, DriftKind, DriftMode, DriftRecord, Environment, HelloRecord,
    HostFacts, JoinTokenRefusal, NewAgent, NewDelivery, NewJoinToken, Registry, Release, Role,
    Target, TargetKind, Task, TaskState, User, Variable, VariableKind, Webhook, WebhookDelivery,
};
use stella_control_plane::store::{Backend, DesiredPayload, Store, StoreError};
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
    // Webhooks and events.
    webhooks_and_their_deliveries_round_trip,
    claimed_deliveries_are_leased_fenced_and_retried,
    concurrent_claims_never_share_a_delivery,
    unreachable_agents_are_marked_once_per_outage,
    drift_upserts_tell_when_a_finding_opens,
    // Delivery hardening.
    one_deployment_is_active_per_environment_under_concurrency,
    a_taken_deployment_id_is_a_deployment_conflict,
    generations_grow_with_every_deployment_and_tasks_carry_them,
    desired_state_is_the_succeeded_task_of_the_highest_generation,
    generations_keep_growing_after_history_is_deleted,
    cancelling_stops_unfinished_tasks_and_discards_late_results,
    deployments_are_found_by_id_or_unique_prefix,
    numbered_log_lines_are_stored_once,
    expiry_names_each_agent_and_open_work_is_listed,
    succeeded_deployment_of_version_is_the_highest_generation,
    environment_deployment_timeout_round_trips,
    deleting_an_environment_refuses_dependents_and_removes_history,
    variables_and_secrets_are_set_listed_and_deleted,
    updating_a_target_keeps_its_identity_and_waits_for_unfinished_tasks,
    deleting_a_target_keeps_its_history_and_resolves_its_drift,
    user_roles_change_and_a_deleted_user_loses_its_tokens,
    the_last_admin_is_never_removed,
    two_admins_removing_each_other_leave_one,
    goodbye_marks_an_agent_disconnected_until_its_next_hello,
    a_revoked_agent_can_be_deleted_and_stays_revoked,
    registries_are_deleted,
    migration_fails_all_but_the_newest_active_deployment,
    // Audit log.
    audit_entries_and_checkpoints_are_unique_by_seq,
    concurrent_audit_writers_leave_one_contiguous_chain,
    // Scan reports and verdicts.
    scan_documents_are_new_once_per_content_and_digest,
    a_verdict_read_earlier_never_replaces_one_read_later,
);

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
    send(store.mark_unreachable_agents(0, 0));
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
        .expire_tasks(NOW + 999, unanswered)
        .await
        .ok_or_panic("expire early")
        .is_empty());

    // The deadline is inclusive: at NOW + 1000 it has passed.
    let expired = store
        .expire_tasks(NOW + 1_000, unanswered)
        .await
        .ok_or_panic("expire");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].id, "late");
    assert_eq!(expired[0].state, TaskState::Failed);
    assert_eq!(
        expired[0].message.as_deref(),
        Some("deadline passed: agent-1 did not answer")
    );
    assert_eq!(expired[0].finished_at_ms, Some(NOW + 1_000));
    assert_eq!(store.get_task("late").await.ok_or_panic("get"), expired[0]);
    // The other task is unfinished, so the deployment is still going.
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    assert!(store
        .expire_tasks(NOW + 2_000, unanswered)
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
        .expire_tasks(NOW + TASK_DEADLINE_MS + 5, unanswered)
        .await
        .ok_or_panic("expire");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, "on-time");
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Failed);
    assert_eq!(
        dep.message.as_deref(),
        Some("web-1: deadline passed: agent-1 did not answer")
    );
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
    // Every target of the agent is listed, with nothing deployed yet.
    let nothing = |target: &str| DesiredPayload {
        target: target.to_owned(),
        deployed: None,
    };
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired"),
        [nothing("web-1"), nothing("web-2")]
    );
    assert_eq!(
        store
            .latest_succeeded_task("web-1")
            .await
            .ok_or_panic("latest"),
        None
    );

    let generation_1 = deploy(
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
    let generation_2 = deploy(
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
                d.deployed.as_ref().map(|(p, g)| (p.as_str(), *g))
            ))
            .collect::<Vec<_>>(),
        [
            (
                "web-1",
                Some((r#"{"version":"2.0","target":"web-1"}"#, generation_2))
            ),
            (
                "web-2",
                Some((r#"{"version":"1.0","target":"web-2"}"#, generation_1))
            ),
        ]
    );
    let latest = store
        .latest_succeeded_task("web-1")
        .await
        .ok_or_panic("latest")
        .unwrap_or_else(|| panic!("web-1 has succeeded tasks"));
    assert_eq!(latest.id, "t2-web-1");
    assert_eq!(latest.deployment_id, "dep-2");
    // agent-2's target never had a deployment: listed, with nothing to run.
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-2")
            .await
            .ok_or_panic("desired"),
        [nothing("db-1")]
    );
    assert!(store
        .desired_payloads_for_agent("agent-9")
        .await
        .ok_or_panic("desired")
        .is_empty());
}

async fn deployments_are_listed_newest_first(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-1".to_owned())
    );
    // dep-1 finishes last (its replica's clock runs ahead): it is still listed by
    // creation, and first by finish time.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 5)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 1);
    store
        .complete_task("t1", 1, TaskState::Succeeded, "ok", NOW + 300)
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("t1 completes"));
    deploy(store, "dep-2", "2.0", NOW + 10, &[("t2", "web-1")]).await;
    let prod = Deployment {
        kind: DeploymentKind::Rollback,
        message: Some("back to 1.0".to_owned()),
        ..deployment("dep-3", "production", "1.0", NOW + 20)
    };
    let prod_generation = store
        .create_deployment(&prod, &[task("t3", "dep-3", "db-1", "agent-2", 20, "{}")])
        .await
        .ok_or_panic("prod");
    assert_eq!(
        store.get_deployment("dep-3").await.ok_or_panic("get"),
        Deployment {
            generation: prod_generation,
            ..prod
        }
    );
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
    // The pending or running one is active.
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-2".to_owned())
    );

    // dep-2 finishes before dep-1 did: newest by finish time first.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 100)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 1);
    store
        .complete_task("t2", 1, TaskState::Succeeded, "ok", NOW + 200)
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("t2 completes"));
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

    // A deployment needs its environment and release; task ids are unique; nothing is
    // written when any of it fails. (A taken deployment id: its own case.)
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
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None,
        "a refused deployment leaves the environment free"
    );
}

async fn logs_after_paginates_in_order(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    deploy_to(
        store,
        "production",
        "dep-2",
        "2.0",
        NOW,
        &[("t2", "db-1", "agent-2")],
    )
    .await;
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
            .ok_or_panic("resolve")
            .len(),
        2
    );
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 50)
            .await
            .ok_or_panic("resolve again")
            .len(),
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
            .ok_or_panic("resolve target")
            .len(),
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

async fn webhooks_and_their_deliveries_round_trip(f: &Fixture) {
    let store = &f.store;
    let a = webhook("hook-a", &["drift.detected", "drift.resolved"], NOW);
    let b = webhook("hook-b", &["*"], NOW + 1);
    store.create_webhook(&a).await.ok_or_panic("create a");
    store.create_webhook(&b).await.ok_or_panic("create b");
    assert_conflict(store.create_webhook(&a).await, "webhook", "hook-a");
    assert_eq!(
        store.list_webhooks().await.ok_or_panic("list"),
        [a.clone(), b.clone()]
    );
    assert_eq!(store.get_webhook("hook-a").await.ok_or_panic("get"), a);
    assert_not_found(store.get_webhook("hook-c").await, "webhook", "hook-c");

    // A delivery for a webhook that is gone is skipped, not an error.
    let queued = store
        .enqueue_deliveries(&[
            new_delivery("d-1", "hook-a", NOW + 10),
            new_delivery("d-2", "hook-a", NOW + 20),
            new_delivery("d-3", "hook-b", NOW + 30),
            new_delivery("d-4", "hook-gone", NOW + 40),
        ])
        .await
        .ok_or_panic("enqueue");
    assert_eq!(queued, 3);
    let listed = store
        .list_deliveries("hook-a", 10)
        .await
        .ok_or_panic("list");
    assert_eq!(ids(&listed), ["d-2", "d-1"], "newest first");
    assert_eq!(
        listed[1],
        WebhookDelivery {
            id: "d-1".to_owned(),
            webhook_id: "hook-a".to_owned(),
            event: "drift.detected".to_owned(),
            payload: "{\"id\":\"d-1\"}".to_owned(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at_ms: NOW + 10,
            lease_until_ms: 0,
            last_status: None,
            last_error: None,
            created_at_ms: NOW + 10,
            delivered_at_ms: None,
        }
    );
    assert_eq!(
        ids(&store.list_deliveries("hook-a", 1).await.ok_or_panic("one")),
        ["d-2"]
    );

    // Deleting a webhook deletes its deliveries, and only its.
    store.delete_webhook("hook-a").await.ok_or_panic("delete");
    assert_not_found(store.delete_webhook("hook-a").await, "webhook", "hook-a");
    assert!(store
        .list_deliveries("hook-a", 10)
        .await
        .ok_or_panic("gone")
        .is_empty());
    assert_eq!(store.list_webhooks().await.ok_or_panic("list"), [b]);
    assert_eq!(
        ids(&store.list_deliveries("hook-b", 10).await.ok_or_panic("b")),
        ["d-3"]
    );
    let claimed = store
        .claim_deliveries(NOW + 100, NOW + 1_000, 10)
        .await
        .ok_or_panic("claim");
    assert_eq!(ids(&claimed), ["d-3"]);
}

async fn claimed_deliveries_are_leased_fenced_and_retried(f: &Fixture) {
    let store = &f.store;
    store
        .create_webhook(&webhook("hook", &["*"], NOW))
        .await
        .ok_or_panic("create");
    store
        .enqueue_deliveries(&[
            new_delivery("d-1", "hook", NOW),
            new_delivery("d-2", "hook", NOW + 1),
            new_delivery("d-3", "hook", NOW + 5_000),
        ])
        .await
        .ok_or_panic("enqueue");

    // Due ones, the longest due first, leased.
    let lease = NOW + 60_010;
    let claimed = store
        .claim_deliveries(NOW + 10, lease, 10)
        .await
        .ok_or_panic("claim");
    assert_eq!(ids(&claimed), ["d-1", "d-2"]);
    assert!(claimed.iter().all(|d| d.lease_until_ms == lease));
    // Held: nobody else gets them while the lease lasts.
    assert!(store
        .claim_deliveries(NOW + 20, NOW + 60_020, 10)
        .await
        .ok_or_panic("claim again")
        .is_empty());

    // An outcome counts only under the lease it was claimed with.
    let delivered = DeliveryAttempt::Delivered {
        status: 204,
        at_ms: NOW + 30,
    };
    assert!(!store
        .record_delivery_attempt("d-1", lease + 1, &delivered)
        .await
        .ok_or_panic("wrong lease"));
    let retry = DeliveryAttempt::Retry {
        status: Some(503),
        error: "the receiver answered 503 Service Unavailable".to_owned(),
        next_attempt_at_ms: NOW + 1_000,
    };
    assert!(store
        .record_delivery_attempt("d-1", lease, &retry)
        .await
        .ok_or_panic("retry"));
    // Recording let go of the lease: a late second outcome is discarded.
    assert!(!store
        .record_delivery_attempt("d-1", lease, &delivered)
        .await
        .ok_or_panic("late"));
    assert!(store
        .record_delivery_attempt("d-2", lease, &delivered)
        .await
        .ok_or_panic("delivered"));

    // d-1 waits for its retry; d-2 is done; d-3 is not due.
    assert!(store
        .claim_deliveries(NOW + 500, NOW + 1_500, 10)
        .await
        .ok_or_panic("early")
        .is_empty());
    let again = store
        .claim_deliveries(NOW + 1_000, NOW + 2_000, 10)
        .await
        .ok_or_panic("due again");
    assert_eq!(ids(&again), ["d-1"]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_status, Some(503));
    assert_eq!(
        again[0].last_error.as_deref(),
        Some("the receiver answered 503 Service Unavailable")
    );
    // A sender that dies holding a lease: the delivery comes back when it runs out.
    let taken_over = store
        .claim_deliveries(NOW + 2_000, NOW + 3_000, 10)
        .await
        .ok_or_panic("expired lease");
    assert_eq!(ids(&taken_over), ["d-1"]);
    assert_eq!(taken_over[0].attempts, 1, "no attempt was recorded");
    // A sender that stops lets go at once.
    store
        .release_deliveries(&[("d-1".to_owned(), NOW + 3_000)])
        .await
        .ok_or_panic("release");
    let released = store
        .claim_deliveries(NOW + 2_001, NOW + 4_000, 10)
        .await
        .ok_or_panic("released");
    assert_eq!(ids(&released), ["d-1"]);
    let give_up = DeliveryAttempt::GiveUp {
        status: None,
        error: "cannot connect".to_owned(),
    };
    assert!(store
        .record_delivery_attempt("d-1", NOW + 4_000, &give_up)
        .await
        .ok_or_panic("give up"));

    // Failed and delivered ones are never claimed again.
    let last = store
        .claim_deliveries(NOW + 100_000, NOW + 200_000, 10)
        .await
        .ok_or_panic("last");
    assert_eq!(ids(&last), ["d-3"]);
    let listed = store.list_deliveries("hook", 10).await.ok_or_panic("list");
    let by_id = |id: &str| listed.iter().find(|d| d.id == id).cloned();
    let d1 = by_id("d-1").unwrap_or_else(|| panic!("d-1 in {listed:?}"));
    assert_eq!(
        (d1.state, d1.attempts, d1.last_status, d1.lease_until_ms),
        (DeliveryState::Failed, 2, None, 0)
    );
    assert_eq!(d1.last_error.as_deref(), Some("cannot connect"));
    let d2 = by_id("d-2").unwrap_or_else(|| panic!("d-2 in {listed:?}"));
    assert_eq!(
        (d2.state, d2.attempts, d2.last_status, d2.delivered_at_ms),
        (DeliveryState::Delivered, 1, Some(204), Some(NOW + 30))
    );
    assert_eq!(d2.last_error, None);
}

async fn concurrent_claims_never_share_a_delivery(f: &Fixture) {
    const DELIVERIES: usize = 60;
    const CLAIMERS: usize = 6;
    let store = &f.store;
    store
        .create_webhook(&webhook("hook", &["*"], NOW))
        .await
        .ok_or_panic("create");
    let queued: Vec<NewDelivery> = (0..DELIVERIES)
        .map(|i| new_delivery(&format!("d-{i:02}"), "hook", NOW + (i % 7) as i64))
        .collect();
    store
        .enqueue_deliveries(&queued)
        .await
        .ok_or_panic("enqueue");
    // Replicas claiming small batches at once, until nothing is left for them.
    let claimers: Vec<_> = (0..CLAIMERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .claim_deliveries(NOW + 10, NOW + 60_000, 4)
                        .await
                        .ok_or_panic("claim");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|d| d.id));
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.unwrap_or_else(|e| panic!("claimer: {e}")));
    }
    let total = claimed.len();
    claimed.sort();
    claimed.dedup();
    assert_eq!(total, claimed.len(), "a delivery was claimed twice");
    assert_eq!(claimed.len(), DELIVERIES, "a delivery was never claimed");
}

async fn unreachable_agents_are_marked_once_per_outage(f: &Fixture) {
    let store = &f.store;
    for (id, name) in [
        ("agent-1", "quiet"),
        ("agent-2", "talky"),
        ("agent-3", "gone-home"),
        ("agent-4", "revoked"),
        ("agent-5", "never-seen"),
    ] {
        enrol(store, id, name).await;
    }
    for id in ["agent-1", "agent-3", "agent-4"] {
        store
            .record_hello(id, &hello(NOW))
            .await
            .ok_or_panic("hello");
    }
    store
        .record_hello("agent-2", &hello(NOW + 10_000))
        .await
        .ok_or_panic("hello");
    store
        .record_goodbye("agent-3", NOW + 1)
        .await
        .ok_or_panic("goodbye");
    store
        .revoke_agent("agent-4", NOW + 1, "test")
        .await
        .ok_or_panic("revoke");
    let names = |agents: Vec<stella_control_plane::domain::Agent>| {
        agents.into_iter().map(|a| a.name).collect::<Vec<_>>()
    };

    // Silent since before NOW + 5 s: only `quiet` (stopped cleanly, revoked and never
    // seen agents are not unreachable).
    let marked = store
        .mark_unreachable_agents(NOW + 5_000, NOW + 20_000)
        .await
        .ok_or_panic("mark");
    assert_eq!(names(marked), ["quiet"]);
    assert!(store
        .mark_unreachable_agents(NOW + 5_000, NOW + 21_000)
        .await
        .ok_or_panic("mark again")
        .is_empty());

    // Replicas checking at once: `talky` is marked by exactly one.
    let checks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .mark_unreachable_agents(NOW + 15_000, NOW + 30_000 + i)
                    .await
                    .ok_or_panic("concurrent mark")
            })
        })
        .collect();
    let mut marked = Vec::new();
    for check in checks {
        marked.extend(names(check.await.unwrap_or_else(|e| panic!("check: {e}"))));
    }
    assert_eq!(marked, ["talky"]);

    // A heartbeat ends `quiet`'s outage; its next silence is a new one.
    store
        .touch_agents(&[("agent-1".to_owned(), NOW + 40_000)])
        .await
        .ok_or_panic("heartbeat");
    assert!(store
        .mark_unreachable_agents(NOW + 35_000, NOW + 41_000)
        .await
        .ok_or_panic("seen")
        .is_empty());
    assert_eq!(
        names(
            store
                .mark_unreachable_agents(NOW + 45_000, NOW + 50_000)
                .await
                .ok_or_panic("silent again")
        ),
        ["quiet"]
    );
    // So does a hello.
    store
        .record_hello("agent-2", &hello(NOW + 50_000))
        .await
        .ok_or_panic("hello");
    assert_eq!(
        names(
            store
                .mark_unreachable_agents(NOW + 55_000, NOW + 60_000)
                .await
                .ok_or_panic("talky again")
        ),
        ["talky"]
    );
}

async fn drift_upserts_tell_when_a_finding_opens(f: &Fixture) {
    let store = &f.store;
    let missing = drift_record("web-1", "web", DriftKind::Missing, NOW);
    assert!(store.upsert_drift(&missing).await.ok_or_panic("new"));
    let again = drift_record("web-1", "web", DriftKind::Missing, NOW + 10);
    assert!(!store.upsert_drift(&again).await.ok_or_panic("refresh"));
    let resolved = store
        .resolve_drift("web-1", NOW + 20)
        .await
        .ok_or_panic("resolve");
    assert_eq!(
        resolved,
        [DriftRecord {
            first_seen_at_ms: NOW,
            last_seen_at_ms: NOW + 10,
            resolved_at_ms: Some(NOW + 20),
            ..missing.clone()
        }]
    );
    let back = drift_record("web-1", "web", DriftKind::Missing, NOW + 30);
    assert!(store.upsert_drift(&back).await.ok_or_panic("reopen"));
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("open"),
        [back]
    );

    // Agents racing on one new finding: exactly one of them opens it.
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .upsert_drift(&drift_record(
                        "web-2",
                        "api",
                        DriftKind::ImageChanged,
                        NOW + 100 + i,
                    ))
                    .await
                    .ok_or_panic("racing upsert")
            })
        })
        .collect();
    let mut opened = 0;
    for writer in writers {
        opened += usize::from(writer.await.unwrap_or_else(|e| panic!("writer: {e}")));
    }
    assert_eq!(opened, 1);
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

async fn one_deployment_is_active_per_environment_under_concurrency(f: &Fixture) {
    const CONTENDERS: usize = 16;
    let store = &f.store;
    delivery_fixture(store).await;
    // Sixteen deployments to staging and sixteen to production, all at once; each with a
    // task, so a loser that left anything behind would show.
    let attempts: Vec<_> = (0..2 * CONTENDERS)
        .map(|i| {
            let store = store.clone();
            let (environment, target, agent) = if i % 2 == 0 {
                ("staging", "web-1", "agent-1")
            } else {
                ("production", "db-1", "agent-2")
            };
            let id = format!("dep-{i:02}");
            let deployment = deployment(&id, environment, "1.0", NOW + i as i64);
            let task = task(&format!("task-{i:02}"), &id, target, agent, i as i64, "{}");
            tokio::spawn(async move {
                let outcome = store.create_deployment(&deployment, &[task]).await;
                (deployment, outcome)
            })
        })
        .collect();
    let mut winners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut losers = Vec::new();
    for attempt in attempts {
        let (deployment, outcome) = attempt.await.unwrap_or_else(|e| panic!("task: {e}"));
        match outcome {
            Ok(_) => winners
                .entry(deployment.environment)
                .or_default()
                .push(deployment.id),
            Err(StoreError::Conflict {
                entity: "active deployment",
                key,
            }) => {
                assert_eq!(key, deployment.environment, "{}", deployment.id);
                losers.push(deployment.id);
            }
            Err(other) => panic!("creating {}: {}", deployment.id, chain(&other)),
        }
    }
    assert_eq!(
        winners
            .iter()
            .map(|(e, w)| (e.as_str(), w.len()))
            .collect::<Vec<_>>(),
        [("production", 1), ("staging", 1)],
        "one winner per environment: {winners:?}"
    );
    assert_eq!(losers.len(), 2 * CONTENDERS - 2);

    // Stored: the winners, each with its task, and nothing of the losers.
    let staging_winner = winners["staging"][0].clone();
    let production_winner = winners["production"][0].clone();
    for (environment, winner) in [
        ("staging", &staging_winner),
        ("production", &production_winner),
    ] {
        let listed: Vec<_> = store
            .list_deployments(Some(environment), 100)
            .await
            .ok_or_panic("list")
            .into_iter()
            .map(|d| (d.id, d.state))
            .collect();
        assert_eq!(listed, [(winner.clone(), DeploymentState::Pending)]);
        assert_eq!(
            store
                .active_deployment(environment)
                .await
                .ok_or_panic("active")
                .map(|d| d.id)
                .as_ref(),
            Some(winner)
        );
        assert_eq!(
            store
                .tasks_of_deployment(winner)
                .await
                .ok_or_panic("tasks")
                .len(),
            1
        );
    }
    for loser in &losers {
        assert_not_found(store.get_deployment(loser).await, "deployment", loser);
        assert!(store
            .tasks_of_deployment(loser)
            .await
            .ok_or_panic("tasks")
            .is_empty());
    }
    let open = store
        .open_tasks_created_before(i64::MAX)
        .await
        .ok_or_panic("open tasks");
    let mut expected: Vec<_> = [&staging_winner, &production_winner]
        .iter()
        .map(|id| id.replace("dep-", "task-"))
        .collect();
    expected.sort_unstable();
    assert_eq!(sorted_ids(&open), expected, "no orphan tasks");

    // Still refused while active; accepted once the active one finished.
    assert_conflict(
        store
            .create_deployment(&deployment("dep-late", "staging", "2.0", NOW + 100), &[])
            .await,
        "active deployment",
        "staging",
    );
    let staging_task = staging_winner.replace("dep-", "task-");
    claim_and_complete(
        store,
        &[(staging_task.as_str(), TaskState::Succeeded, "ok")],
        NOW + 200,
    )
    .await;
    assert_eq!(
        store
            .get_deployment(&staging_winner)
            .await
            .ok_or_panic("get")
            .state,
        DeploymentState::Succeeded
    );
    deploy(
        store,
        "dep-next",
        "2.0",
        NOW + 300,
        &[("task-next", "web-1")],
    )
    .await;
    // A failed one frees its environment too.
    claim_and_complete(
        store,
        &[("task-next", TaskState::Failed, "crashed")],
        NOW + 400,
    )
    .await;
    deploy(store, "dep-after-failure", "2.0", NOW + 500, &[]).await;

    // And a cancelled one.
    assert_conflict(
        store
            .create_deployment(&deployment("dep-late", "production", "2.0", NOW + 100), &[])
            .await,
        "active deployment",
        "production",
    );
    store
        .cancel_deployment(&production_winner, "cancelled by alice", NOW + 600)
        .await
        .ok_or_panic("cancel");
    deploy_to(
        store,
        "production",
        "dep-late",
        "2.0",
        NOW + 700,
        &[("task-late", "db-1", "agent-2")],
    )
    .await;
    assert_eq!(
        store
            .active_deployment("production")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-late".to_owned())
    );
}

async fn a_taken_deployment_id_is_a_deployment_conflict(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    claim_and_complete(store, &[("t1", TaskState::Succeeded, "ok")], NOW + 10).await;
    // No deployment is active anywhere: a unique violation here is the id, and must be
    // reported as such, not as an active deployment of the environment.
    for environment in ["staging", "production"] {
        assert_conflict(
            store
                .create_deployment(&deployment("dep-1", environment, "2.0", NOW + 20), &[])
                .await,
            "deployment",
            "dep-1",
        );
    }
    let stored = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(
        (stored.version.as_str(), stored.state),
        ("1.0", DeploymentState::Succeeded)
    );
    assert!(store
        .active_deployment("staging")
        .await
        .ok_or_panic("active")
        .is_none());
}

async fn generations_grow_with_every_deployment_and_tasks_carry_them(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    // The caller's generations are ignored: the store assigns them.
    let dep_1 = Deployment {
        generation: 999,
        ..deployment("dep-1", "staging", "1.0", NOW)
    };
    let dep_1_tasks = [
        Task {
            generation: 999,
            ..task("t1-web-1", "dep-1", "web-1", "agent-1", 0, "{}")
        },
        task("t1-web-2", "dep-1", "web-2", "agent-1", 1, "{}"),
    ];
    let g1 = store
        .create_deployment(&dep_1, &dep_1_tasks)
        .await
        .ok_or_panic("dep-1");
    assert!(g1 > 0, "{g1}");
    let g2 = deploy_to(
        store,
        "production",
        "dep-2",
        "1.0",
        NOW + 10,
        &[("t2-db-1", "db-1", "agent-2")],
    )
    .await;
    assert!(g2 > g1, "across environments: {g1} then {g2}");
    // A refused deployment takes no generation that a later one could be below.
    assert_conflict(
        store
            .create_deployment(&deployment("dep-x", "staging", "2.0", NOW + 15), &[])
            .await,
        "active deployment",
        "staging",
    );
    claim_and_complete(
        store,
        &[
            ("t1-web-1", TaskState::Succeeded, "ok"),
            ("t1-web-2", TaskState::Succeeded, "ok"),
        ],
        NOW + 20,
    )
    .await;
    // Created with an earlier time than dep-1 (another replica's clock): its generation
    // still follows the order the store saw them in.
    let g3 = deploy(store, "dep-3", "2.0", NOW - 1_000, &[("t3-web-1", "web-1")]).await;
    assert!(g3 > g2, "{g2} then {g3}");

    for (id, generation) in [("dep-1", g1), ("dep-2", g2), ("dep-3", g3)] {
        assert_eq!(
            store.get_deployment(id).await.ok_or_panic("get").generation,
            generation,
            "{id}"
        );
        let tasks = store.tasks_of_deployment(id).await.ok_or_panic("tasks");
        assert!(!tasks.is_empty());
        for t in &tasks {
            assert_eq!(t.generation, generation, "{}", t.id);
            assert_eq!(
                store.get_task(&t.id).await.ok_or_panic("get").generation,
                generation
            );
        }
    }
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 30)
        .await
        .ok_or_panic("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|t| (t.id.as_str(), t.generation))
            .collect::<Vec<_>>(),
        [("t3-web-1", g3)]
    );
    let listed: Vec<_> = store
        .list_deployments(None, 10)
        .await
        .ok_or_panic("list")
        .into_iter()
        .map(|d| (d.id, d.generation))
        .collect();
    assert_eq!(
        listed,
        [
            ("dep-2".to_owned(), g2),
            ("dep-1".to_owned(), g1),
            ("dep-3".to_owned(), g3),
        ]
    );
}

async fn desired_state_is_the_succeeded_task_of_the_highest_generation(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let g1 = deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1-web-1", "web-1"), ("t1-web-2", "web-2")],
    )
    .await;
    // dep-1's results are stored with a clock far ahead of dep-2's: finish times and
    // generations disagree, and the generation must win.
    claim_and_complete(
        store,
        &[
            ("t1-web-1", TaskState::Succeeded, "ok"),
            ("t1-web-2", TaskState::Succeeded, "ok"),
        ],
        NOW + 50_000,
    )
    .await;
    let g2 = deploy(store, "dep-2", "2.0", NOW + 1_000, &[("t2-web-1", "web-1")]).await;
    claim_and_complete(
        store,
        &[("t2-web-1", TaskState::Succeeded, "ok")],
        NOW + 20_000,
    )
    .await;
    assert!(g2 > g1);
    let t1 = store.get_task("t1-web-1").await.ok_or_panic("get");
    let t2 = store.get_task("t2-web-1").await.ok_or_panic("get");
    assert!(
        t1.finished_at_ms > t2.finished_at_ms,
        "the older generation finished later: {t1:?} {t2:?}"
    );

    let expected = [
        DesiredPayload {
            target: "web-1".to_owned(),
            deployed: Some((payload("2.0", "web-1"), g2)),
        },
        DesiredPayload {
            target: "web-2".to_owned(),
            deployed: Some((payload("1.0", "web-2"), g1)),
        },
    ];
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired"),
        expected
    );
    let latest = store
        .latest_succeeded_task("web-1")
        .await
        .ok_or_panic("latest")
        .unwrap_or_else(|| panic!("web-1 has succeeded tasks"));
    assert_eq!((latest.id.as_str(), latest.generation), ("t2-web-1", g2));

    // A newer generation that fails, or is cancelled, changes nothing.
    deploy(store, "dep-3", "3.0", NOW + 2_000, &[("t3-web-1", "web-1")]).await;
    claim_and_complete(
        store,
        &[("t3-web-1", TaskState::Failed, "crashed")],
        NOW + 60_000,
    )
    .await;
    deploy(store, "dep-4", "3.0", NOW + 3_000, &[("t4-web-1", "web-1")]).await;
    store
        .cancel_deployment("dep-4", "cancelled", NOW + 70_000)
        .await
        .ok_or_panic("cancel");
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired"),
        expected
    );
    assert_eq!(
        store
            .latest_succeeded_task("web-1")
            .await
            .ok_or_panic("latest")
            .map(|t| t.id),
        Some("t2-web-1".to_owned())
    );
    assert_eq!(
        store
            .latest_succeeded_task("db-1")
            .await
            .ok_or_panic("latest"),
        None
    );
}

async fn generations_keep_growing_after_history_is_deleted(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    store
        .create_environment(&environment("qa", None, NOW))
        .await
        .ok_or_panic("qa");
    let g1 = deploy(store, "dep-1", "1.0", NOW, &[]).await;
    store
        .cancel_deployment("dep-1", "cancelled", NOW + 1)
        .await
        .ok_or_panic("cancel");
    // The newest generation belongs to qa, whose history then goes.
    let g2 = deploy_to(store, "qa", "dep-2", "1.0", NOW + 2, &[]).await;
    store
        .cancel_deployment("dep-2", "cancelled", NOW + 3)
        .await
        .ok_or_panic("cancel");
    store
        .delete_environment("qa", true)
        .await
        .ok_or_panic("delete qa");
    assert!(g2 > g1);
    // An agent may still hold generation g2 for a target of qa; a later deployment must
    // not be taken for an older one.
    let g3 = deploy(store, "dep-3", "2.0", NOW + 4, &[]).await;
    assert!(
        g3 > g2,
        "generation {g3} after {g2} was deleted: generations went back"
    );
}

async fn cancelling_stops_unfinished_tasks_and_discards_late_results(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    store
        .create_target(&target("web-3", "staging", "agent-2"))
        .await
        .ok_or_panic("web-3");
    deploy_to(
        store,
        "staging",
        "dep-1",
        "1.0",
        NOW,
        &[
            ("t-done", "web-1", "agent-1"),
            ("t-running", "web-2", "agent-1"),
            ("t-waiting", "web-3", "agent-2"),
        ],
    )
    .await;
    // web-1 succeeds, web-2 is assigned, web-3's agent never claimed its task.
    claim_and_complete(
        store,
        &[("t-done", TaskState::Succeeded, "ok")],
        NOW + 1_000,
    )
    .await;
    let running = store.get_task("t-running").await.ok_or_panic("get");
    assert_eq!(running.state, TaskState::Assigned);

    let cancelled = store
        .cancel_deployment("dep-1", "cancelled by alice", NOW + 5_000)
        .await
        .ok_or_panic("cancel");
    assert_eq!(sorted_ids(&cancelled), ["t-running", "t-waiting"]);
    for t in &cancelled {
        assert_eq!(t.state, TaskState::Cancelled, "{t:?}");
        assert_eq!(t.message.as_deref(), Some("cancelled by alice"));
        assert_eq!(t.finished_at_ms, Some(NOW + 5_000));
        assert_eq!(&store.get_task(&t.id).await.ok_or_panic("get"), t);
    }
    let done = store.get_task("t-done").await.ok_or_panic("get");
    assert_eq!(
        (done.state, done.finished_at_ms),
        (TaskState::Succeeded, Some(NOW + 1_000))
    );
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Cancelled);
    assert_eq!(dep.message.as_deref(), Some("cancelled by alice"));
    assert_eq!(dep.finished_at_ms, Some(NOW + 5_000));
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None
    );

    // The agent's result arrives afterwards: discarded, nothing changes.
    assert_eq!(
        store
            .complete_task(
                "t-running",
                running.epoch,
                TaskState::Succeeded,
                "ok",
                NOW + 6_000
            )
            .await
            .ok_or_panic("late result"),
        None
    );
    assert_eq!(
        store.get_task("t-running").await.ok_or_panic("get").state,
        TaskState::Cancelled
    );
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get"),
        dep,
        "the deployment stays cancelled"
    );
    // Cancelled tasks are neither claimed nor expired.
    assert!(store
        .claim_tasks_for_agent("agent-2", NOW + 6_000)
        .await
        .ok_or_panic("claim")
        .is_empty());
    assert!(store
        .expire_tasks(NOW + TASK_DEADLINE_MS, unanswered)
        .await
        .ok_or_panic("expire")
        .is_empty());

    // Replicas learn of them by time; `since` is exclusive.
    let since = store
        .cancelled_tasks_since(NOW + 4_999)
        .await
        .ok_or_panic("since");
    assert_eq!(sorted_ids(&since), ["t-running", "t-waiting"]);
    assert!(store
        .cancelled_tasks_since(NOW + 5_000)
        .await
        .ok_or_panic("since")
        .is_empty());

    assert_conflict(
        store.cancel_deployment("dep-1", "again", NOW + 7_000).await,
        "finished deployment",
        "cancelled",
    );
    assert_not_found(
        store.cancel_deployment("dep-9", "nothing", NOW).await,
        "deployment",
        "dep-9",
    );

    // Succeeded and failed deployments are finished too, and stay as they are.
    deploy(store, "dep-2", "2.0", NOW + 10_000, &[("t2", "web-1")]).await;
    claim_and_complete(store, &[("t2", TaskState::Succeeded, "ok")], NOW + 11_000).await;
    deploy(store, "dep-3", "3.0", NOW + 20_000, &[("t3", "web-1")]).await;
    claim_and_complete(store, &[("t3", TaskState::Failed, "crashed")], NOW + 21_000).await;
    for (id, state) in [("dep-2", "succeeded"), ("dep-3", "failed")] {
        let before = store.get_deployment(id).await.ok_or_panic("get");
        assert_conflict(
            store.cancel_deployment(id, "too late", NOW + 30_000).await,
            "finished deployment",
            state,
        );
        assert_eq!(store.get_deployment(id).await.ok_or_panic("get"), before);
    }
    assert_eq!(
        sorted_ids(&store.cancelled_tasks_since(NOW).await.ok_or_panic("since")),
        ["t-running", "t-waiting"]
    );
}

async fn deployments_are_found_by_id_or_unique_prefix(f: &Fixture) {
    const A1: &str = "0190aaaa-1111-7000-8000-000000000001";
    const A2: &str = "0190aaaa-1111-7000-8000-000000000002";
    const B: &str = "0190bbbb-2222-7000-8000-000000000003";
    let store = &f.store;
    delivery_fixture(store).await;
    for (i, id) in [A1, A2, B].into_iter().enumerate() {
        deploy(store, id, "1.0", NOW + i as i64, &[]).await;
        store
            .cancel_deployment(id, "cancelled", NOW + i as i64)
            .await
            .ok_or_panic("cancel");
    }
    let found = |query: &'static str| async move {
        store
            .find_deployment(query)
            .await
            .map(|d| d.id)
            .unwrap_or_else(|e| panic!("finding {query}: {}", chain(&e)))
    };
    assert_eq!(found(A1).await, A1);
    assert_eq!(found(A2).await, A2);
    assert_eq!(found(B).await, B);
    assert_eq!(found("0190bbbb").await, B);
    assert_eq!(found("0190bbbb-2222-7").await, B);
    assert_eq!(found("0190BBBB-2222").await, B, "prefixes ignore case");

    for ambiguous in ["0190aaaa", "0190aaaa-1111-7000-8000-00000000000"] {
        assert_conflict(
            store.find_deployment(ambiguous).await,
            "deployment id prefix",
            ambiguous,
        );
    }
    for missing in [
        // Too short to be a prefix, though it starts an id.
        "0190bbb",
        "",
        "0190cccc",
        // Not wildcards: `_` and `%` would match both A ids in a LIKE pattern.
        "0190aaaa-1111-7000-8000-00000000000_",
        "0190aaa%",
        "dep-unknown",
    ] {
        assert_not_found(store.find_deployment(missing).await, "deployment", missing);
    }
}

async fn numbered_log_lines_are_stored_once(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1", "web-1"), ("t2", "web-2")],
    )
    .await;
    let lines: [(&str, Option<i64>, &str); 9] = [
        ("", None, "requested by alice"),
        ("t1", Some(1), "pulling"),
        ("t1", Some(2), "starting"),
        // Re-sent after a reconnect: already stored, the first text is kept.
        ("t1", Some(1), "pulling (re-sent)"),
        ("t1", Some(2), "starting"),
        // Another task numbers its own lines.
        ("t2", Some(1), "pulling web-2"),
        // Unnumbered lines are never taken for duplicates.
        ("", None, "requested by alice"),
        ("t1", None, "note"),
        ("t1", None, "note"),
    ];
    for (i, (task_id, line, message)) in lines.into_iter().enumerate() {
        store
            .append_log("dep-1", task_id, line, NOW + i as i64, message)
            .await
            .ok_or_panic("append");
    }
    let stored: Vec<_> = store
        .logs_after("dep-1", 0, 100)
        .await
        .ok_or_panic("logs")
        .into_iter()
        .map(|l| (l.task_id, l.at_ms - NOW, l.message))
        .collect();
    let expected: Vec<_> = [
        ("", 0, "requested by alice"),
        ("t1", 1, "pulling"),
        ("t1", 2, "starting"),
        ("t2", 5, "pulling web-2"),
        ("", 6, "requested by alice"),
        ("t1", 7, "note"),
        ("t1", 8, "note"),
    ]
    .into_iter()
    .map(|(t, at, m)| (t.to_owned(), at, m.to_owned()))
    .collect();
    assert_eq!(stored, expected);
    assert_not_found(
        store.append_log("dep-9", "t9", Some(1), NOW, "lost").await,
        "deployment",
        "dep-9",
    );
}

async fn expiry_names_each_agent_and_open_work_is_listed(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let early = |t: Task| Task {
        deadline_at_ms: NOW + 1_000,
        ..t
    };
    store
        .create_deployment(
            &deployment("dep-1", "staging", "1.0", NOW),
            &[
                early(task("k1", "dep-1", "web-1", "agent-1", 0, "{}")),
                task("k2", "dep-1", "web-2", "agent-1", 1, "{}"),
            ],
        )
        .await
        .ok_or_panic("dep-1");
    store
        .create_deployment(
            &deployment("dep-2", "production", "1.0", NOW),
            &[early(task("k3", "dep-2", "db-1", "agent-2", 2, "{}"))],
        )
        .await
        .ok_or_panic("dep-2");

    let agents = |now_ms: i64| async move {
        let mut agents = store
            .agents_with_expired_tasks(now_ms)
            .await
            .ok_or_panic("agents with expired tasks");
        agents.sort_unstable();
        agents
    };
    assert!(agents(NOW + 999).await.is_empty());
    assert_eq!(agents(NOW + 1_000).await, ["agent-1", "agent-2"]);

    // Open work by creation time, oldest first; `before` is exclusive.
    let open = |before_ms: i64| async move {
        store
            .open_tasks_created_before(before_ms)
            .await
            .ok_or_panic("open tasks")
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert!(open(NOW).await.is_empty());
    assert_eq!(open(NOW + 1).await, ["k1"]);
    assert_eq!(open(NOW + 3).await, ["k1", "k2", "k3"]);

    let expired = store
        .expire_tasks(NOW + 1_000, |agent| format!("agent {agent} is unreachable"))
        .await
        .ok_or_panic("expire");
    assert_eq!(
        expired
            .iter()
            .map(|t| (t.id.as_str(), t.state, t.message.as_deref()))
            .collect::<Vec<_>>(),
        [
            (
                "k1",
                TaskState::Failed,
                Some("deadline passed: agent agent-1 is unreachable")
            ),
            (
                "k3",
                TaskState::Failed,
                Some("deadline passed: agent agent-2 is unreachable")
            ),
        ]
    );
    let dep_2 = store.get_deployment("dep-2").await.ok_or_panic("get");
    assert_eq!(dep_2.state, DeploymentState::Failed);
    assert_eq!(
        dep_2.message.as_deref(),
        Some("db-1: deadline passed: agent agent-2 is unreachable")
    );
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    assert!(agents(NOW + 1_000).await.is_empty());
    assert_eq!(open(NOW + 3).await, ["k2"]);

    // Assigned tasks are open work too.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("claim");
    assert_eq!(sorted_ids(&claimed), ["k2"]);
    let still_open = store
        .open_tasks_created_before(NOW + 3)
        .await
        .ok_or_panic("open");
    assert_eq!(
        still_open
            .iter()
            .map(|t| (t.id.as_str(), t.state))
            .collect::<Vec<_>>(),
        [("k2", TaskState::Assigned)]
    );
}

async fn succeeded_deployment_of_version_is_the_highest_generation(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let version_of = |version: &'static str| async move {
        store
            .succeeded_deployment_of_version("staging", version)
            .await
            .ok_or_panic("succeeded deployment of version")
            .map(|d| d.id)
    };
    assert_eq!(version_of("1.0").await, None);
    // 1.0, then 2.0, then back to 1.0 (finished earlier by the clock than the first),
    // then 3.0, which fails.
    for (id, version, finished_at_ms, state) in [
        ("dep-1", "1.0", NOW + 50_000, TaskState::Succeeded),
        ("dep-2", "2.0", NOW + 20_000, TaskState::Succeeded),
        ("dep-3", "1.0", NOW + 30_000, TaskState::Succeeded),
        ("dep-4", "3.0", NOW + 40_000, TaskState::Failed),
    ] {
        let task_id = format!("t-{id}");
        deploy(store, id, version, NOW, &[(task_id.as_str(), "web-1")]).await;
        claim_and_complete(store, &[(task_id.as_str(), state, "")], finished_at_ms).await;
    }
    assert_eq!(version_of("1.0").await.as_deref(), Some("dep-3"));
    assert_eq!(version_of("2.0").await.as_deref(), Some("dep-2"));
    assert_eq!(version_of("3.0").await, None, "3.0 never succeeded");
    assert_eq!(version_of("9.9").await, None);
    assert_eq!(
        store
            .succeeded_deployment_of_version("production", "1.0")
            .await
            .ok_or_panic("production"),
        None
    );
}

async fn environment_deployment_timeout_round_trips(f: &Fixture) {
    let store = &f.store;
    let staging = Environment {
        deployment_timeout_seconds: Some(900),
        ..environment("staging", None, NOW)
    };
    let production = environment("production", Some("staging"), NOW + 1);
    store
        .create_environment(&staging)
        .await
        .ok_or_panic("staging");
    store
        .create_environment(&production)
        .await
        .ok_or_panic("production");
    assert_eq!(
        store.get_environment("staging").await.ok_or_panic("get"),
        staging
    );
    assert_eq!(
        store.list_environments().await.ok_or_panic("list"),
        [staging.clone(), production.clone()]
    );

    // Set where there was none, and cleared where there was one.
    let production = Environment {
        deployment_timeout_seconds: Some(3 * 3_600),
        ..production
    };
    let staging = Environment {
        deployment_timeout_seconds: None,
        ..staging
    };
    store
        .update_environment(&production)
        .await
        .ok_or_panic("update production");
    store
        .update_environment(&staging)
        .await
        .ok_or_panic("update staging");
    assert_eq!(
        store.list_environments().await.ok_or_panic("list"),
        [staging, production]
    );
}

async fn deleting_an_environment_refuses_dependents_and_removes_history(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    // History in both environments: deployments with tasks and logs, drift, variables.
    deploy(store, "dep-s1", "1.0", NOW, &[("ts1", "web-1")]).await;
    claim_and_complete(store, &[("ts1", TaskState::Succeeded, "ok")], NOW + 10).await;
    deploy(store, "dep-s2", "2.0", NOW + 100, &[("ts2", "web-1")]).await;
    claim_and_complete(store, &[("ts2", TaskState::Succeeded, "ok")], NOW + 110).await;
    deploy_to(
        store,
        "production",
        "dep-p1",
        "1.0",
        NOW + 200,
        &[("tp1", "db-1", "agent-2")],
    )
    .await;
    claim_and_complete_for(
        store,
        "agent-2",
        &[("tp1", TaskState::Succeeded, "ok")],
        NOW + 210,
    )
    .await;
    for (deployment_id, task_id) in [("dep-s1", "ts1"), ("dep-p1", "tp1")] {
        store
            .append_log(deployment_id, task_id, Some(1), NOW, "started")
            .await
            .ok_or_panic("log");
    }
    let staging_drift = drift_record("web-1", "web", DriftKind::Missing, NOW + 300);
    let production_drift = DriftRecord {
        environment: "production".to_owned(),
        agent_id: "agent-2".to_owned(),
        ..drift_record("db-1", "db", DriftKind::ImageChanged, NOW + 300)
    };
    for record in [&staging_drift, &production_drift] {
        store.upsert_drift(record).await.ok_or_panic("drift");
    }
    for env in ["staging", "production"] {
        store
            .set_variable(&variable(
                env,
                VariableKind::Var,
                "REGION",
                "eu",
                "alice",
                NOW,
            ))
            .await
            .ok_or_panic("variable");
    }

    assert_not_found(
        store.delete_environment("qa", false).await,
        "environment",
        "qa",
    );
    // Targets first (the first by name), then environments that come after it; history
    // does not lift either.
    for with_history in [false, true] {
        assert_conflict(
            store.delete_environment("staging", with_history).await,
            "target",
            "web-1",
        );
    }
    store
        .delete_target("web-1", NOW + 400)
        .await
        .ok_or_panic("web-1");
    store
        .delete_target("web-2", NOW + 400)
        .await
        .ok_or_panic("web-2");
    for with_history in [false, true] {
        assert_conflict(
            store.delete_environment("staging", with_history).await,
            "environment",
            "production",
        );
    }
    store
        .delete_target("db-1", NOW + 400)
        .await
        .ok_or_panic("db-1");
    // Deployments: the newest is named.
    assert_conflict(
        store.delete_environment("production", false).await,
        "deployment",
        "dep-p1",
    );
    assert_conflict(
        store.delete_environment("staging", false).await,
        "environment",
        "production",
    );
    // Nothing was deleted by the refusals.
    assert_eq!(store.list_environments().await.ok_or_panic("list").len(), 2);
    assert_eq!(
        store
            .list_variables("production")
            .await
            .ok_or_panic("variables")
            .len(),
        1
    );

    store
        .delete_environment("production", true)
        .await
        .ok_or_panic("delete production with its history");
    assert_not_found(
        store.get_environment("production").await,
        "environment",
        "production",
    );
    assert_not_found(store.get_deployment("dep-p1").await, "deployment", "dep-p1");
    assert_not_found(store.get_task("tp1").await, "task", "tp1");
    assert!(store
        .logs_after("dep-p1", 0, 100)
        .await
        .ok_or_panic("logs")
        .is_empty());
    assert!(store
        .list_drift(Some("production"), true)
        .await
        .ok_or_panic("drift")
        .is_empty());
    assert!(store
        .list_variables("production")
        .await
        .ok_or_panic("variables")
        .is_empty());
    // Staging's history is untouched.
    assert_eq!(
        store
            .list_deployments(Some("staging"), 10)
            .await
            .ok_or_panic("staging deployments")
            .len(),
        2
    );
    assert_eq!(
        store
            .logs_after("dep-s1", 0, 100)
            .await
            .ok_or_panic("logs")
            .len(),
        1
    );
    assert_eq!(
        store
            .list_drift(Some("staging"), true)
            .await
            .ok_or_panic("drift")
            .len(),
        1
    );
    assert_eq!(
        store
            .list_variables("staging")
            .await
            .ok_or_panic("variables")
            .len(),
        1
    );

    // Now only staging's own history holds it.
    assert_conflict(
        store.delete_environment("staging", false).await,
        "deployment",
        "dep-s2",
    );
    store
        .delete_environment("staging", true)
        .await
        .ok_or_panic("delete staging with its history");
    assert!(store
        .list_environments()
        .await
        .ok_or_panic("list")
        .is_empty());
    assert!(store
        .list_deployments(None, 10)
        .await
        .ok_or_panic("deployments")
        .is_empty());
    assert!(store
        .list_drift(None, true)
        .await
        .ok_or_panic("drift")
        .is_empty());

    // An environment without history goes without `with_history`.
    store
        .create_environment(&environment("qa", None, NOW))
        .await
        .ok_or_panic("qa");
    store
        .delete_environment("qa", false)
        .await
        .ok_or_panic("delete qa");
    assert_not_found(
        store.delete_environment("qa", false).await,
        "environment",
        "qa",
    );
}

async fn variables_and_secrets_are_set_listed_and_deleted(f: &Fixture) {
    let store = &f.store;
    for env in ["staging", "production"] {
        store
            .create_environment(&environment(env, None, NOW))
            .await
            .ok_or_panic("environment");
    }
    assert_not_found(
        store
            .set_variable(&variable(
                "qa",
                VariableKind::Var,
                "REGION",
                "eu",
                "alice",
                NOW,
            ))
            .await,
        "environment",
        "qa",
    );
    assert!(store
        .list_variables("staging")
        .await
        .ok_or_panic("list")
        .is_empty());

    let region = variable("staging", VariableKind::Var, "REGION", "eu", "alice", NOW);
    let api_url = variable(
        "staging",
        VariableKind::Var,
        "API_URL",
        "https://api.example",
        "alice",
        NOW,
    );
    // A secret may share a variable's name: `${secret.API_URL}` is another reference.
    let api_secret = variable(
        "staging",
        VariableKind::Secret,
        "API_URL",
        "v1:sealed-url",
        "alice",
        NOW,
    );
    let db_password = variable(
        "staging",
        VariableKind::Secret,
        "DB_PASSWORD",
        "v1:sealed-password",
        "alice",
        NOW,
    );
    let production_region = variable("production", VariableKind::Var, "REGION", "us", "bob", NOW);
    for v in [
        &region,
        &db_password,
        &api_url,
        &api_secret,
        &production_region,
    ] {
        store.set_variable(v).await.ok_or_panic("set");
    }
    // By kind (`secret` before `var`), then name.
    assert_eq!(
        store.list_variables("staging").await.ok_or_panic("list"),
        [
            api_secret.clone(),
            db_password.clone(),
            api_url.clone(),
            region.clone()
        ]
    );

    // Set again: replaced, with who and when.
    let region_moved = Variable {
        stored_value: "eu-west".to_owned(),
        updated_by: "bob".to_owned(),
        updated_at_ms: NOW + 10,
        ..region.clone()
    };
    store
        .set_variable(&region_moved)
        .await
        .ok_or_panic("replace");
    assert_eq!(
        store.list_variables("staging").await.ok_or_panic("list"),
        [
            api_secret.clone(),
            db_password.clone(),
            api_url.clone(),
            region_moved.clone()
        ]
    );
    assert_eq!(
        store.list_variables("production").await.ok_or_panic("list"),
        std::slice::from_ref(&production_region),
        "another environment's variable of the same name is its own"
    );

    // Deleting the variable keeps the secret of the same name.
    store
        .delete_variable("staging", VariableKind::Var, "API_URL")
        .await
        .ok_or_panic("delete");
    assert_eq!(
        store.list_variables("staging").await.ok_or_panic("list"),
        [api_secret, db_password, region_moved]
    );
    assert_not_found(
        store
            .delete_variable("staging", VariableKind::Var, "API_URL")
            .await,
        "variable",
        "staging/API_URL",
    );
    assert_not_found(
        store
            .delete_variable("staging", VariableKind::Secret, "REGION")
            .await,
        "secret",
        "staging/REGION",
    );
    assert_not_found(
        store
            .delete_variable("qa", VariableKind::Var, "REGION")
            .await,
        "variable",
        "qa/REGION",
    );

    // The environment's variables and secrets go with it.
    store
        .delete_environment("staging", false)
        .await
        .ok_or_panic("delete staging");
    assert!(store
        .list_variables("staging")
        .await
        .ok_or_panic("list")
        .is_empty());
    store
        .create_environment(&environment("staging", None, NOW + 20))
        .await
        .ok_or_panic("staging again");
    assert!(
        store
            .list_variables("staging")
            .await
            .ok_or_panic("list")
            .is_empty(),
        "a new environment of the same name starts empty"
    );
    assert_eq!(
        store.list_variables("production").await.ok_or_panic("list"),
        [production_region]
    );
}

async fn updating_a_target_keeps_its_identity_and_waits_for_unfinished_tasks(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let original = store.get_target("web-1").await.ok_or_panic("get");
    // Only the agent and settings change, whatever else the caller sends.
    let update = Target {
        environment: "production".to_owned(),
        kind: TargetKind::Compose,
        agent_id: "agent-2".to_owned(),
        settings: BTreeMap::from([("project".to_owned(), "shop".to_owned())]),
        created_at_ms: NOW + 999,
        ..original.clone()
    };
    store.update_target(&update).await.ok_or_panic("update");
    let expected = Target {
        agent_id: update.agent_id.clone(),
        settings: update.settings.clone(),
        ..original.clone()
    };
    assert_eq!(store.get_target("web-1").await.ok_or_panic("get"), expected);
    assert_eq!(
        store
            .targets_for_agent("agent-2")
            .await
            .ok_or_panic("agent-2")
            .into_iter()
            .map(|t| t.name)
            .collect::<Vec<_>>(),
        ["db-1", "web-1"]
    );

    assert_not_found(
        store
            .update_target(&target("web-9", "staging", "agent-1"))
            .await,
        "target",
        "web-9",
    );
    assert_not_found(
        store
            .update_target(&Target {
                agent_id: "agent-9".to_owned(),
                ..expected.clone()
            })
            .await,
        "agent",
        "agent-9",
    );
    assert_eq!(store.get_target("web-1").await.ok_or_panic("get"), expected);

    // Pending, then assigned: refused, naming the deployment; finished: allowed.
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-2")]).await;
    let web_2 = store.get_target("web-2").await.ok_or_panic("get");
    let moved = Target {
        agent_id: "agent-2".to_owned(),
        ..web_2.clone()
    };
    assert_conflict(store.update_target(&moved).await, "deployment", "dep-1");
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 10)
        .await
        .ok_or_panic("claim");
    assert_eq!(sorted_ids(&claimed), ["t1"]);
    assert_conflict(store.update_target(&moved).await, "deployment", "dep-1");
    assert_eq!(store.get_target("web-2").await.ok_or_panic("get"), web_2);
    // Another target of the same deployment's environment is not held.
    store
        .update_target(&Target {
            agent_id: "agent-1".to_owned(),
            ..expected
        })
        .await
        .ok_or_panic("update web-1 meanwhile");
    store
        .complete_task("t1", 1, TaskState::Failed, "crashed", NOW + 20)
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("t1 completes"));
    store
        .update_target(&moved)
        .await
        .ok_or_panic("update when finished");
    assert_eq!(store.get_target("web-2").await.ok_or_panic("get"), moved);
}

async fn deleting_a_target_keeps_its_history_and_resolves_its_drift(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1", "web-1"), ("t2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[
            ("t1", TaskState::Succeeded, "ok"),
            ("t2", TaskState::Succeeded, "ok"),
        ],
        NOW + 10,
    )
    .await;
    // web-1: a finding resolved earlier and an open one; web-2: an open one.
    let web_1_old = drift_record("web-1", "web", DriftKind::ImageChanged, NOW + 20);
    store.upsert_drift(&web_1_old).await.ok_or_panic("drift");
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 30)
            .await
            .ok_or_panic("resolve")
            .len(),
        1
    );
    let web_1_open = drift_record("web-1", "web", DriftKind::Missing, NOW + 40);
    let web_2_open = drift_record("web-2", "web", DriftKind::Missing, NOW + 40);
    for record in [&web_1_open, &web_2_open] {
        store.upsert_drift(record).await.ok_or_panic("drift");
    }

    store
        .delete_target("web-1", NOW + 100)
        .await
        .ok_or_panic("delete");
    assert_not_found(store.get_target("web-1").await, "target", "web-1");
    assert_not_found(
        store.delete_target("web-1", NOW + 200).await,
        "target",
        "web-1",
    );
    // Its history stays.
    let t1 = store.get_task("t1").await.ok_or_panic("task history");
    assert_eq!(
        (t1.target.as_str(), t1.state),
        ("web-1", TaskState::Succeeded)
    );
    assert_eq!(
        store
            .tasks_of_deployment("dep-1")
            .await
            .ok_or_panic("tasks")
            .len(),
        2
    );
    // Its open finding is resolved now; the one resolved before keeps its time; another
    // target's is still open.
    let resolved_at = |r: &DriftRecord, at: i64| DriftRecord {
        resolved_at_ms: Some(at),
        ..r.clone()
    };
    assert_eq!(
        store
            .list_drift(Some("staging"), true)
            .await
            .ok_or_panic("drift"),
        [
            resolved_at(&web_1_open, NOW + 100),
            web_2_open.clone(),
            resolved_at(&web_1_old, NOW + 30),
        ]
    );
    // Its agent no longer drives it.
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired")
            .into_iter()
            .map(|d| d.target)
            .collect::<Vec<_>>(),
        ["web-2"]
    );

    // Refused while a task on it is unfinished.
    deploy(store, "dep-2", "2.0", NOW + 300, &[("t3", "web-2")]).await;
    assert_conflict(
        store.delete_target("web-2", NOW + 400).await,
        "deployment",
        "dep-2",
    );
    assert!(store.get_target("web-2").await.is_ok());
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("drift"),
        [web_2_open],
        "a refused delete resolves nothing"
    );
}

async fn user_roles_change_and_a_deleted_user_loses_its_tokens(f: &Fixture) {
    let store = &f.store;
    let admin = user("admin", &[Role::Admin]);
    let alice = user("alice", &[Role::Operator]);
    let bob = user("bob", &[Role::Viewer]);
    for u in [&admin, &alice, &bob] {
        store.create_user(u).await.ok_or_panic("create user");
        store
            .insert_api_token(&format!("hash-{}", u.name), &u.id, NOW)
            .await
            .ok_or_panic("token");
    }

    // Roles are replaced, in the order given.
    store
        .change_user("alice", Some(&[Role::Approver, Role::Viewer]))
        .await
        .ok_or_panic("change alice");
    let changed = User {
        roles: vec![Role::Approver, Role::Viewer],
        ..alice.clone()
    };
    assert_eq!(store.find_user("alice").await.ok_or_panic("find"), changed);
    store
        .change_user("alice", Some(&[]))
        .await
        .ok_or_panic("no roles");
    assert!(store
        .find_user("alice")
        .await
        .ok_or_panic("find")
        .roles
        .is_empty());

    store
        .change_user("bob", None)
        .await
        .ok_or_panic("delete bob");
    assert_not_found(store.find_user("bob").await, "user", "bob");
    assert_eq!(
        store.user_for_token("hash-bob").await.ok_or_panic("token"),
        None,
        "a deleted user's tokens no longer authenticate"
    );
    assert_eq!(
        store
            .user_for_token("hash-alice")
            .await
            .ok_or_panic("token")
            .map(|u| u.name),
        Some("alice".to_owned())
    );
    assert_eq!(store.count_users().await.ok_or_panic("count"), 2);
    // A new user of the same name does not inherit the old tokens.
    store
        .create_user(&User {
            id: "user-bob-2".to_owned(),
            ..bob
        })
        .await
        .ok_or_panic("bob again");
    assert_eq!(
        store.user_for_token("hash-bob").await.ok_or_panic("token"),
        None
    );

    for roles in [Some(&[Role::Viewer][..]), None] {
        assert_not_found(store.change_user("carol", roles).await, "user", "carol");
    }
}

async fn the_last_admin_is_never_removed(f: &Fixture) {
    let store = &f.store;
    store
        .create_user(&user("root", &[Role::Admin]))
        .await
        .ok_or_panic("root");
    store
        .create_user(&user("ops", &[Role::Operator]))
        .await
        .ok_or_panic("ops");

    assert_conflict(
        store.change_user("root", Some(&[Role::Operator])).await,
        "last admin",
        "root",
    );
    assert_conflict(store.change_user("root", None).await, "last admin", "root");
    assert_eq!(
        store.find_user("root").await.ok_or_panic("find").roles,
        [Role::Admin]
    );
    // Keeping the admin role among others is fine; so is changing anyone else.
    store
        .change_user("root", Some(&[Role::Viewer, Role::Admin]))
        .await
        .ok_or_panic("root stays admin");
    store
        .change_user("ops", Some(&[Role::Admin]))
        .await
        .ok_or_panic("ops becomes admin");
    // Two admins: either may go, then the other is the last.
    store
        .change_user("root", Some(&[Role::Viewer]))
        .await
        .ok_or_panic("root steps down");
    assert_conflict(store.change_user("ops", None).await, "last admin", "ops");
    assert_conflict(
        store.change_user("ops", Some(&[])).await,
        "last admin",
        "ops",
    );
    store
        .change_user("root", None)
        .await
        .ok_or_panic("delete the former admin");
    assert_eq!(
        store
            .list_users()
            .await
            .ok_or_panic("list")
            .into_iter()
            .map(|u| (u.name, u.roles))
            .collect::<Vec<_>>(),
        [("ops".to_owned(), vec![Role::Admin])]
    );
}

async fn two_admins_removing_each_other_leave_one(f: &Fixture) {
    const ROUNDS: usize = 8;
    let store = &f.store;
    store
        .create_user(&user("admin-0", &[Role::Admin]))
        .await
        .ok_or_panic("admin-0");
    let mut survivor = "admin-0".to_owned();
    // Each round: the admin left by the last round and a new one remove each other at
    // the same moment, by deletion or by demotion.
    for round in 1..=ROUNDS {
        let newcomer = format!("admin-{round}");
        store
            .create_user(&user(&newcomer, &[Role::Admin]))
            .await
            .ok_or_panic("new admin");
        let delete = round % 2 == 0;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let removals: Vec<_> = [survivor.clone(), newcomer.clone()]
            .into_iter()
            .map(|name| {
                let store = store.clone();
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    start.wait().await;
                    let roles: Option<&[Role]> = if delete { None } else { Some(&[Role::Viewer]) };
                    let outcome = store.change_user(&name, roles).await;
                    (name, outcome)
                })
            })
            .collect();
        let mut removed = Vec::new();
        let mut kept = Vec::new();
        for removal in removals {
            let (name, outcome) = removal.await.unwrap_or_else(|e| panic!("task: {e}"));
            match outcome {
                Ok(()) => removed.push(name),
                Err(StoreError::Conflict {
                    entity: "last admin",
                    key,
                }) => {
                    assert_eq!(key, name);
                    kept.push(name);
                }
                Err(other) => panic!("round {round}, removing {name}: {}", chain(&other)),
            }
        }
        assert_eq!(
            (removed.len(), kept.len()),
            (1, 1),
            "round {round}: removed {removed:?}, kept {kept:?}"
        );
        let admins: Vec<_> = store
            .list_users()
            .await
            .ok_or_panic("list")
            .into_iter()
            .filter(|u| u.has_role(Role::Admin))
            .map(|u| u.name)
            .collect();
        assert_eq!(admins, kept, "round {round}");
        survivor = kept.remove(0);
    }
}

async fn goodbye_marks_an_agent_disconnected_until_its_next_hello(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "web-1").await;
    enrol(store, "agent-2", "web-2").await;
    store
        .record_hello("agent-1", &hello(NOW + 1_000))
        .await
        .ok_or_panic("hello");
    store
        .record_goodbye("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("goodbye");
    let agent = store.get_agent("agent-1").await.ok_or_panic("get");
    assert_eq!(agent.disconnected_at_ms, Some(NOW + 2_000));
    assert_eq!(agent.last_seen_at_ms, Some(NOW + 1_000));
    assert_eq!(agent.state(NOW + 2_000, 5_000), AgentState::Disconnected);
    assert_eq!(
        store
            .get_agent("agent-2")
            .await
            .ok_or_panic("get")
            .disconnected_at_ms,
        None
    );
    // Unknown agents are ignored.
    store
        .record_goodbye("nobody", NOW)
        .await
        .ok_or_panic("goodbye of nobody");

    store
        .record_hello("agent-1", &hello(NOW + 3_000))
        .await
        .ok_or_panic("hello again");
    let agent = store.get_agent("agent-1").await.ok_or_panic("get");
    assert_eq!(agent.disconnected_at_ms, None);
    assert_eq!(agent.last_seen_at_ms, Some(NOW + 3_000));
    assert_eq!(agent.state(NOW + 3_000, 5_000), AgentState::Connected);
}

async fn a_revoked_agent_can_be_deleted_and_stays_revoked(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "host-1").await;
    enrol(store, "agent-2", "host-2").await;
    store
        .create_environment(&environment("staging", None, NOW))
        .await
        .ok_or_panic("staging");
    store
        .create_target(&target("web-1", "staging", "agent-1"))
        .await
        .ok_or_panic("web-1");

    assert_not_found(
        store.delete_revoked_agent("nobody", NOW).await,
        "agent",
        "nobody",
    );
    assert_conflict(
        store.delete_revoked_agent("agent-1", NOW).await,
        "agent",
        "host-1",
    );
    store
        .revoke_agent("agent-1", NOW + 10, "retired")
        .await
        .ok_or_panic("revoke");
    assert_conflict(
        store.delete_revoked_agent("agent-1", NOW + 20).await,
        "target",
        "web-1",
    );
    assert!(store.get_agent("agent-1").await.is_ok());

    store
        .delete_target("web-1", NOW + 30)
        .await
        .ok_or_panic("delete target");
    store
        .delete_revoked_agent("agent-1", NOW + 40)
        .await
        .ok_or_panic("delete agent");
    assert_not_found(store.get_agent("agent-1").await, "agent", "agent-1");
    assert_not_found(store.find_agent("host-1").await, "agent", "host-1");
    assert_not_found(
        store.delete_revoked_agent("agent-1", NOW + 50).await,
        "agent",
        "agent-1",
    );
    // Its certificates may still be valid: its id stays on the revocation list.
    assert_eq!(
        store.revoked_agent_ids().await.ok_or_panic("revoked"),
        ["agent-1"]
    );

    // Its name is free again, for an agent with a new id.
    enrol(store, "agent-3", "host-1").await;
    assert_eq!(
        store.find_agent("host-1").await.ok_or_panic("find").id,
        "agent-3"
    );
    assert_eq!(
        store
            .list_agents()
            .await
            .ok_or_panic("list")
            .into_iter()
            .map(|a| (a.name, a.id))
            .collect::<Vec<_>>(),
        [
            ("host-1".to_owned(), "agent-3".to_owned()),
            ("host-2".to_owned(), "agent-2".to_owned()),
        ]
    );
    store
        .revoke_agent("agent-2", NOW + 60, "moved")
        .await
        .ok_or_panic("revoke agent-2");
    assert_eq!(
        store.revoked_agent_ids().await.ok_or_panic("revoked"),
        ["agent-1", "agent-2"]
    );
}

async fn registries_are_deleted(f: &Fixture) {
    let store = &f.store;
    let private = registry("registry.example.com", Some("v1:sealed"));
    let local = registry("127.0.0.1:5000", None);
    for r in [&private, &local] {
        store.upsert_registry(r).await.ok_or_panic("upsert");
    }
    store
        .delete_registry("registry.example.com")
        .await
        .ok_or_panic("delete");
    assert_eq!(
        store
            .get_registry("registry.example.com")
            .await
            .ok_or_panic("get"),
        None
    );
    assert_eq!(
        store.list_registries().await.ok_or_panic("list"),
        std::slice::from_ref(&local)
    );
    assert_not_found(
        store.delete_registry("registry.example.com").await,
        "registry",
        "registry.example.com",
    );
    // Stored again after the delete: a fresh entry.
    store.upsert_registry(&private).await.ok_or_panic("again");
    assert_eq!(
        store.list_registries().await.ok_or_panic("list"),
        [local, private]
    );
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

async fn migration_fails_all_but_the_newest_active_deployment(f: &Fixture) {
    let url = f.other_database_url().await;
    database_at_0002(&url, f.store.backend()).await;
    // Captured output, shown if the case fails.
    eprintln!("database migrated from 0002: {url}");
    let store = &connect(&url).await;
    let stored_deployment =
        |id: &'static str| async move { store.get_deployment(id).await.ok_or_panic(id) };
    let stored_task = |id: &'static str| async move { store.get_task(id).await.ok_or_panic(id) };

    // The older active deployment of staging is failed, with its open tasks.
    let old = stored_deployment("dep-old").await;
    assert_eq!(old.state, DeploymentState::Failed, "{old:?}");
    assert!(
        old.message
            .as_deref()
            .is_some_and(|m| m.starts_with("superseded")),
        "{old:?}"
    );
    assert!(old.finished_at_ms.is_some(), "{old:?}");
    for id in ["t-old-running", "t-old-waiting"] {
        let t = stored_task(id).await;
        assert_eq!(t.state, TaskState::Failed, "{t:?}");
        assert!(
            t.message
                .as_deref()
                .is_some_and(|m| m.starts_with("superseded")),
            "{t:?}"
        );
        assert!(t.finished_at_ms.is_some(), "{t:?}");
    }
    let old_ok = stored_task("t-old-ok").await;
    assert_eq!(
        (old_ok.state, old_ok.finished_at_ms),
        (TaskState::Succeeded, Some(NOW + 1_500)),
        "a finished task keeps its result"
    );
    // The newer one stays active; production's, alone there, too.
    let new = stored_deployment("dep-new").await;
    assert_eq!(
        (new.state, new.finished_at_ms),
        (DeploymentState::Pending, None)
    );
    assert_eq!(stored_task("t-new").await.state, TaskState::Pending);
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-new".to_owned())
    );
    assert_eq!(
        stored_deployment("dep-prod").await.state,
        DeploymentState::Running
    );
    assert_eq!(stored_task("t-prod").await.state, TaskState::Assigned);
    let done = stored_deployment("dep-done").await;
    assert_eq!(
        (done.state, done.finished_at_ms),
        (DeploymentState::Succeeded, Some(NOW + 500))
    );

    // Generations in creation order (ties by id), carried by the tasks.
    let expected = [
        ("dep-done", 1, &["t-done"][..]),
        (
            "dep-old",
            2,
            &["t-old-ok", "t-old-running", "t-old-waiting"][..],
        ),
        ("dep-prod", 3, &["t-prod"][..]),
        ("dep-new", 4, &["t-new"][..]),
    ];
    for (id, generation, tasks) in expected {
        assert_eq!(stored_deployment(id).await.generation, generation, "{id}");
        for task_id in tasks {
            assert_eq!(
                stored_task(task_id).await.generation,
                generation,
                "{task_id}"
            );
        }
    }
    assert_eq!(
        store
            .latest_succeeded_task("web-1")
            .await
            .ok_or_panic("latest")
            .map(|t| t.id),
        Some("t-old-ok".to_owned())
    );

    // The late result of a superseded task is discarded.
    assert_eq!(
        store
            .complete_task("t-old-running", 1, TaskState::Succeeded, "ok", NOW + 9_000)
            .await
            .ok_or_panic("late result"),
        None
    );
    // New generations follow the migrated ones (PostgreSQL: the sequence starts there),
    // and the index holds from now on.
    store
        .create_environment(&environment("qa", None, NOW))
        .await
        .ok_or_panic("qa");
    assert_eq!(
        store
            .create_deployment(&deployment("dep-5", "qa", "1.0", NOW + 10_000), &[])
            .await
            .ok_or_panic("dep-5"),
        5
    );
    assert_conflict(
        store
            .create_deployment(&deployment("dep-6", "staging", "1.0", NOW + 10_000), &[])
            .await,
        "active deployment",
        "staging",
    );
    store.close().await;
}

async fn audit_entries_and_checkpoints_are_unique_by_seq(f: &Fixture) {
    use stella_decision::audit::{AuditEntry, Checkpoint};
    let store = &f.store;
    assert!(store.audit_head().await.ok_or_panic("head").is_none());
    let first = AuditEntry::new(None, NOW, "admin", "POST /x", "/x", "sha256:00", "201");
    store
        .append_audit_entries(std::slice::from_ref(&first))
        .await
        .ok_or_panic("append");
    // Another writer's entry 1, linked to the same genesis: refused.
    let rival = AuditEntry::new(None, NOW + 1, "bob", "POST /y", "/y", "sha256:01", "201");
    assert_conflict(
        store.append_audit_entries(&[rival]).await,
        "audit entry",
        "1",
    );
    let second = AuditEntry::new(
        Some(&first),
        NOW + 2,
        "a\u{e9}\"b",
        "DELETE /z/{id}",
        "/z/1",
        "none",
        "403",
    );
    store
        .append_audit_entries(std::slice::from_ref(&second))
        .await
        .ok_or_panic("append");
    assert_eq!(
        store.audit_head().await.ok_or_panic("head"),
        Some(second.clone())
    );
    // A batch whose last seq is free but whose first is taken is refused whole: no
    // entry of it may be linked after a head that is not its own.
    let stale = AuditEntry::new(
        Some(&first),
        NOW + 5,
        "carol",
        "POST /w",
        "/w",
        "none",
        "201",
    );
    let after_stale = AuditEntry::new(
        Some(&stale),
        NOW + 6,
        "carol",
        "POST /v",
        "/v",
        "none",
        "201",
    );
    assert_conflict(
        store.append_audit_entries(&[stale, after_stale]).await,
        "audit entry",
        "2",
    );
    assert_eq!(
        store.list_audit_entries(0, 10).await.ok_or_panic("list"),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        store.list_audit_entries(1, 10).await.ok_or_panic("list"),
        vec![second.clone()]
    );
    assert!(
        store
            .list_audit_entries(0, 1)
            .await
            .ok_or_panic("list")
            .len()
            == 1
    );

    let key = stella_decision::dsse::SigningKey::from_seed([3; 32]);
    let checkpoint = Checkpoint::sign(&key, &second, NOW + 3);
    store
        .add_audit_checkpoint(&checkpoint)
        .await
        .ok_or_panic("checkpoint");
    let again = Checkpoint::sign(&key, &second, NOW + 4);
    assert_conflict(
        store.add_audit_checkpoint(&again).await,
        "audit checkpoint",
        "2",
    );
    let listed = store
        .list_audit_checkpoints(0, 10)
        .await
        .ok_or_panic("checkpoints");
    assert_eq!(listed, vec![checkpoint]);
    assert!(store
        .list_audit_checkpoints(2, 10)
        .await
        .ok_or_panic("checkpoints")
        .is_empty());
    let entries = store.list_audit_entries(0, 10).await.ok_or_panic("list");
    stella_decision::audit::verify_chain(&entries, &listed, &[key.public_key()])
        .unwrap_or_else(|fault| panic!("{fault}"));
}

async fn concurrent_audit_writers_leave_one_contiguous_chain(f: &Fixture) {
    use stella_decision::audit::{verify_chain, AuditEntry};
    const WRITERS: usize = 6;
    const EACH: usize = 25;
    // Two pools, as two replicas would have; three writers on each.
    let other = connect(&f.url).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = if w % 2 == 0 {
                f.store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                let mut conflicts = 0;
                for i in 0..EACH {
                    loop {
                        let head = store.audit_head().await.ok_or_panic("head");
                        let entry = AuditEntry::new(
                            head.as_ref(),
                            NOW,
                            format!("writer-{w}"),
                            "POST /x",
                            format!("/x/{i}"),
                            "sha256:00",
                            "201",
                        );
                        match store.append_audit_entries(&[entry]).await {
                            Ok(()) => break,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(error) => panic!("append: {}", chain(&error)),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for writer in writers {
        conflicts += writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    }
    let entries = f
        .store
        .list_audit_entries(0, 10_000)
        .await
        .ok_or_panic("list");
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=(WRITERS * EACH) as i64).collect();
    assert_eq!(seqs, expected);
    let summary = verify_chain(&entries, &[], &[]).unwrap_or_else(|fault| panic!("{fault}"));
    assert_eq!(summary.entries, WRITERS * EACH);
    eprintln!("{} lost races for a seq, each retried", conflicts);
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

async fn scan_documents_are_new_once_per_content_and_digest(f: &Fixture) {
    use stella_control_plane::store::ScanLink;
    let store = &f.store;
    fn link(digest: &str) -> ScanLink<'_> {
        ScanLink {
            digest,
            image: "registry.example.com/web:1",
        }
    }
    let (d1, d2) = (
        format!("sha256:{}", "1".repeat(64)),
        format!("sha256:{}", "2".repeat(64)),
    );
    let (d1, d2) = (d1.as_str(), d2.as_str());
    let report = scan_document(r#"{"SchemaVersion":2}"#, "trivy", 1_000);
    assert!(store
        .import_scan_document(&report, Some(link(d1)))
        .await
        .ok_or_panic("scan store"));
    assert!(!store
        .import_scan_document(&report, Some(link(d1)))
        .await
        .ok_or_panic("scan store"));
    // The same report for another image is a new link.
    assert!(store
        .import_scan_document(&report, Some(link(d2)))
        .await
        .ok_or_panic("scan store"));
    let vex = scan_document(r#"{"@context":"https://openvex.dev/ns"}"#, "openvex", 1_001);
    assert!(store
        .import_scan_document(&vex, None)
        .await
        .ok_or_panic("scan store"));
    assert!(!store
        .import_scan_document(&vex, None)
        .await
        .ok_or_panic("scan store"));

    let newer = scan_document(r#"{"SchemaVersion":2,"x":1}"#, "trivy", 2_000);
    assert!(store
        .import_scan_document(&newer, Some(link(d1)))
        .await
        .ok_or_panic("scan store"));
    let latest = store
        .latest_report(d1, "trivy")
        .await
        .ok_or_panic("report")
        .unwrap_or_else(|| panic!("no report"));
    assert_eq!(latest.id, newer.id);
    assert!(store
        .latest_report(d1, "grype")
        .await
        .ok_or_panic("scan store")
        .is_none());
    let listed = store.scan_reports(d1).await.ok_or_panic("scan store");
    let ids: Vec<&str> = listed.iter().map(|r| r.document_id.as_str()).collect();
    assert_eq!(ids, [newer.id.as_str(), report.id.as_str()]);
    assert_eq!(listed[1].imported_by, "alice");
    assert_eq!(listed[1].imported_at_ms, 1_000, "the first import stands");
    let vex_documents = store
        .list_documents("openvex")
        .await
        .ok_or_panic("scan store");
    assert_eq!(vex_documents.len(), 1);
}

async fn a_verdict_read_earlier_never_replaces_one_read_later(f: &Fixture) {
    use stella_control_plane::store::{EnvironmentVerdict, VerdictUpdate};
    let store = &f.store;
    store
        .create_environment(&environment("prod", None, 1))
        .await
        .ok_or_panic("scan store");
    let verdict = |passed: bool, at_ms: i64| EnvironmentVerdict {
        environment: "prod".to_owned(),
        release: "web".to_owned(),
        version: "1".to_owned(),
        passed,
        reasons: if passed {
            Vec::new()
        } else {
            vec![format!("blocked at {at_ms}")]
        },
        at_ms,
    };
    assert_eq!(
        store
            .set_verdict(&verdict(true, 100))
            .await
            .ok_or_panic("scan store"),
        VerdictUpdate::Stored { previous: None }
    );
    assert_eq!(
        store
            .set_verdict(&verdict(false, 200))
            .await
            .ok_or_panic("scan store"),
        VerdictUpdate::Stored {
            previous: Some(verdict(true, 100))
        }
    );
    // An evaluation that read its documents before the stored one did is dropped.
    assert_eq!(
        store
            .set_verdict(&verdict(true, 150))
            .await
            .ok_or_panic("scan store"),
        VerdictUpdate::Stale {
            current: verdict(false, 200)
        }
    );
    assert_eq!(
        store.get_verdict("prod").await.ok_or_panic("scan store"),
        Some(verdict(false, 200))
    );
    assert_eq!(
        store.get_verdict("dev").await.ok_or_panic("scan store"),
        None
    );
}
