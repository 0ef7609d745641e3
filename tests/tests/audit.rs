//! The audit log end to end, against a real in-process server and the real `stella`
//! binary: what is recorded of each mutating call (refusals too) and what is not;
//! `stella audit verify` on an intact chain, and after a row was edited, deleted, the
//! tail truncated behind a checkpoint, or a checkpoint forged with another key (the
//! database written directly, as an attacker with access to it would); concurrent
//! appends, checkpoints by count and at shutdown, and two replicas on PostgreSQL
//! sharing one chain.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{AnyConnection, Connection, Executor};
use stella_decision::audit::{AuditEntry, Checkpoint};
use stella_decision::dsse::SigningKey;
use stella_tests::{stella, wait_until, TestServer};

/// Every entry of the server's audit log, in order.
async fn entries(server: &TestServer) -> anyhow::Result<Vec<Value>> {
    let page = server.get("/api/v1/audit?limit=10000").await?;
    Ok(page.as_array().cloned().unwrap_or_default())
}

/// Every checkpoint, in order.
async fn checkpoints(server: &TestServer) -> anyhow::Result<Vec<Value>> {
    let page = server.get("/api/v1/audit/checkpoints?limit=10000").await?;
    Ok(page.as_array().cloned().unwrap_or_default())
}

fn seqs(entries: &[Value]) -> Vec<i64> {
    entries.iter().filter_map(|e| e["seq"].as_i64()).collect()
}

/// `stella ARGS…` against `server` as admin, with a trust store of the test's own.
async fn cli(server: &TestServer, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let config_dir = server.dir.path().join("cli-config");
    let config_dir = config_dir.to_string_lossy().into_owned();
    let url = server.api_url();
    stella(
        args,
        &[
            ("STELLA_SERVER", url.as_str()),
            ("STELLA_TOKEN", server.admin_token.as_str()),
            ("STELLA_CONFIG_DIR", config_dir.as_str()),
        ],
    )
    .await
}

/// `stella audit verify`: Ok(summary line) or Err(the one error line).
async fn verify(server: &TestServer, extra: &[&str]) -> anyhow::Result<Result<String, String>> {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = cli(server, &args).await?;
    if code == 0 {
        return Ok(Ok(stdout.trim().to_owned()));
    }
    assert!(stdout.is_empty(), "stdout of a failure: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr:?}");
    Ok(Err(lines[0].to_owned()))
}

/// A direct connection to the server's database.
async fn database(server: &TestServer) -> anyhow::Result<AnyConnection> {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&server.config.database_url()).await?;
    if server.config.database_url().starts_with("sqlite:") {
        conn.execute("PRAGMA busy_timeout = 5000").await?;
    }
    Ok(conn)
}

/// A server with a few audited calls behind it; checkpoints every 200 ms.
async fn server_with_history(calls: usize) -> anyhow::Result<TestServer> {
    let server = TestServer::start_with(|config| config.audit_checkpoint_interval_ms = 200).await?;
    for n in 0..calls {
        server
            .post(
                "/api/v1/users",
                json!({"name": format!("user-{n}"), "roles": ["viewer"]}),
            )
            .await?;
    }
    Ok(server)
}

/// Waits until a checkpoint signs the newest entry (GETs append nothing, so it stays
/// the newest).
async fn wait_for_checkpoint_at_head(server: &TestServer) -> anyhow::Result<i64> {
    let head = seqs(&entries(server).await?).last().copied().unwrap_or(0);
    wait_until(
        "a checkpoint signs the newest entry",
        Duration::from_secs(10),
        || async {
            let list = checkpoints(server).await.ok()?;
            (list.last()?["seq"].as_i64()? == head).then_some(head)
        },
    )
    .await
}

