//! A test double of the Nomad HTTP API, written from Nomad's public API documentation,
//! developer.hashicorp.com/nomad/api-docs: "HTTP API" (namespaces, regions, ACL tokens,
//! blocking queries and `X-Nomad-Index`), "Jobs" (create, list, read, versions,
//! deployments, latest deployment, allocations, evaluations, update, revert, stop/purge),
//! "Evaluations" (read), "Deployments" (read) and the allocation fields those answers
//! carry. It is not Nomad: no scheduler, no clients, no drivers. It is faithful where
//! Stella depends on it, and cross-checked with `python-nomad`, a real client
//! (`tests/tests/nomad_target/cross_check.rs`).
//!
//! Implemented:
//! - `PUT|POST /v1/jobs` and `POST|PUT /v1/job/:id` (register; `EnforceIndex` +
//!   `JobModifyIndex`), `GET /v1/jobs`, `GET /v1/job/:id`, `GET /v1/job/:id/versions`,
//!   `GET /v1/job/:id/deployment` (latest, `null` when none), `GET
//!   /v1/job/:id/deployments`, `GET /v1/job/:id/allocations`, `GET
//!   /v1/job/:id/evaluations`, `POST|PUT /v1/job/:id/revert` (`JobVersion`,
//!   `EnforcePriorVersion`), `DELETE /v1/job/:id` (stop; `?purge=true` purges), `GET
//!   /v1/evaluation/:id`, `GET /v1/deployment/:id`.
//! - Job versions: a registration whose spec equals the current one (server-managed
//!   fields aside) makes no new version, keeps `JobModifyIndex` and creates an
//!   evaluation but no deployment; any other makes version N+1.
//! - One global Raft-like index, bumped by every change, sent as `X-Nomad-Index` on
//!   every answer; blocking queries (`?index=N&wait=5s`) are held until the index
//!   passes N or `wait` ends (then answered with the unchanged state), as Nomad does.
//! - Evaluation → deployment → allocations: an evaluation is `pending`, then
//!   `complete` with the deployment of the new version; its task groups'
//!   `PlacedAllocs`, `HealthyAllocs`, `UnhealthyAllocs` and `DesiredTotal` move as the
//!   [`Outcome`] scripted for the job's images says: successful (the version becomes
//!   `Stable`), failed on unhealthy allocations, failed at the progress deadline, or
//!   running until a newer version cancels it ("Cancelled due to newer version of job").
//! - Errors as Nomad sends them: 404 with a plain-text body (`job not found`), 403
//!   `Permission denied` when an ACL token is configured and the request's
//!   `X-Nomad-Token` is not it, 400/500 plain-text messages.
//! - `namespace` query parameter (default `default`); `region` is accepted and ignored.
//!
//! Not implemented: HCL parsing (`/v1/jobs/parse` answers 501), plans, dispatch,
//! periodic and batch job semantics, canaries and promotion, `auto_revert`, node and
//! client APIs, ACL policies (one token allows everything), per-table indexes (the
//! global index is used for every blocking query: a query may wake up for an unrelated
//! change, which Nomad's documentation tells clients to expect), gzip, `stale` reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;

/// How the deployment of a job version ends, scripted per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allocations placed after half of `after`, healthy after `after`: `successful`.
    Succeed {
        /// Time to healthy.
        after: Duration,
    },
    /// Allocations placed, then unhealthy after `after`: `failed`, "Failed due to
    /// unhealthy allocations".
    Unhealthy {
        /// Time to unhealthy.
        after: Duration,
    },
    /// Allocations placed but never healthy; after `after`: `failed`, "Failed due to
    /// progress deadline".
    ProgressDeadline {
        /// The progress deadline.
        after: Duration,
    },
    /// Allocations placed, never healthy, the deployment `running` until a newer
    /// version cancels it.
    Hang,
}

/// One request the double answered: for asserting what a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The `X-Nomad-Token` header, if any.
    pub token: Option<String>,
}

#[derive(Debug, Default)]
struct JobEntry {
    /// Every version, oldest first; the last is the current job.
    versions: Vec<Value>,
}

impl JobEntry {
    fn current(&self) -> Option<&Value> {
        self.versions.last()
    }
}

