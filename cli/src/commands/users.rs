//! `stella user …`: users, roles and API tokens (admin only).

use clap::Subcommand;
use serde_json::json;

use super::{path, rows, Context};
use crate::output::{self, cell};

/// `stella user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints its first API token once.
    Create {
        /// User name.
        name: String,
        /// Roles: viewer, operator, approver, admin (repeatable or comma-separated).
        #[arg(long = "role", required = true, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// List users.
    List,
    /// Print a new API token for a user.
    Token {
        /// User name.
        name: String,
    },
    /// Replace a user's roles (the last admin keeps admin).
    Update {
        /// User name.
        name: String,
        /// Roles: viewer, operator, approver, admin (repeatable or comma-separated).
        #[arg(long = "role", required = true, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Delete a user; its tokens stop working at once. Not yourself, not the last admin.
    #[command(visible_alias = "rm")]
    Delete {
        /// User name.
        name: String,
    },
    /// Give a user a role in the tenant of `--tenant` (`default` without it), or only
    /// for one environment of it with `--env`.
    Bind {
        /// User name.
        name: String,
        /// viewer, operator, approver or admin.
        #[arg(long)]
        role: String,
        /// Narrow the role to this environment (e.g. approver for `prod` only).
        #[arg(long = "env", value_name = "ENV")]
        environment: Option<String>,
    },
    /// Take a role binding away (the same `--tenant`, `--role` and `--env` it was
    /// given with).
    Unbind {
        /// User name.
        name: String,
        /// viewer, operator, approver or admin.
        #[arg(long)]
        role: String,
        /// The environment the role was narrowed to.
        #[arg(long = "env", value_name = "ENV")]
        environment: Option<String>,
    },
    /// A user's role bindings in every tenant.
    Bindings {
        /// User name.
        name: String,
    },
    /// Set a user's web console password, read from standard input (at least 12
    /// characters): `printf %s "$PW" | stella user password alice`. Without NAME, your
    /// own.
    Password {
        /// User name (admins); your own password without it.
        name: Option<String>,
    },
}

/// `stella user …`.
pub async fn user(context: &Context, command: UserCommand) -> anyhow::Result<()> {
    // Users and their bindings are the server's: managed in `default`, whatever tenant
    // `--tenant` names (for `bind` and `unbind`, the binding's tenant).
    let client = &context.client.in_default_tenant();
    let tenant = context.client.tenant().unwrap_or("default").to_owned();
    match command {
        UserCommand::Bind {
            name,
            role,
            environment,
        } => {
            let bound = client
                .post(
                    &format!("/users/{}/bindings", path(&name)),
                    json!({ "tenant": tenant, "role": role, "environment": environment }),
                )
                .await?;
            context.print(&bound, |bound| {
                println!(
                    "{name} is {} in tenant {}{}",
                    cell(bound, "/role"),
                    cell(bound, "/tenant"),
                    bound
                        .pointer("/environment")
                        .and_then(serde_json::Value::as_str)
                        .map(|env| format!(" for environment {env}"))
                        .unwrap_or_default()
                );
            });
        }
        UserCommand::Unbind {
            name,
            role,
            environment,
        } => {
            let mut pairs = vec![
                ("tenant", Some(tenant.as_str())),
                ("role", Some(role.as_str())),
            ];
            pairs.push(("environment", environment.as_deref()));
            client
                .delete(&format!(
                    "/users/{}/bindings{}",
                    path(&name),
                    super::query(&pairs)
                ))
                .await?;
            let value = json!({ "unbound": { "user": name, "tenant": tenant, "role": role, "environment": environment } });
            context.print(&value, |_| {
                println!("unbound {role} in tenant {tenant} from {name}");
            });
        }
        UserCommand::Bindings { name } => {
            let bindings = client
                .get(&format!("/users/{}/bindings", path(&name)))
                .await?;
            context.print(&bindings, |bindings| {
                rows(
                    bindings,
                    &["tenant", "role", "environment"],
                    &["/tenant", "/role", "/environment"],
                );
            });
        }
        UserCommand::Create { name, roles } => {
            let created = client
                .post("/users", json!({ "name": name, "roles": roles }))
                .await?;
            context.print(&created, |created| {
                println!("{}", cell(created, "/token"));
                context.note(&format!(
                    "created user {} with roles {}; the token above is shown only once",
                    cell(created, "/user/name"),
                    cell(created, "/user/roles")
                ));
            });
        }
        UserCommand::List => {
            let users = client.get("/users").await?;
            context.print(&users, |users| {
                rows(
                    users,
                    &["name", "roles", "created", "id"],
                    &["/name", "/roles", "/created_at", "/id"],
                );
            });
        }
        UserCommand::Update { name, roles } => {
            let user = client
                .patch(
                    &format!("/users/{}", path(&name)),
                    json!({ "roles": roles }),
                )
                .await?;
            context.print(&user, |user| {
                output::details(
                    user,
                    &[("name", "/name"), ("roles", "/roles"), ("id", "/id")],
                );
            });
        }
        UserCommand::Delete { name } => {
            client.delete(&format!("/users/{}", path(&name))).await?;
            context.deleted("user", &name);
        }
        UserCommand::Password { name } => {
            let password = super::read_stdin("password")?;
            let path = match &name {
                Some(name) => format!("/users/{}/password", path(name)),
                None => "/password".to_owned(),
            };
            client.put(&path, json!({ "password": password })).await?;
            let who = name.unwrap_or_else(|| "your".to_owned());
            let value = json!({ "password_set": { "user": who } });
            context.print(&value, |_| println!("console password set for {who}"));
        }
        UserCommand::Token { name } => {
            let token = client
                .post(&format!("/users/{}/tokens", path(&name)), json!({}))
                .await?;
            context.print(&token, |token| println!("{}", cell(token, "/token")));
        }
    }
    Ok(())
}

/// `stella whoami`: who the token belongs to.
pub async fn whoami(context: &Context) -> anyhow::Result<()> {
    let user = context.client.get("/whoami").await?;
    context.print(&user, |user| {
        output::details(
            user,
            &[
                ("name", "/name"),
                ("tenant", "/tenant"),
                ("roles", "/roles"),
                ("created", "/created_at"),
                ("id", "/id"),
            ],
        );
        if let Some(bindings) = user.get("bindings").and_then(serde_json::Value::as_array) {
            for binding in bindings {
                println!(
                    "binding: {} in {}{}",
                    cell(binding, "/role"),
                    cell(binding, "/tenant"),
                    binding
                        .pointer("/environment")
                        .and_then(serde_json::Value::as_str)
                        .map(|env| format!(" (environment {env})"))
                        .unwrap_or_default()
                );
            }
        }
    });
    Ok(())
}

/// `stella tenant …`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant: a space of its own; bind users to it with `user bind`.
    Create {
        /// 1 to 48 lowercase letters, digits or '-'.
        name: String,
    },
    /// List tenants (a server admin sees all, anyone else those they hold a role in).
    List,
    /// Delete an empty tenant (no environment, no agent).
    #[command(visible_alias = "rm")]
    Delete {
        /// Tenant name.
        name: String,
    },
}

/// `stella tenant …`: always in `default`, where tenants are managed.
pub async fn tenant(context: &Context, command: TenantCommand) -> anyhow::Result<()> {
    let client = &context.client.in_default_tenant();
    match command {
        TenantCommand::Create { name } => {
            let created = client.post("/tenants", json!({ "name": name })).await?;
            context.print(&created, |created| {
                println!("created tenant {}", cell(created, "/name"));
            });
        }
        TenantCommand::List => {
            let tenants = client.get("/tenants").await?;
            context.print(&tenants, |tenants| {
                rows(
                    tenants,
                    &["name", "created", "by"],
                    &["/name", "/created_at", "/created_by"],
                );
            });
        }
        TenantCommand::Delete { name } => {
            client.delete(&format!("/tenants/{}", path(&name))).await?;
            context.deleted("tenant", &name);
        }
    }
    Ok(())
}
