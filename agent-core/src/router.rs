//! Routers beside targets (RFC 0005): the kinds of router an agent drives, and the
//! answer to a `RouteUpdate`. The [`Router`] trait itself is `stella-routers`'; what
//! agent-core adds is [`RouterKind`], which makes a router from the settings a
//! `RouteUpdate` carries, and [`RouterRegistry`], which keeps the kinds an agent
//! advertises (as `router:KIND` capabilities) and one router per set of settings.
//!
//! Nothing about a route is kept here: the router is where a route lives, and a
//! request lost with a session is asked again by whoever asked it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use stella_proto::v1;
pub use stella_routers::Router;
use stella_routers::{error_chain, Backend, RouteSpec, RouterError};

/// The prefix of router kinds among an agent's capabilities, keeping them apart from
/// target kinds: `router:nginx`.
pub const ROUTER_CAPABILITY_PREFIX: &str = "router:";

/// A kind of router this agent can drive (nginx, HAProxy): makes the [`Router`] that a
/// router object's settings describe.
pub trait RouterKind: Send + Sync + fmt::Debug {
    /// The kind: `nginx`, `haproxy`; advertised as `router:KIND`.
    fn kind(&self) -> &'static str;

    /// The router for `settings` (the kind's settings as a JSON object), or why the
    /// settings do not describe one.
    fn router(&self, settings: &serde_json::Value) -> Result<Arc<dyn Router>, String>;
}

/// The router kinds an agent drives, and the routers made so far.
#[derive(Debug, Clone, Default)]
pub struct RouterRegistry {
    kinds: BTreeMap<&'static str, Arc<dyn RouterKind>>,
    /// One router per kind and settings, made on first use and kept: a router
    /// serialises its own changes (nginx tests every route file with each change, so two
    /// applies must not interleave), which only holds if requests share it.
    made: Arc<Mutex<MadeRouters>>,
}

/// Routers made so far, by kind and settings (as JSON text).
type MadeRouters = HashMap<(String, String), Arc<dyn Router>>;

impl RouterRegistry {
    /// An empty registry: an agent that drives no router.
    pub fn new() -> Self {
        RouterRegistry::default()
    }

    /// Adds a router kind; returns the one it replaces, if any.
    pub fn register(&mut self, kind: Arc<dyn RouterKind>) -> Option<Arc<dyn RouterKind>> {
        self.kinds.insert(kind.kind(), kind)
    }

    /// The kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// The capabilities the kinds give the agent: `router:KIND`, sorted.
    pub fn capabilities(&self) -> Vec<String> {
        self.kinds
            .keys()
            .map(|kind| format!("{ROUTER_CAPABILITY_PREFIX}{kind}"))
            .collect()
    }

    /// The router of `kind` for `settings`, made once per distinct settings.
    fn router(&self, kind: &str, settings: &serde_json::Value) -> Result<Arc<dyn Router>, Failure> {
        let Some(maker) = self.kinds.get(kind) else {
            return Err(Failure::new(
                "unsupported",
                format!(
                    "this agent cannot drive routers of kind {kind:?} (it drives: {})",
                    if self.kinds.is_empty() {
                        "none".to_owned()
                    } else {
                        self.kinds().join(", ")
                    }
                ),
            ));
        };
        let key = (kind.to_owned(), settings.to_string());
        let mut made = self
            .made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(router) = made.get(&key) {
            return Ok(router.clone());
        }
        let router = maker
            .router(settings)
            .map_err(|reason| Failure::new("invalid", format!("router settings: {reason}")))?;
        made.insert(key, router.clone());
        Ok(router)
    }

    /// Carries out a `RouteUpdate` (an apply, or with `read_only` a read) and says how
    /// it went, as the `RouteResult` to send back.
    pub async fn answer(&self, update: &v1::RouteUpdate) -> v1::RouteResult {
        let outcome = self.carry_out(update).await;
        match outcome {
            Ok((live, method)) => match serde_json::to_vec(&live) {
                Ok(backends_json) => v1::RouteResult {
                    request_id: update.request_id.clone(),
                    ok: true,
                    backends_json,
                    method,
                    ..v1::RouteResult::default()
                },
                Err(error) => failure_result(
                    &update.request_id,
                    Failure::new("failed", format!("encoding the backends: {error}")),
                ),
            },
            Err(failure) => failure_result(&update.request_id, failure),
        }
    }

    async fn carry_out(&self, update: &v1::RouteUpdate) -> Result<(Vec<Backend>, String), Failure> {
        let settings: serde_json::Value = serde_json::from_slice(&update.settings_json)
            .map_err(|e| Failure::new("invalid", format!("router settings: {e}")))?;
        let router = self.router(&update.router_kind, &settings)?;
        let route = RouteSpec::new(&update.route).map_err(|e| Failure::from_router(&e))?;
        if update.read_only {
            let live = router
                .current(&route)
                .await
                .map_err(|e| Failure::from_router(&e))?;
            return Ok((live, String::new()));
        }
        let backends: Vec<Backend> = serde_json::from_slice(&update.backends_json)
            .map_err(|e| Failure::new("invalid", format!("backends: {e}")))?;
        let applied = router
            .apply(&route, &backends)
            .await
            .map_err(|e| Failure::from_router(&e))?;
        let method = serde_json::to_value(applied.method)
            .ok()
            .and_then(|m| m.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok((applied.live, method))
    }
}

/// A route request that failed: the wire's error kind and the message.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(kind: &'static str, message: String) -> Self {
        Failure { kind, message }
    }

    /// A router's error in the protocol's words (see `RouteResult.error_kind`).
    fn from_router(error: &RouterError) -> Self {
        let kind = match error {
            RouterError::Invalid(_) => "invalid",
            RouterError::NginxRejected { .. }
            | RouterError::HaproxyConfig(_)
            | RouterError::HaproxyRefused { .. } => "rejected",
            RouterError::PartlyApplied { .. } => "partly_applied",
            _ => "failed",
        };
        Failure::new(kind, error_chain(error))
    }
}

