//! `cargo xtask bench deploy --kind ssh`: one container on a host driven over SSH,
//! deployed through Stella (`stella promote --wait` to an `ssh` target against a local
//! sshd, agent warm) versus by hand (`ssh -i KEY -p PORT root@127.0.0.1 docker run …` of
//! the same digest, then waiting until it serves), in the same run, alternating,
//! several rounds; medians and ratios as in the docker variant.
//!
//! Then fan-out: one agent, 20 sshd processes on 20 ports (20 hosts), 20 targets in one
//! environment, one promotion: its total time, and how many SSH connections the agent
//! holds afterwards (established TCP connections of the agent process to those ports,
//! from `/proc/PID/net/tcp` and its socket file descriptors).

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use stella_tests::images::WebImages;
use stella_tests::registry::TestRegistry;
use stella_tests::sshd::{ensure_user, TestSshd};

use super::deploy::{docker, median, start_agent, uuid_like, wait_serving, DeployArgs, Stella};
use super::server::ServerProcess;
use crate::cargo::step;

/// Hosts of the fan-out round.
const FAN_OUT_HOSTS: usize = 20;

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    let (binary, runtime) = super::deploy::server_and_runtime(args)?;
    runtime.block_on(bench(args, &binary))
}

/// `ssh` as an operator would run it: the test key, the host key pinned in a
/// known-hosts file, no prompts.
struct ByHand<'a> {
    sshd: &'a TestSshd,
    user: &'a str,
    known_hosts: std::path::PathBuf,
}

impl ByHand<'_> {
    async fn ssh(&self, command: &str) -> anyhow::Result<String> {
        let output = tokio::process::Command::new("ssh")
            .arg("-i")
            .arg(&self.sshd.client_key)
            .arg("-p")
            .arg(self.sshd.port.to_string())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running ssh")?;
        if !output.status.success() {
            bail!(
                "ssh {command} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// Creates an ssh target on `sshd` through the REST API (what `stella target create
/// --kind ssh --set …` sends).
async fn create_target(
    server: &ServerProcess,
    name: &str,
    env: &str,
    sshd: &TestSshd,
    user: &str,
    sticker_dir: &Path,
) -> anyhow::Result<()> {
    let body = json!({
        "name": name,
        "environment": env,
        "kind": "ssh",
        "agent": "bench-agent",
        "settings": {
            "host": "127.0.0.1",
            "port": sshd.port.to_string(),
            "user": user,
            "key_file": sshd.client_key.display().to_string(),
            "host_key": sshd.fingerprint,
            "sticker_dir": sticker_dir.display().to_string(),
            "health_url": "http://{ip}:8080/health",
        },
    });
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/targets", server.api_url()))
        .bearer_auth(server.admin_token())
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "creating target {name} answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Established TCP connections of process `pid` to any of `ports` on loopback.
fn established_to(pid: u32, ports: &HashSet<u16>) -> anyhow::Result<usize> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(link) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    let count = table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|remote| remote.split_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            fields.get(3) == Some(&"01")
                && remote_port.is_some_and(|port| ports.contains(&port))
                && fields.get(9).is_some_and(|inode| inodes.contains(*inode))
        })
        .count();
    Ok(count)
}

async fn remove_target_containers(target: &str) {
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=ops.stella.target={target}"),
    ])
    .await
    .unwrap_or_default();
    for id in ids.split_whitespace() {
        let _ = docker(&["rm", "-f", id]).await;
    }
}

