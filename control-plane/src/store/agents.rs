//! Join tokens and agents.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{Any, Transaction};

use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{Agent, HelloRecord, HostFacts, JoinTokenRefusal, NewAgent, NewJoinToken};

/// `SELECT <every agent column> FROM agents <tail>`, as one literal.
macro_rules! select_agents {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, labels_json, capabilities_json, host_json, agent_version, ",
            "cert_serial, cert_not_after_ms, enrolled_at_ms, last_seen_at_ms, revoked_at_ms, ",
            "revoke_reason, disconnected_at_ms, session_lost_at_ms FROM agents ",
            $tail
        )
    };
}

impl Store {
    /// Stores a new join token; `Conflict` if its hash is already stored.
    pub async fn insert_join_token(&self, token: &NewJoinToken) -> Result<(), StoreError> {
        const OP: &str = "storing a join token";
        sqlx::query(
            "INSERT INTO join_tokens (hash, created_by, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token.hash.as_str())
        .bind(token.created_by.as_str())
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .execute(self.writer())
        .await
        .map_err(unique(OP, "join token", &token.hash))?;
        Ok(())
    }

    /// Consumes the join token with hash `token_hash` and records `agent`, in one
    /// transaction.
    ///
    /// The token is consumed by one conditional `UPDATE` (unused and not expired at
    /// `now_ms`), so it is single use even across replicas sharing a database. A refused
    /// token gives `Ok(Err(refusal))` and writes nothing. A taken agent name gives
    /// [`StoreError::Conflict`] and leaves the token unused. The token is checked before
    /// the name, so a caller without a valid token learns nothing about agent names.
    pub async fn enroll_agent(
        &self,
        token_hash: &str,
        now_ms: i64,
        agent: &NewAgent,
    ) -> Result<Result<(), JoinTokenRefusal>, StoreError> {
        const OP: &str = "enrolling an agent";
        let labels_json = encode_json("agent labels", &agent.labels)?;
        let mut tx = self.begin_write(OP).await?;
        let consumed = sqlx::query(
            "UPDATE join_tokens SET used_at_ms = $1, used_by_agent_id = $2 \
             WHERE hash = $3 AND used_at_ms IS NULL AND expires_at_ms > $1",
        )
        .bind(now_ms)
        .bind(agent.id.as_str())
        .bind(token_hash)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?
        .rows_affected();
        if consumed != 1 {
            let refusal = join_token_refusal(&mut tx, token_hash).await?;
            tx.rollback().await.map_err(database(OP))?;
            return Ok(Err(refusal));
        }

        // On a conflict `tx` is dropped, which rolls back the token's consumption.
        sqlx::query(
            "INSERT INTO agents (id, name, labels_json, capabilities_json, cert_serial, \
             cert_not_after_ms, enrolled_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(agent.id.as_str())
        .bind(agent.name.as_str())
        .bind(labels_json)
        .bind("[]")
        .bind(agent.cert_serial.as_str())
        .bind(agent.cert_not_after_ms)
        .bind(agent.enrolled_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(unique(OP, "agent", &agent.name))?;
        tx.commit().await.map_err(database(OP))?;
        Ok(Ok(()))
    }

    /// The agent with this id; `NotFound` if there is none.
    pub async fn get_agent(&self, id: &str) -> Result<Agent, StoreError> {
        sqlx::query_as::<_, AgentRow>(select_agents!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading an agent"))?
            .ok_or_else(|| not_found_agent(id))?
            .into_agent()
    }

    /// The agent whose id is `id_or_name`, else the one with that name; `NotFound` if
    /// neither exists.
    pub async fn find_agent(&self, id_or_name: &str) -> Result<Agent, StoreError> {
        let rows = sqlx::query_as::<_, AgentRow>(select_agents!("WHERE id = $1 OR name = $1"))
            .bind(id_or_name)
            .fetch_all(&self.pool)
            .await
            .map_err(database("reading an agent"))?;
        // An id match wins over a name match, should some agent be named like another's id.
        let (by_id, by_name): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|row| row.id == id_or_name);
        by_id
            .into_iter()
            .chain(by_name)
            .next()
            .ok_or_else(|| not_found_agent(id_or_name))?
            .into_agent()
    }

    /// Every agent, revoked ones included, ordered by name.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        sqlx::query_as::<_, AgentRow>(select_agents!("ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(database("listing agents"))?
            .into_iter()
            .map(AgentRow::into_agent)
            .collect()
    }

    /// Records what an agent said in `Hello` (version, capabilities, labels, host facts)
    /// and that it was seen at `hello.at_ms` (clearing an earlier goodbye, and the
    /// announcement of an outage); `NotFound` if there is no such agent.
    pub async fn record_hello(&self, id: &str, hello: &HelloRecord) -> Result<(), StoreError> {
        const OP: &str = "recording an agent hello";
        let capabilities_json = encode_json("agent capabilities", &hello.capabilities)?;
        let labels_json = encode_json("agent labels", &hello.labels)?;
        let host_json = encode_json("agent host facts", &hello.host)?;
        let updated = sqlx::query(
            "UPDATE agents SET agent_version = $1, capabilities_json = $2, labels_json = $3, \
             host_json = $4, last_seen_at_ms = CASE WHEN last_seen_at_ms IS NULL \
             OR last_seen_at_ms < $5 THEN $5 ELSE last_seen_at_ms END, \
             disconnected_at_ms = NULL, session_lost_at_ms = NULL, \
             unreachable_notified_at_ms = NULL WHERE id = $6",
        )
        .bind(hello.agent_version.as_str())
        .bind(capabilities_json)
        .bind(labels_json)
        .bind(host_json)
        .bind(hello.at_ms)
        .bind(id)
        .execute(self.writer())
        .await
        .map_err(database(OP))?
        .rows_affected();
        if updated == 0 {
            return Err(not_found_agent(id));
        }
        Ok(())
    }

    /// Records a batch of heartbeats `(agent id, seen at ms)` in one transaction. An
    /// agent's `last_seen_at_ms` only moves forward, and moving it ends an announced
    /// outage; unknown ids are ignored, since the batch was collected from live sessions
    /// and the agent may be gone.
    pub async fn touch_agents(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        const OP: &str = "recording heartbeats";
        if seen.is_empty() {
            return Ok(());
        }
        // Latest time per agent, in id order: replicas flushing overlapping batches then
        // lock rows in the same order and cannot deadlock.
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for (id, at_ms) in seen {
            let entry = latest.entry(id.as_str()).or_insert(*at_ms);
            *entry = (*entry).max(*at_ms);
        }
        let mut tx = self.begin_write(OP).await?;
        for (id, at_ms) in latest {
            sqlx::query(
                "UPDATE agents SET last_seen_at_ms = $1, unreachable_notified_at_ms = NULL \
                 WHERE id = $2 AND (last_seen_at_ms IS NULL OR last_seen_at_ms < $1)",
            )
            .bind(at_ms)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
        }
        tx.commit().await.map_err(database(OP))
    }

    /// Records the agent's renewed certificate; `NotFound` if there is no such agent.
    /// Refusing revoked agents is the caller's job, done before signing.
    pub async fn update_agent_certificate(
        &self,
        id: &str,
        serial: &str,
        not_after_ms: i64,
    ) -> Result<(), StoreError> {
        let updated =
            sqlx::query("UPDATE agents SET cert_serial = $1, cert_not_after_ms = $2 WHERE id = $3")
                .bind(serial)
                .bind(not_after_ms)
                .bind(id)
                .execute(self.writer())
                .await
                .map_err(database("recording an agent certificate"))?
                .rows_affected();
        if updated == 0 {
            return Err(not_found_agent(id));
        }
        Ok(())
    }

    /// Revokes an agent: `Ok(true)` if this call revoked it, `Ok(false)` if it already was
    /// (the first time and reason are kept), `NotFound` if there is no such agent.
    pub async fn revoke_agent(
        &self,
        id: &str,
        now_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        const OP: &str = "revoking an agent";
        let revoked = sqlx::query(
            "UPDATE agents SET revoked_at_ms = $1, revoke_reason = $2 \
             WHERE id = $3 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(id)
        .execute(self.writer())
        .await
        .map_err(database(OP))?
        .rows_affected();
        if revoked == 1 {
            return Ok(true);
        }
        // Revocation is never undone, so "exists" here means "already revoked".
        let exists = sqlx::query_scalar::<_, String>("SELECT id FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database(OP))?
            .is_some();
        if exists {
            Ok(false)
        } else {
            Err(not_found_agent(id))
        }
    }

    /// Records that an agent said goodbye at `at_ms` (a clean stop): it shows
    /// `disconnected` until its next `Hello`. Unknown ids are ignored.
    pub async fn record_goodbye(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET disconnected_at_ms = $1 WHERE id = $2")
            .bind(at_ms)
            .bind(id)
            .execute(self.writer())
            .await
            .map_err(database("recording an agent goodbye"))?;
        Ok(())
    }

    /// Records that an agent's session ended without a goodbye at `at_ms`, unless the
    /// agent was heard from after `last_heard_ms` (the latest hello or heartbeat of that
    /// session): then a newer session, here or on another replica, already said hello, and
    /// the loss is old news. Unknown, revoked and cleanly stopped agents are left alone.
    pub async fn record_session_lost(
        &self,
        id: &str,
        at_ms: i64,
        last_heard_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET session_lost_at_ms = $1 WHERE id = $2 \
             AND revoked_at_ms IS NULL AND disconnected_at_ms IS NULL \
             AND (last_seen_at_ms IS NULL OR last_seen_at_ms <= $3)",
        )
        .bind(at_ms)
        .bind(id)
        .bind(last_heard_ms)
        .execute(self.writer())
        .await
        .map_err(database("recording a lost agent session"))?;
        Ok(())
    }

    /// Deletes a revoked agent, freeing its name; its id stays on the revocation list.
    /// `NotFound` if there is no such agent; `Conflict` (entity `agent`) if it is not
    /// revoked, or (entity `target` or `router`, key: the first one's name) if a target
    /// or a router still names it. The checks and the delete are one transaction.
    pub async fn delete_revoked_agent(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        const OP: &str = "deleting an agent";
        let mut tx = self.begin_write(OP).await?;
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT name, revoked_at_ms FROM agents WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(database(OP))?;
        let Some((name, revoked_at_ms)) = row else {
            return Err(not_found_agent(id));
        };
        let Some(revoked_at_ms) = revoked_at_ms else {
            return Err(StoreError::Conflict {
                entity: "agent",
                key: name,
            });
        };
        let target: Option<String> = sqlx::query_scalar(
            "SELECT name FROM targets WHERE agent_id = $1 ORDER BY name LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(database(OP))?;
        if let Some(target) = target {
            return Err(StoreError::Conflict {
                entity: "target",
                key: target,
            });
        }
        let router: Option<String> = sqlx::query_scalar(
            "SELECT name FROM routers WHERE agent_id = $1 ORDER BY name LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(database(OP))?;
        if let Some(router) = router {
            return Err(StoreError::Conflict {
                entity: "router",
                key: router,
            });
        }
        sqlx::query(
            "INSERT INTO deleted_agents (id, name, revoked_at_ms, deleted_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(name.as_str())
        .bind(revoked_at_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
        tx.commit().await.map_err(database(OP))
    }

    /// Marks agents not seen since before `silent_since_ms`, or whose session was lost
    /// before `lost_before_ms` with nothing heard since (neither revoked nor stopped
    /// cleanly, and not marked yet) as announced unreachable at `now_ms`, and returns them. One conditional `UPDATE` marks each agent once per outage, however
    /// many replicas run it at once; the next hello or heartbeat clears the mark.
    pub async fn mark_unreachable_agents(
        &self,
        silent_since_ms: i64,
        lost_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Agent>, StoreError> {
        const OP: &str = "marking unreachable agents";
        // Read first: with every agent heard from, the usual case, no write lock is taken.
        let silent = sqlx::query_scalar::<_, String>(
            "SELECT id FROM agents WHERE unreachable_notified_at_ms IS NULL \
             AND revoked_at_ms IS NULL AND disconnected_at_ms IS NULL \
             AND (last_seen_at_ms < $1 OR (session_lost_at_ms < $2 \
             AND session_lost_at_ms >= last_seen_at_ms)) LIMIT 1",
        )
        .bind(silent_since_ms)
        .bind(lost_before_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(database(OP))?;
        if silent.is_none() {
            return Ok(Vec::new());
        }
        let mut agents = sqlx::query_as::<_, AgentRow>(
            "UPDATE agents SET unreachable_notified_at_ms = $1 \
             WHERE unreachable_notified_at_ms IS NULL AND revoked_at_ms IS NULL \
             AND disconnected_at_ms IS NULL AND (last_seen_at_ms < $2 \
             OR (session_lost_at_ms < $3 AND session_lost_at_ms >= last_seen_at_ms)) \
             RETURNING id, name, labels_json, capabilities_json, host_json, agent_version, \
             cert_serial, cert_not_after_ms, enrolled_at_ms, last_seen_at_ms, revoked_at_ms, \
             revoke_reason, disconnected_at_ms, session_lost_at_ms",
        )
        .bind(now_ms)
        .bind(silent_since_ms)
        .bind(lost_before_ms)
        .fetch_all(self.writer())
        .await
        .map_err(database(OP))?
        .into_iter()
        .map(AgentRow::into_agent)
        .collect::<Result<Vec<_>, _>>()?;
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(agents)
    }

    /// Ids of every revoked agent, deleted ones included, sorted.
    pub async fn revoked_agent_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM agents WHERE revoked_at_ms IS NOT NULL \
             UNION SELECT id FROM deleted_agents ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing revoked agents"))
    }
}

/// Why the conditional `UPDATE` in [`Store::enroll_agent`] matched no token.
async fn join_token_refusal(
    tx: &mut Transaction<'static, Any>,
    token_hash: &str,
) -> Result<JoinTokenRefusal, StoreError> {
    let token: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT used_at_ms FROM join_tokens WHERE hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut **tx)
            .await
            .map_err(database("enrolling an agent"))?;
    Ok(match token {
        None => JoinTokenRefusal::Unknown,
        Some((Some(_),)) => JoinTokenRefusal::AlreadyUsed,
        // Unused, yet the update missed it: it has expired.
        Some((None,)) => JoinTokenRefusal::Expired,
    })
}

fn not_found_agent(key: &str) -> StoreError {
    StoreError::NotFound {
        entity: "agent",
        key: key.to_owned(),
    }
}

/// An `agents` row as stored.
#[derive(sqlx::FromRow)]
struct AgentRow {
    id: String,
    name: String,
    labels_json: String,
    capabilities_json: String,
    host_json: Option<String>,
    agent_version: Option<String>,
    cert_serial: String,
    cert_not_after_ms: i64,
    enrolled_at_ms: i64,
    last_seen_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
    revoke_reason: Option<String>,
    disconnected_at_ms: Option<i64>,
    session_lost_at_ms: Option<i64>,
}

impl AgentRow {
    fn into_agent(self) -> Result<Agent, StoreError> {
        let labels: BTreeMap<String, String> =
            decode_json("agent labels", &self.id, &self.labels_json)?;
        let capabilities: Vec<String> =
            decode_json("agent capabilities", &self.id, &self.capabilities_json)?;
        let host: Option<HostFacts> = self
            .host_json
            .as_deref()
            .map(|json| decode_json("agent host facts", &self.id, json))
            .transpose()?;
        Ok(Agent {
            id: self.id,
            name: self.name,
            labels,
            capabilities,
            host,
            agent_version: self.agent_version,
            cert_serial: self.cert_serial,
            cert_not_after_ms: self.cert_not_after_ms,
            enrolled_at_ms: self.enrolled_at_ms,
            last_seen_at_ms: self.last_seen_at_ms,
            revoked_at_ms: self.revoked_at_ms,
            revoke_reason: self.revoke_reason,
            disconnected_at_ms: self.disconnected_at_ms,
            session_lost_at_ms: self.session_lost_at_ms,
        })
    }
}

fn encode_json<T: Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    // Cannot fail for the plain maps, lists and structs stored here; kept as an error
    // rather than a panic all the same.
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what,
        detail: format!("cannot encode: {e}"),
    })
}

fn decode_json<T: DeserializeOwned>(
    what: &'static str,
    agent_id: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        what,
        detail: format!("agent {agent_id}: {e}"),
    })
}
