-- Routers (RFC 0005): what sends a service's traffic to its versions, each driven by
-- one agent. Keep in step with ../sqlite/0012_routers.sql. Tenant-owned: every
-- tenant's database has its own, and the name is unique in it (the primary key is what
-- refuses a second router of the same name, not a read before the write).
CREATE TABLE routers (
    name          TEXT    NOT NULL PRIMARY KEY,
    -- nginx | haproxy | traefik | alb
    kind          TEXT    NOT NULL,
    agent_id      TEXT    NOT NULL REFERENCES agents (id),
    -- Kind-specific settings, a JSON object of strings.
    settings_json TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL
);

CREATE INDEX routers_agent_id_idx ON routers (agent_id);