#[derive(Debug)]
struct Inner {
    index: u64,
    /// By (namespace, job ID).
    jobs: BTreeMap<(String, String), JobEntry>,
    evals: BTreeMap<String, Value>,
    deployments: BTreeMap<String, Value>,
    allocs: BTreeMap<String, Value>,
    token: Option<String>,
    rules: Vec<(String, Outcome)>,
    default_outcome: Outcome,
    requests: Vec<SeenRequest>,
    next_id: u64,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    index_tx: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bumps the index and wakes blocking queries; returns the new index.
    fn bump(&self, inner: &mut Inner) -> u64 {
        inner.index += 1;
        let index = inner.index;
        self.index_tx.send_replace(index);
        index
    }
}

impl Inner {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        // A UUID-shaped ID, unique in this double.
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            self.next_id.wrapping_mul(0x9e37_79b9) as u32,
            self.next_id & 0xffff,
            self.next_id & 0xfff,
            (self.next_id >> 12) & 0xfff,
            self.next_id
        )
    }
}

/// The double, serving on `127.0.0.1` until dropped.
#[derive(Debug)]
pub struct NomadDouble {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for NomadDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Fields Nomad sets itself: left out when comparing a registration with the current job.
const SERVER_FIELDS: &[&str] = &[
    "Version",
    "JobModifyIndex",
    "ModifyIndex",
    "CreateIndex",
    "SubmitTime",
    "Status",
    "StatusDescription",
    "Stable",
];

fn spec_of(job: &Value) -> Value {
    let mut spec = job.clone();
    if let Some(object) = spec.as_object_mut() {
        for field in SERVER_FIELDS {
            object.remove(*field);
        }
        if object.get("Stop") == Some(&Value::Bool(false)) {
            object.remove("Stop");
        }
        if object.get("Meta").is_some_and(Value::is_null) {
            object.remove("Meta");
        }
    }
    spec
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn group_counts(job: &Value) -> Vec<(String, u64)> {
    job.get("TaskGroups")
        .and_then(Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .map(|g| {
                    (
                        g.get("Name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        g.get("Count").and_then(Value::as_u64).unwrap_or(1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn images(job: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for group in job
        .get("TaskGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for task in group
            .get("Tasks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(image) = task.pointer("/Config/image").and_then(Value::as_str) {
                out.push(image.to_owned());
            }
        }
    }
    out
}

type Answer = Result<Value, (StatusCode, String)>;

fn not_found(what: &str) -> (StatusCode, String) {
    (StatusCode::NOT_FOUND, format!("{what} not found"))
}

/// A job as an operator writes it (`nomad job run`), in Nomad's JSON form: a service
/// job with one task group per `(group, count, tasks)`, docker tasks with an image tag.
pub fn example_job(id: &str, groups: &[(&str, u64, &[&str])]) -> Value {
    let groups: Vec<Value> = groups
        .iter()
        .map(|(name, count, tasks)| {
            json!({
                "Name": name,
                "Count": count,
                "Update": {"MaxParallel": 1, "HealthCheck": "checks", "MinHealthyTime": 10_000_000_000u64,
                           "HealthyDeadline": 300_000_000_000u64, "ProgressDeadline": 600_000_000_000u64,
                           "AutoRevert": false, "Canary": 0},
                "Tasks": tasks.iter().map(|task| json!({
                    "Name": task,
                    "Driver": "docker",
                    "Config": {"image": format!("registry.example/{task}:latest"), "ports": ["http"]},
                    "Env": {"MODE": "production"},
                    "Resources": {"CPU": 100, "MemoryMB": 128},
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "ID": id,
        "Name": id,
        "Namespace": "default",
        "Type": "service",
        "Priority": 50,
        "Datacenters": ["dc1"],
        "TaskGroups": groups,
        "Meta": {"owner": "platform"},
    })
}

impl NomadDouble {
    /// Starts the double without ACLs; deployments succeed after 100 ms.
    pub async fn start() -> anyhow::Result<NomadDouble> {
        Self::start_with(None).await
    }

    /// Starts the double; with `token`, every request must carry it as `X-Nomad-Token`.
    pub async fn start_with(token: Option<&str>) -> anyhow::Result<NomadDouble> {
        let (index_tx, _) = watch::channel(1);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                index: 1,
                jobs: BTreeMap::new(),
                evals: BTreeMap::new(),
                deployments: BTreeMap::new(),
                allocs: BTreeMap::new(),
                token: token.map(str::to_owned),
                rules: Vec::new(),
                default_outcome: Outcome::Succeed {
                    after: Duration::from_millis(100),
                },
                requests: Vec::new(),
                next_id: 0,
            }),
            index_tx,
        });
        let app = Router::new()
            .route(
                "/v1/jobs",
                get(list_jobs).put(register_jobs).post(register_jobs),
            )
            .route("/v1/jobs/parse", post(parse_hcl))
            .route(
                "/v1/job/{id}",
                get(get_job)
                    .put(register_job)
                    .post(register_job)
                    .delete(delete_job),
            )
            .route("/v1/job/{id}/versions", get(job_versions))
            .route("/v1/job/{id}/deployment", get(job_deployment))
            .route("/v1/job/{id}/deployments", get(job_deployments))
            .route("/v1/job/{id}/allocations", get(job_allocations))
            .route("/v1/job/{id}/evaluations", get(job_evaluations))
            .route("/v1/job/{id}/revert", post(revert_job).put(revert_job))
            .route("/v1/evaluation/{id}", get(get_evaluation))
            .route("/v1/deployment/{id}", get(get_deployment))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "nomad double stopped");
            }
        });
        Ok(NomadDouble {
            address,
            shared,
            server,
        })
    }

    /// Deployments of versions with an image containing `pattern` end as `outcome`
    /// (the first matching rule wins).
    pub fn script(&self, pattern: &str, outcome: Outcome) {
        self.shared.lock().rules.push((pattern.to_owned(), outcome));
    }

    /// How deployments end when no rule matches.
    pub fn set_default(&self, outcome: Outcome) {
        self.shared.lock().default_outcome = outcome;
    }

    /// Registers `job` as an operator would (`nomad job run`), outside Stella.
    pub fn register(&self, job: Value) -> anyhow::Result<Value> {
        let namespace = job
            .get("Namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        register(&self.shared, &namespace, job, None).map_err(|(s, b)| anyhow::anyhow!("{s}: {b}"))
    }

    /// The current job in the `default` namespace.
    pub fn job(&self, id: &str) -> Option<Value> {
        self.job_in("default", id)
    }

    /// The current job in `namespace`.
    pub fn job_in(&self, namespace: &str, id: &str) -> Option<Value> {
        self.shared
            .lock()
            .jobs
            .get(&(namespace.to_owned(), id.to_owned()))
            .and_then(|e| e.current().cloned())
    }

    /// Every version of a job in `default`, oldest first.
    pub fn versions(&self, id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .jobs
            .get(&("default".to_owned(), id.to_owned()))
            .map(|e| e.versions.clone())
            .unwrap_or_default()
    }

    /// The current job edited by `edit` and registered again, outside Stella.
    pub fn edit(&self, id: &str, edit: impl FnOnce(&mut Value)) -> anyhow::Result<Value> {
        let mut job = self.job(id).ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
        edit(&mut job);
        self.register(job)
    }

    /// `nomad job stop` (`purge`: `-purge`), outside Stella.
    pub fn stop(&self, id: &str, purge: bool) -> anyhow::Result<()> {
        deregister(&self.shared, "default", id, purge)
            .map(|_| ())
            .map_err(|(s, b)| anyhow::anyhow!("{s}: {b}"))
    }

    /// The deployments of a job in `default`, oldest first.
    pub fn deployments(&self, id: &str) -> Vec<Value> {
        let inner = self.shared.lock();
        let mut list: Vec<Value> = inner
            .deployments
            .values()
            .filter(|d| d["JobID"] == id && d["Namespace"] == "default")
            .cloned()
            .collect();
        list.sort_by_key(|d| d["CreateIndex"].as_u64());
        list
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().requests.clone()
    }

    /// The current index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }
}

/// Registers `job` in `namespace`: a new version unless its spec is the current one.
fn register(shared: &Arc<Shared>, namespace: &str, mut job: Value, enforce: Option<u64>) -> Answer {
    let id = job
        .get("ID")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or((
            StatusCode::BAD_REQUEST,
            "Job ID must be specified".to_owned(),
        ))?
        .to_owned();
    if job
        .get("TaskGroups")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "1 error occurred:\n\t* Missing job task groups\n".to_owned(),
        ));
    }
    let mut inner = shared.lock();
    let key = (namespace.to_owned(), id.clone());
    let current = inner.jobs.get(&key).and_then(|e| e.current().cloned());
    if let Some(expected) = enforce {
        let actual = current
            .as_ref()
            .and_then(|c| c["JobModifyIndex"].as_u64())
            .unwrap_or(0);
        if expected == 0 && current.is_some() {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "Enforcing job modify index 0: job already exists".to_owned(),
            ));
        }
        if expected != actual {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Enforcing job modify index {expected}: job exists with conflicting job modify index: {actual}"),
            ));
        }
    }
    let object = job
        .as_object_mut()
        .ok_or((StatusCode::BAD_REQUEST, "Job must be an object".to_owned()))?;
    object.insert("Namespace".into(), json!(namespace));
    object.entry("Name").or_insert_with(|| json!(id));
    object.entry("Type").or_insert_with(|| json!("service"));
    if let Some(current) = &current {
        if spec_of(current) == spec_of(&job) {
            // Unchanged: no new version, no deployment; an evaluation all the same.
            let index = shared.bump(&mut inner);
            let eval_id = inner.new_id();
            let eval = json!({"ID": eval_id, "JobID": id, "Namespace": namespace, "Type": "service",
                "TriggeredBy": "job-register", "Status": "complete", "StatusDescription": "",
                "DeploymentID": "", "CreateIndex": index, "ModifyIndex": index, "JobModifyIndex": current["JobModifyIndex"]});
            inner.evals.insert(eval_id.clone(), eval);
            return Ok(json!({"EvalID": eval_id, "EvalCreateIndex": index,
                "JobModifyIndex": current["JobModifyIndex"], "Warnings": "", "Index": index}));
        }
    }
    let index = shared.bump(&mut inner);
    let version = current
        .as_ref()
        .map_or(0, |c| c["Version"].as_u64().unwrap_or(0) + 1);
    let stopped = job.get("Stop").and_then(Value::as_bool).unwrap_or(false);
    let object = job
        .as_object_mut()
        .ok_or((StatusCode::BAD_REQUEST, "Job must be an object".to_owned()))?;
    object.insert("Version".into(), json!(version));
    object.insert("JobModifyIndex".into(), json!(index));
    object.insert("ModifyIndex".into(), json!(index));
    object.insert(
        "CreateIndex".into(),
        current
            .as_ref()
            .map_or(json!(index), |c| c["CreateIndex"].clone()),
    );
    object.insert("SubmitTime".into(), json!(now_nanos()));
    object.insert("Stable".into(), json!(false));
    object.insert("Stop".into(), json!(stopped));
    object.insert(
        "Status".into(),
        json!(if stopped { "dead" } else { "pending" }),
    );
    object.insert("StatusDescription".into(), json!(""));
    inner
        .jobs
        .entry(key.clone())
        .or_default()
        .versions
        .push(job.clone());

    // A newer version cancels the running deployments of older ones.
    for deployment in inner.deployments.values_mut() {
        if deployment["JobID"] == id.as_str()
            && deployment["Namespace"] == namespace
            && deployment["Status"] == "running"
        {
            deployment["Status"] = json!("cancelled");
            deployment["StatusDescription"] = json!("Cancelled due to newer version of job");
            deployment["ModifyIndex"] = json!(index);
        }
    }
    let eval_id = inner.new_id();
    let eval = json!({"ID": eval_id, "JobID": id, "Namespace": namespace, "Type": "service",
        "TriggeredBy": if stopped { "job-deregister" } else { "job-register" }, "Status": "pending",
        "StatusDescription": "", "DeploymentID": "", "CreateIndex": index, "ModifyIndex": index,
        "JobModifyIndex": index});
    inner.evals.insert(eval_id.clone(), eval);
    let outcome = {
        let images = images(&job);
        inner
            .rules
            .iter()
            .find(|(pattern, _)| images.iter().any(|i| i.contains(pattern.as_str())))
            .map_or(inner.default_outcome, |(_, o)| *o)
    };
    drop(inner);
    tokio::spawn(schedule(
        shared.clone(),
        key,
        eval_id.clone(),
        version,
        stopped,
        outcome,
    ));
    Ok(
        json!({"EvalID": eval_id, "EvalCreateIndex": index, "JobModifyIndex": index,
        "Warnings": "", "Index": index}),
    )
}

