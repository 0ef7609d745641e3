//! The REST listener: an accept loop over hyper's HTTP/1.1 connection, written here
//! rather than `axum::serve` because that sets no header-read timeout and no cap on
//! connections, so idle and half-open connections were kept forever and could use up
//! the process's file descriptors until `/healthz` stopped answering.
//!
//! - every connection must deliver each request head within
//!   `api_header_read_timeout_ms`, counted from when it opens or from its previous
//!   response (hyper's `header_read_timeout`), or it is closed;
//! - at most `api_max_connections` are open. At the cap, a new connection takes the
//!   place of the oldest one with no request in flight (idle, half-open or still
//!   dripping its headers), so a flood of such connections cannot keep `/healthz` or
//!   anyone else out; only when every open connection has a request in flight is the
//!   new one answered `503` with the envelope and closed at once, so that a probe
//!   learns why instead of hanging in the backlog;
//! - request bodies are bounded in size and time where they are read
//!   ([`super::envelope::ApiJson`]).
//!
//! - over TLS (the default, [`super::tls`]), the handshake must finish within the same
//!   header-read timeout; a connection refused at the cap gets its 503 after a
//!   handshake of at most a second.
//!
//! HTTP/1.1 only (ALPN `http/1.1` over TLS): the CLI, agents' discovery call and
//! browsers speak it, and sniffing for HTTP/2's preface would be one more read without
//! a timeout. Each request carries its client's address ([`ClientAddr`]) for the rate
//! limits of the authentication endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::envelope::envelope_json;
use crate::app::App;
use crate::error::{AppError, ErrorKind};

/// The address of the client a request came from (the TCP peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

