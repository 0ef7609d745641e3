//! Enrolment (join token + CSR for a certificate), gateway discovery and renewal.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use stella_pki::{AgentIdentity, AgentKey, Fingerprint, JoinToken};
use stella_proto::v1;
use stella_proto::v1::agent_gateway_client::AgentGatewayClient;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::fsutil;
use crate::identity::{self, files, Identity};
use crate::transport::{self, GatewayUrl};

const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer of `GET {server_url}/api/v1/gateway`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GatewayInfo {
    /// The gateway URL, `https://host:port`.
    pub grpc_url: String,
    /// Lowercase hex SHA-256 of the CA certificate DER.
    pub ca_fingerprint: String,
}

/// Asks the control plane's REST API where its gateway is. The answer is unauthenticated;
/// the CA pin of the join token is what makes it safe to follow. Over `https://` the API
/// is trusted when it presents the pinned CA (its own certificate) or the system's roots
/// vouch for it (an operator's certificate).
pub async fn discover_gateway(
    server_url: &str,
    pin: Option<&Fingerprint>,
) -> Result<GatewayInfo, AgentError> {
    let url = format!("{}/api/v1/gateway", server_url.trim_end_matches('/'));
    let discovery = |source| AgentError::Discovery {
        url: url.clone(),
        source,
    };
    let mut builder = reqwest::Client::builder().timeout(DISCOVERY_TIMEOUT);
    if url.starts_with("https://") {
        let trust = stella_pki::ApiTrust::FirstUse(stella_pki::FirstUse {
            system_roots: rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            pinned: pin.cloned(),
            record: std::sync::Arc::new(|_| {}),
            store: "the join token".to_owned(),
        });
        if let Ok(config) = stella_pki::api_client_tls_config(trust) {
            builder = builder.use_preconfigured_tls(config);
        }
    }
    let client = builder.build().map_err(discovery)?;
    client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(discovery)?
        .json::<GatewayInfo>()
        .await
        .map_err(discovery)
}

