//! The TaskRunner API (`/v1/task-runner/…` and `/.well-known/openapi`): simulations,
//! runs, logs (NDJSON, followed live with `?follow=true`), artifacts, approvals and
//! cancel, exactly as the TaskRunner OpenAPI contract (`openapi/taskrunner.yaml`,
//! served at `/v1/task-runner/openapi.yaml`) gives them.
//!
//! Every request names its tenant in `X-StellaOps-Tenant` (`default` when absent) and
//! sees that tenant's runs only. Callers authenticate with Stella's bearer tokens;
//! [`scopes_of`] maps their roles onto the contract's scopes.
//!
//! Extensions beyond the contract: `GET /v1/task-runner/runs` (the tenant's runs),
//! `GET /v1/task-runner/runs/{runId}/artifacts/{name}` (an artifact's content), and
//! `status`/`tenant` in `RunStateResponse`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Digest as _;
use stella_packs::PlanErrors;

use super::envelope::{ApiError, ApiQuery, ApiResult, Caller};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::runs::{valid_tenant, RunRequestError, RunView};
use crate::app::App;
use crate::domain::{Role, RunArtifact, RunLogLine, DEFAULT_TENANT};
use crate::error::{AppError, ErrorKind};

/// The TaskRunner contract, as served.
pub const SPEC_YAML: &str = include_str!("../../openapi/taskrunner.yaml");
/// Where it is served.
pub const SPEC_PATH: &str = "/v1/task-runner/openapi.yaml";
/// The tenant header.
pub const TENANT_HEADER: &str = "x-stellaops-tenant";

/// The contract's OAuth2 scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `taskrunner.viewer`: read runs, logs, artifacts; simulate.
    Viewer,
    /// `taskrunner.operator`: create and cancel runs, apply approvals.
    Operator,
    /// `taskrunner.admin`: everything.
    Admin,
}

impl Scope {
    /// The scope's name in the contract.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Viewer => "taskrunner.viewer",
            Scope::Operator => "taskrunner.operator",
            Scope::Admin => "taskrunner.admin",
        }
    }
}

/// The scopes Stella's roles grant: viewer and approver → viewer; operator → viewer and
/// operator; admin → all three. The one place the mapping lives: OAuth2 tokens that
/// carry `taskrunner.*` scopes grant them directly.
pub fn scopes_of(roles: &[Role]) -> Vec<Scope> {
    let mut scopes = Vec::new();
    for role in roles {
        let granted: &[Scope] = match role {
            Role::Viewer | Role::Approver => &[Scope::Viewer],
            Role::Operator => &[Scope::Viewer, Scope::Operator],
            Role::Admin => &[Scope::Viewer, Scope::Operator, Scope::Admin],
        };
        scopes.extend_from_slice(granted);
    }
    scopes.sort();
    scopes.dedup();
    scopes
}

/// The TaskRunner scopes a caller holds: those its roles grant, and for an OAuth2
/// access token also the `taskrunner.*` scopes it carries (each including the ones
/// below it: admin ⊇ operator ⊇ viewer).
fn granted(caller: &Caller) -> Vec<Scope> {
    let mut scopes = scopes_of(&caller.0.roles);
    if let crate::auth::Credential::AccessToken {
        scopes: carried, ..
    } = &caller.1
    {
        for scope in carried {
            let implied: &[Scope] = match scope {
                crate::domain::Scope::TaskRunnerViewer => &[Scope::Viewer],
                crate::domain::Scope::TaskRunnerOperator => &[Scope::Viewer, Scope::Operator],
                crate::domain::Scope::TaskRunnerAdmin => {
                    &[Scope::Viewer, Scope::Operator, Scope::Admin]
                }
                crate::domain::Scope::Stella(_) => &[],
            };
            scopes.extend_from_slice(implied);
        }
    }
    scopes.sort();
    scopes.dedup();
    scopes
}

