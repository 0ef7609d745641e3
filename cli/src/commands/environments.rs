//! `stella env …`: environments, their promotion order, gates and deployment timeout,
//! and their variables and secrets.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{path, print, rows, Context};
use crate::output;

/// `stella env …`
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Create an environment.
    Create {
        /// Name.
        name: String,
        /// The environment a release must pass first.
        #[arg(long)]
        after: Option<String>,
        /// What drift does here: report it, or redeploy what was promoted
        /// [default: report].
        #[arg(long, value_parser = ["report", "remediate"])]
        drift: Option<String>,
        /// How long a deployment's tasks may take here before they fail, e.g. `15m`
        /// [default: the server's task_deadline_seconds, 1h].
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        deployment_timeout: Option<Duration>,
        #[command(flatten)]
        gates: GateArgs,
        // Boxed: the strategy's flags would make this the largest command by far.
        #[command(flatten)]
        rollout: Box<RolloutArgs>,
    },
    /// Change an environment.
    Update {
        /// Name.
        name: String,
        /// New predecessor ("" clears it).
        #[arg(long)]
        after: Option<String>,
        /// What drift does here: report it, or redeploy what was promoted.
        #[arg(long, value_parser = ["report", "remediate"])]
        drift: Option<String>,
        /// How long a deployment's tasks may take here, e.g. `15m`; `default` for the
        /// server's default.
        #[arg(long, value_parser = parse_timeout, value_name = "DURATION")]
        deployment_timeout: Option<Timeout>,
        #[command(flatten)]
        gates: GateArgs,
        // Boxed: the strategy's flags would make this the largest command by far.
        #[command(flatten)]
        rollout: Box<RolloutArgs>,
        /// Remove every freeze window.
        #[arg(long, conflicts_with = "freeze")]
        no_freeze: bool,
        /// Remove the policy.
        #[arg(long, conflicts_with = "policy")]
        no_policy: bool,
        /// Go back to the built-in promotion workflow.
        #[arg(long, conflicts_with = "workflow")]
        no_workflow: bool,
        /// Approvals count until the deployment starts (no expiry).
        #[arg(long, conflicts_with = "approval_ttl")]
        no_approval_ttl: bool,
    },
    /// Delete an environment. Refused while it has targets, another environment comes
    /// after it, or (without --with-history) it has deployment history.
    #[command(visible_alias = "rm")]
    Delete {
        /// Name.
        name: String,
        /// Delete its deployments, logs and drift findings too.
        #[arg(long)]
        with_history: bool,
    },
    /// List environments.
    List,
    /// Show one environment.
    Show {
        /// Name.
        name: String,
    },
    /// Variables: plain values target settings use as `${var.NAME}`, recorded in each
    /// deployment's plan.
    #[command(subcommand, visible_alias = "vars")]
    Var(VarCommand),
    /// Secrets: sealed values target settings use as `${secret.NAME}`; never shown,
    /// logged or recorded, sent only to the agent that deploys.
    #[command(subcommand, visible_alias = "secrets")]
    Secret(SecretCommand),
}

/// `stella env var …`
#[derive(Debug, Subcommand)]
pub enum VarCommand {
    /// Set (or replace) a variable.
    Set {
        /// Environment.
        env: String,
        /// Variable name (letters, digits, `_`).
        name: String,
        /// Its value.
        value: String,
    },
    /// List the environment's variables and secrets (secrets without values).
    List {
        /// Environment.
        env: String,
    },
    /// Delete a variable.
    #[command(visible_aliases = ["unset", "rm"])]
    Delete {
        /// Environment.
        env: String,
        /// Variable name.
        name: String,
    },
}

/// `stella env secret …`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set (or replace) a secret; the value is read from standard input.
    Set {
        /// Environment.
        env: String,
        /// Secret name (letters, digits, `_`).
        name: String,
    },
    /// List the environment's secrets (names and when they were set, never values).
    List {
        /// Environment.
        env: String,
    },
    /// Delete a secret.
    #[command(visible_aliases = ["unset", "rm"])]
    Delete {
        /// Environment.
        env: String,
        /// Secret name.
        name: String,
    },
}

