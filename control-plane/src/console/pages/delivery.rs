//! The pages of releases on their way: the dashboard and the pipeline; and their
//! forms (new release, promote, new environment).

#[allow(clippy::wildcard_imports)]
use super::*;

/// Releases shown on one page of the dashboard, newest first.
const RELEASES_PER_PAGE: usize = 50;

struct EnvHead {
    name: String,
    drift: usize,
}

struct Cell {
    text: String,
    class: String,
    href: String,
}

struct Row {
    name: String,
    version: String,
    cells: Vec<Cell>,
}

struct Waiting {
    id: String,
    release: String,
    environment: String,
    state: String,
    state_text: String,
    message: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub(super) struct Dashboard {
    envs: Vec<EnvHead>,
    rows: Vec<Row>,
    waiting: Vec<Waiting>,
    pager: Pager,
    operator: bool,
    admin: bool,
    csrf: String,
}

pub(super) async fn dashboard(signed: &Signed, listing: &Listing) -> Result<Dashboard, AppError> {
    let store = &signed.app.store;
    let environments = ordered(store.list_environments().await?);
    let releases: Vec<_> = store
        .list_releases(None)
        .await?
        .into_iter()
        .filter(|r| listing.keeps([format!("{}@{}", r.name, r.version).as_str()]))
        .collect();
    let (releases, pager) = listing.page_of(releases, RELEASES_PER_PAGE, "/", "releases");
    let drift = store.list_drift(None, false).await?;
    let mut drifted: HashMap<&str, std::collections::BTreeSet<&str>> = HashMap::new();
    for record in &drift {
        drifted
            .entry(record.environment.as_str())
            .or_default()
            .insert(record.target.as_str());
    }
    // The newest deployment of each (environment, release, version), and the current
    // release of each environment (its newest succeeded deployment).
    let mut cells: HashMap<(String, String, String), (String, String)> = HashMap::new();
    let mut current: HashMap<String, (String, String)> = HashMap::new();
    for env in &environments {
        let deployments = store.list_deployments(Some(&env.name), 200).await?;
        for deployment in &deployments {
            let key = (
                env.name.clone(),
                deployment.release.clone(),
                deployment.version.clone(),
            );
            cells
                .entry(key)
                .or_insert_with(|| (deployment.state.as_str().to_owned(), deployment.id.clone()));
        }
        if let Some(live) = deployments.iter().find(|d| d.state.as_str() == "succeeded") {
            current.insert(
                env.name.clone(),
                (live.release.clone(), live.version.clone()),
            );
        }
    }
    let promotions = store.list_promotions(None, None, 200).await?;
    let mut open: HashMap<(String, String, String), &crate::domain::Promotion> = HashMap::new();
    for promotion in &promotions {
        if matches!(
            promotion.state,
            PromotionState::AwaitingApproval | PromotionState::Blocked
        ) {
            open.entry((
                promotion.environment.clone(),
                promotion.release.clone(),
                promotion.version.clone(),
            ))
            .or_insert(promotion);
        }
    }
    let rows = releases
        .iter()
        .map(|release| Row {
            name: release.name.clone(),
            version: release.version.clone(),
            cells: environments
                .iter()
                .map(|env| {
                    let key = (
                        env.name.clone(),
                        release.name.clone(),
                        release.version.clone(),
                    );
                    let is_current = current
                        .get(&env.name)
                        .is_some_and(|(n, v)| *n == release.name && *v == release.version);
                    if let Some(promotion) = open.get(&key) {
                        return Cell {
                            text: state_text(promotion.state),
                            class: format!("state {}", promotion.state.as_str()),
                            href: format!("/console/promotions/{}", promotion.id),
                        };
                    }
                    match cells.get(&key) {
                        Some((state, _)) if is_current => Cell {
                            text: "current".to_owned(),
                            class: "state current".to_owned(),
                            href: String::new(),
                        },
                        Some((state, _)) if state == "succeeded" => Cell {
                            text: "previous".to_owned(),
                            class: "state previous".to_owned(),
                            href: String::new(),
                        },
                        Some((state, _)) => Cell {
                            text: state.clone(),
                            class: format!("state {state}"),
                            href: String::new(),
                        },
                        None => Cell {
                            text: String::new(),
                            class: String::new(),
                            href: String::new(),
                        },
                    }
                })
                .collect(),
        })
        .collect();
    let waiting = promotions
        .iter()
        .filter(|p| {
            matches!(
                p.state,
                PromotionState::AwaitingApproval | PromotionState::Blocked
            )
        })
        .map(|p| Waiting {
            id: p.id.clone(),
            release: format!("{}@{}", p.release, p.version),
            environment: p.environment.clone(),
            state: p.state.as_str().to_owned(),
            state_text: state_text(p.state),
            message: p.message.clone().unwrap_or_default(),
        })
        .collect();
    Ok(Dashboard {
        envs: environments
            .iter()
            .map(|env| EnvHead {
                name: env.name.clone(),
                drift: drifted.get(env.name.as_str()).map_or(0, |t| t.len()),
            })
            .collect(),
        rows,
        waiting,
        pager,
        operator: signed.caller.require(Permission::Operate).is_ok(),
        admin: signed.caller.require(Permission::Administer).is_ok(),
        csrf: signed.csrf.clone(),
    })
}

/// Environments in promotion order: each after the one it comes after, by name among
/// equals.
fn ordered(mut environments: Vec<crate::domain::Environment>) -> Vec<crate::domain::Environment> {
    environments.sort_by(|a, b| a.name.cmp(&b.name));
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    let by_name: HashMap<String, Option<String>> = environments
        .iter()
        .map(|e| (e.name.clone(), e.after.clone()))
        .collect();
    for env in &environments {
        let mut d = 0;
        let mut at = env.after.clone();
        while let Some(name) = at {
            d += 1;
            if d > by_name.len() {
                break;
            }
            at = by_name.get(&name).cloned().flatten();
        }
        depth.insert(env.name.clone(), d);
    }
    environments.sort_by_key(|e| (depth.get(&e.name).copied().unwrap_or(0), e.name.clone()));
    environments
}

struct PipelineEnv {
    name: String,
    current: String,
    after: String,
    approvals: u32,
    freeze: String,
    waiting: String,
}

#[derive(Template)]
#[template(path = "pipeline.html")]
pub(super) struct Pipeline {
    envs: Vec<PipelineEnv>,
    csrf: String,
}

pub(super) async fn pipeline(signed: &Signed) -> Result<Pipeline, AppError> {
    let store = &signed.app.store;
    let environments = ordered(store.list_environments().await?);
    let promotions = store.list_promotions(None, None, 200).await?;
    let mut envs = Vec::new();
    for env in environments {
        let deployments = store.list_deployments(Some(&env.name), 50).await?;
        let current = deployments
            .iter()
            .find(|d| d.state.as_str() == "succeeded")
            .map_or_else(
                || "none".to_owned(),
                |d| format!("{}@{}", d.release, d.version),
            );
        let waiting: Vec<String> = promotions
            .iter()
            .filter(|p| {
                p.environment == env.name
                    && matches!(
                        p.state,
                        PromotionState::AwaitingApproval | PromotionState::Blocked
                    )
            })
            .map(|p| format!("{}@{} ({})", p.release, p.version, state_text(p.state)))
            .collect();
        envs.push(PipelineEnv {
            current,
            after: env.after.clone().unwrap_or_else(|| "—".to_owned()),
            approvals: env.gates.approvals_required,
            freeze: freeze_state(&env.gates.freeze, now_ms()),
            waiting: if waiting.is_empty() {
                "nothing".to_owned()
            } else {
                waiting.join(", ")
            },
            name: env.name,
        });
    }
    Ok(Pipeline {
        envs,
        csrf: signed.csrf.clone(),
    })
}
/// `GET /`
pub async fn dashboard_page(
    State(state): State<ApiState>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    list_page(&state, &signed, query, View::Dashboard).await
}

/// `GET /console/pipeline`
pub async fn pipeline_page(State(state): State<ApiState>, signed: Signed) -> Response {
    show(&state, &signed, &View::Pipeline).await
}

/// The new-environment form of the pipeline page.
#[derive(Debug, Deserialize)]
pub struct NewEnvironment {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The environment it comes after (empty: none).
    #[serde(default)]
    pub after: String,
    /// Approvals a promotion into it needs.
    #[serde(default)]
    pub approvals: String,
    /// `true` when images without a scan report may be promoted into it.
    #[serde(default)]
    pub allow_unscanned: Option<String>,
    /// Freeze windows, `CRON/DURATION[@TZ]` one per line.
    #[serde(default)]
    pub freeze: String,
}

/// `POST /console/environments`: as `POST /api/v1/environments` (operator).
pub async fn create_environment(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<NewEnvironment>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Pipeline,
        || async move {
            caller.require(Permission::Operate).map_err(|e| e.0)?;
            let approvals = match form.approvals.trim() {
                "" => None,
                text => Some(text.parse::<u32>().map_err(|_| {
                    AppError::invalid(format!("approvals `{text}` is not a number"))
                })?),
            };
            let settings = crate::app::EnvironmentChange {
                after: Some(Some(form.after.clone()).filter(|a| !a.is_empty())),
                approvals_required: approvals,
                allow_unscanned: Some(form.allow_unscanned.as_deref() == Some("true")),
                freeze: Some(
                    form.freeze
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ),
                ..crate::app::EnvironmentChange::default()
            };
            let env = app.create_environment(form.name.trim(), settings).await?;
            Ok((
                format!("environment {} created", env.name),
                Extra::default(),
            ))
        },
    )
    .await
}

