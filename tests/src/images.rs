//! Test images built on this machine (nothing can be pulled here): a root filesystem
//! holding Debian's static busybox, `docker import`ed with an httpd command, pushed to a
//! [`TestRegistry`](crate::registry::TestRegistry) to get a digest. Also the guard that
//! removes a test's containers.
//!
//! The web image serves `/www` on port 8080: `/index.html` holds the version text, and
//! `/health` exists only in healthy images, so [`WEB_HEALTH_CMD`] fails on the others.
//! `/cgi-bin/app` answers the version (or a 500, see [`WebImageOptions::error_percent`])
//! and appends its status to `/tmp/requests`; `/cgi-bin/metrics` counts those lines and
//! answers them in the Prometheus text format, as a service instrumented with a client
//! library would ([`WEB_METRICS_PATH`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Where the web images answer their metrics: `http_requests_total{code="200"|"500"}`
/// counts the requests `/cgi-bin/app` answered, and the histogram
/// `http_request_duration_seconds` (client_golang's default buckets) has each of them
/// in the bucket of the image's fixed [`WebImageOptions::latency_ms`].
pub const WEB_METRICS_PATH: &str = "/cgi-bin/metrics";

/// The upper bounds of the metrics' latency buckets, in milliseconds (`+Inf` apart):
/// client_golang's `DefBuckets`.
const LATENCY_BUCKETS_MS: [u32; 11] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// A `health_cmd` for the web images: fails (404) on images built unhealthy.
pub const WEB_HEALTH_CMD: &str = "wget -q -O /dev/null http://127.0.0.1:8080/health";

/// The web server's command. PID 1 ignores signals it has no handler for, and busybox
/// httpd installs none, so a bare httpd would sit out `docker stop`'s whole 10 s grace
/// period: the shell traps SIGTERM and exits, which ends the container at once.
const WEB_CMD: &str =
    r#"CMD ["/bin/sh","-c","trap 'exit 0' TERM; /bin/httpd -f -p 8080 -h /www & wait"]"#;

/// How a web image behaves besides the version it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebImageOptions {
    /// `/www/health` exists from the start.
    pub healthy: bool,
    /// `/www/health` appears this many seconds after the container starts (a slow
    /// starter); the server answers `/` at once.
    pub healthy_after_seconds: Option<u32>,
    /// The image's own `HEALTHCHECK` instruction (for `docker import --change`), e.g.
    /// `HEALTHCHECK --interval=1s --retries=1 CMD wget -q -O /dev/null http://127.0.0.1:8080/health`.
    pub healthcheck: Option<String>,
    /// The share of requests to `/cgi-bin/app` answered 500, in percent (the others
    /// get the version, like `/`).
    pub error_percent: u8,
    /// How long `/cgi-bin/app` sleeps before it answers, in milliseconds; the metrics
    /// report every request at this latency.
    pub latency_ms: u32,
}

/// Builds the web image locally and tags it `tag` (e.g. `127.0.0.1:PORT/stella-test/web:v1`):
/// `/www/index.html` holds `version`, and `/www/health` exists when `healthy`.
pub async fn build_web_image(tag: &str, version: &str, healthy: bool) -> anyhow::Result<()> {
    let options = WebImageOptions {
        healthy,
        ..WebImageOptions::default()
    };
    build_web_image_with(tag, version, &options).await
}

/// [`build_web_image`] with more ways to behave.
pub async fn build_web_image_with(
    tag: &str,
    version: &str,
    options: &WebImageOptions,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("stella-test-image-")
        .tempdir()?;
    let root = dir.path().join("rootfs");
    let version = version.to_owned();
    let rootfs = root.clone();
    let behaviour = options.clone();
    tokio::task::spawn_blocking(move || write_web_rootfs(&rootfs, &version, &behaviour)).await??;
    let command = match options.healthy_after_seconds {
        None => WEB_CMD.to_owned(),
        // The health file is written by a background job, so `/` answers at once and
        // the TERM trap still ends the container at once.
        Some(seconds) => format!(
            r#"CMD ["/bin/sh","-c","trap 'exit 0' TERM; (sleep {seconds}; echo ok > /www/health) & /bin/httpd -f -p 8080 -h /www & wait"]"#
        ),
    };
    let tarball = dir.path().join("rootfs.tar");
    run_checked(
        tokio::process::Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
        "tar",
    )
    .await?;
    run_checked(
        tokio::process::Command::new("docker")
            .arg("import")
            .args(["--change", &command])
            .args(["--change", "EXPOSE 8080"])
            .args(["--change", "ENV PATH=/bin"])
            .args(
                options
                    .healthcheck
                    .iter()
                    .flat_map(|healthcheck| ["--change", healthcheck.as_str()]),
            )
            .arg(&tarball)
            .arg(tag),
        "docker import",
    )
    .await?;
    Ok(())
}

