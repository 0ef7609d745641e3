//! What one evaluation of a promotion reads from the store: the plan (targets, their
//! planned settings, agents, the workflow), the order gate's fact, the scan reports and
//! VEX documents, the policy source; the independent reads in flight together.

use std::sync::Arc;

use super::configured::Configured;
use super::{gate_config, release_input, undecidable, Gathered, PlannedTargetSettings};
use crate::app::scans::ScanInputs;
use crate::app::App;
use crate::domain::{Environment, Release};
use crate::error::AppError;
use crate::store::ConfigGeneration;
use stella_decision::gates::{self, BreakGlass, DecisionInputs, OrderFact, Plan, TargetInput};

impl App {
    /// The deployment part of a promotion's plan (no workflow): the release, the gates,
    /// every target with its planned settings and the secrets they reference; with the
    /// targets and their settings as the deployment will use them.
    pub(in crate::app) async fn deployment_plan(
        &self,
        release: &Release,
        env: &Environment,
    ) -> Result<(Plan, Vec<crate::domain::Target>, PlannedTargetSettings), AppError> {
        let targets = self.store.list_targets(Some(&env.name)).await?;
        if targets.is_empty() {
            return Err(crate::app::deployments::no_targets(env));
        }
        let planned = self.plan_settings(env, &targets).await?;
        let agents = self.agents_of(&targets).await?;
        let plan = Plan {
            schema: gates::PLAN_SCHEMA.to_owned(),
            release: release_input(release),
            gates: gate_config(env),
            targets: targets
                .iter()
                .map(|t| TargetInput {
                    name: t.name.clone(),
                    kind: t.kind.as_str().to_owned(),
                    agent: agents
                        .get(&t.agent_id)
                        .map_or_else(|| t.agent_id.clone(), |a| a.name.clone()),
                    settings: planned.settings.get(&t.name).cloned().unwrap_or_default(),
                })
                .collect(),
            secrets: planned.secret_versions,
            workflow: None,
            rollout: crate::app::rollouts::rollout_input(env, &targets, &agents)?,
        };
        Ok((plan, targets, planned.settings))
    }

    /// Everything one evaluation needs, read from the store now.
    pub(super) async fn gather(
        &self,
        release: &Release,
        env: &Environment,
        requested_by: &str,
        break_glass: Option<&(String, String)>,
        now: i64,
    ) -> Result<Gathered, AppError> {
        // The configuration and the order gate's fact, in flight together.
        let (configured, order) = tokio::join!(
            self.configured(release.clone(), env.clone()),
            self.order_fact(env, release)
        );
        self.assemble(&configured?, order?, requested_by, break_glass, now)
            .await
    }

    /// [`App::gather`] for a promotion whose configuration was read already, at
    /// `generation` (see `configured.rs`): the order fact is kept the same way.
    pub(super) async fn gather_configured(
        &self,
        (configured, generation): &(Arc<Configured>, Option<ConfigGeneration>),
        requested_by: &str,
        break_glass: Option<&(String, String)>,
        now: i64,
    ) -> Result<Gathered, AppError> {
        let (release, env) = (&configured.release, &configured.env);
        let kept = match (generation, &env.after) {
            (Some(generation), Some(after)) => {
                self.configured
                    .order(*generation, &release.name, &release.version, after)
            }
            _ => None,
        };
        let order = match kept {
            Some(order) => order,
            None => {
                let order = self.order_fact(env, release).await?;
                if let (Some(generation), Some(after)) = (generation, &env.after) {
                    self.configured.put_order(
                        *generation,
                        &release.name,
                        &release.version,
                        after,
                        order.clone(),
                    );
                }
                order
            }
        };
        self.assemble(configured, order, requested_by, break_glass, now)
            .await
    }

