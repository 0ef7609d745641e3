//! Agents in this process: each runs `stella_agent_core::run` (the library the
//! `stella-agent` binary runs, with its session, journal, epochs and drift loop) with
//! one [`SimTarget`] kind, all recording into one [`Ledger`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::server::Api;
use super::sim::{Ledger, SimTarget};
use crate::test_agent_config;

/// One agent of a [`Fleet`].
#[derive(Debug)]
pub struct FleetAgent {
    /// Its name (`sim-agent-00`, …).
    pub name: String,
    /// Its target kind, to tamper with its targets.
    pub sim: Arc<SimTarget>,
    task: JoinHandle<Result<(), stella_agent_core::AgentError>>,
}

/// Agents driving `sim` targets, stopped on drop.
#[derive(Debug)]
pub struct Fleet {
    /// The agents.
    pub agents: Vec<FleetAgent>,
    /// Every side effect at their targets.
    pub ledger: Arc<Ledger>,
    shutdown: CancellationToken,
}

impl Fleet {
    /// Enrols `count` agents (data dirs under `dir`) with the server at `api`, and waits
    /// until all are connected.
    pub async fn start(api: &Api, dir: &Path, count: usize) -> anyhow::Result<Self> {
        let ledger = Ledger::new();
        let shutdown = CancellationToken::new();
        let mut agents = Vec::with_capacity(count);
        for index in 0..count {
            let name = format!("sim-agent-{index:02}");
            let mut config = test_agent_config(&dir.join(&name));
            config.server_url = Some(api.base.clone());
            config.join_token = Some(api.join_token().await?);
            config.name = Some(name.clone());
            let sim = SimTarget::new(Arc::clone(&ledger));
            let task = tokio::spawn(stella_agent_core::run(
                config,
                sim.registry(),
                shutdown.clone(),
            ));
            agents.push(FleetAgent { name, sim, task });
        }
        for agent in &agents {
            api.wait_agent_state(&agent.name, "connected", Duration::from_secs(30))
                .await?;
        }
        Ok(Fleet {
            agents,
            ledger,
            shutdown,
        })
    }

    /// The name of the agent that drives target number `index`.
    pub fn agent_for(&self, index: usize) -> &FleetAgent {
        &self.agents[index % self.agents.len()]
    }

    /// Agents whose run ended (an agent gives up only when revoked or misconfigured).
    pub fn stopped(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|agent| agent.task.is_finished())
            .map(|agent| agent.name.clone())
            .collect()
    }

    /// Stops every agent cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for agent in std::mem::take(&mut self.agents) {
            let _ = agent.task.await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