/// The gates of an environment (docs/governance.md).
#[derive(Debug, clap::Args)]
pub struct GateArgs {
    /// Distinct approvals a promotion needs, from approvers other than the requester.
    #[arg(long, value_name = "K")]
    approvals: Option<u32>,
    /// How long an approval counts, e.g. `24h` [default: until the deployment starts].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    approval_ttl: Option<Duration>,
    /// A freeze window: starts at each cron match and lasts DURATION, in the IANA time
    /// zone given (default UTC), e.g. '0 18 * * FRI/64h@Europe/Berlin'. Repeatable; on
    /// update the windows given replace the old ones.
    #[arg(long, value_name = "CRON/DURATION[@TZ]")]
    freeze: Vec<String>,
    /// Unsuppressed findings at or above it block [default: critical].
    #[arg(long, value_parser = ["none", "low", "medium", "high", "critical"])]
    block_severity: Option<String>,
    /// Let an image without a scan report pass (`--allow-unscanned=false` to stop).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    allow_unscanned: Option<bool>,
    /// A Rego module (v1) whose `deny` set must be empty for a promotion to pass.
    #[arg(long, value_name = "FILE.rego")]
    policy: Option<std::path::PathBuf>,
    /// A task pack that carries out every promotion allowed here (declares the input
    /// `promotion`, has one `builtin:promotion` step); see docs/governance.md.
    #[arg(long, value_name = "PACK.yaml")]
    workflow: Option<std::path::PathBuf>,
}

impl GateArgs {
    /// The given gates as body fields.
    fn fields(&self, body: &mut serde_json::Map<String, Value>) -> anyhow::Result<()> {
        if let Some(k) = self.approvals {
            body.insert("approvals".to_owned(), Value::from(k));
        }
        if let Some(ttl) = self.approval_ttl {
            body.insert(
                "approval_ttl_seconds".to_owned(),
                Value::from(ttl.as_secs()),
            );
        }
        if !self.freeze.is_empty() {
            body.insert("freeze".to_owned(), json!(self.freeze));
        }
        if let Some(severity) = &self.block_severity {
            body.insert("block_severity".to_owned(), Value::from(severity.clone()));
        }
        if let Some(allow) = self.allow_unscanned {
            body.insert("allow_unscanned".to_owned(), Value::from(allow));
        }
        if let Some(file) = &self.policy {
            use anyhow::Context as _;
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("reading the policy {}", file.display()))?;
            body.insert("policy".to_owned(), Value::from(source));
        }
        if let Some(file) = &self.workflow {
            use anyhow::Context as _;
            let manifest = std::fs::read_to_string(file)
                .with_context(|| format!("reading the workflow {}", file.display()))?;
            body.insert("workflow".to_owned(), Value::from(manifest));
        }
        Ok(())
    }
}

/// How a release reaches an environment's targets (docs/rollouts.md). Giving
/// `--strategy` replaces the whole strategy; the other flags belong to it.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Rollout")]
pub struct RolloutArgs {
    /// How a promotion replaces the targets: every one at once (the default), in
    /// batches, beside the old set behind a router (blue-green), a growing share of the
    /// traffic (canary), or the requests matching a header or cookie (a-b).
    #[arg(long, value_parser = ["all-at-once", "rolling", "blue-green", "canary", "a-b"])]
    strategy: Option<String>,
    /// Canary weights in percent, increasing, ending at 100, e.g. `5,25,50,100`.
    #[arg(long, requires = "strategy", value_name = "W,W,…")]
    steps: Option<String>,
    /// Wait after each batch or weight: a duration (`30s`, `2m`) or `manual` (until
    /// `stella deployment promote`).
    #[arg(long, requires = "strategy", value_name = "DURATION|manual")]
    pause: Option<String>,
    /// Rolling: targets per batch, or a percentage (`3`, `25%`).
    #[arg(long, requires = "strategy", value_name = "N|P%")]
    batch: Option<String>,
    /// Rolling: at most this many targets out of service at once [default: 1].
    #[arg(long, requires = "strategy", value_name = "N")]
    max_unavailable: Option<String>,
    /// Blue-green, canary, a-b: the router in front of the targets. Rolling: optional;
    /// with it each group is drained out of the router before it is replaced.
    #[arg(long, requires = "strategy", value_name = "ROUTER")]
    router: Option<String>,
    /// Blue-green: how long the old set stays ready for an instant switch back.
    #[arg(long, requires = "strategy", value_name = "DURATION")]
    keep_old: Option<String>,
    /// A-b: the requests that go to the new version, `header:NAME=VALUE` or
    /// `cookie:NAME=VALUE`.
    #[arg(
        long = "match",
        requires = "strategy",
        value_name = "header:NAME=VALUE"
    )]
    match_: Option<String>,
    /// Checks after each batch, weight or before the blue-green switch: `http:PATH`
    /// (error ratio of the new version against the old), `errors-and-latency:PATH`
    /// (and p99 latency), or `prometheus:PATH` (both, from the traffic each version
    /// served, read from its metrics; `?requests=NAME&latency=NAME` names the counter
    /// and histogram); see docs/rollouts.md.
    #[arg(long, requires = "strategy", value_name = "CHECKS")]
    analysis: Option<String>,
    /// How long each analysis samples [default: 1m].
    #[arg(long, requires = "analysis", value_name = "DURATION")]
    analysis_for: Option<String>,
}

