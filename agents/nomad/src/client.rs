//! A small client of Nomad's documented HTTP API (`/v1/...`): jobs, their versions,
//! evaluations, deployments and allocations, with blocking queries.
//!
//! Every request carries `namespace` (and `region` when set) as query parameters and the
//! ACL token as `X-Nomad-Token`; the token is never logged nor put in an error. A
//! blocking query sends `index` (the `X-Nomad-Index` of the previous answer) and `wait`:
//! Nomad holds the answer until something at a higher index changes or `wait` passes.
//! Jobs travel as [`serde_json::Value`] so that a job read and registered again keeps
//! every field this client does not know.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::error::NomadError;
use crate::settings::NomadSettings;

/// The longest `wait` of one blocking query; Nomad caps it at 10 minutes, Stella asks for
/// less so that cancellation and deadlines are noticed between queries.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(5);
/// How long one plain request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A Nomad API client for one target's settings.
#[derive(Clone)]
pub struct NomadClient {
    http: reqwest::Client,
    address: String,
    namespace: String,
    region: Option<String>,
    token: Option<String>,
}

impl std::fmt::Debug for NomadClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadClient")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// What `PUT /v1/jobs` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The evaluation it created (empty when Nomad created none).
    pub eval_id: String,
    /// The job's modify index after the registration.
    pub job_modify_index: u64,
}

