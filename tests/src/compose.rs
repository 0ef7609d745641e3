//! Compose for tests: both generations (v1 `docker-compose`, v2+ `docker compose`), a
//! check that fails loudly when one is missing, a way to run them by hand as an operator
//! would, the Compose file of the web images, and the guard that removes a project's
//! containers and networks.

use std::process::Stdio;

use anyhow::{bail, Context};

/// A Compose generation the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeGeneration {
    /// Debian's `docker-compose` 1.29.
    V1,
    /// `docker compose`, the CLI plugin (v2 and later).
    V2,
}

impl ComposeGeneration {
    /// The `compose_version` setting that selects it.
    pub fn setting(self) -> &'static str {
        match self {
            ComposeGeneration::V1 => "v1",
            ComposeGeneration::V2 => "v2",
        }
    }

    fn command(self) -> tokio::process::Command {
        match self {
            ComposeGeneration::V1 => tokio::process::Command::new("docker-compose"),
            ComposeGeneration::V2 => {
                let mut command = tokio::process::Command::new("docker");
                command.arg("compose");
                command
            }
        }
    }

    /// Fails (never skips) when this generation does not answer `version`.
    pub async fn require(self) -> anyhow::Result<()> {
        let mut command = self.command();
        let output = command.arg("version").stdin(Stdio::null()).output().await;
        match output {
            Ok(output) if output.status.success() => Ok(()),
            _ => bail!(
                "Compose {} is missing on this machine ({}); `cargo xtask test` installs both generations",
                self.setting(),
                match self {
                    ComposeGeneration::V1 => "docker-compose version",
                    ComposeGeneration::V2 => "docker compose version",
                }
            ),
        }
    }

    /// Runs `compose --ansi never -p PROJECT -f FILE ARGS…` as an operator would;
    /// returns its output, or fails with it.
    pub async fn run(
        self,
        project: &str,
        file: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let mut command = self.command();
        let output = command
            .args(["--ansi", "never", "-p", project, "-f"])
            .arg(file)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running compose")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        if !output.status.success() {
            bail!("compose {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }
}

/// The health check of the web images, in Compose form: checked every second.
pub const WEB_HEALTHCHECK: &str = r#"healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"]
      interval: 1s
      timeout: 2s
      retries: 3"#;

/// A Compose file with two services of the web images of `repository`: `web` (tag
/// `web_tag`, its labels a list, a command that says it is starting) and `side` (tag
/// `side`, its labels a map), both with [`WEB_HEALTHCHECK`].
pub fn two_service_file(repository: &str, web_tag: &str) -> String {
    format!(
        r#"# The operator's file.
services:
  web:
    image: {repository}:{web_tag}
    command: ["/bin/sh", "-c", "echo web is starting; trap 'exit 0' TERM; /bin/httpd -f -p 8080 -h /www & wait"]
    labels:
      - "team=shop"
    {WEB_HEALTHCHECK}
  side:
    image: {repository}:side
    labels:
      team: shop
    {WEB_HEALTHCHECK}
"#
    )
}

/// Removes, on drop, every container and network of the given Compose projects (found by
/// the `com.docker.compose.project` label), so a test leaves nothing behind even when it
/// fails.
#[derive(Debug)]
pub struct ProjectCleanup {
    projects: Vec<String>,
}

impl ProjectCleanup {
    /// Cleans up after `projects`.
    pub fn new<S: Into<String>>(projects: impl IntoIterator<Item = S>) -> Self {
        ProjectCleanup {
            projects: projects.into_iter().map(Into::into).collect(),
        }
    }
}

impl Drop for ProjectCleanup {
    fn drop(&mut self) {
        for project in &self.projects {
            let filter = format!("label=com.docker.compose.project={project}");
            for (list, remove) in [
                (vec!["ps", "-aq", "--filter", &filter], vec!["rm", "-f"]),
                (
                    vec!["network", "ls", "-q", "--filter", &filter],
                    vec!["network", "rm"],
                ),
            ] {
                let Ok(listed) = std::process::Command::new("docker").args(&list).output() else {
                    continue;
                };
                let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let _ = std::process::Command::new("docker")
                    .args(&remove)
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
