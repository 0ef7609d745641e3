-- Release governance. Keep in step with ../postgres/0004_governance.sql.
--
-- Environments gain their gates; promotions become objects with approvals and signed
-- decisions; scan reports, VEX documents and policy sources are stored by content; the
-- audit log is a hash chain with signed checkpoints; webhooks deliver from an outbox.

-- Gates of an environment. Environments that existed before keep deploying without a
-- scan (`allow_unscanned` = 1); new ones block an unscanned digest unless told not to.
ALTER TABLE environments ADD COLUMN approvals_required INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN approval_ttl_seconds INTEGER;
-- JSON array of `CRON/DURATION[@TZ]` strings.
ALTER TABLE environments ADD COLUMN freeze_json TEXT NOT NULL DEFAULT '[]';
-- `none`, `low`, `medium`, `high` or `critical`.
ALTER TABLE environments ADD COLUMN block_severity TEXT NOT NULL DEFAULT 'critical';
ALTER TABLE environments ADD COLUMN allow_unscanned INTEGER NOT NULL DEFAULT 0;
-- The policy's source is a document (`kind` = 'rego'); this is its id.
ALTER TABLE environments ADD COLUMN policy_id TEXT;
UPDATE environments SET allow_unscanned = 1;

-- Input documents, stored by content: scan reports, VEX documents, policy sources.
CREATE TABLE documents (
    -- `sha256:<hex>` of `content`.
    id            TEXT    NOT NULL PRIMARY KEY,
    -- `trivy`, `grype`, `openvex` or `rego`.
    kind          TEXT    NOT NULL,
    content       TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX documents_kind_idx ON documents (kind, created_at_ms);

-- Which report covers which image digest.
CREATE TABLE scan_reports (
    digest        TEXT    NOT NULL,
    document_id   TEXT    NOT NULL REFERENCES documents (id),
    image         TEXT    NOT NULL,
    imported_by   TEXT    NOT NULL,
    imported_at_ms INTEGER NOT NULL,
    PRIMARY KEY (digest, document_id)
) STRICT;

CREATE TABLE promotions (
    id              TEXT    NOT NULL PRIMARY KEY,
    environment     TEXT    NOT NULL REFERENCES environments (name) ON DELETE CASCADE,
    release_name    TEXT    NOT NULL,
    release_version TEXT    NOT NULL,
    -- `awaiting_approval`, `blocked`, `rejected`, `deploying`, `deployed`, `failed`.
    state           TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    requested_at_ms INTEGER NOT NULL,
    -- The plan the approvals are bound to, and its hash.
    plan_json       TEXT    NOT NULL,
    plan_hash       TEXT    NOT NULL,
    break_glass_by  TEXT,
    break_glass_reason TEXT,
    -- The last evaluation's gate results (JSON array).
    gates_json      TEXT    NOT NULL,
    message         TEXT,
    decision_id     TEXT,
    deployment_id   TEXT,
    updated_at_ms   INTEGER NOT NULL
) STRICT;
CREATE INDEX promotions_environment_idx ON promotions (environment, requested_at_ms);
CREATE INDEX promotions_state_idx ON promotions (state);
CREATE UNIQUE INDEX promotions_deployment_key ON promotions (deployment_id) WHERE deployment_id IS NOT NULL;

-- An approval or rejection, bound to the plan hash it was given for: one user counts
-- once per plan.
CREATE TABLE approvals (
    promotion_id  TEXT    NOT NULL REFERENCES promotions (id) ON DELETE CASCADE,
    user_name     TEXT    NOT NULL,
    plan_hash     TEXT    NOT NULL,
    -- `approved` or `rejected`.
    verdict       TEXT    NOT NULL,
    -- JSON array of the user's roles when they decided.
    roles_json    TEXT    NOT NULL,
    comment       TEXT,
    at_ms         INTEGER NOT NULL,
    PRIMARY KEY (promotion_id, user_name, plan_hash)
) STRICT;

-- Signed decision records. Immutable.
CREATE TABLE decisions (
    -- `sha256:<hex>` of `decision_json`, its canonical bytes.
    id            TEXT    NOT NULL PRIMARY KEY,
    promotion_id  TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    decision_json TEXT    NOT NULL,
    inputs_json   TEXT    NOT NULL,
    envelope_json TEXT    NOT NULL,
    key_id        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX decisions_promotion_idx ON decisions (promotion_id);

-- The public halves of every replica's decision-signing key.
CREATE TABLE signing_keys (
    key_id        TEXT    NOT NULL PRIMARY KEY,
    public_pem    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

-- The audit log: a hash chain. `seq` is the primary key, so two writers cannot both
-- append the same link.
CREATE TABLE audit_log (
    seq            INTEGER NOT NULL PRIMARY KEY,
    at_ms          INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    object         TEXT    NOT NULL,
    request_digest TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL
) STRICT;

CREATE TABLE audit_checkpoints (
    seq       INTEGER NOT NULL PRIMARY KEY,
    hash      TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    key_id    TEXT    NOT NULL,
    signature TEXT    NOT NULL
) STRICT;

-- Things operators are told about (`verdict_changed`, …), shown with environments and
-- releases and sent to webhooks.
CREATE TABLE events (
    id            TEXT    NOT NULL PRIMARY KEY,
    kind          TEXT    NOT NULL,
    environment   TEXT,
    release_name  TEXT,
    release_version TEXT,
    subject       TEXT,
    message       TEXT    NOT NULL,
    at_ms         INTEGER NOT NULL
) STRICT;
CREATE INDEX events_environment_idx ON events (environment, at_ms);
CREATE INDEX events_release_idx ON events (release_name, release_version, at_ms);

-- The security verdict of what runs in each environment, to tell when it turns.
CREATE TABLE verdicts (
    environment     TEXT    NOT NULL PRIMARY KEY REFERENCES environments (name) ON DELETE CASCADE,
    release_name    TEXT    NOT NULL,
    release_version TEXT    NOT NULL,
    passed          INTEGER NOT NULL,
    reasons_json    TEXT    NOT NULL,
    at_ms           INTEGER NOT NULL
) STRICT;

CREATE TABLE webhooks (
    id            TEXT    NOT NULL PRIMARY KEY,
    url           TEXT    NOT NULL,
    -- JSON array of event names.
    events_json   TEXT    NOT NULL,
    -- Sealed with the server's secrets key.
    secret_sealed TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

-- The outbox: a delivery is stored before it is sent.
CREATE TABLE webhook_deliveries (
    id            TEXT    NOT NULL PRIMARY KEY,
    webhook_id    TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event         TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    -- `pending`, `delivered` or `failed` (gave up).
    state         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    -- A replica sending it holds it until then.
    lease_until_ms INTEGER NOT NULL,
    last_status   INTEGER,
    last_error    TEXT,
    created_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER
) STRICT;
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at_ms) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_hook_idx ON webhook_deliveries (webhook_id, created_at_ms);

-- Agents already announced as unreachable (one `agent_unreachable` event per outage).
ALTER TABLE agents ADD COLUMN unreachable_notified_at_ms INTEGER;
