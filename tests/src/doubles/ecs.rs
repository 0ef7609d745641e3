//! A test double of the Amazon ECS API, written from the public API reference: the
//! *Amazon Elastic Container Service API Reference* (API version 2014-11-13), sections
//! "Actions" — DescribeServices, DescribeTaskDefinition, RegisterTaskDefinition,
//! UpdateService, TagResource, UntagResource, ListTagsForResource — and "Data Types" —
//! Service, Deployment (`status`, `rolloutState`, `rolloutStateReason`, the counts),
//! TaskDefinition, ContainerDefinition, Tag; the protocol is "Making API requests"
//! (AWS JSON 1.1: `POST /`, `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Action>`,
//! `Content-Type: application/x-amz-json-1.1`, errors as `{"__type", "message"}` with
//! status 400).
//!
//! What it is for: rollouts that progress, complete, fail, and fail with the deployment
//! circuit breaker's rollback (Developer Guide, "Deployment circuit breaker": the failed
//! deployment's `rolloutState` is `FAILED` and a new `PRIMARY` deployment goes back to
//! the last completed task definition), which moto's ECS (rollout state fixed at
//! creation) cannot show. Each `DescribeServices` advances a rolling deployment by one
//! step, so a test decides how many polls a rollout takes.
//!
//! Not checked: request signatures (SigV4; the SDK signs, the double does not verify),
//! IAM, clusters (any name is one cluster), task placement. The API shape is
//! cross-checked by the same client against moto (`tests/tests/ecs_target/moto.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
const ACCOUNT: &str = "123456789012";

/// How the next deployments of a service go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutScript {
    /// `IN_PROGRESS` for `polls` DescribeServices calls, then `COMPLETED`.
    Complete {
        /// Polls before completion.
        polls: u32,
    },
    /// `IN_PROGRESS` for `polls` calls, then `FAILED` (circuit breaker without rollback).
    Fail {
        /// Polls before the failure.
        polls: u32,
    },
    /// `IN_PROGRESS` for `polls` calls, then `FAILED` and a new `PRIMARY` deployment of
    /// the previous task definition, which completes after one more poll.
    FailAndRollBack {
        /// Polls before the failure.
        polls: u32,
    },
    /// `IN_PROGRESS` forever (a deploy timeout).
    Hang,
}

#[derive(Debug, Clone)]
struct Deployment {
    id: String,
    status: String,
    task_definition: String,
    rollout_state: String,
    reason: String,
    desired: i64,
    running: i64,
    failed: i64,
    polls: u32,
    script: RolloutScript,
}

#[derive(Debug, Clone)]
struct Service {
    arn: String,
    name: String,
    cluster: String,
    status: String,
    desired: i64,
    task_definition: String,
    deployments: Vec<Deployment>,
}

#[derive(Debug, Default)]
struct State {
    /// Task definitions by ARN.
    task_definitions: BTreeMap<String, Value>,
    /// Latest revision per family.
    revisions: BTreeMap<String, u32>,
    services: BTreeMap<String, Service>,
    tags: BTreeMap<String, BTreeMap<String, String>>,
    script: Option<RolloutScript>,
    next_id: u64,
    calls: BTreeMap<String, u64>,
}

