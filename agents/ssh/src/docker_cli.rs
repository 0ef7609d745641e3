//! The remote host's `docker` CLI: every command line built here quotes each argument
//! with [`shell_quote`], and every answer is parsed from `docker inspect` JSON.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use stella_agent_core::RegistryCredential;
use stella_target_docker::{labels, DockerSettings, ImageRef, RestartSetting};

use crate::error::SshError;
use crate::pool::Host;
use crate::quote::{shell_join, shell_quote};

/// One container on the remote engine, from `docker inspect`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteContainer {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) running: bool,
    pub(crate) restarting: bool,
    /// `created`, `running`, `exited`, ….
    pub(crate) status: String,
    pub(crate) exit_code: i64,
    pub(crate) error: String,
    pub(crate) restart_count: i64,
    /// The image ID (`sha256:…`).
    pub(crate) image_id: String,
    pub(crate) labels: HashMap<String, String>,
    /// Docker's health status, if it has a health check.
    pub(crate) health_status: Option<String>,
    /// The last health check's exit code and output.
    pub(crate) health_detail: Option<String>,
    /// Address per network.
    pub(crate) addresses: BTreeMap<String, String>,
}

impl RemoteContainer {
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub(crate) fn component(&self) -> Option<&str> {
        self.label(labels::COMPONENT)
    }

    fn from_inspect(value: &Value) -> RemoteContainer {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let state = &value["State"];
        let health = &state["Health"];
        let health_detail = health["Log"]
            .as_array()
            .and_then(|log| log.last())
            .map(|last| {
                let output = one_line(last["Output"].as_str().unwrap_or_default());
                match last["ExitCode"].as_i64() {
                    Some(code) if output.is_empty() => format!("health check exit code {code}"),
                    Some(code) => format!("health check exit code {code}: {output}"),
                    None => output,
                }
            });
        let labels = value["Config"]["Labels"]
            .as_object()
            .map(|labels| labels.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default();
        let addresses = value["NetworkSettings"]["Networks"]
            .as_object()
            .map(|networks| {
                networks
                    .iter()
                    .filter_map(|(name, endpoint)| {
                        let ip = text(&endpoint["IPAddress"]);
                        (!ip.is_empty()).then(|| (name.clone(), ip))
                    })
                    .collect()
            })
            .unwrap_or_default();
        RemoteContainer {
            id: text(&value["Id"]),
            name: text(&value["Name"]).trim_start_matches('/').to_owned(),
            running: state["Running"].as_bool().unwrap_or(false),
            restarting: state["Restarting"].as_bool().unwrap_or(false),
            status: text(&state["Status"]),
            exit_code: state["ExitCode"].as_i64().unwrap_or(0),
            error: text(&state["Error"]),
            restart_count: value["RestartCount"].as_i64().unwrap_or(0),
            image_id: text(&value["Image"]),
            labels,
            health_status: health["Status"].as_str().map(str::to_owned),
            health_detail,
            addresses,
        }
    }

    /// The container's address on `network` (default `bridge`; `host` is loopback),
    /// else on any network it has one on.
    pub(crate) fn address(&self, network: Option<&str>) -> Option<String> {
        let network = network.unwrap_or("bridge");
        if network == "host" {
            return Some("127.0.0.1".to_owned());
        }
        self.addresses
            .get(network)
            .or_else(|| self.addresses.values().next())
            .cloned()
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_inspect(host: &Host, what: &str, stdout: &str) -> Result<Vec<RemoteContainer>, SshError> {
    let value: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        SshError::Failed(format!(
            "{what} on {}: the output is not docker inspect JSON ({e})",
            host.addr()
        ))
    })?;
    Ok(value
        .as_array()
        .map(|all| all.iter().map(RemoteContainer::from_inspect).collect())
        .unwrap_or_default())
}

fn is_no_such(stderr: &str) -> bool {
    let stderr = stderr.to_ascii_lowercase();
    stderr.contains("no such")
}

/// The containers labelled for `target` (and `component`), running or not.
pub(crate) async fn containers(
    host: &mut Host,
    target: &str,
    component: Option<&str>,
) -> Result<Vec<RemoteContainer>, SshError> {
    let command = list_command(target, component);
    let what = "docker ps / docker inspect";
    let output = host.run(what, command).await?;
    parse_inspect(host, what, &output.stdout)
}

/// What one component looks like on the host, read with one remote command: its
/// containers, the local image of the desired reference, and which containers hold the
/// names the deployment needs.
#[derive(Debug, Default)]
pub(crate) struct Look {
    pub(crate) containers: Vec<RemoteContainer>,
    pub(crate) image: Option<LocalImage>,
    /// Container name → ID, for the names asked about that exist.
    pub(crate) names: HashMap<String, String>,
}

const SEPARATOR: &str = "--stella-separator--";

/// The shell text that prints the local image of `reference` as `ID {config json}`, or
/// `absent`, failing on any other error.
fn image_probe(reference: &str) -> String {
    format!(
        "out=$({} 2>&1) && printf '%s\\n' \"$out\" || case \"$out\" in *'No such'*) echo absent;; *) printf '%s\\n' \"$out\" >&2; exit 1;; esac",
        shell_join(&["docker", "image", "inspect", "--format", "{{.Id}} {{json .Config}}", reference])
    )
}

/// Reads [`Look`] for `target`/`component`, the image `reference` and `names`.
pub(crate) async fn look(
    host: &mut Host,
    target: &str,
    component: &str,
    reference: &str,
    names: &[&str],
) -> Result<Look, SshError> {
    let mut command = list_command(target, Some(component));
    command.push_str(&format!("; echo {SEPARATOR}; "));
    command.push_str(&image_probe(reference));
    command.push_str(&format!("; echo {SEPARATOR}; "));
    let mut args = vec![
        "docker",
        "container",
        "inspect",
        "--format",
        "{{.Name}} {{.Id}}",
    ];
    args.extend(names);
    command.push_str(&format!("{} 2>/dev/null; true", shell_join(&args)));
    let what = "docker ps / docker inspect";
    let output = host.run(what, command).await?;
    let separator = format!("{SEPARATOR}\n");
    let mut parts = output.stdout.split(&separator);
    let containers = parse_inspect(host, what, parts.next().unwrap_or_default())?;
    let image = parse_image(parts.next().unwrap_or_default());
    let names = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, id)| {
            (
                name.trim_start_matches('/').to_owned(),
                id.trim().to_owned(),
            )
        })
        .collect();
    Ok(Look {
        containers,
        image,
        names,
    })
}

