//! gRPC channels to the gateway over rustls.
//!
//! tonic's own TLS feature is not used: the TLS configurations come from `stella-pki`
//! (CA pinning for enrolment, mTLS afterwards), so the channel gets a connector that opens
//! TCP and runs the handshake with tokio-rustls itself.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::error::{find_rustls_error, AgentError};

/// HTTP/2 PINGs on an idle session, so a dead connection (server gone, network cut) is
/// noticed in `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` instead of at the next TCP timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway address, parsed from `https://host:port`.
#[derive(Debug, Clone)]
pub struct GatewayUrl {
    url: String,
    authority: String,
    host: String,
}

impl GatewayUrl {
    pub fn parse(url: &str) -> Result<Self, AgentError> {
        let invalid = |reason: &str| AgentError::InvalidGrpcUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a url"))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid("the gateway speaks tls only: use https://"));
        }
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let port = uri.port_u16().unwrap_or(443);
        // `Uri::host` keeps the brackets of an IPv6 literal; TLS and DNS want it bare.
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authority = if bare_host.contains(':') {
            format!("[{bare_host}]:{port}")
        } else {
            format!("{bare_host}:{port}")
        };
        Ok(GatewayUrl {
            url: url.to_owned(),
            authority,
            host: bare_host,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }
}

/// Connects to the gateway with the given TLS configuration (which must offer ALPN `h2`).
pub async fn connect(
    gateway: &GatewayUrl,
    tls: rustls::ClientConfig,
) -> Result<Channel, AgentError> {
    let server_name =
        ServerName::try_from(gateway.host.clone()).map_err(|_| AgentError::InvalidGrpcUrl {
            url: gateway.url.clone(),
            reason: "the host is not a valid tls server name".to_owned(),
        })?;
    // tonic refuses `https` URIs without its TLS feature, and TLS happens in the connector
    // anyway: the endpoint gets `http://` with the same authority, and the requests carry
    // the real `https` origin.
    let endpoint = Endpoint::from_shared(format!("http://{}", gateway.authority)).map_err(|e| {
        AgentError::InvalidGrpcUrl {
            url: gateway.url.clone(),
            reason: e.to_string(),
        }
    })?;
    let origin: Uri = format!("https://{}", gateway.authority)
        .parse()
        .map_err(|_| AgentError::InvalidGrpcUrl {
            url: gateway.url.clone(),
            reason: "invalid authority".to_owned(),
        })?;
    let endpoint = endpoint
        .origin(origin)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);

    let connector = TlsConnector::from(Arc::new(tls));
    let authority = gateway.authority.clone();
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
        .map_err(|source| match find_rustls_error(&source) {
            Some(tls) => AgentError::Tls {
                url: gateway.url.clone(),
                source: tls.clone(),
            },
            None => AgentError::Connect {
                url: gateway.url.clone(),
                source,
            },
        })
}

/// Turns a failed call into an [`AgentError`]: refusals of our identity (gRPC
/// `Unauthenticated`/`PermissionDenied`, or a TLS alert about our certificate) become
/// [`AgentError::Refused`], other TLS failures [`AgentError::Tls`].
pub(crate) fn classify_status(
    call: &'static str,
    gateway: &GatewayUrl,
    status: tonic::Status,
) -> AgentError {
    if status.code() == tonic::Code::PermissionDenied && status.message().contains("revoked") {
        return AgentError::Revoked {
            url: gateway.url.clone(),
            reason: format!("{}: {}", status.code(), status.message()),
        };
    }
    if matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    ) {
        return AgentError::Refused {
            url: gateway.url.clone(),
            reason: format!("{}: {}", status.code(), status.message()),
        };
    }
    if let Some(tls) = find_rustls_error(&status) {
        return classify_tls(gateway, tls.clone());
    }
    if let Some(alert) = refusal_alert_in_text(&status) {
        let reason = format!("tls: received fatal alert: {alert}");
        let url = gateway.url.clone();
        return if alert == format!("{:?}", rustls::AlertDescription::CertificateRevoked) {
            AgentError::Revoked { url, reason }
        } else {
            AgentError::Refused { url, reason }
        };
    }
    AgentError::Rpc {
        call,
        source: status,
    }
}

/// Alerts a server sends when it refuses our certificate.
const REFUSAL_ALERTS: [rustls::AlertDescription; 8] = {
    use rustls::AlertDescription as Alert;
    [
        Alert::BadCertificate,
        Alert::CertificateRevoked,
        Alert::CertificateExpired,
        Alert::CertificateUnknown,
        Alert::UnknownCA,
        Alert::AccessDenied,
        Alert::CertificateRequired,
        Alert::UnsupportedCertificate,
    ]
};

/// With TLS 1.3 the server judges our certificate after our side of the handshake is
/// done, so its alert arrives on the HTTP/2 connection, and h2 keeps only the text of IO
/// errors (`h2::proto::Error::Io(kind, Option<String>)`): the rustls error can only be
/// recognised by rustls's own `Display` of it.
fn refusal_alert_in_text(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let text = crate::error::error_chain(error);
    REFUSAL_ALERTS
        .iter()
        .map(|alert| format!("{alert:?}"))
        .find(|alert| text.contains(&format!("received fatal alert: {alert}")))
}

/// A TLS failure after we presented our certificate: the server's alert says whether it
/// refused the certificate (revoked, unknown CA, expired) or something else went wrong.
pub(crate) fn classify_tls(gateway: &GatewayUrl, tls: rustls::Error) -> AgentError {
    match &tls {
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked) => {
            AgentError::Revoked {
                url: gateway.url.clone(),
                reason: format!("tls: {tls}"),
            }
        }
        rustls::Error::AlertReceived(alert) if REFUSAL_ALERTS.contains(alert) => {
            AgentError::Refused {
                url: gateway.url.clone(),
                reason: format!("tls: {tls}"),
            }
        }
        _ => AgentError::Tls {
            url: gateway.url.clone(),
            source: tls,
        },
    }
}

/// Whether an error (a channel failure) came from our certificate being refused.
pub(crate) fn refine_connect_error(gateway: &GatewayUrl, error: AgentError) -> AgentError {
    match error {
        AgentError::Tls { source, .. } => classify_tls(gateway, source),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_urls() {
        let url = GatewayUrl::parse("https://gw.example:7443").expect("parse");
        assert_eq!(url.authority, "gw.example:7443");
        assert_eq!(url.host, "gw.example");
        let url = GatewayUrl::parse("https://[::1]:7443/").expect("parse");
        assert_eq!(url.authority, "[::1]:7443");
        assert_eq!(url.host, "::1");
        let url = GatewayUrl::parse("https://gw.example").expect("parse");
        assert_eq!(url.authority, "gw.example:443");
        assert!(GatewayUrl::parse("http://gw.example:7443").is_err());
        assert!(GatewayUrl::parse("not a url").is_err());
    }
}
