//! The steps a rollout driver takes: tasks for deploy, restore and retire; the router's
//! backends for route; the probes or scrapes and the judgement for analyse.

use std::collections::BTreeMap;
use std::time::Duration;

use stella_decision::rollout::{backend_weight, HeaderOrCookie, Slot, Step};
use stella_routers::{AbMatch, Backend, RouteName};

use super::driver::{Driver, StepOutcome, DRAIN, ROUTE_PATIENCE_MS};
use super::{analysis, endpoint_of};
use crate::app::now_ms;
use crate::domain::{slot_name, DeploySpec, RolloutStepRecord, Task, TaskKind, TaskState};
use crate::error::{AppError, ErrorKind};
use crate::store::{StepTask, StoreError};

impl Driver {
    /// A step carried out by one task per target: created once, then waited for.
    pub(super) async fn task_step(
        &mut self,
        record: &RolloutStepRecord,
        kind: TaskKind,
        targets: &[String],
        slot: Slot,
        release: Release,
    ) -> Result<StepOutcome, AppError> {
        let id = self.rollout.deployment_id.clone();
        let tasks = self.app.store.rollout_step_tasks(&id, record.seq).await?;
        if tasks.is_empty() {
            if self.follows_route(record) {
                let drained = record
                    .started_at_ms
                    .saturating_add(i64::try_from(DRAIN.as_millis()).unwrap_or(0));
                if now_ms() < drained {
                    return Ok(StepOutcome::Wait);
                }
            }
            return self
                .create_tasks(record, kind, targets, slot, release)
                .await;
        }
        if tasks.iter().any(|t| !t.task.state.is_terminal()) {
            return Ok(StepOutcome::Wait);
        }
        let mut endpoints = BTreeMap::new();
        let mut failures = Vec::new();
        for done in &tasks {
            if done.task.state == TaskState::Succeeded {
                if let Some(output) = &done.output_json {
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(output) {
                        if let Some(found) = value.get("endpoints") {
                            endpoints.insert(done.task.target.clone(), found.clone());
                        }
                    }
                }
            } else {
                failures.push(format!(
                    "{}: {}",
                    done.task.target,
                    done.task.message.as_deref().unwrap_or("failed")
                ));
            }
        }
        let detail = Some(serde_json::json!({
            "tasks": tasks.iter().map(|t| serde_json::json!({
                "id": t.task.id, "target": t.task.target, "state": t.task.state.as_str(),
            })).collect::<Vec<_>>(),
            "endpoints": endpoints,
        }));
        if failures.is_empty() {
            Ok(StepOutcome::Done {
                message: format!(
                    "{} task{} succeeded",
                    tasks.len(),
                    if tasks.len() == 1 { "" } else { "s" }
                ),
                detail,
            })
        } else {
            Ok(StepOutcome::Failed {
                message: failures.join("; "),
                detail,
            })
        }
    }

