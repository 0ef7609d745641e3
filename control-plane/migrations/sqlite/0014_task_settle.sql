-- Settling a deployment after each task result asks whether any of its tasks is still
-- open, and only when none is, for its first failure: both are lookups in this index,
-- where reading every task of the deployment made a fan-out to N targets cost N² rows.
-- The index on deployment_id alone is a prefix of this one. Keep in step with
-- ../postgres/0014_task_settle.sql.
DROP INDEX tasks_deployment_id_idx;
CREATE INDEX tasks_deployment_id_state_idx ON tasks (deployment_id, state);
