//! API tokens, OAuth2 clients and the scopes of access tokens. No IO.

use std::fmt;
use std::str::FromStr;

use super::Role;

/// An API token as stored (never the token itself: only its hash is kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Public id (`tok_…`), shown in lists and used to revoke.
    pub id: String,
    /// The owner's id.
    pub user_id: String,
    /// The owner's name.
    pub user_name: String,
    /// What the owner called it (may be empty).
    pub name: String,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// When it stops working; `None` for tokens from before expiries existed.
    pub expires_at_ms: Option<i64>,
    /// Last successful use, written at most once a minute per token.
    pub last_used_at_ms: Option<i64>,
    /// When it was revoked.
    pub revoked_at_ms: Option<i64>,
}

/// Whether a token works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// It authenticates.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl TokenState {
    /// `active`, `expired`, `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

impl ApiToken {
    /// Its state at `now_ms`.
    pub fn state(&self, now_ms: i64) -> TokenState {
        if self.revoked_at_ms.is_some() {
            TokenState::Revoked
        } else if self.expires_at_ms.is_some_and(|at| at <= now_ms) {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }
}

/// A service account that gets access tokens by the client credentials grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthClient {
    /// `client_id` (`stc_…`).
    pub id: String,
    /// Unique, operator-facing name.
    pub name: String,
    /// SHA-256 (hex) of the secret.
    pub secret_hash: String,
    /// The scopes it may be granted.
    pub scopes: Vec<Scope>,
    /// Who created it.
    pub created_by: String,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// When it was revoked: it gets no more tokens, and its tokens stop working.
    pub revoked_at_ms: Option<i64>,
    /// The tenant it acts in.
    pub tenant: super::TenantId,
}

/// What an access token lets its bearer do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// A Stella role: `stella.viewer`, `stella.operator`, `stella.approver`, `stella.admin`.
    Stella(Role),
    /// `taskrunner.viewer`: read runs and logs.
    TaskRunnerViewer,
    /// `taskrunner.operator`: create runs and apply approvals.
    TaskRunnerOperator,
    /// `taskrunner.admin`: everything of the TaskRunner API.
    TaskRunnerAdmin,
}

impl Scope {
    /// Every scope, in the order the metadata lists them.
    pub const ALL: [Scope; 7] = [
        Scope::Stella(Role::Viewer),
        Scope::Stella(Role::Operator),
        Scope::Stella(Role::Approver),
        Scope::Stella(Role::Admin),
        Scope::TaskRunnerViewer,
        Scope::TaskRunnerOperator,
        Scope::TaskRunnerAdmin,
    ];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Stella(Role::Viewer) => "stella.viewer",
            Scope::Stella(Role::Operator) => "stella.operator",
            Scope::Stella(Role::Approver) => "stella.approver",
            Scope::Stella(Role::Admin) => "stella.admin",
            Scope::TaskRunnerViewer => "taskrunner.viewer",
            Scope::TaskRunnerOperator => "taskrunner.operator",
            Scope::TaskRunnerAdmin => "taskrunner.admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of [`Scope::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownScope(pub String);

impl fmt::Display for UnknownScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown scope `{}`", self.0)
    }
}

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// Parses a space-separated scope list (RFC 6749 §3.3); sorted, without repeats.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, UnknownScope> {
    let mut scopes = text
        .split_ascii_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<Scope>, _>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// A scope list as RFC 6749 writes it: names separated by single spaces.
pub fn format_scopes(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The Stella roles a set of scopes grants (the `stella.*` ones).
pub fn roles_of(scopes: &[Scope]) -> Vec<Role> {
    scopes
        .iter()
        .filter_map(|scope| match scope {
            Scope::Stella(role) => Some(*role),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_grant_roles() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        let scopes =
            parse_scopes("taskrunner.viewer  stella.operator stella.operator").unwrap_or_default();
        assert_eq!(format_scopes(&scopes), "stella.operator taskrunner.viewer");
        assert_eq!(roles_of(&scopes), vec![Role::Operator]);
        assert!(parse_scopes("stella.root").is_err());
    }

    #[test]
    fn token_state_follows_revocation_then_expiry() {
        let mut token = ApiToken {
            id: "tok_1".into(),
            user_id: "u".into(),
            user_name: "alice".into(),
            name: String::new(),
            created_at_ms: 0,
            expires_at_ms: Some(100),
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        assert_eq!(token.state(99), TokenState::Active);
        assert_eq!(token.state(100), TokenState::Expired);
        token.revoked_at_ms = Some(50);
        assert_eq!(token.state(10), TokenState::Revoked);
        token.expires_at_ms = None;
        token.revoked_at_ms = None;
        assert_eq!(token.state(i64::MAX), TokenState::Active);
    }
}
