//! Promotions, approvals, decisions, input documents and signing keys.

use sqlx::{Any, Transaction};

use super::environments::{decode_enum, decode_json, encode_json};
use super::error::{database, unique};
use super::events::insert_event;
use super::{Store, StoreError};
use crate::domain::{
    Approval, DecisionRecord, Deployment, Document, Event, Promotion, PromotionState, Rollout,
    Task, Verdict,
};

/// How a promotion is settled or re-evaluated, in one transaction with its decision
/// and deployment.
#[derive(Debug)]
pub struct PromotionUpdate<'a> {
    /// The promotion.
    pub promotion_id: &'a str,
    /// The state it must still be in (another replica or request may have settled it).
    pub expected: PromotionState,
    /// Its new state.
    pub state: PromotionState,
    /// Its plan (it may have changed since the last evaluation) and the plan's hash.
    pub plan: (&'a str, &'a str),
    /// The gate results.
    pub gates_json: &'a str,
    /// One line.
    pub message: Option<&'a str>,
    /// The decision that settles it, if it is settled.
    pub decision: Option<&'a DecisionRecord>,
    /// The deployment an allowed decision creates, with its tasks.
    pub deployment: Option<(&'a Deployment, &'a [Task])>,
    /// The rollout that deployment runs as, when the environment has a progressive
    /// strategy (its tasks are then created step by step, not with the deployment).
    pub rollout: Option<&'a Rollout>,
    /// The workflow run an allowed decision hands the promotion to, instead of a
    /// deployment (the run is created right after).
    pub run_id: Option<&'a str>,
    /// The event that says what happened, stored with it (so none is lost, nor said of
    /// a change that was not stored).
    pub event: Option<&'a Event>,
    /// When.
    pub at_ms: i64,
}

macro_rules! select_promotions {
    ($rest:literal) => {
        concat!(
            "SELECT id, environment, release_name, release_version, state, requested_by, \
             requested_at_ms, plan_json, plan_hash, break_glass_by, break_glass_reason, \
             gates_json, message, decision_id, deployment_id, run_id, updated_at_ms FROM promotions ",
            $rest
        )
    };
}

impl Store {
    /// Stores a new promotion, and with `update` (whose `expected` is ignored) settles
    /// it in the same transaction: the row is written as settled, with its decision,
    /// deployment and event. Returns the deployment's generation if one was created.
    /// `Conflict` (entity `active deployment`) if the environment has a deployment in
    /// progress: then nothing is stored.
    pub async fn create_promotion(
        &self,
        promotion: &Promotion,
        update: Option<&PromotionUpdate<'_>>,
    ) -> Result<Option<i64>, StoreError> {
        const OP: &str = "creating a promotion";
        let mut tx = self.begin_write(OP).await?;
        let generation = match update {
            Some(update) => self.insert_settlement(&mut tx, update).await?,
            None => None,
        };
        let settled = update.map_or_else(
            || Settled {
                state: promotion.state,
                plan_json: promotion.plan_json.as_str(),
                plan_hash: promotion.plan_hash.as_str(),
                gates_json: promotion.gates_json.as_str(),
                message: promotion.message.as_deref(),
                decision_id: promotion.decision_id.as_deref(),
                deployment_id: promotion.deployment_id.as_deref(),
                run_id: promotion.run_id.as_deref(),
                at_ms: promotion.updated_at_ms,
            },
            |u| Settled {
                state: u.state,
                plan_json: u.plan.0,
                plan_hash: u.plan.1,
                gates_json: u.gates_json,
                message: u.message,
                decision_id: u.decision.map(|d| d.id.as_str()),
                deployment_id: u.deployment.map(|(d, _)| d.id.as_str()),
                run_id: u.run_id,
                at_ms: u.at_ms,
            },
        );
        sqlx::query(
            "INSERT INTO promotions (id, environment, release_name, release_version, state, \
             requested_by, requested_at_ms, plan_json, plan_hash, break_glass_by, \
             break_glass_reason, gates_json, message, decision_id, deployment_id, \
             run_id, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17)",
        )
        .bind(promotion.id.as_str())
        .bind(promotion.environment.as_str())
        .bind(promotion.release.as_str())
        .bind(promotion.version.as_str())
        .bind(settled.state.as_str())
        .bind(promotion.requested_by.as_str())
        .bind(promotion.requested_at_ms)
        .bind(settled.plan_json)
        .bind(settled.plan_hash)
        .bind(promotion.break_glass.as_ref().map(|(by, _)| by.as_str()))
        .bind(promotion.break_glass.as_ref().map(|(_, why)| why.as_str()))
        .bind(settled.gates_json)
        .bind(settled.message)
        .bind(settled.decision_id)
        .bind(settled.deployment_id)
        .bind(settled.run_id)
        .bind(settled.at_ms)
        .execute(&mut *tx)
        .await
        .map_err(unique(OP, "promotion", &promotion.id))?;
        tx.commit().await.map_err(database(OP))?;
        Ok(generation)
    }

