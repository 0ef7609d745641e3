//! `cargo xtask bench deploy --kind compose`.

use super::deploy::DeployArgs;

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("cargo xtask bench deploy --kind compose is not built yet")
}
