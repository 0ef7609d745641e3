//! What a decision leaves behind: signed records that replay and verify offline as evidence,
//! equal ids across servers, and promotion events on webhooks.

use super::*;

/// Python script: verifies a DSSE envelope (argv[1], JSON) with an Ed25519 key (id
/// argv[2], raw public key hex argv[3]). Exit 0 verified, 3 not verified.
const DSSE_VERIFY_PY: &str = r#"
import json, sys
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

with open(sys.argv[1]) as f:
    envelope = Envelope.from_dict(json.load(f))
key = SSlibKey(sys.argv[2], "ed25519", "ed25519", {"public": sys.argv[3]})
try:
    envelope.verify([key], 1)
except VerificationError as error:
    print(f"not verified: {error}", file=sys.stderr)
    sys.exit(3)
print("verified")
"#;

/// Whether `securesystemslib` verifies `envelope` with the key; fails when Python or
/// the library is missing, or the script fails otherwise.
async fn python_verifies(
    dir: &Path,
    envelope: &Value,
    key_id: &str,
    raw_hex: &str,
) -> anyhow::Result<bool> {
    let script = dir.join("dsse_verify.py");
    std::fs::write(&script, DSSE_VERIFY_PY)?;
    let file = dir.join(format!("envelope-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, serde_json::to_vec(envelope)?)?;
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&file)
        .args([key_id, raw_hex])
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "python3 is missing ({e}): install it and securesystemslib (cargo xtask test does)"
            )
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => anyhow::bail!(
            "the securesystemslib check did not run ({}): {stderr} (cargo xtask test installs securesystemslib)",
            output.status
        ),
    }
}

/// The raw Ed25519 key in an SPKI PEM: the DER is a fixed 12-byte prefix and the key.
fn raw_ed25519_hex(pem: &str) -> anyhow::Result<String> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim())?;
    let prefix = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    anyhow::ensure!(
        der.len() == 44 && der[..12] == prefix,
        "not an Ed25519 SPKI key: {pem}"
    );
    Ok(der[12..].iter().map(|b| format!("{b:02x}")).collect())
}

/// The files of a `.tar.gz`, in archive order; unpacked here, not by Stella's reader.
fn untar(bytes: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        files.push((path, content));
    }
    Ok(files)
}

fn retar(files: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gzip);
    for (path, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, content.as_slice())?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// A decision's DSSE envelope verifies with an independent implementation and the