/// The grants a caller holds, against which an approval's `grants` are checked: each of
/// its Stella roles by name and as `stella.<role>`, every TaskRunner scope it is granted
/// (`taskrunner.viewer|operator|admin`), the scopes its access token carries, and
/// `packs.approve` for approvers, admins and holders of `taskrunner.admin`. Admins hold
/// every grant (checked by the caller of this function).
fn held_grants(caller: &Caller) -> Vec<String> {
    let mut held: Vec<String> = Vec::new();
    for role in &caller.0.roles {
        held.push(role.to_string());
        held.push(format!("stella.{role}"));
    }
    let scopes = granted(caller);
    held.extend(scopes.iter().map(|scope| scope.name().to_owned()));
    if let crate::auth::Credential::AccessToken {
        scopes: carried, ..
    } = &caller.1
    {
        held.extend(carried.iter().map(|scope| scope.as_str().to_owned()));
    }
    if caller
        .0
        .roles
        .iter()
        .any(|role| matches!(role, Role::Approver | Role::Admin))
        || scopes.contains(&Scope::Admin)
    {
        held.push("packs.approve".to_owned());
    }
    held.sort();
    held.dedup();
    held
}

fn require(caller: &Caller, scope: Scope) -> ApiResult<()> {
    if granted(caller).contains(&scope) {
        return Ok(());
    }
    Err(ApiError(AppError::new(
        ErrorKind::PermissionDenied,
        "forbidden",
        format!(
            "this needs the scope {}, which neither your roles nor your token's scopes grant",
            scope.name()
        ),
    )))
}

/// The request's tenant: `X-StellaOps-Tenant`, `default` when absent.
fn tenant(headers: &HeaderMap) -> ApiResult<String> {
    let Some(value) = headers.get(TENANT_HEADER) else {
        return Ok(DEFAULT_TENANT.to_owned());
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(DEFAULT_TENANT.to_owned());
    }
    if !valid_tenant(text) {
        return Err(ApiError(AppError::invalid(
            "X-StellaOps-Tenant must be a slug: letters, digits, `-`, `_` and `.`, at most 128 characters",
        )));
    }
    Ok(text.to_owned())
}

/// The tenant of a simulation or run request, whose 400s are `PlanErrorResponse`s.
fn plan_tenant(
    caller: &Caller,
    scope: Scope,
    headers: &HeaderMap,
) -> Result<String, Box<Response>> {
    require(caller, scope).map_err(|e| Box::new(e.into_response()))?;
    tenant(headers).map_err(|error| {
        Box::new(plan_errors(&PlanErrors::one(
            "$.headers['X-StellaOps-Tenant']",
            error.0.message,
        )))
    })
}

/// A plan error response (400, `PlanErrorResponse`).
fn plan_errors(errors: &PlanErrors) -> Response {
    let mut response = (StatusCode::BAD_REQUEST, axum::Json(errors)).into_response();
    response.extensions_mut().insert(super::envelope::Enveloped);
    response
}

/// The body of a simulation or run request, read as the contract has it; what is
/// wrong with it is a `PlanErrorResponse` with JSON paths.
async fn read_body(app: &App, request: Request) -> Result<Map<String, Value>, Response> {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !content_type.starts_with("application/json") {
        return Err(plan_errors(&PlanErrors::one(
            "$",
            "the body must be JSON (`content-type: application/json`)",
        )));
    }
    let bytes = super::envelope::read_limited(
        &parts.headers,
        body,
        app.config.api_max_body_bytes,
        "api_max_body_bytes",
        &app.config,
    )
    .await
    .map_err(IntoResponse::into_response)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(plan_errors(&PlanErrors::one(
            "$",
            "the body must be a JSON object",
        ))),
        Err(error) => Err(plan_errors(&PlanErrors::one(
            "$",
            format!("malformed JSON: {error}"),
        ))),
    }
}

pub(crate) fn manifest_and_inputs(
    body: &Map<String, Value>,
) -> Result<(String, Map<String, Value>), PlanErrors> {
    let mut errors = Vec::new();
    let manifest = match body.get("manifest") {
        Some(Value::String(text)) => text.clone(),
        Some(_) => {
            errors.push(stella_packs::PlanError::new(
                "$.manifest",
                "must be a string (the manifest in YAML or JSON)",
            ));
            String::new()
        }
        None => {
            errors.push(stella_packs::PlanError::new("$.manifest", "is required"));
            String::new()
        }
    };
    let inputs = match body.get("inputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => {
            errors.push(stella_packs::PlanError::new(
                "$.inputs",
                "must be an object",
            ));
            Map::new()
        }
    };
    if errors.is_empty() {
        Ok((manifest, inputs))
    } else {
        Err(PlanErrors::new(errors))
    }
}

