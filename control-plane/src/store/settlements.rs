//! New promotions settled without a deployment (blocked, rejected, waiting for
//! approvals), many in one transaction: what the promotion group commit writes.

use super::error::database;
use super::events::insert_event_rows;
use super::promotions::insert_decision_rows;
use super::webhooks::insert_deliveries;
use super::{value_rows, Store, StoreError};
use crate::domain::{DecisionRecord, Event, NewDelivery, Promotion};

/// Rows in one `INSERT` (the promotions table has 17 columns: 544 values, well below
/// either database's limit on bound parameters).
const ROWS_PER_STATEMENT: usize = 32;

/// A new promotion as settled: its row as it is to be stored, its decision, the event
/// that says what happened and that event's webhook deliveries.
#[derive(Debug, Clone)]
pub struct NewSettlement {
    /// The promotion, in its settled state.
    pub promotion: Promotion,
    /// The signed decision, unless it waits for approvals.
    pub decision: Option<DecisionRecord>,
    /// The event that says what happened.
    pub event: Option<Event>,
    /// The event's deliveries, one per webhook subscribing to its kind: the event is
    /// stored fanned out with them. `None`: stored not fanned out, for the fan-out
    /// sweep (the webhooks could not be read).
    pub deliveries: Option<Vec<NewDelivery>>,
}

impl Store {
    /// Stores new promotions that settled without a deployment, rollout or workflow run,
    /// in one transaction: the decisions (content-addressed: one stored already is
    /// kept), the events marked fanned out with their webhook deliveries (those of a
    /// webhook deleted meanwhile are left out), and the promotion rows. Returns how many
    /// deliveries were queued. An id stored already fails the transaction: then nothing
    /// is stored.
    pub async fn create_settled_promotions(
        &self,
        settlements: &[NewSettlement],
    ) -> Result<u64, StoreError> {
        const OP: &str = "storing settled promotions";
        if settlements.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write(OP).await?;
        let decisions: Vec<&DecisionRecord> = settlements
            .iter()
            .filter_map(|s| s.decision.as_ref())
            .collect();
        for chunk in decisions.chunks(ROWS_PER_STATEMENT) {
            insert_decision_rows(&mut *tx, chunk)
                .await
                .map_err(database(OP))?;
        }
        let events: Vec<(&Event, bool)> = settlements
            .iter()
            .filter_map(|s| s.event.as_ref().map(|e| (e, s.deliveries.is_some())))
            .collect();
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            insert_event_rows(&mut *tx, chunk)
                .await
                .map_err(database(OP))?;
        }
        let deliveries: Vec<NewDelivery> = settlements
            .iter()
            .flat_map(|s| s.deliveries.iter().flatten().cloned())
            .collect();
        let queued = insert_deliveries(&mut tx, &deliveries).await?;
        for chunk in settlements.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO promotions (id, environment, release_name, release_version, state, \
                 requested_by, requested_at_ms, plan_json, plan_hash, break_glass_by, \
                 break_glass_reason, gates_json, message, decision_id, deployment_id, \
                 run_id, updated_at_ms) VALUES {}",
                value_rows(chunk.len(), 17)
            );
            let mut query = sqlx::query(&sql);
            for NewSettlement { promotion: p, .. } in chunk {
                query = query
                    .bind(p.id.as_str())
                    .bind(p.environment.as_str())
                    .bind(p.release.as_str())
                    .bind(p.version.as_str())
                    .bind(p.state.as_str())
                    .bind(p.requested_by.as_str())
                    .bind(p.requested_at_ms)
                    .bind(p.plan_json.as_str())
                    .bind(p.plan_hash.as_str())
                    .bind(p.break_glass.as_ref().map(|(by, _)| by.as_str()))
                    .bind(p.break_glass.as_ref().map(|(_, why)| why.as_str()))
                    .bind(p.gates_json.as_str())
                    .bind(p.message.as_deref())
                    .bind(p.decision_id.as_deref())
                    .bind(p.deployment_id.as_deref())
                    .bind(p.run_id.as_deref())
                    .bind(p.updated_at_ms);
            }
            query.execute(&mut *tx).await.map_err(database(OP))?;
        }
        tx.commit().await.map_err(database(OP))?;
        Ok(queued)
    }
}
