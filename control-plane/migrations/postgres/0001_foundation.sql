-- Foundation schema (RFC 0001): join tokens, agents, users and API tokens.
-- Keep in step with ../sqlite/0001_foundation.sql: same tables, columns and meaning.
-- Times are unix milliseconds (`*_at_ms`, BIGINT); JSON documents are TEXT, because the
-- store reads them through sqlx's `Any` driver, which knows no JSONB.

-- One-time join tokens; only the hex SHA-256 of the secret is stored.
CREATE TABLE join_tokens (
    hash             TEXT   NOT NULL PRIMARY KEY,
    created_by       TEXT   NOT NULL,
    created_at_ms    BIGINT NOT NULL,
    expires_at_ms    BIGINT NOT NULL,
    used_at_ms       BIGINT,
    -- No foreign key: the token is consumed before the agent row exists (same transaction).
    used_by_agent_id TEXT
);

CREATE TABLE agents (
    id                TEXT   NOT NULL PRIMARY KEY,
    name              TEXT   NOT NULL,
    labels_json       TEXT   NOT NULL,
    capabilities_json TEXT   NOT NULL,
    host_json         TEXT,
    agent_version     TEXT,
    cert_serial       TEXT   NOT NULL,
    cert_not_after_ms BIGINT NOT NULL,
    enrolled_at_ms    BIGINT NOT NULL,
    last_seen_at_ms   BIGINT,
    revoked_at_ms     BIGINT,
    revoke_reason     TEXT
);

CREATE UNIQUE INDEX agents_name_key ON agents (name);
-- The revocation list is read often and is small: a partial index keeps it cheap.
CREATE INDEX agents_revoked_idx ON agents (id) WHERE revoked_at_ms IS NOT NULL;

CREATE TABLE users (
    id            TEXT   NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    -- Comma-separated role names, e.g. `admin,viewer`.
    roles         TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE UNIQUE INDEX users_name_key ON users (name);

-- API tokens; only the hex SHA-256 of the token is stored.
CREATE TABLE api_tokens (
    hash          TEXT   NOT NULL PRIMARY KEY,
    user_id       TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX api_tokens_user_id_idx ON api_tokens (user_id);