#[tokio::test]
async fn mutating_calls_are_audited_with_actor_action_digest_and_outcome() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let http = server.client();
    let api = server.api_url();

    // An exact body, to check its digest.
    let body = br#"{"name":"vic","roles":["viewer"]}"#;
    let response = http
        .post(format!("{api}/api/v1/users"))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await?;
    let viewer_token = created["token"].as_str().unwrap_or_default().to_owned();

    // Refused: 403 for the viewer, 401 without a token (anonymous), 404 on a break-glass
    // promotion of a release that does not exist.
    let (status, _) = server
        .request(
            Method::POST,
            "/api/v1/environments",
            Some(&viewer_token),
            Some(json!({"name": "dev"})),
        )
        .await?;
    assert_eq!(status, 403);
    let (status, _) = server
        .request(
            Method::POST,
            "/api/v1/environments",
            None,
            Some(json!({"name": "dev"})),
        )
        .await?;
    assert_eq!(status, 401);
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/promotions",
            Some(
                json!({"release": "web", "version": "1", "environment": "prod",
                        "break_glass": "outage INC-42,\n hotfix"}),
            ),
        )
        .await?;
    assert_eq!(status, 404);

    // Created, changed, a secret set, deleted.
    server
        .post("/api/v1/environments", json!({"name": "dev"}))
        .await?;
    let (status, _) = server
        .call(
            Method::PATCH,
            "/api/v1/environments/dev",
            Some(json!({"approvals": 1})),
        )
        .await?;
    assert!(status < 300, "PATCH answered {status}");
    let (status, _) = server
        .call(
            Method::PUT,
            "/api/v1/environments/dev/secrets/db_password",
            Some(json!({"value": "hunter2-not-for-the-log"})),
        )
        .await?;
    assert!(status < 300, "PUT answered {status}");
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/users/vic", None)
        .await?;
    assert_eq!(status, 204);

    // A body over the limit is refused unread; its digest is `none`.
    let response = http
        .post(format!("{api}/api/v1/environments"))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body(vec![b' '; server.config.api_max_body_bytes + 1])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 413);

    // A scan import has a larger limit than other bodies: the audit reads it whole.
    let report = format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(server.config.api_max_body_bytes * 2)
    );
    let response = http
        .post(format!("{api}/api/v1/scans"))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body(report.clone())
        .send()
        .await?;
    assert_eq!(
        response.status().as_u16(),
        400,
        "{}",
        response.text().await?
    );

    // Reads are not audited, but a refused authentication is, whatever the method.
    let before = entries(&server).await?.len();
    for path in [
        "/api/v1/environments",
        "/api/v1/users",
        "/api/v1/whoami",
        "/api/v1/audit",
    ] {
        server.get(path).await?;
    }
    let (status, _) = server
        .request(Method::GET, "/api/v1/audit", Some(&viewer_token), None)
        .await?;
    assert_eq!(status, 401, "the viewer was deleted");
    let all = stella_tests::wait_until(
        "the refused read is audited",
        std::time::Duration::from_secs(5),
        || async {
            let all = entries(&server).await.ok()?;
            (all.len() > before).then_some(all)
        },
    )
    .await?;
    assert_eq!(all.len(), before + 1, "GETs were audited: {all:#?}");
    let refused = &all[all.len() - 1];
    assert_eq!(refused["actor"], "anonymous");
    assert_eq!(
        refused["action"],
        "GET (authentication refused: unknown_token)"
    );
    assert_eq!(refused["object"], "/api/v1/audit");
    assert_eq!(refused["outcome"], "401");
    let all: Vec<Value> = all[..before].to_vec();

    let summary: Vec<(String, String, String, String)> = all
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_owned();
            (
                text("actor"),
                text("action"),
                text("object"),
                text("outcome"),
            )
        })
        .collect();
    let expected = [
        ("admin", "POST /api/v1/users", "/api/v1/users", "201"),
        (
            "vic",
            "POST /api/v1/environments",
            "/api/v1/environments",
            "403",
        ),
        (
            "anonymous",
            "POST /api/v1/environments",
            "/api/v1/environments",
            "401",
        ),
        (
            "admin",
            "POST /api/v1/promotions",
            "/api/v1/promotions break-glass by admin: outage INC-42, hotfix",
            "404",
        ),
        (
            "admin",
            "POST /api/v1/environments",
            "/api/v1/environments",
            "201",
        ),
        (
            "admin",
            "PATCH /api/v1/environments/{name}",
            "/api/v1/environments/dev",
            "200",
        ),
        (
            "admin",
            "PUT /api/v1/environments/{name}/secrets/{variable}",
            "/api/v1/environments/dev/secrets/db_password",
            "200",
        ),
        (
            "admin",
            "DELETE /api/v1/users/{name}",
            "/api/v1/users/vic",
            "204",
        ),
        (
            "anonymous",
            "POST /api/v1/environments",
            "/api/v1/environments",
            "413",
        ),
        ("admin", "POST /api/v1/scans", "/api/v1/scans", "400"),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
        .collect();
    assert_eq!(summary, expected);

    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        all[9]["request_digest"],
        stella_decision::sha256_id(report.as_bytes()).as_str()
    );
    assert_eq!(
        all[0]["request_digest"],
        stella_decision::sha256_id(body).as_str()
    );
    assert_eq!(all[8]["request_digest"], "none");
    assert_eq!(all[0]["prev_hash"], stella_decision::audit::GENESIS);
    for pair in all.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let text = serde_json::to_string(&all)?;
    assert!(
        !text.contains("hunter2"),
        "a secret reached the audit log: {text}"
    );
    for entry in &all {
        let at = entry["at"].as_str().unwrap_or_default();
        assert_eq!(at.len(), 24, "{at}");
    }

    // Pages, and the admin role.
    let page = server.get("/api/v1/audit?after=2&limit=3").await?;
    assert_eq!(
        seqs(page.as_array().map_or(&[][..], Vec::as_slice)),
        [3, 4, 5]
    );
    let operator = server
        .post(
            "/api/v1/users",
            json!({"name": "olga", "roles": ["operator"]}),
        )
        .await?;
    let operator_token = operator["token"].as_str().unwrap_or_default();
    for path in ["/api/v1/audit", "/api/v1/audit/checkpoints"] {
        let (status, body) = server
            .request(Method::GET, path, Some(operator_token), None)
            .await?;
        assert_eq!(status, 403, "{path}: {body}");
    }

    // The CLI lists them.
    let (code, stdout, stderr) =
        cli(&server, &["audit", "list", "--after", "3", "--limit", "2"]).await?;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("SEQ"), "{stdout}");
    assert!(
        lines[1].contains("break-glass by admin: outage INC-42, hotfix"),
        "{stdout}"
    );
    let (code, stdout, stderr) = cli(&server, &["audit", "list", "-o", "json"]).await?;
    assert_eq!(code, 0, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout)?;
    // Ten mutating calls and the one refused read.
    assert_eq!(listed.as_array().map(Vec::len), Some(12));
    Ok(())
}

