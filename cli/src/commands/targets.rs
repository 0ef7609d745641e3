//! `stella target …`: deployment targets, and the kinds this build can deploy to.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde_json::json;

use super::{parse_pair, print, query, rows, Context};
use crate::output;

/// `stella target …`
#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Create a deployment target.
    #[command(after_help = kinds_help())]
    Create {
        /// Name.
        name: String,
        /// Environment.
        #[arg(long)]
        env: String,
        /// What it is; see the kinds and their settings below.
        #[arg(long, value_parser = super::kind_parser(KINDS))]
        kind: String,
        /// The agent that drives it (name or id); it must be able to drive the kind.
        #[arg(long)]
        agent: String,
        /// A setting, `KEY=VALUE`, repeatable; the keys of each kind are listed below,
        /// others are refused.
        #[arg(long = "set", value_parser = parse_pair, value_name = "KEY=VALUE")]
        settings: Vec<(String, String)>,
        /// Have the agent check the target live first (reach its engine, host or
        /// service); nothing is created when the check fails.
        #[arg(long)]
        check: bool,
    },
    /// Ask a target's agent whether it can reach and drive the target as configured,
    /// changing nothing; exits non-zero when it cannot.
    Check {
        /// Name.
        name: String,
    },
    /// Redeploy to a target what was last deployed to it successfully (after drift);
    /// prints the remediation deployment's id.
    Remediate {
        /// Name.
        name: String,
    },
    /// Change a target's agent or settings (refused while a deployment runs on it); what
    /// runs there changes with the next deployment.
    Update {
        /// Name.
        name: String,
        /// The agent that drives it from now on (name or id).
        #[arg(long)]
        agent: Option<String>,
        /// Set a setting, `KEY=VALUE`, repeatable.
        #[arg(long = "set", value_parser = parse_pair, value_name = "KEY=VALUE")]
        settings: Vec<(String, String)>,
        /// Remove a setting, repeatable.
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
    },
    /// Show the SSH host key a host presents (`SHA256:` fingerprint), to check it out of
    /// band and pin it with `--set host_key=…`. Connects from this machine.
    HostKey {
        /// Host name or address.
        host: String,
        /// SSH port.
        #[arg(long, default_value_t = 22)]
        port: u16,
    },
    /// Delete a target: what runs there keeps running, Stella stops watching it.
    #[command(visible_alias = "rm")]
    Delete {
        /// Name.
        name: String,
    },
    /// List targets.
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
    },
    /// Show one target.
    Show {
        /// Name.
        name: String,
    },
}

/// `stella target …`.
pub async fn target(context: &Context, command: TargetCommand) -> anyhow::Result<()> {
    let (client, format) = (&context.client, context.format);
    let value = match command {
        TargetCommand::Create {
            name,
            env,
            kind,
            agent,
            settings,
            check,
        } => {
            let mut settings: BTreeMap<String, String> = settings.into_iter().collect();
            if kind == stella_target_ssh::KIND && !settings.contains_key("host_key") {
                let host_key = confirm_host_key(&settings).await?;
                settings.insert("host_key".to_owned(), host_key);
            }
            client
                .post("/targets", json!({"name": name, "environment": env, "kind": kind, "agent": agent, "settings": settings, "check": check}))
                .await?
        }
        TargetCommand::Update {
            name,
            agent,
            settings,
            unset,
        } => {
            let set: BTreeMap<String, String> = settings.into_iter().collect();
            client
                .patch(
                    &format!("/targets/{}", super::path(&name)),
                    json!({"agent": agent, "set": set, "unset": unset}),
                )
                .await?
        }
        TargetCommand::Check { name } => {
            let checked = client
                .post(&format!("/targets/{}/check", super::path(&name)), json!({}))
                .await?;
            print(format, &checked, |v| {
                println!(
                    "{}: {}",
                    if v["ok"] == true { "ok" } else { "failed" },
                    output::cell(v, "/message")
                );
            });
            if checked["ok"] != true {
                anyhow::bail!(
                    "target `{name}`: its agent cannot drive it: {}",
                    output::cell(&checked, "/message")
                );
            }
            return Ok(());
        }
        TargetCommand::Remediate { name } => {
            let deployment = client
                .post(
                    &format!("/targets/{}/remediate", super::path(&name)),
                    json!({}),
                )
                .await?;
            print(format, &deployment, |v| {
                println!("{}", output::cell(v, "/id"));
            });
            return Ok(());
        }
        TargetCommand::HostKey { host, port } => {
            let key = fetch_host_key(&host, port).await?;
            let value = json!({"host": host, "port": port, "key_type": key.key_type, "fingerprint": key.fingerprint});
            print(format, &value, |v| {
                println!("{}", output::cell(v, "/fingerprint"));
            });
            return Ok(());
        }
        TargetCommand::Delete { name } => {
            client
                .delete(&format!("/targets/{}", super::path(&name)))
                .await?;
            context.deleted("target", &name);
            return Ok(());
        }
        TargetCommand::List { env } => {
            let list = client
                .get(&format!(
                    "/targets{}",
                    query(&[("environment", env.as_deref())])
                ))
                .await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["name", "environment", "kind", "agent", "settings"],
                    &["/name", "/environment", "/kind", "/agent", "/settings"],
                );
            });
            return Ok(());
        }
        TargetCommand::Show { name } => {
            client
                .get(&format!("/targets/{}", super::path(&name)))
                .await?
        }
    };
    print(format, &value, |v| {
        output::details(
            v,
            &[
                ("name", "/name"),
                ("environment", "/environment"),
                ("kind", "/kind"),
                ("agent", "/agent"),
                ("agent id", "/agent_id"),
                ("settings", "/settings"),
                ("created", "/created_at"),
            ],
        );
    });
    Ok(())
}

