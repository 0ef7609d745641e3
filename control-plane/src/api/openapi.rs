//! The OpenAPI 3.1 document of the REST API, generated from the handlers' `#[utoipa::path]`
//! annotations and `///` docs, served at `/api/v1/openapi.json`.
//!
//! Errors every operation of a kind can answer are declared here once, by
//! [`CommonErrors`], rather than on each handler: `401` for every operation behind a
//! token, `400`/`408`/`413`/`415` for every one with a body, `400` for every one with a
//! query string. What only some operations answer (`403`, `404`, `409`, `422`) is on the
//! handlers.

use axum::Json;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::OpenApi;

use super::{
    agents, audit, clients, decisions, deployments, downloads, drift, envelope, environments,
    health, oauth, offline, promotions, registries, releases, routers, scans, targets, tenants,
    tokens, users, variables, webhooks,
};

/// The OpenAPI document of the REST API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Stella API",
        description = "Release control plane for container estates without Kubernetes.\n\n\
            Every call under `/api/v1/` but `/gateway`, `/downloads` and `/openapi.json` needs \
            `Authorization: Bearer <token>`: an API token, or an OAuth2 access token \
            from `POST /oauth/token` whose `stella.*` scopes stand for roles. A request acts \
            in the tenant `X-StellaOps-Tenant` names (`default` when absent), with the \
            caller's roles there. Errors are `{\"error\":{\"code\",\"message\",\
            \"traceId\"}}` with a fitting 4xx/5xx status; the trace id is also in the \
            `x-trace-id` header of every response and in the server's log line for the \
            request."
    ),
    paths(
        agents::list, agents::show, agents::revoke, agents::delete, agents::create_join_token,
        agents::gateway,
        users::create, users::list, users::update, users::delete, users::create_token,
        users::whoami, users::set_password, users::set_own_password,
        tenants::list, tenants::create, tenants::delete, tenants::list_bindings,
        tenants::bind, tenants::unbind,
        tokens::list_tokens, tokens::create_token, tokens::revoke_token,
        clients::create_client, clients::list_clients, clients::revoke_client,
        oauth::token, oauth::jwks, oauth::metadata,
        environments::create_environment, environments::list_environments,
        environments::show_environment, environments::update_environment,
        environments::delete_environment,
        variables::list_variables, variables::set_variable, variables::delete_variable,
        variables::set_secret, variables::delete_secret,
        targets::create_target, targets::list_targets, targets::show_target,
        targets::update_target, targets::delete_target, targets::check_target,
        targets::remediate_target,
        routers::create_router, routers::list_routers, routers::show_router,
        routers::delete_router, routers::apply_route, routers::show_route,
        registries::add_registry, registries::list_registries, registries::delete_registry,
        releases::create_release, releases::list_releases, releases::show_release,
        scans::import_scan, scans::show_scan,
        promotions::promote, promotions::list_promotions, promotions::show_promotion,
        promotions::approve_promotion, promotions::reject_promotion,
        decisions::show_decision, decisions::replay_decision, decisions::export_evidence,
        decisions::list_keys,
        offline::bundle_kit, offline::import_evidence, offline::list_imported_evidence,
        deployments::list_deployments, deployments::show_deployment,
        deployments::deployment_logs, deployments::cancel_deployment, deployments::move_rollout, deployments::rollback,
        drift::list_drift,
        downloads::list_downloads, downloads::get_download, downloads::agent_install_script,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::delete_webhook,
        webhooks::list_deliveries, webhooks::list_events,
        audit::list_audit, audit::list_audit_checkpoints,
        health::healthz, health::readyz, health::metrics, document,
    ),
    components(schemas(envelope::ErrorEnvelope, envelope::ErrorBody)),
    modifiers(&BearerAuth, &CommonErrors),
    tags(
        (name = "agents", description = "Agents, their enrolment and revocation"),
        (name = "users", description = "Users, roles and API tokens"),
        (name = "tenants", description = "Tenants, each a space of its own, and users' roles in them"),
        (name = "tokens", description = "API tokens: named, expiring, listed and revoked one by one"),
        (name = "clients", description = "OAuth2 clients (service accounts) of the client credentials grant"),
        (name = "oauth", description = "OAuth2 token endpoint (client credentials), JWK set and server metadata"),
        (name = "environments", description = "Environments and their promotion order"),
        (name = "targets", description = "Deployment targets, each driven by one agent"),
        (name = "routers", description = "Routers (nginx, HAProxy, Traefik, AWS ALB), each driven by one agent, and the weighted or A/B routes applied through them"),
        (name = "registries", description = "OCI registries and their credentials"),
        (name = "releases", description = "Releases: immutable sets of image digests"),
        (name = "scans", description = "Scan reports and VEX documents, and the findings of an image"),
        (name = "promotions", description = "Promoting a release to an environment: gates and approvals"),
        (name = "decisions", description = "Signed decision records, replay, evidence packets and the keys that verify them"),
        (name = "offline", description = "Offline kits: bundled and signed here, decision records imported from another server's kit"),
        (name = "deployments", description = "Deployments, their logs, and rollback"),
        (name = "drift", description = "Differences between what runs and what was deployed"),
        (name = "downloads", description = "Agent binaries, packages and the agent install script, served without a token"),
        (name = "webhooks", description = "Webhooks: signed deliveries of events, from a durable outbox"),
        (name = "events", description = "What operators are told about, in lists and through webhooks"),
        (name = "audit", description = "The tamper-evident audit log of every mutating call, and its signed checkpoints"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// This document.
///
/// The OpenAPI 3.1 description of every operation, generated from the server's code;
/// no token needed.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", operation_id = "getOpenApiDocument",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let scopes = crate::domain::Scope::ALL.map(|scope| {
            let description = match scope {
                crate::domain::Scope::Stella(role) => format!("the Stella role {role}"),
                other => format!("the TaskRunner API: {}", other.as_str()),
            };
            (scope.as_str(), description)
        });
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(utoipa::openapi::security::OAuth2::new([
                utoipa::openapi::security::Flow::ClientCredentials(
                    utoipa::openapi::security::ClientCredentials::new(
                        "/oauth/token",
                        utoipa::openapi::security::Scopes::from_iter(
                            scopes.iter().map(|(name, text)| (*name, text.as_str())),
                        ),
                    ),
                ),
            ])),
        );
    }
}

