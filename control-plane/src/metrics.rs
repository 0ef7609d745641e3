//! Prometheus metrics of the control plane, in an explicit registry (no globals),
//! rendered at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a counted outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or the refusal code.
    pub outcome: String,
}

/// Labels of a refused authentication.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why it was refused, from a fixed set (`unknown_token`, `expired_token`,
    /// `revoked_token`, `invalid_jwt`, `expired_jwt`, `invalid_client`, …).
    pub reason: String,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Request method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a REST request's latency. Every value is from a small fixed set, so a
/// client cannot grow the number of series: the route is the template
/// (`/api/v1/agents/{agent}`), never the raw path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLatencyLabels {
    /// Request method (`other` for methods the API does not use).
    pub method: String,
    /// Route template, or `unmatched`.
    pub route: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status_class: String,
}

/// A latency histogram family; its constructor sets the buckets.
pub type LatencyFamily = Family<HttpLatencyLabels, Histogram, fn() -> Histogram>;

/// Buckets from 1 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
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
    /// Deployments, drift and dispatch.
    pub delivery: DeliveryMetrics,
    /// REST request latency by method, route template and status class.
    pub http_request_duration: LatencyFamily,
    /// REST connections open now.
    pub http_connections: Gauge,
    /// REST connections refused because `api_max_connections` were open and busy.
    pub http_connections_refused: Counter,
    /// Idle REST connections closed at the cap to make room for a new one.
    pub http_connections_evicted: Counter,
    /// TLS handshakes on the REST API that failed or timed out.
    pub api_tls_handshake_failures: Counter,
    /// Refused authentications (bearer tokens and OAuth2 clients) by reason.
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// Requests to the authentication endpoints refused by a rate limit (`ip`, `client`).
    pub auth_rate_limited: Family<OutcomeLabels, Counter>,
    /// Webhook delivery attempts by outcome (`delivered`, `retry`, `failed`).
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    /// Audit log appends by outcome (`ok`, `failed`): a failed one is an audited
    /// request missing from the log.
    pub audit_appends: Family<OutcomeLabels, Counter>,
    /// Audit checkpoints signed by outcome (`ok`, `failed`).
    pub audit_checkpoints: Family<OutcomeLabels, Counter>,
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
        let http_request_duration = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "REST request latency, from the request head to the response head",
            Unit::Seconds,
            http_request_duration.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "REST connections open",
            http_connections.clone(),
        );
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "REST connections refused at the connection cap",
            http_connections_refused.clone(),
        );
        let http_connections_evicted = Counter::default();
        registry.register(
            "http_connections_evicted",
            "Idle REST connections closed at the connection cap to make room",
            http_connections_evicted.clone(),
        );
        let api_tls_handshake_failures = Counter::default();
        registry.register(
            "api_tls_handshake_failures",
            "TLS handshakes on the REST API that failed or timed out",
            api_tls_handshake_failures.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Refused authentications (bearer tokens, OAuth2 clients) by reason",
            auth_failures.clone(),
        );
        let auth_rate_limited = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "auth_rate_limited",
            "Requests to authentication endpoints refused by a rate limit, by key kind",
            auth_rate_limited.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            webhook_deliveries.clone(),
        );
        let audit_appends = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "audit_appends",
            "Audit log appends by outcome; a failed one is an audited request missing from the log",
            audit_appends.clone(),
        );
        let audit_checkpoints = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "audit_checkpoints",
            "Signed audit checkpoints by outcome",
            audit_checkpoints.clone(),
        );
        let delivery = DeliveryMetrics::register(&mut registry);
        Metrics {
            registry,
            delivery,
            agent_sessions,
            heartbeats,
            heartbeat_flushes,
            enrolments,
            renewals,
            tls_handshake_failures,
            revoked_sessions_closed,
            http_requests,
            http_request_duration,
            http_connections,
            http_connections_refused,
            http_connections_evicted,
            api_tls_handshake_failures,
            auth_failures,
            auth_rate_limited,
            webhook_deliveries,
            audit_appends,
            audit_checkpoints,
        }
    }

    /// Counts a refused authentication.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
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

