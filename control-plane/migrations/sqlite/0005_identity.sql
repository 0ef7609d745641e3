-- Identity: API tokens with ids, names, expiry, last use and revocation; OAuth2
-- clients (service accounts). Keep in step with ../postgres/0005_identity.sql.
--
-- Tokens from before this migration keep working: they get an id derived from their
-- hash (a public value: the hash of a 256-bit random token reveals nothing of it), the
-- name `legacy` and no expiry (`expires_at_ms` NULL), so the admin token written at
-- first start goes on working after the upgrade until it is revoked.
ALTER TABLE api_tokens ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN expires_at_ms INTEGER;
-- Written at most once a minute per token, not at every request.
ALTER TABLE api_tokens ADD COLUMN last_used_at_ms INTEGER;
ALTER TABLE api_tokens ADD COLUMN revoked_at_ms INTEGER;
UPDATE api_tokens SET id = 'tok_' || substr(hash, 1, 24), name = 'legacy' WHERE id = '';
CREATE UNIQUE INDEX api_tokens_id_key ON api_tokens (id);

-- Service accounts of the client credentials grant; only the hex SHA-256 of the
-- secret (256 random bits) is stored.
CREATE TABLE oauth_clients (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL,
    -- Space-separated scope names, e.g. `stella.operator taskrunner.viewer`.
    scopes        TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) STRICT;

CREATE UNIQUE INDEX oauth_clients_name_key ON oauth_clients (name);