/// server's published key, and not once tampered; replay is byte-identical; evidence
/// exports are byte-identical and verify with no server; every tampered file is named;
/// a packet re-signed with another key is refused unless that key is the one trusted.
#[tokio::test]
async fn decisions_are_signed_replayable_and_verify_offline_as_evidence() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let mut estate = Estate::start(&published, |_| {}).await?;
    let alice = estate.user("alice", &["operator"]).await?;
    // A policy makes the packet carry an input document.
    let policy = "package stella.prod\n\ndeny contains \"mallory may not\" if {\n    input.requester == \"mallory\"\n}\n";
    estate
        .environment(json!({"name": "prod", "policy": policy, "allow_unscanned": true}))
        .await?;
    let target = estate.target("prod").await?;
    let promotion = estate
        .promoted(&alice, "web@1", "prod", "deploying")
        .await?;
    estate.deployed(&promotion, &target).await?;
    let decision_id = text(&promotion, "/decision_id").to_owned();
    let decision = estate.decision(&promotion).await?;

    // The signature, checked by securesystemslib with the key the server publishes.
    let keys = estate.server.get("/api/v1/keys").await?;
    let key = &keys[0];
    assert_eq!(key["algorithm"], "ed25519");
    let pem = text(key, "/public_key_pem");
    let raw_hex = raw_ed25519_hex(pem)?;
    assert_eq!(PublicKey::from_pem(pem)?.raw_hex(), raw_hex);
    let raw = (0..raw_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&raw_hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()?;
    let key_id = text(key, "/key_id");
    assert_eq!(
        key_id,
        hex_sha256(&raw),
        "a key id is the SHA-256 of the raw key"
    );
    assert_eq!(decision["key_id"], key_id);
    let envelope = &decision["envelope"];
    let work = estate.server.dir.path().join("python");
    std::fs::create_dir_all(&work)?;
    assert!(
        python_verifies(&work, envelope, key_id, &raw_hex).await?,
        "securesystemslib does not verify {envelope}"
    );

    // The statement: subjects are the release's images by digest, the predicate is
    // the decision whose id is the decision id.
    let engine = base64::engine::general_purpose::STANDARD;
    let payload = engine.decode(text(envelope, "/payload"))?;
    let statement: Value = serde_json::from_slice(&payload)?;
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["predicateType"],
        "https://stellaops.io/attestations/decision/v1"
    );
    let (repository, digest) = published
        .v1
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("no digest in {}", published.v1))?;
    assert_eq!(
        statement["subject"],
        json!([{"name": repository, "digest": {"sha256": &digest["sha256:".len()..]}}])
    );
    assert_eq!(statement["predicate"], decision["decision"]);
    let canonical = stella_decision::canonical::canonical_value(&statement["predicate"])?;
    assert_eq!(stella_decision::sha256_id(&canonical), decision_id);

    // One changed byte of the payload, and the signature no longer holds.
    let mut tampered_payload = payload.clone();
    let at = tampered_payload.len() / 2;
    tampered_payload[at] ^= 0x01;
    let mut tampered = envelope.clone();
    tampered["payload"] = json!(engine.encode(&tampered_payload));
    assert!(
        !python_verifies(&work, &tampered, key_id, &raw_hex).await?,
        "securesystemslib verifies a tampered envelope"
    );
    // Nor with another key.
    let other = SigningKey::from_seed([7; 32]);
    assert!(
        !python_verifies(&work, envelope, key_id, &other.public_key().raw_hex()).await?,
        "securesystemslib verifies with the wrong key"
    );

    // Replay in the CLI: byte-identical.
    let admin = estate.admin_token();
    let (status, out, err) = estate
        .cli(&admin, &["decision", "replay", &decision_id])
        .await?;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains(&format!(
            "{decision_id}: byte-identical when recomputed from its inputs"
        )),
        "{out}"
    );
    let (status, out, err) = estate
        .cli(&admin, &["decision", "replay", &decision_id, "-o", "json"])
        .await?;
    assert_eq!(status, 0, "{err}");
    let replay: Value = serde_json::from_str(&out)?;
    assert_eq!(
        replay,
        json!({"decision_id": decision_id, "identical": true,
               "recomputed_id": decision_id, "differences": []})
    );

    // Two exports, byte for byte the same.
    let dir = estate.server.dir.path().join("evidence");
    std::fs::create_dir_all(&dir)?;
    let (first, second) = (dir.join("first.tar.gz"), dir.join("second.tar.gz"));
    for out in [&first, &second] {
        let (status, _, err) = estate
            .cli(
                &admin,
                &[
                    "evidence",
                    "export",
                    &decision_id,
                    "--out",
                    &out.display().to_string(),
                ],
            )
            .await?;
        assert_eq!(status, 0, "{err}");
    }
    let packet = std::fs::read(&first)?;
    assert_eq!(packet, std::fs::read(&second)?, "exports differ");
    let files = untar(&packet)?;
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let policy_file = format!("documents/{}", &hex_sha256(policy.as_bytes()));
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.sig.json",
            "decision.json",
            "deployment.json",
            policy_file.as_str(),
            "envelope.json",
            "inputs.json",
            "key.pem",
            "stickers.json",
        ]
    );

    // No server from here on.
    if let Some(agent) = estate.agent.take() {
        agent.stop().await?;
    }
    estate.server.stop().await;
    let verify = |file: PathBuf, key: Option<PathBuf>| {
        let estate = &estate;
        async move {
            let mut args = vec![
                "evidence".to_owned(),
                "verify".to_owned(),
                file.display().to_string(),
            ];
            if let Some(key) = key {
                args.extend(["--key".to_owned(), key.display().to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            estate.cli("", &args).await
        }
    };
    let (status, out, err) = verify(first.clone(), None).await?;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains(&format!("verified: decision {decision_id} (allowed)")),
        "{out}"
    );

    // Each file with one byte flipped (the manifest kept): refused, naming the file.
    for index in 0..files.len() {
        let mut flipped = files.clone();
        let (name, content) = &mut flipped[index];
        content[0] ^= 0x01;
        let name = name.clone();
        let file = dir.join(format!("tampered-{index}.tar.gz"));
        std::fs::write(&file, retar(&flipped)?)?;
        let (status, _, err) = verify(file, None).await?;
        assert_eq!(status, 1, "a packet with {name} tampered verifies: {err}");
        assert!(
            err.contains(&format!("does not verify: {name}: ")),
            "{name}: {err}"
        );
    }

    // The same decision re-signed with another key: a fine signature, but not trusted.
    let mut original = Packet::read(&packet)?;
    let decision_bytes = original
        .files
        .remove("decision.json")
        .ok_or_else(|| anyhow::anyhow!("no decision.json"))?;
    let inputs = original
        .files
        .remove("inputs.json")
        .ok_or_else(|| anyhow::anyhow!("no inputs.json"))?;
    let signed = sign_decision(
        &other,
        vec![Subject::image(repository, digest)?],
        &decision_bytes,
    )?;
    let mut resigned = Packet::for_decision(
        &signed,
        inputs,
        original.documents().into_values().map(|d| d.to_vec()),
        &other.public_key(),
    )?;
    for extra in ["deployment.json", "stickers.json"] {
        if let Some(content) = original.files.remove(extra) {
            resigned.files.insert(extra.to_owned(), content);
        }
    }
    let resigned_file = dir.join("resigned.tar.gz");
    std::fs::write(&resigned_file, resigned.write(&decision_id)?)?;
    let server_key = dir.join("server.pem");
    std::fs::write(&server_key, pem)?;
    let other_key = dir.join("other.pem");
    std::fs::write(&other_key, other.public_key().to_pem())?;
    for key in [None, Some(server_key)] {
        let (status, _, err) = verify(resigned_file.clone(), key.clone()).await?;
        assert_eq!(status, 1, "re-signed packet verifies with {key:?}: {err}");
        assert!(
            err.contains("does not verify: envelope.json: "),
            "{key:?}: {err}"
        );
    }
    let (status, out, err) = verify(resigned_file, Some(other_key)).await?;
    assert_eq!(status, 0, "{err}");
    assert!(out.contains(other.key_id()), "{out}");
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two fresh servers given the same users, environments, targets, agents, releases
/// and evaluation time decide with the same id, blocked or allowed.
#[tokio::test]
async fn decision_ids_are_equal_across_servers_given_the_same_inputs() -> anyhow::Result<()> {
    const CLOCK_MS: i64 = 1_796_212_805_000;
    let published = Published::start().await?;
    let target = unique("same");
    let mut estates = Vec::new();
    for _ in 0..2 {
        let estate = Estate::start(&published, |config| {
            config.decision_clock_ms = Some(CLOCK_MS);
        })
        .await?;
        let alice = estate.user("alice", &["operator"]).await?;
        estate
            .environment(json!({"name": "stage", "allow_unscanned": true}))
            .await?;
        estate
            .environment(json!({"name": "prod", "after": "stage", "approvals": 1,
                                "freeze": ["0 18 * * FRI/64h@Europe/Berlin"]}))
            .await?;
        estate.target_named(&target, "stage").await?;
        estate
            .target_named(&format!("{target}-prod"), "prod")
            .await?;
        estates.push((estate, alice));
    }

    // Blocked (order, security), on both.
    let mut blocked = Vec::new();
    for (estate, alice) in &estates {
        let promotion = estate.promoted(alice, "web@1", "prod", "blocked").await?;
        let decision = estate.decision(&promotion).await?;
        assert_eq!(
            decision["decision"]["evaluated_at"],
            "2026-12-02T12:00:05.000Z"
        );
        blocked.push((promotion, decision));
    }
    assert_ne!(blocked[0].0["id"], blocked[1].0["id"], "two promotions");
    assert_eq!(blocked[0].0["decision_id"], blocked[1].0["decision_id"]);
    assert_eq!(blocked[0].1["decision"], blocked[1].1["decision"]);
    assert_eq!(blocked[0].1["inputs"], blocked[1].1["inputs"]);

    // Allowed, and deployed for real, one server after the other.
    let mut allowed = Vec::new();
    for (estate, alice) in &mut estates {
        let promotion = estate
            .promoted(alice, "web@1", "stage", "deploying")
            .await?;
        estate.deployed(&promotion, &target).await?;
        // The next server's agent replaces the container: this one must not watch.
        if let Some(agent) = estate.agent.take() {
            agent.stop().await?;
        }
        allowed.push(promotion);
    }
    assert_eq!(allowed[0]["decision_id"], allowed[1]["decision_id"]);
    assert_ne!(allowed[0]["decision_id"], blocked[0].0["decision_id"]);
    Ok(())
}

/// A delivery as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    event: String,
    body: Value,
    signature_valid: bool,
}

#[derive(Clone, Default)]
struct ReceiverState {
    secret: Arc<Mutex<String>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// Records each delivery and whether its `X-Stella-Signature` is the HMAC-SHA256 of
/// the body under the secret; answers 204 when it is, 401 otherwise.
async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let secret = state
        .secret
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let expected = format!(
        "sha256={}",
        ring::hmac::sign(&key, &body)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let signature_valid = header("x-stella-signature") == expected;
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            event: header("x-stella-event"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            signature_valid,
        });
    if signature_valid {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// Promotion events reach a subscribed webhook, signed: awaiting approval, approved,
/// deployed, blocked, rejected.
#[tokio::test]
async fn promotion_events_reach_webhooks_signed() -> anyhow::Result<()> {
    let published = Published::start().await?;
    let estate = Estate::start(&published, |config| {
        config.webhook_retry_initial_ms = 200;
        config.webhook_retry_max_ms = 800;
    })
    .await?;
    let alice = estate.user("alice", &["operator"]).await?;
    let bob = estate.user("bob", &["approver"]).await?;

    let state = ReceiverState::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(state.clone());
    let receiver = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let events = [
        "promotion.awaiting_approval",
        "promotion.approved",
        "promotion.rejected",
        "promotion.blocked",
        "promotion.deployed",
        "promotion.failed",
    ];
    let hook = estate
        .server
        .post("/api/v1/webhooks", json!({"url": url, "events": events}))
        .await?;
    *state.secret.lock().unwrap_or_else(PoisonError::into_inner) =
        text(&hook, "/secret").to_owned();

    estate
        .environment(json!({"name": "prod", "approvals": 1, "allow_unscanned": true}))
        .await?;
    estate.environment(json!({"name": "strict"})).await?;
    let target = estate.target("prod").await?;
    estate.target("strict").await?;

    let waiting = estate
        .promoted(&alice, "web@1", "prod", "awaiting_approval")
        .await?;
    let id = text(&waiting, "/id").to_owned();
    let (status, allowed) = estate.answer(&bob, &id, "approve").await?;
    assert_eq!(status, 200, "{allowed}");
    estate.deployed(&allowed, &target).await?;
    let blocked = estate
        .promoted(&alice, "web@1", "strict", "blocked")
        .await?;
    let rejected = estate
        .promoted(&alice, "web@1", "prod", "awaiting_approval")
        .await?;
    let (status, _) = estate
        .answer(&bob, text(&rejected, "/id"), "reject")
        .await?;
    assert_eq!(status, 200);

    let expected = [
        ("promotion.awaiting_approval", &waiting, "prod"),
        ("promotion.approved", &waiting, "prod"),
        ("promotion.deployed", &waiting, "prod"),
        ("promotion.blocked", &blocked, "strict"),
        ("promotion.awaiting_approval", &rejected, "prod"),
        ("promotion.rejected", &rejected, "prod"),
    ];
    let received = wait_until(
        "the receiver gets every promotion event",
        Duration::from_secs(20),
        || async {
            let received = state
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            (received.len() >= expected.len()).then_some(received)
        },
    )
    .await?;
    receiver.abort();
    assert_eq!(received.len(), expected.len(), "{received:#?}");
    let mut got: Vec<(String, String)> = received
        .iter()
        .map(|r| (r.event.clone(), text(&r.body, "/subject").to_owned()))
        .collect();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(event, promotion, _)| ((*event).to_owned(), text(promotion, "/id").to_owned()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for delivery in &received {
        assert!(delivery.signature_valid, "{delivery:?}");
        assert_eq!(delivery.body["event"], delivery.event.as_str());
        let (_, promotion, environment) = expected
            .iter()
            .find(|(event, promotion, _)| {
                *event == delivery.event && delivery.body["subject"] == promotion["id"]
            })
            .ok_or_else(|| anyhow::anyhow!("unexpected {delivery:?}"))?;
        assert_eq!(delivery.body["environment"], *environment, "{delivery:?}");
        assert_eq!(
            delivery.body["release"],
            json!({"name": "web", "version": "1"})
        );
        assert!(
            text(&delivery.body, "/message").contains(text(promotion, "/id")),
            "{delivery:?}"
        );
    }
    let blocked_event = received
        .iter()
        .find(|r| r.event == "promotion.blocked")
        .map(|r| text(&r.body, "/message").to_owned())
        .unwrap_or_default();
    assert!(
        blocked_event.contains("security: no verdict"),
        "{blocked_event}"
    );
    Ok(())
}
