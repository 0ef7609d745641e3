-- Offline kits: decision records imported from another Stella server, kept as the
-- evidence packets they came in. Keep in step with ../postgres/0009_offline.sql.
--
-- They are not decisions of this server (no promotion here settled by them, signed by
-- another key), so they live beside `decisions`, not in it.
CREATE TABLE imported_evidence (
    -- `sha256:<hex>` of the packet's decision.json: the decision id.
    decision_id     TEXT    NOT NULL PRIMARY KEY,
    -- The id of the key that signed the decision and the packet.
    key_id          TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    release_name    TEXT    NOT NULL,
    release_version TEXT    NOT NULL,
    environment     TEXT    NOT NULL,
    -- The evidence packet (.tar.gz) exactly as the kit carried it, base64.
    packet_base64   TEXT    NOT NULL,
    -- The sha256 of the kit's manifest it came in.
    kit_manifest    TEXT    NOT NULL,
    imported_by     TEXT    NOT NULL,
    imported_at_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX imported_evidence_release_idx ON imported_evidence (release_name, release_version);
