//! The router kinds this agent drives (RFC 0005): `stella-routers`' nginx and HAProxy
//! routers, made from a router object's settings. Traefik and AWS ALB are generators
//! only in that crate (nothing applies their documents yet), so no agent advertises them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stella_agent_core::{Router, RouterKind, TargetRegistry};
use stella_routers::haproxy::{HaproxyRouter, HaproxySettings};
use stella_routers::nginx::{NginxRouter, NginxSettings};

/// nginx routers: one route file per route, `nginx -t`, a graceful reload.
#[derive(Debug)]
pub struct NginxKind;

impl RouterKind for NginxKind {
    fn kind(&self) -> &'static str {
        stella_routers::nginx::KIND
    }

    fn router(&self, settings: &serde_json::Value) -> Result<Arc<dyn Router>, String> {
        let settings: NginxSettings =
            serde_json::from_value(settings.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(NginxRouter::new(settings)))
    }
}

/// HAProxy routers: server slots set through the Runtime API, no reload.
#[derive(Debug)]
pub struct HaproxyKind;

impl RouterKind for HaproxyKind {
    fn kind(&self) -> &'static str {
        stella_routers::haproxy::KIND
    }

    fn router(&self, settings: &serde_json::Value) -> Result<Arc<dyn Router>, String> {
        let settings: HaproxySettings =
            serde_json::from_value(settings.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(HaproxyRouter::new(&settings)))
    }
}

/// Registers the router kinds whose server is installed on this host, so the agent
/// never advertises a router it cannot drive: nginx when an `nginx` binary is at
/// Debian's path or on `PATH`, HAProxy likewise for `haproxy` (its router only speaks
/// to the admin socket, but that socket belongs to a HAProxy on this host).
pub fn register_installed(registry: &mut TargetRegistry) {
    if installed("nginx") {
        registry.register_router(Arc::new(NginxKind));
    } else {
        tracing::info!("no nginx binary on this host; this agent does not drive nginx routers");
    }
    if installed("haproxy") {
        registry.register_router(Arc::new(HaproxyKind));
    } else {
        tracing::info!("no haproxy binary on this host; this agent does not drive haproxy routers");
    }
}

/// Whether `binary` is in `/usr/sbin` (where Debian installs both) or on `PATH`.
fn installed(binary: &str) -> bool {
    let debian = Path::new("/usr/sbin").join(binary);
    debian.is_file()
        || std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir: PathBuf| dir.join(binary).is_file())
        })
}
