//! Decision records as shown, replayed and exported as evidence packets.

use stella_decision::canonical::{json_diff, Difference};
use stella_decision::evidence::Packet;
use stella_decision::gates::{self, DecisionInputs, Documents};

use super::App;
use crate::domain::{DecisionRecord, DeploySpec};
use crate::error::{AppError, ErrorKind};
use crate::store::StoreError;

/// What a replay found.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The decision replayed.
    pub decision_id: String,
    /// Whether the recomputed decision is byte-identical.
    pub identical: bool,
    /// The id of the recomputed decision.
    pub recomputed_id: String,
    /// Each differing field: path, stored value, recomputed value.
    pub differences: Vec<Difference>,
}

impl App {
    /// A decision by id (`sha256:…`; the `sha256:` may be left out).
    pub async fn decision(&self, id: &str) -> Result<DecisionRecord, AppError> {
        let id = if id.starts_with("sha256:") {
            id.to_owned()
        } else {
            format!("sha256:{id}")
        };
        self.store
            .get_decision(&id)
            .await
            .map_err(|error| match error {
                StoreError::NotFound { .. } => AppError::new(
                    ErrorKind::NotFound,
                    "unknown_decision",
                    format!("no decision `{id}`"),
                ),
                other => other.into(),
            })
    }

    /// The documents a decision's inputs name, from the store.
    async fn documents_of(&self, inputs: &DecisionInputs) -> Result<Documents, AppError> {
        let ids: Vec<&str> = inputs.document_ids().into_iter().collect();
        self.documents(&ids).await
    }

    fn stored_inputs(record: &DecisionRecord) -> Result<DecisionInputs, AppError> {
        serde_json::from_str(&record.inputs_json).map_err(|e| {
            AppError::new(
                ErrorKind::Internal,
                "corrupt_decision",
                format!("the stored inputs of {} cannot be read: {e}", record.id),
            )
        })
    }

    /// Recomputes a decision from its stored inputs and compares bytes.
    pub async fn replay_decision(&self, id: &str) -> Result<Replay, AppError> {
        let record = self.decision(id).await?;
        let inputs = Self::stored_inputs(&record)?;
        let documents = self.documents_of(&inputs).await?;
        let recomputed = gates::decide(&inputs, &documents)
            .and_then(|d| d.canonical())
            .map_err(|e| {
                AppError::new(
                    ErrorKind::FailedPrecondition,
                    "undecidable",
                    format!("decision {} cannot be recomputed: {e}", record.id),
                )
            })?;
        let identical = recomputed.0 == record.decision_json.as_bytes();
        let differences = if identical {
            Vec::new()
        } else {
            let old: serde_json::Value =
                serde_json::from_str(&record.decision_json).unwrap_or(serde_json::Value::Null);
            let new: serde_json::Value =
                serde_json::from_slice(&recomputed.0).unwrap_or(serde_json::Value::Null);
            json_diff(&old, &new)
        };
        Ok(Replay {
            decision_id: record.id,
            identical,
            recomputed_id: recomputed.1,
            differences,
        })
    }

