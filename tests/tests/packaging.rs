//! Installing Stella, as operators will: the Debian packages in a fresh Debian root
//! running systemd (install, nothing started, units verified, upgrade, remove, purge),
//! and the container images (a server with its data in a volume, an agent joining it
//! over a private network, a deployment through it, the data kept across a restart).
//!
//! The inputs come from `cargo xtask test`, which builds them from the debug binaries
//! before running the tests: the packages in `target/dist/dev` (and the same at a
//! higher version in `target/dist/dev/upgrade`), the images
//! `stella/server:<version>-dev` and `stella/agent:<version>-dev`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use stella_tests::debian::debian_image;
use stella_tests::images::{ContainerCleanup, WebImages, WEB_HEALTH_CMD};
use stella_tests::{client_trusting, free_port, wait_until, TestDir};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `target/dist/dev`, next to the `debug` dir this test binary is in.
fn dist_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    // target/debug/deps/<test> → target
    let target = exe
        .ancestors()
        .nth(3)
        .context("the test binary is not under target/<profile>/deps")?;
    Ok(target.join("dist").join("dev"))
}

/// The one `<package>_*.deb` in `dir`.
fn deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "reading {} (cargo xtask test builds the packages there)",
            dir.display()
        )
    })?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one {prefix}*.deb in {}, found {found:?}",
            dir.display()
        ),
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `docker ARGS…`: (exit code, stdout, stderr).
async fn docker(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running docker")?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `docker ARGS…`, which must succeed; its stdout.
async fn docker_ok(args: &[&str]) -> anyhow::Result<String> {
    let (code, stdout, stderr) = docker(args).await?;
    if code != 0 {
        bail!(
            "docker {} failed ({code}): {}",
            args.join(" "),
            stderr.trim()
        );
    }
    Ok(stdout)
}

/// `sh -c SCRIPT` in a running container: (exit code, stdout and stderr together).
async fn sh(container: &str, script: &str) -> anyhow::Result<(i32, String)> {
    let (code, stdout, stderr) = docker(&["exec", container, "sh", "-c", script]).await?;
    Ok((code, format!("{stdout}{stderr}")))
}

/// `sh -c SCRIPT` that must exit 0; its output.
async fn sh_ok(container: &str, script: &str) -> anyhow::Result<String> {
    let (code, output) = sh(container, script).await?;
    if code != 0 {
        bail!("`{script}` in {container} exited {code}: {output}");
    }
    Ok(output)
}

/// Removes, on drop, the containers, networks and volumes a test made, so nothing is
/// left behind when it fails.
#[derive(Debug, Default)]
struct DockerCleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        // Last made first: a container sharing another's network goes before it.
        for container in self.containers.iter().rev() {
            quiet(&["rm", "-f", "-v", container]);
        }
        for network in &self.networks {
            quiet(&["network", "rm", network]);
        }
        for volume in &self.volumes {
            quiet(&["volume", "rm", "-f", volume]);
        }
    }
}

/// Starts a container from a fresh Debian root with systemd as PID 1 (unprivileged) and
/// waits until systemd has finished booting.
async fn systemd_container(cleanup: &mut DockerCleanup) -> anyhow::Result<String> {
    let image = debian_image(&["systemd", "systemd-sysv", "ca-certificates"]).await?;
    let name = unique("stella-test-deb");
    cleanup.containers.push(name.clone());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        &image,
        "/sbin/init",
    ])
    .await?;
    wait_until("systemd has booted", Duration::from_secs(60), || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, state) = sh(&name, "systemctl is-system-running").await.ok()?;
        let state = state.trim().to_owned();
        (state == "running" || state == "degraded").then_some(state)
    })
    .await?;
    Ok(name)
}

