//! Plain domain types of the control plane.
//!
//! Architecture invariant: this module does no IO and knows nothing of SQL, gRPC or HTTP.
//! The store, the gateway and the API convert their own representations to and from these
//! types at their edges.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that breaks a domain rule; the message is fit for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A unix time in milliseconds as RFC 3339 UTC with exactly three decimals
/// (`2026-12-02T19:16:20.480Z`), the one form times are shown in.
pub fn format_utc_ms(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// A string-named enum: `as_str`, `FromStr` (refusing unknown names with [`Invalid`])
/// and `Display`, for the states and kinds the store keeps by name.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The stored and shown name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self, Invalid> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(Invalid(format!("unknown {} `{other}`", stringify!($name)))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod deployment;
mod drift;
mod environment;
mod event;
mod identity;
mod image;
mod promotion;
mod release;
mod rollout;
mod router;
mod run;
mod target;
mod tenant;
mod variables;
mod webhook;

pub use deployment::*;
pub use drift::*;
pub use environment::*;
pub use event::*;
pub use identity::*;
pub use image::*;
pub use promotion::*;
pub use release::*;
pub use rollout::*;
pub use router::*;
pub use run::*;
pub use target::*;
pub use tenant::*;
pub use variables::*;
pub use webhook::*;

/// What a user may do; a user holds any number of roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Creates releases, requests promotions, manages targets.
    Operator,
    /// Approves or rejects promotions.
    Approver,
    /// Manages users, tokens and agents.
    Admin,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Approver, Role::Admin];

    /// The lowercase name used in the CLI, the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A role name that is not one of `viewer`, `operator`, `approver`, `admin`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}, expected one of viewer, operator, approver, admin")]
pub struct UnknownRole(pub String);

/// A person or automation that calls the REST API with API tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id chosen by the server.
    pub id: String,
    /// Unique, operator-facing name.
    pub name: String,
    /// The roles held; order carries no meaning.
    pub roles: Vec<Role>,
    /// When the user was created, unix milliseconds.
    pub created_at_ms: i64,
}

impl User {
    /// Whether the user holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Facts an agent reports about its host in `Hello`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// The host name.
    pub hostname: String,
    /// Operating system name, e.g. `Debian GNU/Linux`.
    pub os_name: String,
    /// Operating system version, e.g. `12`.
    pub os_version: String,
    /// Kernel version, e.g. `6.1.0-18-amd64`.
    pub kernel_version: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// Number of logical CPUs.
    pub cpu_count: u32,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// When the host booted, unix seconds.
    pub boot_time_unix_seconds: i64,
}

/// An enrolled agent as the control plane remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// UUID v7 chosen by the server at enrolment; also in the certificate's SPIFFE URI.
    pub id: String,
    /// Unique, operator-facing name.
    pub name: String,
    /// Labels from enrolment, replaced by those of the latest `Hello`.
    pub labels: BTreeMap<String, String>,
    /// Target kinds the agent can drive, from the latest `Hello`.
    pub capabilities: Vec<String>,
    /// Host facts from the latest `Hello`; `None` until the agent first connected.
    pub host: Option<HostFacts>,
    /// Agent software version from the latest `Hello`.
    pub agent_version: Option<String>,
    /// Serial number of the agent's current certificate (hex).
    pub cert_serial: String,
    /// When the current certificate expires, unix milliseconds.
    pub cert_not_after_ms: i64,
    /// When the agent enrolled, unix milliseconds.
    pub enrolled_at_ms: i64,
    /// Latest `Hello` or heartbeat, unix milliseconds; `None` if it never connected.
    pub last_seen_at_ms: Option<i64>,
    /// When the agent was revoked, unix milliseconds.
    pub revoked_at_ms: Option<i64>,
    /// When the agent said goodbye on a clean stop; cleared by its next `Hello`.
    pub disconnected_at_ms: Option<i64>,
    /// When its session ended without a goodbye (process killed, connection cut), if it
    /// has not said `Hello` since; cleared by its next `Hello`.
    pub session_lost_at_ms: Option<i64>,
    /// Why the agent was revoked, as the operator said.
    pub revoke_reason: Option<String>,
}

/// The state of an agent, derived from its record and the clock (never stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Enrolled but never connected.
    Enrolled,
    /// Seen within the last three heartbeat intervals.
    Connected,
    /// Seen once, but not within the last three heartbeat intervals.
    Unreachable,
    /// Stopped cleanly: said goodbye and has not connected since.
    Disconnected,
    /// Revoked: refused on its next call.
    Revoked,
}

