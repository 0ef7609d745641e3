//! `cargo xtask bench offline`: an offline kit of a release of five images that share
//! their base layer — its size against the images' compressed layers (each image on
//! its own, and shared layers counted once), and the time to bundle it and to import it
//! into a second, empty control plane and registry (median of several rounds), plus a
//! second import of the same kit (nothing to do).
//!
//! Everything is real and local: two Debian `docker-registry` instances, busybox images
//! built with `docker import` and `docker commit`, the release `stella` binary as both
//! servers and as the CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use stella_tests::images::{push_image, WebImages};
use stella_tests::registry::TestRegistry;

use super::deploy::{docker, median};
use super::server::ServerProcess;
use crate::cargo::step;

/// Flags of `cargo xtask bench offline`.
#[derive(Debug, Args)]
pub struct OfflineArgs {
    /// Measured rounds of bundle and of import.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Images in the release (one base, the others built on it).
    #[arg(long, default_value_t = 5)]
    components: usize,
    /// Bytes of each derived image's own layer (random, so it does not compress).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    layer_bytes: usize,
    /// Use this `stella` binary instead of building `target/release/stella`.
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Skip the release build.
    #[arg(long)]
    no_build: bool,
}

/// Runs the bench and prints the figures.
pub fn run(args: &OfflineArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.components < 2 {
        bail!("--rounds must be at least 1 and --components at least 2");
    }
    let binary = match &args.server_binary {
        Some(path) => path.clone(),
        None => super::server::server_binary(args.no_build)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(bench(args, &binary))
}

/// The CLI aimed at one server, with a config dir (known keys) of the bench's own.
struct Cli<'a> {
    binary: &'a Path,
    api_url: String,
    token: String,
    config_dir: PathBuf,
}

impl Cli<'_> {
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new(self.binary)
            .args(args)
            .env("STELLA_SERVER", &self.api_url)
            .env("STELLA_TOKEN", &self.token)
            .env("STELLA_CONFIG_DIR", &self.config_dir)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "stella {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

async fn start_server(binary: &Path, dir: &Path) -> anyhow::Result<ServerProcess> {
    std::fs::create_dir_all(dir)?;
    ServerProcess::start(binary, dir, "api_plain_http = true\n", None).await
}

async fn bench(args: &OfflineArgs, binary: &Path) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("stella-bench-offline-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let work = work.path();

    step("source registry and images");
    let registry = TestRegistry::start().await?;
    let suffix = format!("{:08x}", rand::random::<u32>());
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-bench/offline-{suffix}"),
        &registry.docker_config(),
    );
    let base = images.publish("v1", true).await?;
    let base_tag = format!("{}:v1", images.repository());
    let mut components = vec![("c0".to_owned(), base)];
    for index in 1..args.components {
        let tag = format!("{}-c{index}:v1", images.repository());
        let image = derived_image(
            &base_tag,
            &tag,
            args.layer_bytes,
            &registry.docker_config(),
            work,
        )
        .await?;
        components.push((format!("c{index}"), image));
    }

    step("source server and release");
    let source = start_server(binary, &work.join("source")).await?;
    let source_cli = Cli {
        binary,
        api_url: source.api_url().to_owned(),
        token: source.admin_token().to_owned(),
        config_dir: work.join("cli-config"),
    };
    let mut create = vec!["release", "create", "bench", "1"];
    let specs: Vec<String> = components
        .iter()
        .map(|(name, image)| format!("{name}={image}"))
        .collect();
    for spec in &specs {
        create.push("--component");
        create.push(spec);
    }
    source_cli.run(&create).await?;
    let key = work.join("source-key.pem");
    let pem = fetch_key(&source).await?;
    std::fs::write(&key, pem)?;

    step("bundle");
    let mut bundle_ms = Vec::new();
    let mut kit_path = PathBuf::new();
    let mut kit_hashes = Vec::new();
    for round in 0..args.rounds {
        let out = work.join(format!("kit-{round}.tar"));
        let out_arg = out.display().to_string();
        let started = Instant::now();
        source_cli
            .run(&[
                "-o",
                "json",
                "offline",
                "bundle",
                "--release",
                "bench@1",
                "--out",
                &out_arg,
            ])
            .await?;
        bundle_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        kit_hashes.push(sha256_file(&out)?);
        kit_path = out;
    }
    kit_hashes.dedup();
    if kit_hashes.len() != 1 {
        bail!("bundles of the same release differ: {kit_hashes:?}");
    }
    source.stop().await;
    drop(registry);

    let kit_bytes = std::fs::metadata(&kit_path)?.len();
    let (per_image, unique) = layer_sums(&kit_path)?;

    step("import into empty servers and registries");
    let mut import_ms = Vec::new();
    let mut again_ms = Vec::new();
    let kit_arg = kit_path.display().to_string();
    let key_arg = key.display().to_string();
    for round in 0..args.rounds {
        let registry = TestRegistry::start().await?;
        let target = start_server(binary, &work.join(format!("target-{round}"))).await?;
        let cli = Cli {
            binary,
            api_url: target.api_url().to_owned(),
            token: target.admin_token().to_owned(),
            config_dir: work.join(format!("target-{round}-cli")),
        };
        let registry_arg = format!("{}/mirror", registry.host());
        let import = [
            "-o",
            "json",
            "offline",
            "import",
            kit_arg.as_str(),
            "--registry",
            registry_arg.as_str(),
            "--key",
            key_arg.as_str(),
        ];
        let started = Instant::now();
        cli.run(&import).await?;
        import_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let again: Value = serde_json::from_str(&cli.run(&import).await?)?;
        again_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if again["changed"] != false {
            bail!("a second import changed something: {again}");
        }
        target.stop().await;
    }

    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!();
    println!(
        "offline kit of a release of {} images sharing their base layer ({} rounds, median)",
        args.components, args.rounds
    );
    println!(
        "  kit size                               {:>9.2} MiB ({kit_bytes} bytes)",
        mib(kit_bytes)
    );
    println!(
        "  compressed layers, image by image      {:>9.2} MiB",
        mib(per_image)
    );
    println!(
        "  compressed layers, shared ones once    {:>9.2} MiB",
        mib(unique)
    );
    println!(
        "  kit / shared-once layers               {:>9.3}",
        kit_bytes as f64 / unique.max(1) as f64
    );
    println!(
        "  bundle (stella offline bundle)         {:>9.0} ms",
        median(&mut bundle_ms)
    );
    println!(
        "  import into an empty server+registry   {:>9.0} ms",
        median(&mut import_ms)
    );
    println!(
        "  import again (nothing to do)           {:>9.0} ms",
        median(&mut again_ms)
    );
    Ok(())
}