fn failure_result(request_id: &str, failure: Failure) -> v1::RouteResult {
    v1::RouteResult {
        request_id: request_id.to_owned(),
        ok: false,
        error_kind: failure.kind.to_owned(),
        message: failure.message,
        ..v1::RouteResult::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use stella_routers::{async_trait, Applied, ApplyMethod};

    use super::*;

    /// A router that keeps the last backends applied, in memory.
    #[derive(Debug, Default)]
    struct Recorder {
        live: Mutex<Vec<Backend>>,
    }

    #[async_trait]
    impl Router for Recorder {
        fn kind(&self) -> &'static str {
            "recorder"
        }
        async fn apply(
            &self,
            route: &RouteSpec,
            backends: &[Backend],
        ) -> Result<Applied, RouterError> {
            if route.name.as_str() == "refused" {
                return Err(RouterError::NginxRejected {
                    path: "/r/refused.conf".into(),
                    message: "[emerg] no".to_owned(),
                });
            }
            let mut live = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *live = backends.to_vec();
            Ok(Applied {
                live: live.clone(),
                method: ApplyMethod::Reload,
            })
        }
        async fn current(&self, _route: &RouteSpec) -> Result<Vec<Backend>, RouterError> {
            Ok(self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone())
        }
        async fn remove(&self, _route: &RouteSpec) -> Result<(), RouterError> {
            Ok(())
        }
    }

    /// Makes recorders, counting how many.
    #[derive(Debug, Default)]
    struct Recorders {
        made: AtomicUsize,
    }

    impl RouterKind for Arc<Recorders> {
        fn kind(&self) -> &'static str {
            "recorder"
        }
        fn router(&self, settings: &serde_json::Value) -> Result<Arc<dyn Router>, String> {
            if settings.get("bad").is_some() {
                return Err("bad is not a setting".to_owned());
            }
            self.made.fetch_add(1, Ordering::Relaxed);
            Ok(Arc::new(Recorder::default()))
        }
    }

    fn update(route: &str, settings: &str, backends: &str, read_only: bool) -> v1::RouteUpdate {
        v1::RouteUpdate {
            request_id: "r1".to_owned(),
            router_kind: "recorder".to_owned(),
            settings_json: settings.as_bytes().to_vec(),
            route: route.to_owned(),
            backends_json: backends.as_bytes().to_vec(),
            read_only,
        }
    }

    #[tokio::test]
    async fn one_router_per_settings_applies_and_reads_back() {
        let recorders = Arc::new(Recorders::default());
        let mut registry = RouterRegistry::new();
        registry.register(Arc::new(recorders.clone()));
        assert_eq!(registry.capabilities(), ["router:recorder"]);

        let backends = r#"[{"address":"127.0.0.1:8081","weight":90,"slot":"stable"}]"#;
        let applied = registry
            .answer(&update("web", r#"{"a":1}"#, backends, false))
            .await;
        assert!(applied.ok, "{applied:?}");
        assert_eq!(applied.method, "reload");
        let read = registry
            .answer(&update("web", r#"{"a":1}"#, "", true))
            .await;
        assert!(read.ok && read.method.is_empty(), "{read:?}");
        let live: Vec<Backend> = serde_json::from_slice(&read.backends_json).expect("backends");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].slot.as_deref(), Some("stable"));
        assert_eq!(
            recorders.made.load(Ordering::Relaxed),
            1,
            "one router, kept"
        );
        let other = registry
            .answer(&update("web", r#"{"a":2}"#, "", true))
            .await;
        assert!(other.ok && other.backends_json == b"[]", "{other:?}");
        assert_eq!(
            recorders.made.load(Ordering::Relaxed),
            2,
            "other settings, other router"
        );
    }

    #[tokio::test]
    async fn failures_carry_their_kind() {
        let mut registry = RouterRegistry::new();
        registry.register(Arc::new(Arc::new(Recorders::default())));
        let kind = |result: v1::RouteResult| {
            assert!(!result.ok);
            assert_eq!(result.request_id, "r1");
            (result.error_kind, result.message)
        };
        let one = r#"[{"address":"127.0.0.1:8081","weight":1}]"#;
        let (error, message) = kind(registry.answer(&update("refused", "{}", one, false)).await);
        assert_eq!(error, "rejected");
        assert!(message.contains("[emerg] no"), "{message}");
        assert_eq!(
            kind(registry.answer(&update("Web", "{}", one, false)).await).0,
            "invalid"
        );
        assert_eq!(
            kind(
                registry
                    .answer(&update("web", "{}", r#"[{"weight":1}]"#, false))
                    .await
            )
            .0,
            "invalid"
        );
        assert_eq!(
            kind(registry.answer(&update("web", "{", one, false)).await).0,
            "invalid"
        );
        assert_eq!(
            kind(
                registry
                    .answer(&update("web", r#"{"bad":1}"#, one, false))
                    .await
            )
            .0,
            "invalid"
        );
        let mut unknown = update("web", "{}", one, false);
        unknown.router_kind = "envoy".to_owned();
        let (error, message) = kind(registry.answer(&unknown).await);
        assert_eq!(error, "unsupported");
        assert!(message.contains("it drives: recorder"), "{message}");
    }
}
