//! A small REST client for the operator commands: bearer auth, the error envelope
//! turned into one-line messages.

use anyhow::{anyhow, Context};
use serde_json::Value;

/// Talks to one control plane as one user.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for `base` (`http://host:port`).
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("stella-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building http client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POST a JSON body, get a JSON document.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// PATCH a JSON body, get a JSON document.
    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| anyhow!("cannot reach the server at {}: {error}", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| anyhow!("reading the response from {}: {error}", self.base))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).with_context(|| {
                format!("the server answered {status} with a body that is not JSON")
            });
        }
        let envelope: Option<Value> = serde_json::from_slice(&bytes).ok();
        let message = envelope
            .as_ref()
            .and_then(|v| v.pointer("/error/message"))
            .and_then(Value::as_str);
        let code = envelope
            .as_ref()
            .and_then(|v| v.pointer("/error/code"))
            .and_then(Value::as_str);
        Err(match (message, code) {
            (Some(message), Some(code)) => anyhow!("{message} ({code}, http {})", status.as_u16()),
            _ => anyhow!("the server answered {status}"),
        })
    }
}