fn list_command(target: &str, component: Option<&str>) -> String {
    let mut filters = format!(
        "--filter {}",
        shell_quote(&format!("label={}={target}", labels::TARGET))
    );
    if let Some(component) = component {
        filters.push_str(&format!(
            " --filter {}",
            shell_quote(&format!("label={}={component}", labels::COMPONENT))
        ));
    }
    format!(
        "ids=$(docker ps -aq --no-trunc {filters}) || exit 1; if [ -z \"$ids\" ]; then echo '[]'; else docker inspect --type container $ids || exit 1; fi"
    )
}

fn parse_image(text: &str) -> Option<LocalImage> {
    let line = text.trim();
    if line.is_empty() || line == "absent" {
        return None;
    }
    let (id, config) = line.split_once(' ').unwrap_or((line, "null"));
    let config: Value = serde_json::from_str(config).unwrap_or(Value::Null);
    // `["NONE"]` disables an inherited check.
    let has_healthcheck = config["Healthcheck"]["Test"]
        .as_array()
        .and_then(|test| test.first())
        .and_then(Value::as_str)
        .is_some_and(|first| first != "NONE");
    Some(LocalImage {
        id: id.to_owned(),
        has_healthcheck,
    })
}

/// A local image: its ID and whether it has its own `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalImage {
    pub(crate) id: String,
    pub(crate) has_healthcheck: bool,
}

/// The local image `reference` names, if the engine has it.
pub(crate) async fn image(
    host: &mut Host,
    reference: &str,
) -> Result<Option<LocalImage>, SshError> {
    let output = host
        .run(
            &format!("docker image inspect {reference}"),
            image_probe(reference),
        )
        .await?;
    Ok(parse_image(&output.stdout))
}

/// The `RepoDigests` of a local image (`repo@sha256:…`).
pub(crate) async fn repo_digests(host: &mut Host, image_id: &str) -> Result<Vec<String>, SshError> {
    let what = format!("docker image inspect {image_id}");
    let output = host
        .exec(
            &what,
            shell_join(&[
                "docker",
                "image",
                "inspect",
                "--format",
                "{{json .RepoDigests}}",
                image_id,
            ]),
        )
        .await?;
    if output.status != 0 {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_str(output.stdout.trim()).unwrap_or_default())
}

