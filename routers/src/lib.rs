//! Routers: what sends a service's traffic to its versions by weight or by an A/B rule
//! (RFC 0005, increment 1, the agent side). Four kinds:
//!
//! - [`nginx::NginxRouter`]: one file per route (`upstream` blocks and a `map`), checked
//!   with `nginx -t`, swapped in by rename, reloaded gracefully. Tested against Debian's
//!   nginx.
//! - [`haproxy::HaproxyRouter`]: server slots declared in HAProxy's configuration, filled
//!   and weighted through the Runtime API on the admin socket, with no reload. Tested
//!   against Debian's HAProxy.
//! - [`traefik`]: the file provider's dynamic configuration (weighted services) — a
//!   generator only, **untested against a real Traefik**.
//! - [`alb`]: AWS ALB weighted forward actions (`ModifyListener` / `ModifyRule`
//!   documents) — a generator only, **untested against AWS**.
//!
//! The first two implement [`Router`]; the last two produce documents for something
//! else to send and do not.
//!
//! Architecture invariant: this crate knows the routers' configuration languages and
//! HAProxy's Runtime API, nothing of the control plane, the agent protocol or a
//! rollout's strategy. It does not decide weights; it applies them.

pub mod alb;
mod error;
mod files;
pub mod haproxy;
mod model;
pub mod nginx;
pub mod traefik;

use std::fmt;

pub use async_trait::async_trait;

pub use crate::error::{error_chain, RouterError};
pub use crate::model::{
    AbMatch, Address, Applied, ApplyMethod, Backend, MatchValue, RouteName, RouteSpec, Weight,
    MAX_WEIGHT,
};

/// A router that a route's backends are applied to (RFC 0005's `Router`).
///
/// The trait is object-safe (through `async_trait`, as agent-core's `Target` is): the
/// agent will hold the routers its settings name in one registry by kind and pick one
/// per route update at run time, which an enum would tie to this crate's list of kinds.
/// Each call is a process start and a reload, or socket round trips, so the boxed
/// future costs nothing that shows.
///
/// Implementations are idempotent: applying the same backends twice leaves the router
/// as one application does.
#[async_trait]
pub trait Router: Send + Sync + fmt::Debug {
    /// The kind: `nginx`, `haproxy`.
    fn kind(&self) -> &'static str;

    /// Makes `backends` the route's backends, all at once as far as the router allows
    /// (nginx: one file swapped in by rename and one reload; HAProxy: new servers made
    /// ready before weights move and old servers are put in maintenance), then reads them
    /// back. On an error the route serves what it served before, except after
    /// [`RouterError::PartlyApplied`] (a HAProxy command failed midway), which applying
    /// again repairs.
    async fn apply(&self, route: &RouteSpec, backends: &[Backend]) -> Result<Applied, RouterError>;

    /// The route's backends as the router has them now; empty when the route is not
    /// there (never applied, or removed).
    async fn current(&self, route: &RouteSpec) -> Result<Vec<Backend>, RouterError>;

    /// Takes the route away (nginx: its file; HAProxy: every server slot to maintenance
    /// and the A/B maps emptied). Removing a route that is not there is not an error.
    async fn remove(&self, route: &RouteSpec) -> Result<(), RouterError>;
}

/// Backends as `address=weight` pairs, for messages.
pub(crate) fn describe(backends: &[Backend]) -> String {
    let parts: Vec<String> = backends
        .iter()
        .map(|b| match &b.r#match {
            None => format!("{}={}", b.address, b.weight.get()),
            Some(_) => format!("{}={} (A/B)", b.address, b.weight.get()),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
