//! `stella decision show|replay` and `stella evidence export|verify`.
//!
//! Replay and verification run here, with the same decision code the server runs
//! (`stella-decision`): `evidence verify` needs no server, and neither can disagree with
//! the server about what a decision should have been.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde_json::{json, Value};
use stella_decision::canonical::json_diff;
use stella_decision::dsse::PublicKey;
use stella_decision::evidence::{verify_packet, Packet};
use stella_decision::gates;

use super::{path, Context};
use crate::output::{self, cell};
use crate::trust;

/// `stella decision …`
#[derive(Debug, Subcommand)]
pub enum DecisionCommand {
    /// Show a decision record: every gate, the outcome, the signature's key.
    Show {
        /// Decision id (`sha256:…`).
        id: String,
    },
    /// Recompute a decision from its stored inputs, here, and compare it byte for byte
    /// with the stored one; exit 1 naming each differing field if they differ.
    Replay {
        /// Decision id (`sha256:…`).
        id: String,
    },
}

/// `stella evidence …`
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Write a decision's evidence packet (a deterministic .tar.gz).
    Export {
        /// Decision id (`sha256:…`).
        id: String,
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify an evidence packet with no server: every file's hash, the signature, and
    /// the decision recomputed from its inputs.
    Verify {
        /// The packet.
        file: PathBuf,
        /// The public key (PEM) that must have signed it [default: the server keys
        /// recorded when this CLI first talked to a server about decisions].
        #[arg(long, value_name = "PUBKEY")]
        key: Option<PathBuf>,
    },
}

/// `stella decision …`.
pub async fn decision(context: &Context, command: DecisionCommand) -> anyhow::Result<()> {
    match command {
        DecisionCommand::Show { id } => {
            let record = context
                .client
                .get(&format!("/decisions/{}", path(&id)))
                .await?;
            trust::record_server_keys(context).await?;
            context.print(&record, show);
            Ok(())
        }
        DecisionCommand::Replay { id } => {
            let bytes = context
                .client
                .get_bytes(&format!("/decisions/{}/evidence", path(&id)))
                .await?;
            trust::record_server_keys(context).await?;
            let packet = Packet::read(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
            let stored = packet
                .files
                .get("decision.json")
                .context("the server's packet has no decision.json")?;
            let inputs = packet
                .files
                .get("inputs.json")
                .context("the server's packet has no inputs.json")?;
            let documents = documents(&packet);
            let recomputed = gates::recompute(inputs, &documents)
                .map_err(|e| anyhow::anyhow!("the decision cannot be recomputed: {e}"))?;
            let identical = &recomputed == stored;
            let old: Value = serde_json::from_slice(stored).unwrap_or(Value::Null);
            let new: Value = serde_json::from_slice(&recomputed).unwrap_or(Value::Null);
            let differences: Vec<Value> = json_diff(&old, &new)
                .into_iter()
                .map(|d| json!({"path": d.path, "old": d.old, "new": d.new}))
                .collect();
            let report = json!({
                "decision_id": stella_decision::sha256_id(stored),
                "identical": identical,
                "recomputed_id": stella_decision::sha256_id(&recomputed),
                "differences": differences,
            });
            context.print(&report, |r| {
                if identical {
                    println!(
                        "{}: byte-identical when recomputed from its inputs",
                        cell(r, "/decision_id")
                    );
                } else {
                    println!(
                        "{}: recomputed as {}",
                        cell(r, "/decision_id"),
                        cell(r, "/recomputed_id")
                    );
                    for d in r["differences"].as_array().into_iter().flatten() {
                        println!(
                            "  {}: {} → {}",
                            cell(d, "/path"),
                            cell(d, "/old"),
                            cell(d, "/new")
                        );
                    }
                }
            });
            if identical {
                Ok(())
            } else {
                bail!(
                    "decision {id} differs when recomputed from its inputs ({} field{})",
                    differences.len(),
                    if differences.len() == 1 { "" } else { "s" }
                )
            }
        }
    }
}

/// `stella evidence …`.
pub async fn evidence(context: &Context, command: EvidenceCommand) -> anyhow::Result<()> {
    match command {
        EvidenceCommand::Export { id, out } => {
            let bytes = context
                .client
                .get_bytes(&format!("/decisions/{}/evidence", path(&id)))
                .await?;
            trust::record_server_keys(context).await?;
            write_file(&out, &bytes)?;
            let value = json!({
                "decision_id": id,
                "file": out.display().to_string(),
                "bytes": bytes.len(),
                "sha256": stella_decision::sha256_id(&bytes),
            });
            context.print(&value, |v| {
                println!(
                    "wrote {} ({} bytes, {})",
                    cell(v, "/file"),
                    cell(v, "/bytes"),
                    cell(v, "/sha256")
                );
            });
            Ok(())
        }
        EvidenceCommand::Verify { file, key } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let trusted = match &key {
                Some(key) => {
                    let pem = std::fs::read_to_string(key)
                        .with_context(|| format!("reading the key {}", key.display()))?;
                    vec![PublicKey::from_pem(&pem)
                        .map_err(|e| anyhow::anyhow!("the key {}: {e}", key.display()))?]
                }
                None => {
                    let keys = trust::recorded_keys()?;
                    if keys.is_empty() {
                        bail!(
                            "no trusted key: pass --key PUBKEY, or export evidence from the server once so its key is recorded"
                        );
                    }
                    keys
                }
            };
            let verified = verify_packet(&bytes, &trusted, &|inputs, documents| {
                gates::recompute(inputs, documents)
            })
            .map_err(|fault| anyhow::anyhow!("{} does not verify: {fault}", file.display()))?;
            let value = json!({
                "file": file.display().to_string(),
                "verified": true,
                "decision_id": verified.decision_id,
                "key_id": verified.key_id,
                "files": verified.files,
                "outcome": verified.decision["outcome"],
                "unattested": verified.unattested,
            });
            if !verified.unattested.is_empty() {
                context.note(&format!(
                    "note: the manifest is not signed, so these files are only as good as the manifest: {}",
                    verified.unattested.join(", ")
                ));
            }
            context.print(&value, |v| {
                println!(
                    "{}: verified: decision {} ({}), signed by key {}, {} files",
                    cell(v, "/file"),
                    cell(v, "/decision_id"),
                    cell(v, "/outcome"),
                    cell(v, "/key_id"),
                    cell(v, "/files")
                );
            });
            Ok(())
        }
    }
}

/// The packet's documents by `sha256:` id.
fn documents(packet: &Packet) -> gates::Documents {
    packet
        .files
        .iter()
        .filter_map(|(name, bytes)| {
            name.strip_prefix("documents/")
                .map(|hex| (format!("sha256:{hex}"), bytes.as_slice().into()))
        })
        .collect()
}

fn write_file(out: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}

fn show(record: &Value) {
    output::details(
        record,
        &[
            ("id", "/id"),
            ("promotion", "/promotion_id"),
            ("outcome", "/outcome"),
            ("release", "/decision/release"),
            ("version", "/decision/version"),
            ("environment", "/decision/environment"),
            ("requested by", "/decision/requested_by"),
            ("evaluated", "/decision/evaluated_at"),
            ("plan", "/decision/plan_hash"),
            ("inputs", "/decision/inputs"),
            ("signed by key", "/key_id"),
            ("break-glass by", "/decision/break_glass/by"),
            ("break-glass reason", "/decision/break_glass/reason"),
        ],
    );
    println!();
    super::rows(
        &record["decision"]["gates"],
        &["gate", "status", "reason"],
        &["/gate", "/status", "/reason"],
    );
}