async fn bench(args: &DeployArgs, binary: &Path) -> anyhow::Result<()> {
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-deploy-ssh-")
        .tempdir()
        .context("cannot create a temp dir")?;
    step("registry, images and sshd");
    let registry = TestRegistry::start().await?;
    let suffix = uuid_like();
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-bench/ssh-web-{suffix}"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let v2 = images.publish("v2", true).await?;
    let sshd = TestSshd::start().await?;
    let known_hosts = work_dir.path().join("known_hosts");
    let host_key = std::fs::read_to_string(sshd.host_key_pub())?;
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {host_key}", sshd.port),
    )?;
    let user = args.ssh_user.as_str();
    let sticker_dir = work_dir.path().join("stickers");
    std::fs::create_dir_all(&sticker_dir)?;
    if user != "root" {
        let (uid, gid) = ensure_user(user, &["docker"])?;
        stella_tests::sshd::owned_dir(&sticker_dir, uid, gid)?;
        // The user reaches its key's directory and the sticker dir through the work dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let by_hand = ByHand {
        sshd: &sshd,
        user,
        known_hosts,
    };

    step("server and agent");
    let server = ServerProcess::start(
        binary,
        work_dir.path(),
        // ServerProcess speaks plain HTTP to the API, on loopback.
        "heartbeat_interval_seconds = 5\napi_plain_http = true\n",
        None,
    )
    .await?;
    let stella = Stella {
        binary,
        api_url: server.api_url().to_owned(),
        token: server.admin_token().to_owned(),
    };
    let mut agent = start_agent(binary, &server, &stella, work_dir.path(), "ssh").await?;
    let target = format!("bench-ssh-{suffix}");
    let direct = format!("bench-ssh-direct-{suffix}");
    let fan_targets: Vec<String> = (0..FAN_OUT_HOSTS)
        .map(|i| format!("fan-{i:02}-{suffix}"))
        .collect();
    let mut fan_sshd = Vec::new();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let result = async {
        stella
            .run(&["env", "create", "bench", "--allow-unscanned"])
            .await?;
        create_target(&server, &target, "bench", &sshd, user, &sticker_dir).await?;
        for (version, image) in [("1", &v1), ("2", &v2)] {
            stella
                .run(&[
                    "release",
                    "create",
                    "web",
                    version,
                    "--component",
                    &format!("web={image}"),
                ])
                .await?;
        }

        step("one host: stella promote --wait versus ssh … docker run");
        // Warm-up: the host pulls both digests; the agent connects.
        stella.run(&["promote", "web@1", "--to", "bench", "--wait"]).await?;
        stella.run(&["promote", "web@2", "--to", "bench", "--wait"]).await?;
        let mut through_stella = Vec::new();
        let mut direct_run = Vec::new();
        let mut direct_replace = Vec::new();
        for round in 0..=args.rounds {
            let version = if round % 2 == 0 { "1" } else { "2" };
            let image = if round % 2 == 0 { &v1 } else { &v2 };

            let started = Instant::now();
            stella
                .run(&["promote", &format!("web@{version}"), "--to", "bench", "--wait"])
                .await?;
            let stella_seconds = started.elapsed().as_secs_f64();

            let started = Instant::now();
            let _ = by_hand.ssh(&format!("docker rm -f {direct}")).await;
            let remove_seconds = started.elapsed().as_secs_f64();
            let started = Instant::now();
            by_hand
                .ssh(&format!("docker run -d --name {direct} {image}"))
                .await?;
            wait_serving(&http, &direct).await?;
            let run_seconds = started.elapsed().as_secs_f64();

            if round == 0 {
                continue;
            }
            println!(
                "round {round}: stella promote --wait {stella_seconds:.3} s, ssh docker run {run_seconds:.3} s, ssh docker rm -f + ssh docker run {:.3} s",
                remove_seconds + run_seconds
            );
            through_stella.push(stella_seconds);
            direct_run.push(run_seconds);
            direct_replace.push(remove_seconds + run_seconds);
        }
        let stella_median = median(&mut through_stella);
        let run_median = median(&mut direct_run);
        let replace_median = median(&mut direct_replace);
        let ratio_run = stella_median / run_median;
        let ratio_replace = stella_median / replace_median;

        step(&format!("fan-out: one promotion to {FAN_OUT_HOSTS} hosts"));
        stella
            .run(&["env", "create", "fan", "--allow-unscanned"])
            .await?;
        for name in &fan_targets {
            let host = TestSshd::start().await?;
            create_target(&server, name, "fan", &host, user, &sticker_dir).await?;
            fan_sshd.push(host);
        }
        let started = Instant::now();
        stella.run(&["promote", "web@1", "--to", "fan", "--wait"]).await?;
        let fan_seconds = started.elapsed().as_secs_f64();
        let ports: HashSet<u16> = fan_sshd.iter().map(|s| s.port).collect();
        let agent_pid = agent.id().context("the agent has no pid")?;
        let held = established_to(agent_pid, &ports)?;
        let sessions: usize = fan_sshd.iter().map(TestSshd::session_count).sum();
        let all_ports: HashSet<u16> = ports.iter().copied().chain([sshd.port]).collect();
        let held_all = established_to(agent_pid, &all_ports)?;

        println!();
        println!("remote user                             {user}");
        println!("rounds                                  {}", args.rounds);
        println!("median stella promote --wait (ssh)      {stella_median:.3} s (replaces the running version, no gap)");
        println!("median ssh docker run + serving         {run_median:.3} s (nothing to replace)");
        println!("median ssh rm -f + ssh run + serving    {replace_median:.3} s (replaces it, with a gap)");
        println!("ratio to ssh docker run                 {ratio_run:.2}");
        println!("ratio to ssh rm -f + ssh run            {ratio_replace:.2} (like for like; target <= 1.3)");
        println!("fan-out: {FAN_OUT_HOSTS} hosts, one promotion  {fan_seconds:.3} s");
        println!("fan-out: agent's ssh connections        {held} to the {FAN_OUT_HOSTS} hosts ({held_all} with the first host); sshd sessions {sessions}");
        println!(
            "BENCH_JSON {}",
            json!({"bench": "deploy_ssh", "ssh_user": user, "rounds": args.rounds, "stella_median_seconds": stella_median,
                   "ssh_docker_run_median_seconds": run_median, "ssh_docker_replace_median_seconds": replace_median,
                   "ratio_to_ssh_docker_run": ratio_run, "ratio_to_ssh_docker_replace": ratio_replace,
                   "fan_out_hosts": FAN_OUT_HOSTS, "fan_out_seconds": fan_seconds,
                   "fan_out_agent_connections": held, "agent_connections_all_hosts": held_all})
        );
        anyhow::Ok(())
    }
    .await;
    let _ = docker(&["rm", "-f", &direct]).await;
    remove_target_containers(&target).await;
    for name in &fan_targets {
        remove_target_containers(name).await;
    }
    let _ = agent.kill().await;
    server.stop().await;
    drop(fan_sshd);
    result
}
