//! gRPC channels to the agent gateway over rustls, as a real agent opens them.
//!
//! This mirrors `stella-agent-core`'s transport (tonic without its TLS feature; the
//! connector runs the rustls handshake with a config from `stella-pki`) rather than
//! calling it, so the bench depends on nothing but the wire protocol and the PKI.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// The keepalive settings of the real agent, so the server sees the same PING traffic.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Requests queued in a channel before callers wait. A simulated agent makes one call
/// at a time; tonic's default (1024) only costs memory here.
const CHANNEL_BUFFER: usize = 8;

/// A gateway address, parsed from `https://host:port`.
#[derive(Debug, Clone)]
pub struct GatewayUrl {
    authority: String,
    server_name: ServerName<'static>,
}

impl GatewayUrl {
    /// Parses the `grpc_url` the REST API announces.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid gateway url `{url}`"))?;
        if uri.scheme_str() != Some("https") {
            bail!("the gateway url `{url}` is not https://");
        }
        let host = uri
            .host()
            .with_context(|| format!("the gateway url `{url}` has no host"))?;
        let port = uri.port_u16().unwrap_or(443);
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if bare_host.contains(':') {
            format!("[{bare_host}]:{port}")
        } else {
            format!("{bare_host}:{port}")
        };
        let server_name = ServerName::try_from(bare_host.to_owned())
            .with_context(|| format!("the host of `{url}` is not a tls server name"))?;
        Ok(GatewayUrl {
            authority,
            server_name,
        })
    }
}

/// Opens one TLS connection to the gateway and returns a channel over it. The config
/// must offer ALPN `h2` (every `stella-pki` client config does).
pub async fn connect(
    gateway: &GatewayUrl,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Channel> {
    // tonic refuses `https` without its TLS feature; TLS happens in the connector, so
    // the endpoint gets `http://` and the requests the real `https` origin.
    let endpoint = Endpoint::from_shared(format!("http://{}", gateway.authority))?
        .origin(format!("https://{}", gateway.authority).parse()?)
        .connect_timeout(CONNECT_TIMEOUT)
        .buffer_size(CHANNEL_BUFFER)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(tls);
    let authority = gateway.authority.clone();
    let server_name = gateway.server_name.clone();
    let service = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let authority = authority.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(service)
        .await
        .with_context(|| format!("cannot connect to the gateway at {}", gateway.authority))
}
