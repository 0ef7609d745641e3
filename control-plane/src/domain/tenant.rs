//! Tenants: a team's space of environments, targets, agents, releases, promotions,
//! runs and audit trail, and the role bindings that let users into one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Invalid, Role};

/// The longest tenant name: `tenant_` and the name must fit PostgreSQL's 63-byte
/// identifiers, since each tenant has a schema of its own there.
pub const MAX_TENANT_NAME: usize = 48;

/// A validated tenant name: 1 to 48 lowercase letters, digits or `-`, starting with a
/// letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// The name of the tenant every server has, where single-team use lives.
    pub const DEFAULT: &'static str = "default";

    /// The `default` tenant.
    pub fn default_tenant() -> TenantId {
        TenantId(TenantId::DEFAULT.to_owned())
    }

    /// Whether this is the `default` tenant.
    pub fn is_default(&self) -> bool {
        self.0 == TenantId::DEFAULT
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The PostgreSQL schema holding this tenant's tables (`-` becomes `_`, which a
    /// tenant name cannot contain, so two tenants never share a schema).
    pub fn schema(&self) -> String {
        format!("tenant_{}", self.0.replace('-', "_"))
    }
}

impl FromStr for TenantId {
    type Err = Invalid;

    fn from_str(name: &str) -> Result<Self, Invalid> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if first_ok && rest_ok && name.len() <= MAX_TENANT_NAME {
            Ok(TenantId(name.to_owned()))
        } else {
            Err(Invalid(format!(
                "invalid tenant `{}`: use 1 to {MAX_TENANT_NAME} lowercase letters, digits or '-', starting with a letter or digit",
                name.chars().take(80).collect::<String>()
            )))
        }
    }
}

impl TryFrom<String> for TenantId {
    type Error = Invalid;

    fn try_from(name: String) -> Result<Self, Invalid> {
        name.parse()
    }
}

impl From<TenantId> for String {
    fn from(tenant: TenantId) -> String {
        tenant.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant as the server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Its name.
    pub name: TenantId,
    /// When it was created, unix milliseconds (0 for `default`).
    pub created_at_ms: i64,
    /// Who created it.
    pub created_by: String,
}

/// A user's role in a tenant, possibly narrowed to one environment of it (an
/// approver for `prod` only).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoleBinding {
    /// The tenant.
    pub tenant: TenantId,
    /// The role held there.
    pub role: Role,
    /// The environment the role is narrowed to; `None` for the whole tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked_and_map_to_distinct_schemas() {
        for good in [
            "default",
            "a",
            "team-1",
            "0ps",
            &"x".repeat(MAX_TENANT_NAME),
        ] {
            assert!(good.parse::<TenantId>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"x".repeat(MAX_TENANT_NAME + 1),
        ] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?}");
        }
        let tenant: TenantId = "team-a".parse().expect("valid");
        assert_eq!(tenant.schema(), "tenant_team_a");
        assert!(tenant.schema().len() <= 63);
        assert!(TenantId::default_tenant().is_default());
    }
}
