//! Webhooks and the outbox of their deliveries.
//!
//! A delivery is a row before it is a request. Senders claim due rows under a lease:
//! one statement marks them leased and returns them, so two replicas never send the
//! same delivery at once (PostgreSQL skips rows another claim has locked; SQLite runs
//! the statement under its write lock). The lease's end is also the fence of the
//! outcome: an attempt is recorded only while the row still carries the lease it was
//! claimed under.

use super::environments::{decode_enum, decode_json, encode_json};
use super::error::{database, unique};
use super::{Backend, Store, StoreError};
use crate::domain::{DeliveryAttempt, NewDelivery, Webhook, WebhookDelivery};

/// Every `webhook_deliveries` column, in [`DeliveryRow`]'s order.
macro_rules! delivery_columns {
    () => {
        "id, webhook_id, event, payload, state, attempts, next_attempt_at_ms, \
         lease_until_ms, last_status, last_error, created_at_ms, delivered_at_ms"
    };
}

impl Store {
    /// Stores a new webhook; `Conflict` if its id is taken.
    pub async fn create_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        const OP: &str = "storing a webhook";
        let events_json = encode_json("webhook events", &webhook.events)?;
        sqlx::query(
            "INSERT INTO webhooks (id, url, events_json, secret_sealed, created_by, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(webhook.id.as_str())
        .bind(webhook.url.as_str())
        .bind(events_json)
        .bind(webhook.secret_sealed.as_str())
        .bind(webhook.created_by.as_str())
        .bind(webhook.created_at_ms)
        .execute(self.writer())
        .await
        .map_err(unique(OP, "webhook", &webhook.id))?;
        Ok(())
    }

    /// Every webhook, oldest first.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        sqlx::query_as::<_, WebhookRow>(
            "SELECT id, url, events_json, secret_sealed, created_by, created_at_ms \
             FROM webhooks ORDER BY created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing webhooks"))?
        .into_iter()
        .map(WebhookRow::into_webhook)
        .collect()
    }

    /// The webhook with this id; `NotFound` if there is none.
    pub async fn get_webhook(&self, id: &str) -> Result<Webhook, StoreError> {
        sqlx::query_as::<_, WebhookRow>(
            "SELECT id, url, events_json, secret_sealed, created_by, created_at_ms \
             FROM webhooks WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a webhook"))?
        .ok_or_else(|| not_found_webhook(id))?
        .into_webhook()
    }

    /// Deletes a webhook and its deliveries, sent or not; `NotFound` if there is none.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), StoreError> {
        const OP: &str = "deleting a webhook";
        let mut tx = self.begin_write(OP).await?;
        // Explicitly, not only by the foreign key's cascade: it holds on a database
        // whose connection does not enforce foreign keys too.
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?
            .rows_affected();
        if deleted == 0 {
            return Err(not_found_webhook(id));
        }
        tx.commit().await.map_err(database(OP))
    }

    /// Queues deliveries in one transaction, each due at its creation; one whose
    /// webhook was deleted meanwhile is skipped. Returns how many were queued.
    pub async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> Result<u64, StoreError> {
        const OP: &str = "queueing webhook deliveries";
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write(OP).await?;
        let queued = insert_deliveries(&mut tx, deliveries).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(queued)
    }

    /// Claims up to `limit` pending deliveries due at `now_ms` that nobody holds, holding
    /// them until `lease_until_ms`; returns them (with that lease), the longest due
    /// first. Concurrent claims, on this replica or another, never return the same
    /// delivery while its lease lasts.
    pub async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        // One statement: the due rows are chosen and leased together. PostgreSQL locks
        // what it chooses and skips rows a concurrent claim has locked, then re-checks
        // the conditions on rows that changed meanwhile; SQLite runs the statement
        // under its single write lock.
        let due = "SELECT id FROM webhook_deliveries WHERE state = 'pending' \
                   AND next_attempt_at_ms <= $1 AND lease_until_ms <= $1 LIMIT 1";
        if !self
            .any_due(due, now_ms, "claiming webhook deliveries")
            .await?
        {
            return Ok(Vec::new());
        }
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until_ms = $1 WHERE id IN (\
             SELECT id FROM webhook_deliveries WHERE state = 'pending' \
             AND next_attempt_at_ms <= $2 AND lease_until_ms <= $2 \
             ORDER BY next_attempt_at_ms, id LIMIT $3{lock}) \
             AND state = 'pending' AND lease_until_ms <= $2 RETURNING {}",
            delivery_columns!()
        );
        let rows = sqlx::query_as::<_, DeliveryRow>(&sql)
            .bind(lease_until_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(self.writer())
            .await
            .map_err(database("claiming webhook deliveries"))?;
        let mut claimed = rows
            .into_iter()
            .map(DeliveryRow::into_delivery)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by(|a, b| (a.next_attempt_at_ms, &a.id).cmp(&(b.next_attempt_at_ms, &b.id)));
        Ok(claimed)
    }

    /// Records how an attempt at a claimed delivery ended, and lets go of it: `true`
    /// if recorded, `false` if the delivery no longer carries the lease it was claimed
    /// under (another sender took it over, or it was deleted).
    pub async fn record_delivery_attempt(
        &self,
        id: &str,
        lease_until_ms: i64,
        attempt: &DeliveryAttempt,
    ) -> Result<bool, StoreError> {
        let (state, status, error, next_attempt_at_ms, delivered_at_ms) = match attempt {
            DeliveryAttempt::Delivered { status, at_ms } => {
                ("delivered", Some(*status), None, None, Some(*at_ms))
            }
            DeliveryAttempt::Retry {
                status,
                error,
                next_attempt_at_ms,
            } => (
                "pending",
                *status,
                Some(error.as_str()),
                Some(*next_attempt_at_ms),
                None,
            ),
            DeliveryAttempt::GiveUp { status, error } => {
                ("failed", *status, Some(error.as_str()), None, None)
            }
        };
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1, \
             last_status = $4, last_error = $5, \
             next_attempt_at_ms = COALESCE($6, next_attempt_at_ms), delivered_at_ms = $7, \
             lease_until_ms = 0 \
             WHERE id = $1 AND state = 'pending' AND lease_until_ms = $2",
        )
        .bind(id)
        .bind(lease_until_ms)
        .bind(state)
        .bind(status)
        .bind(error)
        .bind(next_attempt_at_ms)
        .bind(delivered_at_ms)
        .execute(self.writer())
        .await
        .map_err(database("recording a webhook delivery attempt"))?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Lets go of claimed deliveries without recording an attempt (the sender is
    /// stopping), so any replica may send them at once. Deliveries leased anew since
    /// are left alone.
    pub async fn release_deliveries(&self, claims: &[(String, i64)]) -> Result<(), StoreError> {
        for (id, lease_until_ms) in claims {
            sqlx::query(
                "UPDATE webhook_deliveries SET lease_until_ms = 0 \
                 WHERE id = $1 AND state = 'pending' AND lease_until_ms = $2",
            )
            .bind(id.as_str())
            .bind(*lease_until_ms)
            .execute(self.writer())
            .await
            .map_err(database("releasing webhook deliveries"))?;
        }
        Ok(())
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        sqlx::query_as::<_, DeliveryRow>(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        ))
        .bind(webhook_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing webhook deliveries"))?
        .into_iter()
        .map(DeliveryRow::into_delivery)
        .collect()
    }
}