/// A running double, on a loopback port, stopped on drop.
#[derive(Debug)]
pub struct EcsDouble {
    /// `http://127.0.0.1:PORT`: the `endpoint_url` of a target.
    pub url: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for EcsDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl EcsDouble {
    /// Starts the double.
    pub async fn start() -> anyhow::Result<EcsDouble> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = shared.clone();
            async move { handle(&state, &headers, &body) }
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(EcsDouble { url, state, server })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a task definition of `family` with `containers` (name, image); returns
    /// its ARN.
    pub fn register(&self, family: &str, containers: &[(&str, &str)]) -> String {
        let containers: Vec<Value> = containers
            .iter()
            .map(|(name, image)| json!({"name": name, "image": image, "memory": 128, "essential": true}))
            .collect();
        register(
            &mut self.lock(),
            &json!({"family": family, "containerDefinitions": containers}),
        )["taskDefinition"]["taskDefinitionArn"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Creates an `ACTIVE` service running `task_definition` with a completed deployment.
    pub fn create_service(&self, cluster: &str, name: &str, task_definition: &str, desired: i64) {
        let mut state = self.lock();
        let deployment = new_deployment(&mut state, task_definition, desired, "PRIMARY");
        let deployment = Deployment {
            rollout_state: "COMPLETED".into(),
            running: desired,
            ..deployment
        };
        let service = Service {
            arn: format!("arn:aws:ecs:us-east-1:{ACCOUNT}:service/{cluster}/{name}"),
            name: name.to_owned(),
            cluster: cluster.to_owned(),
            status: "ACTIVE".into(),
            desired,
            task_definition: task_definition.to_owned(),
            deployments: vec![deployment],
        };
        state.services.insert(name.to_owned(), service);
    }

    /// How the next `UpdateService` deployments go ([`RolloutScript::Complete`] after 2
    /// polls unless set).
    pub fn script(&self, script: RolloutScript) {
        self.lock().script = Some(script);
    }

    /// The task definition a service runs now.
    pub fn service_task_definition(&self, name: &str) -> Option<String> {
        self.lock()
            .services
            .get(name)
            .map(|s| s.task_definition.clone())
    }

    /// The images of a task definition's containers, by container name.
    pub fn images(&self, task_definition: &str) -> BTreeMap<String, String> {
        let state = self.lock();
        let Some(definition) = state.task_definitions.get(task_definition) else {
            return BTreeMap::new();
        };
        definition["containerDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_owned(),
                    c["image"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// The tags of a resource.
    pub fn tags(&self, arn: &str) -> BTreeMap<String, String> {
        self.lock().tags.get(arn).cloned().unwrap_or_default()
    }

    /// The ARN of a service.
    pub fn service_arn(&self, name: &str) -> String {
        self.lock()
            .services
            .get(name)
            .map(|s| s.arn.clone())
            .unwrap_or_default()
    }

    /// How many times an action was called.
    pub fn calls(&self, action: &str) -> u64 {
        self.lock().calls.get(action).copied().unwrap_or(0)
    }

    /// Every task definition ARN, in registration order per family.
    pub fn task_definitions(&self) -> Vec<String> {
        self.lock().task_definitions.keys().cloned().collect()
    }
}

fn handle(state: &Mutex<State>, headers: &HeaderMap, body: &[u8]) -> Response {
    let action = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(TARGET_PREFIX))
        .unwrap_or("")
        .to_owned();
    let input: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) if body.is_empty() => json!({}),
        Err(error) => return fault("SerializationException", &error.to_string()),
    };
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *state.calls.entry(action.clone()).or_default() += 1;
    let result = match action.as_str() {
        "DescribeServices" => Ok(describe_services(&mut state, &input)),
        "DescribeTaskDefinition" => describe_task_definition(&state, &input),
        "RegisterTaskDefinition" => Ok(register(&mut state, &input)),
        "UpdateService" => update_service(&mut state, &input),
        "TagResource" => tag_resource(&mut state, &input),
        "UntagResource" => untag_resource(&mut state, &input),
        "ListTagsForResource" => Ok(
            json!({"tags": tag_list(state.tags.get(input["resourceArn"].as_str().unwrap_or("")))}),
        ),
        _ => Err((
            "InvalidAction".to_owned(),
            format!("the double does not implement {action:?}"),
        )),
    };
    match result {
        Ok(output) => (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            output.to_string(),
        )
            .into_response(),
        Err((kind, message)) => fault(&kind, &message),
    }
}

fn fault(kind: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response()
}

type Outcome = Result<Value, (String, String)>;

fn client_error(message: String) -> (String, String) {
    ("ClientException".to_owned(), message)
}

fn new_deployment(
    state: &mut State,
    task_definition: &str,
    desired: i64,
    status: &str,
) -> Deployment {
    state.next_id += 1;
    Deployment {
        id: format!("ecs-svc/{:019}", state.next_id),
        status: status.into(),
        task_definition: task_definition.to_owned(),
        rollout_state: "IN_PROGRESS".into(),
        reason: format!("ECS deployment ecs-svc/{:019} in progress.", state.next_id),
        desired,
        running: 0,
        failed: 0,
        polls: 0,
        script: state
            .script
            .clone()
            .unwrap_or(RolloutScript::Complete { polls: 2 }),
    }
}

/// One poll's progress of a service's rolling deployments.
fn advance(service: &mut Service, next_id: &mut u64) {
    let mut rollback_to = None;
    for deployment in service.deployments.iter_mut() {
        if deployment.rollout_state != "IN_PROGRESS" {
            continue;
        }
        deployment.polls += 1;
        let (limit, outcome) = match &deployment.script {
            RolloutScript::Complete { polls } => (*polls, "COMPLETED"),
            RolloutScript::Fail { polls } => (*polls, "FAILED"),
            RolloutScript::FailAndRollBack { polls } => (*polls, "ROLLBACK"),
            RolloutScript::Hang => (u32::MAX, "HANG"),
        };
        if deployment.polls < limit {
            deployment.running = (deployment.desired * i64::from(deployment.polls)
                / i64::from(limit.max(1)))
            .min(deployment.desired - 1)
            .max(0);
            continue;
        }
        match outcome {
            "COMPLETED" => {
                deployment.rollout_state = "COMPLETED".into();
                deployment.running = deployment.desired;
                deployment.reason = format!("ECS deployment {} completed.", deployment.id);
            }
            _ => {
                deployment.rollout_state = "FAILED".into();
                deployment.failed += 3;
                deployment.running = 0;
                deployment.reason = format!(
                    "ECS deployment circuit breaker: tasks failed to start.{}",
                    if outcome == "ROLLBACK" {
                        " Rolling back to the last completed deployment."
                    } else {
                        ""
                    }
                );
                if outcome == "ROLLBACK" {
                    rollback_to = Some(deployment.id.clone());
                }
            }
        }
    }
    let completed = service
        .deployments
        .iter()
        .find(|d| d.status == "PRIMARY" && d.rollout_state == "COMPLETED")
        .map(|d| d.id.clone());
    if let Some(id) = completed {
        // The old deployments are drained once the primary one completes.
        service.deployments.retain(|d| d.id == id);
    }
    if let Some(failed_id) = rollback_to {
        let previous = service
            .deployments
            .iter()
            .find(|d| d.id != failed_id && d.rollout_state == "COMPLETED")
            .map(|d| d.task_definition.clone());
        if let Some(previous) = previous {
            *next_id += 1;
            for d in service.deployments.iter_mut() {
                if d.id == failed_id {
                    d.status = "ACTIVE".into();
                }
            }
            service.deployments.retain(|d| d.id == failed_id);
            service.deployments.insert(
                0,
                Deployment {
                    id: format!("ecs-svc/{:019}", *next_id),
                    status: "PRIMARY".into(),
                    task_definition: previous.clone(),
                    rollout_state: "IN_PROGRESS".into(),
                    reason: format!("ECS deployment ecs-svc/{:019} in progress.", *next_id),
                    desired: service.desired,
                    running: 0,
                    failed: 0,
                    polls: 0,
                    script: RolloutScript::Complete { polls: 1 },
                },
            );
            service.task_definition = previous;
        }
    }
}

fn describe_services(state: &mut State, input: &Value) -> Value {
    let include_tags = input["include"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "TAGS"));
    let mut services = Vec::new();
    let mut failures = Vec::new();
    for name in input["services"].as_array().into_iter().flatten() {
        let name = name
            .as_str()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_owned();
        let mut next_id = state.next_id;
        let Some(service) = state.services.get_mut(&name) else {
            failures.push(json!({"arn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:service/{name}"), "reason": "MISSING"}));
            continue;
        };
        advance(service, &mut next_id);
        let service = service.clone();
        state.next_id = next_id;
        let mut value = service_json(&service);
        if include_tags {
            value["tags"] = tag_list(state.tags.get(&service.arn));
        }
        services.push(value);
    }
    json!({"services": services, "failures": failures})
}

fn service_json(service: &Service) -> Value {
    let running: i64 = service.deployments.iter().map(|d| d.running).sum();
    json!({
        "serviceArn": service.arn,
        "serviceName": service.name,
        "clusterArn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{}", service.cluster),
        "status": service.status,
        "desiredCount": service.desired,
        "runningCount": running,
        "pendingCount": 0,
        "launchType": "FARGATE",
        "taskDefinition": service.task_definition,
        "deploymentConfiguration": {
            "deploymentCircuitBreaker": {"enable": true, "rollback": true},
            "maximumPercent": 200,
            "minimumHealthyPercent": 100
        },
        "deployments": service.deployments.iter().map(|d| json!({
            "id": d.id,
            "status": d.status,
            "taskDefinition": d.task_definition,
            "desiredCount": d.desired,
            "pendingCount": (d.desired - d.running).max(0),
            "runningCount": d.running,
            "failedTasks": d.failed,
            "rolloutState": d.rollout_state,
            "rolloutStateReason": d.reason,
            "launchType": "FARGATE",
            "createdAt": 1.7e9,
            "updatedAt": 1.7e9
        })).collect::<Vec<_>>(),
        "createdAt": 1.7e9
    })
}

