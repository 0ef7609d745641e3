//! Webhooks: the outbox and its leases; events' bookkeeping (outages, drift).

use super::*;

store_suite!(
    webhooks_and_their_deliveries_round_trip,
    claimed_deliveries_are_leased_fenced_and_retried,
    concurrent_claims_never_share_a_delivery,
    unreachable_agents_are_marked_once_per_outage,
    drift_upserts_tell_when_a_finding_opens,
);

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
        .mark_unreachable_agents(NOW + 5_000, 0, NOW + 20_000)
        .await
        .ok_or_panic("mark");
    assert_eq!(names(marked), ["quiet"]);
    assert!(store
        .mark_unreachable_agents(NOW + 5_000, 0, NOW + 21_000)
        .await
        .ok_or_panic("mark again")
        .is_empty());

    // Replicas checking at once: `talky` is marked by exactly one.
    let checks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .mark_unreachable_agents(NOW + 15_000, 0, NOW + 30_000 + i)
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
        .mark_unreachable_agents(NOW + 35_000, 0, NOW + 41_000)
        .await
        .ok_or_panic("seen")
        .is_empty());
    assert_eq!(
        names(
            store
                .mark_unreachable_agents(NOW + 45_000, 0, NOW + 50_000)
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
                .mark_unreachable_agents(NOW + 55_000, 0, NOW + 60_000)
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
