//! Prometheus metrics of the control plane, in an explicit registry (no globals),
//! rendered at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a counted outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or the refusal code.
    pub outcome: String,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Request method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Agent sessions open on this replica.
    pub agent_sessions: Gauge,
    /// Heartbeats received.
    pub heartbeats: Counter,
    /// Heartbeat batch writes to the store.
    pub heartbeat_flushes: Counter,
    /// Enrolment attempts by outcome.
    pub enrolments: Family<OutcomeLabels, Counter>,
    /// Certificate renewals by outcome.
    pub renewals: Family<OutcomeLabels, Counter>,
    /// TLS handshakes on the gateway that failed (bad, foreign or revoked certificates).
    pub tls_handshake_failures: Counter,
    /// Sessions closed because the agent was revoked.
    pub revoked_sessions_closed: Counter,
    /// REST requests by method and status.
    pub http_requests: Family<HttpLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `stella` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stella");
        let agent_sessions = Gauge::default();
        registry.register(
            "agent_sessions",
            "Agent sessions open on this replica",
            agent_sessions.clone(),
        );
        let heartbeats = Counter::default();
        registry.register("heartbeats", "Heartbeats received", heartbeats.clone());
        let heartbeat_flushes = Counter::default();
        registry.register(
            "heartbeat_flushes",
            "Batched heartbeat writes to the store",
            heartbeat_flushes.clone(),
        );
        let enrolments = Family::<OutcomeLabels, Counter>::default();
        registry.register("enrolments", "Enrolment attempts", enrolments.clone());
        let renewals = Family::<OutcomeLabels, Counter>::default();
        registry.register("renewals", "Certificate renewals", renewals.clone());
        let tls_handshake_failures = Counter::default();
        registry.register(
            "gateway_tls_handshake_failures",
            "Failed TLS handshakes on the agent gateway",
            tls_handshake_failures.clone(),
        );
        let revoked_sessions_closed = Counter::default();
        registry.register(
            "revoked_sessions_closed",
            "Agent sessions closed because of revocation",
            revoked_sessions_closed.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "REST requests", http_requests.clone());
        Metrics {
            registry,
            agent_sessions,
            heartbeats,
            heartbeat_flushes,
            enrolments,
            renewals,
            tls_handshake_failures,
            revoked_sessions_closed,
            http_requests,
        }
    }

    /// Counts an outcome in a family.
    pub fn count(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}
