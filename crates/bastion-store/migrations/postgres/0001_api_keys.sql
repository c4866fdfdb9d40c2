-- API keys: only a keyed hash of each key is stored. Times are seconds
-- since the epoch, as in the SQLite schema.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    user_name      TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    key_hash       TEXT NOT NULL UNIQUE,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT,
    revoked_at     BIGINT,
    last_used_at   BIGINT,
    use_count      BIGINT NOT NULL DEFAULT 0,
    max_uses       BIGINT,
    description    TEXT
);
CREATE INDEX api_keys_user ON api_keys (user_name);
