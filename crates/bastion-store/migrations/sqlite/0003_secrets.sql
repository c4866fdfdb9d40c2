-- The secrets vault's rows: each value is sealed elsewhere (envelope
-- encryption) and kept here as an opaque, versioned ciphertext, with the id
-- of the master key that wrapped its data key. Nothing here is readable
-- without that key.
CREATE TABLE secrets (
    owner_kind TEXT NOT NULL CHECK (owner_kind IN ('user', 'server')),
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner_kind, owner, name)
);
-- Re-wrapping under a new master key looks for the rows of the others.
CREATE INDEX secrets_key_id ON secrets (key_id);
