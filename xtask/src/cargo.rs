//! Running cargo and other programs from xtask, and finding the workspace on disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
}

/// The cargo that runs us (`$CARGO` under `cargo run`), else the one on `PATH`.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(workspace_root());
    command
}

/// Installs the cargo subcommand `subcommand` from the crate `krate` at `version`
/// (`cargo install --locked`) unless `cargo SUBCOMMAND --version` already names that
/// version.
pub fn ensure_cargo_tool(subcommand: &str, krate: &str, version: &str) -> anyhow::Result<()> {
    let installed = cargo()
        .args([subcommand, "--version"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
    if installed.is_some_and(|text| text.split_whitespace().any(|word| word == version)) {
        return Ok(());
    }
    step(&format!("install {krate} {version}"));
    run_checked(cargo().args(["install", krate, "--version", version, "--locked"]))
}

/// Prints a step header so long runs show where they are.
pub fn step(title: &str) {
    println!("\n==> {title}");
}

/// Runs `command` with inherited stdio and fails unless it exits with 0.
pub fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let shown = display(command);
    println!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// The target directory cargo builds into (shared target dirs and `CARGO_TARGET_DIR`
/// included), from `cargo metadata`.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cannot run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid json")?;
    let dir = metadata
        .get("target_directory")
        .and_then(serde_json::Value::as_str)
        .context("`cargo metadata` printed no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn display(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}