/// The scheduler's part: completes the evaluation, makes the deployment and moves it
/// as `outcome` says.
async fn schedule(
    shared: Arc<Shared>,
    key: (String, String),
    eval_id: String,
    version: u64,
    stopped: bool,
    outcome: Outcome,
) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    let deployment_id = {
        let mut inner = shared.lock();
        let index = shared.bump(&mut inner);
        let job = inner
            .jobs
            .get(&key)
            .and_then(|e| e.versions.iter().find(|v| v["Version"] == version).cloned());
        let deployment_id = match (&job, stopped) {
            (Some(job), false) => {
                let id = inner.new_id();
                let groups: serde_json::Map<String, Value> = group_counts(job)
                    .into_iter()
                    .map(|(name, count)| {
                        (
                            name,
                            json!({"DesiredTotal": count, "PlacedAllocs": 0, "HealthyAllocs": 0,
                            "UnhealthyAllocs": 0, "AutoRevert": false, "Promoted": false,
                            "DesiredCanaries": 0}),
                        )
                    })
                    .collect();
                inner.deployments.insert(
                    id.clone(),
                    json!({"ID": id, "Namespace": key.0, "JobID": key.1, "JobVersion": version,
                        "JobModifyIndex": job["JobModifyIndex"], "JobCreateIndex": job["CreateIndex"],
                        "Status": "running", "StatusDescription": "Deployment is running",
                        "TaskGroups": groups, "CreateIndex": index, "ModifyIndex": index}),
                );
                Some(id)
            }
            _ => {
                // Stopped: its allocations stop.
                for alloc in inner.allocs.values_mut() {
                    if alloc["JobID"] == key.1.as_str() && alloc["Namespace"] == key.0.as_str() {
                        alloc["DesiredStatus"] = json!("stop");
                        alloc["ClientStatus"] = json!("complete");
                        alloc["ModifyIndex"] = json!(index);
                    }
                }
                None
            }
        };
        if let Some(eval) = inner.evals.get_mut(&eval_id) {
            eval["Status"] = json!("complete");
            eval["DeploymentID"] = json!(deployment_id.clone().unwrap_or_default());
            eval["ModifyIndex"] = json!(index);
        }
        deployment_id
    };
    let Some(deployment_id) = deployment_id else {
        return;
    };
    let total = match outcome {
        Outcome::Succeed { after }
        | Outcome::Unhealthy { after }
        | Outcome::ProgressDeadline { after } => after,
        Outcome::Hang => Duration::from_millis(100),
    };
    tokio::time::sleep(total / 2).await;
    // Placed.
    {
        let mut inner = shared.lock();
        if inner.deployments[&deployment_id]["Status"] != "running" {
            return;
        }
        let index = shared.bump(&mut inner);
        let job = inner
            .jobs
            .get(&key)
            .and_then(|e| e.versions.iter().find(|v| v["Version"] == version).cloned())
            .unwrap_or(Value::Null);
        for (group, count) in group_counts(&job) {
            for n in 0..count {
                let alloc_id = inner.new_id();
                inner.allocs.insert(
                    alloc_id.clone(),
                    json!({"ID": alloc_id, "Name": format!("{}.{group}[{n}]", key.1), "Namespace": key.0,
                        "JobID": key.1, "JobVersion": version, "TaskGroup": group, "DeploymentID": deployment_id,
                        "DesiredStatus": "run", "ClientStatus": "pending", "DeploymentStatus": null,
                        "CreateIndex": index, "ModifyIndex": index}),
                );
            }
            if let Some(deployment) = inner.deployments.get_mut(&deployment_id) {
                deployment["TaskGroups"][&group]["PlacedAllocs"] = json!(count);
                deployment["ModifyIndex"] = json!(index);
            }
        }
        // Older versions' allocations are replaced.
        for alloc in inner.allocs.values_mut() {
            if alloc["JobID"] == key.1.as_str()
                && alloc["Namespace"] == key.0.as_str()
                && alloc["JobVersion"].as_u64().is_some_and(|v| v < version)
                && alloc["DesiredStatus"] == "run"
            {
                alloc["DesiredStatus"] = json!("stop");
                alloc["ClientStatus"] = json!("complete");
                alloc["ModifyIndex"] = json!(index);
            }
        }
    }
    if outcome == Outcome::Hang {
        return;
    }
    tokio::time::sleep(total - total / 2).await;
    let mut inner = shared.lock();
    if inner.deployments[&deployment_id]["Status"] != "running" {
        return;
    }
    let index = shared.bump(&mut inner);
    let (status, description, healthy) = match outcome {
        Outcome::Succeed { .. } => (
            "successful",
            "Deployment completed successfully",
            Some(true),
        ),
        Outcome::Unhealthy { .. } => ("failed", "Failed due to unhealthy allocations", Some(false)),
        _ => ("failed", "Failed due to progress deadline", None),
    };
    for alloc in inner.allocs.values_mut() {
        if alloc["DeploymentID"] == deployment_id.as_str() {
            if let Some(healthy) = healthy {
                alloc["ClientStatus"] = json!(if healthy { "running" } else { "failed" });
                alloc["DeploymentStatus"] = json!({"Healthy": healthy});
            }
            alloc["ModifyIndex"] = json!(index);
        }
    }
    if let Some(deployment) = inner.deployments.get_mut(&deployment_id) {
        deployment["Status"] = json!(status);
        deployment["StatusDescription"] = json!(description);
        deployment["ModifyIndex"] = json!(index);
        let names: Vec<String> = deployment["TaskGroups"]
            .as_object()
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let total = deployment["TaskGroups"][&name]["DesiredTotal"].clone();
            match healthy {
                Some(true) => deployment["TaskGroups"][&name]["HealthyAllocs"] = total,
                Some(false) => deployment["TaskGroups"][&name]["UnhealthyAllocs"] = total,
                None => {}
            }
        }
    }
    if let Some(entry) = inner.jobs.get_mut(&key) {
        let is_current = entry.current().is_some_and(|c| c["Version"] == version);
        if let Some(job) = entry.versions.iter_mut().find(|v| v["Version"] == version) {
            if status == "successful" {
                job["Stable"] = json!(true);
            }
            if is_current {
                job["Status"] = json!("running");
            }
        }
    }
}