impl AgentState {
    /// The lowercase name used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Enrolled => "enrolled",
            AgentState::Connected => "connected",
            AgentState::Unreachable => "unreachable",
            AgentState::Disconnected => "disconnected",
            AgentState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many missed heartbeat intervals make an agent unreachable (RFC 0001).
pub const MISSED_HEARTBEATS_UNREACHABLE: i64 = 3;

/// How many heartbeat intervals an agent whose session ended without a goodbye has to
/// come back before it counts as unreachable: long enough for an agent whose connection
/// broke to reconnect (its first retry comes within half a second), short enough that a
/// killed agent is not shown connected for three intervals.
pub const LOST_SESSION_GRACE_INTERVALS: i64 = 1;

impl Agent {
    /// The agent's state at `now_ms`: revoked if revoked; disconnected if it said goodbye
    /// since its last `Hello`; enrolled if never seen; unreachable if its session was lost
    /// more than one heartbeat interval ago and it was not heard from since; connected if
    /// seen within three heartbeat intervals; unreachable otherwise.
    pub fn state(&self, now_ms: i64, heartbeat_interval_ms: i64) -> AgentState {
        if self.revoked_at_ms.is_some() {
            return AgentState::Revoked;
        }
        if self.disconnected_at_ms.is_some() {
            return AgentState::Disconnected;
        }
        let Some(last_seen_at_ms) = self.last_seen_at_ms else {
            return AgentState::Enrolled;
        };
        if let Some(lost_at_ms) = self.session_lost_at_ms {
            let grace_ms = heartbeat_interval_ms.saturating_mul(LOST_SESSION_GRACE_INTERVALS);
            if lost_at_ms >= last_seen_at_ms && now_ms.saturating_sub(lost_at_ms) > grace_ms {
                return AgentState::Unreachable;
            }
        }
        let silence_ms = now_ms.saturating_sub(last_seen_at_ms);
        if silence_ms <= heartbeat_interval_ms.saturating_mul(MISSED_HEARTBEATS_UNREACHABLE) {
            AgentState::Connected
        } else {
            AgentState::Unreachable
        }
    }
}

/// What the store records when an agent enrols.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAgent {
    /// UUID v7 chosen by the server.
    pub id: String,
    /// Unique, operator-facing name.
    pub name: String,
    /// Labels given at enrolment.
    pub labels: BTreeMap<String, String>,
    /// Serial number of the first certificate (hex).
    pub cert_serial: String,
    /// When the first certificate expires, unix milliseconds.
    pub cert_not_after_ms: i64,
    /// When the agent enrolled, unix milliseconds.
    pub enrolled_at_ms: i64,
}

/// What the store records from an agent's `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRecord {
    /// Agent software version.
    pub agent_version: String,
    /// Target kinds the agent can drive.
    pub capabilities: Vec<String>,
    /// The agent's labels; they replace the stored ones.
    pub labels: BTreeMap<String, String>,
    /// Facts about the agent's host.
    pub host: HostFacts,
    /// When the server received the `Hello`, unix milliseconds.
    pub at_ms: i64,
}

/// A join token about to be stored; only the hash of its secret is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJoinToken {
    /// Lowercase hex SHA-256 of the token's secret.
    pub hash: String,
    /// Id of the user who created the token.
    pub created_by: String,
    /// When the token was created, unix milliseconds.
    pub created_at_ms: i64,
    /// When the token stops being accepted, unix milliseconds.
    pub expires_at_ms: i64,
}