/// How long fetching a host key may take.
const HOST_KEY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The host key `host:port` presents, fetched from this machine.
async fn fetch_host_key(host: &str, port: u16) -> anyhow::Result<stella_target_ssh::HostKey> {
    let (host, shown) = (host.to_owned(), format!("{host}:{port}"));
    tokio::task::spawn_blocking(move || {
        stella_target_ssh::fetch_host_key(&host, port, HOST_KEY_TIMEOUT)
    })
    .await
    .map_err(|e| anyhow::anyhow!("fetching the host key of {shown}: {e}"))?
    .map_err(|e| anyhow::anyhow!("cannot fetch the host key of {shown}: {e}"))
}

/// An ssh target created without `host_key`: the key the host presents (to this
/// machine) is shown, and pinned if the operator confirms it at a terminal. Without a
/// terminal nothing is trusted on first use: the error names the fingerprint to check
/// out of band and pass as `--set host_key=…`.
async fn confirm_host_key(settings: &BTreeMap<String, String>) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let Some(host) = settings.get("host") else {
        anyhow::bail!("an ssh target needs host (and user, host_key and a key)");
    };
    let port = match settings.get("port") {
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| anyhow::anyhow!("port `{port}` is not a TCP port"))?,
        None => 22,
    };
    let key = fetch_host_key(host, port).await?;
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        anyhow::bail!(
            "an ssh target needs host_key: {host}:{port} presents the {} key {}; check it out of band (ssh-keygen -lf on the host) and pass --set host_key={}",
            key.key_type,
            key.fingerprint,
            key.fingerprint
        );
    }
    let mut stderr = std::io::stderr();
    write!(
        stderr,
        "{host}:{port} presents the {} key\n  {}\nas seen from this machine. Check it out of band (ssh-keygen -lf on the host). Pin it? [y/N] ",
        key.key_type, key.fingerprint
    )?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(key.fingerprint)
    } else {
        anyhow::bail!("not created: the host key was not confirmed")
    }
}

