//! Simulated agents: enrolment through the real gateway, then one mTLS `Connect`
//! session each that says `Hello`, heartbeats and answers tasks, as `stella-agent`
//! does. Many of them share one process (omicron's simulated sled agent idea), so they
//! are kept small: one task, one TLS connection and a two-slot queue per agent.

mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use stella_agent_core::transport::{self, GatewayUrl};
use stella_pki::{AgentKey, Fingerprint};
use stella_proto::v1::agent_gateway_client::AgentGatewayClient;
use stella_proto::v1::{EnrollRequest, Hello, HostFacts};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use session::{run_agent, SessionContext, SessionStats, TaskFrame, TaskLog};

use super::server::ServerProcess;
use crate::cargo::step;

/// TLS connections the enrolments share.
const ENROL_CONNECTIONS: usize = 4;
/// How long one `Enroll` call may take.
const ENROL_TIMEOUT: Duration = Duration::from_secs(60);
/// File descriptors each process needs besides one per agent (listeners, the
/// database, enrolment and API connections, the runtime).
const FD_HEADROOM: u64 = 200;
/// How often long phases print where they are.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// An enrolled simulated agent: its name and the mTLS config holding its certificate
/// (the id the server gave it is in that certificate; nothing here needs it).
#[derive(Debug)]
pub struct SimAgent {
    /// The name it enrolled with.
    pub name: String,
    tls: rustls::ClientConfig,
}

/// Enrols simulated agents over a few shared TLS connections (HTTP/2 multiplexes the
/// calls), pinning the CA like a real agent.
#[derive(Debug)]
pub struct Enroller {
    channels: Vec<Channel>,
    labels: HashMap<String, String>,
}

impl Enroller {
    /// Opens `connections` enrolment connections to the gateway.
    pub async fn new(
        gateway: &GatewayUrl,
        ca_pin: &Fingerprint,
        connections: usize,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let tls = stella_pki::enrolment_client_tls_config(ca_pin)?;
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            channels.push(transport::connect(gateway, tls.clone()).await?);
        }
        Ok(Enroller { channels, labels })
    }

    /// Enrols agent number `index` (named `sim-00001` for index 1) with `join_token`.
    pub async fn enrol(&self, index: usize, join_token: String) -> anyhow::Result<SimAgent> {
        let name = agent_name(index);
        let key = AgentKey::generate()?;
        let csr_der = key.csr_der(&name)?;
        let channel = self.channels[index % self.channels.len()].clone();
        let request = EnrollRequest {
            join_token,
            csr_der,
            name: name.clone(),
            labels: self.labels.clone(),
        };
        let response = tokio::time::timeout(
            ENROL_TIMEOUT,
            AgentGatewayClient::new(channel).enroll(request),
        )
        .await
        .with_context(|| format!("enrolling {name} took longer than {ENROL_TIMEOUT:?}"))?
        .with_context(|| format!("enrolling {name}"))?
        .into_inner();
        let tls = stella_pki::agent_client_tls_config(
            &response.ca_pem,
            &response.certificate_pem,
            &key.key_pem(),
        )?;
        Ok(SimAgent { name, tls })
    }
}

/// The name of agent number `index` (from 1).
pub fn agent_name(index: usize) -> String {
    format!("sim-{index:05}")
}

