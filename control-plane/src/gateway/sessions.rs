//! Live state of the gateway: open agent sessions, the revocation set consulted at
//! every TLS handshake, and heartbeats waiting for their batched write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use stella_pki::{AgentIdentity, RevocationList};
use tokio_util::sync::CancellationToken;

/// Why the server closed a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The agent was revoked: it must not come back.
    Revoked,
    /// The same agent opened a newer session.
    Replaced,
    /// This replica is stopping: the agent should reconnect (to it or another replica).
    ShuttingDown,
}

impl CloseReason {
    /// The status the agent's stream ends with.
    pub fn status(self) -> tonic::Status {
        match self {
            CloseReason::Revoked => tonic::Status::permission_denied("agent revoked"),
            CloseReason::Replaced => tonic::Status::aborted("replaced by a newer session"),
            CloseReason::ShuttingDown => tonic::Status::unavailable("server shutting down"),
        }
    }
}

/// One item of an agent's stream. Boxed: the channel allocates its slots up front,
/// and a boxed slot is a pointer instead of a whole message or status.
pub type OutboxItem = Box<Result<stella_proto::v1::ServerMessage, tonic::Status>>;

/// What the server sends down one agent's stream.
pub type Outbox = tokio::sync::mpsc::Sender<OutboxItem>;

#[derive(Debug)]
struct SessionHandle {
    session_id: u64,
    close: CancellationToken,
    reason: std::sync::Arc<Mutex<Option<CloseReason>>>,
    outbox: Outbox,
}

/// At most one open session per agent on this replica.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<String, SessionHandle>>,
}

/// A registered session; closing it ends the agent's stream.
#[derive(Debug)]
pub struct SessionGuard {
    /// Unique per replica.
    pub session_id: u64,
    /// Cancelled when the server closes the session.
    pub closed: CancellationToken,
    reason: std::sync::Arc<Mutex<Option<CloseReason>>>,
}

impl SessionGuard {
    /// Why the server closed the session, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.reason.lock()
    }
}

impl SessionRegistry {
    /// Registers a new session for an agent, closing any older one (the agent
    /// reconnected before we noticed its old stream died).
    pub fn open(&self, agent_id: &str, outbox: Outbox) -> SessionGuard {
        let session_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        let reason = std::sync::Arc::new(Mutex::new(None));
        let handle = SessionHandle {
            session_id,
            close: close.clone(),
            reason: reason.clone(),
            outbox,
        };
        if let Some(old) = self.sessions.lock().insert(agent_id.to_owned(), handle) {
            *old.reason.lock() = Some(CloseReason::Replaced);
            old.close.cancel();
        }
        SessionGuard {
            session_id,
            closed: close,
            reason,
        }
    }

    /// Forgets a session that ended, unless a newer one replaced it.
    pub fn remove(&self, agent_id: &str, session_id: u64) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(agent_id)
            .is_some_and(|s| s.session_id == session_id)
        {
            sessions.remove(agent_id);
        }
    }

    /// Closes an agent's session; true if one was open.
    pub fn close(&self, agent_id: &str, reason: CloseReason) -> bool {
        match self.sessions.lock().remove(agent_id) {
            Some(handle) => {
                *handle.reason.lock() = Some(reason);
                handle.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Sends a message down an agent's stream; false when it has no session here
    /// or the session ended meanwhile.
    pub async fn send(&self, agent_id: &str, message: stella_proto::v1::ServerMessage) -> bool {
        let outbox = self.sessions.lock().get(agent_id).map(|s| s.outbox.clone());
        match outbox {
            Some(outbox) => outbox.send(Box::new(Ok(message))).await.is_ok(),
            None => false,
        }
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for (_, handle) in self.sessions.lock().drain() {
            *handle.reason.lock() = Some(reason);
            handle.close.cancel();
        }
    }

    /// Whether an agent has a session here.
    pub fn is_open(&self, agent_id: &str) -> bool {
        self.sessions.lock().contains_key(agent_id)
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Agent ids whose certificates the gateway refuses.
#[derive(Debug, Default)]
pub struct RevocationSet {
    revoked: RwLock<HashSet<String>>,
}

impl RevocationSet {
    /// Starts from the stored revocations.
    pub fn new(ids: Vec<String>) -> Self {
        RevocationSet {
            revoked: RwLock::new(ids.into_iter().collect()),
        }
    }

    /// Adds one agent.
    pub fn insert(&self, agent_id: &str) {
        self.revoked.write().insert(agent_id.to_owned());
    }

    /// Replaces the set with what the store holds.
    pub fn replace(&self, ids: Vec<String>) {
        *self.revoked.write() = ids.into_iter().collect();
    }

    /// Whether an agent id is revoked.
    pub fn contains(&self, agent_id: &str) -> bool {
        self.revoked.read().contains(agent_id)
    }
}

impl RevocationList for RevocationSet {
    fn is_revoked(&self, identity: &AgentIdentity) -> bool {
        self.contains(&identity.agent_id)
    }
}

/// Last heartbeat time per agent since the previous flush.
#[derive(Debug, Default)]
pub struct HeartbeatBuffer {
    pending: Mutex<HashMap<String, i64>>,
}

impl HeartbeatBuffer {
    /// Notes a heartbeat; only the newest per agent is kept.
    pub fn record(&self, agent_id: &str, at_ms: i64) {
        let mut pending = self.pending.lock();
        match pending.get_mut(agent_id) {
            Some(seen) => *seen = (*seen).max(at_ms),
            None => {
                pending.insert(agent_id.to_owned(), at_ms);
            }
        }
    }

    /// Takes everything buffered.
    pub fn drain(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.pending.lock())
            .into_iter()
            .collect()
    }

    /// Puts back a batch whose write failed.
    pub fn restore(&self, batch: Vec<(String, i64)>) {
        for (agent_id, at_ms) in batch {
            self.record(&agent_id, at_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Outbox {
        tokio::sync::mpsc::channel(1).0
    }

    #[test]
    fn a_newer_session_closes_the_older_one() {
        let registry = SessionRegistry::default();
        let first = registry.open("a", outbox());
        let second = registry.open("a", outbox());
        assert!(first.closed.is_cancelled());
        assert!(!second.closed.is_cancelled());
        // The old session ending must not unregister the new one.
        registry.remove("a", first.session_id);
        assert!(registry.is_open("a"));
        assert!(registry.close("a", CloseReason::Revoked));
        assert!(second.closed.is_cancelled());
        assert_eq!(second.close_reason(), Some(CloseReason::Revoked));
        assert!(!registry.close("a", CloseReason::Revoked));
        let third = registry.open("b", outbox());
        registry.close_all(CloseReason::ShuttingDown);
        assert!(third.closed.is_cancelled());
        assert!(registry.is_empty());
    }

    #[test]
    fn heartbeat_buffer_keeps_the_newest_time() {
        let buffer = HeartbeatBuffer::default();
        buffer.record("a", 10);
        buffer.record("a", 5);
        buffer.record("b", 7);
        let mut batch = buffer.drain();
        batch.sort();
        assert_eq!(batch, vec![("a".to_owned(), 10), ("b".to_owned(), 7)]);
        assert!(buffer.drain().is_empty());
    }
}
