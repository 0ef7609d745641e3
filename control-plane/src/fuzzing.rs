//! The calls the control plane's fuzz targets make (`fuzz/fuzz_targets/`), in one place:
//! each target is one of these functions, and `tests/fuzz_regressions.rs` replays the
//! seeds and reproducers (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`)
//! through the same functions, so the two cannot drift. Each takes arbitrary bytes, as
//! untrusted input arrives, and returns what it decoded, for the test to check seeds
//! by; a panic is a bug in the decoder (or a broken property, asserted here).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api;
use crate::domain::{Digest, ImageRef, RouterKind, TargetKind};

/// `image_reference`: an image reference as a release's components, `stella push` and
/// offline imports name it. A reference that parses prints as one that parses back to
/// it, and its pinned form (`registry/repository@digest`) parses too. Returns the
/// parsed reference.
pub fn image_reference(data: &[u8]) -> Option<ImageRef> {
    let text = std::str::from_utf8(data).ok()?;
    let _ = Digest::parse(text);
    let image = ImageRef::parse(text).ok()?;
    let printed = image.to_string();
    match ImageRef::parse(&printed) {
        Ok(again) => assert_eq!(again, image, "`{text}` printed as `{printed}`"),
        Err(error) => panic!("`{text}` printed as `{printed}`, which is refused: {error}"),
    }
    let _ = image.is_loopback_registry();
    if let Some(digest) = &image.digest {
        let pinned = image.pinned(digest);
        match ImageRef::parse(&pinned) {
            Ok(again) => assert_eq!(again.digest.as_ref(), Some(digest), "{pinned}"),
            Err(error) => panic!("`{text}` pinned as `{pinned}`, which is refused: {error}"),
        }
    }
    Some(image)
}

/// What [`registry_response`] made of its input.
#[derive(Debug, Default)]
pub struct RegistryDecoded {
    /// Accepted as a schema 2 manifest or index.
    pub manifest: bool,
    /// The blobs it references, when it is one.
    pub blobs: Option<usize>,
    /// A `Docker-Content-Digest` value the control plane accepts.
    pub digest: bool,
    /// A bearer challenge with its realm, as `WWW-Authenticate`.
    pub challenge: bool,
    /// A token response with its token.
    pub token: bool,
}

/// `registry_response`: what a registry sends back, each decoder given the whole input:
/// a manifest or image index body (the schema 2 check, its media type, the blobs it
/// references, as pulls follow them), a `Docker-Content-Digest` value, a
/// `WWW-Authenticate` challenge and a token endpoint's answer (decoded as
/// `oci_client` decodes them: `http-auth`'s challenge parser, the `token` or
/// `access_token` object, the JWT's expiry claim read unverified).
pub fn registry_response(data: &[u8]) -> RegistryDecoded {
    let mut decoded = RegistryDecoded {
        manifest: crate::registry::check_manifest(data).is_ok(),
        ..RegistryDecoded::default()
    };
    let _ = stella_decision::offline::declared_media_type(data);
    if let Ok(blobs) = stella_decision::offline::referenced_blobs(data) {
        decoded.blobs = Some(blobs.len());
    }
    let _ = serde_json::from_slice::<oci_client::errors::OciEnvelope>(data);
    if let Ok(header) = http::HeaderValue::from_bytes(data) {
        if let Ok(text) = header.to_str() {
            decoded.digest = Digest::parse(text).is_ok();
            decoded.challenge = bearer_realm(text).is_some();
        }
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Token {
        Token { token: String },
        AccessToken { access_token: String },
    }
    if let Ok(token) = serde_json::from_slice::<Token>(data) {
        let (Token::Token { token }
        | Token::AccessToken {
            access_token: token,
        }) = token;
        decoded.token = true;
        let _ = jwt::Token::<jwt::Header, jwt::Claims, jwt::Unverified>::parse_unverified(&token)
            .map(|token| token.claims().registered.expiration);
    }
    decoded
}

/// The realm of the first bearer challenge in a `WWW-Authenticate` value.
fn bearer_realm(header: &str) -> Option<String> {
    http_auth::parser::ChallengeParser::new(header)
        .filter_map(Result::ok)
        .find(|challenge| challenge.scheme.eq_ignore_ascii_case("Bearer"))
        .and_then(|challenge| {
            challenge
                .params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("realm"))
                .map(|(_, value)| value.to_unescaped())
        })
}

