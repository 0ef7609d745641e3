//! The agents page: enrolment (a join token and its install command) and revocation.

#[allow(clippy::wildcard_imports)]
use super::*;

struct AgentRow {
    name: String,
    state: String,
    version: String,
    capabilities: String,
    host: String,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
pub(super) struct AgentsPage {
    agents: Vec<AgentRow>,
    pager: Pager,
    csrf: String,
    install: String,
    expires: String,
}

/// Agents listed on one page.
const AGENTS_PER_PAGE: usize = 100;

pub(super) async fn agents(
    signed: &Signed,
    listing: &Listing,
    extra: &Extra,
) -> Result<AgentsPage, AppError> {
    let app = &signed.app;
    let now = now_ms();
    let interval = app.config.heartbeat_interval_ms();
    let agents = app
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|agent| AgentRow {
            state: agent.state(now, interval).as_str().to_owned(),
            version: agent.agent_version.clone().unwrap_or_default(),
            capabilities: agent.capabilities.join(", "),
            host: agent.host.as_ref().map_or_else(String::new, |h| {
                format!(
                    "{} ({} {}, {})",
                    h.hostname, h.os_name, h.os_version, h.arch
                )
            }),
            last_seen: agent
                .last_seen_at_ms
                .map_or_else(|| "never".to_owned(), format_utc_ms),
            name: agent.name,
        })
        .filter(|row| {
            listing.keeps([
                row.name.as_str(),
                row.state.as_str(),
                row.version.as_str(),
                row.capabilities.as_str(),
                row.host.as_str(),
            ])
        })
        .collect();
    let (agents, pager) = listing.page_of(agents, AGENTS_PER_PAGE, "/console/agents", "agents");
    let (install, expires) = extra.install.clone().unwrap_or_default();
    Ok(AgentsPage {
        agents,
        pager,
        csrf: signed.csrf.clone(),
        install,
        expires,
    })
}

/// `GET /console/agents`
pub async fn agents_page(
    State(state): State<ApiState>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    list_page(&state, &signed, query, View::Agents).await
}

/// `POST /console/agents/{agent}/revoke`
pub async fn revoke_agent(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Path(agent): Path<String>,
    Form(form): Form<Plain>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Agents(Listing::default()),
        || async move {
            caller.require(Permission::Administer).map_err(|e| e.0)?;
            let revoked = app
                .revoke_agent(
                    &agent,
                    &format!("revoked in the console by {}", caller.0.name),
                )
                .await?;
            Ok((format!("agent {} revoked", revoked.name), Extra::default()))
        },
    )
    .await
}

/// `POST /console/agents/join-tokens`: a join token and the command that installs an
/// agent with it, for this server as the browser reached it.
pub async fn create_join_token(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<Plain>,
) -> Response {
    let app = signed.app.clone();
    let caller = signed.caller.clone();
    let server = server_url(&state, &headers);
    let pin = state
        .app
        .api_tls
        .as_ref()
        .and_then(|tls| tls.public_key_pin());
    act(
        &state,
        &signed,
        &headers,
        &form.csrf,
        View::Agents(Listing::default()),
        || async move {
            caller.require(Permission::Administer).map_err(|e| e.0)?;
            let issued = app.create_join_token(&caller.0, None).await?;
            let command = install_command(&server, &issued.token, pin.as_deref());
            Ok((
                "join token created: copy the command below".to_owned(),
                Extra {
                    install: Some((command, format_utc_ms(issued.expires_at_ms))),
                    live: false,
                },
            ))
        },
    )
    .await
}

/// This server's URL as the browser reached it.
fn server_url(state: &ApiState, headers: &http::HeaderMap) -> String {
    let scheme = if state.app.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// The one command that installs and enrols an agent, as `stella agent token create
/// --install` prints it.
fn install_command(server: &str, token: &str, pin: Option<&str>) -> String {
    let script = format!("{server}/install/agent.sh");
    match pin.filter(|_| server.starts_with("https://")) {
        Some(pin) => format!(
            "curl -fsSk --pinnedpubkey '{pin}' '{script}' | sudo sh -s -- --server '{server}' --token '{token}' --pin '{pin}'"
        ),
        None => format!(
            "curl -fsS '{script}' | sudo sh -s -- --server '{server}' --token '{token}'"
        ),
    }
}
