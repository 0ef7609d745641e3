//! A small REST client for the operator commands: bearer auth, and every failure turned
//! into one line that names its cause — the server's own message for an API error;
//! `connection refused`, a DNS failure, a timeout or a TLS failure (with the URL) for a
//! transport error, without hyper's or reqwest's wrapping.
//!
//! An `https://` server is trusted as `--ca-file` says (its CA certificates only), else
//! when the system's roots vouch for it, else by its own CA pinned at first use in
//! `known-servers.json` ([`crate::trust`]); a server whose CA changed since is refused.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// Talks to one control plane as one user.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
    /// Sent as `X-StellaOps-Tenant` on every call (`--tenant`).
    tenant: Option<String>,
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// `--server` is not an http(s) URL.
    InvalidServer {
        /// As given.
        server: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request did not get an answer: refused, unresolvable, timed out, TLS.
    Transport {
        /// The server's base URL.
        base: String,
        /// The cause, on one line.
        cause: String,
    },
    /// The server answered with an error.
    Api {
        /// HTTP status.
        status: u16,
        /// The envelope's `code`, if there was an envelope.
        code: Option<String>,
        /// The envelope's `message`, or a description of the answer.
        message: String,
        /// A hint for the operator (how to pass a token).
        hint: Option<&'static str>,
    },
    /// The http client itself could not be built.
    Setup(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidServer { server, reason } => {
                write!(f, "invalid --server `{server}`: {reason}")
            }
            ClientError::Transport { base, cause } => {
                write!(f, "cannot reach the server at {base}: {cause}")
            }
            ClientError::Api {
                status,
                code,
                message,
                hint,
            } => {
                match code {
                    Some(code) => write!(f, "{message} ({code}, http {status})")?,
                    None => write!(f, "{message}")?,
                }
                match hint {
                    Some(hint) => write!(f, "; {hint}"),
                    None => Ok(()),
                }
            }
            ClientError::Setup(message) => write!(f, "cannot set up the http client: {message}"),
        }
    }
}

impl StdError for ClientError {}

impl ClientError {
    /// Whether the server was not reached (worth retrying while following).
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport { .. })
    }
}

impl Client {
    /// A client for `server` (`http://host:port` or `https://…`), refused early when it
    /// is not such a URL; every request gives up after `timeout`.
    #[cfg(test)]
    pub fn new(
        server: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::with_trust(server, token, timeout, None)
    }

