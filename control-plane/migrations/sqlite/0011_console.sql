-- The web console: users' passwords (argon2id, PHC string) and sign-in sessions. Keep
-- in step with ../postgres/0011_console.sql. Read in the default tenant's database only.
ALTER TABLE users ADD COLUMN password_hash TEXT;

-- Only the SHA-256 of a session's id (256 random bits, the cookie's value) is stored.
CREATE TABLE console_sessions (
    id_hash         TEXT    NOT NULL PRIMARY KEY,
    user_id         TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Sent back in every form; a post without it is refused.
    csrf_token      TEXT    NOT NULL,
    -- The tenant the console shows.
    tenant          TEXT    NOT NULL DEFAULT 'default',
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL
) STRICT;
CREATE INDEX console_sessions_user_idx ON console_sessions (user_id);
