-- Task-pack runs (the workflow engine). Keep in step with ../sqlite/0006_runs.sql.
--
-- A run is a compiled plan and the stored state of its steps. The replica driving a
-- run holds its lease (`lease_owner` until `lease_expires_at_ms`); every claim raises
-- `lease_epoch`, and a step's state is written only under the epoch that holds the
-- lease, so a replica that lost a run cannot write into it any more.

CREATE TABLE runs (
    tenant              TEXT    NOT NULL,
    id                  TEXT    NOT NULL,
    plan_hash           TEXT    NOT NULL,
    -- The compiled plan (`stella.pack-plan.v1`), canonical JSON.
    plan_json           TEXT    NOT NULL,
    manifest            TEXT    NOT NULL,
    inputs_json         TEXT    NOT NULL,
    -- `Running`, `Waiting`, `Succeeded`, `Failed`, `Cancelled`.
    status              TEXT    NOT NULL,
    cancel_requested    BIGINT  NOT NULL DEFAULT 0,
    created_by          TEXT    NOT NULL,
    created_at_ms       BIGINT  NOT NULL,
    updated_at_ms       BIGINT  NOT NULL,
    finished_at_ms      BIGINT ,
    lease_owner         TEXT,
    lease_expires_at_ms BIGINT ,
    lease_epoch         BIGINT  NOT NULL DEFAULT 0,
    -- The next log line's number.
    log_seq             BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX runs_active_idx ON runs (status, lease_expires_at_ms);
CREATE INDEX runs_created_idx ON runs (tenant, created_at_ms);

-- One row per step instance that has a state (`rollout[1].health` inside loops).
CREATE TABLE run_steps (
    tenant             TEXT    NOT NULL,
    run_id             TEXT    NOT NULL,
    key                TEXT    NOT NULL,
    -- `Pending`, `Running`, `Succeeded`, `Failed`, `Skipped`, `Waiting`.
    status             TEXT    NOT NULL,
    attempts           BIGINT  NOT NULL,
    last_transition_ms BIGINT ,
    reason             TEXT,
    outputs_json       TEXT,
    -- The lease epoch the step was last dispatched under.
    epoch              BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, run_id, key),
    FOREIGN KEY (tenant, run_id) REFERENCES runs (tenant, id) ON DELETE CASCADE
);

CREATE TABLE run_approvals (
    tenant        TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    approval_id   TEXT    NOT NULL,
    -- `approved`, `rejected`, `expired`.
    decision      TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    summary       TEXT,
    decided_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (tenant, run_id, approval_id),
    FOREIGN KEY (tenant, run_id) REFERENCES runs (tenant, id) ON DELETE CASCADE
);

-- The run's log, numbered from 0; a line is stored once per number.
CREATE TABLE run_logs (
    tenant        TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    at_ms         BIGINT  NOT NULL,
    level         TEXT    NOT NULL,
    event_type    TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    step_id       TEXT,
    metadata_json TEXT,
    PRIMARY KEY (tenant, run_id, seq),
    FOREIGN KEY (tenant, run_id) REFERENCES runs (tenant, id) ON DELETE CASCADE
);

-- Pack outputs captured when the run finished; file contents base64, bounded.
CREATE TABLE run_artifacts (
    tenant          TEXT    NOT NULL,
    run_id          TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    -- `file` or `object`.
    kind            TEXT    NOT NULL,
    source_path     TEXT,
    stored_path     TEXT,
    -- `pending`, `captured`, `failed`.
    status          TEXT    NOT NULL,
    notes           TEXT,
    captured_at_ms  BIGINT ,
    expression_json TEXT,
    content_base64  TEXT,
    PRIMARY KEY (tenant, run_id, name),
    FOREIGN KEY (tenant, run_id) REFERENCES runs (tenant, id) ON DELETE CASCADE
);