#[tokio::test]
async fn packages_install_start_nothing_upgrade_and_purge_cleanly() -> anyhow::Result<()> {
    let dist = dist_dir()?;
    let server_deb = deb(&dist, "stella")?;
    let agent_deb = deb(&dist, "stella-agent")?;
    let server_upgrade = deb(&dist.join("upgrade"), "stella")?;
    let agent_upgrade = deb(&dist.join("upgrade"), "stella-agent")?;

    let mut cleanup = DockerCleanup::default();
    let host = systemd_container(&mut cleanup).await?;
    sh_ok(&host, "mkdir -p /tmp/debs/upgrade").await?;
    for (deb, into) in [
        (&server_deb, "/tmp/debs/"),
        (&agent_deb, "/tmp/debs/"),
        (&server_upgrade, "/tmp/debs/upgrade/"),
        (&agent_upgrade, "/tmp/debs/upgrade/"),
    ] {
        let path = deb.to_str().context("a package path is not utf-8")?;
        docker_ok(&["cp", path, &format!("{host}:{into}")]).await?;
    }

    // Install: users and dirs made, units known, nothing enabled or started.
    sh_ok(&host, "dpkg -i /tmp/debs/*.deb").await?;
    let state = sh(&host, "systemctl is-active stella-server stella-agent")
        .await?
        .1;
    assert_eq!(
        state.split_whitespace().collect::<Vec<_>>(),
        ["inactive", "inactive"]
    );
    let enabled = sh(&host, "systemctl is-enabled stella-server stella-agent")
        .await?
        .1;
    assert_eq!(
        enabled.split_whitespace().collect::<Vec<_>>(),
        ["disabled", "disabled"]
    );
    sh_ok(&host, "id stella && id stella-agent").await?;
    let dirs = sh_ok(
        &host,
        "stat -c '%U:%G %a %n' /var/lib/stella /var/lib/stella-agent /etc/stella/agent.env \\
         /etc/stella/server.toml",
    )
    .await?;
    assert_eq!(
        dirs.lines().collect::<Vec<_>>(),
        [
            "stella:stella 700 /var/lib/stella",
            "stella-agent:stella-agent 700 /var/lib/stella-agent",
            "root:root 600 /etc/stella/agent.env",
            "root:stella 640 /etc/stella/server.toml"
        ]
    );
    let versions = sh_ok(
        &host,
        "stella --version && stella-agent --version && \
         /usr/lib/stella/downloads/stella-agent-linux-x86_64 --version",
    )
    .await?;
    assert_eq!(versions.lines().count(), 3, "{versions}");
    sh_ok(
        &host,
        "systemd-analyze verify /lib/systemd/system/stella-server.service \
         /lib/systemd/system/stella-agent.service",
    )
    .await?;

    // The unit runs the server as installed: it makes its CA and the admin token.
    sh_ok(&host, "systemctl start stella-server").await?;
    wait_until(
        "the server wrote its admin token",
        Duration::from_secs(30),
        || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sh(&host, "test -s /var/lib/stella/admin.token")
                .await
                .ok()
                .filter(|(code, _)| *code == 0)
        },
    )
    .await
    .context(
        sh(&host, "journalctl -u stella-server --no-pager | tail -n 20")
            .await?
            .1,
    )?;

    // Upgrade: a higher version over the installed one; the running server restarted,
    // its data kept.
    sh_ok(&host, "dpkg -i /tmp/debs/upgrade/*.deb").await?;
    let installed = sh_ok(
        &host,
        "dpkg-query -W -f '${Version}\\n' stella stella-agent",
    )
    .await?;
    let upgraded = format!("{VERSION}+upgrade-1");
    assert_eq!(
        installed.lines().collect::<Vec<_>>(),
        [upgraded.as_str(), upgraded.as_str()]
    );
    assert_eq!(
        sh(&host, "systemctl is-active stella-server stella-agent")
            .await?
            .1
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["active", "inactive"]
    );
    sh_ok(&host, "test -s /var/lib/stella/admin.token").await?;

    // Remove: the service stopped, programs gone, users and data kept.
    sh_ok(&host, "dpkg -r stella stella-agent").await?;
    sh_ok(
        &host,
        "! test -e /usr/bin/stella && ! test -e /usr/bin/stella-agent && \
         ! test -e /usr/lib/stella/downloads/stella-agent-linux-x86_64 && \
         ! systemctl is-active stella-server && \
         id stella && id stella-agent && test -s /var/lib/stella/admin.token && \
         test -d /var/lib/stella-agent",
    )
    .await?;

    // Purge: users, data and configuration gone.
    sh_ok(&host, "dpkg -P stella stella-agent").await?;
    sh_ok(
        &host,
        "! id stella && ! id stella-agent && ! getent group stella && \
         ! test -e /var/lib/stella && ! test -e /var/lib/stella-agent && ! test -e /etc/stella",
    )
    .await?;
    Ok(())
}

/// The server container's health as its HEALTHCHECK reports it.
async fn health(container: &str) -> Option<String> {
    docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", container])
        .await
        .ok()
        .map(|s| s.trim().to_owned())
}