impl NomadClient {
    /// A client for `settings` (a CA bundle from `ca_file` trusted besides the system's).
    pub fn new(settings: &NomadSettings) -> Result<NomadClient, NomadError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(ca_file) = &settings.ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| {
                NomadError::InvalidSettings(format!(
                    "ca_file {}: cannot read it: {e}",
                    ca_file.display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                NomadError::InvalidSettings(format!(
                    "ca_file {}: not a PEM certificate bundle: {e}",
                    ca_file.display()
                ))
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| NomadError::InvalidSettings(format!("cannot make an HTTP client: {e}")))?;
        Ok(NomadClient {
            http,
            address: settings.address.clone(),
            namespace: settings.namespace.clone(),
            region: settings.region.clone(),
            token: settings.token.clone(),
        })
    }

    /// The API's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// One call; `blocking` is `(index, wait)`. Returns the body (`Null` when empty) and
    /// `X-Nomad-Index` (0 when absent).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(Value, u64), NomadError> {
        let call = format!("{method} {path}");
        let mut query: Vec<(&str, String)> = vec![("namespace", self.namespace.clone())];
        if let Some(region) = &self.region {
            query.push(("region", region.clone()));
        }
        let mut timeout = REQUEST_TIMEOUT;
        if let Some((index, wait)) = blocking {
            query.push(("index", index.to_string()));
            query.push(("wait", format!("{}ms", wait.as_millis())));
            // Nomad adds up to wait/16 of jitter.
            timeout += wait + wait / 16;
        }
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.address))
            .query(&query)
            .timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Nomad-Token", token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| NomadError::Connect {
            address: self.address.clone(),
            call: call.clone(),
            reason: stella_agent_core::error_chain(&e),
        })?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let bytes = response.bytes().await.map_err(|e| NomadError::Connect {
            address: self.address.clone(),
            call: call.clone(),
            reason: stella_agent_core::error_chain(&e),
        })?;
        if !status.is_success() {
            let mut body = String::from_utf8_lossy(&bytes).trim().to_owned();
            body.truncate(1000);
            return Err(NomadError::Api {
                call,
                status: status.as_u16(),
                body,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((Value::Null, index));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| NomadError::Decode {
            call,
            reason: e.to_string(),
        })?;
        Ok((value, index))
    }

    fn job_path(job: &str, rest: &str) -> String {
        format!("/v1/job/{job}{rest}")
    }

    /// `GET /v1/job/:id`: the job, `None` when Nomad does not know it (404).
    pub async fn job(&self, job: &str) -> Result<Option<Value>, NomadError> {
        match self
            .call(Method::GET, &Self::job_path(job, ""), None, None)
            .await
        {
            Ok((value, _)) => Ok(Some(value)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `GET /v1/job/:id`, blocking from `index`: the job (`None`: Nomad does not know
    /// it, answered at once) and the answer's index.
    pub async fn job_blocking(
        &self,
        job: &str,
        index: u64,
    ) -> Result<(Option<Value>, u64), NomadError> {
        match self
            .call(
                Method::GET,
                &Self::job_path(job, ""),
                None,
                Some((index, BLOCKING_WAIT)),
            )
            .await
        {
            Ok((value, index)) => Ok((Some(value), index)),
            Err(error) if error.is_not_found() => Ok((None, index)),
            Err(error) => Err(error),
        }
    }

    /// `GET /v1/job/:id/versions`: the job's versions, newest first.
    pub async fn versions(&self, job: &str) -> Result<Vec<Value>, NomadError> {
        let path = Self::job_path(job, "/versions");
        let (value, _) = self.call(Method::GET, &path, None, None).await?;
        value
            .get("Versions")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| NomadError::Decode {
                call: format!("GET {path}"),
                reason: "no Versions".to_owned(),
            })
    }

    /// `PUT /v1/jobs`, with `EnforceIndex`: `modify_index` is the `JobModifyIndex` the
    /// job had when read (0: it must not exist), so a concurrent change is refused.
    pub async fn register(&self, job: &Value, modify_index: u64) -> Result<Registered, NomadError> {
        let body = json!({
            "Job": job,
            "EnforceIndex": true,
            "JobModifyIndex": modify_index,
        });
        let result = self.call(Method::PUT, "/v1/jobs", Some(&body), None).await;
        let (value, _) = match result {
            Err(NomadError::Api { status, body, .. })
                if status == StatusCode::BAD_REQUEST.as_u16() || status == 500 =>
            {
                if body.contains("Enforcing job modify index") {
                    return Err(NomadError::Conflict {
                        job: job_id(job).to_owned(),
                        index: modify_index,
                    });
                }
                return Err(NomadError::Api {
                    call: "PUT /v1/jobs".to_owned(),
                    status,
                    body,
                });
            }
            other => other?,
        };
        Ok(Registered {
            eval_id: value
                .get("EvalID")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            job_modify_index: value
                .get("JobModifyIndex")
                .and_then(Value::as_u64)
                .unwrap_or_default(),
        })
    }

    /// `POST /v1/jobs/parse`: an HCL job specification as JSON, canonicalized by Nomad.
    pub async fn parse_hcl(&self, hcl: &str) -> Result<Value, NomadError> {
        let body = json!({"JobHCL": hcl, "Canonicalize": true});
        let (value, _) = self
            .call(Method::POST, "/v1/jobs/parse", Some(&body), None)
            .await?;
        Ok(value)
    }

    /// `GET /v1/evaluation/:id`, blocking from `index`.
    pub async fn evaluation(&self, id: &str, index: u64) -> Result<(Value, u64), NomadError> {
        self.call(
            Method::GET,
            &format!("/v1/evaluation/{id}"),
            None,
            Some((index, BLOCKING_WAIT)),
        )
        .await
    }

    /// `GET /v1/job/:id/deployment`: the job's latest deployment (`None`: it has none),
    /// blocking from `index`.
    pub async fn latest_deployment(
        &self,
        job: &str,
        index: u64,
    ) -> Result<(Option<Value>, u64), NomadError> {
        let (value, index) = self
            .call(
                Method::GET,
                &Self::job_path(job, "/deployment"),
                None,
                Some((index, BLOCKING_WAIT)),
            )
            .await?;
        Ok(((!value.is_null()).then_some(value), index))
    }

    /// `GET /v1/job/:id/allocations`: the job's allocations (stubs).
    pub async fn allocations(&self, job: &str) -> Result<Vec<Value>, NomadError> {
        let (value, _) = self
            .call(
                Method::GET,
                &Self::job_path(job, "/allocations"),
                None,
                None,
            )
            .await?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// `POST /v1/job/:id/revert`: registers version `version` again as a new version,
    /// provided the job is still at `prior` (`EnforcePriorVersion`).
    pub async fn revert(
        &self,
        job: &str,
        version: u64,
        prior: u64,
    ) -> Result<Registered, NomadError> {
        let body = json!({"JobID": job, "JobVersion": version, "EnforcePriorVersion": prior});
        let (value, _) = self
            .call(
                Method::POST,
                &Self::job_path(job, "/revert"),
                Some(&body),
                None,
            )
            .await?;
        Ok(Registered {
            eval_id: value
                .get("EvalID")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            job_modify_index: value
                .get("JobModifyIndex")
                .and_then(Value::as_u64)
                .unwrap_or_default(),
        })
    }
}

/// A job's `ID`.
pub fn job_id(job: &Value) -> &str {
    job.get("ID").and_then(Value::as_str).unwrap_or_default()
}

/// A job's `Version`.
pub fn job_version(job: &Value) -> u64 {
    job.get("Version")
        .and_then(Value::as_u64)
        .unwrap_or_default()
}

/// A job's `JobModifyIndex`.
pub fn job_modify_index(job: &Value) -> u64 {
    job.get("JobModifyIndex")
        .and_then(Value::as_u64)
        .unwrap_or_default()
}

/// Whether the job is stopped (`Stop: true`).
pub fn job_stopped(job: &Value) -> bool {
    job.get("Stop").and_then(Value::as_bool).unwrap_or(false)
}