#[tokio::test]
async fn audit_verify_names_an_edited_row_and_a_deleted_one() -> anyhow::Result<()> {
    let server = server_with_history(10).await?;
    wait_for_checkpoint_at_head(&server).await?;
    let ok = verify(&server, &[]).await?.map_err(anyhow::Error::msg)?;
    // One checkpoint or more: the calls may span more than one 200 ms round.
    assert!(
        ok.starts_with("ok: 10 entries, ")
            && ok.ends_with(" checkpoints, 0 after the last checkpoint"),
        "{ok}"
    );
    let (code, stdout, _) = cli(&server, &["audit", "verify", "-o", "json"]).await?;
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout)?;
    assert_eq!(report["entries"], 10);
    assert_eq!(report["unsigned_tail"], 0);

    let mut db = database(&server).await?;
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 5")
        .execute(&mut db)
        .await?;
    let fault = verify(&server, &[]).await?.err().unwrap_or_default();
    assert_eq!(
        fault,
        "error: the audit log does not verify: entry 5 was altered: its hash does not match its content"
    );
    sqlx::query("UPDATE audit_log SET actor = 'admin' WHERE seq = 5")
        .execute(&mut db)
        .await?;
    assert!(verify(&server, &[]).await?.is_ok());

    // The outcome edited and the hash recomputed: the next entry's link breaks.
    let (stored,): (String,) = sqlx::query_as("SELECT hash FROM audit_log WHERE seq = 6")
        .fetch_one(&mut db)
        .await?;
    let rows = server.get("/api/v1/audit?after=5&limit=1").await?;
    let mut forged: AuditEntry = serde_json::from_value(rows[0].clone())?;
    assert_eq!(forged.hash, stored);
    forged.outcome = "403".into();
    forged.hash = forged.entry_hash()?;
    sqlx::query("UPDATE audit_log SET outcome = $1, hash = $2 WHERE seq = 6")
        .bind(&forged.outcome)
        .bind(&forged.hash)
        .execute(&mut db)
        .await?;
    let fault = verify(&server, &[]).await?.err().unwrap_or_default();
    assert!(
        fault.ends_with("entry 7: prev_hash does not match entry 6"),
        "{fault}"
    );
    sqlx::query("UPDATE audit_log SET outcome = '201', hash = $1 WHERE seq = 6")
        .bind(&stored)
        .execute(&mut db)
        .await?;

    // A middle row deleted, then put back.
    let row: (
        i64,
        i64,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT seq, at_ms, actor, action, object, request_digest, outcome, prev_hash, \
             hash FROM audit_log WHERE seq = 7",
    )
    .fetch_one(&mut db)
    .await?;
    sqlx::query("DELETE FROM audit_log WHERE seq = 7")
        .execute(&mut db)
        .await?;
    let fault = verify(&server, &[]).await?.err().unwrap_or_default();
    assert_eq!(
        fault,
        "error: the audit log does not verify: entry 7 is missing (deleted?)"
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor, action, object, request_digest, outcome, \
         prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(row.0)
    .bind(row.1)
    .bind(row.2)
    .bind(row.3)
    .bind(row.4)
    .bind(row.5)
    .bind(row.6)
    .bind(row.7)
    .bind(row.8)
    .execute(&mut db)
    .await?;
    assert!(verify(&server, &[]).await?.is_ok());
    Ok(())
}

