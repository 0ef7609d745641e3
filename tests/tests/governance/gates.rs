//! The gates of a promotion: promotion order, freeze windows, approvals, policy and security.

use super::*;

/// An environment `E` after `stage` accepts a release only once the same digests ran
/// successfully in `stage`: refused before (naming `stage`), refused after a failed
/// deployment there, allowed after a successful one, also for another release with the
/// same digests.
#[tokio::test]
async fn promotion_order_requires_the_same_digests_deployed_successfully_before(
) -> anyhow::Result<()> {
    let published = Published::start().await?;
    let broken = published.images.publish("v3", false).await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    estate
        .environment(json!({"name": "stage", "allow_unscanned": true}))
        .await?;
    let prod = estate
        .environment(json!({"name": "prod", "after": "stage", "allow_unscanned": true}))
        .await?;
    assert_eq!(prod["after"], "stage");
    let stage_target = estate.target("stage").await?;
    let prod_target = estate.target("prod").await?;
    estate.release("copy", "7", &published.v1).await?;
    estate.release("web", "3", &broken).await?;

    // Nothing ran in stage: blocked, and the refusal says what must come first.
    let blocked = estate.promoted(&alice, "web@1", "prod", "blocked").await?;
    let refusal =
        "web@1 (same digests) was never deployed successfully to `stage`, which comes before `prod`";
    assert_eq!(gate(&blocked, "order")["status"], "failed", "{blocked}");
    assert_eq!(gate(&blocked, "order")["reason"], refusal);
    assert_eq!(blocked["message"], format!("order: {refusal}"));
    assert!(blocked["deployment_id"].is_null(), "{blocked}");
    // Every gate is evaluated, not only the first that fails.
    assert_eq!(gate(&blocked, "freeze")["status"], "not_configured");
    assert_eq!(gate(&blocked, "security")["status"], "passed");
    assert_eq!(gate(&blocked, "policy")["status"], "not_configured");
    assert_eq!(gate(&blocked, "approvals")["status"], "not_configured");
    let decision = estate.decision(&blocked).await?;
    assert_eq!(decision["outcome"], "blocked");
    assert_eq!(gate(&decision, "order")["reason"], refusal);
    // A blocked promotion is final.
    let (status, settled) = estate
        .answer(&estate.admin_token(), text(&blocked, "/id"), "approve")
        .await?;
    assert_eq!(
        (status, code(&settled)),
        (409, "promotion_settled"),
        "{settled}"
    );

    // A deployment that failed in stage does not count.
    let failing = estate
        .promoted(&alice, "web@3", "stage", "deploying")
        .await?;
    let failed = estate.settled(&failing).await?;
    assert_eq!(failed["state"], "failed", "{failed}");
    let still = estate.promoted(&alice, "web@3", "prod", "blocked").await?;
    assert_eq!(
        gate(&still, "order")["reason"],
        "web@3 (same digests) was never deployed successfully to `stage`, which comes before `prod`"
    );

    // A real, successful deployment to stage opens prod to the same digests.
    let staged = estate
        .promoted(&alice, "web@1", "stage", "deploying")
        .await?;
    assert_eq!(gate(&staged, "order")["status"], "not_configured");
    estate.deployed(&staged, &stage_target).await?;

    // Another name and version pinning the same digests counts as what ran there.
    let copy = estate
        .promoted(&alice, "copy@7", "prod", "deploying")
        .await?;
    assert_eq!(gate(&copy, "order")["status"], "passed", "{copy}");
    assert_eq!(
        gate(&copy, "order")["reason"],
        "the same digests were deployed successfully to `stage` (as web@1)"
    );
    assert!(copy["deployment_id"].is_string(), "{copy}");
    estate.deployed(&copy, &prod_target).await?;

    let web = estate
        .promoted(&alice, "web@1", "prod", "deploying")
        .await?;
    assert_eq!(gate(&web, "order")["status"], "passed", "{web}");
    let deployed = estate.deployed(&web, &prod_target).await?;
    assert_eq!(estate.decision(&deployed).await?["outcome"], "allowed");

    // Different digests stay blocked.
    estate.promoted(&alice, "web@3", "prod", "blocked").await?;
    Ok(())
}