    /// What a promotion of `release@version` to `environment` reads from configuration:
    /// kept from an earlier promotion while the configuration generation is unchanged
    /// (see `configured.rs`), else read now.
    pub(super) async fn configured_named(
        &self,
        release: &str,
        version: &str,
        environment: &str,
    ) -> Result<(Arc<Configured>, Option<ConfigGeneration>), AppError> {
        // Read first: what follows is at least as new as this generation.
        let generation = self.store.config_generation().await?;
        if let Some(kept) = generation.and_then(|generation| {
            self.configured
                .get(generation, release, version, environment)
        }) {
            return Ok((kept, generation));
        }
        let release = self.release_named(release, version).await?;
        let env = self.environment(environment).await?;
        let configured = Arc::new(self.configured(release, env).await?);
        if let Some(generation) = generation {
            self.configured.put(generation, configured.clone());
        }
        Ok((configured, generation))
    }

    /// The plan's deployment part and the scan inputs, in flight together.
    async fn configured(&self, release: Release, env: Environment) -> Result<Configured, AppError> {
        let release_input = release_input(&release);
        let (planned, scans) = tokio::join!(
            self.deployment_plan(&release, &env),
            self.scan_inputs(&release_input),
        );
        let (plan, targets, settings) = planned?;
        Ok(Configured {
            release,
            env,
            plan,
            targets,
            settings,
            scans: scans?,
        })
    }

    /// The order gate's fact: whether the release ran in the environment before this one.
    async fn order_fact(
        &self,
        env: &Environment,
        release: &Release,
    ) -> Result<Option<OrderFact>, AppError> {
        match &env.after {
            Some(after) => Ok(Some(OrderFact {
                environment: after.clone(),
                deployed_as: self.deployed_in(after, release).await?,
            })),
            None => Ok(None),
        }
    }

    /// The evaluation's inputs from the configuration and the order fact; the workflow
    /// compiled and the policy's source added.
    async fn assemble(
        &self,
        configured: &Configured,
        order: Option<OrderFact>,
        requested_by: &str,
        break_glass: Option<&(String, String)>,
        now: i64,
    ) -> Result<Gathered, AppError> {
        let env = &configured.env;
        let ScanInputs {
            reports,
            vex,
            mut documents,
        } = configured.scans.clone();
        let mut plan = configured.plan.clone();
        plan.workflow = self.compile_workflow(env, &plan).await?;
        let (plan_json, plan_hash) = plan.canonical_and_hash().map_err(undecidable)?;
        let plan_json = String::from_utf8(plan_json)
            .map_err(|e| AppError::internal("canonical plan is not UTF-8", &e))?;
        if let Some(policy) = &env.gates.policy_id {
            documents.append(&mut self.documents(&[policy.as_str()]).await?);
        }
        let inputs = DecisionInputs {
            schema: gates::INPUTS_SCHEMA.to_owned(),
            evaluated_at_ms: now,
            requested_by: requested_by.to_owned(),
            plan: plan.clone(),
            plan_hash: plan_hash.clone(),
            order,
            approvals: Vec::new(),
            break_glass: break_glass.map(|(by, reason)| BreakGlass {
                by: by.clone(),
                reason: reason.clone(),
                admin: true,
            }),
            reports,
            vex,
        };
        Ok(Gathered {
            plan,
            plan_json,
            plan_hash,
            targets: configured.targets.clone(),
            settings: configured.settings.clone(),
            inputs,
            documents,
            plan_note: None,
        })
    }

    /// `name@version` of a release with the same digests that was deployed successfully
    /// in `environment`.
    async fn deployed_in(
        &self,
        environment: &str,
        release: &Release,
    ) -> Result<Option<String>, AppError> {
        if let Some(deployment) = self
            .store
            .succeeded_deployment_of_release(environment, &release.name, &release.version)
            .await?
        {
            return Ok(Some(format!(
                "{}@{}",
                deployment.release, deployment.version
            )));
        }
        // Another release (name or version) may pin exactly the same digests.
        for deployment in self.store.succeeded_deployments(environment, 200).await? {
            if let Ok(other) = self
                .store
                .get_release(&deployment.release, &deployment.version)
                .await
            {
                if other.same_content(release) {
                    return Ok(Some(format!("{}@{}", other.name, other.version)));
                }
            }
        }
        Ok(None)
    }
}
