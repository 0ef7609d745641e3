//! HTTP to the WinRM listener: one `reqwest` client (rustls) per endpoint, POSTing SOAP
//! envelopes to the `/wsman` URL, authenticated with Basic (over HTTPS only) or NTLM.
//!
//! NTLM (MS-NLMP) is connection-oriented: the three legs (NEGOTIATE, CHALLENGE,
//! AUTHENTICATE, as `Authorization: Negotiate …` headers, MS-WSMV 2.2.9.1) run on one
//! keep-alive connection, which the client keeps to one idle connection per host so the
//! authenticated connection is the one reused. When the listener answers 401 again (the
//! connection was closed and a new one opened), the handshake is done again. The
//! messages and the NTLMv2 response come from the `ntlmclient` crate.
//!
//! Message encryption (MS-WSMV 2.2.9.1.1, `multipart/encrypted` with NTLM sealing) is
//! not implemented: NTLM is refused over plain HTTP (the password's hash would protect
//! the handshake, but the commands, the scripts' variables and their output would cross
//! the network in clear text). Use an HTTPS listener.

use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Mutex;

use crate::error::WinrmError;
use crate::settings::{Auth, Endpoint};

/// An authenticated channel to one listener.
#[derive(Debug)]
pub struct Transport {
    endpoint: Endpoint,
    client: reqwest::Client,
    /// Whether the pooled connection has passed the NTLM handshake; held across a whole
    /// exchange so two requests never interleave their handshakes.
    ntlm_ready: Mutex<bool>,
}