/// A freeze window active now blocks (CLI exit status 3) naming the window and its
/// end; only an admin breaks the glass, which overrides the freeze and nothing else and
/// is signed into the decision; a window not active now passes.
#[tokio::test]
async fn freeze_windows_block_until_they_end_and_only_an_admin_breaks_the_glass(
) -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let olga = estate.user("olga", &["operator"]).await?;

    // Windows that opened a minute ago (UTC and Berlin wall clock) for two hours, and
    // one that opens in three hours.
    let now = Utc::now();
    let opened = (now - chrono::Duration::seconds(60))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .ok_or_else(|| anyhow::anyhow!("cannot truncate {now}"))?;
    let ends = opened + chrono::Duration::hours(2);
    let utc_window = format!("{} {} * * */2h", opened.minute(), opened.hour());
    let berlin = opened.with_timezone(&chrono_tz::Europe::Berlin);
    let berlin_window = format!(
        "{} {} * * */2h@Europe/Berlin",
        berlin.minute(),
        berlin.hour()
    );
    let later_window = format!("0 {} * * */1h", (now + chrono::Duration::hours(3)).hour());
    estate
        .environment(json!({"name": "frozen", "freeze": [utc_window], "allow_unscanned": true}))
        .await?;
    // No scan and unscanned images not allowed: the glass must not open that gate.
    estate
        .environment(json!({"name": "frozen-berlin", "freeze": [berlin_window]}))
        .await?;
    estate
        .environment(
            json!({"name": "thawed", "freeze": [later_window], "approvals": 1,
                            "allow_unscanned": true}),
        )
        .await?;
    let frozen_target = estate.target("frozen").await?;
    estate.target("frozen-berlin").await?;
    estate.target("thawed").await?;

    let (since, until) = (rfc3339(opened), rfc3339(ends));
    for (environment, window) in [("frozen", &utc_window), ("frozen-berlin", &berlin_window)] {
        let inside = format!("inside freeze window `{window}` (since {since}, until {until})");
        let (status, _, err) = estate
            .cli(&olga, &["promote", "web@1", "--to", environment])
            .await?;
        assert_eq!(status, 3, "{err}");
        assert!(
            err.contains(&format!(
                "freeze: {inside}; an admin may pass --break-glass REASON"
            )),
            "{err}"
        );
        let listed = estate
            .server
            .get(&format!("/api/v1/promotions?environment={environment}"))
            .await?;
        let promotion = &listed[0];
        assert_eq!(promotion["state"], "blocked", "{promotion}");
        assert_eq!(gate(promotion, "freeze")["status"], "failed");
        assert_eq!(
            gate(promotion, "freeze")["reason"],
            format!("{inside}; an admin may pass --break-glass REASON")
        );
        let shown = estate
            .server
            .get(&format!("/api/v1/environments/{environment}"))
            .await?;
        assert_eq!(
            shown["frozen"],
            json!({"window": window, "since": since, "until": until})
        );
    }

    // An operator's break-glass is refused, and nothing is stored.
    let count = |environment: &'static str| {
        let estate = &estate;
        async move {
            let listed = estate
                .server
                .get(&format!("/api/v1/promotions?environment={environment}"))
                .await?;
            anyhow::Ok(listed.as_array().map_or(0, Vec::len))
        }
    };
    let before = count("frozen").await?;
    let (status, refused) = estate
        .promote_with(&olga, "web@1", "frozen", Some("hotfix"))
        .await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "break_glass_forbidden"),
        "{refused}"
    );
    assert!(
        message(&refused).contains("olga is not an admin"),
        "{refused}"
    );
    let (status, _, err) = estate
        .cli(
            &olga,
            &[
                "promote",
                "web@1",
                "--to",
                "frozen",
                "--break-glass",
                "hotfix",
            ],
        )
        .await?;
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("only an admin may break the glass"), "{err}");
    assert_eq!(count("frozen").await?, before);

    // An admin's: allowed and deployed, the gate overridden, the glass in the decision.
    let reason = "INC-7: payments are down";
    let (status, out, err) = estate
        .cli(
            &estate.admin_token(),
            &[
                "promote",
                "web@1",
                "--to",
                "frozen",
                "--break-glass",
                reason,
                "--wait",
                "-o",
                "json",
            ],
        )
        .await?;
    assert_eq!(status, 0, "{err}");
    let promotion: Value = serde_json::from_str(&out)?;
    assert_eq!(promotion["state"], "deployed", "{promotion}");
    let freeze = gate(&promotion, "freeze");
    assert_eq!(freeze["status"], "overridden", "{promotion}");
    assert_eq!(
        freeze["reason"],
        format!(
            "inside freeze window `{utc_window}` (since {since}, until {until}); break-glass by {}: {reason}",
            estate.admin
        )
    );
    assert_eq!(
        promotion["break_glass"],
        json!({"by": estate.admin, "reason": reason})
    );
    let decision = estate.decision(&promotion).await?;
    assert_eq!(decision["outcome"], "allowed");
    assert_eq!(
        decision["decision"]["break_glass"]["by"],
        estate.admin.as_str()
    );
    assert_eq!(decision["decision"]["break_glass"]["reason"], reason);
    assert_eq!(
        running_decision(&frozen_target).await?,
        text(&promotion, "/decision_id")
    );

    // The glass overrides a freeze and only a freeze.
    let (status, still) = estate
        .promote_with(
            &estate.admin_token(),
            "web@1",
            "frozen-berlin",
            Some(reason),
        )
        .await?;
    assert_eq!(status, 201, "{still}");
    assert_eq!(still["state"], "blocked", "{still}");
    assert_eq!(gate(&still, "freeze")["status"], "overridden");
    assert_eq!(gate(&still, "security")["status"], "failed");
    assert!(
        text(&still, "/message").starts_with("security: no verdict"),
        "{still}"
    );

    // A window that is not active lets the promotion through (to its approvals).
    let thawed = estate
        .promoted(&olga, "web@1", "thawed", "awaiting_approval")
        .await?;
    assert_eq!(gate(&thawed, "freeze")["status"], "passed", "{thawed}");
    assert_eq!(
        gate(&thawed, "freeze")["reason"],
        "no freeze window is active"
    );
    let shown = estate.server.get("/api/v1/environments/thawed").await?;
    assert!(shown["frozen"].is_null(), "{shown}");
    Ok(())
}

