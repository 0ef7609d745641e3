//! `stella-agent`: the agent on its own, for hosts that do not need the `stella` CLI.
//! Same flags as `stella agent run`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use stella_agent_core::AgentConfig;
use tokio_util::sync::CancellationToken;

/// Runs a Stella agent: enrols with a join token if its data dir holds no identity,
/// then keeps a mutually authenticated session with the control plane.
#[derive(Debug, Parser)]
#[command(name = "stella-agent", version)]
struct Args {
    /// REST URL of the control plane (the gateway is discovered from it).
    #[arg(long, env = "STELLA_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Gateway URL, instead of discovery.
    #[arg(long, env = "STELLA_GRPC_URL")]
    grpc_url: Option<String>,
    /// Where the agent keeps its key, certificate and task journal.
    #[arg(
        long,
        env = "STELLA_AGENT_DATA_DIR",
        default_value = "/var/lib/stella-agent"
    )]
    data_dir: PathBuf,
    /// One-time join token; needed only for the first start.
    #[arg(long, env = "STELLA_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Agent name (default: host name).
    #[arg(long)]
    name: Option<String>,
    /// Labels, `key=value`, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("label `{s}` is not key=value"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = AgentConfig::new(args.data_dir);
    config.server_url = Some(args.server);
    config.grpc_url = args.grpc_url;
    config.join_token = args.join_token;
    config.name = args.name;
    config.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    let shutdown = CancellationToken::new();
    stella_agent::cancel_on_signals(shutdown.clone());
    stella_agent::run(config, shutdown)
        .await
        .context("agent stopped")
}
