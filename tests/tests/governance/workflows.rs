//! Promotion workflows: an environment names a task pack that carries out every
//! promotion allowed into it. The workflow's plan hash is the promotion's plan hash
//! (approvals and the signed decision bind it); its steps run around the deployment it
//! makes; its end settles the promotion.

use super::*;

/// A workflow: a check that reads the promotion input, the deployment, and a
/// verification that exits with `VERIFY`.
const WORKFLOW: &str = r#"apiVersion: stellaops.io/pack.v1
kind: TaskPack
metadata: {name: ship-web, version: 1.0.0}
spec:
  inputs:
    - {name: promotion, type: object, required: false}
  steps:
    - id: check
      run:
        uses: builtin:script
        with: {script: 'test "{{ inputs.promotion.release }}" = web && test -n "{{ inputs.promotion.deploymentPlanHash }}"'}
    - id: deploy
      run: {uses: builtin:promotion}
    - id: verify
      run: {uses: builtin:script, with: {script: 'exit VERIFY'}}
"#;

async fn run_of(estate: &Estate, run_id: &str) -> anyhow::Result<Value> {
    estate
        .server
        .get(&format!("/v1/task-runner/runs/{run_id}"))
        .await
}

#[tokio::test]
async fn a_promotion_workflow_binds_its_plan_hash_and_runs_around_the_deployment(
) -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |_| {}).await?;
    let env = unique("flow");
    let admin = estate.admin_token();

    // A workflow without its deployment step, or with a gate, is refused.
    let no_deploy = WORKFLOW.replace(
        "run: {uses: builtin:promotion}",
        "run: {uses: builtin:wait, with: {seconds: 0}}",
    );
    let (status, body) = estate
        .server
        .request(
            Method::POST,
            "/api/v1/environments",
            Some(&admin),
            Some(json!({"name": env, "workflow": no_deploy})),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), "invalid_workflow", "{body}");
    assert!(
        message(&body).contains("exactly one `builtin:promotion`"),
        "{body}"
    );

    let created = estate
        .environment(json!({"name": env, "allow_unscanned": true, "approvals": 1,
                            "workflow": WORKFLOW.replace("VERIFY", "0")}))
        .await?;
    let workflow_id = text(&created, "/workflow").to_owned();
    assert!(workflow_id.starts_with("sha256:"), "{created}");
    let target = estate.target(&env).await?;
    let requester = estate.user(&unique("req"), &["operator"]).await?;
    let approver = estate.user(&unique("appr"), &["approver"]).await?;

    let waiting = estate
        .promoted(&requester, "web@1", &env, "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let plan_hash = text(&waiting, "/plan_hash").to_owned();

    // The promotion's plan hash is the compiled workflow's (what the task runner
    // computes for the same manifest and inputs), and it binds the deployment plan.
    let stored = estate
        .server
        .get(&format!("/api/v1/promotions/{id}"))
        .await?;
    assert_eq!(text(&stored, "/plan_hash"), plan_hash);

    let (status, approved) = estate.answer(&approver, &id, "approve").await?;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "deploying", "{approved}");
    let run_id = format!("promotion-{id}");
    assert_eq!(approved["run_id"], run_id.as_str(), "{approved}");

    let settled = estate.deployed(&approved, &target).await?;
    assert!(
        text(&settled, "/message").contains("succeeded"),
        "{settled}"
    );
    let run = run_of(&estate, &run_id).await?;
    assert_eq!(run["status"], "Succeeded", "{run}");
    assert_eq!(run["planHash"], plan_hash.as_str(), "{run}");
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    (
                        s["stepId"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        steps,
        [
            ("check", "Succeeded"),
            ("deploy", "Succeeded"),
            ("verify", "Succeeded")
        ],
        "{run}"
    );
    // The signed decision carries the workflow's plan hash and replays.
    let decision = estate.decision(&settled).await?;
    assert_eq!(
        decision["decision"]["plan_hash"],
        plan_hash.as_str(),
        "{decision}"
    );
    let (code_, stdout, stderr) = estate
        .cli(
            &estate.admin_token(),
            &["decision", "replay", text(&settled, "/decision_id")],
        )
        .await?;
    assert_eq!(code_, 0, "{stdout}{stderr}");

    // A verification that fails fails the promotion, naming the step; the deployment
    // itself succeeded.
    estate
        .server
        .request(
            Method::PATCH,
            &format!("/api/v1/environments/{env}"),
            Some(&admin),
            Some(json!({"workflow": WORKFLOW.replace("VERIFY", "3"), "approvals": 0})),
        )
        .await?;
    let deploying = estate
        .promoted(&requester, "web@1", &env, "deploying")
        .await?;
    let failed = estate.settled(&deploying).await?;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        text(&failed, "/message").contains("at step verify"),
        "{failed}"
    );
    let deployment = estate
        .server
        .get(&format!(
            "/api/v1/deployments/{}",
            text(&failed, "/deployment_id")
        ))
        .await?;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");

    // `promote --wait` follows the run, and its exit status says how it ended.
    let (code_, stdout, stderr) = estate
        .cli(
            &admin,
            &["promote", "web@1", "--to", &env, "--wait", "-o", "json"],
        )
        .await?;
    assert_ne!(code_, 0, "the verification fails: {stdout}{stderr}");
    let waited: Value = serde_json::from_str(&stdout)?;
    assert_eq!(waited["state"], "failed", "{waited}");
    assert!(waited["run_id"].is_string(), "{waited}");

    // Back to the built-in workflow: promotions deploy without a run again.
    let (status, body) = estate
        .server
        .request(
            Method::PATCH,
            &format!("/api/v1/environments/{env}"),
            Some(&admin),
            Some(json!({"workflow": null})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["workflow"].is_null(), "{body}");
    let plain = estate
        .promoted(&requester, "web@1", &env, "deploying")
        .await?;
    assert!(plain["run_id"].is_null(), "{plain}");
    estate.deployed(&plain, &target).await?;
    Ok(())
}