/// Labels of a finished deployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// `promotion`, `rollback` or `remediation`.
    pub kind: String,
    /// `succeeded`, `failed` or `cancelled`.
    pub outcome: String,
}

/// Labels of a drift finding.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `image_changed`, `missing`, …
    pub kind: String,
}

/// Labels of a promotion decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allowed`, `blocked`, `awaiting_approval`, `rejected`.
    pub outcome: String,
}

/// Seconds, for deployments: 0.5 s to about 2 h.
fn deployment_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 15))
}

/// Metrics of delivery: deployments, drift findings, task dispatch.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    /// Deployments finished, by kind and outcome.
    pub deployments_finished: Family<DeploymentLabels, Counter>,
    /// How long finished deployments took, by kind and outcome.
    pub deployment_duration_seconds: Family<DeploymentLabels, Histogram, fn() -> Histogram>,
    /// Drift findings reported by agents, by kind.
    pub drift_findings: Family<DriftLabels, Counter>,
    /// From a deployment accepted to its task on the agent's stream (first assignment).
    pub task_dispatch_latency_seconds: Histogram,
    /// Promotion evaluations, by outcome.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Dispatch notices (work created or cancelled on any replica) acted on here.
    pub dispatch_notices: Counter,
    /// Times the dispatch notice connection was lost and listened again.
    pub dispatch_listener_reconnects: Counter,
}

impl DeliveryMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = DeliveryMetrics {
            deployments_finished: Family::default(),
            deployment_duration_seconds: Family::new_with_constructor(
                deployment_duration_histogram as fn() -> Histogram,
            ),
            drift_findings: Family::default(),
            // 1 ms to about 16 s.
            task_dispatch_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            decisions: Family::default(),
            dispatch_notices: Counter::default(),
            dispatch_listener_reconnects: Counter::default(),
        };
        registry.register(
            "dispatch_notices",
            "Dispatch notices (tasks created or cancelled on any replica, PostgreSQL only) \
             acted on for agents connected here",
            metrics.dispatch_notices.clone(),
        );
        registry.register(
            "dispatch_listener_reconnects",
            "Times the connection listening for dispatch notices was lost and listened again",
            metrics.dispatch_listener_reconnects.clone(),
        );
        registry.register(
            "promotion_decisions",
            "Promotion evaluations, by outcome (awaiting_approval is not yet a decision)",
            metrics.decisions.clone(),
        );
        registry.register(
            "deployments_finished",
            "Deployments that finished, by kind and outcome",
            metrics.deployments_finished.clone(),
        );
        registry.register(
            "deployment_duration_seconds",
            "Duration of finished deployments, by kind and outcome",
            metrics.deployment_duration_seconds.clone(),
        );
        registry.register(
            "drift_findings",
            "Drift findings reported by agents, by kind",
            metrics.drift_findings.clone(),
        );
        registry.register(
            "task_dispatch_latency_seconds",
            "From a deployment accepted by the API to its task written to the agent's stream",
            metrics.task_dispatch_latency_seconds.clone(),
        );
        metrics
    }

    /// Counts a finished deployment and its duration.
    pub fn deployment_finished(&self, kind: &str, outcome: &str, duration_ms: i64) {
        let labels = DeploymentLabels {
            kind: kind.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.deployments_finished.get_or_create(&labels).inc();
        self.deployment_duration_seconds
            .get_or_create(&labels)
            .observe(millis_to_seconds(duration_ms));
    }

    /// Counts a promotion evaluation.
    pub fn decision_made(&self, outcome: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a drift finding.
    pub fn drift_found(&self, kind: &str) {
        self.drift_findings
            .get_or_create(&DriftLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records one task's dispatch latency.
    pub fn observe_dispatch_latency(&self, latency_ms: i64) {
        self.task_dispatch_latency_seconds
            .observe(millis_to_seconds(latency_ms));
    }
}

/// Milliseconds (never negative) as seconds.
fn millis_to_seconds(ms: i64) -> f64 {
    // Durations here are far below 2^52 ms, where f64 would round.
    #[allow(clippy::cast_precision_loss)]
    let seconds = ms.max(0) as f64 / 1000.0;
    seconds
}
