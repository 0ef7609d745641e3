//! A TEST DOUBLE of a Docker registry token server, written from distribution's "Token
//! Authentication Specification" and "Token Authentication Implementation" documents
//! (`docs/spec/auth/token.md`, `jwt.md`). It is not a real authorization service: it
//! exists so tests can run a real `docker-registry` with `auth: token` and watch a
//! client go through the bearer challenge flow.
//!
//! `GET /token?service=…&scope=repository:NAME:ACTIONS…` with optional basic credentials
//! answers `{"token": JWT, "access_token": JWT, "expires_in": 300, "issued_at": …}`.
//! Known users get the `pull`/`push` actions they ask for; anonymous callers get a token
//! granting nothing (the registry then refuses them); wrong credentials get 401.
//!
//! Tokens are ES256 JWTs whose header carries the signer's self-signed certificate
//! (`x5c`); the registry trusts it because that certificate is its `rootcertbundle`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// The `service` the registry names in its challenge and the tokens' audience.
pub const SERVICE: &str = "stella-test";
/// The tokens' issuer.
pub const ISSUER: &str = "stella-test-issuer";
/// How long a token lives.
const TOKEN_LIFETIME_SECONDS: u64 = 300;

/// A token request as the double saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The authenticated user, `None` for anonymous requests.
    pub subject: Option<String>,
    /// The `scope` parameters asked for.
    pub scopes: Vec<String>,
    /// Whether a token was issued.
    pub issued: bool,
}

/// The token server double, on a loopback port-0 listener; stops on drop.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    state: Arc<Signer>,
    task: tokio::task::JoinHandle<()>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der_base64: String,
    users: BTreeMap<String, String>,
    requests: Mutex<Vec<TokenRequest>>,
}

impl TokenServer {
    /// Starts the double with these `(user, password)` pairs.
    pub async fn start(users: &[(&str, &str)]) -> anyhow::Result<Self> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = rcgen::CertificateParams::new(vec!["stella-test-token-signer".to_owned()])?
            .self_signed(&key_pair)?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("loading the signing key: {e}"))?;
        let state = Arc::new(Signer {
            key,
            cert_der_base64: STANDARD.encode(cert.der()),
            users: users
                .iter()
                .map(|(user, password)| ((*user).to_owned(), (*password).to_owned()))
                .collect(),
            requests: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/token", get(issue_token))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "token server double failed");
            }
        });
        Ok(TokenServer {
            addr,
            cert_pem: cert.pem(),
            state,
            task,
        })
    }

    /// `http://127.0.0.1:PORT/token`: the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The signer's certificate: the registry's `rootcertbundle`.
    pub fn root_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the certificate to `bundle` and returns the registry's `auth:` section.
    pub fn registry_auth_config(&self, bundle: &Path) -> anyhow::Result<String> {
        std::fs::write(bundle, &self.cert_pem)
            .with_context(|| format!("writing {}", bundle.display()))?;
        Ok(format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            bundle.display()
        ))
    }

    /// A token for `subject` granting `actions` on `repository`, without HTTP (to
    /// prepare content in the registry).
    pub fn mint(&self, subject: &str, repository: &str, actions: &[&str]) -> String {
        let access = vec![json!({
            "type": "repository",
            "name": repository,
            "actions": actions,
        })];
        self.state.sign(subject, &access)
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.state.requests).clone()
    }
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Signer {
    /// An ES256 JWT as distribution's `token.Token` verifies it.
    fn sign(&self, subject: &str, access: &[Value]) -> String {
        let now = unix_seconds();
        let header = json!({
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [self.cert_der_base64],
        });
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + TOKEN_LIFETIME_SECONDS,
            // A little slack for clock reading order between us and the registry.
            "nbf": now.saturating_sub(5),
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // FIXED signing gives r || s, 64 bytes: the JWS form of ES256.
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap_or_else(|e| panic!("ES256 signing failed: {e}"));
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// `Some(user)` for good credentials, `None` without any, `Err` for bad ones.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Option<String>, ()> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or(())?;
        let decoded = STANDARD.decode(encoded.trim()).map_err(|_| ())?;
        let text = String::from_utf8(decoded).map_err(|_| ())?;
        let (user, password) = text.split_once(':').ok_or(())?;
        match self.users.get(user) {
            Some(expected) if expected == password => Ok(Some(user.to_owned())),
            _ => Err(()),
        }
    }
}

/// `GET /token`: the spec's token endpoint.
async fn issue_token(
    State(signer): State<Arc<Signer>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let scopes: Vec<String> = params
        .iter()
        .filter(|(name, _)| name == "scope")
        .map(|(_, value)| value.clone())
        .collect();
    let service = params
        .iter()
        .find(|(name, _)| name == "service")
        .map(|(_, value)| value.as_str());
    let record = |subject: Option<String>, issued: bool| {
        lock(&signer.requests).push(TokenRequest {
            subject,
            scopes: scopes.clone(),
            issued,
        });
    };
    if service != Some(SERVICE) {
        record(None, false);
        let body = json!({"details": format!("unknown service {service:?}")});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let subject = match signer.authenticate(&headers) {
        Ok(subject) => subject,
        Err(()) => {
            record(None, false);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"stella-test\"")],
                Json(json!({"details": "incorrect username or password"})),
            )
                .into_response();
        }
    };
    // Known users get what they ask for (pull, push); anonymous callers nothing.
    let access: Vec<Value> = match &subject {
        None => Vec::new(),
        Some(_) => scopes.iter().filter_map(|scope| grant(scope)).collect(),
    };
    let token = signer.sign(subject.as_deref().unwrap_or(""), &access);
    record(subject, true);
    let issued_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_LIFETIME_SECONDS,
        "issued_at": issued_at,
    }))
    .into_response()
}

/// `repository:NAME:ACTION,…` → an `access` entry with the actions this double grants.
fn grant(scope: &str) -> Option<Value> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|action| matches!(*action, "pull" | "push"))
        .collect();
    Some(json!({"type": "repository", "name": name, "actions": actions}))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
