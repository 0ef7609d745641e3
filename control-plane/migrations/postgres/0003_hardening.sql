-- Delivery hardening. Keep in step with ../sqlite/0003_hardening.sql (the comments there
-- say what each change is for).

UPDATE deployments
SET state = 'failed',
    message = 'superseded: another deployment of the environment was started concurrently',
    finished_at_ms = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
WHERE state IN ('pending', 'running')
  AND EXISTS (
      SELECT 1 FROM deployments newer
      WHERE newer.environment = deployments.environment
        AND newer.state IN ('pending', 'running')
        AND (newer.created_at_ms, newer.id) > (deployments.created_at_ms, deployments.id));

UPDATE tasks
SET state = 'failed',
    message = 'superseded: another deployment of the environment was started concurrently',
    finished_at_ms = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
WHERE state IN ('pending', 'assigned')
  AND deployment_id IN (SELECT id FROM deployments WHERE state = 'failed');

CREATE UNIQUE INDEX deployments_one_active_per_environment
    ON deployments (environment) WHERE state IN ('pending', 'running');

-- Replicas draw generations from a sequence: no lock is held across transactions.
ALTER TABLE deployments ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
UPDATE deployments d SET generation = r.n
FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY created_at_ms, id) AS n FROM deployments) r
WHERE d.id = r.id;
CREATE UNIQUE INDEX deployments_generation_key ON deployments (generation);
-- Each task carries its deployment's generation: the agent's desired state of the target
-- is the payload of the succeeded task with the highest generation.
ALTER TABLE tasks ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
UPDATE tasks SET generation = (SELECT d.generation FROM deployments d WHERE d.id = tasks.deployment_id);
CREATE INDEX tasks_target_state_generation_idx ON tasks (target, state, generation);
CREATE SEQUENCE deployment_generation_seq;
SELECT setval('deployment_generation_seq', (SELECT COALESCE(MAX(generation), 0) + 1 FROM deployments), false);

ALTER TABLE environments ADD COLUMN deployment_timeout_seconds BIGINT;

CREATE TABLE environment_variables (
    environment   TEXT    NOT NULL REFERENCES environments (name) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    updated_by    TEXT    NOT NULL,
    updated_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (environment, kind, name)
);

ALTER TABLE logs ADD COLUMN line BIGINT;
CREATE UNIQUE INDEX logs_task_line_key ON logs (task_id, line) WHERE line IS NOT NULL;

ALTER TABLE agents ADD COLUMN disconnected_at_ms BIGINT;

-- Revoked agents that were deleted (their names free again): their ids stay on the
-- revocation list, since their last certificates may not have expired yet.
CREATE TABLE deleted_agents (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    revoked_at_ms BIGINT NOT NULL,
    deleted_at_ms BIGINT NOT NULL
);