/// The kinds linked into this binary. The control plane knows more kinds than any one
/// agent build drives; only these are offered. A new kind adds an entry here.
const KINDS: &[super::Kind] = &[
    super::Kind {
        name: stella_target_docker::KIND,
        about: "containers on the agent's Docker engine",
        settings: &[
            (
                "components",
                "the release's components to run here, comma-separated [default: all]",
            ),
            (
                "container_name",
                "the container's name, with one component only [default: <target>-<component>]",
            ),
            (
                "ports",
                "published ports, [host_ip:][host_port:]container_port[/tcp|udp], comma-separated",
            ),
            ("volumes", "binds, src:dst[:ro|:rw], comma-separated"),
            ("command", "the container's command, split on whitespace"),
            (
                "restart",
                "no, always, unless-stopped or on-failure[:N] [default: unless-stopped]",
            ),
            (
                "network",
                "the network the container joins [default: bridge]",
            ),
            (
                "health_cmd",
                "a shell command run in the container every second; healthy when it exits 0",
            ),
            (
                "health_url",
                "an http URL the agent polls until it answers 2xx; {ip} is the new container's address",
            ),
            (
                "health_timeout_seconds",
                "how long a new container may take to become healthy [default: 60]",
            ),
            (
                "stop_timeout_seconds",
                "how long stopping a container waits before it kills it [default: 10]",
            ),
            ("env.NAME", "the container's environment variable NAME"),
        ],
    },
    super::Kind {
        name: stella_target_compose::KIND,
        about: "a Docker Compose project on the agent's host, deployed from a digest-pinned lock file",
        settings: &[
            (
                "components",
                "the release's components to run here, comma-separated [default: all]",
            ),
            (
                "compose_file",
                "absolute path of the Compose file on the agent's host (required)",
            ),
            (
                "project",
                "the Compose project name [default: the target's name]",
            ),
            (
                "service.COMPONENT",
                "the service that runs COMPONENT [default: the service named like it]",
            ),
            (
                "compose_version",
                "auto, v1 (docker-compose) or v2 (docker compose) [default: auto]",
            ),
            (
                "health_url",
                "an http URL the agent polls until it answers 2xx, after Compose's health checks",
            ),
            (
                "health_timeout_seconds",
                "how long the services may take to become healthy [default: 60]",
            ),
            (
                "sticker_dir",
                "where sticker files go [default: /var/lib/stella/stickers]",
            ),
        ],
    },
    super::Kind {
        name: stella_target_ssh::KIND,
        about: "a host without an agent, driven over SSH (its docker CLI, or a deploy script)",
        settings: &[
            (
                "components",
                "the release's components to run here, comma-separated [default: all]",
            ),
            ("host", "the host's name or address (required)"),
            ("port", "its SSH port [default: 22]"),
            ("user", "the user to log in as (required)"),
            (
                "host_key",
                "the host key's SHA256:… fingerprint (required; shown for confirmation when left out)",
            ),
            ("key_file", "a private key file on the agent's host"),
            (
                "key_secret",
                "or ${secret.NAME}: a private key kept as an environment secret",
            ),
            ("mode", "docker (the host's docker CLI) or script [default: docker]"),
            (
                "script",
                "mode=script: the command that deploys, given the release as STELLA_* variables",
            ),
            (
                "sticker_dir",
                "where sticker files go on the host [default: /var/lib/stella/stickers]",
            ),
            (
                "connect_timeout_seconds",
                "how long connecting may take [default: 10]",
            ),
            (
                "command_timeout_seconds",
                "how long one remote command may take [default: 300]",
            ),
            (
                "…",
                "in docker mode also the docker kind's keys (container_name, ports, env.NAME, …)",
            ),
        ],
    },
    super::Kind {
        name: stella_target_winrm::KIND,
        about: "a Windows host without an agent, driven over WinRM (a PowerShell deploy script)",
        settings: &[
            (
                "components",
                "the release's components to deploy here, comma-separated [default: all]",
            ),
            (
                "endpoint",
                "the listener, https://HOST:5986/wsman or http://HOST:5985/wsman (ntlm, encrypted) (required)",
            ),
            ("user", "the user to log in as, DOMAIN\\user for ntlm (required)"),
            (
                "password_secret",
                "${secret.NAME}: the user's password, kept as an environment secret (required)",
            ),
            ("auth", "ntlm or basic [default: ntlm]"),
            (
                "ca_file",
                "a PEM file on the agent's host trusted for the listener's certificate (self-signed listeners)",
            ),
            (
                "script",
                "the PowerShell that deploys, given the release as $env:STELLA_* variables (required)",
            ),
            (
                "sticker_dir",
                "where sticker files go on the host [default: C:\\ProgramData\\Stella\\stickers]",
            ),
            (
                "operation_timeout_seconds",
                "how long the host holds one WS-Management call [default: 20]",
            ),
            (
                "command_timeout_seconds",
                "how long one remote command may take [default: 300]",
            ),
        ],
    },
    super::Kind {
        name: stella_target_ecs::KIND,
        about: "an existing AWS ECS service, updated through the ECS API to new task definition revisions",
        settings: &[
            (
                "components",
                "the release's components to run here, comma-separated [default: all]",
            ),
            ("region", "the AWS region, e.g. eu-central-1 (required)"),
            ("cluster", "the cluster's name or ARN (required)"),
            ("service", "the service's name or ARN (required)"),
            (
                "endpoint_url",
                "another ECS endpoint than the region's (a VPC endpoint) [default: the region's]",
            ),
            (
                "access_key_secret",
                "${secret.NAME}: the access key id [default: the agent's AWS_ACCESS_KEY_ID]",
            ),
            (
                "secret_key_secret",
                "${secret.NAME}: the secret access key [default: the agent's AWS_SECRET_ACCESS_KEY]",
            ),
            (
                "session_token_secret",
                "${secret.NAME}: the session token of temporary keys",
            ),
            (
                "container.COMPONENT",
                "the task definition's container that runs COMPONENT [default: the container named like it]",
            ),
            (
                "deploy_timeout_seconds",
                "how long a rollout may take [default: 900]",
            ),
            (
                "poll_interval_ms",
                "how often the rollout state is read [default: 5000]",
            ),
        ],
    },
    super::Kind {
        name: stella_target_nomad::KIND,
        about: "a HashiCorp Nomad job, driven through the Nomad HTTP API",
        settings: &[
            (
                "components",
                "the release's components to run here, comma-separated [default: all]",
            ),
            (
                "address",
                "the Nomad HTTP API, http(s)://host:port (required)",
            ),
            ("job", "the job's ID (required)"),
            (
                "job_file",
                "a job specification on the agent's host (JSON, or HCL parsed by Nomad) [default: the registered job]",
            ),
            ("namespace", "the job's namespace [default: default]"),
            ("region", "the job's region [default: the server's own]"),
            (
                "token_secret",
                "${secret.NAME}: the ACL token, kept as an environment secret",
            ),
            ("ca_file", "a PEM CA bundle on the agent's host, for https"),
            (
                "task.COMPONENT",
                "GROUP/TASK (or TASK) that runs COMPONENT [default: the task named like it]",
            ),
            (
                "deploy_timeout_seconds",
                "how long Nomad's deployment may take before Stella reverts it [default: 600]",
            ),
        ],
    },
];

