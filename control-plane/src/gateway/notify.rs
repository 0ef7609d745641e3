//! Dispatch across replicas: acts on the notices other replicas' writes send (see
//! `store::notify`) for the agents whose sessions this replica holds, so a task created
//! or cancelled through any replica's API reaches its agent without waiting for the
//! periodic sweep of [`super::run_background`], which stays as the safety net.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::store::notify::{self, DispatchNotice, ListenerEvent, NoticeKind};
use crate::tenants::Tenants;

/// Notices buffered between the listener and the router.
const NOTICE_QUEUE: usize = 1024;

/// Listens for dispatch notices on the PostgreSQL database at `url` (the server's own;
/// one connection serves every tenant) and dispatches them until `shutdown`.
pub async fn run_dispatch_listener(
    tenants: Arc<Tenants>,
    url: String,
    shutdown: CancellationToken,
) {
    let (events, mut received) = mpsc::channel(NOTICE_QUEUE);
    let listener = tokio::spawn(notify::listen(url, events, shutdown.clone()));
    let mut first = true;
    while let Some(event) = received.recv().await {
        match event {
            ListenerEvent::Connected if first => first = false,
            // Notices sent while the connection was down are lost: sweep now rather
            // than at the next tick.
            ListenerEvent::Connected => {
                tenants
                    .default_app()
                    .metrics
                    .delivery
                    .dispatch_listener_reconnects
                    .inc();
                for app in tenants.apps() {
                    tokio::spawn(async move {
                        if let Err(error) = app.dispatch_pending().await {
                            tracing::warn!(%error, "pending task dispatch failed; will retry");
                        }
                        if let Err(error) = app.propagate_cancellations().await {
                            tracing::warn!(%error, "cancellation propagation failed; will retry");
                        }
                    });
                }
            }
            ListenerEvent::Notice(notice) => route(&tenants, notice).await,
        }
    }
    if let Err(error) = listener.await {
        tracing::warn!(%error, "the dispatch notice listener ended badly");
    }
}

/// Acts on one notice if its agent's session is here. Each runs on a task of its own: a
/// slow agent (a full session queue) must not hold up the notices of the others.
async fn route(tenants: &Arc<Tenants>, notice: DispatchNotice) {
    let Some(app) = app_of(tenants, &notice) else {
        return;
    };
    if !app.sessions.is_open(&notice.agent_id) {
        return;
    }
    tracing::debug!(agent_id = %notice.agent_id, tenant = %app.tenant, kind = ?notice.kind, "dispatch notice");
    app.metrics.delivery.dispatch_notices.inc();
    tokio::spawn(async move {
        match notice.kind {
            NoticeKind::Tasks => app.dispatch_new_to(&notice.agent_id).await,
            NoticeKind::Stop { task_id } => app.stop_notified(&task_id).await,
        }
    });
}

/// The core of the tenant whose schema the notice names: a tenant's schema is
/// `tenant_<name>`; any other schema is the server's own, the `default` tenant's.
/// `None` for a tenant not open on this replica (none of its agents can be connected
/// here then).
fn app_of(tenants: &Tenants, notice: &DispatchNotice) -> Option<Arc<App>> {
    let apps = tenants.apps();
    if let Some(app) = apps
        .iter()
        .find(|app| !app.tenant.is_default() && app.tenant.schema() == notice.schema)
    {
        return Some(app.clone());
    }
    if notice.schema.starts_with("tenant_") {
        return None;
    }
    Some(tenants.default_app().clone())
}
