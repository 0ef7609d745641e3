-- When an agent's session ended without a Goodbye (its process killed, its host gone,
-- the connection cut); cleared by its next Hello. An agent whose session was lost and
-- that has not been heard from since shows `unreachable` one heartbeat interval later,
-- instead of after three missed heartbeats. Keep in step with
-- ../sqlite/0015_session_lost.sql.
ALTER TABLE agents ADD COLUMN session_lost_at_ms BIGINT;
