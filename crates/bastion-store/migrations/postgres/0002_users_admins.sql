-- Users kept in the store (`bastion users`): a role and groups per name.
-- A user named in the config file wins over the entry here.
CREATE TABLE users (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'manager', 'user', 'viewer')),
    groups     TEXT NOT NULL DEFAULT '[]', -- JSON array of group names
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX users_updated ON users (updated_at);

-- Users removed, so that a removal is seen by whoever follows changes
-- (the gateway ends what a removed user has open).
CREATE TABLE user_tombstones (
    name       TEXT PRIMARY KEY,
    deleted_at BIGINT NOT NULL
);
CREATE INDEX user_tombstones_deleted ON user_tombstones (deleted_at);

-- Local administrator accounts: an Argon2id password hash (PHC string) and
-- a TOTP second factor.
CREATE TABLE admins (
    name            TEXT PRIMARY KEY,
    password_hash   TEXT NOT NULL,
    totp_secret     TEXT,                       -- base32; not yet encrypted at rest
    totp_confirmed  BIGINT NOT NULL DEFAULT 0,
    totp_last_step  BIGINT,                     -- the last time step whose code was accepted
    failed_attempts BIGINT NOT NULL DEFAULT 0,
    locked_until    BIGINT,
    created_at      BIGINT NOT NULL,
    last_login_at   BIGINT
);
