//! The fault suite: scenarios that break a real control plane (a `stella server`
//! process) under load and count, afterwards, what was lost and what was done twice.
//! `cargo xtask faults` runs them at full size; `tests/tests/faults.rs` runs a short
//! form of each with `cargo xtask test`. See docs/faults.md.
//!
//! - [`sim`]: the `sim` target kind and the ledger of side effects at the targets;
//! - [`server`]: the server as a child process that can be SIGKILLed and restarted;
//! - [`disk_full`]: the SQLite data dir out of space, then freed;
//! - [`estate`]: environments with one `sim` target each, promotions, and the count
//!   of what was lost or duplicated;
//! - [`fleet`]: agents in this process (agent-core, the library `stella-agent` runs)
//!   driving `sim` targets;
//! - [`partition`]: the agents cut from the gateway (iptables) and healed;
//! - [`postgres_restart`]: PostgreSQL stopped and started again under API load;
//! - [`replica_kill`]: one of three replicas over PostgreSQL SIGKILLed, the agents
//!   behind a TCP [`balancer`];
//! - [`server_kill`]: SIGKILL of a single-node (SQLite) server during in-flight
//!   deployments.

pub mod balancer;
pub mod disk_full;
pub mod estate;
pub mod fleet;
pub mod partition;
pub mod postgres_restart;
pub mod replica_kill;
pub mod server;
pub mod server_kill;
pub mod sim;

use std::fmt;
use std::time::Duration;

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// The scenario's name.
    pub scenario: String,
    /// How many deployments (or requests) were under test.
    pub n: usize,
    /// Acknowledged work that did not end as acknowledged (a deployment that never
    /// succeeded, a task with no side effect).
    pub lost: usize,
    /// Work applied more than once at a target.
    pub duplicated: usize,
    /// From the fault's repair (restart, heal) until the server was ready again.
    pub ready_after: Option<Duration>,
    /// From the fault's repair until every deployment had finished.
    pub recovered_after: Option<Duration>,
    /// Further figures, `(name, value)`.
    pub extra: Vec<(String, String)>,
    /// What went wrong, one line each (empty on success).
    pub problems: Vec<String>,
}

impl Figures {
    /// Whether nothing was lost or duplicated and no problem was seen.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.problems.is_empty()
    }

    fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = |d: Option<Duration>| {
            d.map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        writeln!(f, "{}", self.scenario)?;
        writeln!(f, "  N                  {}", self.n)?;
        writeln!(f, "  lost               {}", self.lost)?;
        writeln!(f, "  duplicated         {}", self.duplicated)?;
        writeln!(f, "  ready after        {}", seconds(self.ready_after))?;
        writeln!(f, "  recovered after    {}", seconds(self.recovered_after))?;
        for (name, value) in &self.extra {
            writeln!(f, "  {name:<18} {value}")?;
        }
        for problem in self.problems.iter().take(20) {
            writeln!(f, "  problem: {problem}")?;
        }
        if self.problems.len() > 20 {
            writeln!(f, "  … and {} more problems", self.problems.len() - 20)?;
        }
        Ok(())
    }
}