/// The server's signing key (PEM) from `GET /api/v1/keys`.
async fn fetch_key(server: &ServerProcess) -> anyhow::Result<String> {
    let keys: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/keys", server.api_url()))
        .bearer_auth(server.admin_token())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    keys[0]["public_key_pem"]
        .as_str()
        .map(str::to_owned)
        .context("the server lists no signing key")
}

/// The sum of the compressed layers of every image in the kit, image by image, and
/// with each layer counted once.
fn layer_sums(kit: &Path) -> anyhow::Result<(u64, u64)> {
    let bytes = std::fs::read(kit)?;
    let files = stella_decision::offline::Kit::from_tar(&bytes)
        .map_err(|fault| anyhow::anyhow!("{fault}"))?
        .files;
    let index: Value = serde_json::from_slice(
        files
            .get("oci/index.json")
            .context("the kit has no oci/index.json")?,
    )?;
    let mut per_image = 0u64;
    let mut unique: BTreeMap<String, u64> = BTreeMap::new();
    for entry in index["manifests"].as_array().into_iter().flatten() {
        let digest = entry["digest"].as_str().unwrap_or_default();
        let manifest: Value = serde_json::from_slice(
            files
                .get(&format!(
                    "oci/blobs/sha256/{}",
                    digest.trim_start_matches("sha256:")
                ))
                .context("a manifest is missing from the kit")?,
        )?;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let size = layer["size"].as_u64().unwrap_or(0);
            per_image += size;
            unique.insert(
                layer["digest"].as_str().unwrap_or_default().to_owned(),
                size,
            );
        }
    }
    Ok((per_image, unique.values().sum()))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let output = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// An image made from `base` with one more layer of `bytes` random bytes, pushed as
/// `tag`; returns `repository@digest`.
async fn derived_image(
    base: &str,
    tag: &str,
    bytes: usize,
    docker_config: &Path,
    work: &Path,
) -> anyhow::Result<String> {
    let file = work.join("layer.bin");
    let content: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&file, content)?;
    let container = docker(&["create", base]).await?;
    let copied = docker(&[
        "cp",
        &file.display().to_string(),
        &format!("{container}:/www/layer.bin"),
    ])
    .await;
    let committed = match copied {
        Ok(_) => docker(&["commit", &container, tag]).await,
        Err(error) => Err(error),
    };
    docker(&["rm", "-f", &container]).await?;
    committed?;
    push_image(tag, docker_config).await
}
