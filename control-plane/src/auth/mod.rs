//! Who calls the API: the state behind authentication that is not in the store.
//!
//! - `jwt`: the OAuth2 access-token signing key and its verification;
//! - `ratelimit`: token buckets of the authentication endpoints;
//! - [`Identity`]: those plus the coalescing of API token last-use writes and the
//!   cached set of revoked OAuth2 clients.
//!
//! Staleness, stated once: an API token is looked up in the store at every request, so
//! its revocation or expiry acts at once on every replica. An access token (JWT) is
//! verified without the store; its client's revocation is read from the store at most
//! [`REVOKED_CLIENTS_MAX_AGE`] late, so a revoked client's tokens stop working on every
//! replica within that time (and they expire within `oauth_access_token_ttl_seconds`
//! anyway). A token's last use is written at most once per [`LAST_USE_INTERVAL_MS`].

pub mod jwt;
pub mod ratelimit;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::config::ServerConfig;
use crate::domain::{Scope, User};

/// How late a replica may learn that an OAuth2 client was revoked.
pub const REVOKED_CLIENTS_MAX_AGE: Duration = Duration::from_secs(3);

/// A token's last use is written at most this often.
pub const LAST_USE_INTERVAL_MS: i64 = 60_000;

/// Who a request authenticated as, and with what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user, or for an OAuth2 client a user named `client:<id>` holding the roles
    /// its token's `stella.*` scopes grant.
    pub user: User,
    /// The credential used.
    pub credential: Credential,
}

/// The credential a request was authenticated with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An API token, by id.
    ApiToken(String),
    /// An OAuth2 access token.
    AccessToken {
        /// The client it was issued to.
        client_id: String,
        /// Its scopes.
        scopes: Vec<Scope>,
        /// The tenant it acts in.
        tenant: crate::domain::TenantId,
    },
    /// A signed-in console session (a browser's cookie).
    Session,
}

/// Why a bearer credential was refused: a fixed `reason` (the metric label) and a
/// message for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailure {
    /// `missing_token`, `malformed_token`, `unknown_token`, `expired_token`,
    /// `revoked_token`, `invalid_jwt`, `expired_jwt`, `revoked_client`.
    pub reason: &'static str,
    /// What the caller is told.
    pub message: String,
}

impl AuthFailure {
    /// A refusal.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        AuthFailure {
            reason,
            message: message.into(),
        }
    }
}

/// Authentication state of one replica.
#[derive(Debug)]
pub struct Identity {
    /// The access-token keys.
    pub jwt: jwt::JwtKeys,
    /// `iss` of access tokens.
    pub issuer: String,
    /// Per client IP address.
    pub by_ip: ratelimit::RateLimiter,
    /// Per OAuth2 client id.
    pub by_client: ratelimit::RateLimiter,
    /// Token id → when this replica last wrote its last use.
    last_use_written: parking_lot::Mutex<HashMap<String, i64>>,
    /// Revoked client ids, and when they were read.
    revoked_clients: parking_lot::RwLock<(HashSet<String>, Option<Instant>)>,
}

impl Identity {
    /// The state for `config`, with the access-token key and the issuer URL.
    pub fn new(config: &ServerConfig, jwt: jwt::JwtKeys, issuer: String) -> Self {
        Identity {
            jwt,
            issuer,
            by_ip: ratelimit::RateLimiter::new(
                config.auth_rate_limit_per_minute,
                config.auth_rate_limit_burst,
            ),
            by_client: ratelimit::RateLimiter::new(
                config.auth_rate_limit_per_minute,
                config.auth_rate_limit_burst,
            ),
            last_use_written: parking_lot::Mutex::default(),
            revoked_clients: parking_lot::RwLock::new((HashSet::new(), None)),
        }
    }

    /// Whether a token's use at `now_ms` should be written: not if it was written (by
    /// any replica: `stored` is the store's value) or is being written by this one
    /// within [`LAST_USE_INTERVAL_MS`].
    pub fn should_write_last_use(&self, token_id: &str, stored: Option<i64>, now_ms: i64) -> bool {
        if stored.is_some_and(|at| now_ms - at < LAST_USE_INTERVAL_MS) {
            return false;
        }
        let mut written = self.last_use_written.lock();
        if written
            .get(token_id)
            .is_some_and(|at| now_ms - at < LAST_USE_INTERVAL_MS)
        {
            return false;
        }
        if written.len() > 100_000 {
            written.retain(|_, at| now_ms - *at < LAST_USE_INTERVAL_MS);
        }
        written.insert(token_id.to_owned(), now_ms);
        true
    }

    /// The cached revoked-client set if it is fresh enough.
    pub fn revoked_clients_if_fresh(&self, client_id: &str) -> Option<bool> {
        let cached = self.revoked_clients.read();
        match cached.1 {
            Some(read) if read.elapsed() < REVOKED_CLIENTS_MAX_AGE => {
                Some(cached.0.contains(client_id))
            }
            _ => None,
        }
    }

    /// Replaces the revoked-client set with what the store holds now.
    pub fn set_revoked_clients(&self, ids: Vec<String>) {
        *self.revoked_clients.write() = (ids.into_iter().collect(), Some(Instant::now()));
    }

    /// Adds a client revoked by this replica (at once, before the next read).
    pub fn add_revoked_client(&self, id: &str) {
        self.revoked_clients.write().0.insert(id.to_owned());
    }
}