/// `POST /v1/task-runner/simulations`.
pub async fn simulate(
    State(tenants): State<Arc<crate::tenants::Tenants>>,
    caller: Result<Caller, ApiError>,
    request: Request,
) -> Response {
    let (app, caller) = match planning(&tenants, caller).await {
        Ok(scoped) => scoped,
        Err(response) => return *response,
    };
    if let Err(response) = plan_tenant(&caller, Scope::Viewer, request.headers()) {
        return *response;
    }
    let body = match read_body(&app, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (manifest, inputs) = match manifest_and_inputs(&body) {
        Ok(parts) => parts,
        Err(errors) => return plan_errors(&errors),
    };
    match app.simulate_pack(&manifest, &inputs) {
        Ok(simulation) => axum::Json(simulation).into_response(),
        Err(errors) => plan_errors(&errors),
    }
}

/// `POST /v1/task-runner/runs`: 201 with `Location`.
pub async fn create_run(
    State(tenants): State<Arc<crate::tenants::Tenants>>,
    caller: Result<Caller, ApiError>,
    request: Request,
) -> Response {
    let (app, caller) = match planning(&tenants, caller).await {
        Ok(scoped) => scoped,
        Err(response) => return *response,
    };
    let tenant = match plan_tenant(&caller, Scope::Operator, request.headers()) {
        Ok(tenant) => tenant,
        Err(response) => return *response,
    };
    let body = match read_body(&app, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (manifest, inputs) = match manifest_and_inputs(&body) {
        Ok(parts) => parts,
        Err(errors) => return plan_errors(&errors),
    };
    let run_id = match body.get("runId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return plan_errors(&PlanErrors::one("$.runId", "must be a string")),
    };
    // `tenantId` in the body must agree with the header's tenant when both are given.
    let tenant = match body.get("tenantId") {
        None | Some(Value::Null) => tenant,
        Some(Value::String(t)) if t.is_empty() => tenant,
        Some(Value::String(t)) if tenant == DEFAULT_TENANT && valid_tenant(t) => t.clone(),
        Some(Value::String(t)) if *t == tenant => tenant,
        Some(Value::String(t)) => {
            return plan_errors(&PlanErrors::one(
                "$.tenantId",
                format!("tenant `{t}` differs from the X-StellaOps-Tenant header (`{tenant}`)"),
            ))
        }
        Some(_) => return plan_errors(&PlanErrors::one("$.tenantId", "must be a string")),
    };
    // A body's tenant other than the request's: the run is that tenant's, created with
    // the caller's roles there, as if the header had named it.
    let (app, caller) = if tenant == caller.tenant().as_str() {
        (app, caller)
    } else {
        match in_body_tenant(&tenants, caller, &tenant).await {
            Ok(scoped) => scoped,
            Err(error) => return error.into_response(),
        }
    };
    if let Err(error) = require(&caller, Scope::Operator) {
        return error.into_response();
    }
    match app
        .create_run(&tenant, run_id, &manifest, &inputs, &caller.0)
        .await
    {
        Ok(view) => {
            let location = format!("/v1/task-runner/runs/{}", view.run.id);
            let mut response = (StatusCode::CREATED, axum::Json(run_state(&view))).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(http::header::LOCATION, value);
            }
            response
        }
        Err(RunRequestError::Plan(errors)) => plan_errors(&errors),
        Err(RunRequestError::App(error)) => ApiError(error).into_response(),
    }
}

/// The `RunStateResponse` of a run (with `status` and `tenant`).
pub fn run_state(view: &RunView) -> Value {
    json!({
        "runId": view.run.id,
        "tenant": view.run.tenant,
        "status": view.run.status,
        "planHash": view.run.plan_hash,
        "failurePolicy": view.plan.plan.failure_policy,
        "createdAt": rfc3339(view.run.created_at_ms),
        "updatedAt": rfc3339(view.run.updated_at_ms),
        "steps": view.steps,
    })
}

/// Query of `GET /v1/task-runner/runs`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Most runs returned (default 100).
    pub limit: Option<i64>,
}