    /// The evidence packet of a decision: a deterministic `.tar.gz` that verifies with
    /// no server (docs/governance.md).
    /// A decision imported from another server's offline kit is served as the packet
    /// it came in, byte for byte (it verifies against that server's key).
    pub async fn evidence_packet(&self, id: &str) -> Result<Vec<u8>, AppError> {
        let record = match self.decision(id).await {
            Ok(record) => record,
            Err(error) if error.code == "unknown_decision" => {
                let id = if id.starts_with("sha256:") {
                    id.to_owned()
                } else {
                    format!("sha256:{id}")
                };
                return match self.store.get_imported_evidence(&id).await {
                    Ok(imported) => Ok(imported.packet),
                    Err(StoreError::NotFound { .. }) => Err(error),
                    Err(other) => Err(other.into()),
                };
            }
            Err(error) => return Err(error),
        };
        let inputs = Self::stored_inputs(&record)?;
        let documents = self.documents_of(&inputs).await?;
        let keys = self.store.list_signing_keys().await?;
        let key_pem = keys
            .iter()
            .find(|(key_id, _, _)| *key_id == record.key_id)
            .map(|(_, pem, _)| pem.clone())
            .ok_or_else(|| {
                AppError::new(
                    ErrorKind::Internal,
                    "unknown_key",
                    format!(
                        "the key {} that signed {} is not recorded",
                        record.key_id, record.id
                    ),
                )
            })?;
        let mut packet = Packet::default();
        packet.files.insert(
            "decision.json".to_owned(),
            record.decision_json.clone().into_bytes(),
        );
        packet.files.insert(
            "inputs.json".to_owned(),
            record.inputs_json.clone().into_bytes(),
        );
        packet.files.insert(
            "envelope.json".to_owned(),
            record.envelope_json.clone().into_bytes(),
        );
        packet
            .files
            .insert("key.pem".to_owned(), key_pem.into_bytes());
        for (id, bytes) in documents {
            let hex = id.trim_start_matches("sha256:").to_owned();
            packet
                .files
                .insert(format!("documents/{hex}"), bytes.to_vec());
        }
        // The deployment the decision created, its results and the stickers its
        // targets carry.
        let promotion = self.store.get_promotion(&record.promotion_id).await.ok();
        let deployment = match promotion.as_ref().and_then(|p| p.deployment_id.clone()) {
            Some(deployment_id) if record.outcome == "allowed" => {
                let deployment = self.store.get_deployment(&deployment_id).await?;
                let tasks = self.store.tasks_of_deployment(&deployment_id).await?;
                Some((deployment, tasks))
            }
            _ => None,
        };
        if let Some((deployment, tasks)) = deployment {
            let results = serde_json::json!({
                "id": deployment.id,
                "decision_id": deployment.decision_id,
                "environment": deployment.environment,
                "release": deployment.release,
                "version": deployment.version,
                "state": deployment.state.as_str(),
                "message": deployment.message,
                "generation": deployment.generation,
                "created_at": stella_decision::format_time(deployment.created_at_ms),
                "finished_at": deployment.finished_at_ms.map(stella_decision::format_time),
                "tasks": tasks.iter().map(|t| serde_json::json!({
                    "target": t.target,
                    "agent_id": t.agent_id,
                    "state": t.state.as_str(),
                    "message": t.message,
                    "finished_at": t.finished_at_ms.map(stella_decision::format_time),
                })).collect::<Vec<_>>(),
            });
            let stickers: Vec<serde_json::Value> = tasks
                .iter()
                .filter(|t| {
                    t.state == crate::domain::TaskState::Succeeded
                        && t.kind == crate::domain::TaskKind::Deploy
                })
                .filter_map(|t| serde_json::from_str::<DeploySpec>(&t.payload_json).ok())
                // A slot's containers carry no sticker.
                .filter(|spec| spec.slot.is_none())
                .map(|spec| {
                    serde_json::json!({
                        "target": spec.target.name,
                        "deployment_id": spec.deployment_id,
                        "decision_id": spec.decision_id,
                        "environment": spec.environment,
                        "release": spec.release,
                        "version": spec.version,
                        "components": spec.components.iter().map(|c| serde_json::json!({"name": c.name, "image": c.image})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            packet
                .files
                .insert("deployment.json".to_owned(), canonical(&results)?);
            packet
                .files
                .insert("stickers.json".to_owned(), canonical(&stickers)?);
            if let Some(detail) = self.rollout_detail(&deployment.id).await? {
                let rollout = serde_json::json!({
                    "strategy": detail.rollout.strategy,
                    "state": detail.rollout.state.as_str(),
                    "message": detail.rollout.message,
                    "steps": detail.records.iter().map(|r| serde_json::json!({
                        "seq": r.seq,
                        "phase": r.phase.as_str(),
                        "step": r.step,
                        "state": r.state.as_str(),
                        "message": r.message,
                        "detail": r.detail,
                        "started_at": stella_decision::format_time(r.started_at_ms),
                        "finished_at": r.finished_at_ms.map(stella_decision::format_time),
                    })).collect::<Vec<_>>(),
                });
                packet.files.insert(
                    stella_decision::evidence::ROLLOUT.to_owned(),
                    canonical(&rollout)?,
                );
            }
        }
        packet.write_signed(&record.id, &self.signer).map_err(|e| {
            AppError::new(
                ErrorKind::Internal,
                "evidence",
                format!("cannot write the evidence packet of {}: {e}", record.id),
            )
        })
    }
}

fn canonical<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, AppError> {
    stella_decision::canonical::canonical_bytes(value)
        .map_err(|e| AppError::new(ErrorKind::Internal, "evidence", e.0))
}
