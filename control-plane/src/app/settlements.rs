//! New promotions that settle without a deployment (blocked, rejected, waiting for
//! approvals) are stored by a group commit ([`super::group_commit`]): many requests'
//! promotions, decisions, events and webhook deliveries in one transaction, with the
//! webhooks read once per batch. Each was a transaction of its own, and its event's
//! fan-out a second one. A promotion that creates a deployment, a rollout or a workflow
//! run is stored alone: it may meet a deployment in progress, which refuses it alone.

use std::sync::Arc;

use super::group_commit::{GroupCommit, Refused};
use super::webhooks::deliveries_for;
use super::App;
use crate::error::{AppError, ErrorChain, ErrorKind};
use crate::store::NewSettlement;

/// Most promotions in one transaction.
const MAX_BATCH: usize = 64;

/// Most promotions waiting for the writer; past it a request is refused at once.
const MAX_QUEUED: usize = 4_096;

/// This tenant's queue of settled promotions waiting to be stored; cheap to clone.
#[derive(Debug, Clone)]
pub struct SettlementWriter(GroupCommit<NewSettlement, ()>);

impl Default for SettlementWriter {
    fn default() -> Self {
        SettlementWriter(GroupCommit::new(MAX_BATCH, MAX_QUEUED))
    }
}

impl App {
    /// Stores a new promotion settled without a deployment through the group commit;
    /// returns when it is durable. Its event's deliveries are queued with it (the
    /// event is left to the fan-out sweep when the webhooks cannot be read).
    pub(super) async fn store_settlement(
        self: &Arc<Self>,
        settlement: NewSettlement,
    ) -> Result<(), AppError> {
        let app = self.clone();
        let write = move |batch: Vec<NewSettlement>| write_batch(app.clone(), batch);
        self.settlements
            .0
            .submit(settlement, write)
            .await
            .map_err(|refused| {
                AppError::new(
                    ErrorKind::Unavailable,
                    "promotion_not_stored",
                    match refused {
                        Refused::Full(most) => {
                            format!("{most} promotions are waiting to be stored already; try again")
                        }
                        Refused::Failed(error) => format!("cannot store the promotion: {error}"),
                        Refused::Stopped => {
                            "the server stopped before storing the promotion".to_owned()
                        }
                    },
                )
            })
    }
}

/// Stores one batch; when the transaction fails and holds more than one promotion, each
/// is tried alone, so that one promotion the database refuses fails alone.
async fn write_batch(app: Arc<App>, mut batch: Vec<NewSettlement>) -> Vec<Result<(), String>> {
    match app.store.list_webhooks().await {
        Ok(webhooks) => {
            for settlement in &mut batch {
                settlement.deliveries = settlement
                    .event
                    .as_ref()
                    .map(|event| deliveries_for(event, &webhooks));
            }
        }
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "cannot read webhooks now; the fan-out sweep queues the deliveries of these promotions' events");
        }
    }
    let stored = match app.store.create_settled_promotions(&batch).await {
        Ok(queued) => {
            if queued > 0 {
                app.webhook_wake.notify_one();
            }
            return batch.iter().map(|_| Ok(())).collect();
        }
        Err(error) if batch.len() == 1 => return vec![Err(ErrorChain(&error).to_string())],
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), promotions = batch.len(), "cannot store a batch of promotions; storing each alone");
            let mut stored = Vec::with_capacity(batch.len());
            for settlement in &batch {
                stored.push(
                    app.store
                        .create_settled_promotions(std::slice::from_ref(settlement))
                        .await
                        .map(|_| ())
                        .map_err(|error| ErrorChain(&error).to_string()),
                );
            }
            stored
        }
    };
    if stored.iter().any(|s| s.is_ok()) {
        app.webhook_wake.notify_one();
    }
    stored
}