    /// As [`Client::new`], trusting only the CA certificates of `ca_file` when given.
    pub fn with_trust(
        server: &str,
        token: Option<String>,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let base = server_url(server)?;
        let mut builder = reqwest::Client::builder();
        if base.starts_with("https://") {
            builder = builder.use_preconfigured_tls(tls_config(&base, ca_file)?);
        }
        let http = builder
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("stella-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ClientError::Setup(root_cause(&error)))?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.trim().is_empty()),
            timeout,
            tenant: None,
        })
    }

    /// Acts in `tenant` (the `X-StellaOps-Tenant` header of every call; the server's
    /// `default` when `None`).
    pub fn in_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant.filter(|t| !t.trim().is_empty());
        self
    }

    /// The tenant of `--tenant`, if given.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// This client acting in the `default` tenant, where users, clients, tenants and
    /// role bindings are managed whatever tenant the commands act in.
    pub fn in_default_tenant(&self) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token: self.token.clone(),
            timeout: self.timeout,
            tenant: None,
        }
    }

    /// The bearer token and the tenant header, on a request of this client.
    fn authorize(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(tenant) = &self.tenant {
            request = request.header("X-StellaOps-Tenant", tenant);
        }
        request
    }

    /// The server's base URL, as given (`http://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// How long a request may go unanswered.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POST a JSON body, get a JSON document.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// PATCH a JSON body, get a JSON document.
    pub async fn patch(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// PUT a JSON body, get a JSON document.
    pub async fn put(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// DELETE; `Null` for the usual empty answer (204).
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// POST a JSON document exactly as given (bytes the server stores by content, so
    /// they are not parsed and written again), get a JSON document.
    pub async fn post_document(&self, path: &str, bytes: Vec<u8>) -> Result<Value, ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        request = self.authorize(request);
        self.answer(request).await
    }

    /// POST a JSON body, get raw bytes (an offline kit); errors as for JSON calls. The
    /// whole exchange may take `timeout` (the server answers once the work is done).
    pub async fn post_for_bytes(
        &self,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        self.bytes_of(self.http.post(&url).json(&body).timeout(timeout))
            .await
    }

    /// GET raw bytes (an evidence packet); errors as for JSON calls.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        self.bytes_of(self.http.get(&url)).await
    }

    /// Sends `request` with the token; the body's bytes, or the API's error.
    async fn bytes_of(&self, mut request: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
        request = self.authorize(request);
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(&error))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport(&error))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(self.api_error(status, &bytes))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url);
        request = self.authorize(request);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request).await
    }

    /// A request to a path outside `/api/v1` (the TaskRunner API, `/v1/task-runner/…`).
    pub async fn request_at(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        request = self.authorize(request);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request).await
    }

    /// GET text (NDJSON logs) from a path outside `/api/v1`.
    pub async fn text_at(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.get(&url);
        request = self.authorize(request);
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(&error))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport(&error))?;
        if status.is_success() {
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        Err(self.api_error(status, &bytes))
    }

    /// Sends a request and reads its JSON answer, or the error it stands for.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(&error))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport(&error))?;
        if status.is_success() && bytes.is_empty() {
            return Ok(Value::Null);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| ClientError::Api {
                status: status.as_u16(),
                code: None,
                message: format!(
                    "the server at {} answered {status} with a body that is not JSON (is it a Stella control plane?)",
                    self.base
                ),
                hint: None,
            });
        }
        Err(self.api_error(status, &bytes))
    }

    /// The error of a non-success answer: the API's envelope, or what the body says.
    fn api_error(&self, status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
        let envelope: Option<Value> = serde_json::from_slice(bytes).ok();
        let field = |pointer: &str| {
            envelope
                .as_ref()
                .and_then(|v| v.pointer(pointer))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        // A TaskRunner `PlanErrorResponse`: its first error, with its path and count.
        if let Some(errors) = envelope
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(Value::as_array)
            .filter(|errors| !errors.is_empty())
        {
            let first = &errors[0];
            let more = match errors.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return ClientError::Api {
                status: status.as_u16(),
                code: Some("plan_error".to_owned()),
                message: format!(
                    "{}: {}{more}",
                    first["path"].as_str().unwrap_or("$"),
                    first["message"].as_str().unwrap_or("invalid")
                ),
                hint: None,
            };
        }
        match (field("/error/message"), field("/error/code")) {
            (Some(message), code) => ClientError::Api {
                status: status.as_u16(),
                hint: (status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none())
                    .then_some("pass --token or set STELLA_TOKEN"),
                code,
                message,
            },
            _ => ClientError::Api {
                status: status.as_u16(),
                code: None,
                message: format!(
                    "the server at {} answered {status} (is it a Stella control plane?)",
                    self.base
                ),
                hint: None,
            },
        }
    }

    fn transport(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Transport {
            base: self.base.clone(),
            cause: transport_cause(error, &self.base, self.timeout),
        }
    }
}

/// How an `https://` server is trusted (see the module docs).
fn tls_config(
    base: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, ClientError> {
    use stella_pki::{ApiTrust, FirstUse};
    let trust = match ca_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|error| {
                ClientError::Setup(format!("cannot read --ca-file {}: {error}", path.display()))
            })?;
            let certs = stella_pki::pem_to_der_certs(&pem).map_err(|error| {
                ClientError::Setup(format!("--ca-file {}: {error}", path.display()))
            })?;
            ApiTrust::Roots(certs)
        }
        None => {
            let pinned = crate::trust::server_ca(base)
                .map_err(|error| ClientError::Setup(format!("{error:#}")))?;
            let server = base.to_owned();
            ApiTrust::FirstUse(FirstUse {
                system_roots: rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
                pinned,
                record: std::sync::Arc::new(move |fingerprint| {
                    crate::trust::record_server_ca(&server, fingerprint);
                }),
                store: crate::trust::known_servers_file().map_or_else(
                    |_| "known-servers.json".to_owned(),
                    |p| p.display().to_string(),
                ),
            })
        }
    };
    stella_pki::api_client_tls_config(trust).map_err(|error| ClientError::Setup(error.to_string()))
}