/// A workflow whose first step waits until the test lets it go, so that the server can
/// be stopped while the promotion is handed to its run.
const HELD_WORKFLOW: &str = r#"apiVersion: stellaops.io/pack.v1
kind: TaskPack
metadata: {name: held, version: 1.0.0}
spec:
  inputs:
    - {name: promotion, type: object, required: false}
  steps:
    - id: hold
      run:
        uses: builtin:script
        with: {script: 'while [ ! -f /work/go ]; do sleep 0.1; done'}
    - id: deploy
      run: {uses: builtin:promotion}
"#;

/// The server stops after a promotion was handed to its workflow and the run is lost
/// with it (as when it stops between storing the promotion and creating the run): at
/// the next start the sweep creates the run again and the promotion deploys.
#[tokio::test]
async fn a_promotion_whose_run_was_lost_gets_its_run_after_a_restart() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let mut estate = Estate::start(&published, |_| {}).await?;
    let env = unique("lost");
    estate
        .environment(json!({"name": env, "allow_unscanned": true, "workflow": HELD_WORKFLOW}))
        .await?;
    let target = estate.target(&env).await?;
    let requester = estate.user(&unique("req"), &["operator"]).await?;
    let deploying = estate
        .promoted(&requester, "web@1", &env, "deploying")
        .await?;
    let id = text(&deploying, "/id").to_owned();
    let run_id = format!("promotion-{id}");
    wait_until("the workflow holds", DEPLOY_TIMEOUT, || async {
        let run = run_of(&estate, &run_id).await.ok()?;
        let hold = run["steps"]
            .as_array()?
            .iter()
            .find(|s| s["stepId"] == "hold")?
            .clone();
        (hold["status"] == "Running").then_some(())
    })
    .await?;

    estate.server.stop().await;
    {
        sqlx::any::install_default_drivers();
        let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(
            &estate.server.config.database_url(),
        )
        .await?;
        for table in [
            "run_logs",
            "run_steps",
            "run_approvals",
            "run_artifacts",
            "runs",
        ] {
            let key = if table == "runs" { "id" } else { "run_id" };
            sqlx::query(&format!("DELETE FROM {table} WHERE {key} = $1"))
                .bind(run_id.as_str())
                .execute(&mut db)
                .await?;
        }
    }
    let work = estate
        .server
        .config
        .data_dir
        .join("runs")
        .join("default")
        .join(&run_id)
        .join("work");
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("go"), "")?;
    estate.server.restart().await?;

    let settled = estate.deployed(&deploying, &target).await?;
    assert_eq!(settled["run_id"], run_id.as_str(), "{settled}");
    let run = run_of(&estate, &run_id).await?;
    assert_eq!(run["status"], "Succeeded", "{run}");
    Ok(())
}