/// The `--help` text listing each kind's settings.
fn kinds_help() -> String {
    super::kinds_help(
        &String::from(
            "Values may use the environment's variables and secrets: ${var.NAME}, ${secret.NAME} \
         ($${ for a literal ${).\n\nTarget kinds and their settings (--set KEY=VALUE):",
        ),
        KINDS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(kind: &str) -> Vec<&'static str> {
        let Some(kind) = KINDS.iter().find(|k| k.name == kind) else {
            panic!("no {kind} kind");
        };
        let mut keys: Vec<&str> = kind
            .settings
            .iter()
            .map(|(key, _)| *key)
            .filter(|key| *key != "…")
            .collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn the_compose_ssh_and_winrm_settings_in_help_are_those_their_targets_accept() {
        let mut compose = stella_target_compose::KNOWN_KEYS.to_vec();
        compose.sort_unstable();
        assert_eq!(listed(stella_target_compose::KIND), compose);
        let mut ssh = stella_target_ssh::SSH_KEYS.to_vec();
        ssh.push("components");
        ssh.sort_unstable();
        assert_eq!(listed(stella_target_ssh::KIND), ssh);
        let mut winrm = stella_target_winrm::WINRM_KEYS.to_vec();
        winrm.sort_unstable();
        assert_eq!(listed(stella_target_winrm::KIND), winrm);
    }

    #[test]
    fn the_nomad_settings_in_help_are_those_the_nomad_target_accepts() {
        let mut nomad = stella_target_nomad::NOMAD_KEYS.to_vec();
        nomad.sort_unstable();
        assert_eq!(listed(stella_target_nomad::KIND), nomad);
    }

    #[test]
    fn the_ecs_settings_in_help_are_those_the_ecs_target_accepts() {
        let mut ecs = stella_target_ecs::ECS_KEYS.to_vec();
        ecs.extend(["components", "container.COMPONENT"]);
        ecs.sort_unstable();
        assert_eq!(listed(stella_target_ecs::KIND), ecs);
        let help = kinds_help();
        assert!(help.contains(&format!(
            "rollout may take [default: {}]",
            stella_target_ecs::DEFAULT_DEPLOY_TIMEOUT_SECONDS
        )));
        assert!(help.contains(&format!(
            "state is read [default: {}]",
            stella_target_ecs::DEFAULT_POLL_INTERVAL_MS
        )));
    }

    #[test]
    fn the_docker_settings_in_help_are_those_the_docker_target_accepts() {
        let docker = KINDS
            .iter()
            .find(|kind| kind.name == stella_target_docker::KIND);
        let Some(docker) = docker else {
            panic!("no docker kind");
        };
        let mut listed: Vec<&str> = docker.settings.iter().map(|(key, _)| *key).collect();
        let mut known: Vec<&str> = stella_target_docker::KNOWN_KEYS.to_vec();
        listed.sort_unstable();
        known.sort_unstable();
        assert_eq!(listed, known);
        let help = kinds_help();
        assert!(help.contains(&format!(
            "healthy [default: {}]",
            stella_target_docker::DEFAULT_HEALTH_TIMEOUT_SECONDS
        )));
        assert!(help.contains(&format!(
            "kills it [default: {}]",
            stella_target_docker::DEFAULT_STOP_TIMEOUT_SECONDS
        )));
    }
}
