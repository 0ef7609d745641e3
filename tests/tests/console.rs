//! The web console: sign-in with a password, the session cookie's flags, CSRF and
//! cross-site refusals, the Content-Security-Policy, and — in a real headless Chromium
//! over a real server, agent, registry and Docker target — creating an environment,
//! promoting, separation of duties at approval, a promotion and drift updating live,
//! and revoking an agent, with accessibility checks on every page.

use std::time::Duration;

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::{json, Value};
use stella_tests::browser::{Browser, Driver, ACCESSIBILITY_CHECKS};
use stella_tests::images::{docker_cli, ContainerCleanup, WebImages, WEB_HEALTH_CMD};
use stella_tests::registry::TestRegistry;
use stella_tests::{TestAgent, TestServer};

const PASSWORD: &str = "correct horse battery staple";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A client that shows redirects instead of following them, trusting the server's CA.
fn raw_client(server: &TestServer) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read_to_string(server.ca_file())?;
    let roots = stella_pki::pem_to_der_certs(&pem)?;
    let config = stella_pki::api_client_tls_config(stella_pki::ApiTrust::Roots(roots))?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

async fn set_password(server: &TestServer, user: &str, password: &str) -> anyhow::Result<u16> {
    let (status, _) = server
        .call(
            Method::PUT,
            &format!("/api/v1/users/{user}/password"),
            Some(json!({ "password": password })),
        )
        .await?;
    Ok(status)
}

/// The session cookie's value in a `Set-Cookie` header, with the whole header.
fn session_cookie(response: &reqwest::Response) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("stella_session="))
        .map(|header| {
            let value = header
                .trim_start_matches("stella_session=")
                .split(';')
                .next()
                .unwrap_or_default()
                .to_owned();
            (value, header.to_owned())
        })
}

fn csrf_of(html: &str) -> anyhow::Result<String> {
    let start = html
        .find("name=\"csrf\" value=\"")
        .context("no csrf field in the page")?
        + "name=\"csrf\" value=\"".len();
    let end = html[start..].find('"').context("unterminated csrf value")?;
    Ok(html[start..start + end].to_owned())
}

async fn sign_in(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(client
        .post(format!("{url}/console/login"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("username", user), ("password", password)])
        .send()
        .await?)
}

