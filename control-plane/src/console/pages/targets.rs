//! Targets and drift: every target with its sticker (what was last deployed to it) and
//! its drift findings; and the forms that act on them: a new target, remediation of a
//! drifted target, and rolling an environment back.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::domain::DeploySpec;

/// Targets listed on one page.
const TARGETS_PER_PAGE: usize = 100;

/// The target kinds the new-target form offers (`sim` is for benches only).
const KINDS: [&str; 6] = ["docker", "compose", "ssh", "winrm", "ecs", "nomad"];

struct TargetRow {
    name: String,
    environment: String,
    kind: String,
    agent: String,
    sticker: String,
    drift: String,
}

#[derive(Template)]
#[template(path = "drift.html")]
pub(super) struct DriftPage {
    targets: Vec<TargetRow>,
    pager: Pager,
    environments: Vec<String>,
    agents: Vec<String>,
    kinds: [&'static str; 6],
    operator: bool,
    csrf: String,
}

pub(super) async fn drift(signed: &Signed, listing: &Listing) -> Result<DriftPage, AppError> {
    let store = &signed.app.store;
    let drift = store.list_drift(None, false).await?;
    let agents: Vec<crate::domain::Agent> = store.list_agents().await?;
    let agent_names: HashMap<&str, &str> = agents
        .iter()
        .map(|a| (a.id.as_str(), a.name.as_str()))
        .collect();
    let now = now_ms();
    let rows: Vec<TargetRow> = store
        .list_targets(None)
        .await?
        .into_iter()
        .map(|target| {
            let findings: Vec<String> = drift
                .iter()
                .filter(|d| d.target == target.name)
                .map(|d| {
                    format!(
                        "{} {} ({}; for {})",
                        d.component,
                        d.kind.as_str(),
                        d.detail,
                        age((now - d.first_seen_at_ms).max(0) / 1000)
                    )
                })
                .collect();
            TargetRow {
                agent: agent_names
                    .get(target.agent_id.as_str())
                    .map_or_else(|| target.agent_id.clone(), |n| (*n).to_owned()),
                kind: target.kind.as_str().to_owned(),
                environment: target.environment.clone(),
                sticker: String::new(),
                drift: findings.join("; "),
                name: target.name,
            }
        })
        .filter(|row| {
            listing.keeps([
                row.name.as_str(),
                &row.environment,
                &row.kind,
                &row.agent,
                &row.drift,
                if row.drift.is_empty() {
                    "in sync"
                } else {
                    "drift"
                },
            ])
        })
        .collect();
    let (mut targets, pager) = listing.page_of(rows, TARGETS_PER_PAGE, "/console/drift", "targets");
    // The sticker of the targets shown: what the newest succeeded task wrote there.
    for row in &mut targets {
        row.sticker = match store.latest_succeeded_task(&row.name).await? {
            Some(task) => match serde_json::from_str::<DeploySpec>(&task.payload_json) {
                Ok(spec) => format!(
                    "{}@{} (deployment {}{})",
                    spec.release,
                    spec.version,
                    short(&spec.deployment_id),
                    task.finished_at_ms
                        .map(|at| format!(", {}", format_utc_ms(at)))
                        .unwrap_or_default()
                ),
                Err(_) => "unreadable".to_owned(),
            },
            None => "nothing deployed".to_owned(),
        };
    }
    let mut environments: Vec<String> = store
        .list_environments()
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    environments.sort();
    Ok(DriftPage {
        targets,
        pager,
        environments,
        agents: agents
            .into_iter()
            .filter(|a| a.revoked_at_ms.is_none())
            .map(|a| a.name)
            .collect(),
        kinds: KINDS,
        operator: signed.caller.require(Permission::Operate).is_ok(),
        csrf: signed.csrf.clone(),
    })
}

/// An age in seconds as an operator reads it: `42 s`, `5 min`, `3 h`, `2 d`.
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// The first 8 characters of an id.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `GET /console/drift`
pub async fn drift_page(
    State(state): State<ApiState>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    list_page(&state, &signed, query, View::Drift).await
}

/// The new-target form.
#[derive(Debug, Deserialize)]
pub struct NewTarget {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its environment.
    #[serde(default)]
    pub environment: String,
    /// Its kind.
    #[serde(default)]
    pub kind: String,
    /// The agent that drives it.
    #[serde(default)]
    pub agent: String,
    /// Settings, `KEY=VALUE` per line.
    #[serde(default)]
    pub settings: String,
}

/// `POST /console/targets`: as `POST /api/v1/targets` (operator).
pub async fn create_target(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<NewTarget>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let view = View::Drift(Listing::default());
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        caller.require(Permission::Operate).map_err(|e| e.0)?;
        let mut settings = BTreeMap::new();
        for line in form
            .settings
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| AppError::invalid(format!("setting `{line}` is not KEY=VALUE")))?;
            settings.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        let target = app
            .create_target(
                form.name.trim(),
                &form.environment,
                &form.kind,
                &form.agent,
                settings,
                false,
            )
            .await?;
        Ok((
            format!(
                "target {} created in {}: the next deployment there includes it",
                target.name, target.environment
            ),
            Extra::default(),
        ))
    })
    .await
}

/// `POST /console/targets/{name}/remediate`: as `POST /api/v1/targets/{name}/remediate`
/// (operator): what was last deployed to the target, deployed again.
pub async fn remediate_target(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Plain>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let view = View::Drift(Listing::default());
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        caller.require(Permission::Operate).map_err(|e| e.0)?;
        let deployment = app.remediate_target(&name, &caller.0.name).await?;
        Ok((
            format!(
                "remediating {name}: deployment {} redeploys {}@{}",
                deployment.id, deployment.release, deployment.version
            ),
            Extra::default(),
        ))
    })
    .await
}

/// The roll-back form.
#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// The environment.
    #[serde(default)]
    pub environment: String,
    /// The version to go back to (empty: the one before the current).
    #[serde(default)]
    pub to: String,
}

/// `POST /console/rollback`: as `POST /api/v1/environments/{name}/rollback` (operator).
pub async fn rollback_environment(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<RollbackForm>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let view = View::Drift(Listing::default());
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        caller.require(Permission::Operate).map_err(|e| e.0)?;
        let to = Some(form.to.trim()).filter(|t| !t.is_empty());
        let deployment = app.rollback(&form.environment, to, &caller.0).await?;
        Ok((
            format!(
                "rolling {} back to {}@{}: deployment {}",
                deployment.environment, deployment.release, deployment.version, deployment.id
            ),
            Extra::default(),
        ))
    })
    .await
}