/// `docker pull repo@sha256:…`; with `credential`, logged in first in a temporary
/// `DOCKER_CONFIG` directory removed afterwards, the password on stdin only.
pub(crate) async fn pull(
    host: &mut Host,
    image: &ImageRef,
    credential: Option<&RegistryCredential>,
) -> Result<Option<LocalImage>, SshError> {
    let reference = image.to_string();
    let what = format!("docker pull {reference}");
    let pull = format!(
        "{} >/dev/null && {}",
        shell_join(&["docker", "pull", "-q", &reference]),
        image_probe(&reference)
    );
    let output = match credential {
        None => host.run(&what, pull).await?,
        Some(credential) => {
            let login = shell_join(&[
                "docker",
                "login",
                "--username",
                &credential.username,
                "--password-stdin",
                stella_agent_core::registry_of(&reference),
            ]);
            let command = format!(
                "d=$(mktemp -d) || exit 1; export DOCKER_CONFIG=\"$d\"; {login} >/dev/null && {pull}; rc=$?; rm -rf \"$d\"; exit $rc"
            );
            host.run_with_input(&what, command, credential.password.clone().into_bytes())
                .await?
        }
    };
    Ok(parse_image(&output.stdout))
}

/// `docker create` of the component's container as the settings describe it. The
/// environment goes through a private temporary file written from stdin, so values
/// never appear on a command line.
pub(crate) async fn create(
    host: &mut Host,
    name: &str,
    settings: &DockerSettings,
    image: &ImageRef,
    labels: &HashMap<String, String>,
    image_has_healthcheck: bool,
    and_start: bool,
) -> Result<(), SshError> {
    let mut args: Vec<String> = vec![
        "docker".into(),
        "create".into(),
        "--name".into(),
        name.into(),
    ];
    let mut sorted: Vec<(&String, &String)> = labels.iter().collect();
    sorted.sort();
    for (key, value) in sorted {
        args.push("--label".into());
        args.push(format!("{key}={value}"));
    }
    args.push("--restart".into());
    args.push(match settings.restart {
        RestartSetting::No => "no".into(),
        RestartSetting::Always => "always".into(),
        RestartSetting::UnlessStopped => "unless-stopped".into(),
        RestartSetting::OnFailure(None) => "on-failure".into(),
        RestartSetting::OnFailure(Some(count)) => format!("on-failure:{count}"),
    });
    for port in &settings.ports {
        let host_ip = match &port.host_ip {
            Some(ip) if ip.contains(':') => format!("[{ip}]:"),
            Some(ip) => format!("{ip}:"),
            None => String::new(),
        };
        let host_port = port.host_port.map(|p| p.to_string()).unwrap_or_default();
        let spec = if host_ip.is_empty() && host_port.is_empty() {
            port.container_key()
        } else {
            format!("{host_ip}{host_port}:{}", port.container_key())
        };
        args.push("-p".into());
        args.push(spec);
    }
    for volume in &settings.volumes {
        args.push("-v".into());
        args.push(volume.clone());
    }
    if let Some(network) = &settings.network {
        args.push("--network".into());
        args.push(network.clone());
    }
    let start_period = format!("{}s", settings.health_timeout.as_secs());
    if let Some(command) = &settings.health_cmd {
        args.extend([
            "--health-cmd".into(),
            command.clone(),
            "--health-interval".into(),
            "1s".into(),
            "--health-timeout".into(),
            "2s".into(),
            "--health-retries".into(),
            "3".into(),
            "--health-start-period".into(),
            start_period,
        ]);
    } else if image_has_healthcheck {
        args.extend(["--health-start-period".into(), start_period]);
    }
    args.push("--stop-timeout".into());
    args.push(settings.stop_timeout_seconds.to_string());
    let env_file = !settings.env.is_empty();
    if env_file {
        args.push("--env-file".into());
        args.push("__ENV_FILE__".into());
    }
    args.push(image.to_string());
    if let Some(command) = &settings.command {
        args.extend(command.iter().cloned());
    }
    let what = if and_start {
        format!("docker create / docker start {name}")
    } else {
        format!("docker create {name}")
    };
    let start = if and_start {
        format!(" && {} >/dev/null", shell_join(&["docker", "start", name]))
    } else {
        String::new()
    };
    let line = format!("{} >/dev/null{start}", shell_join(&args));
    if env_file {
        let mut input = String::new();
        for (key, value) in &settings.env {
            if value.contains('\n') {
                return Err(SshError::InvalidSettings(format!(
                    "env.{key}: a value with a line break cannot be passed to a remote docker"
                )));
            }
            input.push_str(&format!("{key}={value}\n"));
        }
        let line = line.replace("__ENV_FILE__", "\"$f\"");
        let command = format!(
            "umask 077; f=$(mktemp) || exit 1; cat > \"$f\" && {line}; rc=$?; rm -f \"$f\"; exit $rc"
        );
        host.run_with_input(&what, command, input.into_bytes())
            .await?;
    } else {
        host.run(&what, line).await?;
    }
    Ok(())
}