/// `docker push`es `tag` with the docker CLI config in `docker_config` (see
/// [`TestRegistry::docker_config`](crate::registry::TestRegistry::docker_config)) and
/// returns the pushed image as `repo@sha256:…`.
pub async fn push_image(tag: &str, docker_config: &Path) -> anyhow::Result<String> {
    let output = run_checked(
        tokio::process::Command::new("docker")
            .arg("--config")
            .arg(docker_config)
            .args(["push", tag]),
        "docker push",
    )
    .await?;
    // The last line reads `v1: digest: sha256:… size: 527`.
    let digest = output
        .split_whitespace()
        .skip_while(|word| *word != "digest:")
        .nth(1)
        .filter(|digest| digest.starts_with("sha256:"))
        .with_context(|| format!("no digest in the output of docker push {tag}: {output}"))?;
    Ok(format!("{}@{digest}", repository_of(tag)))
}

/// Removes an image (by any reference) and every other reference to it from the engine,
/// so that a deployment has to pull it.
pub async fn remove_local_image(reference: &str) -> anyhow::Result<()> {
    let id = run_checked(
        tokio::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", reference]),
        "docker image inspect",
    )
    .await?;
    run_checked(
        tokio::process::Command::new("docker").args(["rmi", "-f", id.trim()]),
        "docker rmi",
    )
    .await?;
    Ok(())
}

/// The web images of one test, in one registry repository; removed from the engine on
/// drop.
#[derive(Debug)]
pub struct WebImages {
    repository: String,
    docker_config: PathBuf,
    published: Mutex<Vec<String>>,
}

impl WebImages {
    /// Images in `<registry_host>/<name>` pushed with the CLI config `docker_config`.
    pub fn new(registry_host: &str, name: &str, docker_config: &Path) -> Self {
        WebImages {
            repository: format!("{registry_host}/{name}"),
            docker_config: docker_config.to_owned(),
            published: Mutex::new(Vec::new()),
        }
    }

    /// The repository, `host:port/name`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Builds, pushes and drops the local copy of the web image `version`: returns
    /// `repo@sha256:…`, which a deployment must pull.
    pub async fn publish(&self, version: &str, healthy: bool) -> anyhow::Result<String> {
        let options = WebImageOptions {
            healthy,
            ..WebImageOptions::default()
        };
        self.publish_with(version, &options).await
    }

    /// [`WebImages::publish`] with more ways to behave.
    pub async fn publish_with(
        &self,
        version: &str,
        options: &WebImageOptions,
    ) -> anyhow::Result<String> {
        let tag = format!("{}:{version}", self.repository);
        build_web_image_with(&tag, version, options).await?;
        let reference = push_image(&tag, &self.docker_config).await?;
        remove_local_image(&tag).await?;
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reference.clone());
        Ok(reference)
    }

    /// A reference to a digest the registry does not have.
    pub fn missing(&self) -> String {
        format!("{}@sha256:{}", self.repository, "0".repeat(64))
    }
}

