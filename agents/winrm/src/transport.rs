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
//! Over HTTPS the AUTHENTICATE leg carries the first envelope. Over plain HTTP every
//! envelope is encrypted with the NTLM session's keys (MS-WSMV 2.2.9.1.1, see
//! `encryption`): the handshake runs with empty bodies first, as Windows expects, and a
//! listener that does not agree to sealing is refused.

use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Mutex;

use crate::encryption::{self, Session};
use crate::error::WinrmError;
use crate::settings::{Auth, Endpoint};

/// An authenticated channel to one listener.
#[derive(Debug)]
pub struct Transport {
    endpoint: Endpoint,
    client: reqwest::Client,
    /// Whether envelopes are encrypted (NTLM over plain HTTP).
    encrypt: bool,
    /// The NTLM state of the pooled connection: `None` before the handshake; held
    /// across a whole exchange so two requests never interleave their handshakes or
    /// their sequence numbers.
    ntlm: Mutex<Option<Authenticated>>,
}

/// A connection that passed the NTLM handshake.
#[derive(Debug)]
struct Authenticated {
    /// The session's keys, when sealing was negotiated.
    session: Option<Session>,
}

impl Transport {
    /// A channel to `endpoint`; nothing is sent yet.
    pub fn new(endpoint: &Endpoint) -> Result<Transport, WinrmError> {
        if endpoint.auth == Auth::Basic && !endpoint.https {
            return Err(WinrmError::InvalidSettings(format!(
                "auth=basic over http ({}) would send the password in clear text; use https or ntlm",
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
            encrypt: endpoint.auth == Auth::Ntlm && !endpoint.https,
            ntlm: Mutex::new(None),
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether envelopes travel encrypted (NTLM over plain HTTP).
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// POSTs `envelope` and returns the answer's body (a SOAP envelope, which may be a
    /// fault: WinRM answers faults with HTTP 500).
    pub async fn send(&self, action: &'static str, envelope: String) -> Result<String, WinrmError> {
        if self.endpoint.auth == Auth::Basic {
            let request = self
                .post(envelope)
                .basic_auth(&self.endpoint.user, Some(&self.endpoint.password.0));
            let response = self.execute(action, request).await?;
            return self.body(action, response, None).await;
        }
        let mut state = self.ntlm.lock().await;
        // A second attempt only after the listener forgot the connection's
        // authentication (401 on an authenticated connection).
        for attempt in 0..2 {
            let authenticated = match state.as_mut() {
                Some(authenticated) => authenticated,
                None if self.encrypt => {
                    let (response, authenticated) = self.ntlm_handshake(action, None).await?;
                    let status = response.status();
                    let _ = response.bytes().await;
                    if !status.is_success() {
                        return Err(self.ntlm_error(
                            action,
                            format!(
                                "the listener answered the empty AUTHENTICATE with HTTP {status}"
                            ),
                        ));
                    }
                    if authenticated.session.is_none() {
                        return Err(self.ntlm_error(
                            action,
                            "the listener did not agree to sealing, which message encryption over http needs",
                        ));
                    }
                    state.insert(authenticated)
                }
                None => {
                    let (response, authenticated) =
                        self.ntlm_handshake(action, Some(envelope)).await?;
                    *state = Some(authenticated);
                    return self.body(action, response, None).await;
                }
            };
            let request = match authenticated.session.as_mut() {
                Some(session) if self.encrypt => self
                    .client
                    .post(&self.endpoint.url)
                    .header(reqwest::header::CONTENT_TYPE, encryption::CONTENT_TYPE)
                    .body(session.encrypt(envelope.as_bytes())),
                _ => self.post(envelope.clone()),
            };
            let response = self.execute(action, request).await?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let _ = response.bytes().await;
                *state = None;
                continue;
            }
            let session = authenticated.session.as_mut().filter(|_| self.encrypt);
            return self.body(action, response, session).await;
        }
        Err(self.refused())
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

    /// The answer's envelope, decrypted with `session` when it comes encrypted.
    async fn body(
        &self,
        action: &'static str,
        response: reqwest::Response,
        session: Option<&mut Session>,
    ) -> Result<String, WinrmError> {
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.refused());
        }
        let encrypted = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/encrypted"));
        let bytes = response.bytes().await.map_err(|e| WinrmError::Connect {
            url: self.endpoint.url.clone(),
            reason: format!("reading the answer to {action}: {}", error_chain(&e)),
        })?;
        let bytes = match (encrypted, session) {
            (true, Some(session)) => session
                .decrypt(&bytes)
                .map_err(|detail| self.ntlm_error(action, detail))?,
            (true, None) => {
                return Err(self.ntlm_error(action, "an encrypted answer on an unencrypted channel"))
            }
            (false, Some(_)) if !bytes.is_empty() => {
                return Err(self.ntlm_error(
                    action,
                    format!("HTTP {status}: an unencrypted answer on an encrypted channel"),
                ))
            }
            (false, _) => bytes.to_vec(),
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
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

    /// NEGOTIATE with an empty body, CHALLENGE in the 401, then AUTHENTICATE with
    /// `envelope` (over HTTPS: an empty body first would cost one more round trip) or an
    /// empty body (before encrypted envelopes).
    async fn ntlm_handshake(
        &self,
        action: &'static str,
        envelope: Option<String>,
    ) -> Result<(reqwest::Response, Authenticated), WinrmError> {
        // reqwest gives no way to pin a request to a connection: the connection of the
        // CHALLENGE goes back to the pool asynchronously, and AUTHENTICATE may leave on a
        // new one, which the listener refuses (it has no NTLM state there). That case is
        // told apart from refused credentials by the local port, and the handshake made
        // again, at most twice.
        for attempt in 0..3 {
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
            let challenge_port = local_port(&response);
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
                .ok_or_else(|| self.ntlm_error(action, "no NTLM challenge in the 401"))?;
            // Drain the body and let the connection go back to the pool.
            let _ = response.bytes().await;
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            if attempt > 0 {
                // The pool gets the connection back from a task of its own: give it time.
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            let (authenticate, exported_key) =
                ntlm::authenticate(&challenge, &self.endpoint.user, &self.endpoint.password.0)
                    .map_err(|detail| self.ntlm_error(action, detail))?;
            let response = self
                .execute(
                    action,
                    self.post(envelope.clone().unwrap_or_default())
                        .header(reqwest::header::AUTHORIZATION, authenticate),
                )
                .await?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                let moved = challenge_port.is_some() && local_port(&response) != challenge_port;
                let _ = response.bytes().await;
                if moved && attempt < 2 {
                    tracing::debug!(url = %self.endpoint.url, "NTLM AUTHENTICATE went out on another connection; authenticating again");
                    continue;
                }
                return Err(self.refused());
            }
            let session = exported_key.map(|key| Session::client(&key));
            return Ok((response, Authenticated { session }));
        }
        Err(self.refused())
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
            | Flags::NEGOTIATE_SIGN
            | Flags::NEGOTIATE_SEAL
            | Flags::NEGOTIATE_KEY_EXCHANGE
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

    /// The AUTHENTICATE header and, when the listener agreed to key exchange and
    /// sealing, the exported session key.
    pub(super) fn authenticate(
        challenge: &str,
        user: &str,
        password: &str,
    ) -> Result<(String, Option<[u8; 16]>), String> {
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
        let flags = flags() & challenge.flags;
        let sealing = flags.contains(Flags::NEGOTIATE_KEY_EXCHANGE | Flags::NEGOTIATE_SEAL);
        // NTLMv2: the key exchange key is the session base key; the exported session
        // key is random and travels encrypted with it (MS-NLMP 3.1.5.1.2).
        let (exported, encrypted_key) = match <[u8; 16]>::try_from(response.session_key.as_slice())
        {
            Ok(base_key) if sealing => {
                let exported: [u8; 16] = rand::random();
                (
                    Some(exported),
                    encryption::rc4_once(&base_key, &exported).to_vec(),
                )
            }
            _ => (None, Vec::new()),
        };
        let header = header(&Message::Authenticate(AuthenticateMessage {
            lm_response: response.lm_response,
            ntlm_response: response.ntlm_response,
            domain_name: credentials.domain,
            user_name: credentials.username,
            workstation_name: String::new(),
            session_key: encrypted_key,
            flags,
            os_version: Default::default(),
        }))?;
        Ok((header, exported))
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

/// The local port of the connection an answer came on, when the client knows it.
fn local_port(response: &reqwest::Response) -> Option<u16> {
    response
        .extensions()
        .get::<hyper_util::client::legacy::connect::HttpInfo>()
        .map(|info| info.local_addr().port())
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