/// `docker start`.
pub(crate) async fn start(host: &mut Host, name: &str) -> Result<(), SshError> {
    host.run(
        &format!("docker start {name}"),
        shell_join(&["docker", "start", name]),
    )
    .await
    .map(drop)
}

/// `docker stop -t N`.
pub(crate) async fn stop(host: &mut Host, name: &str, seconds: u64) -> Result<(), SshError> {
    host.run(
        &format!("docker stop {name}"),
        shell_join(&["docker", "stop", "-t", &seconds.to_string(), name]),
    )
    .await
    .map(drop)
}

/// `docker rm -f`; a container already gone is fine.
pub(crate) async fn remove(host: &mut Host, name: &str) -> Result<(), SshError> {
    let what = format!("docker rm {name}");
    let output = host
        .exec(&what, shell_join(&["docker", "rm", "-f", name]))
        .await?;
    if output.status != 0 && !is_no_such(&output.stderr) {
        return Err(host.remote_error(&what, &output));
    }
    Ok(())
}

/// Stops (gracefully, up to `stop_seconds`) and removes each of `olds`, renames `next`
/// to `name`, and moves the staged sticker file `then_move` into place (rename(2)): the
/// end of a deployment, in one remote command.
pub(crate) async fn retire_and_rename(
    host: &mut Host,
    olds: &[&str],
    stop_seconds: u64,
    next: &str,
    name: &str,
    then_move: Option<(&str, &str)>,
) -> Result<(), SshError> {
    let mut steps: Vec<String> = Vec::new();
    for old in olds {
        steps.push(format!(
            "{} >/dev/null",
            shell_join(&["docker", "stop", "-t", &stop_seconds.to_string(), old])
        ));
        steps.push(format!(
            "{} >/dev/null",
            shell_join(&["docker", "rm", "-f", old])
        ));
    }
    steps.push(format!(
        "{} >/dev/null",
        shell_join(&["docker", "rename", next, name])
    ));
    if let Some((from, to)) = then_move {
        steps.push(format!(
            "mv -f -- {} {}",
            shell_quote(from),
            shell_quote(to)
        ));
    }
    host.run(&format!("docker rename {next} {name}"), steps.join(" && "))
        .await
        .map(drop)
}

/// The last lines a container wrote, for error messages (empty when unavailable).
pub(crate) async fn log_tail(host: &mut Host, name: &str, lines: usize) -> String {
    let command = format!(
        "{} 2>&1",
        shell_join(&["docker", "logs", "--tail", &lines.to_string(), name])
    );
    match host.exec(&format!("docker logs {name}"), command).await {
        Ok(output) => one_line(&output.stdout),
        Err(_) => String::new(),
    }
}

/// One look at a container being waited for, in one remote command: `docker inspect`
/// and, when `url` is given, a GET of it on the remote host with `curl -fsS` or `wget -q
/// -O-`, whichever exists. The probe's result is `Err` with why it failed.
pub(crate) async fn poll(
    host: &mut Host,
    name: &str,
    url: Option<&str>,
) -> Result<(Option<RemoteContainer>, Option<Result<(), String>>), SshError> {
    let inspect = shell_join(&["docker", "inspect", "--type", "container", name]);
    let mut command = format!("{inspect} 2>/dev/null || echo '[]'");
    if let Some(url) = url {
        let url_q = shell_quote(url);
        command.push_str(&format!(
            "; echo {SEPARATOR}; \
             if command -v curl >/dev/null 2>&1; then curl -fsS -m 2 -o /dev/null {url_q} 2>&1; \
             elif command -v wget >/dev/null 2>&1; then wget -q -T 2 -O- {url_q} 2>&1 >/dev/null; \
             else echo 'neither curl nor wget is installed on the host'; false; fi; echo \"probe=$?\""
        ));
    }
    let what = format!("docker inspect {name}");
    let output = host.run(&what, command).await?;
    let separator = format!("{SEPARATOR}\n");
    let mut parts = output.stdout.split(&separator);
    let container = parse_inspect(host, &what, parts.next().unwrap_or_default())?
        .into_iter()
        .next();
    let probe = match (url, parts.next()) {
        (Some(url), Some(text)) => {
            let (detail, status) = text.trim_end().rsplit_once("probe=").unwrap_or((text, "1"));
            Some(if status.trim() == "0" {
                Ok(())
            } else {
                let detail = crate::conn::last_lines(detail, 2);
                Err(if detail.is_empty() {
                    format!("GET {url} failed (exit status {})", status.trim())
                } else {
                    format!("GET {url} failed: {detail}")
                })
            })
        }
        _ => None,
    };
    Ok((container, probe))
}
