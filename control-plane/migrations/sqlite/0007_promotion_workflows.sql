-- Promotion workflows. Keep in step with ../postgres/0007_promotion_workflows.sql.
--
-- An environment may name a task pack as its promotion workflow: the manifest is a
-- document (`kind` = 'task-pack'), this is its id. A promotion allowed in such an
-- environment is carried out by a task-pack run (`run_id`, in the `default` tenant)
-- instead of a deployment made at once; the run's `builtin:promotion` step makes the
-- deployment, and the run's end settles the promotion.
ALTER TABLE environments ADD COLUMN workflow_id TEXT;
ALTER TABLE promotions ADD COLUMN run_id TEXT;
