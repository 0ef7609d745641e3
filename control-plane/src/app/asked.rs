//! Questions asked of one agent over its stream, and waited for: the one mechanism
//! behind target checks (`CheckTarget` / `CheckResult`) and route requests
//! (`RouteUpdate` / `RouteResult`). A question is asked of the session this replica
//! holds; only the agent asked may answer it, an answer counts once, the wait is
//! bounded, and the question is forgotten when the wait ends either way.

use std::collections::HashMap;
use std::time::Duration;

use stella_proto::v1;
use tokio::sync::oneshot;

use crate::gateway::sessions::SessionRegistry;

/// Questions of one kind asked on this replica and not answered yet, by id: the agent
/// asked and where its answer goes.
pub(crate) struct Asked<T> {
    /// What is asked, for the logs ("check", "route request").
    what: &'static str,
    waiting: parking_lot::Mutex<HashMap<String, (String, oneshot::Sender<T>)>>,
}

impl<T> Asked<T> {
    /// No question asked yet.
    pub(crate) fn new(what: &'static str) -> Self {
        Asked {
            what,
            waiting: parking_lot::Mutex::default(),
        }
    }

    /// Sends the question `message(id)` to `agent_id` over its session on this replica
    /// and waits up to `wait` for the answer; `None` when the agent is not connected
    /// here or did not answer in time.
    pub(crate) async fn ask(
        &self,
        sessions: &SessionRegistry,
        agent_id: &str,
        wait: Duration,
        message: impl FnOnce(String) -> v1::ServerMessage,
    ) -> Option<T> {
        let id = uuid::Uuid::new_v4().to_string();
        let (answer_tx, answer_rx) = oneshot::channel();
        self.waiting
            .lock()
            .insert(id.clone(), (agent_id.to_owned(), answer_tx));
        let answer = if sessions.send(agent_id, message(id.clone())).await {
            tokio::time::timeout(wait, answer_rx).await.ok()
        } else {
            None
        };
        self.waiting.lock().remove(&id);
        answer.and_then(Result::ok)
    }

    /// Hands `answer` to the question `id`, if `agent_id` is the agent asked; whether
    /// it was taken.
    pub(crate) fn complete(&self, agent_id: &str, id: &str, answer: T) -> bool {
        let mut waiting = self.waiting.lock();
        match waiting.get(id) {
            Some((asked, _)) if asked == agent_id => {
                if let Some((_, to)) = waiting.remove(id) {
                    let _ = to.send(answer);
                }
                true
            }
            Some(_) => {
                tracing::warn!(%agent_id, id, what = self.what, "an answer from an agent that was not asked; ignored");
                false
            }
            None => {
                tracing::debug!(%agent_id, id, what = self.what, "an answer nobody waits for");
                false
            }
        }
    }
}

impl<T> std::fmt::Debug for Asked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asked")
            .field("what", &self.what)
            .field("waiting", &self.waiting.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_asked_answers_and_only_once() {
        let asked: Asked<bool> = Asked::new("check");
        let (tx, mut rx) = oneshot::channel();
        asked
            .waiting
            .lock()
            .insert("q1".into(), ("agent-a".into(), tx));
        assert!(!asked.complete("agent-b", "q1", true), "another agent");
        assert!(rx.try_recv().is_err());
        assert!(asked.complete("agent-a", "q1", false));
        assert_eq!(rx.try_recv().ok(), Some(false));
        assert!(!asked.complete("agent-a", "q1", true), "answered once");
        assert!(!asked.complete("agent-a", "unknown", true));
    }

    #[tokio::test]
    async fn a_question_to_an_agent_not_connected_here_gets_none_and_is_forgotten() {
        let asked: Asked<bool> = Asked::new("check");
        let sessions = SessionRegistry::default();
        let answer = asked
            .ask(&sessions, "agent-a", Duration::from_millis(50), |_| {
                v1::ServerMessage::default()
            })
            .await;
        assert_eq!(answer, None);
        assert!(asked.waiting.lock().is_empty());
    }
}