/// K distinct approvers other than the requester, admins included; one user counts
/// once; viewers and operators cannot approve; a rejection ends the promotion with a
/// signed decision; K approvals deploy.
#[tokio::test]
async fn approvals_need_distinct_approvers_other_than_the_requester() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let carol = estate.user("carol", &["operator", "approver"]).await?;
    let bob = estate.user("bob", &["approver"]).await?;
    let dave = estate.user("dave", &["approver"]).await?;
    let vera = estate.user("vera", &["viewer"]).await?;
    let otto = estate.user("otto", &["operator"]).await?;
    estate
        .environment(json!({"name": "prod", "approvals": 2, "allow_unscanned": true}))
        .await?;
    let target = estate.target("prod").await?;

    let waiting = estate
        .promoted(&carol, "web@1", "prod", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    assert_eq!(gate(&waiting, "approvals")["status"], "waiting");
    assert_eq!(
        gate(&waiting, "approvals")["reason"],
        "0/2 approvals; needs 2 more from approvers other than carol"
    );
    assert!(
        waiting["decision_id"].is_null(),
        "waiting is not a decision"
    );

    // The requester never approves their own promotion.
    let (status, refused) = estate.answer(&carol, &id, "approve").await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "self_approval"),
        "{refused}"
    );
    assert!(
        message(&refused).contains("carol requested promotion"),
        "{refused}"
    );
    // Neither viewers nor operators approve.
    for token in [&vera, &otto] {
        let (status, refused) = estate.answer(token, &id, "approve").await?;
        assert_eq!((status, code(&refused)), (403, "forbidden"), "{refused}");
    }

    // One approver counts once.
    let (status, once) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{once}");
    assert_eq!(once["state"], "awaiting_approval");
    assert_eq!(
        gate(&once, "approvals")["reason"],
        "1/2 approvals (bob); needs 1 more from approvers other than carol"
    );
    let (status, twice) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!((status, code(&twice)), (409, "already_answered"), "{twice}");
    let shown = estate.promotion(&id).await?;
    assert_eq!(shown["approvals"].as_array().map(Vec::len), Some(1));
    assert_eq!(shown["approvals"][0]["user"], "bob");
    assert_eq!(shown["approvals"][0]["current"], true);

    // Admins are held to it too; a rejection ends a promotion with a signed decision.
    let admin_token = estate.admin_token();
    let by_admin = estate
        .promoted(&admin_token, "web@1", "prod", "awaiting_approval")
        .await?;
    let admin_id = text(&by_admin, "/id").to_owned();
    let (status, refused) = estate.answer(&admin_token, &admin_id, "approve").await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "self_approval"),
        "{refused}"
    );
    let (status, rejected) = estate.answer(&bob, &admin_id, "reject").await?;
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["message"], "rejected by bob");
    assert!(rejected["deployment_id"].is_null(), "{rejected}");
    let decision = estate.decision(&rejected).await?;
    assert_eq!(decision["outcome"], "rejected");
    assert_eq!(decision["decision"]["outcome"], "rejected");
    assert_eq!(decision["decision"]["requested_by"], estate.admin.as_str());
    assert_eq!(
        decision["envelope"]["payloadType"],
        "application/vnd.in-toto+json"
    );
    assert_eq!(
        decision["envelope"]["signatures"][0]["keyid"],
        decision["key_id"]
    );
    let (status, settled) = estate.answer(&dave, &admin_id, "approve").await?;
    assert_eq!(
        (status, code(&settled)),
        (409, "promotion_settled"),
        "{settled}"
    );
    let (exit, _, err) = estate
        .cli(&admin_token, &["promote", "web@1", "--to", "prod"])
        .await?;
    assert_eq!(exit, 0, "awaiting approval exits 0 without --wait: {err}");
    assert!(
        err.contains("to prod: awaiting_approval: 0/2 approvals"),
        "{err}"
    );

    // A second, distinct approver (through the CLI): allowed, deployed for real.
    let (status, out, err) = estate
        .cli(&dave, &["promotion", "approve", &id, "-o", "json"])
        .await?;
    assert_eq!(status, 0, "{err}");
    let allowed: Value = serde_json::from_str(&out)?;
    assert_eq!(allowed["state"], "deploying", "{allowed}");
    assert_eq!(gate(&allowed, "approvals")["status"], "passed");
    assert_eq!(
        gate(&allowed, "approvals")["reason"],
        "2/2 approvals (bob, dave)"
    );
    let deployed = estate.deployed(&allowed, &target).await?;
    let decision = estate.decision(&deployed).await?;
    assert_eq!(decision["outcome"], "allowed");
    let approvers: Vec<&str> = decision["inputs"]["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["user"].as_str())
        .collect();
    assert_eq!(approvers, ["bob", "dave"]);
    Ok(())
}