fn deregister(shared: &Arc<Shared>, namespace: &str, id: &str, purge: bool) -> Answer {
    let key = (namespace.to_owned(), id.to_owned());
    let current = {
        let inner = shared.lock();
        inner
            .jobs
            .get(&key)
            .and_then(|e| e.current().cloned())
            .ok_or_else(|| not_found("job"))?
    };
    if purge {
        let mut inner = shared.lock();
        let index = shared.bump(&mut inner);
        inner.jobs.remove(&key);
        inner
            .allocs
            .retain(|_, a| !(a["JobID"] == id && a["Namespace"] == namespace));
        let eval_id = inner.new_id();
        inner.evals.insert(eval_id.clone(), json!({"ID": eval_id, "JobID": id, "Namespace": namespace,
            "Status": "complete", "TriggeredBy": "job-deregister", "CreateIndex": index, "ModifyIndex": index}));
        return Ok(
            json!({"EvalID": eval_id, "EvalCreateIndex": index, "JobModifyIndex": index, "Index": index}),
        );
    }
    let mut job = current;
    job["Stop"] = json!(true);
    register(shared, namespace, job, None)
}

#[derive(Debug, serde::Deserialize)]
struct CommonQuery {
    namespace: Option<String>,
    index: Option<u64>,
    wait: Option<String>,
    purge: Option<bool>,
}

