//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (libFuzzer through cargo-fuzz)
//! one after the other, each for a time limit, and stops at the first crash, whose
//! input libFuzzer leaves under `fuzz/artifacts/<target>/`. The corpus each run grows
//! stays in `fuzz/corpus/<target>/` (not committed) and seeds the next run; inputs worth
//! keeping (crash reproducers, minimised) go to `fuzz/regressions/<target>/`, which the
//! `fuzz_regressions` tests of the decision, packs and control-plane crates replay on
//! every `cargo xtask test`.

use std::time::Instant;

use anyhow::bail;
use clap::Args;

use crate::cargo::{cargo, ensure_cargo_tool, run_checked, step, workspace_root};

/// The cargo-fuzz release installed when missing (builds with the workspace's 1.95).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every fuzz target, as named in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "scan_document",
    "evidence_packet",
    "offline_kit",
    "dsse_envelope",
    "freeze_window",
    "pack_manifest",
    "pack_expression",
    "canonical_json",
    "agent_message",
    "image_reference",
    "registry_response",
    "target_settings",
    "api_bodies",
];

/// Flags of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Parallel libFuzzer jobs per target.
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// The targets to run (default: all).
    targets: Vec<String>,
}

/// Runs the targets in turn; fails at the first that finds a crash.
pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    ensure_cargo_tool("fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    for target in &targets {
        if !TARGETS.contains(target) {
            bail!(
                "unknown fuzz target {target}: use one of {}",
                TARGETS.join(", ")
            );
        }
    }
    let fuzz_dir = workspace_root().join("fuzz");
    let mut summary = Vec::new();
    for target in targets {
        step(&format!("fuzz {target} for {} s", args.seconds));
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let regressions = fuzz_dir.join("regressions").join(target);
        let started = Instant::now();
        let mut command = cargo();
        // cargo-fuzz passes nightly-only flags (-Z sanitizer options); the one
        // toolchain here is stable, which accepts them under RUSTC_BOOTSTRAP.
        command
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&fuzz_dir)
            .args([
                "fuzz",
                "run",
                "--fuzz-dir",
                ".",
                "--sanitizer",
                "none",
                "--debug-assertions",
                target,
            ])
            .arg(&corpus);
        for extra in [&seeds, &regressions] {
            if extra.is_dir() {
                command.arg(extra);
            }
        }
        command.args([
            "--",
            &format!("-max_total_time={}", args.seconds),
            "-print_final_stats=1",
        ]);
        if args.jobs > 1 {
            command.args([
                format!("-jobs={}", args.jobs),
                format!("-workers={}", args.jobs),
            ]);
        }
        run_checked(&mut command)?;
        let files = std::fs::read_dir(&corpus).map_or(0, Iterator::count);
        summary.push(format!(
            "{target}: {:.0} s, 0 crashes, corpus {files} inputs",
            started.elapsed().as_secs_f64()
        ));
    }
    println!("\nfuzzing done:");
    for line in summary {
        println!("  {line}");
    }
    Ok(())
}
