-- Delivery hardening. Keep in step with ../postgres/0003_hardening.sql.
--
-- 1. At most one active (pending or running) deployment per environment, enforced by a
--    unique index rather than by a check before the write. Deployments that a race left
--    active beside a newer one are failed first, oldest first, so the index can be built.
-- 2. Deployment generations: a number that grows with every deployment created, so an
--    agent can tell a newer desired state from an older one.
-- 3. Per-environment deployment timeout, variables and sealed secrets.
-- 4. Agent progress lines numbered per task, so a line re-sent after a reconnect is
--    stored once.
-- 5. Agents that said goodbye, shown `disconnected` at once.

UPDATE deployments
SET state = 'failed',
    message = 'superseded: another deployment of the environment was started concurrently',
    finished_at_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE state IN ('pending', 'running')
  AND EXISTS (
      SELECT 1 FROM deployments newer
      WHERE newer.environment = deployments.environment
        AND newer.state IN ('pending', 'running')
        AND (newer.created_at_ms, newer.id) > (deployments.created_at_ms, deployments.id));

UPDATE tasks
SET state = 'failed',
    message = 'superseded: another deployment of the environment was started concurrently',
    finished_at_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE state IN ('pending', 'assigned')
  AND deployment_id IN (SELECT id FROM deployments WHERE state = 'failed');

CREATE UNIQUE INDEX deployments_one_active_per_environment
    ON deployments (environment) WHERE state IN ('pending', 'running');

-- Creation order; assigned in the write transaction that stores the deployment.
ALTER TABLE deployments ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
UPDATE deployments SET generation = (
    SELECT COUNT(*) FROM deployments earlier
    WHERE (earlier.created_at_ms, earlier.id) <= (deployments.created_at_ms, deployments.id));
CREATE UNIQUE INDEX deployments_generation_key ON deployments (generation);
-- The last generation handed out: deleting history (an environment deleted with it) must
-- not let a generation be handed out twice, so it is not derived from the table.
CREATE TABLE counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT INTO counters (name, value)
    SELECT 'deployment_generation', COALESCE(MAX(generation), 0) FROM deployments;
-- Each task carries its deployment's generation: the agent's desired state of the target
-- is the payload of the succeeded task with the highest generation.
ALTER TABLE tasks ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET generation = (SELECT d.generation FROM deployments d WHERE d.id = tasks.deployment_id);
CREATE INDEX tasks_target_state_generation_idx ON tasks (target, state, generation);

-- Replicas tell their agents to stop tasks cancelled in the last seconds.
CREATE INDEX tasks_cancelled_idx ON tasks (finished_at_ms) WHERE state = 'cancelled';

-- Seconds a deployment's tasks may take; NULL: the server's `task_deadline_seconds`.
ALTER TABLE environments ADD COLUMN deployment_timeout_seconds INTEGER;

-- Variables (`kind` = 'var', value in plain text) and secrets (`kind` = 'secret', value
-- sealed with the server's secrets key) that target settings reference as `${var.NAME}`
-- and `${secret.NAME}`.
CREATE TABLE environment_variables (
    environment   TEXT    NOT NULL REFERENCES environments (name) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    updated_by    TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (environment, kind, name)
) STRICT;

-- The agent's number of a progress line within its task; NULL for the server's lines.
ALTER TABLE logs ADD COLUMN line INTEGER;
CREATE UNIQUE INDEX logs_task_line_key ON logs (task_id, line) WHERE line IS NOT NULL;

-- Set when the agent said goodbye on a clean stop; cleared by its next Hello.
ALTER TABLE agents ADD COLUMN disconnected_at_ms INTEGER;

-- Revoked agents that were deleted (their names free again): their ids stay on the
-- revocation list, since their last certificates may not have expired yet.
CREATE TABLE deleted_agents (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    revoked_at_ms INTEGER NOT NULL,
    deleted_at_ms INTEGER NOT NULL
) STRICT;