/// Enrols this agent: generates a key (which never leaves the host), sends a CSR with the
/// join token to the gateway over TLS pinned to the token's CA, and saves the identity in
/// the data dir. Refuses a data dir that already holds an identity.
pub async fn enrol(config: &AgentConfig) -> Result<Identity, AgentError> {
    let Some(token_text) = config.join_token.as_deref() else {
        return Err(AgentError::MissingJoinToken {
            data_dir: config.data_dir.clone(),
        });
    };
    let token = JoinToken::parse(token_text.trim()).map_err(AgentError::InvalidJoinToken)?;
    if config.data_dir.join(files::AGENT_JSON).exists() {
        return Err(AgentError::AlreadyEnrolled {
            data_dir: config.data_dir.clone(),
        });
    }
    let pinned = token.ca_fingerprint().clone();

    let grpc_url = match (&config.grpc_url, &config.server_url) {
        (Some(grpc_url), _) => grpc_url.clone(),
        (None, Some(server_url)) => {
            let info = discover_gateway(server_url, Some(&pinned)).await?;
            let advertised = Fingerprint::parse(&info.ca_fingerprint).ok();
            if advertised.as_ref() != Some(&pinned) {
                return Err(AgentError::CaPinMismatch {
                    origin: format!("gateway discovery at {server_url}"),
                    pinned: pinned.to_string(),
                    presented: info.ca_fingerprint,
                });
            }
            info.grpc_url
        }
        (None, None) => return Err(AgentError::NoServer),
    };
    let gateway = GatewayUrl::parse(&grpc_url)?;
    let name = match &config.name {
        Some(name) => name.clone(),
        None => crate::host::host_name().await,
    };
    let span = tracing::info_span!("enrol", name = %name, grpc_url = %grpc_url);
    async move {
        let data_dir = config.data_dir.clone();
        let key = AgentKey::generate().map_err(AgentError::pki("generating the agent key"))?;
        let key_pem = key.key_pem();
        // The key is on disk before the CSR leaves: an answer is never for a lost key.
        {
            let data_dir = data_dir.clone();
            let key_pem = key_pem.clone();
            fsutil::blocking(move || {
                fsutil::create_private_dir(&data_dir)?;
                fsutil::create_private_dir(&identity::journal_dir(&data_dir))?;
                fsutil::write_atomic(&data_dir.join(files::AGENT_KEY), key_pem.as_bytes())
            })
            .await?;
        }
        let csr_der = key
            .csr_der(&name)
            .map_err(AgentError::pki("making the certificate signing request"))?;

        let tls = stella_pki::enrolment_client_tls_config(&pinned)
            .map_err(AgentError::pki("configuring tls for enrolment"))?;
        let channel = transport::connect(&gateway, tls)
            .await
            .map_err(|e| untrusted_if_tls(e, &pinned))?;
        let request = v1::EnrollRequest {
            join_token: token.expose(),
            csr_der,
            name: name.clone(),
            labels: config.labels.clone().into_iter().collect(),
        };
        let response = AgentGatewayClient::new(channel)
            .enroll(request)
            .await
            .map_err(|status| enrol_status_error(&gateway, &pinned, status))?
            .into_inner();

        check_ca(&response.ca_pem, &pinned, gateway.as_str())?;
        let not_after =
            identity::unix_seconds(response.not_after_unix_seconds).ok_or_else(|| {
                AgentError::InvalidResponse {
                    call: "Enroll",
                    reason: "not_after_unix_seconds is out of range".to_owned(),
                }
            })?;
        let issued = certificate_identity(&response.certificate_pem, "Enroll")?;
        if issued.agent_id != response.agent_id || issued.trust_domain != response.trust_domain {
            return Err(AgentError::InvalidResponse {
                call: "Enroll",
                reason: format!(
                    "the certificate names {} but the response names agent {} in {}",
                    issued.spiffe_uri(),
                    response.agent_id,
                    response.trust_domain
                ),
            });
        }
        let identity = Identity {
            agent_id: response.agent_id,
            name,
            trust_domain: response.trust_domain,
            grpc_url,
            ca_pem: response.ca_pem,
            cert_pem: response.certificate_pem,
            key_pem,
            not_after,
        };
        {
            let identity = identity.clone();
            fsutil::blocking(move || identity.save_certificates(&data_dir)).await?;
        }
        tracing::info!(agent_id = %identity.agent_id, not_after = %identity.not_after, "enrolled");
        Ok(identity)
    }
    .instrument(span)
    .await
}