#[tokio::test]
async fn a_tail_deleted_behind_a_checkpoint_is_truncation() -> anyhow::Result<()> {
    let server = server_with_history(12).await?;
    let head = wait_for_checkpoint_at_head(&server).await?;
    assert_eq!(head, 12);
    assert!(verify(&server, &[]).await?.is_ok());
    let mut db = database(&server).await?;
    sqlx::query("DELETE FROM audit_log WHERE seq >= 10")
        .execute(&mut db)
        .await?;
    let fault = verify(&server, &[]).await?.err().unwrap_or_default();
    assert_eq!(
        fault,
        "error: the audit log does not verify: chain truncated: checkpoint signed at entry 12, last entry is 9"
    );
    Ok(())
}

#[tokio::test]
async fn a_checkpoint_signed_by_another_key_is_refused() -> anyhow::Result<()> {
    let server = server_with_history(5).await?;
    wait_for_checkpoint_at_head(&server).await?;
    assert!(verify(&server, &[]).await?.is_ok());

    // A forger with the database but not the server's key signs entry 3 as it is.
    let rows = server.get("/api/v1/audit?after=2&limit=1").await?;
    let entry: AuditEntry = serde_json::from_value(rows[0].clone())?;
    let forger = SigningKey::from_seed([7; 32]);
    let forged = Checkpoint::sign(&forger, &entry, entry.at_ms + 1);
    let mut db = database(&server).await?;
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, at_ms, key_id, signature) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(forged.seq)
    .bind(&forged.hash)
    .bind(forged.at_ms)
    .bind(&forged.key_id)
    .bind(&forged.signature)
    .execute(&mut db)
    .await?;
    let fault = verify(&server, &[]).await?.err().unwrap_or_default();
    assert!(
        fault.starts_with(&format!(
            "error: the audit log does not verify: checkpoint at entry 3 is signed by key {}, which is not a trusted key",
            forger.key_id()
        )),
        "{fault}"
    );

    // `--key` with the server's own key: the forged checkpoint is still refused; without
    // it the chain verifies with that key alone.
    let keys = server.get("/api/v1/keys").await?;
    let pem = keys[0]["public_key_pem"].as_str().unwrap_or_default();
    let key_file = server.dir.path().join("server-key.pem");
    std::fs::write(&key_file, pem)?;
    let key_arg = key_file.to_string_lossy().into_owned();
    let fault = verify(&server, &["--key", &key_arg]).await?.err();
    assert!(fault.is_some_and(|f| f.contains("not a trusted key")));
    sqlx::query("DELETE FROM audit_checkpoints WHERE key_id = $1")
        .bind(forger.key_id())
        .execute(&mut db)
        .await?;
    let ok = verify(&server, &["--key", &key_arg]).await?;
    assert!(ok.is_ok(), "{ok:?}");

    // A server key that appeared after first use is not trusted either.
    let other = server.dir.path().join("other-key.pem");
    std::fs::write(&other, forger.public_key().to_pem())?;
    let other_arg = other.to_string_lossy().into_owned();
    let fault = verify(&server, &["--key", &other_arg]).await?.err();
    assert!(fault.is_some_and(|f| f.contains("not a trusted key")));
    Ok(())
}

