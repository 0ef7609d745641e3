//! Fresh Debian roots for the installation tests: `debootstrap --variant=minbase` of
//! bookworm with the packages a test asks for, imported into the Docker engine as an
//! image (no base image can be pulled here). Each distinct package list is built once
//! per engine and then reused; concurrent tests wait on a file lock instead of building
//! the same root twice.

use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// The suite every root is made of (the machine's own release).
pub const SUITE: &str = "bookworm";

/// The mirror debootstrap fetches from: `STELLA_TEST_DEBIAN_MIRROR`, or Debian's.
fn mirror() -> String {
    std::env::var("STELLA_TEST_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_owned())
}

/// The image of a minimal Debian root with `include` installed, e.g.
/// `debian_image(&["systemd", "systemd-sysv", "curl", "ca-certificates"])`; returns its
/// tag (`stella-test/debian:<hash of the list>`). Fails loudly when debootstrap is
/// missing or the mirror cannot be reached.
pub async fn debian_image(include: &[&str]) -> anyhow::Result<String> {
    let mut packages: Vec<&str> = include.to_vec();
    packages.sort_unstable();
    packages.dedup();
    let key = format!(
        "{:x}",
        Sha256::digest(format!("{SUITE}\n{}", packages.join("\n")).as_bytes())
    );
    let tag = format!("stella-test/debian:{}", &key[..16]);
    let packages = packages.join(",");
    let cache = cache_dir()?;
    tokio::task::spawn_blocking(move || build_locked(&tag, &packages, &cache))
        .await
        .context("the debootstrap task panicked")?
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("stella-test-debian");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn image_exists(tag: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn build_locked(tag: &str, packages: &str, cache: &std::path::Path) -> anyhow::Result<String> {
    if image_exists(tag) {
        return Ok(tag.to_owned());
    }
    let lock_path = cache.join(format!("{}.lock", tag.replace([':', '/'], "_")));
    let lock = File::create(&lock_path)
        .with_context(|| format!("creating the lock {}", lock_path.display()))?;
    lock.lock().context("locking the Debian root build")?;
    if image_exists(tag) {
        return Ok(tag.to_owned());
    }
    let root = tempfile::Builder::new()
        .prefix("stella-debian-root-")
        .tempdir_in(cache)
        .context("creating the root's directory")?;
    let mut debootstrap = std::process::Command::new("debootstrap");
    debootstrap.args(["--variant=minbase", "--merged-usr"]);
    if !packages.is_empty() {
        debootstrap.arg(format!("--include={packages}"));
    }
    let output = debootstrap
        .arg(SUITE)
        .arg(root.path())
        .arg(mirror())
        .stdin(Stdio::null())
        .output()
        .context("running debootstrap (cargo xtask test installs the debootstrap package)")?;
    if !output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = stdout.lines().rev().take(15).collect();
        bail!(
            "debootstrap {SUITE} with {packages} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // The apt lists and .deb cache are not needed in the image.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let path = root.path().join(dir);
        if let Ok(entries) = std::fs::read_dir(&path) {
            for entry in entries.flatten() {
                if entry.path().is_file() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let tar_out = tar.stdout.context("tar has no stdout")?;
    let import = std::process::Command::new("docker")
        .args(["import", "--change", "CMD [\"/bin/bash\"]", "-", tag])
        .stdin(tar_out)
        .output()
        .context("running docker import")?;
    if !import.status.success() {
        bail!(
            "docker import of the {SUITE} root failed: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        );
    }
    Ok(tag.to_owned())
}