/// Declares the errors shared by every operation of a kind (see the module docs).
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            // The token endpoint takes a form and answers RFC 6749 errors, declared on it.
            if path.starts_with("/oauth/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                declare_common_errors(operation);
            }
        }
    }
}

fn declare_common_errors(operation: &mut Operation) {
    let secured = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let has_query = operation
        .parameters
        .iter()
        .flatten()
        .any(|parameter| matches!(parameter.parameter_in, ParameterIn::Query));
    let mut common = Vec::new();
    if secured {
        common.push((
            "401",
            "No, malformed or unknown bearer token (`unauthenticated`)",
        ));
    }
    if operation.request_body.is_some() {
        common.extend([
            (
                "400",
                "The body is malformed JSON (`malformed_json`), does not match the schema or \
                 has an unknown field (`invalid_body`), or a value is invalid \
                 (`invalid_argument` and more specific codes)",
            ),
            (
                "408",
                "The body did not arrive within `api_body_read_timeout_ms` (`request_timeout`)",
            ),
            (
                "413",
                "The body is larger than `api_max_body_bytes` (`payload_too_large`)",
            ),
            (
                "415",
                "The body is not `application/json` (`unsupported_media_type`)",
            ),
        ]);
    } else if has_query {
        common.push((
            "400",
            "The query string does not match its parameters (`invalid_query`)",
        ));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in common {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(error_response(description)));
    }
}

/// An error response: its description and the envelope.
fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .build(),
        )
        .build()
}