#[tokio::test]
async fn concurrent_appends_leave_a_contiguous_chain() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let calls = (0..50).map(|n| {
        let server = &server;
        async move {
            server
                .post(
                    "/api/v1/users",
                    json!({"name": format!("parallel-{n}"), "roles": ["viewer"]}),
                )
                .await
        }
    });
    for result in futures::future::join_all(calls).await {
        result?;
    }
    let all = entries(&server).await?;
    assert_eq!(seqs(&all), (1..=50).collect::<Vec<_>>());
    let ok = verify(&server, &[]).await?.map_err(anyhow::Error::msg)?;
    assert!(ok.starts_with("ok: 50 entries"), "{ok}");

    // What an append costs, measured on the app (no HTTP): one after the other, and 200
    // at once queueing on the cached head.
    let app = server.running().app.clone();
    let n = 200;
    let started = Instant::now();
    for i in 0..n {
        app.audit(
            "bench",
            "POST /bench",
            &format!("/bench/{i}"),
            "sha256:00",
            "201",
        )
        .await;
    }
    let sequential = started.elapsed() / n;
    let started = Instant::now();
    let burst = (0..n).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            app.audit(
                "bench",
                "POST /bench",
                &format!("/burst/{i}"),
                "sha256:00",
                "201",
            )
            .await;
        })
    });
    for handle in futures::future::join_all(burst).await {
        handle?;
    }
    let burst_total = started.elapsed();
    eprintln!(
        "audit append on sqlite: {sequential:?} each one after the other; {n} at once took {burst_total:?} ({:?} each)",
        burst_total / n
    );
    let all = entries(&server).await?;
    assert_eq!(seqs(&all), (1..=450).collect::<Vec<_>>());
    let metrics = server
        .client()
        .get(format!("{}/metrics", server.api_url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("stella_audit_appends_total{outcome=\"ok\"} 450"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn checkpoints_come_every_n_entries_and_at_shutdown() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(|config| {
        config.audit_checkpoint_interval_ms = 3_600_000;
        config.audit_checkpoint_every_entries = 10;
    })
    .await?;
    for n in 0..25 {
        server
            .post(
                "/api/v1/users",
                json!({"name": format!("user-{n}"), "roles": ["viewer"]}),
            )
            .await?;
    }
    let signed = wait_until(
        "checkpoints after 10 and 20 entries",
        Duration::from_secs(10),
        || async {
            let list = checkpoints(&server).await.ok()?;
            (list.len() >= 2).then_some(list)
        },
    )
    .await?;
    let first = signed[0]["seq"].as_i64().unwrap_or_default();
    let second = signed[1]["seq"].as_i64().unwrap_or_default();
    assert!((10..20).contains(&first), "{signed:#?}");
    assert!((20..=25).contains(&second), "{signed:#?}");
    let keys = server.get("/api/v1/keys").await?;
    assert_eq!(signed[0]["key_id"], keys[0]["key_id"]);

    // Stopping signs what is left; the chain then verifies with nothing unsigned.
    server.restart().await?;
    let signed = checkpoints(&server).await?;
    assert_eq!(signed.last().and_then(|c| c["seq"].as_i64()), Some(25));
    let ok = verify(&server, &[]).await?.map_err(anyhow::Error::msg)?;
    assert!(
        ok.starts_with("ok: 25 entries") && ok.ends_with(", 0 after the last checkpoint"),
        "{ok}"
    );
    // After the restart the head is read from the store and the chain goes on.
    server
        .post(
            "/api/v1/users",
            json!({"name": "after", "roles": ["viewer"]}),
        )
        .await?;
    assert_eq!(seqs(&entries(&server).await?).last(), Some(&26));
    assert!(verify(&server, &[]).await?.is_ok());
    Ok(())
}

#[tokio::test]
async fn two_replicas_on_postgresql_append_to_one_chain() -> anyhow::Result<()> {
    let url = stella_tests::postgres::fresh_database_url().await?;
    let first = TestServer::start_with(|config| {
        config.database_url = Some(url);
        config.audit_checkpoint_interval_ms = 200;
    })
    .await?;
    let second = first.start_replica().await?;
    let calls = (0..40).map(|n| {
        let server = if n % 2 == 0 { &first } else { &second };
        async move {
            server
                .post(
                    "/api/v1/users",
                    json!({"name": format!("replica-{n}"), "roles": ["viewer"]}),
                )
                .await
        }
    });
    for result in futures::future::join_all(calls).await {
        result?;
    }
    let all = entries(&first).await?;
    assert_eq!(seqs(&all), (1..=40).collect::<Vec<_>>());
    wait_until(
        "both replicas signed a checkpoint",
        Duration::from_secs(10),
        || async {
            let list = checkpoints(&first).await.ok()?;
            (list.len() >= 2).then_some(())
        },
    )
    .await?;
    let ok = verify(&first, &[]).await?.map_err(anyhow::Error::msg)?;
    assert!(ok.starts_with("ok: 40 entries"), "{ok}");

    // What an append costs on PostgreSQL: one replica alone, then both at once racing
    // for every seq.
    let (a, b) = (first.running().app.clone(), second.running().app.clone());
    let n = 100;
    let started = Instant::now();
    for i in 0..n {
        a.audit(
            "bench",
            "POST /bench",
            &format!("/a/{i}"),
            "sha256:00",
            "201",
        )
        .await;
    }
    let alone = started.elapsed() / n;
    let started = Instant::now();
    let both = (0..n).map(|i| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (object_a, object_b) = (format!("/a/{i}"), format!("/b/{i}"));
            tokio::join!(
                a.audit("bench", "POST /bench", &object_a, "sha256:00", "201"),
                b.audit("bench", "POST /bench", &object_b, "sha256:00", "201"),
            )
        }
    });
    futures::future::join_all(both).await;
    let racing = started.elapsed() / (2 * n);
    eprintln!("audit append on postgresql: {alone:?} each alone; {racing:?} each with two replicas racing");
    assert_eq!(seqs(&entries(&first).await?), (1..=340).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn a_failed_append_never_fails_the_call() -> anyhow::Result<()> {
    let server = server_with_history(2).await?;
    let mut db = database(&server).await?;
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away")
        .execute(&mut db)
        .await?;
    server
        .post(
            "/api/v1/users",
            json!({"name": "unrecorded", "roles": ["viewer"]}),
        )
        .await?;
    let metrics = server
        .client()
        .get(format!("{}/metrics", server.api_url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("stella_audit_appends_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    sqlx::query("ALTER TABLE audit_log_away RENAME TO audit_log")
        .execute(&mut db)
        .await?;
    // The head is read again and the chain goes on where it was.
    server
        .post(
            "/api/v1/users",
            json!({"name": "recorded", "roles": ["viewer"]}),
        )
        .await?;
    let all = entries(&server).await?;
    assert_eq!(seqs(&all), [1, 2, 3]);
    assert_eq!(all[2]["object"], "/api/v1/users");
    assert!(verify(&server, &[]).await?.is_ok());
    Ok(())
}