impl CommonQuery {
    fn namespace(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned())
    }
}

/// `5s`, `500ms`, `1m`; Nomad's default is 5 minutes, its maximum 10.
fn parse_wait(wait: Option<&str>) -> Duration {
    let Some(wait) = wait else {
        return Duration::from_secs(300);
    };
    let parsed = if let Some(ms) = wait.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else if let Some(s) = wait.strip_suffix('s') {
        s.parse().ok().map(Duration::from_secs)
    } else if let Some(m) = wait.strip_suffix('m') {
        m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60))
    } else {
        None
    };
    parsed
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600))
}

/// Records the request, checks the token, holds a blocking query, then answers with
/// `answer` and `X-Nomad-Index`.
async fn respond(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &CommonQuery,
    raw_query: &str,
    headers: &HeaderMap,
    answer: impl FnOnce(&Arc<Shared>) -> Answer,
) -> Response {
    let token = headers
        .get("X-Nomad-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let required = {
        let mut inner = shared.lock();
        inner.requests.push(SeenRequest {
            method: method.to_string(),
            path: path.to_owned(),
            query: raw_query.to_owned(),
            token: token.clone(),
        });
        inner.token.clone()
    };
    if required.is_some() && token != required {
        return (StatusCode::FORBIDDEN, "Permission denied").into_response();
    }
    if *method == Method::GET {
        if let Some(min) = query.index {
            let mut rx = shared.index_tx.subscribe();
            let wait = parse_wait(query.wait.as_deref());
            // Nomad adds up to wait/16 of jitter; the double waits exactly `wait`.
            let _ = tokio::time::timeout(wait, rx.wait_for(|index| *index > min)).await;
        }
    }
    let result = answer(shared);
    let index = shared.lock().index;
    let mut response = match result {
        Ok(value) => axum::Json(value).into_response(),
        Err((status, body)) => (status, body).into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&index.to_string()) {
        response.headers_mut().insert("X-Nomad-Index", value);
    }
    response
}

