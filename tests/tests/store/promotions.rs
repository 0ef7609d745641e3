//! Promotions settled without a deployment, stored many in one transaction.

use stella_control_plane::domain::{DecisionRecord, Event, EventKind, Promotion, PromotionState};
use stella_control_plane::store::NewSettlement;

use super::*;

store_suite!(
    settled_promotions_are_stored_with_decisions_events_and_deliveries,
    a_settlement_batch_with_a_stored_id_stores_nothing,
);

fn settlement(n: u32, fanned_out: Option<Vec<NewDelivery>>) -> NewSettlement {
    let id = format!("promo-{n}");
    let decision_id = format!("sha256:{n:064x}");
    NewSettlement {
        promotion: Promotion {
            id: id.clone(),
            environment: "prod".to_owned(),
            release: "shop".to_owned(),
            version: "1.0".to_owned(),
            state: PromotionState::Blocked,
            requested_by: "release-bot".to_owned(),
            requested_at_ms: NOW + i64::from(n),
            plan_json: "{}".to_owned(),
            plan_hash: "sha256:plan".to_owned(),
            break_glass: None,
            gates_json: "[]".to_owned(),
            message: Some(format!("blocked {n}")),
            decision_id: Some(decision_id.clone()),
            deployment_id: None,
            run_id: None,
            updated_at_ms: NOW + i64::from(n),
        },
        decision: Some(DecisionRecord {
            id: decision_id,
            promotion_id: id.clone(),
            outcome: "blocked".to_owned(),
            decision_json: format!("{{\"n\":{n}}}"),
            inputs_json: "{}".to_owned(),
            envelope_json: "{}".to_owned(),
            key_id: "key-1".to_owned(),
            created_at_ms: NOW + i64::from(n),
        }),
        event: Some(Event {
            id: format!("event-{n}"),
            kind: EventKind::PromotionBlocked,
            environment: Some("prod".to_owned()),
            release: Some(("shop".to_owned(), "1.0".to_owned())),
            subject: Some(id),
            message: format!("promotion {n} is blocked"),
            at_ms: NOW + i64::from(n),
        }),
        deliveries: fanned_out,
    }
}

async fn settled_promotions_are_stored_with_decisions_events_and_deliveries(f: &Fixture) {
    let store = &f.store;
    store
        .create_environment(&environment("prod", None, NOW))
        .await
        .ok_or_panic("environment");
    store
        .create_webhook(&webhook("hook", &["*"], NOW))
        .await
        .ok_or_panic("webhook");
    let mut batch: Vec<NewSettlement> = (0..40)
        .map(|n| settlement(n, Some(vec![new_delivery(&format!("d-{n}"), "hook", NOW)])))
        .collect();
    // One event whose webhooks could not be read: left to the fan-out sweep.
    batch.push(settlement(40, None));
    // A delivery to a webhook deleted meanwhile is left out.
    batch.push(settlement(
        41,
        Some(vec![new_delivery("d-gone", "deleted-hook", NOW)]),
    ));
    let queued = store
        .create_settled_promotions(&batch)
        .await
        .ok_or_panic("store the batch");
    assert_eq!(queued, 40, "one delivery per event to the existing webhook");

    for n in [0, 31, 32, 41] {
        let promotion = store
            .get_promotion(&format!("promo-{n}"))
            .await
            .ok_or_panic("promotion");
        assert_eq!(promotion, batch[n as usize].promotion);
        let decision = store
            .get_decision(&format!("sha256:{n:064x}"))
            .await
            .ok_or_panic("decision");
        assert_eq!(Some(decision), batch[n as usize].decision);
    }
    assert_eq!(
        store
            .list_deliveries("hook", 100)
            .await
            .ok_or_panic("deliveries")
            .len(),
        40
    );
    let unfanned: Vec<String> = store
        .unfanned_events(NOW + 1_000, 100)
        .await
        .ok_or_panic("unfanned")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(unfanned, ["event-40"]);
    let events = store
        .list_events(Some("prod"), None, Some("promotion.blocked"), 100)
        .await
        .ok_or_panic("events");
    assert_eq!(events.len(), 42);
    assert_eq!(
        store
            .create_settled_promotions(&[])
            .await
            .ok_or_panic("empty"),
        0
    );
}

async fn a_settlement_batch_with_a_stored_id_stores_nothing(f: &Fixture) {
    let store = &f.store;
    store
        .create_environment(&environment("prod", None, NOW))
        .await
        .ok_or_panic("environment");
    store
        .create_settled_promotions(&[settlement(1, Some(Vec::new()))])
        .await
        .ok_or_panic("first");
    // promo-1 again, beside a new one: the transaction fails and stores neither.
    let again = store
        .create_settled_promotions(&[
            settlement(2, Some(Vec::new())),
            settlement(1, Some(Vec::new())),
        ])
        .await;
    assert!(
        again.is_err(),
        "a stored promotion id is refused: {again:?}"
    );
    assert_not_found(store.get_promotion("promo-2").await, "promotion", "promo-2");
    assert!(store
        .get_decision(&format!("sha256:{:064x}", 2))
        .await
        .is_err());
    let events = store
        .list_events(Some("prod"), None, None, 100)
        .await
        .ok_or_panic("events");
    assert_eq!(events.len(), 1, "only the first batch's event");
}
