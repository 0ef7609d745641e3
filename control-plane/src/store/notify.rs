//! Dispatch notices between replicas that share one PostgreSQL database.
//!
//! An agent's session lives on one replica, but the API call that creates or cancels its
//! tasks may land on any. The writing transaction therefore sends a notice on
//! [`DISPATCH_CHANNEL`] (`pg_notify`, delivered only if and when it commits, so a
//! listener never looks for rows it cannot see yet) naming the schema it wrote in (which
//! tenant), the agent and what changed; every replica listens ([`listen`]) and the one
//! holding the agent's session acts at once. Notices are a shortcut, not a queue:
//! PostgreSQL drops those sent while a listener is disconnected, so each replica's
//! periodic sweep stays as the safety net, and a (re)connected listener says so
//! ([`ListenerEvent::Connected`]) for its owner to sweep at once.
//!
//! PostgreSQL serializes the commits of transactions that notify (one queue for the
//! database), so only the writes dispatch waits for send notices: tasks created,
//! cancelled or failed by their deadline; never the busy ones (progress lines,
//! heartbeats, results).
//!
//! SQLite is single-node: every write happens in the process whose sessions need to
//! know, so nothing is sent there.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Any, Transaction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::database;
use super::{Backend, StoreError};

/// The PostgreSQL channel of dispatch notices.
pub const DISPATCH_CHANNEL: &str = "stella_dispatch";

/// The first wait before reconnecting a lost listener; it doubles up to
/// [`MAX_RECONNECT_BACKOFF`].
const MIN_RECONNECT_BACKOFF: Duration = Duration::from_millis(250);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// What changed for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind {
    /// The agent has new `pending` tasks.
    Tasks,
    /// A task of the agent was cancelled or failed by its deadline: the agent should
    /// stop it.
    Stop {
        /// The task.
        task_id: String,
    },
}

/// One dispatch notice, as sent by a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchNotice {
    /// The PostgreSQL schema the change was written in (`tenant_<name>` for a tenant,
    /// the server's own schema — usually `public` — for `default`).
    pub schema: String,
    /// The agent concerned.
    pub agent_id: String,
    /// What changed.
    pub kind: NoticeKind,
}

impl DispatchNotice {
    /// Parses a payload as [`notify_tasks`] and [`notify_stop`] write it:
    /// `<schema> tasks <agent>` or `<schema> stop <agent> <task>`.
    pub fn parse(payload: &str) -> Option<DispatchNotice> {
        let mut words = payload.split(' ');
        let schema = words.next()?.to_owned();
        let kind = words.next()?;
        let agent_id = words.next()?.to_owned();
        let kind = match (kind, words.next()) {
            ("tasks", None) => NoticeKind::Tasks,
            ("stop", Some(task_id)) => NoticeKind::Stop {
                task_id: task_id.to_owned(),
            },
            _ => return None,
        };
        if agent_id.is_empty() || words.next().is_some() {
            return None;
        }
        Some(DispatchNotice {
            schema,
            agent_id,
            kind,
        })
    }
}

/// What [`listen`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerEvent {
    /// The listener (re)connected: notices sent while it was not listening are lost, so
    /// whatever they would have said must be looked for.
    Connected,
    /// A notice.
    Notice(DispatchNotice),
}

/// Tells the replicas that the agents of deployment `deployment_id`'s tasks have new
/// pending tasks (one notice per agent), when `tx` commits.
pub(super) async fn notify_tasks(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    deployment_id: &str,
    op: &'static str,
) -> Result<(), StoreError> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    // One statement for however many agents: a deployment may span a thousand.
    sqlx::query(
        "SELECT pg_notify($1, COALESCE(current_schema(), '') || ' tasks ' || agent_id) \
         FROM (SELECT DISTINCT agent_id FROM tasks WHERE deployment_id = $2) AS agents",
    )
    .bind(DISPATCH_CHANNEL)
    .bind(deployment_id)
    .execute(&mut **tx)
    .await
    .map_err(database(op))?;
    Ok(())
}

/// Tells the replicas that the agents of `tasks` (agent, task) should stop them, when
/// `tx` commits.
pub(super) async fn notify_stop(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    tasks: Vec<(&str, &str)>,
    op: &'static str,
) -> Result<(), StoreError> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    for (agent_id, task_id) in tasks {
        sqlx::query(
            "SELECT pg_notify($1, COALESCE(current_schema(), '') || ' stop ' || $2 || ' ' || $3)",
        )
        .bind(DISPATCH_CHANNEL)
        .bind(agent_id)
        .bind(task_id)
        .execute(&mut **tx)
        .await
        .map_err(database(op))?;
    }
    Ok(())
}

/// Listens on [`DISPATCH_CHANNEL`] of the PostgreSQL database at `url` until `shutdown`
/// (or until `events` is closed), reconnecting with a growing backoff when the
/// connection is lost; each (re)connection is reported before the notices it brings.
/// One connection serves every tenant: notices are database-wide and name their schema.
pub async fn listen(url: String, events: mpsc::Sender<ListenerEvent>, shutdown: CancellationToken) {
    let mut backoff = MIN_RECONNECT_BACKOFF;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = connect(&url) => connected,
        };
        match connected {
            Ok(mut listener) => {
                tracing::debug!(channel = DISPATCH_CHANNEL, "listening for dispatch notices");
                backoff = MIN_RECONNECT_BACKOFF;
                if events.send(ListenerEvent::Connected).await.is_err() {
                    return;
                }
                loop {
                    let received = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(notification)) => {
                            let Some(notice) = DispatchNotice::parse(notification.payload()) else {
                                tracing::warn!(
                                    payload = notification.payload(),
                                    "ignoring a malformed dispatch notice"
                                );
                                continue;
                            };
                            if events.send(ListenerEvent::Notice(notice)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::warn!(
                                "the dispatch notice connection was lost; reconnecting \
                                 (the periodic sweep covers the gap)"
                            );
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(error = %crate::error::ErrorChain(&error), "receiving dispatch notices failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    error = %crate::error::ErrorChain(&error),
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "cannot listen for dispatch notices; agents on this replica get work \
                     created elsewhere only from the periodic sweep until it can"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
    }
}

/// A listener on [`DISPATCH_CHANNEL`]. (Its errors never carry the URL, which may hold
/// a password.)
async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    // Reconnection is ours (with backoff, and reported): `try_recv` yields `None` on a
    // lost connection, and the listener is dropped then, not reconnected silently.
    listener.eager_reconnect(false);
    listener.listen(DISPATCH_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_as_written() {
        assert_eq!(
            DispatchNotice::parse("public tasks a1"),
            Some(DispatchNotice {
                schema: "public".to_owned(),
                agent_id: "a1".to_owned(),
                kind: NoticeKind::Tasks,
            })
        );
        assert_eq!(
            DispatchNotice::parse("tenant_team_a stop a1 t1"),
            Some(DispatchNotice {
                schema: "tenant_team_a".to_owned(),
                agent_id: "a1".to_owned(),
                kind: NoticeKind::Stop {
                    task_id: "t1".to_owned()
                },
            })
        );
        for bad in [
            "",
            "public",
            "public tasks",
            "public tasks a1 t1",
            "public stop a1",
            "public what a1",
        ] {
            assert_eq!(DispatchNotice::parse(bad), None, "{bad:?}");
        }
    }
}
