//! Progressive rollouts (RFC 0005, increment 2): a promotion into an environment whose
//! strategy is not all-at-once creates its deployment with a rollout instead of tasks,
//! and the rollout driver takes the strategy's steps one at a time.
//!
//! **The driver** (`driver`). Every replica runs [`run_rollout_driver`]. It claims rollouts whose
//! lease is free or expired (raising the lease epoch), and drives each one it holds in a
//! task of its own, renewing the lease as it goes. Every write names the epoch it holds:
//! a driver whose lease another replica took writes nothing more and stops. What a step
//! did is in the store before the driver moves on (its tasks, their results, its record
//! in `rollout_steps`), so a replica that takes a rollout over after a crash resumes the
//! step it finds running: a step's tasks are created once, a route is applied again
//! (applying the same weights twice is harmless).
//!
//! **Steps.** `deploy` and `restore` create one task per target (the slot in the
//! payload; `restore` sends the previous release), `retire` one `retire` task per target
//! that had the slot, and each waits for its tasks. `route` sends the router the
//! backends of every slot with its share of the weight (the address of a target's slot
//! is what its agent reported when it deployed it: see [`endpoint_of`]). `pause` waits
//! for its time or for `stella deployment promote`. A step that deploys, restores or
//! retires right after a route waits [`DRAIN`] first, so requests the router sent to a
//! slot it just took out of service can finish.
//!
//! **Failure** of a forward step (or `stella deployment abort`) starts the rollback:
//! `decision::rollout::rollback_of` over the steps run so far, the failed one included
//! (a deploy that failed on one target may have succeeded on another). The deployment
//! ends `failed` with "rolled back: REASON". A rollback step that fails ends the rollout
//! `failed` and says which step: the operator looks at the router and the targets.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use stella_decision::plan::RolloutInput;
use stella_decision::rollout::{compile, Slot, Step, Strategy};

use super::{now_ms, App};

pub(super) mod analysis;
mod driver;
mod prometheus;
mod steps;

use crate::domain::{
    describe_step, Agent, Deployment, Environment, Rollout, RolloutPhase, RolloutRequest,
    RolloutState, RolloutStepRecord, Target, Task,
};
use crate::error::{AppError, ErrorKind};
use crate::store::StoreError;
pub use driver::{run_rollout_driver, DRAIN};

/// The host a router reaches a target's published ports on, unless the target says
/// (`route_host`) or the engine bound one address.
const DEFAULT_ROUTE_HOST: &str = "127.0.0.1";

/// The rollout a plan binds for `env` over `targets`: `None` for all-at-once. Refused
/// when the strategy does not compile over these targets, or needs slots that a target's
/// kind does not have.
pub(super) fn rollout_input(
    env: &Environment,
    targets: &[Target],
    agents: &HashMap<String, Agent>,
) -> Result<Option<RolloutInput>, AppError> {
    let strategy = match &env.gates.rollout {
        None | Some(Strategy::AllAtOnce) => return Ok(None),
        Some(strategy) => strategy,
    };
    let invalid = |message: String| {
        AppError::new(
            ErrorKind::FailedPrecondition,
            "rollout_invalid",
            format!("environment `{}`: {message}", env.name),
        )
    };
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let steps = compile(strategy, &names).map_err(|e| invalid(e.0))?;
    let uses_slots = steps
        .iter()
        .any(|s| matches!(s, Step::Deploy { slot, .. } if *slot != Slot::Stable));
    if uses_slots {
        if let Some(target) = targets.iter().find(|t| t.kind.as_str() != "docker") {
            return Err(invalid(format!(
                "the {} strategy runs the new release beside the old one, which only docker \
                 targets can do; target `{}` is a {} target",
                strategy.name(),
                target.name,
                target.kind.as_str()
            )));
        }
        // An agent that said hello without `slots:docker` predates slots: it would
        // deploy a slot's payload over the stable containers.
        for target in targets {
            let capability = format!("slots:{}", target.kind.as_str());
            if let Some(agent) = agents.get(&target.agent_id) {
                if agent.host.is_some() && !agent.capabilities.contains(&capability) {
                    return Err(invalid(format!(
                        "target `{}` is driven by agent `{}`, which does not deploy to slots \
                         (it did not advertise `{capability}`): upgrade the agent",
                        target.name, agent.name
                    )));
                }
            }
        }
    }
    Ok(Some(RolloutInput {
        strategy: strategy.clone(),
        steps,
    }))
}

