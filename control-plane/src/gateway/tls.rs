//! TLS termination for the gateway: accepts TCP, runs the rustls handshake (with the
//! revocation-aware client verifier from `stella-pki`) off the accept loop, and hands
//! tonic connections that carry the verified peer identity.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use stella_pki::AgentIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::app::App;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 1024;
/// Connections the kernel completes and queues before the gateway accepts them: the
/// Linux default cap (`net.core.somaxconn`), where std and tokio ask for 128 and 1,024.
/// While every handshake slot is taken, a reconnect storm waits here.
const LISTEN_BACKLOG: u32 = 4096;

/// What the gateway knows about the other end of a connection; in every request's
/// extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The agent identity from a verified client certificate; `None` without one.
    pub identity: Option<AgentIdentity>,
}

/// A TLS connection with its verified peer.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The gateway's rustls config from the server's PKI and live revocation set.
pub fn server_config(app: &App) -> Result<Arc<rustls::ServerConfig>, stella_pki::PkiError> {
    let config = stella_pki::server_tls_config(
        app.pki.ca.cert_pem(),
        app.trust_domain(),
        &app.pki.server_cert,
        app.revocations.clone(),
    )?;
    Ok(Arc::new(config))
}

/// Binds the gateway's listener with a backlog of [`LISTEN_BACKLOG`] (and
/// `SO_REUSEADDR`, so a restarted server binds the port its predecessor's connections
/// still hold in `TIME_WAIT`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until `shutdown`, handshaking each on its own task, at most
/// `max_handshakes` at once: a connection is accepted only once a handshake slot is
/// free, so the others wait in the kernel's backlog, where they cost no CPU and no
/// handshake timeout runs.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(app.config.gateway_max_handshakes));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot,
            };
            // The semaphore is never closed.
            let Ok(slot) = slot else { break };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                match handshake {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(stella_pki::agent_identity_of_peer);
                        let peer = PeerInfo {
                            remote_addr,
                            identity,
                        };
                        let _ = tx.send(Ok(TlsConnection { stream, peer })).await;
                    }
                    Ok(Err(error)) => {
                        app.metrics.tls_handshake_failures.inc();
                        tracing::info!(%remote_addr, %error, "gateway tls handshake refused");
                    }
                    Err(_) => {
                        app.metrics.tls_handshake_failures.inc();
                        tracing::info!(%remote_addr, "gateway tls handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