/// Why a join token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum JoinTokenRefusal {
    /// No token with this secret was ever issued.
    #[error("unknown join token")]
    Unknown,
    /// The token was consumed by an earlier enrolment.
    #[error("join token already used")]
    AlreadyUsed,
    /// The token expired before it was used.
    #[error("join token expired")]
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL_MS: i64 = 5_000;

    fn agent(last_seen_at_ms: Option<i64>, revoked_at_ms: Option<i64>) -> Agent {
        Agent {
            id: "0190a7a0-0000-7000-8000-000000000001".to_owned(),
            name: "web-1".to_owned(),
            labels: BTreeMap::new(),
            capabilities: Vec::new(),
            host: None,
            agent_version: None,
            cert_serial: "01".to_owned(),
            cert_not_after_ms: 86_400_000,
            enrolled_at_ms: 0,
            last_seen_at_ms,
            revoked_at_ms,
            revoke_reason: None,
            disconnected_at_ms: None,
            session_lost_at_ms: None,
        }
    }

    #[test]
    fn a_lost_session_makes_an_agent_unreachable_after_one_interval() {
        let seen = 1_000_000;
        let mut a = agent(Some(seen), None);
        a.session_lost_at_ms = Some(seen + 100);
        assert_eq!(
            a.state(seen + 100 + INTERVAL_MS, INTERVAL_MS),
            AgentState::Connected
        );
        assert_eq!(
            a.state(seen + 101 + INTERVAL_MS, INTERVAL_MS),
            AgentState::Unreachable
        );
    }

    #[test]
    fn a_heartbeat_after_a_lost_session_wins() {
        // The loss was recorded by one replica after the agent was heard on another.
        let lost = 1_000_000;
        let mut a = agent(Some(lost + 1), None);
        a.session_lost_at_ms = Some(lost);
        assert_eq!(
            a.state(lost + 2 * INTERVAL_MS, INTERVAL_MS),
            AgentState::Connected
        );
    }

    #[test]
    fn a_goodbye_wins_over_a_lost_session() {
        let mut a = agent(Some(1_000_000), None);
        a.session_lost_at_ms = Some(1_000_000);
        a.disconnected_at_ms = Some(1_000_000);
        assert_eq!(
            a.state(1_000_000 + 10 * INTERVAL_MS, INTERVAL_MS),
            AgentState::Disconnected
        );
    }

    #[test]
    fn an_agent_that_said_goodbye_is_disconnected_until_it_says_hello() {
        let mut a = agent(Some(1_000_000), None);
        a.disconnected_at_ms = Some(1_000_100);
        assert_eq!(a.state(1_000_200, INTERVAL_MS), AgentState::Disconnected);
        a.revoked_at_ms = Some(1_000_300);
        assert_eq!(a.state(1_000_400, INTERVAL_MS), AgentState::Revoked);
    }

    #[test]
    fn times_show_with_exactly_three_decimals() {
        assert_eq!(format_utc_ms(1_796_152_580_480), "2026-12-01T19:16:20.480Z");
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_000), "1970-01-01T00:00:01.000Z");
    }

    #[test]
    fn never_seen_agent_is_enrolled() {
        assert_eq!(
            agent(None, None).state(1_000_000, INTERVAL_MS),
            AgentState::Enrolled
        );
    }

    #[test]
    fn agent_is_connected_up_to_three_intervals() {
        let now = 1_000_000;
        let a = agent(Some(now - 3 * INTERVAL_MS), None);
        assert_eq!(a.state(now, INTERVAL_MS), AgentState::Connected);
        let a = agent(Some(now), None);
        assert_eq!(a.state(now, INTERVAL_MS), AgentState::Connected);
    }

    #[test]
    fn agent_seen_in_the_future_is_connected() {
        // Clock skew between replicas must not make a live agent look unreachable.
        let now = 1_000_000;
        let a = agent(Some(now + 2_000), None);
        assert_eq!(a.state(now, INTERVAL_MS), AgentState::Connected);
    }

    #[test]
    fn agent_is_unreachable_after_three_missed_intervals() {
        let now = 1_000_000;
        let a = agent(Some(now - 3 * INTERVAL_MS - 1), None);
        assert_eq!(a.state(now, INTERVAL_MS), AgentState::Unreachable);
    }

    #[test]
    fn revocation_wins_over_everything() {
        let now = 1_000_000;
        assert_eq!(
            agent(Some(now), Some(now - 1)).state(now, INTERVAL_MS),
            AgentState::Revoked
        );
        assert_eq!(
            agent(None, Some(now)).state(now, INTERVAL_MS),
            AgentState::Revoked
        );
    }

    #[test]
    fn agent_state_names() {
        assert_eq!(AgentState::Unreachable.to_string(), "unreachable");
        assert_eq!(
            serde_json::to_string(&AgentState::Connected)
                .ok()
                .as_deref(),
            Some("\"connected\"")
        );
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_string(&role).ok(),
                Some(format!("\"{role}\""))
            );
        }
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
    }

    #[test]
    fn unknown_roles_are_refused() {
        assert_eq!("root".parse::<Role>(), Err(UnknownRole("root".to_owned())));
        assert!("Admin".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
        assert!(" admin".parse::<Role>().is_err());
    }
}
