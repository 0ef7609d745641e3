//! Scan reports and VEX documents, end to end: imported over the API and the CLI against
//! a real control plane, with tags resolved through a real registry; and a release
//! running on the real Docker engine whose security verdict follows what is imported.
//!
//! The documents are the decision crate's fixtures (real Trivy 0.55 and Grype 0.74
//! reports of one image, and `vexctl` output), their image digest rewritten to the test
//! image's, as an operator's scanner would have written it for that image.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use stella_tests::images::{ContainerCleanup, WebImages, WEB_HEALTH_CMD};
use stella_tests::registry::TestRegistry;
use stella_tests::{stella, wait_until, TestAgent, TestServer};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

/// The manifest digest the web fixtures were written for (`registry.example.com/shop/web`).
const FIXTURE_WEB_HEX: &str = "e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";
/// The manifest digest of the clean worker fixture.
const FIXTURE_WORKER_HEX: &str = "023917ec6a886d0e8e15f28fb543515a5fcd8d938edb091e8147db4efed388ee";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../decision/tests/fixtures/scan")
        .join(name)
}

/// A fixture with its image digest replaced by `digest` (`sha256:<hex>`), in every form
/// it takes (`sha256:<hex>`, `repo@sha256:<hex>`, `pkg:oci/…@sha256%3A<hex>`).
fn fixture_for(name: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(fixture_path(name))?;
    let hex = digest.trim_start_matches("sha256:");
    Ok(text
        .replace(FIXTURE_WEB_HEX, hex)
        .replace(FIXTURE_WORKER_HEX, hex)
        .into_bytes())
}

