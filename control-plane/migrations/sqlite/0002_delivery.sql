-- Delivery schema: environments, targets, registries, releases, deployments, tasks, logs
-- and drift. Keep in step with ../postgres/0002_delivery.sql: same tables, columns and
-- meaning. Times are unix milliseconds (`*_at_ms`); JSON documents are TEXT; enums are
-- their `as_str()` names; booleans are 0 or 1.

CREATE TABLE environments (
    name              TEXT    NOT NULL PRIMARY KEY,
    -- The environment a release must reach first (`Environment::after`).
    after_environment TEXT    REFERENCES environments (name),
    -- `report` or `remediate`.
    drift_mode        TEXT    NOT NULL,
    created_at_ms     INTEGER NOT NULL
) STRICT;

CREATE TABLE targets (
    name          TEXT    NOT NULL PRIMARY KEY,
    environment   TEXT    NOT NULL REFERENCES environments (name),
    kind          TEXT    NOT NULL,
    agent_id      TEXT    NOT NULL REFERENCES agents (id),
    -- Kind-specific settings, a JSON object of strings.
    settings_json TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX targets_environment_idx ON targets (environment);
CREATE INDEX targets_agent_id_idx ON targets (agent_id);

CREATE TABLE registries (
    host            TEXT    NOT NULL PRIMARY KEY,
    insecure        INTEGER NOT NULL,
    username        TEXT,
    -- Sealed with the server's secrets key; the store never sees the plain password.
    password_sealed TEXT,
    updated_at_ms   INTEGER NOT NULL
) STRICT;

-- Releases are immutable: rows are inserted, never updated.
CREATE TABLE releases (
    name            TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    -- The components, a JSON array sorted by name.
    components_json TEXT    NOT NULL,
    created_by      TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;

CREATE INDEX releases_created_idx ON releases (created_at_ms);

CREATE TABLE deployments (
    id              TEXT    NOT NULL PRIMARY KEY,
    -- `promotion`, `rollback` or `remediation`.
    kind            TEXT    NOT NULL,
    environment     TEXT    NOT NULL REFERENCES environments (name),
    release_name    TEXT    NOT NULL,
    release_version TEXT    NOT NULL,
    decision_id     TEXT    NOT NULL,
    -- `pending`, `running`, `succeeded` or `failed`.
    state           TEXT    NOT NULL,
    message         TEXT,
    created_by      TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    finished_at_ms  INTEGER,
    FOREIGN KEY (release_name, release_version) REFERENCES releases (name, version)
) STRICT;

CREATE INDEX deployments_environment_created_idx ON deployments (environment, created_at_ms);

-- No foreign key to targets or agents: a task is history and outlives them.
CREATE TABLE tasks (
    id             TEXT    NOT NULL PRIMARY KEY,
    deployment_id  TEXT    NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    target         TEXT    NOT NULL,
    agent_id       TEXT    NOT NULL,
    -- Lease epoch, raised at every (re)assignment.
    epoch          INTEGER NOT NULL,
    -- `pending`, `assigned`, `succeeded` or `failed`.
    state          TEXT    NOT NULL,
    payload_json   TEXT    NOT NULL,
    message        TEXT,
    deadline_at_ms INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER
) STRICT;

CREATE INDEX tasks_agent_id_state_idx ON tasks (agent_id, state);
CREATE INDEX tasks_deployment_id_idx ON tasks (deployment_id);
CREATE INDEX tasks_target_state_finished_idx ON tasks (target, state, finished_at_ms);
-- Expiry scans only unfinished tasks.
CREATE INDEX tasks_open_deadline_idx ON tasks (deadline_at_ms)
    WHERE state IN ('pending', 'assigned');

CREATE TABLE logs (
    seq           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT    NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    -- Empty for lines the server writes.
    task_id       TEXT    NOT NULL,
    at_ms         INTEGER NOT NULL,
    message       TEXT    NOT NULL
) STRICT;

CREATE INDEX logs_deployment_id_seq_idx ON logs (deployment_id, seq);

-- One row per finding, reopened (resolved_at_ms cleared) when reported again. The primary
-- key also serves lookups by target. No foreign key: findings are history.
CREATE TABLE drift (
    target           TEXT    NOT NULL,
    -- Empty for target-wide findings.
    component        TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    detail           TEXT    NOT NULL,
    environment      TEXT    NOT NULL,
    agent_id         TEXT    NOT NULL,
    first_seen_at_ms INTEGER NOT NULL,
    last_seen_at_ms  INTEGER NOT NULL,
    resolved_at_ms   INTEGER,
    PRIMARY KEY (target, component, kind)
) STRICT;