impl Transport {
    /// A channel to `endpoint`; nothing is sent yet.
    pub fn new(endpoint: &Endpoint) -> Result<Transport, WinrmError> {
        if endpoint.auth == Auth::Ntlm && !endpoint.https {
            return Err(WinrmError::InvalidSettings(format!(
                "auth=ntlm over http ({}) needs WS-Management message encryption, which this agent does not implement yet; use an https endpoint (port 5986)",
                endpoint.url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .pool_max_idle_per_host(1)
            .connect_timeout(Duration::from_secs(10))
            // The host holds a Receive for up to the operation timeout.
            .timeout(endpoint.operation_timeout + Duration::from_secs(30))
            .http1_only();
        if let Some(path) = &endpoint.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                WinrmError::InvalidSettings(format!(
                    "ca_file {} cannot be read: {e}",
                    path.display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                WinrmError::InvalidSettings(format!(
                    "ca_file {} holds no PEM certificate: {e}",
                    path.display()
                ))
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| WinrmError::Connect {
            url: endpoint.url.clone(),
            reason: error_chain(&e),
        })?;
        Ok(Transport {
            endpoint: endpoint.clone(),
            client,
            ntlm_ready: Mutex::new(false),
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// POSTs `envelope` and returns the answer's body (a SOAP envelope, which may be a
    /// fault: WinRM answers faults with HTTP 500).
    pub async fn send(&self, action: &'static str, envelope: String) -> Result<String, WinrmError> {
        match self.endpoint.auth {
            Auth::Basic => {
                let request = self
                    .post(envelope)
                    .basic_auth(&self.endpoint.user, Some(&self.endpoint.password.0));
                let response = self.execute(action, request).await?;
                self.body(action, response).await
            }
            Auth::Ntlm => {
                let mut ready = self.ntlm_ready.lock().await;
                if *ready {
                    let response = self.execute(action, self.post(envelope.clone())).await?;
                    if response.status() != reqwest::StatusCode::UNAUTHORIZED {
                        return self.body(action, response).await;
                    }
                    // A new connection: authenticate it.
                    *ready = false;
                }
                let response = self.ntlm_handshake(action, envelope).await?;
                *ready = true;
                self.body(action, response).await
            }
        }
    }

    fn post(&self, envelope: String) -> reqwest::RequestBuilder {
        self.client
            .post(&self.endpoint.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/soap+xml;charset=UTF-8",
            )
            .body(envelope)
    }

    async fn execute(
        &self,
        action: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, WinrmError> {
        request.send().await.map_err(|e| WinrmError::Connect {
            url: self.endpoint.url.clone(),
            reason: format!("{action}: {}", error_chain(&e)),
        })
    }

    async fn body(
        &self,
        action: &'static str,
        response: reqwest::Response,
    ) -> Result<String, WinrmError> {
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.refused());
        }
        let text = response.text().await.map_err(|e| WinrmError::Connect {
            url: self.endpoint.url.clone(),
            reason: format!("reading the answer to {action}: {}", error_chain(&e)),
        })?;
        if status.is_success() || (status.as_u16() == 500 && text.contains("Fault")) {
            return Ok(text);
        }
        Err(WinrmError::Protocol {
            url: self.endpoint.url.clone(),
            action,
            detail: format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ),
        })
    }

    fn refused(&self) -> WinrmError {
        WinrmError::AuthRefused {
            url: self.endpoint.url.clone(),
            user: self.endpoint.user.clone(),
            auth: self.endpoint.auth.as_str(),
        }
    }

    /// NEGOTIATE with an empty body, CHALLENGE in the 401, then AUTHENTICATE with the
    /// envelope (an empty body first would cost one more round trip).
    async fn ntlm_handshake(
        &self,
        action: &'static str,
        envelope: String,
    ) -> Result<reqwest::Response, WinrmError> {
        let negotiate = ntlm::negotiate().map_err(|detail| self.ntlm_error(action, detail))?;
        let response = self
            .execute(
                action,
                self.post(String::new())
                    .header(reqwest::header::AUTHORIZATION, negotiate),
            )
            .await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.ntlm_error(
                action,
                format!(
                    "the listener answered NEGOTIATE with HTTP {}",
                    response.status()
                ),
            ));
        }
        let challenge = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(|value| {
                value
                    .strip_prefix("Negotiate ")
                    .or_else(|| value.strip_prefix("NTLM "))
            })
            .map(str::to_owned)
            .ok_or_else(|| self.ntlm_error(action, "no NTLM challenge in the 401".to_owned()))?;
        // Drain the body so the connection can be reused.
        let _ = response.bytes().await;
        let authenticate =
            ntlm::authenticate(&challenge, &self.endpoint.user, &self.endpoint.password.0)
                .map_err(|detail| self.ntlm_error(action, detail))?;
        let response = self
            .execute(
                action,
                self.post(envelope)
                    .header(reqwest::header::AUTHORIZATION, authenticate),
            )
            .await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.refused());
        }
        Ok(response)
    }

    fn ntlm_error(&self, action: &'static str, detail: impl std::fmt::Display) -> WinrmError {
        WinrmError::Protocol {
            url: self.endpoint.url.clone(),
            action,
            detail: format!("NTLM: {detail}"),
        }
    }
}

/// The NTLM messages, as `Authorization` header values.
mod ntlm {
    use super::*;
    use ntlmclient::{AuthenticateMessage, Credentials, Flags, Message, NegotiateMessage};

    fn flags() -> Flags {
        Flags::NEGOTIATE_UNICODE
            | Flags::REQUEST_TARGET
            | Flags::NEGOTIATE_NTLM
            | Flags::NEGOTIATE_ALWAYS_SIGN
            | Flags::NEGOTIATE_NTLM2_KEY
            | Flags::NEGOTIATE_TARGET_INFO
            | Flags::NEGOTIATE_128BIT
            | Flags::NEGOTIATE_56BIT
    }

    fn header(message: &Message) -> Result<String, String> {
        let bytes = message
            .to_bytes()
            .map_err(|e| format!("cannot encode the message: {e:?}"))?;
        Ok(format!(
            "Negotiate {}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    pub(super) fn negotiate() -> Result<String, String> {
        header(&Message::Negotiate(NegotiateMessage {
            flags: flags(),
            supplied_domain: String::new(),
            supplied_workstation: String::new(),
            os_version: Default::default(),
        }))
    }

    /// `DOMAIN\user` or `user@domain` or `user`.
    fn credentials(user: &str, password: &str) -> Credentials {
        let (domain, username) = match user.split_once('\\') {
            Some((domain, name)) => (domain.to_owned(), name.to_owned()),
            None => match user.split_once('@') {
                Some((name, domain)) => (domain.to_owned(), name.to_owned()),
                None => (String::new(), user.to_owned()),
            },
        };
        Credentials {
            username,
            password: password.to_owned(),
            domain,
        }
    }

    pub(super) fn authenticate(
        challenge: &str,
        user: &str,
        password: &str,
    ) -> Result<String, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(challenge.trim())
            .map_err(|e| format!("the challenge is not base64: {e}"))?;
        // The crate panics on some malformed input; a listener's bytes must not take the
        // agent down.
        let parsed = std::panic::catch_unwind(|| Message::try_from(bytes.as_slice()))
            .map_err(|_| "the challenge is malformed".to_owned())?
            .map_err(|e| format!("the challenge is malformed: {e:?}"))?;
        let Message::Challenge(challenge) = parsed else {
            return Err("the listener sent another message than CHALLENGE".to_owned());
        };
        let target_info: Vec<u8> = challenge
            .target_information
            .iter()
            .flat_map(|entry| entry.to_bytes())
            .collect();
        let credentials = credentials(user, password);
        let response = ntlmclient::respond_challenge_ntlm_v2(
            challenge.challenge,
            &target_info,
            ntlmclient::get_ntlm_time(),
            &credentials,
        );
        header(&Message::Authenticate(AuthenticateMessage {
            lm_response: response.lm_response,
            ntlm_response: response.ntlm_response,
            domain_name: credentials.domain,
            user_name: credentials.username,
            workstation_name: String::new(),
            // No key exchange: the session key is not sent.
            session_key: Vec::new(),
            flags: flags() & challenge.flags,
            os_version: Default::default(),
        }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn users_split_into_domain_and_name() {
            let c = credentials(r"CORP\deploy", "p");
            assert_eq!((c.domain.as_str(), c.username.as_str()), ("CORP", "deploy"));
            let c = credentials("deploy@corp.example", "p");
            assert_eq!(
                (c.domain.as_str(), c.username.as_str()),
                ("corp.example", "deploy")
            );
            let c = credentials("deploy", "p");
            assert_eq!((c.domain.as_str(), c.username.as_str()), ("", "deploy"));
            assert!(negotiate()
                .expect("negotiate")
                .starts_with("Negotiate TlRMTVNTUAAB"));
            assert!(authenticate("bm90IG50bG0=", "u", "p").is_err());
        }
    }
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
