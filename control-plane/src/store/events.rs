//! Events: what operators are told about.

use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{Event, NewDelivery};

impl Store {
    /// Stores an event.
    pub async fn add_event(&self, event: &Event) -> Result<(), StoreError> {
        insert_event(self.writer(), event).await
    }

    /// Events, newest first: of one environment, of one release (name and version), of
    /// one kind, or all.
    pub async fn list_events(
        &self,
        environment: Option<&str>,
        release: Option<(&str, &str)>,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, kind, environment, release_name, release_version, subject, message, \
             at_ms FROM events WHERE ($1 IS NULL OR environment = $1) \
             AND ($2 IS NULL OR (release_name = $2 AND release_version = $3)) \
             AND ($4 IS NULL OR kind = $4) ORDER BY at_ms DESC, id DESC LIMIT $5",
        )
        .bind(environment)
        .bind(release.map(|(name, _)| name))
        .bind(release.map(|(_, version)| version))
        .bind(kind)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing events"))?;
        rows.into_iter().map(EventRow::into_event).collect()
    }
}

impl Store {
    /// Queues an event's webhook deliveries and marks it fanned out, in one transaction,
    /// unless it is marked already (by another replica, or an earlier call): then nothing
    /// is queued and `None` is returned. An event that was never stored is `None` too.
    /// Otherwise the number of deliveries queued (deliveries of webhooks deleted
    /// meanwhile are left out).
    pub async fn fan_out_event(
        &self,
        event_id: &str,
        deliveries: &[NewDelivery],
    ) -> Result<Option<u64>, StoreError> {
        const OP: &str = "fanning out an event";
        let mut tx = self.begin_write(OP).await?;
        let marked =
            sqlx::query("UPDATE events SET fanned_out = 1 WHERE id = $1 AND fanned_out = 0")
                .bind(event_id)
                .execute(&mut *tx)
                .await
                .map_err(database(OP))?
                .rows_affected();
        if marked == 0 {
            return Ok(None);
        }
        let queued = super::webhooks::insert_deliveries(&mut tx, deliveries).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(Some(queued))
    }

    /// Events not fanned out yet that happened at or before `before_ms`, oldest first.
    pub async fn unfanned_events(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, kind, environment, release_name, release_version, subject, message, \
             at_ms FROM events WHERE fanned_out = 0 AND at_ms <= $1 ORDER BY at_ms, id LIMIT $2",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing events to fan out"))?;
        rows.into_iter().map(EventRow::into_event).collect()
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: String,
    kind: String,
    environment: Option<String>,
    release_name: Option<String>,
    release_version: Option<String>,
    subject: Option<String>,
    message: String,
    at_ms: i64,
}

impl EventRow {
    fn into_event(self) -> Result<Event, StoreError> {
        let key = format!("event {}", self.id);
        Ok(Event {
            kind: super::environments::decode_enum("event kind", &key, &self.kind)?,
            id: self.id,
            environment: self.environment,
            release: self.release_name.zip(self.release_version),
            subject: self.subject,
            message: self.message,
            at_ms: self.at_ms,
        })
    }
}

/// Stores an event, on its own or in a caller's transaction.
pub(super) async fn insert_event<'e, E>(executor: E, event: &Event) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    insert_event_rows(executor, &[(event, false)])
        .await
        .map_err(unique("storing an event", "event", &event.id))
}

/// Inserts events in one statement, each with whether it is stored fanned out (its
/// deliveries queued in the same transaction).
pub(super) async fn insert_event_rows<'e, E>(
    executor: E,
    events: &[(&Event, bool)],
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "INSERT INTO events (id, kind, environment, release_name, release_version, \
         subject, message, at_ms, fanned_out) VALUES {}",
        super::value_rows(events.len(), 9)
    );
    let mut query = sqlx::query(&sql);
    for (event, fanned_out) in events {
        query = query
            .bind(event.id.as_str())
            .bind(event.kind.as_str())
            .bind(event.environment.as_deref())
            .bind(event.release.as_ref().map(|(name, _)| name.as_str()))
            .bind(event.release.as_ref().map(|(_, version)| version.as_str()))
            .bind(event.subject.as_deref())
            .bind(event.message.as_str())
            .bind(event.at_ms)
            .bind(i64::from(*fanned_out));
    }
    query.execute(executor).await?;
    Ok(())
}
