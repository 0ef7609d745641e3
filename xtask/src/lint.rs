//! `cargo xtask lint`: the checks CI runs, in the same order.

use crate::cargo::{cargo, run_checked, step};

/// Runs rustfmt in check mode, then clippy over every target with warnings denied.
pub fn run() -> anyhow::Result<()> {
    step("rustfmt");
    run_checked(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("clippy");
    run_checked(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("\nlint: ok");
    Ok(())
}
