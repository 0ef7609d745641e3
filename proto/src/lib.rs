//! Wire types of the Stella agent protocol (`stella.agent.v1`), generated from
//! `proto/stella/agent/v1/agent.proto`. Only protocol definitions live here: domain types
//! are converted at the edges (the control plane's gateway and `agent-core`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `stella.agent.v1`: the agent gateway service and its messages.
pub mod agent {
    /// Version 1 of the agent protocol.
    pub mod v1 {
        tonic::include_proto!("stella.agent.v1");
    }
}

pub use agent::v1;