/// A rollout and its steps, as `deployment show` gives them.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutDetail {
    /// The rollout.
    pub rollout: Rollout,
    /// Every step it ran or runs.
    pub records: Vec<RolloutStepRecord>,
}

impl App {
    /// The rollout of a promotion's deployment, before it is stored: the new release's
    /// payload per target (from the tasks an all-at-once deployment would have had) and
    /// what ran on each target before.
    pub(super) async fn new_rollout(
        &self,
        deployment: &Deployment,
        tasks: &[Task],
        input: &RolloutInput,
        now: i64,
    ) -> Result<Rollout, AppError> {
        if let Some(router) = input.strategy.router() {
            self.router(router).await.map_err(|error| {
                AppError::new(
                    ErrorKind::FailedPrecondition,
                    "rollout_invalid",
                    format!(
                        "environment `{}`: its {} strategy names router `{router}`: {}",
                        deployment.environment,
                        input.strategy.name(),
                        error.message
                    ),
                )
            })?;
        }
        let mut payloads = BTreeMap::new();
        let mut previous = BTreeMap::new();
        for task in tasks {
            payloads.insert(task.target.clone(), task.payload_json.clone());
            let before = self.store.latest_succeeded_task(&task.target).await?;
            previous.insert(task.target.clone(), before.map(|t| t.payload_json));
        }
        Ok(Rollout {
            deployment_id: deployment.id.clone(),
            environment: deployment.environment.clone(),
            strategy: input.strategy.clone(),
            steps: input.steps.clone(),
            payloads,
            previous,
            state: RolloutState::Running,
            phase: RolloutPhase::Forward,
            rollback: Vec::new(),
            next_step: 0,
            requested: None,
            weights: Vec::new(),
            message: None,
            lease_owner: None,
            lease_expires_at_ms: None,
            lease_epoch: 0,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
        })
    }

    /// What follows a stored rollout: its first log lines (a driver claims it within
    /// half a second).
    pub(super) async fn rollout_created(&self, deployment: &Deployment, rollout: &Rollout) {
        self.log(
            &deployment.id,
            "",
            &format!(
                "{} of {}@{} to {} as a {} rollout over {} target{}, {} steps; requested by {}",
                deployment.kind,
                deployment.release,
                deployment.version,
                deployment.environment,
                rollout.strategy.name(),
                rollout.payloads.len(),
                if rollout.payloads.len() == 1 { "" } else { "s" },
                rollout.steps.len(),
                deployment.created_by,
            ),
        )
        .await;
        for (index, step) in rollout.steps.iter().enumerate() {
            self.log(
                &deployment.id,
                "",
                &format!("  step {}: {}", index + 1, describe_step(step)),
            )
            .await;
        }
        tracing::info!(deployment_id = %deployment.id, environment = %deployment.environment, strategy = rollout.strategy.name(), steps = rollout.steps.len(), "rollout created");
    }

    /// The rollout of a deployment with its step records, if it runs as one.
    pub async fn rollout_detail(
        &self,
        deployment_id: &str,
    ) -> Result<Option<RolloutDetail>, AppError> {
        let Some(rollout) = self.store.get_rollout(deployment_id).await? else {
            return Ok(None);
        };
        let records = self.store.rollout_steps(deployment_id).await?;
        Ok(Some(RolloutDetail { rollout, records }))
    }

    /// Records an operator's request (`promote`, `pause`, `resume`, `abort`) for the
    /// rollout of a deployment (id or unique prefix); its driver acts on it within a
    /// fraction of a second. Refused when the deployment runs no rollout or it is over.
    pub async fn request_rollout(
        &self,
        id_or_prefix: &str,
        request: RolloutRequest,
        by: &str,
    ) -> Result<Deployment, AppError> {
        let deployment = self.find_deployment(id_or_prefix).await?;
        match self
            .store
            .request_rollout(&deployment.id, request, by, now_ms())
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound { .. }) => {
                return Err(AppError::new(
                    ErrorKind::FailedPrecondition,
                    "not_a_rollout",
                    format!(
                    "deployment {} deploys every target at once: there are no steps to {request}",
                    deployment.id
                ),
                ))
            }
            Err(StoreError::Conflict { .. }) => {
                return Err(AppError::new(
                    ErrorKind::Conflict,
                    "rollout_finished",
                    format!("the rollout of deployment {} is over", deployment.id),
                ))
            }
            Err(other) => return Err(other.into()),
        }
        self.log(&deployment.id, "", &format!("{request} requested by {by}"))
            .await;
        tracing::info!(deployment_id = %deployment.id, %request, by, "rollout request recorded");
        Ok(deployment)
    }
}

