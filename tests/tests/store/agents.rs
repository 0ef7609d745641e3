//! Enrolment, agents (hello, heartbeats, goodbye, revocation), users and tokens, and reconnecting to the store.

use super::*;

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
    goodbye_marks_an_agent_disconnected_until_its_next_hello,
    a_lost_session_counts_until_the_next_hello,
    a_revoked_agent_can_be_deleted_and_stays_revoked,
);

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

async fn a_lost_session_counts_until_the_next_hello(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "web-1").await;
    enrol(store, "agent-2", "web-2").await;
    for id in ["agent-1", "agent-2"] {
        store
            .record_hello(id, &hello(NOW + 1_000))
            .await
            .ok_or_panic("hello");
    }
    // Lost after its last heartbeat: recorded, unreachable one interval later, and
    // announced once by the sweep.
    store
        .touch_agents(&[("agent-1".to_owned(), NOW + 2_000)])
        .await
        .ok_or_panic("heartbeat");
    store
        .record_session_lost("agent-1", NOW + 2_500, NOW + 2_000)
        .await
        .ok_or_panic("lost");
    let agent = store.get_agent("agent-1").await.ok_or_panic("get");
    assert_eq!(agent.session_lost_at_ms, Some(NOW + 2_500));
    assert_eq!(agent.state(NOW + 7_500, 5_000), AgentState::Connected);
    assert_eq!(agent.state(NOW + 7_501, 5_000), AgentState::Unreachable);
    let marked = store
        .mark_unreachable_agents(0, NOW + 2_400, NOW + 7_000)
        .await
        .ok_or_panic("mark too early");
    assert!(marked.is_empty(), "marked before the grace: {marked:?}");
    let marked = store
        .mark_unreachable_agents(0, NOW + 7_600, NOW + 7_600)
        .await
        .ok_or_panic("mark");
    assert_eq!(
        marked.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["web-1"]
    );

    // A loss reported by a session older than what the store heard (a newer session
    // said hello, on this replica or another) is not recorded.
    store
        .record_hello("agent-2", &hello(NOW + 3_000))
        .await
        .ok_or_panic("hello of the new session");
    store
        .record_session_lost("agent-2", NOW + 3_100, NOW + 1_000)
        .await
        .ok_or_panic("late loss");
    let agent = store.get_agent("agent-2").await.ok_or_panic("get");
    assert_eq!(agent.session_lost_at_ms, None);

    // The next hello clears the loss.
    store
        .record_hello("agent-1", &hello(NOW + 9_000))
        .await
        .ok_or_panic("hello again");
    let agent = store.get_agent("agent-1").await.ok_or_panic("get");
    assert_eq!(agent.session_lost_at_ms, None);
    assert_eq!(agent.state(NOW + 20_000, 5_000), AgentState::Connected);

    // A cleanly stopped agent is never marked lost.
    store
        .record_goodbye("agent-2", NOW + 10_000)
        .await
        .ok_or_panic("goodbye");
    store
        .record_session_lost("agent-2", NOW + 10_001, NOW + 10_000)
        .await
        .ok_or_panic("loss after goodbye");
    let agent = store.get_agent("agent-2").await.ok_or_panic("get");
    assert_eq!(agent.session_lost_at_ms, None);
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