    /// Re-evaluates or settles a promotion that is still in `update.expected`:
    /// `Conflict` (entity `promotion state`) if it moved on meanwhile, `Conflict`
    /// (entity `active deployment`) if its deployment meets one in progress. Nothing is
    /// stored on an error.
    pub async fn update_promotion(
        &self,
        update: &PromotionUpdate<'_>,
    ) -> Result<Option<i64>, StoreError> {
        const OP: &str = "updating a promotion";
        let mut tx = self.begin_write(OP).await?;
        let generation = self
            .apply_update(&mut tx, update, Some(update.expected))
            .await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(generation)
    }

    /// What settling a promotion adds beside its row: the deployment, the decision and
    /// the event.
    async fn insert_settlement(
        &self,
        tx: &mut Transaction<'static, Any>,
        update: &PromotionUpdate<'_>,
    ) -> Result<Option<i64>, StoreError> {
        const OP: &str = "settling a promotion";
        let generation = match update.deployment {
            Some((deployment, tasks)) => Some(self.insert_deployment(tx, deployment, tasks).await?),
            None => None,
        };
        if let Some(rollout) = update.rollout {
            self.insert_rollout(tx, rollout).await?;
        }
        if let Some(decision) = update.decision {
            // Content-addressed: the same decision reached twice (same inputs, same
            // time) is one record.
            insert_decision_rows(&mut **tx, &[decision])
                .await
                .map_err(database(OP))?;
        }
        if let Some(event) = update.event {
            insert_event(&mut **tx, event).await?;
        }
        Ok(generation)
    }

