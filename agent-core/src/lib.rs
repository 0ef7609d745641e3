//! Stella agent core: everything an agent does that does not depend on the kind of target
//! it drives.
//!
//! - [`enrol`]: a join token and a CSR (from a key generated here, which never leaves the
//!   host) for a certificate; the gateway is found by [`discover_gateway`] and trusted by
//!   the CA fingerprint the token pins.
//! - [`run`]: the mTLS `Connect` session: `Hello` with capabilities and host facts,
//!   heartbeats at the interval `Welcome` names, reconnects with exponential backoff and
//!   full jitter, certificate renewal at half-life ([`renew`]).
//! - The task [`Journal`]: a finished task is answered from disk and never executed twice;
//!   a task a crash interrupted runs again (targets are idempotent reconcilers).
//! - The [`Target`] trait that each target crate (`agents/*`) implements, and version
//!   [`Sticker`]s. Kinds that can ([`Target::supports_slots`]) deploy to slots beside a
//!   target's own deployment and retire them (`retire` tasks, [`RetireTask`]; RFC 0005).
//! - Routers beside targets (RFC 0005): the [`RouterKind`]s an agent drives (each makes
//!   a `stella-routers` [`Router`] from a router's settings), advertised as
//!   `router:KIND`, and the answer to a `RouteUpdate` ([`RouterRegistry`]).
//! - The drift loop: the desired state the server sends (`DesiredState`) is kept in
//!   `<data-dir>/desired.json`; every `drift_interval_seconds`, and soon after a target
//!   kind's [`Target::watch`] notifies, [`Target::detect_drift`] compares each target with
//!   it and the findings go to the server as `DriftReport`s.
//!
//! Data dir: `agent.json`, `agent.key`, `agent.pem`, `ca.pem` (the [`Identity`]),
//! `journal/` (the [`Journal`]) and `desired.json` (the desired state, without registry
//! credentials); see [`identity`].
//!
//! Architecture invariant: agent-core speaks gRPC to the gateway only, never to the
//! database or the REST API (except the unauthenticated gateway discovery), and knows no
//! target kind and no router kind (it knows `stella-routers`' trait, not its kinds).

mod backoff;
mod config;
mod desired;
mod drift;
mod enrol;
mod error;
mod fsutil;
mod host;
pub mod identity;
pub mod journal;
mod router;
mod session;
mod slot;
mod sticker;
mod target;
mod tasks;
pub mod transport;

pub use backoff::Backoff;
pub use config::{AgentConfig, BackoffConfig};
pub use drift::{sticker_drift, DriftFinding, DriftKind};
pub use enrol::{discover_gateway, enrol, renew, GatewayInfo};
pub use error::{error_chain, AgentError, TargetError};
pub use host::HostFacts;
pub use identity::Identity;
pub use journal::Journal;
pub use router::{Router, RouterKind, RouterRegistry, ROUTER_CAPABILITY_PREFIX};
pub use session::{run, DEFAULT_HEARTBEAT_INTERVAL};
pub use slot::{check_slot_name, STABLE_SLOT};
pub use sticker::{rfc3339_utc, Sticker, StickerFields};
pub use target::{
    registry_of, ApplyOutcome, ComponentSpec, DeployTask, Endpoint, ObservedComponent, Plan,
    Progress, RegistryCredential, RememberedSecrets, RetireTask, Target, TargetRegistry,
    TargetSpec,
};

/// Re-exported so target crates need not depend on tokio-util and async-trait themselves.
pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

/// Now as unix milliseconds, the unit of the protocol's `*_unix_ms` fields.
pub(crate) fn now_unix_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}
