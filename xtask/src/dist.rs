//! `cargo xtask dist`: the Debian packages `stella` and `stella-agent`, made by cargo-deb
//! from `[package.metadata.deb]` in `cli/Cargo.toml` and `agents/agent/Cargo.toml`; and
//! `cargo xtask dist images`: the container images `stella/server` and `stella/agent`,
//! built on a Debian root made by debootstrap, since no base image can be pulled.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};

use crate::cargo::{cargo, run_checked, step, target_dir};

/// The cargo-deb release `cargo xtask dist` installs when it is missing: the newest
/// that builds with the workspace's toolchain (1.95; it asks for 1.85). It maps the
/// `target/release/` asset paths to the `--profile` given (`target/debug/` for `dev`)
/// and strips the binaries. It warns that `--profile dev` will become an error in a
/// later release; the test build relies on it to package the debug binaries it already
/// has, so moving the pin means checking that first (a custom profile inheriting `dev`
/// would cost a second build).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// What the images are made of besides the binaries: what `ldd` shows they link
/// (glibc and libgcc are in every root; libssl3 for libssh2), CA certificates for
/// registries and servers with public certificates, and curl for the server's
/// HEALTHCHECK.
const IMAGE_PACKAGES: &[&str] = &["ca-certificates", "curl", "libssl3"];

/// Numeric ids of the images' users, so `USER` and volume ownership never depend on a
/// name lookup (and a Kubernetes `runAsNonRoot` check can see them).
const SERVER_UID: u32 = 10_001;
const AGENT_UID: u32 = 10_002;

/// Flags of `cargo xtask dist`.
#[derive(Debug, Args)]
pub struct DistArgs {
    #[command(subcommand)]
    command: Option<DistCommand>,
    /// Cargo profile the binaries are built with.
    #[arg(long, global = true, value_enum, default_value_t = Profile::Release)]
    profile: Profile,
    /// Where the packages go [default: target/dist; target/dist/dev with --profile dev].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The packages' version instead of the crate's (`<version>-1`), e.g. `0.1.1-1`.
    #[arg(long, value_name = "VERSION")]
    deb_version: Option<String>,
}

/// What `cargo xtask dist` makes besides the packages.
#[derive(Debug, Subcommand)]
enum DistCommand {
    /// The container images `stella/server` and `stella/agent`, tagged with the
    /// workspace version (`<version>-dev` with --profile dev).
    Images,
}

/// A cargo profile the packages and images can be made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Optimised; what is shipped.
    Release,
    /// The test build: no optimised build needed.
    Dev,
}

impl Profile {
    /// The name cargo knows it by.
    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "dev",
        }
    }

    /// The directory under the target dir cargo writes it to.
    fn dir_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }

    /// The tag of the images made from it.
    pub fn image_tag(self) -> String {
        let version = env!("CARGO_PKG_VERSION");
        match self {
            Profile::Release => version.to_owned(),
            Profile::Dev => format!("{version}-dev"),
        }
    }
}

/// A file made by `dist`, with its SHA-256.
#[derive(Debug)]
pub struct Artifact {
    /// Where it is (a `.deb`), or the image's tag.
    pub name: String,
    /// Lowercase hex SHA-256 of the file, or the image's id.
    pub sha256: String,
}

/// `cargo xtask dist [images]`.
pub fn run(args: &DistArgs) -> anyhow::Result<()> {
    step(&format!("build binaries ({})", args.profile.cargo_name()));
    build_binaries(args.profile)?;
    let artifacts = match args.command {
        None => {
            let out = match &args.out {
                Some(out) => out.clone(),
                None => default_out(args.profile)?,
            };
            debs(args.profile, &out, args.deb_version.as_deref())?
        }
        Some(DistCommand::Images) => images(args.profile)?,
    };
    println!();
    for artifact in &artifacts {
        println!("{}  {}", artifact.sha256, artifact.name);
    }
    Ok(())
}

/// `target/dist` for release packages, `target/dist/dev` for the test build's.
pub fn default_out(profile: Profile) -> anyhow::Result<PathBuf> {
    let dist = target_dir()?.join("dist");
    Ok(match profile {
        Profile::Release => dist,
        Profile::Dev => dist.join("dev"),
    })
}

/// Builds `stella` and `stella-agent` with `profile`.
pub fn build_binaries(profile: Profile) -> anyhow::Result<()> {
    run_checked(cargo().args([
        "build",
        "--profile",
        profile.cargo_name(),
        "-p",
        "stella-cli",
        "-p",
        "stella-agent",
        "--bins",
    ]))
}