impl Drop for WebImages {
    fn drop(&mut self) {
        let published = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for reference in published.iter() {
            // Best effort: an image still used by a container stays.
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", reference])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes, on drop, every container labelled `ops.stella.target=<name>` for the given
/// target names, so a test leaves nothing behind even when it fails.
#[derive(Debug)]
pub struct ContainerCleanup {
    targets: Vec<String>,
}

impl ContainerCleanup {
    /// Cleans up after targets `targets`.
    pub fn new<S: Into<String>>(targets: impl IntoIterator<Item = S>) -> Self {
        ContainerCleanup {
            targets: targets.into_iter().map(Into::into).collect(),
        }
    }

    /// Also clean up after `target`.
    pub fn add(&mut self, target: impl Into<String>) {
        self.targets.push(target.into());
    }
}

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        for target in &self.targets {
            let listed = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=ops.stella.target={target}"))
                .output();
            let Ok(listed) = listed else { continue };
            let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `docker ARGS…` with `input` on stdin; returns stdout, or fails with stderr.
pub async fn docker_cli(
    args: &[&str],
    docker_config: Option<&Path>,
    input: Option<&str>,
) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new("docker");
    if let Some(config) = docker_config {
        command.arg("--config").arg(config);
    }
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("running docker")?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn write_web_rootfs(root: &Path, version: &str, options: &WebImageOptions) -> anyhow::Result<()> {
    let busybox = Path::new(BUSYBOX);
    assert!(
        busybox.exists(),
        "{BUSYBOX} is missing: install the Debian package busybox-static (cargo xtask test provisions it)"
    );
    let bin = root.join("bin");
    let www = root.join("www");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&www)?;
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::copy(busybox, bin.join("busybox")).context("copying busybox")?;
    for applet in ["sh", "httpd", "wget", "sleep", "usleep", "grep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    std::fs::write(www.join("index.html"), version)?;
    // CGI scripts (busybox httpd runs executables under /cgi-bin).
    let cgi = www.join("cgi-bin");
    std::fs::create_dir_all(&cgi)?;
    std::fs::write(cgi.join("app"), app_script(version, options))?;
    std::fs::write(cgi.join("metrics"), metrics_script(options.latency_ms))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for script in ["app", "metrics"] {
            std::fs::set_permissions(cgi.join(script), std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if options.healthy {
        std::fs::write(www.join("health"), "ok\n")?;
    }
    Ok(())
}

/// `/cgi-bin/app`: after `latency_ms`, the version, or a 500 for `error_percent` of the
/// requests (busybox sh's $RANDOM); the status is appended to `/tmp/requests` first (a
/// write of a few bytes with O_APPEND is atomic, so concurrent requests do not mix;
/// `$REQUESTS` names another file, for the test below).
fn app_script(version: &str, options: &WebImageOptions) -> String {
    let sleep = match options.latency_ms {
        0 => String::new(),
        ms => format!("usleep {}\n", u64::from(ms) * 1000),
    };
    let error_percent = options.error_percent;
    format!(
        r#"#!/bin/sh
{sleep}if [ $((RANDOM % 100)) -lt {error_percent} ]; then
  echo 500 >> "${{REQUESTS:-/tmp/requests}}"
  printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nerror\n'
else
  echo 200 >> "${{REQUESTS:-/tmp/requests}}"
  printf 'Content-Type: text/plain\r\n\r\n{version}\n'
fi
"#
    )
}

/// `/cgi-bin/metrics`: the requests `/cgi-bin/app` recorded, as client_golang writes a
/// counter vector and a histogram (the 500 series only once there is one).
fn metrics_script(latency_ms: u32) -> String {
    let mut script = String::from(
        r#"#!/bin/sh
requests=${REQUESTS:-/tmp/requests}
ok=$(grep -c '^200' "$requests" 2>/dev/null); ok=${ok:-0}
err=$(grep -c '^500' "$requests" 2>/dev/null); err=${err:-0}
n=$((ok + err))
printf 'Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n\r\n'
echo '# HELP http_requests_total Requests answered by /cgi-bin/app.'
echo '# TYPE http_requests_total counter'
echo "http_requests_total{code=\"200\",handler=\"app\"} $ok"
if [ "$err" -gt 0 ]; then echo "http_requests_total{code=\"500\",handler=\"app\"} $err"; fi
echo '# HELP http_request_duration_seconds Latency of /cgi-bin/app.'
echo '# TYPE http_request_duration_seconds histogram'
"#,
    );
    for bound in LATENCY_BUCKETS_MS {
        let count = if latency_ms <= bound { "$n" } else { "0" };
        let le = f64::from(bound) / 1000.0;
        script.push_str(&format!(
            "echo \"http_request_duration_seconds_bucket{{handler=\\\"app\\\",le=\\\"{le}\\\"}} {count}\"\n"
        ));
    }
    script.push_str(&format!(
        r#"echo "http_request_duration_seconds_bucket{{handler=\"app\",le=\"+Inf\"}} $n"
echo "http_request_duration_seconds_sum{{handler=\"app\"}} $((n * {latency_ms}))e-3"
echo "http_request_duration_seconds_count{{handler=\"app\"}} $n"
"#
    ));
    script
}

/// `host:port/name:tag` → `host:port/name`.
fn repository_of(tag: &str) -> &str {
    let last_slash = tag.rfind('/').map_or(0, |i| i + 1);
    match tag[last_slash..].rfind(':') {
        Some(colon) => &tag[..last_slash + colon],
        None => tag,
    }
}

async fn run_checked(command: &mut tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// The CGI scripts under the host's busybox: the app records each answer, and the
    /// metrics count them.
    #[test]
    fn the_metrics_count_what_the_app_answered() {
        let dir = tempfile::tempdir().unwrap();
        let requests = dir.path().join("requests");
        let run = |script: &str| {
            let path = dir.path().join("script");
            std::fs::write(&path, script).unwrap();
            let output = std::process::Command::new(BUSYBOX)
                .arg("sh")
                .arg(&path)
                .env("REQUESTS", &requests)
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap()
        };
        let empty = run(&metrics_script(30));
        assert!(
            empty.contains("http_requests_total{code=\"200\",handler=\"app\"} 0\n")
                && !empty.contains("code=\"500\""),
            "{empty}"
        );
        let failing = WebImageOptions {
            error_percent: 50,
            ..WebImageOptions::default()
        };
        let mut errors = 0;
        for _ in 0..40 {
            if run(&app_script("v9", &failing)).starts_with("Status: 500") {
                errors += 1;
            }
        }
        let text = run(&metrics_script(30));
        assert!(
            text.starts_with("Content-Type: text/plain; version=0.0.4"),
            "{text}"
        );
        let ok_line = format!(
            "http_requests_total{{code=\"200\",handler=\"app\"}} {}\n",
            40 - errors
        );
        assert!(text.contains(&ok_line), "{text}");
        assert!(
            text.contains(&format!("code=\"500\",handler=\"app\"}} {errors}\n")) || errors == 0,
            "{text}"
        );
        // 30 ms is above the 25 ms bucket and within the 50 ms one.
        assert!(text.contains("le=\"0.025\"} 0\n"), "{text}");
        assert!(text.contains("le=\"0.05\"} 40\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 40\n"), "{text}");
        assert!(
            text.contains("http_request_duration_seconds_sum{handler=\"app\"} 1200e-3\n"),
            "{text}"
        );
    }
}