/// `host:port` of a target's slot for the router: the first TCP port the agent reported
/// (`endpoints` of its deploy outcome) — for the stable slot, failing that, the fixed
/// host port of the `ports` setting. The host is the target's `route_host` setting, else
/// the address the engine bound when it is a specific one, else 127.0.0.1 (a router on
/// the engine's host).
pub fn endpoint_of(
    output_json: Option<&str>,
    settings: &BTreeMap<String, String>,
    stable: bool,
) -> Option<String> {
    let reported = output_json
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|value| {
            value
                .get("endpoints")?
                .as_array()?
                .iter()
                .find(|e| e.get("protocol").and_then(|p| p.as_str()).unwrap_or("tcp") == "tcp")
                .and_then(|e| {
                    let port = u16::try_from(e.get("host_port")?.as_u64()?).ok()?;
                    let ip = e
                        .get("host_ip")
                        .and_then(|ip| ip.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    Some((ip, port))
                })
        });
    let (ip, port) = match reported {
        Some(found) => found,
        None if stable => (String::new(), fixed_host_port(settings.get("ports")?)?),
        None => return None,
    };
    let host = match settings.get("route_host").map(|h| h.trim()) {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ if !ip.is_empty() && ip != "0.0.0.0" && ip != "::" => ip,
        _ => DEFAULT_ROUTE_HOST.to_owned(),
    };
    if host.contains(':') && !host.starts_with('[') {
        Some(format!("[{host}]:{port}"))
    } else {
        Some(format!("{host}:{port}"))
    }
}

/// The host port of the first TCP mapping of a Docker `ports` setting
/// (`[host_ip:][host_port:]container_port[/protocol]`, comma separated) that fixes one.
fn fixed_host_port(ports: &str) -> Option<u16> {
    ports.split(',').map(str::trim).find_map(|spec| {
        let (mapping, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
        if protocol != "tcp" {
            return None;
        }
        let parts: Vec<&str> = mapping.rsplitn(3, ':').collect();
        // rsplitn: [container, host_port, host_ip…]
        parts.get(1)?.parse::<u16>().ok().filter(|p| *p > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn endpoints_come_from_the_outcome_then_the_fixed_port() {
        let output = r#"{"summary":"x","endpoints":[
            {"component":"web","container_port":53,"protocol":"udp","host_ip":"0.0.0.0","host_port":5353},
            {"component":"web","container_port":8080,"protocol":"tcp","host_ip":"0.0.0.0","host_port":49153}]}"#;
        assert_eq!(
            endpoint_of(Some(output), &settings(&[]), false).as_deref(),
            Some("127.0.0.1:49153")
        );
        assert_eq!(
            endpoint_of(
                Some(output),
                &settings(&[("route_host", "10.0.0.7")]),
                false
            )
            .as_deref(),
            Some("10.0.0.7:49153")
        );
        let bound = r#"{"endpoints":[{"component":"web","container_port":80,"protocol":"tcp","host_ip":"192.0.2.4","host_port":8080}]}"#;
        assert_eq!(
            endpoint_of(Some(bound), &settings(&[]), true).as_deref(),
            Some("192.0.2.4:8080")
        );
        let ports = settings(&[("ports", "127.0.0.1:9000:8080/udp, 8081:8080")]);
        assert_eq!(
            endpoint_of(None, &ports, true).as_deref(),
            Some("127.0.0.1:8081")
        );
        assert_eq!(endpoint_of(Some("{}"), &ports, false), None);
        assert_eq!(
            endpoint_of(None, &settings(&[("ports", "8080")]), true),
            None
        );
        assert_eq!(
            endpoint_of(None, &settings(&[("ports", "0.0.0.0:9090:80")]), true).as_deref(),
            Some("127.0.0.1:9090")
        );
        assert_eq!(
            endpoint_of(Some(output), &settings(&[("route_host", "fd00::1")]), false).as_deref(),
            Some("[fd00::1]:49153")
        );
    }
}