/// Packages the already built binaries of `profile` as `stella` and `stella-agent`
/// into `out`, with `deb_version` when given; installs cargo-deb first when missing.
pub fn debs(
    profile: Profile,
    out: &Path,
    deb_version: Option<&str>,
) -> anyhow::Result<Vec<Artifact>> {
    ensure_cargo_deb()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // cargo deb runs in the workspace root and prints the path it wrote relative to it.
    let out = &std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    let mut artifacts = Vec::new();
    for package in ["stella-cli", "stella-agent"] {
        step(&format!("debian package of {package}"));
        let mut command = cargo();
        command
            .args(["deb", "-p", package, "--no-build", "--profile"])
            .arg(profile.cargo_name())
            .arg("--output")
            .arg(out);
        if profile == Profile::Dev {
            // The test build: fast compression of the large unoptimised binaries.
            command.arg("--fast");
        }
        if let Some(version) = deb_version {
            command.args(["--deb-version", version]);
        }
        let path = run_printing_last_line(&mut command)?;
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("cargo deb reported {} but it is not a file", path.display());
        }
        artifacts.push(Artifact {
            sha256: sha256_file(&path)?,
            name: path.display().to_string(),
        });
    }
    Ok(artifacts)
}

/// Builds `stella/server:<tag>` and `stella/agent:<tag>` from the already built binaries
/// of `profile` (tag: [`Profile::image_tag`]).
pub fn images(profile: Profile) -> anyhow::Result<Vec<Artifact>> {
    step("debian root of the images");
    let base = tokio::runtime::Runtime::new()
        .context("starting a tokio runtime")?
        .block_on(stella_tests::debian::debian_image(IMAGE_PACKAGES))?;
    println!("debian root: {base} ({})", IMAGE_PACKAGES.join(", "));

    let target = target_dir()?;
    let binaries = target.join(profile.dir_name());
    let contexts = target.join("dist").join("images").join(profile.dir_name());
    let base = runtime_base(&base, &contexts.join("base"))?;
    let tag = profile.image_tag();
    let mut artifacts = Vec::new();
    for image in [server_image(&base), agent_image(&base)] {
        step(&format!("image {}:{tag}", image.repository));
        let context = contexts.join(image.binary);
        if context.exists() {
            std::fs::remove_dir_all(&context)
                .with_context(|| format!("emptying {}", context.display()))?;
        }
        std::fs::create_dir_all(&context)
            .with_context(|| format!("creating {}", context.display()))?;
        copy_stripped(&binaries.join(image.binary), &context.join(image.binary))?;
        std::fs::write(context.join("Dockerfile"), &image.dockerfile)
            .with_context(|| format!("writing the Dockerfile in {}", context.display()))?;
        let name = format!("{}:{tag}", image.repository);
        run_checked(
            Command::new("docker")
                .args(["build", "--quiet", "--tag", &name])
                .arg(&context),
        )?;
        artifacts.push(Artifact {
            sha256: image_id(&name)?,
            name,
        });
    }
    Ok(artifacts)
}

/// The tag of the images' common base, made from the Debian root `debian`.
const BASE_REPOSITORY: &str = "stella/base";

