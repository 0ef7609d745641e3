//! The `compose` target kind: a Docker Compose project on the agent's host, deployed from
//! `compose.stella.lock.yml`, the operator's file with every image the release covers
//! pinned by digest.

/// The kind name.
pub const KIND: &str = "compose";
