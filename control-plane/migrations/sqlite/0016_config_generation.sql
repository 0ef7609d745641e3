-- What a promotion reads that changes only with configuration (the environment, its
-- targets and variables, the agents' names and capabilities, releases, scan reports and
-- documents) is kept in memory by the server, tagged with this generation, and used again
-- only while the generation is unchanged. Every write to those tables bumps it, in the
-- writing transaction, whoever writes (this server, a tool opening the file), so a
-- cached plan is never older than the configuration. SQLite only: there is one server
-- per SQLite file. On PostgreSQL (replicas) nothing is cached and there is no
-- counterpart migration: one row bumped by every configuration write of every replica
-- would order their transactions against each other.
--
-- `succeeded` counts the same way the writes that make a deployment succeeded or not
-- (the order gate's facts), so whether a release ran in an environment is kept too.
CREATE TABLE config_generation (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    succeeded  INTEGER NOT NULL
) STRICT;

INSERT INTO config_generation (id, generation, succeeded) VALUES (1, 0, 0);

CREATE TRIGGER environments_insert_bumps_config AFTER INSERT ON environments
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER environments_update_bumps_config AFTER UPDATE ON environments
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER environments_delete_bumps_config AFTER DELETE ON environments
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER targets_insert_bumps_config AFTER INSERT ON targets
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER targets_update_bumps_config AFTER UPDATE ON targets
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER targets_delete_bumps_config AFTER DELETE ON targets
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER environment_variables_insert_bumps_config AFTER INSERT ON environment_variables
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER environment_variables_update_bumps_config AFTER UPDATE ON environment_variables
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER environment_variables_delete_bumps_config AFTER DELETE ON environment_variables
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER releases_insert_bumps_config AFTER INSERT ON releases
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER releases_update_bumps_config AFTER UPDATE ON releases
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER releases_delete_bumps_config AFTER DELETE ON releases
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER scan_reports_insert_bumps_config AFTER INSERT ON scan_reports
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER scan_reports_update_bumps_config AFTER UPDATE ON scan_reports
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER scan_reports_delete_bumps_config AFTER DELETE ON scan_reports
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER documents_insert_bumps_config AFTER INSERT ON documents
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER documents_update_bumps_config AFTER UPDATE ON documents
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER documents_delete_bumps_config AFTER DELETE ON documents
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

-- Agents: their heartbeats update them all the time; only what a plan uses counts.
CREATE TRIGGER agents_insert_bumps_config AFTER INSERT ON agents
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER agents_delete_bumps_config AFTER DELETE ON agents
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER agents_update_bumps_config AFTER UPDATE ON agents
WHEN OLD.id IS NOT NEW.id
    OR OLD.name IS NOT NEW.name
    OR OLD.labels_json IS NOT NEW.labels_json
    OR OLD.capabilities_json IS NOT NEW.capabilities_json
    OR OLD.host_json IS NOT NEW.host_json
    OR OLD.revoked_at_ms IS NOT NEW.revoked_at_ms
BEGIN
    UPDATE config_generation SET generation = generation + 1 WHERE id = 1;
END;

-- Deployments: only a write that makes one succeeded, or touches one that is.
CREATE TRIGGER deployments_insert_bumps_succeeded AFTER INSERT ON deployments
WHEN NEW.state = 'succeeded'
BEGIN
    UPDATE config_generation SET succeeded = succeeded + 1 WHERE id = 1;
END;

CREATE TRIGGER deployments_update_bumps_succeeded AFTER UPDATE ON deployments
WHEN OLD.state = 'succeeded' OR NEW.state = 'succeeded'
BEGIN
    UPDATE config_generation SET succeeded = succeeded + 1 WHERE id = 1;
END;

CREATE TRIGGER deployments_delete_bumps_succeeded AFTER DELETE ON deployments
WHEN OLD.state = 'succeeded'
BEGIN
    UPDATE config_generation SET succeeded = succeeded + 1 WHERE id = 1;
END;