fn parse_body(body: &Bytes) -> Result<Value, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("Failed to decode request body: {e}"),
        )
    })
}

fn register_answer(
    shared: &Arc<Shared>,
    namespace: &str,
    body: &Bytes,
    id: Option<&str>,
) -> Answer {
    let request = parse_body(body)?;
    let job = request
        .get("Job")
        .cloned()
        .ok_or((StatusCode::BAD_REQUEST, "Job must be specified".to_owned()))?;
    if let Some(id) = id {
        if job.get("ID").and_then(Value::as_str) != Some(id) {
            return Err((
                StatusCode::BAD_REQUEST,
                "Job ID does not match name".to_owned(),
            ));
        }
    }
    let enforce = (request.get("EnforceIndex") == Some(&Value::Bool(true))).then(|| {
        request
            .get("JobModifyIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    });
    let namespace = job
        .get("Namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(namespace)
        .to_owned();
    register(shared, &namespace, job, enforce)
}

macro_rules! handler {
    ($name:ident, |$shared:ident, $query:ident, $body:ident, $id:ident| $answer:expr) => {
        #[allow(unused_variables)]
        async fn $name(
            State($shared): State<Arc<Shared>>,
            method: Method,
            uri: axum::http::Uri,
            $id: Option<Path<String>>,
            Query($query): Query<CommonQuery>,
            headers: HeaderMap,
            $body: Bytes,
        ) -> Response {
            let $id: String = $id.map(|Path(id)| id).unwrap_or_default();
            let raw = uri.query().unwrap_or("").to_owned();
            let path = uri.path().to_owned();
            respond(
                &$shared,
                &method,
                &path,
                &$query,
                &raw,
                &headers,
                |$shared| $answer,
            )
            .await
        }
    };
}

handler!(list_jobs, |shared, query, body, id| {
    let inner = shared.lock();
    let namespace = query.namespace();
    Ok(Value::Array(
        inner
            .jobs
            .iter()
            .filter(|((ns, _), _)| *ns == namespace)
            .filter_map(|(_, e)| e.current())
            .map(|job| {
                json!({"ID": job["ID"], "Name": job["Name"], "Namespace": job["Namespace"],
                    "Type": job["Type"], "Status": job["Status"], "Stop": job["Stop"],
                    "Version": job["Version"], "JobModifyIndex": job["JobModifyIndex"],
                    "ModifyIndex": job["ModifyIndex"], "CreateIndex": job["CreateIndex"],
                    "SubmitTime": job["SubmitTime"]})
            })
            .collect(),
    ))
});

handler!(register_jobs, |shared, query, body, id| register_answer(
    shared,
    &query.namespace(),
    &body,
    None
));

handler!(register_job, |shared, query, body, id| register_answer(
    shared,
    &query.namespace(),
    &body,
    Some(&id)
));

handler!(parse_hcl, |shared, query, body, id| Err((
    StatusCode::NOT_IMPLEMENTED,
    "HCL parsing is not implemented by the Nomad test double".to_owned()
)));

handler!(get_job, |shared, query, body, id| shared
    .lock()
    .jobs
    .get(&(query.namespace(), id.clone()))
    .and_then(|e| e.current().cloned())
    .ok_or_else(|| not_found("job")));

handler!(delete_job, |shared, query, body, id| deregister(
    shared,
    &query.namespace(),
    &id,
    query.purge.unwrap_or(false)
));

handler!(job_versions, |shared, query, body, id| {
    let inner = shared.lock();
    let entry = inner
        .jobs
        .get(&(query.namespace(), id.clone()))
        .ok_or_else(|| not_found("job versions"))?;
    let newest_first: Vec<Value> = entry.versions.iter().rev().cloned().collect();
    Ok(json!({"Versions": newest_first, "Diffs": null}))
});

fn deployments_of(inner: &Inner, namespace: &str, id: &str) -> Vec<Value> {
    let mut list: Vec<Value> = inner
        .deployments
        .values()
        .filter(|d| d["JobID"] == id && d["Namespace"] == namespace)
        .cloned()
        .collect();
    list.sort_by_key(|d| std::cmp::Reverse(d["CreateIndex"].as_u64()));
    list
}

handler!(job_deployment, |shared, query, body, id| {
    let inner = shared.lock();
    Ok(deployments_of(&inner, &query.namespace(), &id)
        .into_iter()
        .next()
        .unwrap_or(Value::Null))
});

handler!(job_deployments, |shared, query, body, id| {
    let inner = shared.lock();
    Ok(Value::Array(deployments_of(
        &inner,
        &query.namespace(),
        &id,
    )))
});

handler!(job_allocations, |shared, query, body, id| {
    let inner = shared.lock();
    let namespace = query.namespace();
    Ok(Value::Array(
        inner
            .allocs
            .values()
            .filter(|a| a["JobID"] == id.as_str() && a["Namespace"] == namespace.as_str())
            .cloned()
            .collect(),
    ))
});

handler!(job_evaluations, |shared, query, body, id| {
    let inner = shared.lock();
    let namespace = query.namespace();
    Ok(Value::Array(
        inner
            .evals
            .values()
            .filter(|e| e["JobID"] == id.as_str() && e["Namespace"] == namespace.as_str())
            .cloned()
            .collect(),
    ))
});

handler!(revert_job, |shared, query, body, id| {
    let request = parse_body(&body)?;
    let namespace = query.namespace();
    let version = request.get("JobVersion").and_then(Value::as_u64).ok_or((
        StatusCode::BAD_REQUEST,
        "JobVersion must be specified".to_owned(),
    ))?;
    let (current, target) = {
        let inner = shared.lock();
        let entry = inner
            .jobs
            .get(&(namespace.clone(), id.clone()))
            .ok_or_else(|| not_found("job"))?;
        let current = entry.current().cloned().unwrap_or(Value::Null);
        let target = entry
            .versions
            .iter()
            .find(|v| v["Version"] == version)
            .cloned()
            .ok_or((
                StatusCode::BAD_REQUEST,
                format!("job {id:?} at version {version} not found"),
            ))?;
        (current, target)
    };
    if let Some(prior) = request.get("EnforcePriorVersion").and_then(Value::as_u64) {
        if current["Version"].as_u64() != Some(prior) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "Current job has version {}; enforcing version {prior}",
                    current["Version"]
                ),
            ));
        }
    }
    if current["Version"].as_u64() == Some(version) {
        return Err((
            StatusCode::BAD_REQUEST,
            "can't revert to current version".to_owned(),
        ));
    }
    register(shared, &namespace, target, None)
});

handler!(get_evaluation, |shared, query, body, id| shared
    .lock()
    .evals
    .get(&id)
    .cloned()
    .ok_or_else(|| not_found("eval")));

handler!(get_deployment, |shared, query, body, id| shared
    .lock()
    .deployments
    .get(&id)
    .cloned()
    .ok_or_else(|| not_found("deployment")));
