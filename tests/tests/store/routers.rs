//! Routers (RFC 0005): stored per tenant database, the name unique by the table's key,
//! and an agent that drives one cannot be deleted.

use stella_control_plane::domain::{Router, RouterKind};

use super::*;

store_suite!(
    routers_round_trip_and_a_taken_name_is_a_conflict,
    of_two_routers_created_at_once_with_one_name_one_is_stored,
    an_agent_that_drives_a_router_cannot_be_deleted,
);

fn router(name: &str, agent_id: &str) -> Router {
    Router {
        name: name.to_owned(),
        kind: RouterKind::Nginx,
        agent_id: agent_id.to_owned(),
        settings: BTreeMap::from([("routes_dir".to_owned(), "/etc/nginx/stella".to_owned())]),
        created_at_ms: NOW,
        updated_at_ms: NOW,
    }
}

async fn routers_round_trip_and_a_taken_name_is_a_conflict(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "edge-1").await;
    let edge = router("edge", "agent-1");
    store.create_router(&edge).await.ok_or_panic("edge");
    let mut lb = router("lb", "agent-1");
    lb.kind = RouterKind::Haproxy;
    lb.settings = BTreeMap::from([(
        "admin_socket".to_owned(),
        "/run/haproxy/admin.sock".to_owned(),
    )]);
    store.create_router(&lb).await.ok_or_panic("lb");

    assert_eq!(store.get_router("edge").await.ok_or_panic("get"), edge);
    assert_eq!(
        store.list_routers().await.ok_or_panic("list"),
        [edge.clone(), lb]
    );
    assert_conflict(
        store.create_router(&router("edge", "agent-1")).await,
        "router",
        "edge",
    );

    store.delete_router("edge").await.ok_or_panic("delete");
    assert_not_found(store.get_router("edge").await, "router", "edge");
    assert_not_found(store.delete_router("edge").await, "router", "edge");
}

async fn of_two_routers_created_at_once_with_one_name_one_is_stored(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "edge-1").await;
    let (one, other) = (router("edge", "agent-1"), router("edge", "agent-1"));
    let (first, second) = tokio::join!(store.create_router(&one), store.create_router(&other));
    let outcomes = [first, second];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| matches!(
            o,
            Err(StoreError::Conflict {
                entity: "router",
                ..
            })
        )),
        "{outcomes:?}"
    );
    assert_eq!(store.list_routers().await.ok_or_panic("list").len(), 1);
}

async fn an_agent_that_drives_a_router_cannot_be_deleted(f: &Fixture) {
    let store = &f.store;
    enrol(store, "agent-1", "edge-1").await;
    store
        .create_router(&router("edge", "agent-1"))
        .await
        .ok_or_panic("edge");
    store
        .revoke_agent("agent-1", NOW + 10, "retired")
        .await
        .ok_or_panic("revoke");
    assert_conflict(
        store.delete_revoked_agent("agent-1", NOW + 20).await,
        "router",
        "edge",
    );
    store
        .delete_router("edge")
        .await
        .ok_or_panic("delete router");
    store
        .delete_revoked_agent("agent-1", NOW + 30)
        .await
        .ok_or_panic("delete agent");
}