/// The Debian root without documentation (copyright files kept), manual pages and
/// translations — 50 of its 131 MB, never read in a container — flattened into one
/// layer (`FROM scratch`), so the deletion really shrinks it. Docker's build cache makes
/// it free after the first time.
fn runtime_base(debian: &str, context: &Path) -> anyhow::Result<String> {
    step("base image");
    std::fs::create_dir_all(context).with_context(|| format!("creating {}", context.display()))?;
    let dockerfile = format!(
        r#"FROM {debian} AS root
RUN find /usr/share/doc -type f ! -name copyright -delete \
 && rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /var/log/* /var/cache/debconf/*-old
FROM scratch
COPY --from=root / /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"#
    );
    std::fs::write(context.join("Dockerfile"), dockerfile)
        .with_context(|| format!("writing the Dockerfile in {}", context.display()))?;
    let tag = format!(
        "{BASE_REPOSITORY}:{}",
        debian.rsplit_once(':').map_or("latest", |(_, tag)| tag)
    );
    run_checked(
        Command::new("docker")
            .args(["build", "--quiet", "--tag", &tag])
            .arg(context),
    )?;
    Ok(tag)
}

/// One image: its repository, the binary it runs and its Dockerfile.
#[derive(Debug)]
struct Image {
    repository: &'static str,
    binary: &'static str,
    dockerfile: String,
}

/// `stella server` listening on every address (a container's loopback is its own),
/// TLS under its own CA as everywhere else, data in the volume. Flags given to
/// `docker run` after the image name are added to `stella server`'s.
fn server_image(base: &str) -> Image {
    let dockerfile = format!(
        r#"FROM {base}
COPY stella /usr/bin/stella
RUN groupadd --system --gid {SERVER_UID} stella \
 && useradd --system --uid {SERVER_UID} --gid {SERVER_UID} --home-dir /var/lib/stella \
      --no-create-home --shell /usr/sbin/nologin stella \
 && install -d -m 0700 -o {SERVER_UID} -g {SERVER_UID} /var/lib/stella
USER {SERVER_UID}:{SERVER_UID}
ENV STELLA_DATA_DIR=/var/lib/stella
VOLUME /var/lib/stella
# The REST API (TLS) and the agents' gateway (mTLS gRPC).
EXPOSE 8080 8443
# Ready: the API answers and the store does. -k: a probe on loopback that sends no
# credential; the API certificate may be the operator's, for other names.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsSk --max-time 4 https://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["/usr/bin/stella", "server", "--api-listen", "0.0.0.0:8080", "--grpc-listen", "0.0.0.0:8443"]
"#
    );
    Image {
        repository: "stella/server",
        binary: "stella",
        dockerfile,
    }
}

/// `stella-agent`, configured by `STELLA_SERVER` and `STELLA_JOIN_TOKEN`, its identity
/// in the volume. Healthy while its certificate file is younger than the longest
/// certificate lifetime (24 h): the agent renews at half-life, so an agent that cannot
/// renew turns unhealthy before its certificate expires.
fn agent_image(base: &str) -> Image {
    let dockerfile = format!(
        r#"FROM {base}
COPY stella-agent /usr/bin/stella-agent
RUN groupadd --system --gid {AGENT_UID} stella-agent \
 && useradd --system --uid {AGENT_UID} --gid {AGENT_UID} --home-dir /var/lib/stella-agent \
      --no-create-home --shell /usr/sbin/nologin stella-agent \
 && install -d -m 0700 -o {AGENT_UID} -g {AGENT_UID} /var/lib/stella-agent
USER {AGENT_UID}:{AGENT_UID}
ENV STELLA_AGENT_DATA_DIR=/var/lib/stella-agent
VOLUME /var/lib/stella-agent
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD find /var/lib/stella-agent/agent.pem -mmin -1440 | grep -q . || exit 1
ENTRYPOINT ["/usr/bin/stella-agent"]
"#
    );
    Image {
        repository: "stella/agent",
        binary: "stella-agent",
        dockerfile,
    }
}

/// Installs cargo-deb [`CARGO_DEB_VERSION`] unless `cargo deb --version` names it.
/// Only `dist` (and `cargo xtask test`, which packages) gets here: normal builds never
/// compile it.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    crate::cargo::ensure_cargo_tool("deb", "cargo-deb", CARGO_DEB_VERSION)
}

/// Runs `command` with stderr shown and stdout captured; returns stdout's last line
/// (cargo-deb prints the path of the package it wrote).
fn run_printing_last_line(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo deb")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!("cargo deb failed ({})", output.status);
    }
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
        .context("cargo deb printed no package path")
}

/// Copies a binary into an image's context without its symbols (`strip`), or as is
/// when `strip` is missing.
fn copy_stripped(from: &Path, to: &Path) -> anyhow::Result<()> {
    if !from.is_file() {
        bail!("{} is missing: build it first", from.display());
    }
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .is_ok_and(|status| status.success());
    if !stripped {
        println!(
            "strip failed or is missing: {} goes in as is",
            from.display()
        );
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn image_id(name: &str) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", name])
        .output()
        .context("running docker image inspect")?;
    if !output.status.success() {
        bail!(
            "docker image inspect {name}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use crate::cargo::workspace_root;

    /// A unit's directives, without its comments.
    fn directives(path: &str) -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(workspace_root().join(path))?;
        Ok(text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(str::to_owned)
            .collect())
    }

    /// The packages' units are the hand-install units of `installers/systemd/` with only
    /// the changes packaging needs, so hardening added to one is not missing from the
    /// other.
    #[test]
    fn package_units_are_the_hand_install_units_with_packaged_paths() -> anyhow::Result<()> {
        let server: Vec<String> = directives("installers/systemd/stella-server.service")?
            .into_iter()
            .map(|line| line.replace("/usr/local/bin/stella", "/usr/bin/stella"))
            .collect();
        assert_eq!(
            server,
            directives("installers/debian/stella/stella-server.service")?
        );

        let agent: Vec<String> = directives("installers/systemd/stella-agent.service")?
            .into_iter()
            // The docker group comes from the user's groups (postinst), and the server's
            // URL from /etc/stella/agent.env.
            .filter(|line| {
                line != "SupplementaryGroups=docker"
                    && !line.starts_with("Environment=STELLA_SERVER=")
            })
            .map(|line| line.replace("/usr/local/bin/stella agent run", "/usr/bin/stella-agent"))
            .collect();
        assert_eq!(
            agent,
            directives("installers/debian/stella-agent/stella-agent.service")?
        );
        Ok(())
    }
}