/// The promote form of the dashboard.
#[derive(Debug, Deserialize)]
pub struct PromoteForm {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// `NAME@VERSION`.
    #[serde(default)]
    pub release: String,
    /// The environment.
    #[serde(default)]
    pub environment: String,
    /// Why a freeze is overridden (admins; empty: no override).
    #[serde(default)]
    pub break_glass: String,
}

/// `POST /console/promotions`: as `POST /api/v1/promotions` (operator, or one narrowed
/// to the environment); then the promotion's page, which follows it live.
pub async fn promote(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<PromoteForm>,
) -> Response {
    let checked = same_origin(&headers)
        .and_then(|()| check_csrf(&signed, &form.csrf))
        .and_then(|()| {
            signed
                .caller
                .require_in(Permission::Operate, &form.environment)
                .map_err(|e| e.0)
        });
    let outcome = match checked {
        Ok(()) => match form.release.split_once('@') {
            Some((name, version)) => {
                signed
                    .app
                    .promote(
                        name,
                        version,
                        &form.environment,
                        &signed.caller.0,
                        Some(form.break_glass.trim().to_owned()).filter(|r| !r.is_empty()),
                    )
                    .await
            }
            None => Err(AppError::invalid(format!(
                "release `{}` is not NAME@VERSION",
                form.release
            ))),
        },
        Err(error) => Err(error),
    };
    match outcome {
        Ok(detail) => {
            Redirect::to(&format!("/console/promotions/{}", detail.promotion.id)).into_response()
        }
        Err(error) => {
            error_page(
                &state,
                &signed,
                &View::Dashboard(Listing::default()),
                &error,
            )
            .await
        }
    }
}