    /// An `analyse` step: a probe round when one is due, the judgement at the end.
    pub(super) async fn analyse_step(
        &mut self,
        record: &RolloutStepRecord,
        checks: &str,
        duration: Duration,
    ) -> Result<StepOutcome, AppError> {
        let parsed = match analysis::parse_checks(checks) {
            Ok(parsed) => parsed,
            Err(message) => {
                return Ok(StepOutcome::Failed {
                    message,
                    detail: None,
                })
            }
        };
        let now = now_ms();
        let sampling = self
            .analyses
            .entry(record.seq)
            .or_insert_with(|| analysis::Sampling::new(now));
        let deadline = sampling
            .started_ms
            .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        if now < deadline {
            if now < sampling.next_ms {
                return Ok(StepOutcome::Wait);
            }
            sampling.next_ms = now + analysis::PROBE_INTERVAL_MS;
            let (canary, baseline) = match self.analysis_sides().await {
                Ok(sides) => sides,
                Err(message) => {
                    return Ok(StepOutcome::Failed {
                        message,
                        detail: None,
                    })
                }
            };
            let round = analysis::take_round(&self.probes, &parsed, &baseline, &canary).await;
            if let Some(sampling) = self.analyses.get_mut(&record.seq) {
                sampling.record(round);
            }
            return Ok(StepOutcome::Wait);
        }
        let judged = sampling.judged(&parsed);
        self.analyses.remove(&record.seq);
        let (step_record, detail) = match judged {
            Ok(judged) => judged,
            Err(message) => {
                return Ok(StepOutcome::Failed {
                    message: format!("analysis `{checks}`: {message}"),
                    detail: None,
                })
            }
        };
        let rounds = detail["rounds"].as_u64().unwrap_or(0);
        Ok(match step_record.verdict {
            stella_decision::analysis::Verdict::Continue => StepOutcome::Done {
                message: format!(
                    "analysis `{checks}` passed over {rounds} rounds: the new version is no worse than the old"
                ),
                detail: Some(detail),
            },
            stella_decision::analysis::Verdict::Rollback { reason } => StepOutcome::Failed {
                message: format!("analysis `{checks}` over {rounds} rounds: {reason}"),
                detail: Some(detail),
            },
            stella_decision::analysis::Verdict::Pause { reason } => StepOutcome::Failed {
                message: format!(
                    "analysis `{checks}` could not decide in {}: {reason}",
                    humantime::format_duration(duration)
                ),
                detail: Some(detail),
            },
        })
    }

