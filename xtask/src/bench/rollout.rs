//! `cargo xtask bench rollout`: what a promotion costs the requests that go through the
//! router while it runs — requests, failures, outage, p50 and p99 — with no deployment,
//! all at once, blue-green and canary, and the time each rollout step takes beyond its
//! pause. The measuring program is `stella-tests`' `bench-rollout` (the control plane
//! and an agent in its process, two Docker targets, a registry and nginx or HAProxy,
//! as in `tests/tests/rollouts`); it runs the `stella` CLI built beside it.

use clap::Args;

use crate::cargo::{cargo, run_checked, step};

/// Flags of `cargo xtask bench rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// The router in front of the targets.
    #[arg(long, default_value = "nginx", value_parser = ["nginx", "haproxy"])]
    router: String,
    /// Seconds of load with no deployment (the floor the strategies are compared to).
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
}

/// Builds the CLI and runs the measuring program, in release mode.
pub fn run(args: &RolloutArgs) -> anyhow::Result<()> {
    step("bench rollout: release build of the stella CLI");
    run_checked(cargo().args(["build", "--release", "--package", "stella-cli"]))?;
    step("bench rollout: release build and run");
    let status = cargo()
        .args([
            "run",
            "--release",
            "--package",
            "stella-tests",
            "--bin",
            "bench-rollout",
            "--",
            "--router",
            &args.router,
            "--idle-seconds",
            &args.idle_seconds.to_string(),
        ])
        .env("STELLA_TEST_LOG", "warn")
        .status()?;
    anyhow::ensure!(status.success(), "bench-rollout failed ({status})");
    Ok(())
}