/// An approval is bound to the plan: a target edit voids it (said in the message, the
/// approval shown as not current), a fresh one is needed; with a TTL an approval
/// expires, and the approver may give it again.
#[tokio::test]
async fn approvals_are_void_when_the_plan_changes_and_expire_after_their_ttl() -> anyhow::Result<()>
{
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    let bob = estate.user("bob", &["approver"]).await?;
    let dave = estate.user("dave", &["approver"]).await?;
    estate
        .environment(json!({"name": "prod", "approvals": 2, "allow_unscanned": true}))
        .await?;
    let target = estate.target("prod").await?;

    let waiting = estate
        .promoted(&alice, "web@1", "prod", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let (status, approved) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["approvals"][0]["current"], true);

    // The target's settings change: bob's approval was for the old plan.
    let (status, edited) = estate
        .server
        .call(
            Method::PATCH,
            &format!("/api/v1/targets/{target}"),
            Some(json!({"set": {"health_timeout_seconds": "9"}})),
        )
        .await?;
    assert_eq!(status, 200, "{edited}");
    let voided = estate.promotion(&id).await?;
    assert_eq!(voided["state"], "awaiting_approval", "{voided}");
    assert_ne!(voided["plan_hash"], waiting["plan_hash"]);
    assert_eq!(
        voided["message"],
        format!(
            "the plan changed (target `{target}` settings changed): approvals given before are void; \
             0/2 approvals; needs 2 more from approvers other than alice \
             (approval by bob is void: it was given for plan {})",
            text(&waiting, "/plan_hash")
        )
    );
    assert_eq!(voided["approvals"][0]["user"], "bob");
    assert_eq!(voided["approvals"][0]["current"], false);
    assert_eq!(
        voided["approvals"][0]["plan_hash"], waiting["plan_hash"],
        "{voided}"
    );

    // dave approves the new plan: one of two; bob must approve again.
    let (status, one) = estate.answer(&dave, &id, "approve").await?;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["state"], "awaiting_approval", "{one}");
    assert_eq!(
        gate(&one, "approvals")["reason"],
        "1/2 approvals (dave); needs 1 more from approvers other than alice"
    );
    assert_eq!(
        gate(&one, "approvals")["details"],
        json!([format!(
            "approval by bob is void: it was given for plan {}",
            text(&waiting, "/plan_hash")
        )])
    );
    let (status, allowed) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{allowed}");
    assert_eq!(allowed["state"], "deploying", "{allowed}");
    assert_eq!(
        gate(&allowed, "approvals")["reason"],
        "2/2 approvals (dave, bob)"
    );
    let deployed = estate.deployed(&allowed, &target).await?;
    let decision = estate.decision(&deployed).await?;
    assert_eq!(decision["decision"]["plan_hash"], voided["plan_hash"]);

    // Approvals that expire after two seconds.
    estate
        .environment(
            json!({"name": "hotfix", "approvals": 2, "approval_ttl_seconds": 2,
                            "allow_unscanned": true}),
        )
        .await?;
    let hotfix_target = estate.target("hotfix").await?;
    let waiting = estate
        .promoted(&alice, "web@1", "hotfix", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let (status, first) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{first}");
    let given = DateTime::parse_from_rfc3339(text(&first, "/approvals/0/at"))?.with_timezone(&Utc);
    // The TTL is wall-clock time: let it pass.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, late) = estate.answer(&dave, &id, "approve").await?;
    assert_eq!(status, 200, "{late}");
    assert_eq!(late["state"], "awaiting_approval", "{late}");
    assert_eq!(
        gate(&late, "approvals")["reason"],
        "1/2 approvals (dave); needs 1 more from approvers other than alice"
    );
    assert_eq!(
        gate(&late, "approvals")["details"],
        json!([format!(
            "approval by bob expired at {}",
            rfc3339(given + chrono::Duration::seconds(2))
        )])
    );
    // bob approves again, in time.
    let (status, renewed) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["state"], "deploying", "{renewed}");
    estate.deployed(&renewed, &hotfix_target).await?;
    Ok(())
}

