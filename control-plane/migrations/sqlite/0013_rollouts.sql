-- Rollouts (RFC 0005, increment 2): a deployment into an environment with a strategy
-- other than all-at-once runs as steps that a driver takes one at a time, under a lease.
-- Keep in step with ../postgres/0013_rollouts.sql. Tenant-owned, like deployments.

-- The environment's strategy: `decision::rollout::Strategy` as JSON; NULL: all at once.
ALTER TABLE environments ADD COLUMN rollout_json TEXT;

-- What a task does on its agent: `deploy` (as before) or `retire` (remove a slot).
ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'deploy';
-- The slot a rollout's task acts on; NULL: the target's own (stable) containers.
ALTER TABLE tasks ADD COLUMN slot TEXT;
-- The rollout step (`rollout_steps.seq`) that made the task; NULL outside rollouts.
ALTER TABLE tasks ADD COLUMN rollout_seq INTEGER;
-- What the agent reported with the result (the deploy outcome: endpoints, stickers).
ALTER TABLE tasks ADD COLUMN output_json TEXT;

CREATE TABLE rollouts (
    deployment_id   TEXT    NOT NULL PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    environment     TEXT    NOT NULL,
    -- The strategy and the steps it compiled to (the plan the decision binds).
    strategy_json   TEXT    NOT NULL,
    steps_json      TEXT    NOT NULL,
    -- Per target: the deploy payload the rollout deploys, and the one it replaces
    -- (NULL when nothing ran there before).
    payloads_json   TEXT    NOT NULL,
    previous_json   TEXT    NOT NULL,
    -- running | paused | succeeded | rolled_back | failed
    state           TEXT    NOT NULL,
    -- forward | rollback
    phase           TEXT    NOT NULL,
    -- The steps of the rollback, once one started.
    rollback_json   TEXT,
    -- The index, in the phase's steps, of the step to run next.
    next_step       INTEGER NOT NULL,
    -- An operator's request not yet acted on: promote | pause | resume | abort.
    requested       TEXT,
    requested_by    TEXT,
    -- The weights the router was last given, percent per slot (JSON), for display.
    weights_json    TEXT,
    message         TEXT,
    lease_owner     TEXT,
    lease_expires_at_ms INTEGER,
    lease_epoch     INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    finished_at_ms  INTEGER
) STRICT;

CREATE INDEX rollouts_state_idx ON rollouts (state);

-- Every step a rollout ran or runs, in order (seq from 1 across both phases).
CREATE TABLE rollout_steps (
    deployment_id  TEXT    NOT NULL REFERENCES rollouts (deployment_id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    phase          TEXT    NOT NULL,
    -- `decision::rollout::Step` as JSON.
    step_json      TEXT    NOT NULL,
    -- running | succeeded | failed
    state          TEXT    NOT NULL,
    message        TEXT,
    -- What the step found or did (backends applied, endpoints, analysis samples).
    detail_json    TEXT,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    PRIMARY KEY (deployment_id, seq)
) STRICT;
