//! Tenants, role bindings, and where a tenant's database is.
//!
//! A tenant's objects live in a database of their own with the same schema: on SQLite
//! the file `<data-dir>/tenants/<name>.db`, on PostgreSQL the schema `tenant_<name>` of
//! the one database, reached by setting `search_path` on every connection of the
//! tenant's pool. The `default` tenant's database is the server's own, which also
//! holds what belongs to no tenant (users, tokens, clients, tenants and bindings).

use std::path::Path;

use super::error::{database, unique};
use super::{Backend, Store, StoreError};
use crate::domain::{Role, RoleBinding, Tenant, TenantId};

impl Store {
    /// The URL of `tenant`'s database, given the server's (`default`'s) URL.
    pub fn tenant_url(default_url: &str, data_dir: &Path, tenant: &TenantId) -> String {
        if tenant.is_default() {
            return default_url.to_owned();
        }
        match Backend::from_url(default_url) {
            Ok(Backend::Postgres) => {
                let separator = if default_url.contains('?') { '&' } else { '?' };
                format!(
                    "{default_url}{separator}options[search_path]={}",
                    tenant.schema()
                )
            }
            _ => format!(
                "sqlite://{}?mode=rwc",
                data_dir
                    .join("tenants")
                    .join(format!("{tenant}.db"))
                    .display()
            ),
        }
    }

    /// Creates the PostgreSQL schema of `tenant` if it is missing (nothing to do on
    /// SQLite, where the file is created on connect).
    pub async fn create_tenant_schema(&self, tenant: &TenantId) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres || tenant.is_default() {
            return Ok(());
        }
        // The schema name is built from a validated tenant name ([a-z0-9_] only), so it
        // needs no quoting; identifiers cannot be bound as parameters.
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", tenant.schema()))
            .execute(self.writer())
            .await
            .map_err(database("creating a tenant's schema"))?;
        Ok(())
    }

    /// Drops the PostgreSQL schema of `tenant` and everything in it.
    pub async fn drop_tenant_schema(&self, tenant: &TenantId) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres || tenant.is_default() {
            return Ok(());
        }
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            tenant.schema()
        ))
        .execute(self.writer())
        .await
        .map_err(database("dropping a tenant's schema"))?;
        Ok(())
    }

    /// Records a new tenant; `Conflict` if the name is taken.
    pub async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tenants (name, created_at_ms, created_by) VALUES ($1, $2, $3)")
            .bind(tenant.name.as_str())
            .bind(tenant.created_at_ms)
            .bind(tenant.created_by.as_str())
            .execute(self.writer())
            .await
            .map_err(unique("creating a tenant", "tenant", tenant.name.as_str()))?;
        Ok(())
    }

    /// Every tenant, by name.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        sqlx::query_as::<_, (String, i64, String)>(
            "SELECT name, created_at_ms, created_by FROM tenants ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing tenants"))?
        .into_iter()
        .map(tenant_of_row)
        .collect()
    }

    /// The tenant with this name; `NotFound` if there is none.
    pub async fn find_tenant(&self, name: &TenantId) -> Result<Tenant, StoreError> {
        sqlx::query_as::<_, (String, i64, String)>(
            "SELECT name, created_at_ms, created_by FROM tenants WHERE name = $1",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a tenant"))?
        .map(tenant_of_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound {
            entity: "tenant",
            key: name.to_string(),
        })
    }

    /// Forgets a tenant and its bindings; `NotFound` if there is none.
    pub async fn delete_tenant(&self, name: &TenantId) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM tenants WHERE name = $1")
            .bind(name.as_str())
            .execute(self.writer())
            .await
            .map_err(database("deleting a tenant"))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "tenant",
                key: name.to_string(),
            });
        }
        Ok(())
    }

    /// How many environments and agents (revoked ones included) this database holds: a
    /// tenant is deleted only when it has none.
    pub async fn count_owned_objects(&self) -> Result<(i64, i64), StoreError> {
        let (environments, agents) = sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT COUNT(*) FROM environments), (SELECT COUNT(*) FROM agents)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(database("counting a tenant's objects"))?;
        Ok((environments, agents))
    }

    /// Whether this database holds the join token with this hash (used or not): which
    /// tenant an enrolment belongs to.
    pub async fn has_join_token(&self, hash: &str) -> Result<bool, StoreError> {
        let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM join_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_one(&self.pool)
            .await
            .map_err(database("looking up a join token"))?;
        Ok(found > 0)
    }

    /// Whether this database holds the agent with this id (revoked or not): which
    /// tenant an agent's session belongs to. Deleted agents are remembered too, so a
    /// deleted agent's certificate is refused by its own tenant.
    pub async fn has_agent(&self, id: &str) -> Result<bool, StoreError> {
        let found: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM agents WHERE id = $1) \
             + (SELECT COUNT(*) FROM deleted_agents WHERE id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(database("looking up an agent"))?;
        Ok(found > 0)
    }

    /// Gives a user a role in a tenant (idempotent); `NotFound` for an unknown user or
    /// tenant.
    pub async fn put_role_binding(
        &self,
        user_id: &str,
        binding: &RoleBinding,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO role_bindings (user_id, tenant, role, environment, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(binding.tenant.as_str())
        .bind(binding.role.as_str())
        .bind(binding.environment.as_deref().unwrap_or(""))
        .bind(at_ms)
        .execute(self.writer())
        .await
        .map_err(|source| match &source {
            sqlx::Error::Database(e) if e.is_foreign_key_violation() => StoreError::NotFound {
                entity: "tenant",
                key: binding.tenant.to_string(),
            },
            _ => StoreError::Database {
                op: "binding a role",
                source,
            },
        })?;
        Ok(())
    }

    /// Takes a binding away; `NotFound` if the user did not hold it.
    pub async fn delete_role_binding(
        &self,
        user_id: &str,
        binding: &RoleBinding,
    ) -> Result<(), StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM role_bindings WHERE user_id = $1 AND tenant = $2 AND role = $3 \
             AND environment = $4",
        )
        .bind(user_id)
        .bind(binding.tenant.as_str())
        .bind(binding.role.as_str())
        .bind(binding.environment.as_deref().unwrap_or(""))
        .execute(self.writer())
        .await
        .map_err(database("unbinding a role"))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                entity: "role binding",
                key: format!("{} in {}", binding.role, binding.tenant),
            });
        }
        Ok(())
    }

    /// Every binding a user holds, ordered by tenant, role and environment.
    pub async fn role_bindings(&self, user_id: &str) -> Result<Vec<RoleBinding>, StoreError> {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT tenant, role, environment FROM role_bindings WHERE user_id = $1 \
             ORDER BY tenant, role, environment",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading role bindings"))?
        .into_iter()
        .map(|(tenant, role, environment)| {
            let corrupt = |detail: String| StoreError::Corrupt {
                what: "role binding",
                detail,
            };
            Ok(RoleBinding {
                tenant: tenant.parse().map_err(|e| corrupt(format!("{e}")))?,
                role: role.parse::<Role>().map_err(|e| corrupt(format!("{e}")))?,
                environment: (!environment.is_empty()).then_some(environment),
            })
        })
        .collect()
    }
}

fn tenant_of_row(
    (name, created_at_ms, created_by): (String, i64, String),
) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        name: name.parse().map_err(|e| StoreError::Corrupt {
            what: "tenant name",
            detail: format!("{e}"),
        })?,
        created_at_ms,
        created_by,
    })
}