    /// The addresses an analysis compares: the new version (the slot the last forward
    /// deploy filled, or a rolling batch's stable containers) and the old one (the
    /// stable containers of the other targets; the batch itself when no other is left).
    async fn analysis_sides(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let index = self.rollout.next_step.min(self.rollout.steps.len());
        let last = self.rollout.steps[..index]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::Deploy { targets, slot } => Some((targets.clone(), *slot)),
                _ => None,
            });
        let Some((targets, slot)) = last else {
            return Err("an analysis needs a deploy before it".to_owned());
        };
        let mut canary = Vec::new();
        for target in &targets {
            if let Some(address) = self
                .endpoint(target, slot)
                .await
                .map_err(|e| e.to_string())?
            {
                canary.push(address);
            }
        }
        if canary.is_empty() {
            return Err(format!(
                "no address to check for slot {} of {}",
                slot_name(slot),
                targets.join(", ")
            ));
        }
        let mut baseline = Vec::new();
        for target in self.rollout.payloads.keys() {
            if slot == Slot::Stable && targets.contains(target) {
                continue;
            }
            if let Some(address) = self
                .endpoint(target, Slot::Stable)
                .await
                .map_err(|e| e.to_string())?
            {
                baseline.push(address);
            }
        }
        if baseline.is_empty() {
            baseline = canary.clone();
        }
        Ok((canary, baseline))
    }

    /// Whether the step before `record` in this phase changed the route.
    fn follows_route(&self, record: &RolloutStepRecord) -> bool {
        let index = self.rollout.next_step;
        index > 0
            && matches!(
                self.rollout.phase_steps().get(index - 1),
                Some(Step::Route { .. })
            )
            && record.phase == self.rollout.phase
    }

    async fn create_tasks(
        &mut self,
        record: &RolloutStepRecord,
        kind: TaskKind,
        targets: &[String],
        slot: Slot,
        release: Release,
    ) -> Result<StepOutcome, AppError> {
        let deployment = self
            .app
            .store
            .get_deployment(&self.rollout.deployment_id)
            .await?;
        let env = self
            .app
            .store
            .get_environment(&self.rollout.environment)
            .await?;
        let timeout_seconds = env
            .deployment_timeout_seconds
            .unwrap_or(self.app.config.task_deadline_seconds);
        let now = now_ms();
        let deadline = now.saturating_add(
            i64::try_from(timeout_seconds)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        );
        let slot_value = (slot != Slot::Stable).then(|| slot_name(slot).to_owned());
        let mut built = Vec::new();
        let mut skipped = Vec::new();
        for name in targets {
            let payload = match (kind, release) {
                (TaskKind::Deploy, Release::New) => self.rollout.payloads.get(name).cloned(),
                (TaskKind::Deploy, Release::Previous) => {
                    self.rollout.previous.get(name).cloned().flatten()
                }
                (TaskKind::Retire, _) => self.rollout.payloads.get(name).cloned(),
            };
            let Some(payload) = payload else {
                skipped.push(name.clone());
                continue;
            };
            let mut spec: DeploySpec = serde_json::from_str(&payload)
                .map_err(|e| AppError::internal("decoding a rollout payload", &e))?;
            let payload_json = match kind {
                TaskKind::Deploy => {
                    spec.slot = slot_value.clone();
                    // A restored payload is carried out by this deployment.
                    spec.deployment_id = deployment.id.clone();
                    spec.decision_id = deployment.decision_id.clone();
                    serde_json::to_string(&spec)
                }
                TaskKind::Retire => serde_json::to_string(&serde_json::json!({
                    "deployment_id": deployment.id,
                    "target": spec.target,
                    "slot": slot_name(slot),
                })),
            }
            .map_err(|e| AppError::internal("encoding a rollout task", &e))?;
            let target = self.app.store.get_target(name).await?;
            built.push(StepTask {
                task: Task {
                    id: uuid::Uuid::now_v7().to_string(),
                    deployment_id: deployment.id.clone(),
                    target: name.clone(),
                    agent_id: target.agent_id,
                    kind,
                    epoch: 0,
                    generation: deployment.generation,
                    state: TaskState::Pending,
                    payload_json,
                    message: None,
                    deadline_at_ms: deadline,
                    created_at_ms: now,
                    finished_at_ms: None,
                },
                slot: slot_value.clone(),
            });
        }
        if built.is_empty() {
            return Ok(StepOutcome::Done {
                message: format!(
                    "nothing to do: no earlier release ran on {}",
                    skipped.join(", ")
                ),
                detail: None,
            });
        }
        if self
            .app
            .store
            .add_rollout_tasks(&deployment, record.seq, &built)
            .await?
        {
            let mut agents: Vec<&str> = built.iter().map(|t| t.task.agent_id.as_str()).collect();
            agents.sort_unstable();
            agents.dedup();
            for agent in agents {
                self.app.dispatch_new_to(agent).await;
            }
            if !skipped.is_empty() {
                self.log(&format!(
                    "  nothing to restore on {}: no earlier release ran there",
                    skipped.join(", ")
                ))
                .await;
            }
        }
        Ok(StepOutcome::Wait)
    }

    pub(super) async fn route_step(
        &mut self,
        record: &RolloutStepRecord,
        weights: &[(Slot, u8)],
        matched: &Option<(HeaderOrCookie, Slot)>,
        drained: &[String],
    ) -> Result<StepOutcome, AppError> {
        let failed = |message: String| {
            Ok(StepOutcome::Failed {
                message,
                detail: None,
            })
        };
        let Some(router_name) = self.rollout.strategy.router().map(str::to_owned) else {
            return failed(format!(
                "the {} strategy names no router",
                self.rollout.strategy.name()
            ));
        };
        let router = match self.app.router(&router_name).await {
            Ok(router) => router,
            Err(error) => return failed(error.message),
        };
        let route = match RouteName::new(&self.rollout.environment) {
            Ok(route) => route,
            Err(error) => return failed(error.to_string()),
        };
        let backends = match self.backends(weights, matched, drained).await {
            Ok(backends) => backends,
            Err(message) => return failed(message),
        };
        match self.app.apply_route(&router, &route, &backends).await {
            Ok(applied) => {
                self.rollout.weights = weights.to_vec();
                let mut described: Vec<String> = weights
                    .iter()
                    .map(|(slot, percent)| format!("{} {percent}%", slot_name(*slot)))
                    .collect();
                if !drained.is_empty() {
                    described.push(format!("{} drained", drained.join(", ")));
                }
                Ok(StepOutcome::Done {
                    message: format!(
                        "router `{}` route `{route}`: {} ({} backend{}, {} in {} ms)",
                        router.name,
                        described.join(", "),
                        applied.backends.len(),
                        if applied.backends.len() == 1 { "" } else { "s" },
                        applied.method.as_deref().unwrap_or("applied"),
                        applied.duration_ms
                    ),
                    detail: Some(serde_json::json!({
                        "router": router.name,
                        "route": route.as_str(),
                        "backends": applied.backends,
                        "method": applied.method,
                        "duration_ms": applied.duration_ms,
                        "drained": drained,
                    })),
                })
            }
            Err(error)
                if matches!(error.kind, ErrorKind::Unavailable)
                    || error.code == "agent_unavailable" =>
            {
                if now_ms() - record.started_at_ms < ROUTE_PATIENCE_MS {
                    tracing::info!(deployment_id = %self.rollout.deployment_id, error = %error, "route not applied yet; trying again");
                    Ok(StepOutcome::Wait)
                } else {
                    failed(format!(
                        "{} (tried for {} s)",
                        error.message,
                        ROUTE_PATIENCE_MS / 1000
                    ))
                }
            }
            Err(error) => failed(error.message),
        }
    }

    /// The router's backends for `weights`: every target of each slot, at the address
    /// its agent reported, with the slot's share of the weight split evenly between its
    /// targets; the stable backends of `drained` targets at weight 0. A backend without
    /// weight whose address is unknown (it never ran, or it failed to start) is left out;
    /// one with weight is an error.
    async fn backends(
        &self,
        weights: &[(Slot, u8)],
        matched: &Option<(HeaderOrCookie, Slot)>,
        drained: &[String],
    ) -> Result<Vec<Backend>, String> {
        let mut backends = Vec::new();
        for (slot, percent) in weights {
            let targets = self.rollout.targets_with(*slot);
            if targets.is_empty() {
                continue;
            }
            let rule = matched
                .as_ref()
                .filter(|(_, s)| s == slot)
                .map(|(rule, _)| match rule {
                    HeaderOrCookie::Header { name, value } => AbMatch::header(name, value),
                    HeaderOrCookie::Cookie { name, value } => AbMatch::cookie(name, value),
                });
            let weight = match (&rule, *percent) {
                (Some(_), _) => 1,
                (None, 0) => 0,
                (None, p) => {
                    let n = u16::try_from(targets.len()).unwrap_or(u16::MAX).max(1);
                    (backend_weight(p) / n).max(1)
                }
            };
            for target in &targets {
                let weight = if *slot == Slot::Stable && drained.contains(target) {
                    0
                } else {
                    weight
                };
                let address = match self.endpoint(target, *slot).await {
                    Ok(Some(address)) => address,
                    Ok(None) if weight == 0 => continue,
                    Ok(None) => {
                        return Err(format!(
                            "target `{target}` has no known address for slot {}: its agent reported no published port",
                            slot_name(*slot)
                        ))
                    }
                    Err(error) => return Err(error.to_string()),
                };
                let backend = Backend::new(&address, weight)
                    .map_err(|e| format!("target `{target}`: {e}"))?
                    .in_slot(slot_name(*slot));
                backends.push(match &rule {
                    Some(rule) => backend.matching(rule.clone()),
                    None => backend,
                });
            }
        }
        if backends.is_empty() {
            return Err("no target of the rollout has a known address".to_owned());
        }
        Ok(backends)
    }

    /// `host:port` at which the router reaches `slot` of `target`.
    async fn endpoint(&self, target: &str, slot: Slot) -> Result<Option<String>, StoreError> {
        let output = match slot {
            Slot::Stable => {
                self.app
                    .store
                    .latest_deploy_output(target, None, None)
                    .await?
            }
            other => {
                self.app
                    .store
                    .latest_deploy_output(
                        target,
                        Some(slot_name(other)),
                        Some(&self.rollout.deployment_id),
                    )
                    .await?
            }
        };
        let settings = self
            .rollout
            .payloads
            .get(target)
            .and_then(|p| serde_json::from_str::<DeploySpec>(p).ok())
            .map(|spec| spec.target.settings)
            .unwrap_or_default();
        Ok(endpoint_of(
            output.as_deref(),
            &settings,
            slot == Slot::Stable,
        ))
    }
}

/// Which release a deploy step sends.
#[derive(Clone, Copy)]
pub(super) enum Release {
    /// The rollout's.
    New,
    /// What ran before it.
    Previous,
}