/// Renews the agent certificate over mTLS with a CSR from a new key, and installs the new
/// key and certificate in `data_dir` (see [`crate::identity`] for how a crash midway is
/// recovered). Returns the new identity; connections opened afterwards use it.
pub async fn renew(identity: &Identity, data_dir: &Path) -> Result<Identity, AgentError> {
    let gateway = GatewayUrl::parse(&identity.grpc_url)?;
    let key = AgentKey::generate().map_err(AgentError::pki("generating the agent key"))?;
    let key_pem = key.key_pem();
    {
        let data_dir = data_dir.to_owned();
        let key_pem = key_pem.clone();
        fsutil::blocking(move || identity::stage_renewal_key(&data_dir, &key_pem)).await?;
    }
    let csr_der = key
        .csr_der(&identity.name)
        .map_err(AgentError::pki("making the certificate signing request"))?;
    let tls = stella_pki::agent_client_tls_config(
        &identity.ca_pem,
        &identity.cert_pem,
        &identity.key_pem,
    )
    .map_err(AgentError::pki("configuring mutual tls"))?;
    let channel = transport::connect(&gateway, tls)
        .await
        .map_err(|e| transport::refine_connect_error(&gateway, e))?;
    let response = AgentGatewayClient::new(channel)
        .renew(v1::RenewRequest { csr_der })
        .await
        .map_err(|status| transport::classify_status("Renew", &gateway, status))?
        .into_inner();

    // A renewal may not move the agent to another CA or identity.
    let pinned = ca_fingerprint(&identity.ca_pem, "ca.pem")?;
    check_ca(&response.ca_pem, &pinned, gateway.as_str())?;
    let issued = certificate_identity(&response.certificate_pem, "Renew")?;
    if issued.agent_id != identity.agent_id || issued.trust_domain != identity.trust_domain {
        return Err(AgentError::InvalidResponse {
            call: "Renew",
            reason: format!(
                "the new certificate names {} instead of agent {}",
                issued.spiffe_uri(),
                identity.agent_id
            ),
        });
    }
    let not_after = identity::unix_seconds(response.not_after_unix_seconds).ok_or_else(|| {
        AgentError::InvalidResponse {
            call: "Renew",
            reason: "not_after_unix_seconds is out of range".to_owned(),
        }
    })?;
    {
        let data_dir = data_dir.to_owned();
        let cert_pem = response.certificate_pem.clone();
        let ca_pem = response.ca_pem.clone();
        fsutil::blocking(move || {
            identity::commit_renewal(&data_dir, &cert_pem, &ca_pem, not_after)
        })
        .await?;
    }
    tracing::info!(agent_id = %identity.agent_id, not_after = %not_after, "certificate renewed");
    Ok(Identity {
        cert_pem: response.certificate_pem,
        ca_pem: response.ca_pem,
        key_pem,
        not_after,
        ..identity.clone()
    })
}

fn enrol_status_error(
    gateway: &GatewayUrl,
    pinned: &Fingerprint,
    status: tonic::Status,
) -> AgentError {
    if let Some(tls) = crate::error::find_rustls_error(&status) {
        return AgentError::EnrolmentServerUntrusted {
            url: gateway.as_str().to_owned(),
            pinned: pinned.to_string(),
            source: tls.clone(),
        };
    }
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
            AgentError::Rpc {
                call: "Enroll",
                source: status,
            }
        }
        code => AgentError::EnrolmentRefused {
            code,
            message: status.message().to_owned(),
        },
    }
}

fn untrusted_if_tls(error: AgentError, pinned: &Fingerprint) -> AgentError {
    match error {
        AgentError::Tls { url, source } => AgentError::EnrolmentServerUntrusted {
            url,
            pinned: pinned.to_string(),
            source,
        },
        other => other,
    }
}

fn ca_fingerprint(ca_pem: &str, origin: &str) -> Result<Fingerprint, AgentError> {
    let certs = stella_pki::pem_to_der_certs(ca_pem)
        .map_err(AgentError::pki("reading the ca certificate"))?;
    let Some(ca) = certs.first() else {
        return Err(AgentError::InvalidResponse {
            call: "Enroll",
            reason: format!("{origin} holds no certificate"),
        });
    };
    Ok(Fingerprint::of_der(ca.as_ref()))
}

fn check_ca(ca_pem: &str, pinned: &Fingerprint, url: &str) -> Result<(), AgentError> {
    let presented = ca_fingerprint(ca_pem, "the returned ca_pem")?;
    if &presented != pinned {
        return Err(AgentError::CaPinMismatch {
            origin: url.to_owned(),
            pinned: pinned.to_string(),
            presented: presented.to_string(),
        });
    }
    Ok(())
}

fn certificate_identity(cert_pem: &str, call: &'static str) -> Result<AgentIdentity, AgentError> {
    let certs = stella_pki::pem_to_der_certs(cert_pem)
        .map_err(AgentError::pki("reading the agent certificate"))?;
    let Some(leaf) = certs.first() else {
        return Err(AgentError::InvalidResponse {
            call,
            reason: "no certificate in certificate_pem".to_owned(),
        });
    };
    AgentIdentity::from_certificate_der(leaf.as_ref()).map_err(|e| AgentError::InvalidResponse {
        call,
        reason: format!("the certificate carries no agent identity: {e}"),
    })
}