/// A Rego v1 policy's `deny` reasons block, over the documented input; `allow` that is
/// not true denies; v0 syntax is refused. No scan report blocks with "no verdict"
/// unless the environment allows unscanned images.
#[tokio::test]
async fn policy_and_security_gates_block_with_their_reasons() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    let otto = estate.user("otto", &["operator"]).await?;

    // v0 syntax: refused, nothing created.
    let v0 = "package stella.old\n\ndeny[msg] {\n    input.requester == \"alice\"\n    msg := \"no\"\n}\n";
    let (status, refused) = estate
        .server
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "old", "policy": v0})),
        )
        .await?;
    assert_eq!(
        (status, code(&refused)),
        (400, "invalid_policy"),
        "{refused}"
    );
    assert!(message(&refused).contains("Rego v0"), "{refused}");
    let (status, _) = estate
        .server
        .call(Method::GET, "/api/v1/environments/old", None)
        .await?;
    assert_eq!(status, 404);

    // The reason is built from the input document as documented.
    let guard = r#"package stella.guard

deny contains msg if {
    input.requester == "alice"
    msg := sprintf("%s may not promote %s@%s (%s) to %s on %d target(s)", [
        input.requester, input.release.name, input.release.version,
        input.release.digests[0], input.environment.name, count(input.targets),
    ])
}
"#;
    let guarded = estate
        .environment(json!({"name": "guarded", "policy": guard, "approvals": 1,
                            "allow_unscanned": true}))
        .await?;
    let policy_id = text(&guarded, "/policy").to_owned();
    assert!(policy_id.starts_with("sha256:"), "{guarded}");
    estate.target("guarded").await?;
    let blocked = estate
        .promoted(&alice, "web@1", "guarded", "blocked")
        .await?;
    let digest = published.v1.split_once('@').map_or("", |(_, d)| d);
    let why = format!("alice may not promote web@1 ({digest}) to guarded on 1 target(s)");
    let policy = gate(&blocked, "policy");
    assert_eq!(policy["status"], "failed", "{blocked}");
    assert_eq!(
        policy["reason"],
        format!("policy stella.guard denies it: {why}")
    );
    assert_eq!(policy["details"], json!([why]));
    assert_eq!(
        blocked["message"],
        format!("policy: policy stella.guard denies it: {why}")
    );
    // Someone else passes it (and waits for the approval).
    let passed = estate
        .promoted(&otto, "web@1", "guarded", "awaiting_approval")
        .await?;
    assert_eq!(gate(&passed, "policy")["status"], "passed");
    assert_eq!(
        gate(&passed, "policy")["reason"],
        format!("policy {policy_id} allows it")
    );

    // A module must define `deny`.
    let (status, refused) = estate
        .server
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "closed", "policy": "package stella.closed\n\nallow := true\n"})),
        )
        .await?;
    assert_eq!(
        (status, code(&refused)),
        (400, "invalid_policy"),
        "{refused}"
    );
    assert!(
        message(&refused).contains("policy `stella.closed` defines no `deny` rule"),
        "{refused}"
    );

    // `allow` defined and not true denies, even when `deny` is empty.
    let closed = r#"package stella.closed