impl RolloutArgs {
    /// The strategy as the body's `rollout` field, when `--strategy` was given.
    fn fields(&self, body: &mut serde_json::Map<String, Value>) {
        let Some(strategy) = &self.strategy else {
            return;
        };
        let mut settings = serde_json::Map::new();
        settings.insert("strategy".to_owned(), Value::from(strategy.clone()));
        for (key, value) in [
            ("steps", &self.steps),
            ("pause", &self.pause),
            ("batch", &self.batch),
            ("max-unavailable", &self.max_unavailable),
            ("router", &self.router),
            ("keep-old", &self.keep_old),
            ("match", &self.match_),
            ("analysis", &self.analysis),
            ("analysis-for", &self.analysis_for),
        ] {
            if let Some(value) = value {
                settings.insert(key.to_owned(), Value::from(value.clone()));
            }
        }
        body.insert("rollout".to_owned(), Value::Object(settings));
    }
}

/// A deployment timeout, or back to the server's default.
#[derive(Clone, Copy, Debug)]
pub enum Timeout {
    /// This long.
    Of(Duration),
    /// The server's `task_deadline_seconds`.
    Default,
}

fn parse_timeout(text: &str) -> Result<Timeout, String> {
    if text == "default" {
        return Ok(Timeout::Default);
    }
    humantime::parse_duration(text)
        .map(Timeout::Of)
        .map_err(|e| format!("{e} (or `default`)"))
}

/// `stella env …`.
pub async fn env(context: &Context, command: EnvCommand) -> anyhow::Result<()> {
    let (client, format) = (&context.client, context.format);
    let value = match command {
        EnvCommand::Create {
            name,
            after,
            drift,
            deployment_timeout,
            gates,
            rollout,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("name".to_owned(), Value::from(name));
            body.insert("after".to_owned(), json!(after));
            body.insert("drift".to_owned(), json!(drift));
            body.insert(
                "deployment_timeout_seconds".to_owned(),
                json!(deployment_timeout.map(|d| d.as_secs())),
            );
            gates.fields(&mut body)?;
            rollout.fields(&mut body);
            client.post("/environments", Value::Object(body)).await?
        }
        EnvCommand::Update {
            name,
            after,
            drift,
            deployment_timeout,
            gates,
            rollout,
            no_freeze,
            no_policy,
            no_workflow,
            no_approval_ttl,
        } => {
            // Only what was given is sent: an absent field keeps the stored value, null
            // clears it.
            let mut change = serde_json::Map::new();
            if let Some(after) = after {
                let after = if after.is_empty() {
                    Value::Null
                } else {
                    Value::from(after)
                };
                change.insert("after".to_owned(), after);
            }
            if let Some(drift) = drift {
                change.insert("drift".to_owned(), Value::from(drift));
            }
            match deployment_timeout {
                Some(Timeout::Of(duration)) => {
                    change.insert(
                        "deployment_timeout_seconds".to_owned(),
                        Value::from(duration.as_secs()),
                    );
                }
                Some(Timeout::Default) => {
                    change.insert("deployment_timeout_seconds".to_owned(), Value::Null);
                }
                None => {}
            }
            gates.fields(&mut change)?;
            rollout.fields(&mut change);
            if no_freeze {
                change.insert("freeze".to_owned(), json!([]));
            }
            if no_policy {
                change.insert("policy".to_owned(), Value::Null);
            }
            if no_workflow {
                change.insert("workflow".to_owned(), Value::Null);
            }
            if no_approval_ttl {
                change.insert("approval_ttl_seconds".to_owned(), Value::Null);
            }
            client
                .patch(
                    &format!("/environments/{}", path(&name)),
                    Value::Object(change),
                )
                .await?
        }
        EnvCommand::Delete { name, with_history } => {
            let query = if with_history {
                "?with_history=true"
            } else {
                ""
            };
            client
                .delete(&format!("/environments/{}{query}", path(&name)))
                .await?;
            context.deleted("environment", &name);
            return Ok(());
        }
        EnvCommand::List => {
            let list = client.get("/environments").await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["name", "after", "drift", "timeout", "current", "targets"],
                    &[
                        "/name",
                        "/after",
                        "/drift",
                        "/deployment_timeout_seconds",
                        "/current",
                        "/targets",
                    ],
                );
            });
            return Ok(());
        }
        EnvCommand::Show { name } => {
            client
                .get(&format!("/environments/{}", path(&name)))
                .await?
        }
        EnvCommand::Var(command) => return variables(context, command).await,
        EnvCommand::Secret(command) => return secrets(context, command).await,
    };
    print(format, &value, |v| {
        output::details(
            v,
            &[
                ("name", "/name"),
                ("after", "/after"),
                ("drift", "/drift"),
                ("deployment timeout (s)", "/deployment_timeout_seconds"),
                ("current", "/current"),
                ("targets", "/targets"),
                ("approvals", "/approvals"),
                ("approval ttl (s)", "/approval_ttl_seconds"),
                ("freeze", "/freeze"),
                ("frozen until", "/frozen/until"),
                ("block severity", "/block_severity"),
                ("allow unscanned", "/allow_unscanned"),
                ("policy", "/policy"),
                ("workflow", "/workflow"),
                ("rollout", "/rollout"),
                ("verdict", "/verdict/state"),
                ("verdict reasons", "/verdict/reasons"),
                ("created", "/created_at"),
            ],
        );
    });
    Ok(())
}

