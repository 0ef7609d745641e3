//! `cargo xtask bench deploy --kind ssh`.

use super::deploy::DeployArgs;

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("cargo xtask bench deploy --kind ssh is not built yet")
}
