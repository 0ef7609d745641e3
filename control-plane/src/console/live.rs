//! Live updates: `GET /console/live?view=…` is a server-sent event stream that sends
//! a view's `main` part (event `main`) whenever it changed, checked every second, as
//! the signed-in caller may see it; the page's script swaps it in. Rendering the part
//! again is what a reload would cost, and it keeps one truth: what updates is what the
//! page renders.
//!
//! Logs stream line by line instead (`GET /console/logs?of=run:ID|deployment:ID`): the
//! script appends each line to the log the page shows and keeps that log across the
//! main part's updates.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;
use serde::Deserialize;

use super::pages::{deployment_line, render_main, run_line, Extra, View};
use super::session::Signed;
use crate::api::envelope::Permission;
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

/// How often a followed log is read again while it has no new line.
const LOG_POLL: Duration = Duration::from_millis(500);

/// Lines read from the store at a time.
const LOG_BATCH: i64 = 500;

/// The log a stream follows, and after which line.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// `run:ID` or `deployment:ID`.
    of: String,
    /// The last line the page shows (its seq); the stream sends those after it.
    #[serde(default)]
    after: Option<i64>,
}

#[derive(Clone, Debug)]
enum Followed {
    Run(String),
    Deployment(String),
}

/// `GET /console/logs?of=run:ID|deployment:ID&after=SEQ`: server-sent events, one
/// `line` event per log line (its id the line's seq, so a reconnecting browser resumes
/// after the last one it got, from `Last-Event-ID`), and `end` once the run or
/// deployment is finished and every line was sent.
pub async fn logs(
    signed: Signed,
    headers: http::HeaderMap,
    Query(query): Query<LogQuery>,
) -> Response {
    if let Err(error) = signed.caller.require(Permission::Read) {
        return error.into_response();
    }
    let followed = if let Some(id) = query.of.strip_prefix("run:") {
        Followed::Run(id.to_owned())
    } else if let Some(id) = query.of.strip_prefix("deployment:") {
        Followed::Deployment(id.to_owned())
    } else {
        return (
            http::StatusCode::BAD_REQUEST,
            "unknown log: run:ID or deployment:ID",
        )
            .into_response();
    };
    // Unknown here (or in another tenant): 404 before the stream starts.
    if let Err(error) = finished(&signed, &followed).await {
        return crate::api::envelope::ApiError(error).into_response();
    }
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resumed.or(query.after).unwrap_or(-1);
    Sse::new(log_lines(signed, followed, after))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
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

fn log_lines(
    signed: Signed,
    followed: Followed,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures::StreamExt;
    let start = (signed, followed, after, false);
    futures::stream::unfold(start, |(signed, followed, after, ended)| async move {
        if ended {
            return None;
        }
        loop {
            match signed
                .home
                .store
                .console_session(&signed.id_hash, crate::app::now_ms())
                .await
            {
                Ok(Some(_)) => {}
                _ => return None,
            }
            // Finished is read before the lines: a line written before the end is
            // then always in this read or an earlier one.
            let done = finished(&signed, &followed).await.ok()?;
            let lines = lines_after(&signed, &followed, after).await.ok()?;
            if let Some(&(last, _)) = lines.last() {
                let events: Vec<Result<Event, Infallible>> = lines
                    .into_iter()
                    .map(|(seq, text)| {
                        Ok(Event::default()
                            .event("line")
                            .id(seq.to_string())
                            .data(text))
                    })
                    .collect();
                return Some((events, (signed, followed, last, false)));
            }
            if done {
                let end = vec![Ok(Event::default().event("end").data(""))];
                return Some((end, (signed, followed, after, true)));
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    })
    .flat_map(futures::stream::iter)
}
