//! Installing an agent on a fresh host with the one command `stella agent token create
//! --install` prints: a real control plane serving the agent binary and the install
//! script, a fresh Debian root (debootstrap) running systemd in a container on a private
//! network, and the real `stella` CLI. Also the downloads API on its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use stella_tests::debian::debian_image;
use stella_tests::images::docker_cli;
use stella_tests::{stella, wait_until, TestDir, TestServer};

/// The packages of the hosts agents are installed on.
const HOST_PACKAGES: [&str; 5] = ["systemd", "systemd-sysv", "curl", "ca-certificates", "sudo"];

const ENROL_TIMEOUT: Duration = Duration::from_secs(90);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The `stella-agent` binary `cargo build -p stella-agent` leaves beside `stella`.
fn agent_bin() -> anyhow::Result<PathBuf> {
    let bin = stella_tests::stella_bin().with_file_name("stella-agent");
    if !bin.exists() {
        bail!(
            "the agent binary is missing at {}: build it with `cargo build -p stella-agent`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A downloads dir holding a copy of the agent binary under its served name.
fn downloads_dir(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let file = downloads.join(format!("stella-agent-linux-{}", std::env::consts::ARCH));
    std::fs::copy(agent_bin()?, &file).context("copying the agent binary")?;
    Ok((downloads, file))
}

/// A private Docker network and the containers on it, removed on drop (also when the
/// test fails).
struct PrivateNetwork {
    name: String,
    gateway: String,
    containers: Vec<String>,
}

impl PrivateNetwork {
    async fn create() -> anyhow::Result<Self> {
        let name = unique("stella-install");
        docker_cli(&["network", "create", &name], None, None).await?;
        let mut network = PrivateNetwork {
            name,
            gateway: String::new(),
            containers: Vec::new(),
        };
        let gateway = docker_cli(
            &[
                "network",
                "inspect",
                "-f",
                "{{(index .IPAM.Config 0).Gateway}}",
                &network.name,
            ],
            None,
            None,
        )
        .await?;
        network.gateway = gateway.trim().to_owned();
        if network.gateway.parse::<std::net::IpAddr>().is_err() {
            bail!("network {} has no gateway address", network.name);
        }
        Ok(network)
    }

    /// A fresh host running systemd as PID 1 (no `--privileged`).
    async fn start_systemd_host(&mut self, image: &str) -> anyhow::Result<Host> {
        let name = unique("stella-host");
        self.containers.push(name.clone());
        docker_cli(
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--hostname",
                &name,
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:ro",
                "--network",
                &self.name,
                image,
                "/sbin/init",
            ],
            None,
            None,
        )
        .await?;
        let host = Host { name };
        wait_until(
            "systemd runs in the host",
            Duration::from_secs(60),
            || async {
                let (code, out, _) = host.sh("systemctl is-system-running").await.ok()?;
                let state = out.trim();
                (code == 0 || state == "degraded").then_some(())
            },
        )
        .await?;
        Ok(host)
    }

    /// A host without systemd running (`sleep` as PID 1).
    async fn start_plain_host(&mut self, image: &str) -> anyhow::Result<Host> {
        let name = unique("stella-host");
        self.containers.push(name.clone());
        docker_cli(
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &self.name,
                image,
                "sleep",
                "infinity",
            ],
            None,
            None,
        )
        .await?;
        Ok(Host { name })
    }
}

impl Drop for PrivateNetwork {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A container standing for a new host.
struct Host {
    name: String,
}

impl Host {
    /// Runs `script` with `sh -c` as root: (exit code, stdout, stderr).
    async fn sh(&self, script: &str) -> anyhow::Result<(i32, String, String)> {
        let output = tokio::process::Command::new("docker")
            .args(["exec", &self.name, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running docker exec")?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    async fn exists(&self, path: &str) -> anyhow::Result<bool> {
        Ok(self.sh(&format!("test -e {path}")).await?.0 == 0)
    }
}

/// A control plane on the network's gateway address, serving `downloads`.
async fn server_for(network: &PrivateNetwork, downloads: &Path) -> anyhow::Result<TestServer> {
    start_server(network, downloads, false).await
}

async fn start_server(
    network: &PrivateNetwork,
    downloads: &Path,
    plain_http: bool,
) -> anyhow::Result<TestServer> {
    let gateway = network.gateway.clone();
    let downloads = downloads.to_owned();
    TestServer::start_with(move |config| {
        config.api_listen = format!("{gateway}:0").parse().unwrap_or(config.api_listen);
        config.grpc_listen = format!("{gateway}:0").parse().unwrap_or(config.grpc_listen);
        config.downloads_dir = Some(downloads);
        config.api_plain_http = plain_http;
    })
    .await
}

/// The command `stella agent token create --install` prints, and its stderr.
async fn install_command(server: &TestServer) -> anyhow::Result<String> {
    let url = server.api_url();
    let (code, stdout, stderr) = stella(
        &["agent", "token", "create", "--install", "--server", &url],
        &[("STELLA_TOKEN", &server.admin_token)],
    )
    .await?;
    if code != 0 {
        bail!("stella agent token create --install failed: {stderr}");
    }
    let command = stdout.trim().to_owned();
    if command.lines().count() != 1 {
        bail!("not one line: {command}");
    }
    Ok(command)
}

/// The agents the control plane lists, as `stella agents list -o json` prints them.
async fn agents(server: &TestServer) -> anyhow::Result<Vec<Value>> {
    let url = server.api_url();
    let (code, stdout, stderr) = stella(
        &["agents", "list", "-o", "json", "--server", &url],
        &[("STELLA_TOKEN", &server.admin_token)],
    )
    .await?;
    if code != 0 {
        bail!("stella agents list failed: {stderr}");
    }
    let listed: Value = serde_json::from_str(&stdout)?;
    Ok(listed.as_array().cloned().unwrap_or_default())
}

async fn wait_connected(server: &TestServer, name: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("agent {name} is listed as connected"),
        ENROL_TIMEOUT,
        || async {
            let listed = agents(server).await.ok()?;
            listed
                .iter()
                .any(|agent| agent["name"] == name && agent["state"] == "connected")
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_command_enrols_an_agent_once_and_uninstall_removes_it() -> anyhow::Result<()> {
    let image = debian_image(&HOST_PACKAGES).await?;
    let dir = TestDir::new("install");
    let (downloads, served) = downloads_dir(dir.path())?;
    let mut network = PrivateNetwork::create().await?;
    let server = server_for(&network, &downloads).await?;
    let host = network.start_systemd_host(&image).await?;

    let command = install_command(&server).await?;
    assert!(command.contains("--pinnedpubkey sha256//"), "{command}");
    let (code, out, err) = host.sh(&command).await?;
    assert_eq!(code, 0, "the install failed:\n{out}\n{err}");
    wait_connected(&server, &host.name).await?;

    // What it left: a root-only env file without the token, a private data dir, a unit
    // systemd accepts.
    let (_, env, _) = host
        .sh("cat /etc/stella/agent.env 2>/dev/null; true")
        .await?;
    assert!(!env.contains("STELLA_JOIN_TOKEN"), "{env}");
    let (_, mode, _) = host.sh("stat -c '%a %U' /var/lib/stella-agent").await?;
    assert_eq!(mode.trim(), "700 stella-agent");
    let (code, out, err) = host
        .sh("systemd-analyze verify /etc/systemd/system/stella-agent.service")
        .await?;
    assert_eq!(code, 0, "systemd-analyze verify:\n{out}\n{err}");

    // Again, with a new token: still one agent, still connected, not enrolled again.
    let id_before = host.sh("cat /var/lib/stella-agent/agent.json").await?.1;
    let again = install_command(&server).await?;
    let (code, out, err) = host.sh(&again).await?;
    assert_eq!(code, 0, "the second install failed:\n{out}\n{err}");
    assert!(err.contains("already"), "{err}");
    assert_eq!(
        host.sh("cat /var/lib/stella-agent/agent.json").await?.1,
        id_before
    );
    wait_connected(&server, &host.name).await?;
    let listed = agents(&server).await?;
    assert_eq!(
        listed
            .iter()
            .filter(|a| a["name"] == host.name.as_str())
            .count(),
        1,
        "{listed:?}"
    );
    let (code, state, _) = host.sh("systemctl is-active stella-agent").await?;
    assert_eq!((code, state.trim()), (0, "active"));
    assert!(err.contains("already this version"), "{err}");

    // A new binary on the server (one byte more still runs): replaced, the service
    // restarted, the same agent back.
    let mut newer = std::fs::read(&served)?;
    newer.push(0);
    std::fs::write(&served, &newer)?;
    let newer_sha = format!("{:x}", Sha256::digest(&newer));
    let upgrade = install_command(&server).await?;
    let (code, out, err) = host.sh(&upgrade).await?;
    assert_eq!(code, 0, "the upgrade failed:\n{out}\n{err}");
    assert!(
        err.contains("installed /usr/local/bin/stella-agent"),
        "{err}"
    );
    let (_, installed_sha, _) = host.sh("sha256sum /usr/local/bin/stella-agent").await?;
    assert!(installed_sha.starts_with(&newer_sha), "{installed_sha}");
    wait_connected(&server, &host.name).await?;
    assert_eq!(
        host.sh("cat /var/lib/stella-agent/agent.json").await?.1,
        id_before
    );
    let listed = agents(&server).await?;
    assert_eq!(
        listed
            .iter()
            .filter(|a| a["name"] == host.name.as_str())
            .count(),
        1,
        "{listed:?}"
    );

    // Uninstall: unit, binary and env file go; the identity stays unless purged.
    let fetch = command
        .split(" | ")
        .next()
        .context("no curl in the command")?;
    let (code, out, err) = host.sh(&format!("{fetch} | sh -s -- --uninstall")).await?;
    assert_eq!(code, 0, "uninstall failed:\n{out}\n{err}");
    for path in [
        "/etc/systemd/system/stella-agent.service",
        "/usr/local/bin/stella-agent",
        "/etc/stella/agent.env",
    ] {
        assert!(!host.exists(path).await?, "{path} is left");
    }
    assert!(host.exists("/var/lib/stella-agent/agent.json").await?);
    let (code, _, _) = host.sh("systemctl is-active stella-agent").await?;
    assert_ne!(code, 0, "the agent still runs");

    // --purge also takes the identity and the user.
    let (code, out, err) = host
        .sh(&format!("{fetch} | sh -s -- --uninstall --purge"))
        .await?;
    assert_eq!(code, 0, "purge failed:\n{out}\n{err}");
    assert!(!host.exists("/var/lib/stella-agent").await?);
    assert_ne!(host.sh("getent passwd stella-agent").await?.0, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_stops_before_anything_runs_on_a_tampered_binary_or_a_wrong_pin(
) -> anyhow::Result<()> {
    let image = debian_image(&HOST_PACKAGES).await?;
    let dir = TestDir::new("install-refused");
    let (downloads, file) = downloads_dir(dir.path())?;
    let mut network = PrivateNetwork::create().await?;
    let server = server_for(&network, &downloads).await?;
    let host = network.start_plain_host(&image).await?;
    let nothing_installed = || async {
        for path in [
            "/usr/local/bin/stella-agent",
            "/etc/systemd/system/stella-agent.service",
            "/etc/stella/agent.env",
            "/var/lib/stella-agent",
        ] {
            assert!(!host.exists(path).await?, "{path} was installed");
        }
        anyhow::Ok(())
    };

    // The listing hashes the file; then a byte flips, its time and size kept, as an
    // attacker who replaced the file behind the server's back would.
    let listing: Value = server
        .client()
        .get(format!("{}/api/v1/downloads", server.api_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listing["items"].as_array().map(Vec::len),
        Some(1),
        "{listing}"
    );
    let original = std::fs::read(&file)?;
    let modified = std::fs::metadata(&file)?.modified()?;
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    std::fs::write(&file, &tampered)?;
    std::fs::File::options()
        .write(true)
        .open(&file)?
        .set_modified(modified)?;

    let command = install_command(&server).await?;
    let (code, out, err) = host.sh(&command).await?;
    assert_ne!(code, 0, "a tampered binary was accepted:\n{out}\n{err}");
    assert!(err.contains("SHA-256"), "{err}");
    nothing_installed().await?;

    // A pin of another key: curl refuses the server, so no script runs (the pipe's
    // status is the shell's, which read nothing: only curl's message tells).
    let wrong_pin = format!("sha256//{}", "A".repeat(43) + "=");
    let pin = command
        .split_whitespace()
        .find(|word| word.starts_with("sha256//"))
        .context("no pin in the command")?;
    let (_, out, err) = host.sh(&command.replace(pin, &wrong_pin)).await?;
    assert!(
        err.contains("public key does not match pinned public key"),
        "a wrong pin was accepted:\n{out}\n{err}"
    );
    assert!(
        !err.contains("stella-agent install:"),
        "the script ran:\n{err}"
    );
    nothing_installed().await?;
    // The script given a wrong pin (fetched with the right one) stops before it
    // downloads the binary, and says why.
    let script_only = command.replacen(&format!("--pin {pin}"), &format!("--pin {wrong_pin}"), 1);
    let (code, _, err) = host.sh(&script_only).await?;
    assert_ne!(code, 0);
    assert!(err.contains("does not match --pin"), "{err}");
    nothing_installed().await?;

    // The right binary on a host without systemd: installed, and the manual command
    // printed, with a non-zero exit before any enrolment.
    std::fs::write(&file, &original)?;
    let (code, _, err) = host.sh(&command).await?;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not run systemd"), "{err}");
    assert!(err.contains("--join-token stj1."), "{err}");
    assert!(host.exists("/usr/local/bin/stella-agent").await?);
    assert!(
        !host
            .exists("/etc/systemd/system/stella-agent.service")
            .await?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_command_works_over_plain_http() -> anyhow::Result<()> {
    let image = debian_image(&HOST_PACKAGES).await?;
    let dir = TestDir::new("install-plain");
    let (downloads, _) = downloads_dir(dir.path())?;
    let mut network = PrivateNetwork::create().await?;
    let server = start_server(&network, &downloads, true).await?;
    let host = network.start_systemd_host(&image).await?;

    // No TLS key to pin: only the SHA-256 check guards the binary (see docs/security.md).
    let command = install_command(&server).await?;
    assert!(command.starts_with("curl -fsS http://"), "{command}");
    assert!(!command.contains("--pin"), "{command}");
    // The operator's additions at the end of the line reach the agent.
    let (code, out, err) = host
        .sh(&format!("{command} --name web-1 --label site=lab"))
        .await?;
    assert_eq!(code, 0, "the install failed:\n{out}\n{err}");
    assert!(err.contains("sha256"), "{err}");
    wait_connected(&server, "web-1").await?;
    let listed = agents(&server).await?;
    let agent = listed
        .iter()
        .find(|a| a["name"] == "web-1")
        .context("web-1 not listed")?;
    assert_eq!(agent["labels"]["site"], "lab", "{agent}");
    Ok(())
}

#[tokio::test]
async fn token_create_install_refuses_a_server_that_is_not_an_http_url() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let url = server.api_url();
    for bad in ["ftp://cp:8080", "https://cp:8080/path;rm -rf", "cp:8080"] {
        let (code, stdout, stderr) = stella(
            &[
                "agent",
                "token",
                "create",
                "--install",
                "--install-server",
                bad,
                "--server",
                &url,
            ],
            &[("STELLA_TOKEN", &server.admin_token)],
        )
        .await?;
        assert_ne!(code, 0, "{bad}: {stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{bad}: {stderr}");
        assert!(stderr.contains("not an http(s) URL"), "{bad}: {stderr}");
        assert!(stdout.is_empty(), "{bad}: {stdout}");
    }
    Ok(())
}

#[tokio::test]
async fn the_downloads_api_lists_serves_and_refuses() -> anyhow::Result<()> {
    let dir = TestDir::new("downloads");
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let agent_bytes = b"\x7fELF pretend agent".repeat(1000);
    std::fs::write(downloads.join("stella-agent-linux-aarch64"), &agent_bytes)?;
    std::fs::write(downloads.join("stella-agent"), b"plain agent")?;
    std::fs::write(downloads.join("stella-agent_0.1.0_amd64.deb"), b"a deb")?;
    std::fs::write(downloads.join("README"), b"not served")?;
    std::fs::write(dir.path().join("secret"), b"outside")?;
    let server = TestServer::start_with({
        let downloads = downloads.clone();
        move |config| config.downloads_dir = Some(downloads)
    })
    .await?;
    let base = server.api_url();
    // No token: these are public.
    let http = server.client();

    let listing: Value = http
        .get(format!("{base}/api/v1/downloads"))
        .send()
        .await?
        .json()
        .await?;
    let items = listing["items"].as_array().context("no items")?;
    let names: Vec<&str> = items.iter().filter_map(|i| i["name"].as_str()).collect();
    let own = format!("stella-agent-linux-{}", std::env::consts::ARCH);
    let mut expected = vec![
        "stella-agent-linux-aarch64".to_owned(),
        "stella-agent_0.1.0_amd64.deb".to_owned(),
    ];
    if !expected.contains(&own) {
        expected.push(own.clone());
    }
    expected.sort();
    assert_eq!(names, expected, "{listing}");
    let deb = items
        .iter()
        .find(|i| i["kind"] == "deb")
        .context("no deb")?;
    assert_eq!(deb["arch"], "x86_64");
    assert_eq!(deb["url"], "/downloads/stella-agent_0.1.0_amd64.deb");

    let aarch64 = items
        .iter()
        .find(|i| i["name"] == "stella-agent-linux-aarch64")
        .context("no aarch64 agent")?;
    assert_eq!(aarch64["kind"], "agent");
    assert_eq!(aarch64["os"], "linux");
    assert_eq!(aarch64["size"], agent_bytes.len());
    let sha = format!("{:x}", Sha256::digest(&agent_bytes));
    assert_eq!(aarch64["sha256"], sha.as_str());

    let response = http
        .get(format!("{base}/downloads/stella-agent-linux-aarch64"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"].to_str()?,
        agent_bytes.len().to_string()
    );
    assert_eq!(response.bytes().await?.as_ref(), agent_bytes.as_slice());
    let line = http
        .get(format!(
            "{base}/downloads/stella-agent-linux-aarch64.sha256"
        ))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(line, format!("{sha}  stella-agent-linux-aarch64\n"));

    if own != "stella-agent-linux-aarch64" {
        let plain = http.get(format!("{base}/downloads/{own}")).send().await?;
        assert_eq!(plain.bytes().await?.as_ref(), b"plain agent");
    }

    for refused in [
        "README",
        "stella-agent",
        "..%2Fsecret",
        "..%2F..%2Fsecret",
        // (`%2E%2E` alone is `..` to the URL parser, which sends `/` instead.)
        "%2E%2E%2Fsecret",
        "nothing.sha256",
    ] {
        let response = http
            .get(format!("{base}/downloads/{refused}"))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{refused}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["code"], "not_found", "{refused}");
    }
    let response = http
        .get(format!("{base}/downloads/../secret"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let script = http.get(format!("{base}/install/agent.sh")).send().await?;
    assert_eq!(script.headers()["content-type"], "text/x-shellscript");
    assert!(script.text().await?.starts_with("#!/bin/sh"));
    Ok(())
}
