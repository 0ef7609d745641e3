//! `cargo xtask bench deploy --kind winrm`: one release deployed to a Windows host over
//! WS-Management — here the listener double of the tests (`winrm_double.py`, HTTPS,
//! NTLM verified by pyspnego, for both sides) — through Stella (`stella promote --wait` to a `winrm`
//! target, agent warm) versus the bare WS-Management calls doing the same work (the
//! deploy script in one shell: Create, Command, Receive, Delete; then the sticker file
//! written in another), made with the kind's own client over one authenticated
//! connection, in the same run against the same double, alternating, several rounds;
//! medians and the ratio.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use stella_agent_core::CancellationToken;
use stella_target_winrm::{Auth, Endpoint, Password, Transport};
use stella_tests::doubles::winrm::{WinrmDouble, USER};
use stella_tests::images::WebImages;
use stella_tests::registry::TestRegistry;

use super::deploy::{median, start_agent, uuid_like, DeployArgs, Stella};
use super::server::ServerProcess;
use crate::cargo::step;

/// The deploy script, for Stella and the bare calls alike.
const SCRIPT: &str = "echo \"deploying $STELLA_VERSION\"";

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    let (binary, runtime) = super::deploy::server_and_runtime(args)?;
    runtime.block_on(bench(args, &binary))
}

/// What a deployment does over WS-Management, with nothing of Stella around it.
async fn bare_deploy(transport: &Transport, version: &str) -> anyhow::Result<()> {
    let script = format!("$env:STELLA_VERSION = '{version}'\n{SCRIPT}\n");
    let timeout = Duration::from_secs(60);
    let cancel = CancellationToken::new();
    let output = stella_target_winrm::run_powershell(
        transport,
        "the script",
        &script,
        timeout,
        &cancel,
        |_, _| {},
    )
    .await?;
    if output.exit_code != 0 {
        bail!("the script failed: {}", output.stderr);
    }
    let sticker = concat!(
        "# stella: write-files\n",
        "$path = 'C:\\ProgramData\\Stella\\stickers\\bare\\web.json'\n",
        "$bytes = [Convert]::FromBase64String('e30=')\n",
        "New-Item -ItemType Directory -Force -Path (Split-Path -Parent $path) | Out-Null\n",
        "[IO.File]::WriteAllBytes($path + '.tmp', $bytes)\n",
        "Move-Item -Force -LiteralPath ($path + '.tmp') -Destination $path\n"
    );
    let output = stella_target_winrm::run_powershell(
        transport,
        "the sticker",
        sticker,
        timeout,
        &cancel,
        |_, _| {},
    )
    .await?;
    if output.exit_code != 0 {
        bail!("writing the sticker failed: {}", output.stderr);
    }
    Ok(())
}

async fn bench(args: &DeployArgs, binary: &Path) -> anyhow::Result<()> {
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-deploy-winrm-")
        .tempdir()
        .context("cannot create a temp dir")?;
    step("registry, image and the WS-Management double");
    let registry = TestRegistry::start().await?;
    let suffix = uuid_like();
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-bench/winrm-web-{suffix}"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let double = WinrmDouble::start().await?;
    let endpoint = Endpoint {
        url: double.endpoint(),
        https: true,
        user: USER.to_owned(),
        password: Password(double.password.clone()),
        auth: Auth::Ntlm,
        ca_file: Some(double.ca_file()),
        operation_timeout: Duration::from_secs(20),
    };
    let transport = Transport::new(&endpoint)?;

    step("server and agent");
    let server = ServerProcess::start(
        binary,
        work_dir.path(),
        "heartbeat_interval_seconds = 5\napi_plain_http = true\n",
        None,
    )
    .await?;
    let stella = Stella {
        binary,
        api_url: server.api_url().to_owned(),
        token: server.admin_token().to_owned(),
    };
    let mut agent = start_agent(binary, &server, &stella, work_dir.path(), "winrm").await?;
    let target = format!("bench-winrm-{suffix}");
    let result = async {
        stella
            .run(&["env", "create", "bench", "--allow-unscanned"])
            .await?;
        let http = reqwest::Client::new();
        let response = http
            .put(format!(
                "{}/api/v1/environments/bench/secrets/win_password",
                server.api_url()
            ))
            .bearer_auth(server.admin_token())
            .json(&json!({"value": double.password}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("setting the secret answered {}", response.status());
        }
        let response = http
            .post(format!("{}/api/v1/targets", server.api_url()))
            .bearer_auth(server.admin_token())
            .json(&json!({
                "name": target, "environment": "bench", "kind": "winrm", "agent": "bench-agent",
                "settings": {
                    "endpoint": double.endpoint(), "user": USER,
                    "password_secret": "${secret.win_password}", "auth": "ntlm",
                    "ca_file": double.ca_file().display().to_string(), "script": SCRIPT,
                },
            }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "creating the target answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let versions: Vec<String> = (0..=args.rounds + 1).map(|i| format!("1.0.{i}")).collect();
        for version in &versions {
            stella
                .run(&[
                    "release",
                    "create",
                    "web",
                    version,
                    "--component",
                    &format!("web={v1}"),
                ])
                .await?;
        }

        step("stella promote --wait versus the bare WS-Management calls");
        // Warm-up: the agent connects and authenticates.
        stella
            .run(&["promote", &format!("web@{}", versions[0]), "--to", "bench", "--wait"])
            .await?;
        bare_deploy(&transport, &versions[0]).await?;
        let mut through_stella = Vec::new();
        let mut bare = Vec::new();
        for (round, version) in versions.iter().enumerate().take(args.rounds + 1).skip(1) {
            let started = Instant::now();
            stella
                .run(&["promote", &format!("web@{version}"), "--to", "bench", "--wait"])
                .await?;
            let stella_seconds = started.elapsed().as_secs_f64();
            let started = Instant::now();
            bare_deploy(&transport, version).await?;
            let bare_seconds = started.elapsed().as_secs_f64();
            println!(
                "round {round}: stella promote --wait {stella_seconds:.3} s, bare WS-Management calls {bare_seconds:.3} s"
            );
            through_stella.push(stella_seconds);
            bare.push(bare_seconds);
        }
        let stella_median = median(&mut through_stella);
        let bare_median = median(&mut bare);
        let ratio = stella_median / bare_median;
        println!();
        println!("rounds                                  {}", args.rounds);
        println!("median stella promote --wait (winrm)    {stella_median:.3} s");
        println!("median bare WS-Management calls         {bare_median:.3} s (script shell + sticker shell)");
        println!("ratio                                   {ratio:.2}");
        println!(
            "BENCH_JSON {}",
            json!({"bench": "deploy_winrm", "rounds": args.rounds, "stella_median_seconds": stella_median,
                   "bare_wsman_median_seconds": bare_median, "ratio": ratio})
        );
        anyhow::Ok(())
    }
    .await;
    let _ = agent.kill().await;
    server.stop().await;
    drop(double);
    result
}
