//! The `ssh` target kind: hosts that run no agent, driven over SSH by one agent.

/// The kind name.
pub const KIND: &str = "ssh";