fn not_found_webhook(id: &str) -> StoreError {
    StoreError::NotFound {
        entity: "webhook",
        key: id.to_owned(),
    }
}

/// A `webhooks` row as stored.
#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: String,
    url: String,
    events_json: String,
    secret_sealed: String,
    created_by: String,
    created_at_ms: i64,
}

impl WebhookRow {
    fn into_webhook(self) -> Result<Webhook, StoreError> {
        let events = decode_json(
            "webhook events",
            &format!("webhook {}", self.id),
            &self.events_json,
        )?;
        Ok(Webhook {
            id: self.id,
            url: self.url,
            events,
            secret_sealed: self.secret_sealed,
            created_by: self.created_by,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// A `webhook_deliveries` row as stored.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    webhook_id: String,
    event: String,
    payload: String,
    state: String,
    attempts: i64,
    next_attempt_at_ms: i64,
    lease_until_ms: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    created_at_ms: i64,
    delivered_at_ms: Option<i64>,
}

impl DeliveryRow {
    fn into_delivery(self) -> Result<WebhookDelivery, StoreError> {
        let state = decode_enum(
            "webhook delivery state",
            &format!("webhook delivery {}", self.id),
            &self.state,
        )?;
        Ok(WebhookDelivery {
            id: self.id,
            webhook_id: self.webhook_id,
            event: self.event,
            payload: self.payload,
            state,
            attempts: self.attempts,
            next_attempt_at_ms: self.next_attempt_at_ms,
            lease_until_ms: self.lease_until_ms,
            last_status: self.last_status,
            last_error: self.last_error,
            created_at_ms: self.created_at_ms,
            delivered_at_ms: self.delivered_at_ms,
        })
    }
}

/// Inserts deliveries in a caller's transaction, each only while its webhook exists;
/// returns how many were inserted.
pub(super) async fn insert_deliveries(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    deliveries: &[NewDelivery],
) -> Result<u64, StoreError> {
    const OP: &str = "queueing webhook deliveries";
    let mut queued = 0;
    for delivery in deliveries {
        queued += sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event, payload, state, \
             attempts, next_attempt_at_ms, lease_until_ms, created_at_ms) \
             SELECT $1, id, $2, $3, 'pending', 0, $4, 0, $4 FROM webhooks WHERE id = $5",
        )
        .bind(delivery.id.as_str())
        .bind(delivery.event.as_str())
        .bind(delivery.payload.as_str())
        .bind(delivery.created_at_ms)
        .bind(delivery.webhook_id.as_str())
        .execute(&mut **tx)
        .await
        .map_err(unique(OP, "webhook delivery", &delivery.id))?
        .rows_affected();
    }
    Ok(queued)
}
