//! Running Compose: v1 (`docker-compose`, Python) or v2 and later (`docker compose`, the
//! CLI plugin), found on the agent's host. Commands run with a time limit and are killed
//! when it passes or the task is cancelled; their output is kept for progress lines.
//! Nothing secret is ever on a command line: images are pulled through the engine
//! before Compose runs, so Compose finds them present.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use stella_agent_core::CancellationToken;
use tokio::sync::OnceCell;

use crate::error::ComposeError;
use crate::settings::ComposeVersion;

/// How long `… version` may take when probing for a generation.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this many output lines of a command are kept.
pub(crate) const OUTPUT_LINES: usize = 50;

/// A Compose generation that is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// `docker-compose` 1.x.
    V1,
    /// `docker compose` 2.x and later.
    V2,
}

impl Generation {
    /// `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::V1 => "v1",
            Generation::V2 => "v2",
        }
    }
}

/// How to run the two generations, and which of them answer (probed once each).
#[derive(Debug)]
pub(crate) struct ComposeCli {
    docker_bin: PathBuf,
    v1_bin: PathBuf,
    v1: OnceCell<bool>,
    v2: OnceCell<bool>,
}

/// A finished command: its output lines (stderr, then stdout).
#[derive(Debug)]
pub(crate) struct CommandOutput {
    pub(crate) lines: Vec<String>,
}

impl ComposeCli {
    pub(crate) fn new(docker_bin: PathBuf, v1_bin: PathBuf) -> Self {
        ComposeCli {
            docker_bin,
            v1_bin,
            v1: OnceCell::new(),
            v2: OnceCell::new(),
        }
    }

    /// Whether `generation` answers `version` on this host.
    pub(crate) async fn available(&self, generation: Generation) -> bool {
        let cell = match generation {
            Generation::V1 => &self.v1,
            Generation::V2 => &self.v2,
        };
        *cell
            .get_or_init(|| async {
                let mut command = self.command(generation);
                command.arg("version");
                let probe = run(command, PROBE_TIMEOUT, None).await;
                match probe {
                    Ok(_) => true,
                    Err(error) => {
                        tracing::info!(generation = generation.as_str(), error = %stella_agent_core::error_chain(&error), "compose generation not available");
                        false
                    }
                }
            })
            .await
    }

    /// The generation a target's `compose_version` setting asks for, if it is present.
    pub(crate) async fn resolve(&self, wanted: ComposeVersion) -> Result<Generation, ComposeError> {
        let missing = |what: &str| {
            ComposeError::NoCompose(format!(
                "compose_version is {what} but {} does not answer on this host",
                match what {
                    "v1" => format!("{} version", self.v1_bin.display()),
                    _ => format!("{} compose version", self.docker_bin.display()),
                }
            ))
        };
        match wanted {
            ComposeVersion::V1 if self.available(Generation::V1).await => Ok(Generation::V1),
            ComposeVersion::V1 => Err(missing("v1")),
            ComposeVersion::V2 if self.available(Generation::V2).await => Ok(Generation::V2),
            ComposeVersion::V2 => Err(missing("v2")),
            ComposeVersion::Auto if self.available(Generation::V2).await => Ok(Generation::V2),
            ComposeVersion::Auto if self.available(Generation::V1).await => Ok(Generation::V1),
            ComposeVersion::Auto => Err(ComposeError::NoCompose(
                "neither `docker compose` (v2) nor `docker-compose` (v1) answers on this host"
                    .to_owned(),
            )),
        }
    }

    /// `up -d --remove-orphans` of `file` as project `project`.
    pub(crate) async fn up(
        &self,
        generation: Generation,
        project: &str,
        file: &Path,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<CommandOutput, ComposeError> {
        let command =
            self.project_command(generation, project, file, &["up", "-d", "--remove-orphans"]);
        run(command, timeout, Some(cancel)).await
    }

    /// The command line of `up`, for progress lines.
    pub(crate) fn up_line(&self, generation: Generation, project: &str, file: &Path) -> String {
        let mut line = self.program_line(generation);
        line.push_str(&format!(
            " -p {project} -f {} up -d --remove-orphans",
            file.display()
        ));
        line
    }

    fn program_line(&self, generation: Generation) -> String {
        match generation {
            Generation::V1 => self.v1_bin.display().to_string(),
            Generation::V2 => format!("{} compose", self.docker_bin.display()),
        }
    }

    fn command(&self, generation: Generation) -> tokio::process::Command {
        match generation {
            Generation::V1 => tokio::process::Command::new(&self.v1_bin),
            Generation::V2 => {
                let mut command = tokio::process::Command::new(&self.docker_bin);
                command.arg("compose");
                command
            }
        }
    }

    fn project_command(
        &self,
        generation: Generation,
        project: &str,
        file: &Path,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut command = self.command(generation);
        command
            .args(["--ansi", "never", "-p", project, "-f"])
            .arg(file)
            .args(args);
        if let Some(dir) = file.parent() {
            command.current_dir(dir);
        }
        command
    }
}

/// Runs a command to its end within `timeout` (killed after it, or on `cancel`).
async fn run(
    mut command: tokio::process::Command,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> Result<CommandOutput, ComposeError> {
    let line = describe(&command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|error| ComposeError::Command {
        command: line.clone(),
        what: format!("could not start: {error}"),
        output: String::new(),
        lines: Vec::new(),
    })?;
    let cancelled = async {
        match cancel {
            Some(cancel) => cancel.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let output = tokio::select! {
        output = tokio::time::timeout(timeout, child.wait_with_output()) => output,
        () = cancelled => return Err(ComposeError::Cancelled),
    };
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            return Err(ComposeError::Command {
                command: line,
                what: format!("failed: {error}"),
                output: String::new(),
                lines: Vec::new(),
            })
        }
        Err(_) => {
            return Err(ComposeError::Command {
                command: line,
                what: format!(
                    "did not finish within {} s and was killed",
                    timeout.as_secs()
                ),
                output: String::new(),
                lines: Vec::new(),
            })
        }
    };
    let mut lines: Vec<String> = [&output.stderr, &output.stdout]
        .into_iter()
        .flat_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    if lines.len() > OUTPUT_LINES {
        lines.drain(..lines.len() - OUTPUT_LINES);
    }
    if output.status.success() {
        return Ok(CommandOutput { lines });
    }
    let last = lines
        .iter()
        .rev()
        .take(5)
        .rev()
        .cloned()
        .collect::<Vec<_>>();
    Err(ComposeError::Command {
        command: line,
        what: format!("exited with {}", output.status),
        output: if last.is_empty() {
            String::new()
        } else {
            format!(": {}", last.join(" | "))
        },
        lines,
    })
}

fn describe(command: &tokio::process::Command) -> String {
    let std = command.as_std();
    std::iter::once(std.get_program().to_string_lossy().into_owned())
        .chain(std.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}
