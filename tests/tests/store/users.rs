//! Users and roles: role changes, deleted users, the last admin.

use super::*;

store_suite!(
    user_roles_change_and_a_deleted_user_loses_its_tokens,
    the_last_admin_is_never_removed,
    two_admins_removing_each_other_leave_one,
);

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
