//! `cargo xtask bench ui`: the console's dashboard over 200 releases × 10 environments
//! × 1,000 targets — server time p50/p99, page weight, and first contentful paint in
//! headless Chromium. The measuring program is `stella-tests`' `bench-ui` (the control
//! plane and a `sim` agent run in its process).

use clap::Args;

use crate::cargo::{cargo, step};

/// Flags of `cargo xtask bench ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Releases in the estate.
    #[arg(long, default_value_t = 200)]
    releases: usize,
    /// Environments, in one promotion order.
    #[arg(long, default_value_t = 10)]
    environments: usize,
    /// Targets, spread over the environments.
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// The newest releases deployed along the whole order.
    #[arg(long, default_value_t = 3)]
    deployed: usize,
    /// Dashboard requests timed.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Page loads in the browser.
    #[arg(long, default_value_t = 7)]
    loads: usize,
}

/// Builds and runs the measuring program in release mode.
pub fn run(args: &UiArgs) -> anyhow::Result<()> {
    step("bench ui: release build and run");
    let status = cargo()
        .args([
            "run",
            "--release",
            "--package",
            "stella-tests",
            "--bin",
            "bench-ui",
            "--",
            "--releases",
            &args.releases.to_string(),
            "--environments",
            &args.environments.to_string(),
            "--targets",
            &args.targets.to_string(),
            "--deployed",
            &args.deployed.to_string(),
            "--requests",
            &args.requests.to_string(),
            "--loads",
            &args.loads.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(status.success(), "bench-ui failed ({status})");
    Ok(())
}