async fn variables(context: &Context, command: VarCommand) -> anyhow::Result<()> {
    let client = &context.client;
    match command {
        VarCommand::Set { env, name, value } => {
            let set = client
                .put(
                    &format!("/environments/{}/variables/{}", path(&env), path(&name)),
                    json!({ "value": value }),
                )
                .await?;
            context.print(&set, variable_details);
        }
        VarCommand::List { env } => list(context, &env, None).await?,
        VarCommand::Delete { env, name } => {
            client
                .delete(&format!(
                    "/environments/{}/variables/{}",
                    path(&env),
                    path(&name)
                ))
                .await?;
            context.deleted("variable", &name);
        }
    }
    Ok(())
}

async fn secrets(context: &Context, command: SecretCommand) -> anyhow::Result<()> {
    let client = &context.client;
    match command {
        SecretCommand::Set { env, name } => {
            let value = super::read_stdin("secret value")?;
            let set = client
                .put(
                    &format!("/environments/{}/secrets/{}", path(&env), path(&name)),
                    json!({ "value": value }),
                )
                .await?;
            context.print(&set, variable_details);
        }
        SecretCommand::List { env } => list(context, &env, Some("secret")).await?,
        SecretCommand::Delete { env, name } => {
            client
                .delete(&format!(
                    "/environments/{}/secrets/{}",
                    path(&env),
                    path(&name)
                ))
                .await?;
            context.deleted("secret", &name);
        }
    }
    Ok(())
}

/// Lists an environment's variables and secrets, or only those of one kind.
async fn list(context: &Context, env: &str, only: Option<&str>) -> anyhow::Result<()> {
    let mut all = context
        .client
        .get(&format!("/environments/{}/variables", path(env)))
        .await?;
    if let (Some(kind), Some(items)) = (only, all.as_array_mut()) {
        items.retain(|item| item.get("kind").and_then(Value::as_str) == Some(kind));
    }
    context.print(&all, |v| {
        rows(
            v,
            &["kind", "name", "value", "updated by", "updated"],
            &["/kind", "/name", "/value", "/updated_by", "/updated_at"],
        );
    });
    Ok(())
}

fn variable_details(value: &Value) {
    output::details(
        value,
        &[
            ("kind", "/kind"),
            ("name", "/name"),
            ("value", "/value"),
            ("updated by", "/updated_by"),
            ("updated", "/updated_at"),
        ],
    );
}