    async fn apply_update(
        &self,
        tx: &mut Transaction<'static, Any>,
        update: &PromotionUpdate<'_>,
        expected: Option<PromotionState>,
    ) -> Result<Option<i64>, StoreError> {
        const OP: &str = "settling a promotion";
        let generation = self.insert_settlement(tx, update).await?;
        let updated = sqlx::query(
            "UPDATE promotions SET state = $1, plan_json = $2, plan_hash = $3, gates_json = $4, \
             message = $5, decision_id = COALESCE($6, decision_id), \
             deployment_id = COALESCE($7, deployment_id), updated_at_ms = $8, \
             run_id = COALESCE($11, run_id) \
             WHERE id = $9 AND ($10 IS NULL OR state = $10)",
        )
        .bind(update.state.as_str())
        .bind(update.plan.0)
        .bind(update.plan.1)
        .bind(update.gates_json)
        .bind(update.message)
        .bind(update.decision.map(|d| d.id.as_str()))
        .bind(update.deployment.map(|(d, _)| d.id.as_str()))
        .bind(update.at_ms)
        .bind(update.promotion_id)
        .bind(expected.map(PromotionState::as_str))
        .bind(update.run_id)
        .execute(&mut **tx)
        .await
        .map_err(database(OP))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Conflict {
                entity: "promotion state",
                key: update.promotion_id.to_owned(),
            });
        }
        Ok(generation)
    }

    /// Sets the state of the promotion a deployment carries out, when it finishes (not
    /// one a workflow run carries out: the run's end settles that).
    pub async fn finish_promotion_of_deployment(
        &self,
        deployment_id: &str,
        state: PromotionState,
        message: Option<&str>,
        at_ms: i64,
    ) -> Result<Option<Promotion>, StoreError> {
        self.finish_deploying_promotion(
            "UPDATE promotions SET state = $1, message = $2, updated_at_ms = $3 \
             WHERE deployment_id = $4 AND state = 'deploying' AND run_id IS NULL",
            select_promotions!("WHERE deployment_id = $1"),
            deployment_id,
            (state, message, at_ms),
        )
        .await
    }

    /// Settles a promotion that its workflow run carried out, when the run has ended:
    /// only while it is `deploying` under `run_id`. Returns the promotion if this call
    /// settled it.
    pub async fn finish_promotion_of_run(
        &self,
        run_id: &str,
        state: PromotionState,
        message: &str,
        at_ms: i64,
    ) -> Result<Option<Promotion>, StoreError> {
        self.finish_deploying_promotion(
            "UPDATE promotions SET state = $1, message = $2, updated_at_ms = $3 \
             WHERE run_id = $4 AND state = 'deploying'",
            select_promotions!("WHERE run_id = $1"),
            run_id,
            (state, Some(message), at_ms),
        )
        .await
    }

    /// Runs `update` (binding state, message, time and `key`), then, if it changed a
    /// row, `select` (binding `key`): the promotion this call settled.
    async fn finish_deploying_promotion(
        &self,
        update: &'static str,
        select: &'static str,
        key: &str,
        (state, message, at_ms): (PromotionState, Option<&str>, i64),
    ) -> Result<Option<Promotion>, StoreError> {
        const OP: &str = "finishing a promotion";
        let updated = sqlx::query(update)
            .bind(state.as_str())
            .bind(message)
            .bind(at_ms)
            .bind(key)
            .execute(self.writer())
            .await
            .map_err(database(OP))?
            .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        sqlx::query_as::<_, PromotionRow>(select)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(database(OP))?
            .map(PromotionRow::into_promotion)
            .transpose()
    }

    /// Makes the deployment of a promotion that its workflow run carries out, in one
    /// transaction with recording it on the promotion: only while the promotion is
    /// `deploying` under `run_id` and has no deployment yet (`Conflict`, entity
    /// `promotion state`, otherwise); `Conflict` (entity `active deployment`) when the
    /// environment has another deployment in progress. Returns the deployment's
    /// generation.
    pub async fn attach_workflow_deployment(
        &self,
        promotion_id: &str,
        run_id: &str,
        deployment: &Deployment,
        tasks: &[Task],
        at_ms: i64,
    ) -> Result<i64, StoreError> {
        const OP: &str = "starting a promotion's deployment";
        let mut tx = self.begin_write(OP).await?;
        let updated = sqlx::query(
            "UPDATE promotions SET deployment_id = $1, updated_at_ms = $2 \
             WHERE id = $3 AND run_id = $4 AND state = 'deploying' AND deployment_id IS NULL",
        )
        .bind(deployment.id.as_str())
        .bind(at_ms)
        .bind(promotion_id)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::Conflict {
                entity: "promotion state",
                key: promotion_id.to_owned(),
            });
        }
        let generation = self.insert_deployment(&mut tx, deployment, tasks).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(generation)
    }

    /// Promotions still `deploying` under a workflow run, oldest first: the ones whose
    /// run ended, or was never created, are settled or restarted by the sweep.
    pub async fn promotions_in_workflow(&self, limit: i64) -> Result<Vec<Promotion>, StoreError> {
        sqlx::query_as::<_, PromotionRow>(select_promotions!(
            "WHERE state = 'deploying' AND run_id IS NOT NULL ORDER BY updated_at_ms LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing promotions in a workflow"))?
        .into_iter()
        .map(PromotionRow::into_promotion)
        .collect()
    }

    /// The promotion with this id; `NotFound` if there is none.
    pub async fn get_promotion(&self, id: &str) -> Result<Promotion, StoreError> {
        sqlx::query_as::<_, PromotionRow>(select_promotions!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a promotion"))?
            .ok_or_else(|| StoreError::NotFound {
                entity: "promotion",
                key: id.to_owned(),
            })?
            .into_promotion()
    }

    /// The promotion whose id is `id_or_prefix` or the only one starting with it (at
    /// least 8 hex characters); `Conflict` (entity `promotion id prefix`) if several do.
    pub async fn find_promotion(&self, id_or_prefix: &str) -> Result<Promotion, StoreError> {
        match self.get_promotion(id_or_prefix).await {
            Err(StoreError::NotFound { .. }) if super::is_id_prefix(id_or_prefix) => {}
            other => return other,
        }
        let rows = sqlx::query_as::<_, PromotionRow>(select_promotions!(
            "WHERE id LIKE $1 ORDER BY id LIMIT 2"
        ))
        .bind(format!("{}%", id_or_prefix.to_ascii_lowercase()))
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading a promotion"))?;
        super::only_match(rows, "promotion", "promotion id prefix", id_or_prefix)?.into_promotion()
    }

    /// Promotions, newest first, optionally of one environment and in one state.
    pub async fn list_promotions(
        &self,
        environment: Option<&str>,
        state: Option<PromotionState>,
        limit: i64,
    ) -> Result<Vec<Promotion>, StoreError> {
        sqlx::query_as::<_, PromotionRow>(select_promotions!(
            "WHERE ($1 IS NULL OR environment = $1) AND ($2 IS NULL OR state = $2) \
             ORDER BY requested_at_ms DESC, id DESC LIMIT $3"
        ))
        .bind(environment)
        .bind(state.map(PromotionState::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing promotions"))?
        .into_iter()
        .map(PromotionRow::into_promotion)
        .collect()
    }

    /// Records an approval or rejection; `Conflict` (entity `approval`) if this user
    /// already answered for this plan.
    pub async fn add_approval(&self, approval: &Approval) -> Result<(), StoreError> {
        const OP: &str = "recording an approval";
        sqlx::query(
            "INSERT INTO approvals (promotion_id, user_name, plan_hash, verdict, roles_json, \
             comment, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(approval.promotion_id.as_str())
        .bind(approval.user.as_str())
        .bind(approval.plan_hash.as_str())
        .bind(approval.verdict.as_str())
        .bind(encode_json("approval roles", &approval.roles)?)
        .bind(approval.comment.as_deref())
        .bind(approval.at_ms)
        .execute(self.writer())
        .await
        .map_err(unique(OP, "approval", &approval.user))?;
        Ok(())
    }

    /// Gives an expired approval again: the approval by this user for this plan, if it
    /// was given at or before `expired_at_ms`, takes the new time, roles and comment.
    /// Returns whether one was renewed (a rejection, or an approval still valid, is
    /// never replaced).
    pub async fn renew_expired_approval(
        &self,
        approval: &Approval,
        expired_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE approvals SET at_ms = $1, roles_json = $2, comment = $3 \
             WHERE promotion_id = $4 AND user_name = $5 AND plan_hash = $6 \
             AND verdict = $7 AND at_ms <= $8",
        )
        .bind(approval.at_ms)
        .bind(encode_json("approval roles", &approval.roles)?)
        .bind(approval.comment.as_deref())
        .bind(approval.promotion_id.as_str())
        .bind(approval.user.as_str())
        .bind(approval.plan_hash.as_str())
        .bind(Verdict::Approved.as_str())
        .bind(expired_at_ms)
        .execute(self.writer())
        .await
        .map_err(database("renewing an expired approval"))?
        .rows_affected();
        Ok(renewed == 1)
    }

    /// A promotion's approvals and rejections, in the order given.
    pub async fn list_approvals(&self, promotion_id: &str) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query_as::<_, ApprovalRow>(
            "SELECT promotion_id, user_name, plan_hash, verdict, roles_json, comment, at_ms \
             FROM approvals WHERE promotion_id = $1 ORDER BY at_ms, user_name",
        )
        .bind(promotion_id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing approvals"))?;
        rows.into_iter()
            .map(|row| {
                let key = format!("approval of {} by {}", row.promotion_id, row.user_name);
                Ok(Approval {
                    verdict: decode_enum("approval verdict", &key, &row.verdict)?,
                    roles: decode_json("approval roles", &key, &row.roles_json)?,
                    promotion_id: row.promotion_id,
                    user: row.user_name,
                    plan_hash: row.plan_hash,
                    comment: row.comment,
                    at_ms: row.at_ms,
                })
            })
            .collect()
    }

    /// The decision with this id; `NotFound` if there is none.
    pub async fn get_decision(&self, id: &str) -> Result<DecisionRecord, StoreError> {
        sqlx::query_as::<_, DecisionRow>(
            "SELECT id, promotion_id, outcome, decision_json, inputs_json, envelope_json, \
             key_id, created_at_ms FROM decisions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a decision"))?
        .map(DecisionRow::into_record)
        .ok_or_else(|| StoreError::NotFound {
            entity: "decision",
            key: id.to_owned(),
        })
    }

    /// Stores a document by its content id; storing the same content again is a no-op.
    pub async fn put_document(&self, document: &Document) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO documents (id, kind, content, created_by, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(document.id.as_str())
        .bind(document.kind.as_str())
        .bind(document.content.as_str())
        .bind(document.created_by.as_str())
        .bind(document.created_at_ms)
        .execute(self.writer())
        .await
        .map_err(database("storing a document"))?;
        Ok(())
    }

    /// The document with this id; `NotFound` if there is none.
    pub async fn get_document(&self, id: &str) -> Result<Document, StoreError> {
        sqlx::query_as::<_, DocumentRow>(
            "SELECT id, kind, content, created_by, created_at_ms FROM documents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a document"))?
        .map(DocumentRow::into_document)
        .ok_or_else(|| StoreError::NotFound {
            entity: "document",
            key: id.to_owned(),
        })
    }

    /// Every document of this kind, oldest first.
    pub async fn list_documents(&self, kind: &str) -> Result<Vec<Document>, StoreError> {
        Ok(sqlx::query_as::<_, DocumentRow>(
            "SELECT id, kind, content, created_by, created_at_ms FROM documents \
             WHERE kind = $1 ORDER BY created_at_ms, id",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing documents"))?
        .into_iter()
        .map(DocumentRow::into_document)
        .collect())
    }

    /// The ids of every document of this kind, oldest first.
    pub async fn document_ids(&self, kind: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM documents WHERE kind = $1 ORDER BY created_at_ms, id",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing documents"))
    }

    /// The documents with these ids that exist, in no particular order.
    pub async fn get_documents(&self, ids: &[&str]) -> Result<Vec<Document>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT id, kind, content, created_by, created_at_ms FROM documents WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, DocumentRow>(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        Ok(query
            .fetch_all(&self.pool)
            .await
            .map_err(database("reading documents"))?
            .into_iter()
            .map(DocumentRow::into_document)
            .collect())
    }

    /// Records a signing key's public half (idempotent).
    pub async fn put_signing_key(
        &self,
        key_id: &str,
        public_pem: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (key_id, public_pem, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(public_pem)
        .bind(at_ms)
        .execute(self.writer())
        .await
        .map_err(database("recording a signing key"))?;
        Ok(())
    }

    /// Every signing key: (key id, public PEM, first seen), oldest first.
    pub async fn list_signing_keys(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT key_id, public_pem, created_at_ms FROM signing_keys \
             ORDER BY created_at_ms, key_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing signing keys"))
    }
}