/// `GET /v1/task-runner/runs`: the tenant's runs, newest first (summary rows).
pub async fn list_runs(
    Scoped(app): Scoped,
    caller: Caller,
    headers: HeaderMap,
    query: Result<ApiQuery<ListQuery>, ApiError>,
) -> ApiResult<axum::Json<Value>> {
    // The scope first: a caller without it learns nothing of the query's rules.
    require(&caller, Scope::Viewer)?;
    let ApiQuery(query) = query?;
    let tenant = tenant(&headers)?;
    let runs = app.list_runs(&tenant, query.limit.unwrap_or(100)).await?;
    let rows: Vec<Value> = runs
        .iter()
        .map(|run| {
            json!({
                "runId": run.id,
                "tenant": run.tenant,
                "status": run.status,
                "planHash": run.plan_hash,
                "createdBy": run.created_by,
                "createdAt": rfc3339(run.created_at_ms),
                "updatedAt": rfc3339(run.updated_at_ms),
            })
        })
        .collect();
    Ok(axum::Json(Value::Array(rows)))
}

/// `GET /v1/task-runner/runs/{runId}`.
pub async fn show_run(
    Scoped(app): Scoped,
    caller: Caller,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    require(&caller, Scope::Viewer)?;
    let tenant = tenant(&headers)?;
    let view = app.run_view(&tenant, &run_id).await?;
    Ok(axum::Json(run_state(&view)))
}

/// Query of the log endpoint.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// Keep the response open and send lines as they are written, until the run ends.
    #[serde(default)]
    pub follow: bool,
}

fn log_entry(line: &RunLogLine) -> Value {
    let mut entry = json!({
        "timestamp": rfc3339(line.at_ms),
        "level": line.level,
        "eventType": line.event_type,
        "message": line.message,
    });
    if let Some(step) = &line.step_id {
        entry["stepId"] = json!(step);
    }
    if let Some(metadata) = &line.metadata {
        entry["metadata"] = Value::Object(metadata.clone());
    }
    entry
}