#[tokio::test]
async fn the_console_signs_in_with_a_password_and_guards_every_form() -> anyhow::Result<()> {
    stella_tests::init_tracing();
    let server = TestServer::start().await?;
    let url = server.api_url();
    assert!(url.starts_with("https://"));
    let client = raw_client(&server)?;

    assert_eq!(set_password(&server, "admin", "short").await?, 400);
    assert_eq!(set_password(&server, "admin", PASSWORD).await?, 204);

    // Not signed in: to the sign-in page, which has the strict policy and no inline
    // script, style or handler.
    let response = client.get(format!("{url}/")).send().await?;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/login");
    let response = client.get(format!("{url}/console/login")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-security-policy"],
        stella_control_plane::console::CSP
    );
    assert!(stella_control_plane::console::CSP.contains("script-src 'self'"));
    assert!(!stella_control_plane::console::CSP.contains("unsafe-inline"));
    let html = response.text().await?;
    assert!(!html.contains("<script>") && !html.contains(" style=") && !html.contains(" onclick"));

    // A wrong password, an unknown user: the same refusal.
    for (user, password) in [("admin", "not the password at all"), ("nobody", PASSWORD)] {
        let response = sign_in(&client, &url, user, password).await?;
        assert_eq!(response.status(), 401);
        assert!(session_cookie(&response).is_none());
        assert!(response
            .text()
            .await?
            .contains("wrong user name or password"));
    }
    // A sign-in posted from another site.
    let response = client
        .post(format!("{url}/console/login"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    assert!(session_cookie(&response).is_none());

    let response = sign_in(&client, &url, "admin", PASSWORD).await?;
    assert_eq!(response.status(), 303);
    let (cookie, header) = session_cookie(&response).context("a session cookie")?;
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(header.contains(flag), "{flag} missing from {header}");
    }
    let signed = |method: Method, path: &str| {
        client
            .request(method, format!("{url}{path}"))
            .header("cookie", format!("stella_session={cookie}"))
    };
    let page = signed(Method::GET, "/").send().await?;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()?
        .contains("frame-ancestors 'none'"));
    let html = page.text().await?;
    let csrf = csrf_of(&html)?;

    // Forms: refused from another site, and with another token; done with the token.
    let response = signed(Method::POST, "/console/agents/join-tokens")
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    assert!(!response.text().await?.contains("install/agent.sh"));
    let response = signed(Method::POST, "/console/agents/join-tokens")
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    let response = signed(Method::POST, "/console/agents/join-tokens")
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", "not-the-token")])
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    assert!(response.text().await?.contains("reload the page"));
    let response = signed(Method::POST, "/console/agents/join-tokens")
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let html = response.text().await?;
    assert!(
        html.contains("/install/agent.sh") && html.contains("--pinnedpubkey"),
        "the install command pins the API's key under TLS"
    );

    // The same authorisation as the API: a viewer may look, not create join tokens.
    let created = server
        .post(
            "/api/v1/users",
            json!({"name": "vera", "roles": ["viewer"]}),
        )
        .await?;
    assert!(created["token"].is_string());
    assert_eq!(set_password(&server, "vera", PASSWORD).await?, 204);
    let response = sign_in(&client, &url, "vera", PASSWORD).await?;
    let (vera, _) = session_cookie(&response).context("vera's cookie")?;
    let page = client
        .get(format!("{url}/console/agents"))
        .header("cookie", format!("stella_session={vera}"))
        .send()
        .await?
        .text()
        .await?;
    let vera_csrf = csrf_of(&page)?;
    let response = client
        .post(format!("{url}/console/agents/join-tokens"))
        .header("cookie", format!("stella_session={vera}"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", vera_csrf.as_str())])
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    assert!(response.text().await?.contains("this needs the admin role"));

    // The console's actions are in the audit log, as the signed-in user.
    let audit = server.get("/api/v1/audit").await?;
    let console_entries: Vec<&Value> = audit
        .as_array()
        .context("audit entries")?
        .iter()
        .filter(|e| e["object"] == "/console/agents/join-tokens")
        .collect();
    assert!(
        console_entries
            .iter()
            .any(|e| e["actor"] == "admin" && e["outcome"] == "200"),
        "{console_entries:?}"
    );

    // Signing out ends the session: the cookie no longer works.
    let response = signed(Method::POST, "/console/logout")
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    assert_eq!(response.status(), 303);
    let response = signed(Method::GET, "/").send().await?;
    assert_eq!(response.status(), 303, "signed out");

    // Sign-in attempts are rate-limited per address.
    let mut limited = false;
    for _ in 0..40 {
        let response = sign_in(&client, &url, "admin", "wrong wrong wrong").await?;
        if response.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "no 429 after 40 wrong passwords");
    Ok(())
}

/// Runs `steps`; on failure saves a screenshot of each browser first.
async fn with_screenshots<F, Fut>(browsers: &[(&str, &Browser)], steps: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let outcome = steps().await;
    if outcome.is_err() {
        let dir = stella_tests::browser::screenshot_dir();
        std::fs::create_dir_all(&dir)?;
        for (name, browser) in browsers {
            let path = dir.join(format!("{name}.png"));
            if browser.screenshot(&path).await.is_ok() {
                eprintln!("screenshot of {name}'s browser: {}", path.display());
            }
        }
    }
    outcome
}

/// Checks a page's accessibility, and keeps a screenshot of it in
/// `STELLA_CONSOLE_SCREENSHOTS` when that names a directory (the docs' pictures are
/// taken so: `STELLA_CONSOLE_SCREENSHOTS=docs/console cargo test --test console`).
async fn accessible(browser: &Browser, page: &str) -> anyhow::Result<()> {
    if let Some(dir) = std::env::var_os("STELLA_CONSOLE_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        browser
            .screenshot(&dir.join(format!("{}.png", page.replace(' ', "-"))))
            .await?;
    }
    let problems = browser.run(ACCESSIBILITY_CHECKS).await?;
    let problems = problems.as_array().cloned().unwrap_or_default();
    anyhow::ensure!(problems.is_empty(), "accessibility of {page}: {problems:?}");
    Ok(())
}

async fn browser_sign_in(browser: &Browser, url: &str, user: &str) -> anyhow::Result<()> {
    browser.goto(&format!("{url}/console/login")).await?;
    browser.fill("#username", user).await?;
    browser.fill("#password", PASSWORD).await?;
    browser.click("#sign-in").await?;
    browser
        .wait_text("nav", "Dashboard", Duration::from_secs(10))
        .await?;
    Ok(())
}

/// A run of a three-step pack in the default tenant: build, an approval, deploy.
fn run_example(run_id: &str) -> Value {
    let manifest = "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata:\n  name: console-pack\n  version: 1.0.0\nspec:\n  approvals:\n    - id: security-review\n      grants: [packs.approve]\n  steps:\n    - id: build\n      run:\n        uses: builtin:build\n    - id: approval\n      gate:\n        approval:\n          id: security-review\n          message: \"Security review required before deploy\"\n    - id: deploy\n      run:\n        uses: builtin:deploy\n";
    json!({"runId": run_id, "manifest": manifest, "tenantId": "default"})
}

#[tokio::test]
async fn the_console_in_a_real_browser() -> anyhow::Result<()> {
    stella_tests::init_tracing();
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &unique("stella-test/console"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let server = TestServer::start_plain().await?;
    let url = server.api_url();
    // Alice may approve too, but never her own promotion. Bob is made on the Users
    // page below.
    server
        .post(
            "/api/v1/users",
            json!({"name": "alice", "roles": ["operator", "approver"]}),
        )
        .await?;
    for user in ["alice", "admin"] {
        assert_eq!(set_password(&server, user, PASSWORD).await?, 204);
    }
    let agent = TestAgent::start(&server, "docker-host").await?;
    server
        .wait_for_state("docker-host", "connected", Duration::from_secs(10))
        .await?;

    let driver = Driver::start().await?;
    let alice = driver.browser().await?;
    let bob = driver.browser().await?;
    let target = unique("web");
    let _cleanup = ContainerCleanup::new([target.clone()]);
    let outcome = with_screenshots(&[("alice", &alice), ("bob", &bob)], || async {
        // A wrong password is refused, on the page.
        alice.goto(&format!("{url}/console/login")).await?;
        accessible(&alice, "sign-in").await?;
        alice.fill("#username", "alice").await?;
        alice.fill("#password", "not her password").await?;
        alice.click("#sign-in").await?;
        alice
            .wait_text(
                "#login-error",
                "wrong user name or password",
                Duration::from_secs(10),
            )
            .await?;
        browser_sign_in(&alice, &url, "alice").await?;
        accessible(&alice, "dashboard").await?;

        // She creates the release on the dashboard: its tag resolved to a digest.
        alice.fill("#release-name", "web").await?;
        alice.fill("#release-version", "1").await?;
        alice
            .fill("#release-components", &format!("web={v1}"))
            .await?;
        alice.click("#create-release").await?;
        let created = alice
            .wait_text(
                "[role=status]",
                "release web@1 created",
                Duration::from_secs(30),
            )
            .await?;
        assert!(created.contains("sha256:"), "{created}");

        // Alice creates `prod` (one approval) on the pipeline page.
        alice.goto(&format!("{url}/console/pipeline")).await?;
        accessible(&alice, "pipeline").await?;
        alice.fill("#env-name", "prod").await?;
        alice.fill("#env-approvals", "1").await?;
        alice.click("#env-unscanned").await?;
        alice.click("#create-environment").await?;
        alice
            .wait_text(
                "[role=status]",
                "environment prod created",
                Duration::from_secs(10),
            )
            .await?;
        // And its target, on the targets page.
        alice.goto(&format!("{url}/console/drift")).await?;
        alice.fill("#target-name", &target).await?;
        alice
            .fill(
                "#target-settings",
                &format!("health_cmd={WEB_HEALTH_CMD}\nhealth_timeout_seconds=30"),
            )
            .await?;
        alice.click("#create-target").await?;
        alice
            .wait_text("[role=status]", "created in prod", Duration::from_secs(10))
            .await?;
        let made = server.get(&format!("/api/v1/targets/{target}")).await?;
        assert_eq!(made["settings"]["health_cmd"], WEB_HEALTH_CMD, "{made}");
        assert_eq!(made["agent"], "docker-host");

        // She promotes web@1 to prod; it waits for an approval.
        alice.goto(&format!("{url}/")).await?;
        alice.click("#promote").await?;
        alice
            .wait_text(
                "#promotion-state",
                "awaiting approval",
                Duration::from_secs(10),
            )
            .await?;
        accessible(&alice, "promotion").await?;
        let promotion_url = alice
            .client
            .current_url()
            .await
            .map_err(|e| anyhow!("{e}"))?
            .to_string();
        // Her own Approve is refused, and the page says why.
        assert!(alice.text("#own-promotion").await?.contains("someone else"));
        alice.click("#approve").await?;
        let refusal = alice
            .wait_text("[role=alert]", "", Duration::from_secs(10))
            .await?;
        assert!(
            refusal.contains("requested") || refusal.contains("own"),
            "the refusal says why: {refusal}"
        );
        alice
            .wait_text(
                "#promotion-state",
                "awaiting approval",
                Duration::from_secs(5),
            )
            .await?;

        // Bob approves in his browser; Alice's page, not reloaded, follows the
        // deployment to its end.
        alice
            .run("window.stellaMark = 'kept'; return true;")
            .await?;
        // An admin makes bob, an approver with a console password, on the Users page.
        browser_sign_in(&bob, &url, "admin").await?;
        bob.goto(&format!("{url}/console/users")).await?;
        bob.fill("#user-name", "bob").await?;
        bob.fill("#user-roles", "approver").await?;
        bob.fill("#user-password", PASSWORD).await?;
        bob.click("#create-user").await?;
        let made = bob
            .wait_text("[role=status]", "user bob created", Duration::from_secs(10))
            .await?;
        assert!(made.contains("stk1_"), "the token shown once: {made}");
        assert!(bob.text("#user-bob").await?.contains("approver"));
        accessible(&bob, "users").await?;
        bob.goto(&format!("{url}/console/login")).await?;
        browser_sign_in(&bob, &url, "bob").await?;
        bob.goto(&promotion_url).await?;
        bob.click("#approve").await?;
        bob.wait_text("[role=status]", "approved", Duration::from_secs(10))
            .await?;
        alice
            .wait_text("#promotion-state", "deployed", Duration::from_secs(90))
            .await?;
        assert_eq!(
            alice.run("return window.stellaMark || null;").await?,
            json!("kept"),
            "the page updated without a reload"
        );
        // Per target, the task's state; the decision replayed on the server; the
        // deployment's log, streamed line by line into the page.
        alice
            .wait_text(
                &format!("#task-{target}"),
                "succeeded",
                Duration::from_secs(10),
            )
            .await?;
        let verification = alice.text("#decision-verification").await?;
        assert!(verification.contains("byte-identical"), "{verification}");
        alice
            .wait_for(
                "return document.querySelector('#deployment-log').dataset.ended === 'true';",
                Duration::from_secs(20),
            )
            .await?;
        let log = alice.text("#deployment-log").await?;
        assert!(
            log.contains(&target),
            "the deployment's log names its target: {log}"
        );
        accessible(&alice, "promotion").await?;
        // The dashboard now shows the release current in prod.
        alice.goto(&format!("{url}/")).await?;
        alice
            .wait_text("table.matrix", "current", Duration::from_secs(10))
            .await?;
        accessible(&alice, "dashboard").await?;

        // Drift: the container removed behind Stella's back shows on the drift page,
        // live.
        alice.goto(&format!("{url}/console/drift")).await?;
        accessible(&alice, "targets and drift").await?;
        alice
            .run("window.stellaMark = 'drift'; return true;")
            .await?;
        let label = format!("label=ops.stella.target={target}");
        let ids = docker_cli(&["ps", "-aq", "--filter", &label], None, None).await?;
        let id = ids
            .split_whitespace()
            .next()
            .context("the target's container")?;
        docker_cli(&["rm", "-f", id], None, None).await?;
        alice
            .wait_text(
                &format!("#target-{target}"),
                "drift",
                Duration::from_secs(60),
            )
            .await?;
        assert_eq!(
            alice.run("return window.stellaMark || null;").await?,
            json!("drift")
        );
        accessible(&alice, "targets and drift").await?;
        // Remediate: what was deployed there is deployed again, and the badge goes,
        // live.
        alice.click(&format!("#remediate-{target}")).await?;
        alice
            .client
            .accept_alert()
            .await
            .map_err(|e| anyhow!("accepting the confirmation: {e}"))?;
        alice
            .wait_text("[role=status]", "remediating", Duration::from_secs(10))
            .await?;
        alice
            .wait_text(
                &format!("#target-{target}"),
                "in sync",
                Duration::from_secs(120),
            )
            .await?;
        let sticker = alice.text(&format!("#target-{target}")).await?;
        assert!(sticker.contains("web@1"), "the sticker: {sticker}");
        // Lists filter and page.
        alice
            .goto(&format!("{url}/console/drift?q=no-such-target"))
            .await?;
        assert_eq!(alice.text("#list-summary").await?, "no targets");
        alice
            .goto(&format!("{url}/console/drift?q={}", target.to_uppercase()))
            .await?;
        assert!(alice.text("main").await?.contains(&target));
        accessible(&alice, "targets filtered").await?;

        // An admin revokes the agent, confirming first.
        bob.goto(&format!("{url}/console/login")).await?;
        browser_sign_in(&bob, &url, "admin").await?;
        bob.goto(&format!("{url}/console/agents")).await?;
        accessible(&bob, "agents").await?;
        bob.click("#revoke-docker-host").await?;
        bob.client
            .accept_alert()
            .await
            .map_err(|e| anyhow!("accepting the confirmation: {e}"))?;
        bob.wait_text("#agent-docker-host", "revoked", Duration::from_secs(10))
            .await?;
        let revoked = server.agent("docker-host").await?;
        assert_eq!(revoked["state"], "revoked");

        // The release's page: its digest, its promotion, the evidence to download.
        bob.goto(&format!("{url}/console/releases/web/1")).await?;
        accessible(&bob, "release").await?;
        assert!(bob.text("main").await?.contains("sha256:"));
        let href = bob
            .run("return document.querySelector('a[download]').getAttribute('href');")
            .await?;
        let href = href.as_str().context("an evidence link")?.to_owned();
        let cookie = bob
            .client
            .get_named_cookie("stella_session")
            .await
            .map_err(|e| anyhow!("the session cookie: {e}"))?;
        let packet = reqwest::Client::new()
            .get(format!("{url}{href}"))
            .header("cookie", format!("stella_session={}", cookie.value()))
            .send()
            .await?;
        assert_eq!(packet.status(), 200);
        assert_eq!(packet.headers()["content-type"], "application/gzip");
        assert!(
            packet.bytes().await?.starts_with(&[0x1f, 0x8b]),
            "a gzip packet"
        );

        // The audit chain, verified on the page; the runs page.
        bob.goto(&format!("{url}/console/audit")).await?;
        accessible(&bob, "audit").await?;
        let verification = bob.text("#audit-verification").await?;
        assert!(verification.starts_with("verified:"), "{verification}");
        assert!(bob.text("main").await?.contains("/console/promotions/"));
        bob.goto(&format!("{url}/console/runs")).await?;
        accessible(&bob, "runs").await?;

        // A task-pack run: its steps drawn, its gate answered on the page, its log
        // streamed to the end.
        let run_id = unique("run");
        server
            .post("/v1/task-runner/runs", run_example(&run_id))
            .await?;
        bob.goto(&format!("{url}/console/runs/{run_id}")).await?;
        bob.wait_text("#node-approval", "waiting", Duration::from_secs(30))
            .await?;
        accessible(&bob, "run").await?;
        let arrows = bob
            .run("return document.querySelectorAll('figure.dag path.edge').length;")
            .await?;
        assert_eq!(arrows, json!(2), "build → approval → deploy");
        bob.click("#approve-security-review").await?;
        bob.wait_text("#run-status", "succeeded", Duration::from_secs(60))
            .await?;
        bob.wait_for(
            "return document.querySelector('#run-log').dataset.ended === 'true';",
            Duration::from_secs(20),
        )
        .await?;
        assert!(bob.text("#node-deploy").await?.contains("succeeded"));
        Ok(())
    })
    .await;
    alice.close().await;
    bob.close().await;
    let _ = agent.stop().await;
    outcome
}

#[tokio::test]
async fn a_user_without_a_password_cannot_sign_in_and_the_api_token_still_works(
) -> anyhow::Result<()> {
    let server = TestServer::start_plain().await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = server.api_url();
    let response = sign_in(&client, &url, "admin", PASSWORD).await?;
    assert_eq!(response.status(), 401);
    let whoami = server.get("/api/v1/whoami").await?;
    assert_eq!(whoami["name"], "admin");
    // Plain HTTP: the cookie is not `Secure` (a browser would drop it).
    assert_eq!(set_password(&server, "admin", PASSWORD).await?, 204);
    let response = sign_in(&client, &url, "admin", PASSWORD).await?;
    let (_, header) = session_cookie(&response).context("cookie")?;
    assert!(!header.contains("Secure") && header.contains("HttpOnly"));
    // Users change their own password with their token.
    let (status, _) = server
        .call(
            Method::PUT,
            "/api/v1/password",
            Some(json!({"password": "another long password"})),
        )
        .await?;
    assert_eq!(status, 204);
    let response = sign_in(&client, &url, "admin", PASSWORD).await?;
    assert_eq!(response.status(), 401, "the old password no longer works");
    Ok(())
}