async fn wait_healthy(container: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{container} is healthy"),
        Duration::from_secs(90),
        || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            health(container).await.filter(|s| s == "healthy")
        },
    )
    .await
    .map(|_| ())
}

/// The REST API of the server container, published on a loopback port.
struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

#[tokio::test]
async fn images_run_a_server_and_an_agent_that_deploy_and_keep_their_data() -> anyhow::Result<()> {
    let server_image = format!("stella/server:{VERSION}-dev");
    let agent_image = format!("stella/agent:{VERSION}-dev");
    for image in [&server_image, &agent_image] {
        docker_ok(&["image", "inspect", image])
            .await
            .with_context(|| format!("{image} is missing: cargo xtask test builds it"))?;
    }
    let dir = TestDir::new("packaging-images");
    let mut cleanup = DockerCleanup::default();
    let network = unique("stella-test-net");
    docker_ok(&["network", "create", &network]).await?;
    cleanup.networks.push(network.clone());
    let server_data = unique("stella-test-server-data");
    let agent_data = unique("stella-test-agent-data");
    cleanup.volumes.push(server_data.clone());
    cleanup.volumes.push(agent_data.clone());

    // The server, as documented: a volume, the API published, a name agents reach.
    // The registry the release's image comes from shares its network namespace (see
    // below), so its port is published on the server container too.
    let api_port = free_port().await?;
    let registry_port = free_port().await?;
    let server = unique("stella-test-server");
    cleanup.containers.push(server.clone());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &server,
        "--hostname",
        "stella-server",
        "--network",
        &network,
        "-v",
        &format!("{server_data}:/var/lib/stella"),
        "-p",
        &format!("127.0.0.1:{api_port}:8080"),
        "-p",
        &format!("127.0.0.1:{registry_port}:{registry_port}"),
        &server_image,
    ])
    .await?;
    wait_healthy(&server).await?;
    let user = docker_ok(&["exec", &server, "id", "-u"]).await?;
    assert_eq!(user.trim(), "10001", "the server runs as its own user");
    let logs = docker(&["logs", &server]).await?;
    assert!(
        format!("{}{}", logs.1, logs.2).contains("/var/lib/stella/admin.token"),
        "the first start names the admin token's file: {logs:?}"
    );
    let token = docker_ok(&["exec", &server, "cat", "/var/lib/stella/admin.token"])
        .await?
        .trim()
        .to_owned();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(
        &ca_file,
        docker_ok(&["exec", &server, "cat", "/var/lib/stella/pki/ca.pem"]).await?,
    )?;
    let api = Api {
        url: format!("https://127.0.0.1:{api_port}"),
        token: token.clone(),
        http: client_trusting(&ca_file)?,
    };
    api.get("/api/v1/agents").await?;

    // A registry reachable at the same address from the engine (published on the host's
    // loopback, which Docker treats as insecure) and from the server (its own loopback,
    // since it shares the server's network namespace): Debian's registry binary, static
    // but for libc, run in the server image.
    let registry_dir = dir.path().join("registry");
    std::fs::create_dir_all(&registry_dir)?;
    std::fs::write(
        registry_dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: /registry/data\nhttp:\n  addr: 0.0.0.0:{registry_port}\n"
        ),
    )?;
    let registry = unique("stella-test-registry");
    cleanup.containers.push(registry.clone());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &registry,
        "--network",
        &format!("container:{server}"),
        "--user",
        "0:0",
        "-v",
        "/usr/bin/docker-registry:/usr/local/bin/docker-registry:ro",
        "-v",
        &format!("{}:/registry", registry_dir.display()),
        "--entrypoint",
        "/usr/local/bin/docker-registry",
        &server_image,
        "serve",
        "/registry/config.yml",
    ])
    .await?;
    let registry_host = format!("127.0.0.1:{registry_port}");
    let plain = reqwest::Client::new();
    wait_until("the registry answers", Duration::from_secs(30), || async {
        plain
            .get(format!("http://{registry_host}/v2/"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await?;
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config)?;
    let images = WebImages::new(
        &registry_host,
        &unique("stella-test/packaging"),
        &docker_config,
    );
    let v1 = images.publish("v1", true).await?;

    // The agent: joins with STELLA_JOIN_TOKEN over the private network, drives the
    // host's engine through the mounted socket (with the socket's group).
    let join = api.post("/api/v1/agents/join-tokens", json!({})).await?;
    let join_token = join["token"].as_str().context("no join token")?.to_owned();
    let socket_group = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .context("the docker socket")?;
    let agent = unique("stella-test-agent");
    cleanup.containers.push(agent.clone());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &agent,
        "--hostname",
        "docker-host",
        "--network",
        &network,
        "-e",
        "STELLA_SERVER=https://stella-server:8080",
        "-e",
        &format!("STELLA_JOIN_TOKEN={join_token}"),
        "-v",
        &format!("{agent_data}:/var/lib/stella-agent"),
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "--group-add",
        &socket_group.to_string(),
        &agent_image,
    ])
    .await?;
    let listed = wait_until(
        "`stella agents list` shows docker-host connected",
        Duration::from_secs(60),
        || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let listed = docker_ok(&[
                "exec",
                "-e",
                &format!("STELLA_TOKEN={token}"),
                &server,
                "stella",
                "--server",
                "https://localhost:8080",
                "--ca-file",
                "/var/lib/stella/pki/ca.pem",
                "agents",
                "list",
                "-o",
                "json",
            ])
            .await
            .ok()?;
            let agents: Value = serde_json::from_str(&listed).ok()?;
            let agents = agents.as_array()?.clone();
            agents
                .iter()
                .any(|a| a["name"] == "docker-host" && a["state"] == "connected")
                .then_some(agents)
        },
    )
    .await
    .with_context(|| {
        format!(
            "agent logs: {:?}",
            std::process::Command::new("docker")
                .args(["logs", &agent])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        )
    })?;
    let shown = listed
        .iter()
        .find(|a| a["name"] == "docker-host")
        .context("docker-host listed")?;
    assert!(
        shown["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|k| k == "docker")),
        "the agent drives docker through the mounted socket: {shown}"
    );
    wait_until(
        &format!("{agent} is healthy"),
        Duration::from_secs(90),
        || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            health(&agent).await.filter(|s| s == "healthy")
        },
    )
    .await?;

    // A deployment through both containers.
    api.post(
        "/api/v1/environments",
        json!({"name": "dev", "allow_unscanned": true}),
    )
    .await?;
    let target = unique("web");
    let _deployed = ContainerCleanup::new([target.clone()]);
    api.post(
        "/api/v1/targets",
        json!({"name": target, "environment": "dev", "kind": "docker", "agent": "docker-host",
               "settings": {"health_cmd": WEB_HEALTH_CMD, "health_timeout_seconds": "30"}}),
    )
    .await?;
    api.post(
        "/api/v1/releases",
        json!({"name": "web", "version": "1", "components": {"web": format!("{}:v1", images.repository())}}),
    )
    .await?;
    let promotion = api
        .post(
            "/api/v1/promotions",
            json!({"release": "web", "version": "1", "environment": "dev"}),
        )
        .await?;
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .context("no deployment id")?
        .to_owned();
    let deployment_path = format!("/api/v1/deployments/{deployment_id}");
    let deployed = wait_until(
        "the deployment finishes",
        Duration::from_secs(120),
        || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            api.get(&deployment_path).await.ok().filter(|d| {
                matches!(
                    d["state"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
        },
    )
    .await?;
    assert_eq!(deployed["state"], "succeeded", "{deployed}");
    let running = docker_ok(&[
        "ps",
        "--filter",
        &format!("label=ops.stella.target={target}"),
        "--format",
        "{{.Label \"ops.stella.digest\"}}",
    ])
    .await?;
    let digest = v1.split_once('@').map_or("", |(_, d)| d);
    assert!(
        !digest.is_empty() && running.trim() == digest,
        "the release's image runs by digest: {running} {v1}"
    );

    // A restart keeps everything: the same admin token, the deployment, the agent (which
    // reconnects with its certificate from its own volume).
    docker_ok(&["rm", "-f", &registry]).await?;
    docker_ok(&["restart", &server]).await?;
    wait_healthy(&server).await?;
    let after = api.get(&deployment_path).await?;
    assert_eq!(after["state"], "succeeded", "{after}");
    wait_until(
        "docker-host reconnects",
        Duration::from_secs(60),
        || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            api.get("/api/v1/agents/docker-host")
                .await
                .ok()
                .filter(|a| a["state"] == "connected")
        },
    )
    .await?;
    drop(images);
    Ok(())
}