fn ndjson(lines: &[RunLogLine]) -> Bytes {
    let mut out = Vec::new();
    for line in lines {
        if serde_json::to_writer(&mut out, &log_entry(line)).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// `GET /v1/task-runner/runs/{runId}/logs`: NDJSON; with `?follow=true` the response
/// stays open, sending lines as they are stored, until the run has finished.
pub async fn run_logs(
    Scoped(app): Scoped,
    caller: Caller,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    query: Result<ApiQuery<LogQuery>, ApiError>,
) -> ApiResult<Response> {
    require(&caller, Scope::Viewer)?;
    let ApiQuery(query) = query?;
    let tenant = tenant(&headers)?;
    app.find_run(&tenant, &run_id).await?;
    let first = app.run_logs(&tenant, &run_id, None).await?;
    let mut last = first.last().map(|l| l.seq);
    let head = ndjson(&first);
    let content_type = [(http::header::CONTENT_TYPE, "application/x-ndjson")];
    if !query.follow {
        // Everything, not only the first page.
        let mut all = head.to_vec();
        let mut page = first.len();
        while page == 1000 {
            let more = app.run_logs(&tenant, &run_id, last).await?;
            last = more.last().map(|l| l.seq).or(last);
            page = more.len();
            all.extend_from_slice(&ndjson(&more));
        }
        return Ok((content_type, all).into_response());
    }
    struct Follow {
        app: Arc<App>,
        tenant: String,
        run_id: String,
        last: Option<i64>,
        done: bool,
    }
    let state = Follow {
        app,
        tenant,
        run_id,
        last,
        done: false,
    };
    let rest = futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            // Read the run first: lines written before it finished are read after.
            let finished = match s.app.find_run(&s.tenant, &s.run_id).await {
                Ok(run) => run.is_finished(),
                Err(_) => true,
            };
            let lines = s
                .app
                .run_logs(&s.tenant, &s.run_id, s.last)
                .await
                .unwrap_or_default();
            if let Some(line) = lines.last() {
                s.last = Some(line.seq);
            }
            if finished && lines.len() < 1000 {
                s.done = true;
            }
            if !lines.is_empty() {
                return Some((Ok::<_, std::io::Error>(ndjson(&lines)), s));
            }
            if s.done {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let stream = futures::StreamExt::chain(
        futures::stream::once(async move { Ok::<_, std::io::Error>(head) }),
        rest,
    );
    Ok((content_type, Body::from_stream(stream)).into_response())
}

fn artifact_json(artifact: &RunArtifact) -> Value {
    let mut value = json!({
        "name": artifact.name,
        "type": artifact.kind,
        "status": artifact.status,
    });
    for (key, field) in [
        ("sourcePath", &artifact.source_path),
        ("storedPath", &artifact.stored_path),
        ("notes", &artifact.notes),
        ("expressionJson", &artifact.expression_json),
    ] {
        if let Some(text) = field {
            value[key] = json!(text);
        }
    }
    if let Some(at) = artifact.captured_at_ms {
        value["capturedAt"] = json!(rfc3339(at));
    }
    value
}

/// `GET /v1/task-runner/runs/{runId}/artifacts`.
pub async fn list_artifacts(
    Scoped(app): Scoped,
    caller: Caller,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    require(&caller, Scope::Viewer)?;
    let tenant = tenant(&headers)?;
    let artifacts = app.run_artifacts(&tenant, &run_id).await?;
    Ok(axum::Json(Value::Array(
        artifacts.iter().map(artifact_json).collect(),
    )))
}

/// `GET /v1/task-runner/runs/{runId}/artifacts/{name}`: a file's bytes, or an object's
/// JSON value.
pub async fn download_artifact(
    Scoped(app): Scoped,
    caller: Caller,
    headers: HeaderMap,
    Path((run_id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    require(&caller, Scope::Viewer)?;
    let tenant = tenant(&headers)?;
    let artifact = app.run_artifact(&tenant, &run_id, &name).await?;
    if artifact.status != "captured" {
        return Err(ApiError(AppError::new(
            ErrorKind::NotFound,
            "artifact_not_captured",
            format!(
                "artifact `{name}` was not captured{}",
                artifact.notes.map(|n| format!(": {n}")).unwrap_or_default()
            ),
        )));
    }
    Ok(match (artifact.content, artifact.expression_json) {
        (Some(bytes), _) => (
            [(http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        (None, Some(json)) => {
            ([(http::header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        (None, None) => (
            [(http::header::CONTENT_TYPE, "application/octet-stream")],
            Vec::new(),
        )
            .into_response(),
    })
}

/// `ApprovalDecisionRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecisionRequest {
    /// `approved`, `rejected`, `expired`.
    pub decision: String,
    /// The plan hash the decision is for.
    pub plan_hash: String,
    /// Who decides (recorded with the decision; the authenticated user is recorded too).
    pub actor_id: Option<String>,
    /// Why.
    pub summary: Option<String>,
}

/// `POST /v1/task-runner/runs/{runId}/approvals/{approvalId}`.
pub async fn decide_approval(
    Scoped(app): Scoped,
    caller: Caller,
    headers: HeaderMap,
    Path((run_id, approval_id)): Path<(String, String)>,
    body: Result<super::envelope::ApiJson<ApprovalDecisionRequest>, ApiError>,
) -> ApiResult<axum::Json<Value>> {
    // The scope first: a caller without it learns nothing of the body's schema.
    require(&caller, Scope::Operator)?;
    let super::envelope::ApiJson(body) = body?;
    let tenant = tenant(&headers)?;
    if !matches!(body.decision.as_str(), "approved" | "rejected" | "expired") {
        return Err(ApiError(AppError::invalid(format!(
            "decision must be approved, rejected or expired, not `{}`",
            body.decision
        ))));
    }
    let valid_hash = body.plan_hash.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    });
    if !valid_hash {
        return Err(ApiError(AppError::invalid(
            "planHash must be `sha256:` and 64 lowercase hex digits",
        )));
    }
    let actor = match &body.actor_id {
        Some(actor) if actor.trim() != format!("user:{}", caller.0.name) => {
            format!("user:{} (as {})", caller.0.name, actor.trim())
        }
        _ => format!("user:{}", caller.0.name),
    };
    let outcome = app
        .decide_run_approval(
            &tenant,
            &run_id,
            crate::app::runs::RunDecision {
                approval_id,
                decision: body.decision,
                plan_hash: body.plan_hash,
                actor,
                summary: body.summary,
                grants_held: held_grants(&caller),
                holds_every_grant: caller.0.roles.contains(&Role::Admin),
            },
        )
        .await?;
    Ok(axum::Json(
        json!({"status": outcome.status, "resumed": outcome.resumed}),
    ))
}

/// `POST /v1/task-runner/runs/{runId}/cancel`: 202 with `Location`.
pub async fn cancel_run(
    Scoped(app): Scoped,
    caller: Caller,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    require(&caller, Scope::Operator)?;
    let tenant = tenant(&headers)?;
    let run = app.cancel_run(&tenant, &run_id, &caller.0).await?;
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "cancelled"})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/task-runner/runs/{}", run.id)) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    Ok(response)
}

/// `ETag` of the served contract: its SHA-256, quoted.
fn spec_etag() -> String {
    let digest = hex::encode(sha2::Sha256::digest(SPEC_YAML.as_bytes()));
    format!("\"{}\"", &digest[..32])
}

/// `GET /.well-known/openapi`: where the contract is, its ETag, and an Ed25519
/// signature of its bytes by the server's signing key (`ed25519:<key id>:<base64>`),
/// which `/api/v1/keys` lists.
pub async fn openapi_metadata(Scoped(app): Scoped) -> Response {
    let etag = spec_etag();
    let signature = format!(
        "ed25519:{}:{}",
        app.signer.key_id(),
        base64::engine::general_purpose::STANDARD.encode(app.signer.sign(SPEC_YAML.as_bytes()))
    );
    let body = json!({
        "specUrl": SPEC_PATH,
        "version": "0.1.0-draft",
        "buildVersion": env!("CARGO_PKG_VERSION"),
        "etag": etag,
        "signature": signature,
    });
    let mut response = axum::Json(body).into_response();
    for (name, value) in [("etag", &etag), ("x-signature", &signature)] {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// `GET /v1/task-runner/openapi.yaml`: the contract.
pub async fn openapi_spec() -> Response {
    let mut response = (
        [(http::header::CONTENT_TYPE, "application/yaml")],
        SPEC_YAML,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&spec_etag()) {
        response.headers_mut().insert(http::header::ETAG, value);
    }
    response
}

/// The core of the tenant a run's body names, and the caller with its roles there
/// (`403 tenant_forbidden` without any).
async fn in_body_tenant(
    tenants: &Arc<crate::tenants::Tenants>,
    caller: Caller,
    tenant: &str,
) -> Result<(Arc<App>, Caller), ApiError> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(tenant).map_err(|_| {
        ApiError(crate::error::AppError::invalid(format!(
            "invalid tenant `{}`",
            tenant.chars().take(80).collect::<String>()
        )))
    })?;
    headers.insert(super::tenancy::TENANT_HEADER, value);
    let (user, tenancy) =
        super::tenancy::resolve(tenants.default_app(), &headers, &caller.1, caller.0).await?;
    let app = tenants.get(&tenancy.tenant).await?;
    Ok((app, Caller(user, caller.1, tenancy)))
}

/// The caller of a simulation or run request and its tenant's core; a tenant header
/// that names no possible tenant is the contract's `PlanErrorResponse` (400), other
/// refusals the envelope.
async fn planning(
    tenants: &Arc<crate::tenants::Tenants>,
    caller: Result<Caller, ApiError>,
) -> Result<(Arc<App>, Caller), Box<Response>> {
    let caller = caller.map_err(|error| {
        Box::new(if error.0.code == "invalid_tenant" {
            plan_errors(&PlanErrors::one(
                "$.headers['X-StellaOps-Tenant']",
                error.0.message,
            ))
        } else {
            error.into_response()
        })
    })?;
    let app = tenants
        .get(caller.tenant())
        .await
        .map_err(|error| Box::new(ApiError(error).into_response()))?;
    Ok((app, caller))
}
