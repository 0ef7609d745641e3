//! Live updates: `GET /console/live?view=…` is a server-sent event stream that sends
//! a view's `main` part (event `main`) whenever it changed, checked every second, as
//! the signed-in caller may see it; the page's script swaps it in. Rendering the part
//! again is what a reload would cost, and it keeps one truth: what updates is what the
//! page renders.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;
use serde::Deserialize;

use super::pages::{render_main, Extra, View};
use super::session::Signed;

/// How often a view is rendered again to see whether it changed.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The view a stream follows.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    view: String,
    /// The version of the view the page shows ([`version`]): not sent again.
    #[serde(default)]
    version: String,
}

/// A short fingerprint of a rendered view.
pub fn version(main: &str) -> String {
    stella_pki::hash_token(main).chars().take(16).collect()
}

/// `GET /console/live?view=dashboard|pipeline|agents|drift|promotion:ID`
pub async fn live(signed: Signed, Query(query): Query<LiveQuery>) -> Response {
    let Some(view) = View::parse(&query.view) else {
        return (http::StatusCode::BAD_REQUEST, "unknown view").into_response();
    };
    Sse::new(changes(signed, view, query.version))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn changes(
    signed: Signed,
    view: View,
    shown: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (signed, view, Some(shown), true);
    futures::stream::unfold(start, |(signed, view, last, first)| async move {
        let mut first = first;
        loop {
            if !first {
                tokio::time::sleep(CHECK_EVERY).await;
            }
            first = false;
            // Signed out (or the session expired): the stream ends.
            match signed
                .home
                .store
                .console_session(&signed.id_hash, crate::app::now_ms())
                .await
            {
                Ok(Some(_)) => {}
                _ => return None,
            }
            let main = match render_main(&signed, &view, &Extra::default()).await {
                Ok(main) => main,
                // The promotion gone, the role lost: the next page load tells why.
                Err(_) => return None,
            };
            let now = version(&main);
            if last.as_deref() == Some(now.as_str()) {
                continue;
            }
            let event = Event::default().event("main").id(now.clone()).data(&main);
            return Some((Ok(event), (signed, view, Some(now), false)));
        }
    })
}