/// The limits the listener enforces, from the server configuration.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Time allowed for each request head.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl ListenerLimits {
    /// The limits of a configuration.
    pub fn of(config: &crate::ServerConfig) -> Self {
        ListenerLimits {
            header_read_timeout: Duration::from_millis(config.api_header_read_timeout_ms),
            max_connections: config.api_max_connections,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`; then lets open requests finish.
pub async fn serve(
    app: Arc<App>,
    router: Router,
    listener: TcpListener,
    limits: ListenerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let open = Arc::new(OpenConnections::default());
    let refusals = Arc::new(RefusalLog::default());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => {
                // Out of file descriptors, most likely: wait for some to be freed
                // rather than spin, and keep serving the connections already open.
                tracing::warn!(%error, "cannot accept a REST connection; retrying in 100 ms");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        // Never wait here: the accept loop must keep up with a flood, or the backlog
        // overflows and every client, /healthz's included, waits for SYN retries.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if open.close_oldest_idle() => {
                app.metrics.http_connections_evicted.inc();
                None
            }
            Err(_) => {
                refuse(&app, stream, tls.clone(), limits.max_connections, &refusals);
                continue;
            }
        };
        connections.spawn(start_connection(
            Started {
                app: app.clone(),
                router: router.clone(),
                stream,
                peer: ClientAddr(peer.ip()),
                tls: tls.clone(),
                limits,
                shutdown: shutdown.clone(),
            },
            slot,
            Slots {
                slots: slots.clone(),
                open: open.clone(),
                refusals: refusals.clone(),
            },
        ));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind as Io;
    matches!(
        error.kind(),
        Io::ConnectionRefused | Io::ConnectionAborted | Io::ConnectionReset
    )
}

/// What a connection is served with.
struct Started {
    app: Arc<App>,
    router: Router,
    stream: TcpStream,
    peer: ClientAddr,
    tls: Option<TlsAcceptor>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
}

/// The shared bookkeeping of the cap.
struct Slots {
    slots: Arc<Semaphore>,
    open: Arc<OpenConnections>,
    refusals: Arc<RefusalLog>,
}

/// Serves a connection once it has a slot: the one taken at accept, or, when an idle
/// connection was closed to make room, the slot that one gives back.
async fn start_connection(started: Started, slot: Option<OwnedSemaphorePermit>, cap: Slots) {
    let slot = match slot {
        Some(slot) => slot,
        // The closed connection's task gives its slot back as soon as it runs; more
        // than a moment means the runtime is starved and the 503 is the honest answer.
        None => match tokio::time::timeout(Duration::from_millis(500), cap.slots.acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            _ => {
                let max = started.limits.max_connections;
                refuse(
                    &started.app,
                    started.stream,
                    started.tls,
                    max,
                    &cap.refusals,
                );
                return;
            }
        },
    };
    let entry = cap.open.register(slot);
    serve_connection(started, entry).await;
}

/// Rate-limits the warning about refused connections: a flood would otherwise write
/// a line per connection; the metric counts them all.
#[derive(Debug, Default)]
struct RefusalLog {
    last: parking_lot::Mutex<Option<Instant>>,
}

impl RefusalLog {
    fn should_log(&self) -> bool {
        let mut last = self.last.lock();
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// The open connections, oldest first, with whether each has a request in flight and
/// how to close it.
#[derive(Debug, Default)]
struct OpenConnections {
    entries: parking_lot::Mutex<BTreeMap<u64, OpenEntry>>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct OpenEntry {
    in_flight: Arc<AtomicUsize>,
    close: CancellationToken,
}

/// A connection's place among the open ones; leaving it frees its slot.
#[derive(Debug)]
struct Registered {
    id: u64,
    open: Arc<OpenConnections>,
    in_flight: Arc<AtomicUsize>,
    close: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl OpenConnections {
    fn register(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (in_flight, close) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        self.entries.lock().insert(
            id,
            OpenEntry {
                in_flight: in_flight.clone(),
                close: close.clone(),
            },
        );
        Registered {
            id,
            open: self.clone(),
            in_flight,
            close,
            _slot: slot,
        }
    }

    /// Closes the oldest connection without a request in flight; false if none.
    fn close_oldest_idle(&self) -> bool {
        let mut entries = self.entries.lock();
        let oldest_idle = entries
            .iter()
            .find(|(_, entry)| entry.in_flight.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match oldest_idle.and_then(|id| entries.remove(&id)) {
            Some(entry) => {
                entry.close.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.entries.lock().remove(&self.id);
    }
}

/// Counts a connection's request as in flight from its head to its response.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(started: Started, entry: Registered) {
    let Started {
        app,
        router,
        stream,
        peer,
        tls,
        limits,
        shutdown,
    } = started;
    app.metrics.http_connections.inc();
    // Small JSON responses; waiting to coalesce them only adds latency.
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_http(&app, router, stream, peer, limits, &shutdown, &entry).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)) => handshake,
                () = entry.close.cancelled() => Ok(Err(std::io::ErrorKind::ConnectionAborted.into())),
                () = shutdown.cancelled() => Ok(Err(std::io::ErrorKind::ConnectionAborted.into())),
            };
            match handshake {
                Ok(Ok(stream)) => {
                    serve_http(&app, router, stream, peer, limits, &shutdown, &entry).await;
                }
                Ok(Err(error)) => {
                    app.metrics.api_tls_handshake_failures.inc();
                    tracing::debug!(%error, "TLS handshake failed");
                }
                Err(_) => {
                    app.metrics.api_tls_handshake_failures.inc();
                    tracing::debug!("TLS handshake timed out");
                }
            }
        }
    }
    app.metrics.http_connections.dec();
    drop(entry);
}

/// Serves HTTP/1.1 on a connection (plain or TLS) until it closes, is closed to make
/// room, or the server shuts down.
async fn serve_http<S>(
    app: &App,
    router: Router,
    stream: S,
    peer: ClientAddr,
    limits: ListenerLimits,
    shutdown: &CancellationToken,
    entry: &Registered,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = app;
    let in_flight = entry.in_flight.clone();
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(peer);
        let sends_body = sends_body(request.headers());
        let request_in_flight = InFlight::start(&in_flight);
        let response = router.clone().oneshot(request);
        async move {
            let mut response = response.await;
            drop(request_in_flight);
            if let Ok(response) = &mut response {
                close_after_refused_body(sends_body, response);
            }
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Made room for a newer connection: dropped, not drained.
        () = entry.close.cancelled() => Ok(()),
        () = shutdown.cancelled() => {
            // Finish the request in flight, if any, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Timeouts and clients that go away are routine; they are counted by
        // their absence from the request log, not logged at warn.
        tracing::debug!(error = %crate::error::ErrorChain(&error), "REST connection closed");
    }
}

/// Whether a request comes with a body (a `content-length` above 0, or chunked).
fn sends_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// A request refused (4xx, 5xx) may leave its body unread — a 415, a 413, a 403 given
/// before the body is looked at — and hyper then closes the connection after the
/// response. Saying so (`connection: close`) keeps a client from sending its next request
/// on that connection and meeting a closed socket (a TLS "EOF in violation of protocol"
/// where it expected an answer).
fn close_after_refused_body(sends_body: bool, response: &mut http::Response<axum::body::Body>) {
    let refused = response.status().is_client_error() || response.status().is_server_error();
    if sends_body && refused {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}

/// Answers a connection over the cap, when every open one is busy, with `503` and the
/// envelope, and closes it (over TLS after a handshake of at most a second, on a task
/// of its own so the accept loop never waits).
fn refuse(
    app: &App,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    log: &RefusalLog,
) {
    app.metrics.http_connections_refused.inc();
    let trace_id = super::new_trace_id();
    let error = AppError::new(
        ErrorKind::Unavailable,
        "too_many_connections",
        format!("all {max_connections} connections the server allows are busy; retry later"),
    );
    let body = envelope_json(&error, &trace_id);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nx-trace-id: {trace_id}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let mut response = head.into_bytes();
    response.extend_from_slice(&body);
    match tls {
        // A fresh socket's send buffer takes this whole; never wait on a client here.
        None => {
            let _ = stream.try_write(&response);
        }
        Some(acceptor) => {
            tokio::spawn(async move {
                let answer = async {
                    let mut stream = acceptor.accept(stream).await?;
                    stream.write_all(&response).await?;
                    stream.shutdown().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
            });
        }
    }
    if log.should_log() {
        tracing::warn!(
            %trace_id,
            max_connections,
            refused_total = app.metrics.http_connections_refused.get(),
            "REST connection refused: connection cap reached"
        );
    }
}
