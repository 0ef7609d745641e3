//! Events: stored, then handed to the webhooks that subscribe to them.

use super::{now_ms, App};
use crate::domain::{Event, EventKind};
use crate::error::ErrorChain;

/// An event about to be emitted: what, where, about what.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The environment concerned.
    pub environment: Option<String>,
    /// The release concerned.
    pub release: Option<(String, String)>,
    /// The object concerned.
    pub subject: Option<String>,
    /// One line.
    pub message: String,
}

impl App {
    /// Stores an event and queues a delivery for every webhook that subscribes to its
    /// kind, in the outbox, before anything is sent. A failure is logged, not returned:
    /// what the event reports is stored already.
    pub async fn emit(&self, new: NewEvent) {
        let event = new.into_event();
        match self.store.add_event(&event).await {
            Ok(()) => self.enqueue_webhooks(&event).await,
            Err(error) => {
                tracing::warn!(kind = %event.kind, error = %ErrorChain(&error), "cannot store an event");
                self.enqueue_unstored(&event).await;
            }
        }
    }
}

impl NewEvent {
    /// A promotion's end (deployed or failed), told as "promotion ID of R@V to ENV: …".
    pub(super) fn promotion_finished(
        promotion: &crate::domain::Promotion,
        deployed: bool,
        message: &str,
    ) -> NewEvent {
        NewEvent {
            kind: if deployed {
                EventKind::PromotionDeployed
            } else {
                EventKind::PromotionFailed
            },
            environment: Some(promotion.environment.clone()),
            release: Some((promotion.release.clone(), promotion.version.clone())),
            subject: Some(promotion.id.clone()),
            message: format!(
                "promotion {} of {}@{} to {}: {message}",
                promotion.id, promotion.release, promotion.version, promotion.environment
            ),
        }
    }

    /// The event, with its id and time: to store in the transaction of the change it
    /// reports, then hand to [`App::enqueue_webhooks`].
    pub(super) fn into_event(self) -> Event {
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            kind: self.kind,
            environment: self.environment,
            release: self.release,
            subject: self.subject,
            message: self.message,
            at_ms: now_ms(),
        }
    }
}
