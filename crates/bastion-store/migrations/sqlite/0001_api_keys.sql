-- API keys: only a keyed hash of each key is stored.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    user_name      TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    key_hash       TEXT NOT NULL UNIQUE,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    revoked_at     INTEGER,
    last_used_at   INTEGER,
    use_count      INTEGER NOT NULL DEFAULT 0,
    max_uses       INTEGER,
    description    TEXT
);
CREATE INDEX api_keys_user ON api_keys (user_name);