#[derive(sqlx::FromRow)]
struct PromotionRow {
    id: String,
    environment: String,
    release_name: String,
    release_version: String,
    state: String,
    requested_by: String,
    requested_at_ms: i64,
    plan_json: String,
    plan_hash: String,
    break_glass_by: Option<String>,
    break_glass_reason: Option<String>,
    gates_json: String,
    message: Option<String>,
    decision_id: Option<String>,
    deployment_id: Option<String>,
    run_id: Option<String>,
    updated_at_ms: i64,
}

/// The columns a new promotion row is written with.
struct Settled<'a> {
    state: PromotionState,
    plan_json: &'a str,
    plan_hash: &'a str,
    gates_json: &'a str,
    message: Option<&'a str>,
    decision_id: Option<&'a str>,
    deployment_id: Option<&'a str>,
    run_id: Option<&'a str>,
    at_ms: i64,
}

impl PromotionRow {
    fn into_promotion(self) -> Result<Promotion, StoreError> {
        let key = format!("promotion {}", self.id);
        Ok(Promotion {
            state: decode_enum("promotion state", &key, &self.state)?,
            id: self.id,
            environment: self.environment,
            release: self.release_name,
            version: self.release_version,
            requested_by: self.requested_by,
            requested_at_ms: self.requested_at_ms,
            plan_json: self.plan_json,
            plan_hash: self.plan_hash,
            break_glass: self.break_glass_by.zip(self.break_glass_reason),
            gates_json: self.gates_json,
            message: self.message,
            decision_id: self.decision_id,
            deployment_id: self.deployment_id,
            run_id: self.run_id,
            updated_at_ms: self.updated_at_ms,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ApprovalRow {
    promotion_id: String,
    user_name: String,
    plan_hash: String,
    verdict: String,
    roles_json: String,
    comment: Option<String>,
    at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct DecisionRow {
    id: String,
    promotion_id: String,
    outcome: String,
    decision_json: String,
    inputs_json: String,
    envelope_json: String,
    key_id: String,
    created_at_ms: i64,
}

impl DecisionRow {
    fn into_record(self) -> DecisionRecord {
        DecisionRecord {
            id: self.id,
            promotion_id: self.promotion_id,
            outcome: self.outcome,
            decision_json: self.decision_json,
            inputs_json: self.inputs_json,
            envelope_json: self.envelope_json,
            key_id: self.key_id,
            created_at_ms: self.created_at_ms,
        }
    }
}

#[derive(sqlx::FromRow)]
struct DocumentRow {
    id: String,
    kind: String,
    content: String,
    created_by: String,
    created_at_ms: i64,
}

impl DocumentRow {
    fn into_document(self) -> Document {
        Document {
            id: self.id,
            kind: self.kind,
            content: self.content,
            created_by: self.created_by,
            created_at_ms: self.created_at_ms,
        }
    }
}

/// Inserts decisions in one statement; one stored already (content-addressed: the same
/// inputs at the same time) is kept.
pub(super) async fn insert_decision_rows<'e, E>(
    executor: E,
    decisions: &[&DecisionRecord],
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "INSERT INTO decisions (id, promotion_id, outcome, decision_json, inputs_json, \
         envelope_json, key_id, created_at_ms) VALUES {} ON CONFLICT (id) DO NOTHING",
        super::value_rows(decisions.len(), 8)
    );
    let mut query = sqlx::query(&sql);
    for decision in decisions {
        query = query
            .bind(decision.id.as_str())
            .bind(decision.promotion_id.as_str())
            .bind(decision.outcome.as_str())
            .bind(decision.decision_json.as_str())
            .bind(decision.inputs_json.as_str())
            .bind(decision.envelope_json.as_str())
            .bind(decision.key_id.as_str())
            .bind(decision.created_at_ms);
    }
    query.execute(executor).await?;
    Ok(())
}