/// The new-release form of the dashboard.
#[derive(Debug, Deserialize)]
pub struct NewRelease {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// Components, `NAME=IMAGE` per line.
    #[serde(default)]
    pub components: String,
}

/// `POST /console/releases`: as `POST /api/v1/releases` (operator): every tag resolved
/// to its digest, once, now.
pub async fn create_release(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<NewRelease>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let view = View::Dashboard(Listing::default());
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        caller.require(Permission::Operate).map_err(|e| e.0)?;
        let mut components = Vec::new();
        for line in form
            .components
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (name, image) = line.split_once('=').ok_or_else(|| {
                AppError::invalid(format!("component `{line}` is not NAME=IMAGE"))
            })?;
            components.push(crate::app::ComponentRequest {
                name: name.trim().to_owned(),
                image: image.trim().to_owned(),
            });
        }
        let (release, created) = app
            .create_release(form.name.trim(), form.version.trim(), components, &caller.0)
            .await?;
        let digests: Vec<String> = release
            .components
            .iter()
            .map(|c| format!("{} {}", c.name, c.digest))
            .collect();
        Ok((
            format!(
                "release {}@{} {}: {}",
                release.name,
                release.version,
                if created {
                    "created"
                } else {
                    "exists already, unchanged"
                },
                digests.join(", ")
            ),
            Extra::default(),
        ))
    })
    .await
}

/// Whether an environment is frozen now and until when, or when its next freeze
/// starts, with its windows.
fn freeze_state(specs: &[String], now: i64) -> String {
    use stella_decision::freeze::{active_freeze, FreezeWindow};
    if specs.is_empty() {
        return "no freeze windows".to_owned();
    }
    let windows: Vec<FreezeWindow> = specs
        .iter()
        .filter_map(|spec| FreezeWindow::parse(spec).ok())
        .collect();
    let state = match active_freeze(&windows, now) {
        Some(active) => format!(
            "FROZEN until {} ({})",
            format_utc_ms(active.ends_at_ms),
            active.window
        ),
        None => match windows.iter().filter_map(|w| w.next_start_after(now)).min() {
            Some(next) => format!("open; next freeze from {}", format_utc_ms(next)),
            None => "open".to_owned(),
        },
    };
    format!("{state}; windows: {}", specs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::freeze_state;

    #[test]
    fn the_freeze_state_says_until_when_or_from_when() {
        // 2026-12-04T12:00:00Z, a Friday.
        let noon = 1_796_385_600_000;
        let mornings = vec!["0 10 * * */4h".to_owned()];
        let state = freeze_state(&mornings, noon);
        assert!(
            state.starts_with("FROZEN until 2026-12-04T14:00:00"),
            "{state}"
        );
        let evenings = vec!["0 18 * * */2h".to_owned()];
        let open = freeze_state(&evenings, noon);
        assert!(
            open.starts_with("open; next freeze from 2026-12-04T18:00:00"),
            "{open}"
        );
        assert_eq!(freeze_state(&[], noon), "no freeze windows");
    }
}