fn describe_task_definition(state: &State, input: &Value) -> Outcome {
    let wanted = input["taskDefinition"].as_str().unwrap_or("");
    let arn = resolve_task_definition(state, wanted)
        .ok_or_else(|| client_error(format!("Unable to describe task definition {wanted}.")))?;
    let mut output = json!({"taskDefinition": state.task_definitions[&arn]});
    if input["include"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "TAGS"))
    {
        output["tags"] = tag_list(state.tags.get(&arn));
    }
    Ok(output)
}

/// An ARN, `family:revision` or `family` (the latest revision).
fn resolve_task_definition(state: &State, wanted: &str) -> Option<String> {
    if state.task_definitions.contains_key(wanted) {
        return Some(wanted.to_owned());
    }
    let short = wanted.rsplit('/').next().unwrap_or(wanted);
    let (family, revision) = match short.rsplit_once(':') {
        Some((family, revision)) => (family, revision.parse().ok()?),
        None => (short, *state.revisions.get(short)?),
    };
    let arn = task_definition_arn(family, revision);
    state.task_definitions.contains_key(&arn).then_some(arn)
}

fn task_definition_arn(family: &str, revision: u32) -> String {
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{family}:{revision}")
}

fn register(state: &mut State, input: &Value) -> Value {
    let family = input["family"].as_str().unwrap_or("family").to_owned();
    let revision = state.revisions.get(&family).copied().unwrap_or(0) + 1;
    state.revisions.insert(family.clone(), revision);
    let arn = task_definition_arn(&family, revision);
    let mut definition = input.clone();
    if let Some(object) = definition.as_object_mut() {
        object.remove("tags");
        object.insert("taskDefinitionArn".into(), json!(arn));
        object.insert("revision".into(), json!(revision));
        object.insert("status".into(), json!("ACTIVE"));
    }
    state
        .task_definitions
        .insert(arn.clone(), definition.clone());
    let tags = tag_map(&input["tags"]);
    if !tags.is_empty() {
        state.tags.insert(arn, tags);
    }
    json!({"taskDefinition": definition, "tags": input["tags"].clone()})
}