fn sha256_id(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn digest_of(reference: &str) -> String {
    reference
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_owned())
        .unwrap_or_default()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// `POST /api/v1/scans[?image=…]` with `bytes` as the body, as `token`.
async fn import(
    server: &TestServer,
    token: &str,
    image: Option<&str>,
    bytes: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server
        .client()
        .post(format!("{}/api/v1/scans", server.api_url()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(bytes);
    if let Some(image) = image {
        request = request.query(&[("image", image)]);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
    Ok((status, body))
}

/// The findings of `scan show` keyed by (id, package).
fn finding<'a>(shown: &'a Value, id: &str, package: &str) -> &'a Value {
    shown["findings"]
        .as_array()
        .and_then(|findings| {
            findings
                .iter()
                .find(|f| f["id"] == id && f["package"] == package)
        })
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn documents_are_told_apart_stored_once_and_checked_against_their_image() -> anyhow::Result<()>
{
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &unique("stella-test/scans"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let v2 = images.publish("v2", true).await?;
    let (d1, d2) = (digest_of(&v1), digest_of(&v2));
    let tag_v1 = format!("{}:v1", images.repository());
    let tag_v2 = format!("{}:v2", images.repository());
    let server = TestServer::start_with(|config| config.api_max_scan_bytes = 64 * 1024).await?;
    let admin = server.admin_token.clone();

    // A Trivy report for a tag: resolved through the registry, stored as given.
    let trivy = fixture_for("trivy-0.55-web-debian12.json", &d1)?;
    let (status, imported) = import(&server, &admin, Some(&tag_v1), trivy.clone()).await?;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported["kind"], "trivy");
    assert_eq!(imported["digest"], d1);
    assert_eq!(imported["document_id"], sha256_id(&trivy));
    assert_eq!(imported["findings"], 10);
    assert_eq!(imported["created"], true);
    assert_eq!(imported["reevaluated"], json!([]), "nothing runs it");

    // The same bytes again: nothing new.
    let (status, again) = import(&server, &admin, Some(&d1), trivy.clone()).await?;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["document_id"], imported["document_id"]);
    assert_eq!(again["created"], false);

    // A Grype report for a reference pinned by digest.
    let grype = fixture_for("grype-0.74-web-debian12.json", &d1)?;
    let (status, imported) = import(&server, &admin, Some(&v1), grype.clone()).await?;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported["kind"], "grype");
    assert_eq!(imported["digest"], d1);
    assert_eq!(imported["findings"], 8);

    // OpenVEX needs no image: it names its products.
    let vex = fixture_for("vex-vexctl-0.2-web.json", &d1)?;
    let (status, imported) = import(&server, &admin, None, vex.clone()).await?;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported["kind"], "openvex");
    assert_eq!(imported["digest"], Value::Null);
    assert_eq!(imported["statements"], 2);
    let vex_id = sha256_id(&vex);
    assert_eq!(imported["document_id"], vex_id);

    // Detection refusals carry the parser's reason.
    for (body, expected) in [
        (&b"{\"SchemaVersion\": 2,"[..], "not valid JSON"),
        (
            b"[{\"Target\": \"web\", \"Vulnerabilities\": []}]",
            "before 0.20",
        ),
        (
            b"{\"SchemaVersion\": 1, \"Results\": []}",
            "SchemaVersion 1 is not supported",
        ),
        (b"{\"bomFormat\": \"CycloneDX\"}", "not a Trivy JSON report"),
    ] {
        let (status, refused) = import(&server, &admin, Some(&d1), body.to_vec()).await?;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(code(&refused), "invalid_scan", "{refused}");
        assert!(message(&refused).contains(expected), "{refused}");
    }
    // A report needs its image.
    let (status, refused) = import(&server, &admin, None, trivy.clone()).await?;
    assert_eq!(status, 400, "{refused}");
    assert!(message(&refused).contains("--image"), "{refused}");
    // A report of one image filed against another: refused, naming both.
    for image in [d2.as_str(), tag_v2.as_str()] {
        let (status, refused) = import(&server, &admin, Some(image), trivy.clone()).await?;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(code(&refused), "report_mismatch", "{refused}");
        assert!(
            message(&refused).contains(&d1) && message(&refused).contains(&d2),
            "{refused}"
        );
    }
    // A tag the registry does not have, and no release recorded.
    let (status, refused) = import(
        &server,
        &admin,
        Some(&format!("{}:nope", images.repository())),
        trivy.clone(),
    )
    .await?;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(code(&refused), "image_unresolved", "{refused}");
    // Larger than `api_max_scan_bytes`.
    let (status, refused) = import(&server, &admin, Some(&d1), vec![b' '; 100 * 1024]).await?;
    assert_eq!(status, 413, "{refused}");
    assert!(
        message(&refused).contains("api_max_scan_bytes"),
        "{refused}"
    );
    // Viewers read; they do not import.
    let viewer = server
        .post(
            "/api/v1/users",
            json!({"name": "vera", "roles": ["viewer"]}),
        )
        .await?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, refused) = import(&server, &viewer, Some(&d1), trivy.clone()).await?;
    assert_eq!(status, 403, "{refused}");
    // Nothing refused was stored.
    let (status, none) = server
        .request(
            Method::GET,
            &format!("/api/v1/scans/{d2}"),
            Some(&viewer),
            None,
        )
        .await?;
    assert_eq!(status, 404, "{none}");
    assert_eq!(code(&none), "not_scanned", "{none}");

    // What is known about d1: both reports, findings merged, VEX suppressions named.
    let (status, shown) = server
        .request(
            Method::GET,
            &format!("/api/v1/scans/{d1}"),
            Some(&viewer),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{shown}");
    let mut kinds: Vec<&str> = shown["reports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["grype", "trivy"], "{shown}");
    assert!(
        shown["reports"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["current"] == true && r["imported_by"] == "admin"),
        "{shown}"
    );
    assert!(
        shown["reports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["kind"] == "grype" && r["scanner_version"] == "0.74.7"),
        "{shown}"
    );
    let expat = finding(&shown, "CVE-2024-45491", "libexpat1");
    assert_eq!(expat["severity"], "critical", "{shown}");
    assert_eq!(expat["suppressed_by"]["document_id"], vex_id, "{shown}");
    assert_eq!(expat["suppressed_by"]["status"], "not_affected");
    assert_eq!(
        expat["suppressed_by"]["justification"],
        "vulnerable_code_cannot_be_controlled_by_adversary"
    );
    assert!(expat["suppressed_by"]["vex_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("https://openvex.dev/docs/public/vex-")));
    // A GHSA from Grype merges under its CVE from Trivy; nothing suppresses it.
    let net = finding(&shown, "CVE-2023-39325", "golang.org/x/net");
    assert_eq!(net["severity"], "high", "{shown}");
    assert_eq!(net["suppressed_by"], Value::Null);
    assert!(
        net["aliases"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "GHSA-4374-p667-p6c8")),
        "{net}"
    );

    // The CLI: import from a file, show as a table and as one JSON document.
    let env = [
        ("STELLA_SERVER", server.api_url()),
        ("STELLA_TOKEN", admin.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let spec_vex = server.dir.path().join("vex-spec.json");
    std::fs::write(&spec_vex, fixture_for("vex-spec-0.0.2-web.json", &d1)?)?;
    let spec_vex = spec_vex.to_string_lossy().into_owned();
    let (status, stdout, stderr) = stella(
        &[
            "scan", "import", "--image", &tag_v1, &spec_vex, "-o", "json",
        ],
        &env,
    )
    .await?;
    assert_eq!(status, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout)?;
    assert_eq!(printed["kind"], "openvex");
    assert_eq!(printed["digest"], d1, "the image given is resolved");
    assert_eq!(printed["created"], true);
    let spec_vex_id = printed["document_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let trivy_file = server.dir.path().join("trivy.json");
    std::fs::write(&trivy_file, &trivy)?;
    let trivy_file = trivy_file.to_string_lossy().into_owned();
    let (status, stdout, stderr) =
        stella(&["scan", "import", "--image", &d1, &trivy_file], &env).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("imported before"), "{stdout}");
    assert!(stdout.contains(&sha256_id(&trivy)), "{stdout}");

    let (status, stdout, stderr) = stella(&["scan", "import", &trivy_file], &env).await?;
    assert_eq!(status, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("--image") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let (status, table, stderr) = stella(&["scan", "show", &d1], &env).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(table.contains("SUPPRESSED BY"), "{table}");
    // CVE-2024-2961 in libc6: the spec fixture's statement names its subcomponents.
    let libc = table
        .lines()
        .find(|line| line.starts_with("CVE-2024-2961") && line.contains("libc6"))
        .unwrap_or_default();
    assert!(
        libc.contains("not_affected") && libc.contains(&spec_vex_id[..19]),
        "{table}"
    );
    let (status, stdout, stderr) = stella(&["scan", "show", &d1, "-o", "json"], &env).await?;
    assert_eq!(status, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout)?;
    assert_eq!(printed["digest"], d1);
    assert_eq!(
        printed["findings"].as_array().map(Vec::len),
        shown["findings"].as_array().map(Vec::len)
    );
    Ok(())
}

#[tokio::test]
async fn a_running_release_is_evaluated_again_when_reports_and_vex_arrive() -> anyhow::Result<()> {
    let registry = TestRegistry::start().await?;
    let images = WebImages::new(
        &registry.host(),
        &unique("stella-test/scans"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let d1 = digest_of(&v1);
    let server = TestServer::start().await?;
    server
        .post(
            "/api/v1/releases",
            json!({"name": "web", "version": "1",
                   "components": {"web": format!("{}:v1", images.repository())}}),
        )
        .await?;
    // A new environment: block critical findings, and unscanned images.
    server
        .post("/api/v1/environments", json!({"name": "prod"}))
        .await?;
    let _agent = TestAgent::start(&server, "docker-host").await?;
    server
        .wait_for_state("docker-host", "connected", Duration::from_secs(10))
        .await?;
    let target = unique("web");
    let _cleanup = ContainerCleanup::new([target.clone()]);
    server
        .post(
            "/api/v1/targets",
            json!({"name": target, "environment": "prod", "kind": "docker",
                   "agent": "docker-host",
                   "settings": {"health_cmd": WEB_HEALTH_CMD}}),
        )
        .await?;
    let admin = server.admin_token.clone();

    // A clean scan lets it through; the verdict is stored once it runs, with no event.
    let clean = fixture_for("trivy-0.65-worker-clean.json", &d1)?;
    let (status, imported) = import(&server, &admin, Some(&d1), clean).await?;
    assert_eq!(status, 201, "{imported}");
    let (status, promotion) = server
        .call(
            Method::POST,
            "/api/v1/promotions",
            Some(json!({"release": "web", "version": "1", "environment": "prod"})),
        )
        .await?;
    assert_eq!(status, 201, "{promotion}");
    let deployment = promotion["deployment_id"].as_str().unwrap_or_default();
    let deployed = server.wait_deployment(deployment, DEPLOY_TIMEOUT).await?;
    assert_eq!(deployed["state"], "succeeded", "{deployed}");
    let env = wait_until("prod has a verdict", Duration::from_secs(10), || async {
        server
            .get("/api/v1/environments/prod")
            .await
            .ok()
            .filter(|env| env["verdict"].is_object())
    })
    .await?;
    assert_eq!(env["verdict"]["state"], "passing", "{env}");
    assert_eq!(env["verdict"]["release"], "web@1", "{env}");

    // A report with critical findings on the running digest: blocking, said once. It is
    // imported for the tag with the registry gone: the release created from that tag
    // says which digest it was.
    drop(registry);
    let trivy = fixture_for("trivy-0.55-web-debian12.json", &d1)?;
    let tag = format!("{}:v1", images.repository());
    let (status, imported) = import(&server, &admin, Some(&tag), trivy.clone()).await?;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported["digest"], d1);
    assert_eq!(
        imported["reevaluated"],
        json!([{"environment": "prod", "release": "web@1", "state": "blocking", "changed": true}])
    );
    let events = server
        .get("/api/v1/events?kind=verdict.changed&environment=prod")
        .await?;
    let events = events.as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["subject"], d1);
    assert_eq!(events[0]["release"], json!({"name": "web", "version": "1"}));
    let said = events[0]["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("web@1 in prod") && said.contains("CVE-2023-45853"),
        "{said}"
    );

    let env = server.get("/api/v1/environments/prod").await?;
    assert_eq!(env["verdict"]["state"], "blocking", "{env}");
    assert!(
        env["verdict"]["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x
                .as_str()
                .is_some_and(|x| x.contains("CVE-2024-45491 critical in libexpat1")))),
        "{env}"
    );
    let release = server.get("/api/v1/releases/web/1").await?;
    assert_eq!(release["components"][0]["scanned"], true, "{release}");
    assert_eq!(
        release["events"].as_array().map(Vec::len),
        Some(1),
        "{release}"
    );
    assert_eq!(release["events"][0]["kind"], "verdict.changed");

    // The same report again: the verdict stands, nothing new is said.
    let (status, again) = import(&server, &admin, Some(&d1), trivy).await?;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["reevaluated"][0]["state"], "blocking");
    assert_eq!(again["reevaluated"][0]["changed"], false);

    // VEX: both critical findings are not_affected; the verdict passes again, quietly.
    let vex = fixture_for("vex-vexctl-0.2-web.json", &d1)?;
    let (status, imported) = import(&server, &admin, None, vex.clone()).await?;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(
        imported["reevaluated"],
        json!([{"environment": "prod", "release": "web@1", "state": "passing", "changed": true}])
    );
    let env = server.get("/api/v1/environments/prod").await?;
    assert_eq!(env["verdict"]["state"], "passing", "{env}");
    let events = server.get("/api/v1/events?kind=verdict.changed").await?;
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");

    // `scan show` names the suppression; `release show` on the CLI the event.
    let shown = server.get(&format!("/api/v1/scans/{d1}")).await?;
    for (id, package) in [
        ("CVE-2024-45491", "libexpat1"),
        ("CVE-2023-45853", "zlib1g"),
    ] {
        let suppressed = &finding(&shown, id, package)["suppressed_by"];
        assert_eq!(suppressed["document_id"], sha256_id(&vex), "{shown}");
        assert_eq!(suppressed["status"], "not_affected", "{shown}");
    }
    let cli_env = [
        ("STELLA_SERVER", server.api_url()),
        ("STELLA_TOKEN", admin.clone()),
    ];
    let cli_env: Vec<(&str, &str)> = cli_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, table, stderr) = stella(&["release", "show", "web@1"], &cli_env).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(table.contains("SCANNED"), "{table}");
    assert!(table.contains("verdict.changed"), "{table}");
    let (status, table, stderr) = stella(&["env", "show", "prod"], &cli_env).await?;
    assert_eq!(status, 0, "{stderr}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("verdict ") && l.contains("passing")),
        "{table}"
    );
    Ok(())
}
