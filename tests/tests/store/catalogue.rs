//! What deployments are made of: environments, targets, releases, registries, variables and secrets.

use super::*;
use stella_control_plane::store::ConfigGeneration;

store_suite!(
    environments_round_trip_and_names_are_unique,
    targets_need_an_environment_and_an_agent,
    releases_are_immutable,
    registry_upsert_keeps_the_sealed_password_opaque,
    registries_are_deleted,
    variables_and_secrets_are_set_listed_and_deleted,
    the_config_generation_moves_with_configuration_only,
);

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

/// Migration 0016: on SQLite every write to what a promotion's cached configuration
/// depends on bumps the generation in its transaction; an agent's heartbeat, a hello
/// that changes nothing a plan uses, and a deployment do not. PostgreSQL keeps none.
async fn the_config_generation_moves_with_configuration_only(f: &Fixture) {
    let store = &f.store;
    let generation = || async { store.config_generation().await.ok_or_panic("generation") };
    if store.backend() == Backend::Postgres {
        assert_eq!(generation().await, None, "PostgreSQL keeps no generation");
        return;
    }
    let last = generation().await.expect("SQLite keeps a generation");
    let succeeded = last.succeeded;
    let mut last = last.configuration;
    let mut expect = |now: Option<ConfigGeneration>, moved: bool, what: &str| {
        let now = now.expect("SQLite keeps a generation");
        assert_eq!(
            now.succeeded, succeeded,
            "{what} is no succeeded deployment"
        );
        let now = now.configuration;
        if moved {
            assert!(now > last, "{what} bumps the generation ({last} → {now})");
        } else {
            assert_eq!(now, last, "{what} leaves the generation alone");
        }
        last = now;
    };

    enrol(store, "a1", "host-a").await;
    expect(generation().await, true, "enrolling an agent");
    store
        .record_hello("a1", &hello(NOW))
        .await
        .ok_or_panic("hello");
    expect(generation().await, true, "a hello with new capabilities");
    store
        .record_hello("a1", &hello(NOW + 1))
        .await
        .ok_or_panic("hello");
    expect(generation().await, false, "the same hello again");
    store
        .touch_agents(&[("a1".to_owned(), NOW + 2)])
        .await
        .ok_or_panic("heartbeat");
    expect(generation().await, false, "a heartbeat");

    store
        .create_environment(&environment("prod", None, NOW))
        .await
        .ok_or_panic("environment");
    expect(generation().await, true, "creating an environment");
    let mut web = target("web-1", "prod", "a1");
    store.create_target(&web).await.ok_or_panic("target");
    expect(generation().await, true, "creating a target");
    web.settings
        .insert("ports".to_owned(), "8081:80".to_owned());
    store.update_target(&web).await.ok_or_panic("target edit");
    expect(generation().await, true, "editing a target's settings");
    store
        .set_variable(&variable(
            "prod",
            VariableKind::Var,
            "PORT",
            "80",
            "alice",
            NOW,
        ))
        .await
        .ok_or_panic("variable");
    expect(generation().await, true, "setting a variable");
    store
        .create_release(&release("app", "1.0", 'a', NOW))
        .await
        .ok_or_panic("release");
    expect(generation().await, true, "creating a release");
    let vex = scan_document(r#"{"@context":"https://openvex.dev/ns"}"#, "openvex", NOW);
    store.put_document(&vex).await.ok_or_panic("document");
    expect(generation().await, true, "storing a VEX document");
    let report = scan_document(r#"{"SchemaVersion":2}"#, "trivy", NOW);
    store.put_document(&report).await.ok_or_panic("report");
    expect(generation().await, true, "storing a report");
    store
        .add_scan_report(
            &format!("sha256:{}", "a".repeat(64)),
            &report.id,
            "app:1.0",
            "alice",
            NOW,
        )
        .await
        .ok_or_panic("scan report");
    expect(generation().await, true, "linking a report to a digest");

    store
        .create_deployment(&deployment("d1", "prod", "1.0", NOW), &[])
        .await
        .ok_or_panic("deployment");
    expect(generation().await, false, "a deployment");
    store
        .delete_target("web-1", NOW)
        .await
        .ok_or_panic("target delete");
    expect(generation().await, true, "deleting a target");
}
