-- Tenants and role bindings. Keep in step with ../sqlite/0010_tenants.sql.
--
-- A tenant's objects live in a database of their own (on SQLite a file under
-- `<data-dir>/tenants/`, on PostgreSQL a schema `tenant_<name>`), built by these same
-- migrations; the `default` tenant's database is this one, so a data dir from before
-- tenants upgrades in place with everything in `default`. The two tables below are
-- read in the default tenant's database only, where users and tokens live too.
CREATE TABLE tenants (
    name          TEXT    NOT NULL PRIMARY KEY,
    created_at_ms BIGINT  NOT NULL,
    created_by    TEXT    NOT NULL
);

INSERT INTO tenants (name, created_at_ms, created_by) VALUES ('default', 0, 'stella');

-- A user's role in a tenant; `environment` narrows it to one environment ('' for the
-- whole tenant). Roles in `default` without an environment are `users.roles`.
CREATE TABLE role_bindings (
    user_id       TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant        TEXT    NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    role          TEXT    NOT NULL,
    environment   TEXT    NOT NULL DEFAULT '',
    created_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (user_id, tenant, role, environment)
);
CREATE INDEX role_bindings_tenant_idx ON role_bindings (tenant);

-- An OAuth2 client belongs to one tenant: its access tokens carry it (the `tenant`
-- claim) and act there. Clients from before tenants belong to `default`.
ALTER TABLE oauth_clients ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