fn update_service(state: &mut State, input: &Value) -> Outcome {
    let name = input["service"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_owned();
    if !state.services.contains_key(&name) {
        return Err((
            "ServiceNotFoundException".into(),
            "Service not found.".into(),
        ));
    }
    let task_definition = match input["taskDefinition"].as_str() {
        Some(wanted) => Some(
            resolve_task_definition(state, wanted)
                .ok_or_else(|| client_error(format!("TaskDefinition not found: {wanted}")))?,
        ),
        None => None,
    };
    let desired = state.services[&name].desired;
    let desired = input["desiredCount"].as_i64().unwrap_or(desired);
    let new = task_definition
        .as_ref()
        .filter(|td| **td != state.services[&name].task_definition)
        .cloned();
    let deployment = new
        .as_ref()
        .map(|td| new_deployment(state, td, desired, "PRIMARY"));
    let Some(service) = state.services.get_mut(&name) else {
        return Err((
            "ServiceNotFoundException".into(),
            "Service not found.".into(),
        ));
    };
    service.desired = desired;
    for d in service.deployments.iter_mut() {
        d.desired = desired;
    }
    if let (Some(td), Some(deployment)) = (new, deployment) {
        for d in service.deployments.iter_mut() {
            d.status = "ACTIVE".into();
        }
        service.deployments.insert(0, deployment);
        service.task_definition = td;
    } else if let Some(primary) = service.deployments.first_mut() {
        primary.running = desired;
    }
    Ok(json!({"service": service_json(service)}))
}

fn tag_resource(state: &mut State, input: &Value) -> Outcome {
    let arn = input["resourceArn"].as_str().unwrap_or("").to_owned();
    if !state.task_definitions.contains_key(&arn) && !state.services.values().any(|s| s.arn == arn)
    {
        return Err((
            "InvalidParameterException".into(),
            format!("unknown resource {arn}"),
        ));
    }
    let tags = state.tags.entry(arn).or_default();
    for (key, value) in tag_map(&input["tags"]) {
        tags.insert(key, value);
    }
    if tags.len() > 50 {
        return Err(("InvalidParameterException".into(), "too many tags".into()));
    }
    Ok(json!({}))
}

fn untag_resource(state: &mut State, input: &Value) -> Outcome {
    let arn = input["resourceArn"].as_str().unwrap_or("");
    if let Some(tags) = state.tags.get_mut(arn) {
        for key in input["tagKeys"].as_array().into_iter().flatten() {
            tags.remove(key.as_str().unwrap_or(""));
        }
    }
    Ok(json!({}))
}

fn tag_map(tags: &Value) -> BTreeMap<String, String> {
    tags.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["key"].as_str()?.to_owned(),
                t["value"].as_str().unwrap_or("").to_owned(),
            ))
        })
        .collect()
}

fn tag_list(tags: Option<&BTreeMap<String, String>>) -> Value {
    Value::Array(
        tags.into_iter()
            .flatten()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}