deny contains "the release has no images" if count(input.release.digests) == 0

allow := false
"#;
    estate
        .environment(json!({"name": "closed", "policy": closed, "allow_unscanned": true}))
        .await?;
    estate.target("closed").await?;
    let closed = estate.promoted(&otto, "web@1", "closed", "blocked").await?;
    assert_eq!(
        gate(&closed, "policy")["reason"],
        "policy stella.closed denies it: policy `allow` is not true"
    );

    // No scan report, unscanned images not allowed (the default): no verdict.
    let strict = estate
        .environment(json!({"name": "strict", "approvals": 1}))
        .await?;
    assert_eq!(strict["allow_unscanned"], false, "{strict}");
    estate.target("strict").await?;
    let unscanned = estate.promoted(&otto, "web@1", "strict", "blocked").await?;
    let security = gate(&unscanned, "security");
    assert_eq!(security["status"], "failed", "{unscanned}");
    assert!(
        text(security, "/reason").starts_with("no verdict"),
        "{unscanned}"
    );
    assert!(
        text(&unscanned, "/message").starts_with("security: no verdict"),
        "{unscanned}"
    );
    // Allowed unscanned: the gate passes.
    let (status, _) = estate
        .server
        .call(
            Method::PATCH,
            "/api/v1/environments/strict",
            Some(json!({"allow_unscanned": true})),
        )
        .await?;
    assert_eq!(status, 200);
    let scanned_or_not = estate
        .promoted(&otto, "web@1", "strict", "awaiting_approval")
        .await?;
    assert_eq!(gate(&scanned_or_not, "security")["status"], "passed");
    Ok(())
}

/// The rollout strategy is part of the plan: changing it voids approvals given before,
/// as a target edit does, and says so.
#[tokio::test]
async fn a_strategy_change_voids_approvals() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    let bob = estate.user("bob", &["approver"]).await?;
    estate
        .environment(json!({"name": "prod", "approvals": 2, "allow_unscanned": true}))
        .await?;
    estate.target("prod").await?;
    estate.target("prod").await?;
    let waiting = estate
        .promoted(&alice, "web@1", "prod", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let (status, approved) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["approvals"][0]["current"], true);

    let (status, edited) = estate
        .server
        .call(
            Method::PATCH,
            "/api/v1/environments/prod",
            Some(json!({"rollout": {"strategy": "rolling", "batch": "1", "max-unavailable": "1"}})),
        )
        .await?;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["rollout"]["strategy"], "rolling", "{edited}");
    let voided = estate.promotion(&id).await?;
    assert_eq!(voided["state"], "awaiting_approval", "{voided}");
    assert_ne!(voided["plan_hash"], waiting["plan_hash"]);
    let message = text(&voided, "/message");
    assert!(
        message.starts_with(
            "the plan changed (the rollout strategy of `prod` changed): approvals given before are void"
        ),
        "{message}"
    );
    assert_eq!(voided["approvals"][0]["current"], false, "{voided}");

    // A strategy that cannot run over these targets is refused at promotion time.
    let (status, edited) = estate
        .server
        .call(
            Method::PATCH,
            "/api/v1/environments/prod",
            Some(json!({"rollout": {"strategy": "rolling", "batch": "1", "max-unavailable": "2"}})),
        )
        .await?;
    assert_eq!(status, 200, "{edited}");
    let (status, refused) = estate
        .server
        .call(
            Method::POST,
            "/api/v1/promotions",
            Some(json!({"release": "web", "version": "1", "environment": "prod"})),
        )
        .await?;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "rollout_invalid", "{refused}");
    assert!(
        refused["error"]["message"].as_str().is_some_and(
            |m| m.contains("--max-unavailable 2 must be below the number of targets (2)")
        ),
        "{refused}"
    );
    Ok(())
}