/// What the enrolment phase produced.
#[derive(Debug)]
pub struct Enrolment {
    /// The agents enrolled, in no particular order.
    pub agents: Vec<SimAgent>,
    /// How long it took.
    pub seconds: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// The gateway the server announces, and the CA fingerprint its agents pin.
pub async fn gateway_of(server: &ServerProcess) -> anyhow::Result<(GatewayUrl, Fingerprint)> {
    let info = server.gateway_info().await?;
    println!(
        "gateway {} (trust domain {}, ca {})",
        info.grpc_url, info.trust_domain, info.ca_fingerprint
    );
    let gateway = GatewayUrl::parse(&info.grpc_url)?;
    let ca_pin = Fingerprint::parse(&info.ca_fingerprint).with_context(|| {
        format!(
            "the server announced an invalid ca fingerprint `{}`",
            info.ca_fingerprint
        )
    })?;
    Ok((gateway, ca_pin))
}

/// Enrols `count` agents with `labels`, `concurrency` at a time over a few shared
/// connections, and prints how it went; fails when none could enrol.
pub async fn enrol_fleet(
    server: &ServerProcess,
    (gateway, ca_pin): (&GatewayUrl, &Fingerprint),
    count: usize,
    concurrency: usize,
    labels: &HashMap<String, String>,
) -> anyhow::Result<Enrolment> {
    step(&format!("enrol {count} agents ({concurrency} at a time)"));
    let enroller =
        Arc::new(Enroller::new(gateway, ca_pin, ENROL_CONNECTIONS, labels.clone()).await?);
    let enrolment = enrol_all(count, concurrency, server, &enroller).await;
    let enrolled = enrolment.agents.len();
    println!(
        "enrolled {enrolled}/{count} in {:.1} s ({:.1}/s)",
        enrolment.seconds,
        per_second(enrolled, enrolment.seconds)
    );
    if let Some(error) = &enrolment.first_error {
        println!("first enrolment error: {error}");
    }
    if enrolled == 0 {
        bail!("no agent could enrol");
    }
    Ok(enrolment)
}

/// Waits until `end`, printing the server's RSS and the sessions open every
/// [`PROGRESS_INTERVAL`]: buffers that fill slowly (HTTP/2 and gRPC read buffers) show
/// as a slope.
pub async fn watch_window(server: &ServerProcess, end: Instant, open: &AtomicUsize) {
    let start = Instant::now();
    loop {
        let now = Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep((end - now).min(PROGRESS_INTERVAL)).await;
        if let Ok(sample) = server.sample() {
            println!(
                "  +{:>4.0} s: server RSS {:.1} MiB, {} sessions open",
                start.elapsed().as_secs_f64(),
                sample.rss_kib as f64 / 1024.0,
                open.load(Ordering::Relaxed)
            );
        }
    }
}

/// Enrols agents 1 to `count`, `concurrency` at a time, each with a join token of its
/// own.
async fn enrol_all(
    count: usize,
    concurrency: usize,
    server: &ServerProcess,
    enroller: &Arc<Enroller>,
) -> Enrolment {
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let progress = tokio::spawn(print_progress("enrolled", done.clone(), count));
    // Each enrolment is its own task so both cores generate keys and run TLS;
    // `buffer_unordered` bounds how many exist at once.
    let results: Vec<anyhow::Result<SimAgent>> = futures::stream::iter(1..=count)
        .map(|index| {
            let enroller = enroller.clone();
            let done = done.clone();
            // A token per agent: join tokens are single use.
            let token = server.create_join_token(3600);
            async move {
                let token = token.await.context("creating a join token")?;
                let agent = tokio::spawn(async move { enroller.enrol(index, token).await })
                    .await
                    .context("enrolment task")??;
                done.fetch_add(1, Ordering::Relaxed);
                Ok(agent)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    let mut agents = Vec::with_capacity(results.len());
    let mut first_error = None;
    let mut failed = 0;
    for result in results {
        match result {
            Ok(agent) => agents.push(agent),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    if failed > 0 {
        println!("{failed} enrolments failed");
    }
    Enrolment {
        agents,
        seconds,
        first_error,
    }
}

/// An agent whose session runs: its name and what kills it.
#[derive(Debug)]
pub struct RunningAgent {
    /// The name it enrolled with.
    pub name: String,
    /// Drops its connection without `Goodbye`, as killing its process would.
    pub kill: CancellationToken,
}

/// Starts a session per agent, `concurrency` handshakes at a time, and waits until each
/// is welcomed or failed (or a deadline that grows with the count passed).
pub async fn connect_all(
    agents: Vec<SimAgent>,
    context: &Arc<SessionContext>,
    concurrency: usize,
) -> anyhow::Result<Vec<RunningAgent>> {
    let count = agents.len();
    let handshakes = Arc::new(Semaphore::new(concurrency));
    let mut running = Vec::with_capacity(count);
    for agent in agents {
        let permit = handshakes.clone().acquire_owned().await?;
        let kill = CancellationToken::new();
        running.push(RunningAgent {
            name: agent.name.clone(),
            kill: kill.clone(),
        });
        tokio::spawn(run_agent(agent, context.clone(), permit, kill));
    }
    let stats = &context.stats;
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(20) * count as u32;
    let mut last_progress = Instant::now();
    loop {
        let done = stats.welcomed.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
        if done >= count {
            break;
        }
        if Instant::now() >= deadline {
            println!("connect phase timed out with {done}/{count} sessions settled");
            break;
        }
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            println!(
                "  {} welcomed, {} failed",
                stats.welcomed.load(Ordering::Relaxed),
                stats.failed.load(Ordering::Relaxed)
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(running)
}

/// The `Hello` of every simulated agent: `capabilities` are the target kinds it drives.
pub fn hello(labels: HashMap<String, String>, capabilities: &[&str]) -> Hello {
    Hello {
        agent_version: concat!("xtask-sim/", env!("CARGO_PKG_VERSION")).to_owned(),
        capabilities: capabilities.iter().map(|&c| c.to_owned()).collect(),
        labels,
        host: Some(HostFacts {
            hostname: "sim-host".to_owned(),
            os_name: "Debian GNU/Linux".to_owned(),
            os_version: "12".to_owned(),
            kernel_version: "6.1.0".to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            cpu_count: 2,
            memory_total_bytes: 4 << 30,
            boot_time_unix_seconds: 1_700_000_000,
        }),
        in_flight: Vec::new(),
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; the server, a child,
/// inherits it. Fails when `count` agents cannot fit.
pub fn raise_fd_limit(count: usize) -> anyhow::Result<u64> {
    step("file descriptor limit");
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let soft = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise RLIMIT_NOFILE")?;
    let needed = count as u64 + FD_HEADROOM;
    println!(
        "open files: soft {soft}, hard {hard}; {count} agents need about {needed} per process"
    );
    if soft < needed {
        bail!(
            "{count} agents need about {needed} open files in this process and in the server, \
             but the limit is {soft} (hard limit {hard}); raise the hard limit \
             (`ulimit -Hn`, limits.conf, or the container's nofile) or use at most {} agents",
            soft.saturating_sub(FD_HEADROOM)
        );
    }
    Ok(soft)
}

/// Prints `what done/total` every [`PROGRESS_INTERVAL`] until aborted.
pub async fn print_progress(what: &'static str, done: Arc<AtomicUsize>, total: usize) {
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        println!("  {what} {}/{total}", done.load(Ordering::Relaxed));
    }
}

/// `count / seconds`, 0 for no time.
pub fn per_second(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}