/// `target_settings`: a target's or router's kind and settings as `stella target add`
/// and the API take them. The input is text: the first line names the kind, each
/// further line is `KEY=VALUE` (`\n` in a value is written `\\n`). The settings are
/// validated for that kind, or for every target and router kind when the first line
/// names none. Returns whether they were accepted for the named kind.
pub fn target_settings(data: &[u8]) -> Option<bool> {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let kind = lines.next().unwrap_or_default();
    let settings: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.replace("\\n", "\n")))
        .collect();
    if let Ok(kind) = kind.parse::<TargetKind>() {
        return Some(kind.validate_settings(&settings).is_ok());
    }
    if let Ok(kind) = kind.parse::<RouterKind>() {
        return Some(router_settings(kind, &settings));
    }
    for kind in TargetKind::ALL {
        let _ = kind.validate_settings(&settings);
    }
    for kind in RouterKind::ALL {
        router_settings(kind, &settings);
    }
    None
}

/// Router settings: accepted settings give the JSON object the agent's router reads.
fn router_settings(kind: RouterKind, settings: &BTreeMap<String, String>) -> bool {
    let accepted = kind.validate_settings(settings).is_ok();
    let json = kind.settings_json(settings);
    assert_eq!(accepted, json.is_ok(), "{kind:?} {settings:?}");
    if let Ok(json) = json {
        assert!(json.is_object(), "{kind:?}: {json}");
    }
    accepted
}

/// `api_bodies`: a JSON request body as the API's `ApiJson` extractor decodes it, into
/// each request body type; those that decode go through the checks the handler makes
/// before it reads the store (names, kinds and settings, image references), and a
/// TaskRunner run or simulation body is planned and simulated as the handler does.
/// Returns how many body types accepted the input (a JSON object counts as one, the
/// TaskRunner's), and whether it planned as a TaskRunner body.
pub fn api_bodies(data: &[u8]) -> (usize, bool) {
    fn decode<T: DeserializeOwned>(data: &[u8], accepted: &mut usize) -> Option<T> {
        let body = api::envelope::parse_json::<T>(data).ok();
        *accepted += usize::from(body.is_some());
        body
    }
    let mut accepted = 0;
    if let Some(body) = decode::<api::targets::CreateTarget>(data, &mut accepted) {
        let _ = crate::app::validate_name("target", &body.name);
        if let Ok(kind) = body.kind.parse::<TargetKind>() {
            let _ = kind.validate_settings(&body.settings);
        }
    }
    if let Some(body) = decode::<api::targets::UpdateTarget>(data, &mut accepted) {
        for kind in TargetKind::ALL {
            let _ = kind.validate_settings(&body.set);
        }
    }
    if let Some(body) = decode::<api::routers::CreateRouter>(data, &mut accepted) {
        let _ = crate::app::validate_name("router", &body.name);
        if let Ok(kind) = body.kind.parse::<RouterKind>() {
            let _ = kind.validate_settings(&body.settings);
        }
    }
    let _ = decode::<api::routers::ApplyRoute>(data, &mut accepted);
    if let Some(body) = decode::<api::releases::CreateRelease>(data, &mut accepted) {
        let _ = crate::app::validate_name("release", &body.name);
        for (name, image) in &body.components {
            let _ = crate::app::validate_name("component", name);
            let _ = ImageRef::parse(image);
        }
    }
    if let Some(body) = decode::<api::environments::CreateEnvironment>(data, &mut accepted) {
        let _ = crate::app::validate_name("environment", &body.name);
    }
    let _ = decode::<api::environments::UpdateEnvironment>(data, &mut accepted);
    let _ = decode::<api::promotions::Promote>(data, &mut accepted);
    let _ = decode::<api::promotions::Answer>(data, &mut accepted);
    let _ = decode::<api::offline::BundleRequest>(data, &mut accepted);
    let _ = decode::<api::offline::ImportEvidence>(data, &mut accepted);
    let _ = decode::<api::registries::AddRegistry>(data, &mut accepted);
    let _ = decode::<api::clients::CreateClientRequest>(data, &mut accepted);
    let _ = decode::<api::tenants::CreateTenantRequest>(data, &mut accepted);
    let _ = decode::<api::tokens::CreateTokenRequest>(data, &mut accepted);
    let _ = decode::<api::users::CreateUserRequest>(data, &mut accepted);
    let _ = decode::<api::users::UpdateUserRequest>(data, &mut accepted);
    let _ = decode::<api::users::PasswordRequest>(data, &mut accepted);
    let _ = decode::<api::variables::SetVariable>(data, &mut accepted);
    let _ = decode::<api::webhooks::CreateWebhook>(data, &mut accepted);
    let _ = decode::<api::task_runner::ApprovalDecisionRequest>(data, &mut accepted);
    let mut planned = false;
    if let Some(body) = decode::<Map<String, Value>>(data, &mut accepted) {
        if let Ok((manifest, inputs)) = api::task_runner::manifest_and_inputs(&body) {
            if let Ok(plan) = stella_packs::plan_text(&manifest, &inputs) {
                planned = true;
                let _ = stella_packs::simulate(&plan, &stella_packs::SimulationContext::default());
            }
        }
    }
    (accepted, planned)
}
