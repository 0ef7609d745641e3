//! Live updates: `GET /console/live?view=…` is a server-sent event stream that sends
//! a view's `main` part (event `main`) whenever it changed, checked every second, as
//! the signed-in caller may see it; the page's script swaps it in. Rendering the part
//! again is what a reload would cost, and it keeps one truth: what updates is what the
//! page renders.
//!
//! The log a view shows (a promotion's deployment, a run) comes on the same stream line
//! by line (event `line`, data `SEQ<tab>TEXT`), from the line after the one the page
//! shows (`after`), then `end` once the deployment or run is finished: the script
//! appends the lines to the log element and keeps that element across swaps of `main`,
//! whose live renders leave the log's lines out. One stream per page: a browser holds
//! at most six connections to a server over HTTP/1.1, and a second stream per page
//! used them up.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;
use serde::Deserialize;

use super::pages::{deployment_line, render_main, run_line, Extra, View};
use super::session::Signed;
use crate::error::AppError;

/// How often a view is rendered again to see whether it changed.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The view a stream follows.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    view: String,
    /// The version of the view the page shows ([`version`]): not sent again.
    #[serde(default)]
    version: String,
    /// The last line of the view's log the page shows (its seq; -1: none).
    #[serde(default)]
    after: Option<i64>,
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
    let tail = LogTail {
        followed: None,
        after: query.after.unwrap_or(-1),
        ended: false,
    };
    Sse::new(changes(signed, view, query.version, tail))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Where the log of a view is followed.
struct LogTail {
    /// The deployment or run, once known (a promotion has a deployment only once it
    /// is allowed).
    followed: Option<Followed>,
    /// The last line sent (or shown by the page).
    after: i64,
    /// `end` was sent.
    ended: bool,
}

#[derive(Clone, Debug)]
enum Followed {
    Run(String),
    Deployment(String),
}

fn changes(
    signed: Signed,
    view: View,
    shown: String,
    tail: LogTail,
) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures::StreamExt;
    let start = (signed, view, Some(shown), true, tail);
    futures::stream::unfold(start, |(signed, view, last, first, mut tail)| async move {
        let mut first = first;
        let mut last = last;
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
            let extra = Extra {
                live: true,
                ..Extra::default()
            };
            let main = match render_main(&signed, &view, &extra).await {
                Ok(main) => main,
                // The promotion gone, the role lost: the next page load tells why.
                Err(_) => return None,
            };
            let mut events = Vec::new();
            let now = version(&main);
            if last.as_deref() != Some(now.as_str()) {
                events.push(Ok(Event::default()
                    .event("main")
                    .id(now.clone())
                    .data(&main)));
                last = Some(now);
            }
            events.extend(log_events(&signed, &view, &mut tail).await);
            if !events.is_empty() {
                return Some((events, (signed, view, last, false, tail)));
            }
        }
    })
    .flat_map(futures::stream::iter)
}

/// The new lines of the view's log, and `end` once it is finished and every line was
/// sent. A failure to read is left for the next tick.
async fn log_events(
    signed: &Signed,
    view: &View,
    tail: &mut LogTail,
) -> Vec<Result<Event, Infallible>> {
    if tail.ended {
        return Vec::new();
    }
    if tail.followed.is_none() {
        tail.followed = match view {
            View::Run(id) => Some(Followed::Run(id.clone())),
            View::Promotion(id) => signed
                .app
                .find_promotion(id)
                .await
                .ok()
                .and_then(|p| p.deployment_id)
                .map(Followed::Deployment),
            _ => None,
        };
    }
    let Some(followed) = tail.followed.clone() else {
        return Vec::new();
    };
    // Finished is read before the lines: a line written before the end is then always
    // in this read or an earlier one.
    let Ok(done) = finished(signed, &followed).await else {
        return Vec::new();
    };
    let Ok(lines) = lines_after(signed, &followed, tail.after).await else {
        return Vec::new();
    };
    if let Some(&(seq, _)) = lines.last() {
        tail.after = seq;
        return lines
            .into_iter()
            .map(|(seq, text)| {
                Ok(Event::default()
                    .event("line")
                    .data(format!("{seq}\t{text}")))
            })
            .collect();
    }
    if done {
        tail.ended = true;
        // An event without data is not dispatched by browsers: it says "end".
        return vec![Ok(Event::default().event("end").data("end"))];
    }
    Vec::new()
}

/// Whether the followed run or deployment is finished.
async fn finished(signed: &Signed, followed: &Followed) -> Result<bool, AppError> {
    match followed {
        Followed::Run(id) => {
            let tenant = signed.caller.tenant().to_string();
            Ok(signed.app.find_run(&tenant, id).await?.is_finished())
        }
        Followed::Deployment(id) => Ok(signed.app.find_deployment(id).await?.state.is_terminal()),
    }
}

/// Lines after `after`, as `(seq, text)`.
async fn lines_after(
    signed: &Signed,
    followed: &Followed,
    after: i64,
) -> Result<Vec<(i64, String)>, AppError> {
    Ok(match followed {
        Followed::Run(id) => {
            let tenant = signed.caller.tenant().to_string();
            signed
                .app
                .run_logs(&tenant, id, Some(after))
                .await?
                .iter()
                .map(|line| (line.seq, run_line(line)))
                .collect()
        }
        Followed::Deployment(id) => signed
            .app
            .store
            .logs_after(id, after, LOG_BATCH)
            .await?
            .iter()
            .map(|line| (line.seq, deployment_line(line)))
            .collect(),
    })
}

/// Lines read from the store at a time.
const LOG_BATCH: i64 = 500;
