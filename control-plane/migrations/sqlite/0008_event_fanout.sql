-- Durable webhook fan-out. Keep in step with ../postgres/0008_event_fanout.sql.
--
-- An event is stored in the transaction of the change it reports; its webhook
-- deliveries are queued after, in a transaction that also marks it fanned out. An event
-- still unmarked (the server stopped in between, or the webhooks could not be read) is
-- fanned out by the webhook sender's sweep. Events stored before this migration count as
-- fanned out.
ALTER TABLE events ADD COLUMN fanned_out INTEGER NOT NULL DEFAULT 1;
CREATE INDEX events_unfanned_idx ON events (at_ms) WHERE fanned_out = 0;
