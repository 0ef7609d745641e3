//! Users (server admins, as the API's `/api/v1/users`): every user with its roles,
//! a new user with its first API token shown once, and a user's console password.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::domain::Role;

struct UserRow {
    name: String,
    roles: String,
    created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
pub(super) struct UsersPage {
    users: Vec<UserRow>,
    pager: Pager,
    names: Vec<String>,
    roles: Vec<&'static str>,
    csrf: String,
}

/// Users listed on one page.
const USERS_PER_PAGE: usize = 100;

pub(super) async fn users(signed: &Signed, listing: &Listing) -> Result<UsersPage, AppError> {
    signed
        .caller
        .require_server(Permission::Administer)
        .map_err(|e| e.0)?;
    let all = signed.home.store.list_users().await?;
    let names = all.iter().map(|u| u.name.clone()).collect();
    let rows: Vec<UserRow> = all
        .into_iter()
        .map(|user| UserRow {
            roles: user
                .roles
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            created: format_utc_ms(user.created_at_ms),
            name: user.name,
        })
        .filter(|row| listing.keeps([row.name.as_str(), &row.roles]))
        .collect();
    let (users, pager) = listing.page_of(rows, USERS_PER_PAGE, "/console/users", "users");
    Ok(UsersPage {
        users,
        pager,
        names,
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        csrf: signed.csrf.clone(),
    })
}

/// `GET /console/users` (server admin)
pub async fn users_page(
    State(state): State<ApiState>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    list_page(&state, &signed, query, View::Users).await
}

/// The new-user form.
#[derive(Debug, Deserialize)]
pub struct NewUser {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its roles, separated by commas or spaces.
    #[serde(default)]
    pub roles: String,
    /// A console password (empty: none yet).
    #[serde(default)]
    pub password: String,
}

/// `POST /console/users`: as `POST /api/v1/users` (server admin), and the password
/// as `PUT /api/v1/users/{name}/password` when one is given.
pub async fn create_user(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<NewUser>,
) -> Response {
    let home = signed.home.clone();
    let caller = signed.caller.clone();
    let view = View::Users(Listing::default());
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        caller
            .require_server(Permission::Administer)
            .map_err(|e| e.0)?;
        let mut roles = Vec::new();
        for role in form.roles.split([',', ' ']).filter(|r| !r.is_empty()) {
            roles.push(role.parse::<Role>().map_err(|_| {
                AppError::invalid(format!(
                    "unknown role `{role}`: use viewer, operator, approver or admin"
                ))
            })?);
        }
        let password = Some(form.password).filter(|p| !p.is_empty());
        // Checked before the user is made, so a short one leaves nothing behind.
        let min = crate::console::session::MIN_PASSWORD_CHARS;
        if password.as_ref().is_some_and(|p| p.chars().count() < min) {
            return Err(AppError::invalid(format!(
                "a password needs at least {min} characters"
            )));
        }
        let (user, token) = home.create_user(form.name.trim(), roles).await?;
        if let Some(password) = password {
            crate::api::users::store_password(&home, &user, password).await?;
        }
        Ok((
            format!(
                "user {} created; its API token, shown this once: {token}",
                user.name
            ),
            Extra::default(),
        ))
    })
    .await
}

/// The password form.
#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    /// The session's token.
    #[serde(default)]
    pub csrf: String,
    /// The user.
    #[serde(default)]
    pub name: String,
    /// The new password.
    #[serde(default)]
    pub password: String,
}

/// `POST /console/users/password`: as `PUT /api/v1/users/{name}/password` (server
/// admin).
pub async fn set_password(
    State(state): State<ApiState>,
    signed: Signed,
    headers: http::HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let home = signed.home.clone();
    let caller = signed.caller.clone();
    let view = View::Users(Listing::default());
    act(&state, &signed, &headers, &form.csrf, view, || async move {
        caller
            .require_server(Permission::Administer)
            .map_err(|e| e.0)?;
        let user = home.store.find_user(&form.name).await?;
        crate::api::users::store_password(&home, &user, form.password).await?;
        Ok((
            format!("{}'s console password is set", user.name),
            Extra::default(),
        ))
    })
    .await
}
