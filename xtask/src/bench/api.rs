//! `cargo xtask bench api`: what authentication costs per request — the same cheap GET
//! without authentication, with an API token and with an OAuth2 access token (JWT),
//! p50 and p99. The measuring program is `stella-tests`' `bench-api` (the control plane
//! runs in its process).

use clap::Args;

use crate::cargo::{cargo, step};

/// Flags of `cargo xtask bench api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Seconds per case.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Clients sending at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Measure over TLS rather than plain HTTP.
    #[arg(long)]
    tls: bool,
}

/// Builds and runs the measuring program in release mode.
pub fn run(args: &ApiArgs) -> anyhow::Result<()> {
    step("bench api: release build and run");
    let mut command = cargo();
    command.args([
        "run",
        "--release",
        "--package",
        "stella-tests",
        "--bin",
        "bench-api",
        "--",
        "--seconds",
        &args.seconds.to_string(),
        "--concurrency",
        &args.concurrency.to_string(),
    ]);
    if args.tls {
        command.arg("--tls");
    }
    let status = command.env("RUST_LOG", "warn").status()?;
    anyhow::ensure!(status.success(), "bench-api failed ({status})");
    Ok(())
}
