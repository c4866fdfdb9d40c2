-- The audit trail: records in keyed hash chains (see the bastion-audit
-- crate). Each record keeps its sealed JSON text (body) and MAC; the other
-- columns repeat fields of the body for searching, and are checked against
-- it on verification. Times here are microseconds since the epoch.
CREATE TABLE audit_records (
    chain     TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    ts        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    user_name TEXT,
    server    TEXT,
    tool      TEXT,
    outcome   TEXT NOT NULL,
    body      TEXT NOT NULL,
    mac       BYTEA NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_records_ts ON audit_records (ts);
CREATE INDEX audit_records_user ON audit_records (user_name, ts);

-- Each chain's last record, and the last record pruned (0 and zero bytes
-- when none was): appending moves the first, pruning the second.
CREATE TABLE audit_heads (
    chain      TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    mac        BYTEA NOT NULL,
    anchor_seq BIGINT NOT NULL,
    anchor_mac BYTEA NOT NULL
);