/// Checks `--server` and returns it without a trailing slash.
fn server_url(server: &str) -> Result<String, ClientError> {
    let invalid = |reason: String| ClientError::InvalidServer {
        server: server.to_owned(),
        reason,
    };
    let trimmed = server.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty, use http://host:port".to_owned()));
    }
    if !trimmed.contains("://") {
        return Err(invalid("no scheme, use http://… or https://…".to_owned()));
    }
    let url = reqwest::Url::parse(trimmed).map_err(|error| invalid(error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}`, use http://… or https://…",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment has no place here".to_owned()));
    }
    Ok(trimmed.trim_end_matches('/').to_owned())
}

/// The cause of a transport error, on one line and without the wrapping layers
/// (`error sending request for url (…)`, `client error (Connect)`).
fn transport_cause(error: &reqwest::Error, base: &str, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {}", humantime::format_duration(timeout));
    }
    let host = reqwest::Url::parse(base)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    let mut dns = false;
    while let Some(cause) = source {
        if let Some(tls) = find_rustls(cause) {
            // A verifier's own refusal (a changed CA) says it all; rustls would print
            // its debug form.
            if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls {
                return format!("TLS handshake failed: {}", other.0);
            }
            return format!("TLS handshake failed: {tls}");
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => {
                    return format!("timed out after {}", humantime::format_duration(timeout))
                }
                _ => {}
            }
        }
        // hyper-util's connector names the failing step; its source says why.
        if cause.to_string() == "dns error" {
            dns = true;
        }
        source = cause.source();
    }
    let root = root_cause(error);
    if dns {
        return format!("cannot resolve `{host}`: {root}");
    }
    // A TLS listener answers a plain HTTP request with a TLS alert (no HTTP version),
    // or drops it.
    if base.starts_with("http://")
        && (root.contains("invalid HTTP version parsed")
            || root.contains("connection closed before message completed"))
    {
        return format!("{root} (if the server serves TLS, use https://)");
    }
    root
}

/// A rustls error, directly or inside (nested) `io::Error`s, as tokio-rustls and reqwest
/// wrap them; `io::Error::source` skips the wrapped error, so look with `get_ref`.
fn find_rustls<'a>(cause: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: &(dyn StdError + 'static) = cause;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    }
}

/// The innermost error's message, without ` (os error N)`.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut innermost = error;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    let text = innermost.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_need_an_http_scheme_and_a_host() {
        let message = |s: &str| match server_url(s) {
            Ok(url) => url,
            Err(error) => error.to_string(),
        };
        assert_eq!(
            message("127.0.0.1:8080"),
            "invalid --server `127.0.0.1:8080`: no scheme, use http://… or https://…"
        );
        assert_eq!(
            message("localhost:8080"),
            "invalid --server `localhost:8080`: no scheme, use http://… or https://…"
        );
        assert_eq!(
            message("ftp://host"),
            "invalid --server `ftp://host`: scheme `ftp`, use http://… or https://…"
        );
        assert!(message("http://").starts_with("invalid --server `http://`:"));
        assert_eq!(message("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(
            message("https://stella.example:8080"),
            "https://stella.example:8080"
        );
    }

    async fn cause_of(base: &str) -> String {
        let client = match Client::new(base, None, Duration::from_secs(5)) {
            Ok(client) => client,
            Err(error) => return error.to_string(),
        };
        match client.get("/whoami").await {
            Ok(value) => format!("unexpected answer {value}"),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_connection_refused() -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        drop(listener);
        assert_eq!(
            cause_of(&base).await,
            format!("cannot reach the server at {base}: connection refused")
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_unknown_host_is_a_dns_failure() {
        // `.invalid` never resolves (RFC 6761).
        let message = cause_of("http://stella.invalid:8080").await;
        assert!(
            message.starts_with(
                "cannot reach the server at http://stella.invalid:8080: cannot resolve `stella.invalid`: "
            ),
            "{message}"
        );
    }

    #[tokio::test]
    async fn https_to_a_plain_http_port_is_a_tls_failure() -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0_u8; 1024];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let message = cause_of(&format!("https://{addr}")).await;
        server.abort();
        assert!(
            message.starts_with(&format!(
                "cannot reach the server at https://{addr}: TLS handshake failed: "
            )),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_server_times_out() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let client = Client::new(&format!("http://{addr}"), None, Duration::from_millis(300))?;
        let message = match client.get("/whoami").await {
            Ok(value) => format!("unexpected answer {value}"),
            Err(error) => error.to_string(),
        };
        server.abort();
        assert_eq!(
            message,
            format!("cannot reach the server at http://{addr}: timed out after 300ms")
        );
        Ok(())
    }
}
